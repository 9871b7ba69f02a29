//! Feeding each member's `NodeEngine` and carrying its actions into the world:
//! proposals to the simulated Raft, renewals and gate queries, resource steps,
//! the guard's deadlines.

use super::*;

impl World {
    pub(super) fn feed(&mut self, m: usize, event: Event) {
        let inc = self.daemon_inc(m);
        self.inbox.push_back((m, inc, event));
        self.drain_inbox();
    }

    pub(super) fn drain_inbox(&mut self) {
        while let Some((m, inc, event)) = self.inbox.pop_front() {
            let now = self.local(m);
            let Some(d) = self.members[m].daemon.as_mut() else {
                continue;
            };
            if d.inc != inc {
                continue;
            }
            match &event {
                Event::Resource(ResourceReport::Started { .. })
                | Event::Resource(ResourceReport::Stopped { .. })
                | Event::Resource(ResourceReport::MonitorChecked { .. })
                | Event::GateAnswered { .. }
                | Event::RenewalAnswered { .. } => {
                    let text = format!("{event:?}");
                    self.trace(Some(m), Tr::Engine(text));
                }
                _ => {}
            }
            let d = self.members[m].daemon.as_mut().expect("daemon");
            let actions = d.engine.on_event(event, now);
            for action in actions {
                self.perform(m, action);
            }
            self.reschedule_wake(m);
        }
    }

    /// Deadline mode: after every engine event the executor sleeps until the
    /// engine's next deadline (or the next event).
    pub(super) fn reschedule_wake(&mut self, m: usize) {
        let Some(max_idle) = self.cfg.engine_max_idle_ms else {
            return;
        };
        let now = self.local(m);
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        let deadline = d.engine.next_deadline(now, max_idle);
        if d.wake_at == Some(deadline) {
            return;
        }
        d.wake_at = Some(deadline);
        d.wake_gen += 1;
        let (inc, gen) = (d.inc, d.wake_gen);
        let at = self.members[m].clock.real_at(deadline, self.now);
        self.schedule(at, Ev::EngineTick { m, inc, gen });
    }

    pub(super) fn group_index(&self, group: &GroupName) -> usize {
        self.groups
            .iter()
            .position(|g| g == group)
            .unwrap_or_else(|| panic!("engine named unknown group {group}"))
    }

    pub(super) fn perform(&mut self, m: usize, action: Action) {
        self.trace(Some(m), Tr::Action(action.clone()));
        if let Action::Propose { command, .. } = &action {
            self.maybe_trigger(m, command);
        }
        let inc = self.daemon_inc(m);
        let now = self.local(m);
        match action {
            Action::SendRenewal(renewal) => {
                for to in (0..self.members.len()).filter(|to| *to != m) {
                    self.send(m, to, Msg::Renew(renewal.clone()));
                }
            }
            Action::SendGateQuery(query) => {
                for to in (0..self.members.len()).filter(|to| *to != m) {
                    self.send(m, to, Msg::Gate(query.clone()));
                }
            }
            Action::Propose { token, command } => {
                let timeout = self.topo.proposal_timeout_ms;
                let at = self.members[m].clock.real_at(now + timeout, self.now);
                if let Some(d) = self.members[m].daemon.as_mut() {
                    d.pending.insert(token, command.clone());
                }
                self.schedule(at, Ev::ProposalTimeout { m, inc, token });
                let origin = Origin {
                    member: m,
                    inc,
                    token,
                };
                self.route_proposal(m, origin, command, 0);
            }
            Action::StartResource {
                group,
                epoch,
                resource,
            } => {
                let g = self.group_index(&group);
                if self.members[m].witness {
                    self.fail(
                        format!("group {group} started on witness {}", self.members[m].name),
                        &[m],
                    );
                    return;
                }
                let d = self.members[m].daemon.as_mut().expect("daemon");
                d.exec[g].running = None;
                d.exec[g].ops.push_back(Op::Start { epoch, resource });
                self.pump(m, g);
            }
            Action::StartMonitors { group, epoch } => {
                let g = self.group_index(&group);
                let restored = self.active[g][m];
                let d = self.members[m].daemon.as_mut().expect("daemon");
                let exec = &mut d.exec[g];
                exec.running = Some(epoch);
                exec.monitor_reported = false;
                if restored {
                    exec.missing_since = None;
                    self.record_restored(g);
                }
            }
            Action::StopGroup { group, epoch, kind } => {
                let g = self.group_index(&group);
                let d = self.members[m].daemon.as_mut().expect("daemon");
                let exec = &mut d.exec[g];
                exec.running = None;
                if exec.starting {
                    // The executor aborts a start in progress (it never reports)
                    // and stops at once.
                    exec.starting = false;
                    exec.busy = false;
                    exec.gen += 1;
                }
                exec.ops.push_back(Op::Stop { epoch, kind });
                self.pump(m, g);
            }
            Action::GuardHold { group, until } => {
                let g = self.group_index(&group);
                let member = &mut self.members[m];
                member.guard[g] = Some(until);
                let boot = member.boot;
                let at = member.clock.real_at(until, self.now);
                self.schedule(at, Ev::GuardDeadline { m, boot, g, until });
            }
            Action::GuardRelease { group } => {
                let g = self.group_index(&group);
                self.members[m].guard[g] = None;
            }
        }
    }
}
