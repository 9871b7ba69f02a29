//! The cluster's picture as `uphold status` shows it: members, quorum, leader,
//! and every group with its owner, lease and last transition. Plain serde data so
//! the CLI, the HTTP API and tests read the same thing.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The member that answered.
    pub me: String,
    pub term: u64,
    pub leader: Option<String>,
    /// This member can reach a majority of voters (as leader: acks from a majority
    /// recently; as follower: a leader is known and heard from).
    pub quorum: bool,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub groups: Vec<GroupStatus>,
    /// Milliseconds of lease left on this member (0 if none).
    pub lease_remaining_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub name: String,
    pub address: String,
    pub role: String,
    /// As seen by the answering member: milliseconds since a voter (itself, or
    /// one that reported it) last accepted this member's renewal (None: none
    /// heard of since the answering member started).
    pub last_renewal_age_ms: Option<u64>,
    pub live: bool,
    pub is_leader: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupStatus {
    pub name: String,
    /// Owner according to the committed log.
    pub owner: Option<String>,
    pub epoch: u64,
    /// What the answering member is doing with the group locally: "waiting"
    /// (for a quorum to grant its claim, for the start gate, or for the guard of
    /// an earlier run), "starting", "running" or "stopping".
    pub local_phase: Option<String>,
    /// Milliseconds left of the answering member's granted claim on the group,
    /// when it has the group locally.
    #[serde(default)]
    pub claim_remaining_ms: Option<u64>,
    pub failed_on: Vec<String>,
    pub move_to: Option<String>,
    pub last_transition: String,
    pub resources: Vec<String>,
}

impl ClusterStatus {
    /// Human-readable rendering for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let leader = self.leader.as_deref().unwrap_or("none");
        out.push_str(&format!(
            "cluster {}  (answered by {})\nquorum: {}   leader: {}   term: {}   applied: {}\n\n",
            self.cluster,
            self.me,
            if self.quorum { "yes" } else { "NO" },
            leader,
            self.term,
            self.last_applied.map_or("-".to_string(), |i| i.to_string()),
        ));
        out.push_str("MEMBER       ROLE     ADDRESS                 STATE     LAST RENEWAL\n");
        for m in &self.members {
            let state = if m.role == "witness" {
                "voter"
            } else if m.live {
                "live"
            } else {
                "silent"
            };
            let age = m
                .last_renewal_age_ms
                .map_or("-".to_string(), |a| format!("{a} ms ago"));
            let name = if m.is_leader {
                format!("{} *", m.name)
            } else {
                m.name.clone()
            };
            out.push_str(&format!(
                "{:<12} {:<8} {:<23} {:<9} {}\n",
                name, m.role, m.address, state, age
            ));
        }
        out.push_str("\nGROUP        OWNER        EPOCH  HERE       LAST TRANSITION\n");
        for g in &self.groups {
            out.push_str(&format!(
                "{:<12} {:<12} {:<6} {:<10} {}\n",
                g.name,
                g.owner.as_deref().unwrap_or("(stopped)"),
                g.epoch,
                g.local_phase.as_deref().unwrap_or("-"),
                g.last_transition,
            ));
            if !g.failed_on.is_empty() {
                out.push_str(&format!(
                    "{:<12} failed on: {}\n",
                    "",
                    g.failed_on.join(", ")
                ));
            }
        }
        out.push_str(&format!(
            "\nlease held by {}: {} ms left\n",
            self.me, self.lease_remaining_ms
        ));
        out
    }
}
