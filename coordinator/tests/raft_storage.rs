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

/// The committed index is kept in memory (no I/O on the way to apply) and
/// stored by the next append: a store reopened before that append finds
/// the older index, never a newer one; after it, the new one.
#[tokio::test]
async fn the_committed_index_is_stored_by_the_next_append() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = TempDir::new()?;
    let path = dir.path().join("raft.redb");
    {
        let (mut log, _sm) = raft::open(&path)?;
        log.blocking_append([entry(1, register("h1")), entry(2, register("h2"))])
            .await?;
        log.save_committed(Some(log_id(1, 0, 1))).await?;
        assert_eq!(log.read_committed().await?, Some(log_id(1, 0, 1)));
    }
    {
        let (mut log, _sm) = raft::open(&path)?;
        assert_eq!(
            log.read_committed().await?,
            None,
            "no write came after the commit: the saved index is the older one"
        );
        log.save_committed(Some(log_id(1, 0, 2))).await?;
        log.blocking_append([entry(3, register("h3"))]).await?;
    }
    let (mut log, _sm) = raft::open(&path)?;
    assert_eq!(log.read_committed().await?, Some(log_id(1, 0, 2)));
    Ok(())
}

/// Set in the child that [`acknowledged_entries_survive_kill_9`] starts:
/// the store it writes to.
const KILLED_STORE: &str = "LABSPAN_TEST_KILLED_STORE";

/// A coordinator's store killed with SIGKILL in the middle of appends
/// keeps every entry whose append openraft was told had completed (the
/// `LogFlushed` callback), with no gap, and the committed index the last
/// append stored (never one past the log). The writer is a child process (this test binary again), so
/// the kill is a real `kill -9` of the process that holds the database.
#[test]
fn acknowledged_entries_survive_kill_9() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufRead;

    if let Some(path) = std::env::var_os(KILLED_STORE) {
        return append_until_killed(std::path::Path::new(&path));
    }
    let dir = TempDir::new()?;
    let path = dir.path().join("raft.redb");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "acknowledged_entries_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILLED_STORE, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = i32::try_from(child.id())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut acked = 0u64;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("acked ") {
            acked = rest.parse()?;
            if acked >= 200 {
                break;
            }
        }
    }
    // SAFETY: kill(2) on the child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = child.wait()?;
    assert!(
        acked >= 200,
        "the writer stopped after {acked} appends: {status}"
    );

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (mut log, _sm) = raft::open(&path)?;
        // The child may have appended a few more before the kill landed.
        let entries = log.try_get_log_entries(1..).await?;
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let last = indexes.last().copied().unwrap_or(0);
        assert!(
            last >= acked,
            "acknowledged up to {acked}, kept up to {last}"
        );
        assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "a gap in the log");
        for e in &entries {
            let want = register(&format!("h{}", e.log_id.index));
            assert_eq!(e.payload, EntryPayload::Normal(want));
        }
        // Each append stores the committed index reported before it: at
        // least the one before the last acknowledged append, and never one
        // past the log.
        let saved = log.read_committed().await?.map_or(0, |l| l.index);
        assert!(
            (acked - 1..=last).contains(&saved),
            "committed index {saved}: acknowledged {acked}, log ends at {last}"
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// The child's side: appends one entry at a time through openraft's
/// callback, marks each committed, and reports it on stdout; until killed.
fn append_until_killed(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (mut log, _sm) = raft::open(path)?;
        let mut out = std::io::stdout().lock();
        for index in 1u64.. {
            log.blocking_append([entry(index, register(&format!("h{index}")))])
                .await?;
            log.save_committed(Some(log_id(1, 0, index))).await?;
            writeln!(out, "acked {index}")?;
            out.flush()?;
        }
        Ok(())
    })
}
