//! When to send what to one target: a pure state machine fed hints, batch outcomes and a
//! clock. It gathers changes for `delay` after the first one (not after the last, so a
//! file written continuously still goes out), runs one batch at a time, puts a failed
//! batch back, backs off while the target is unreachable and compares the whole tree
//! when it returns and at the rescan interval, and halts (keeping every change) when
//! the source looks unmounted.

use super::halt::Halt;
use super::pending::Pending;
use crate::path::RelPath;
use uphold_core::Millis;

pub const MIN_BACKOFF: Millis = 500;
pub const MAX_BACKOFF: Millis = 30_000;
/// Entries that could not be sent (busy files, refused writes) wait this long.
pub const RETRY_DELAY: Millis = 1_000;
/// A halted set checks again this often whether the source is back.
pub const HALT_RECHECK: Millis = 5_000;

/// A change on the source, as the sender's watcher reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Entry(RelPath),
    Renamed {
        from: RelPath,
        to: RelPath,
        is_dir: bool,
    },
    Subtree(RelPath),
}

/// How a batch ended.
#[derive(Debug)]
pub enum Outcome {
    /// Sent; `retry` holds what must be looked at again (files busy while read, single
    /// operations the target refused).
    Done {
        retry: Pending,
        error: Option<String>,
    },
    /// The target could not be reached or failed as a whole; the batch comes back.
    Unreachable { batch: Pending, error: String },
    /// The source root is missing or suddenly empty: nothing is deleted on the target.
    Halted { batch: Pending, reason: Halt },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Reachable as far as we know.
    Up,
    /// Unreachable; next attempt at `retry_at`.
    Down {
        retry_at: Millis,
        backoff: Millis,
        error: String,
    },
    /// Stopped by a safety check; rechecked at `retry_at`.
    Halted { retry_at: Millis, reason: Halt },
}

#[derive(Debug)]
pub struct Batcher {
    delay: Millis,
    pending: Pending,
    /// When the oldest change in `pending` happened.
    first_dirty: Option<Millis>,
    /// Not before this time (retries wait).
    not_before: Millis,
    /// Oldest change of the batch being sent, if one is.
    in_flight: Option<Millis>,
    link: LinkState,
    last_error: Option<String>,
    /// The whole tree is compared again this often (drift the watcher missed);
    /// `None`: only after start-up and after the target was down.
    rescan_every: Option<Millis>,
    next_rescan: Millis,
}

impl Batcher {
    /// A batcher that starts with a comparison of the whole tree (start-up: only
    /// differences are sent, nothing changed while we were down is lost).
    pub fn new(delay: Millis, now: Millis) -> Self {
        Batcher {
            delay,
            pending: Pending::everything(),
            first_dirty: Some(now),
            not_before: 0,
            in_flight: None,
            link: LinkState::Up,
            last_error: None,
            rescan_every: None,
            next_rescan: Millis::MAX,
        }
    }

    /// Compares the whole tree again every `every` from `now` on.
    pub fn with_rescans(mut self, every: Millis, now: Millis) -> Self {
        self.rescan_every = Some(every.max(1));
        self.next_rescan = now.saturating_add(every.max(1));
        self
    }

    fn rescan_if_due(&mut self, now: Millis) {
        if let Some(every) = self.rescan_every {
            if now >= self.next_rescan {
                self.on_full_rescan(now);
                self.next_rescan = now.saturating_add(every);
            }
        }
    }

    fn dirty(&mut self, now: Millis) {
        if self.first_dirty.is_none() {
            self.first_dirty = Some(now);
        }
    }

    pub fn on_change(&mut self, change: Change, now: Millis) {
        match change {
            Change::Entry(path) => self.pending.add_changed(&path),
            Change::Subtree(dir) => self.pending.add_subtree(&dir),
            Change::Renamed { from, to, is_dir } => self.pending.add_rename(&from, &to, is_dir),
        }
        self.dirty(now);
    }

    /// A periodic full comparison to repair drift on the target.
    pub fn on_full_rescan(&mut self, now: Millis) {
        self.on_change(Change::Subtree(RelPath::root()), now);
    }

    /// Returns the batch to send now, if one is due.
    pub fn poll(&mut self, now: Millis) -> Option<Pending> {
        self.rescan_if_due(now);
        if self.in_flight.is_some() || self.pending.is_empty() {
            return None;
        }
        match &self.link {
            LinkState::Up => {}
            LinkState::Down { retry_at, .. } | LinkState::Halted { retry_at, .. } => {
                if now < *retry_at {
                    return None;
                }
            }
        }
        let first = self.first_dirty.unwrap_or(now);
        if now < first.saturating_add(self.delay) || now < self.not_before {
            return None;
        }
        self.in_flight = Some(first);
        self.first_dirty = None;
        Some(std::mem::take(&mut self.pending))
    }

    pub fn on_outcome(&mut self, outcome: Outcome, now: Millis) {
        let started = self.in_flight.take().unwrap_or(now);
        let put_back = |me: &mut Self, batch: Pending| {
            if !batch.is_empty() {
                me.pending.merge(batch);
                me.first_dirty = Some(me.first_dirty.map_or(started, |f| f.min(started)));
            }
        };
        match outcome {
            Outcome::Done { retry, error } => {
                let was_down = !matches!(self.link, LinkState::Up);
                self.link = LinkState::Up;
                self.last_error = error;
                if !retry.is_empty() {
                    self.not_before = now + RETRY_DELAY;
                    put_back(self, retry);
                }
                if was_down {
                    // Whatever happened to the target meanwhile, compare it all once.
                    self.on_full_rescan(now);
                }
            }
            Outcome::Unreachable { batch, error } => {
                let backoff = match &self.link {
                    LinkState::Down { backoff, .. } => (*backoff * 2).min(MAX_BACKOFF),
                    _ => MIN_BACKOFF,
                };
                self.link = LinkState::Down {
                    retry_at: now + backoff,
                    backoff,
                    error: error.clone(),
                };
                self.last_error = Some(error);
                put_back(self, batch);
            }
            Outcome::Halted { batch, reason } => {
                self.last_error = Some(reason.to_string());
                self.link = LinkState::Halted {
                    retry_at: now + HALT_RECHECK,
                    reason,
                };
                put_back(self, batch);
            }
        }
    }

    /// When `poll` should be called next, if nothing else happens.
    pub fn next_deadline(&self) -> Option<Millis> {
        let rescan = self.rescan_every.map(|_| self.next_rescan);
        if self.in_flight.is_some() || self.pending.is_empty() {
            return rescan;
        }
        let Some(first) = self.first_dirty else {
            return rescan;
        };
        let mut at = first.saturating_add(self.delay).max(self.not_before);
        if let LinkState::Down { retry_at, .. } | LinkState::Halted { retry_at, .. } = &self.link {
            at = at.max(*retry_at);
        }
        Some(rescan.map_or(at, |r| r.min(at)))
    }

    /// Age of the oldest change not yet on the target.
    pub fn lag(&self, now: Millis) -> Millis {
        let oldest = match (self.first_dirty, self.in_flight) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        oldest.map_or(0, |t| now.saturating_sub(t))
    }

    pub fn queued(&self) -> usize {
        self.pending.len()
    }
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }
    pub fn link(&self) -> &LinkState {
        &self.link
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn started(delay: Millis) -> Batcher {
        let mut b = Batcher::new(delay, 0);
        let first = b.poll(delay).expect("start-up comparison");
        assert_eq!(first, Pending::everything());
        b.on_outcome(
            Outcome::Done {
                retry: Pending::default(),
                error: None,
            },
            delay + 5,
        );
        b
    }

    #[test]
    fn the_whole_tree_is_compared_again_at_the_rescan_interval() {
        let mut b = Batcher::new(20, 0).with_rescans(10_000, 0);
        assert_eq!(b.poll(20), Some(Pending::everything()));
        b.on_outcome(
            Outcome::Done {
                retry: Pending::default(),
                error: None,
            },
            30,
        );
        assert_eq!(b.next_deadline(), Some(10_000));
        assert_eq!(b.poll(9_999), None);
        // Due: queued now, sent once the delay has passed like any change.
        assert_eq!(b.poll(10_000), None);
        assert_eq!(b.next_deadline(), Some(10_020));
        assert_eq!(b.poll(10_020), Some(Pending::everything()));
        assert_eq!(b.next_deadline(), Some(20_000));
    }

    #[test]
    fn a_change_goes_out_delay_after_the_first_event_even_if_more_keep_coming() {
        let mut b = started(20);
        b.on_change(Change::Entry(rp("a")), 100);
        assert_eq!(b.next_deadline(), Some(120));
        for t in 101..120 {
            b.on_change(Change::Entry(rp(&format!("f{t}"))), t);
            assert!(b.poll(t).is_none());
        }
        let batch = b.poll(120).expect("due");
        assert!(!batch.is_empty());
        assert_eq!(b.lag(130), 30);
        b.on_change(Change::Entry(rp("later")), 125);
        assert!(b.poll(200).is_none(), "one batch at a time");
        b.on_outcome(
            Outcome::Done {
                retry: Pending::default(),
                error: None,
            },
            140,
        );
        assert_eq!(b.lag(140), 15);
        assert!(b.poll(145).is_some());
    }

    #[test]
    fn an_unreachable_target_gets_the_batch_back_with_backoff_and_a_full_compare_on_return() {
        let mut b = started(10);
        b.on_change(Change::Entry(rp("x")), 100);
        let batch = b.poll(110).unwrap();
        b.on_outcome(
            Outcome::Unreachable {
                batch,
                error: "refused".into(),
            },
            120,
        );
        assert_eq!(b.lag(200), 100, "lag counts from the original change");
        assert!(b.poll(200).is_none());
        assert_eq!(b.next_deadline(), Some(120 + MIN_BACKOFF));
        let batch = b.poll(120 + MIN_BACKOFF).unwrap();
        b.on_outcome(
            Outcome::Unreachable {
                batch,
                error: "refused".into(),
            },
            700,
        );
        assert!(matches!(b.link(), LinkState::Down { backoff, .. } if *backoff == 2 * MIN_BACKOFF));
        let batch = b.poll(700 + 2 * MIN_BACKOFF).unwrap();
        assert!(batch.dirs.values().count() + batch.subtrees.len() > 0);
        b.on_outcome(
            Outcome::Done {
                retry: Pending::default(),
                error: None,
            },
            2000,
        );
        assert_eq!(b.poll(3000), Some(Pending::everything()));
    }

    #[test]
    fn retries_wait_and_halts_keep_every_change() {
        let mut b = started(10);
        b.on_change(Change::Entry(rp("busy")), 100);
        let _ = b.poll(110).unwrap();
        let mut retry = Pending::default();
        retry.add_changed(&rp("busy"));
        b.on_outcome(
            Outcome::Done {
                retry,
                error: Some("busy".into()),
            },
            115,
        );
        assert!(b.poll(500).is_none());
        let batch = b.poll(115 + RETRY_DELAY).unwrap();
        b.on_outcome(
            Outcome::Halted {
                batch,
                reason: Halt {
                    source: "/srv/www".into(),
                    kind: crate::engine::halt::HaltKind::BecameEmpty,
                },
            },
            1200,
        );
        assert!(b.queued() > 0);
        assert!(b.poll(1200 + HALT_RECHECK - 1).is_none());
        assert!(b.poll(1200 + HALT_RECHECK).is_some());
    }
}
