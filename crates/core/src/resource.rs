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

/// A stop made because this node's lease is ending, in its two phases: first
/// the addresses, which another node may take as soon as the lease is over,
/// then everything else; each phase in reverse list order. The daemon and the
/// guard both stop in this order.
#[derive(Debug, PartialEq, Eq)]
pub struct EmergencyStop<'a> {
    pub addresses: Vec<&'a ResourceSpec>,
    pub services: Vec<&'a ResourceSpec>,
}

impl<'a> EmergencyStop<'a> {
    pub fn of(resources: &'a [ResourceSpec]) -> EmergencyStop<'a> {
        let (addresses, services) = resources.iter().rev().partition(|r| r.is_address());
        EmergencyStop {
            addresses,
            services,
        }
    }

    /// Both phases in one sequence.
    pub fn in_order(self) -> Vec<&'a ResourceSpec> {
        let mut all = self.addresses;
        all.extend(self.services);
        all
    }
}

impl ResourceSpec {
    /// A floating address: what another node takes over.
    pub fn is_address(&self) -> bool {
        matches!(self, ResourceSpec::Ip(_))
    }

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
    /// Run start, stop and monitor as this user instead of root.
    pub user: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> ResourceSpec {
        ResourceSpec::Ip(IpResource {
            address: IpAddr::from([10, 0, 0, last]),
            prefix_len: 24,
            interface: "eth0".into(),
            arp_count: 3,
            monitor_interval: Duration::from_secs(1),
        })
    }

    fn exec(name: &str) -> ResourceSpec {
        ResourceSpec::Exec(ExecResource {
            name: name.into(),
            start: vec!["/bin/true".into()],
            stop: vec!["/bin/true".into()],
            monitor: None,
            monitor_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            failures_before_move: 1,
            user: None,
        })
    }

    #[test]
    fn an_emergency_stop_takes_every_address_down_before_any_service() {
        let group = [exec("mount"), ip(10), exec("web"), ip(11), exec("mail")];
        let stop = EmergencyStop::of(&group);
        assert_eq!(
            stop,
            EmergencyStop {
                addresses: vec![&group[3], &group[1]],
                services: vec![&group[4], &group[2], &group[0]],
            }
        );
        assert_eq!(
            stop.in_order(),
            vec![&group[3], &group[1], &group[4], &group[2], &group[0]]
        );
    }
}
