//! The rolling weak checksum that finds candidate block matches at every byte offset.
//!
//! We use a polynomial (Rabin–Karp) hash over the ring of integers modulo 2^64 rather
//! than rsync's Adler-32-like pair of 16-bit sums:
//!
//! - Adler's sums are linear in the byte values, so for a given block length their
//!   values cluster (the low sum is a plain byte total), which puts many unrelated
//!   windows into the same hash bucket and costs a strong-hash computation each.
//!   Multiplying by an odd 64-bit constant carries every byte into the high bits,
//!   and we keep the high 32 bits as the weak checksum.
//! - The roll is still O(1): `h' = (h - out * m^(n-1)) * m + in`, two multiplications
//!   with a precomputed `m^(n-1)`, all wrapping.
//! - The multiplier comes from a seed stored in the signature. The receiver can pick
//!   a random seed per signature, so a sender cannot craft a file whose every window
//!   collides with the weak checksum of some basis block (which would force a strong
//!   hash at every byte offset and make encoding quadratic).

/// Rolling polynomial hash over a fixed-length window.
#[derive(Clone, Debug)]
pub struct Rolling {
    mult: u64,
    /// `mult^(window_len - 1)`, the weight of the byte leaving the window.
    out_weight: u64,
    hash: u64,
}

/// Derives an odd multiplier with well-mixed bits from a seed (SplitMix64 finaliser).
pub fn multiplier_for_seed(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // An even multiplier would shift information out of the top of the word.
    z | 1
}

impl Rolling {
    /// A rolling hash for windows of `window_len` bytes, multiplier derived from `seed`.
    pub fn new(seed: u64, window_len: usize) -> Self {
        let mult = multiplier_for_seed(seed);
        let mut out_weight = 1u64;
        for _ in 1..window_len {
            out_weight = out_weight.wrapping_mul(mult);
        }
        Rolling {
            mult,
            out_weight,
            hash: 0,
        }
    }

    /// Resets the state to the hash of `window` (whose length must be the window length
    /// this hash was built for, or the roll weights are wrong).
    pub fn reset(&mut self, window: &[u8]) {
        let mut h = 0u64;
        for &b in window {
            h = h.wrapping_mul(self.mult).wrapping_add(u64::from(b));
        }
        self.hash = h;
    }

    /// Slides the window one byte: `out` leaves at the front, `inb` enters at the back.
    #[inline]
    pub fn roll(&mut self, out: u8, inb: u8) {
        let without = self
            .hash
            .wrapping_sub(u64::from(out).wrapping_mul(self.out_weight));
        self.hash = without.wrapping_mul(self.mult).wrapping_add(u64::from(inb));
    }

    /// The 32-bit weak checksum of the current window (the best-mixed high bits).
    #[inline]
    pub fn weak(&self) -> u32 {
        (self.hash >> 32) as u32
    }

    /// Weak checksum of a whole window in one go.
    pub fn weak_of(seed: u64, window: &[u8]) -> u32 {
        let mut r = Rolling::new(seed, window.len());
        r.reset(window);
        r.weak()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_equals_recomputing_at_every_offset() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for &n in &[1usize, 2, 7, 64, 1000] {
            let mut r = Rolling::new(42, n);
            r.reset(&data[..n]);
            for start in 1..=(data.len() - n) {
                r.roll(data[start - 1], data[start + n - 1]);
                assert_eq!(
                    r.weak(),
                    Rolling::weak_of(42, &data[start..start + n]),
                    "window {n} at {start}"
                );
            }
        }
    }

    #[test]
    fn seed_changes_the_checksum() {
        let w = b"some window of bytes that is long enough";
        assert_ne!(Rolling::weak_of(1, w), Rolling::weak_of(2, w));
        assert_eq!(multiplier_for_seed(7) & 1, 1);
    }
}
