//! Carrying out a group's resources on this node: start in order, stop in reverse
//! (addresses first in an emergency), and one monitor pass per resource.

use crate::engine::StopKind;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use uphold_core::{ExecResource, IpResource, NodeName, ResourceSpec};
use uphold_os::vip::{AddOutcome, Netlink};

/// Spacing of the gratuitous ARP packets sent on takeover.
const ARP_GAP: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct ResourceRunner {
    netlink: Arc<Netlink>,
    node: String,
}

impl std::fmt::Debug for ResourceRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourceRunner")
    }
}

impl ResourceRunner {
    pub fn new(netlink: Arc<Netlink>, node: &NodeName) -> ResourceRunner {
        ResourceRunner {
            netlink,
            node: node.to_string(),
        }
    }

    /// What every exec command learns about its context, like heartbeat's
    /// resource scripts: which node runs it and for which group.
    pub fn env(&self, group: &str) -> Vec<(String, String)> {
        vec![
            ("UPHOLD_NODE".to_string(), self.node.clone()),
            ("UPHOLD_GROUP".to_string(), group.to_string()),
        ]
    }

    /// Starts every resource in order. On failure, the resources already started
    /// are left for the caller's stop (which undoes all of them, idempotently).
    pub async fn start_all(&self, group: &str, resources: &[ResourceSpec]) -> Result<(), String> {
        for resource in resources {
            self.start(group, resource)
                .await
                .map_err(|e| format!("{}: {e}", resource.label()))?;
        }
        Ok(())
    }

    /// Stops every resource, even after one fails; Err lists what may still be up.
    pub async fn stop_all(
        &self,
        group: &str,
        resources: &[ResourceSpec],
        kind: StopKind,
    ) -> Result<(), String> {
        let mut order: Vec<&ResourceSpec> = resources.iter().rev().collect();
        if kind == StopKind::Emergency {
            // Our lease is ending: the addresses must be gone before anyone else may
            // take them, so they go first and services follow.
            order.sort_by_key(|r| !matches!(r, ResourceSpec::Ip(_)));
        }
        let mut failed = Vec::new();
        for resource in order {
            if let Err(e) = self.stop(group, resource).await {
                // Keep going: a failed stop must not keep the other resources up.
                warn!(group, resource = %resource.label(), "stop failed: {e}");
                failed.push(format!("{}: {e}", resource.label()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    async fn start(&self, group: &str, resource: &ResourceSpec) -> Result<(), String> {
        match resource {
            ResourceSpec::Ip(ip) => self.start_ip(group, ip).await,
            ResourceSpec::Exec(exec) => {
                let outcome = uphold_os::exec::run(&exec.start, exec.timeout, &self.env(group))
                    .await
                    .map_err(|e| e.to_string())?;
                if outcome.success() {
                    info!(group, resource = %exec.name, "started");
                    Ok(())
                } else {
                    Err(format!("start command {}", outcome.summary()))
                }
            }
        }
    }

    async fn start_ip(&self, group: &str, ip: &IpResource) -> Result<(), String> {
        let outcome = self
            .netlink
            .add_address(&ip.interface, ip.address, ip.prefix_len)
            .await
            .map_err(|e| e.to_string())?;
        if outcome == AddOutcome::AlreadyPresent {
            info!(group, address = %ip.address, "address was already present");
        }
        info!(group, address = %ip.address, interface = %ip.interface, "address added");
        let interface = ip.interface.clone();
        let (address, count) = (ip.address, ip.arp_count);
        // Announcements are spaced out; they must not delay the next resource.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = uphold_os::arp::announce(&interface, address, count, ARP_GAP) {
                warn!(%interface, %address, "announcing the address failed: {e}");
            }
        });
        Ok(())
    }

    async fn stop(&self, group: &str, resource: &ResourceSpec) -> Result<(), String> {
        match resource {
            ResourceSpec::Ip(ip) => {
                self.netlink
                    .remove_address(&ip.interface, ip.address, ip.prefix_len)
                    .await
                    .map_err(|e| e.to_string())?;
                info!(group, address = %ip.address, interface = %ip.interface, "address removed");
                Ok(())
            }
            ResourceSpec::Exec(exec) => {
                let outcome = uphold_os::exec::run(&exec.stop, exec.timeout, &self.env(group))
                    .await
                    .map_err(|e| e.to_string())?;
                if outcome.success() {
                    info!(group, resource = %exec.name, "stopped");
                    Ok(())
                } else {
                    Err(format!("stop command {}", outcome.summary()))
                }
            }
        }
    }

    /// One monitor pass. Ok(()) when healthy.
    pub async fn monitor(&self, group: &str, resource: &ResourceSpec) -> Result<(), String> {
        match resource {
            ResourceSpec::Ip(ip) => self.monitor_ip(ip).await,
            ResourceSpec::Exec(exec) => self.monitor_exec(group, exec).await,
        }
    }

    async fn monitor_exec(&self, group: &str, exec: &ExecResource) -> Result<(), String> {
        let Some(argv) = &exec.monitor else {
            return Ok(());
        };
        let outcome = uphold_os::exec::run(argv, exec.timeout, &self.env(group))
            .await
            .map_err(|e| e.to_string())?;
        if outcome.success() {
            Ok(())
        } else {
            Err(format!("monitor {}", outcome.summary()))
        }
    }

    async fn monitor_ip(&self, ip: &IpResource) -> Result<(), String> {
        let present = self
            .netlink
            .has_address(&ip.interface, ip.address)
            .await
            .map_err(|e| e.to_string())?;
        if !present {
            return Err(format!("{} is no longer on {}", ip.address, ip.interface));
        }
        let up = self
            .netlink
            .interface_is_up(&ip.interface)
            .await
            .map_err(|e| e.to_string())?;
        if !up {
            return Err(format!("interface {} is down", ip.interface));
        }
        Ok(())
    }
}
