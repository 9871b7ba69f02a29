//! The replicated cluster state and the commands that change it. Every member
//! applies the same committed commands in the same order, so `apply` must be
//! deterministic: no clocks, no randomness, no I/O.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uphold_core::{GroupName, NodeId};

/// Identifies one lease renewal: the process incarnation that sent it and its
/// sequence number within that incarnation. Incarnations of one node only grow
/// (a counter kept in its state directory), so members can tell an earlier run's
/// delayed messages from the current run's. Renewals are not logged: see
/// `crate::engine::lease`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RenewalId {
    pub incarnation: u64,
    pub seq: u64,
}

/// Why an owner gave a group up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The owner is shutting down cleanly.
    Shutdown,
    /// The leader asked the group to move (failback or an admin move).
    Moved,
    /// This node's config does not list the group (configs differ between nodes).
    NotConfigured,
    /// A resource's monitor failed on the owner.
    MonitorFailed(String),
    /// A resource failed to start on the owner.
    StartFailed(String),
    /// A quorum refused to renew the owner's claim on the group: the log has moved
    /// (or is moving) it elsewhere, so the owner stopped it.
    Fenced,
    /// The owner's lease ran out (it was cut off, paused or starved, or its guard
    /// acted) and it stopped the group. Not a failure of the node: it may be
    /// placed there again, at a new epoch.
    LeaseLost,
}

impl std::fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseReason::Shutdown => f.write_str("owner shut down"),
            ReleaseReason::Moved => f.write_str("released for a move"),
            ReleaseReason::NotConfigured => f.write_str("not in the owner's config"),
            ReleaseReason::MonitorFailed(why) => write!(f, "monitor failed: {why}"),
            ReleaseReason::StartFailed(why) => write!(f, "start failed: {why}"),
            ReleaseReason::Fenced => f.write_str("lease refused by a quorum"),
            ReleaseReason::LeaseLost => f.write_str("the owner's lease ran out"),
        }
    }
}

impl ReleaseReason {
    /// Failures keep the group off this node until the failures are cleared.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ReleaseReason::MonitorFailed(_) | ReleaseReason::StartFailed(_)
        )
    }
}

/// A log entry's payload. Only what must survive a crash is logged: who runs the
/// daemon on each node (its incarnation), where each group is placed, and admin
/// requests. Leases are renewed in memory (`crate::engine::lease`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A new run of `node`'s daemon announces itself before it starts or releases
    /// anything, so that a delayed release of an earlier run is refused.
    Join { node: NodeId, incarnation: u64 },
    /// The leader places `group` on `node` (or on nobody). Accepted only if the
    /// group is still at `epoch`. When it takes the group from an owner that did
    /// not release it, the new owner starts only after every lease the old owner
    /// may hold on the group has certainly expired (the start gate of
    /// `crate::engine::lease`), so the log need not know about leases.
    Assign {
        group: GroupName,
        node: Option<NodeId>,
        epoch: u64,
    },
    /// The owner has stopped the group (all resources down) and gives it up.
    /// Accepted only from the owner's current incarnation (that of its latest
    /// `Join`): a release sent by a daemon that has since crashed and restarted
    /// must not take the group from the new daemon, which may be running it.
    Release {
        group: GroupName,
        node: NodeId,
        epoch: u64,
        incarnation: u64,
        reason: ReleaseReason,
    },
    /// Ask the owner to stop the group so it can be placed on `to`.
    RequestMove {
        group: GroupName,
        to: NodeId,
        epoch: u64,
    },
    /// Forget the failure marks of a group so every node is eligible again.
    ClearFailures { group: GroupName, epoch: u64 },
}

/// Outcome of applying one command; returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    Applied,
    Rejected(String),
}

/// What the log says about one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub owner: Option<NodeId>,
    /// Incremented on every change of owner; commands name the epoch they expect.
    pub epoch: u64,
    /// Nodes where the group failed; not chosen again until cleared.
    pub failed_on: BTreeSet<NodeId>,
    /// A pending move requested by the leader.
    pub move_to: Option<NodeId>,
    /// The last change of owner.
    pub last_transition: Option<Transition>,
}

/// One change of owner, kept for `uphold status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
    /// The epoch the group entered.
    pub epoch: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub groups: BTreeMap<GroupName, GroupState>,
    /// The incarnation of each node's daemon, from its latest `Join`.
    pub incarnations: BTreeMap<NodeId, u64>,
    /// Nodes whose daemon is shutting down (it released a group for that reason):
    /// no group is placed on them until a new run of the daemon joins.
    #[serde(default)]
    pub leaving: BTreeSet<NodeId>,
}

impl ClusterState {
    /// The state of `group`, or the initial state (unowned, epoch 0) if the log has
    /// never mentioned it.
    pub fn group(&self, group: &GroupName) -> GroupState {
        self.groups.get(group).cloned().unwrap_or_default()
    }

    pub fn owner_of(&self, group: &GroupName) -> Option<NodeId> {
        self.groups.get(group).and_then(|g| g.owner)
    }

    pub fn epoch_of(&self, group: &GroupName) -> u64 {
        self.groups.get(group).map_or(0, |g| g.epoch)
    }

    pub fn apply(&mut self, command: &Command) -> ApplyResult {
        match command {
            Command::Join { node, incarnation } => {
                let previous = self.incarnations.get(node).copied();
                if previous.is_some_and(|p| p > *incarnation) {
                    // Sent by an earlier run of the daemon and delayed on the way:
                    // it must not make that run current again (its releases would
                    // then be accepted while the new run holds the group).
                    return ApplyResult::Rejected(format!(
                        "join of node {node} comes from an earlier run of its daemon"
                    ));
                }
                self.incarnations.insert(*node, *incarnation);
                if previous != Some(*incarnation) {
                    self.leaving.remove(node);
                }
                ApplyResult::Applied
            }
            Command::Assign { group, node, epoch } => {
                let state = self.groups.entry(group.clone()).or_default();
                if state.epoch != *epoch {
                    return stale(group, state.epoch, *epoch);
                }
                if let Some(owner) = state.owner.filter(|owner| Some(*owner) == *node) {
                    return ApplyResult::Rejected(format!(
                        "group {group} is already on node {owner}"
                    ));
                }
                let reason = if state.owner.is_some() {
                    "owner's lease expired"
                } else if state.move_to.is_some() {
                    "moved"
                } else {
                    "placed"
                };
                state.last_transition = Some(Transition {
                    from: state.owner,
                    to: *node,
                    epoch: state.epoch + 1,
                    reason: reason.to_string(),
                });
                state.owner = *node;
                state.epoch += 1;
                state.move_to = None;
                ApplyResult::Applied
            }
            Command::Release {
                group,
                node,
                epoch,
                incarnation,
                reason,
            } => {
                let current = self.incarnations.get(node).copied();
                if current != Some(*incarnation) {
                    return ApplyResult::Rejected(format!(
                        "release of group {group} by node {node} comes from an earlier run of its daemon"
                    ));
                }
                let state = self.groups.entry(group.clone()).or_default();
                if state.epoch != *epoch {
                    return stale(group, state.epoch, *epoch);
                }
                if state.owner != Some(*node) {
                    return ApplyResult::Rejected(format!(
                        "node {node} does not own group {group}"
                    ));
                }
                if reason.is_failure() {
                    state.failed_on.insert(*node);
                }
                if *reason == ReleaseReason::Shutdown {
                    self.leaving.insert(*node);
                }
                state.last_transition = Some(Transition {
                    from: Some(*node),
                    to: None,
                    epoch: state.epoch + 1,
                    reason: reason.to_string(),
                });
                state.owner = None;
                state.epoch += 1;
                ApplyResult::Applied
            }
            Command::RequestMove { group, to, epoch } => {
                let state = self.groups.entry(group.clone()).or_default();
                if state.epoch != *epoch {
                    return stale(group, state.epoch, *epoch);
                }
                state.move_to = Some(*to);
                ApplyResult::Applied
            }
            Command::ClearFailures { group, epoch } => {
                let state = self.groups.entry(group.clone()).or_default();
                if state.epoch != *epoch {
                    return stale(group, state.epoch, *epoch);
                }
                state.failed_on.clear();
                ApplyResult::Applied
            }
        }
    }
}

fn stale(group: &GroupName, current: u64, expected: u64) -> ApplyResult {
    ApplyResult::Rejected(format!(
        "group {group} is at epoch {current}, command expected {expected}"
    ))
}
