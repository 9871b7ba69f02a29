//! The receiving side, built into `uphold run`: answers comparisons and applies changes
//! to the target tree. It never shows a partial file: data goes to a temporary file in the
//! same directory, is flushed per the set's fsync policy, and is renamed over the old
//! version. Every path comes from the network and is opened below the target root without
//! following symlinks ([`uphold_os::confined::DirFd`]). Requests are refused for unknown
//! sets, from members that may not send the set, and while this member is the sender.
//!
//! Here: the receiver's state (sets, open transfers) and the handling of each
//! request. Beside it: who may send (`access`), how many streams a peer may
//! hold and for how long (`limits`), streams being received (`transfer`), in
//! which order a batch of operations is carried out and made durable
//! (`staging`, decided; `apply`, done), operations on the target tree
//! (`files`) and owners and modes of what is written (`meta`).

use crate::entry::Meta;
use crate::path::{Excludes, RelPath};
use crate::protocol::{
    decode, encode, DeltaBasis, FileOp, Request, Response, SYNC_PROTOCOL, SYNC_SERVICE,
};
use crate::sigcache::SigCache;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use uphold_config::sync::SyncConfig;
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
mod apply;
mod files;
mod limits;
mod meta;
mod staging;
mod transfer;

pub use access::Refusal;

/// How often the daemon asks the receiver to abandon idle streams.
pub const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

use files::{compare, open_parent, open_root, temp_name};
use meta::Creds;
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
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
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
