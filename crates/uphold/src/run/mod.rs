//! `uphold run`: load the config, pick this member, start the guard, the roles
//! present in the config and the local API, and handle signals.

mod api;
pub(crate) mod members;
mod protection;

use crate::check::print_config_errors;
use crate::cli::RunArgs;
use crate::EXIT_CONFIG;
use protection::{protect_blocking_threads, protect_self, warn_if_protection_changed};
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info, warn};

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
            members::members_daemon(config, cluster, me, balance.clone(), shutdown_rx, reload_rx)
                .await
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
    let roles = api::Roles {
        balance: balance.clone(),
        ..api::Roles::default()
    };
    let api = api::spawn(
        api_listen,
        config.balancer.admin_socket.clone(),
        roles,
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
