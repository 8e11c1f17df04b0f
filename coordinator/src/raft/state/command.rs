//! The commands of the replicated log, and what applying one gives: the
//! change done, or why it was refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use labspan_proto::checkpoint::Checkpoint;
use labspan_proto::msg::{LabOrigin, Role};
use serde::{Deserialize, Serialize};

use super::{Capacity, CheckpointOpKind, LabStatus, MovePhase, FIRST_VNI, LAST_VNI};

/// A change to the cluster state: the payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Adds a host or updates what it offers (re-registration after a restart).
    RegisterHost {
        name: String,
        capacity: Capacity,
        labels: BTreeSet<String>,
        vtep: IpAddr,
    },
    /// Marks a host up or down (heartbeats started or stopped).
    SetHostUp { name: String, up: bool },
    /// Forgets a host that no lab is placed on.
    RemoveHost { name: String },
    /// Refuses coordinator `name`'s certificate from now on (it was removed).
    RevokeCoordinator { name: String },
    /// A deploy or an edit, as one entry: the spec, a VNI per segment
    /// (kept segments keep theirs), where every node runs, who deployed it,
    /// and the status `Deploying`. No prefix of the log can hold a spec
    /// without its placement.
    DeployLab {
        name: String,
        spec: Vec<u8>,
        segments: BTreeSet<String>,
        placement: BTreeMap<String, String>,
        origin: Option<LabOrigin>,
    },
    /// A recovery move, as one entry: the lab's whole new placement (same
    /// nodes), `moved` being the nodes that change host, and `Deploying`.
    /// Refused if a moved node's host is up when the entry applies: the
    /// host came back between the leader's decision and this entry, and
    /// may already have resumed the node (a host marked up gets its plan).
    MoveNodes {
        lab: String,
        placement: BTreeMap<String, String>,
        moved: BTreeSet<String>,
        /// Moved node → the checkpoint it restarts from (its files are on
        /// its new host); a moved node not here boots from its image.
        restore: BTreeMap<String, String>,
    },
    /// Records how a lab settled (`Running`, `Failed`, `Degraded`).
    SetLabStatus { lab: String, status: LabStatus },
    /// Forgets a lab and frees its VNIs.
    DeleteLab { name: String },
    /// Records a join token (by hash).
    AddToken {
        hash: String,
        role: Role,
        expires_unix: u64,
    },
    /// Consumes a join token; `now_unix` is the proposer's clock, so every
    /// replica decides the same.
    UseToken {
        hash: String,
        name: String,
        now_unix: u64,
    },
    /// Records the intent to move `node` of `lab` live to host `to`
    /// (phase `Preparing`); refused while the lab has a move in progress.
    BeginMove {
        lab: String,
        node: String,
        to: String,
        port: u16,
    },
    /// Advances the lab's move to `phase`.
    SetMovePhase { lab: String, phase: MovePhase },
    /// Ends the lab's move: `done` places the node on the destination,
    /// else it stays where it was (rolled back).
    EndMove { lab: String, done: bool },
    /// Cordons a host (no new placements) or ends its cordon.
    Cordon { name: String, cordoned: bool },
    /// [`Command::RegisterHost`] for every host in order: the agents that
    /// register while the previous entry is being committed share one
    /// entry (a thousand agents registering at once are a few entries, not
    /// a thousand).
    RegisterHosts { hosts: Vec<Registration> },
    /// Records the intent to take checkpoint `name` of `lab`, or to reset
    /// the lab to it; refused while the lab moves a node or has another
    /// such operation in progress, for a name already taken (create) or
    /// unknown (reset).
    BeginCheckpoint {
        lab: String,
        name: String,
        kind: CheckpointOpKind,
    },
    /// Ends the lab's checkpoint operation: `checkpoint` is the one taken
    /// (a create that succeeded), else nothing is added.
    EndCheckpoint {
        lab: String,
        checkpoint: Option<Box<Checkpoint>>,
    },
    /// Forgets checkpoint `name` of `lab`.
    DeleteCheckpoint { lab: String, name: String },
    /// Host `host` holds a checked copy of node `node`'s files of
    /// checkpoint `name` of `lab`.
    CheckpointCopied {
        lab: String,
        name: String,
        node: String,
        host: String,
    },
}

/// One host's registration, as [`Command::RegisterHosts`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub capacity: Capacity,
    pub labels: BTreeSet<String>,
    pub vtep: IpAddr,
}

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The state changed (or already was as asked).
    Done,
    /// The lab's segments and their VNIs after the command.
    Vnis(BTreeMap<String, u32>),
    /// A join token was consumed: the role it grants, and for a coordinator
    /// the Raft node id reserved for it.
    TokenUsed { role: Role, node_id: Option<u64> },
}

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("host {0:?} is not registered")]
    UnknownHost(String),
    #[error("lab {0:?} does not exist")]
    UnknownLab(String),
    #[error("lab {0:?} already exists; delete it first or update its spec")]
    LabExists(String),
    #[error("host {host:?} still runs nodes of lab {lab:?}; delete or move the lab first")]
    HostInUse { host: String, lab: String },
    #[error("lab {lab:?}: node {node:?} is placed on unknown host {host:?}")]
    PlacementOnUnknownHost {
        lab: String,
        node: String,
        host: String,
    },
    #[error("lab {lab:?}: {reason}")]
    BadPlacement { lab: String, reason: String },
    #[error("lab {lab:?}: node {node:?} is not moved: its host {host:?} is up again")]
    HostBackUp {
        lab: String,
        node: String,
        host: String,
    },
    #[error("lab {lab:?}: the spec does not decode: {reason}")]
    BadSpec { lab: String, reason: String },
    #[error("unknown join token: ask an admin for a new one (`labspan cluster token`)")]
    UnknownToken,
    #[error("lab {0:?} has no move in progress")]
    NoMove(String),
    #[error("lab {lab:?} is already moving node {node:?}: wait until that move ends")]
    MoveInProgress { lab: String, node: String },
    #[error("lab {lab:?} is {doing} checkpoint {name:?}: wait until that ends")]
    CheckpointInProgress {
        lab: String,
        name: String,
        doing: String,
    },
    #[error(
        "lab {lab:?} already has a checkpoint {name:?}; choose another name or delete it first"
    )]
    CheckpointExists { lab: String, name: String },
    #[error("lab {lab:?} has no checkpoint {name:?}{hint}")]
    UnknownCheckpoint {
        lab: String,
        name: String,
        hint: String,
    },
    #[error("lab {0:?} has no checkpoint in progress")]
    NoCheckpointOp(String),
    #[error("join token already used by {0:?}: tokens are one-time, ask for a new one")]
    TokenUsed(String),
    #[error("join token expired: ask for a new one (`labspan cluster token --ttl ...`)")]
    TokenExpired,
    #[error(
        "no free VNI left for lab {lab:?} (need {needed}, {free} free in {FIRST_VNI}..={LAST_VNI})"
    )]
    VnisExhausted {
        lab: String,
        needed: usize,
        free: usize,
    },
}

/// The result of applying one command, returned to whoever proposed it.
pub type CommandResult = Result<Applied, Rejection>;
