//! `uphold run`: load the config, pick this member, start the guard, the roles
//! present in the config and the local API, and handle signals.

use crate::check::print_config_errors;
use crate::cli::RunArgs;
use crate::EXIT_CONFIG;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tracing::{error, info, warn};
use uphold_cluster::runtime::{self, RuntimeOptions, StatusCell};

pub fn main(args: RunArgs) -> ExitCode {
    // Held until main returns: the log lines still queued are written then.
    let _log_writer = init_logging(&args.log);
    let loaded = match uphold_config::load(&args.select.config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_config_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let config = loaded.config;
    if config.cluster.is_none() && config.balance.is_empty() {
        eprintln!(
            "error: {}: nothing to run (no [cluster] and no [[balance]] section)",
            args.select.config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let cluster = match config.cluster.clone() {
        None => None,
        Some(cluster) => {
            match uphold_config::select_member(&cluster, args.select.node.as_deref()) {
                Ok(member) => Some((cluster.clone(), member.clone())),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
    };
    let cpu = protect_self(cluster.as_ref().map(|(c, _)| c.protection));
    // One thread runs the decision loop, Raft and the member RPC: a message that
    // passes between them wakes no other thread. Two runtime threads cost twice
    // the idle CPU in futex wakeups and context switches (bench/failover idle
    // row); nothing on this runtime blocks (disk writes have their own threads,
    // exec and guard waits run on the blocking pool).
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    protect_blocking_threads(&mut builder, cpu);
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon(args.select.config.clone(), config, cluster)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines that may wait for a slow stderr (journald, a file on a busy disk);
/// past this many the newest are dropped rather than stall the decision loop.
/// At about 200 bytes a line that is under 1 MiB.
const LOG_BUFFER_LINES: usize = 4096;

fn init_logging(filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    // openraft reports every unreachable peer at ERROR, twice a second; uphold
    // logs reachability itself, so openraft stays quiet unless asked for by name
    // (e.g. `--log info,openraft=info`).
    let filter = if filter.contains("openraft") {
        filter.to_string()
    } else {
        format!("{filter},openraft=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    use std::io::IsTerminal;
    // Writing happens on a thread of its own; a full buffer drops lines instead
    // of blocking the thread that logs.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("uphold-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer)
        .with_target(false)
        .init();
    guard
}

/// What `GET /v1/status` returns: each role's part, absent when the role is not
/// configured. The cluster's fields sit at the top level (as before sync existed).
#[derive(serde::Serialize)]
struct NodeStatus {
    #[serde(flatten)]
    cluster: Option<uphold_cluster::runtime::status::ClusterStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<uphold_sync::status::SyncStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance: Option<uphold_balance::BalanceStatus>,
}

type Balance = Option<Arc<uphold_balance::BalanceService>>;

async fn daemon(
    config_path: std::path::PathBuf,
    config: uphold_config::Config,
    cluster: Option<(uphold_config::ClusterConfig, uphold_config::Member)>,
) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    spawn_signal_handler(shutdown_tx, config_path, reload_tx)?;
    match uphold_os::limits::raise_open_files() {
        Ok((before, after)) if before != after => {
            info!("open-file limit raised from {before} to {after}")
        }
        Ok((_, limit)) if !config.balance.is_empty() && limit < 8192 => {
            warn!("open-file limit is {limit}: the balancer can hold about {} client connections; raise it (LimitNOFILE= in the systemd unit)", limit / 2)
        }
        Ok(_) => {}
        Err(e) => warn!("{e}"),
    }
    let balance: Balance = if config.balance.is_empty() {
        None
    } else {
        let service = uphold_balance::BalanceService::start(
            &config.balance,
            &config.balancer,
            tokio::runtime::Handle::current(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Some(Arc::new(service))
    };
    let result = match cluster {
        Some((cluster, me)) => {
            members_daemon(config, cluster, me, balance.clone(), shutdown_rx, reload_rx).await
        }
        None => balance_only(config, balance.clone(), shutdown_rx, reload_rx).await,
    };
    if let Some(balance) = balance {
        let _ = tokio::task::spawn_blocking(move || balance.stop()).await;
    }
    info!("uphold stopped");
    result
}

/// A file without `[cluster]`: only the balancer and the local API.
async fn balance_only(
    config: uphold_config::Config,
    balance: Balance,
    mut shutdown_rx: watch::Receiver<bool>,
    mut reload_rx: tokio::sync::mpsc::UnboundedReceiver<uphold_config::Config>,
) -> anyhow::Result<()> {
    let api_listen = config.balancer.api;
    let status_balance = balance.clone();
    let status_fn: uphold_web::StatusFn = Arc::new(move || {
        let doc = NodeStatus {
            cluster: None,
            sync: None,
            balance: status_balance.as_ref().map(|b| b.status()),
        };
        serde_json::to_value(doc).ok()
    });
    let metrics_balance = balance.clone();
    let metrics_fn: uphold_web::MetricsFn = Arc::new(move || {
        let mut registry = metrics_registry();
        if let Some(balance) = &metrics_balance {
            balance.status().register_metrics(&mut registry);
        }
        encode_metrics(&registry)
    });
    let actions = balance_actions(balance.clone());
    let api = spawn_api(
        api_listen,
        status_fn,
        metrics_fn,
        actions,
        shutdown_rx.clone(),
    );
    info!(api = %api_listen, "uphold starting (balancer only)");
    loop {
        tokio::select! {
            _ = shutdown_rx.wait_for(|stop| *stop) => break,
            new = reload_rx.recv() => match new {
                Some(new) => {
                    if new.cluster.is_some() {
                        error!("reload: a [cluster] section was added; restart uphold to start the cluster");
                    }
                    reload_balance(&balance, &config.balancer, &new).await;
                }
                None => break,
            },
        }
    }
    api.abort();
    Ok(())
}

/// The local API, until shutdown.
fn spawn_api(
    listen: std::net::SocketAddr,
    status: uphold_web::StatusFn,
    metrics: uphold_web::MetricsFn,
    actions: Option<uphold_web::ActionFn>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = uphold_web::serve_with_actions(listen, status, metrics, actions, stop).await
        {
            error!("API: {e:#}");
        }
    })
}

async fn reload_balance(
    balance: &Balance,
    started_with: &uphold_config::balance::BalancerSettings,
    new: &uphold_config::Config,
) {
    if new.balancer != *started_with {
        warn!("reload: [balancer] settings (threads, api) take effect at the next restart");
    }
    let Some(service) = balance.clone() else {
        if !new.balance.is_empty() {
            error!("reload: [[balance]] sections were added; restart uphold to start the balancer");
        }
        return;
    };
    let frontends = new.balance.clone();
    let errors = tokio::task::spawn_blocking(move || service.reload(&frontends))
        .await
        .unwrap_or_default();
    for e in errors {
        error!("reload: {e}");
    }
}

/// `POST /v1/balance/VERB` with body `TARGET` (and ` WEIGHT` for `weight`).
fn balance_actions(balance: Balance) -> Option<uphold_web::ActionFn> {
    let balance = balance?;
    Some(Arc::new(move |command: &str, body: &str| {
        let Some(verb) = command.strip_prefix("balance/") else {
            return Err((404, format!("unknown command {command:?}")));
        };
        let mut words = body.split_whitespace();
        let target = words
            .next()
            .ok_or((400, "name a server: FRONTEND/SERVER or SERVER".to_string()))?;
        let action = match verb {
            "enable" => uphold_balance::Action::Enable,
            "drain" => uphold_balance::Action::Drain,
            "disable" => uphold_balance::Action::Disable,
            "weight" => {
                let w = words
                    .next()
                    .and_then(|w| w.parse::<u32>().ok())
                    .filter(|w| *w <= 256)
                    .ok_or((400, "weight needs a number from 0 to 256".to_string()))?;
                uphold_balance::Action::Weight(w)
            }
            other => return Err((404, format!("unknown balance command {other:?}"))),
        };
        balance.control(target, action).map_err(|e| (404, e))
    }))
}

async fn members_daemon(
    config: uphold_config::Config,
    cluster: uphold_config::ClusterConfig,
    me: uphold_config::Member,
    balance: Balance,
    shutdown_rx: watch::Receiver<bool>,
    mut reload_rx: tokio::sync::mpsc::UnboundedReceiver<uphold_config::Config>,
) -> anyhow::Result<()> {
    let tls_dir = cluster.tls_dir_for(&me.name);
    let identity = uphold_proto::tls::TlsIdentity::load(&tls_dir, &me.name).map_err(|e| {
        anyhow::anyhow!("{e}\n(create the certificates with `uphold init --config FILE`)")
    })?;
    let allowed =
        uphold_proto::handshake::AllowedPeers::set(cluster.members.iter().map(|m| m.name.clone()));
    let endpoint = Arc::new(uphold_proto::rpc::Endpoint::new(
        identity,
        cluster.name.clone(),
        allowed,
    ));
    let status_cell: StatusCell = Arc::new(RwLock::new(None));
    let (active_groups_tx, active_groups_rx) = watch::channel(runtime::ActiveGroups::new());
    // A file that only names members for file sync runs no consensus. A cluster with
    // no groups yet still runs it, so groups can be added with SIGHUP.
    let run_cluster = !cluster.groups.is_empty() || config.sync.is_empty();

    // File sync: the receiver answers on the members' port; the sets' threads send.
    let sync = if config.sync.is_empty() {
        None
    } else {
        let group_active = group_active_fn(active_groups_rx.clone());
        let me_name = me.name.clone();
        let sender_check_active = group_active.clone();
        let receiver = Arc::new(uphold_sync::receiver::Receiver::new(
            me.name.clone(),
            &config.sync,
            Arc::new(move |set: &uphold_config::sync::SyncConfig| {
                uphold_sync::service::is_sender(set, &me_name, &sender_check_active)
            }),
            Some(cluster.state_dir_for(&me.name)),
        ));
        let service = uphold_sync::service::SyncService::start(
            uphold_sync::service::SyncOptions {
                me: me.name.clone(),
                addresses: cluster
                    .members
                    .iter()
                    .map(|m| (m.name.clone(), m.address))
                    .collect(),
                endpoint: endpoint.clone(),
                group_active,
                max_watches: None,
            },
            config.sync.clone(),
            receiver.clone(),
        );
        Some((receiver, Arc::new(std::sync::Mutex::new(Some(service)))))
    };
    let mut extra_services: Vec<(
        std::ops::RangeInclusive<u16>,
        Arc<dyn uphold_proto::RpcHandler>,
    )> = Vec::new();
    if let Some((receiver, _)) = &sync {
        let service = uphold_sync::protocol::SYNC_SERVICE;
        extra_services.push((
            service..=service,
            Arc::new(uphold_sync::receiver::ReceiverHandler(receiver.clone())),
        ));
    }

    let api_status = status_cell.clone();
    let api_sync = sync.as_ref().map(|(_, s)| s.clone());
    let api_balance = balance.clone();
    let status_fn: uphold_web::StatusFn = Arc::new(move || {
        let cluster = api_status.read().ok().and_then(|c| c.clone());
        let sync = api_sync
            .as_ref()
            .and_then(|s| s.lock().ok().and_then(|s| s.as_ref().map(|s| s.status())));
        let balance = api_balance.as_ref().map(|b| b.status());
        if cluster.is_none() && sync.is_none() && balance.is_none() {
            return None;
        }
        serde_json::to_value(NodeStatus {
            cluster,
            sync,
            balance,
        })
        .ok()
    });
    let metrics_cell = status_cell.clone();
    let metrics_balance = balance.clone();
    let metrics_sync = sync.as_ref().map(|(_, s)| s.clone());
    let metrics_fn: uphold_web::MetricsFn = Arc::new(move || {
        let mut registry = metrics_registry();
        runtime::metrics::register(&metrics_cell, &mut registry);
        if let Some(sync) = &metrics_sync {
            if let Some(status) = sync
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(|s| s.status()))
            {
                status.register_metrics(&mut registry);
            }
        }
        if let Some(balance) = &metrics_balance {
            balance.status().register_metrics(&mut registry);
        }
        encode_metrics(&registry)
    });
    let actions = balance_actions(balance.clone());
    let api = spawn_api(me.api, status_fn, metrics_fn, actions, shutdown_rx.clone());

    // SIGHUP: the cluster takes its part; sync sets are restarted where they changed.
    let (cluster_reload_tx, cluster_reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let reload_sync = sync.as_ref().map(|(_, s)| s.clone());
    let reload_balancer = balance.clone();
    let balancer_settings = config.balancer.clone();
    tokio::spawn(async move {
        while let Some(new) = reload_rx.recv().await {
            let new: uphold_config::Config = new;
            reload_balance(&reload_balancer, &balancer_settings, &new).await;
            match new.cluster {
                Some(cluster) => {
                    let _ = cluster_reload_tx.send(cluster);
                }
                None => error!(
                    "reload: the [cluster] section is gone; the cluster keeps its configuration"
                ),
            }
            if let Some(sync) = &reload_sync {
                let sync = sync.clone();
                let sets = new.sync;
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut guard) = sync.lock() {
                        if let Some(service) = guard.as_mut() {
                            service.reload(sets);
                        }
                    }
                })
                .await;
            }
        }
    });

    info!(node = %me.name, listen = %me.listen, api = %me.api, "uphold starting");
    let result = if run_cluster {
        let rpc = Arc::new(uphold_proto::rpc::RpcClient::new(endpoint.clone()));
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find our own executable for the guard: {e}"))?;
        let state_dir = cluster.state_dir_for(&me.name);
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            anyhow::anyhow!("cannot create state directory {}: {e}", state_dir.display())
        })?;
        let lock = state_dir.join(uphold_cluster::runtime::GUARD_LOCK_FILE);
        let guard_args = vec![
            "guard".to_string(),
            "--lock".to_string(),
            lock.display().to_string(),
        ];
        let guard = uphold_os::guard::GuardClient::spawn(
            &exe,
            &guard_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .map_err(|e| anyhow::anyhow!("cannot start the guard process: {e}"))?;
        let netlink =
            Arc::new(uphold_os::vip::Netlink::new().map_err(|e| anyhow::anyhow!("netlink: {e}"))?);
        runtime::run(
            RuntimeOptions {
                config: cluster,
                me: me.name.clone(),
                rpc,
                endpoint,
                guard: Some(guard),
                guard_command: Some((exe.clone(), guard_args)),
                netlink,
                reload: cluster_reload_rx,
                extra_services,
                active_groups: active_groups_tx,
            },
            status_cell,
            shutdown_rx,
        )
        .await
    } else {
        // No groups: no consensus to run, only the members' port for the other roles.
        serve_members_port(&me, endpoint, extra_services, shutdown_rx).await
    };
    if let Some((_, service)) = sync {
        let taken = service.lock().ok().and_then(|mut s| s.take());
        if let Some(service) = taken {
            let _ = tokio::task::spawn_blocking(move || service.stop()).await;
        }
    }
    api.abort();
    result
}

/// The one registry every role's figures go in for a scrape, under `uphold_`.
fn metrics_registry() -> prometheus_client::registry::Registry {
    prometheus_client::registry::Registry::with_prefix("uphold")
}

/// The registry as Prometheus text (OpenMetrics, ending in `# EOF`).
fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        warn!("cannot encode the metrics: {e}");
        return "# EOF\n".into();
    }
    text
}

/// Whether `group` runs here now (starting or running), as the cluster runtime
/// published it at its last change of phase.
fn group_active_fn(
    active: watch::Receiver<runtime::ActiveGroups>,
) -> uphold_sync::service::GroupActive {
    Arc::new(move |group: &uphold_core::GroupName| active.borrow().contains(group))
}

async fn serve_members_port(
    me: &uphold_config::Member,
    endpoint: Arc<uphold_proto::rpc::Endpoint>,
    services: Vec<(
        std::ops::RangeInclusive<u16>,
        Arc<dyn uphold_proto::RpcHandler>,
    )>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(me.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for members on {}: {e}", me.listen))?;
    let mut router = uphold_proto::rpc::ServiceRouter::new();
    for (range, handler) in services {
        router = router.route(range, handler);
    }
    uphold_proto::rpc::serve(listener, endpoint, Arc::new(router), async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await;
    Ok(())
}

/// SIGHUP: validate the file again; a bad file is reported and changes nothing.
fn reload_config(
    path: &std::path::Path,
    reload: &tokio::sync::mpsc::UnboundedSender<uphold_config::Config>,
) {
    info!(config = %path.display(), "SIGHUP: reloading");
    match uphold_config::load(path) {
        Err(errors) => {
            for e in errors.iter() {
                error!("reload refused: {e}");
            }
        }
        Ok(loaded) => {
            for warning in &loaded.warnings {
                warn!("{warning}");
            }
            warn_if_protection_changed(loaded.config.cluster.as_ref());
            let _ = reload.send(loaded.config);
        }
    }
}

fn spawn_signal_handler(
    shutdown: watch::Sender<bool>,
    config_path: std::path::PathBuf,
    reload: tokio::sync::mpsc::UnboundedSender<uphold_config::Config>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); let _ = shutdown.send(true); }
                _ = int.recv() => { info!("SIGINT: stopping"); let _ = shutdown.send(true); }
                _ = hup.recv() => reload_config(&config_path, &reload),
            }
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Self-protection (`[cluster]` lock_memory, cpu_priority, io_priority): applied
// once at start, before the runtime exists. See crates/os/src/protect.rs.
// ---------------------------------------------------------------------------

/// What the daemon started with; a reload cannot change it.
static STARTED_PROTECTION: std::sync::OnceLock<uphold_config::Protection> =
    std::sync::OnceLock::new();

/// Locks memory and raises the I/O priority for the whole process (the threads
/// and commands started later inherit the I/O priority), and raises the CPU
/// priority of this thread, which runs the cluster's decision loop (`block_on`).
/// Logs one line with what is in effect; a refusal is a warning, or part of that
/// one info line when uphold runs without root (as `uphold demo` does). Returns
/// the CPU priority for the runtime's threads: the one this thread got.
fn protect_self(wanted: Option<uphold_config::Protection>) -> uphold_os::protect::CpuPriority {
    use uphold_config::{CpuPriority as Want, IoPriority as WantIo};
    use uphold_os::protect::{self, CpuPriority, IoPriority, MemoryLock, ProtectError};
    // Without [cluster] nothing decides: the balancer alone runs unprotected.
    let Some(wanted) = wanted else {
        return CpuPriority::Normal;
    };
    let _ = STARTED_PROTECTION.set(wanted);
    let mut active: Vec<String> = Vec::new();
    let mut refused: Vec<ProtectError> = Vec::new();
    if wanted.lock_memory {
        match protect::lock_memory() {
            Ok(MemoryLock::OnFault) => active.push("memory locked".into()),
            Ok(MemoryLock::AllPages) => active.push(
                "memory locked (every mapped page: this kernel has no MCL_ONFAULT, so the \
                 resident size is the mapped size)"
                    .into(),
            ),
            Err(e) => refused.push(e),
        }
    }
    if wanted.io_priority == WantIo::High {
        match protect::enable_state_io_priority(IoPriority::High) {
            Ok(()) => active.push("I/O priority best-effort 0 for the Raft log's writes".into()),
            Err(e) => refused.push(e),
        }
    }
    let mut cpu = CpuPriority::Normal;
    if wanted.cpu_priority == Want::Realtime {
        match protect::set_thread_cpu_priority(CpuPriority::Realtime) {
            Ok(()) => {
                cpu = CpuPriority::Realtime;
                active.push(format!(
                    "CPU priority realtime (SCHED_RR {}, at most {} ms of CPU without sleeping) \
                     for the decision loop, Raft and RPC, nice {} for their blocking jobs",
                    protect::REALTIME_PRIORITY,
                    protect::REALTIME_BUDGET.as_millis(),
                    protect::HIGH_NICE
                ));
            }
            Err(e) => refused.push(e),
        }
    }
    if wanted.cpu_priority != Want::Normal && cpu == CpuPriority::Normal {
        match protect::set_thread_cpu_priority(CpuPriority::High) {
            Ok(()) => {
                cpu = CpuPriority::High;
                let instead = if wanted.cpu_priority == Want::Realtime {
                    ", instead of realtime,"
                } else {
                    ""
                };
                active.push(format!(
                    "CPU priority high (nice {}){instead} for the decision loop, Raft and RPC",
                    protect::HIGH_NICE
                ));
            }
            Err(e) => refused.push(e),
        }
    }
    let active = if active.is_empty() {
        "nothing".to_string()
    } else {
        active.join("; ")
    };
    let root = nix::unistd::geteuid().is_root();
    if refused.is_empty() {
        info!("self-protection: {active}");
    } else if !root && refused.iter().all(ProtectError::is_not_permitted) {
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        info!(
            "self-protection without root: {active}; not in effect: {}",
            refused.join("; ")
        );
    } else {
        info!("self-protection: {active}");
        for e in &refused {
            warn!("self-protection: {e}; running without it");
        }
    }
    cpu
}

/// Gives the main runtime's blocking threads the priority `cpu`, from their
/// start, but never realtime: blocking jobs include file-sync work that can
/// compute for seconds, which the realtime budget would end. The thread that
/// runs the runtime itself was raised by [`protect_self`]. The balancer's own
/// runtimes are started from threads marked reset-on-fork, so they stay at
/// normal priority.
fn protect_blocking_threads(
    builder: &mut tokio::runtime::Builder,
    cpu: uphold_os::protect::CpuPriority,
) {
    use uphold_os::protect::CpuPriority;
    let for_blocking = match cpu {
        CpuPriority::Normal => return,
        CpuPriority::Realtime => CpuPriority::High,
        other => other,
    };
    builder.on_thread_start(move || raise_thread(for_blocking));
}

/// Raises the calling runtime thread; only the first failure is logged (the
/// same would follow for every thread).
fn raise_thread(cpu: uphold_os::protect::CpuPriority) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = uphold_os::protect::set_thread_cpu_priority(cpu) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!("self-protection: {e}, for a runtime thread; it runs without it");
        }
    }
}

/// A reload keeps the protection the daemon started with; say so when the file
/// now asks for another.
fn warn_if_protection_changed(cluster: Option<&uphold_config::ClusterConfig>) {
    let (Some(started), Some(cluster)) = (STARTED_PROTECTION.get(), cluster) else {
        return;
    };
    if cluster.protection != *started {
        warn!("reload: lock_memory, cpu_priority and io_priority take effect at the next restart");
    }
}
