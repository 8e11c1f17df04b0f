//! openraft's own storage test suite against labspan's redb log store and
//! state machine, plus a restart test: what was acknowledged is on disk.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use labspan_coordinator::raft::{
    self, Capacity, Command, LogStore, NodeId, StateMachineStore, TypeConfig,
};
use labspan_proto::codec::MAX_MESSAGE_SIZE;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote};
use tempfile::TempDir;

mod support;

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

/// A state over the codec's 16 MiB message limit: built into a snapshot,
/// installed on a new store from the chunks openraft sends (3 MiB each), and
/// restored from disk after a restart.
#[tokio::test]
async fn a_snapshot_over_the_message_limit_is_built_installed_and_restored(
) -> Result<(), Box<dyn std::error::Error>> {
    let source = TempDir::new()?;
    let (_log, mut sm) = raft::open(&source.path().join("raft.redb"))?;
    sm.apply([entry(1, register("h1"))]).await?;
    // The bulk of each is a guest file's long path in the lab's bundle (the
    // bundle holds files by hash): real, plannable labs.
    let labs = (2..=41u64).map(|i| {
        let cmd = support::deploy_lab(usize::try_from(i)?, 512 * 1024)?;
        Ok::<_, Box<dyn std::error::Error>>(entry(i, cmd))
    });
    let labs: Vec<_> = labs.collect::<Result<_, _>>()?;
    sm.apply(labs).await?;
    assert_eq!(
        sm.shared().read().state.labs.len(),
        40,
        "every lab was stored"
    );
    let want = sm.shared().read().state.clone();
    let snapshot = sm.build_snapshot().await?;
    let bytes = snapshot.snapshot.into_inner();
    assert!(bytes.len() > MAX_MESSAGE_SIZE, "{} bytes", bytes.len());

    let target = TempDir::new()?;
    let path = target.path().join("raft.redb");
    {
        let (_log, mut joined) = raft::open(&path)?;
        let mut received = joined.begin_receiving_snapshot().await?;
        for chunk in bytes.chunks(3 * 1024 * 1024) {
            received.get_mut().extend_from_slice(chunk);
        }
        joined.install_snapshot(&snapshot.meta, received).await?;
        assert_eq!(joined.shared().read().state, want);
    }
    let (_log, mut restarted) = raft::open(&path)?;
    assert_eq!(restarted.shared().read().state, want);
    let (last, _) = restarted.applied_state().await?;
    assert_eq!(last, Some(log_id(1, 0, 41)));
    let current = restarted
        .get_current_snapshot()
        .await?
        .ok_or("no snapshot")?;
    assert_eq!(current.snapshot.into_inner(), bytes);
    Ok(())
}
