//! Checkpoints of a running lab: what the cluster records about
//! one consistent cut of every VM of a lab, and what each agent reports
//! about its share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One checkpoint of a lab: every node's state at one pause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub name: String,
    /// When the VMs were paused (seconds since the Unix epoch, the leader's clock).
    pub created_unix: u64,
    /// Node → its saved state.
    pub nodes: BTreeMap<String, NodeCheckpoint>,
    /// From the first pause to the last resume, over every host (ms).
    pub frozen_ms: u64,
    /// From the request to the recorded checkpoint, on the leader (ms).
    pub total_ms: u64,
}

impl Checkpoint {
    /// When it was taken, RFC 3339 (UTC).
    pub fn taken_at(&self) -> String {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.created_unix),
        )
        .to_string()
    }

    /// Bytes of every file of the checkpoint.
    pub fn bytes(&self) -> u64 {
        self.nodes
            .values()
            .flat_map(|n| &n.files)
            .map(|f| f.bytes)
            .sum()
    }
}

/// One node's share of a checkpoint, as its agent saved it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCheckpoint {
    /// The host holding its files.
    pub host: String,
    /// Its RAM and device state, and its frozen disk layer if it has a disk.
    pub files: Vec<CheckpointFile>,
    /// How long this VM was paused (ms).
    pub paused_ms: u64,
    /// Other hosts holding a copy of its files, checked against their
    /// hashes (durable checkpoints: copied over the image transfer path).
    #[serde(default)]
    pub copies: Vec<String>,
}

/// A file of a checkpoint, named by what it holds and by content hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    /// `ram` (QEMU's migration stream) or `disk` (the frozen qcow2 layer).
    pub kind: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What a reset did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetReport {
    pub lab: String,
    pub checkpoint: String,
    /// Nodes brought back.
    pub nodes: Vec<String>,
    /// From the request to every VM running again, on the leader (ms).
    pub total_ms: u64,
    /// Guests whose clock could not be set through their guest agent.
    pub clock_not_set: Vec<String>,
}
