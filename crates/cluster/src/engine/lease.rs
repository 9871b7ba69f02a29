//! Leases renewed in memory and granted by a quorum of voters, and the start gate
//! that replaces a logged renewal: nothing on this path waits on a disk.
//!
//! # The protocol
//!
//! Every member sends a [`Renewal`] to every voter (itself included) a few times
//! per lease period. It names the groups the sender runs or is about to start, each
//! with the epoch the log gave it (a [`Claim`]). A voter ([`LeaseVoter`]) answers
//! with a [`RenewalAck`] that refuses every claim on an epoch the voter has
//! *durably* seen end (its log holds an `Assign` or `Release` of that group at that
//! epoch or later). When a majority of voters acknowledged renewal `r`, sent at
//! local time `t`, without refusing claim `c`, the sender holds `c` until
//! `t + lease` on its own clock, less a stop margin.
//!
//! A node that takes a group with `Assign` starts it only after the *start gate*:
//! it asks every voter for a [`GateAnswer`]. A voter answers `Fenced` only once it
//! has applied the Assign (so its log durably holds it and it refuses every claim
//! on an earlier epoch from then on), and says how long ago it last acknowledged a
//! claim on an earlier epoch that was not withdrawn. With `Fenced` answers from a
//! majority the new owner waits until every lease those acknowledgements could
//! have granted has ended on any clock within the drift bound, then starts.
//!
//! # Why no group runs on two nodes
//!
//! Suppose node X holds claim `(g, e)` from renewal `r`, and Y starts `g` at
//! epoch `e' > e` after its gate. `r` was acknowledged by a majority M, Y's gate
//! by a majority G, so some voter V is in both. V acknowledged `r` either before
//! it answered Y (then its answer reported an acknowledgement at least that
//! recent, and Y waited until X's lease from `r` ended) or after (impossible: V's
//! durable log already held the epoch change, so V refuses `(g, e)` for ever,
//! across restarts, since the refusal is rebuilt from its log). Every other claim
//! on an earlier epoch is handled the same way, and a claim withdrawn by its
//! holder (sent only after the holder stopped the group, never claimed again by
//! that daemon run) grants nothing that runs. So no lease on an earlier epoch is
//! still valid when Y starts, and a holder without a valid lease has stopped (the
//! guard process holds the same deadline if the daemon cannot). A voter that
//! restarted cannot know what it acknowledged before, so it reports its start as
//! its last acknowledgement.
//!
//! A leader change needs no special wait: leases are not granted by the leader,
//! and every move goes through the gate of the node that takes the group.
//!
//! Losing a renewal or an acknowledgement only shortens a lease, which is safe.
//! The leader uses the same acknowledgements (its own, and those the others report
//! in [`Heard`]) to see which nodes are alive; that only decides *when* to move a
//! group, never whether two nodes may run it.

use crate::engine::state::{ClusterState, Command, RenewalId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uphold_core::{GroupName, Millis, NodeId};

/// Claims in one renewal beyond this are refused: no real node runs that many
/// groups, and a voter's tables stay bounded whatever a peer sends.
pub const MAX_CLAIMS: usize = 1024;
/// Groups a voter keeps floors and acknowledgements for; claims on further
/// groups are refused.
pub const MAX_TRACKED_GROUPS: usize = 4096;
/// Acknowledgements kept per group; older ones fold into one conservative time.
const MAX_ACKS_PER_GROUP: usize = 16;

/// "I run (or am about to start) `group` at `epoch`."
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Claim {
    pub group: GroupName,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    pub node: NodeId,
    pub id: RenewalId,
    pub claims: Vec<Claim>,
    /// Claims this daemon run has stopped for good: the voter forgets its
    /// acknowledgements of them, so the next owner need not wait them out.
    pub withdrawn: Vec<Claim>,
}

/// How long ago a voter last accepted a renewal from `node`, on its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    pub node: NodeId,
    pub age_ms: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalAck {
    pub id: RenewalId,
    /// Claims of the renewal this voter refuses (their epoch has ended here).
    pub refused: Vec<GroupName>,
    /// Every node whose renewals this voter accepts, with the age of the latest.
    pub heard: Vec<Heard>,
}

/// "Before I start `group` at `epoch`: have you fenced the earlier epochs, and
/// when did you last grant a claim on one?" Answered only by a voter that has
/// applied the log up to `applied_index`, the asker's applied index, which
/// includes the Assign that gave it the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateQuery {
    pub group: GroupName,
    pub epoch: u64,
    pub applied_index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateAnswer {
    /// This voter has not applied that far yet: ask again.
    NotYet,
    /// Claims on earlier epochs are refused here from now on; the latest one
    /// granted (or this voter's start, if later) was `since_ms` ago.
    Fenced { since_ms: Millis },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClaimAck {
    epoch: u64,
    node: NodeId,
    incarnation: u64,
    at: Millis,
}

#[derive(Clone, Debug, Default)]
struct GroupRecord {
    /// Claims on an epoch below this are refused: the voter's durable log (or
    /// snapshot) holds the group's move to this epoch or later.
    floor: u64,
    acks: Vec<ClaimAck>,
    /// The latest of the acknowledgements dropped to keep `acks` bounded.
    folded_at: Option<Millis>,
}

/// The voter's side of the lease protocol. Pure: the caller passes the time.
#[derive(Clone, Debug)]
pub struct LeaseVoter {
    started_at: Millis,
    groups: BTreeMap<GroupName, GroupRecord>,
    /// Highest daemon run seen per node (renewals, durable `Join`s).
    incarnations: BTreeMap<NodeId, u64>,
    /// When this voter last accepted a renewal from each node.
    accepted: BTreeMap<NodeId, Millis>,
    applied_index: u64,
}

impl LeaseVoter {
    /// A voter that starts knowing nothing: it may have acknowledged anything
    /// before `now` in an earlier life, so gate answers count from `now`.
    pub fn new(now: Millis) -> LeaseVoter {
        LeaseVoter {
            started_at: now,
            groups: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            accepted: BTreeMap::new(),
            applied_index: 0,
        }
    }

    fn record(&mut self, group: &GroupName) -> Option<&mut GroupRecord> {
        if !self.groups.contains_key(group) && self.groups.len() >= MAX_TRACKED_GROUPS {
            return None;
        }
        Some(self.groups.entry(group.clone()).or_default())
    }

    fn raise_floor(&mut self, group: &GroupName, floor: u64) {
        if let Some(record) = self.record(group) {
            record.floor = record.floor.max(floor);
        }
    }

    /// A command is durable in this member's log (appended and synced, or read
    /// back from the log at start).
    pub fn on_durable(&mut self, command: &Command) {
        match command {
            Command::Join { node, incarnation } => {
                let known = self.incarnations.entry(*node).or_insert(*incarnation);
                *known = (*known).max(*incarnation);
            }
            Command::Assign { group, epoch, .. } | Command::Release { group, epoch, .. } => {
                // Whether it commits or not, the group will never again be
                // granted at `epoch` or before by this voter: refusing more than
                // needed can only end a lease early.
                self.raise_floor(group, epoch + 1);
            }
            Command::RequestMove { .. } | Command::ClearFailures { .. } => {}
        }
    }

    /// A state this member holds durably (a snapshot loaded at start, built or
    /// installed): every group's earlier epochs are over.
    pub fn on_durable_state(&mut self, state: &ClusterState) {
        for (group, gs) in &state.groups {
            self.raise_floor(group, gs.epoch);
        }
        for (node, incarnation) in &state.incarnations {
            let known = self.incarnations.entry(*node).or_insert(*incarnation);
            *known = (*known).max(*incarnation);
        }
    }

    pub fn on_applied(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Handles a renewal from `renewal.node`. None: it comes from an earlier run
    /// of that node's daemon and is ignored.
    pub fn on_renewal(
        &mut self,
        renewal: &Renewal,
        now: Millis,
        forget_after_ms: Millis,
    ) -> Option<RenewalAck> {
        let node = renewal.node;
        let known = self.incarnations.get(&node).copied().unwrap_or(0);
        if renewal.id.incarnation < known {
            return None;
        }
        self.incarnations.insert(node, renewal.id.incarnation);
        self.accepted.insert(node, now);
        for withdrawn in renewal.withdrawn.iter().take(MAX_CLAIMS) {
            if let Some(record) = self.groups.get_mut(&withdrawn.group) {
                record.acks.retain(|ack| {
                    !(ack.node == node
                        && ack.incarnation == renewal.id.incarnation
                        && ack.epoch == withdrawn.epoch)
                });
            }
        }
        let mut refused = Vec::new();
        for (i, claim) in renewal.claims.iter().enumerate() {
            let Some(record) = (i < MAX_CLAIMS)
                .then(|| self.record(&claim.group))
                .flatten()
            else {
                refused.push(claim.group.clone());
                continue;
            };
            if claim.epoch < record.floor {
                refused.push(claim.group.clone());
                continue;
            }
            record.acks.retain(|ack| {
                now.saturating_sub(ack.at) < forget_after_ms
                    && !(ack.node == node
                        && ack.incarnation == renewal.id.incarnation
                        && ack.epoch == claim.epoch)
            });
            if record.acks.len() >= MAX_ACKS_PER_GROUP {
                let oldest = record.acks.remove(0);
                record.folded_at = Some(record.folded_at.unwrap_or(0).max(oldest.at));
            }
            record.acks.push(ClaimAck {
                epoch: claim.epoch,
                node,
                incarnation: renewal.id.incarnation,
                at: now,
            });
        }
        let heard = self
            .accepted
            .iter()
            .map(|(node, at)| Heard {
                node: *node,
                age_ms: now.saturating_sub(*at),
            })
            .collect();
        Some(RenewalAck {
            id: renewal.id,
            refused,
            heard,
        })
    }

    pub fn on_gate_query(&self, query: &GateQuery, now: Millis) -> GateAnswer {
        let floor = self.groups.get(&query.group).map_or(0, |r| r.floor);
        if self.applied_index < query.applied_index || floor < query.epoch {
            return GateAnswer::NotYet;
        }
        let mut latest = self.started_at;
        if let Some(record) = self.groups.get(&query.group) {
            for ack in record.acks.iter().filter(|a| a.epoch < query.epoch) {
                latest = latest.max(ack.at);
            }
            if let Some(folded) = record.folded_at {
                latest = latest.max(folded);
            }
        }
        GateAnswer::Fenced {
            since_ms: now.saturating_sub(latest),
        }
    }

    /// The floor of `group`: claims on earlier epochs are refused here.
    pub fn floor(&self, group: &GroupName) -> u64 {
        self.groups.get(group).map_or(0, |r| r.floor)
    }
}

/// How long after a `Fenced { since_ms }` answer the asker must wait, on its
/// own clock, before every lease granted by that voter's acknowledgement has
/// ended. The acknowledged renewal was sent no later than it was acknowledged,
/// its lease lasts `lease` on the holder's clock, at most `lease / (1 - drift)`
/// real time; at least `since / (1 + drift)` real time had passed when the answer
/// was sent; and the asker's clock may run fast by `drift`.
pub fn gate_remaining_ms(gate_wait_ms: Millis, since_ms: Millis) -> Millis {
    gate_wait_ms.saturating_sub(since_ms)
}

/// `lease * (1 + drift) / (1 - drift)`, rounded up: see [`gate_remaining_ms`].
pub fn gate_wait_ms(lease_ms: Millis, max_clock_drift: f64) -> Millis {
    let drift = max_clock_drift.clamp(0.0, 0.5);
    (lease_ms as f64 * (1.0 + drift) / (1.0 - drift)).ceil() as Millis
}
