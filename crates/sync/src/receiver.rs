//! The receiving side, built into `uphold run`: answers comparisons and applies changes
//! to the target tree. It never shows a partial file: data goes to a temporary file in the
//! same directory, is flushed per the set's fsync policy, and is renamed over the old
//! version. Every path comes from the network and is opened below the target root without
//! following symlinks ([`uphold_os::confined::DirFd`]). Requests are refused for unknown
//! sets, from members that may not send the set, and while this member is the sender.

use crate::entry::{listing_digest, Entry, Kind, Meta};
use crate::path::{check_name, is_temp_name, Excludes, RelPath, TEMP_PREFIX};
use crate::protocol::{
    decode, encode, CompareItem, CompareResult, DeltaBasis, FileOp, OpResult, Request, Response,
    SYNC_PROTOCOL, SYNC_SERVICE,
};
use crate::sigcache::{FileIdentity, SigCache};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use uphold_config::sync::{FsyncPolicy, SyncConfig, SyncDirection};
use uphold_core::NodeName;
use uphold_delta::{block_size_for, Applier, DeltaEnd, Signature, SignatureBuilder};
use uphold_os::confined::DirFd;

/// Streams open at once from one peer; more are refused until some finish.
const MAX_TRANSFERS_PER_PEER: usize = 8;
/// A stream without a chunk for this long is abandoned (the sender died).
const TRANSFER_IDLE: Duration = Duration::from_secs(120);
/// Leftover temporary files (from a receiver killed mid-write) older than this are removed
/// when their directory is listed.
const STALE_TEMP_SECS: i64 = 600;
/// Largest signature returned; a bigger one (files over ~20 GB) means a whole transfer.
const MAX_SIGNATURE_BYTES: usize = 3 * 1024 * 1024;

/// Tells whether this member currently sends a set (then it must not receive it).
pub type SenderCheck = Arc<dyn Fn(&SyncConfig) -> bool + Send + Sync>;

struct ReceiverSet {
    config: SyncConfig,
    excludes: Excludes,
    sigcache: Option<SigCache>,
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

enum TransferSlot {
    Idle(Box<Transfer>),
    /// Taken by a request being processed.
    Busy {
        peer: NodeName,
    },
}

struct Transfer {
    peer: NodeName,
    set: Arc<ReceiverSet>,
    path: RelPath,
    dir: DirFd,
    temp: OsString,
    name: OsString,
    meta: Meta,
    size: u64,
    body: TransferBody,
    last_used: Instant,
}

enum TransferBody {
    Whole {
        out: SigWriter,
        hasher: Box<blake3::Hasher>,
        written: u64,
    },
    Delta(Box<Applier<File, SigWriter>>),
}

/// The temporary file, with a signature built from the bytes as they pass.
struct SigWriter {
    file: BufWriter<File>,
    sig: Option<SignatureBuilder>,
}

impl Write for SigWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(sig) = &mut self.sig {
            sig.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

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

    fn set_for(&self, peer: &NodeName, name: &str) -> Result<Arc<ReceiverSet>, String> {
        let set = self
            .sets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no sync set {name:?} is configured on this member"))?;
        if !set.config.nodes.contains(peer) {
            return Err(format!("{peer} takes no part in sync set {name:?}"));
        }
        if let SyncDirection::Fixed(from) = &set.config.direction {
            if from != peer {
                return Err(format!(
                    "sync set {name:?} is sent only by {from}, not {peer}"
                ));
            }
        }
        if (self.is_sender)(&set.config) {
            return Err(format!(
                "this member is the sender of sync set {name:?} and refuses to receive it"
            ));
        }
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
            Request::Apply { set, ops } => {
                let set = self.set_for(peer, &set)?;
                let root = open_root(&set.config.target)?;
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
                meta,
                size,
                delta,
            } => {
                let set = self.set_for(peer, &set)?;
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
        match map.insert(id, TransferSlot::Busy { peer: peer.clone() }) {
            Some(TransferSlot::Idle(t)) => Ok(t),
            _ => Err(format!("transfer {id} vanished")),
        }
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
                    TransferSlot::Busy { peer: p } => p == peer,
                })
                .count();
            if open >= MAX_TRANSFERS_PER_PEER {
                return Err(format!(
                    "{peer} already has {open} transfers open (limit {MAX_TRANSFERS_PER_PEER})"
                ));
            }
        }
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

    fn expire_idle(&self) {
        let mut map = self.transfers.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<u64> = map
            .iter()
            .filter_map(|(id, slot)| match slot {
                TransferSlot::Idle(t) if t.last_used.elapsed() > TRANSFER_IDLE => Some(*id),
                _ => None,
            })
            .collect();
        for id in stale {
            if let Some(TransferSlot::Idle(t)) = map.remove(&id) {
                tracing::warn!(path = %t.path, peer = %t.peer, "abandoning a transfer idle for {TRANSFER_IDLE:?}");
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

fn open_root(target: &Path) -> Result<DirFd, String> {
    DirFd::open_root(target).map_err(|e| format!("opening target {}: {e}", target.display()))
}

/// The parent directory of `path` (opened safely) and its last name.
fn open_parent(root: &DirFd, path: &RelPath) -> Result<(DirFd, OsString), String> {
    let (parent, name) = path.split().ok_or("the root has no parent")?;
    let dir = root
        .open_subdir(parent.as_path())
        .map_err(|e| format!("{path}: opening parent directory: {e}"))?;
    Ok((dir, OsStr::from_bytes(name).to_os_string()))
}

fn temp_name(name: &OsStr) -> OsString {
    let mut v = TEMP_PREFIX.to_vec();
    v.extend_from_slice(format!("{:016x}.", rand::random::<u64>()).as_bytes());
    // Keep the whole name within NAME_MAX.
    let room = crate::path::MAX_NAME_BYTES - v.len();
    let bytes = name.as_bytes();
    v.extend_from_slice(&bytes[..bytes.len().min(room)]);
    OsString::from_vec(v)
}

use std::os::unix::ffi::OsStringExt;

fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

fn entry_at(dir: &DirFd, name: &OsStr) -> io::Result<Option<Entry>> {
    let Some(st) = dir.stat(name)? else {
        return Ok(None);
    };
    let link = if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        match dir.readlink(name) {
            Ok(target) => Some(target.as_bytes().to_vec()),
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(Entry::from_stat(name.as_bytes().to_vec(), &st, link))
}

fn compare(
    root: &DirFd,
    excludes: &Excludes,
    with_owner: bool,
    item: CompareItem,
) -> Result<CompareResult, String> {
    match item {
        CompareItem::Dir { dir, digest } => {
            let handle = match root.open_subdir(dir.as_path()) {
                Ok(h) => h,
                Err(e) if gone(&e) => return Ok(CompareResult::Missing),
                Err(e) => return Err(format!("{dir}: {e}")),
            };
            let listing =
                list_target(&handle, &dir, excludes).map_err(|e| format!("{dir}: {e}"))?;
            if listing_digest(&listing, with_owner) == digest {
                Ok(CompareResult::Same)
            } else {
                Ok(CompareResult::Listing(listing))
            }
        }
        CompareItem::Names { dir, names } => {
            let handle = match root.open_subdir(dir.as_path()) {
                Ok(h) => h,
                Err(e) if gone(&e) => return Ok(CompareResult::Missing),
                Err(e) => return Err(format!("{dir}: {e}")),
            };
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let name = name.into_vec();
                check_name(&name).map_err(|r| format!("{dir}: bad name: {r}"))?;
                let path = dir.join(&name);
                let entry = entry_at(&handle, OsStr::from_bytes(&name))
                    .map_err(|e| format!("{path}: {e}"))?
                    .filter(|e| !excludes.is_excluded(&path, e.kind == Kind::Dir));
                out.push(entry);
            }
            Ok(CompareResult::Entries(out))
        }
    }
}

/// A target directory's entries as the sender would list them; removes stale temporary
/// files left by a receiver that died mid-write.
fn list_target(dir: &DirFd, rel: &RelPath, excludes: &Excludes) -> io::Result<Vec<Entry>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for (name, _) in dir.list()? {
        if is_temp_name(name.as_bytes()) {
            if let Ok(Some(st)) = dir.stat(&name) {
                if now - st.st_ctime > STALE_TEMP_SECS {
                    let _ = dir.unlink(&name);
                }
            }
            continue;
        }
        let Some(entry) = entry_at(dir, &name)? else {
            continue;
        };
        if excludes.is_excluded(&rel.join(&entry.name), entry.kind == Kind::Dir) {
            continue;
        }
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn apply_meta(dir: &DirFd, name: &OsStr, kind: Kind, meta: &Meta, owner: bool) -> io::Result<()> {
    if owner {
        dir.chown(name, meta.uid, meta.gid)?;
    }
    if kind != Kind::Symlink {
        dir.chmod(name, meta.mode)?;
    }
    if kind == Kind::File {
        dir.set_mtime(name, meta.mtime_s, meta.mtime_ns)?;
    }
    Ok(())
}

/// The identity new files get, and the umask that trims their mode at creation.
#[derive(Debug, Clone, Copy)]
struct Creds {
    uid: u32,
    gid: u32,
    /// `None` when it cannot be read: then every file gets an explicit chmod.
    umask: Option<u32>,
}

/// Which attribute calls a new file needs after `open(O_CREAT, mode & 0777)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetaPlan {
    chown: bool,
    chmod: bool,
}

impl Creds {
    fn current() -> Self {
        // Read, not set-and-restore: umask(2) is process-wide and other threads create
        // files too.
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
        Creds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            umask,
        }
    }

    fn plan(&self, meta: &Meta, preserves_owner: bool, dir: &DirFd) -> MetaPlan {
        // In a set-group-ID directory new files take the directory's group.
        let dir_setgid = dir
            .stat_self()
            .map_or(true, |st| st.st_mode & libc::S_ISGID != 0);
        meta_plan(meta, preserves_owner, self, dir_setgid)
    }
}

fn meta_plan(meta: &Meta, preserves_owner: bool, creds: &Creds, dir_setgid: bool) -> MetaPlan {
    let chown = preserves_owner && (meta.uid != creds.uid || meta.gid != creds.gid || dir_setgid);
    let special = meta.mode & 0o7000 != 0;
    let chmod = match creds.umask {
        None => true,
        Some(umask) => special || (meta.mode & 0o777 & !umask) != (meta.mode & 0o777),
    };
    MetaPlan { chown, chmod }
}

/// Owner, permissions and mtime of a file still open for writing: through its
/// descriptor, without looking its name up again. Returns false when the mtime (before
/// 1970) is left for the caller to set by name.
fn file_meta(f: &File, meta: &Meta, owner: bool) -> io::Result<bool> {
    file_meta_planned(
        f,
        meta,
        MetaPlan {
            chown: owner,
            chmod: true,
        },
    )
}

fn file_meta_planned(f: &File, meta: &Meta, plan: MetaPlan) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if plan.chown {
        std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid))?;
    }
    if plan.chmod {
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode & 0o7777))?;
    }
    let mtime = std::time::UNIX_EPOCH
        .checked_add(Duration::new(meta.mtime_s.max(0) as u64, meta.mtime_ns))
        .filter(|_| meta.mtime_s >= 0);
    match mtime {
        Some(t) => {
            f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

fn finish_put(dir: &DirFd, temp: &OsStr, name: &OsStr, policy: FsyncPolicy) -> io::Result<()> {
    dir.rename(temp, dir, name)?;
    if policy == FsyncPolicy::File {
        dir.fsync()?;
    }
    Ok(())
}

fn mkdir(root: &DirFd, path: &RelPath, meta: &Meta, owner: bool) -> Result<(), String> {
    let (dir, name) = open_parent(root, path)?;
    match dir.mkdir(&name, 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let is_dir = matches!(dir.stat(&name), Ok(Some(st)) if st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            if !is_dir {
                return Err(format!("{path}: exists and is not a directory"));
            }
        }
        Err(e) => return Err(format!("{path}: mkdir: {e}")),
    }
    apply_meta(&dir, &name, Kind::Dir, meta, owner).map_err(|e| format!("{path}: {e}"))
}

fn symlink(
    root: &DirFd,
    path: &RelPath,
    target: &[u8],
    meta: &Meta,
    owner: bool,
) -> Result<(), String> {
    if target.is_empty() || target.contains(&0) || target.len() > crate::path::MAX_PATH_BYTES {
        return Err(format!("{path}: invalid symlink target"));
    }
    let (dir, name) = open_parent(root, path)?;
    let temp = temp_name(&name);
    let make = || -> io::Result<()> {
        dir.symlink(OsStr::from_bytes(target), &temp)?;
        apply_meta(&dir, &temp, Kind::Symlink, meta, owner)?;
        dir.rename(&temp, &dir, &name)
    };
    make().map_err(|e| {
        let _ = dir.unlink(&temp);
        format!("{path}: symlink: {e}")
    })
}

fn set_meta_at(
    root: &DirFd,
    path: &RelPath,
    kind: Kind,
    meta: &Meta,
    owner: bool,
) -> Result<(), String> {
    if path.is_root() {
        return Ok(());
    }
    let (dir, name) = open_parent(root, path)?;
    apply_meta(&dir, &name, kind, meta, owner).map_err(|e| format!("{path}: {e}"))
}

fn rename(root: &DirFd, from: &RelPath, to: &RelPath, expect: &Entry) -> Result<bool, String> {
    if from.is_root() || to.is_root() || to.is_within(from) {
        return Ok(false);
    }
    let Ok((from_dir, from_name)) = open_parent(root, from) else {
        return Ok(false);
    };
    let current = match entry_at(&from_dir, &from_name) {
        Ok(Some(e)) => e,
        _ => return Ok(false),
    };
    if current.kind != expect.kind || (current.kind == Kind::File && !current.same_content(expect))
    {
        return Ok(false);
    }
    let Ok((to_dir, to_name)) = open_parent(root, to) else {
        return Ok(false);
    };
    match from_dir.rename(&from_name, &to_dir, &to_name) {
        Ok(()) => Ok(true),
        // The place is taken by a non-empty directory or another kind: the normal
        // comparison sorts it out.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTEMPTY)
                    | Some(libc::EEXIST)
                    | Some(libc::EISDIR)
                    | Some(libc::ENOTDIR)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(format!("rename {from} -> {to}: {e}")),
    }
}

fn delete(root: &DirFd, path: &RelPath) -> Result<(), String> {
    if path.is_root() {
        return Err("refusing to delete the target root".to_string());
    }
    let (dir, name) = match open_parent(root, path) {
        Ok(found) => found,
        Err(_) => return Ok(()),
    };
    match dir.remove_all(&name) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(format!("{path}: delete: {e}")),
    }
}

fn signature(root: &DirFd, set: &ReceiverSet, path: &RelPath) -> Option<Vec<u8>> {
    let (dir, name) = open_parent(root, path).ok()?;
    let st = dir.stat(&name).ok()??;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG
        || (st.st_size as u64) < crate::protocol::DELTA_MIN
    {
        return None;
    }
    let id = FileIdentity::of(&st);
    let sig = match set.sigcache.as_ref().and_then(|c| c.get(path, &id)) {
        Some(sig) => sig,
        None => {
            let file = dir.open_read(&name).ok()?;
            let reader = io::BufReader::with_capacity(256 * 1024, file);
            let sig =
                Signature::compute_with(reader, block_size_for(id.size), rand::random()).ok()?;
            if let Some(cache) = &set.sigcache {
                // Only if the file did not change while it was read.
                if matches!(dir.stat(&name), Ok(Some(after)) if FileIdentity::of(&after) == id) {
                    let _ = cache.put(path, &id, &sig);
                }
            }
            sig
        }
    };
    let bytes = sig.to_bytes();
    (bytes.len() <= MAX_SIGNATURE_BYTES).then_some(bytes)
}

fn chunk(t: &mut Transfer, data: &[u8]) -> Result<(), String> {
    let path = t.path.clone();
    match &mut t.body {
        TransferBody::Whole {
            out,
            hasher,
            written,
        } => {
            *written += data.len() as u64;
            if *written > t.size {
                return Err(format!(
                    "{path}: more data than the announced {} bytes",
                    t.size
                ));
            }
            hasher.update(data);
            out.write_all(data)
                .map_err(|e| format!("{path}: writing: {e}"))
        }
        TransferBody::Delta(applier) => {
            let mut cursor = Cursor::new(data);
            loop {
                match uphold_delta::wire::read_record(&mut cursor) {
                    Ok(None) => return Ok(()),
                    Ok(Some(uphold_delta::Record::Op(op))) => {
                        applier.apply_op(&op).map_err(|e| format!("{path}: {e}"))?
                    }
                    Ok(Some(uphold_delta::Record::End(_))) => {
                        return Err(format!("{path}: unexpected end record inside a chunk"))
                    }
                    Err(e) => return Err(format!("{path}: {e}")),
                }
            }
        }
    }
}

fn commit(t: Transfer, hash: [u8; 32]) -> Result<(), String> {
    let path = t.path.clone();
    let fail = |msg: String| {
        let _ = t.dir.unlink(&t.temp);
        Err(msg)
    };
    let mut out = match t.body {
        TransferBody::Whole {
            mut out,
            hasher,
            written,
        } => {
            if written != t.size {
                return fail(format!("{path}: received {written} of {} bytes", t.size));
            }
            if *hasher.finalize().as_bytes() != hash {
                return fail(format!("{path}: content hash mismatch"));
            }
            if let Err(e) = out.flush() {
                return fail(format!("{path}: {e}"));
            }
            out
        }
        TransferBody::Delta(applier) => {
            let end = DeltaEnd { len: t.size, hash };
            match applier.finish_into(&end) {
                Ok((_, out)) => out,
                Err(e) => return fail(format!("{path}: {e}")),
            }
        }
    };
    if let Err(e) = out.flush() {
        return fail(format!("{path}: {e}"));
    }
    let sig = out.sig.take().map(SignatureBuilder::finish);
    let file = match out.file.into_inner() {
        Ok(f) => f,
        Err(e) => return fail(format!("{path}: {}", e.error())),
    };
    if t.set.config.fsync != FsyncPolicy::Off {
        if let Err(e) = file.sync_data() {
            return fail(format!("{path}: fsync: {e}"));
        }
    }
    let owner = nix::unistd::geteuid().is_root();
    let meta_set = match file_meta(&file, &t.meta, owner) {
        Ok(true) => Ok(()),
        Ok(false) => t.dir.set_mtime(&t.temp, t.meta.mtime_s, t.meta.mtime_ns),
        Err(e) => Err(e),
    };
    drop(file);
    if let Err(e) = meta_set {
        return fail(format!("{path}: {e}"));
    }
    if let Err(e) = finish_put(&t.dir, &t.temp, &t.name, t.set.config.fsync) {
        return fail(format!("{path}: {e}"));
    }
    if let Some(cache) = &t.set.sigcache {
        cache.forget(&path);
        if let (Some(sig), Ok(Some(st))) = (sig, t.dir.stat(&t.name)) {
            let _ = cache.put(&path, &FileIdentity::of(&st), &sig);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime_s: 1,
            mtime_ns: 0,
        }
    }

    #[test]
    fn attribute_calls_are_skipped_only_when_creation_already_got_them_right() {
        let creds = Creds {
            uid: 0,
            gid: 0,
            umask: Some(0o022),
        };
        let plan = |m: &Meta, owner, setgid| meta_plan(m, owner, &creds, setgid);
        assert_eq!(
            plan(&meta(0o644, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o664, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: true
            }
        );
        assert_eq!(
            plan(&meta(0o644, 33, 33), true, false),
            MetaPlan {
                chown: true,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o644, 0, 0), true, true),
            MetaPlan {
                chown: true,
                chmod: false
            }
        );
        assert_eq!(
            plan(&meta(0o4755, 0, 0), true, false),
            MetaPlan {
                chown: false,
                chmod: true
            }
        );
        assert_eq!(
            plan(&meta(0o644, 33, 33), false, false),
            MetaPlan {
                chown: false,
                chmod: false
            }
        );
        let unknown = Creds {
            umask: None,
            ..creds
        };
        assert!(meta_plan(&meta(0o644, 0, 0), true, &unknown, false).chmod);
    }
}
