//! Recursive watching of a directory tree for file replication: [`TreeWatcher`]
//! turns kernel events into [`Hint`]s ("go look at this path") delivered in batches
//! on a bounded channel. Hints are conservative: more than needed is fine, a change
//! without a hint covering it would be a bug.
//!
//! - `engine.rs`: the pure translation of raw events into hints, with the map of
//!   watched directories (`tree.rs`);
//! - `inotify.rs`: the kernel side (inotify instance, `d_type` directory listing);
//! - `coalesce.rs`: dropping duplicate hints within a batch;
//! - this file: the public types and the thread that reads, decides and sends.
//!
//! The watcher owns one thread. It reads the inotify fd only when the channel has
//! room, so a slow consumer makes the kernel queue overflow, which is reported as
//! `Rescan("")`: memory stays bounded and nothing is lost.
//!
//! What inotify cannot see, and so neither can this: writes through a hard link
//! from outside the tree, writes through a shared mmap until the file is closed,
//! and a filesystem mounted over a directory inside the tree (its unmount is seen).
//! A directory visible at two paths (a bind mount) is watched at one and rescanned
//! periodically at the other.

mod coalesce;
mod engine;
mod inotify;
mod tree;

use engine::{Engine, EngineConfig, EngineStats};
use inotify::InotifyKernel;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Where change notifications come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchBackend {
    /// The best available: inotify today (see [`WatchBackend::Fanotify`]), and
    /// periodic scanning if inotify cannot even be initialised.
    Auto,
    /// One inotify watch per directory.
    Inotify,
    /// Whole-filesystem fanotify marks. Not implemented: `start` fails with
    /// "fanotify backend not available".
    Fanotify,
    /// No kernel notifications: `Rescan("")` every `scan_interval`.
    ScanOnly,
}

/// Excludes a path from watching: called with the path relative to the root and
/// whether it is a directory; true = excluded (never watched, no hints).
pub type IgnoreFn = Arc<dyn Fn(&Path, bool) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct WatchOptions {
    /// The tree to watch; absolute. It may be reached through a symlink; below it
    /// symlinks are never followed.
    pub root: PathBuf,
    pub backend: WatchBackend,
    /// How often subtrees that could not be watched are reported for rescanning
    /// (and, with [`WatchBackend::ScanOnly`], the whole tree).
    pub scan_interval: Duration,
    pub ignore: IgnoreFn,
    /// Test hook: behave as if the kernel's watch limit were this many watches.
    pub max_watches: Option<usize>,
}

impl WatchOptions {
    /// Defaults: `Auto`, a 10 s scan interval, nothing excluded, the real limit.
    pub fn new(root: impl Into<PathBuf>) -> WatchOptions {
        WatchOptions {
            root: root.into(),
            backend: WatchBackend::Auto,
            scan_interval: Duration::from_secs(10),
            ignore: Arc::new(|_: &Path, _: bool| false),
            max_watches: None,
        }
    }
}

impl fmt::Debug for WatchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchOptions")
            .field("root", &self.root)
            .field("backend", &self.backend)
            .field("scan_interval", &self.scan_interval)
            .field("max_watches", &self.max_watches)
            .finish_non_exhaustive()
    }
}

/// What may have changed, relative to the root. A hint says where to look, not
/// what is there now: the consumer compares the current state itself.
///
/// Paths are as they were when the event happened, in order. A consumer that holds
/// hints before acting must carry earlier paths through later `Renamed` hints
/// (`Changed("a/f")` then `Renamed{a -> b}` means look at `b/f`), and should treat a
/// `Renamed` whose `from` its target does not have as `to` being new (for a
/// directory: scan it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hint {
    /// This path was created, modified, had its attributes changed or was deleted
    /// (or moved out of the tree, or moved in as a file). For a directory it means
    /// the entry itself; if it is no longer a directory, all that was below it is
    /// gone as well.
    Changed(PathBuf),
    /// A rename with both ends inside the tree, paired by the kernel's cookie (or
    /// recognised by inode during a walk). For a directory, everything below moved
    /// with it and keeps being watched under the new name.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        is_dir: bool,
    },
    /// This directory ("" = the root), itself and anything below it, may have
    /// changed: new directories (watched before this is sent), queue overflows,
    /// subtrees past the watch limit (every scan interval).
    Rescan(PathBuf),
    /// The root was deleted, moved away or unmounted (or replaced while events were
    /// lost). Final: the watcher stops and the channel closes after this batch.
    RootGone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStats {
    /// The backend in use (never `Auto`).
    pub backend: WatchBackend,
    /// Directories with a kernel watch.
    pub watched_dirs: usize,
    /// Tops of subtrees that could not be watched, reported as `Rescan` every
    /// scan interval.
    pub unwatched_subtrees: usize,
    /// Directories in those subtrees, as counted when each became unwatched.
    pub unwatched_dirs: usize,
    /// The watch limit (kernel or `max_watches`) was hit and not all directories are
    /// watched again yet.
    pub limit_reached: bool,
    /// Kernel queue overflows (each reported as `Rescan("")`).
    pub overflows: u64,
    pub hints_sent: u64,
    pub batches_sent: u64,
    pub root_gone: bool,
}

/// Batches the channel holds before the watcher stops reading the kernel queue.
const CHANNEL_CAPACITY: usize = 16;
/// One read of the inotify fd.
const READ_BUFFER: usize = 64 * 1024;
/// Reads merged into one batch when events keep coming.
const READS_PER_BATCH: usize = 4;
/// How long a MOVED_FROM at the end of a read waits for its MOVED_TO in the next.
const PAIR_WINDOW: Duration = Duration::from_millis(5);

/// A running watcher. Dropping it stops its thread and closes the inotify fd; the
/// hint channel then closes.
pub struct TreeWatcher {
    stats: Arc<Mutex<WatchStats>>,
    stop_sock: Option<UnixStream>,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for TreeWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TreeWatcher")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The thread's ends of the stop signal: a socket for poll, a oneshot for a send
/// that waits for room in the channel.
struct Stop {
    sock: UnixStream,
    rx: oneshot::Receiver<()>,
}

impl TreeWatcher {
    /// Watches `opts.root`. With inotify this walks every directory and adds its
    /// watch before returning (blocking: call it from `spawn_blocking` in async
    /// code), so a full scan made after `start` returns misses nothing. No hint
    /// is sent for the initial state.
    pub fn start(opts: WatchOptions) -> io::Result<(TreeWatcher, mpsc::Receiver<Vec<Hint>>)> {
        if !opts.root.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("watch root {} is not an absolute path", opts.root.display()),
            ));
        }
        if opts.scan_interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "scan_interval for watch root {} must be greater than zero",
                    opts.root.display()
                ),
            ));
        }
        let meta = std::fs::metadata(&opts.root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot watch {}: {e}", opts.root.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot watch {}: not a directory", opts.root.display()),
            ));
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (sock, thread_sock) = UnixStream::pair()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let stop = Stop {
            sock: thread_sock,
            rx: stop_rx,
        };
        let instance_error = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create an inotify instance for {}: {e} \
                     (limit: fs.inotify.max_user_instances)",
                    opts.root.display()
                ),
            )
        };
        let kernel = match opts.backend {
            WatchBackend::Fanotify => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "fanotify backend not available: not implemented yet; use the inotify \
                         backend for {}",
                        opts.root.display()
                    ),
                ))
            }
            WatchBackend::ScanOnly => None,
            WatchBackend::Inotify => Some(InotifyKernel::new().map_err(instance_error)?),
            WatchBackend::Auto => match InotifyKernel::new() {
                Ok(kernel) => Some(kernel),
                Err(e) => {
                    tracing::warn!(
                        "{}; falling back to rescanning the whole tree every {:?}",
                        instance_error(e),
                        opts.scan_interval
                    );
                    None
                }
            },
        };
        let backend = match kernel {
            Some(_) => WatchBackend::Inotify,
            None => WatchBackend::ScanOnly,
        };
        let stats = Arc::new(Mutex::new(WatchStats {
            backend,
            watched_dirs: 0,
            unwatched_subtrees: 0,
            unwatched_dirs: 0,
            limit_reached: false,
            overflows: 0,
            hints_sent: 0,
            batches_sent: 0,
            root_gone: false,
        }));
        let thread_stats = stats.clone();
        let thread = match kernel {
            None => {
                let runner = ScanRunner {
                    root: opts.root.clone(),
                    identity: (meta.dev(), meta.ino()),
                    interval: opts.scan_interval,
                    tx,
                    stop,
                    stats: thread_stats,
                };
                spawn(move || runner.run())?
            }
            Some(kernel) => {
                let cfg = EngineConfig {
                    root: opts.root.clone(),
                    scan_interval: opts.scan_interval,
                    ignore: opts.ignore.clone(),
                    max_watches: opts.max_watches,
                    pair_window: PAIR_WINDOW,
                };
                let engine = Engine::new(kernel, cfg, Instant::now())?;
                publish(&thread_stats, engine.stats(), 0);
                let runner = InotifyRunner {
                    engine,
                    tx,
                    stop,
                    stats: thread_stats,
                };
                spawn(move || runner.run())?
            }
        };
        Ok((
            TreeWatcher {
                stats,
                stop_sock: Some(sock),
                stop_tx: Some(stop_tx),
                thread: Some(thread),
            },
            rx,
        ))
    }

    pub fn stats(&self) -> WatchStats {
        match self.stats.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Drop for TreeWatcher {
    fn drop(&mut self) {
        // Closing our ends wakes the thread wherever it waits (poll or send).
        self.stop_sock.take();
        self.stop_tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("uphold-watch".to_owned())
        .spawn(f)
}

fn publish(stats: &Mutex<WatchStats>, e: EngineStats, batch_len: usize) {
    let mut s = match stats.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    s.watched_dirs = e.watched_dirs;
    s.unwatched_subtrees = e.unwatched_subtrees;
    s.unwatched_dirs = e.unwatched_dirs;
    s.limit_reached = e.limit_reached;
    s.overflows = e.overflows;
    s.root_gone = e.root_gone;
    if batch_len > 0 {
        s.hints_sent += batch_len as u64;
        s.batches_sent += 1;
    }
}

/// Milliseconds until `deadline`, rounded up so that poll does not wake just
/// before it and spin.
fn timeout_until(deadline: Option<Instant>, now: Instant) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(now);
            let ms = left.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

enum Woken {
    Stop,
    Readable,
    Timeout,
}

/// Waits for the inotify fd (if given) to be readable, the stop signal, or the
/// timeout.
fn wait(
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    stop: &UnixStream,
    timeout: PollTimeout,
) -> io::Result<Woken> {
    let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
    if let Some(fd) = fd {
        fds.push(PollFd::new(fd, PollFlags::POLLIN));
    }
    match nix::poll::poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(Woken::Timeout),
        Err(e) => return Err(e.into()),
    }
    if fds[0].any().unwrap_or(true) {
        return Ok(Woken::Stop);
    }
    if fds.get(1).is_some_and(|f| f.any().unwrap_or(false)) {
        return Ok(Woken::Readable);
    }
    Ok(Woken::Timeout)
}

/// Sends one batch, waiting for room in the channel unless told to stop. False
/// when the watcher should end (stopped, or nobody listens any more).
fn deliver(
    tx: &mpsc::Sender<Vec<Hint>>,
    hints: Vec<Hint>,
    stop: &mut oneshot::Receiver<()>,
) -> bool {
    match tx.try_send(hints) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(hints)) => futures::executor::block_on(async {
            tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(hints);
                        true
                    }
                    Err(_) => false,
                },
                _ = stop => false,
            }
        }),
    }
}

struct InotifyRunner {
    engine: Engine<InotifyKernel>,
    tx: mpsc::Sender<Vec<Hint>>,
    stop: Stop,
    stats: Arc<Mutex<WatchStats>>,
}

impl InotifyRunner {
    fn run(mut self) {
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let timeout = timeout_until(self.engine.next_deadline(), Instant::now());
            let woken = match wait(Some(self.engine.kernel().fd()), &self.stop.sock, timeout) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("tree watcher cannot poll its inotify fd: {e}; stopping");
                    return;
                }
            };
            let mut hints = Vec::new();
            match woken {
                Woken::Stop => return,
                Woken::Timeout => {}
                Woken::Readable => {
                    for _ in 0..READS_PER_BATCH {
                        match self.engine.kernel_mut().read_events(&mut buf) {
                            Ok(Some(events)) => {
                                self.engine.on_events(&events, Instant::now(), &mut hints)
                            }
                            Ok(None) => break,
                            Err(e) => {
                                // Not expected from inotify; say where to look and
                                // leave the consumer a full rescan.
                                tracing::error!(
                                    "tree watcher cannot read its inotify fd: {e}; stopping"
                                );
                                hints.push(Hint::Rescan(PathBuf::new()));
                                let _ = deliver(&self.tx, hints, &mut self.stop.rx);
                                return;
                            }
                        }
                    }
                }
            }
            self.engine.on_tick(Instant::now(), &mut hints);
            coalesce::coalesce(&mut hints);
            publish(&self.stats, self.engine.stats(), hints.len());
            if !hints.is_empty() && !deliver(&self.tx, hints, &mut self.stop.rx) {
                return;
            }
            if self.engine.root_gone() {
                return;
            }
        }
    }
}

/// The backend without kernel watches: the whole tree every interval, and a check
/// that the root is still the same directory.
struct ScanRunner {
    root: PathBuf,
    identity: (u64, u64),
    interval: Duration,
    tx: mpsc::Sender<Vec<Hint>>,
    stop: Stop,
    stats: Arc<Mutex<WatchStats>>,
}

impl ScanRunner {
    fn run(mut self) {
        let mut next = Instant::now() + self.interval;
        loop {
            let now = Instant::now();
            match wait(None, &self.stop.sock, timeout_until(Some(next), now)) {
                Ok(Woken::Stop) | Err(_) => return,
                Ok(_) => {}
            }
            let now = Instant::now();
            if now < next {
                continue;
            }
            next = now + self.interval;
            let same = std::fs::metadata(&self.root)
                .map(|m| m.is_dir() && (m.dev(), m.ino()) == self.identity)
                .unwrap_or(false);
            let hint = if same {
                Hint::Rescan(PathBuf::new())
            } else {
                Hint::RootGone
            };
            {
                let mut s = match self.stats.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                s.hints_sent += 1;
                s.batches_sent += 1;
                s.root_gone = !same;
            }
            if !deliver(&self.tx, vec![hint], &mut self.stop.rx) || !same {
                return;
            }
        }
    }
}
