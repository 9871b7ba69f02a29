//! The simulated executor: resource starts and stops with delays and injected
//! failures, one operation at a time per group, and monitor reports.

use super::*;

impl World {
    pub(super) fn pump(&mut self, m: usize, g: usize) {
        let inc = self.daemon_inc(m);
        let now = self.local(m);
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        let exec = &mut d.exec[g];
        if exec.busy {
            return;
        }
        let Some(op) = exec.ops.pop_front() else {
            return;
        };
        exec.busy = true;
        let gen = exec.gen;
        match op {
            Op::Start { epoch, resource } => {
                let guard = self.members[m].guard[g];
                match guard {
                    None => {
                        let name = self.groups[g].to_string();
                        self.fail(
                            format!(
                                "group {name} started on {} without a guard deadline",
                                self.members[m].name
                            ),
                            &[m],
                        );
                        return;
                    }
                    Some(until) if until <= now => {
                        // The guard keeps the group down past its deadline.
                        self.trace(
                            Some(m),
                            Tr::Active {
                                group: self.groups[g].to_string(),
                                on: false,
                                why: "start refused by guard: deadline passed",
                            },
                        );
                        if let Some(d) = self.members[m].daemon.as_mut() {
                            d.exec[g].missing_since = Some(now);
                        }
                    }
                    // The first resource is the address.
                    Some(_) if resource == 0 => self.set_active(g, m, true, "start began"),
                    Some(_) => {}
                }
                if let Some(d) = self.members[m].daemon.as_mut() {
                    d.exec[g].starting = true;
                }
                let (lo, hi) = self.cfg.start_us;
                let delay = self.rng.gen_range(lo..=hi);
                let fail = self.injections
                    && self.cfg.start_fail_prob > 0.0
                    && self.rng.gen_bool(self.cfg.start_fail_prob);
                let result = if fail {
                    Err("injected start failure".to_string())
                } else {
                    Ok(())
                };
                self.schedule(
                    self.now + delay,
                    Ev::Exec {
                        m,
                        inc,
                        g,
                        step: Step::StartDone {
                            epoch,
                            resource,
                            result,
                            gen,
                        },
                    },
                );
            }
            Op::Stop { epoch, kind } => {
                let (lo, hi) = match kind {
                    StopKind::Emergency => self.cfg.stop_emergency_us,
                    StopKind::Orderly => self.cfg.stop_orderly_us,
                };
                let delay = self.rng.gen_range(lo..=hi);
                self.schedule(
                    self.now + delay,
                    Ev::Exec {
                        m,
                        inc,
                        g,
                        step: Step::StopDeact { epoch },
                    },
                );
            }
        }
    }

    pub(super) fn exec_step(&mut self, m: usize, g: usize, step: Step) {
        let inc = self.daemon_inc(m);
        let group = self.groups[g].clone();
        match step {
            Step::StartDone {
                epoch,
                resource,
                result,
                gen,
            } => {
                let d = self.members[m].daemon.as_mut().expect("daemon");
                let exec = &mut d.exec[g];
                if exec.gen != gen {
                    return;
                }
                exec.busy = false;
                exec.starting = false;
                // Whether the group now runs, or the next resource may start,
                // is the engine's decision (`Action::StartMonitors`).
                self.feed(
                    m,
                    Event::Resource(ResourceReport::Started {
                        group,
                        epoch,
                        resource,
                        result,
                    }),
                );
                self.pump(m, g);
            }
            Step::StopDeact { epoch } => {
                self.set_active(g, m, false, "stopped");
                let delay = self.rng.gen_range(0..=20 * MS);
                self.schedule(
                    self.now + delay,
                    Ev::Exec {
                        m,
                        inc,
                        g,
                        step: Step::StopDone { epoch },
                    },
                );
            }
            Step::Monitor { epoch, reason } => {
                let d = self.members[m].daemon.as_mut().expect("daemon");
                if d.exec[g].running == Some(epoch) {
                    d.exec[g].monitor_reported = true;
                    self.feed(
                        m,
                        Event::Resource(ResourceReport::MonitorChecked {
                            group,
                            epoch,
                            resource: 0,
                            failure: Some(reason),
                        }),
                    );
                }
            }
            Step::StopDone { epoch } => {
                let d = self.members[m].daemon.as_mut().expect("daemon");
                d.exec[g].busy = false;
                d.exec[g].missing_since = None;
                self.feed(m, Event::Resource(ResourceReport::Stopped { group, epoch }));
                self.pump(m, g);
            }
        }
    }

    /// A running group whose resources vanished (the guard removed them) is
    /// reported by its monitor after `monitor_ms`.
    pub(super) fn run_monitors(&mut self, m: usize) {
        let now = self.local(m);
        let monitor_ms = self.cfg.monitor_ms;
        let mut reports = Vec::new();
        if let Some(d) = self.members[m].daemon.as_mut() {
            for (g, exec) in d.exec.iter_mut().enumerate() {
                let Some(epoch) = exec.running else { continue };
                if self.active[g][m] || exec.monitor_reported {
                    continue;
                }
                let since = *exec.missing_since.get_or_insert(now);
                if now >= since + monitor_ms {
                    exec.monitor_reported = true;
                    reports.push((g, epoch));
                }
            }
        }
        for (g, epoch) in reports {
            let group = self.groups[g].clone();
            self.feed(
                m,
                Event::Resource(ResourceReport::MonitorChecked {
                    group,
                    epoch,
                    resource: 0,
                    failure: Some("resources missing".into()),
                }),
            );
        }
    }

    pub(super) fn guard_undone(&mut self, m: usize, boot: u64, g: usize) {
        if !self.members[m].machine_up || self.members[m].boot != boot {
            return;
        }
        self.members[m].guard_undoing[g] = false;
        let busy = self.members[m]
            .daemon
            .as_ref()
            .is_some_and(|d| d.exec[g].busy);
        if busy {
            self.fail(
                format!(
                    "TWO CONTROLLERS: the daemon on {} drove group {} while the guard of its previous run was still undoing it",
                    self.members[m].name, self.groups[g]
                ),
                &[m],
            );
            return;
        }
        self.set_active(g, m, false, "guard: daemon died");
        if !self.members[m].guard_undoing.contains(&true) && self.members[m].daemon.is_some() {
            // The old guard exits and the new one takes its lock.
            self.feed(m, Event::GuardReady);
        }
    }

    pub(super) fn guard_deadline(&mut self, m: usize, boot: u64, g: usize, until: Millis) {
        let member = &self.members[m];
        if !member.machine_up || member.boot != boot || member.guard[g] != Some(until) {
            return;
        }
        if self.active[g][m] {
            self.set_active(g, m, false, "guard deadline reached");
        }
    }
}
