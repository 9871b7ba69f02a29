//! Each simulated machine's monotonic clock: an offset plus real time scaled by a
//! rate within [1 - rho, 1 + rho], in integer parts per million so that the
//! arithmetic, and therefore every run, is exactly reproducible.

use uphold_core::Millis;

#[derive(Clone, Copy, Debug)]
pub struct LocalClock {
    offset_us: u64,
    /// Rate error in parts per million: local runs at (1 + ppm / 1e6) x real.
    pub ppm: i64,
}

impl LocalClock {
    pub fn new(offset_us: u64, ppm: i64) -> LocalClock {
        assert!(
            ppm.abs() < 100_000,
            "clock rate error out of the modelled range"
        );
        LocalClock { offset_us, ppm }
    }

    /// Local microseconds at real time `real_us`. Non-decreasing in `real_us`.
    pub fn local_us(&self, real_us: u64) -> u64 {
        let real = i128::from(real_us);
        let skew = (real * i128::from(self.ppm)).div_euclid(1_000_000);
        (i128::from(self.offset_us) + real + skew) as u64
    }

    pub fn now_ms(&self, real_us: u64) -> Millis {
        self.local_us(real_us) / 1000
    }

    /// The earliest real instant, not before `not_before`, at which this clock
    /// shows at least `ms`.
    pub fn real_at(&self, ms: Millis, not_before: u64) -> u64 {
        if self.now_ms(not_before) >= ms {
            return not_before;
        }
        let target = i128::from(ms) * 1000 - i128::from(self.offset_us);
        let estimate = (target * 1_000_000).div_euclid(1_000_000 + i128::from(self.ppm));
        let mut t = (estimate.max(i128::from(not_before))) as u64;
        while self.now_ms(t) < ms {
            t += 1;
        }
        while t > not_before && self.now_ms(t - 1) >= ms {
            t -= 1;
        }
        t
    }
}
