//! A member of a cluster: the members' port (mutual TLS), file sync, the cluster
//! runtime with its guard, and reloads handed to each role.

use super::api::{self, Roles, SyncHandle};
use super::{reload_balance, Balance};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};
use uphold_cluster::runtime::{self, RuntimeOptions, StatusCell};

/// The services answered on the members' port besides the cluster's own.
type ExtraServices = Vec<(
    std::ops::RangeInclusive<u16>,
    Arc<dyn uphold_proto::RpcHandler>,
)>;

pub(super) async fn members_daemon(
    config: uphold_config::Config,
    cluster: uphold_config::ClusterConfig,
    me: uphold_config::Member,
    balance: Balance,
    shutdown_rx: watch::Receiver<bool>,
    reload_rx: mpsc::UnboundedReceiver<uphold_config::Config>,
) -> anyhow::Result<()> {
    let endpoint = endpoint(&cluster, &me)?;
    let status_cell: StatusCell = Arc::new(RwLock::new(None));
    let (active_groups_tx, active_groups_rx) = watch::channel(runtime::ActiveGroups::new());
    // A file that only names members for file sync runs no consensus. A cluster with
    // no groups yet still runs it, so groups can be added with SIGHUP.
    let run_cluster = !cluster.groups.is_empty() || config.sync.is_empty();

    let mut extra_services: ExtraServices = Vec::new();
    let sync = start_sync(&config, &cluster, &me, &endpoint, active_groups_rx);
    if let Some((receiver, _)) = &sync {
        let service = uphold_sync::protocol::SYNC_SERVICE;
        extra_services.push((
            service..=service,
            Arc::new(uphold_sync::receiver::ReceiverHandler(receiver.clone())),
        ));
    }
    let sync_handle = sync.as_ref().map(|(_, handle)| handle.clone());
    let roles = Roles {
        cluster: Some(status_cell.clone()),
        sync: sync_handle.clone(),
        balance: balance.clone(),
    };
    let api = api::spawn(
        me.api,
        cluster.admin_socket_for(&me.name),
        roles,
        shutdown_rx.clone(),
    );

    let (cluster_reload_tx, cluster_reload_rx) = mpsc::unbounded_channel();
    spawn_reloads(
        reload_rx,
        balance,
        config.balancer.clone(),
        sync_handle,
        cluster_reload_tx,
    );

    info!(node = %me.name, listen = %me.listen, api = %me.api, "uphold starting");
    let result = if run_cluster {
        let options = cluster_options(
            cluster,
            &me,
            endpoint,
            extra_services,
            cluster_reload_rx,
            active_groups_tx,
        )?;
        runtime::run(options, status_cell, shutdown_rx).await
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

/// This member's side of the mutual-TLS links, admitting the configured members:
/// their certificates, and connections only from their addresses (anything else is
/// closed before TLS). It connects from its own address, which the others admit.
pub(crate) fn endpoint(
    cluster: &uphold_config::ClusterConfig,
    me: &uphold_config::Member,
) -> anyhow::Result<Arc<uphold_proto::rpc::Endpoint>> {
    let tls_dir = cluster.tls_dir_for(&me.name);
    let identity = uphold_proto::tls::TlsIdentity::load(&tls_dir, &me.name).map_err(|e| {
        anyhow::anyhow!("{e}\n(create the certificates with `uphold init --config FILE`)")
    })?;
    let allowed =
        uphold_proto::handshake::AllowedPeers::set(cluster.members.iter().map(|m| m.name.clone()));
    let mut admitted: Vec<std::net::IpAddr> = cluster
        .members
        .iter()
        .flat_map(|m| [m.address.ip(), m.listen.ip()])
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_canonical())
        .collect();
    admitted.sort();
    admitted.dedup();
    let options = uphold_proto::rpc::EndpointOptions {
        admitted_sources: Some(admitted),
        source_ip: Some(me.address.ip()).filter(|ip| !ip.is_unspecified()),
        ..Default::default()
    };
    Ok(Arc::new(
        uphold_proto::rpc::Endpoint::new(identity, cluster.name.clone(), allowed)
            .with_options(options),
    ))
}

/// File sync, when sets are configured: the receiver answers on the members'
/// port; the sets' threads send while this member runs their group.
fn start_sync(
    config: &uphold_config::Config,
    cluster: &uphold_config::ClusterConfig,
    me: &uphold_config::Member,
    endpoint: &Arc<uphold_proto::rpc::Endpoint>,
    active_groups: watch::Receiver<runtime::ActiveGroups>,
) -> Option<(Arc<uphold_sync::receiver::Receiver>, SyncHandle)> {
    if config.sync.is_empty() {
        return None;
    }
    let group_active = group_active_fn(active_groups);
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
    let expiring = receiver.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(uphold_sync::receiver::EXPIRY_CHECK);
        loop {
            tick.tick().await;
            // Unlinking waits on the disk: off the runtime's thread.
            let receiver = expiring.clone();
            let _ = tokio::task::spawn_blocking(move || receiver.expire_idle()).await;
        }
    });
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
    Some((receiver, Arc::new(Mutex::new(Some(service)))))
}

/// Whether `group` runs here now (starting or running), as the cluster runtime
/// published it at its last change of phase.
fn group_active_fn(
    active: watch::Receiver<runtime::ActiveGroups>,
) -> uphold_sync::service::GroupActive {
    Arc::new(move |group: &uphold_core::GroupName| active.borrow().contains(group))
}

/// SIGHUP: the balancer and the cluster take their parts; sync sets are
/// restarted where they changed.
fn spawn_reloads(
    mut reload_rx: mpsc::UnboundedReceiver<uphold_config::Config>,
    balance: Balance,
    balancer_settings: uphold_config::balance::BalancerSettings,
    sync: Option<SyncHandle>,
    cluster_reload: mpsc::UnboundedSender<uphold_config::ClusterConfig>,
) {
    tokio::spawn(async move {
        while let Some(new) = reload_rx.recv().await {
            reload_balance(&balance, &balancer_settings, &new).await;
            match new.cluster {
                Some(cluster) => {
                    let _ = cluster_reload.send(cluster);
                }
                None => error!(
                    "reload: the [cluster] section is gone; the cluster keeps its configuration"
                ),
            }
            if let Some(sync) = &sync {
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
}

/// Everything the cluster runtime needs: the state directory, this run's guard
/// process (our own executable), netlink and the members' RPC.
fn cluster_options(
    cluster: uphold_config::ClusterConfig,
    me: &uphold_config::Member,
    endpoint: Arc<uphold_proto::rpc::Endpoint>,
    extra_services: ExtraServices,
    reload: mpsc::UnboundedReceiver<uphold_config::ClusterConfig>,
    active_groups: watch::Sender<runtime::ActiveGroups>,
) -> anyhow::Result<RuntimeOptions> {
    let rpc = Arc::new(uphold_proto::rpc::RpcClient::new(endpoint.clone()));
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find our own executable for the guard: {e}"))?;
    let state_dir = cluster.state_dir_for(&me.name);
    std::fs::create_dir_all(&state_dir).map_err(|e| {
        anyhow::anyhow!("cannot create state directory {}: {e}", state_dir.display())
    })?;
    let lock = state_dir.join(runtime::GUARD_LOCK_FILE);
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
    Ok(RuntimeOptions {
        config: cluster,
        me: me.name.clone(),
        rpc,
        endpoint,
        guard: Some(guard),
        guard_command: Some((exe, guard_args)),
        netlink,
        reload,
        extra_services,
        active_groups,
    })
}

/// The members' port alone, for the other roles, when no consensus runs.
async fn serve_members_port(
    me: &uphold_config::Member,
    endpoint: Arc<uphold_proto::rpc::Endpoint>,
    services: ExtraServices,
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
