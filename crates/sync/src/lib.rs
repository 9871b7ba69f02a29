//! uphold-sync: live one-way replication of directory trees (the lsyncd replacement).
//!
//! - [`path`]: relative paths as they travel (checked on arrival) and exclude rules.
//! - [`entry`]: what both sides know of an entry and how entries and listings compare.
//! - [`scan`]: reading the sender's tree.
//! - [`protocol`]: the request/response messages on the members' mutual-TLS RPC.
//! - [`engine`]: the pure decisions: pending changes, batching per target, planning.
//! - [`sender`]: runs one batch against one target through a [`transport`].
//! - [`receiver`]: the receiving side (compare, atomic apply, streamed and delta files).
//! - [`service`]: the sets running on this member: direction, watcher, one batcher per
//!   target; [`status`] is what it reports.
//! - [`sigcache`]: signatures of large files kept by the receiver, so a delta reads the
//!   target file once.

pub mod engine;
pub mod entry;
pub mod path;
pub mod protocol;
pub mod receiver;
pub mod scan;
pub mod sender;
pub mod service;
pub mod sigcache;
pub mod status;
pub mod transport;
