//! The real clock: raw CLOCK_MONOTONIC. Its origin is the host's boot, not the
//! process start, so a deadline computed by the daemon means the same instant to
//! the guard process it hands the deadline to.

use std::time::Duration;
use uphold_core::{Clock, Millis};

/// Current CLOCK_MONOTONIC reading. Comparable between processes on one host.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC is always
    // supported on Linux, so clock_gettime only writes into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // Cannot happen for CLOCK_MONOTONIC with a valid pointer; a zero reading
        // would make every lease look expired, which is the safe direction.
        return Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// CLOCK_MONOTONIC in whole milliseconds, the unit guard deadlines use.
pub fn monotonic_now_ms() -> Millis {
    u64::try_from(monotonic_now().as_millis()).unwrap_or(u64::MAX)
}

/// [`Clock`] backed by raw CLOCK_MONOTONIC milliseconds (not a per-process
/// origin), so its readings can be sent to the guard process as deadlines.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> Millis {
        monotonic_now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_matches_clock() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a);
        assert!(a > Duration::ZERO, "CLOCK_MONOTONIC reads zero");
        let ms = MonotonicClock::new().now_ms();
        let after = monotonic_now_ms();
        assert!(ms >= u64::try_from(b.as_millis()).unwrap());
        assert!(after >= ms);
    }

    #[test]
    fn reads_the_host_wide_clock_not_a_process_origin() {
        // The kernel's own CLOCK_MONOTONIC reading ("now at N nsecs") is what any
        // other process would see; ours must bracket it.
        let before = monotonic_now();
        let Ok(text) = std::fs::read_to_string("/proc/timer_list") else {
            eprintln!("skipping: /proc/timer_list is not readable here");
            return;
        };
        let after = monotonic_now();
        let Some(kernel_ns) = text
            .lines()
            .find_map(|l| l.strip_prefix("now at "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            eprintln!("skipping: /proc/timer_list has no \"now at\" line (masked?)");
            return;
        };
        let kernel = Duration::from_nanos(kernel_ns);
        assert!(
            before <= kernel && kernel <= after,
            "kernel CLOCK_MONOTONIC {kernel:?} outside our readings [{before:?}, {after:?}]"
        );
    }
}
