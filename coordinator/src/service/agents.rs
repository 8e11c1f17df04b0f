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

/// Closes the leader's connection from the agent of `host`, which the
/// leader has just marked down: requests in flight on it (a deploy's or a
/// recovery's plan, waiting on guests that boot there) fail now rather
/// than after the QUIC idle timeout, so the labs they hold can recover. An
/// agent that was only cut off connects and registers again once healed.
pub(super) fn disconnect(inner: &Inner, host: &str) {
    if let Some(conn) = lock(&inner.agents).remove(host) {
        conn.close(0u32.into(), b"host marked down: register again");
    }
}

/// One request to the agent of `host`, on its own connection.
pub(super) async fn request(
    inner: &Inner,
    host: &str,
    req: &AgentRequest,
) -> Result<AgentReply, String> {
    let conn = connection(inner, host)?;
    transport::request(&conn, req)
        .await
        .map_err(|e| format!("agent of host {host:?}: {e}"))
}
