//! Daemons and machines: crashes, restarts, pauses, reboots, clocks and disks.

use super::*;

impl World {
    pub(super) fn start_daemon(&mut self, m: usize) {
        let member = &mut self.members[m];
        member.starts += 1;
        let inc = ((m as u64 + 1) << 32) | member.starts;
        let now = member.clock.now_ms(self.now);
        let engine = NodeEngine::new(member.id, inc, self.topo.clone(), now);
        member.raft.restart(now, &mut self.rng);
        member.daemon = Some(Daemon {
            inc,
            engine,
            paused: false,
            queue: Vec::new(),
            pending: BTreeMap::new(),
            waiting: Vec::new(),
            exec: (0..self.groups.len()).map(|_| Exec::default()).collect(),
            apply_scheduled: false,
            tick_gen: 0,
            wake_at: None,
            wake_gen: 0,
            same_ms_wakes: (0, 0),
            shutdown_since: None,
        });
        // The executor reads the durable log back before it answers anyone.
        let durable: Vec<Command> = self.members[m]
            .raft
            .log
            .iter()
            .filter_map(|e| match &e.payload {
                Payload::Cmd(cmd) => Some(cmd.clone()),
                Payload::Blank => None,
            })
            .collect();
        let d = self.members[m].daemon.as_mut().expect("daemon");
        d.engine.restore_durable(None, durable);
        self.start_ticks(m);
        if !self.members[m].guard_undoing.contains(&true) {
            self.feed(m, Event::GuardReady);
        }
    }

    pub(super) fn start_ticks(&mut self, m: usize) {
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        d.tick_gen += 1;
        d.wake_gen += 1;
        d.wake_at = None;
        let (inc, gen, wake_gen) = (d.inc, d.tick_gen, d.wake_gen);
        let a = self.rng.gen_range(0..=self.cfg.raft_tick_ms * MS);
        self.schedule(self.now + a, Ev::RaftTick { m, inc, gen });
        let b = self.rng.gen_range(0..=self.cfg.engine_tick_ms * MS);
        let engine_gen = if self.cfg.engine_max_idle_ms.is_some() {
            wake_gen
        } else {
            gen
        };
        self.schedule(
            self.now + b,
            Ev::EngineTick {
                m,
                inc,
                gen: engine_gen,
            },
        );
    }

    /// The daemon process dies: its guard notices at once and takes everything down.
    pub(super) fn crash_daemon(&mut self, m: usize) {
        if self.members[m].daemon.is_none() {
            return;
        }
        let was_leader = self.members[m].raft.role == Role::Leader;
        for g in 0..self.groups.len() {
            let running = self.members[m]
                .daemon
                .as_ref()
                .is_some_and(|d| d.exec[g].running.is_some());
            if self.active[g][m] && running && !self.obs.pending.iter().any(|p| p.g == g) {
                self.obs.pending.push(PendingFailover {
                    g,
                    since: self.now,
                    clean: true,
                    leader: was_leader,
                });
            }
            if self.active[g][m] && !self.members[m].guard_undoing[g] {
                // The guard sees its input close at once and runs the stop
                // commands, which take as long as any emergency stop.
                self.members[m].guard_undoing[g] = true;
                let (lo, hi) = self.cfg.stop_emergency_us;
                let delay = self.rng.gen_range(lo..=hi);
                let boot = self.members[m].boot;
                self.schedule(self.now + delay, Ev::GuardUndone { m, boot, g });
            }
        }
        let member = &mut self.members[m];
        member.guard.iter_mut().for_each(|x| *x = None);
        member.daemon = None;
        member.raft.role = Role::Follower;
    }

    /// The machine goes down: its guard, resources and pending writes with it.
    pub(super) fn crash_machine(&mut self, m: usize) {
        self.crash_daemon(m);
        for g in 0..self.groups.len() {
            self.members[m].guard_undoing[g] = false;
            if self.active[g][m] {
                self.set_active(g, m, false, "machine down");
            }
        }
        self.members[m].machine_up = false;
    }

    pub(super) fn new_clock(&mut self) -> LocalClock {
        let ppm = self.rng.gen_range(-self.cfg.max_ppm..=self.cfg.max_ppm);
        LocalClock::new(self.rng.gen_range(0..1_000_000_000), ppm)
    }

    pub(super) fn apply_fault(&mut self, fault: Fault) {
        if !matches!(fault, Fault::Next) {
            self.obs.faults += 1;
            let text = self.fault_text(&fault);
            self.trace(None, Tr::Fault(text));
            let crash = matches!(fault, Fault::CrashDaemon(_) | Fault::CrashMachine(_));
            let noop = self.fault_is_noop(&fault);
            if !noop || crash {
                for p in &mut self.obs.pending {
                    p.clean = false;
                }
            }
        }
        match fault {
            Fault::Next => self.next_random_fault(),
            Fault::CrashDaemon(m) => self.crash_daemon(m),
            Fault::RestartDaemon(m) => {
                if self.members[m].machine_up && self.members[m].daemon.is_none() {
                    self.start_daemon(m);
                }
            }
            Fault::CrashMachine(m) => {
                if self.members[m].machine_up {
                    self.crash_machine(m);
                }
            }
            Fault::BootMachine(m) => {
                if !self.members[m].machine_up {
                    let clock = self.new_clock();
                    let member = &mut self.members[m];
                    member.machine_up = true;
                    member.boot += 1;
                    member.clock = clock;
                    member.guard.iter_mut().for_each(|x| *x = None);
                    member.guard_undoing.iter_mut().for_each(|x| *x = false);
                    member.disk_free_at = 0;
                    member.flush_start = 0;
                    self.start_daemon(m);
                }
            }
            Fault::Partition { id, cuts } => {
                for (a, b) in &cuts {
                    self.cut[*a][*b] += 1;
                }
                self.partitions.insert(id, cuts);
            }
            Fault::HealPartition(id) => {
                if let Some(cuts) = self.partitions.remove(&id) {
                    for (a, b) in cuts {
                        self.cut[a][b] -= 1;
                    }
                }
            }
            Fault::Pause(m) => {
                if let Some(d) = self.members[m].daemon.as_mut() {
                    d.paused = true;
                }
            }
            Fault::Resume(m) => self.resume(m),
            Fault::Loss { id, p } => {
                self.loss_bursts.insert(id, p);
            }
            Fault::LossEnd(id) => {
                self.loss_bursts.remove(&id);
            }
            Fault::Delay { id, extra_us } => {
                self.delay_bursts.insert(id, extra_us);
            }
            Fault::DelayEnd(id) => {
                self.delay_bursts.remove(&id);
            }
            Fault::SlowLink {
                id,
                from,
                to,
                extra_us,
            } => {
                self.slow_links.insert(id, (from, to, extra_us));
            }
            Fault::SlowLinkEnd(id) => {
                self.slow_links.remove(&id);
            }
            Fault::DiskStall {
                id,
                members,
                latency_us,
            } => {
                self.disk_stalls.insert(id, (members, latency_us));
            }
            Fault::DiskStallEnd(id) => {
                self.disk_stalls.remove(&id);
            }
            Fault::MonitorFail { m, g } => {
                let running = self.members[m]
                    .daemon
                    .as_ref()
                    .and_then(|d| d.exec[g].running.map(|epoch| (d.inc, epoch)));
                if let Some((inc, epoch)) = running {
                    // Through the queue, so a paused daemon sees it on resume.
                    self.schedule(
                        self.now,
                        Ev::Exec {
                            m,
                            inc,
                            g,
                            step: Step::Monitor {
                                epoch,
                                reason: "injected monitor failure".into(),
                            },
                        },
                    );
                }
            }
            Fault::Shutdown(m) => {
                let now = self.local(m);
                if let Some(d) = self.members[m].daemon.as_mut() {
                    if d.shutdown_since.is_none() {
                        d.shutdown_since = Some(now);
                        let inc = d.inc;
                        // Through the daemon's queue: a paused daemon sees it on resume.
                        self.schedule(self.now, Ev::Signal { m, inc });
                    }
                }
            }
            Fault::HealAll => self.heal_all(),
        }
    }

    /// After a SIGTERM: exit once the engine has handed everything over, or at
    /// the executor's deadline; the executor takes down whatever is left.
    pub(super) fn maybe_exit(&mut self, m: usize) {
        let now = self.local(m);
        let Some(d) = self.members[m].daemon.as_ref() else {
            return;
        };
        let Some(since) = d.shutdown_since else {
            return;
        };
        if !d.engine.is_done(now) && now < since + 15_000 {
            return;
        }
        self.trace(
            Some(m),
            Tr::Engine(format!(
                "daemon exits after SIGTERM (handed over: {})",
                d.engine.is_done(now)
            )),
        );
        for g in 0..self.groups.len() {
            if self.active[g][m] {
                self.set_active(g, m, false, "clean exit: executor stops everything");
            }
        }
        let member = &mut self.members[m];
        member.guard.iter_mut().for_each(|x| *x = None);
        member.daemon = None;
        member.raft.role = Role::Follower;
        let back = self.now + self.rng.gen_range(100..=3000) * MS;
        self.schedule(back, Ev::Fault(Fault::RestartDaemon(m)));
    }

    pub(super) fn fault_is_noop(&self, fault: &Fault) -> bool {
        match fault {
            Fault::RestartDaemon(m) => {
                !self.members[*m].machine_up || self.members[*m].daemon.is_some()
            }
            Fault::BootMachine(m) => self.members[*m].machine_up,
            Fault::HealPartition(id) => !self.partitions.contains_key(id),
            Fault::Resume(m) => !self.members[*m].daemon.as_ref().is_some_and(|d| d.paused),
            Fault::LossEnd(id) => !self.loss_bursts.contains_key(id),
            Fault::DelayEnd(id) => !self.delay_bursts.contains_key(id),
            Fault::SlowLinkEnd(id) => !self.slow_links.contains_key(id),
            Fault::DiskStallEnd(id) => !self.disk_stalls.contains_key(id),
            _ => false,
        }
    }

    pub(super) fn fault_text(&self, fault: &Fault) -> String {
        let name = |m: &usize| self.members[*m].name.clone();
        let links = |cuts: &Vec<(usize, usize)>| {
            cuts.iter()
                .map(|(a, b)| format!("{}->{}", name(a), name(b)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match fault {
            Fault::Next => "next".into(),
            Fault::CrashDaemon(m) => format!("crash daemon {}", name(m)),
            Fault::RestartDaemon(m) => format!("restart daemon {}", name(m)),
            Fault::CrashMachine(m) => format!("crash machine {}", name(m)),
            Fault::BootMachine(m) => format!("boot machine {}", name(m)),
            Fault::Partition { id, cuts } => format!("partition #{id}: cut {}", links(cuts)),
            Fault::HealPartition(id) => format!("heal partition #{id}"),
            Fault::Pause(m) => format!("pause daemon {}", name(m)),
            Fault::Resume(m) => format!("resume daemon {}", name(m)),
            Fault::Loss { id, p } => format!("loss burst #{id}: {p:.2}"),
            Fault::LossEnd(id) => format!("loss burst #{id} ends"),
            Fault::Delay { id, extra_us } => {
                format!("delay burst #{id}: up to +{} ms", extra_us / MS)
            }
            Fault::DelayEnd(id) => format!("delay burst #{id} ends"),
            Fault::SlowLink {
                id,
                from,
                to,
                extra_us,
            } => {
                format!(
                    "slow link #{id}: {}->{} +{} ms",
                    name(from),
                    name(to),
                    extra_us / MS
                )
            }
            Fault::SlowLinkEnd(id) => format!("slow link #{id} ends"),
            Fault::DiskStall {
                id,
                members,
                latency_us,
            } => format!(
                "disk stall #{id}: every log write of {} takes {} ms",
                members.iter().map(name).collect::<Vec<_>>().join(", "),
                latency_us / MS
            ),
            Fault::DiskStallEnd(id) => format!("disk stall #{id} ends"),
            Fault::MonitorFail { m, g } => {
                format!("monitor of {} fails on {}", self.groups[*g], name(m))
            }
            Fault::Shutdown(m) => format!("SIGTERM to daemon {}", name(m)),
            Fault::HealAll => "heal everything".into(),
        }
    }

    pub(super) fn resume(&mut self, m: usize) {
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        if !d.paused {
            return;
        }
        d.paused = false;
        let queued = std::mem::take(&mut d.queue);
        let inc = d.inc;
        for ev in queued {
            if self.daemon_inc(m) != inc {
                break;
            }
            self.daemon_event(m, ev);
            self.drain_inbox();
        }
        self.start_ticks(m);
    }

    pub(super) fn heal_all(&mut self) {
        self.plan = None;
        self.injections = false;
        // A healed network still delays, but loses nothing.
        self.cfg.net_loss = 0.0;
        self.cfg.slow_msg_prob = 0.0;
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = 0);
        }
        self.partitions.clear();
        self.loss_bursts.clear();
        self.delay_bursts.clear();
        self.slow_links.clear();
        self.disk_stalls.clear();
        for m in 0..self.members.len() {
            if !self.members[m].machine_up {
                self.apply_fault(Fault::BootMachine(m));
            } else if self.members[m].daemon.is_none() {
                self.apply_fault(Fault::RestartDaemon(m));
            } else if self.members[m].daemon.as_ref().is_some_and(|d| d.paused) {
                self.resume(m);
            }
        }
        // Log writes issued during a stall still take their time: nothing can be
        // placed before the disks have caught up.
        let drained = self
            .members
            .iter()
            .map(|mb| mb.disk_free_at)
            .fold(self.now, u64::max);
        self.obs.heal_at = Some(drained);
        self.obs.up_after_heal = vec![None; self.groups.len()];
        self.schedule(
            drained + self.liveness_bound_ms * MS,
            Ev::Check(Check::LivenessDeadline),
        );
        let final_at = drained + (self.liveness_bound_ms + self.settle_ms) * MS;
        self.obs.final_at = Some(final_at);
        self.schedule(final_at, Ev::Check(Check::Final));
    }
}
