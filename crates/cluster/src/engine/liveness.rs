//! When this member last knew each node to be renewing its lease: renewals its
//! own voter accepted, and those other voters report accepting ([`Heard`] in
//! their acknowledgements). So an owner cut off from the leader but renewing
//! through another voter still looks alive to the leader, and is not moved.
//!
//! This only decides *when* the leader moves a group away from a silent owner;
//! that no two nodes run it is the start gate's job (`crate::engine::lease`).

use crate::engine::lease::Heard;
use std::collections::BTreeMap;
use uphold_core::{Millis, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Some renewal of the node was accepted by a voter at this time (on this
    /// member's clock), or at start-up, the safe assumption that it just was.
    pub at: Millis,
    /// False until a renewal was actually heard of in this run.
    pub heard: bool,
    /// Start of the current run of renewals without a gap longer than a lease.
    pub alive_since: Millis,
}

#[derive(Clone, Debug, Default)]
pub struct Liveness {
    seen: BTreeMap<NodeId, Seen>,
}

impl Liveness {
    /// At start-up this member knows nothing about anyone's renewals, so it
    /// assumes every node renewed just now: the direction that moves nothing.
    pub fn new(nodes: &[NodeId], now: Millis) -> Liveness {
        let seen = nodes
            .iter()
            .map(|node| {
                (
                    *node,
                    Seen {
                        at: now,
                        heard: false,
                        alive_since: now,
                    },
                )
            })
            .collect();
        Liveness { seen }
    }

    /// A voter accepted a renewal of `node` at `at` (this member's clock).
    pub fn renewed(&mut self, node: NodeId, at: Millis, lease_ms: Millis) {
        let entry = self.seen.entry(node).or_insert(Seen {
            at,
            heard: false,
            alive_since: at,
        });
        if at.saturating_sub(entry.at) > lease_ms {
            entry.alive_since = at;
        }
        entry.heard = true;
        entry.at = entry.at.max(at);
    }

    /// A voter's report, received at `now`, of the renewals it accepts. Only
    /// nodes this member tracks count (a report cannot add strangers).
    pub fn report(&mut self, heard: &[Heard], now: Millis, lease_ms: Millis) {
        for h in heard {
            if self.seen.contains_key(&h.node) {
                self.renewed(h.node, now.saturating_sub(h.age_ms), lease_ms);
            }
        }
    }

    pub fn get(&self, node: NodeId) -> Option<Seen> {
        self.seen.get(&node).copied()
    }

    /// No voter has accepted a renewal of the node for `wait_ms`: its leases
    /// have most likely run out, so its groups should move.
    pub fn lease_expired(&self, node: NodeId, now: Millis, wait_ms: Millis) -> bool {
        match self.seen.get(&node) {
            Some(seen) => now >= seen.at.saturating_add(wait_ms),
            None => true,
        }
    }

    /// The node renewed recently enough that it can plausibly take a group now.
    pub fn is_live(&self, node: NodeId, now: Millis, lease_ms: Millis) -> bool {
        match self.seen.get(&node) {
            Some(seen) => seen.heard && now < seen.at.saturating_add(lease_ms),
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
