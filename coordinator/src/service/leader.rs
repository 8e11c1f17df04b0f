//! Being (or finding) the leader: forwarding, writes, linearizable reads,
//! and membership changes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use labspan_proto::msg::{ErrorKind, ErrorReply, Reply, Request, Role};
use labspan_transport as transport;
use labspan_transport::poll::Poll;
use labspan_transport::tls::PeerIdentity;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, ServerState};
use quinn::Connection;

use super::{error, lock, Inner};
use crate::raft::{Applied, Command, Member, NodeId, TypeConfig};

/// How long a request waits for a leader to be elected before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a coordinator has to answer a ping on a cached connection (or
/// a dial) before forwarding gives it up.
const PEER_PROBE: Duration = Duration::from_secs(1);
/// Pause between attempts of a new coordinator to be added.
const MEMBERSHIP_RETRY: Duration = Duration::from_secs(1);
/// How long a membership change waits for an earlier one to commit, and
/// how often it tries again meanwhile ([`change_membership`]).
const MEMBERSHIP_BUSY_WAIT: Duration = Duration::from_secs(15);
const MEMBERSHIP_BUSY_POLL: Duration = Duration::from_millis(100);

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
    pub(super) fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, member))
    }

    /// Sends `req` to the leader on behalf of `caller`. A leader that
    /// cannot be reached before anything is sent (it died, or lost its
    /// quorum) is waited out, for at most [`LEADER_WAIT`] in all: a caller
    /// during an election gets its answer from the next leader rather than
    /// an error. A request lost after it was sent is not sent again (it may
    /// have been done); the caller is told.
    pub(super) async fn forward(&self, caller: &PeerIdentity, req: Request) -> Reply {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let req = Request::Forwarded {
            name: caller.name.clone(),
            role: caller.role,
            request: Box::new(req),
        };
        let mut unreachable: Option<(NodeId, String)> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let gone = unreachable.as_ref().map(|(id, _)| *id);
            // A leader known, and not the one just found unreachable.
            let waiter = self.raft.wait(Some(left));
            let _ = waiter
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != gone,
                    "a reachable leader",
                )
                .await;
            let leader = self.leader().filter(|(id, _)| Some(*id) != gone);
            let Some((id, member)) = leader else {
                return match unreachable {
                    Some((_, why)) => error(ErrorKind::Unavailable, why),
                    None => error(
                        ErrorKind::Unavailable,
                        "no leader elected (is a majority of coordinators running?)",
                    ),
                };
            };
            let conn = match self.peer_connection(&member.addr).await {
                Ok(conn) => conn,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(leader = %member, error = %e, "leader unreachable; waiting for another");
                    unreachable = Some((id, format!("cannot reach the leader {member}: {e}")));
                    continue;
                }
                Err(e) => {
                    return error(
                        ErrorKind::Unavailable,
                        format!("cannot reach the leader {member}: {e}"),
                    )
                }
            };
            return match self.request_on(conn, &req).await {
                Ok(reply) => reply,
                Err(e) => error(
                    ErrorKind::Unavailable,
                    format!("lost the leader {member} during the request (it may or may not have been done): {e}"),
                ),
            };
        }
    }

    /// One request to another coordinator over the cached connection.
    pub(super) async fn peer_request(&self, addr: &str, req: &Request) -> Result<Reply, String> {
        let conn = self.peer_connection(addr).await?;
        self.request_on(conn, req).await
    }

    /// One request on a connection from [`Self::peer_connection`]; a
    /// connection that fails is dropped from the cache.
    async fn request_on(
        &self,
        (addr, conn): (SocketAddr, Connection),
        req: &Request,
    ) -> Result<Reply, String> {
        transport::request(&conn, req).await.map_err(|e| {
            lock(&self.peers).remove(&addr);
            e.to_string()
        })
    }

    /// The cached connection to the coordinator at `addr`, made if needed.
    ///
    /// A cached connection to a peer that restarted (or died) stays open on
    /// this side until QUIC's idle timeout, and a request on it would wait
    /// that long; so a cached connection must answer a ping within
    /// [`PEER_PROBE`] or it is dropped and the peer dialled afresh (for at
    /// most as long).
    pub(super) async fn peer_connection(
        &self,
        addr: &str,
    ) -> Result<(SocketAddr, Connection), String> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address {addr:?}: {e}"))?;
        let cached = lock(&self.peers).get(&addr).cloned();
        if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
            let probe = transport::request::<_, Reply>(&c, &Request::Ping { nonce: 0 });
            match tokio::time::timeout(PEER_PROBE, probe).await {
                Ok(Ok(Reply::Pong { .. })) => return Ok((addr, c)),
                outcome => {
                    tracing::info!(%addr, ?outcome, "cached coordinator connection is dead; dialling afresh");
                    lock(&self.peers).remove(&addr);
                    c.close(0u32.into(), b"no answer");
                }
            }
        }
        let c: Connection =
            tokio::time::timeout(PEER_PROBE, transport::connect(&self.endpoint, addr))
                .await
                .map_err(|_| format!("no answer from {addr} within {} ms", PEER_PROBE.as_millis()))?
                .map_err(|e| e.to_string())?;
        lock(&self.peers).insert(addr, c.clone());
        Ok((addr, c))
    }

    /// Proposes `cmd` (on the leader) and waits until it is committed and applied.
    /// Followers of the labs it changes see the steps it makes
    /// ([`super::progress`]).
    pub(super) async fn write(&self, cmd: Command) -> Result<Applied, ErrorReply> {
        let started = std::time::Instant::now();
        let settles = super::progress::settles(&cmd);
        let scope = super::progress::Scope::of(&cmd);
        self.progress_before_write();
        match self.raft.client_write(cmd).await {
            Ok(resp) => {
                self.metrics.committed(started.elapsed().as_secs_f64());
                let applied = resp.data.map_err(|rejection| {
                    ErrorReply::new(ErrorKind::Invalid, rejection.to_string())
                });
                self.progress_after_write(&scope, settles.filter(|_| applied.is_ok()));
                applied
            }
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
    ///
    /// Callers waiting at once share one confirmation: each one asks a
    /// quorum (a heartbeat round), and a thousand agents registering
    /// together after a failover, each asking its own, overran the
    /// followers ("not enough for a quorum") and were refused their
    /// leases. A confirmation that started after a caller arrived answers
    /// for it as well as its own would have.
    pub(super) async fn fresh(&self) -> Result<(), ErrorReply> {
        let reads = &self.reads;
        let arrived = reads.started.load(Ordering::SeqCst);
        let _turn = reads.turn.lock().await;
        if reads.confirmed.load(Ordering::SeqCst) > arrived {
            return Ok(());
        }
        let number = reads.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.raft.ensure_linearizable().await.map_err(|e| {
            ErrorReply::new(
                ErrorKind::NotLeader,
                format!("cannot confirm leadership for a fresh read: {e}"),
            )
        })?;
        reads.confirmed.store(number, Ordering::SeqCst);
        Ok(())
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
    match change_membership(
        inner,
        ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        false,
    )
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
/// A retry of a request, not a `Poll`: it has no deadline (a coordinator
/// that cannot join has nothing else to do) and asks every peer in turn.
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

/// How long the leader waits for a remaining voter to answer a ping before
/// it counts it as unreachable (removal safety check).
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Removes coordinator `member` (its name or Raft id) from the membership.
///
/// Refuses to remove the last voter, and refuses a removal after which
/// fewer than a majority of the remaining voters answer a ping: such a
/// cluster could not commit anything, not even putting the node back.
/// A voter is first demoted to learner, so it receives the membership that
/// no longer counts it (and then refuses API requests), then dropped.
pub(super) async fn remove_coordinator(inner: &Arc<Inner>, member: &str) -> Reply {
    let membership = inner.raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    let found = membership
        .nodes()
        .find(|(id, m)| m.name == member || id.to_string() == member)
        .map(|(id, m)| (*id, m.clone()));
    let Some((id, target)) = found else {
        let names: Vec<String> = membership.nodes().map(|(_, m)| m.to_string()).collect();
        return error(
            ErrorKind::NotFound,
            format!(
                "no coordinator named {member:?} (members: {})",
                names.join(", ")
            ),
        );
    };
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.contains(&id) {
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return error(
                ErrorKind::Invalid,
                format!("{target} is the last voter: a cluster cannot remove its last coordinator"),
            );
        }
        if let Err(why) = enough_reachable(inner, &remaining).await {
            return error(
                ErrorKind::Unavailable,
                format!("not removing {target}: {why}"),
            );
        }
        // openraft 0.9 lets a leader demoted to learner go on leading: the
        // leader leaves in one step (it steps down once that commits).
        if id != inner.id {
            if let Err(reply) = demote(inner, id, &target).await {
                return reply;
            }
        }
    }
    // Before the change, so a leader lost between the two leaves a member
    // that `cluster remove` can remove again. The refusal applies only
    // once the name is no longer a member (its Raft traffic is needed
    // until then).
    let revoke = Command::RevokeCoordinator {
        name: target.name.clone(),
    };
    if let Err(e) = inner.write(revoke).await {
        return error(
            e.kind,
            format!(
                "not removing {target}: cannot record its revocation: {}",
                e.message
            ),
        );
    }
    let change = if id == inner.id {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    match change_membership(inner, change, false).await {
        Ok(_) => {
            tracing::info!(id, member = %target, "coordinator removed");
            Reply::Done
        }
        Err(e) => error(
            ErrorKind::Internal,
            format!("cannot remove coordinator {target}: {e}"),
        ),
    }
}

/// A membership change, once an earlier one has committed: openraft
/// refuses a change while the last is uncommitted (`InProgress`: the
/// second step of a joint change, or a coordinator just promoted), which
/// on a loaded cluster is a matter of milliseconds, not an error to show.
async fn change_membership(
    inner: &Inner,
    change: ChangeMembers<NodeId, Member>,
    retain: bool,
) -> Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Member>>> {
    let mut wait = Poll::new(MEMBERSHIP_BUSY_POLL, MEMBERSHIP_BUSY_WAIT).start();
    loop {
        let result = inner.raft.change_membership(change.clone(), retain).await;
        if let Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(busy),
        ))) = &result
        {
            tracing::debug!(%busy, "waiting for the last membership change to commit");
            if wait.pause().await {
                continue;
            }
        }
        return result;
    }
}

/// Turns voter `id` into a learner, then waits (briefly) until it has
/// received that membership, so it knows it no longer votes.
async fn demote(inner: &Arc<Inner>, id: NodeId, target: &Member) -> Result<(), Reply> {
    let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
    let written = change_membership(inner, change, true).await;
    let log_id = match written {
        Ok(resp) => resp.log_id,
        Err(e) => {
            return Err(error(
                ErrorKind::Internal,
                format!("cannot demote coordinator {target} to learner: {e}"),
            ))
        }
    };
    // A stopped node never catches up: the wait is bounded and its end ignored.
    let _ = inner
        .raft
        .wait(Some(REACH_TIMEOUT))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .is_some_and(|matched| matched >= log_id)
            },
            "the removed coordinator to learn its removal",
        )
        .await;
    Ok(())
}

/// Ok when a majority of `voters` (the membership after a removal) answer now.
async fn enough_reachable(inner: &Arc<Inner>, voters: &[NodeId]) -> Result<(), String> {
    let membership = inner.raft.metrics().borrow().membership_config.clone();
    let mut up = Vec::new();
    let mut down = Vec::new();
    for id in voters {
        let Some(member) = membership.membership().get_node(id).cloned() else {
            continue;
        };
        let alive = *id == inner.id || {
            let req = Request::Ping { nonce: *id };
            let ping = inner.peer_request(&member.addr, &req);
            matches!(
                tokio::time::timeout(REACH_TIMEOUT, ping).await,
                Ok(Ok(Reply::Pong { .. }))
            )
        };
        if alive {
            up.push(member.to_string());
        } else {
            down.push(member.to_string());
        }
    }
    if up.len() * 2 > voters.len() {
        return Ok(());
    }
    Err(format!(
        "only {} of the {} remaining voters answer ({} do not), too few to commit; bring them back first",
        up.len(),
        voters.len(),
        down.join(", ")
    ))
}

impl Inner {
    /// True when this coordinator is a voter in the membership it knows.
    fn is_voter(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
    }

    /// A refusal for a coordinator whose certificate was revoked when it
    /// was removed from the cluster (the CA signed it; the cluster no longer
    /// takes it). A name revoked but still a member (the removal did not
    /// finish) is still served.
    pub(super) fn revoked_refusal(&self, peer: &PeerIdentity) -> Option<Reply> {
        if peer.role != Role::Coordinator || !self.state.read().state.revoked.contains(&peer.name) {
            return None;
        }
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(_, m)| m.name == peer.name);
        if member {
            return None;
        }
        Some(error(
            ErrorKind::Forbidden,
            format!(
                "coordinator {} was removed from the cluster: its certificate is refused (join again with a new token)",
                peer.name
            ),
        ))
    }

    /// The refusal a removed coordinator gives to everything but pings,
    /// identity and Raft RPCs; `None` while it is a member.
    pub(super) fn removed_refusal(&self, req: &Request) -> Option<Reply> {
        if matches!(
            req,
            Request::Ping { .. } | Request::WhoAmI | Request::Raft(_)
        ) {
            return None;
        }
        if self.is_voter() {
            self.was_member.store(true, Ordering::Relaxed);
            return None;
        }
        self.was_member.load(Ordering::Relaxed).then(|| {
            error(
                ErrorKind::Invalid,
                format!(
                    "coordinator {} was removed from the cluster: use another coordinator",
                    self.name
                ),
            )
        })
    }
}

/// Notes when this coordinator is a voter, so a later removal is told
/// apart from a join still catching up (a learner that never voted) (see [`Inner::removed_refusal`]).
pub(super) async fn watch_membership(inner: Arc<Inner>) {
    let mut metrics = inner.raft.metrics();
    loop {
        metrics.borrow_and_update();
        if inner.is_voter() {
            inner.was_member.store(true, Ordering::Relaxed);
        } else if inner.was_member.load(Ordering::Relaxed) {
            tracing::warn!(
                id = inner.id,
                "this coordinator was removed from the cluster; it refuses API requests"
            );
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The leadership confirmations of [`Inner::fresh`], one at a time.
#[derive(Default)]
pub(super) struct SharedReads {
    /// Confirmations started so far.
    started: AtomicU64,
    /// The number of the latest one that succeeded.
    confirmed: AtomicU64,
    /// Held by the confirmation in flight.
    turn: tokio::sync::Mutex<()>,
}
