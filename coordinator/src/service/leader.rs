//! Being (or finding) the leader: forwarding, writes, linearizable reads,
//! and membership changes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use labspan_proto::msg::{ErrorKind, ErrorReply, Reply, Request};
use labspan_transport as transport;
use labspan_transport::tls::PeerIdentity;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use quinn::Connection;

use super::{error, lock, Inner};
use crate::raft::{Applied, Command, Member, NodeId};

/// How long a request waits for a leader to be elected before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts of a new coordinator to be added.
const MEMBERSHIP_RETRY: Duration = Duration::from_secs(1);

impl Inner {
    /// True when this coordinator is the leader now.
    pub(super) fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// `None` on the leader; elsewhere the reply that tells an agent where the leader is.
    pub(super) fn not_leader(&self) -> Option<Reply> {
        (!self.is_leader()).then(|| Reply::NotLeader {
            leader: self.leader().map(|(_, m)| m.addr),
        })
    }

    /// The current leader, as this coordinator knows it.
    fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, member))
    }

    /// Sends `req` to the leader on behalf of `caller`.
    pub(super) async fn forward(&self, caller: &PeerIdentity, req: Request) -> Reply {
        let leader = match self.leader() {
            Some(l) => Some(l),
            None => {
                let waiter = self.raft.wait(Some(LEADER_WAIT));
                // A timeout is answered below (no leader known).
                let _ = waiter
                    .metrics(|m| m.current_leader.is_some(), "a leader")
                    .await;
                self.leader()
            }
        };
        let Some((_, member)) = leader else {
            return error(
                ErrorKind::Unavailable,
                "no leader elected (is a majority of coordinators running?)",
            );
        };
        let req = Request::Forwarded {
            name: caller.name.clone(),
            role: caller.role,
            request: Box::new(req),
        };
        match self.peer_request(&member.addr, &req).await {
            Ok(reply) => reply,
            Err(e) => error(
                ErrorKind::Unavailable,
                format!("cannot reach the leader {member}: {e}"),
            ),
        }
    }

    /// One request to another coordinator over the cached connection.
    pub(super) async fn peer_request(&self, addr: &str, req: &Request) -> Result<Reply, String> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        let cached = lock(&self.peers).get(&addr).cloned();
        let conn = match cached.filter(|c| c.close_reason().is_none()) {
            Some(c) => c,
            None => {
                let c: Connection = transport::connect(&self.endpoint, addr)
                    .await
                    .map_err(|e| e.to_string())?;
                lock(&self.peers).insert(addr, c.clone());
                c
            }
        };
        transport::request(&conn, req).await.map_err(|e| {
            lock(&self.peers).remove(&addr);
            e.to_string()
        })
    }

    /// Proposes `cmd` (on the leader) and waits until it is committed and applied.
    pub(super) async fn write(&self, cmd: Command) -> Result<Applied, ErrorReply> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => resp
                .data
                .map_err(|rejection| ErrorReply::new(ErrorKind::Invalid, rejection.to_string())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ErrorReply::new(
                ErrorKind::NotLeader,
                "leadership moved during the write; retry",
            )),
            Err(e) => Err(ErrorReply::new(
                ErrorKind::Internal,
                format!("raft write failed: {e}"),
            )),
        }
    }

    /// Waits until this leader's state machine reflects everything committed
    /// before now (openraft's read index), so a read is linearizable.
    pub(super) async fn fresh(&self) -> Result<(), ErrorReply> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| {
                ErrorReply::new(
                    ErrorKind::NotLeader,
                    format!("cannot confirm leadership for a fresh read: {e}"),
                )
            })
    }
}

/// Adds coordinator `id` as a learner (waiting until it caught up), then
/// promotes it to voter. Idempotent.
pub(super) async fn add_coordinator(
    inner: &Arc<Inner>,
    id: NodeId,
    name: &str,
    addr: &str,
) -> Reply {
    let membership = inner.raft.metrics().borrow().membership_config.clone();
    if membership.membership().voter_ids().any(|v| v == id) {
        return Reply::Done;
    }
    let member = Member {
        name: name.to_string(),
        addr: addr.to_string(),
    };
    if let Err(e) = inner.raft.add_learner(id, member, true).await {
        return error(
            ErrorKind::Internal,
            format!("cannot add coordinator {name} as a learner: {e}"),
        );
    }
    match inner
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
    {
        Ok(_) => {
            tracing::info!(id, name, addr, "coordinator promoted to voter");
            Reply::Done
        }
        Err(e) => error(
            ErrorKind::Internal,
            format!("cannot promote coordinator {name} to voter: {e}"),
        ),
    }
}

/// A joined coordinator asks the cluster to add it until it is a voter.
pub(super) async fn become_member(inner: Arc<Inner>, peers: Vec<String>, addr: String) {
    let req = Request::AddCoordinator { id: inner.id, addr };
    loop {
        let voter = inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == inner.id);
        if voter {
            return;
        }
        for peer in &peers {
            match inner.peer_request(peer, &req).await {
                Ok(Reply::Done) => return,
                Ok(other) => tracing::info!(peer, reply = ?other, "not added yet"),
                Err(e) => tracing::info!(peer, error = %e, "cannot reach a coordinator to join"),
            }
        }
        tokio::time::sleep(MEMBERSHIP_RETRY).await;
    }
}
