//! Raft RPCs between coordinators, over the QUIC transport.
//!
//! Each RPC is one request on its own stream of the (single, shared)
//! connection to that peer. Only peers with a `coordinator` certificate may
//! send Raft RPCs; anyone else gets [`RaftReply::Forbidden`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use labspan_proto::codec;
use labspan_proto::msg::{ErrorKind, ErrorReply, Reply, Request, Role};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::LogId;
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};

use super::campaign::{would_vote, LeaderContact};
use super::{Member, NodeId, TypeConfig};
use labspan_transport::tls::PeerIdentity;
use labspan_transport::{self as transport, Service, TransportError};

/// A Raft RPC from one coordinator to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// Would you vote for a campaign now? (see [`super::campaign`])
    PreVote,
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Answer to [`RaftRequest::PreVote`].
    PreVote {
        grant: bool,
    },
    /// The caller is not a coordinator.
    Forbidden {
        role: Role,
    },
}

/// Serves Raft RPCs to the local Raft node.
pub struct RaftService {
    raft: openraft::Raft<TypeConfig>,
    contact: LeaderContact,
    lease: Duration,
}

impl RaftService {
    /// Serves RPCs for `raft`; a pre-vote is granted after `lease` without
    /// a leader.
    pub fn new(raft: openraft::Raft<TypeConfig>, lease: Duration) -> Self {
        Self {
            raft,
            contact: LeaderContact::default(),
            lease,
        }
    }

    /// When a leader was last heard, for the campaign gate.
    pub fn contact(&self) -> LeaderContact {
        self.contact.clone()
    }
}

impl RaftService {
    /// Answers one Raft RPC from `peer`.
    pub async fn handle_rpc(&self, peer: &PeerIdentity, req: RaftRequest) -> RaftReply {
        if peer.role != Role::Coordinator {
            tracing::warn!(name = %peer.name, role = %peer.role, "refused a Raft RPC from a non-coordinator");
            return RaftReply::Forbidden { role: peer.role };
        }
        match req {
            RaftRequest::AppendEntries(r) => {
                let reply = self.raft.append_entries(r).await;
                // Accepted (or a log to mend): a leader of our term or a newer one.
                if matches!(
                    reply,
                    Ok(AppendEntriesResponse::Success
                        | AppendEntriesResponse::PartialSuccess(_)
                        | AppendEntriesResponse::Conflict)
                ) {
                    self.contact.heard();
                }
                RaftReply::AppendEntries(reply)
            }
            RaftRequest::InstallSnapshot(r) => {
                RaftReply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            RaftRequest::Vote(r) => RaftReply::Vote(self.raft.vote(r).await),
            RaftRequest::PreVote => {
                let leads = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
                RaftReply::PreVote {
                    grant: would_vote(leads, self.contact.since(), self.lease),
                }
            }
        }
    }

    /// Answers a [`Request::Raft`]: decodes the RPC, answers it, encodes the reply.
    pub async fn handle_encoded(&self, peer: &PeerIdentity, bytes: &[u8]) -> Reply {
        let req: RaftRequest = match codec::decode(bytes) {
            Ok(req) => req,
            Err(e) => return invalid(format!("malformed Raft RPC: {e}")),
        };
        let reply = self.handle_rpc(peer, req).await;
        match codec::encode(&reply) {
            Ok(bytes) => Reply::Raft(bytes),
            Err(e) => Reply::Error(ErrorReply::new(
                ErrorKind::Internal,
                format!("cannot encode a Raft reply: {e}"),
            )),
        }
    }
}

fn invalid(message: String) -> Reply {
    Reply::Error(ErrorReply::new(ErrorKind::Invalid, message))
}

/// Serving a `RaftService` alone (tests, or an endpoint for Raft only):
/// every request but [`Request::Raft`] is refused.
impl Service for RaftService {
    type Request = Request;
    type Reply = Reply;

    async fn handle(&self, peer: &PeerIdentity, req: Request) -> Reply {
        match req {
            Request::Raft(bytes) => self.handle_encoded(peer, &bytes).await,
            _ => invalid("this endpoint serves only Raft RPCs".into()),
        }
    }
}

/// Why a peer refused to act on a Raft RPC at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "peer refused a Raft RPC from this member (its certificate says {role}, coordinator needed)"
)]
struct ForbiddenError {
    role: Role,
}

/// Dials coordinators; keeps one connection per peer address, shared by
/// every openraft client to that peer.
#[derive(Clone)]
pub struct QuicNetwork {
    endpoint: Endpoint,
    connections: Arc<Mutex<HashMap<SocketAddr, Connection>>>,
}

impl QuicNetwork {
    /// Dials peers from `endpoint` (which carries this coordinator's identity).
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connections: Arc::default(),
        }
    }
}

impl QuicNetwork {
    /// A handle on peer `target` at `node`'s address.
    pub fn link(&self, target: NodeId, node: &Member) -> PeerLink {
        PeerLink {
            network: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerLink {
        self.link(target, node)
    }
}

/// openraft's handle on one peer.
pub struct PeerLink {
    network: QuicNetwork,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, E>>;

impl PeerLink {
    /// The shared connection to the peer, made if absent or closed.
    async fn connection<E: std::error::Error>(&self) -> RpcResult<Connection, E> {
        let addr: SocketAddr = self
            .addr
            .parse()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let cached = self.cached(addr);
        if let Some(conn) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok(conn);
        }
        let conn = transport::connect(&self.network.endpoint, addr)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        self.lock().insert(addr, conn.clone());
        Ok(conn)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Connection>> {
        self.network
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, addr: SocketAddr) -> Option<Connection> {
        self.lock().get(&addr).cloned()
    }

    /// Sends `req` and returns the reply, connecting first if needed; all
    /// within openraft's deadline, so a peer that is down (a connect attempt
    /// never answered) does not hold up elections or replication.
    pub(super) async fn ask<E: std::error::Error>(
        &self,
        req: RaftRequest,
        option: &RPCOption,
    ) -> RpcResult<RaftReply, E> {
        let exchange = async {
            let conn = self.connection().await?;
            let bytes =
                codec::encode(&req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let reply: Reply = transport::request(&conn, &Request::Raft(bytes))
                .await
                .map_err(|e| {
                    // The next call dials afresh: the peer may have restarted.
                    self.forget(&conn);
                    match e {
                        TransportError::ConnectionLost(_) | TransportError::Connection { .. } => {
                            RPCError::Unreachable(Unreachable::new(&e))
                        }
                        other => RPCError::Network(NetworkError::new(&other)),
                    }
                })?;
            match reply {
                Reply::Raft(bytes) => codec::decode::<RaftReply>(&bytes)
                    .map_err(|e| RPCError::Network(NetworkError::new(&e))),
                other => Err(RPCError::Network(NetworkError::new(&UnexpectedReply(
                    format!("{other:?}"),
                )))),
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(reply) => reply?,
            Err(e) => {
                // A peer killed and restarted on the same address never
                // closes the old connection: its RPCs would time out until
                // QUIC's idle timeout (20 s). Dial afresh next time.
                self.forget_addr();
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        match reply {
            RaftReply::Forbidden { role } => {
                Err(RPCError::Network(NetworkError::new(&ForbiddenError {
                    role,
                })))
            }
            reply => Ok(reply),
        }
    }

    fn forget_addr(&self) {
        if let Ok(addr) = self.addr.parse::<SocketAddr>() {
            self.lock().remove(&addr);
        }
    }

    fn forget(&self, conn: &Connection) {
        self.lock().retain(|_, c| c.stable_id() != conn.stable_id());
    }

    fn unexpected<E: std::error::Error>(&self, reply: &RaftReply) -> RPCError<NodeId, Member, E> {
        let e = UnexpectedReply(format!("{reply:?}"));
        RPCError::Network(NetworkError::new(&e))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, Member, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

/// The peer answered with a reply for another RPC (a bug on one side).
#[derive(Debug, thiserror::Error)]
#[error("peer answered with an unexpected reply: {0}")]
struct UnexpectedReply(String);

/// The most entries one AppendEntries carries, encoded (etcd's
/// `MaxSizePerMsg` is the same 1 MiB). openraft batches up to
/// `max_payload_entries` entries whatever their size, and gives each
/// AppendEntries one heartbeat interval (100 ms) to be answered: a batch of
/// large lab entries (16 MiB at the codec's cap) could not be encoded, sent,
/// decoded and fsynced by a follower in time, so it timed out and was sent
/// again, forever, and the follower never caught up (a test writing 40
/// entries of 512 KiB hung). A single entry larger than this still goes,
/// alone.
const APPEND_BUDGET: usize = 1 << 20;

/// Keeps the longest prefix of `rpc`'s entries (at least one) whose encoding
/// fits `budget`; returns the last kept entry's log id when some were cut.
fn fit(rpc: &mut AppendEntriesRequest<TypeConfig>, budget: usize) -> Option<LogId<NodeId>> {
    // Heartbeats and single entries (most appends) are not sized at all.
    if rpc.entries.len() <= 1 {
        return None;
    }
    let whole = codec::payload_len(&*rpc).unwrap_or(usize::MAX);
    if whole <= budget {
        return None;
    }
    // The request less its entries, then each entry in turn.
    let mut used = whole.saturating_sub(
        rpc.entries
            .iter()
            .map(|e| codec::payload_len(e).unwrap_or(0))
            .sum(),
    );
    let mut keep = 0;
    for entry in &rpc.entries {
        used = used.saturating_add(codec::payload_len(entry).unwrap_or(usize::MAX));
        if used > budget && keep > 0 {
            break;
        }
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return None;
    }
    rpc.entries.truncate(keep);
    rpc.entries.last().map(|e| e.log_id)
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let cut = fit(&mut rpc, APPEND_BUDGET);
        match self.ask(RaftRequest::AppendEntries(rpc), &option).await? {
            // Only the first part was sent: openraft sends the rest next.
            RaftReply::AppendEntries(Ok(AppendEntriesResponse::Success)) if cut.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(cut))
            }
            RaftReply::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.ask(RaftRequest::InstallSnapshot(rpc), &option).await? {
            RaftReply::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.ask(RaftRequest::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Vote};

    /// An AppendEntries of `count` entries, each naming a host of `bytes`
    /// characters.
    fn request(count: u64, bytes: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=count)
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Normal(super::super::Command::RemoveHost {
                        name: "h".repeat(bytes),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn appends_over_the_budget_send_their_longest_prefix_that_fits() {
        // Fits whole: sent whole.
        let mut rpc = request(10, 1000);
        assert_eq!(fit(&mut rpc, 20_000), None);
        assert_eq!(rpc.entries.len(), 10);
        // Ten entries of ~1 KB in a 4.5 KB budget: the first four go.
        let mut rpc = request(10, 1000);
        let cut = fit(&mut rpc, 4_500);
        assert_eq!(rpc.entries.len(), 4);
        assert_eq!(cut.map(|id| id.index), Some(4));
        assert!(codec::payload_len(&rpc).expect("size") <= 4_500);
        // One entry larger than the budget still goes alone (and is refused
        // by the peer's codec, as it would be whole).
        let mut rpc = request(3, 10_000);
        assert_eq!(fit(&mut rpc, 4_500).map(|id| id.index), Some(1));
        assert_eq!(rpc.entries.len(), 1);
        let mut rpc = request(1, 10_000);
        assert_eq!(fit(&mut rpc, 4_500), None);
    }
}
