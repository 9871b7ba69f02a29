//! Engine tests against an in-memory filesystem that produces the events the kernel
//! would (for watched directories only, IN_IGNORED after a watch goes, MOVE_SELF
//! after a rename pair). Scenario tests pin each rule; the model test runs random
//! operation sequences (with split batches, lost events and watch limits) and checks
//! after every round that each change is covered by a hint and that the engine's
//! map matches the filesystem and the kernel's watches exactly.

use super::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct Ev {
    wd: i32,
    mask: u32,
    cookie: u32,
    name: Option<OsString>,
}

/// Files and directories by absolute path; watches by inode.
#[derive(Debug, Default)]
struct Fs {
    paths: BTreeMap<PathBuf, u64>,
    is_dir: HashMap<u64, bool>,
    next_ino: u64,
    watch: HashMap<u64, i32>,
    ino_of: HashMap<i32, u64>,
    next_wd: i32,
    /// ENOSPC past this many watches.
    limit: Option<usize>,
    queue: Vec<Ev>,
    next_cookie: u32,
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

impl Fs {
    fn new() -> Rc<RefCell<Fs>> {
        let mut fs = Fs::default();
        fs.insert(p("/r"), true);
        fs.insert(p("/out"), true);
        Rc::new(RefCell::new(fs))
    }

    fn insert(&mut self, abs: PathBuf, dir: bool) -> u64 {
        self.next_ino += 1;
        let ino = self.next_ino;
        self.paths.insert(abs, ino);
        self.is_dir.insert(ino, dir);
        ino
    }

    fn exists(&self, abs: &Path) -> bool {
        self.paths.contains_key(abs)
    }

    fn dir_exists(&self, abs: &Path) -> bool {
        self.paths.get(abs).is_some_and(|i| self.is_dir[i])
    }

    fn wd_of(&self, abs: &str) -> i32 {
        self.watch[&self.paths[Path::new(abs)]]
    }

    fn below(&self, abs: &Path) -> Vec<PathBuf> {
        self.paths
            .range(abs.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(abs))
            .filter(|(k, _)| k.as_path() != abs)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn emit(&mut self, dir: &Path, mask: u32, name: Option<&OsStr>, cookie: u32) {
        let Some(ino) = self.paths.get(dir) else {
            return;
        };
        if let Some(&wd) = self.watch.get(ino) {
            self.queue.push(Ev {
                wd,
                mask,
                cookie,
                name: name.map(OsStr::to_owned),
            });
        }
    }

    fn emit_child(&mut self, abs: &Path, mask: u32, cookie: u32) {
        let parent = abs.parent().unwrap().to_path_buf();
        self.emit(&parent, mask, abs.file_name(), cookie);
    }

    fn drop_watch(&mut self, ino: u64) {
        if let Some(wd) = self.watch.remove(&ino) {
            self.ino_of.remove(&wd);
            self.queue.push(Ev {
                wd,
                mask: libc::IN_IGNORED,
                cookie: 0,
                name: None,
            });
        }
    }

    fn mkdir(&mut self, abs: &str) {
        self.insert(p(abs), true);
        self.emit_child(Path::new(abs), libc::IN_CREATE | libc::IN_ISDIR, 0);
    }

    fn touch(&mut self, abs: &str) {
        let path = p(abs);
        if !self.exists(&path) {
            self.insert(path.clone(), false);
            self.emit_child(&path, libc::IN_CREATE, 0);
        }
        self.emit_child(&path, libc::IN_MODIFY, 0);
        self.emit_child(&path, libc::IN_CLOSE_WRITE, 0);
    }

    /// `rm -r`: deepest first, as the kernel sees it.
    fn remove(&mut self, abs: &Path) {
        let mut all = self.below(abs);
        all.push(abs.to_path_buf());
        all.sort_by_key(|k| std::cmp::Reverse(k.components().count()));
        for path in all {
            let ino = self.paths.remove(&path).unwrap();
            if self.is_dir[&ino] {
                if let Some(&wd) = self.watch.get(&ino) {
                    self.queue.push(Ev {
                        wd,
                        mask: libc::IN_DELETE_SELF,
                        cookie: 0,
                        name: None,
                    });
                }
                self.drop_watch(ino);
                self.emit_child(&path, libc::IN_DELETE | libc::IN_ISDIR, 0);
            } else {
                self.emit_child(&path, libc::IN_DELETE, 0);
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str) {
        self.rename_path(Path::new(from), Path::new(to));
    }

    fn rename_path(&mut self, from: &Path, to: &Path) {
        let ino = self.paths[from];
        let dir = self.is_dir[&ino];
        let mut moving = self.below(from);
        moving.push(from.to_path_buf());
        let moved: Vec<(PathBuf, u64)> = moving
            .into_iter()
            .map(|k| {
                let i = self.paths.remove(&k).unwrap();
                let rest = k.strip_prefix(from).unwrap();
                let dest = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
                (dest, i)
            })
            .collect();
        self.next_cookie += 1;
        let cookie = self.next_cookie;
        let isdir = if dir { libc::IN_ISDIR } else { 0 };
        self.emit_child(from, libc::IN_MOVED_FROM | isdir, cookie);
        for (k, i) in moved {
            self.paths.insert(k, i);
        }
        self.emit_child(to, libc::IN_MOVED_TO | isdir, cookie);
        if let Some(&wd) = self.watch.get(&ino) {
            self.queue.push(Ev {
                wd,
                mask: libc::IN_MOVE_SELF,
                cookie: 0,
                name: None,
            });
        }
    }

    fn path_of(&self, ino: u64) -> Option<PathBuf> {
        self.paths
            .iter()
            .find(|(_, &i)| i == ino)
            .map(|(k, _)| k.clone())
    }
}

#[derive(Clone)]
struct FakeKernel(Rc<RefCell<Fs>>);

impl Kernel for FakeKernel {
    fn add_watch(&mut self, abs: &Path, _is_root: bool) -> Result<i32, AddError> {
        let mut fs = self.0.borrow_mut();
        let Some(&ino) = fs.paths.get(abs) else {
            return Err(AddError::Gone);
        };
        if !fs.is_dir[&ino] {
            return Err(AddError::Gone);
        }
        if let Some(&wd) = fs.watch.get(&ino) {
            return Ok(wd);
        }
        if fs.limit.is_some_and(|l| fs.watch.len() >= l) {
            return Err(AddError::Limit);
        }
        fs.next_wd += 1;
        let wd = fs.next_wd;
        fs.watch.insert(ino, wd);
        fs.ino_of.insert(wd, ino);
        Ok(wd)
    }

    fn rm_watch(&mut self, wd: i32) {
        let mut fs = self.0.borrow_mut();
        if let Some(ino) = fs.ino_of.get(&wd).copied() {
            fs.drop_watch(ino);
        }
    }

    fn subdirs(&mut self, abs: &Path) -> io::Result<Vec<OsString>> {
        let fs = self.0.borrow();
        if !fs.dir_exists(abs) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(fs
            .below(abs)
            .into_iter()
            .filter(|k| k.parent() == Some(abs) && fs.is_dir[&fs.paths[k]])
            .map(|k| k.file_name().unwrap().to_owned())
            .collect())
    }

    fn max_user_watches(&self) -> Option<u64> {
        Some(8192)
    }
}

const INTERVAL: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_millis(5);

fn ignore_ign() -> IgnoreFn {
    Arc::new(|path: &Path, _| {
        path.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with("ign"))
    })
}

fn engine(fs: &Rc<RefCell<Fs>>, max_watches: Option<usize>) -> (Engine<FakeKernel>, Instant) {
    let now = Instant::now();
    let cfg = EngineConfig {
        root: p("/r"),
        scan_interval: INTERVAL,
        ignore: ignore_ign(),
        max_watches,
        pair_window: WINDOW,
    };
    let e = Engine::new(FakeKernel(fs.clone()), cfg, now).unwrap();
    (e, now)
}

/// Feeds the queued events as one batch, then whatever the engine's own
/// rm_watch calls queued, until the queue is empty.
fn drain(e: &mut Engine<FakeKernel>, fs: &Rc<RefCell<Fs>>, now: Instant) -> Vec<Hint> {
    let mut out = Vec::new();
    loop {
        let evs = std::mem::take(&mut fs.borrow_mut().queue);
        if evs.is_empty() {
            return out;
        }
        feed(e, &evs, now, &mut out);
    }
}

fn feed(e: &mut Engine<FakeKernel>, evs: &[Ev], now: Instant, out: &mut Vec<Hint>) {
    let raw: Vec<RawEvent<'_>> = evs
        .iter()
        .map(|ev| RawEvent {
            wd: ev.wd,
            mask: ev.mask,
            cookie: ev.cookie,
            name: ev.name.as_deref(),
        })
        .collect();
    e.on_events(&raw, now, out);
}

fn changed(s: &str) -> Hint {
    Hint::Changed(p(s))
}

fn rescan(s: &str) -> Hint {
    Hint::Rescan(p(s))
}

fn renamed(a: &str, b: &str, is_dir: bool) -> Hint {
    Hint::Renamed {
        from: p(a),
        to: p(b),
        is_dir,
    }
}

fn snapshot(e: &Engine<FakeKernel>) -> BTreeMap<PathBuf, Option<i32>> {
    e.tree.snapshot().into_iter().collect()
}

fn tree(fs: &Rc<RefCell<Fs>>, dirs: &[&str]) {
    let mut f = fs.borrow_mut();
    for d in dirs {
        f.insert(Path::new("/r").join(d), true);
    }
}

#[test]
fn startup_watches_every_directory_except_excluded_ones_and_sends_nothing() {
    let fs = Fs::new();
    tree(&fs, &["a", "a/b", "c", "ign", "ign/x"]);
    fs.borrow_mut().insert(p("/r/a/file"), false);
    let (mut e, now) = engine(&fs, None);
    let snap = snapshot(&e);
    let paths: Vec<&str> = snap.keys().map(|k| k.to_str().unwrap()).collect();
    assert_eq!(paths, vec!["", "a", "a/b", "c"]);
    assert!(snap.values().all(Option::is_some));
    assert_eq!(e.stats().watched_dirs, 4);
    assert_eq!(e.next_deadline(), None, "nothing to rescan periodically");
    assert!(drain(&mut e, &fs, now).is_empty());
}

#[test]
fn a_new_directory_is_watched_with_its_subdirectories_before_its_rescan() {
    let fs = Fs::new();
    let (mut e, now) = engine(&fs, None);
    // Created, filled and given a subdirectory before the engine saw the CREATE.
    fs.borrow_mut().mkdir("/r/new");
    fs.borrow_mut().touch("/r/new/early");
    fs.borrow_mut().insert(p("/r/new/sub"), true);
    assert_eq!(drain(&mut e, &fs, now), vec![rescan("new")]);
    assert!(snapshot(&e)[Path::new("new/sub")].is_some());
    fs.borrow_mut().touch("/r/new/sub/late");
    let hints = drain(&mut e, &fs, now);
    assert!(hints.contains(&changed("new/sub/late")), "{hints:?}");
}

#[test]
fn file_events_become_changed_and_excluded_names_are_dropped() {
    let fs = Fs::new();
    tree(&fs, &["d"]);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().touch("/r/d/f");
    fs.borrow_mut().touch("/r/kept");
    fs.borrow_mut().touch("/r/d/ign.tmp");
    fs.borrow_mut().remove(Path::new("/r/d/f"));
    let hints = drain(&mut e, &fs, now);
    assert!(hints
        .iter()
        .all(|h| *h == changed("d/f") || *h == changed("kept")));
    assert!(hints.contains(&changed("d/f")) && hints.contains(&changed("kept")));
}

#[test]
fn attribute_change_of_the_root_itself_is_reported() {
    let fs = Fs::new();
    let (mut e, now) = engine(&fs, None);
    let wd = fs.borrow().wd_of("/r");
    let mut out = Vec::new();
    feed(
        &mut e,
        &[Ev {
            wd,
            mask: libc::IN_ATTRIB,
            cookie: 0,
            name: None,
        }],
        now,
        &mut out,
    );
    assert_eq!(out, vec![changed("")]);
}

#[test]
fn a_file_rename_is_paired_by_cookie() {
    let fs = Fs::new();
    tree(&fs, &["a", "b"]);
    fs.borrow_mut().insert(p("/r/a/f"), false);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().rename("/r/a/f", "/r/b/g");
    assert_eq!(drain(&mut e, &fs, now), vec![renamed("a/f", "b/g", false)]);
}

#[test]
fn a_directory_rename_moves_the_watches_of_its_subtree() {
    let fs = Fs::new();
    tree(&fs, &["d", "d/s", "d/s/t"]);
    let (mut e, now) = engine(&fs, None);
    let before = fs.borrow().watch.len();
    fs.borrow_mut().rename("/r/d", "/r/e");
    fs.borrow_mut().touch("/r/e/s/t/new");
    let hints = drain(&mut e, &fs, now);
    assert_eq!(hints[0], renamed("d", "e", true));
    assert!(hints.contains(&changed("e/s/t/new")), "{hints:?}");
    assert!(
        !hints.iter().any(|h| matches!(h, Hint::Rescan(_))),
        "no rewatch: {hints:?}"
    );
    assert_eq!(fs.borrow().watch.len(), before, "no watch added or removed");
    let snap = snapshot(&e);
    assert!(snap.contains_key(Path::new("e/s/t")) && !snap.contains_key(Path::new("d")));
}

#[test]
fn a_rename_split_across_two_reads_is_still_paired() {
    let fs = Fs::new();
    tree(&fs, &["d"]);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().rename("/r/d", "/r/e");
    let evs = std::mem::take(&mut fs.borrow_mut().queue);
    let mut out = Vec::new();
    feed(&mut e, &evs[..1], now, &mut out);
    assert!(out.is_empty(), "MOVED_FROM held: {out:?}");
    assert_eq!(e.next_deadline(), Some(now + WINDOW));
    e.on_tick(now + WINDOW / 2, &mut out);
    assert!(out.is_empty());
    feed(&mut e, &evs[1..], now + WINDOW / 2, &mut out);
    assert_eq!(out, vec![renamed("d", "e", true)]);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_held_moved_from_without_partner_becomes_a_move_out_at_its_deadline() {
    let fs = Fs::new();
    tree(&fs, &["d", "d/s"]);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().rename("/r/d", "/out/d");
    let evs = std::mem::take(&mut fs.borrow_mut().queue);
    let mut out = Vec::new();
    feed(&mut e, &evs[..1], now, &mut out);
    assert!(out.is_empty());
    e.on_tick(now + WINDOW, &mut out);
    assert_eq!(out, vec![changed("d")]);
    assert_eq!(e.stats().watched_dirs, 1, "watches below d released");
    // Events still queued from the moved-out directory are ignored.
    fs.borrow_mut().touch("/out/d/s/x");
    assert!(drain(&mut e, &fs, now).is_empty());
    assert_eq!(
        fs.borrow().watch.len(),
        1,
        "kernel holds only the root watch"
    );
}

#[test]
fn a_directory_moved_in_is_watched_then_rescanned_and_a_file_moved_in_is_changed() {
    let fs = Fs::new();
    {
        let mut f = fs.borrow_mut();
        f.insert(p("/out/m"), true);
        f.insert(p("/out/m/s"), true);
        f.insert(p("/out/file"), false);
    }
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().rename("/out/m", "/r/m");
    fs.borrow_mut().rename("/out/file", "/r/file");
    assert_eq!(drain(&mut e, &fs, now), vec![rescan("m"), changed("file")]);
    fs.borrow_mut().touch("/r/m/s/f");
    assert_eq!(
        drain(&mut e, &fs, now),
        vec![changed("m/s/f"), changed("m/s/f"), changed("m/s/f")]
    );
}

#[test]
fn renames_into_and_out_of_excluded_names_are_moves_out_and_in() {
    let fs = Fs::new();
    tree(&fs, &["d", "d/s"]);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().rename("/r/d", "/r/ign-d");
    assert_eq!(drain(&mut e, &fs, now), vec![changed("d")]);
    assert_eq!(e.stats().watched_dirs, 1);
    fs.borrow_mut().rename("/r/ign-d", "/r/back");
    assert_eq!(drain(&mut e, &fs, now), vec![rescan("back")]);
    assert_eq!(e.stats().watched_dirs, 3);
}

#[test]
fn a_deleted_directory_is_changed_and_its_watches_forgotten() {
    let fs = Fs::new();
    tree(&fs, &["d", "d/s"]);
    fs.borrow_mut().insert(p("/r/d/s/f"), false);
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().remove(Path::new("/r/d"));
    let hints = drain(&mut e, &fs, now);
    for want in ["d/s/f", "d/s", "d"] {
        assert!(hints.contains(&changed(want)), "{want}: {hints:?}");
    }
    assert_eq!(e.stats().watched_dirs, 1);
}

#[test]
fn a_directory_renamed_over_an_empty_one_replaces_it() {
    let fs = Fs::new();
    tree(&fs, &["a", "a/in", "b"]);
    let (mut e, now) = engine(&fs, None);
    {
        // rename(2) over an empty directory: the victim is deleted.
        let mut f = fs.borrow_mut();
        let victim = f.paths.remove(Path::new("/r/b")).unwrap();
        let wd = f.watch[&victim];
        f.rename("/r/a", "/r/b");
        f.queue.push(Ev {
            wd,
            mask: libc::IN_DELETE_SELF,
            cookie: 0,
            name: None,
        });
        f.drop_watch(victim);
    }
    let hints = drain(&mut e, &fs, now);
    assert_eq!(hints[0], renamed("a", "b", true));
    let snap = snapshot(&e);
    assert_eq!(
        snap.keys().cloned().collect::<Vec<_>>(),
        vec![p(""), p("b"), p("b/in")]
    );
    assert_eq!(snap[Path::new("b")], Some(fs.borrow().wd_of("/r/b")));
}

#[test]
fn overflow_rebuilds_the_map_and_asks_for_a_full_rescan() {
    let fs = Fs::new();
    tree(&fs, &["keep", "moved", "gone"]);
    let (mut e, now) = engine(&fs, None);
    let gone_wd = fs.borrow().wd_of("/r/gone");
    {
        let mut f = fs.borrow_mut();
        f.mkdir("/r/new");
        f.insert(p("/r/new/deep"), true);
        f.rename("/r/moved", "/r/keep/moved2");
        f.rename("/r/gone", "/out/gone");
        // The kernel lost all of it.
        f.queue.clear();
        f.queue.push(Ev {
            wd: -1,
            mask: libc::IN_Q_OVERFLOW,
            cookie: 0,
            name: None,
        });
    }
    let hints = drain(&mut e, &fs, now);
    assert_eq!(hints, vec![rescan("")]);
    assert_eq!(e.stats().overflows, 1);
    let paths: Vec<PathBuf> = snapshot(&e).keys().cloned().collect();
    assert_eq!(
        paths,
        vec![p(""), p("keep"), p("keep/moved2"), p("new"), p("new/deep")]
    );
    assert!(
        !fs.borrow().ino_of.contains_key(&gone_wd),
        "watch of the moved-out dir released"
    );
    assert_eq!(fs.borrow().watch.len(), 5);
}

#[test]
fn overflow_on_a_replaced_root_reports_root_gone() {
    let fs = Fs::new();
    let (mut e, now) = engine(&fs, None);
    {
        let mut f = fs.borrow_mut();
        f.paths.remove(Path::new("/r"));
        f.insert(p("/r"), true);
        f.queue.push(Ev {
            wd: -1,
            mask: libc::IN_Q_OVERFLOW,
            cookie: 0,
            name: None,
        });
    }
    assert_eq!(drain(&mut e, &fs, now), vec![Hint::RootGone]);
    assert!(e.root_gone());
}

#[test]
fn every_way_of_losing_the_root_reports_root_gone_once() {
    for mask in [
        libc::IN_DELETE_SELF,
        libc::IN_MOVE_SELF,
        libc::IN_UNMOUNT,
        libc::IN_IGNORED,
    ] {
        let fs = Fs::new();
        tree(&fs, &["d"]);
        let (mut e, now) = engine(&fs, None);
        let wd = fs.borrow().wd_of("/r");
        let d = fs.borrow().wd_of("/r/d");
        let mut out = Vec::new();
        let evs = [
            Ev {
                wd,
                mask,
                cookie: 0,
                name: None,
            },
            Ev {
                wd,
                mask: libc::IN_IGNORED,
                cookie: 0,
                name: None,
            },
            Ev {
                wd: d,
                mask: libc::IN_CREATE,
                cookie: 0,
                name: Some("x".into()),
            },
        ];
        feed(&mut e, &evs, now, &mut out);
        assert_eq!(out, vec![Hint::RootGone], "mask {mask:#x}");
        assert!(fs.borrow().watch.is_empty(), "all watches released");
        e.on_tick(now + INTERVAL * 2, &mut out);
        assert_eq!(out.len(), 1);
    }
}

#[test]
fn a_directory_losing_its_watch_without_a_delete_is_watched_again_and_rescanned() {
    let fs = Fs::new();
    tree(&fs, &["mnt", "mnt/x"]);
    let (mut e, now) = engine(&fs, None);
    let (wd, x) = (fs.borrow().wd_of("/r/mnt"), fs.borrow().wd_of("/r/mnt/x"));
    {
        // An unmount below the root: every watch on that filesystem goes.
        let mut f = fs.borrow_mut();
        for w in [x, wd] {
            let ino = f.ino_of[&w];
            f.queue.push(Ev {
                wd: w,
                mask: libc::IN_UNMOUNT,
                cookie: 0,
                name: None,
            });
            f.drop_watch(ino);
        }
        f.paths.remove(Path::new("/r/mnt/x"));
        f.paths.remove(Path::new("/r/mnt"));
        f.insert(p("/r/mnt"), true);
    }
    let hints = drain(&mut e, &fs, now);
    assert!(hints.contains(&rescan("mnt")), "{hints:?}");
    assert_eq!(
        snapshot(&e).keys().cloned().collect::<Vec<_>>(),
        vec![p(""), p("mnt")]
    );
    assert_eq!(fs.borrow().watch.len(), 2);
}

#[test]
fn a_directory_gone_before_its_create_is_processed_is_reported_changed() {
    let fs = Fs::new();
    let (mut e, now) = engine(&fs, None);
    fs.borrow_mut().mkdir("/r/brief");
    fs.borrow_mut().paths.remove(Path::new("/r/brief"));
    assert_eq!(drain(&mut e, &fs, now), vec![changed("brief")]);
}

#[test]
fn a_directory_moved_into_a_new_directory_before_the_walk_keeps_its_watches() {
    let fs = Fs::new();
    tree(&fs, &["a", "a/s"]);
    let (mut e, now) = engine(&fs, None);
    let a_wd = fs.borrow().wd_of("/r/a");
    // mkdir x; mv a x/a: x was not watched yet, so no MOVED_TO is seen.
    fs.borrow_mut().mkdir("/r/x");
    fs.borrow_mut().rename("/r/a", "/r/x/a");
    let hints = drain(&mut e, &fs, now);
    // The move is told as soon as the walk recognises the directory, before the
    // rescan of its new parent, so the consumer renames instead of copying.
    assert_eq!(
        hints,
        vec![renamed("a", "x/a", true), rescan("x"), changed("a")]
    );
    let snap = snapshot(&e);
    assert_eq!(
        snap[Path::new("x/a")],
        Some(a_wd),
        "relinked, not rewatched"
    );
    assert!(snap[Path::new("x/a/s")].is_some());
    assert_eq!(e.stats().unwatched_subtrees, 0);
}

#[test]
fn a_bind_mounted_duplicate_is_left_unwatched_and_rescanned() {
    let fs = Fs::new();
    tree(&fs, &["real"]);
    {
        let mut f = fs.borrow_mut();
        let ino = f.paths[Path::new("/r/real")];
        f.paths.insert(p("/r/view"), ino);
    }
    let (mut e, now) = engine(&fs, None);
    assert_eq!(e.stats().unwatched_subtrees, 1);
    let mut out = Vec::new();
    e.on_tick(now + INTERVAL, &mut out);
    assert_eq!(out.len(), 1);
    assert!(
        out == vec![rescan("view")] || out == vec![rescan("real")],
        "{out:?}"
    );
    assert_eq!(e.stats().unwatched_subtrees, 1);
}

#[test]
fn past_the_watch_limit_subtrees_are_rescanned_every_interval_and_rewatched_when_room_frees() {
    for (kernel_limit, hook) in [(Some(3), None), (None, Some(3))] {
        let fs = Fs::new();
        tree(&fs, &["a", "a/a1", "b", "b/b1", "b/b1/b2", "c"]);
        fs.borrow_mut().limit = kernel_limit;
        let (mut e, now) = engine(&fs, hook);
        let s = e.stats();
        assert_eq!(s.watched_dirs, 3);
        assert!(s.limit_reached);
        assert_eq!(s.unwatched_dirs, 4, "{s:?}");
        assert_eq!(fs.borrow().watch.len(), 3);
        assert_eq!(e.next_deadline(), Some(now + INTERVAL));
        let tops: Vec<Hint> = {
            let mut out = Vec::new();
            e.on_tick(now + INTERVAL - Duration::from_millis(1), &mut out);
            assert!(out.is_empty(), "not before the interval");
            e.on_tick(now + INTERVAL, &mut out);
            out
        };
        assert_eq!(tops.len(), s.unwatched_subtrees);
        assert!(tops
            .iter()
            .all(|h| matches!(h, Hint::Rescan(p) if !p.as_os_str().is_empty())));
        // A new directory at the limit is reported at once and then periodically.
        fs.borrow_mut().mkdir("/r/n");
        let now2 = now + INTERVAL;
        assert_eq!(drain(&mut e, &fs, now2), vec![rescan("n")]);
        // Free room: every unwatched directory gets its watch at the next interval.
        fs.borrow_mut().limit = None;
        e.cfg.max_watches = None;
        let mut out = Vec::new();
        e.on_tick(now2 + INTERVAL, &mut out);
        assert!(out.contains(&rescan("n")), "{out:?}");
        let s = e.stats();
        assert_eq!(
            (s.watched_dirs, s.unwatched_subtrees, s.limit_reached),
            (8, 0, false)
        );
        assert_eq!(e.next_deadline(), None);
    }
}

#[test]
fn an_unwatchable_root_is_rescanned_whole_and_its_removal_noticed() {
    let fs = Fs::new();
    tree(&fs, &["a"]);
    let (mut e, now) = engine(&fs, Some(0));
    assert_eq!(e.stats().watched_dirs, 0);
    let mut out = Vec::new();
    e.on_tick(now + INTERVAL, &mut out);
    assert_eq!(out, vec![rescan("")]);
    fs.borrow_mut().paths.remove(Path::new("/r"));
    e.on_tick(now + INTERVAL * 2, &mut out);
    assert_eq!(out, vec![rescan(""), Hint::RootGone]);
}

#[test]
fn a_missing_root_is_a_clear_error() {
    let fs = Fs::new();
    let cfg = EngineConfig {
        root: p("/nope"),
        scan_interval: INTERVAL,
        ignore: ignore_ign(),
        max_watches: None,
        pair_window: WINDOW,
    };
    let err = Engine::new(FakeKernel(fs), cfg, Instant::now())
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nope"), "{err}");
}

// ---- the model test ----

/// splitmix64: a seeded stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

fn rel(abs: &Path) -> Option<PathBuf> {
    abs.strip_prefix("/r").ok().map(Path::to_path_buf)
}

fn ignored(rel: &Path) -> bool {
    rel.components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with("ign"))
}

/// Paths (relative to the root, final names) whose state changed this round.
#[derive(Default)]
struct Dirty(Vec<PathBuf>);

impl Dirty {
    fn mark(&mut self, abs: &Path) {
        if let Some(r) = rel(abs) {
            if !ignored(&r) {
                self.0.push(r);
            }
        }
    }

    fn rewrite(&mut self, from: &Path, to: &Path) {
        for d in &mut self.0 {
            if let Ok(rest) = d.strip_prefix(from) {
                *d = to.join(rest);
            }
        }
    }
}

/// One random operation on the filesystem, recorded in `dirty`.
fn trace_on() -> bool {
    std::env::var_os("UPHOLD_WATCH_TRACE").is_some()
}

fn random_op(rng: &mut Rng, fs: &mut Fs, dirty: &mut Dirty) {
    let before = fs.queue.len();
    random_op_inner(rng, fs, dirty);
    if trace_on() && fs.queue.len() > before {
        eprintln!("  op -> {:?}", &fs.queue[before..]);
    }
}

fn random_op_inner(rng: &mut Rng, fs: &mut Fs, dirty: &mut Dirty) {
    let dirs: Vec<PathBuf> = fs
        .paths
        .keys()
        .filter(|k| fs.dir_exists(k) && k.components().count() <= 4)
        .cloned()
        .collect();
    let entries: Vec<PathBuf> = fs
        .paths
        .keys()
        .filter(|k| k.as_path() != Path::new("/r") && k.as_path() != Path::new("/out"))
        .cloned()
        .collect();
    let names = ["a", "b", "c", "ign"];
    match rng.below(10) {
        0..=2 => {
            let d = rng.pick(&dirs).join(rng.pick(&names));
            if !fs.exists(&d) {
                fs.mkdir(d.to_str().unwrap());
                dirty.mark(&d);
            }
        }
        3..=5 => {
            let f = rng.pick(&dirs).join(rng.pick(&["f", "g"]));
            if !fs.exists(&f) || !fs.dir_exists(&f) {
                fs.touch(f.to_str().unwrap());
                dirty.mark(&f);
            }
        }
        6 => {
            if !entries.is_empty() {
                let x = rng.pick(&entries);
                for k in fs.below(&x) {
                    dirty.mark(&k);
                }
                dirty.mark(&x);
                fs.remove(&x);
            }
        }
        _ => {
            if entries.is_empty() {
                return;
            }
            let from = rng.pick(&entries);
            let to = rng.pick(&dirs).join(rng.pick(&["a", "b", "f", "ign", "m"]));
            if fs.exists(&to) || to.starts_with(&from) {
                return;
            }
            let (rf, rt) = (rel(&from), rel(&to));
            let from_in = rf.as_ref().is_some_and(|r| !ignored(r));
            let to_in = rt.as_ref().is_some_and(|r| !ignored(r));
            if from_in && to_in {
                dirty.rewrite(rf.as_ref().unwrap(), rt.as_ref().unwrap());
                dirty.mark(&from);
            } else if from_in {
                dirty.mark(&from);
            }
            fs.rename_path(&from, &to);
            if to_in {
                dirty.mark(&to);
                if !from_in {
                    for k in fs.below(&to) {
                        dirty.mark(&k);
                    }
                }
            }
        }
    }
}

enum Cover {
    Exact(PathBuf),
    Subtree(PathBuf),
    Changed(PathBuf),
}

/// What the hints of a round cover, with earlier paths carried through later
/// renames (as a consumer holding hints must).
fn coverage(hints: &[Hint]) -> Vec<Cover> {
    let mut items: Vec<Cover> = Vec::new();
    for h in hints {
        match h {
            Hint::Changed(q) => items.push(Cover::Changed(q.clone())),
            Hint::Rescan(q) => items.push(Cover::Subtree(q.clone())),
            Hint::Renamed { from, to, .. } => {
                for item in &mut items {
                    let (Cover::Exact(q) | Cover::Subtree(q) | Cover::Changed(q)) = item;
                    if let Ok(rest) = q.strip_prefix(from) {
                        *q = to.join(rest);
                    }
                }
                items.push(Cover::Exact(from.clone()));
                items.push(Cover::Exact(to.clone()));
            }
            Hint::RootGone => panic!("the model never removes the root"),
        }
    }
    items
}

fn covered(items: &[Cover], fs: &Fs, d: &Path) -> bool {
    items.iter().any(|item| match item {
        Cover::Exact(q) => q == d,
        Cover::Subtree(q) => d.starts_with(q),
        // A changed path that is no directory now stands for everything that was
        // below it (the consumer removes that on the target).
        Cover::Changed(q) => {
            q == d || (d.starts_with(q) && !fs.dir_exists(&Path::new("/r").join(q)))
        }
    })
}

fn check_map(e: &Engine<FakeKernel>, fs: &Fs) -> Result<(), String> {
    let snap = snapshot(e);
    let engine_wds: HashSet<i32> = snap.values().flatten().copied().collect();
    let kernel_wds: HashSet<i32> = fs.ino_of.keys().copied().collect();
    if engine_wds != kernel_wds {
        return Err(format!(
            "engine watches {engine_wds:?} != kernel watches {kernel_wds:?}; map {snap:?}"
        ));
    }
    for (path, wd) in &snap {
        let abs = Path::new("/r").join(path);
        match wd {
            Some(wd) => {
                let actual = fs.path_of(fs.ino_of[wd]);
                if actual.as_deref() != Some(abs.as_path()) {
                    return Err(format!("{path:?} has wd {wd} which watches {actual:?}"));
                }
            }
            None => {
                if !fs.dir_exists(&abs) {
                    return Err(format!("unwatched top {path:?} no longer exists"));
                }
            }
        }
    }
    for abs in fs.below(Path::new("/r")) {
        let r = rel(&abs).unwrap();
        if !fs.dir_exists(&abs) || ignored(&r) {
            continue;
        }
        let ok = r
            .ancestors()
            .any(|a| snap.get(a).is_some_and(Option::is_none))
            || snap.get(&r).is_some_and(Option::is_some);
        if !ok {
            return Err(format!(
                "directory {r:?} is neither watched nor below an unwatched top"
            ));
        }
    }
    Ok(())
}

fn run_model(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let fs = Fs::new();
    let kernel_limit = rng.chance(20).then(|| 2 + rng.below(6));
    let hook = rng.chance(20).then(|| 2 + rng.below(6));
    fs.borrow_mut().limit = kernel_limit;
    let (mut e, start) = engine(&fs, hook);
    let mut now = start;
    for round in 0..25 {
        let mut dirty = Dirty::default();
        for _ in 0..1 + rng.below(8) {
            random_op(&mut rng, &mut fs.borrow_mut(), &mut dirty);
        }
        if rng.chance(5) {
            let mut f = fs.borrow_mut();
            let keep = rng.below(f.queue.len() + 1);
            f.queue.truncate(keep);
            f.queue.push(Ev {
                wd: -1,
                mask: libc::IN_Q_OVERFLOW,
                cookie: 0,
                name: None,
            });
        }
        let mut hints = Vec::new();
        loop {
            let evs = std::mem::take(&mut fs.borrow_mut().queue);
            if evs.is_empty() {
                break;
            }
            let mut at = 0;
            while at < evs.len() {
                let n = 1 + rng.below(evs.len() - at);
                if trace_on() {
                    eprintln!("feed {:?}", &evs[at..at + n]);
                }
                feed(&mut e, &evs[at..at + n], now, &mut hints);
                at += n;
            }
        }
        now += INTERVAL;
        e.on_tick(now, &mut hints);
        hints.extend(drain(&mut e, &fs, now));
        let f = fs.borrow();
        if trace_on() {
            eprintln!(
                "round {round} hints {hints:?}\nmap {:?}\nfs {:?}",
                snapshot(&e),
                f.paths
            );
        }
        let items = coverage(&hints);
        for d in &dirty.0 {
            if !covered(&items, &f, d) {
                return Err(format!(
                    "round {round}: change at {d:?} not covered by {hints:?}"
                ));
            }
        }
        check_map(&e, &f).map_err(|m| format!("round {round}: {m}"))?;
    }
    Ok(())
}

#[test]
fn model_every_change_is_covered_and_the_map_matches_the_kernel() {
    let seeds: u64 = std::env::var("UPHOLD_WATCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("UPHOLD_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        let result = std::panic::catch_unwind(|| run_model(seed));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => panic!("seed {seed}: {msg}"),
            Err(_) => panic!("seed {seed}: the engine panicked"),
        }
    }
}
