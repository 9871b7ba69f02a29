//! The status snapshot the local API serves, built from the engine and Raft, and
//! the log lines when a member stops or resumes renewing.

use super::status::{ClusterStatus, GroupStatus, MemberStatus};
use crate::engine::NodeEngine;
use crate::raft::RaftNode;
use std::collections::BTreeMap;
use tracing::{info, warn};
use uphold_config::{ClusterConfig, MemberRole};
use uphold_core::{Millis, NodeName};

/// One log line when a node stops or resumes renewing, as seen from here.
pub(super) fn log_liveness_changes(known: &mut BTreeMap<String, bool>, status: &ClusterStatus) {
    for member in status.members.iter().filter(|m| m.role == "node") {
        let before = known.insert(member.name.clone(), member.live);
        match (before, member.live) {
            (Some(true), false) => warn!(member = %member.name, "member stopped renewing"),
            (Some(false), true) | (None, true) => info!(member = %member.name, "member is live"),
            _ => {}
        }
    }
}

pub(super) fn build_status(
    config: &ClusterConfig,
    me: &NodeName,
    engine: &NodeEngine,
    raft: &RaftNode,
    now: Millis,
) -> ClusterStatus {
    let raft_status = raft.status();
    let name_of = |id: u64| {
        config
            .member_by_id(id)
            .map_or_else(|| format!("#{id}"), |m| m.name.to_string())
    };
    let topo = engine.topology();
    let members = config
        .members
        .iter()
        .map(|m| {
            let seen = engine.liveness().get(m.id).filter(|s| s.heard);
            MemberStatus {
                name: m.name.to_string(),
                address: m.address.to_string(),
                role: match m.role {
                    MemberRole::Node => "node".into(),
                    MemberRole::Witness => "witness".into(),
                },
                last_renewal_age_ms: seen.map(|s| now.saturating_sub(s.at)),
                live: engine.liveness().is_live(m.id, now, topo.lease_ms),
                is_leader: raft_status.leader == Some(m.id),
            }
        })
        .collect();
    let state = engine.state();
    let groups = config
        .groups
        .iter()
        .map(|g| {
            let gs = state.group(&g.name);
            GroupStatus {
                name: g.name.to_string(),
                owner: gs.owner.map(name_of),
                epoch: gs.epoch,
                local_phase: engine.agent().phase(&g.name).map(|p| match p {
                    crate::engine::GroupPhase::Waiting => "waiting".to_string(),
                    crate::engine::GroupPhase::Starting => "starting".to_string(),
                    crate::engine::GroupPhase::Running => "running".to_string(),
                    crate::engine::GroupPhase::Stopping { .. } => "stopping".to_string(),
                }),
                claim_remaining_ms: engine
                    .agent()
                    .claim_until(&g.name)
                    .map(|until| until.saturating_sub(now)),
                failed_on: gs.failed_on.iter().map(|n| name_of(*n)).collect(),
                move_to: gs.move_to.map(name_of),
                last_transition: gs.last_transition.as_ref().map_or("-".to_string(), |t| {
                    let who = |n: Option<u64>| n.map_or("nobody".to_string(), name_of);
                    format!(
                        "epoch {}: {} -> {} ({})",
                        t.epoch,
                        who(t.from),
                        who(t.to),
                        t.reason
                    )
                }),
                resources: g.resources.iter().map(|r| r.label()).collect(),
            }
        })
        .collect();
    ClusterStatus {
        cluster: config.name.clone(),
        me: me.to_string(),
        term: raft_status.term,
        leader: raft_status.leader.map(name_of),
        quorum: raft_status.has_quorum(),
        last_log_index: raft_status.last_log_index,
        last_applied: raft_status.last_applied,
        members,
        groups,
        lease_remaining_ms: engine.agent().lease_until().saturating_sub(now),
    }
}
