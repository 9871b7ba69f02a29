//! Slow start: a server that just came back gets its weight back gradually, so a
//! cold cache or a JIT warm-up is not hit with its full share at once.

use std::time::Duration;

/// `weight` scaled by how far `since_up` is into `window`; never 0 for a nonzero
/// weight, so the server does get its first requests.
pub fn effective_weight(weight: u32, since_up: Option<Duration>, window: Duration) -> u32 {
    match since_up {
        Some(elapsed) if !window.is_zero() && elapsed < window && weight > 0 => {
            let scaled = u128::from(weight) * elapsed.as_millis() / window.as_millis().max(1);
            (scaled as u32).max(1)
        }
        _ => weight,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_linearly_over_the_window() {
        let w = Duration::from_secs(10);
        assert_eq!(effective_weight(100, Some(Duration::ZERO), w), 1);
        assert_eq!(effective_weight(100, Some(Duration::from_secs(5)), w), 50);
        assert_eq!(effective_weight(100, Some(Duration::from_secs(10)), w), 100);
        assert_eq!(effective_weight(100, None, w), 100);
        assert_eq!(effective_weight(0, Some(Duration::from_secs(1)), w), 0);
        assert_eq!(
            effective_weight(7, Some(Duration::from_secs(1)), Duration::ZERO),
            7
        );
    }
}
