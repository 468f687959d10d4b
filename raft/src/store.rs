//! openraft storage (storage-v2) on one redb file: the log, the vote, the committed
//! pointer and the current snapshot.
//!
//! The state machine lives in memory and is made durable by the snapshot (kept in
//! redb) plus the log: on open the latest snapshot is loaded and openraft re-applies
//! the log after it. No redb transaction runs on an async worker thread: reads and
//! snapshot writes run on tokio's blocking pool, and every write to the log and its
//! metadata goes through one log writer thread.
//!
//! The log writer commits in groups. `append` makes the entries readable at once
//! (from memory), queues them, and returns; the writer takes everything queued,
//! writes it in one durable transaction, and only then reports the entries flushed.
//! So the cost of an fsync is shared by every entry that arrived while the previous
//! one ran, instead of each entry waiting for its own.
//!
//! Quorum-loss recovery ([`plan_recovery`], [`write_recovery`]) also lives here: it
//! rewrites the tail of the log before the Raft instance starts, which only the store
//! can do.
//!
//! Tables:
//! - `log`: log index → encoded [`Entry`]
//! - `meta`: `vote`, `committed`, `last_purged_log_id`, `format`
//! - `snapshot`: `current` → the encoded snapshot metadata and data

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

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
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{self, CodecError};
use crate::state::{AppliedRequests, ClusterState, Command, LogPayload, Response, Role};
use crate::types::{
    Entry, LogId, Membership, NodeId, RaftNode, RaftStorageError, Snapshot, SnapshotMeta,
    StoredMembership, TypeConfig, Vote,
};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// One AppendEntries carries entries up to about this many encoded bytes (always
/// at least one entry). openraft gives an AppendEntries one Raft heartbeat
/// (120 ms) to cross the wire and be made durable by the follower before it
/// counts a timeout, and bounds a request only by its number of entries: 64
/// batched entries of task reports can reach megabytes, which on a loaded
/// machine missed that deadline again and again (the follower, never hearing
/// from its leader, called elections), and could exceed the frame limit.
pub const MAX_REPLICATION_BYTES: usize = 512 * 1024;

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_FORMAT: &str = "format";
const KEY_CURRENT: &str = "current";

/// The layout of the tables above and of the records in them. Bump it (and migrate)
/// when either changes. 2: services carry update runs and health checks (1.0 will be
/// the first version that migrates older stores).
const FORMAT: u32 = 2;

/// redb's page cache. The state of a cluster is small; the log is read mostly at its
/// tail.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Operations queued for the log writer; beyond this, `append` and the others wait
/// for room.
const QUEUE_OPS: usize = 4096;
/// Most operations in one log transaction.
const MAX_BATCH_OPS: usize = 4096;
/// Encoded entry bytes after which a log transaction takes no more operations.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

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
    #[error(
        "cannot start the Raft log writer thread: {0}; the system is short of threads or \
         memory"
    )]
    WriterSpawn(#[source] std::io::Error),
    #[error("the Raft log writer stopped unexpectedly; restart shoal")]
    WriterStopped,
    /// A log transaction failed. The writer refuses all later writes with the same
    /// error, so the log on disk never has a hole.
    #[error(transparent)]
    LogWrite(Arc<StoreError>),
    #[error(
        "the Raft store of this data directory holds no cluster state (no membership or no \
         initialised cluster in its log or snapshot): this node is a worker (workers keep no \
         state) or never finished joining, so there is nothing to recover from; run the \
         recovery on a surviving manager"
    )]
    RecoveryNoCluster,
    #[error(
        "node {node} is not a voting manager in the last membership the log holds (voters: \
         {voters}); only a manager's data directory holds the cluster state: run the recovery \
         on a surviving manager"
    )]
    RecoveryNotVoter { node: NodeId, voters: String },
    #[error(
        "node {node} is already the only manager of its cluster; there is no quorum to \
         recover: start it with `shoal run`"
    )]
    RecoveryNothingToDo { node: NodeId },
    #[error("the Raft log changed between planning and writing the recovery; run it again")]
    RecoveryStale,
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
    /// Written before request ids existed: read as having applied none.
    V1 {
        last_applied: Option<LogId>,
        membership: StoredMembership,
        state: ClusterState,
    },
    /// `state` encodes without its request record (`ClusterState::requests`
    /// is left out of the state's own encoding, so a V1 snapshot still
    /// decodes); the record travels here, beside it.
    V2 {
        last_applied: Option<LogId>,
        membership: StoredMembership,
        state: ClusterState,
        requests: AppliedRequests,
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
/// openraft's tasks drop theirs shortly after `Raft::shutdown` returns. Dropping the
/// last [`LogStore`] clone blocks until the log writer has committed what is queued
/// (a few transactions at most).
pub async fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = path.to_path_buf();
    let (db, applied, snapshot_len, tail) = run_blocking(move || open_blocking(&path)).await?;
    let db = Arc::new(db);
    // The snapshot just read is the stored one; its data says what it covers.
    let durable_snapshot = Arc::new(DurableSnapshot::default());
    durable_snapshot.set(applied.last_applied);
    let log = LogStore::start(db.clone(), tail, durable_snapshot.clone())?;
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
        log,
        StateMachineStore {
            db,
            handle,
            durable_snapshot,
        },
    ))
}

fn open_blocking(path: &Path) -> Result<(Database, Applied, u64, LogTail), StoreError> {
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
    let tail = read_log_tail(&db)?;
    Ok((db, applied, snapshot_len, tail))
}

/// The log's in-memory bookkeeping as the file has it: nothing is pending yet.
fn read_log_tail(db: &Database) -> Result<LogTail, StoreError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let last_in_log = match log.last()? {
        Some((_, bytes)) => Some(codec::decode::<Entry>(bytes.value())?.log_id),
        None => None,
    };
    let meta = txn.open_table(META)?;
    let last_purged: Option<LogId> = read_value(&meta, KEY_LAST_PURGED)?;
    let committed: Option<Option<LogId>> = read_value(&meta, KEY_COMMITTED)?;
    Ok(LogTail {
        pending: BTreeMap::new(),
        next_seq: 0,
        last_log_id: last_in_log.or(last_purged),
        last_purged,
        committed: committed.flatten(),
        failure: None,
    })
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
    let (last_applied, membership, mut state) = match codec::decode(data)? {
        SnapshotData::V1 {
            last_applied,
            membership,
            state,
        } => (last_applied, membership, state),
        SnapshotData::V2 {
            last_applied,
            membership,
            mut state,
            requests,
        } => {
            state.requests = requests;
            (last_applied, membership, state)
        }
    };
    state.share_task_specs();
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

/// Called once with the outcome when the writer has committed (or failed) an append.
type Completion = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

/// Work for the log writer, applied in the order it was queued. Records are encoded
/// by the caller, so an encoding error reaches the caller instead of failing a batch.
enum LogOp {
    Append {
        /// Tags these entries in [`LogTail::pending`]; see [`Pending`].
        seq: u64,
        rows: Vec<(u64, Vec<u8>)>,
        done: Completion,
    },
    /// Deletes the entries from index `from` on.
    Truncate {
        from: u64,
    },
    /// Deletes the entries up to index `upto` and records `record` (the encoded log id)
    /// as the last purged one.
    Purge {
        upto: u64,
        record: Vec<u8>,
    },
    SaveVote {
        record: Vec<u8>,
        done: oneshot::Sender<Result<(), Arc<StoreError>>>,
    },
    SaveCommitted {
        record: Vec<u8>,
    },
    /// Makes the writer commit what it has taken so far, then wait until `resume`
    /// receives or its sender is dropped.
    #[cfg(test)]
    Hold {
        resume: std::sync::mpsc::Receiver<()>,
    },
}

impl LogOp {
    fn bytes(&self) -> usize {
        match self {
            LogOp::Append { rows, .. } => rows.iter().map(|(_, bytes)| bytes.len()).sum(),
            _ => 0,
        }
    }

    fn complete(self, result: Result<(), Arc<StoreError>>) {
        match self {
            LogOp::Append { done, .. } => done(result),
            // The caller may have stopped waiting; nothing is lost if so.
            LogOp::SaveVote { done, .. } => drop(done.send(result)),
            _ => {}
        }
    }
}

/// An appended entry that is not durable yet.
struct Pending {
    /// The append it came with. After a truncate the same index may be appended
    /// again before the first append is committed; the writer then must not forget
    /// the newer entry when the older one becomes durable.
    seq: u64,
    entry: Entry,
    /// Its encoded size, for reads bounded in bytes.
    bytes: usize,
}

/// What the log looks like to openraft right now, ahead of the file. Readers take
/// entries from `pending` first and from redb below it.
///
/// Invariant: `pending` is a contiguous suffix of the log ending at `last_log_id`
/// (appends extend the log at its end, the writer commits them in order, truncate and
/// purge cut both ends). So every live index below the first pending one is durable
/// in redb, while rows at or above it may be stale until the writer catches up.
struct LogTail {
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    /// Set by the writer when a transaction fails; every later write is refused.
    failure: Option<Arc<StoreError>>,
}

impl LogTail {
    /// Drops the entries of `ops` from `pending` now that they are durable.
    fn forget_durable(&mut self, ops: &[LogOp]) {
        for op in ops {
            if let LogOp::Append { seq, rows, .. } = op {
                for (index, _) in rows {
                    if self.pending.get(index).is_some_and(|p| p.seq == *seq) {
                        self.pending.remove(index);
                    }
                }
            }
        }
    }
}

/// The inclusive index range `range` selects from the live log, if any.
fn live_range(range: (Bound<u64>, Bound<u64>), tail: &LogTail) -> Option<(u64, u64)> {
    let first_live = match tail.last_purged {
        Some(purged) => purged.index.checked_add(1)?,
        None => 0,
    };
    let last_live = tail.last_log_id?.index;
    let start = match range.0 {
        Bound::Included(index) => index,
        Bound::Excluded(index) => index.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.1 {
        Bound::Included(index) => index,
        Bound::Excluded(index) => index.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    let (start, end) = (start.max(first_live), end.min(last_live));
    (start <= end).then_some((start, end))
}

/// How far the snapshot stored in redb covers the log: written by the state machine
/// once a snapshot is durable, read by the log writer before it purges.
///
/// openraft 0.9 installs a snapshot from the leader on its state-machine task and
/// purges the log it covers on its core task, in no particular order. Were the purge
/// durable first and the node killed before the snapshot was, the restarted node
/// would hold the old snapshot, a committed pointer past it, and no log between the
/// two: it could not start. So the writer purges only what the stored snapshot
/// covers, and keeps a purge that comes early until the snapshot catches up.
#[derive(Debug, Default)]
struct DurableSnapshot {
    /// One more than the last log index the stored snapshot covers; 0 for none.
    next_index: AtomicU64,
}

impl DurableSnapshot {
    fn set(&self, last: Option<LogId>) {
        let next = last.map_or(0, |id| id.index + 1);
        self.next_index.store(next, Ordering::Release);
    }

    fn covers(&self, index: u64) -> bool {
        index < self.next_index.load(Ordering::Acquire)
    }
}

/// A purge the log writer holds back until the stored snapshot covers it; see
/// [`DurableSnapshot`]. Until then the purged rows stay in redb, out of reach of
/// readers (the tail already counts them purged): a crash then leaves the log as it
/// was before the purge, which the old snapshot still fits.
struct DeferredPurge {
    upto: u64,
    record: Vec<u8>,
}

/// The one owner of the log's write transactions: takes queued operations in
/// order, commits as many as are waiting in one transaction, then completes them.
struct LogWriter {
    db: Arc<Database>,
    ops: mpsc::Receiver<LogOp>,
    tail: Arc<Mutex<LogTail>>,
    commits: Arc<AtomicU64>,
    failure: Option<Arc<StoreError>>,
    snapshot: Arc<DurableSnapshot>,
    deferred_purge: Option<DeferredPurge>,
}

/// The operations of one transaction.
#[derive(Default)]
struct Batch {
    ops: Vec<LogOp>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, op: LogOp) {
        self.bytes += op.bytes();
        self.ops.push(op);
    }

    fn is_full(&self) -> bool {
        self.ops.len() >= MAX_BATCH_OPS || self.bytes >= MAX_BATCH_BYTES
    }
}

impl LogWriter {
    /// Runs until every [`LogStore`] clone is gone and the queue is empty.
    fn run(mut self) {
        while let Some(first) = self.ops.blocking_recv() {
            let mut batch = Batch::default();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    #[cfg(test)]
                    LogOp::Hold { resume } => {
                        self.write(std::mem::take(&mut batch));
                        // Either outcome means "go on".
                        let _ = resume.recv();
                    }
                    op => batch.push(op),
                }
                next = if batch.is_full() {
                    None
                } else {
                    self.ops.try_recv().ok()
                };
            }
            self.write(batch);
        }
        // The last operations may have left a purge waiting for a snapshot that is
        // durable by now.
        self.write(Batch::default());
    }

    /// Commits `batch`, and with it a deferred purge the stored snapshot now covers.
    fn write(&mut self, batch: Batch) {
        let purge_ready = self
            .deferred_purge
            .as_ref()
            .is_some_and(|purge| self.snapshot.covers(purge.upto));
        if batch.ops.is_empty() && !purge_ready {
            return;
        }
        let result = match &self.failure {
            Some(failure) => Err(failure.clone()),
            None => commit_batch(
                &self.db,
                &batch.ops,
                &self.snapshot,
                &mut self.deferred_purge,
            )
            .map_err(Arc::new),
        };
        match &result {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                lock_tail(&self.tail).forget_durable(&batch.ops);
            }
            Err(error) if self.failure.is_none() => {
                tracing::error!(%error, "writing the Raft log failed; refusing further writes");
                self.failure = Some(error.clone());
                lock_tail(&self.tail).failure = Some(error.clone());
            }
            Err(_) => {}
        }
        for op in batch.ops {
            op.complete(result.clone());
        }
    }
}

/// Applies `ops` in order in one transaction, then the latest purge (from `ops` or
/// held back earlier) if `snapshot` covers it; otherwise that purge stays held back.
fn commit_batch(
    db: &Database,
    ops: &[LogOp],
    snapshot: &DurableSnapshot,
    deferred_purge: &mut Option<DeferredPurge>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    // The committed pointer alone is not worth an fsync: it rides along with the
    // next durable commit. A committed pointer lost in a crash only means a restarted
    // node waits for the leader before re-applying those entries.
    let pointer_only = ops
        .iter()
        .all(|op| matches!(op, LogOp::SaveCommitted { .. }));
    txn.set_durability(if pointer_only {
        Durability::None
    } else {
        Durability::Immediate
    })?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            match op {
                LogOp::Append { rows, .. } => {
                    for (index, bytes) in rows {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                LogOp::Truncate { from } => {
                    log.retain_in::<u64, _>(*from.., |_, _| false)?;
                }
                // Done after the other operations: none of them touches an index
                // at or below a purge (openraft never appends or truncates there).
                // Purges only grow, so a later one includes an earlier one.
                LogOp::Purge { upto, record } => {
                    *deferred_purge = Some(DeferredPurge {
                        upto: *upto,
                        record: record.clone(),
                    });
                }
                LogOp::SaveVote { record, .. } => {
                    meta.insert(KEY_VOTE, record.as_slice())?;
                }
                LogOp::SaveCommitted { record } => {
                    meta.insert(KEY_COMMITTED, record.as_slice())?;
                }
                #[cfg(test)]
                LogOp::Hold { .. } => {}
            }
        }
        match deferred_purge.take_if(|purge| snapshot.covers(purge.upto)) {
            Some(purge) => {
                meta.insert(KEY_LAST_PURGED, purge.record.as_slice())?;
                log.retain_in::<u64, _>(..=purge.upto, |_, _| false)?;
            }
            None => {
                if let Some(purge) = deferred_purge {
                    tracing::debug!(
                        upto = purge.upto,
                        "purge held back until the snapshot covering it is durable"
                    );
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn lock_tail(tail: &Mutex<LogTail>) -> MutexGuard<'_, LogTail> {
    // Poisoned only if a holder panicked, which is a bug: stop here too.
    tail.lock().expect("log tail lock poisoned")
}

/// The sending side of the log writer. Dropping the last [`LogStore`] clone drops it,
/// which lets the writer finish what is queued and stop; the drop waits for that, so
/// the file is closed (and can be reopened) once the stores are gone.
struct WriterHandle {
    ops: Option<mpsc::Sender<LogOp>>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    async fn reserve(&self) -> Result<mpsc::Permit<'_, LogOp>, StoreError> {
        let ops = self.ops.as_ref().expect("the sender lives until drop");
        ops.reserve().await.map_err(|_| StoreError::WriterStopped)
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(thread) = self.thread.take() {
            // The writer never holds a store, so this is not the writer itself; the
            // check keeps it that way should that change.
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!("the Raft log writer panicked");
            }
        }
    }
}

/// The Raft log and vote. Cheap to clone; clones share the database, the entries not
/// yet durable and the writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<LogTail>>,
    writer: Arc<WriterHandle>,
    commits: Arc<AtomicU64>,
}

impl LogStore {
    fn start(
        db: Arc<Database>,
        tail: LogTail,
        snapshot: Arc<DurableSnapshot>,
    ) -> Result<LogStore, StoreError> {
        let (sender, receiver) = mpsc::channel(QUEUE_OPS);
        let tail = Arc::new(Mutex::new(tail));
        let commits = Arc::new(AtomicU64::new(0));
        let writer = LogWriter {
            db: db.clone(),
            ops: receiver,
            tail: tail.clone(),
            commits: commits.clone(),
            failure: None,
            snapshot,
            deferred_purge: None,
        };
        let thread = std::thread::Builder::new()
            .name("shoal-raft-log".to_owned())
            .spawn(move || writer.run())
            .map_err(StoreError::WriterSpawn)?;
        Ok(LogStore {
            db,
            tail,
            writer: Arc::new(WriterHandle {
                ops: Some(sender),
                thread: Some(thread),
            }),
            commits,
        })
    }

    fn lock_tail(&self) -> MutexGuard<'_, LogTail> {
        lock_tail(&self.tail)
    }

    /// The live entries in `range`, in order. With `max_bytes`, stops after the
    /// entry that brings their encoded size to `max_bytes` or more (so at least
    /// one entry comes back from a non-empty range).
    async fn read_entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        max_bytes: Option<usize>,
    ) -> Result<Vec<Entry>, StoreError> {
        let max_bytes = max_bytes.unwrap_or(usize::MAX);
        // Pending entries first: one that is committed after this point is in redb
        // by the time redb is read below.
        let (durable, pending) = {
            let tail = self.lock_tail();
            let Some((start, end)) = live_range(range, &tail) else {
                return Ok(Vec::new());
            };
            let first_pending = tail.pending.keys().next().copied().unwrap_or(u64::MAX);
            let durable = (start < first_pending).then(|| (start, end.min(first_pending - 1)));
            let pending: Vec<(Entry, usize)> = tail
                .pending
                .range(start..=end)
                .map(|(_, p)| (p.entry.clone(), p.bytes))
                .collect();
            (durable, pending)
        };
        let (mut entries, mut total) = match durable {
            Some((start, end)) => {
                let db = self.db.clone();
                run_blocking(move || {
                    let txn = db.begin_read()?;
                    let log = txn.open_table(LOG)?;
                    let mut entries = Vec::new();
                    let mut total = 0usize;
                    for row in log.range::<u64>(start..=end)? {
                        if total >= max_bytes {
                            break;
                        }
                        let (_, bytes) = row?;
                        total += bytes.value().len();
                        entries.push(codec::decode(bytes.value())?);
                    }
                    Ok((entries, total))
                })
                .await?
            }
            None => (Vec::new(), 0),
        };
        for (entry, bytes) in pending {
            if total >= max_bytes {
                break;
            }
            total += bytes;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let tail = self.lock_tail();
        LogState {
            last_log_id: tail.last_log_id,
            last_purged_log_id: tail.last_purged,
        }
    }

    /// Queues `entries` for the writer, which calls `done` once they are durable (or
    /// could not be written). They are readable when this returns.
    async fn submit_append(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: Completion,
    ) -> Result<(), StoreError> {
        fn refuse(done: Completion, error: StoreError) -> StoreError {
            let error = Arc::new(error);
            done(Err(error.clone()));
            StoreError::LogWrite(error)
        }

        let mut rows = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            match codec::encode(&entry) {
                Ok(bytes) => {
                    let len = bytes.len();
                    rows.push((entry.log_id.index, bytes));
                    appended.push((entry, len));
                }
                Err(error) => return Err(refuse(done, error.into())),
            }
        }
        let permit = match self.writer.reserve().await {
            Ok(permit) => permit,
            Err(error) => return Err(refuse(done, error)),
        };
        let mut tail = self.lock_tail();
        if let Some(failure) = tail.failure.clone() {
            drop(tail);
            done(Err(failure.clone()));
            return Err(StoreError::LogWrite(failure));
        }
        let seq = tail.next_seq;
        tail.next_seq += 1;
        for (entry, bytes) in appended {
            tail.last_log_id = Some(entry.log_id);
            tail.pending
                .insert(entry.log_id.index, Pending { seq, entry, bytes });
        }
        // Sent under the lock, so the queue has the order the tail saw.
        permit.send(LogOp::Append { seq, rows, done });
        Ok(())
    }

    /// Deletes the entries from `log_id` on.
    async fn truncate_from(&self, log_id: LogId) -> Result<(), StoreError> {
        let index = log_id.index;
        // The entry before `index` becomes the last one, or the last purged one if
        // that entry is purged too (then the read finds nothing).
        let before = match index.checked_sub(1) {
            Some(before) => {
                let range = (Bound::Included(before), Bound::Included(before));
                self.read_entries(range, None)
                    .await?
                    .first()
                    .map(|e| e.log_id)
            }
            None => None,
        };
        let permit = self.writer.reserve().await?;
        let mut tail = self.lock_tail();
        if tail.last_log_id.is_some_and(|last| last.index >= index) {
            tail.last_log_id = before.or(tail.last_purged);
            tail.pending.split_off(&index);
        }
        permit.send(LogOp::Truncate { from: index });
        Ok(())
    }

    /// Deletes the entries up to `log_id` and records it as the last purged one.
    async fn purge_upto(&self, log_id: LogId) -> Result<(), StoreError> {
        let record = codec::encode(&log_id)?;
        let permit = self.writer.reserve().await?;
        let mut tail = self.lock_tail();
        tail.last_purged = Some(log_id);
        if tail.last_log_id < Some(log_id) {
            tail.last_log_id = Some(log_id);
        }
        tail.pending = match log_id.index.checked_add(1) {
            Some(after) => tail.pending.split_off(&after),
            None => BTreeMap::new(),
        };
        permit.send(LogOp::Purge {
            upto: log_id.index,
            record,
        });
        Ok(())
    }

    /// Returns once `vote` is durable: a node must never vote twice in one term.
    async fn write_vote(&self, vote: &Vote) -> Result<(), StoreError> {
        let record = codec::encode(vote)?;
        let (done, durable) = oneshot::channel();
        self.writer
            .reserve()
            .await?
            .send(LogOp::SaveVote { record, done });
        durable
            .await
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::LogWrite)
    }

    async fn write_committed(&self, committed: Option<LogId>) -> Result<(), StoreError> {
        let record = codec::encode(&committed)?;
        let permit = self.writer.reserve().await?;
        let mut tail = self.lock_tail();
        tail.committed = committed;
        permit.send(LogOp::SaveCommitted { record });
        Ok(())
    }

    /// Number of entries durably in the log (for benchmarks and diagnostics).
    pub async fn log_len(&self) -> Result<u64, StoreError> {
        let db = self.db.clone();
        run_blocking(move || Ok(db.begin_read()?.open_table(LOG)?.len()?)).await
    }

    /// Number of transactions the log writer has committed since the store was
    /// opened (for benchmarks and diagnostics: appends per commit shows the batching).
    pub fn log_commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
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
        self.read_entries(range, None)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }

    /// What the leader sends a follower in one AppendEntries: bounded in bytes
    /// as well as in entries (`max_payload_entries`).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        self.read_entries(range, Some(MAX_REPLICATION_BYTES))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.write_vote(vote)
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        // Every saved vote is durable, hence in redb.
        let db = self.db.clone();
        run_blocking(move || read_meta(&db, KEY_VOTE))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        self.write_committed(committed)
            .await
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.lock_tail().committed)
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
        let done: Completion = Box::new(move |result| {
            callback.log_io_completed(result.map_err(|e| std::io::Error::other(e.to_string())))
        });
        self.submit_append(entries, done)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.truncate_from(log_id)
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.purge_upto(log_id)
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
    durable_snapshot: Arc<DurableSnapshot>,
}

impl StateMachineStore {
    pub fn state(&self) -> StateHandle {
        self.handle.clone()
    }

    async fn build(&self) -> Result<Snapshot, StoreError> {
        let mut applied = self.handle.lock_read().clone();
        let requests = std::mem::take(&mut applied.state.requests);
        let data = codec::encode(&SnapshotData::V2 {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            state: applied.state,
            requests,
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
        let last_log_id = meta.last_log_id;
        let snapshot = StoredSnapshot::V1 { meta, data };
        if run_blocking(move || write_snapshot(&db, &snapshot, replace)).await? {
            self.handle.snapshot_len.store(len, Ordering::Relaxed);
            self.durable_snapshot.set(last_log_id);
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
        tracing::info!(
            snapshot_index = index,
            bytes = self.handle.snapshot_len(),
            "installed a snapshot from the leader"
        );
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
                    EntryPayload::Normal(payload) => payload.apply(&mut applied.state),
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

/// Log entries read at a time while a recovery replays the log.
const RECOVERY_READ_CHUNK: u64 = 1024;

/// What a quorum-loss recovery (`shoal run --force-new-cluster`) finds in the store of
/// a surviving manager and will write; made by [`plan_recovery`], written by
/// [`write_recovery`].
///
/// openraft 0.9 takes the last membership entry in the log as the effective one,
/// committed or not, so a membership entry naming only the survivor, appended before
/// the Raft instance starts, makes it a one-voter group that elects itself and commits
/// that entry (and everything before it) on its own. The cluster state must forget the
/// other managers too, or the leader would add them back (membership follows the
/// managers in the state): a `RemoveNode` for each follows the membership entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The surviving manager: the only voter afterwards.
    pub survivor: NodeId,
    /// The membership in effect now: the last one in the log, committed or not.
    pub previous: Membership,
    /// The managers of the cluster state as the whole log leaves it, other than the
    /// survivor (id, name); the recovery removes their records, so their tasks are
    /// orphaned and placed again on live nodes.
    pub lost_managers: Vec<(NodeId, String)>,
    /// The last log entry now; the recovery appends after it.
    pub last_log_id: Option<LogId>,
    /// Entries after the last one known committed. They may never have reached a
    /// quorum; the recovery commits them with the rest of the survivor's log.
    pub uncommitted: u64,
    /// The vote stored now.
    pub vote: Option<Vote>,
    /// The term the recovery writes in: above every term in the vote and the log, so
    /// its entries cannot be mistaken for any earlier leader's.
    pub term: u64,
}

/// Reads what a recovery of `survivor` would do, changing nothing: replays the log
/// after the snapshot (every entry, committed or not, since the survivor's log is all
/// that is left) on a copy of the state, and checks that recovering makes sense:
/// the store holds an initialised cluster, `survivor` is a voter of the membership in
/// effect and a manager of the state, and there is someone to forget.
pub async fn plan_recovery(
    log: &LogStore,
    sm: &StateMachineStore,
    survivor: NodeId,
) -> Result<Recovery, StoreError> {
    let (last_log_id, committed, first_live) = {
        let tail = log.lock_tail();
        let first_live = tail.last_purged.map_or(0, |id| id.index + 1);
        (tail.last_log_id, tail.committed, first_live)
    };
    let db = log.db.clone();
    let vote: Option<Vote> = run_blocking(move || read_meta(&db, KEY_VOTE)).await?;
    let Applied {
        last_applied,
        mut membership,
        mut state,
    } = sm.handle.lock_read().clone();

    // In chunks: the live log may hold thousands of batched entries.
    let last_index = last_log_id.map(|id| id.index);
    let mut next = match last_applied {
        Some(applied) => first_live.max(applied.index + 1),
        None => first_live,
    };
    while last_index.is_some_and(|last| next <= last) {
        let end = next.saturating_add(RECOVERY_READ_CHUNK - 1);
        let entries = log
            .read_entries((Bound::Included(next), Bound::Included(end)), None)
            .await?;
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            next = entry.log_id.index + 1;
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(payload) => {
                    payload.apply(&mut state);
                }
                EntryPayload::Membership(config) => {
                    membership = StoredMembership::new(Some(entry.log_id), config);
                }
            }
        }
    }

    let previous = membership.membership().clone();
    let voters: BTreeSet<NodeId> = previous.voter_ids().collect();
    if !state.is_initialised() || voters.is_empty() {
        return Err(StoreError::RecoveryNoCluster);
    }
    let is_manager = state
        .nodes
        .get(&survivor)
        .is_some_and(|n| n.role == Role::Manager);
    if !voters.contains(&survivor) || !is_manager {
        let voters = voters
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(StoreError::RecoveryNotVoter {
            node: survivor,
            voters,
        });
    }
    let lost_managers: Vec<(NodeId, String)> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager && n.id != survivor)
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let alone = voters.len() == 1 && previous.learner_ids().next().is_none();
    if alone && lost_managers.is_empty() {
        return Err(StoreError::RecoveryNothingToDo { node: survivor });
    }
    // As openraft does on start: what is applied is committed.
    let committed = committed.max(last_applied);
    let uncommitted = match (last_index, committed) {
        (Some(last), Some(committed)) => last.saturating_sub(committed.index),
        (Some(last), None) => (last + 1).saturating_sub(first_live),
        (None, _) => 0,
    };
    let term = vote
        .map_or(0, |v| v.leader_id().term)
        .max(last_log_id.map_or(0, |id| id.leader_id.term))
        + 1;
    Ok(Recovery {
        survivor,
        previous,
        lost_managers,
        last_log_id,
        uncommitted,
        vote,
        term,
    })
}

/// Writes `recovery`: a vote for the survivor in the recovery's term, then (at the end
/// of the log, in that term) a membership entry naming only the survivor, reachable at
/// `addr`, and one entry removing every lost manager from the state. Returns the ids
/// of the appended entries once they are durable. Must run before the Raft instance
/// starts on this store.
///
/// The vote goes first: a log entry of a term above the stored vote would break
/// openraft's invariants, while a vote alone (should this stop half way) is only a
/// higher term and the recovery can run again.
pub async fn write_recovery(
    log: &LogStore,
    recovery: &Recovery,
    addr: String,
    now_ms: u64,
) -> Result<Vec<LogId>, StoreError> {
    if log.log_state().last_log_id != recovery.last_log_id {
        return Err(StoreError::RecoveryStale);
    }
    let survivor = recovery.survivor;
    log.write_vote(&Vote::new(recovery.term, survivor)).await?;

    let leader = openraft::CommittedLeaderId::new(recovery.term, survivor);
    let first = recovery.last_log_id.map_or(0, |id| id.index + 1);
    let config = Membership::new(
        vec![BTreeSet::from([survivor])],
        BTreeMap::from([(survivor, RaftNode { addr })]),
    );
    let mut entries = vec![Entry {
        log_id: LogId::new(leader, first),
        payload: EntryPayload::Membership(config),
    }];
    if !recovery.lost_managers.is_empty() {
        let removals = recovery
            .lost_managers
            .iter()
            .map(|(id, _)| Command::RemoveNode { id: *id, now_ms })
            .collect();
        entries.push(Entry {
            log_id: LogId::new(leader, first + 1),
            payload: EntryPayload::Normal(LogPayload::V1Batch(removals)),
        });
    }
    let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
    let (done, durable) = oneshot::channel();
    log.submit_append(
        entries,
        Box::new(move |result| {
            // The receiver waits below; it is gone only if this future was dropped.
            let _ = done.send(result);
        }),
    )
    .await?;
    durable
        .await
        .map_err(|_| StoreError::WriterStopped)?
        .map_err(StoreError::LogWrite)?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::*;
    use crate::state::{CaMaterial, Command, LogPayload, NewNode, Resources, Role};
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
            key_fingerprint: String::new(),
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

    /// A snapshot of [`history`] built by a store standing in for the leader,
    /// with that store (and its directory, which must outlive it).
    async fn leader_snapshot() -> (TempDir, StateMachineStore, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut leader) = open(&dir.path().join("raft.redb")).await.unwrap();
        leader.apply(history()).await.unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (dir, leader, snapshot)
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
            let (mut log, mut sm) = open(&path).await.unwrap();
            assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
            assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
            assert_eq!(log.try_get_log_entries(2..4).await.unwrap(), entries[1..3]);
            assert_eq!(log.log_len().await.unwrap(), 4);

            // A purge takes effect on disk once a snapshot covers it.
            sm.apply(entries[..2].to_vec()).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(1, 1, 2)).await.unwrap();
            log.truncate(log_id(1, 1, 4)).await.unwrap();
        }
        let (mut log, _sm) = open(&path).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries[2..3]);
        assert_eq!(log.log_len().await.unwrap(), 1);
    }

    /// openraft purges the log a snapshot from the leader covers while that snapshot
    /// is still being installed. A node killed in between must restart from its old
    /// snapshot and the log after it, not from a log purged past a snapshot it never
    /// stored (which left a committed pointer with no entries to re-apply).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_ahead_of_its_snapshot_waits_for_it() {
        let (_leader_dir, _leader, snapshot) = leader_snapshot().await;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let entries = history();
        {
            let (mut log, _sm) = open(&path).await.unwrap();
            log.blocking_append(entries.clone()).await.unwrap();
            log.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
            // The purge comes first; the node dies before the snapshot is stored.
            log.purge(log_id(1, 1, 4)).await.unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
            assert_eq!(log.try_get_log_entries(..).await.unwrap(), []);
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        {
            let (mut log, mut sm) = open(&path).await.unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, None, "the purge reached the disk");
            // What openraft re-applies on start: everything up to the committed pointer.
            assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
            assert_eq!(sm.applied_state().await.unwrap().0, None);
            assert_eq!(log.try_get_log_entries(1..5).await.unwrap(), entries);

            // This time the install finishes after the purge; the purge follows it to
            // the disk with the next write.
            log.purge(log_id(1, 1, 4)).await.unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            assert_eq!(
                log.log_len().await.unwrap(),
                4,
                "purged before the snapshot"
            );
            sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            assert_eq!(log.log_len().await.unwrap(), 0);
        }
        let (mut log, sm) = open(&path).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(sm.state().last_applied_index(), 4);
    }

    /// A purge held back when the last write came is done when the store closes, if
    /// the snapshot is durable by then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_back_purge_is_done_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (mut log, mut sm) = open(&path).await.unwrap();
            log.blocking_append(history()).await.unwrap();
            log.purge(log_id(1, 1, 3)).await.unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
            assert_eq!(log.log_len().await.unwrap(), 4);
            sm.apply(history()).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        }
        let (mut log, _sm) = open(&path).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
        assert_eq!(log.log_len().await.unwrap(), 1);
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
        let (_leader_dir, mut leader, snapshot) = leader_snapshot().await;

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
    async fn applied_request_ids_survive_a_snapshot_build_install_and_reopen() {
        use crate::state::{Proposed, RequestId};
        let id = RequestId::new(1, 42);
        let join = |index: u64, name: &str, addr: &str| Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(LogPayload::V2(vec![Proposed {
                request: Some(id),
                command: register(name, addr),
            }])),
        };
        let leader_dir = tempfile::tempdir().unwrap();
        let (_leader_log, mut leader) = open(&leader_dir.path().join("raft.redb")).await.unwrap();
        let mut entries = history();
        entries.push(join(5, "w2", "127.0.0.5:4240"));
        let responses = leader.apply(entries).await.unwrap();
        let registered = Response::Batch(vec![Response::NodeRegistered { id: 3 }]);
        assert_eq!(responses[4], registered);
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
            follower
                .install_snapshot(&snapshot.meta, snapshot.snapshot)
                .await
                .unwrap();
            assert_eq!(
                follower.state().read(|s| s.requests.clone()),
                leader.state().read(|s| s.requests.clone())
            );
        }
        // Restarted from the snapshot, the follower still knows the request:
        // the same request again (a retry) registers nobody.
        let (_log, mut follower) = open(&path).await.unwrap();
        assert_eq!(
            follower.state().read(|s| s.requests.outcome(id).cloned()),
            Some(Response::NodeRegistered { id: 3 })
        );
        let responses = follower
            .apply([join(6, "w3", "127.0.0.6:4240")])
            .await
            .unwrap();
        assert_eq!(responses, [registered]);
        assert_eq!(follower.state().read(|s| s.nodes.len()), 3);
    }

    #[test]
    fn a_snapshot_written_before_request_ids_still_decodes() {
        let mut state = ClusterState::default();
        crate::state::apply(&mut state, &init(1));
        let data = codec::encode(&SnapshotData::V1 {
            last_applied: Some(log_id(1, 1, 2)),
            membership: StoredMembership::default(),
            state: state.clone(),
        })
        .unwrap();
        let applied = decode_snapshot(&data).unwrap();
        assert_eq!(applied.state, state);
        assert!(applied.state.requests.is_empty());
    }

    #[test]
    fn a_decoded_snapshot_shares_each_service_spec_among_its_tasks() {
        use crate::service::ServiceSpec;
        use crate::testing::{add_service, cluster, running};
        use std::sync::Arc;
        let mut state = cluster(2);
        add_service(&mut state, ServiceSpec::default_for("web", "nginx:1"));
        add_service(&mut state, ServiceSpec::default_for("db", "pg:1"));
        for slot in 1..=3 {
            running(&mut state, "web", slot, 1);
        }
        running(&mut state, "db", 1, 2);
        // A task whose spec is neither its service's current nor previous
        // one keeps its own copy.
        let odd = running(&mut state, "web", 4, 2);
        Arc::make_mut(&mut state.tasks.get_mut(&odd).unwrap().spec).image = "nginx:0".into();
        let data = codec::encode(&SnapshotData::V2 {
            last_applied: Some(log_id(1, 1, 2)),
            membership: StoredMembership::default(),
            state: state.clone(),
            requests: Default::default(),
        })
        .unwrap();
        let decoded = decode_snapshot(&data).unwrap().state;
        assert_eq!(decoded, state, "sharing changes no value");
        for task in decoded.tasks.values() {
            let service = &decoded.services[&task.service];
            assert_eq!(
                Arc::ptr_eq(&task.spec, &service.spec),
                task.id != odd,
                "task {} of {}",
                task.id,
                task.service
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_build_never_replaces_a_newer_snapshot() {
        let (_dir, mut sm, newer) = leader_snapshot().await;
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

    /// Makes the log writer stop once it has taken what is queued so far; it goes on
    /// when the returned sender sends or is dropped.
    async fn hold_writer(log: &LogStore) -> std::sync::mpsc::Sender<()> {
        let (resume, held) = std::sync::mpsc::channel();
        log.writer
            .reserve()
            .await
            .unwrap()
            .send(LogOp::Hold { resume: held });
        resume
    }

    type Flushed = tokio::sync::mpsc::UnboundedReceiver<(u64, bool)>;

    /// A completion that reports `tag` and whether the write succeeded.
    fn report(to: &tokio::sync::mpsc::UnboundedSender<(u64, bool)>, tag: u64) -> Completion {
        let to = to.clone();
        Box::new(move |result| {
            let _ = to.send((tag, result.is_ok()));
        })
    }

    async fn next_flushed(flushed: &mut Flushed) -> Option<(u64, bool)> {
        tokio::time::timeout(std::time::Duration::from_secs(30), flushed.recv())
            .await
            .expect("the writer completes queued appends")
    }

    fn blanks(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|i| blank_ent::<TypeConfig>(term, 1, i))
            .collect()
    }

    /// What the leader sends in one AppendEntries stays near
    /// [`MAX_REPLICATION_BYTES`], from durable entries and from pending ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_reads_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        // Entries of about 100 KB: a register with a long name.
        let big = |index: u64| normal(index, register(&"n".repeat(100_000), "127.0.0.2:4240"));
        let (to, mut flushed) = tokio::sync::mpsc::unbounded_channel();
        log.submit_append((1..=20).map(big), report(&to, 1))
            .await
            .unwrap();
        assert_eq!(next_flushed(&mut flushed).await, Some((1, true)));
        let resume = hold_writer(&log).await;
        log.submit_append((21..=40).map(big), report(&to, 2))
            .await
            .unwrap();

        let per_entry = codec::encode(&big(1)).unwrap().len();
        let fit = MAX_REPLICATION_BYTES.div_ceil(per_entry);
        assert!((2..20).contains(&fit), "{fit} entries per request");
        for (start, source) in [(1, "durable"), (21, "pending"), (18, "both")] {
            let got = log.limited_get_log_entries(start, 41).await.unwrap();
            let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            let want: Vec<u64> = (start..start + fit as u64).collect();
            assert_eq!(indexes, want, "{source}");
        }
        // A short range comes back whole; one entry over the bound still comes back.
        assert_eq!(log.limited_get_log_entries(3, 5).await.unwrap().len(), 2);
        let huge = normal(
            41,
            register(&"n".repeat(MAX_REPLICATION_BYTES * 2), "127.0.0.2:4240"),
        );
        log.submit_append([huge.clone()], report(&to, 3))
            .await
            .unwrap();
        assert_eq!(log.limited_get_log_entries(41, 42).await.unwrap(), [huge]);
        // Unbounded reads are unchanged.
        assert_eq!(log.try_get_log_entries(1..=40).await.unwrap().len(), 40);
        drop(resume);
        assert_eq!(next_flushed(&mut flushed).await, Some((2, true)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_appends_share_one_commit_and_complete_in_order() {
        const APPENDS: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let (mut log, _sm) = open(&path).await.unwrap();
        let (to, mut flushed) = tokio::sync::mpsc::unbounded_channel();

        let resume = hold_writer(&log).await;
        for index in 1..=APPENDS {
            log.submit_append(blanks(1, index..=index), report(&to, index))
                .await
                .unwrap();
        }
        drop(to);
        // Readable at once, though nothing is durable yet.
        let all = blanks(1, 1..=APPENDS);
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), all);
        assert_eq!(log.try_get_log_entries(10..=12).await.unwrap(), all[9..12]);
        let reader = log.get_log_reader().await;
        assert_eq!(reader.clone().try_get_log_entries(..).await.unwrap(), all);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, APPENDS)));
        assert_eq!(log.log_len().await.unwrap(), 0);
        assert!(flushed.try_recv().is_err(), "nothing may be flushed yet");

        drop(resume);
        for index in 1..=APPENDS {
            assert_eq!(next_flushed(&mut flushed).await, Some((index, true)));
        }
        // Every completion has run (and been dropped): none fires twice.
        assert_eq!(next_flushed(&mut flushed).await, None);
        assert_eq!(log.log_commits(), 1);
        assert_eq!(log.log_len().await.unwrap(), APPENDS);
        drop((log, reader, _sm));

        let (mut log, _sm) = open(&path).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), all);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_issued_together_are_committed_in_groups() {
        const APPENDS: u64 = 1000;
        let dir = tempfile::tempdir().unwrap();
        let (log, _sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        let (to, mut flushed) = tokio::sync::mpsc::unbounded_channel();
        for index in 1..=APPENDS {
            log.submit_append(blanks(1, index..=index), report(&to, index))
                .await
                .unwrap();
        }
        drop(to);
        for index in 1..=APPENDS {
            assert_eq!(next_flushed(&mut flushed).await, Some((index, true)));
        }
        assert_eq!(next_flushed(&mut flushed).await, None);
        let commits = log.log_commits();
        println!("{APPENDS} appends in {commits} commits");
        // Each append only queues; the writer takes all that queued up during its
        // previous fsync. Generous: on any disk this is a handful of commits.
        assert!(commits <= APPENDS / 10, "{commits} commits");
        assert_eq!(log.log_len().await.unwrap(), APPENDS);
    }

    /// A commit of entries that were truncated and appended again while it ran must
    /// not hide the newer entries; pending truncates and purges hide stale rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncate_and_purge_of_pending_entries_read_consistently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let (mut log, _sm) = open(&path).await.unwrap();
        let (to, mut flushed) = tokio::sync::mpsc::unbounded_channel();

        let first = hold_writer(&log).await;
        log.submit_append(blanks(1, 1..=5), report(&to, 1))
            .await
            .unwrap();
        let second = hold_writer(&log).await;
        log.truncate(log_id(1, 1, 3)).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), blanks(1, 1..=2));
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 1, 2))
        );
        log.submit_append(blanks(2, 3..=4), report(&to, 2))
            .await
            .unwrap();

        let mut expected = blanks(1, 1..=2);
        expected.extend(blanks(2, 3..=4));
        drop(first);
        // Entries 1..=5 of term 1 are durable now; 3..=4 of term 2 are not.
        assert_eq!(next_flushed(&mut flushed).await, Some((1, true)));
        assert_eq!(log.log_len().await.unwrap(), 5);
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected);
        assert_eq!(log.try_get_log_entries(4..).await.unwrap(), expected[3..]);

        log.purge(log_id(1, 1, 1)).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected[1..]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 1)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 4)));

        drop(second);
        assert_eq!(next_flushed(&mut flushed).await, Some((2, true)));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected[1..]);
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 1, 3))).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 3)));
        drop((log, _sm));

        // No snapshot covers the purge, so it never reached the disk.
        let (mut log, _sm) = open(&path).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 4)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 3)));
    }

    /// Stands in for the network in tests that run a one-voter Raft: every peer is
    /// unreachable (a single voter never needs one).
    struct NoNetwork;

    type NoRpc<E> =
        openraft::error::RPCError<NodeId, RaftNode, openraft::error::RaftError<NodeId, E>>;

    fn unreachable<E: std::error::Error>() -> NoRpc<E> {
        openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&AnyError::error(
            "no network in this test",
        )))
    }

    impl openraft::network::RaftNetworkFactory<TypeConfig> for NoNetwork {
        type Network = NoNetwork;

        async fn new_client(&mut self, _target: NodeId, _node: &RaftNode) -> NoNetwork {
            NoNetwork
        }
    }

    impl openraft::network::RaftNetwork<TypeConfig> for NoNetwork {
        async fn append_entries(
            &mut self,
            _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, NoRpc<openraft::error::Infallible>>
        {
            Err(unreachable())
        }

        async fn install_snapshot(
            &mut self,
            _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
            _option: openraft::network::RPCOption,
        ) -> Result<
            openraft::raft::InstallSnapshotResponse<NodeId>,
            NoRpc<openraft::error::InstallSnapshotError>,
        > {
            Err(unreachable())
        }

        async fn vote(
            &mut self,
            _rpc: openraft::raft::VoteRequest<NodeId>,
            _option: openraft::network::RPCOption,
        ) -> Result<openraft::raft::VoteResponse<NodeId>, NoRpc<openraft::error::Infallible>>
        {
            Err(unreachable())
        }
    }

    fn raft_node(id: NodeId) -> RaftNode {
        RaftNode {
            addr: format!("127.0.0.{id}:4240"),
        }
    }

    /// Managers 1, 2 and 3 (all voters) and worker 4, written by leader 1 in term 1:
    /// membership at 0 (where openraft's `initialize` puts it), init at 1, managers
    /// at 2 and 3, the worker at 4.
    fn three_managers() -> Vec<Entry> {
        let nodes: BTreeMap<NodeId, RaftNode> = (1..=3).map(|id| (id, raft_node(id))).collect();
        let manager = |name: &str, id: NodeId| Command::RegisterNode {
            node: new_node(name, &raft_node(id).addr, Role::Manager),
            now_ms: 2,
        };
        vec![
            Entry {
                log_id: log_id(1, 1, 0),
                payload: EntryPayload::Membership(Membership::new(voters(&[1, 2, 3]), nodes)),
            },
            normal(1, init(1)),
            normal(2, manager("m2", 2)),
            normal(3, manager("m3", 3)),
            normal(4, register("w4", "127.0.0.4:4240")),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_forces_a_one_voter_membership_that_raft_takes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (mut log, sm) = open(&path).await.unwrap();
            log.blocking_append(three_managers()).await.unwrap();
            log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
            // The worker's registration (4) was never known committed here.
            log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();

            let plan = plan_recovery(&log, &sm, 2).await.unwrap();
            assert_eq!(plan.previous.voter_ids().collect::<Vec<_>>(), [1, 2, 3]);
            assert_eq!(
                plan.lost_managers,
                [(1, "m1".to_owned()), (3, "m3".to_owned())]
            );
            assert_eq!(plan.last_log_id, Some(log_id(1, 1, 4)));
            assert_eq!(plan.uncommitted, 1);
            assert_eq!(plan.vote, Some(Vote::new_committed(1, 1)));
            assert_eq!(plan.term, 2);

            let addr = raft_node(2).addr;
            let ids = write_recovery(&log, &plan, addr.clone(), 10).await.unwrap();
            assert_eq!(ids, [log_id(2, 2, 5), log_id(2, 2, 6)]);
            // A plan made before those entries no longer fits the log.
            let stale = write_recovery(&log, &plan, addr, 10).await;
            assert!(matches!(stale, Err(StoreError::RecoveryStale)), "{stale:?}");
        }

        // What openraft reads on start: the vote of the new term, and the
        // one-voter membership as the effective one though it is not committed.
        let (mut log, mut sm) = open(&path).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 2)));
        let tail = log.try_get_log_entries(5..).await.unwrap();
        assert_eq!(tail.len(), 2);
        let EntryPayload::Membership(forced) = &tail[0].payload else {
            panic!("entry 5 is not a membership entry: {:?}", tail[0]);
        };
        assert_eq!(forced.voter_ids().collect::<Vec<_>>(), [2]);
        assert_eq!(forced.learner_ids().count(), 0);
        assert_eq!(forced.get_node(&2), Some(&raft_node(2)));
        let initial = openraft::storage::StorageHelper::new(&mut log, &mut sm)
            .get_initial_state()
            .await
            .unwrap();
        let effective = initial.membership_state.effective();
        assert_eq!(effective.log_id(), &Some(log_id(2, 2, 5)));
        assert_eq!(effective.voter_ids().collect::<Vec<_>>(), [2]);

        // Run again on the recovered store: nothing is left to recover.
        let again = plan_recovery(&log, &sm, 2).await;
        assert!(
            matches!(again, Err(StoreError::RecoveryNothingToDo { node: 2 })),
            "{again:?}"
        );

        // A Raft instance on this store elects its node alone, commits the
        // recovery and the entries before it, and takes writes.
        let state = sm.state();
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        };
        let raft = crate::Raft::new(2, Arc::new(config.validate().unwrap()), NoNetwork, log, sm)
            .await
            .unwrap();
        raft.wait(Some(std::time::Duration::from_secs(20)))
            .metrics(
                |m| m.current_leader == Some(2) && m.last_applied.is_some_and(|id| id.index >= 7),
                "node 2 leads alone and applies the recovery",
            )
            .await
            .unwrap();
        let metrics = raft.metrics().borrow().clone();
        assert_eq!(metrics.current_term, 3);
        assert_eq!(
            metrics
                .membership_config
                .membership()
                .voter_ids()
                .collect::<Vec<_>>(),
            [2]
        );
        // The lost managers are gone; the worker's registration, never known
        // committed, is kept.
        let nodes: Vec<NodeId> = state.read(|s| s.nodes.keys().copied().collect());
        assert_eq!(nodes, [2, 4]);
        let written = raft
            .client_write(LogPayload::V1(Command::Noop { now_ms: 11 }))
            .await
            .unwrap();
        assert_eq!(written.data, Response::Ok);
        raft.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_refuses_where_it_makes_no_sense() {
        // No cluster at all.
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        let error = plan_recovery(&log, &sm, 1).await.unwrap_err();
        assert!(matches!(error, StoreError::RecoveryNoCluster), "{error:?}");
        assert!(
            error.to_string().contains("holds no cluster state"),
            "{error}"
        );
        drop((log, sm));

        // A worker cannot recover; a manager that is already alone need not.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        log.blocking_append(history()).await.unwrap();
        let error = plan_recovery(&log, &sm, 2).await.unwrap_err();
        assert!(
            matches!(error, StoreError::RecoveryNotVoter { node: 2, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("(voters: 1)"), "{error}");
        let error = plan_recovery(&log, &sm, 1).await.unwrap_err();
        assert!(
            matches!(error, StoreError::RecoveryNothingToDo { node: 1 }),
            "{error:?}"
        );
        assert!(error.to_string().contains("`shoal run`"), "{error}");
        // Planning wrote nothing.
        assert_eq!(log.read_vote().await.unwrap(), None);
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 1, 4))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_replays_the_log_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(&dir.path().join("raft.redb")).await.unwrap();
        let entries = three_managers();
        log.blocking_append(entries.clone()).await.unwrap();
        // Applied and snapshotted up to the first manager's registration; the
        // rest (the second manager, the worker) only in the log.
        sm.apply(entries[..3].to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        log.purge(log_id(1, 1, 1)).await.unwrap();
        let plan = plan_recovery(&log, &sm, 3).await.unwrap();
        assert_eq!(
            plan.lost_managers,
            [(1, "m1".to_owned()), (2, "m2".to_owned())]
        );
        assert_eq!(plan.previous.voter_ids().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(plan.uncommitted, 2);
        assert_eq!(plan.term, 2);
        // The state machine itself was not touched.
        assert_eq!(sm.state().read(|s| s.nodes.len()), 2);
    }
}
