//! The on-disk shape of the config file: serde structs that mirror the TOML one to one
//! and reject unknown keys. Values are kept close to their text form (strings for
//! addresses and durations, wide integers for counts) so that `validate()` can check
//! every key and report all problems at once instead of stopping at the first.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// The whole file. Each role owns one top-level section; a role added later
/// (`[[sync]]`, `[[balance]]`, `[mysql]`) becomes one more optional field here.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub cluster: Option<ClusterFile>,
    pub group: Option<Vec<GroupFile>>,
    pub sync: Option<Vec<crate::sync::SyncFile>>,
    pub balance: Option<Vec<crate::balance::BalanceFile>>,
    pub balancer: Option<crate::balance::BalancerFile>,
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

/// A duration as written, e.g. `"800ms"`; parsed in `validate()`. A custom visitor
/// so that a bare number gets a message saying a unit is needed.
#[derive(Debug, Clone)]
pub(crate) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, like \"800ms\" or \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A command as an argv list. Shell strings are refused on purpose: uphold never runs
/// a shell, so `"nginx -s quit"` would look for a binary with spaces in its name.
#[derive(Debug, Clone)]
pub(crate) struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Argv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of strings (argv), like [\"/usr/sbin/nginx\", \"-s\", \"quit\"]; \
                     shell command lines are not accepted",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    args.push(arg);
                }
                Ok(Argv(args))
            }
        }
        deserializer.deserialize_seq(V)
    }
}
