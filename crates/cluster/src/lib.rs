//! Cluster role: replicated state (Raft) and the failover engine.

pub mod engine;
pub mod raft;
pub mod runtime;
