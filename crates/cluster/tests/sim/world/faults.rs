//! The fault plans: random faults, and those aimed at narrow windows.

use super::*;

impl World {
    pub(super) fn next_random_fault(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        if self.now >= plan.until_us {
            return;
        }
        let n = self.members.len();
        let gap_ms;
        if plan.kind == PlanKind::DiskOnly {
            gap_ms = self.rng.gen_range(100..=plan.mean_gap_ms * 2);
            self.random_disk_stall();
        } else if plan.kind == PlanKind::CrashOnly {
            gap_ms = self
                .rng
                .gen_range(plan.mean_gap_ms / 2..=plan.mean_gap_ms * 3 / 2);
            // Prefer owners, so that most crashes measure a failover.
            let owners: Vec<usize> = (0..self.groups.len())
                .filter_map(|g| self.group_up(g))
                .collect();
            let m = if !owners.is_empty() && self.rng.gen_bool(0.8) {
                *owners.choose(&mut self.rng).expect("owner")
            } else {
                self.rng.gen_range(0..n)
            };
            let back = self.now + self.rng.gen_range(500..=4000) * MS;
            if self.rng.gen_bool(0.6) {
                self.apply_fault(Fault::CrashDaemon(m));
                self.schedule(back, Ev::Fault(Fault::RestartDaemon(m)));
            } else {
                self.apply_fault(Fault::CrashMachine(m));
                self.schedule(back, Ev::Fault(Fault::BootMachine(m)));
            }
        } else {
            gap_ms = self.rng.gen_range(50..=plan.mean_gap_ms * 2);
            let m = self.rng.gen_range(0..n);
            let dur = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| rng.gen_range(lo..=hi) * MS;
            match self.rng.gen_range(0..110) {
                0..=11 => {
                    // Sometimes restarted at once, as systemd does, while the
                    // guard of the dead run may still be undoing.
                    let back = if self.rng.gen_bool(0.3) {
                        self.now + self.rng.gen_range(0..=20 * MS)
                    } else {
                        self.now + dur(&mut self.rng, 50, 6000)
                    };
                    self.apply_fault(Fault::CrashDaemon(m));
                    self.schedule(back, Ev::Fault(Fault::RestartDaemon(m)));
                }
                12..=19 => {
                    let back = self.now + dur(&mut self.rng, 300, 8000);
                    self.apply_fault(Fault::CrashMachine(m));
                    self.schedule(back, Ev::Fault(Fault::BootMachine(m)));
                }
                20..=49 => {
                    let cuts = self.random_cuts();
                    let id = self.new_id();
                    let back = self.now + dur(&mut self.rng, 100, 6000);
                    self.apply_fault(Fault::Partition { id, cuts });
                    self.schedule(back, Ev::Fault(Fault::HealPartition(id)));
                }
                50..=67 => {
                    // Pauses around the lease length are the interesting ones.
                    let lease = self.cfg.lease_ms;
                    let d = if self.rng.gen_bool(0.5) {
                        dur(&mut self.rng, lease / 2, lease * 2)
                    } else {
                        dur(&mut self.rng, 20, 5000)
                    };
                    self.apply_fault(Fault::Pause(m));
                    self.schedule(self.now + d, Ev::Fault(Fault::Resume(m)));
                }
                68..=77 => {
                    let id = self.new_id();
                    let p = self.rng.gen_range(0.05..0.7);
                    let back = self.now + dur(&mut self.rng, 200, 3000);
                    self.apply_fault(Fault::Loss { id, p });
                    self.schedule(back, Ev::Fault(Fault::LossEnd(id)));
                }
                78..=80 => {
                    let id = self.new_id();
                    let extra_us = self.rng.gen_range(5..=600) * MS;
                    let back = self.now + dur(&mut self.rng, 200, 3000);
                    self.apply_fault(Fault::Delay { id, extra_us });
                    self.schedule(back, Ev::Fault(Fault::DelayEnd(id)));
                }
                81..=84 => {
                    let id = self.new_id();
                    let to = (m + self.rng.gen_range(1..n)) % n;
                    let extra_us = self.rng.gen_range(50..=2500) * MS;
                    let back = self.now + dur(&mut self.rng, 50, 1500);
                    self.apply_fault(Fault::SlowLink {
                        id,
                        from: m,
                        to,
                        extra_us,
                    });
                    self.schedule(back, Ev::Fault(Fault::SlowLinkEnd(id)));
                }
                85..=89 => self.apply_fault(Fault::Shutdown(m)),
                100..=109 => self.random_disk_stall(),
                _ => {
                    let running: Vec<(usize, usize)> = (0..self.groups.len())
                        .flat_map(|g| (0..n).map(move |m| (m, g)))
                        .filter(|(m, g)| {
                            self.members[*m]
                                .daemon
                                .as_ref()
                                .is_some_and(|d| d.exec[*g].running.is_some())
                        })
                        .collect();
                    if let Some((m, g)) = running.choose(&mut self.rng).copied() {
                        self.apply_fault(Fault::MonitorFail { m, g });
                    }
                }
            }
        }
        self.schedule(self.now + gap_ms * MS, Ev::Fault(Fault::Next));
    }

    /// A disk stall on one member, the leader, a group's owner, a majority or
    /// everyone: log writes taking up to several seconds, for up to ten.
    pub(super) fn random_disk_stall(&mut self) {
        let n = self.members.len();
        let members: Vec<usize> = match self.rng.gen_range(0..5) {
            0 => vec![self.rng.gen_range(0..n)],
            1 => self.leader().into_iter().collect(),
            2 => (0..self.groups.len())
                .filter_map(|g| self.group_up(g))
                .take(1)
                .collect(),
            3 => {
                let mut all: Vec<usize> = (0..n).collect();
                all.shuffle(&mut self.rng);
                all.truncate(n / 2 + 1);
                all
            }
            _ => (0..n).collect(),
        };
        if members.is_empty() {
            return;
        }
        let id = self.new_id();
        let latency_us = if self.rng.gen_bool(0.5) {
            self.rng.gen_range(50..=1000) * MS
        } else {
            self.rng.gen_range(1000..=5000) * MS
        };
        let end = self.now + self.rng.gen_range(200..=10_000) * MS;
        self.apply_fault(Fault::DiskStall {
            id,
            members,
            latency_us,
        });
        self.schedule(end, Ev::Fault(Fault::DiskStallEnd(id)));
    }

    /// Faults aimed at the narrow windows random timing rarely hits: the
    /// proposer crashes or stalls just after proposing a hand-over or placement.
    pub(super) fn maybe_trigger(&mut self, m: usize, command: &Command) {
        let Some(plan) = &self.plan else { return };
        if plan.kind != PlanKind::Mixed || self.now < plan.from_us || self.now >= plan.until_us {
            return;
        }
        let p = match command {
            Command::Release { .. } | Command::Assign { .. } | Command::RequestMove { .. } => 0.15,
            Command::Join { .. } => 0.05,
            Command::ClearFailures { .. } => 0.0,
        };
        if p == 0.0 || !self.rng.gen_bool(p) {
            return;
        }
        let at = self.now + self.rng.gen_range(0..=5 * MS);
        let lease = self.cfg.lease_ms;
        let release = matches!(command, Command::Release { .. });
        let leader = self.members[m].raft.leader.filter(|l| *l != m);
        if let (true, Some(leader)) = (release, leader) {
            if self.rng.gen_bool(0.3) {
                // The release is held up on its way to the leader while its
                // proposer dies and a new incarnation starts.
                let id = self.new_id();
                let extra_us = self.rng.gen_range(200..=2500) * MS;
                let end = self.now + self.rng.gen_range(1..=300) * MS;
                self.apply_fault(Fault::SlowLink {
                    id,
                    from: m,
                    to: leader,
                    extra_us,
                });
                self.schedule(end, Ev::Fault(Fault::SlowLinkEnd(id)));
                let crash = self.now + self.rng.gen_range(0..=50) * MS;
                let back = crash + self.rng.gen_range(20..=500) * MS;
                self.schedule(crash, Ev::Fault(Fault::CrashDaemon(m)));
                self.schedule(back, Ev::Fault(Fault::RestartDaemon(m)));
                if self.rng.gen_bool(0.5) {
                    // The path back from the leader is flaky too.
                    let id = self.new_id();
                    let extra_us = self.rng.gen_range(50..=600) * MS;
                    let from = back + self.rng.gen_range(0..=1000) * MS;
                    let end = from + self.rng.gen_range(500..=3000) * MS;
                    self.schedule(
                        from,
                        Ev::Fault(Fault::SlowLink {
                            id,
                            from: leader,
                            to: m,
                            extra_us,
                        }),
                    );
                    self.schedule(end, Ev::Fault(Fault::SlowLinkEnd(id)));
                }
                return;
            }
        }
        match self.rng.gen_range(0..3) {
            0 => {
                let back = at + self.rng.gen_range(20..=3000) * MS;
                self.schedule(at, Ev::Fault(Fault::CrashDaemon(m)));
                self.schedule(back, Ev::Fault(Fault::RestartDaemon(m)));
            }
            1 => {
                let back = at + self.rng.gen_range(lease / 4..=lease * 3) * MS;
                self.schedule(at, Ev::Fault(Fault::Pause(m)));
                self.schedule(back, Ev::Fault(Fault::Resume(m)));
            }
            _ => {
                // Cut this member off from everyone (its proposal may already be out).
                let n = self.members.len();
                let cuts: Vec<(usize, usize)> = (0..n)
                    .filter(|o| *o != m)
                    .flat_map(|o| [(m, o), (o, m)])
                    .collect();
                let id = self.new_id();
                let back = at + self.rng.gen_range(100..=4000) * MS;
                self.schedule(at, Ev::Fault(Fault::Partition { id, cuts }));
                self.schedule(back, Ev::Fault(Fault::HealPartition(id)));
            }
        }
    }

    /// Directed links to cut: a split into two sides (symmetric, or one way
    /// only), the isolation of one member, or random single links.
    pub(super) fn random_cuts(&mut self) -> Vec<(usize, usize)> {
        let n = self.members.len();
        let mut cuts = Vec::new();
        match self.rng.gen_range(0..4) {
            0 | 1 => {
                let mut side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                    let i = self.rng.gen_range(0..n);
                    side[i] = !side[i];
                }
                let one_way = self.rng.gen_bool(0.3);
                for a in 0..n {
                    for b in 0..n {
                        if side[a] && !side[b] {
                            cuts.push((a, b));
                            if !one_way {
                                cuts.push((b, a));
                            }
                        }
                    }
                }
            }
            2 => {
                let m = self.rng.gen_range(0..n);
                let mode = self.rng.gen_range(0..3);
                for o in 0..n {
                    if o != m {
                        if mode != 1 {
                            cuts.push((m, o));
                        }
                        if mode != 2 {
                            cuts.push((o, m));
                        }
                    }
                }
            }
            _ => {
                for a in 0..n {
                    for b in 0..n {
                        if a != b && self.rng.gen_bool(0.3) {
                            cuts.push((a, b));
                        }
                    }
                }
            }
        }
        cuts
    }
}
