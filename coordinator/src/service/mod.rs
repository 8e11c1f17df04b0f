//! The coordinator daemon: one QUIC endpoint serving the Raft RPCs and the
//! API to members whose certificate role allows it, a join endpoint for
//! members without a certificate yet, and the leader's duties (placement,
//! host plans pushed to agents, host liveness).
//!
//! Every request is checked by [`authz::may`] first. Writes and fresh reads
//! run on the leader: a follower forwards them over its own connection
//! (`Request::Forwarded`, the leader checks the caller's role again). Agents
//! are not forwarded: they are told where the leader is and connect to it,
//! so the leader holds their connections and can push plans on them.

mod agents;
pub mod authz;
mod checkpoints;
pub mod data_dir;
pub mod decide;
mod files;
#[cfg(test)]
mod fixtures;
mod hosts;
mod images;
mod join;
mod labs;
mod leader;
mod moves;
mod progress;
mod push;
pub mod recovery;
mod resume;
mod status;
mod stream;
pub mod timing;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use labspan_proto::msg::{Capabilities, ErrorKind, ErrorReply, Reply, Request, Role};
use labspan_transport::tls::{ClusterCa, PeerIdentity};
use labspan_transport::{self as transport, Service, TransportError};
use openraft::Raft;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::task::JoinHandle;

use crate::raft::{
    self, Member, NodeId, OpenError, QuicNetwork, RaftService, SharedState, TypeConfig,
};
pub use data_dir::{DataDir, DataDirError, NodeConfig};
pub use timing::{RaftTiming, Timing, TimingError};

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its data folder is missing or incomplete.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Its endpoints could not be opened (address in use?).
    #[error("cannot open the coordinator's endpoints: {0}")]
    Transport(TransportError),
    /// Its Raft store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Raft refused to start or to initialize.
    #[error("raft: {0}")]
    Raft(String),
    /// The liveness settings contradict each other.
    #[error("timing: {0}")]
    Timing(TimingError),
}

impl From<TransportError> for StartError {
    fn from(e: TransportError) -> Self {
        StartError::Transport(e)
    }
}

impl From<TimingError> for StartError {
    fn from(e: TimingError) -> Self {
        StartError::Timing(e)
    }
}

/// What the leader knows of a host outside the log: when it was last heard of.
#[derive(Debug, Clone, Copy)]
struct HostLive {
    last_seen: Instant,
    /// Silence after which the host is marked down: the lease this leader
    /// last granted it (or would grant, for a host not heard yet) plus the
    /// fence margin. Kept per host because the lease grows with the
    /// cluster ([`Timing::for_hosts`]) and a host must be waited for as
    /// long as the lease it holds.
    down_after: Duration,
    underlay_mtu: u32,
}

/// State shared by the service, the join endpoint and the background tasks.
struct Inner {
    id: NodeId,
    name: String,
    raft: Raft<TypeConfig>,
    state: SharedState,
    ca: ClusterCa,
    /// Dials other coordinators (forwarding) with this coordinator's identity.
    endpoint: Endpoint,
    raft_rpc: RaftService,
    /// Connections to other coordinators, by address.
    peers: Mutex<HashMap<SocketAddr, Connection>>,
    /// The latest connection of each agent, by host name.
    agents: Mutex<HashMap<String, Connection>>,
    /// Counts the hosts the leader has marked down: a request in flight to
    /// an agent gives up when its host is marked down (see [`agents::request`]).
    hosts_lost: tokio::sync::watch::Sender<u64>,
    /// Heartbeats (leader only).
    live: Mutex<HashMap<String, HostLive>>,
    /// How each host's guests are doing, as its agent last said (leader only).
    guests: Mutex<HashMap<String, Vec<labspan_proto::health::GuestHealth>>>,
    /// Heartbeat, lease and detection durations.
    timing: Timing,
    /// Guest files by hash (every coordinator keeps a copy; see [`files`]).
    files: labspan_proto::files::FileStore,
    /// What images each host holds and where it serves them (leader only).
    images: Mutex<crate::images::Inventories>,
    /// What each host can do, as its agent said (leader only).
    capabilities: Mutex<HashMap<String, Capabilities>>,
    /// One lab change at a time: placement sees the previous one's result.
    lab_lock: tokio::sync::Mutex<()>,
    /// Leadership confirmations shared by the reads waiting at once.
    reads: leader::SharedReads,
    /// Agent registrations waiting to share a Raft entry (leader only).
    registrations: hosts::Registrations,
    /// Set once this coordinator saw itself a voter (a removal is then
    /// told apart from a join still catching up as a learner).
    was_member: std::sync::atomic::AtomicBool,
    /// Counters and histograms served on `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// Per-node steps for whoever follows a lab (leader only).
    progress: progress::Hub,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The API service: authorization, then dispatch.
pub struct CoordinatorService {
    inner: Arc<Inner>,
}

impl Service for CoordinatorService {
    type Request = Request;
    type Reply = Reply;

    async fn handle(&self, peer: &PeerIdentity, req: Request) -> Reply {
        if !authz::may(peer.role, &req) {
            return forbidden(peer, &req);
        }
        if let Some(refused) = self.inner.revoked_refusal(peer) {
            return refused;
        }
        if let Some(refused) = self.inner.removed_refusal(&req) {
            return refused;
        }
        self.inner.dispatch(peer, req, true).await
    }

    fn connected(&self, peer: &PeerIdentity, conn: &Connection) {
        if peer.role == Role::Agent {
            lock(&self.inner.agents).insert(peer.name.clone(), conn.clone());
        }
    }

    fn is_stream(&self, req: &Request) -> bool {
        req.is_stream()
    }

    async fn stream(&self, peer: &PeerIdentity, req: Request, send: SendStream, recv: RecvStream) {
        stream::serve(&self.inner, peer, req, send, recv).await;
    }
}

fn forbidden(peer: &PeerIdentity, req: &Request) -> Reply {
    tracing::warn!(name = %peer.name, role = %peer.role, request = kind(req), "refused a request the role does not allow");
    error(
        ErrorKind::Forbidden,
        format!(
            "member {:?} is {} and may not send {}",
            peer.name,
            peer.role,
            kind(req)
        ),
    )
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}

/// A request's name, for messages and logs.
fn kind(req: &Request) -> &'static str {
    match req {
        Request::Ping { .. } => "Ping",
        Request::WhoAmI => "WhoAmI",
        Request::Raft(_) => "Raft RPCs",
        Request::Status => "Status",
        Request::CreateToken { .. } => "CreateToken",
        Request::DeployLab { .. } => "DeployLab",
        Request::DeleteLab { .. } => "DeleteLab",
        Request::GetLab { .. } => "GetLab",
        Request::Exec { .. } => "Exec",
        Request::RegisterHost { .. } => "RegisterHost",
        Request::Heartbeat => "Heartbeat",
        Request::HostCapabilities(_) => "HostCapabilities",
        Request::AddCoordinator { .. } => "AddCoordinator",
        Request::UseToken { .. } => "UseToken",
        Request::RemoveCoordinator { .. } => "RemoveCoordinator",
        Request::Forwarded { .. } => "Forwarded",
        Request::ImageInventory { .. } => "ImageInventory",
        Request::GuestHealth { .. } => "GuestHealth",
        Request::RestartNode { .. } => "RestartNode",
        Request::ImageHosts => "ImageHosts",
        Request::Console { .. } => "Console",
        Request::Capture { .. } => "Capture",
        Request::PutFile { .. } => "PutFile",
        Request::StoreFile { .. } => "StoreFile",
        Request::GetFile { .. } => "GetFile",
        Request::MoveNode { .. } => "MoveNode",
        Request::Cordon { .. } => "Cordon",
        Request::Watch => "Watch",
        Request::CheckpointCreate { .. } => "CheckpointCreate",
        Request::CheckpointList { .. } => "CheckpointList",
        Request::CheckpointDelete { .. } => "CheckpointDelete",
        Request::Reset { .. } => "Reset",
        Request::CheckpointRead { .. } => "CheckpointRead",
        Request::CheckpointWrite { .. } => "CheckpointWrite",
        Request::CheckpointImport { .. } => "CheckpointImport",
        Request::Progress { .. } => "Progress",
        Request::Follow { .. } => "Follow",
    }
}

impl Inner {
    /// Runs an authorized request; `may_forward` is false for a request
    /// another coordinator already forwarded here (one hop at most).
    async fn dispatch(
        self: &Arc<Self>,
        caller: &PeerIdentity,
        req: Request,
        may_forward: bool,
    ) -> Reply {
        match req {
            Request::Ping { nonce } => Reply::Pong { nonce },
            Request::WhoAmI => Reply::Identity {
                name: caller.name.clone(),
                role: caller.role,
            },
            Request::Raft(bytes) => self.raft_rpc.handle_encoded(caller, &bytes).await,
            Request::Forwarded {
                name,
                role,
                request,
            } => {
                let origin = PeerIdentity { name, role };
                if !authz::may(role, &request) {
                    return forbidden(&origin, &request);
                }
                Box::pin(self.dispatch(&origin, *request, false)).await
            }
            Request::RegisterHost {
                memory_mib,
                cpus,
                vcpus,
                vtep,
                underlay_mtu,
            } => match self.not_leader() {
                Some(reply) => reply,
                None => {
                    let name = &caller.name;
                    hosts::register(self, name, memory_mib, cpus, vcpus, vtep, underlay_mtu).await
                }
            },
            Request::Heartbeat => match self.not_leader() {
                Some(reply) => reply,
                None => hosts::heartbeat(self, &caller.name).await,
            },
            Request::HostCapabilities(found) => match self.not_leader() {
                Some(reply) => reply,
                None => {
                    lock(&self.capabilities).insert(caller.name.clone(), found);
                    Reply::Done
                }
            },
            Request::StoreFile { contents } => files::store(self, contents).await,
            Request::GetFile { sha256 } => {
                let may_ask_peers = caller.role != Role::Coordinator;
                files::get(self, &sha256, may_ask_peers).await
            }
            Request::ImageInventory { addr, images } => match self.not_leader() {
                Some(reply) => reply,
                None => images::inventory(self, &caller.name, addr, images),
            },
            Request::Progress { events } if caller.role == Role::Agent => match self.not_leader() {
                Some(reply) => reply,
                None => progress::from_agent(self, &caller.name, events),
            },
            Request::GuestHealth { guests } => match self.not_leader() {
                Some(reply) => reply,
                None => {
                    lock(&self.guests).insert(caller.name.clone(), guests);
                    Reply::Done
                }
            },
            other if self.is_leader() => self.on_leader(caller, other).await,
            other if may_forward => self.forward(caller, other).await,
            _ => error(
                ErrorKind::NotLeader,
                "leadership moved while the request was forwarded; retry",
            ),
        }
    }

    /// Requests that run on the leader only.
    async fn on_leader(self: &Arc<Self>, caller: &PeerIdentity, req: Request) -> Reply {
        match req {
            Request::Progress { events } => progress::from_member(self, events),
            Request::Status => status::status(self).await,
            Request::GetLab { name } => labs::get(self, &name).await,
            Request::CreateToken { role, ttl_secs } => {
                join::create_token(self, role, ttl_secs).await
            }
            Request::UseToken { token, name } => join::use_token(self, &token, &name).await,
            Request::RemoveCoordinator { member } => {
                leader::remove_coordinator(self, &member).await
            }
            Request::AddCoordinator { id, addr } => {
                leader::add_coordinator(self, id, &caller.name, &addr).await
            }
            Request::DeployLab {
                bundle,
                source,
                replace,
            } => labs::deploy(self, caller, bundle, source, replace).await,
            Request::PutFile { contents } => files::put(self, contents).await,
            Request::DeleteLab { name } => labs::delete(self, &name).await,
            Request::ImageHosts => images::hosts(self).await,
            Request::Exec {
                lab,
                node,
                cmd,
                timeout_secs,
            } => labs::exec(self, &lab, &node, &cmd, timeout_secs).await,
            Request::RestartNode { lab, node } => labs::restart(self, &lab, &node).await,
            Request::MoveNode { lab, node, to } => {
                moves::move_node(self, &lab, &node, to.as_deref()).await
            }
            Request::Cordon { host, cordoned } => hosts::cordon(self, &host, cordoned).await,
            Request::CheckpointCreate { lab, name } => checkpoints::create(self, &lab, &name).await,
            Request::CheckpointList { lab } => checkpoints::list(self, &lab).await,
            Request::CheckpointDelete { lab, name } => checkpoints::delete(self, &lab, &name).await,
            Request::Reset { lab, name } => checkpoints::reset(self, &lab, &name).await,
            Request::CheckpointImport { lab, checkpoint } => {
                checkpoints::import(self, &lab, checkpoint).await
            }
            other => error(
                ErrorKind::Invalid,
                format!("{} is not served here", kind(&other)),
            ),
        }
    }

    fn me(&self) -> PeerIdentity {
        PeerIdentity {
            name: self.name.clone(),
            role: Role::Coordinator,
        }
    }
}

/// A running coordinator.
pub struct Running {
    /// Its Raft node.
    pub raft: Raft<TypeConfig>,
    /// Read access to its replica of the cluster state.
    pub state: SharedState,
    /// The address its API listens on.
    pub addr: SocketAddr,
    /// What `/metrics` serves.
    pub metrics: crate::metrics::Source,
    endpoint: Endpoint,
    join_endpoint: Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

/// How long each step of a shutdown may take.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(5);

/// Starts the coordinator whose data folder is `dir`, with production timing.
pub async fn start(dir: &Path) -> Result<Running, StartError> {
    start_with(dir, Timing::default()).await
}

/// Starts the coordinator whose data folder is `dir`, with `timing`.
pub async fn start_with(dir: &Path, timing: Timing) -> Result<Running, StartError> {
    timing.validate()?;
    let data = DataDir::at(dir);
    let (config, ca, me) = data.load()?;
    let endpoint = transport::server_endpoint(config.listen, ca.cert(), &me)?;
    let addr = endpoint
        .local_addr()
        .map_err(|cause| TransportError::Bind {
            addr: config.listen,
            cause,
        })?;
    let join_at = labspan_transport::client::join_addr(addr);
    let join_endpoint = transport::join_server_endpoint(join_at, ca.cert(), &me)?;
    let (log, sm) = raft::open(&data.raft_store())?;
    let state = sm.shared();
    let metrics = Arc::new(crate::metrics::Metrics::new(sm.apply_seconds()));
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let raft_config = openraft::Config {
        cluster_name: "labspan".into(),
        heartbeat_interval: ms(timing.raft.heartbeat),
        election_timeout_min: ms(timing.raft.election_timeout_min),
        election_timeout_max: ms(timing.raft.election_timeout_max),
        // The campaign gate turns elections on when a pre-vote would win.
        enable_elect: false,
        ..Default::default()
    };
    let raft_config = Arc::new(
        raft_config
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?,
    );
    let network = QuicNetwork::new(endpoint.clone());
    let raft = Raft::new(config.id, raft_config, network.clone(), log, sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let inner = Arc::new(Inner {
        id: config.id,
        name: config.name.clone(),
        raft: raft.clone(),
        state: state.clone(),
        ca,
        endpoint: endpoint.clone(),
        raft_rpc: RaftService::new(raft.clone(), timing.raft.lease()),
        peers: Mutex::default(),
        agents: Mutex::default(),
        hosts_lost: tokio::sync::watch::Sender::new(0),
        live: Mutex::default(),
        guests: Mutex::default(),
        timing,
        images: Mutex::default(),
        capabilities: Mutex::default(),
        files: labspan_proto::files::FileStore::at(data.file_store()),
        lab_lock: tokio::sync::Mutex::new(()),
        reads: leader::SharedReads::default(),
        registrations: hosts::Registrations::default(),
        was_member: std::sync::atomic::AtomicBool::new(false),
        metrics: metrics.clone(),
        progress: progress::Hub::default(),
    });
    let mut tasks = vec![
        transport::serve(
            endpoint.clone(),
            Arc::new(CoordinatorService {
                inner: inner.clone(),
            }),
        ),
        transport::serve_join(
            join_endpoint.clone(),
            Arc::new(join::JoinHandler {
                inner: inner.clone(),
            }),
        ),
        tokio::spawn(hosts::monitor(inner.clone())),
        tokio::spawn(resume::on_leadership(inner.clone())),
        tokio::spawn(leader::watch_membership(inner.clone())),
        tokio::spawn(files::keep_copies(inner.clone())),
        tokio::spawn(crate::metrics::watch_leader(raft.clone(), metrics.clone())),
        tokio::spawn(raft::campaign::gate(
            raft.clone(),
            config.id,
            network.clone(),
            inner.raft_rpc.contact(),
            timing.raft,
        )),
    ];
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if config.bootstrap && !initialized {
        let member = Member {
            name: config.name.clone(),
            addr: addr.to_string(),
        };
        let members = std::collections::BTreeMap::from([(config.id, member)]);
        raft.initialize(members)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
    } else if !config.bootstrap {
        tasks.push(tokio::spawn(leader::become_member(
            inner.clone(),
            config.peers.clone(),
            addr.to_string(),
        )));
    }
    tracing::info!(id = config.id, name = %config.name, %addr, join = %join_at, "coordinator started");
    Ok(Running {
        metrics: crate::metrics::Source {
            raft: raft.clone(),
            state: state.clone(),
            metrics,
        },
        raft,
        state,
        addr,
        endpoint,
        join_endpoint,
        tasks,
    })
}

impl Running {
    /// Resolves when Raft has stopped on its own: a storage error (a full
    /// or failing disk) is fatal to openraft, and a coordinator whose Raft
    /// is gone can neither vote nor serve. The caller exits, so that the
    /// service manager restarts it once the disk is fixed, rather than
    /// leaving a member that answers and does nothing.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft metrics closed".into();
            }
        }
    }

    /// Stops Raft and closes both endpoints (peers hear the close).
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        // Bounded: a Raft that already stopped on a fatal error may not
        // answer its shutdown, and a stopping process must not hang.
        match tokio::time::timeout(SHUTDOWN_WITHIN, self.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft did not shut down cleanly"),
            Err(_) => tracing::warn!("raft did not shut down within {SHUTDOWN_WITHIN:?}"),
        }
        self.endpoint.close(0u32.into(), b"coordinator stopping");
        self.join_endpoint
            .close(0u32.into(), b"coordinator stopping");
        let idle = async {
            self.endpoint.wait_idle().await;
            self.join_endpoint.wait_idle().await;
        };
        if tokio::time::timeout(SHUTDOWN_WITHIN, idle).await.is_err() {
            tracing::warn!("connections still open {SHUTDOWN_WITHIN:?} after the close");
        }
    }
}
