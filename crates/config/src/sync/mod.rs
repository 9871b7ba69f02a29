//! The `[[sync]]` role. A sync set names a source tree, the members that take
//! part, and who sends: either the member running a group (the direction follows
//! failover) or one fixed member. The typed form is re-exported here, where the
//! other crates name it (`uphold_config::sync::SyncConfig`).

pub(crate) mod file;
mod model;
pub mod owners;
mod validate;

pub use model::*;
pub(crate) use validate::validate_sync;
