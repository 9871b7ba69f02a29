//! The receiving side, built into `uphold run`: answers comparisons and applies changes
//! to the target tree. It never shows a partial file: data goes to a temporary file in the
//! same directory, is flushed per the set's fsync policy, and is renamed over the old
//! version. Every path comes from the network and is opened below the target root without
//! following symlinks ([`uphold_os::confined::DirFd`]). Requests are refused for unknown
//! sets, from members that may not send the set, and while this member is the sender.
//!
//! Here: the receiver's state (sets, open transfers) and the handling of each
//! request. Beside it: who may send (`access`), how many streams a peer may
//! hold and for how long (`limits`), streams
//! being received (`transfer`), operations on the target tree (`files`) and
//! owners and modes of what is written (`meta`).

use crate::entry::Meta;
use crate::path::{Excludes, RelPath};
use crate::protocol::{
    decode, encode, DeltaBasis, FileOp, OpResult, Request, Response, SYNC_PROTOCOL, SYNC_SERVICE,
};
use crate::sigcache::SigCache;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use uphold_config::sync::{FsyncPolicy, SyncConfig};
use uphold_core::NodeName;
use uphold_delta::{block_size_for, Applier, SignatureBuilder};
use uphold_os::confined::DirFd;

/// Tells whether this member currently sends a set (then it must not receive it).
pub type SenderCheck = Arc<dyn Fn(&SyncConfig) -> bool + Send + Sync>;

pub(super) struct ReceiverSet {
    pub(super) config: SyncConfig,
    pub(super) excludes: Excludes,
    pub(super) sigcache: Option<SigCache>,
}

/// Counters of what was received, for status and metrics.
#[derive(Debug, Default)]
pub struct ReceiverCounters {
    pub files_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub deletes: AtomicU64,
    pub renames: AtomicU64,
    pub refused: AtomicU64,
}

pub struct Receiver {
    me: NodeName,
    /// Who new files belong to and which permission bits creation keeps, so that
    /// `fchown`/`fchmod` are called only when they change something.
    creds: Creds,
    sets: RwLock<HashMap<String, Arc<ReceiverSet>>>,
    is_sender: SenderCheck,
    state_dir: Option<PathBuf>,
    preserves_owner: bool,
    transfers: Mutex<HashMap<u64, TransferSlot>>,
    next_id: AtomicU64,
    pub counters: ReceiverCounters,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

mod access;
mod files;
mod limits;
mod meta;
mod transfer;

pub use access::Refusal;

/// How often the daemon asks the receiver to abandon idle streams.
pub const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

use files::{
    compare, delete, finish_put, mkdir, open_parent, open_root, rename, set_meta_at, symlink,
    temp_name,
};
use meta::{file_meta_planned, Creds};
use transfer::{chunk, commit, signature, SigWriter, Transfer, TransferBody, TransferSlot};

impl Receiver {
    /// `state_dir`: where signatures of large files are cached (per set); `None` disables
    /// the cache (a delta then reads the target file twice).
    pub fn new(
        me: NodeName,
        sets: &[SyncConfig],
        is_sender: SenderCheck,
        state_dir: Option<PathBuf>,
    ) -> Self {
        let r = Receiver {
            me,
            sets: RwLock::new(HashMap::new()),
            is_sender,
            state_dir,
            preserves_owner: nix::unistd::geteuid().is_root(),
            creds: Creds::current(),
            transfers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: ReceiverCounters::default(),
        };
        r.set_sets(sets);
        r
    }

    /// Replaces the configured sets (SIGHUP). Streams in progress keep their old set.
    pub fn set_sets(&self, sets: &[SyncConfig]) {
        let mut map = HashMap::new();
        for set in sets {
            // `{node}` in the target path names this member.
            let mut set = set.clone();
            set.target = set.target_for(&self.me);
            let excludes = match Excludes::new(&set.exclude) {
                Ok(ex) => ex,
                Err(e) => {
                    tracing::error!(set = %set.name, "sync set not served: {e}");
                    continue;
                }
            };
            let sigcache = self.state_dir.as_ref().and_then(|dir| {
                let path = dir.join("sync").join(set.name.as_str()).join("signatures");
                match SigCache::new(path.clone()) {
                    Ok(cache) => Some(cache),
                    Err(e) => {
                        tracing::warn!(set = %set.name, dir = %path.display(), "signature cache disabled: {e}");
                        None
                    }
                }
            });
            map.insert(
                set.name.as_str().to_string(),
                Arc::new(ReceiverSet {
                    config: set,
                    excludes,
                    sigcache,
                }),
            );
        }
        *self.sets.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    fn set_for(&self, peer: &NodeName, name: &str) -> Result<Arc<ReceiverSet>, Refusal> {
        let set = self
            .sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| Refusal::UnknownSet {
                set: name.to_string(),
            })?;
        access::may_send(&set.config, peer, (self.is_sender)(&set.config))?;
        Ok(set)
    }

    /// Handles one decoded request from `peer`. Blocking: file system work.
    pub fn handle_request(&self, peer: &NodeName, request: Request) -> Result<Response, String> {
        match request {
            Request::Hello { set, protocol } => {
                if protocol != SYNC_PROTOCOL {
                    return Err(format!(
                        "sync protocol {protocol} not spoken here (this member speaks {SYNC_PROTOCOL})"
                    ));
                }
                let set = self.set_for(peer, &set)?;
                std::fs::create_dir_all(&set.config.target)
                    .map_err(|e| format!("creating target {}: {e}", set.config.target.display()))?;
                Ok(Response::Hello {
                    preserves_owner: self.preserves_owner,
                })
            }
            Request::Compare {
                set,
                with_owner,
                items,
            } => {
                let set = self.set_for(peer, &set)?;
                let root = open_root(&set.config.target)?;
                let results = items
                    .into_iter()
                    .map(|item| compare(&root, &set.excludes, with_owner, item))
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Response::Compare(results))
            }
            Request::Apply { set, mut ops } => {
                let set = self.set_for(peer, &set)?;
                let root = open_root(&set.config.target)?;
                for op in &mut ops {
                    if let FileOp::Mkdir { meta, .. }
                    | FileOp::Put { meta, .. }
                    | FileOp::Symlink { meta, .. }
                    | FileOp::SetMeta { meta, .. } = op
                    {
                        meta::restrict(meta, &set.config);
                    }
                }
                Ok(Response::Apply(self.apply(&root, &set, ops)))
            }
            Request::Signature { set, path } => {
                let set = self.set_for(peer, &set)?;
                let root = open_root(&set.config.target)?;
                Ok(Response::Signature(signature(&root, &set, &path)))
            }
            Request::Begin {
                set,
                path,
                mut meta,
                size,
                delta,
            } => {
                let set = self.set_for(peer, &set)?;
                meta::restrict(&mut meta, &set.config);
                let root = open_root(&set.config.target)?;
                self.begin(peer, &root, set, path, meta, size, delta)
            }
            Request::Chunk { id, data } => {
                let mut t = self.take(peer, id)?;
                let result = chunk(&mut t, &data);
                self.put_back(id, t, result.is_ok());
                result.map(|()| Response::Done)
            }
            Request::Commit { id, hash } => {
                let t = self.take(peer, id)?;
                self.transfers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                let written = t.size;
                commit(*t, hash)?;
                self.counters.files_written.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_written
                    .fetch_add(written, Ordering::Relaxed);
                Ok(Response::Done)
            }
            Request::Abort { id } => {
                if let Ok(t) = self.take(peer, id) {
                    self.transfers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    let _ = t.dir.unlink(&t.temp);
                }
                Ok(Response::Done)
            }
        }
    }

    fn take(&self, peer: &NodeName, id: u64) -> Result<Box<Transfer>, String> {
        let mut map = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&id) {
            Some(TransferSlot::Idle(t)) if &t.peer == peer => {}
            Some(TransferSlot::Busy { .. }) => {
                return Err(format!("transfer {id} is busy with another request"))
            }
            _ => {
                return Err(format!(
                    "no transfer {id} from {peer} (expired or finished)"
                ))
            }
        }
        let Some(TransferSlot::Idle(t)) = map.remove(&id) else {
            return Err(format!("transfer {id} vanished"));
        };
        let busy = TransferSlot::Busy {
            peer: peer.clone(),
            set: t.set.config.name.to_string(),
            size: t.size,
        };
        map.insert(id, busy);
        Ok(t)
    }

    fn put_back(&self, id: u64, mut t: Box<Transfer>, keep: bool) {
        let mut map = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        if keep {
            t.last_used = Instant::now();
            map.insert(id, TransferSlot::Idle(t));
        } else {
            map.remove(&id);
            let _ = t.dir.unlink(&t.temp);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        peer: &NodeName,
        root: &DirFd,
        set: Arc<ReceiverSet>,
        path: RelPath,
        meta: Meta,
        size: u64,
        delta: Option<DeltaBasis>,
    ) -> Result<Response, String> {
        self.expire_idle();
        {
            let mut map = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
            // A sender begins a file again only when its earlier stream of it is lost (a
            // broken connection whose abort never arrived, a sender restart): that one
            // must not hold a slot until it expires, or a flapping link locks the sender
            // out of large files for minutes.
            let dead: Vec<u64> = map
                .iter()
                .filter_map(|(id, slot)| match slot {
                    TransferSlot::Idle(t)
                        if &t.peer == peer
                            && t.path == path
                            && t.set.config.name == set.config.name =>
                    {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            for id in dead {
                if let Some(TransferSlot::Idle(t)) = map.remove(&id) {
                    let _ = t.dir.unlink(&t.temp);
                }
            }
            let open = map
                .values()
                .filter(|slot| match slot {
                    TransferSlot::Idle(t) => &t.peer == peer,
                    TransferSlot::Busy { peer: p, .. } => p == peer,
                })
                .count();
            limits::may_begin(peer, open)?;
            let set_name = set.config.name.as_str();
            let reserved = map.values().map(|slot| slot.reserved_in(set_name)).sum();
            limits::may_reserve(set_name, reserved, size)?;
        }
        let available = free_bytes(&set.config.target)
            .map_err(|e| format!("{}: free space: {e}", set.config.target.display()))?;
        limits::leaves_room(set.config.name.as_str(), available, size)?;
        let (dir, name) = open_parent(root, &path)?;
        let temp = temp_name(&name);
        let file = dir
            .create_new(&temp, 0o600)
            .map_err(|e| format!("{path}: creating temporary file: {e}"))?;
        let sig = if set.sigcache.is_some() && size >= crate::protocol::DELTA_MIN {
            SignatureBuilder::new(block_size_for(size), rand::random()).ok()
        } else {
            None
        };
        let out = SigWriter {
            file: BufWriter::with_capacity(256 * 1024, file),
            sig,
        };
        let body = match delta {
            None => TransferBody::Whole {
                out,
                hasher: Box::default(),
                written: 0,
            },
            Some(basis) => {
                let opened = dir
                    .open_read(&name)
                    .map_err(|e| format!("{path}: opening basis: {e}"));
                let applier = opened.and_then(|basis_file| {
                    Applier::new(basis_file, basis.block_size, basis.basis_len, out)
                        .map(|a| a.with_length_limit(size))
                        .map_err(|e| format!("{path}: {e}"))
                });
                match applier {
                    Ok(a) => TransferBody::Delta(Box::new(a)),
                    Err(e) => {
                        let _ = dir.unlink(&temp);
                        return Err(e);
                    }
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let t = Transfer {
            peer: peer.clone(),
            set,
            path,
            dir,
            temp,
            name,
            meta,
            size,
            body,
            last_used: Instant::now(),
        };
        self.transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, TransferSlot::Idle(Box::new(t)));
        Ok(Response::Begun { id })
    }

    /// Abandons streams idle past [`limits::TRANSFER_IDLE`] and removes their
    /// temporary files. Runs at every Begin, and every [`EXPIRY_CHECK`] from the
    /// daemon, so a dead sender's temporary data does not wait for the next one.
    pub fn expire_idle(&self) {
        let mut map = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<u64> = map
            .iter()
            .filter_map(|(id, slot)| match slot {
                TransferSlot::Idle(t) if limits::abandoned(t.last_used.elapsed()) => Some(*id),
                _ => None,
            })
            .collect();
        for id in stale {
            if let Some(TransferSlot::Idle(t)) = map.remove(&id) {
                tracing::warn!(path = %t.path, peer = %t.peer, "abandoning a transfer idle for {:?}", limits::TRANSFER_IDLE);
                let _ = t.dir.unlink(&t.temp);
            }
        }
    }

    fn apply(&self, root: &DirFd, set: &ReceiverSet, ops: Vec<FileOp>) -> Vec<OpResult> {
        let policy = set.config.fsync;
        // Every entry is overwritten with the real outcome; one that is not (a worker
        // thread lost) reports failure rather than success.
        let mut results = vec![OpResult::Failed("not applied".into()); ops.len()];
        // Files written but not yet renamed into place (batch policy): one syncfs covers
        // them all before the first rename.
        let mut pending: Vec<Staged> = Vec::new();
        let mut run: Vec<PutJob> = Vec::new();
        for (index, op) in ops.into_iter().enumerate() {
            if let FileOp::Put { path, meta, data } = op {
                run.push(PutJob {
                    index,
                    path,
                    meta,
                    data,
                });
                continue;
            }
            self.put_run(
                root,
                set,
                std::mem::take(&mut run),
                &mut pending,
                &mut results,
            );
            if !matches!(op, FileOp::Mkdir { .. } | FileOp::SetMeta { .. }) {
                self.finish_pending(root, set, policy, &mut pending, &mut results);
            }
            results[index] = match op {
                FileOp::Put { .. } => unreachable_put(),
                FileOp::Mkdir { path, meta } => {
                    result(mkdir(root, &path, &meta, self.preserves_owner))
                }
                FileOp::Symlink { path, target, meta } => {
                    result(symlink(root, &path, &target, &meta, self.preserves_owner))
                }
                FileOp::SetMeta { path, kind, meta } => {
                    result(set_meta_at(root, &path, kind, &meta, self.preserves_owner))
                }
                FileOp::Rename { from, to, expect } => match rename(root, &from, &to, &expect) {
                    Ok(true) => {
                        self.counters.renames.fetch_add(1, Ordering::Relaxed);
                        if let Some(cache) = &set.sigcache {
                            cache.forget(&from);
                        }
                        OpResult::Done
                    }
                    Ok(false) => OpResult::Skipped,
                    Err(e) => OpResult::Failed(e),
                },
                FileOp::Delete { path } => match delete(root, &path) {
                    Ok(()) => {
                        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
                        OpResult::Done
                    }
                    Err(e) => OpResult::Failed(e),
                },
            };
        }
        self.put_run(root, set, run, &mut pending, &mut results);
        self.finish_pending(root, set, policy, &mut pending, &mut results);
        results
    }

    /// Writes a run of consecutive small files, on several threads when it is long:
    /// file creation is system-call bound and the files are independent.
    fn put_run(
        &self,
        root: &DirFd,
        set: &ReceiverSet,
        run: Vec<PutJob>,
        pending: &mut Vec<Staged>,
        results: &mut [OpResult],
    ) {
        if run.is_empty() {
            return;
        }
        let policy = set.config.fsync;
        let write = |jobs: &[PutJob]| -> Vec<(usize, Result<Staged, String>)> {
            let mut cached = None;
            jobs.iter()
                .map(|j| {
                    let staged = self
                        .put(root, &mut cached, &j.path, &j.meta, &j.data, policy)
                        .map(|(dir, temp, name)| Staged {
                            index: j.index,
                            dir,
                            temp,
                            name,
                            path: j.path.clone(),
                            len: j.data.len() as u64,
                        });
                    (j.index, staged)
                })
                .collect()
        };
        let written = parallel(&run, write);
        let mut ready = Vec::new();
        for (index, staged) in written {
            match staged {
                Ok(staged) => {
                    results[index] = OpResult::Done;
                    ready.push(staged);
                }
                Err(e) => results[index] = OpResult::Failed(e),
            }
        }
        if policy == FsyncPolicy::Batch {
            pending.extend(ready);
        } else {
            self.publish_all(set, policy, ready, results);
        }
    }

    fn finish_pending(
        &self,
        root: &DirFd,
        set: &ReceiverSet,
        policy: FsyncPolicy,
        pending: &mut Vec<Staged>,
        results: &mut [OpResult],
    ) {
        if pending.is_empty() {
            return;
        }
        if let Err(e) = root.syncfs() {
            for staged in pending.drain(..) {
                let _ = staged.dir.unlink(&staged.temp);
                results[staged.index] = OpResult::Failed(format!("{}: syncfs: {e}", staged.path));
            }
            return;
        }
        self.publish_all(set, policy, std::mem::take(pending), results);
    }

    /// Renames written files into place (several threads for long runs).
    fn publish_all(
        &self,
        set: &ReceiverSet,
        policy: FsyncPolicy,
        staged: Vec<Staged>,
        results: &mut [OpResult],
    ) {
        for s in &staged {
            results[s.index] = OpResult::Failed(format!("{}: not renamed into place", s.path));
        }
        let outcomes = parallel(&staged, |chunk: &[Staged]| {
            chunk
                .iter()
                .map(|s| {
                    let outcome = finish_put(&s.dir, &s.temp, &s.name, policy).map_err(|e| {
                        let _ = s.dir.unlink(&s.temp);
                        format!("{}: {e}", s.path)
                    });
                    (s.index, outcome)
                })
                .collect()
        });
        let by_index: HashMap<usize, &Staged> = staged.iter().map(|s| (s.index, s)).collect();
        for (index, outcome) in outcomes {
            let Some(s) = by_index.get(&index) else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    results[s.index] = OpResult::Done;
                    self.wrote(set, &s.path, s.len);
                }
                Err(e) => results[s.index] = OpResult::Failed(e),
            }
        }
    }

    fn wrote(&self, set: &ReceiverSet, path: &RelPath, len: u64) {
        self.counters.files_written.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(len, Ordering::Relaxed);
        if len >= crate::protocol::DELTA_MIN {
            if let Some(cache) = &set.sigcache {
                cache.forget(path);
            }
        }
    }

    /// Writes a whole small file to a temporary name next to its final place, with as
    /// few system calls as give it its exact owner, mode and mtime.
    fn put(
        &self,
        root: &DirFd,
        cached: &mut Option<(RelPath, Arc<DirFd>)>,
        path: &RelPath,
        meta: &Meta,
        data: &[u8],
        policy: FsyncPolicy,
    ) -> Result<(DirFd, OsString, OsString), String> {
        let (parent, name) = path.split().ok_or("cannot write the root as a file")?;
        let dir = match cached {
            Some((p, dir)) if *p == parent => dir.clone(),
            _ => {
                let dir = Arc::new(
                    root.open_subdir(parent.as_path())
                        .map_err(|e| format!("{path}: opening parent directory: {e}"))?,
                );
                *cached = Some((parent.clone(), dir.clone()));
                dir
            }
        };
        let name = OsStr::from_bytes(name).to_os_string();
        let temp = temp_name(&name);
        let plan = self.creds.plan(meta, self.preserves_owner, &dir);
        let write = || -> io::Result<()> {
            let mut f = dir.create_new(&temp, meta.mode & 0o777)?;
            f.write_all(data)?;
            if !file_meta_planned(&f, meta, plan)? {
                dir.set_mtime(&temp, meta.mtime_s, meta.mtime_ns)?;
            }
            if policy == FsyncPolicy::File {
                f.sync_data()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = dir.unlink(&temp);
            return Err(format!("{path}: {e}"));
        }
        let own = dir
            .open_subdir(Path::new(""))
            .map_err(|e| format!("{path}: {e}"))?;
        Ok((own, temp, name))
    }
}

struct PutJob {
    index: usize,
    path: RelPath,
    meta: Meta,
    data: Vec<u8>,
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// A file written under a temporary name, waiting to be renamed into place.
struct Staged {
    index: usize,
    dir: DirFd,
    temp: OsString,
    name: OsString,
    path: RelPath,
    len: u64,
}

fn unreachable_put() -> OpResult {
    OpResult::Failed("internal: a file write was not batched".into())
}

/// Runs `work` over `items` split into contiguous chunks, one per thread (up to 4), when
/// there are enough items to pay for the threads; results in the order of `items`.
fn parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&[T]) -> Vec<R> + Sync) -> Vec<R> {
    const MIN_PER_THREAD: usize = 16;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(items.len() / MIN_PER_THREAD)
        .max(1);
    if threads == 1 {
        return work(items);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| work(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The RPC entry point: decodes, runs the blocking work off the async threads, encodes.
#[derive(Debug, Clone)]
pub struct ReceiverHandler(pub Arc<Receiver>);

impl ReceiverHandler {
    pub async fn call(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if service != SYNC_SERVICE {
            return Err(format!("unknown service {service}"));
        }
        let request: Request = decode(&body)?;
        let receiver = self.0.clone();
        let response = tokio::task::spawn_blocking(move || {
            let result = receiver.handle_request(&peer, request);
            if let Err(e) = &result {
                receiver.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "sync request failed: {e}");
            }
            result
        })
        .await
        .map_err(|e| format!("sync request aborted: {e}"))??;
        encode(&response)
    }
}

impl uphold_proto::rpc::RpcHandler for ReceiverHandler {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let this = self.clone();
        Box::pin(async move { this.call(peer, service, body).await })
    }
}

fn result(r: Result<(), String>) -> OpResult {
    match r {
        Ok(()) => OpResult::Done,
        Err(e) => OpResult::Failed(e),
    }
}
