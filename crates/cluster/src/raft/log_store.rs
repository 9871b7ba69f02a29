//! The Raft log, the vote, the committed pointer and the purge point, kept in one
//! redb file (`raft.redb`) in the member's state directory.
//!
//! Entries and the vote are committed with `Durability::Immediate` (an fsync)
//! before openraft hears that they are stored: a vote or an acknowledged entry
//! that a crash forgets lets two leaders be elected in one term. Writes run on the
//! blocking pool so an fsync never stalls the runtime that sends heartbeats.

use std::fmt::{Debug, Display};
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uphold_core::NodeId;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::engine::state::Command;

/// Called with the payload of every entry appended to this member's log (as
/// leader or as follower), after the entry is durable. It runs inside the Raft
/// core task, so it must return quickly and must not block. An appended entry
/// may later be truncated by a new leader; the observer is not told.
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

/// Bumped whenever the encoding of anything in the file changes.
const FORMAT_VERSION: u32 = 1;

/// redb's default cache is sized for large databases; a Raft log of a few
/// thousand small entries needs little.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

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
        "Raft log {path} has format version {found}, this build reads version {FORMAT_VERSION}"
    )]
    Format { path: PathBuf, found: u32 },
}

/// The log store handed to openraft. Clones share one database; openraft's
/// replication tasks read through clones while the core task writes.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Tells whether any clone of a [`LogStore`] is still alive.
pub(crate) struct Liveness(std::sync::Weak<Inner>);

impl Liveness {
    pub(crate) fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    observer: AppendObserver,
}

impl LogStore {
    /// Opens (creating if absent) the log at `path`, refusing a file written by a
    /// different member.
    pub fn open(
        path: &Path,
        node_id: NodeId,
        observer: AppendObserver,
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

        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                observer,
            }),
        })
    }

    /// A handle that is dead once every clone of this store is dropped, i.e. once
    /// the database file is closed and may be opened again.
    pub(crate) fn liveness(&self) -> Liveness {
        Liveness(Arc::downgrade(&self.inner))
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let txn = self.inner.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(META).map_err(|e| e.to_string())?;
        get_meta(&table, key)
    }

    /// Runs `write` in one write transaction on the blocking pool and commits it
    /// with the given durability.
    async fn write<F>(&self, durability: Durability, write: F) -> Result<(), String>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), String> + Send + 'static,
    {
        let inner = self.inner.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut txn = inner.db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(durability);
            write(&txn)?;
            txn.commit().map_err(|e| e.to_string())
        });
        match job.await {
            Ok(result) => {
                result.map_err(|e| format!("Raft log {}: {e}", self.inner.path.display()))
            }
            Err(join) => Err(format!(
                "Raft log {}: write task failed: {join}",
                self.inner.path.display()
            )),
        }
    }

    fn read_entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, String> {
        let txn = self.inner.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(|e| e.to_string())? {
            let (index, bytes) = item.map_err(|e| e.to_string())?;
            let entry: Entry = postcard::from_bytes(bytes.value())
                .map_err(|e| format!("entry {} is corrupt: {e}", index.value()))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, String> {
        let txn = self.inner.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(LOG).map_err(|e| e.to_string())?;
        let last = table.last().map_err(|e| e.to_string())?;
        let log_id = match last {
            None => None,
            Some((index, bytes)) => {
                let entry: Entry = postcard::from_bytes(bytes.value())
                    .map_err(|e| format!("entry {} is corrupt: {e}", index.value()))?;
                Some(entry.log_id)
            }
        };
        Ok(log_id)
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self
            .read_meta(KEY_PURGED)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last = self
            .last_log_id()
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.write(Durability::Immediate, move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            put_meta(&mut meta, KEY_VOTE, &vote)
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a restart hint (entries up to it are re-applied at once instead of
        // after the leader's next message); an older value after a crash is still
        // correct, so this write need not wait for an fsync.
        self.write(Durability::Eventual, move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            put_meta(&mut meta, KEY_COMMITTED, &committed)
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_meta(KEY_COMMITTED)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(committed.flatten())
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            let bytes = postcard::to_allocvec(entry).map_err(|e| {
                storage_error(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    format!("encoding: {e}"),
                )
            })?;
            encoded.push((entry.log_id.index, bytes));
        }
        let written = self
            .write(Durability::Immediate, move |txn| {
                let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
                for (index, bytes) in &encoded {
                    log.insert(*index, bytes.as_slice())
                        .map_err(|e| format!("writing entry {index}: {e}"))?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = written {
            callback.log_io_completed(Err(io::Error::other(e.clone())));
            return Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, e));
        }
        for entry in &entries {
            if let EntryPayload::Normal(command) = &entry.payload {
                (self.inner.observer)(command);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        self.write(Durability::Immediate, move |txn| {
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            log.retain_in(since.., |_, _| false)
                .map_err(|e| format!("truncating from {since}: {e}"))
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let purged = log_id;
        self.write(Durability::Immediate, move |txn| {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            put_meta(&mut meta, KEY_PURGED, &purged)?;
            let mut log = txn.open_table(LOG).map_err(|e| e.to_string())?;
            log.retain_in(..=upto, |_, _| false)
                .map_err(|e| format!("purging up to {upto}: {e}"))
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Log(log_id), ErrorVerb::Delete, e))
    }
}
