//! uphold-delta: the pure, streaming rsync-style delta engine used by file sync.
//!
//! The receiver holds the *basis* (the target's current copy) and computes a
//! [`Signature`] of it in one pass; the sender streams the *source* (the new
//! version) through a [`DeltaEncoder`], which emits [`Op`]s that copy basis
//! blocks or carry literal bytes; the receiver feeds the ops to an [`Applier`]
//! that rebuilds the file and checks the source's whole-file blake3 hash.
//! [`wire`] puts ops and signatures on the network with strict size limits.
//!
//! Nothing here opens files or sockets: everything runs over `std::io::Read`,
//! `Write` and `Seek`, and memory stays O(block size) on both sides.

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod apply;
pub mod delta;
pub mod rolling;
pub mod signature;
pub mod stats;
pub mod wire;

pub use apply::{apply, Applier, ApplyError, ApplySummary};
pub use delta::{DeltaEncoder, DeltaEnd, DeltaSummary, Op, MAX_LITERAL};
pub use rolling::Rolling;
pub use signature::{
    block_size_for, BlockSig, Signature, SignatureBuilder, SignatureError, DEFAULT_MAX_BLOCKS,
    MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, MIN_EXPLICIT_BLOCK_SIZE, STRONG_LEN,
};
pub use stats::DeltaStats;
pub use wire::{Record, WireError, WireWriter};
