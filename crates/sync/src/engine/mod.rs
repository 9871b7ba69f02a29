//! The pure decisions of file sync, without I/O: what may differ ([`pending`]), when a
//! batch goes to a target ([`batcher`]), and what to do about one directory ([`plan`]).

pub mod batcher;
pub mod pending;
pub mod plan;
