//! Specifications of the resources a group is made of. These are plain data,
//! validated by the config crate and executed by the os crate.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// One resource of a group. Started in list order on the owner, stopped in reverse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceSpec {
    Ip(IpResource),
    Exec(ExecResource),
}

impl ResourceSpec {
    /// Short human label used in logs and status, e.g. `ip 10.0.0.10/24 on eth0`.
    pub fn label(&self) -> String {
        match self {
            ResourceSpec::Ip(ip) => {
                format!("ip {}/{} on {}", ip.address, ip.prefix_len, ip.interface)
            }
            ResourceSpec::Exec(exec) => format!("exec {}", exec.name),
        }
    }

    pub fn monitor_interval(&self) -> Duration {
        match self {
            ResourceSpec::Ip(ip) => ip.monitor_interval,
            ResourceSpec::Exec(exec) => exec.monitor_interval,
        }
    }
}

/// A floating address: added to `interface` on start (with gratuitous ARP or
/// unsolicited neighbour advertisements), removed on stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpResource {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
    /// Number of gratuitous ARP / unsolicited NA packets sent on takeover.
    pub arp_count: u32,
    pub monitor_interval: Duration,
}

/// A user-supplied service: argv vectors, never shell strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResource {
    pub name: String,
    pub start: Vec<String>,
    pub stop: Vec<String>,
    /// Exit status 0 means healthy. Absent: the resource is not monitored.
    pub monitor: Option<Vec<String>>,
    pub monitor_interval: Duration,
    /// Deadline for each start, stop or monitor run.
    pub timeout: Duration,
    /// Consecutive monitor failures before the group is moved.
    pub failures_before_move: u32,
}
