//! The state machine: [`ClusterState`] in memory, snapshotted in the format
//! of [`super::snapshot`] (a stream of codec envelopes, any size).
//!
//! The current snapshot is saved in its own file beside the redb store
//! ([`snapshot_path`]: its codec-encoded metadata, then its bytes), written
//! whole or not at all, so a restarted coordinator rebuilds its state from
//! it plus the log entries after it, even once the log before the snapshot
//! is purged. Not in redb: redb has one writer at a time, and a snapshot
//! saved in a write transaction held up every append of the log behind it
//! for hundreds of milliseconds (docs/benchmarks.md, "State at scale").
//! A snapshot is built from a copy of the state, encoded and saved on a
//! blocking thread: entries are applied and appended meanwhile.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use labspan_proto::codec;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::log_store::read_meta;
use super::{snapshot, Applied, ClusterState, CommandResult, Member, NodeId, TypeConfig};
use prometheus_client::metrics::histogram::Histogram;

/// Where releases before the snapshot file kept the snapshot, in redb:
/// [`KEY_META`] → its codec-encoded metadata, [`KEY_DATA`] → its bytes.
/// Read once, moved to the file, then dropped.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";
/// Where releases before the streamed format kept the snapshot (in the log
/// store's metadata table, as one codec message); read once, then replaced.
const KEY_LEGACY_SNAPSHOT: &str = "snapshot";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The snapshot file of the redb store at `db_path`: `raft.redb` →
/// `raft.snapshot`, in the same folder.
pub fn snapshot_path(db_path: &Path) -> PathBuf {
    db_path.with_extension("snapshot")
}

/// What the state machine holds: the cluster state and how far it got.
#[derive(Debug, Clone, Default)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, Member>,
    pub state: ClusterState,
}

/// A read handle on the state machine, for queries served by this replica.
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<StateMachineData>>);

impl SharedState {
    /// Locks the data for reading (a poisoned lock still holds valid data:
    /// `apply` never leaves it half-changed).
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachineData> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn update<R>(&self, f: impl FnOnce(&mut StateMachineData) -> R) -> R {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

/// A snapshot: its metadata and the encoded state.
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The snapshot of releases before the streamed format: `data` is the whole
/// state as one codec message.
#[derive(Serialize, Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The snapshot file, and the last log id of the snapshot it holds.
///
/// A snapshot built here and one installed from the leader may be saved
/// at the same time (a build runs in its own task); the lock orders the
/// two, and an older one never replaces a newer one.
struct SnapshotFile {
    path: PathBuf,
    saved: Mutex<Option<LogId<NodeId>>>,
}

/// openraft's state machine for labspan.
#[derive(Clone)]
pub struct StateMachineStore {
    data: SharedState,
    file: Arc<SnapshotFile>,
    /// Makes snapshot ids unique when two snapshots cover the same log id.
    snapshot_seq: u64,
    /// How long each batch of committed entries takes to apply.
    apply_seconds: Histogram,
}

fn snapshot_err(
    meta: Option<&SnapshotMeta<NodeId, Member>>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    let subject = ErrorSubject::Snapshot(meta.map(|m| m.signature()));
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the state machine whose snapshot file is `path`, restoring
    /// the saved snapshot if any (moving one that an older release kept in
    /// `db` to the file first).
    pub fn new(db: &Database, path: PathBuf) -> StorageResult<Self> {
        let store = Self {
            data: SharedState::default(),
            file: Arc::new(SnapshotFile {
                path,
                saved: Mutex::new(None),
            }),
            snapshot_seq: 0,
            apply_seconds: crate::metrics::apply_histogram(),
        };
        if let Some(snap) = store.file.load()? {
            store.restore(&snap)?;
        } else if let Some(snap) = load_from_redb(db)? {
            store.restore(&snap)?;
            store.file.save(&snap)?;
            drop_redb_snapshot(db, &snap.meta)?;
        } else if let Some(old) =
            read_meta::<LegacySnapshot>(db, KEY_LEGACY_SNAPSHOT, ErrorSubject::Snapshot(None))?
        {
            let state: ClusterState = codec::decode(&old.data)
                .map_err(|e| snapshot_err(Some(&old.meta), ErrorVerb::Read, e))?;
            let data =
                snapshot::write(&state).map_err(|e| snapshot_err(None, ErrorVerb::Write, e))?;
            let snap = StoredSnapshot {
                meta: old.meta,
                data,
            };
            store.restore(&snap)?;
            store.file.save(&snap)?;
        }
        Ok(store)
    }

    /// A read handle on the current state.
    pub fn shared(&self) -> SharedState {
        self.data.clone()
    }

    /// The apply-latency histogram this state machine feeds (shared).
    pub fn apply_seconds(&self) -> Histogram {
        self.apply_seconds.clone()
    }

    fn restore(&self, snap: &StoredSnapshot) -> StorageResult<()> {
        let state = snapshot::read(&snap.data)
            .map_err(|e| snapshot_err(Some(&snap.meta), ErrorVerb::Read, e))?;
        self.data.update(|d| {
            d.last_applied = snap.meta.last_log_id;
            d.last_membership = snap.meta.last_membership.clone();
            d.state = state;
        });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // A copy, so that the read lock (which `apply` waits for) is held
        // only while copying, not while encoding: the decoded bundles are
        // shared, not copied.
        let (last_applied, membership, state) = {
            let d = self.data.read();
            (d.last_applied, d.last_membership.clone(), d.state.clone())
        };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.snapshot_seq),
            None => format!("--{}", self.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        // Encoding hundreds of labs and an fsync: not on a runtime thread.
        let (file, saving) = (self.file.clone(), meta.clone());
        let data = tokio::task::spawn_blocking(move || {
            let data = snapshot::write(&state)
                .map_err(|e| snapshot_err(Some(&saving), ErrorVerb::Write, e))?;
            let stored = StoredSnapshot { meta: saving, data };
            file.save(&stored)?;
            Ok::<_, StorageError<NodeId>>(stored.data)
        })
        .await
        .map_err(|e| snapshot_err(Some(&meta), ErrorVerb::Write, e))??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let d = self.data.read();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let results = self.data.update(|d| {
            entries
                .into_iter()
                .map(|entry| {
                    d.last_applied = Some(entry.log_id);
                    match entry.payload {
                        EntryPayload::Blank => Ok(Applied::Done),
                        EntryPayload::Normal(cmd) => d.state.apply(&cmd),
                        EntryPayload::Membership(m) => {
                            d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                            Ok(Applied::Done)
                        }
                    }
                })
                .collect()
        });
        self.apply_seconds.observe(started.elapsed().as_secs_f64());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Decode first: a bad snapshot must not replace the saved one.
        self.restore(&stored)?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.save(&stored))
            .await
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, e))?
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let file = self.file.clone();
        let loaded = tokio::task::spawn_blocking(move || file.load())
            .await
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, e))??;
        Ok(loaded.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl SnapshotFile {
    /// Saves `snap` as the current snapshot, whole or not at all, unless
    /// the file already holds a newer one.
    fn save(&self, snap: &StoredSnapshot) -> StorageResult<()> {
        let err = |e: std::io::Error| snapshot_err(Some(&snap.meta), ErrorVerb::Write, e);
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        if *saved > snap.meta.last_log_id {
            return Ok(());
        }
        let mut bytes = codec::encode(&snap.meta)
            .map_err(|e| snapshot_err(Some(&snap.meta), ErrorVerb::Write, e))?;
        bytes.extend_from_slice(&snap.data);
        labspan_proto::atomic::write(&self.path, &bytes).map_err(err)?;
        *saved = snap.meta.last_log_id;
        Ok(())
    }

    /// The saved snapshot, if any.
    fn load(&self) -> StorageResult<Option<StoredSnapshot>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snapshot_err(None, ErrorVerb::Read, e)),
        };
        let (meta, data) = codec::decode_first::<SnapshotMeta<NodeId, Member>>(&bytes)
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
        let snap = StoredSnapshot {
            data: data.to_vec(),
            meta,
        };
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        *saved = (*saved).max(snap.meta.last_log_id);
        Ok(Some(snap))
    }
}

/// The snapshot an older release saved in redb, if any.
fn load_from_redb(db: &Database) -> StorageResult<Option<StoredSnapshot>> {
    let err = |e: redb::Error| snapshot_err(None, ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let table = match txn.open_table(SNAPSHOT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let (Some(meta), Some(data)) = (
        table.get(KEY_META).map_err(|e| err(e.into()))?,
        table.get(KEY_DATA).map_err(|e| err(e.into()))?,
    ) else {
        return Ok(None);
    };
    let meta = codec::decode(meta.value()).map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
    Ok(Some(StoredSnapshot {
        meta,
        data: data.value().to_vec(),
    }))
}

/// Drops the redb snapshot once the file holds it.
fn drop_redb_snapshot(db: &Database, meta: &SnapshotMeta<NodeId, Member>) -> StorageResult<()> {
    let err = |e: redb::Error| snapshot_err(Some(meta), ErrorVerb::Delete, e);
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.delete_table(SNAPSHOT).map_err(|e| err(e.into()))?;
    txn.commit().map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::raft::{Capacity, Command};

    /// A store whose snapshot an older release kept in redb: it comes
    /// back from there, is moved to the file, and redb holds it no more.
    #[test]
    fn a_snapshot_kept_in_redb_by_an_older_release_moves_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_path = dir.path().join("raft.redb");
        let mut state = ClusterState::default();
        let register = Command::RegisterHost {
            name: "h1".into(),
            capacity: Capacity {
                memory_mib: 1024,
                vcpus: 2,
            },
            labels: BTreeSet::new(),
            vtep: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        };
        assert!(state.apply(&register).is_ok());
        let meta = SnapshotMeta::<NodeId, Member> {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-7-1".into(),
        };
        {
            let db = Database::create(&db_path).expect("redb");
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(SNAPSHOT).expect("table");
                let meta = codec::encode(&meta).expect("meta");
                let data = snapshot::write(&state).expect("data");
                table.insert(KEY_META, meta.as_slice()).expect("meta");
                table.insert(KEY_DATA, data.as_slice()).expect("data");
            }
            txn.commit().expect("commit");
        }
        let db = Database::create(&db_path).expect("redb");
        let sm = StateMachineStore::new(&db, snapshot_path(&db_path)).expect("opens");
        assert_eq!(sm.shared().read().state, state);
        assert_eq!(sm.shared().read().last_applied, meta.last_log_id);
        assert!(load_from_redb(&db).expect("reads").is_none());
        let moved = sm.file.load().expect("reads").expect("in the file");
        assert_eq!(moved.meta, meta);
        drop(sm);
        let again = StateMachineStore::new(&db, snapshot_path(&db_path)).expect("opens");
        assert_eq!(again.shared().read().state, state);
    }
}
