//! What a reload may change, and the engine's view of a config (its topology),
//! built the same way at start and at every reload.

use crate::engine::topology::{GroupSpec, ResourceRule};
use crate::engine::Topology;
use uphold_config::{ClusterConfig, MemberRole};
use uphold_core::{Millis, ResourceSpec};

/// What a reload may change while running: groups and their resources. The rest
/// (members, timing, directories) is fixed while the cluster runs.
pub fn reload_refusal(running: &ClusterConfig, new: &ClusterConfig) -> Option<String> {
    if running.name != new.name {
        return Some("the cluster name changed".into());
    }
    if running.members != new.members {
        return Some(
            "the members changed (membership changes need a restart of every member)".into(),
        );
    }
    if running.timing != new.timing {
        return Some("lease or Raft timing changed".into());
    }
    if running.state_dir != new.state_dir || running.tls_dir != new.tls_dir {
        return Some("state_dir or tls_dir changed".into());
    }
    None
}

pub fn topology_from(config: &ClusterConfig) -> Topology {
    let nodes = config
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Node)
        .map(|m| m.id)
        .collect();
    let witnesses: Vec<uphold_core::NodeId> = config
        .members
        .iter()
        .filter(|m| m.role == MemberRole::Witness)
        .map(|m| m.id)
        .collect();
    let groups = config
        .groups
        .iter()
        .map(|g| GroupSpec {
            name: g.name.clone(),
            nodes: g.nodes.iter().map(|n| n.id()).collect(),
            failback: g.failback,
            resources: g
                .resources
                .iter()
                .map(|r| match r {
                    ResourceSpec::Exec(exec) => ResourceRule {
                        failures_before_move: exec.failures_before_move,
                    },
                    ResourceSpec::Ip(_) => ResourceRule::STRICT,
                })
                .collect(),
        })
        .collect();
    Topology::with_timing(
        nodes,
        groups,
        config.timing.lease.as_millis() as Millis,
        config.timing.renew_interval.as_millis() as Millis,
        config.timing.max_clock_drift,
    )
    .with_witnesses(&witnesses)
}
