//! The Raft log, the vote, the committed pointer and the purge point, kept in one
//! redb file (`raft.redb`) in the member's state directory and mirrored in memory.
//!
//! openraft's core task awaits every storage call inline, and an fsync can take
//! seconds while another process fills the same disk; heartbeats and votes must
//! keep flowing meanwhile. So the file is written only by one writer thread per
//! store: a call updates the in-memory copy (which serves every read), queues the
//! disk change and returns, and the writer commits everything queued in one
//! transaction (group commit) before reporting durability.
//!
//! Only what a crash must not forget waits for the fsync: an appended entry is
//! acknowledged to openraft (its callback) once it is durable, and `save_vote`
//! returns once the vote is; a forgotten vote or acknowledged entry lets two
//! leaders be elected in one term. openraft 0.9 itself still awaits the append
//! callback in its core (`RaftCore::append_to_log`), so an append does hold the
//! core until its fsync; truncate, purge and the committed pointer do not. The
//! queue is FIFO and each batch is one atomic transaction, so the file always
//! holds a prefix of the requested changes: truncate, purge and the committed
//! pointer need no fsync of their own and become durable with the next append
//! or vote.

use std::collections::BTreeMap;
use std::fmt::{Debug, Display};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use uphold_core::NodeId;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::engine::state::Command;

/// Called with the payload of every entry appended to this member's log (as
/// leader or as follower), after the entry is durable, in log order. It runs on
/// the log's writer thread, which commits the next writes only once it returns,
/// so it must return quickly and must not block. An appended entry may later be
/// truncated by a new leader; the observer is not told.
pub type AppendObserver = Arc<dyn Fn(&Command) + Send + Sync>;

/// File name of the log database inside the state directory.
pub const LOG_FILE: &str = "raft.redb";

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_FORMAT: &str = "format";
const KEY_NODE_ID: &str = "node_id";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "purged";

/// Bumped whenever the encoding of anything in the file changes. Version 2:
/// leases left the log (`Join` replaced `Renew`, `Assign` lost its renewal).
const FORMAT_VERSION: u32 = 2;

/// redb's default cache is sized for large databases; a Raft log of a few
/// thousand small entries needs little.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Writes waiting for the writer thread. When full, callers wait (asynchronously)
/// for room: memory stays bounded under a disk that stalls for long.
const QUEUE_CAPACITY: usize = 1024;

/// Name of the writer thread, as seen in `top -H` and stack dumps.
const WRITER_THREAD: &str = "uphold-raft-log";

#[derive(Debug, thiserror::Error)]
pub enum LogStoreOpenError {
    #[error("cannot open Raft log {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "Raft log {path} belongs to node id {stored}, but this member has id {expected}; \
         each member needs its own state directory"
    )]
    WrongNode {
        path: PathBuf,
        stored: NodeId,
        expected: NodeId,
    },
    #[error(
        "Raft log {path} has format version {found}, this build reads version {FORMAT_VERSION}; \
         if another uphold version wrote it, stop every member, move the state directories \
         away and start again (they hold only placements, rebuilt at start)"
    )]
    Format { path: PathBuf, found: u32 },
}

/// The log store handed to openraft. Clones share one in-memory log and one
/// writer thread; openraft's replication tasks read through clones while the
/// core task writes.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Tells whether the database file of a [`LogStore`] is still open.
pub(crate) struct Liveness(Weak<()>);

impl Liveness {
    pub(crate) fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

struct Inner {
    mem: Mutex<Mem>,
    // Declared before `_writer`: fields drop in declaration order, and the writer
    // thread ends only once this, the last sender, is gone.
    queue: mpsc::Sender<Request>,
    _writer: WriterThread,
    db_open: Weak<()>,
    path: PathBuf,
}

/// The log as openraft sees it: every change is made here first, in call order,
/// and the file follows in the same order. Between snapshots the log is a few
/// thousand small entries, so all of it stays here and serves every read; the
/// file is only read back at open.
#[derive(Default)]
struct Mem {
    log: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

/// Reports to openraft (or a test) that an append is durable, or failed.
type Flushed = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// One change for the writer thread, in the order the callers made it.
enum Request {
    Append {
        encoded: Vec<(u64, Vec<u8>)>,
        /// The Normal entries' commands with their indexes, for the observer.
        commands: Vec<(u64, Command)>,
        done: Flushed,
    },
    Truncate {
        since: u64,
    },
    Purge {
        upto: LogId,
    },
    Vote {
        vote: Vote,
        done: oneshot::Sender<Result<(), String>>,
    },
    Committed {
        committed: Option<LogId>,
    },
}

impl Request {
    /// Whether someone is told the change is durable, so the batch must fsync.
    fn needs_fsync(&self) -> bool {
        matches!(self, Request::Append { .. } | Request::Vote { .. })
    }
}

/// Joins the writer thread on drop, so that once the last [`LogStore`] clone is
/// gone every queued write is on disk and the file is closed: a new store on the
/// same file can be opened at once (redb refuses a second open in one process).
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // A thread cannot join itself; the writer holds no store, but if a
            // callback it runs ever drops the last one, it must not hang.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
type Hooks = Option<Arc<WriterHooks>>;
#[cfg(test)]
const NO_HOOKS: Hooks = None;
/// Outside tests the writer has nothing to consult.
#[cfg(not(test))]
struct Hooks;
#[cfg(not(test))]
const NO_HOOKS: Hooks = Hooks;

impl LogStore {
    /// Opens (creating if absent) the log at `path`, refusing a file written by a
    /// different member, and starts its writer thread.
    pub fn open(
        path: &Path,
        node_id: NodeId,
        observer: AppendObserver,
    ) -> Result<LogStore, LogStoreOpenError> {
        Self::open_with(path, node_id, observer, NO_HOOKS)
    }

    /// [`LogStore::open`] with a writer the test can hold, count and make fail.
    #[cfg(test)]
    pub(crate) fn open_with_hooks(
        path: &Path,
        node_id: NodeId,
        observer: AppendObserver,
        hooks: Arc<WriterHooks>,
    ) -> Result<LogStore, LogStoreOpenError> {
        Self::open_with(path, node_id, observer, Some(hooks))
    }

    fn open_with(
        path: &Path,
        node_id: NodeId,
        observer: AppendObserver,
        hooks: Hooks,
    ) -> Result<LogStore, LogStoreOpenError> {
        let open_err = |message: String| LogStoreOpenError::Open {
            path: path.to_path_buf(),
            message,
        };
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;

        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
            txn.open_table(LOG).map_err(|e| open_err(e.to_string()))?;

            let format: Option<u32> =
                get_meta(&meta, KEY_FORMAT).map_err(|e| open_err(format!("{KEY_FORMAT}: {e}")))?;
            match format {
                Some(found) if found != FORMAT_VERSION => {
                    return Err(LogStoreOpenError::Format {
                        path: path.to_path_buf(),
                        found,
                    })
                }
                Some(_) => {}
                None => put_meta(&mut meta, KEY_FORMAT, &FORMAT_VERSION).map_err(open_err)?,
            }

            let stored: Option<NodeId> = get_meta(&meta, KEY_NODE_ID)
                .map_err(|e| open_err(format!("{KEY_NODE_ID}: {e}")))?;
            match stored {
                Some(stored) if stored != node_id => {
                    return Err(LogStoreOpenError::WrongNode {
                        path: path.to_path_buf(),
                        stored,
                        expected: node_id,
                    })
                }
                Some(_) => {}
                None => put_meta(&mut meta, KEY_NODE_ID, &node_id).map_err(open_err)?,
            }
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;

        let mem = load(&db).map_err(open_err)?;

        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let db_open = Arc::new(());
        let liveness = Arc::downgrade(&db_open);
        let writer = Writer {
            db,
            _db_open: db_open,
            requests,
            observer,
            path: path.to_path_buf(),
            failed: None,
            hooks,
        };
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD.to_string())
            .spawn(move || {
                uphold_os::protect::raise_state_writer_io();
                writer.run()
            })
            .map_err(|e| open_err(format!("starting the writer thread: {e}")))?;

        Ok(LogStore {
            inner: Arc::new(Inner {
                mem: Mutex::new(mem),
                queue,
                _writer: WriterThread(Some(thread)),
                db_open: liveness,
                path: path.to_path_buf(),
            }),
        })
    }

    /// A handle that is dead once the database file is closed and may be opened
    /// again, which happens when every clone of this store is dropped.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(self.inner.db_open.clone())
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        // Nothing leaves `Mem` half-changed on a panic, so a poisoned lock is
        // still consistent.
        self.inner
            .mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `change` to the in-memory log and queues the matching disk change,
    /// both under the memory lock so that the file sees changes in the order
    /// readers did. Waits (asynchronously) only for room in the queue.
    async fn enqueue(&self, change: impl FnOnce(&mut Mem) -> Request) -> Result<(), String> {
        let permit = self
            .inner
            .queue
            .reserve()
            .await
            .map_err(|_| self.writer_gone())?;
        let mut mem = self.mem();
        permit.send(change(&mut mem));
        Ok(())
    }

    fn writer_gone(&self) -> String {
        format!(
            "Raft log {}: the writer thread has stopped",
            self.inner.path.display()
        )
    }

    /// The body of [`RaftLogStorage::append`], with the durability report as a
    /// plain function: the entries are readable when this returns, and `done`
    /// runs on the writer thread once they are durable (or failed to be).
    async fn append_with(&self, entries: Vec<Entry>, done: Flushed) -> Result<(), StorageError> {
        let mut encoded = Vec::with_capacity(entries.len());
        let mut commands = Vec::new();
        for entry in &entries {
            let bytes = postcard::to_allocvec(entry).map_err(|e| {
                storage_error(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    format!("encoding: {e}"),
                )
            })?;
            encoded.push((entry.log_id.index, bytes));
            if let EntryPayload::Normal(command) = &entry.payload {
                commands.push((entry.log_id.index, command.clone()));
            }
        }
        self.enqueue(move |mem| {
            for entry in entries {
                mem.log.insert(entry.log_id.index, entry);
            }
            Request::Append {
                encoded,
                commands,
                done,
            }
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }
}

/// Reads the whole log and the meta values into memory, once at open.
fn load(db: &Database) -> Result<Mem, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = txn.open_table(META).map_err(|e| e.to_string())?;
    let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
    let mut log = BTreeMap::new();
    for item in table.iter().map_err(|e| e.to_string())? {
        let (index, bytes) = item.map_err(|e| e.to_string())?;
        let entry: Entry = postcard::from_bytes(bytes.value())
            .map_err(|e| format!("entry {} is corrupt: {e}", index.value()))?;
        log.insert(index.value(), entry);
    }
    let committed: Option<Option<LogId>> = get_meta(&meta, KEY_COMMITTED)?;
    Ok(Mem {
        log,
        vote: get_meta(&meta, KEY_VOTE)?,
        committed: committed.flatten(),
        purged: get_meta(&meta, KEY_PURGED)?,
    })
}

/// Owns the database and every write transaction; runs on its own thread so an
/// fsync blocks nobody but the requests it makes durable.
struct Writer {
    db: Database,
    // After `db`: fields drop in declaration order, and the store must read as
    // closed only once the database really is.
    _db_open: Arc<()>,
    requests: mpsc::Receiver<Request>,
    observer: AppendObserver,
    path: PathBuf,
    /// The first commit error. Memory already holds changes the file lost, so
    /// every later write fails too: openraft stops on a storage error, and a
    /// restart rebuilds memory from what the file really holds.
    failed: Option<String>,
    #[cfg_attr(not(test), allow(dead_code))]
    hooks: Hooks,
}

impl Writer {
    fn run(mut self) {
        // Ends when every sender, i.e. every store clone, is gone; the database
        // closes as `self` drops.
        while let Some(first) = self.requests.blocking_recv() {
            self.before_batch();
            let mut batch = vec![first];
            while batch.len() < QUEUE_CAPACITY {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let result = match &self.failed {
                Some(e) => Err(format!("an earlier write failed: {e}")),
                None => self
                    .commit(&batch)
                    .map_err(|e| format!("Raft log {}: {e}", self.path.display())),
            };
            if let Err(e) = &result {
                if self.failed.is_none() {
                    tracing::error!(error = %e, "cannot write the Raft log");
                    self.failed = Some(e.clone());
                }
            }
            self.complete(batch, result);
        }
    }

    /// Applies the whole batch, in order, in one transaction.
    fn commit(&self, batch: &[Request]) -> Result<(), String> {
        self.check_injected_failure()?;
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let durability = if batch.iter().any(Request::needs_fsync) {
            Durability::Immediate
        } else {
            Durability::Eventual
        };
        txn.set_durability(durability);
        {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            for request in batch {
                match request {
                    Request::Append { encoded, .. } => {
                        for (index, bytes) in encoded {
                            log.insert(*index, bytes.as_slice())
                                .map_err(|e| format!("writing entry {index}: {e}"))?;
                        }
                    }
                    Request::Truncate { since } => {
                        log.retain_in(*since.., |_, _| false)
                            .map_err(|e| format!("truncating from {since}: {e}"))?;
                    }
                    Request::Purge { upto } => {
                        put_meta(&mut meta, KEY_PURGED, upto)?;
                        let index = upto.index;
                        log.retain_in(..=index, |_, _| false)
                            .map_err(|e| format!("purging up to {index}: {e}"))?;
                    }
                    Request::Vote { vote, .. } => put_meta(&mut meta, KEY_VOTE, vote)?,
                    Request::Committed { committed } => {
                        put_meta(&mut meta, KEY_COMMITTED, committed)?
                    }
                }
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        self.after_commit();
        Ok(())
    }

    /// Reports the batch's outcome to every waiter, then tells the observer about
    /// the entries now durable.
    fn complete(&self, batch: Vec<Request>, result: Result<(), String>) {
        let mut durable: Vec<(u64, Command)> = Vec::new();
        for request in batch {
            match request {
                Request::Append { commands, done, .. } => {
                    done(result.clone().map_err(io::Error::other));
                    if result.is_ok() {
                        durable.extend(commands);
                    }
                }
                // Entries appended and truncated in one batch never reached the
                // file.
                Request::Truncate { since } => durable.retain(|(index, _)| *index < since),
                Request::Vote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                Request::Purge { .. } | Request::Committed { .. } => {}
            }
        }
        for (index, command) in &durable {
            // The observer is not ours; a panic in it must not take the log down.
            if catch_unwind(AssertUnwindSafe(|| (self.observer)(command))).is_err() {
                tracing::error!(index, "the Raft append observer panicked");
            }
        }
    }

    #[cfg(test)]
    fn before_batch(&self) {
        if let Some(hooks) = &self.hooks {
            hooks.gate();
        }
    }

    #[cfg(not(test))]
    fn before_batch(&self) {}

    #[cfg(test)]
    fn check_injected_failure(&self) -> Result<(), String> {
        match &self.hooks {
            Some(hooks) => hooks.check_failure(),
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn check_injected_failure(&self) -> Result<(), String> {
        Ok(())
    }

    #[cfg(test)]
    fn after_commit(&self) {
        if let Some(hooks) = &self.hooks {
            hooks.committed();
        }
    }

    #[cfg(not(test))]
    fn after_commit(&self) {}
}

/// Lets a test stop the writer thread before it takes a batch, count its
/// commits and make them fail.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct WriterHooks {
    state: Mutex<HookState>,
    changed: std::sync::Condvar,
}

#[cfg(test)]
#[derive(Default)]
struct HookState {
    held: bool,
    at_gate: bool,
    commits: usize,
    fail: bool,
}

#[cfg(test)]
impl WriterHooks {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    fn state(&self) -> MutexGuard<'_, HookState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer stops at its next batch until [`WriterHooks::release`].
    pub(crate) fn hold(&self) {
        self.state().held = true;
    }

    pub(crate) fn release(&self) {
        self.state().held = false;
        self.changed.notify_all();
    }

    /// Waits until the writer has taken a request and stands held.
    pub(crate) fn wait_until_writer_held(&self) {
        let state = self.state();
        let (_state, timeout) = self
            .changed
            .wait_timeout_while(state, Self::WAIT, |s| !s.at_gate)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(!timeout.timed_out(), "the writer never reached the gate");
    }

    /// Transactions committed by the writer so far.
    pub(crate) fn commits(&self) -> usize {
        self.state().commits
    }

    pub(crate) fn fail_commits(&self, fail: bool) {
        self.state().fail = fail;
    }

    fn gate(&self) {
        let mut state = self.state();
        if !state.held {
            return;
        }
        state.at_gate = true;
        self.changed.notify_all();
        let mut state = self
            .changed
            .wait_while(state, |s| s.held)
            .unwrap_or_else(PoisonError::into_inner);
        state.at_gate = false;
    }

    fn check_failure(&self) -> Result<(), String> {
        if self.state().fail {
            Err("injected commit failure".to_string())
        } else {
            Ok(())
        }
    }

    fn committed(&self) {
        self.state().commits += 1;
        self.changed.notify_all();
    }
}

fn get_meta<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    match table.get(key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| format!("stored {key} is corrupt: {e}")),
    }
}

fn put_meta<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), String> {
    let bytes = postcard::to_allocvec(value).map_err(|e| format!("encoding {key}: {e}"))?;
    table
        .insert(key, bytes.as_slice())
        .map_err(|e| format!("writing {key}: {e}"))?;
    Ok(())
}

fn storage_error(subject: ErrorSubject<u64>, verb: ErrorVerb, msg: impl Display) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::error(msg)).into()
}

/// The entries in `range`, which may be empty or reversed (`BTreeMap::range`
/// panics on a reversed range).
fn entries_in<RB: RangeBounds<u64>>(log: &BTreeMap<u64, Entry>, range: RB) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => match start.checked_add(1) {
            Some(start) => start,
            None => return Vec::new(),
        },
        Bound::Unbounded => 0,
    };
    let end = range.end_bound().cloned();
    let empty = match end {
        Bound::Included(end) => end < start,
        Bound::Excluded(end) => end <= start,
        Bound::Unbounded => false,
    };
    if empty {
        return Vec::new();
    }
    log.range((Bound::Included(start), end))
        .map(|(_, entry)| entry.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(entries_in(&self.mem().log, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem();
        let last = mem.log.last_key_value().map(|(_, entry)| entry.log_id);
        Ok(LogState {
            last_log_id: last.or(mem.purged),
            last_purged_log_id: mem.purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        let (done, durable) = oneshot::channel();
        let write_error = |e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e);
        self.enqueue(|mem| {
            mem.vote = Some(vote);
            Request::Vote { vote, done }
        })
        .await
        .map_err(write_error)?;
        match durable.await {
            Ok(result) => result.map_err(write_error),
            Err(_) => Err(write_error(self.writer_gone())),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a restart hint (entries up to it are re-applied at once instead of
        // after the leader's next message); an older value after a crash is still
        // correct, so this does not wait for the disk.
        self.enqueue(|mem| {
            mem.committed = committed;
            Request::Committed { committed }
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let done: Flushed = Box::new(move |result| callback.log_io_completed(result));
        self.append_with(entries.into_iter().collect(), done).await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Not awaited: a truncate a crash forgets leaves entries this member had
        // before, and nothing was acknowledged on the strength of it; the next
        // append, which is acknowledged, is committed after it or with it.
        let since = log_id.index;
        self.enqueue(|mem| {
            mem.log.split_off(&since);
            Request::Truncate { since }
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Not awaited: the purged entries are in the snapshot already, and a
        // crash that forgets the purge only keeps them longer.
        self.enqueue(|mem| {
            mem.purged = Some(log_id);
            match log_id.index.checked_add(1) {
                Some(first_kept) => mem.log = mem.log.split_off(&first_kept),
                None => mem.log.clear(),
            }
            Request::Purge { upto: log_id }
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
