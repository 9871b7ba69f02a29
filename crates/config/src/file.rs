//! The on-disk shape of the config file: serde structs that mirror the TOML one to one
//! and reject unknown keys. Values are kept close to their text form (strings for
//! addresses and durations, wide integers for counts) so that `validate()` can check
//! every key and report all problems at once instead of stopping at the first.
//!
//! Each role's tables are in its module (`cluster::file`, `sync::file`,
//! `balance::file`); this is the whole file that holds them.

use crate::balance::file::{BalanceFile, BalancerFile};
use crate::cluster::file::{ClusterFile, GroupFile};
use crate::sync::file::SyncFile;
use serde::Deserialize;

/// The whole file. Each role owns one top-level section; a role added later
/// (`[[sync]]`, `[[balance]]`, `[mysql]`) becomes one more optional field here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub cluster: Option<ClusterFile>,
    pub group: Option<Vec<GroupFile>>,
    pub sync: Option<Vec<SyncFile>>,
    pub balance: Option<Vec<BalanceFile>>,
    pub balancer: Option<BalancerFile>,
}

impl FileConfig {
    /// True when no role section is present at all.
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none()
            && self.group.as_ref().is_none_or(Vec::is_empty)
            && self.sync.as_ref().is_none_or(Vec::is_empty)
            && self.balance.as_ref().is_none_or(Vec::is_empty)
    }
}
