//! Replication of the cluster state through openraft: the type configuration,
//! the redb-backed log, the snapshotting state machine, the network over
//! uphold's RPC layer, and [`RaftNode`], the small handle the rest of uphold
//! uses. Elections and replication are openraft's; this module only adapts.

mod log_store;
mod network;
mod node;
pub mod rpc;
mod state_machine;
mod types;

#[cfg(test)]
mod tests;

pub use log_store::{AppendObserver, LogStoreOpenError, LOG_FILE};
pub use node::{
    FollowerStatus, ProposeError, RaftNode, RaftOptions, RaftRole, RaftStartError, RaftStatus,
};
pub use rpc::RaftRpcHandler;
pub use state_machine::{AppliedState, SnapshotLoadError, SNAPSHOT_FILE};
pub use types::{MemberNode, TypeConfig};
