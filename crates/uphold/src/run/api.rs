//! The local API's view of the roles: the status document, the metrics scrape
//! (one registry every role registers in) and the balancer's admin verbs.

use super::Balance;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tracing::{error, warn};
use uphold_cluster::runtime::{self, StatusCell};

/// A running sync service, shared with reloads and the API; taken at shutdown.
pub(super) type SyncHandle = Arc<Mutex<Option<uphold_sync::service::SyncService>>>;

/// What each role gives the API to read, for the roles that run.
#[derive(Clone, Default)]
pub(super) struct Roles {
    pub cluster: Option<StatusCell>,
    pub sync: Option<SyncHandle>,
    pub balance: Balance,
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

fn sync_status(sync: &SyncHandle) -> Option<uphold_sync::status::SyncStatus> {
    sync.lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.status()))
}

pub(super) fn status_fn(roles: Roles) -> uphold_web::StatusFn {
    Arc::new(move || {
        let cluster = roles
            .cluster
            .as_ref()
            .and_then(|cell| cell.read().ok().and_then(|c| c.clone()));
        let sync = roles.sync.as_ref().and_then(sync_status);
        let balance = roles.balance.as_ref().map(|b| b.status());
        if cluster.is_none() && sync.is_none() && balance.is_none() {
            return None;
        }
        serde_json::to_value(NodeStatus {
            cluster,
            sync,
            balance,
        })
        .ok()
    })
}

pub(super) fn metrics_fn(roles: Roles) -> uphold_web::MetricsFn {
    Arc::new(move || {
        let mut registry = metrics_registry();
        if let Some(cell) = &roles.cluster {
            runtime::metrics::register(cell, &mut registry);
        }
        if let Some(status) = roles.sync.as_ref().and_then(sync_status) {
            status.register_metrics(&mut registry);
        }
        if let Some(balance) = &roles.balance {
            balance.status().register_metrics(&mut registry);
        }
        encode_metrics(&registry)
    })
}

/// The local API for `roles` (read-only on `listen`, commands on
/// `admin_socket`), until shutdown.
pub(super) fn spawn(
    listen: std::net::SocketAddr,
    admin_socket: std::path::PathBuf,
    roles: Roles,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let actions = balance_actions(roles.balance.clone());
    spawn_api(
        listen,
        admin_socket,
        status_fn(roles.clone()),
        metrics_fn(roles),
        actions,
        shutdown,
    )
}

/// The local API, until shutdown.
fn spawn_api(
    listen: std::net::SocketAddr,
    admin_socket: std::path::PathBuf,
    status: uphold_web::StatusFn,
    metrics: uphold_web::MetricsFn,
    actions: Option<uphold_web::ActionFn>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        let served = uphold_web::serve(listen, &admin_socket, status, metrics, actions, stop).await;
        if let Err(e) = served {
            error!("API: {e:#}");
        }
    })
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
