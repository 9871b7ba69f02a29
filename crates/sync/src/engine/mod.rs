//! The pure decisions of file sync, without I/O: what may differ ([`pending`]), when a
//! batch goes to a target ([`batcher`]), and what to do about one directory ([`plan`]).

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod batcher;
pub mod pending;
pub mod plan;
