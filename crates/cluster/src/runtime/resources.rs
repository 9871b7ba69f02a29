//! Carrying out a group's resources on this node: start one (the engine asks for
//! each in order), stop in reverse (addresses first in an emergency), and one
//! monitor pass per resource.

use super::resource_error::{CommandRole, ResourceError};
use crate::engine::StopKind;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};
use uphold_core::{EmergencyStop, ExecResource, IpResource, NodeName, ResourceSpec};
use uphold_os::guard::CommandLedger;
use uphold_os::vip::{AddOutcome, Netlink};

/// Deadline for one netlink request: the kernel answers in microseconds, so a
/// request still pending after this is stuck and reported as a failure.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds a netlink call by [`NETLINK_TIMEOUT`].
async fn netlink_call<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, uphold_os::OsError>>,
) -> Result<T, ResourceError> {
    match tokio::time::timeout(NETLINK_TIMEOUT, call).await {
        Ok(result) => result.map_err(|source| ResourceError::Netlink { what, source }),
        Err(_) => Err(ResourceError::NetlinkTimeout {
            what,
            after: NETLINK_TIMEOUT,
        }),
    }
}

/// Spacing of the gratuitous ARP packets sent on takeover.
const ARP_GAP: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct ResourceRunner {
    netlink: Arc<Netlink>,
    node: String,
    /// Per group, the engine's latest guard deadline (CLOCK_MONOTONIC ms): the
    /// guard undoes the group then, so address announcements still being sent
    /// from a blocking thread end by it even if the daemon's loop is starved.
    guard_deadlines: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Per group: set when the group is being stopped, so address announcements
    /// still in progress end at once.
    announcing: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
    /// Every command run here is told to the guard, which ends those still
    /// running before it undoes their group.
    pub commands: CommandLedger,
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
            guard_deadlines: Arc::new(Mutex::new(BTreeMap::new())),
            announcing: Arc::new(Mutex::new(BTreeMap::new())),
            commands: CommandLedger::default(),
        }
    }

    /// Records the deadline the engine handed to the guard (`None`: released).
    pub fn set_guard_deadline(&self, group: &str, until_ms: Option<u64>) {
        if let Ok(mut deadlines) = self.guard_deadlines.lock() {
            match until_ms {
                Some(until) => {
                    deadlines.insert(group.to_string(), until);
                }
                None => {
                    deadlines.remove(group);
                }
            }
        }
    }

    /// The guard has not undone the group yet: enforcing the engine's deadline,
    /// as every external call here enforces one.
    fn before_guard_deadline(&self, group: &str) -> bool {
        let deadline = self
            .guard_deadlines
            .lock()
            .ok()
            .and_then(|d| d.get(group).copied())
            .unwrap_or(0);
        uphold_os::clock::monotonic_now_ms() < deadline
    }

    /// What every exec command learns about its context, like heartbeat's
    /// resource scripts: which node runs it and for which group.
    pub fn env(&self, group: &str) -> Vec<(String, String)> {
        vec![
            ("UPHOLD_NODE".to_string(), self.node.clone()),
            ("UPHOLD_GROUP".to_string(), group.to_string()),
        ]
    }

    /// Starts one resource. On failure, whatever it left is for the group's
    /// stop (which undoes every resource, idempotently).
    pub async fn start_one(&self, group: &str, resource: &ResourceSpec) -> Result<(), String> {
        self.start(group, resource)
            .await
            .map_err(|e| format!("{}: {e}", resource.label()))
    }

    /// Stops every resource, even after one fails; Err lists what may still be up.
    pub async fn stop_all(
        &self,
        group: &str,
        resources: &[ResourceSpec],
        kind: StopKind,
    ) -> Result<(), String> {
        if let Ok(announcing) = self.announcing.lock() {
            if let Some(cancel) = announcing.get(group) {
                cancel.store(true, Ordering::SeqCst);
            }
        }
        let order: Vec<&ResourceSpec> = match kind {
            StopKind::Emergency => EmergencyStop::of(resources).in_order(),
            StopKind::Orderly => resources.iter().rev().collect(),
        };
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

    async fn start(&self, group: &str, resource: &ResourceSpec) -> Result<(), ResourceError> {
        match resource {
            ResourceSpec::Ip(ip) => self.start_ip(group, ip).await,
            ResourceSpec::Exec(exec) => {
                self.run_command(group, exec, CommandRole::Start).await?;
                info!(group, resource = %exec.name, "started");
                Ok(())
            }
        }
    }

    async fn start_ip(&self, group: &str, ip: &IpResource) -> Result<(), ResourceError> {
        let outcome = netlink_call(
            "adding the address",
            self.netlink
                .add_address(&ip.interface, ip.address, ip.prefix_len),
        )
        .await?;
        if outcome == AddOutcome::AlreadyPresent {
            info!(group, address = %ip.address, "address was already present");
        }
        info!(group, address = %ip.address, interface = %ip.interface, "address added");
        let interface = ip.interface.clone();
        let (address, count) = (ip.address, ip.arp_count);
        let cancel = Arc::new(AtomicBool::new(false));
        if let Ok(mut announcing) = self.announcing.lock() {
            announcing.insert(group.to_string(), cancel.clone());
        }
        let runner = self.clone();
        let group_name = group.to_string();
        // Announcements are spaced out; they must not delay the next resource,
        // and they stop the moment the group stops or its guard deadline passes:
        // a late announcement would pull clients back from the new owner.
        tokio::task::spawn_blocking(move || {
            for i in 0..count {
                if cancel.load(Ordering::SeqCst) || !runner.before_guard_deadline(&group_name) {
                    break;
                }
                if let Err(e) = uphold_os::arp::announce(&interface, address, 1, Duration::ZERO) {
                    warn!(%interface, %address, "announcing the address failed: {e}");
                    break;
                }
                if i + 1 < count {
                    std::thread::sleep(ARP_GAP);
                }
            }
        });
        Ok(())
    }

    async fn stop(&self, group: &str, resource: &ResourceSpec) -> Result<(), ResourceError> {
        match resource {
            ResourceSpec::Ip(ip) => {
                netlink_call(
                    "removing the address",
                    self.netlink
                        .remove_address(&ip.interface, ip.address, ip.prefix_len),
                )
                .await?;
                info!(group, address = %ip.address, interface = %ip.interface, "address removed");
                Ok(())
            }
            ResourceSpec::Exec(exec) => {
                self.run_command(group, exec, CommandRole::Stop).await?;
                info!(group, resource = %exec.name, "stopped");
                Ok(())
            }
        }
    }

    /// Runs the `role` command of `exec` (of `group`) with its environment,
    /// deadline and user, told to the guard while it runs. Ok when it exited 0
    /// (a resource without a monitor command passes its check).
    async fn run_command(
        &self,
        group: &str,
        exec: &ExecResource,
        role: CommandRole,
    ) -> Result<(), ResourceError> {
        let argv = match role {
            CommandRole::Start => &exec.start,
            CommandRole::Stop => &exec.stop,
            CommandRole::Monitor => match &exec.monitor {
                Some(argv) => argv,
                None => return Ok(()),
            },
        };
        let outcome = uphold_os::exec::run_watched(
            argv,
            exec.timeout,
            &self.env(group),
            exec.user.as_deref(),
            &self.commands.watch(group),
        )
        .await
        .map_err(|source| ResourceError::CannotRun { role, source })?;
        if outcome.success() {
            Ok(())
        } else {
            Err(ResourceError::CommandFailed { role, outcome })
        }
    }

    /// One monitor pass. Ok(()) when healthy.
    pub async fn monitor(&self, group: &str, resource: &ResourceSpec) -> Result<(), ResourceError> {
        match resource {
            ResourceSpec::Ip(ip) => self.monitor_ip(ip).await,
            ResourceSpec::Exec(exec) => self.run_command(group, exec, CommandRole::Monitor).await,
        }
    }

    async fn monitor_ip(&self, ip: &IpResource) -> Result<(), ResourceError> {
        let present = netlink_call(
            "listing addresses",
            self.netlink.has_address(&ip.interface, ip.address),
        )
        .await?;
        if !present {
            return Err(ResourceError::AddressGone {
                address: ip.address,
                interface: ip.interface.clone(),
            });
        }
        let up = netlink_call(
            "reading the interface state",
            self.netlink.interface_is_up(&ip.interface),
        )
        .await?;
        if !up {
            return Err(ResourceError::InterfaceDown {
                interface: ip.interface.clone(),
            });
        }
        Ok(())
    }
}
