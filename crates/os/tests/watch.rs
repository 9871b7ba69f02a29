//! The tree watcher against real inotify on temporary directories: every test
//! waits for hints with a deadline, and checks what must not be reported by
//! waiting for a later marker hint first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;
use uphold_os::watch::{Hint, TreeWatcher, WatchBackend, WatchOptions};

const WAIT: Duration = Duration::from_secs(10);

struct Hints {
    rx: Receiver<Vec<Hint>>,
    seen: Vec<Hint>,
}

impl Hints {
    fn new(rx: Receiver<Vec<Hint>>) -> Hints {
        Hints {
            rx,
            seen: Vec::new(),
        }
    }

    /// Collects hints until `pred` holds on all seen so far.
    async fn until(&mut self, what: &str, pred: impl Fn(&[Hint]) -> bool) {
        self.until_within(what, WAIT, pred).await
    }

    async fn until_within(&mut self, what: &str, limit: Duration, pred: impl Fn(&[Hint]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !pred(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.seen.extend(batch),
                Ok(None) => panic!(
                    "channel closed while waiting for {what}; seen {:?}",
                    self.seen
                ),
                Err(_) => panic!("timed out waiting for {what}; seen {:?}", self.seen),
            }
        }
    }

    /// Waits for `Changed(marker)` after touching it, so everything the watcher
    /// made of earlier events has been received; returns all hints before it.
    async fn settle(&mut self, root: &Path, marker: &str) -> Vec<Hint> {
        touch(&root.join(marker));
        let want = Hint::Changed(PathBuf::from(marker));
        self.until(&format!("marker {marker}"), |h| h.contains(&want))
            .await;
        let at = self.seen.iter().position(|h| *h == want).unwrap();
        self.seen[..at].to_vec()
    }

    /// Waits for the channel to close.
    async fn closed(&mut self, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.seen.extend(batch),
                Ok(None) => return,
                Err(_) => panic!(
                    "channel still open waiting for {what}; seen {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// Whether a change at `path` is reported: by name, as a rename target, or by a
/// rescan of it or an ancestor.
fn covered(hints: &[Hint], path: &Path) -> bool {
    hints.iter().any(|h| match h {
        Hint::Changed(p) => p == path,
        Hint::Renamed { to, .. } => to == path,
        Hint::Rescan(dir) => path.starts_with(dir),
        Hint::RootGone => false,
    })
}

fn touch(path: &Path) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(b"x").unwrap();
}

fn changed(p: &str) -> Hint {
    Hint::Changed(PathBuf::from(p))
}

fn opts(root: &Path) -> WatchOptions {
    let mut o = WatchOptions::new(root);
    o.backend = WatchBackend::Inotify;
    o
}

fn start(o: WatchOptions) -> (TreeWatcher, Hints) {
    let (w, rx) = TreeWatcher::start(o).unwrap();
    (w, Hints::new(rx))
}

#[tokio::test]
async fn files_created_right_after_mkdir_are_never_missed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, mut hints) = start(opts(root));
    const DIRS: usize = 150;
    let mut files = Vec::new();
    for i in 0..DIRS {
        let d = root.join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        for j in 0..5 {
            touch(&d.join(format!("f{j}")));
            files.push(PathBuf::from(format!("d{i}/f{j}")));
        }
        fs::create_dir(d.join("sub")).unwrap();
        for j in 0..3 {
            touch(&d.join("sub").join(format!("g{j}")));
            files.push(PathBuf::from(format!("d{i}/sub/g{j}")));
        }
    }
    hints
        .until("every file covered", |h| {
            files.iter().all(|f| covered(h, f))
        })
        .await;
    // Every new directory got its watch: a later file is reported by name.
    let before = hints.seen.len();
    for i in 0..DIRS {
        touch(&root.join(format!("d{i}/sub/late")));
    }
    hints
        .until("late files by name", |h| {
            (0..DIRS).all(|i| h[before..].contains(&changed(&format!("d{i}/sub/late"))))
        })
        .await;
    assert_eq!(w.stats().watched_dirs, 1 + 2 * DIRS);
    assert_eq!(w.stats().unwatched_subtrees, 0);
}

#[tokio::test]
async fn a_file_rename_is_one_renamed_hint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("x")).unwrap();
    touch(&root.join("a"));
    let (_w, mut hints) = start(opts(root));
    fs::rename(root.join("a"), root.join("x/b")).unwrap();
    let want = Hint::Renamed {
        from: "a".into(),
        to: "x/b".into(),
        is_dir: false,
    };
    hints.until("Renamed a -> x/b", |h| h.contains(&want)).await;
    let rest = hints.settle(root, "marker").await;
    assert_eq!(rest, vec![want], "nothing but the rename");
}

#[tokio::test]
async fn a_renamed_directory_keeps_its_watches_under_the_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("d/s/t")).unwrap();
    touch(&root.join("d/s/t/old"));
    let (w, mut hints) = start(opts(root));
    let watched = w.stats().watched_dirs;
    fs::rename(root.join("d"), root.join("e")).unwrap();
    touch(&root.join("e/s/t/new"));
    hints
        .until("new file under the new name", |h| {
            h.contains(&changed("e/s/t/new"))
        })
        .await;
    let want = Hint::Renamed {
        from: "d".into(),
        to: "e".into(),
        is_dir: true,
    };
    assert_eq!(hints.seen[0], want, "{:?}", hints.seen);
    assert!(
        !hints.seen.iter().any(|h| matches!(h, Hint::Rescan(_))),
        "a rename needs no rescan: {:?}",
        hints.seen
    );
    assert_eq!(w.stats().watched_dirs, watched);
}

#[tokio::test]
async fn directories_moved_in_are_watched_and_moved_out_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("leaving/sub")).unwrap();
    fs::create_dir_all(outside.join("coming/sub")).unwrap();
    touch(&outside.join("coming/sub/f"));
    touch(&outside.join("file"));
    let (w, mut hints) = start(opts(&root));
    assert_eq!(w.stats().watched_dirs, 3);

    fs::rename(outside.join("coming"), root.join("coming")).unwrap();
    fs::rename(outside.join("file"), root.join("file")).unwrap();
    hints
        .until("moved-in dir and file", |h| {
            h.contains(&Hint::Rescan("coming".into())) && h.contains(&changed("file"))
        })
        .await;
    touch(&root.join("coming/sub/new"));
    hints
        .until("file in moved-in subdir", |h| {
            h.contains(&changed("coming/sub/new"))
        })
        .await;
    assert_eq!(w.stats().watched_dirs, 5);

    fs::rename(root.join("leaving"), outside.join("leaving")).unwrap();
    hints
        .until("moved out", |h| h.contains(&changed("leaving")))
        .await;
    let after = hints.seen.len();
    touch(&outside.join("leaving/sub/ghost"));
    fs::create_dir(outside.join("leaving/sub/ghostdir")).unwrap();
    let _ = hints.settle(&root, "marker").await;
    assert!(
        !hints.seen[after..]
            .iter()
            .any(|h| format!("{h:?}").contains("leaving")),
        "no hints from outside the tree: {:?}",
        &hints.seen[after..]
    );
    assert_eq!(w.stats().watched_dirs, 3);
}

#[tokio::test]
async fn deletes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("d/s")).unwrap();
    touch(&root.join("d/s/f"));
    touch(&root.join("top"));
    let (w, mut hints) = start(opts(root));
    fs::remove_file(root.join("top")).unwrap();
    fs::remove_dir_all(root.join("d")).unwrap();
    hints
        .until("deletes", |h| {
            ["top", "d/s/f", "d/s", "d"]
                .iter()
                .all(|p| h.contains(&changed(p)))
        })
        .await;
    let _ = hints.settle(root, "marker").await;
    assert_eq!(w.stats().watched_dirs, 1);
}

#[tokio::test]
async fn excluded_paths_are_neither_watched_nor_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("cache/deep")).unwrap();
    let mut o = opts(root);
    o.ignore = Arc::new(|p: &Path, _| {
        p.file_name()
            .is_some_and(|n| n == "cache" || n.to_string_lossy().ends_with(".tmp"))
    });
    let (w, mut hints) = start(o);
    assert_eq!(w.stats().watched_dirs, 1);
    touch(&root.join("cache/deep/x"));
    touch(&root.join("upload.tmp"));
    fs::create_dir(root.join("cache2")).unwrap();
    let before = hints.settle(root, "marker").await;
    assert_eq!(before, vec![Hint::Rescan("cache2".into())]);
}

/// A writer the test can read back, for the warning.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn past_the_watch_limit_changes_are_found_by_periodic_rescans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for a in 0..3 {
        for b in 0..3 {
            for c in 0..3 {
                fs::create_dir_all(root.join(format!("a{a}/b{b}/c{c}"))).unwrap();
            }
        }
    }
    // 1 + 3 + 9 + 27 = 40 directories, 10 watches.
    let mut o = opts(root);
    o.max_watches = Some(10);
    o.scan_interval = Duration::from_millis(300);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let (w, mut hints) = tracing::subscriber::with_default(subscriber, || start(o));
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.matches("watch limit reached").count(), 1, "{log}");
    assert!(log.contains("30 directories in"), "{log}");
    assert!(log.contains("sysctl fs.inotify.max_user_watches="), "{log}");
    let s = w.stats();
    assert_eq!(
        (s.watched_dirs, s.unwatched_dirs, s.limit_reached),
        (10, 30, true),
        "{s:?}"
    );

    // A change in every leaf: those in watched directories are reported by name
    // at once, the others by a rescan of their unwatched subtree within about one
    // interval (readdir order decides which are which).
    let leaves: Vec<PathBuf> = (0..27)
        .map(|i| PathBuf::from(format!("a{}/b{}/c{}/file", i / 9, (i / 3) % 3, i % 3)))
        .collect();
    let t0 = Instant::now();
    for leaf in &leaves {
        touch(&root.join(leaf));
    }
    hints
        .until("every leaf change covered", |h| {
            leaves.iter().all(|l| covered(h, l))
        })
        .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(300 * 3), "took {took:?}");
    let by_rescan = |h: &[Hint], l: &Path| {
        h.iter()
            .any(|x| matches!(x, Hint::Rescan(d) if l.starts_with(d) && !d.as_os_str().is_empty()))
    };
    let rescanned: Vec<&PathBuf> = leaves
        .iter()
        .filter(|l| by_rescan(&hints.seen, l))
        .collect();
    assert!(!rescanned.is_empty(), "{:?}", hints.seen);
    assert!(
        !hints.seen.contains(&Hint::Rescan(PathBuf::new())),
        "only the unwatched subtrees are rescanned"
    );
    // And again at the next interval.
    let before = hints.seen.len();
    hints
        .until("the next periodic rescan", |h| {
            rescanned.iter().all(|l| by_rescan(&h[before..], l))
        })
        .await;
    assert_eq!(w.stats().watched_dirs, 10);
}

#[tokio::test]
async fn removing_the_root_reports_root_gone_and_ends_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("d")).unwrap();
    let (w, mut hints) = start(opts(&root));
    fs::remove_dir_all(&root).unwrap();
    hints
        .until("RootGone", |h| h.contains(&Hint::RootGone))
        .await;
    hints.closed("end after RootGone").await;
    assert_eq!(
        hints.seen.iter().filter(|h| **h == Hint::RootGone).count(),
        1
    );
    assert!(w.stats().root_gone);
}

#[tokio::test]
async fn moving_the_root_away_reports_root_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let (_w, mut hints) = start(opts(&root));
    fs::rename(&root, dir.path().join("elsewhere")).unwrap();
    hints
        .until("RootGone", |h| h.contains(&Hint::RootGone))
        .await;
    hints.closed("end after RootGone").await;
}

#[tokio::test]
async fn a_stalled_consumer_gets_a_full_rescan_after_the_kernel_queue_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, mut hints) = start(opts(root));
    // Alternating files defeat the kernel's merging of identical events. Nothing
    // is received meanwhile, so the channel fills, the watcher stops reading, and
    // the kernel queue overflows. The channel and one batch in hand hold at most
    // 17 * 4 reads of 64 KiB of 32-byte events (139,264), the kernel queue
    // max_queued_events (16,384 by default): 400,000 events are more than both.
    let max_queued: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let events = 2 * (139_264 + max_queued);
    let mut a = fs::File::create(root.join("a")).unwrap();
    let mut b = fs::File::create(root.join("b")).unwrap();
    for _ in 0..events / 2 {
        a.write_all(b"x").unwrap();
        b.write_all(b"y").unwrap();
    }
    hints
        .until("Rescan of the root", |h| {
            h.contains(&Hint::Rescan(PathBuf::new()))
        })
        .await;
    assert!(w.stats().overflows >= 1, "{:?}", w.stats());
    // Watching goes on after the rebuild.
    fs::create_dir(root.join("after")).unwrap();
    touch(&root.join("after/f"));
    hints
        .until("events after the overflow", |h| {
            covered(h, Path::new("after/f"))
        })
        .await;
}

#[tokio::test]
async fn scan_only_rescans_the_root_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut o = WatchOptions::new(&root);
    o.backend = WatchBackend::ScanOnly;
    o.scan_interval = Duration::from_millis(100);
    let (w, mut hints) = start(o);
    hints
        .until("two rescans", |h| {
            h.iter()
                .filter(|x| **x == Hint::Rescan(PathBuf::new()))
                .count()
                >= 2
        })
        .await;
    let s = w.stats();
    assert_eq!((s.backend, s.watched_dirs), (WatchBackend::ScanOnly, 0));
    fs::remove_dir(&root).unwrap();
    hints
        .until("RootGone", |h| h.contains(&Hint::RootGone))
        .await;
    hints.closed("end after RootGone").await;
}

#[tokio::test]
async fn auto_uses_inotify() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _rx) = TreeWatcher::start(WatchOptions::new(dir.path())).unwrap();
    assert_eq!(w.stats().backend, WatchBackend::Inotify);
}

#[test]
fn bad_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    touch(&file);
    let cases: Vec<(WatchOptions, &str)> = vec![
        (WatchOptions::new("relative/dir"), "not an absolute path"),
        (WatchOptions::new(dir.path().join("missing")), "missing"),
        (WatchOptions::new(&file), "not a directory"),
        (
            WatchOptions {
                scan_interval: Duration::ZERO,
                ..WatchOptions::new(dir.path())
            },
            "scan_interval",
        ),
        (
            WatchOptions {
                backend: WatchBackend::Fanotify,
                ..WatchOptions::new(dir.path())
            },
            "fanotify backend not available",
        ),
    ];
    for (o, want) in cases {
        let err = TreeWatcher::start(o.clone()).expect_err("an error");
        assert!(err.to_string().contains(want), "{o:?}: {err}");
    }
}

#[tokio::test]
async fn dropping_the_watcher_stops_it_even_with_a_full_channel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, mut hints) = start(opts(root));
    // Fill the channel: one batch per directory created, waiting for each to be
    // sent so they are not merged.
    for i in 0..40 {
        fs::create_dir(root.join(format!("d{i}"))).unwrap();
        let deadline = Instant::now() + WAIT;
        while w.stats().batches_sent < (i + 1).min(17) {
            assert!(
                Instant::now() < deadline,
                "batch {i} not sent: {:?}",
                w.stats()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let t0 = Instant::now();
    drop(w);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t0.elapsed()
    );
    hints.closed("channel end after drop").await;
    assert!(!hints.seen.is_empty());
}

fn make_tree(root: &Path, dirs: usize, files_per_dir: usize) {
    for i in 0..dirs {
        let d = root.join(format!("p{}/d{i}", i % 50));
        fs::create_dir_all(&d).unwrap();
        for j in 0..files_per_dir {
            fs::File::create(d.join(format!("f{j}"))).unwrap();
        }
    }
}

fn rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn timed_start(root: &Path) -> (Duration, usize) {
    let rss = rss_kib();
    let t0 = Instant::now();
    let (w, _rx) = TreeWatcher::start(opts(root)).unwrap();
    let took = t0.elapsed();
    eprintln!(
        "process RSS grew by {} KiB during start",
        rss_kib().saturating_sub(rss)
    );
    (took, w.stats().watched_dirs)
}

#[test]
fn startup_walks_only_directories_and_is_quick() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), 500, 20);
    let (took, watched) = timed_start(dir.path());
    eprintln!("start on 500 dirs / 10,000 files: {took:?}");
    assert_eq!(watched, 1 + 50 + 500);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// The start-up case: run with `--ignored` to print the figure.
#[test]
#[ignore = "builds 200,000 files; run by hand for the figure"]
fn startup_on_200k_files() {
    let dir = tempfile::tempdir().unwrap();
    make_tree(dir.path(), 2000, 100);
    let (took, watched) = timed_start(dir.path());
    eprintln!("start on 2,000 dirs / 200,000 files: {took:?}, {watched} watches");
}
