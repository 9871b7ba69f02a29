//! The per-node agent: renews this node's claims with the voters, and decides
//! when to start and stop the groups the log assigns to it.
//!
//! Safety rule it keeps: a group runs here only while the log says this node owns
//! it at some epoch AND a majority of voters granted this node's claim on that
//! epoch within the lease (`crate::engine::lease`), less a stop margin; and a
//! group taken from another node starts only after the start gate. The guard
//! process outside the daemon holds the same deadline, so the addresses go even
//! if this process stops. And nothing is started before this run's guard has
//! taken control of the node's resources: a guard of an earlier run (the daemon
//! crashed and was restarted at once) may still be stopping them.

use crate::engine::lease::{
    gate_remaining_ms, Claim, GateAnswer, GateQuery, Renewal, RenewalAck, MAX_CLAIMS,
};
use crate::engine::state::{ApplyResult, ClusterState, Command, ReleaseReason, RenewalId};
use crate::engine::topology::Topology;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uphold_core::{GroupName, Millis, NodeId};

/// Pause between attempts to stop a group whose stop failed.
const STOP_RETRY_MS: Millis = 1000;
/// Pause between two gate queries while some voters have not applied the
/// assignment yet.
const GATE_RETRY_MS: Millis = 20;

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
    /// Assigned here; waiting for a quorum to grant the claim and for the start
    /// gate. Nothing of the group runs yet.
    Waiting,
    Starting,
    Running,
    Stopping {
        kind: StopKind,
        /// Propose this release once the group is down.
        then_release: Option<ReleaseReason>,
    },
}

/// The start gate of one assignment: `Fenced` answers by voter, as the local
/// time until which that voter's latest earlier-epoch grant may still run.
#[derive(Clone, Debug, Default)]
struct Gate {
    applied_index: u64,
    fenced_until: BTreeMap<NodeId, Millis>,
    asked_at: Option<Millis>,
    /// Set once a majority answered: the group may start from this time on.
    opens_at: Option<Millis>,
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
    /// A majority granted the claim on this epoch until then (own clock).
    claim_until: Millis,
    /// Voters that refused the claim: their log has the group at a later epoch.
    refused_by: BTreeSet<NodeId>,
    gate: Gate,
    /// While starting: the resources already up, in start order, and how many
    /// the group had when its start began.
    start: StartProgress,
    /// Failed checks in a row, by resource; a success clears its entry.
    monitor_failures: BTreeMap<usize, u32>,
}

/// A start goes one resource at a time, each asked for only while the claim
/// still holds past the stop margin: a start resumed after a pause or a slow
/// resource adds nothing once the lease runs low.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StartProgress {
    up: usize,
    total: usize,
    /// A resource's start was asked for and has not been answered.
    in_flight: bool,
}

impl LocalGroup {
    /// The group failed here: stop it in order, then release it with `reason`
    /// so that it moves and is not placed here again.
    fn stop_to_hand_over(&mut self, group: &GroupName, reason: ReleaseReason) -> AgentAction {
        self.phase = GroupPhase::Stopping {
            kind: StopKind::Orderly,
            then_release: Some(reason),
        };
        AgentAction::StopGroup {
            group: group.clone(),
            epoch: self.epoch,
            kind: StopKind::Orderly,
        }
    }
}

/// What an executor reports about a group's resources on its node: the same
/// reports reach the node engine and its agent.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceReport {
    /// Resource `resource` (its place in the group) of a group starting here
    /// is up, or failed to start.
    Started {
        group: GroupName,
        epoch: u64,
        resource: usize,
        result: Result<(), String>,
    },
    Stopped {
        group: GroupName,
        epoch: u64,
    },
    /// A resource could not be stopped: the group may still be partly up here.
    StopFailed {
        group: GroupName,
        epoch: u64,
        reason: String,
    },
    /// A check of resource `resource` (its place in the group) ended: `failure`
    /// says why it failed. Executors report every failure and the first success
    /// after one; the engine counts failures in a row against the group's spec.
    MonitorChecked {
        group: GroupName,
        epoch: u64,
        resource: usize,
        failure: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Tick,
    /// The state machine applied the log up to `index`.
    Applied {
        state: Arc<ClusterState>,
        index: u64,
    },
    RenewalAnswered {
        from: NodeId,
        ack: RenewalAck,
    },
    GateAnswered {
        from: NodeId,
        query: GateQuery,
        answer: GateAnswer,
    },
    ProposalDone {
        command: Command,
        /// None: no answer (lost, timed out, no leader).
        result: Option<ApplyResult>,
    },
    /// What the executor reports about a group's resources here.
    Resource(ResourceReport),
    /// Stop everything, hand the groups back, then report idle.
    Shutdown,
    /// This run's guard holds the node's resources: no guard of an earlier run
    /// is still undoing them. Nothing starts before.
    GuardReady,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentAction {
    Propose(Command),
    /// Send to every voter, this member's included.
    Renew(Renewal),
    /// Send to every voter, this member's included.
    QueryGate(GateQuery),
    /// Start resource `resource` (its place in the group) of a group starting
    /// here; the ones before it are up.
    StartResource {
        group: GroupName,
        epoch: u64,
        resource: usize,
    },
    /// Every resource is up: check them from now on.
    StartMonitors {
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

/// A renewal sent and not yet answered by every voter.
#[derive(Clone, Debug)]
struct PendingRenewal {
    sent_at: Millis,
    claims: Vec<Claim>,
    acked_by: BTreeSet<NodeId>,
    granted_by: BTreeMap<GroupName, BTreeSet<NodeId>>,
}

#[derive(Debug)]
pub struct Agent {
    me: NodeId,
    incarnation: u64,
    next_seq: u64,
    pending: BTreeMap<u64, PendingRenewal>,
    last_renewal_sent: Option<Millis>,
    /// The claims changed: renew at the next step instead of at the interval.
    renew_now: bool,
    /// A majority acknowledged a renewal sent at `t`: `t + lease`.
    lease_until: Millis,
    groups: BTreeMap<GroupName, LocalGroup>,
    /// Claims stopped for good, repeated in renewals until this time.
    withdrawn: BTreeMap<Claim, Millis>,
    /// Releases proposed and not yet answered: group -> (epoch, sent at).
    releasing: BTreeMap<GroupName, (u64, Millis)>,
    /// Groups this node stopped and gave up at an epoch (failed monitor or start,
    /// a move): never restarted at that epoch, and the release is retried until
    /// the log records it.
    given_up: BTreeMap<GroupName, (u64, ReleaseReason)>,
    /// When to propose this run's Join (again) while the log lacks it.
    join_retry_at: Option<Millis>,
    state: Arc<ClusterState>,
    applied_index: u64,
    shutting_down: bool,
    /// See [`AgentEvent::GuardReady`].
    in_control: bool,
}

impl Agent {
    /// `incarnation` must grow between two runs of the daemon on the same node,
    /// so messages of a previous run are told apart.
    pub fn new(me: NodeId, incarnation: u64) -> Agent {
        Agent {
            me,
            incarnation,
            next_seq: 1,
            pending: BTreeMap::new(),
            last_renewal_sent: None,
            renew_now: false,
            lease_until: 0,
            groups: BTreeMap::new(),
            withdrawn: BTreeMap::new(),
            releasing: BTreeMap::new(),
            given_up: BTreeMap::new(),
            join_retry_at: None,
            state: Arc::new(ClusterState::default()),
            applied_index: 0,
            shutting_down: false,
            in_control: false,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Until when a majority of voters acknowledged this node's renewals.
    pub fn lease_until(&self) -> Millis {
        self.lease_until
    }

    /// Until when this node may run `group` (its granted claim), if it has it here.
    pub fn claim_until(&self, group: &GroupName) -> Option<Millis> {
        self.groups.get(group).map(|g| g.claim_until)
    }

    pub fn phase(&self, group: &GroupName) -> Option<&GroupPhase> {
        self.groups.get(group).map(|g| &g.phase)
    }

    /// This run's Join is in the applied log: its releases will be accepted.
    pub fn has_joined(&self) -> bool {
        self.state.incarnations.get(&self.me) == Some(&self.incarnation)
    }

    /// Groups started or running here (not waiting, not stopping).
    pub fn active_groups(&self) -> impl Iterator<Item = &GroupName> {
        self.groups
            .iter()
            .filter(|(_, g)| matches!(g.phase, GroupPhase::Starting | GroupPhase::Running))
            .map(|(name, _)| name)
    }

    /// Shut down and nothing left to hand back.
    pub fn is_done(&self) -> bool {
        self.shutting_down
            && self.groups.is_empty()
            && self.releasing.is_empty()
            && !self.state.groups.values().any(|g| g.owner == Some(self.me))
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
            AgentEvent::Applied { state, index } => {
                self.releasing
                    .retain(|group, (epoch, _)| state.epoch_of(group) == *epoch);
                self.state = state;
                self.applied_index = self.applied_index.max(index);
            }
            AgentEvent::RenewalAnswered { from, ack } => self.on_ack(from, &ack, topo),
            AgentEvent::GateAnswered {
                from,
                query,
                answer,
            } => self.on_gate_answer(from, &query, answer, now, topo),
            AgentEvent::ProposalDone { command, result } => {
                let failed = result.is_none() || matches!(result, Some(ApplyResult::Rejected(_)));
                match command {
                    // Retried from `step` while the log still names us.
                    Command::Release { group, epoch, .. }
                        if failed && self.releasing.get(&group).map(|r| r.0) == Some(epoch) =>
                    {
                        self.releasing.remove(&group);
                    }
                    Command::Join { incarnation, .. }
                        if incarnation == self.incarnation && failed =>
                    {
                        // Soon again, but not in a loop if proposals fail at once.
                        let soon = now.saturating_add(topo.renew_interval_ms);
                        self.join_retry_at = Some(self.join_retry_at.map_or(soon, |t| t.min(soon)));
                    }
                    _ => {}
                }
            }
            AgentEvent::Resource(ResourceReport::Started {
                group,
                epoch,
                resource,
                result,
            }) => {
                let starting = self.groups.get_mut(&group).filter(|local| {
                    local.epoch == epoch
                        && local.phase == GroupPhase::Starting
                        && local.start.in_flight
                        && local.start.up == resource
                });
                if let Some(local) = starting {
                    local.start.in_flight = false;
                    match result {
                        // The next resource, if any, is asked for by `step`
                        // once it has checked the claim.
                        Ok(()) => local.start.up += 1,
                        Err(reason) => actions.push(
                            local.stop_to_hand_over(&group, ReleaseReason::StartFailed(reason)),
                        ),
                    }
                }
            }
            AgentEvent::Resource(ResourceReport::MonitorChecked {
                group,
                epoch,
                resource,
                failure,
            }) => {
                let allowed = topo
                    .group(&group)
                    .map_or(1, |spec| spec.failures_before_move(resource));
                let running = self
                    .groups
                    .get_mut(&group)
                    .filter(|local| local.epoch == epoch && local.phase == GroupPhase::Running);
                match (running, failure) {
                    (None, _) => {}
                    (Some(local), None) => {
                        local.monitor_failures.remove(&resource);
                    }
                    (Some(local), Some(reason)) => {
                        let failures = local.monitor_failures.entry(resource).or_insert(0);
                        *failures += 1;
                        if *failures >= allowed {
                            actions.push(
                                local.stop_to_hand_over(
                                    &group,
                                    ReleaseReason::MonitorFailed(reason),
                                ),
                            );
                        }
                    }
                }
            }
            AgentEvent::Resource(ResourceReport::Stopped { group, epoch }) => {
                let stopping = self.groups.get(&group).and_then(|local| {
                    match (&local.phase, local.epoch == epoch) {
                        (GroupPhase::Stopping { then_release, .. }, true) => {
                            Some(then_release.clone())
                        }
                        _ => None,
                    }
                });
                if let Some(then_release) = stopping {
                    self.groups.remove(&group);
                    actions.push(AgentAction::GuardRelease {
                        group: group.clone(),
                    });
                    // Nothing of it runs here any more, and this run never starts
                    // it again at this epoch: the next owner need not wait out
                    // our claim. That is why a claim once withdrawn is given up
                    // for good: the voters forget what they granted on it, so
                    // running on those grants again could overlap the next
                    // owner. A group stopped because its lease ran out goes back
                    // to the leader, which may place it here again at a new epoch.
                    self.withdraw(&group, epoch, now, topo);
                    let reason = then_release.unwrap_or(ReleaseReason::LeaseLost);
                    self.given_up.insert(group.clone(), (epoch, reason.clone()));
                    self.propose_release(&group, epoch, reason, now, &mut actions);
                }
            }
            AgentEvent::Resource(ResourceReport::StopFailed {
                group,
                epoch,
                reason: _,
            }) => {
                if let Some(local) = self.groups.get_mut(&group) {
                    if local.epoch == epoch && matches!(local.phase, GroupPhase::Stopping { .. }) {
                        local.retry_stop_at = Some(now.saturating_add(STOP_RETRY_MS));
                    }
                }
            }
            AgentEvent::Shutdown => self.shutting_down = true,
            AgentEvent::GuardReady => self.in_control = true,
        }
        self.step(now, topo, &mut actions);
        actions
    }

    fn withdraw(&mut self, group: &GroupName, epoch: u64, now: Millis, topo: &Topology) {
        let claim = Claim {
            group: group.clone(),
            epoch,
        };
        self.withdrawn
            .insert(claim, now.saturating_add(topo.lease_ms));
        self.renew_now = true;
    }

    fn on_ack(&mut self, from: NodeId, ack: &RenewalAck, topo: &Topology) {
        if ack.id.incarnation != self.incarnation || !topo.voters.contains(&from) {
            return;
        }
        let Some(pending) = self.pending.get_mut(&ack.id.seq) else {
            return;
        };
        pending.acked_by.insert(from);
        for claim in &pending.claims {
            let refused = ack.refused.contains(&claim.group);
            let local = self
                .groups
                .get_mut(&claim.group)
                .filter(|g| g.epoch == claim.epoch);
            if refused {
                if let Some(local) = local {
                    local.refused_by.insert(from);
                }
            } else {
                pending
                    .granted_by
                    .entry(claim.group.clone())
                    .or_default()
                    .insert(from);
            }
        }
        let majority = topo.majority();
        let until = pending.sent_at.saturating_add(topo.lease_ms);
        if pending.acked_by.len() >= majority {
            self.lease_until = self.lease_until.max(until);
        }
        for (group, granted) in &pending.granted_by {
            if granted.len() < majority {
                continue;
            }
            let claimed_epoch = pending
                .claims
                .iter()
                .find(|c| &c.group == group)
                .map(|c| c.epoch);
            if let Some(local) = self.groups.get_mut(group) {
                if Some(local.epoch) == claimed_epoch {
                    local.claim_until = local.claim_until.max(until);
                }
            }
        }
    }

    fn on_gate_answer(
        &mut self,
        from: NodeId,
        query: &GateQuery,
        answer: GateAnswer,
        now: Millis,
        topo: &Topology,
    ) {
        let GateAnswer::Fenced { since_ms } = answer else {
            return;
        };
        if !topo.voters.contains(&from) {
            return;
        }
        let Some(local) = self.groups.get_mut(&query.group) else {
            return;
        };
        if local.epoch != query.epoch || local.phase != GroupPhase::Waiting {
            return;
        }
        let until = now.saturating_add(gate_remaining_ms(topo.gate_wait_ms, since_ms));
        local.gate.fenced_until.insert(from, until);
        if local.gate.fenced_until.len() >= topo.majority() {
            // Any majority of fenced voters will do: take the one that opens
            // first (a later answer can only make it earlier).
            let mut times: Vec<Millis> = local.gate.fenced_until.values().copied().collect();
            times.sort_unstable();
            local.gate.opens_at = Some(times[topo.majority() - 1]);
        }
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
        if gs.owner == Some(self.me)
            && gs.epoch == epoch
            && self.has_joined()
            && !self.releasing.contains_key(group)
        {
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

    /// The deadline handed to the guard: half the stop margin before the claim
    /// ends, so the guard's own wake-up and netlink call fit inside the lease.
    fn guard_deadline(claim_until: Millis, topo: &Topology) -> Millis {
        claim_until.saturating_sub(topo.stop_margin_ms / 2)
    }

    fn claim_ok(claim_until: Millis, now: Millis, topo: &Topology) -> bool {
        now.saturating_add(topo.stop_margin_ms) < claim_until
    }

    /// Enough voters refused the claim that no majority can grant it any more.
    fn fenced(refused_by: &BTreeSet<NodeId>, topo: &Topology) -> bool {
        refused_by.len() > topo.voters.len() - topo.majority()
    }

    fn step(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        let runs_groups = topo.nodes.contains(&self.me);
        if runs_groups {
            self.join(now, topo, actions);
            self.stop_or_extend(now, topo, actions);
            self.take_assigned(now, topo, actions);
            self.open_gates(now, topo, actions);
            self.start_next_resources(now, topo, actions);
        }
        // Every member renews, witnesses included: their acknowledgements carry
        // what they hear of the others, which the leader needs.
        self.renew(now, topo, actions);

        let retry_after = topo.proposal_timeout_ms;
        self.releasing
            .retain(|_, (_, sent)| now.saturating_sub(*sent) < retry_after);
    }

    fn join(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        if self.has_joined() {
            return;
        }
        if self.join_retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.join_retry_at = Some(now.saturating_add(topo.proposal_timeout_ms));
        actions.push(AgentAction::Propose(Command::Join {
            node: self.me,
            incarnation: self.incarnation,
        }));
    }

    /// Groups present here that must stop, or whose guard deadline moves on.
    fn stop_or_extend(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        let names: Vec<GroupName> = self.groups.keys().cloned().collect();
        for name in names {
            let gs = self.state.group(&name);
            let Some(local) = self.groups.get_mut(&name) else {
                continue;
            };
            let claim_ok = Self::claim_ok(local.claim_until, now, topo);
            let guard_deadline = Self::guard_deadline(local.claim_until, topo);
            let ours = gs.owner == Some(self.me) && gs.epoch == local.epoch;
            let fenced = Self::fenced(&local.refused_by, topo);
            match local.phase {
                GroupPhase::Stopping { kind, .. } => {
                    if local.retry_stop_at.is_some_and(|at| now >= at) {
                        local.retry_stop_at = None;
                        actions.push(AgentAction::StopGroup {
                            group: name.clone(),
                            epoch: local.epoch,
                            kind,
                        });
                    }
                    // Keep the guard's deadline moving while we still hold the claim.
                    if local.guard_until < guard_deadline && claim_ok {
                        local.guard_until = guard_deadline;
                        actions.push(AgentAction::GuardHold {
                            group: name.clone(),
                            until: local.guard_until,
                        });
                    }
                    continue;
                }
                GroupPhase::Waiting => {
                    // Nothing runs yet: drop it if it is no longer ours to start.
                    if !ours || fenced {
                        self.groups.remove(&name);
                        if ours {
                            self.given_up
                                .insert(name.clone(), (gs.epoch, ReleaseReason::Fenced));
                            self.propose_release(
                                &name,
                                gs.epoch,
                                ReleaseReason::Fenced,
                                now,
                                actions,
                            );
                        }
                    }
                    continue;
                }
                GroupPhase::Starting | GroupPhase::Running => {}
            }
            // Past the deadline handed to the guard, the guard has undone the
            // group (we were paused): stop it ourselves too and start afresh.
            let guard_fired = now >= local.guard_until;
            let stop = if fenced && ours {
                Some((StopKind::Emergency, Some(ReleaseReason::Fenced)))
            } else if !claim_ok || !ours || guard_fired || fenced {
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
    }

    /// Groups the log gives us that are not here yet: claim them, or hand back
    /// what we will not run.
    fn take_assigned(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
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
            } else {
                self.groups.insert(
                    name.clone(),
                    LocalGroup {
                        epoch,
                        phase: GroupPhase::Waiting,
                        retry_stop_at: None,
                        guard_until: 0,
                        claim_until: 0,
                        refused_by: BTreeSet::new(),
                        gate: Gate {
                            applied_index: self.applied_index,
                            ..Gate::default()
                        },
                        start: StartProgress::default(),
                        monitor_failures: BTreeMap::new(),
                    },
                );
                self.renew_now = true;
            }
        }
    }

    /// Waiting groups: ask the gate, and start once it opened and the claim is
    /// granted, this run's Join is in the log (so that its releases count) and
    /// its guard is in control.
    fn open_gates(&mut self, now: Millis, topo: &Topology, actions: &mut Vec<AgentAction>) {
        let joined = self.has_joined() && self.in_control;
        for (name, local) in self.groups.iter_mut() {
            if local.phase != GroupPhase::Waiting {
                continue;
            }
            let gate = &mut local.gate;
            if gate.opens_at.is_none() && gate.asked_at.is_none_or(|at| now >= at + GATE_RETRY_MS) {
                gate.asked_at = Some(now);
                actions.push(AgentAction::QueryGate(GateQuery {
                    group: name.clone(),
                    epoch: local.epoch,
                    applied_index: gate.applied_index,
                }));
            }
            let gate_open = gate.opens_at.is_some_and(|at| now >= at);
            if !(gate_open && joined && Self::claim_ok(local.claim_until, now, topo)) {
                continue;
            }
            local.phase = GroupPhase::Starting;
            local.start = StartProgress {
                up: 0,
                total: topo.group(name).map_or(0, |spec| spec.resources.len()),
                in_flight: false,
            };
            local.guard_until = Self::guard_deadline(local.claim_until, topo);
            // The guard learns the deadline before anything is started.
            actions.push(AgentAction::GuardHold {
                group: name.clone(),
                until: local.guard_until,
            });
        }
    }

    /// Starting groups: ask for the next resource while the claim holds past
    /// the stop margin; once all are up the group runs. Runs after
    /// `stop_or_extend`, so a group whose lease runs low is already stopping.
    fn start_next_resources(
        &mut self,
        now: Millis,
        topo: &Topology,
        actions: &mut Vec<AgentAction>,
    ) {
        for (name, local) in self.groups.iter_mut() {
            if local.phase != GroupPhase::Starting || local.start.in_flight {
                continue;
            }
            if local.start.up >= local.start.total {
                local.phase = GroupPhase::Running;
                actions.push(AgentAction::StartMonitors {
                    group: name.clone(),
                    epoch: local.epoch,
                });
            } else if Self::claim_ok(local.claim_until, now, topo) && now < local.guard_until {
                local.start.in_flight = true;
                actions.push(AgentAction::StartResource {
                    group: name.clone(),
                    epoch: local.epoch,
                    resource: local.start.up,
                });
            }
        }
    }

    /// The next instant at which this agent has something to do without any new
    /// event: a renewal falls due, a claim reaches its stop margin while the group
    /// runs, a gate opens or must be asked again, a Join is retried.
    pub fn next_deadline(&self, now: Millis, topo: &Topology) -> Option<Millis> {
        let mut next = self
            .last_renewal_sent
            .map_or(0, |last| last.saturating_add(self.renew_interval(topo)));
        if self.renew_now {
            return Some(0);
        }
        for local in self.groups.values() {
            match local.phase {
                GroupPhase::Starting | GroupPhase::Running => {
                    next = next.min(local.claim_until.saturating_sub(topo.stop_margin_ms));
                }
                GroupPhase::Waiting => {
                    // Once the gate is open the rest (the claim, the Join) comes
                    // with events.
                    let gate = &local.gate;
                    match gate.opens_at {
                        Some(at) if at > now => next = next.min(at),
                        Some(_) => {}
                        None => {
                            if let Some(asked) = gate.asked_at {
                                next = next.min(asked + GATE_RETRY_MS);
                            }
                        }
                    }
                }
                GroupPhase::Stopping { .. } => {
                    if let Some(at) = local.retry_stop_at {
                        next = next.min(at);
                    }
                }
            }
        }
        if topo.nodes.contains(&self.me) && !self.has_joined() {
            next = next.min(self.join_retry_at.unwrap_or(0));
        }
        Some(next)
    }

    /// Owners renew at the configured interval. A node that runs nothing renews
    /// half as often: enough to stay a live candidate (heard of within a lease)
    /// and to be granted a claim at once when a group is assigned.
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
        self.pending
            .retain(|_, p| now < p.sent_at.saturating_add(topo.lease_ms));
        self.withdrawn.retain(|_, until| now < *until);
        let due = self.renew_now
            || match self.last_renewal_sent {
                None => true,
                Some(last) => now >= last.saturating_add(self.renew_interval(topo)),
            };
        if !due {
            return;
        }
        self.renew_now = false;
        let seq = self.next_seq;
        self.next_seq += 1;
        let claims: Vec<Claim> = self
            .groups
            .iter()
            .map(|(group, local)| Claim {
                group: group.clone(),
                epoch: local.epoch,
            })
            .take(MAX_CLAIMS)
            .collect();
        self.pending.insert(
            seq,
            PendingRenewal {
                sent_at: now,
                claims: claims.clone(),
                acked_by: BTreeSet::new(),
                granted_by: BTreeMap::new(),
            },
        );
        self.last_renewal_sent = Some(now);
        actions.push(AgentAction::Renew(Renewal {
            node: self.me,
            id: RenewalId {
                incarnation: self.incarnation,
                seq,
            },
            claims,
            withdrawn: self.withdrawn.keys().take(MAX_CLAIMS).cloned().collect(),
        }));
    }
}
