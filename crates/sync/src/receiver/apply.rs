//! Carrying out one Apply request on the target tree, in the order
//! `staging::plan` decides: runs of small files written to temporary names on
//! several threads, one `syncfs` for what is staged under the batch policy,
//! renames into place, and every other operation through `files`.

use super::files::{delete, finish_put, mkdir, rename, set_meta_at, symlink, temp_name};
use super::meta::file_meta_planned;
use super::staging::{self, OpKind, Step};
use super::{Receiver, ReceiverSet};
use crate::entry::Meta;
use crate::path::RelPath;
use crate::protocol::{FileOp, OpResult};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uphold_config::sync::FsyncPolicy;
use uphold_os::confined::DirFd;

impl Receiver {
    pub(super) fn apply(&self, root: &DirFd, set: &ReceiverSet, ops: Vec<FileOp>) -> Vec<OpResult> {
        let policy = set.config.fsync;
        let kinds: Vec<OpKind> = ops.iter().map(OpKind::of).collect();
        let mut ops: Vec<Option<FileOp>> = ops.into_iter().map(Some).collect();
        // Every entry is overwritten with the real outcome; one that is not (a worker
        // thread lost) reports failure rather than success.
        let mut results = vec![OpResult::Failed("not applied".into()); ops.len()];
        let mut staged: Vec<Staged> = Vec::new();
        for step in staging::plan(&kinds, policy) {
            match step {
                Step::Write(range) => {
                    let jobs: Vec<PutJob> = range
                        .filter_map(|index| match ops[index].take() {
                            Some(FileOp::Put { path, meta, data }) => Some(PutJob {
                                index,
                                path,
                                meta,
                                data,
                            }),
                            _ => None,
                        })
                        .collect();
                    staged.extend(self.write_run(root, policy, &jobs, &mut results));
                }
                Step::Flush => {
                    if let Err(e) = root.syncfs() {
                        for s in staged.drain(..) {
                            let _ = s.dir.unlink(&s.temp);
                            results[s.index] = OpResult::Failed(format!("{}: syncfs: {e}", s.path));
                        }
                    }
                }
                Step::Publish => {
                    self.publish_all(set, policy, std::mem::take(&mut staged), &mut results)
                }
                Step::Apply(index) => {
                    if let Some(op) = ops[index].take() {
                        results[index] = self.apply_one(root, set, op);
                    }
                }
            }
        }
        results
    }

    /// One operation other than a file write.
    fn apply_one(&self, root: &DirFd, set: &ReceiverSet, op: FileOp) -> OpResult {
        match op {
            FileOp::Put { .. } => OpResult::Failed("internal: a file write was not batched".into()),
            FileOp::Mkdir { path, meta } => result(mkdir(root, &path, &meta, self.preserves_owner)),
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
        }
    }

    /// Writes a run of consecutive small files under temporary names, on several
    /// threads when it is long (file creation is system-call bound and the files
    /// are independent). Returns the ones written; failures go into `results`.
    fn write_run(
        &self,
        root: &DirFd,
        policy: FsyncPolicy,
        jobs: &[PutJob],
        results: &mut [OpResult],
    ) -> Vec<Staged> {
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
        let mut written = Vec::new();
        for (index, staged) in parallel(jobs, write) {
            match staged {
                Ok(staged) => {
                    results[index] = OpResult::Done;
                    written.push(staged);
                }
                Err(e) => results[index] = OpResult::Failed(e),
            }
        }
        written
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

fn result(r: Result<(), String>) -> OpResult {
    match r {
        Ok(()) => OpResult::Done,
        Err(e) => OpResult::Failed(e),
    }
}
