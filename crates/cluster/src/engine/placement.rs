//! The leader's placement decisions: where each group should run, when a silent
//! owner has been silent long enough that its groups should move, and when to
//! fail back.
//!
//! Only the Raft leader runs this, but a deposed leader that still thinks it leads
//! is harmless: every command it proposes is conditional on the group's epoch and
//! the log decides. Moving a group early would not run it twice either: the node
//! that takes it starts only after the start gate (`crate::engine::lease`). The
//! waits here only keep healthy owners from losing their groups.

use crate::engine::liveness::Liveness;
use crate::engine::state::{ClusterState, Command, GroupState};
use crate::engine::topology::{GroupSpec, Topology};
use std::collections::BTreeMap;
use uphold_core::{GroupName, Millis, NodeId};

#[derive(Clone, Debug, PartialEq)]
pub enum PlacementAction {
    Propose(Command),
}

#[derive(Debug, Default)]
pub struct Placement {
    /// One proposal per group at a time: group -> (epoch it targets, sent at).
    inflight: BTreeMap<GroupName, (u64, Millis)>,
    last_failure_clear: BTreeMap<GroupName, Millis>,
    /// A node never chosen: the leader itself while it shuts down.
    excluded: Option<NodeId>,
    /// When this member became leader.
    leading_since: Option<Millis>,
}

impl Placement {
    pub fn new() -> Placement {
        Placement::default()
    }

    pub fn set_excluded(&mut self, node: Option<NodeId>) {
        self.excluded = node;
    }

    /// A leadership change invalidates everything in flight.
    pub fn reset(&mut self) {
        self.inflight.clear();
    }

    pub fn set_leading_since(&mut self, since: Option<Millis>) {
        self.leading_since = since;
    }

    /// A proposal of ours was answered (or given up): the group may be decided
    /// again.
    pub fn on_result(&mut self, command: &Command) {
        if let Command::Assign { group, .. }
        | Command::RequestMove { group, .. }
        | Command::ClearFailures { group, .. } = command
        {
            self.inflight.remove(group);
        }
    }

    /// Something is left for the leader to do: a proposal in flight, or a group
    /// without owner that a live node could take. A leader that is shutting down
    /// waits for this to clear, so the groups it released are placed before it
    /// leaves (otherwise they wait for a new election).
    pub fn has_pending_work(
        &self,
        topo: &Topology,
        state: &ClusterState,
        liveness: &Liveness,
        me: NodeId,
        now: Millis,
    ) -> bool {
        if !self.inflight.is_empty() {
            return true;
        }
        topo.groups.iter().any(|spec| {
            let gs = state.group(&spec.name);
            gs.owner.is_none()
                && spec.nodes.iter().any(|n| {
                    *n != me
                        && !state.leaving.contains(n)
                        && topo.nodes.contains(n)
                        && liveness.is_live(*n, now, topo.lease_ms)
                        && !gs.failed_on.contains(n)
                })
        })
    }

    pub fn decide(
        &mut self,
        topo: &Topology,
        state: &ClusterState,
        liveness: &Liveness,
        now: Millis,
    ) -> Vec<PlacementAction> {
        let timeout = topo.proposal_timeout_ms;
        self.inflight
            .retain(|_, (_, sent)| now.saturating_sub(*sent) < timeout);
        let mut actions = Vec::new();
        for spec in &topo.groups {
            if self.inflight.contains_key(&spec.name) {
                continue;
            }
            let gs = state.group(&spec.name);
            if let Some(command) = self.decide_group(topo, spec, &gs, state, liveness, now) {
                self.inflight.insert(spec.name.clone(), (gs.epoch, now));
                actions.push(PlacementAction::Propose(command));
            }
        }
        actions
    }

    fn decide_group(
        &mut self,
        topo: &Topology,
        spec: &GroupSpec,
        gs: &GroupState,
        state: &ClusterState,
        liveness: &Liveness,
        now: Millis,
    ) -> Option<Command> {
        let excluded = self.excluded;
        let eligible = |node: NodeId| {
            Some(node) != excluded
                && !state.leaving.contains(&node)
                && topo.nodes.contains(&node)
                && liveness.is_live(node, now, topo.lease_ms)
                && !gs.failed_on.contains(&node)
        };
        let first_eligible = |except: Option<NodeId>| {
            spec.nodes
                .iter()
                .copied()
                .find(|n| Some(*n) != except && eligible(*n))
        };
        match gs.owner {
            Some(owner) => {
                if liveness.lease_expired(owner, now, topo.lease_expiry_wait_ms) {
                    let target = first_eligible(Some(owner));
                    // Right after an election nobody's renewals have reached the new
                    // leader's log for a while, so nobody looks live. Give them one
                    // more lease before recording that the group runs nowhere.
                    if target.is_none()
                        && !liveness.lease_expired(owner, now, 2 * topo.lease_expiry_wait_ms)
                    {
                        return None;
                    }
                    return Some(Command::Assign {
                        group: spec.name.clone(),
                        node: target,
                        epoch: gs.epoch,
                    });
                }
                if gs.move_to.is_some() {
                    return None;
                }
                let rank = |n: NodeId| spec.nodes.iter().position(|x| *x == n);
                if rank(owner).is_none() {
                    // The config no longer lists the owner for this group.
                    let to = first_eligible(Some(owner))?;
                    return Some(Command::RequestMove {
                        group: spec.name.clone(),
                        to,
                        epoch: gs.epoch,
                    });
                }
                if spec.failback {
                    let better = spec.nodes.iter().copied().find(|n| {
                        eligible(*n)
                            && liveness.is_stable(*n, now, topo.lease_ms, topo.failback_stable_ms)
                    })?;
                    if rank(better) < rank(owner) {
                        return Some(Command::RequestMove {
                            group: spec.name.clone(),
                            to: better,
                            epoch: gs.epoch,
                        });
                    }
                }
                None
            }
            None => {
                // A new leader has seen few renewals yet, often only its own: wait
                // until every live node has renewed once (idle nodes renew every
                // two intervals) so a group starts on its preferred node, not on
                // whoever won the election.
                let settled = self
                    .leading_since
                    .is_none_or(|since| now.saturating_sub(since) >= 2 * topo.renew_interval_ms);
                if !settled && gs.move_to.is_none() {
                    return None;
                }
                let target = gs
                    .move_to
                    .filter(|n| spec.nodes.contains(n) && eligible(*n))
                    .or_else(|| first_eligible(None));
                if let Some(node) = target {
                    return Some(Command::Assign {
                        group: spec.name.clone(),
                        node: Some(node),
                        epoch: gs.epoch,
                    });
                }
                // Every live candidate has failed here: after a pause, try again.
                let live_failed = spec
                    .nodes
                    .iter()
                    .any(|n| gs.failed_on.contains(n) && liveness.is_live(*n, now, topo.lease_ms));
                let last = self.last_failure_clear.get(&spec.name).copied();
                let waited = last.is_none_or(|t| now.saturating_sub(t) >= topo.failure_retry_ms);
                if live_failed && waited {
                    self.last_failure_clear.insert(spec.name.clone(), now);
                    return Some(Command::ClearFailures {
                        group: spec.name.clone(),
                        epoch: gs.epoch,
                    });
                }
                None
            }
        }
    }
}
