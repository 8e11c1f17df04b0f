//! openraft's own storage test suite against labspan's redb log store and
//! state machine, plus a restart test: what was acknowledged is on disk.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use labspan_coordinator::raft::{
    self, Capacity, Command, LogStore, NodeId, StateMachineStore, TypeConfig,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote};
use tempfile::TempDir;

/// Builds a fresh store in a temporary directory that lives as long as the test.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) = raft::open(&dir.path().join("raft.redb"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), Box<StorageError<NodeId>>> {
    Suite::test_all(RedbBuilder).map_err(Box::new)
}

fn register(name: &str) -> Command {
    Command::RegisterHost {
        name: name.into(),
        capacity: Capacity {
            memory_mib: 4096,
            vcpus: 4,
        },
        labels: BTreeSet::new(),
        vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    }
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 0, index),
        payload: EntryPayload::Normal(cmd),
    }
}

#[tokio::test]
async fn restart_keeps_log_vote_and_snapshot() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("raft.redb");
    {
        let (mut log, mut sm) = raft::open(&path)?;
        log.save_vote(&Vote::new(3, 1)).await?;
        log.blocking_append([entry(1, register("h1")), entry(2, register("h2"))])
            .await?;
        let applied = sm.apply([entry(1, register("h1"))]).await?;
        assert_eq!(applied.len(), 1);
        sm.build_snapshot().await?;
        // Applied after the snapshot: must come back from the log, not the snapshot.
        sm.apply([entry(2, register("h2"))]).await?;
    }
    let (mut log, mut sm) = raft::open(&path)?;
    assert_eq!(log.read_vote().await?, Some(Vote::new(3, 1)));
    let entries = log.try_get_log_entries(1..3).await?;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].payload, EntryPayload::Normal(register("h2")));
    let (last, _) = sm.applied_state().await?;
    assert_eq!(
        last,
        Some(log_id(1, 0, 1)),
        "state machine restarts from its snapshot"
    );
    let hosts: Vec<String> = sm.shared().read().state.hosts.keys().cloned().collect();
    assert_eq!(hosts, vec!["h1".to_string()]);
    Ok(())
}

#[tokio::test]
async fn second_open_of_a_store_in_use_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let path = dir.path().join("raft.redb");
    let _first = raft::open(&path)?;
    let second = raft::open(&path);
    assert!(matches!(second, Err(raft::OpenError::Database { .. })));
    Ok(())
}
