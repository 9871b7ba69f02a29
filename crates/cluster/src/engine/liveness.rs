//! Which renewal each node last sent, and when this member first saw it in its log.
//!
//! The time a renewal reached this member's log is never earlier than the moment
//! its sender sent it, and the sender's lease runs from the send. So "seen at T"
//! means the sender's lease from that renewal ends no later than T + lease (plus
//! drift). The leader uses this to know when a silent owner's lease has certainly
//! expired. Fed from the log store's append hook on every member, so a follower
//! that becomes leader already has the figures.

use crate::engine::state::RenewalId;
use std::collections::BTreeMap;
use uphold_core::{Millis, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The latest renewal of the node in this member's log, if known.
    pub renewal: Option<RenewalId>,
    /// When it was appended here (or a later, conservative time).
    pub at: Millis,
    /// Start of the current run of renewals without a gap longer than a lease.
    pub alive_since: Millis,
}

#[derive(Clone, Debug, Default)]
pub struct Liveness {
    seen: BTreeMap<NodeId, Seen>,
}

impl Liveness {
    /// At start-up this member knows nothing about renewals already in its log,
    /// so it assumes every node renewed just now: the safe direction.
    pub fn new(nodes: &[NodeId], now: Millis) -> Liveness {
        let seen = nodes
            .iter()
            .map(|node| {
                (
                    *node,
                    Seen {
                        renewal: None,
                        at: now,
                        alive_since: now,
                    },
                )
            })
            .collect();
        Liveness { seen }
    }

    /// A renewal was appended to this member's log at `now`.
    pub fn renewal_appended(
        &mut self,
        node: NodeId,
        renewal: RenewalId,
        now: Millis,
        lease_ms: Millis,
    ) {
        let entry = self.seen.entry(node).or_insert(Seen {
            renewal: None,
            at: now,
            alive_since: now,
        });
        if now.saturating_sub(entry.at) > lease_ms {
            entry.alive_since = now;
        }
        entry.renewal = Some(renewal);
        entry.at = entry.at.max(now);
    }

    /// The log committed a different latest renewal than the one we named (ours was
    /// truncated, or appended before a restart): adopt the committed one and restart
    /// the wait from now, which is never too early.
    pub fn correct(&mut self, node: NodeId, committed: Option<RenewalId>, now: Millis) {
        let entry = self.seen.entry(node).or_insert(Seen {
            renewal: None,
            at: now,
            alive_since: now,
        });
        entry.renewal = committed;
        entry.at = entry.at.max(now);
    }

    pub fn get(&self, node: NodeId) -> Option<Seen> {
        self.seen.get(&node).copied()
    }

    /// The node's leases have certainly expired by `now`.
    pub fn lease_expired(&self, node: NodeId, now: Millis, expiry_wait_ms: Millis) -> bool {
        match self.seen.get(&node) {
            Some(seen) => now >= seen.at.saturating_add(expiry_wait_ms),
            // Never heard of: it was never granted anything through this member's log.
            None => true,
        }
    }

    /// The node renewed recently enough that it can plausibly take a group now.
    pub fn is_live(&self, node: NodeId, now: Millis, lease_ms: Millis) -> bool {
        match self.seen.get(&node) {
            Some(seen) => seen.renewal.is_some() && now < seen.at.saturating_add(lease_ms),
            None => false,
        }
    }

    /// Live and without a gap for at least `stable_ms`.
    pub fn is_stable(
        &self,
        node: NodeId,
        now: Millis,
        lease_ms: Millis,
        stable_ms: Millis,
    ) -> bool {
        self.is_live(node, now, lease_ms)
            && self
                .seen
                .get(&node)
                .is_some_and(|s| now.saturating_sub(s.alive_since) >= stable_ms)
    }
}
