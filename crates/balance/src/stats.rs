//! Counters of a frontend and of its servers, updated by the proxy threads with
//! relaxed atomics (no locks on the request path), and a latency histogram with
//! power-of-two buckets that gives percentiles for the status view.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: usize = 40;

/// Latencies in power-of-two microsecond buckets: bucket i counts [2^i, 2^(i+1)) µs.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let i = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// The upper edge of the bucket holding quantile `q` (0..1), in milliseconds;
    /// `None` with no samples.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((1u64 << (i + 1)) as f64 / 1000.0);
            }
        }
        None
    }
}

/// Counts shared by frontends and servers.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Connections accepted (frontend) or opened (server).
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// http: requests.
    pub requests: AtomicU64,
    /// Bytes from clients towards servers.
    pub bytes_in: AtomicU64,
    /// Bytes from servers towards clients.
    pub bytes_out: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub responses_other: AtomicU64,
    /// Connects to a server that failed or timed out.
    pub connect_errors: AtomicU64,
    /// A server that closed or failed mid-response, or answered nothing in time.
    pub server_errors: AtomicU64,
    /// Requests or connections retried on another server.
    pub retries: AtomicU64,
    /// Time to the response head (http) or to the server connection (tcp).
    pub latency: Histogram,
}

impl Traffic {
    pub fn response(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            500..=599 => &self.responses_5xx,
            _ => &self.responses_other,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Frontend-only counts.
#[derive(Debug, Default)]
pub struct FrontendCounters {
    /// Refused: no server could take it (503 in http).
    pub no_server: AtomicU64,
    /// Gave up waiting in the queue.
    pub queue_timeouts: AtomicU64,
    /// Refused at `max_connections`.
    pub over_limit: AtomicU64,
    /// Refused at `max_connections_per_client`.
    pub over_client_limit: AtomicU64,
    /// Malformed or too-slow client requests.
    pub bad_requests: AtomicU64,
    /// Waiting for a server slot now.
    pub queued: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(300));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(50));
        assert_eq!(h.quantile_ms(0.5), Some(0.512));
        assert_eq!(h.quantile_ms(0.99), Some(65.536));
    }
}
