//! The cluster role's sections: `[cluster]` (members, timing, self-protection)
//! and the `[[group]]`s with their resources.
//!
//! Groups and resources live here, not in a module of their own, because they
//! exist only within a cluster: a group runs on the cluster's members and its
//! `nodes` are checked against them (even against members with errors, through
//! `RawMember`), `[[group]]` without `[cluster]` is an error, and the voter-count
//! warnings depend on whether there are groups at all.

pub(crate) mod file;
mod groups;
pub(crate) mod model;
mod resources;
mod validate;

pub(crate) use groups::validate_groups;
pub(crate) use validate::validate_cluster;
