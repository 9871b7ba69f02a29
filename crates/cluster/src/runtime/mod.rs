//! The executor: runs Raft, feeds the node engine with events and the real clock,
//! and carries out its actions (proposals, resource starts and stops, monitors,
//! the guard's deadlines). All decisions stay in `crate::engine`.

pub mod lease_service;
pub mod metrics;
pub mod resources;
pub mod status;

use crate::engine::topology::{GroupSpec, ResourceRule};
use crate::engine::{
    Action, Event, GateAnswer, GateQuery, NodeEngine, RenewalAck, StopKind, Topology,
};
use crate::raft::{RaftNode, RaftOptions};
use lease_service::{LeaseHandler, LeaseRequest, LEASE_GATE, LEASE_RENEW};
use resources::ResourceRunner;
use status::{ClusterStatus, GroupStatus, MemberStatus};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use uphold_config::{ClusterConfig, MemberRole};
use uphold_core::{Clock, GroupName, Millis, NodeName, ResourceSpec};
use uphold_os::clock::MonotonicClock;
use uphold_os::guard::GuardClient;
use uphold_proto::rpc::RpcClient;

/// The engine asks to be woken at its next deadline (renewal, lease margin,
/// another owner's lease expiry); between deadlines it still wakes this often to
/// re-check slower conditions. Deadline-driven wakeups keep an idle member cheap.
const MAX_IDLE_MS: Millis = 250;
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

/// What a reload may change while running: groups and their resources. The rest
/// (members, timing, directories) is fixed while the cluster runs.
pub fn reload_refusal(running: &ClusterConfig, new: &ClusterConfig) -> Option<String> {
    if running.name != new.name {
        return Some("the cluster name changed".into());
    }
    if running.members != new.members {
        return Some(
            "the members changed (membership changes need a restart of every member)".into(),
        );
    }
    if running.timing != new.timing {
        return Some("lease or Raft timing changed".into());
    }
    if running.state_dir != new.state_dir || running.tls_dir != new.tls_dir {
        return Some("state_dir or tls_dir changed".into());
    }
    None
}

/// Shared, cheaply readable picture for `uphold status` and metrics.
pub type StatusCell = Arc<RwLock<Option<ClusterStatus>>>;

pub fn topology_from(config: &ClusterConfig) -> Topology {
    let nodes = config
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Node)
        .map(|m| m.id)
        .collect();
    let witnesses: Vec<uphold_core::NodeId> = config
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Witness)
        .map(|m| m.id)
        .collect();
    let groups = config
        .groups
        .iter()
        .map(|g| GroupSpec {
            name: g.name.clone(),
            nodes: g.nodes.iter().map(|n| n.id()).collect(),
            failback: g.failback,
            resources: g
                .resources
                .iter()
                .map(|r| match r {
                    ResourceSpec::Exec(exec) => ResourceRule {
                        failures_before_move: exec.failures_before_move,
                    },
                    ResourceSpec::Ip(_) => ResourceRule::STRICT,
                })
                .collect(),
        })
        .collect();
    Topology::with_timing(
        nodes,
        groups,
        config.timing.lease.as_millis() as Millis,
        config.timing.renew_interval.as_millis() as Millis,
        config.timing.max_clock_drift,
    )
    .with_witnesses(&witnesses)
}

enum Done {
    StopFailed {
        group: GroupName,
        epoch: u64,
        reason: String,
    },
    Proposal {
        token: u64,
        result: Option<crate::engine::ApplyResult>,
    },
    ResourceStarted {
        group: GroupName,
        epoch: u64,
        resource: usize,
        result: Result<(), String>,
    },
    Stopped {
        group: GroupName,
        epoch: u64,
    },
    MonitorChecked {
        group: GroupName,
        epoch: u64,
        resource: usize,
        failure: Option<String>,
    },
    RenewalAck {
        from: uphold_core::NodeId,
        ack: RenewalAck,
    },
    /// This run's guard holds the node's lock.
    GuardReady,
    GateAnswer {
        from: uphold_core::NodeId,
        query: GateQuery,
        answer: GateAnswer,
    },
}

struct Executor {
    config: ClusterConfig,
    raft: Arc<RaftNode>,
    runner: ResourceRunner,
    guard: Option<GuardClient>,
    done_tx: mpsc::UnboundedSender<Done>,
    /// Per group: the running start task (aborted by an emergency stop) and monitors.
    starts: BTreeMap<GroupName, JoinHandle<()>>,
    monitors: BTreeMap<GroupName, Vec<JoinHandle<()>>>,
    /// Resources as they were when each group started here: a reload that
    /// changes a running group's resources takes effect at its next start, and
    /// the stop undoes exactly what was started.
    started_with: BTreeMap<GroupName, Vec<ResourceSpec>>,
    /// Deadlines the guard holds, to hand to a new guard if it has to be restarted.
    guard_holds: BTreeMap<GroupName, Millis>,
    guard_command: Option<(std::path::PathBuf, Vec<String>)>,
    proposal_timeout: Duration,
    /// Proposals in flight. Each holds the Raft handle; at exit they are
    /// cancelled so Raft can be shut down and its log closed.
    proposals: tokio::task::JoinSet<()>,
    /// Lease messages in flight to other members.
    lease_calls: tokio::task::JoinSet<()>,
    /// Every other voter, as the RPC client dials it.
    peers: Vec<(uphold_core::NodeId, NodeName, std::net::SocketAddr)>,
    rpc: Arc<RpcClient>,
    /// A renewal answered later than this grants nothing useful.
    lease_call_timeout: Duration,
}

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
                Done::ResourceStarted { group, epoch, resource, result } => {
                    Event::ResourceStarted { group, epoch, resource, result }
                }
                Done::StopFailed { group, epoch, reason } => {
                    error!(%group, "stop failed; the group stays owned here and the stop is retried: {reason}");
                    Event::GroupStopFailed { group, epoch, reason }
                }
                Done::Stopped { group, epoch } => Event::GroupStopped { group, epoch },
                Done::MonitorChecked { group, epoch, resource, failure } => {
                    match &failure {
                        Some(reason) => warn!(%group, "monitor check failed: {reason}"),
                        None => info!(%group, "monitor check passed again"),
                    }
                    Event::MonitorChecked { group, epoch, resource, failure }
                }
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

impl Executor {
    fn resources(&self, group: &GroupName) -> Vec<ResourceSpec> {
        if let Some(resources) = self.started_with.get(group) {
            return resources.clone();
        }
        self.config
            .group(group.as_str())
            .map(|g| g.resources.clone())
            .unwrap_or_default()
    }

    fn perform_all(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.perform(action);
        }
    }

    /// Sends `body` to every other voter; each answer comes back through
    /// `done_tx` as made by `done`.
    fn broadcast<T, F>(&mut self, service: u16, body: Vec<u8>, done: F)
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(uphold_core::NodeId, T) -> Option<Done> + Clone + Send + 'static,
    {
        while self.lease_calls.try_join_next().is_some() {}
        for (id, name, addr) in self.peers.clone() {
            let rpc = self.rpc.clone();
            let tx = self.done_tx.clone();
            let body = body.clone();
            let done = done.clone();
            let timeout = self.lease_call_timeout;
            self.lease_calls.spawn(async move {
                match rpc.call(&name, addr, service, body, timeout).await {
                    Ok(bytes) => match lease_service::decode::<T>("lease answer", &bytes) {
                        Ok(answer) => {
                            if let Some(message) = done(id, answer) {
                                let _ = tx.send(message);
                            }
                        }
                        Err(e) => warn!(member = %name, "{e}"),
                    },
                    // An unreachable member is reported by status; each renewal
                    // tries again.
                    Err(e) => tracing::debug!(member = %name, "lease message not answered: {e}"),
                }
            });
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::SendRenewal(renewal) => match lease_service::encode("renewal", &renewal) {
                Ok(body) => self.broadcast(LEASE_RENEW, body, |from, ack: Option<RenewalAck>| {
                    ack.map(|ack| Done::RenewalAck { from, ack })
                }),
                Err(e) => error!("{e}"),
            },
            Action::SendGateQuery(query) => match lease_service::encode("gate query", &query) {
                Ok(body) => self.broadcast(LEASE_GATE, body, move |from, answer: GateAnswer| {
                    Some(Done::GateAnswer {
                        from,
                        query: query.clone(),
                        answer,
                    })
                }),
                Err(e) => error!("{e}"),
            },
            Action::Propose { token, command } => {
                let raft = self.raft.clone();
                let tx = self.done_tx.clone();
                let timeout = self.proposal_timeout;
                // Reap finished ones so the set stays as small as what is in flight.
                while self.proposals.try_join_next().is_some() {}
                self.proposals.spawn(async move {
                    let result = match raft.propose(command, timeout).await {
                        Ok(result) => Some(result),
                        Err(e) => {
                            tracing::debug!("proposal not committed: {e}");
                            None
                        }
                    };
                    let _ = tx.send(Done::Proposal { token, result });
                });
            }
            Action::GuardHold { group, until } => {
                self.guard_holds.insert(group.clone(), until);
                self.runner.set_guard_deadline(group.as_str(), Some(until));
                let resources = self.resources(&group);
                let env = self.runner.env(group.as_str());
                if let Some(guard) = self.guard.as_mut() {
                    if let Err(e) = guard.hold(group.as_str(), until, &resources, &env) {
                        error!(%group, "guard unreachable: {e}");
                    }
                }
            }
            Action::GuardRelease { group } => {
                self.guard_holds.remove(&group);
                self.runner.set_guard_deadline(group.as_str(), None);
                if let Some(guard) = self.guard.as_mut() {
                    if let Err(e) = guard.release(group.as_str()) {
                        error!(%group, "guard unreachable: {e}");
                    }
                }
            }
            Action::StartResource {
                group,
                epoch,
                resource,
            } => {
                if resource == 0 {
                    info!(%group, epoch, "starting group");
                    // The resources the start began with are the ones stopped,
                    // whatever a reload changes meanwhile.
                    self.started_with.remove(&group);
                    let resources = self.resources(&group);
                    self.started_with.insert(group.clone(), resources);
                }
                let spec = self.resources(&group).get(resource).cloned();
                let runner = self.runner.clone();
                let tx = self.done_tx.clone();
                let name = group.clone();
                let handle = tokio::spawn(async move {
                    let result = match spec {
                        Some(spec) => runner.start_one(name.as_str(), &spec).await,
                        None => Err(format!("the group has no resource number {}", resource + 1)),
                    };
                    let _ = tx.send(Done::ResourceStarted {
                        group: name,
                        epoch,
                        resource,
                        result,
                    });
                });
                self.starts.insert(group, handle);
            }
            Action::StartMonitors { group, epoch } => {
                info!(%group, epoch, "group running");
                self.spawn_monitors(&group, epoch);
            }
            Action::StopGroup { group, epoch, kind } => {
                match kind {
                    StopKind::Emergency => warn!(%group, epoch, "lease ending: stopping group now"),
                    StopKind::Orderly => info!(%group, epoch, "stopping group"),
                }
                for monitor in self.monitors.remove(&group).unwrap_or_default() {
                    monitor.abort();
                }
                let start = self.starts.remove(&group);
                let resources = self.resources(&group);
                self.started_with.remove(&group);
                let runner = self.runner.clone();
                let tx = self.done_tx.clone();
                tokio::spawn(async move {
                    if let Some(start) = start {
                        // A start still running must not add anything after the stop.
                        start.abort();
                        let _ = start.await;
                    }
                    match runner.stop_all(group.as_str(), &resources, kind).await {
                        Ok(()) => {
                            info!(%group, epoch, "group stopped");
                            let _ = tx.send(Done::Stopped { group, epoch });
                        }
                        Err(reason) => {
                            let _ = tx.send(Done::StopFailed {
                                group,
                                epoch,
                                reason,
                            });
                        }
                    }
                });
            }
        }
    }

    /// The guard is the only thing that removes our addresses if this daemon is
    /// killed or paused; if it died, start another and hand it every deadline.
    fn check_guard(&mut self) {
        let alive = match self.guard.as_mut() {
            Some(guard) => guard.is_alive(),
            None => return,
        };
        if alive {
            return;
        }
        error!("the guard process died; starting a new one");
        self.guard = None;
        let Some((program, args)) = self.guard_command.clone() else {
            return;
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match GuardClient::spawn(&program, &args) {
            Ok(guard) => {
                self.runner.commands.attach(&guard);
                self.guard = Some(guard);
                for (group, until) in self.guard_holds.clone() {
                    let resources = self.resources(&group);
                    let env = self.runner.env(group.as_str());
                    if let Some(guard) = self.guard.as_mut() {
                        if let Err(e) = guard.hold(group.as_str(), until, &resources, &env) {
                            error!(%group, "new guard unreachable: {e}");
                        }
                    }
                }
            }
            Err(e) => error!(
                "cannot start a new guard: {e}; addresses are unprotected if this daemon dies"
            ),
        }
    }

    fn spawn_monitors(&mut self, group: &GroupName, epoch: u64) {
        let mut handles = Vec::new();
        // Reports every failure and the first success after one; how many
        // failures move the group is the engine's decision.
        for (index, resource) in self.resources(group).into_iter().enumerate() {
            let runner = self.runner.clone();
            let tx = self.done_tx.clone();
            let group = group.clone();
            handles.push(tokio::spawn(async move {
                let interval = resource.monitor_interval();
                let mut failing = false;
                loop {
                    tokio::time::sleep(interval).await;
                    let failure = match runner.monitor(group.as_str(), &resource).await {
                        Ok(()) if !failing => continue,
                        Ok(()) => None,
                        Err(reason) => Some(format!("{}: {reason}", resource.label())),
                    };
                    failing = failure.is_some();
                    let checked = Done::MonitorChecked {
                        group: group.clone(),
                        epoch,
                        resource: index,
                        failure,
                    };
                    if tx.send(checked).is_err() {
                        return;
                    }
                }
            }));
        }
        self.monitors.insert(group.clone(), handles);
    }

    /// Last resort on exit: nothing of ours may stay up.
    async fn stop_everything(&mut self) {
        for (_, monitors) in std::mem::take(&mut self.monitors) {
            for m in monitors {
                m.abort();
            }
        }
        let starts = std::mem::take(&mut self.starts);
        for (group, start) in starts {
            start.abort();
            let _ = start.await;
            let resources = self.resources(&group);
            if let Err(e) = self
                .runner
                .stop_all(group.as_str(), &resources, StopKind::Emergency)
                .await
            {
                error!(%group, "stop at exit failed: {e}");
            }
        }
    }
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

/// Numbers the runs of the daemon on this node: read the last one from the state
/// directory, add one, write it back durably before use. Growing numbers let the
/// replicated state ignore a delayed message of an earlier run.
fn next_incarnation(state_dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = state_dir.join("incarnation");
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("{}: not a number: {:?}", path.display(), text.trim()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    // Also at least the wall clock in microseconds: a state directory restored
    // from a backup or a VM snapshot must not hand out a number already used.
    let wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let next = (previous + 1).max(wall_us);
    let tmp = state_dir.join("incarnation.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{next}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}

/// One log line when a node stops or resumes renewing, as seen from here.
fn log_liveness_changes(known: &mut BTreeMap<String, bool>, status: &ClusterStatus) {
    for member in status.members.iter().filter(|m| m.role == "node") {
        let before = known.insert(member.name.clone(), member.live);
        match (before, member.live) {
            (Some(true), false) => warn!(member = %member.name, "member stopped renewing"),
            (Some(false), true) | (None, true) => info!(member = %member.name, "member is live"),
            _ => {}
        }
    }
}

fn build_status(
    config: &ClusterConfig,
    me: &NodeName,
    engine: &NodeEngine,
    raft: &RaftNode,
    now: Millis,
) -> ClusterStatus {
    let raft_status = raft.status();
    let name_of = |id: u64| {
        config
            .member_by_id(id)
            .map_or_else(|| format!("#{id}"), |m| m.name.to_string())
    };
    let topo = engine.topology();
    let members = config
        .members
        .iter()
        .map(|m| {
            let seen = engine.liveness().get(m.id).filter(|s| s.heard);
            MemberStatus {
                name: m.name.to_string(),
                address: m.address.to_string(),
                role: match m.role {
                    MemberRole::Node => "node".into(),
                    MemberRole::Witness => "witness".into(),
                },
                last_renewal_age_ms: seen.map(|s| now.saturating_sub(s.at)),
                live: engine.liveness().is_live(m.id, now, topo.lease_ms),
                is_leader: raft_status.leader == Some(m.id),
            }
        })
        .collect();
    let state = engine.state();
    let groups = config
        .groups
        .iter()
        .map(|g| {
            let gs = state.group(&g.name);
            GroupStatus {
                name: g.name.to_string(),
                owner: gs.owner.map(name_of),
                epoch: gs.epoch,
                local_phase: engine.agent().phase(&g.name).map(|p| match p {
                    crate::engine::GroupPhase::Waiting => "waiting".to_string(),
                    crate::engine::GroupPhase::Starting => "starting".to_string(),
                    crate::engine::GroupPhase::Running => "running".to_string(),
                    crate::engine::GroupPhase::Stopping { .. } => "stopping".to_string(),
                }),
                claim_remaining_ms: engine
                    .agent()
                    .claim_until(&g.name)
                    .map(|until| until.saturating_sub(now)),
                failed_on: gs.failed_on.iter().map(|n| name_of(*n)).collect(),
                move_to: gs.move_to.map(name_of),
                last_transition: gs.last_transition.as_ref().map_or("-".to_string(), |t| {
                    let who = |n: Option<u64>| n.map_or("nobody".to_string(), name_of);
                    format!(
                        "epoch {}: {} -> {} ({})",
                        t.epoch,
                        who(t.from),
                        who(t.to),
                        t.reason
                    )
                }),
                resources: g.resources.iter().map(|r| r.label()).collect(),
            }
        })
        .collect();
    ClusterStatus {
        cluster: config.name.clone(),
        me: me.to_string(),
        term: raft_status.term,
        leader: raft_status.leader.map(name_of),
        quorum: raft_status.has_quorum(),
        last_log_index: raft_status.last_log_index,
        last_applied: raft_status.last_applied,
        members,
        groups,
        lease_remaining_ms: engine.agent().lease_until().saturating_sub(now),
    }
}
