//! The openraft type configuration for uphold's replicated log: what an entry
//! carries, what applying it returns, and how members are identified.

use serde::{Deserialize, Serialize};
use std::io::Cursor;

use crate::engine::state::{ApplyResult, Command};

/// Member information stored in the Raft membership when the cluster is formed.
/// Peers are always dialled at the address in the current config; this copy
/// records what the membership was formed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub address: String,
}

openraft::declare_raft_types!(
    /// Type configuration of uphold's Raft group.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, MemberNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type Raft = openraft::Raft<TypeConfig>;
