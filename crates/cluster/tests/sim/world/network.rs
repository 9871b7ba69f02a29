//! Links between members: cuts, loss, delays and their bursts.

use super::*;

impl World {
    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to {
            let delay = self.rng.gen_range(0..=200);
            self.schedule(self.now + delay, Ev::Deliver { from, to, msg });
            return;
        }
        if self.cut[from][to] > 0 {
            return;
        }
        let loss = self
            .loss_bursts
            .values()
            .copied()
            .fold(self.cfg.net_loss, f64::max);
        if loss > 0.0 && self.rng.gen_bool(loss) {
            return;
        }
        let (lo, hi) = self.cfg.net_delay_us;
        let mut delay = self.rng.gen_range(lo..=hi);
        if let Some(extra) = self.delay_bursts.values().copied().max() {
            delay += self.rng.gen_range(0..=extra);
        }
        for (a, b, extra) in self.slow_links.values() {
            if (*a, *b) == (from, to) {
                delay += extra;
            }
        }
        if self.cfg.slow_msg_prob > 0.0 && self.rng.gen_bool(self.cfg.slow_msg_prob) {
            delay += self.rng.gen_range(20 * MS..=300 * MS);
        }
        self.schedule(self.now + delay, Ev::Deliver { from, to, msg });
    }
}
