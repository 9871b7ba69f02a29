//! The `[[sync]]` table as serde reads it, unknown keys refused.

use super::owners::IdText;
use crate::values::DurationText;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncFile {
    pub name: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub group: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub delay: Option<DurationText>,
    pub delete: Option<bool>,
    pub preserve_privileged: Option<bool>,
    pub owners: Option<Vec<IdText>>,
    pub groups: Option<Vec<IdText>>,
    pub fsync: Option<String>,
    pub watch: Option<String>,
    pub scan_interval: Option<DurationText>,
    pub rescan_interval: Option<DurationText>,
}
