//! Messages of the control plane: who a member is, and what the CLI, agents
//! and coordinators say to each other. Bytes are made only by [`crate::codec`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::health::GuestHealth;
use crate::image::ImageInfo;
use crate::plan::HostPlan;

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

/// One up host's image endpoint and inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostImages {
    pub host: String,
    /// `ip:port` of its image endpoint (`None`: its agent has not said).
    pub addr: Option<String>,
    pub images: Vec<ImageInfo>,
}

/// The whole cluster at one moment, as [`Request::Watch`] streams it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub status: ClusterStatus,
    pub labs: Vec<LabSnapshot>,
}

/// One lab in a [`ClusterView`]: its report and its codec-encoded
/// [`crate::lab::LabBundle`] (nodes, NICs, segments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSnapshot {
    pub report: LabReport,
    #[serde(with = "serde_bytes")]
    pub bundle: Vec<u8>,
}

/// What `labspan cluster status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub members: Vec<MemberStatus>,
    pub leader: Option<u64>,
    pub term: u64,
    /// Index of the last committed (and applied) entry on the leader.
    pub commit_index: Option<u64>,
    pub hosts: Vec<HostStatus>,
    /// Lab name → status.
    pub labs: Vec<(String, LabStatus)>,
}

/// One coordinator in the Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// A voter (false: a learner still catching up).
    pub voter: bool,
}

/// One lab host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub vtep: IpAddr,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub up: bool,
    /// Cordoned (`labspan host drain`): no new placements.
    #[serde(default)]
    pub cordoned: bool,
    /// What it can do (`None`: its agent has not said to this leader).
    pub capabilities: Option<Capabilities>,
}

/// What a host's kernel and hardware can do, as its agent found out by
/// trying (not by reading a kernel config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The netem qdisc: link delay, jitter and loss.
    pub netem: bool,
    /// The tbf qdisc: a link rate alone.
    pub tbf: bool,
    /// VXLAN devices: segments that span hosts.
    pub vxlan: bool,
    /// KVM boots a guest in time (`None`: `/dev/kvm` opens, not tried yet).
    pub kvm: Option<bool>,
}

impl Capabilities {
    /// Whether the host can put `imp` on a link (which qdisc it takes is
    /// the agent's rule: netem for delay, jitter or loss, tbf for a rate alone).
    pub fn can_impair(&self, imp: &crate::lab::Impairment) -> Result<(), &'static str> {
        match crate::lab::qdisc_for(imp) {
            Some("netem") if !self.netem => Err("netem"),
            Some("tbf") if !self.tbf => Err("tbf"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out: Vec<String> = [
            (self.netem, "netem"),
            (self.tbf, "tbf"),
            (self.vxlan, "vxlan"),
        ]
        .iter()
        .map(|(on, name)| {
            if *on {
                name.to_string()
            } else {
                format!("no-{name}")
            }
        })
        .collect();
        out.push(
            match self.kvm {
                Some(true) => "kvm",
                Some(false) => "no-kvm",
                None => "kvm-untested",
            }
            .to_string(),
        );
        f.write_str(&out.join(" "))
    }
}

/// Where a lab's nodes run and how its VMs came up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabReport {
    pub lab: String,
    /// Node → host.
    pub placement: BTreeMap<String, String>,
    /// Segment key → VNI.
    pub vnis: BTreeMap<String, u32>,
    pub status: LabStatus,
    /// Node → its own state (a lost host's nodes are `Lost` while the rest
    /// of the lab runs).
    pub nodes: BTreeMap<String, NodeState>,
    /// Who deployed the lab, from which file, and when.
    pub origin: Option<LabOrigin>,
    pub vms: Vec<VmReport>,
    /// How each guest is doing, as its agent last said.
    pub guests: Vec<GuestHealth>,
    /// Node → the checkpoint it restarted from after its host was lost.
    #[serde(default)]
    pub restored_from: BTreeMap<String, String>,
}

/// Where a lab is in its life. It crosses the wire typed: clients match on
/// it, and its text is for people only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabStatus {
    /// Placed and recorded in one step; agents are bringing it up (a fresh
    /// deploy, an edit, or nodes moving off a lost host).
    #[default]
    Deploying,
    /// Every VM is up.
    Running,
    /// Could not be brought up; the reason is for the user.
    Failed { reason: String },
    /// Being torn down.
    Deleting,
    /// Some nodes were on a host that is down and no up host can take them;
    /// the rest of the lab runs. The reason names those nodes.
    Degraded { reason: String },
}

impl LabStatus {
    /// The status word, without its reason.
    pub fn word(&self) -> &'static str {
        match self {
            LabStatus::Deploying => "Deploying",
            LabStatus::Running => "Running",
            LabStatus::Failed { .. } => "Failed",
            LabStatus::Deleting => "Deleting",
            LabStatus::Degraded { .. } => "Degraded",
        }
    }

    /// Why the lab is `Failed` or `Degraded`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            LabStatus::Failed { reason } | LabStatus::Degraded { reason } => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.word()),
            None => f.write_str(self.word()),
        }
    }
}

/// One node's own state, as the leader knows it from the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Its host is bringing it up (a deploy or an edit in flight).
    Starting,
    /// Its host was lost; it is starting on another host.
    Moving,
    /// Up, as far as the last deploy reported.
    Running,
    /// Its host is down and no host has taken it yet.
    Lost,
    /// The lab failed (its reason is the lab's).
    Failed,
    /// The lab is being torn down.
    Stopping,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Starting => "starting",
            NodeState::Moving => "moving",
            NodeState::Running => "running",
            NodeState::Lost => "lost",
            NodeState::Failed => "failed",
            NodeState::Stopping => "stopping",
        })
    }
}

/// Which lab file a deploy came from, as the CLI saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSource {
    /// The lab file's absolute path on the machine that ran `up`.
    pub file: String,
    /// That machine's name.
    pub host: String,
}

/// Who deployed a lab, from where, and when (recorded by the leader: the
/// member comes from the caller's certificate, never from the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabOrigin {
    pub member: String,
    pub source: LabSource,
    /// Seconds since the Unix epoch, on the leader's clock.
    pub deployed_unix: u64,
}

impl fmt::Display for LabOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.deployed_unix),
        );
        write!(
            f,
            "member {:?} from {}:{} at {when}",
            self.member, self.source.host, self.source.file
        )
    }
}

/// How one VM came up, as its agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    pub host: String,
    pub lab: String,
    pub vm: String,
    pub pid: u32,
    /// `None` when the VM is up and configured, else what went wrong.
    pub error: Option<String>,
}

/// Output of a command run in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// What a coordinator asks of an agent, on a stream it opens on the
/// agent's own connection (agents only dial out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Bring the host to this complete plan, then report every VM.
    ApplyPlan(HostPlan),
    /// Run a command in a guest of this host.
    Exec {
        lab: String,
        node: String,
        cmd: String,
        timeout_secs: u64,
    },
    /// Restart a guest of this host, keeping its disk.
    Restart { lab: String, node: String },
    /// Pipe a guest's serial console both ways (see [`Request::Console`]).
    Console { lab: String, node: String },
    /// Capture a guest NIC's tap as pcap (see [`Request::Capture`]).
    Capture {
        lab: String,
        node: String,
        nic: String,
        count: Option<u32>,
    },
    /// Live-migrates a guest of this host into the QEMU waiting for it on
    /// `to` (a host whose plan holds it as incoming).
    MigrateOut {
        lab: String,
        node: String,
        to: IpAddr,
        port: u16,
        /// The destination host, whose certificate the streams must show.
        host: String,
    },
    /// How a node's move looks on this host.
    MoveStatus { lab: String, node: String },
    /// Pauses every VM of `lab` on this host at `pause_at_unix_ms` (this
    /// host's clock), saves each one's RAM, device state and disk as
    /// checkpoint `name`, and resumes it.
    CheckpointSave {
        lab: String,
        name: String,
        pause_at_unix_ms: u64,
    },
    /// Removes checkpoint `name` of `lab` from this host (idempotent).
    CheckpointDrop { lab: String, name: String },
    /// Restarts `nodes` of `lab` on this host paused, in the state of
    /// checkpoint `name` (the host's last plan says how each is launched).
    CheckpointLoad {
        lab: String,
        name: String,
        nodes: Vec<String>,
    },
    /// Resumes every VM of `lab` on this host at `resume_at_unix_ms` and
    /// sets the clock of each guest that has a guest agent.
    CheckpointResume { lab: String, resume_at_unix_ms: u64 },
    /// See [`Request::CheckpointRead`].
    CheckpointRead {
        lab: String,
        name: String,
        node: String,
        kind: String,
    },
    /// See [`Request::CheckpointWrite`].
    CheckpointWrite {
        lab: String,
        name: String,
        node: String,
        file: crate::checkpoint::CheckpointFile,
    },
    /// Copies `files` of node `node`'s share of checkpoint `name` of `lab`
    /// from the image endpoint of `from` (the host holding them), each
    /// checked against its hash; answered with
    /// [`AgentReply::CheckpointCopied`].
    CheckpointCopy {
        lab: String,
        name: String,
        node: String,
        files: Vec<crate::checkpoint::CheckpointFile>,
        from: crate::image::ImageSource,
    },
    /// Removes the checkpoint files this host holds that the cluster does
    /// not record (a checkpoint that failed or was deleted while the host
    /// was away, a copy cut short): for each lab listed, every checkpoint
    /// folder but the names listed, in those every node folder but the
    /// nodes listed (lab → checkpoint → nodes this host holds), and every
    /// unfinished copy (`*.partial`). Labs not listed are left as they are.
    /// Answered with [`AgentReply::Resumed`] (nothing to report).
    CheckpointKeep {
        labs: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    },
}

/// An agent's answer to an [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentReply {
    /// The plan is applied; one entry per VM of the host.
    Applied(Vec<VmReport>),
    /// Answer to [`AgentRequest::Exec`].
    Exec(ExecResult),
    /// Raw bytes follow (console, capture).
    Streaming,
    /// The agent could not do it.
    Error(ErrorReply),
    /// Answer to [`AgentRequest::MigrateOut`]: the guest runs on the
    /// destination.
    Migrated(MoveFigures),
    /// Answer to [`AgentRequest::MoveStatus`].
    MoveStatus(MoveSide),
    /// Answer to [`AgentRequest::CheckpointSave`]: node → its share.
    CheckpointSaved {
        nodes: BTreeMap<String, crate::checkpoint::NodeCheckpoint>,
        /// When the first VM paused and the last resumed (Unix ms, this host's clock).
        paused_at_unix_ms: u64,
        resumed_at_unix_ms: u64,
    },
    /// Answer to [`AgentRequest::CheckpointResume`]: guests whose clock
    /// could not be set.
    Resumed { clock_not_set: Vec<String> },
    /// Answer to [`AgentRequest::CheckpointCopy`]: bytes copied.
    CheckpointCopied { bytes: u64 },
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
