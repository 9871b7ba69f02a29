//! The typed cluster configuration: members, timing, self-protection and groups.
//! `crate::model` and the crate root re-export it: other crates name these types
//! `uphold_config::ClusterConfig` or `uphold_config::model::ClusterConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use uphold_core::{GroupName, NodeId, NodeName, ResourceSpec};

#[derive(Clone, Debug, PartialEq, Eq, Copy)]
pub enum MemberRole {
    /// Votes and runs groups.
    Node,
    /// Votes only; never runs a group.
    Witness,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: NodeName,
    pub id: NodeId,
    /// Address peers connect to (and this member listens on, unless `listen` overrides).
    pub address: SocketAddr,
    pub listen: SocketAddr,
    /// Local status/admin API of this member (HTTP; localhost unless authenticated).
    pub api: SocketAddr,
    pub role: MemberRole,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// How long a committed renewal lets a node run its groups.
    pub lease: Duration,
    /// How often a node renews.
    pub renew_interval: Duration,
    /// Upper bound on the relative rate difference of two members' monotonic clocks
    /// (e.g. 0.01 = 1%). The leader waits `lease * (1 + max_clock_drift)` before
    /// reassigning a silent owner's groups.
    pub max_clock_drift: f64,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

/// The admin socket's name in a member's state directory.
pub const ADMIN_SOCKET_NAME: &str = "admin.sock";

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub members: Vec<Member>,
    pub groups: Vec<GroupConfig>,
    pub timing: Timing,
    /// Directory for Raft state; may contain `{node}`, replaced by the member name
    /// (so one file serves several members on one host, as in the demo).
    /// Default `/var/lib/uphold`.
    pub state_dir: String,
    /// Directory holding `ca.pem`, `<node>.pem`, `<node>-key.pem`; may contain
    /// `{node}`. Default `/etc/uphold/tls`.
    pub tls_dir: String,
    /// How the daemon shields itself from a loaded host. Applied at start only.
    pub protection: Protection,
}

/// `[cluster]` `lock_memory`, `cpu_priority`, `io_priority`: the daemon's
/// self-protection, so that a busy disk, a saturated CPU or memory pressure do not
/// delay its decisions. The defaults suit a dedicated server run as root; without
/// the privileges the daemon runs unprotected and says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    /// Keep the daemon's memory in RAM (never swapped out). Default true.
    pub lock_memory: bool,
    /// Scheduling priority of the threads that decide (cluster loop, Raft, RPC).
    pub cpu_priority: CpuPriority,
    /// Disk priority of the daemon.
    pub io_priority: IoPriority,
}

impl Default for Protection {
    fn default() -> Self {
        Protection {
            lock_memory: true,
            cpu_priority: CpuPriority::High,
            io_priority: IoPriority::High,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPriority {
    /// `"normal"`: the priority uphold was started with.
    Normal,
    /// `"high"`: nice -10 (the default).
    High,
    /// `"realtime"`: SCHED_RR at a low realtime priority, with a CPU budget.
    Realtime,
}

impl CpuPriority {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuPriority::Normal => "normal",
            CpuPriority::High => "high",
            CpuPriority::Realtime => "realtime",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPriority {
    /// `"normal"`: the I/O priority uphold was started with.
    Normal,
    /// `"high"`: best-effort class, level 0 (the default).
    High,
}

impl IoPriority {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            IoPriority::Normal => "normal",
            IoPriority::High => "high",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupConfig {
    pub name: GroupName,
    /// Preference order; only members with role Node.
    pub nodes: Vec<NodeName>,
    /// Move back to a more preferred node when it returns. Default false (sticky).
    pub failback: bool,
    pub resources: Vec<ResourceSpec>,
}

impl ClusterConfig {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name.as_str() == name)
    }
    pub fn member_by_id(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name.as_str() == name)
    }
    pub fn state_dir_for(&self, node: &NodeName) -> PathBuf {
        PathBuf::from(self.state_dir.replace("{node}", node.as_str()))
    }
    /// The member's admin socket: operator commands (`uphold balance drain`, …)
    /// are accepted only there, from root and the `uphold` group.
    pub fn admin_socket_for(&self, node: &NodeName) -> PathBuf {
        self.state_dir_for(node).join(ADMIN_SOCKET_NAME)
    }
    pub fn tls_dir_for(&self, node: &NodeName) -> PathBuf {
        PathBuf::from(self.tls_dir.replace("{node}", node.as_str()))
    }
}

impl Timing {
    /// How long the leader waits after the last renewal it saw from a node before the
    /// node's leases are certainly expired.
    pub fn lease_expiry_wait(&self) -> Duration {
        self.lease.mul_f64(1.0 + self.max_clock_drift)
    }
}
