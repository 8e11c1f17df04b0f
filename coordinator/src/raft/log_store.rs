//! The Raft log and vote, in redb.
//!
//! Every write of entries or of the vote is one redb transaction committed
//! with redb's default durability (`Immediate`: fsync before `commit`
//! returns), so an entry or a vote is on disk before openraft is told it is:
//! nothing acknowledged is lost.
//!
//! The committed index is the exception: [`LogStore::save_committed`] only
//! keeps it in memory, and the next append or vote writes it in its own
//! transaction, as etcd's commit index rides along with its entries. So
//! recording it costs no I/O and no thread hop on the way from commit to
//! apply. What a restarted coordinator may apply follows: every index it
//! finds saved was committed when it was saved, so it applies up to there
//! at once; entries after it wait until a leader tells it the commit index.
//! A crash (or a stop with no write after the last commit) can only make
//! the saved index older, never newer, so it never applies an entry that
//! was not committed (`tests/raft_cluster.rs`,
//! `restarted_coordinator_applies_only_what_it_knew_committed`).
//! Writes run on tokio's blocking pool ([`blocking`]): an fsync never holds
//! one of the async worker threads that serve the API, Raft RPCs and agents.
//! Entries and metadata are encoded with the codec, so a store written by an
//! incompatible release is refused with a version error, not misread.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

use labspan_proto::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};

/// Log index → encoded entry.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
/// Named metadata: vote, committed, last purged log id.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The redb-backed Raft log and vote; cheap to clone (one shared database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The committed index openraft last reported and no write has stored
    /// yet (`None`: nothing new). Shared by the clones.
    committed: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
}

fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// Reads one codec-encoded value of META, or `None` if absent.
pub(super) fn read_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
    subject: ErrorSubject<NodeId>,
) -> StorageResult<Option<T>> {
    let err = |e: redb::Error| io(subject.clone(), ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(err(e.into())),
    };
    let Some(bytes) = table.get(key).map_err(|e| err(e.into()))? else {
        return Ok(None);
    };
    let value =
        codec::decode(bytes.value()).map_err(|e| io(subject.clone(), ErrorVerb::Read, e))?;
    Ok(Some(value))
}

/// Puts one codec-encoded value into META within `txn`.
fn put_meta<T: Serialize>(
    txn: &WriteTransaction,
    key: &str,
    value: &T,
    subject: ErrorSubject<NodeId>,
) -> StorageResult<()> {
    let err = |e: redb::Error| io(subject.clone(), ErrorVerb::Write, e);
    let bytes = codec::encode(value).map_err(|e| io(subject.clone(), ErrorVerb::Write, e))?;
    let mut table = txn.open_table(META).map_err(|e| err(e.into()))?;
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| err(e.into()))?;
    Ok(())
}

/// Writes the vote, and the committed index if there is one not stored
/// yet, in one transaction; returns once it is on disk.
fn write_vote(
    db: &Database,
    vote: &Vote<NodeId>,
    committed: Option<Option<LogId<NodeId>>>,
) -> StorageResult<()> {
    let err = |e: redb::Error| io(ErrorSubject::Vote, ErrorVerb::Write, e);
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    put_meta(&txn, KEY_VOTE, vote, ErrorSubject::Vote)?;
    if let Some(committed) = committed {
        put_meta(&txn, KEY_COMMITTED, &committed, ErrorSubject::Store)?;
    }
    // commit() returns after fsync (redb's default durability).
    txn.commit().map_err(|e| err(e.into()))
}

/// Runs the storage write `f` on tokio's blocking pool and waits for it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))?
}

impl LogStore {
    /// Wraps `db`, creating the tables if this is a new store.
    pub fn new(db: Arc<Database>) -> StorageResult<Self> {
        let err = |e: redb::Error| io(ErrorSubject::Store, ErrorVerb::Write, e);
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.open_table(LOGS).map_err(|e| err(e.into()))?;
        txn.open_table(META).map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Self {
            db,
            committed: Arc::new(Mutex::new(None)),
        })
    }

    /// The committed index not stored yet, taken: the caller writes it.
    fn take_committed(&self) -> Option<Option<LogId<NodeId>>> {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Puts back a committed index that a failed write did not store,
    /// unless a newer one came meanwhile.
    fn restore_committed(&self, committed: Option<Option<LogId<NodeId>>>) {
        let mut pending = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pending.is_none() {
            *pending = committed;
        }
    }

    fn last_purged(&self) -> StorageResult<Option<LogId<NodeId>>> {
        read_meta(&self.db, KEY_LAST_PURGED, ErrorSubject::Store)
    }

    fn last_entry_id(&self) -> StorageResult<Option<LogId<NodeId>>> {
        let err = |e: redb::Error| io(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(LOGS).map_err(|e| err(e.into()))?;
        let Some((_, bytes)) = table.last().map_err(|e| err(e.into()))? else {
            return Ok(None);
        };
        let entry: Entry<TypeConfig> =
            codec::decode(bytes.value()).map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(Some(entry.log_id))
    }

    /// Deletes entries whose index is in `range`, in one durable transaction,
    /// after optionally recording the last purged id in the same transaction.
    fn delete_range(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<&LogId<NodeId>>,
    ) -> StorageResult<()> {
        let err = |e: redb::Error| io(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut logs = txn.open_table(LOGS).map_err(|e| err(e.into()))?;
            logs.retain_in(range, |_, _| false)
                .map_err(|e| err(e.into()))?;
            if let Some(purged) = purged {
                let bytes = codec::encode(purged)
                    .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))?;
                let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let err = |e: redb::Error| io(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(LOGS).map_err(|e| err(e.into()))?;
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let mut out = Vec::new();
        for item in table.range::<u64>(bounds).map_err(|e| err(e.into()))? {
            let (_, bytes) = item.map_err(|e| err(e.into()))?;
            let entry = codec::decode(bytes.value())
                .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let (db, vote) = (self.db.clone(), *vote);
        let committed = self.take_committed();
        let written = blocking(move || write_vote(&db, &vote, committed)).await;
        if written.is_err() {
            self.restore_committed(committed);
        }
        written
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        read_meta(&self.db, KEY_VOTE, ErrorSubject::Vote)
    }

    /// Kept in memory only (see the module doc): the next append or vote
    /// writes it.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        *self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        if let Some(pending) = *self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Ok(pending);
        }
        Ok(read_meta(&self.db, KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        let committed = self.take_committed();
        if let Err(e) = blocking(move || append_durably(&db, entries, committed)).await {
            self.restore_committed(committed);
            return Err(e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let store = self.clone();
        blocking(move || {
            store.delete_range((Bound::Included(log_id.index), Bound::Unbounded), None)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let store = self.clone();
        blocking(move || {
            store.delete_range(
                (Bound::Unbounded, Bound::Included(log_id.index)),
                Some(&log_id),
            )
        })
        .await
    }
}

/// Writes `entries`, and the committed index if there is one not stored
/// yet, in one transaction; returns once it is on disk.
fn append_durably(
    db: &Database,
    entries: Vec<Entry<TypeConfig>>,
    committed: Option<Option<LogId<NodeId>>>,
) -> StorageResult<()> {
    let err = |e: redb::Error| io(ErrorSubject::Logs, ErrorVerb::Write, e);
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    if let Some(committed) = committed {
        put_meta(&txn, KEY_COMMITTED, &committed, ErrorSubject::Store)?;
    }
    {
        let mut table = txn.open_table(LOGS).map_err(|e| err(e.into()))?;
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| io(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
            table
                .insert(entry.log_id.index, bytes.as_slice())
                .map_err(|e| err(e.into()))?;
        }
    }
    // commit() returns after fsync: only then is the append reported done.
    txn.commit().map_err(|e| err(e.into()))
}
