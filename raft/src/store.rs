//! openraft storage (storage-v2) on one redb file: the log, the vote, the committed
//! pointer and the current snapshot.
//!
//! The state machine lives in memory and is made durable by the snapshot (kept in
//! redb) plus the log: on open the latest snapshot is loaded and openraft re-applies
//! the log after it. Every redb transaction runs on tokio's blocking pool, never on
//! an async worker thread.
//!
//! Tables:
//! - `log`: log index → encoded [`Entry`]
//! - `meta`: `vote`, `committed`, `last_purged_log_id`, `format`
//! - `snapshot`: `current` → the encoded snapshot metadata and data

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::{self, CodecError};
use crate::state::{self, ClusterState, LogPayload, Response};
use crate::types::{
    Entry, LogId, RaftStorageError, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_FORMAT: &str = "format";
const KEY_CURRENT: &str = "current";

/// The layout of the tables above. Bump it (and migrate) when the layout changes.
const FORMAT: u32 = 1;

/// redb's page cache. The state of a cluster is small; the log is read mostly at its
/// tail.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the Raft store. Only [`StoreError::InUse`] goes away by waiting (for the
/// other process to stop); the others need an operator.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory is in use by another shoal process ({path} is locked); stop that \
         process or give this one another data directory"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the Raft store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the Raft store has layout version {found}, but this shoal reads only version {FORMAT}; \
         run the shoal version that wrote it"
    )]
    UnsupportedFormat { found: u32 },
    #[error("the Raft store failed: {0}; check the disk and the data directory's permissions")]
    Database(#[from] redb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(
        "the received snapshot covers log {in_data} but claims to cover {in_meta}; it was \
         not installed"
    )]
    SnapshotMismatch { in_meta: String, in_data: String },
    #[error("a storage task stopped unexpectedly: {0}")]
    TaskFailed(String),
}

// redb reports each step with its own error type; all of them mean "the store failed".
macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Database(error.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The snapshot as stored in redb and sent to followers, behind a version tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum SnapshotData {
    V1 {
        last_applied: Option<LogId>,
        membership: StoredMembership,
        state: ClusterState,
    },
}

/// The `snapshot` table's record: openraft's metadata beside the snapshot bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum StoredSnapshot {
    V1 { meta: SnapshotMeta, data: Vec<u8> },
}

/// Opens (or creates) the Raft store at `path`, typically `<data-dir>/raft.redb`,
/// creating its directory if needed, and loads the latest snapshot into memory.
///
/// Fails with [`StoreError::InUse`] while another process has the file open. Within
/// one process the file stays open until every clone of both stores is dropped;
/// openraft's tasks drop theirs shortly after `Raft::shutdown` returns.
pub async fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = path.to_path_buf();
    let (db, applied, snapshot_len) = run_blocking(move || open_blocking(&path)).await?;
    let db = Arc::new(db);
    let index = applied.last_applied.map_or(0, |id| id.index);
    tracing::info!(
        snapshot_index = index,
        snapshot_bytes = snapshot_len,
        "opened the Raft store"
    );
    let handle = StateHandle {
        applied: Arc::new(RwLock::new(applied)),
        applied_index: Arc::new(watch::Sender::new(index)),
        snapshot_len: Arc::new(AtomicU64::new(snapshot_len)),
    };
    Ok((
        LogStore { db: db.clone() },
        StateMachineStore { db, handle },
    ))
}

fn open_blocking(path: &Path) -> Result<(Database, Applied, u64), StoreError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.to_path_buf(),
            },
            source => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;

    let txn = db.begin_write()?;
    {
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        let mut meta = txn.open_table(META)?;
        match read_value::<u32>(&meta, KEY_FORMAT)? {
            None => {
                meta.insert(KEY_FORMAT, codec::encode(&FORMAT)?.as_slice())?;
            }
            Some(FORMAT) => {}
            Some(found) => return Err(StoreError::UnsupportedFormat { found }),
        }
    }
    txn.commit()?;

    let (applied, snapshot_len) = match read_snapshot(&db)? {
        Some(StoredSnapshot::V1 { data, .. }) => (decode_snapshot(&data)?, data.len() as u64),
        None => (Applied::default(), 0),
    };
    Ok((db, applied, snapshot_len))
}

/// Runs blocking redb work on tokio's blocking pool.
async fn run_blocking<T, F>(work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::TaskFailed(error.to_string()))?
}

fn read_value<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(bytes) => Ok(Some(codec::decode(bytes.value())?)),
        None => Ok(None),
    }
}

fn write_meta<T: Serialize>(
    db: &Database,
    key: &'static str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let bytes = codec::encode(value)?;
    let mut txn = db.begin_write()?;
    txn.set_durability(durability)?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    read_value(&meta, key)
}

fn read_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    read_value(&table, KEY_CURRENT)
}

/// How a new snapshot relates to the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// Always replace (an installed snapshot is what the leader says it is).
    Always,
    /// Replace only if the stored snapshot covers no more of the log. Snapshots are
    /// built concurrently with installs; a build that started before an install
    /// must not overwrite it, or a restart would come back behind the purged log.
    IfNotBehind,
}

/// Stores `snapshot` as the current one; returns whether it was stored.
fn write_snapshot(
    db: &Database,
    snapshot: &StoredSnapshot,
    replace: Replace,
) -> Result<bool, StoreError> {
    let bytes = codec::encode(snapshot)?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        if replace == Replace::IfNotBehind {
            let stored: Option<StoredSnapshot> = read_value(&table, KEY_CURRENT)?;
            if let Some(StoredSnapshot::V1 { meta: stored, .. }) = stored {
                let StoredSnapshot::V1 { meta: new, .. } = snapshot;
                if stored.last_log_id > new.last_log_id {
                    return Ok(false);
                }
            }
        }
        table.insert(KEY_CURRENT, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(true)
}

fn decode_snapshot(data: &[u8]) -> Result<Applied, StoreError> {
    let SnapshotData::V1 {
        last_applied,
        membership,
        state,
    } = codec::decode(data)?;
    Ok(Applied {
        last_applied,
        membership,
        state,
    })
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, error: StoreError) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&error)).into()
}

fn owned_bound(bound: Bound<&u64>) -> Bound<u64> {
    match bound {
        Bound::Included(index) => Bound::Included(*index),
        Bound::Excluded(index) => Bound::Excluded(*index),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The Raft log and vote. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    async fn read_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let mut entries = Vec::new();
            for row in log.range::<u64>(range)? {
                let (_, bytes) = row?;
                entries.push(codec::decode(bytes.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let last_in_log = match log.last()? {
                Some((_, bytes)) => Some(codec::decode::<Entry>(bytes.value())?.log_id),
                None => None,
            };
            let meta = txn.open_table(META)?;
            let last_purged_log_id: Option<LogId> = read_value(&meta, KEY_LAST_PURGED)?;
            Ok(LogState {
                last_log_id: last_in_log.or(last_purged_log_id),
                last_purged_log_id,
            })
        })
        .await
    }

    async fn write_entries(&self, rows: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            // One transaction per batch; the default durability fsyncs before commit returns.
            let txn = db.begin_write()?;
            {
                let mut log = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes the entries in `range`, and records `purged` as the last purged log id.
    async fn delete_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId>,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_write()?;
            {
                if let Some(purged) = &purged {
                    txn.open_table(META)?
                        .insert(KEY_LAST_PURGED, codec::encode(purged)?.as_slice())?;
                }
                txn.open_table(LOG)?
                    .retain_in::<u64, _>(range, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Number of entries in the log (for benchmarks and diagnostics).
    pub async fn log_len(&self) -> Result<u64, StoreError> {
        let db = self.db.clone();
        run_blocking(move || Ok(db.begin_read()?.open_table(LOG)?.len()?)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let range = (
            owned_bound(range.start_bound()),
            owned_bound(range.end_bound()),
        );
        self.read_entries(range)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        self.log_state()
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        let vote = *vote;
        // Durable before returning: a node must never vote twice in one term.
        run_blocking(move || write_meta(&db, KEY_VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        let db = self.db.clone();
        run_blocking(move || read_meta(&db, KEY_VOTE))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        // Not fsynced on its own: it rides along with the next durable commit. A
        // committed pointer lost in a crash only means a restarted node waits for the
        // leader before re-applying those entries.
        run_blocking(move || write_meta(&db, KEY_COMMITTED, &committed, Durability::None))
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        let db = self.db.clone();
        run_blocking(move || Ok(read_meta::<Option<LogId>>(&db, KEY_COMMITTED)?.flatten()))
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e.into()))?;
            rows.push((entry.log_id.index, bytes));
        }
        match self.write_entries(rows).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.delete_entries((Bound::Included(log_id.index), Bound::Unbounded), None)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let range = (Bound::Unbounded, Bound::Included(log_id.index));
        self.delete_entries(range, Some(log_id))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// The state machine as applied so far.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ClusterState,
}

/// A cheap, cloneable read handle on the applied cluster state.
#[derive(Clone)]
pub struct StateHandle {
    applied: Arc<RwLock<Applied>>,
    applied_index: Arc<watch::Sender<u64>>,
    snapshot_len: Arc<AtomicU64>,
}

impl StateHandle {
    /// Runs `f` on the current state. Keep `f` short: applying waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.lock_read().state)
    }

    /// The index of the last applied log entry; 0 before anything is applied.
    pub fn last_applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    /// The last applied log id, if any.
    pub fn last_applied(&self) -> Option<LogId> {
        self.lock_read().last_applied
    }

    /// The membership config as of the last applied entry.
    pub fn membership(&self) -> StoredMembership {
        self.lock_read().membership.clone()
    }

    /// Watches the last applied log index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// Size in bytes of the current snapshot's data; 0 if there is none.
    pub fn snapshot_len(&self) -> u64 {
        self.snapshot_len.load(Ordering::Relaxed)
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        // Poisoned only if applying panicked, which is a bug: stop here too.
        self.applied.read().expect("state machine lock poisoned")
    }
}

/// The state machine and its snapshots. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    handle: StateHandle,
}

impl StateMachineStore {
    pub fn state(&self) -> StateHandle {
        self.handle.clone()
    }

    async fn build(&self) -> Result<Snapshot, StoreError> {
        let applied = self.handle.lock_read().clone();
        let data = codec::encode(&SnapshotData::V1 {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            state: applied.state,
        })?;
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            // The content is a function of the last applied log id, so the id can be too.
            snapshot_id: match applied.last_applied {
                Some(id) => format!("{}-{}", id.leader_id, id.index),
                None => "empty".to_owned(),
            },
        };
        self.persist(meta.clone(), data.clone(), Replace::IfNotBehind)
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    async fn persist(
        &self,
        meta: SnapshotMeta,
        data: Vec<u8>,
        replace: Replace,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        let len = data.len() as u64;
        let snapshot = StoredSnapshot::V1 { meta, data };
        if run_blocking(move || write_snapshot(&db, &snapshot, replace)).await? {
            self.handle.snapshot_len.store(len, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let applied = decode_snapshot(&data)?;
        if applied.last_applied != meta.last_log_id {
            let show = |id: Option<LogId>| id.map_or("none".to_owned(), |id| id.to_string());
            return Err(StoreError::SnapshotMismatch {
                in_meta: show(meta.last_log_id),
                in_data: show(applied.last_applied),
            });
        }
        // Durable first: after a crash the node must restart from this snapshot.
        self.persist(meta.clone(), data, Replace::Always).await?;
        let index = applied.last_applied.map_or(0, |id| id.index);
        *self
            .handle
            .applied
            .write()
            .expect("state machine lock poisoned") = applied;
        self.handle.applied_index.send_replace(index);
        Ok(())
    }

    async fn current(&self) -> Result<Option<Snapshot>, StoreError> {
        let db = self.db.clone();
        let stored = run_blocking(move || read_snapshot(&db)).await?;
        Ok(stored.map(|StoredSnapshot::V1 { meta, data }| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }

    fn apply_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Vec<Response> {
        let mut responses = Vec::new();
        let index = {
            let mut applied = self
                .handle
                .applied
                .write()
                .expect("state machine lock poisoned");
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(LogPayload::V1(command)) => {
                        state::apply(&mut applied.state, &command)
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Ok
                    }
                };
                responses.push(response);
            }
            applied.last_applied.map_or(0, |id| id.index)
        };
        self.handle.applied_index.send_replace(index);
        responses
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        self.build()
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let applied = self.handle.lock_read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_entries(entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| {
                io_error(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        self.current()
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::*;
    use crate::state::{CaMaterial, Command, NewNode, Resources, Role};
    use crate::types::NodeId;

    struct RedbStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), RaftStorageError> {
            let dir = tempfile::tempdir().expect("create a temp dir");
            let (log, sm) = open(&dir.path().join("raft.redb"))
                .await
                .expect("open a fresh store");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite, against real redb files.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(RedbStoreBuilder).unwrap();
    }

    fn normal(index: u64, command: Command) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(LogPayload::V1(command)),
        }
    }

    fn new_node(name: &str, addr: &str, role: Role) -> NewNode {
        NewNode {
            name: name.to_owned(),
            addr: addr.to_owned(),
            role,
            resources: Resources::default(),
            version: "0.1.0".to_owned(),
        }
    }

    fn init(now_ms: u64) -> Command {
        Command::InitCluster {
            cluster_id: "c1".to_owned(),
            ca: CaMaterial {
                cert_pem: "CERT".to_owned(),
                key_pem: "KEY".to_owned(),
            },
            manager_token_hash: "m".to_owned(),
            worker_token_hash: "w".to_owned(),
            first_node: new_node("m1", "127.0.0.1:4240", Role::Manager),
            now_ms,
        }
    }

    fn register(name: &str, addr: &str) -> Command {
        Command::RegisterNode {
            node: new_node(name, addr, Role::Worker),
            now_ms: 2,
        }
    }

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    /// membership at 1, init at 2, a worker at 3, a refused duplicate at 4.
    fn history() -> Vec<Entry> {
        vec![
            membership_ent::<TypeConfig>(1, 1, 1, voters(&[1])),
            normal(2, init(1)),
            normal(3, register("w1", "127.0.0.2:4240")),
            normal(4, register("w1", "127.0.0.3:4240")),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vote_log_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("raft.redb");
        let mut entries = vec![blank_ent::<TypeConfig>(1, 1, 1)];
        entries.extend(history().into_iter().skip(1));
        {
            let (mut log, _sm) = open(&path).await.unwrap();
            log.blocking_append(entries.clone()).await.unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        }
        {
            let (mut log, _sm) = open(&path).await.unwrap();
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
            assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
            assert_eq!(log.try_get_log_entries(2..4).await.unwrap(), entries[1..3]);
            assert_eq!(log.log_len().await.unwrap(), 4);

            log.purge(log_id(1, 1, 2)).await.unwrap();
            log.truncate(log_id(1, 1, 4)).await.unwrap();
        }
        let (mut log, _sm) = open(&path).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[2..3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_open_reports_the_data_dir_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let _first = open(&path).await.unwrap();
        let error = open(&path).await.err().expect("a second open must fail");
        assert!(matches!(error, StoreError::InUse { .. }), "{error:?}");
        assert!(error
            .to_string()
            .contains("in use by another shoal process"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_returns_responses_and_publishes_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        let handle = sm.state();
        let mut applied = handle.subscribe();
        assert_eq!(handle.last_applied_index(), 0);

        let responses = sm.apply(history()).await.unwrap();
        assert_eq!(
            responses[..3],
            [
                Response::Ok,
                Response::Ok,
                Response::NodeRegistered { id: 2 }
            ]
        );
        assert!(responses[3].is_rejected(), "{:?}", responses[3]);

        // A refused command still advances the applied index.
        assert_eq!(handle.last_applied_index(), 4);
        assert!(applied.has_changed().unwrap());
        assert_eq!(*applied.borrow_and_update(), 4);
        assert_eq!(handle.read(|s| s.nodes.len()), 2);
        assert_eq!(
            handle.membership(),
            StoredMembership::new(
                Some(log_id(1, 1, 1)),
                openraft::Membership::new(voters(&[1]), None)
            )
        );

        // A blank entry only advances the index.
        let before = handle.read(|s| s.clone());
        let responses = sm.apply([blank_ent::<TypeConfig>(2, 1, 5)]).await.unwrap();
        assert_eq!(responses, [Response::Ok]);
        assert_eq!(handle.last_applied(), Some(log_id(2, 1, 5)));
        assert_eq!(handle.read(|s| s.clone()), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_is_restored_from_the_snapshot_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let (built, expected_state) = {
            let (_log, mut sm) = open(&path).await.unwrap();
            assert!(sm.get_current_snapshot().await.unwrap().is_none());
            sm.apply(history()).await.unwrap();
            let built = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert!(sm.state().snapshot_len() > 0);
            (built, sm.state().read(|s| s.clone()))
        };
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 4)));

        let (_log, mut sm) = open(&path).await.unwrap();
        let handle = sm.state();
        assert_eq!(handle.read(|s| s.clone()), expected_state);
        assert_eq!(handle.last_applied_index(), 4);
        assert_eq!(handle.snapshot_len(), built.snapshot.get_ref().len() as u64);
        let (last_applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(last_applied, Some(log_id(1, 1, 4)));
        assert_eq!(membership, built.meta.last_membership);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installed_snapshot_replaces_state_and_persists() {
        let leader_dir = tempfile::tempdir().unwrap();
        let (_leader_log, mut leader) = open(&leader_dir.path().join("raft.redb")).await.unwrap();
        leader.apply(history()).await.unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let follower_dir = tempfile::tempdir().unwrap();
        let path = follower_dir.path().join("raft.redb");
        {
            let (_log, mut follower) = open(&path).await.unwrap();
            // Something the snapshot must replace.
            follower
                .apply([normal(1, Command::Noop { now_ms: 9 })])
                .await
                .unwrap();

            let mut bad_meta = snapshot.meta.clone();
            bad_meta.last_log_id = Some(log_id(1, 1, 9));
            let data = snapshot.snapshot.get_ref().clone();
            let error = follower
                .install_snapshot(&bad_meta, Box::new(Cursor::new(data)))
                .await
                .expect_err("a snapshot whose data contradicts its meta must be refused");
            assert!(error.to_string().contains("claims to cover"), "{error}");
            assert_eq!(follower.state().last_applied_index(), 1);

            let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
            *receiving = Cursor::new(snapshot.snapshot.get_ref().clone());
            follower
                .install_snapshot(&snapshot.meta, receiving)
                .await
                .unwrap();
            assert_eq!(follower.state().last_applied_index(), 4);
        }
        let (_log, mut follower) = open(&path).await.unwrap();
        assert_eq!(
            follower.state().read(|s| s.clone()),
            leader.state().read(|s| s.clone())
        );
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(
            follower.applied_state().await.unwrap(),
            leader.applied_state().await.unwrap()
        );
        let labels: BTreeMap<String, String> =
            follower.state().read(|s| s.nodes[&2].labels.clone());
        assert!(labels.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_build_never_replaces_a_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        sm.apply(history()).await.unwrap();
        let newer = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let stale = SnapshotMeta {
            last_log_id: Some(log_id(1, 1, 2)),
            ..newer.meta.clone()
        };

        sm.persist(stale.clone(), vec![1], Replace::IfNotBehind)
            .await
            .unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, newer.meta);
        assert_eq!(
            sm.state().snapshot_len(),
            newer.snapshot.get_ref().len() as u64
        );

        sm.persist(stale.clone(), vec![1], Replace::Always)
            .await
            .unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, stale);
        assert_eq!(sm.state().snapshot_len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        let meta = SnapshotMeta::default();
        let error = sm
            .install_snapshot(&meta, Box::new(Cursor::new(vec![0xff; 3])))
            .await
            .expect_err("garbage must not install");
        assert!(error.to_string().contains("cannot be decoded"), "{error}");
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }
}
