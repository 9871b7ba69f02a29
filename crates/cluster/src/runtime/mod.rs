//! The cluster role at run time: `run` starts Raft and the guard, then one loop
//! feeds the node engine with events and the real clock and hands its actions to
//! the executor (`executor`: proposals, renewals, resource starts and stops,
//! monitors, the guard's deadlines). All decisions stay in `crate::engine`.
//! Beside it: what a reload may change (`reload`), the numbering of daemon runs
//! (`incarnation`), the status snapshot (`snapshot`), the lease service answered
//! from memory (`lease_service`) and the resources themselves (`resources`).

mod executor;
mod incarnation;
pub mod lease_service;
pub mod metrics;
mod reload;
pub mod resource_error;
pub mod resources;
mod snapshot;
pub mod status;

use executor::{Done, Executor};
use incarnation::next_incarnation;
pub use reload::{reload_refusal, topology_from};
use snapshot::{build_status, log_liveness_changes};

use crate::engine::{Event, NodeEngine};
use crate::raft::{RaftNode, RaftOptions};
use lease_service::{LeaseHandler, LeaseRequest, LEASE_GATE, LEASE_RENEW};
use resources::ResourceRunner;
use status::ClusterStatus;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use uphold_config::ClusterConfig;
use uphold_core::{Clock, GroupName, Millis, NodeName};
use uphold_os::clock::MonotonicClock;
use uphold_os::guard::GuardClient;
use uphold_proto::rpc::RpcClient;

/// The engine asks to be woken at its next deadline (renewal, lease margin,
/// another owner's lease expiry); between deadlines it still wakes this often to
/// re-check slower conditions. Deadline-driven wakeups keep an idle member cheap.
const MAX_IDLE_MS: Millis = 500;
/// How long a clean shutdown may take to hand groups over before exiting anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);
/// The node's guard lock in the state directory (see `uphold_os::guard`).
pub const GUARD_LOCK_FILE: &str = "guard.lock";

/// The groups this member has starting or running right now: what other roles
/// (sync today) follow. Published at every change of a local phase.
pub type ActiveGroups = std::collections::BTreeSet<GroupName>;

pub struct RuntimeOptions {
    pub config: ClusterConfig,
    pub me: NodeName,
    pub rpc: Arc<RpcClient>,
    /// Our TLS identity and the members we accept connections from.
    pub endpoint: Arc<uphold_proto::rpc::Endpoint>,
    /// The guard process that undoes our groups if this daemon dies or stalls.
    pub guard: Option<GuardClient>,
    /// How to start a new guard if it dies: program and arguments.
    pub guard_command: Option<(std::path::PathBuf, Vec<String>)>,
    pub netlink: Arc<uphold_os::vip::Netlink>,
    /// Validated configs from SIGHUP reloads.
    pub reload: mpsc::UnboundedReceiver<ClusterConfig>,
    /// Other roles' services served on the members' port (service numbers above 4).
    pub extra_services: Vec<(
        std::ops::RangeInclusive<u16>,
        Arc<dyn uphold_proto::RpcHandler>,
    )>,
    /// Where the groups active here are published (see [`ActiveGroups`]).
    pub active_groups: watch::Sender<ActiveGroups>,
}

/// Sends the groups starting or running here when they differ from what was
/// last sent; most events change none, and then nothing is allocated.
fn publish_active_groups(tx: &watch::Sender<ActiveGroups>, engine: &NodeEngine) {
    tx.send_if_modified(|published| {
        if published.iter().eq(engine.agent().active_groups()) {
            return false;
        }
        *published = engine.agent().active_groups().cloned().collect();
        true
    });
}

/// Shared, cheaply readable picture for `uphold status` and metrics.
pub type StatusCell = Arc<RwLock<Option<ClusterStatus>>>;

/// Runs the cluster role until `shutdown` turns true and the groups are handed
/// over (or the shutdown deadline passes).
pub async fn run(
    mut opts: RuntimeOptions,
    status_cell: StatusCell,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let clock = MonotonicClock::new();
    let mut config = opts.config.clone();
    let mut reload = opts.reload;
    let active_groups = opts.active_groups;
    let me = config
        .member(opts.me.as_str())
        .ok_or_else(|| anyhow::anyhow!("{} is not a member of cluster {}", opts.me, config.name))?
        .clone();
    let topo = topology_from(&config);

    let (append_tx, mut append_rx) = mpsc::unbounded_channel();
    let on_append: Arc<dyn Fn(&crate::engine::Command) + Send + Sync> = Arc::new(move |cmd| {
        let _ = append_tx.send(cmd.clone());
    });
    let raft = Arc::new(
        RaftNode::start(RaftOptions {
            cluster: config.clone(),
            me: opts.me.clone(),
            state_dir: config.state_dir_for(&opts.me),
            rpc: opts.rpc.clone(),
            on_append,
        })
        .await?,
    );
    let mut applied = raft.applied();

    let listener = tokio::net::TcpListener::bind(me.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for members on {}: {e}", me.listen))?;
    let mut server_shutdown = shutdown.clone();
    let (lease_tx, mut lease_rx) = mpsc::channel(lease_service::REQUEST_QUEUE);
    let lease_handler = Arc::new(LeaseHandler::new(
        config
            .members
            .iter()
            .map(|m| (m.name.clone(), m.id))
            .collect(),
        lease_tx,
    ));
    let mut router = uphold_proto::rpc::ServiceRouter::new()
        .route(1..=4, raft.rpc_handler())
        .route(LEASE_RENEW..=LEASE_GATE, lease_handler);
    for (services, handler) in opts.extra_services.drain(..) {
        router = router.route(services, handler);
    }
    let server = tokio::spawn(uphold_proto::rpc::serve(
        listener,
        opts.endpoint.clone(),
        Arc::new(router),
        async move {
            // Keep serving peers while our groups are handed over; stop at exit.
            let _ = server_shutdown.wait_for(|_| false).await;
        },
    ));

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut exec = Executor {
        config: config.clone(),
        raft: raft.clone(),
        runner: ResourceRunner::new(opts.netlink.clone(), &opts.me),
        guard: opts.guard,
        done_tx,
        starts: BTreeMap::new(),
        monitors: BTreeMap::new(),
        started_with: BTreeMap::new(),
        guard_holds: BTreeMap::new(),
        guard_command: opts.guard_command,
        proposal_timeout: Duration::from_millis(topo.proposal_timeout_ms),
        proposals: tokio::task::JoinSet::new(),
        lease_calls: tokio::task::JoinSet::new(),
        peers: config
            .members
            .iter()
            .filter(|m| m.id != me.id)
            .map(|m| (m.id, m.name.clone(), m.address))
            .collect(),
        rpc: opts.rpc.clone(),
        lease_call_timeout: Duration::from_millis(topo.renew_interval_ms.max(100)),
    };
    if let Some(guard) = exec.guard.as_ref() {
        exec.runner.commands.attach(guard);
    }
    // No resource is touched before this run's guard holds the node's lock: a
    // guard of a run that just crashed may still be stopping them.
    match exec.guard.as_mut().and_then(GuardClient::take_ready) {
        Some(ready) => {
            let tx = exec.done_tx.clone();
            tokio::task::spawn_blocking(move || match ready.wait() {
                Ok(()) => {
                    let _ = tx.send(Done::GuardReady);
                }
                Err(e) => error!("the guard failed before it was ready: {e}; no group will start"),
            });
        }
        None => {
            let _ = exec.done_tx.send(Done::GuardReady);
        }
    }
    let incarnation = next_incarnation(&config.state_dir_for(&opts.me))?;
    let mut engine = NodeEngine::new(me.id, incarnation, topo, clock.now_ms());
    // What this member's log and snapshot hold durably bounds which claims its
    // voter may grant: feed it before any renewal is answered.
    let mut durable_snapshot = applied.borrow().durable_snapshot.clone();
    engine.restore_durable(durable_snapshot.as_deref(), raft.durable_at_start());
    info!(node = %me.name, role = ?me.role, "cluster member starting");

    let mut next_wake = clock.now_ms();
    let mut was_leader = false;
    let mut shutdown_at: Option<tokio::time::Instant> = None;
    let mut last_status = tokio::time::Instant::now() - Duration::from_secs(1);
    let mut live_members: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let sleep_ms = next_wake.saturating_sub(clock.now_ms());
        let event = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => Some(Event::Tick),
            Some(request) = lease_rx.recv() => {
                // Answered from memory at once; nothing else to decide.
                answer_lease_request(&mut engine, request, clock.now_ms());
                None
            }
            Some(cmd) = append_rx.recv() => Some(Event::Appended(cmd)),
            Ok(()) = applied.changed() => {
                let snapshot = applied.borrow_and_update().clone();
                let installed = snapshot.durable_snapshot.clone();
                let changed = match (&installed, &durable_snapshot) {
                    (Some(new), Some(old)) => !Arc::ptr_eq(new, old),
                    (Some(_), None) => true,
                    _ => false,
                };
                if changed {
                    if let Some(state) = &installed {
                        let actions = engine.on_event(Event::DurableState(state.clone()), clock.now_ms());
                        exec.perform_all(actions);
                    }
                    durable_snapshot = installed;
                }
                Some(Event::Applied {
                    state: Arc::new(snapshot.state.clone()),
                    index: snapshot.last_applied_index,
                })
            }
            Some(done) = done_rx.recv() => Some(match done {
                Done::Proposal { token, result } => Event::ProposalDone { token, result },
                Done::RenewalAck { from, ack } => Event::RenewalAnswered { from, ack },
                Done::GuardReady => {
                    info!("guard ready: this run controls the node's resources");
                    Event::GuardReady
                }
                Done::GateAnswer { from, query, answer } => Event::GateAnswered { from, query, answer },
                Done::Resource(report) => Event::Resource(report),
            }),
            Some(new) = reload.recv() => {
                match reload_refusal(&config, &new) {
                    Some(why) => warn!("reload refused: {why}; keeping the running config"),
                    None => {
                        info!(groups = new.groups.len(), "config reloaded");
                        engine.set_topology(topology_from(&new));
                        exec.config = new.clone();
                        config = new;
                    }
                }
                Some(Event::Tick)
            }
            Ok(()) = shutdown.changed(), if shutdown_at.is_none() => {
                info!("shutting down: stopping groups and handing them over");
                shutdown_at = Some(tokio::time::Instant::now() + SHUTDOWN_DEADLINE);
                Some(Event::Shutdown)
            }
        };
        let Some(event) = event else {
            continue;
        };
        let now = clock.now_ms();
        let leading = raft.status().is_leader;
        if leading != was_leader {
            was_leader = leading;
            info!(leader = leading, "leadership changed");
            let actions = engine.on_event(Event::Leadership(leading), now);
            exec.perform_all(actions);
        }
        let actions = engine.on_event(event, now);
        exec.perform_all(actions);
        publish_active_groups(&active_groups, &engine);
        exec.check_guard();
        next_wake = engine.next_deadline(clock.now_ms(), MAX_IDLE_MS);
        if last_status.elapsed() >= Duration::from_millis(200) {
            last_status = tokio::time::Instant::now();
            let status = build_status(&config, &me.name, &engine, &raft, now);
            log_liveness_changes(&mut live_members, &status);
            if let Ok(mut cell) = status_cell.write() {
                *cell = Some(status);
            }
        }
        if let Some(deadline) = shutdown_at {
            if engine.is_done(clock.now_ms()) {
                info!("all groups handed over");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!("shutdown deadline passed; stopping with groups not handed over");
                break;
            }
        }
    }
    exec.stop_everything().await;
    active_groups.send_replace(ActiveGroups::new());
    server.abort();
    if let Some(guard) = exec.guard.take() {
        // Waits for the guard process to exit: blocking, so off the async workers.
        match tokio::task::spawn_blocking(move || guard.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("guard did not stop cleanly: {e}"),
            Err(e) => warn!("guard shutdown task failed: {e}"),
        }
    }
    exec.proposals.shutdown().await;
    exec.lease_calls.shutdown().await;
    drop(exec);
    match Arc::try_unwrap(raft) {
        Ok(raft) => raft.shutdown().await,
        Err(_) => warn!("raft still referenced at shutdown; its log is closed at exit"),
    }
    Ok(())
}

/// Answers a member's renewal or gate query from the engine, at once.
fn answer_lease_request(engine: &mut NodeEngine, request: LeaseRequest, now: Millis) {
    match request {
        LeaseRequest::Renew {
            from,
            renewal,
            reply,
        } => {
            let _ = reply.send(engine.on_renewal(from, &renewal, now));
        }
        LeaseRequest::Gate { from, query, reply } => {
            let _ = reply.send(engine.on_gate_query(from, &query, now));
        }
    }
}
