//! A server's health: check results (active and passive) in, up/down transitions
//! out, with rise/fall hysteresis and a short history for the status view. Pure:
//! the caller supplies the time.

use std::collections::VecDeque;
use std::time::SystemTime;

/// How many transitions the history keeps.
pub const HISTORY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has finished yet.
    Unknown,
    Up,
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub to: Health,
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    state: Health,
    successes: u32,
    failures: u32,
    last_result: Option<String>,
    history: VecDeque<Transition>,
}

impl HealthTracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthTracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            last_result: None,
            history: VecDeque::new(),
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    pub fn last_result(&self) -> Option<&str> {
        self.last_result.as_deref()
    }

    pub fn history(&self) -> impl Iterator<Item = &Transition> {
        self.history.iter()
    }

    /// Takes one result. The first result decides at once (a balancer that just
    /// started must not wait `rise` intervals to serve, nor send writes to a server
    /// it has never seen writable); after that, `rise` successes or `fall` failures in
    /// a row change the state. Returns the transition, if any.
    pub fn observe(&mut self, ok: bool, detail: &str, now: SystemTime) -> Option<Transition> {
        self.last_result = Some(detail.to_string());
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match self.state {
            Health::Unknown => Some(if ok { Health::Up } else { Health::Down }),
            Health::Up if self.failures >= self.fall => Some(Health::Down),
            Health::Down if self.successes >= self.rise => Some(Health::Up),
            _ => None,
        }?;
        Some(self.enter(next, detail, now))
    }

    /// Forces a state without counting (a MySQL pool that sees two writable servers
    /// takes them down whatever their own checks say).
    pub fn force(&mut self, to: Health, reason: &str, now: SystemTime) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        self.successes = 0;
        self.failures = 0;
        Some(self.enter(to, reason, now))
    }

    /// Moves to `to` and records it in the history.
    fn enter(&mut self, to: Health, reason: &str, now: SystemTime) -> Transition {
        self.state = to;
        let t = Transition {
            at_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            to,
            reason: reason.to_string(),
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(t.clone());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000)
    }

    #[test]
    fn first_result_decides_then_hysteresis() {
        let mut h = HealthTracker::new(2, 3);
        assert_eq!(h.state(), Health::Unknown);
        assert_eq!(h.observe(true, "ok", t()).map(|t| t.to), Some(Health::Up));
        assert!(h.observe(false, "refused", t()).is_none());
        assert!(h.observe(false, "refused", t()).is_none());
        assert!(
            h.observe(true, "ok", t()).is_none(),
            "a success resets the failures"
        );
        assert!(h.observe(false, "refused", t()).is_none());
        assert!(h.observe(false, "refused", t()).is_none());
        let down = h.observe(false, "refused", t()).unwrap();
        assert_eq!(
            (down.to, down.reason.as_str(), down.at_ms),
            (Health::Down, "refused", 1_000_000)
        );
        assert!(h.observe(true, "ok", t()).is_none());
        assert_eq!(h.observe(true, "ok", t()).map(|t| t.to), Some(Health::Up));
        assert_eq!(h.history().count(), 3);
    }

    #[test]
    fn first_failure_means_down_at_once() {
        let mut h = HealthTracker::new(2, 3);
        assert_eq!(
            h.observe(false, "refused", t()).map(|t| t.to),
            Some(Health::Down)
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut h = HealthTracker::new(1, 1);
        for i in 0..100 {
            h.observe(i % 2 == 0, "x", t());
        }
        assert_eq!(h.history().count(), HISTORY);
    }

    #[test]
    fn force_overrides_and_counts_start_again() {
        let mut h = HealthTracker::new(2, 2);
        h.observe(true, "ok", t());
        assert_eq!(
            h.force(Health::Down, "two writable", t()).map(|t| t.to),
            Some(Health::Down)
        );
        assert!(h.force(Health::Down, "two writable", t()).is_none());
        assert!(h.observe(true, "ok", t()).is_none());
        assert_eq!(h.observe(true, "ok", t()).map(|t| t.to), Some(Health::Up));
    }
}
