//! The pure decisions of file sync, without I/O: what may differ ([`pending`]), when a
//! batch goes to a target and when the whole tree is compared again ([`batcher`]),
//! what to do about one directory ([`plan`]), how each file's content travels
//! ([`transfer`]) and when a source that looks unmounted halts a batch ([`halt`]).

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod batcher;
pub mod halt;
pub mod pending;
pub mod plan;
pub mod transfer;
