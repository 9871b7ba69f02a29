//! The cluster role's tables as serde reads them: `[cluster]`, `[[cluster.member]]`,
//! `[[group]]` and the resource tables, unknown keys refused.

use crate::values::{Argv, DurationText};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    pub name: Option<String>,
    pub state_dir: Option<String>,
    pub tls_dir: Option<String>,
    pub lease: Option<DurationText>,
    pub renew_interval: Option<DurationText>,
    pub max_clock_drift: Option<f64>,
    pub heartbeat_interval: Option<DurationText>,
    pub election_timeout_min: Option<DurationText>,
    pub election_timeout_max: Option<DurationText>,
    pub lock_memory: Option<bool>,
    pub cpu_priority: Option<String>,
    pub io_priority: Option<String>,
    #[serde(default)]
    pub member: Vec<MemberFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub listen: Option<String>,
    pub api: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupFile {
    pub name: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub failback: Option<bool>,
    #[serde(default)]
    pub resource: Vec<ResourceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum ResourceFile {
    Ip(IpFile),
    Exec(ExecFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpFile {
    pub address: Option<String>,
    pub interface: Option<String>,
    pub arp_count: Option<i64>,
    pub monitor_interval: Option<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecFile {
    pub name: Option<String>,
    pub start: Option<Argv>,
    pub stop: Option<Argv>,
    pub monitor: Option<Argv>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub failures: Option<i64>,
    pub user: Option<String>,
}
