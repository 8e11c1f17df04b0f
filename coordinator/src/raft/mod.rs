//! Replicated cluster state: openraft's type configuration, the redb-backed
//! log and vote store, and the in-memory state machine snapshotted with the
//! codec.
//!
//! Storage follows openraft 0.9's storage v2 (`RaftLogStorage` +
//! `RaftStateMachine`), laid out like its `raft-kv-rocksdb` example: one file
//! per adapter, and the library's own storage suite run against them
//! (`tests/raft_storage.rs`).

// openraft's traits fix `StorageError` (large) as the error type of every
// storage call; boxing it in our helpers would only add conversions.
#![allow(clippy::result_large_err)]

pub mod campaign;
mod log_store;
mod network;
pub mod snapshot;
mod state;
mod state_machine;

use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;
pub use network::{PeerLink, QuicNetwork, RaftReply, RaftRequest, RaftService};
pub use snapshot::SnapshotError;
pub use state::{
    Applied, Capacity, CheckpointOp, CheckpointOpKind, ClusterState, Command, CommandResult, Host,
    JoinToken, LabRecord, LabStatus, Migration, MovePhase, Registration, Rejection, FIRST_VNI,
    LAST_VNI,
};
pub use state_machine::{SharedState, StateMachineData, StateMachineStore};

use serde::{Deserialize, Serialize};

/// Raft node id of a coordinator.
pub type NodeId = u64;

/// A coordinator as Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member name, as in its certificate.
    pub name: String,
    /// `host:port` of its QUIC endpoint.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    /// labspan's Raft types: log entries carry [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        Node = Member,
);

/// Why the Raft store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The redb file could not be created or opened.
    #[error("cannot open the Raft store {path} ({cause}): is another coordinator using it?")]
    Database {
        path: String,
        cause: redb::DatabaseError,
    },
    /// The store opened but its contents could not be read.
    #[error("cannot read the Raft store {path}: {cause}")]
    Storage {
        path: String,
        cause: Box<openraft::StorageError<NodeId>>,
    },
}

/// Opens (or creates) the Raft store at `path`: the log store and the state
/// machine rebuilt from the last snapshot saved there.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let shown = path.display().to_string();
    let db = redb::Database::create(path).map_err(|cause| OpenError::Database {
        path: shown.clone(),
        cause,
    })?;
    let db = Arc::new(db);
    let log = LogStore::new(db.clone()).map_err(|cause| OpenError::Storage {
        path: shown.clone(),
        cause: Box::new(cause),
    })?;
    let sm = StateMachineStore::new(&db, state_machine::snapshot_path(path)).map_err(|cause| {
        OpenError::Storage {
            path: shown,
            cause: Box::new(cause),
        }
    })?;
    Ok((log, sm))
}
