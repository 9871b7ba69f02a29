//! Shared by the sync tests: a source and a target directory, a real receiver reached
//! through the in-process transport, and a strict comparison of two trees.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uphold_config::owners::Ownership;
use uphold_config::sync::{FsyncPolicy, SyncConfig, SyncDirection, WatchMode};
use uphold_core::{GroupName, NodeName};
use uphold_sync::engine::batcher::Outcome;
use uphold_sync::engine::pending::Pending;
use uphold_sync::path::{Excludes, RelPath};
use uphold_sync::receiver::Receiver;
use uphold_sync::sender::{run_batch, SenderCounters, SenderSet};
use uphold_sync::transport::{LocalTransport, Transport};

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub source: PathBuf,
    pub target: PathBuf,
    pub set: SenderSet,
    pub transport: LocalTransport,
    pub counters: SenderCounters,
    pub with_owner: bool,
    pub exclude: Vec<String>,
}

/// The receiving side of `set`: the same rules for privileged bits and owners.
fn receiver_transport(
    set: &SenderSet,
    exclude: &[String],
    target: &Path,
    state: &Path,
) -> LocalTransport {
    let cfg = SyncConfig {
        preserve_privileged: set.preserve_privileged,
        ownership: set.ownership.clone(),
        ..config(&set.source, target, exclude.to_vec())
    };
    let receiver = Arc::new(Receiver::new(
        NodeName::new("b").unwrap(),
        &[cfg],
        Arc::new(|_| false),
        Some(state.to_path_buf()),
    ));
    LocalTransport::new(receiver, NodeName::new("a").unwrap())
}

pub fn config(source: &Path, target: &Path, exclude: Vec<String>) -> SyncConfig {
    SyncConfig {
        name: GroupName::new("www").unwrap(),
        source: source.to_path_buf(),
        target: target.to_path_buf(),
        direction: SyncDirection::Fixed(NodeName::new("a").unwrap()),
        nodes: vec![NodeName::new("a").unwrap(), NodeName::new("b").unwrap()],
        exclude,
        delay: Duration::from_millis(20),
        delete: true,
        // The tests check that trees arrive exactly as they are, setuid included;
        // the default (stripping) has its own test.
        preserve_privileged: true,
        ownership: Default::default(),
        fsync: match std::env::var("UPHOLD_TEST_FSYNC").as_deref() {
            Ok("batch") => FsyncPolicy::Batch,
            Ok("file") => FsyncPolicy::File,
            _ => FsyncPolicy::Off,
        },
        watch: WatchMode::Inotify,
        scan_interval: Duration::from_secs(10),
        rescan_interval: Duration::from_secs(3600),
    }
}

impl Pair {
    pub fn new() -> Pair {
        Pair::with_excludes(Vec::new())
    }

    pub fn with_excludes(exclude: Vec<String>) -> Pair {
        Pair::build(tempfile::tempdir().unwrap(), exclude)
    }

    /// A pair on a memory file system when there is one (`/dev/shm`, or
    /// `UPHOLD_TEST_TMPDIR`): for tests that run thousands of cases and are about the
    /// replication logic, not the disk.
    pub fn in_memory() -> Pair {
        Pair::in_memory_with_excludes(Vec::new())
    }

    pub fn in_memory_with_excludes(exclude: Vec<String>) -> Pair {
        let base = std::env::var_os("UPHOLD_TEST_TMPDIR")
            .map(PathBuf::from)
            .or_else(|| {
                let shm = PathBuf::from("/dev/shm");
                let writable = nix::unistd::access(&shm, nix::unistd::AccessFlags::W_OK).is_ok();
                (shm.is_dir() && writable).then_some(shm)
            });
        let dir = match base {
            Some(base) => tempfile::tempdir_in(base).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        Pair::build(dir, exclude)
    }

    fn build(dir: tempfile::TempDir, exclude: Vec<String>) -> Pair {
        let source = dir.path().join("src");
        let target = dir.path().join("dst");
        let state = dir.path().join("state");
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&target).unwrap();
        let set = SenderSet {
            name: "www".into(),
            source: source.clone(),
            excludes: Excludes::new(&exclude).unwrap(),
            delete: true,
            preserve_privileged: true,
            ownership: Default::default(),
        };
        let transport = receiver_transport(&set, &exclude, &target, &state);
        Pair {
            set,
            dir,
            source,
            target,
            transport,
            counters: SenderCounters::default(),
            with_owner: nix::unistd::geteuid().is_root(),
            exclude,
        }
    }

    /// The receiving member restarts: its open transfers are gone (their temporary
    /// files stay on disk, as after a crash), a new receiver serves the same target
    /// and state directory.
    pub fn restart_receiver(&mut self) {
        let state = self.dir.path().join("state");
        self.transport = receiver_transport(&self.set, &self.exclude, &self.target, &state);
    }

    /// A pair whose set does not preserve setuid and setgid bits (the default of a
    /// configured set), and keeps the owners and groups `ownership` keeps.
    pub fn stripping_privileged(ownership: Ownership) -> Pair {
        let mut pair = Pair::new();
        pair.set.preserve_privileged = false;
        pair.set.ownership = ownership;
        pair.restart_receiver();
        pair
    }

    pub async fn send(&self, batch: Pending) -> Outcome {
        run_batch(
            &self.set,
            &self.transport,
            self.with_owner,
            batch,
            &self.counters,
        )
        .await
    }

    /// A full comparison; panics unless it ended cleanly.
    pub async fn sync_all(&self) {
        match self.send(Pending::everything()).await {
            Outcome::Done { retry, error } => {
                assert!(
                    retry.is_empty() && error.is_none(),
                    "retry {retry:?}, error {error:?}"
                );
            }
            other => panic!("batch did not complete: {other:?}"),
        }
    }

    pub fn wire_bytes(&self) -> u64 {
        let (s, r) = self.transport.bytes();
        s + r
    }
}

/// Everything replicated about one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Snap {
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
        owner: (u32, u32),
    },
    Dir {
        mode: u32,
        owner: (u32, u32),
    },
    Link {
        target: PathBuf,
        owner: (u32, u32),
    },
}

pub fn snapshot(root: &Path, excludes: &Excludes) -> BTreeMap<PathBuf, Snap> {
    fn walk(root: &Path, dir: &Path, ex: &Excludes, out: &mut BTreeMap<PathBuf, Snap>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let relp = uphold_sync::path::RelPath::from_local(root, &path).unwrap();
            if ex.is_excluded(&relp, md.is_dir()) {
                continue;
            }
            let owner = (md.uid(), md.gid());
            let snap = if md.file_type().is_symlink() {
                Snap::Link {
                    target: std::fs::read_link(&path).unwrap(),
                    owner,
                }
            } else if md.is_dir() {
                walk(root, &path, ex, out);
                Snap::Dir {
                    mode: md.mode() & 0o7777,
                    owner,
                }
            } else {
                Snap::File {
                    data: std::fs::read(&path).unwrap(),
                    mode: md.mode() & 0o7777,
                    mtime: (md.mtime(), md.mtime_nsec()),
                    owner,
                }
            };
            out.insert(rel, snap);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, excludes, &mut out);
    out
}

pub fn assert_same(pair: &Pair) {
    let a = snapshot(&pair.source, &pair.set.excludes);
    let b = snapshot(&pair.target, &pair.set.excludes);
    if a != b {
        let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        let differ: Vec<_> = a
            .iter()
            .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
            .map(|(k, v)| (k, v, &b[k]))
            .take(5)
            .collect();
        panic!("trees differ: only in source {only_a:?}, only in target {only_b:?}, different {differ:?}");
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `path` names one of the receiver's temporary files.
pub fn is_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| uphold_sync::path::is_temp_name(n.as_encoded_bytes()))
}

/// The receiver's temporary files anywhere below `root`.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if is_temp(&path) {
                out.push(path);
            } else if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// Like [`assert_same`], with the receiver's temporary files on the target left out
/// (leftovers of a crashed receiver, which no comparison shows).
pub fn assert_same_but_temps(pair: &Pair) {
    let a = snapshot(&pair.source, &pair.set.excludes);
    let mut b = snapshot(&pair.target, &pair.set.excludes);
    b.retain(|k, _| !is_temp(k));
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && differ.is_empty(),
        "trees differ: only in source {only_a:?}, only in target {only_b:?}, different {differ:?}"
    );
}

/// A relative path from test text (which is always valid).
pub fn rp(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}
