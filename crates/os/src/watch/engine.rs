//! The decision logic of the tree watcher: raw inotify events (and clock ticks) in,
//! [`Hint`]s out, with the directory map kept consistent in between. It reaches the
//! kernel only through the small [`Kernel`] trait (add/remove a watch, list a
//! directory's subdirectories), so every case is unit-tested against an in-memory
//! filesystem; the real implementation lives in `inotify.rs`.
//!
//! Rules it keeps:
//! - a directory that appears (created or moved in) is watched first, its
//!   subdirectories too, and only then reported as `Rescan(dir)`, so nothing created
//!   inside it before its watch existed goes unreported;
//! - a rename is paired by cookie inside one read batch, or with the first event of
//!   the next batch if the `MOVED_FROM` ended a batch (held at most `pair_window`);
//! - a queue overflow rebuilds the whole map (directories may have appeared, moved or
//!   vanished unseen) and reports `Rescan("")`;
//! - a directory that cannot be watched (watch limit, `max_watches`, error, or an
//!   inode already watched at another path, as with bind mounts) becomes the top of
//!   an unwatched subtree: not explored, reported as `Rescan(top)` every
//!   `scan_interval`, and retried then.

use super::tree::{DirTree, EntryId, ROOT};
use super::{Hint, IgnoreFn};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Events asked of the kernel for every watched directory. MODIFY as well as
/// CLOSE_WRITE: a file kept open (a log) is never closed.
pub(crate) const WATCH_MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR
    | libc::IN_EXCL_UNLINK;

/// One event as read from the inotify fd.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    pub wd: i32,
    pub mask: u32,
    pub cookie: u32,
    pub name: Option<&'a OsStr>,
}

impl RawEvent<'_> {
    fn has(&self, bit: u32) -> bool {
        self.mask & bit != 0
    }
}

#[derive(Debug)]
pub(crate) enum AddError {
    /// ENOSPC: the per-user watch limit (or the `max_watches` test hook).
    Limit,
    /// The path is gone or no longer a directory (ENOENT, ENOTDIR).
    Gone,
    Other(io::Error),
}

/// What the engine needs from the kernel.
pub(crate) trait Kernel {
    /// Watches the directory at `abs` with [`WATCH_MASK`]; the same inode always
    /// yields the same descriptor.
    fn add_watch(&mut self, abs: &Path, is_root: bool) -> Result<i32, AddError>;
    /// Releases a watch; a descriptor the kernel already dropped is fine.
    fn rm_watch(&mut self, wd: i32);
    /// Names of the real subdirectories of `abs` (symlinks are not followed).
    fn subdirs(&mut self, abs: &Path) -> io::Result<Vec<OsString>>;
    /// The kernel's per-user watch limit, for the warning.
    fn max_user_watches(&self) -> Option<u64>;
}

pub(crate) struct EngineConfig {
    pub root: PathBuf,
    pub scan_interval: Duration,
    pub ignore: IgnoreFn,
    pub max_watches: Option<usize>,
    /// How long a `MOVED_FROM` that ended a batch waits for its `MOVED_TO`.
    pub pair_window: Duration,
}

/// Counters the engine keeps; the runner publishes them as `WatchStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EngineStats {
    pub watched_dirs: usize,
    pub unwatched_subtrees: usize,
    pub unwatched_dirs: usize,
    pub overflows: u64,
    pub limit_reached: bool,
    pub root_gone: bool,
}

#[derive(Debug)]
struct PendingMove {
    cookie: u32,
    parent: EntryId,
    name: OsString,
    is_dir: bool,
    deadline: Instant,
}

/// Most directories counted below one unwatched top (for the stats and warning).
const COUNT_CAP: usize = 1_000_000;

pub(crate) struct Engine<K: Kernel> {
    kernel: K,
    cfg: EngineConfig,
    tree: DirTree,
    pending: Option<PendingMove>,
    next_scan: Instant,
    overflows: u64,
    /// Directories counted below each unwatched top when it became one.
    top_sizes: HashMap<EntryId, usize>,
    /// Watches the previous map still holds while an overflow rebuild runs
    /// (so the `max_watches` hook counts them).
    extra_live: HashSet<i32>,
    limit_hit: bool,
    warned: bool,
    root_gone: bool,
    /// Nodes relinked during a walk (`claim_moved`), to recheck for stale nodes
    /// below them once the current event is handled.
    relinked: Vec<EntryId>,
    /// Hints found deep inside a walk, sent with the current event's.
    deferred: Vec<Hint>,
}

impl<K: Kernel> Engine<K> {
    /// Watches the root and every directory below it. No hints: the caller scans
    /// the whole tree once the watches are in place.
    pub(crate) fn new(kernel: K, cfg: EngineConfig, now: Instant) -> io::Result<Engine<K>> {
        let next_scan = now + cfg.scan_interval;
        let mut engine = Engine {
            kernel,
            cfg,
            tree: DirTree::new(),
            pending: None,
            next_scan,
            overflows: 0,
            top_sizes: HashMap::new(),
            extra_live: HashSet::new(),
            limit_hit: false,
            warned: false,
            root_gone: false,
            relinked: Vec::new(),
            deferred: Vec::new(),
        };
        if !engine.watch_root() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "cannot watch {}: it does not exist or is not a directory",
                    engine.cfg.root.display()
                ),
            ));
        }
        // The caller scans everything after start, which covers what a walk that
        // raced with renames would report.
        engine.settle(&mut Vec::new());
        engine.warn_if_limited();
        Ok(engine)
    }

    pub(crate) fn kernel(&self) -> &K {
        &self.kernel
    }

    pub(crate) fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    pub(crate) fn root_gone(&self) -> bool {
        self.root_gone
    }

    pub(crate) fn stats(&self) -> EngineStats {
        EngineStats {
            watched_dirs: self.tree.watched_count(),
            unwatched_subtrees: self.tree.unwatched_count(),
            unwatched_dirs: self.unwatched_dirs(),
            overflows: self.overflows,
            limit_reached: self.limit_hit,
            root_gone: self.root_gone,
        }
    }

    fn unwatched_dirs(&self) -> usize {
        self.tree
            .unwatched()
            .map(|id| self.top_sizes.get(&id).copied().unwrap_or(1))
            .sum()
    }

    /// When `on_tick` next has work: a held `MOVED_FROM` or the periodic rescan of
    /// unwatched subtrees.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.as_ref().map(|p| p.deadline);
        let scan = (self.tree.unwatched_count() > 0).then_some(self.next_scan);
        match (pending, scan) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn on_tick(&mut self, now: Instant, out: &mut Vec<Hint>) {
        if self.root_gone {
            return;
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            if let Some(p) = self.pending.take() {
                self.moved_out(p.parent, &p.name, p.is_dir, out);
            }
        }
        if now >= self.next_scan {
            self.next_scan = now + self.cfg.scan_interval;
            if self.tree.unwatched_count() > 0 {
                self.retry_unwatched(out);
            }
        }
        self.settle(out);
        self.warn_if_limited();
    }

    pub(crate) fn on_events(&mut self, events: &[RawEvent<'_>], now: Instant, out: &mut Vec<Hint>) {
        if self.root_gone {
            return;
        }
        let mut start = 0;
        if let Some(p) = self.pending.take() {
            match events.first() {
                Some(e) if e.has(libc::IN_MOVED_TO) && e.cookie == p.cookie => {
                    self.renamed(p.parent, &p.name, *e, out);
                    start = 1;
                }
                _ => self.moved_out(p.parent, &p.name, p.is_dir, out),
            }
        }
        // Where each cookie's MOVED_TO is, so pairing costs O(batch), not O(batch²).
        let mut moved_to: HashMap<u32, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate().skip(start) {
            if e.has(libc::IN_MOVED_TO) {
                moved_to.entry(e.cookie).or_insert(i);
            }
        }
        let mut paired: HashSet<usize> = HashSet::new();
        for i in start..events.len() {
            if self.root_gone {
                break;
            }
            let ev = events[i];
            if paired.contains(&i) {
                continue;
            }
            if ev.has(libc::IN_Q_OVERFLOW) {
                self.overflow(out);
                continue;
            }
            if ev.has(libc::IN_MOVED_FROM) {
                let Some(parent) = self.tree.by_wd(ev.wd) else {
                    continue;
                };
                let Some(name) = ev.name else {
                    continue;
                };
                let is_dir = ev.has(libc::IN_ISDIR);
                match moved_to.get(&ev.cookie).copied().filter(|&j| j > i) {
                    Some(j) => {
                        paired.insert(j);
                        self.renamed(parent, name, events[j], out);
                        self.settle(out);
                    }
                    None if i + 1 == events.len() => {
                        self.pending = Some(PendingMove {
                            cookie: ev.cookie,
                            parent,
                            name: name.to_owned(),
                            is_dir,
                            deadline: now + self.cfg.pair_window,
                        });
                    }
                    None => self.moved_out(parent, name, is_dir, out),
                }
                continue;
            }
            self.event(ev, out);
            self.settle(out);
        }
        self.settle(out);
        self.warn_if_limited();
    }

    /// Every event but overflow and MOVED_FROM.
    fn event(&mut self, ev: RawEvent<'_>, out: &mut Vec<Hint>) {
        let Some(node) = self.tree.by_wd(ev.wd) else {
            // A watch we already forgot (moved out, removed, replaced).
            return;
        };
        if node == ROOT
            && (ev.has(libc::IN_DELETE_SELF)
                || ev.has(libc::IN_MOVE_SELF)
                || ev.has(libc::IN_UNMOUNT)
                || ev.has(libc::IN_IGNORED))
        {
            self.lose_root(out);
            return;
        }
        if ev.has(libc::IN_IGNORED) || ev.has(libc::IN_UNMOUNT) {
            // The kernel dropped this watch without a delete we saw (an unmount
            // below the root): look at the directory afresh.
            self.refresh_node(node, out);
            return;
        }
        if ev.has(libc::IN_DELETE_SELF) {
            out.push(Hint::Changed(self.tree.path(node)));
            self.forget(node);
            return;
        }
        if ev.has(libc::IN_MOVE_SELF) {
            // The parent's MOVED_FROM/MOVED_TO already relinked it.
            return;
        }
        let Some(name) = ev.name else {
            if ev.has(libc::IN_ATTRIB) || ev.has(libc::IN_MODIFY) {
                out.push(Hint::Changed(self.tree.path(node)));
            }
            return;
        };
        let is_dir = ev.has(libc::IN_ISDIR);
        let rel = self.tree.path(node).join(name);
        if (self.cfg.ignore)(&rel, is_dir) {
            return;
        }
        if is_dir && ev.has(libc::IN_CREATE) {
            self.dir_appeared(node, name, rel, out);
        } else if ev.has(libc::IN_MOVED_TO) {
            self.moved_in(node, name, is_dir, out);
        } else {
            if is_dir && ev.has(libc::IN_DELETE) {
                if let Some(child) = self.tree.child(node, name) {
                    self.forget(child);
                }
            }
            out.push(Hint::Changed(rel));
        }
    }

    fn renamed(
        &mut self,
        from_parent: EntryId,
        from_name: &OsStr,
        to: RawEvent<'_>,
        out: &mut Vec<Hint>,
    ) {
        let is_dir = to.has(libc::IN_ISDIR);
        let (Some(to_parent), Some(to_name)) = (self.tree.by_wd(to.wd), to.name) else {
            self.moved_out(from_parent, from_name, is_dir, out);
            return;
        };
        if !self.tree.contains(from_parent) {
            self.moved_in(to_parent, to_name, is_dir, out);
            return;
        }
        let from = self.tree.path(from_parent).join(from_name);
        let to_rel = self.tree.path(to_parent).join(to_name);
        let from_ignored = (self.cfg.ignore)(&from, is_dir);
        let to_ignored = (self.cfg.ignore)(&to_rel, is_dir);
        match (from_ignored, to_ignored) {
            (true, true) => {}
            (true, false) => self.moved_in(to_parent, to_name, is_dir, out),
            (false, true) => self.moved_out(from_parent, from_name, is_dir, out),
            (false, false) => {
                out.push(Hint::Renamed {
                    from,
                    to: to_rel.clone(),
                    is_dir,
                });
                if !is_dir {
                    return;
                }
                let relinked = self
                    .tree
                    .child(from_parent, from_name)
                    .and_then(|node| self.tree.relink(node, to_parent, to_name));
                match relinked {
                    Some(replaced) => {
                        self.release(replaced);
                        if let Some(node) = self.tree.child(to_parent, to_name) {
                            self.recheck_stale(node, out);
                        }
                    }
                    None => {
                        // We did not know the directory (it appeared and moved
                        // before we saw it): treat it as new at its new place.
                        self.dir_appeared(to_parent, to_name, to_rel, out);
                    }
                }
            }
        }
    }

    fn moved_out(&mut self, parent: EntryId, name: &OsStr, is_dir: bool, out: &mut Vec<Hint>) {
        if !self.tree.contains(parent) {
            return;
        }
        let rel = self.tree.path(parent).join(name);
        if (self.cfg.ignore)(&rel, is_dir) {
            return;
        }
        if is_dir {
            if let Some(child) = self.tree.child(parent, name) {
                self.forget(child);
            }
        }
        out.push(Hint::Changed(rel));
    }

    fn moved_in(&mut self, parent: EntryId, name: &OsStr, is_dir: bool, out: &mut Vec<Hint>) {
        let rel = self.tree.path(parent).join(name);
        if (self.cfg.ignore)(&rel, is_dir) {
            return;
        }
        if is_dir {
            self.dir_appeared(parent, name, rel, out);
        } else {
            out.push(Hint::Changed(rel));
        }
    }

    /// Watch first, then report: files created before the watch are covered by the
    /// rescan, files created after it by their own events.
    fn dir_appeared(&mut self, parent: EntryId, name: &OsStr, rel: PathBuf, out: &mut Vec<Hint>) {
        let hint = match self.watch_dir(parent, name) {
            Some(_) => Hint::Rescan(rel),
            None => Hint::Changed(rel),
        };
        self.after_walk(hint, out);
    }

    /// Emits `hint` for a walk just done, after what the walk itself found
    /// (directories it recognised as moved: their renames come first).
    fn after_walk(&mut self, hint: Hint, out: &mut Vec<Hint>) {
        out.append(&mut self.deferred);
        out.push(hint);
    }

    /// A watched node whose watch the kernel dropped: forget what was below and look
    /// at it again as if it had just appeared.
    fn refresh_node(&mut self, node: EntryId, out: &mut Vec<Hint>) {
        let (Some(parent), Some(name)) = (self.tree.parent(node), self.tree.name(node)) else {
            return;
        };
        let name = name.to_owned();
        let rel = self.tree.path(node);
        self.forget(node);
        self.dir_appeared(parent, &name, rel, out);
    }

    /// Drops `node` and its subtree from the map and releases their watches.
    fn forget(&mut self, node: EntryId) {
        let wds = self.tree.remove_subtree(node);
        self.release(wds);
    }

    fn release(&mut self, wds: Vec<i32>) {
        for wd in wds {
            self.kernel.rm_watch(wd);
        }
    }

    fn lose_root(&mut self, out: &mut Vec<Hint>) {
        if self.root_gone {
            return;
        }
        self.root_gone = true;
        self.pending = None;
        let wds = self.tree.remove_subtree(ROOT);
        self.release(wds);
        self.top_sizes.clear();
        out.push(Hint::RootGone);
    }

    fn overflow(&mut self, out: &mut Vec<Hint>) {
        self.overflows += 1;
        if let Some(p) = self.pending.take() {
            self.moved_out(p.parent, &p.name, p.is_dir, out);
        }
        let old = std::mem::replace(&mut self.tree, DirTree::new());
        let old_root_wd = old.wd(ROOT);
        let old_wds: Vec<i32> = old.wds().collect();
        self.extra_live = old_wds.iter().copied().collect();
        self.top_sizes.clear();
        self.relinked.clear();
        self.deferred.clear();
        let ok = self.watch_root();
        self.extra_live.clear();
        let stale: Vec<i32> = old_wds
            .into_iter()
            .filter(|wd| self.tree.by_wd(*wd).is_none())
            .collect();
        self.release(stale);
        // A root that now has another watch descriptor is another inode: the
        // directory was replaced while the events were lost.
        let replaced =
            old_root_wd.is_some_and(|old| self.tree.wd(ROOT).is_some_and(|new| new != old));
        if ok && !replaced {
            out.push(Hint::Rescan(PathBuf::new()));
        } else {
            self.lose_root(out);
        }
    }

    /// Watches the root and everything below. False when the root is gone.
    fn watch_root(&mut self) -> bool {
        let root = self.cfg.root.clone();
        match self.add_watch(&root, true) {
            Ok(wd) => {
                self.tree.set_wd(ROOT, Some(wd));
                self.explore(ROOT);
                true
            }
            Err(AddError::Gone) => false,
            Err(AddError::Limit) => {
                self.limit_hit = true;
                let size = self.count_dirs(ROOT);
                self.top_sizes.insert(ROOT, size);
                true
            }
            Err(AddError::Other(e)) => {
                tracing::warn!(
                    root = %root.display(),
                    "cannot watch the root ({e}); the whole tree is rescanned every {:?} instead",
                    self.cfg.scan_interval
                );
                true
            }
        }
    }

    /// Watches `parent/name` (replacing a node of another inode) and the
    /// directories below it. Returns the node, watched or an unwatched top; None
    /// when the directory is gone or `parent`'s path is stale (then it is marked,
    /// and explored again once the rename that moved it is processed).
    fn watch_dir(&mut self, parent: EntryId, name: &OsStr) -> Option<EntryId> {
        let abs = self.abs(parent).join(name);
        let added = self.add_watch(&abs, false);
        if !self.is_current(parent) {
            if let Ok(wd) = added {
                self.release_unknown(wd);
            }
            self.tree.mark_stale(parent);
            return None;
        }
        let existing = self.tree.child(parent, name);
        match added {
            Ok(wd) => {
                if let Some(node) = existing {
                    if self.tree.wd(node) == Some(wd) {
                        // Already watched (a walk got here before this event): any
                        // directory made below since has its own CREATE queued.
                        return Some(node);
                    }
                    self.forget(node);
                }
                if let Some(other) = self.tree.by_wd(wd) {
                    if self.claim_moved(other, wd, parent, name) {
                        return Some(other);
                    }
                    return Some(self.tree.insert(parent, name, None));
                }
                let node = self.tree.insert(parent, name, Some(wd));
                self.explore(node);
                Some(node)
            }
            Err(AddError::Gone) => {
                if let Some(node) = existing {
                    self.forget(node);
                }
                None
            }
            Err(err) => {
                if let Some(node) = existing {
                    self.forget(node);
                }
                let node = self.tree.insert(parent, name, None);
                self.note_unwatchable(node, &abs, err);
                Some(node)
            }
        }
    }

    /// Whether `id`'s path still leads to the directory its watch is on. The map
    /// lags the filesystem while rename events wait in the queue, and a path built
    /// from it may then name another directory or none. Adding a watch is the exact
    /// test (same inode, same descriptor). The root and unwatched nodes cannot be
    /// tested and count as current.
    fn is_current(&mut self, id: EntryId) -> bool {
        let Some(wd) = self.tree.wd(id) else {
            return true;
        };
        if id == ROOT {
            return true;
        }
        match self.kernel.add_watch(&self.abs(id), false) {
            Ok(w) if w == wd => true,
            Ok(w) => {
                self.release_unknown(w);
                false
            }
            Err(_) => false,
        }
    }

    /// Releases a descriptor that no node holds (one we added only to look).
    fn release_unknown(&mut self, wd: i32) {
        if self.tree.by_wd(wd).is_none() && !self.extra_live.contains(&wd) {
            self.kernel.rm_watch(wd);
        }
    }

    /// Rechecks below the nodes that walks relinked.
    fn settle(&mut self, out: &mut Vec<Hint>) {
        loop {
            out.append(&mut self.deferred);
            let Some(node) = self.relinked.pop() else {
                return;
            };
            if !self.root_gone && self.tree.contains(node) {
                self.recheck_stale(node, out);
            }
        }
    }

    /// After `moved` was relinked: stale nodes below it may lead to their
    /// directories again; explore them for what was missed and report them.
    fn recheck_stale(&mut self, moved: EntryId, out: &mut Vec<Hint>) {
        for id in self.tree.stale_under(moved) {
            if !self.tree.contains(id) || !self.is_current(id) {
                continue;
            }
            self.tree.clear_stale(id);
            self.explore(id);
            let rel = self.tree.path(id);
            self.after_walk(Hint::Rescan(rel), out);
        }
    }

    fn note_unwatchable(&mut self, node: EntryId, abs: &Path, err: AddError) {
        match err {
            AddError::Limit => self.limit_hit = true,
            AddError::Other(e) => tracing::warn!(
                dir = %abs.display(),
                "cannot watch directory ({e}); it is rescanned every {:?} instead",
                self.cfg.scan_interval
            ),
            AddError::Gone => {}
        }
        let size = self.count_dirs(node);
        self.top_sizes.insert(node, size);
    }

    /// Depth-first walk below a watched node, watching every directory not
    /// excluded. Only directories are listed, so memory and time follow the
    /// number of directories, not files. Each listed directory is checked to
    /// still be at its path afterwards; if not, what was found there is dropped
    /// and the node marked stale.
    fn explore(&mut self, start: EntryId) {
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            if self.tree.wd(id).is_none() {
                continue;
            }
            let rel = self.tree.path(id);
            let abs = self.cfg.root.join(&rel);
            let names = match self.kernel.subdirs(&abs) {
                Ok(names) => names,
                Err(e) => {
                    // Moved (its rename is queued), deleted (so is its delete), or
                    // unreadable: a directory we cannot list we cannot replicate.
                    tracing::debug!(dir = %abs.display(), "cannot list directory: {e}");
                    if !self.is_current(id) {
                        self.tree.mark_stale(id);
                    }
                    continue;
                }
            };
            let mut found = Vec::new();
            for name in names {
                if self.tree.child(id, &name).is_some() {
                    continue;
                }
                if (self.cfg.ignore)(&rel.join(&name), true) {
                    continue;
                }
                let child_abs = abs.join(&name);
                match self.add_watch(&child_abs, false) {
                    Ok(wd) => match self.tree.by_wd(wd) {
                        None => found.push((self.tree.insert(id, &name, Some(wd)), true)),
                        Some(other) => {
                            if self.claim_moved(other, wd, id, &name) {
                                found.push((other, false));
                            } else {
                                found.push((self.tree.insert(id, &name, None), false));
                            }
                        }
                    },
                    Err(AddError::Gone) => {}
                    Err(err) => {
                        let node = self.tree.insert(id, &name, None);
                        self.note_unwatchable(node, &child_abs, err);
                        found.push((node, false));
                    }
                }
            }
            if !self.is_current(id) {
                for (node, _) in found {
                    self.forget(node);
                }
                self.tree.mark_stale(id);
                continue;
            }
            stack.extend(found.into_iter().filter(|&(_, new)| new).map(|(n, _)| n));
        }
    }

    /// `wd`, just returned for the directory at `parent/name`, is held by node
    /// `other`. Either that directory moved here and the rename events are still
    /// queued (its old path no longer holds this inode): relink the node, subtree and
    /// all, and true. Or the same directory shows at both paths (a bind mount):
    /// false, and the caller leaves this path unwatched (rescanned periodically).
    /// If another directory now sits at the old path, it is watched and rescanned
    /// (the map had given its path to the wrong inode).
    fn claim_moved(&mut self, other: EntryId, wd: i32, parent: EntryId, name: &OsStr) -> bool {
        if other == ROOT || self.tree.is_ancestor_or_self(other, parent) {
            return false;
        }
        let (Some(old_parent), Some(old_name)) = (
            self.tree.parent(other),
            self.tree.name(other).map(OsStr::to_owned),
        ) else {
            return false;
        };
        // Adding a watch is the cheapest exact test of "same inode".
        let old_abs = self.abs(other);
        let at_old_path = match self.add_watch(&old_abs, false) {
            Ok(w) if w == wd => return false,
            other => other,
        };
        let from = self.tree.path(other);
        let Some(replaced) = self.tree.relink(other, parent, name) else {
            if let Ok(w) = at_old_path {
                self.release_unknown(w);
            }
            return false;
        };
        self.release(replaced);
        self.relinked.push(other);
        // Said now, so that later hints naming paths below the new place make
        // sense to a consumer that rewrites paths by the renames it was told.
        self.deferred.push(Hint::Renamed {
            from,
            to: self.tree.path(other),
            is_dir: true,
        });
        let free = self.tree.child(old_parent, &old_name).is_none() && self.is_current(old_parent);
        match at_old_path {
            Ok(w) if free && self.tree.by_wd(w).is_none() => {
                let node = self.tree.insert(old_parent, &old_name, Some(w));
                self.explore(node);
                self.deferred.push(Hint::Rescan(self.tree.path(node)));
            }
            Ok(w) => self.release_unknown(w),
            Err(AddError::Gone) => {}
            Err(err) if free => {
                let node = self.tree.insert(old_parent, &old_name, None);
                self.note_unwatchable(node, &old_abs, err);
                self.deferred.push(Hint::Rescan(self.tree.path(node)));
            }
            Err(_) => {}
        }
        true
    }

    /// Directories in the subtree of an unwatched node (itself included), counted
    /// by listing, up to [`COUNT_CAP`].
    fn count_dirs(&mut self, node: EntryId) -> usize {
        let mut count = 0;
        let mut stack = vec![self.tree.path(node)];
        while let Some(rel) = stack.pop() {
            count += 1;
            if count >= COUNT_CAP {
                break;
            }
            let Ok(names) = self.kernel.subdirs(&self.cfg.root.join(&rel)) else {
                continue;
            };
            for name in names {
                let child = rel.join(name);
                if !(self.cfg.ignore)(&child, true) {
                    stack.push(child);
                }
            }
        }
        count
    }

    /// Every scan interval: try to watch each unwatched top again (watches may have
    /// been freed) and report each as `Rescan`, watched now or not.
    fn retry_unwatched(&mut self, out: &mut Vec<Hint>) {
        let mut tops: Vec<(PathBuf, EntryId)> = self
            .tree
            .unwatched()
            .map(|id| (self.tree.path(id), id))
            .collect();
        tops.sort();
        let mut at_limit = false;
        for (rel, id) in tops {
            if !self.tree.contains(id) {
                continue;
            }
            if at_limit {
                out.push(Hint::Rescan(rel));
                continue;
            }
            let abs = self.cfg.root.join(&rel);
            let added = self.add_watch(&abs, id == ROOT);
            if self.tree.parent(id).is_some_and(|p| !self.is_current(p)) {
                // The path is stale; the queued rename will put it right.
                if let Ok(wd) = added {
                    self.release_unknown(wd);
                }
                out.push(Hint::Rescan(rel));
                continue;
            }
            match added {
                Ok(wd) if self.tree.by_wd(wd).is_none() => {
                    self.tree.set_wd(id, Some(wd));
                    self.top_sizes.remove(&id);
                    self.explore(id);
                    self.after_walk(Hint::Rescan(rel), out);
                }
                Ok(wd) => {
                    if let (Some(other), Some(parent), Some(name)) = (
                        self.tree.by_wd(wd),
                        self.tree.parent(id),
                        self.tree.name(id).map(OsStr::to_owned),
                    ) {
                        self.claim_moved(other, wd, parent, &name);
                    }
                    self.after_walk(Hint::Rescan(rel), out);
                }
                Err(AddError::Gone) if id == ROOT => {
                    self.lose_root(out);
                    return;
                }
                Err(AddError::Gone) => {
                    self.forget(id);
                    out.push(Hint::Changed(rel));
                }
                Err(AddError::Limit) => {
                    at_limit = true;
                    out.push(Hint::Rescan(rel));
                }
                Err(AddError::Other(_)) => out.push(Hint::Rescan(rel)),
            }
        }
        if self.limit_hit && !at_limit && self.tree.unwatched_count() == 0 {
            tracing::info!(
                root = %self.cfg.root.display(),
                "every directory is watched again; periodic rescans stopped"
            );
            self.limit_hit = false;
            self.warned = false;
        }
    }

    fn abs(&self, node: EntryId) -> PathBuf {
        self.cfg.root.join(self.tree.path(node))
    }

    /// The kernel call plus the `max_watches` hook: a descriptor the map does not
    /// hold yet counts as a new watch, refused past the limit like ENOSPC.
    fn add_watch(&mut self, abs: &Path, is_root: bool) -> Result<i32, AddError> {
        let wd = self.kernel.add_watch(abs, is_root)?;
        if let Some(max) = self.cfg.max_watches {
            let known = self.tree.by_wd(wd).is_some() || self.extra_live.contains(&wd);
            if !known && self.tree.watched_count() + self.extra_live.len() >= max {
                self.kernel.rm_watch(wd);
                return Err(AddError::Limit);
            }
        }
        self.extra_live.remove(&wd);
        Ok(wd)
    }

    fn warn_if_limited(&mut self) {
        if !self.limit_hit || self.warned {
            return;
        }
        self.warned = true;
        let watched = self.tree.watched_count();
        let unwatched = self.unwatched_dirs();
        let limit = match (self.cfg.max_watches, self.kernel.max_user_watches()) {
            (Some(max), _) => format!("max_watches = {max} (test limit)"),
            (None, Some(n)) => format!("fs.inotify.max_user_watches = {n}"),
            (None, None) => "fs.inotify.max_user_watches".to_owned(),
        };
        // Room for this tree twice over, since other programs of the same user
        // hold watches too.
        let suggested = ((watched + unwatched) * 2).next_power_of_two().max(65_536);
        tracing::warn!(
            root = %self.cfg.root.display(),
            "inotify watch limit reached ({limit}): {watched} directories are watched, \
             {unwatched} directories in {} subtrees are not; those are rescanned every {:?} \
             instead of watched, so changes there take up to that long to replicate. \
             Raise the limit with `sysctl fs.inotify.max_user_watches={suggested}` \
             (persist it in /etc/sysctl.d/) and restart",
            self.tree.unwatched_count(),
            self.cfg.scan_interval,
        );
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
