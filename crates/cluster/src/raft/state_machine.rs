//! The state machine openraft applies committed entries to: the in-memory
//! [`ClusterState`], published on a watch channel after every applied batch, and
//! the latest snapshot, kept in `snapshot.bin` in the state directory.
//!
//! The state itself is not written on every apply; the snapshot file plus the
//! durable log rebuild it after a restart. The snapshot file is replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory) so a
//! crash leaves either the old or the new snapshot, never a torn one.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::engine::state::{ApplyResult, ClusterState};

/// File name of the latest snapshot inside the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
/// Identifies the file and its encoding; bumped when the encoding changes.
const SNAPSHOT_MAGIC: &[u8; 8] = b"UPHSNAP2";

/// The replicated state after applying the log up to `last_applied_index`.
/// Index 0 holds the initial membership, so 0 also means "no command applied yet".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub last_applied_index: u64,
    pub state: ClusterState,
    /// The state of the snapshot this member loaded at start or installed from
    /// the leader since, once it is on disk. Its entries never pass the log's
    /// append hook, so it is how the lease voter learns what they fenced.
    pub durable_snapshot: Option<Arc<ClusterState>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load Raft snapshot {path}: {message}")]
pub struct SnapshotLoadError {
    pub path: PathBuf,
    pub message: String,
}

/// What a snapshot's data holds. An enum so that a later format can be told
/// apart from this one. V1 (renewals in the log) is no longer read: its files
/// carry the old magic and are refused before decoding.
#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    V1(()),
    V2(ClusterState),
}

/// A snapshot as kept in memory and on disk.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The latest snapshot, shared by the state machine and its snapshot builders.
struct SnapshotStore {
    dir: PathBuf,
    /// Serializes file replacement so two writers never share the temporary file.
    write_lock: tokio::sync::Mutex<()>,
    current: Mutex<Option<StoredSnapshot>>,
    builds: AtomicU64,
}

impl SnapshotStore {
    fn load(dir: &Path) -> Result<SnapshotStore, SnapshotLoadError> {
        let path = dir.join(SNAPSHOT_FILE);
        let err = |message: String| SnapshotLoadError {
            path: path.clone(),
            message,
        };
        let current = match std::fs::read(&path) {
            Ok(bytes) => {
                if bytes.starts_with(b"UPHSNAP1") {
                    return Err(err(
                        "written by an earlier uphold whose leases were logged; stop every \
                         member, move the state directories away and start again"
                            .to_string(),
                    ));
                }
                let body = bytes
                    .strip_prefix(SNAPSHOT_MAGIC.as_slice())
                    .ok_or_else(|| err("not an uphold snapshot (bad header)".to_string()))?;
                let stored: StoredSnapshot =
                    postcard::from_bytes(body).map_err(|e| err(format!("corrupt: {e}")))?;
                decode_payload(&stored.data).map_err(|e| err(format!("corrupt state: {e}")))?;
                Some(stored)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            write_lock: tokio::sync::Mutex::new(()),
            current: Mutex::new(current),
            builds: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Option<StoredSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `snapshot` the current one, on disk first, unless a newer one is
    /// already current (a build that raced with an install).
    async fn save(&self, snapshot: StoredSnapshot) -> Result<(), StorageError> {
        let _guard = self.write_lock.lock().await;
        if let Some(current) = self.current() {
            if current.meta.last_log_id > snapshot.meta.last_log_id {
                return Ok(());
            }
        }
        let signature = snapshot.meta.signature();
        let bytes = postcard::to_extend(&snapshot, SNAPSHOT_MAGIC.to_vec()).map_err(|e| {
            StorageIOError::write_snapshot(Some(signature.clone()), AnyError::error(e))
        })?;
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            uphold_os::protect::with_state_io_priority(|| write_atomically(&dir, &bytes))
        })
        .await;
        let written = match written {
            Ok(result) => result,
            Err(join) => Err(format!("write task failed: {join}")),
        };
        written.map_err(|e| {
            StorageIOError::write_snapshot(
                Some(signature),
                AnyError::error(format!("{}: {e}", self.dir.join(SNAPSHOT_FILE).display())),
            )
        })?;
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(snapshot);
        Ok(())
    }
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let path = dir.join(SNAPSHOT_FILE);
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing directory {}: {e}", dir.display()))
}

fn encode_payload(state: &ClusterState) -> Result<Vec<u8>, postcard::Error> {
    // Encodes exactly like `SnapshotPayload::V2` (postcard writes the variant
    // index, then the field) without cloning the state into an owned payload.
    #[derive(Serialize)]
    enum Borrowed<'a> {
        #[allow(dead_code)]
        V1(()),
        V2(&'a ClusterState),
    }
    postcard::to_allocvec(&Borrowed::V2(state))
}

fn decode_payload(data: &[u8]) -> Result<ClusterState, postcard::Error> {
    match postcard::from_bytes(data)? {
        SnapshotPayload::V2(state) => Ok(state),
        SnapshotPayload::V1(()) => Err(postcard::Error::DeserializeBadEnum),
    }
}

fn snapshot_of(stored: StoredSnapshot) -> Snapshot {
    Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<SnapshotStore>,
    applied_tx: watch::Sender<Arc<AppliedState>>,
    durable_snapshot: Option<Arc<ClusterState>>,
}

impl StateMachine {
    /// Starts from the snapshot in `state_dir`, if any, and publishes that state.
    pub fn open(
        state_dir: &Path,
        applied_tx: watch::Sender<Arc<AppliedState>>,
    ) -> Result<StateMachine, SnapshotLoadError> {
        let snapshots = SnapshotStore::load(state_dir)?;
        let mut sm = StateMachine {
            state: ClusterState::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots: Arc::new(snapshots),
            applied_tx,
            durable_snapshot: None,
        };
        if let Some(stored) = sm.snapshots.current() {
            sm.state = decode_payload(&stored.data).map_err(|e| SnapshotLoadError {
                path: state_dir.join(SNAPSHOT_FILE),
                message: format!("corrupt state: {e}"),
            })?;
            sm.last_applied = stored.meta.last_log_id;
            sm.last_membership = stored.meta.last_membership.clone();
            sm.durable_snapshot = Some(Arc::new(sm.state.clone()));
        }
        sm.publish();
        Ok(sm)
    }

    fn publish(&self) {
        let applied = AppliedState {
            last_applied_index: self.last_applied.as_ref().map_or(0, |id| id.index),
            state: self.state.clone(),
            durable_snapshot: self.durable_snapshot.clone(),
        };
        self.applied_tx.send_replace(Arc::new(applied));
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        for entry in entries {
            let result = match entry.payload {
                EntryPayload::Blank => ApplyResult::Applied,
                EntryPayload::Normal(command) => self.state.apply(&command),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    ApplyResult::Applied
                }
            };
            self.last_applied = Some(entry.log_id);
            results.push(result);
        }
        if !results.is_empty() {
            self.publish();
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = decode_payload(&data).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(format!("received snapshot is corrupt: {e}")),
            )
        })?;
        self.snapshots
            .save(StoredSnapshot {
                meta: meta.clone(),
                data,
            })
            .await?;
        self.durable_snapshot = Some(Arc::new(state.clone()));
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.snapshots.current().map(snapshot_of))
    }
}

/// A copy of the state at the moment openraft asked for a snapshot, so building
/// it does not hold up applying.
pub struct SnapshotBuilder {
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = encode_payload(&self.state).map_err(|e| {
            StorageIOError::new(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                AnyError::error(format!("encoding state: {e}")),
            )
        })?;
        let build = self.snapshots.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &self.last_applied {
            Some(id) => format!(
                "{}-{}-{}-{build}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("none-{build}"),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        self.snapshots.save(stored.clone()).await?;
        Ok(snapshot_of(stored))
    }
}
