//! Messages of the control plane: who a member is, and what the CLI, agents
//! and coordinators say to each other. Bytes are made only by [`crate::codec`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::health::GuestHealth;
use crate::image::ImageInfo;

mod agent;
mod status;

pub use agent::{AgentReply, AgentRequest};
pub use status::{
    Capabilities, ClusterStatus, ClusterView, ExecResult, HostImages, HostStatus, LabOrigin,
    LabReport, LabSnapshot, LabSource, LabStatus, MemberStatus, NodeState, VmReport,
};

/// What a cluster member is; written into its certificate, it decides what
/// the member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Runs Raft and serves the API.
    Coordinator,
    /// Runs VMs on one lab host.
    Agent,
    /// A person or tool that may change the cluster (CLI).
    Admin,
    /// A person or tool that may only read.
    Viewer,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Agent, Role::Admin, Role::Viewer];

    /// The lowercase name used in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of coordinator, agent, admin, viewer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected coordinator, agent, admin or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// A request sent on its own QUIC stream to a coordinator.
///
/// Which roles may send which request is decided in one place, the
/// coordinator's `service::authz::may`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness probe; the reply echoes the nonce.
    Ping { nonce: u64 },
    /// Asks who the coordinator thinks the caller is (from its certificate).
    WhoAmI,
    /// A Raft RPC between coordinators, encoded with [`crate::codec`] by the
    /// coordinator crate (this crate does not know openraft's types).
    Raft(Vec<u8>),
    /// Members, leader, term, hosts and labs (linearizable read).
    Status,
    /// A one-time join token for a new member of `role`.
    CreateToken { role: Role, ttl_secs: u64 },
    /// Deploys a lab, or applies an edited one: `bundle` is a
    /// [`crate::lab::LabBundle`] encoded with [`crate::codec`]; the files it
    /// copies into guests are named by hash and uploaded first ([`Request::PutFile`]).
    /// `source` says which file it came from; a lab deployed from another
    /// file or by another member is replaced only with `replace`.
    DeployLab {
        bundle: Vec<u8>,
        source: LabSource,
        replace: bool,
    },
    /// Stores a guest file in the coordinators' file store (the leader keeps
    /// it and copies it to every coordinator); the reply names its hash.
    PutFile {
        // One block, not a serde call per byte (a second per 12 MiB in a
        // debug build, on a runtime thread); the same bytes on the wire.
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    },
    /// The leader copies a stored guest file to another coordinator.
    StoreFile {
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    },
    /// The contents of a stored guest file (an agent, before it writes the
    /// file into a guest; a coordinator that lacks a copy).
    GetFile { sha256: String },
    /// Stops a lab on every host and forgets it.
    DeleteLab { name: String },
    /// The bundle of a deployed lab (as deployed), and its record.
    GetLab { name: String },
    /// Runs a command in a guest (the coordinator asks that guest's agent).
    Exec {
        lab: String,
        node: String,
        cmd: String,
        timeout_secs: u64,
    },
    /// An agent announces its host (named by its certificate).
    RegisterHost {
        memory_mib: u64,
        cpus: u32,
        /// vCPUs the host offers to labs: `cpus` × its agent's
        /// `--cpu-overcommit`.
        vcpus: u64,
        vtep: IpAddr,
        underlay_mtu: u32,
    },
    /// An agent is alive (not a Raft entry: the leader keeps it in memory).
    Heartbeat,
    /// An agent tells the leader what its host can do (soft state on the
    /// leader, like heartbeats); sent before registering.
    HostCapabilities(Capabilities),
    /// A new coordinator, holding the certificate of a join, asks to be
    /// added as a learner, then promoted to voter.
    AddCoordinator { id: u64, addr: String },
    /// Consumes a join token (a coordinator forwards it to the leader).
    UseToken { token: String, name: String },
    /// Removes a coordinator (by name or Raft id) from the voters; the
    /// leader refuses to remove the last voter or to leave too few
    /// reachable voters to commit.
    RemoveCoordinator { member: String },
    /// A request a coordinator forwards to the leader on behalf of a caller;
    /// the leader checks the caller's role again.
    Forwarded {
        name: String,
        role: Role,
        request: Box<Request>,
    },
    /// An agent tells the leader the images its host holds and where its
    /// image endpoint listens (soft state on the leader, like heartbeats);
    /// sent before registering and whenever the store changes.
    ImageInventory {
        addr: Option<String>,
        images: Vec<ImageInfo>,
    },
    /// The image endpoints of the hosts that are up, and what each holds
    /// (`labspan image push` picks one).
    ImageHosts,
    /// An agent tells the leader how its guests are doing (soft state,
    /// sent when it changes).
    GuestHealth { guests: Vec<GuestHealth> },
    /// Restarts one node's guest on its host, keeping its disk.
    RestartNode { lab: String, node: String },
    /// A byte stream: the serial console of a guest, both ways. After the
    /// reply ([`Reply::Streaming`] or an error) the stream carries raw bytes.
    Console { lab: String, node: String },
    /// A byte stream: packets of a guest NIC's tap as pcap, captured on its
    /// host (`count` packets, or until the caller closes the stream).
    Capture {
        lab: String,
        node: String,
        nic: String,
        count: Option<u32>,
    },
    /// Moves a running node of a lab to another host without a restart
    /// (`to`: `None` lets placement choose). Answered when the move is done
    /// or rolled back.
    MoveNode {
        lab: String,
        node: String,
        to: Option<String>,
    },
    /// Cordons a host (no new placements) or ends its cordon.
    Cordon { host: String, cordoned: bool },
    /// A stream of the cluster as the leader sees it: after
    /// [`Reply::Streaming`], one [`ClusterView`] message now and one each
    /// time it changes (`labspan web`). It ends when leadership moves.
    Watch,
    /// Takes a consistent checkpoint of every VM of a running lab
    /// (answered once it is recorded, or failed and removed everywhere).
    CheckpointCreate { lab: String, name: String },
    /// A lab's checkpoints.
    CheckpointList { lab: String },
    /// Removes a checkpoint of a lab from the record and from its hosts.
    CheckpointDelete { lab: String, name: String },
    /// Brings every VM of a lab back to one of its checkpoints.
    Reset { lab: String, name: String },
    /// A byte stream: after [`Reply::Streaming`], the bytes of one file
    /// (`kind`: `ram` or `disk`) of a node's share of a checkpoint, from
    /// the host holding it (`labspan save`).
    CheckpointRead {
        lab: String,
        name: String,
        node: String,
        kind: String,
    },
    /// A byte stream: after [`Reply::Streaming`], the caller sends the
    /// bytes of `file` for a node's share of checkpoint `name` and ends its
    /// side; the node's host checks them against `file` and answers with
    /// one [`AgentReply`] frame (`labspan load`).
    CheckpointWrite {
        lab: String,
        name: String,
        node: String,
        file: crate::checkpoint::CheckpointFile,
    },
    /// Records `checkpoint` of a running lab, whose files the hosts of its
    /// nodes already hold ([`Request::CheckpointWrite`]); answered with
    /// [`Reply::Checkpointed`].
    CheckpointImport {
        lab: String,
        checkpoint: crate::checkpoint::Checkpoint,
    },
    /// An agent tells the leader what its VMs are doing (soft state, not
    /// logged; at most [`crate::progress::MAX_BATCH`] events).
    Progress {
        events: Vec<crate::progress::ProgressEvent>,
    },
    /// A stream of progress (`labspan up`, `down`, `events`): after
    /// [`Reply::Streaming`], one [`crate::progress::ProgressEvent`] message
    /// per step of lab `lab` (every lab: `None`) from now on. It ends when
    /// leadership moves.
    Follow { lab: Option<String> },
}

impl Request {
    /// Whether the stream of this request carries raw bytes after its
    /// reply (console, capture), also when forwarded.
    pub fn is_stream(&self) -> bool {
        match self {
            Request::Console { .. }
            | Request::Capture { .. }
            | Request::Watch
            | Request::CheckpointRead { .. }
            | Request::CheckpointWrite { .. }
            | Request::Follow { .. } => true,
            Request::Forwarded { request, .. } => request.is_stream(),
            _ => false,
        }
    }
}

/// The reply to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to [`Request::Ping`].
    Pong { nonce: u64 },
    /// Answer to [`Request::WhoAmI`].
    Identity { name: String, role: Role },
    /// Answer to [`Request::Raft`], codec-encoded.
    Raft(Vec<u8>),
    /// Answer to [`Request::Status`].
    Status(ClusterStatus),
    /// Answer to [`Request::CreateToken`].
    Token {
        token: String,
        ca_fingerprint: String,
        expires_unix: u64,
    },
    /// Answer to [`Request::DeployLab`]: where every node runs and how each VM came up.
    Deployed(LabReport),
    /// Answer to [`Request::GetLab`].
    Lab { bundle: Vec<u8>, report: LabReport },
    /// Answer to [`Request::Exec`].
    Exec(ExecResult),
    /// Answer to [`Request::UseToken`]: the role the token grants, and the
    /// Raft node id reserved for a coordinator.
    TokenUsed { role: Role, node_id: Option<u64> },
    /// Done (heartbeat, registration, deletion, membership change).
    Done,
    /// This coordinator is not the leader; ask the one at `leader` (agents
    /// connect to the leader themselves).
    NotLeader { leader: Option<String> },
    /// The request was understood and refused.
    Error(ErrorReply),
    /// Answer to [`Request::ImageHosts`].
    ImageHosts(Vec<HostImages>),
    /// Answer to [`Request::Console`] and [`Request::Capture`]: raw bytes
    /// follow on the stream.
    Streaming,
    /// Answer to [`Request::RegisterHost`] and [`Request::Heartbeat`] from a
    /// leader that confirmed it still holds a quorum: the agent's VMs may
    /// run until `lease_ms` after it sent the request (then it pauses them);
    /// it heartbeats every `heartbeat_ms`.
    Lease { heartbeat_ms: u64, lease_ms: u64 },
    /// Answer to [`Request::PutFile`] and [`Request::StoreFile`].
    FileStored { sha256: String },
    /// Answer to [`Request::GetFile`].
    File {
        #[serde(with = "serde_bytes")]
        contents: Vec<u8>,
    },
    /// Answer to [`Request::MoveNode`]: the move is done.
    Moved(MoveReport),
    /// Answer to [`Request::CheckpointCreate`]: the checkpoint as recorded.
    Checkpointed(crate::checkpoint::Checkpoint),
    /// Answer to [`Request::CheckpointList`], oldest first.
    Checkpoints(Vec<crate::checkpoint::Checkpoint>),
    /// Answer to [`Request::Reset`].
    WasReset(crate::checkpoint::ResetReport),
}

/// A finished move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReport {
    pub lab: String,
    pub node: String,
    pub from: String,
    pub to: String,
    pub figures: MoveFigures,
    /// From the request to the recorded end, on the leader.
    pub total_ms: u64,
}

/// What one live migration measured, from the source's QEMU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveFigures {
    /// Bytes of the guest's own disk layer copied (0 without a disk).
    pub disk_bytes: u64,
    /// Time to copy the disk until the mirror was in step.
    pub disk_ms: u64,
    /// RAM bytes sent, all passes.
    pub ram_bytes: u64,
    /// RAM passes (dirty-memory syncs).
    pub ram_passes: u64,
    /// QEMU's measured downtime (the guest paused on both sides).
    pub downtime_ms: u64,
    /// The RAM migration's wall time (QEMU's `total-time`).
    pub migrate_ms: u64,
    /// On the source agent, from its first QMP command to `completed`.
    pub total_ms: u64,
}

/// How one side of a move looks to its agent (a new leader asks both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveSide {
    /// No QEMU of that node on this host.
    Absent,
    /// Source: this agent is migrating it now.
    Migrating,
    /// Source: QEMU's migration completed (the guest left); destination:
    /// the guest arrived.
    Completed,
    /// A QEMU runs the node and no migration of it is under way or done.
    Idle,
    /// Destination: QEMU waits for or receives the guest.
    Waiting,
}

/// A request to a coordinator's join endpoint, from a member that has no
/// certificate yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRequest {
    /// Exchanges a join token for a certificate naming `name`, signed over
    /// the public key of `csr_pem` (a PEM certificate request the member
    /// made with its own key, which never leaves it).
    Join {
        token: String,
        name: String,
        csr_pem: String,
    },
}

/// The answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    Joined(JoinGrant),
    Error(ErrorReply),
}

/// What a new member receives: its credential and how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    pub role: Role,
    pub ca_pem: String,
    /// The member's certificate, for the key of its request.
    pub cert_pem: String,
    /// The CA key, for coordinators only: every coordinator signs joins
    /// (as kubeadm's control-plane join copies the CA).
    pub ca_key_pem: Option<String>,
    /// Raft node id, for coordinators only.
    pub node_id: Option<u64>,
    /// Addresses of the coordinators' API endpoints.
    pub coordinators: Vec<String>,
}

/// Why a coordinator refused a request, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// Broad class of a refusal, for programs that react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The caller's role may not do this.
    Forbidden,
    /// The request is well-formed but invalid (bad name, unknown lab, ...).
    Invalid,
    /// This coordinator is not the leader and could not forward.
    NotLeader,
    /// Something failed inside the coordinator.
    Internal,
    /// The named lab, node or host does not exist.
    NotFound,
    /// No coordinator or agent could be reached to do it.
    Unavailable,
    /// It would undo someone else's work (a lab deployed from another file
    /// or by another member); the message says whose, and how to insist.
    Conflict,
    /// It was started but did not end in the time it was given.
    TimedOut,
}

impl ErrorReply {
    /// A refusal of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
