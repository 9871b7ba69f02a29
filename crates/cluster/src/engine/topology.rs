//! The slice of configuration the engines need: who may run what, and the timing
//! that makes leases safe. Built from the validated config by the executor, or
//! directly by tests and the simulation.

use uphold_core::{GroupName, Millis, NodeId};

#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    pub name: GroupName,
    /// Preference order; only nodes that can run groups.
    pub nodes: Vec<NodeId>,
    pub failback: bool,
    /// The group's resources, in start order: what the engine decides about each.
    pub resources: Vec<ResourceRule>,
}

/// What the engine needs to know of one resource: the executor knows how to
/// start it, the engine only when and how often it may fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceRule {
    /// Failed checks in a row that move the group away (at least 1).
    pub failures_before_move: u32,
}

impl ResourceRule {
    /// A resource that moves the group at its first failed check.
    pub const STRICT: ResourceRule = ResourceRule {
        failures_before_move: 1,
    };
}

impl GroupSpec {
    /// Failed checks in a row of resource `resource` that move the group.
    pub fn failures_before_move(&self, resource: usize) -> u32 {
        self.resources
            .get(resource)
            .map_or(1, |r| r.failures_before_move)
            .max(1)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    /// Members that run groups (witnesses excluded).
    pub nodes: Vec<NodeId>,
    /// Every member: nodes and witnesses all vote, in Raft and on leases.
    pub voters: Vec<NodeId>,
    pub groups: Vec<GroupSpec>,
    /// How long a committed renewal lets its sender run its groups, on the sender's clock.
    pub lease_ms: Millis,
    pub renew_interval_ms: Millis,
    /// The leader waits this long (on its own clock) after the last renewal it
    /// knows of before it moves a node's groups: lease * (1 + max clock drift).
    pub lease_expiry_wait_ms: Millis,
    /// The start gate's full wait: see `crate::engine::lease::gate_wait_ms`.
    pub gate_wait_ms: Millis,
    /// An owner starts stopping its groups this long before its lease ends, so the
    /// addresses are gone before anyone else may take them.
    pub stop_margin_ms: Millis,
    /// How long a proposal may stay unanswered before it is considered lost.
    pub proposal_timeout_ms: Millis,
    /// A returning node must have renewed continuously this long before a group
    /// fails back to it.
    pub failback_stable_ms: Millis,
    /// Minimum time between two clearings of a group's failure marks.
    pub failure_retry_ms: Millis,
}

impl Topology {
    pub fn group(&self, name: &GroupName) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| &g.name == name)
    }

    /// Acknowledgements needed for a lease: a majority of the voters.
    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Adds members that vote but run nothing.
    pub fn with_witnesses(mut self, witnesses: &[NodeId]) -> Topology {
        self.voters.extend(witnesses.iter().copied());
        self
    }

    /// Defaults derived from lease and renew interval, used by the executor and
    /// the simulation alike so both exercise the same relations.
    pub fn with_timing(
        nodes: Vec<NodeId>,
        groups: Vec<GroupSpec>,
        lease_ms: Millis,
        renew_interval_ms: Millis,
        max_clock_drift: f64,
    ) -> Topology {
        let lease_expiry_wait_ms = (lease_ms as f64 * (1.0 + max_clock_drift)).ceil() as Millis;
        Topology {
            voters: nodes.clone(),
            nodes,
            groups,
            lease_ms,
            renew_interval_ms,
            lease_expiry_wait_ms,
            gate_wait_ms: crate::engine::lease::gate_wait_ms(lease_ms, max_clock_drift),
            // Removing an address takes milliseconds; the margin covers scheduling
            // delays, and is kept small because leader elections eat into the
            // same budget (no renewal commits while there is no leader).
            stop_margin_ms: (lease_ms / 8).max(50),
            proposal_timeout_ms: lease_ms.max(1000),
            failback_stable_ms: (lease_ms * 4).max(2000),
            failure_retry_ms: 10_000,
        }
    }
}
