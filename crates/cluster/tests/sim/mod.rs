//! Deterministic simulation of uphold clusters for the failover engine: a
//! discrete-event world (`world`) with per-machine clocks (`clock`), a small
//! Raft (`raft`), and seeded random cluster shapes and fault plans (`plan`).

pub mod clock;
pub mod plan;
pub mod raft;
pub mod scenario;
pub mod world;
