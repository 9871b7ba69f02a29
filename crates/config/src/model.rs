//! The typed, validated configuration handed to the roles. Produced only by
//! `validate()`; every field here has already been checked.
//!
//! Each role's types are in its module; the cluster's are re-exported here (and
//! at the crate root), where the other crates name them.

pub use crate::cluster::model::*;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Present when the file has a `[cluster]` section.
    pub cluster: Option<ClusterConfig>,
    /// `[[sync]]` sets: trees replicated from one member to others.
    pub sync: Vec<crate::sync::SyncConfig>,
    /// `[[balance]]` frontends.
    pub balance: Vec<crate::balance::BalanceConfig>,
    /// `[balancer]`: settings of the balancing role as a whole.
    pub balancer: crate::balance::BalancerSettings,
}
