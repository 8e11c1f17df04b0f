//! What a coordinator and an agent say to each other on the streams the
//! coordinator opens on the agent's connection.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ErrorReply, ExecResult, MoveFigures, MoveSide, VmReport};
use crate::plan::HostPlan;

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
    /// Pipe a guest's serial console both ways (see [`Request::Console`](super::Request::Console)).
    Console { lab: String, node: String },
    /// Capture a guest NIC's tap as pcap (see [`Request::Capture`](super::Request::Capture)).
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
    /// See [`Request::CheckpointRead`](super::Request::CheckpointRead).
    CheckpointRead {
        lab: String,
        name: String,
        node: String,
        kind: String,
    },
    /// See [`Request::CheckpointWrite`](super::Request::CheckpointWrite).
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
