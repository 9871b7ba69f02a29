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
    init_logging(&args.log);
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
    let Some(cluster) = loaded.config.cluster.clone() else {
        eprintln!(
            "error: {}: nothing to run (no [cluster] section)",
            args.select.config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let me = match uphold_config::select_member(&cluster, args.select.node.as_deref()) {
        Ok(member) => member.clone(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon(args.select.config.clone(), cluster, me)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn daemon(
    config_path: std::path::PathBuf,
    cluster: uphold_config::ClusterConfig,
    me: uphold_config::Member,
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
    let rpc = Arc::new(uphold_proto::rpc::RpcClient::new(endpoint.clone()));

    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find our own executable for the guard: {e}"))?;
    let guard = uphold_os::guard::GuardClient::spawn(&exe, &["guard"])
        .map_err(|e| anyhow::anyhow!("cannot start the guard process: {e}"))?;
    let netlink =
        Arc::new(uphold_os::vip::Netlink::new().map_err(|e| anyhow::anyhow!("netlink: {e}"))?);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    spawn_signal_handler(shutdown_tx, config_path, reload_tx)?;

    let status_cell: StatusCell = Arc::new(RwLock::new(None));
    let api_status = status_cell.clone();
    let status_fn: uphold_web::StatusFn = Arc::new(move || {
        let cell = api_status.read().ok()?;
        let status = cell.as_ref()?;
        serde_json::to_value(status).ok()
    });
    let metrics_cell = status_cell.clone();
    let metrics_fn: uphold_web::MetricsFn =
        Arc::new(move || runtime::metrics::render(&metrics_cell));
    let mut api_shutdown = shutdown_rx.clone();
    let api_listen = me.api;
    let api = tokio::spawn(async move {
        let stop = async move {
            let _ = api_shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = uphold_web::serve(api_listen, status_fn, metrics_fn, stop).await {
            error!("API: {e:#}");
        }
    });

    info!(node = %me.name, listen = %me.listen, api = %me.api, "uphold starting");
    let result = runtime::run(
        RuntimeOptions {
            config: cluster,
            me: me.name.clone(),
            rpc,
            endpoint,
            guard: Some(guard),
            guard_command: Some((exe.clone(), vec!["guard".to_string()])),
            netlink,
            reload: reload_rx,
        },
        status_cell,
        shutdown_rx,
    )
    .await;
    api.abort();
    info!("uphold stopped");
    result
}

/// SIGHUP: validate the file again; a bad file is reported and changes nothing.
fn reload_config(
    path: &std::path::Path,
    reload: &tokio::sync::mpsc::UnboundedSender<uphold_config::ClusterConfig>,
) {
    info!(config = %path.display(), "SIGHUP: reloading");
    match uphold_config::load(path) {
        Err(errors) => {
            for e in errors.iter() {
                error!("reload refused: {e}");
            }
        }
        Ok(loaded) => match loaded.config.cluster {
            None => error!(
                "reload refused: {} has no [cluster] section",
                path.display()
            ),
            Some(cluster) => {
                let _ = reload.send(cluster);
            }
        },
    }
}

fn spawn_signal_handler(
    shutdown: watch::Sender<bool>,
    config_path: std::path::PathBuf,
    reload: tokio::sync::mpsc::UnboundedSender<uphold_config::ClusterConfig>,
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
