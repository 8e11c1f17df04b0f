//! The leader's table of agent connections: one place decides whether a
//! host's agent is connected, and one place sends it a request.

use std::collections::BTreeSet;

use labspan_proto::msg::{AgentReply, AgentRequest};
use labspan_transport as transport;
use quinn::Connection;

use super::{lock, Inner};

/// The leader's open connection from the agent of `host`.
pub(super) fn connection(inner: &Inner, host: &str) -> Result<Connection, String> {
    lock(&inner.agents)
        .get(host)
        .cloned()
        .filter(|c| c.close_reason().is_none())
        .ok_or_else(|| format!("the agent of host {host:?} is not connected to the leader"))
}

/// The hosts of `hosts` whose agent has no open connection to this leader.
pub(super) fn missing(inner: &Inner, hosts: &BTreeSet<String>) -> Vec<String> {
    let agents = lock(&inner.agents);
    hosts
        .iter()
        .filter(|h| agents.get(*h).is_none_or(|c| c.close_reason().is_some()))
        .cloned()
        .collect()
}

/// Tells the requests in flight that the leader has just marked a host
/// down (see [`request`]).
pub(super) fn host_lost(inner: &Inner) {
    inner.hosts_lost.send_modify(|n| *n += 1);
}

/// One request to the agent of `host`, on its own connection. It gives up
/// as soon as the leader marks `host` down, rather than after QUIC's idle
/// timeout (20 s): a deploy's or a recovery's plan waiting on guests that
/// boot there must let go of the lab lock so that the lost host's nodes
/// can move. The connection itself stays: an agent only cut off for a
/// while carries on with it, and is marked up by its next heartbeat.
pub(super) async fn request(
    inner: &Inner,
    host: &str,
    req: &AgentRequest,
) -> Result<AgentReply, String> {
    let conn = connection(inner, host)?;
    let mut lost = inner.hosts_lost.subscribe();
    let answer = transport::request(&conn, req);
    tokio::pin!(answer);
    loop {
        tokio::select! {
            reply = &mut answer => {
                return reply.map_err(|e| format!("agent of host {host:?}: {e}"));
            }
            changed = lost.changed() => {
                let up = inner.state.read().state.hosts.get(host).is_some_and(|h| h.up);
                if changed.is_err() || !up {
                    return Err(format!(
                        "agent of host {host:?}: no answer before the host was marked down"
                    ));
                }
            }
        }
    }
}
