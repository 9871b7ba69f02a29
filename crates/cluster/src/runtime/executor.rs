//! Carrying out the engine's actions: proposals, renewals and gate queries to the
//! other voters, resource starts and stops, monitors, the guard's deadlines. Each
//! result comes back to the decision loop as a `Done`, turned into an event.

use super::lease_service::{LEASE_GATE, LEASE_RENEW};
use super::resources::ResourceRunner;
use crate::engine::{Action, GateAnswer, GateQuery, RenewalAck, ResourceReport, StopKind};
use crate::raft::RaftNode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use uphold_config::ClusterConfig;
use uphold_core::{GroupName, Millis, NodeName, ResourceSpec};
use uphold_os::guard::GuardClient;
use uphold_proto::rpc::RpcClient;

pub(super) enum Done {
    Proposal {
        token: u64,
        result: Option<crate::engine::ApplyResult>,
    },
    /// A resource started, a group stopped or not, a check's result.
    Resource(ResourceReport),
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

pub(super) struct Executor {
    pub(super) config: ClusterConfig,
    pub(super) raft: Arc<RaftNode>,
    pub(super) runner: ResourceRunner,
    pub(super) guard: Option<GuardClient>,
    pub(super) done_tx: mpsc::UnboundedSender<Done>,
    /// Per group: the running start task (aborted by an emergency stop) and monitors.
    pub(super) starts: BTreeMap<GroupName, JoinHandle<()>>,
    pub(super) monitors: BTreeMap<GroupName, Vec<JoinHandle<()>>>,
    /// Resources as they were when each group started here: a reload that
    /// changes a running group's resources takes effect at its next start, and
    /// the stop undoes exactly what was started.
    pub(super) started_with: BTreeMap<GroupName, Vec<ResourceSpec>>,
    /// Deadlines the guard holds, to hand to a new guard if it has to be restarted.
    pub(super) guard_holds: BTreeMap<GroupName, Millis>,
    pub(super) guard_command: Option<(std::path::PathBuf, Vec<String>)>,
    pub(super) proposal_timeout: Duration,
    /// Proposals in flight. Each holds the Raft handle; at exit they are
    /// cancelled so Raft can be shut down and its log closed.
    pub(super) proposals: tokio::task::JoinSet<()>,
    /// Lease messages in flight to other members.
    pub(super) lease_calls: tokio::task::JoinSet<()>,
    /// Every other voter, as the RPC client dials it.
    pub(super) peers: Vec<(uphold_core::NodeId, NodeName, std::net::SocketAddr)>,
    pub(super) rpc: Arc<RpcClient>,
    /// A renewal answered later than this grants nothing useful.
    pub(super) lease_call_timeout: Duration,
}

impl Executor {
    pub(super) fn resources(&self, group: &GroupName) -> Vec<ResourceSpec> {
        if let Some(resources) = self.started_with.get(group) {
            return resources.clone();
        }
        self.config
            .group(group.as_str())
            .map(|g| g.resources.clone())
            .unwrap_or_default()
    }

    pub(super) fn perform_all(&mut self, actions: Vec<Action>) {
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
                    Ok(bytes) => match super::lease_service::decode::<T>("lease answer", &bytes) {
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
            Action::SendRenewal(renewal) => match super::lease_service::encode("renewal", &renewal)
            {
                Ok(body) => self.broadcast(LEASE_RENEW, body, |from, ack: Option<RenewalAck>| {
                    ack.map(|ack| Done::RenewalAck { from, ack })
                }),
                Err(e) => error!("{e}"),
            },
            Action::SendGateQuery(query) => {
                match super::lease_service::encode("gate query", &query) {
                    Ok(body) => {
                        self.broadcast(LEASE_GATE, body, move |from, answer: GateAnswer| {
                            Some(Done::GateAnswer {
                                from,
                                query: query.clone(),
                                answer,
                            })
                        })
                    }
                    Err(e) => error!("{e}"),
                }
            }
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
                    let _ = tx.send(Done::Resource(ResourceReport::Started {
                        group: name,
                        epoch,
                        resource,
                        result,
                    }));
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
                            let _ =
                                tx.send(Done::Resource(ResourceReport::Stopped { group, epoch }));
                        }
                        Err(reason) => {
                            error!(%group, "stop failed; the group stays owned here and the stop is retried: {reason}");
                            let _ = tx.send(Done::Resource(ResourceReport::StopFailed {
                                group,
                                epoch,
                                reason,
                            }));
                        }
                    }
                });
            }
        }
    }

    /// The guard is the only thing that removes our addresses if this daemon is
    /// killed or paused; if it died, start another and hand it every deadline.
    pub(super) fn check_guard(&mut self) {
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

    pub(super) fn spawn_monitors(&mut self, group: &GroupName, epoch: u64) {
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
                    match &failure {
                        Some(reason) => warn!(%group, "monitor check failed: {reason}"),
                        None => info!(%group, "monitor check passed again"),
                    }
                    let checked = Done::Resource(ResourceReport::MonitorChecked {
                        group: group.clone(),
                        epoch,
                        resource: index,
                        failure,
                    });
                    if tx.send(checked).is_err() {
                        return;
                    }
                }
            }));
        }
        self.monitors.insert(group.clone(), handles);
    }

    /// Last resort on exit: nothing of ours may stay up.
    pub(super) async fn stop_everything(&mut self) {
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
