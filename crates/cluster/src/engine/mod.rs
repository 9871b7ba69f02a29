//! The pure failover logic: replicated state, the lease protocol, the leader's
//! placement decisions and each node's agent. Events and the current time go in, actions come out; the
//! executor in `crate::runtime` performs them. Nothing here does I/O or reads a clock.

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod agent;
pub mod lease;
pub mod liveness;
pub mod node;
pub mod placement;
pub mod state;
pub mod topology;

pub use agent::{Agent, AgentAction, AgentEvent, GroupPhase, ResourceReport, StopKind};
pub use lease::{Claim, GateAnswer, GateQuery, Heard, LeaseVoter, Renewal, RenewalAck};
pub use liveness::Liveness;
pub use node::{Action, Event, NodeEngine};
pub use placement::{Placement, PlacementAction};
pub use state::{
    ApplyResult, ClusterState, Command, GroupState, ReleaseReason, RenewalId, Transition,
};
pub use topology::{GroupSpec, ResourceRule, Topology};

#[cfg(test)]
mod tests;
