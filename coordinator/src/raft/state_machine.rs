//! The state machine: [`ClusterState`] in memory, snapshotted with the codec.
//!
//! The current snapshot is also saved in the redb store (durably), so a
//! restarted coordinator rebuilds its state from it plus the log entries
//! after it, even once the log before the snapshot is purged.

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use labspan_proto::codec;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::log_store::{read_meta, write_meta};
use super::{Applied, ClusterState, CommandResult, Member, NodeId, TypeConfig};

const KEY_SNAPSHOT: &str = "snapshot";

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

/// A snapshot as saved in redb: its metadata and the encoded state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
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
        };
        let saved: Option<StoredSnapshot> =
            read_meta(&store.db, KEY_SNAPSHOT, ErrorSubject::Snapshot(None))?;
        if let Some(snap) = saved {
            store.restore(&snap)?;
        }
        Ok(store)
    }

    /// A read handle on the current state.
    pub fn shared(&self) -> SharedState {
        self.data.clone()
    }

    fn restore(&self, snap: &StoredSnapshot) -> StorageResult<()> {
        let state: ClusterState = codec::decode(&snap.data)
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
            let encoded = codec::encode(&d.state);
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
        write_meta(
            &self.db,
            KEY_SNAPSHOT,
            &stored,
            ErrorSubject::Snapshot(Some(meta.signature())),
        )?;
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
        write_meta(
            &self.db,
            KEY_SNAPSHOT,
            &stored,
            ErrorSubject::Snapshot(Some(meta.signature())),
        )
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let saved: Option<StoredSnapshot> =
            read_meta(&self.db, KEY_SNAPSHOT, ErrorSubject::Snapshot(None))?;
        Ok(saved.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
