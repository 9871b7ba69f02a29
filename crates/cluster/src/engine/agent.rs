//! The per-node agent: renews this node's lease through the quorum and decides
//! when to start and stop the groups the log assigns to it.
//!
//! Safety rule it keeps: a group runs here only while the log says this node owns
//! it AND the node holds a lease, i.e. a renewal it sent at local time `t` has been
//! committed and `now < t + lease - stop_margin`. The guard process outside the
//! daemon holds the same deadline, so the addresses go even if this process stops.

use crate::engine::state::{ApplyResult, ClusterState, Command, ReleaseReason, RenewalId};

use crate::engine::topology::Topology;
use std::collections::BTreeMap;
use std::sync::Arc;
use uphold_core::{GroupName, Millis, NodeId};

/// Pause between attempts to stop a group whose stop failed.
const STOP_RETRY_MS: Millis = 1000;

/// How a group is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// The lease is (nearly) lost: take the addresses down first, then the rest.
    Emergency,
    /// A normal stop: resources in reverse order.
    Orderly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupPhase {
    Starting,
    Running,
    Stopping {
        kind: StopKind,
        /// Propose this release once the group is down.
        then_release: Option<ReleaseReason>,
    },
}

#[derive(Clone, Debug)]
struct LocalGroup {
    epoch: u64,
    phase: GroupPhase,
    /// After a failed stop: when to try again. The group is neither released
    /// nor let go by the guard meanwhile, so nobody else may start it.
    retry_stop_at: Option<Millis>,
    /// The lease deadline last handed to the guard for this group.
    guard_until: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Tick,
    Applied(Arc<ClusterState>),
    ProposalDone {
        command: Command,
        /// None: no answer (lost, timed out, no leader).
        result: Option<ApplyResult>,
    },
    GroupStarted {
        group: GroupName,
        epoch: u64,
        result: Result<(), String>,
    },
    GroupStopped {
        group: GroupName,
        epoch: u64,
    },
    /// A resource could not be stopped: the group may still be partly up here.
    GroupStopFailed {
        group: GroupName,
        epoch: u64,
        reason: String,
    },
    MonitorFailed {
        group: GroupName,
        epoch: u64,
        reason: String,
    },
    /// Stop everything, hand the groups back, then report idle.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentAction {
    Propose(Command),
    StartGroup {
        group: GroupName,
        epoch: u64,
    },
    StopGroup {
        group: GroupName,
        epoch: u64,
        kind: StopKind,
    },
    /// Tell the guard: undo this group at `until` unless told otherwise.
    GuardHold {
        group: GroupName,
        until: Millis,
    },
    GuardRelease {
        group: GroupName,
    },
}

#[derive(Debug)]
pub struct Agent {
    me: NodeId,
    incarnation: u64,
    next_seq: u64,
    /// Renewals sent and not yet answered, by sequence number, with their send time.
    pending_renewals: BTreeMap<u64, Millis>,
    last_renewal_sent: Option<Millis>,
    lease_until: Millis,
    groups: BTreeMap<GroupName, LocalGroup>,
    /// Releases proposed and not yet answered: group -> epoch.
    releasing: BTreeMap<GroupName, (u64, Millis)>,
    /// Groups this node stopped and gave up at an epoch (failed monitor or start,
    /// a move): never restarted at that epoch, and the release is retried until
    /// the log records it.
    given_up: BTreeMap<GroupName, (u64, ReleaseReason)>,
    state: Arc<ClusterState>,
    shutting_down: bool,
}

impl Agent {
    /// `incarnation` must differ between two runs of the daemon on the same node
    /// (a random number), so renewals of a previous run never count as leases.
    pub fn new(me: NodeId, incarnation: u64) -> Agent {
        Agent {
            me,
            incarnation,
            next_seq: 1,
            pending_renewals: BTreeMap::new(),
            last_renewal_sent: None,
            lease_until: 0,
            groups: BTreeMap::new(),
            releasing: BTreeMap::new(),
            given_up: BTreeMap::new(),
            state: Arc::new(ClusterState::default()),
            shutting_down: false,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    pub fn lease_until(&self) -> Millis {
        self.lease_until
    }

    pub fn phase(&self, group: &GroupName) -> Option<&GroupPhase> {
        self.groups.get(group).map(|g| &g.phase)
    }

    /// Groups started or running here (not stopping).
    pub fn active_groups(&self) -> impl Iterator<Item = &GroupName> {
        self.groups
            .iter()
            .filter(|(_, g)| matches!(g.phase, GroupPhase::Starting | GroupPhase::Running))
            .map(|(name, _)| name)
    }

    /// Shut down and nothing left to hand back.
    pub fn is_done(&self) -> bool {
        self.shutting_down && self.groups.is_empty() && self.releasing.is_empty() && {
            // Also wait until the log no longer names us as owner of anything we could
            // release; a group we never started is released below.
            !self.state.groups.values().any(|g| g.owner == Some(self.me))
        }
    }

    pub fn on_event(
        &mut self,
        event: AgentEvent,
        now: Millis,
        topo: &Topology,
    ) -> Vec<AgentAction> {
        let mut actions = Vec::new();
        match event {
            AgentEvent::Tick => {}
            AgentEvent::Applied(state) => {
                self.releasing
                    .retain(|group, (epoch, _)| state.epoch_of(group) == *epoch);
                self.note_applied_renewal(&state, topo);
                self.state = state;
            }
            AgentEvent::ProposalDone { command, result } => {
                if let Command::Release { group, epoch, .. } = command {
                    if result.is_none() || matches!(result, Some(ApplyResult::Rejected(_))) {
                        // Retried from `step` while the log still names us.
                        if self.releasing.get(&group).map(|r| r.0) == Some(epoch) {
                            self.releasing.remove(&group);
                        }
                    }
                }
                // Renewals count when this member *applies* them, not when the
                // leader answers: only then does our copy of the state include every
                // command logged before the renewal, so "the log gives us this group"
                // is true at the renewal's position and not just in a stale view
                // (a restarted daemon replays old entries that still name it owner).
            }
            AgentEvent::GroupStarted {
                group,
                epoch,
                result,
            } => {
                if let Some(local) = self.groups.get_mut(&group) {
                    if local.epoch == epoch && local.phase == GroupPhase::Starting {
                        match result {
                            Ok(()) => local.phase = GroupPhase::Running,
                            Err(reason) => {
                                local.phase = GroupPhase::Stopping {
                                    kind: StopKind::Orderly,
                                    then_release: Some(ReleaseReason::StartFailed(reason)),
                                };
                                actions.push(AgentAction::StopGroup {
                                    group: group.clone(),
                                    epoch,
                                    kind: StopKind::Orderly,
                                });
                            }
                        }
                    }
                }
            }
            AgentEvent::MonitorFailed {
                group,
                epoch,
                reason,
            } => {
                if let Some(local) = self.groups.get_mut(&group) {
                    if local.epoch == epoch && local.phase == GroupPhase::Running {
                        local.phase = GroupPhase::Stopping {
                            kind: StopKind::Orderly,
                            then_release: Some(ReleaseReason::MonitorFailed(reason)),
                        };
                        actions.push(AgentAction::StopGroup {
                            group: group.clone(),
                            epoch,
                            kind: StopKind::Orderly,
                        });
                    }
                }
            }
            AgentEvent::GroupStopped { group, epoch } => {
                if let Some(local) = self.groups.get(&group) {
                    if local.epoch == epoch {
                        if let GroupPhase::Stopping { then_release, .. } = &local.phase {
                            let then_release = then_release.clone();
                            self.groups.remove(&group);
                            actions.push(AgentAction::GuardRelease {
                                group: group.clone(),
                            });
                            if let Some(reason) = then_release {
                                self.given_up.insert(group.clone(), (epoch, reason.clone()));
                                self.propose_release(&group, epoch, reason, now, &mut actions);
                            }
                        }
                    }
                }
            }
            AgentEvent::GroupStopFailed {
                group,
                epoch,
                reason: _,
            } => {
                if let Some(local) = self.groups.get_mut(&group) {
                    if local.epoch == epoch && matches!(local.phase, GroupPhase::Stopping { .. }) {
                        local.retry_stop_at = Some(now.saturating_add(STOP_RETRY_MS));
                    }
                }
            }
            AgentEvent::Shutdown => self.shutting_down = true,
        }
        self.step(now, topo, &mut actions);
        actions
    }

    fn note_applied_renewal(&mut self, state: &ClusterState, topo: &Topology) {
        let Some(applied) = state.last_renewal.get(&self.me) else {
            return;
        };
        if applied.incarnation != self.incarnation {
            return;
        }
        if let Some(sent_at) = self.pending_renewals.get(&applied.seq) {
            self.lease_until = self.lease_until.max(sent_at + topo.lease_ms);
        }
        // Older renewals were lost or are superseded by this one.
        self.pending_renewals.retain(|seq, _| *seq > applied.seq);
    }

    fn propose_release(
        &mut self,
        group: &GroupName,
        epoch: u64,
        reason: ReleaseReason,
        now: Millis,
        actions: &mut Vec<AgentAction>,
    ) {
        let gs = self.state.group(group);
        if gs.owner == Some(self.me) && gs.epoch == epoch && !self.releasing.contains_key(group) {
            self.releasing.insert(group.clone(), (epoch, now));
            actions.push(AgentAction::Propose(Command::Release {
                group: group.clone(),
                node: self.me,
                epoch,
                incarnation: self.incarnation,
                reason,
            }));
        }
    }

    /// The deadline handed to the guard: half the stop margin before the lease
    /// ends, so the guard's own wake-up and netlink call fit inside the lease.
    fn guard_deadline(&self, topo: &Topology) -> Millis {
        self.lease_until.saturating_sub(topo.stop_margin_ms / 2)
    }

    fn lease_ok(&self, now: Millis, topo: &Topology) -> bool {
        now.saturating_add(topo.stop_margin_ms) < self.lease_until
    }

    fn step(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        if !topo.nodes.contains(&self.me) {
            // A witness votes but never renews or runs anything.
            return;
        }
        self.renew(now, topo, actions);
        let lease_ok = self.lease_ok(now, topo);

        // Groups running here that must stop.
        let guard_deadline = self.guard_deadline(topo);
        let local_names: Vec<GroupName> = self.groups.keys().cloned().collect();
        for name in local_names {
            let gs = self.state.group(&name);
            let Some(local) = self.groups.get_mut(&name) else {
                continue;
            };
            if let GroupPhase::Stopping { kind, .. } = local.phase {
                if local.retry_stop_at.is_some_and(|at| now >= at) {
                    local.retry_stop_at = None;
                    actions.push(AgentAction::StopGroup {
                        group: name.clone(),
                        epoch: local.epoch,
                        kind,
                    });
                }
                // Keep the guard's deadline moving while we still hold the lease.
                if local.guard_until < guard_deadline && lease_ok {
                    local.guard_until = guard_deadline;
                    actions.push(AgentAction::GuardHold {
                        group: name.clone(),
                        until: local.guard_until,
                    });
                }
                continue;
            }
            let ours = gs.owner == Some(self.me) && gs.epoch == local.epoch;
            // Past the deadline handed to the guard, the guard has undone the
            // group (we were paused): stop it ourselves too and start afresh.
            let guard_fired = now >= local.guard_until;
            let stop = if !lease_ok || !ours || guard_fired {
                Some((StopKind::Emergency, None))
            } else if self.shutting_down {
                Some((StopKind::Orderly, Some(ReleaseReason::Shutdown)))
            } else if topo.group(&name).is_none() {
                Some((StopKind::Orderly, Some(ReleaseReason::NotConfigured)))
            } else if gs.move_to.is_some_and(|to| to != self.me) {
                Some((StopKind::Orderly, Some(ReleaseReason::Moved)))
            } else {
                None
            };
            if let Some((kind, then_release)) = stop {
                local.phase = GroupPhase::Stopping { kind, then_release };
                actions.push(AgentAction::StopGroup {
                    group: name.clone(),
                    epoch: local.epoch,
                    kind,
                });
            } else if local.guard_until < guard_deadline {
                local.guard_until = guard_deadline;
                actions.push(AgentAction::GuardHold {
                    group: name.clone(),
                    until: local.guard_until,
                });
            }
        }

        // Groups the log gives us that are not running here.
        let owned: Vec<(GroupName, u64)> = self
            .state
            .groups
            .iter()
            .filter(|(_, g)| g.owner == Some(self.me))
            .map(|(name, g)| (name.clone(), g.epoch))
            .collect();
        let state = self.state.clone();
        self.given_up
            .retain(|group, (epoch, _)| state.epoch_of(group) == *epoch);
        for (name, epoch) in owned {
            if self.groups.contains_key(&name) {
                continue;
            }
            if let Some((given_epoch, reason)) = self.given_up.get(&name).cloned() {
                if given_epoch == epoch {
                    // Stopped on purpose: only the release is left to do.
                    self.propose_release(&name, epoch, reason, now, actions);
                    continue;
                }
            }
            let configured = topo.group(&name).is_some();
            let move_away = self
                .state
                .group(&name)
                .move_to
                .is_some_and(|to| to != self.me);
            if self.shutting_down {
                self.propose_release(&name, epoch, ReleaseReason::Shutdown, now, actions);
            } else if !configured {
                self.propose_release(&name, epoch, ReleaseReason::NotConfigured, now, actions);
            } else if move_away {
                self.propose_release(&name, epoch, ReleaseReason::Moved, now, actions);
            } else if lease_ok {
                let until = self.guard_deadline(topo);
                self.groups.insert(
                    name.clone(),
                    LocalGroup {
                        epoch,
                        phase: GroupPhase::Starting,
                        retry_stop_at: None,
                        guard_until: until,
                    },
                );
                // The guard learns the deadline before anything is started.
                actions.push(AgentAction::GuardHold {
                    group: name.clone(),
                    until,
                });
                actions.push(AgentAction::StartGroup { group: name, epoch });
            }
        }

        // Releases that got no answer are retried after a while.
        let retry_after = topo.proposal_timeout_ms;
        self.releasing
            .retain(|_, (_, sent)| now.saturating_sub(*sent) < retry_after);
    }

    /// The next instant at which this agent has something to do without any new
    /// event: a renewal falls due, or the lease reaches its stop margin while a
    /// group runs. The executor sleeps until then (or an event).
    pub fn next_deadline(&self, topo: &Topology) -> Option<Millis> {
        if !topo.nodes.contains(&self.me) {
            return None;
        }
        let renew = self
            .last_renewal_sent
            .map_or(0, |last| last.saturating_add(self.renew_interval(topo)));
        let running = self
            .groups
            .values()
            .any(|g| matches!(g.phase, GroupPhase::Starting | GroupPhase::Running));
        let stop = running.then(|| self.lease_until.saturating_sub(topo.stop_margin_ms));
        Some(stop.map_or(renew, |stop| stop.min(renew)))
    }

    /// Owners renew at the configured interval. A node that runs nothing renews
    /// half as often: enough to stay a live candidate (seen within a lease) and to
    /// hold a lease with room to start a group the moment one is assigned, at a
    /// third less consensus traffic in a cluster with one group per three nodes.
    fn renew_interval(&self, topo: &Topology) -> Millis {
        let owns_something = !self.groups.is_empty()
            || self.state.groups.values().any(|g| g.owner == Some(self.me))
            || self.shutting_down;
        if owns_something {
            topo.renew_interval_ms
        } else {
            topo.renew_interval_ms * 2
        }
    }

    fn renew(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        // A renewal older than a lease can no longer grant anything.
        self.pending_renewals
            .retain(|_, sent| now < sent.saturating_add(topo.lease_ms));
        let due = match self.last_renewal_sent {
            None => true,
            Some(last) => now >= last.saturating_add(self.renew_interval(topo)),
        };
        if !due {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_renewals.insert(seq, now);
        self.last_renewal_sent = Some(now);
        actions.push(AgentAction::Propose(Command::Renew {
            node: self.me,
            renewal: RenewalId {
                incarnation: self.incarnation,
                seq,
            },
        }));
    }
}
