//! Shared by the sync tests: a source and a target directory, a real receiver reached
//! through the in-process transport, and a strict comparison of two trees.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uphold_config::sync::{FsyncPolicy, SyncConfig, SyncDirection, WatchMode};
use uphold_core::{GroupName, NodeName};
use uphold_sync::engine::batcher::Outcome;
use uphold_sync::engine::pending::Pending;
use uphold_sync::path::Excludes;
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
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        let target = dir.path().join("dst");
        let state = dir.path().join("state");
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&target).unwrap();
        let cfg = config(&source, &target, exclude.clone());
        let receiver = Arc::new(Receiver::new(
            NodeName::new("b").unwrap(),
            &[cfg],
            Arc::new(|_| false),
            Some(state),
        ));
        let transport = LocalTransport::new(receiver, NodeName::new("a").unwrap());
        Pair {
            set: SenderSet {
                name: "www".into(),
                source: source.clone(),
                excludes: Excludes::new(&exclude).unwrap(),
                delete: true,
            },
            dir,
            source,
            target,
            transport,
            counters: SenderCounters::default(),
            with_owner: nix::unistd::geteuid().is_root(),
        }
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
