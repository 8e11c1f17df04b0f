//! The state machine: [`ClusterState`] in memory, snapshotted in the format
//! of [`super::snapshot`] (a stream of codec envelopes, any size).
//!
//! The current snapshot is also saved in the redb store (durably, in its own
//! table: its metadata and its bytes), so a restarted coordinator rebuilds
//! its state from it plus the log entries after it, even once the log before
//! the snapshot is purged.

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

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

/// The saved snapshot: [`KEY_META`] → its codec-encoded metadata,
/// [`KEY_DATA`] → its bytes (not one codec message: they may exceed the
/// message limit).
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";
/// Where releases before the streamed format kept the snapshot (in the log
/// store's metadata table, as one codec message); read once, then replaced.
const KEY_LEGACY_SNAPSHOT: &str = "snapshot";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

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

/// openraft's state machine for labspan.
#[derive(Clone)]
pub struct StateMachineStore {
    data: SharedState,
    db: Arc<Database>,
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
    /// Opens the state machine on `db`, restoring the saved snapshot if any.
    pub fn new(db: Arc<Database>) -> StorageResult<Self> {
        let store = Self {
            data: SharedState::default(),
            db,
            snapshot_seq: 0,
            apply_seconds: crate::metrics::apply_histogram(),
        };
        if let Some(snap) = load(&store.db)? {
            store.restore(&snap)?;
        } else if let Some(old) = read_meta::<LegacySnapshot>(
            &store.db,
            KEY_LEGACY_SNAPSHOT,
            ErrorSubject::Snapshot(None),
        )? {
            let state: ClusterState = codec::decode(&old.data)
                .map_err(|e| snapshot_err(Some(&old.meta), ErrorVerb::Read, e))?;
            let data =
                snapshot::write(&state).map_err(|e| snapshot_err(None, ErrorVerb::Write, e))?;
            let snap = StoredSnapshot {
                meta: old.meta,
                data,
            };
            store.restore(&snap)?;
            save(&store.db, &snap)?;
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
        let (last_applied, membership, encoded) = {
            let d = self.data.read();
            let encoded = snapshot::write(&d.state);
            (d.last_applied, d.last_membership.clone(), encoded)
        };
        let data = encoded.map_err(|e| snapshot_err(None, ErrorVerb::Write, e))?;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.snapshot_seq),
            None => format!("--{}", self.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        let stored = tokio::task::spawn_blocking(move || save(&db, &stored).map(|()| stored))
            .await
            .map_err(|e| snapshot_err(Some(&meta), ErrorVerb::Write, e))??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
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
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || save(&db, &stored))
            .await
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, e))?
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(load(&self.db)?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Saves `snap` as the current snapshot, in one durable transaction.
fn save(db: &Database, snap: &StoredSnapshot) -> StorageResult<()> {
    let subject = || ErrorSubject::Snapshot(Some(snap.meta.signature()));
    let err = |e: redb::Error| snapshot_err(Some(&snap.meta), ErrorVerb::Write, e);
    let meta = codec::encode(&snap.meta)
        .map_err(|e| StorageIOError::new(subject(), ErrorVerb::Write, AnyError::new(&e)))?;
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| err(e.into()))?;
        table
            .insert(KEY_META, meta.as_slice())
            .map_err(|e| err(e.into()))?;
        table
            .insert(KEY_DATA, snap.data.as_slice())
            .map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))
}

/// The saved snapshot, if any.
fn load(db: &Database) -> StorageResult<Option<StoredSnapshot>> {
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
