//! Runs the configured sets on this member. Each set gets a thread of its own (with its
//! own RPC connections, so bulk transfers never delay cluster heartbeats). The thread
//! works out whether this member sends the set — a fixed sender, or whoever runs the
//! set's group right now — and while it does, watches the source and drives one batcher
//! per target; when the group moves away it stops sending and becomes a receiver.

use crate::engine::batcher::{Batcher, Change, LinkState, Outcome};
use crate::path::{Excludes, RelPath};
use crate::receiver::Receiver;
use crate::sender::{hello, run_batch, SenderCounters, SenderSet};
use crate::status::{load, SetStatus, SyncStatus, TargetStatus, WatchStatus};
use crate::transport::{CallError, RpcTransport, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uphold_config::sync::{SyncConfig, SyncDirection, WatchMode};
use uphold_core::{GroupName, Millis, NodeName};
use uphold_os::watch::{Hint, TreeWatcher, WatchBackend, WatchOptions};
use uphold_proto::rpc::{Endpoint, RpcClient};

/// How often a member that does not send checks whether it should.
const ROLE_CHECK: Duration = Duration::from_millis(100);
/// Pause before retrying a set whose source or watcher could not start.
const START_RETRY: Duration = Duration::from_secs(2);
/// Deadline of one request to a target; a transfer chunk is at most 1 MiB.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a group runs on this member right now (started or running, lease held).
pub type GroupActive = Arc<dyn Fn(&GroupName) -> bool + Send + Sync>;

pub struct SyncOptions {
    pub me: NodeName,
    /// Where each member receives (the cluster members' addresses).
    pub addresses: HashMap<NodeName, SocketAddr>,
    pub endpoint: Arc<Endpoint>,
    pub group_active: GroupActive,
    /// Test hook: behave as if the kernel's inotify watch limit were this many watches.
    pub max_watches: Option<usize>,
}

/// Whether this member sends `set` now.
pub fn is_sender(set: &SyncConfig, me: &NodeName, group_active: &GroupActive) -> bool {
    match &set.direction {
        SyncDirection::Fixed(from) => from == me,
        SyncDirection::FollowsGroup(group) => group_active(group),
    }
}

struct SetThread {
    config: SyncConfig,
    stop: watch::Sender<bool>,
    join: Option<std::thread::JoinHandle<()>>,
}

/// The running sets; status and reload.
pub struct SyncService {
    opts: Arc<SyncOptions>,
    threads: Vec<SetThread>,
    statuses: Arc<Mutex<HashMap<String, SetStatus>>>,
    receiver: Arc<Receiver>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService").finish_non_exhaustive()
    }
}

impl SyncService {
    pub fn start(opts: SyncOptions, sets: Vec<SyncConfig>, receiver: Arc<Receiver>) -> Self {
        let mut service = SyncService {
            opts: Arc::new(opts),
            threads: Vec::new(),
            statuses: Arc::default(),
            receiver,
        };
        service.reload(sets);
        service
    }

    /// Applies a new list of sets: changed or removed sets are stopped, new or changed
    /// ones started (a restarted set compares the whole tree once, sending only
    /// differences).
    pub fn reload(&mut self, sets: Vec<SyncConfig>) {
        self.receiver.set_sets(&sets);
        let mut keep = Vec::new();
        for mut t in std::mem::take(&mut self.threads) {
            if sets.contains(&t.config) {
                keep.push(t);
            } else {
                let _ = t.stop.send(true);
                if let Some(join) = t.join.take() {
                    let _ = join.join();
                }
                if let Ok(mut s) = self.statuses.lock() {
                    s.remove(t.config.name.as_str());
                }
            }
        }
        for set in sets {
            if keep.iter().any(|t| t.config == set) {
                continue;
            }
            let (stop, stop_rx) = watch::channel(false);
            let opts = self.opts.clone();
            let statuses = self.statuses.clone();
            let config = set.clone();
            let join = std::thread::Builder::new()
                .name(format!("sync-{}", set.name))
                .spawn(move || set_thread(opts, config, statuses, stop_rx));
            match join {
                Ok(join) => keep.push(SetThread {
                    config: set,
                    stop,
                    join: Some(join),
                }),
                Err(e) => tracing::error!(set = %set.name, "cannot start sync thread: {e}"),
            }
        }
        self.threads = keep;
    }

    pub fn status(&self) -> SyncStatus {
        let mut sets: Vec<SetStatus> = self
            .statuses
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        let c = &self.receiver.counters;
        SyncStatus {
            sets,
            received: crate::status::ReceivedStatus {
                files_written: load(&c.files_written),
                bytes_written: load(&c.bytes_written),
                deletes: load(&c.deletes),
                renames: load(&c.renames),
                refused: load(&c.refused),
            },
        }
    }

    pub fn stop(mut self) {
        for t in &self.threads {
            let _ = t.stop.send(true);
        }
        for t in &mut self.threads {
            if let Some(join) = t.join.take() {
                let _ = join.join();
            }
        }
    }
}

fn set_thread(
    opts: Arc<SyncOptions>,
    set: SyncConfig,
    statuses: Arc<Mutex<HashMap<String, SetStatus>>>,
    stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(set = %set.name, "cannot start the sync runtime: {e}");
            return;
        }
    };
    // The target stays as written: it is resolved on each receiver (`{node}`).
    let mut set = set;
    set.source = set.source_for(&opts.me);
    let name = set.name.as_str().to_string();
    let publish = {
        let statuses = statuses.clone();
        let name = name.clone();
        move |status: SetStatus| {
            if let Ok(mut s) = statuses.lock() {
                s.insert(name.clone(), status);
            }
        }
    };
    runtime.block_on(run_set(opts, set, publish, stop));
}

fn base_status(set: &SyncConfig, role: &str) -> SetStatus {
    SetStatus {
        name: set.name.as_str().to_string(),
        source: set.source.display().to_string(),
        target: set.target.display().to_string(),
        role: role.to_string(),
        direction: match &set.direction {
            SyncDirection::Fixed(n) => format!("member {n}"),
            SyncDirection::FollowsGroup(g) => format!("group {g}"),
        },
        ..SetStatus::default()
    }
}

async fn run_set(
    opts: Arc<SyncOptions>,
    set: SyncConfig,
    publish: impl Fn(SetStatus),
    mut stop: watch::Receiver<bool>,
) {
    if !set.nodes.contains(&opts.me) {
        // Listed in the file for other members; this one takes no part.
        publish(base_status(&set, "not taking part"));
        let _ = stop.changed().await;
        return;
    }
    let rpc = Arc::new(RpcClient::new(opts.endpoint.clone()));
    loop {
        if *stop.borrow() {
            return;
        }
        if !is_sender(&set, &opts.me, &opts.group_active) {
            publish(base_status(&set, "receiver"));
            tokio::select! {
                _ = tokio::time::sleep(ROLE_CHECK) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        tracing::info!(set = %set.name, source = %set.source.display(), "sending");
        match send_while_sender(&opts, &set, &rpc, &publish, &mut stop).await {
            Ok(()) => tracing::info!(set = %set.name, "no longer the sender"),
            Err(e) => {
                tracing::error!(set = %set.name, "{e}");
                let mut status = base_status(&set, "sender");
                status.error = Some(e);
                publish(status);
                tokio::select! {
                    _ = tokio::time::sleep(START_RETRY) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

struct Target {
    node: NodeName,
    transport: RpcTransport,
    counters: SenderCounters,
    changes: mpsc::UnboundedSender<Vec<Change>>,
    shared: Arc<Mutex<TargetStatus>>,
}

fn now_ms() -> Millis {
    uphold_os::monotonic_now_ms()
}

async fn send_while_sender(
    opts: &Arc<SyncOptions>,
    set: &SyncConfig,
    rpc: &Arc<RpcClient>,
    publish: &impl Fn(SetStatus),
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let excludes = Excludes::new(&set.exclude)?;
    match std::fs::metadata(&set.source) {
        Ok(md) if md.is_dir() => {}
        _ => {
            return Err(format!(
                "source {} is missing or not a directory (not mounted?); nothing is sent until it is back",
                set.source.display()
            ))
        }
    }
    let ignore_excludes = excludes.clone();
    let (watcher, mut hints) = TreeWatcher::start(WatchOptions {
        root: set.source.clone(),
        backend: match set.watch {
            WatchMode::Auto => WatchBackend::Auto,
            WatchMode::Inotify => WatchBackend::Inotify,
            WatchMode::Fanotify => WatchBackend::Fanotify,
            WatchMode::Scan => WatchBackend::ScanOnly,
        },
        scan_interval: set.scan_interval,
        ignore: Arc::new(move |path: &std::path::Path, is_dir: bool| {
            RelPath::new(path.as_os_str().as_bytes().to_vec())
                .map(|p| ignore_excludes.is_excluded(&p, is_dir))
                .unwrap_or(true)
        }),
        max_watches: opts.max_watches,
    })
    .map_err(|e| format!("cannot watch {}: {e}", set.source.display()))?;

    let sender_set = Arc::new(SenderSet::new(set, set.source.clone(), excludes.clone()));
    let cancel = Arc::new(AtomicBool::new(false));
    let mut targets = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for node in set.receivers_of(&opts.me) {
        let Some(addr) = opts.addresses.get(node) else {
            continue;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(TargetStatus {
            node: node.to_string(),
            state: "up".into(),
            ..TargetStatus::default()
        }));
        let target = Arc::new(Target {
            node: node.clone(),
            transport: RpcTransport::new(rpc.clone(), node.clone(), *addr, CALL_TIMEOUT),
            counters: SenderCounters::default(),
            changes: tx,
            shared: shared.clone(),
        });
        targets.push(target.clone());
        tasks.spawn(target_loop(
            target,
            sender_set.clone(),
            set.delay,
            set.rescan_interval,
            rx,
            cancel.clone(),
        ));
    }

    let publish_all = |watcher: &TreeWatcher| {
        let mut status = base_status(set, "sender");
        let stats = watcher.stats();
        status.watch = Some(WatchStatus {
            backend: format!("{:?}", stats.backend).to_lowercase(),
            watched_dirs: stats.watched_dirs as u64,
            unwatched_dirs: stats.unwatched_dirs as u64,
            overflows: stats.overflows,
        });
        status.targets = targets
            .iter()
            .map(|t| t.shared.lock().map(|s| s.clone()).unwrap_or_default())
            .collect();
        publish(status);
    };
    let mut tick = tokio::time::interval(ROLE_CHECK);
    let result = loop {
        tokio::select! {
            batch = hints.recv() => {
                let Some(batch) = batch else {
                    break Err("the watcher stopped".to_string());
                };
                let changes: Vec<Change> = batch.into_iter().filter_map(|h| to_change(h, &excludes)).collect();
                if !changes.is_empty() {
                    for t in &targets {
                        let _ = t.changes.send(changes.clone());
                    }
                }
            }
            _ = tick.tick() => {
                publish_all(&watcher);
                if !is_sender(set, &opts.me, &opts.group_active) {
                    break Ok(());
                }
            }
            _ = stop.changed() => break Ok(()),
        }
    };
    cancel.store(true, Ordering::Relaxed);
    tasks.shutdown().await;
    drop(watcher);
    result
}

fn rel(path: &std::path::Path) -> Option<RelPath> {
    RelPath::new(path.as_os_str().as_bytes().to_vec()).ok()
}

fn to_change(hint: Hint, excludes: &Excludes) -> Option<Change> {
    match hint {
        Hint::Changed(path) => {
            let p = rel(&path)?;
            (!excludes.covers(&p, false)).then_some(Change::Entry(p))
        }
        Hint::Renamed { from, to, is_dir } => {
            let (from, to) = (rel(&from)?, rel(&to)?);
            Some(Change::Renamed { from, to, is_dir })
        }
        Hint::Rescan(dir) => Some(Change::Subtree(rel(&dir)?)),
        Hint::RootGone => Some(Change::Subtree(RelPath::root())),
    }
}

async fn target_loop(
    target: Arc<Target>,
    set: Arc<SenderSet>,
    delay: Duration,
    rescan_interval: Duration,
    mut changes: mpsc::UnboundedReceiver<Vec<Change>>,
    cancel: Arc<AtomicBool>,
) {
    let start = now_ms();
    let mut batcher = Batcher::new(delay.as_millis() as Millis, start)
        .with_rescans(rescan_interval.as_millis() as Millis, start);
    let mut initial_done = false;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let now = now_ms();
        publish_target(&target, &batcher, initial_done, now);
        if let Some(batch) = batcher.poll(now) {
            let work = async {
                match hello(&target.transport, &set.name).await {
                    Ok(with_owner) => {
                        run_batch(&set, &target.transport, with_owner, batch, &target.counters)
                            .await
                    }
                    Err(e) => Outcome::Unreachable {
                        batch,
                        error: match e {
                            CallError::Refused(m) | CallError::Unreachable(m) => m,
                        },
                    },
                }
            };
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            let outcome = loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    Some(list) = changes.recv() => {
                        let now = now_ms();
                        for c in list {
                            batcher.on_change(c, now);
                        }
                    }
                    _ = ticker.tick() => publish_target(&target, &batcher, initial_done, now_ms()),
                }
            };
            match &outcome {
                Outcome::Done { error, .. } => {
                    initial_done = true;
                    if let Some(e) = error {
                        tracing::warn!(target = %target.node, set = %set.name, "{e}");
                    }
                }
                Outcome::Unreachable { error, .. } => {
                    tracing::warn!(target = %target.node, set = %set.name, "target unreachable: {error}")
                }
                Outcome::Halted { reason, .. } => {
                    tracing::error!(set = %set.name, "HALTED: {reason}")
                }
            }
            batcher.on_outcome(outcome, now_ms());
            continue;
        }
        let wait = batcher
            .next_deadline()
            .map(|at| at.saturating_sub(now_ms()))
            .unwrap_or(1_000)
            .clamp(1, 1_000);
        tokio::select! {
            Some(list) = changes.recv() => {
                let now = now_ms();
                for c in list {
                    batcher.on_change(c, now);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

fn publish_target(target: &Target, batcher: &Batcher, initial_done: bool, now: Millis) {
    let c = &target.counters;
    let (sent, received) = target.transport.bytes();
    let state = match batcher.link() {
        LinkState::Up if batcher.busy() => "syncing",
        LinkState::Up => "up",
        LinkState::Down { .. } => "down",
        LinkState::Halted { .. } => "halted",
    };
    let status = TargetStatus {
        node: target.node.to_string(),
        state: state.to_string(),
        initial_done,
        lag_ms: batcher.lag(now),
        queued: batcher.queued() as u64,
        batches: load(&c.batches),
        files_sent: load(&c.files_sent),
        file_bytes: load(&c.file_bytes),
        delta_files: load(&c.delta_files),
        deletes: load(&c.deletes),
        renames: load(&c.renames),
        errors: load(&c.errors),
        bytes_sent: sent,
        bytes_received: received,
        last_error: batcher.last_error().map(str::to_string),
    };
    if let Ok(mut s) = target.shared.lock() {
        *s = status;
    }
}
