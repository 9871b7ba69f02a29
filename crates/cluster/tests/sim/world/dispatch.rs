//! Dispatching the world's events: messages, timers, faults and checks, each
//! to the member and daemon it concerns.

use super::*;

impl World {
    pub(super) fn dispatch(&mut self, ev: Ev) {
        if let Ev::Deliver { from, to, .. } = &ev {
            if self.cut[*from][*to] > 0 {
                return;
            }
        }
        match ev {
            Ev::Fault(f) => self.apply_fault(f),
            Ev::Check(c) => self.check(c),
            Ev::GuardDeadline { m, boot, g, until } => self.guard_deadline(m, boot, g, until),
            Ev::GuardUndone { m, boot, g } => self.guard_undone(m, boot, g),
            other => {
                let (m, inc) = other.daemon_target().expect("daemon event");
                let member = &mut self.members[m];
                if !member.machine_up {
                    return;
                }
                let Some(d) = member.daemon.as_mut() else {
                    return;
                };
                if inc.is_some_and(|i| i != d.inc) {
                    return;
                }
                if d.paused {
                    // Ticks are regenerated on resume; everything else waits in
                    // socket buffers and timers until the process runs again.
                    if !matches!(other, Ev::RaftTick { .. } | Ev::EngineTick { .. }) {
                        d.queue.push(other);
                    }
                    return;
                }
                self.daemon_event(m, other);
            }
        }
    }

    pub(super) fn daemon_inc(&self, m: usize) -> u64 {
        self.members[m].daemon.as_ref().map_or(0, |d| d.inc)
    }

    pub(super) fn daemon_event(&mut self, m: usize, ev: Ev) {
        let inc = self.daemon_inc(m);
        match ev {
            Ev::Deliver { from, msg, .. } => match msg {
                Msg::Forward { origin, cmd, hops } => self.handle_forward(m, origin, cmd, hops),
                Msg::Reply {
                    inc: for_inc,
                    token,
                    result,
                } => {
                    if for_inc == inc {
                        self.proposal_done(m, token, result);
                    }
                }
                Msg::Renew(renewal) => {
                    let now = self.local(m);
                    let id = self.members[from].id;
                    let d = self.members[m].daemon.as_mut().expect("daemon");
                    if let Some(ack) = d.engine.on_renewal(id, &renewal, now) {
                        self.send(m, from, Msg::RenewAck(ack));
                    }
                }
                Msg::RenewAck(ack) => {
                    let from = self.members[from].id;
                    self.feed(m, Event::RenewalAnswered { from, ack });
                }
                Msg::Gate(query) => {
                    let now = self.local(m);
                    let id = self.members[from].id;
                    let d = self.members[m].daemon.as_ref().expect("daemon");
                    let answer = d.engine.on_gate_query(id, &query, now);
                    self.send(m, from, Msg::GateReply { query, answer });
                }
                Msg::GateReply { query, answer } => {
                    let from = self.members[from].id;
                    self.feed(
                        m,
                        Event::GateAnswered {
                            from,
                            query,
                            answer,
                        },
                    );
                }
                raft_msg => {
                    let now = self.local(m);
                    let mut out = Vec::new();
                    self.members[m]
                        .raft
                        .handle(from, raft_msg, now, &mut self.rng, &mut out);
                    self.process_outs(m, out);
                }
            },
            Ev::RaftTick { gen, .. } => {
                if self.members[m]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.tick_gen != gen)
                {
                    return;
                }
                let now = self.local(m);
                let mut out = Vec::new();
                self.members[m].raft.tick(now, &mut self.rng, &mut out);
                self.process_outs(m, out);
                let next = self.members[m]
                    .clock
                    .real_at(now + self.cfg.raft_tick_ms, self.now);
                self.schedule(next, Ev::RaftTick { m, inc, gen });
            }
            Ev::EngineTick { gen, .. } => {
                let now = self.local(m);
                let deadline_mode = self.cfg.engine_max_idle_ms.is_some();
                let Some(d) = self.members[m].daemon.as_mut() else {
                    return;
                };
                if gen
                    != if deadline_mode {
                        d.wake_gen
                    } else {
                        d.tick_gen
                    }
                {
                    return;
                }
                if deadline_mode {
                    d.wake_at = None;
                    let (ms, count) = d.same_ms_wakes;
                    d.same_ms_wakes = if ms == now { (ms, count + 1) } else { (now, 1) };
                    if d.same_ms_wakes.1 > 1000 {
                        self.fail(
                            format!(
                                "BUSY LOOP: the engine on {} asks to be woken at once, over and over",
                                self.members[m].name
                            ),
                            &[m],
                        );
                        return;
                    }
                }
                self.run_monitors(m);
                self.feed(m, Event::Tick);
                if !deadline_mode {
                    let next = self.members[m]
                        .clock
                        .real_at(now + self.cfg.engine_tick_ms, self.now);
                    self.schedule(next, Ev::EngineTick { m, inc, gen });
                }
                self.reschedule_wake(m);
            }
            Ev::ApplyDue { .. } => self.apply_committed(m),
            Ev::DiskDone { outs, .. } => self.process_durable(m, outs),
            Ev::ProposalTimeout { token, .. } => self.proposal_done(m, token, None),
            Ev::Exec { g, step, .. } => self.exec_step(m, g, step),
            Ev::Signal { .. } => self.feed(m, Event::Shutdown),
            Ev::GuardDeadline { .. } | Ev::GuardUndone { .. } | Ev::Fault(_) | Ev::Check(_) => {}
        }
    }

    /// Whether openraft sends or reports this only once the member's log
    /// write before it is durable.
    pub(super) fn waits_for_disk(out: &Out) -> bool {
        match out {
            Out::Appended(_) | Out::SnapshotInstalled(_) => true,
            Out::Send(_, Msg::AppendResp { success, .. }) => *success,
            Out::Send(_, Msg::VoteResp { granted, .. }) => *granted,
            Out::Send(_, Msg::Vote { .. }) => true,
            _ => false,
        }
    }

    pub(super) fn process_outs(&mut self, m: usize, outs: Vec<Out>) {
        let inc = self.daemon_inc(m);
        let latency = self
            .disk_stalls
            .values()
            .filter(|(members, _)| members.contains(&m))
            .map(|(_, latency)| *latency)
            .max();
        let (durable, outs): (Vec<Out>, Vec<Out>) =
            if latency.is_some() || self.members[m].disk_free_at > self.now {
                outs.into_iter().partition(Self::waits_for_disk)
            } else {
                (Vec::new(), outs)
            };
        if !durable.is_empty() {
            let member = &mut self.members[m];
            if member.flush_start <= self.now || member.disk_free_at <= self.now {
                // The next flush starts once the one in progress ends, and takes
                // every write queued until then.
                member.flush_start = member.disk_free_at.max(self.now);
                member.disk_free_at = member.flush_start + latency.unwrap_or(0);
            }
            let ready = member.disk_free_at;
            self.schedule(
                ready,
                Ev::DiskDone {
                    m,
                    inc,
                    outs: durable,
                },
            );
        }
        self.process_durable(m, outs);
    }

    pub(super) fn process_durable(&mut self, m: usize, outs: Vec<Out>) {
        let inc = self.daemon_inc(m);
        for out in outs {
            match out {
                Out::Send(to, msg) => self.send(m, to, msg),
                Out::Appended(cmd) => self.inbox.push_back((m, inc, Event::Appended(cmd))),
                Out::SnapshotInstalled(upto) => {
                    let state = Arc::new(self.members[m].raft.state_at(upto));
                    self.inbox.push_back((m, inc, Event::DurableState(state)));
                }
                Out::Leadership(leading) => {
                    let term = self.members[m].raft.term;
                    self.trace(Some(m), Tr::Leader { leading, term });
                    if leading {
                        if let Some(other) = self.leaders_by_term.insert(term, m) {
                            panic!("raft model: {other} and {m} both lead term {term}");
                        }
                    }
                    self.inbox.push_back((m, inc, Event::Leadership(leading)));
                }
                Out::Commit => {
                    let delay = self.rng.gen_range(0..=3 * MS);
                    if let Some(d) = self.members[m].daemon.as_mut() {
                        if !d.apply_scheduled {
                            d.apply_scheduled = true;
                            self.schedule(self.now + delay, Ev::ApplyDue { m, inc });
                        }
                    }
                }
                Out::Reply(origin, result) => self.send(
                    m,
                    origin.member,
                    Msg::Reply {
                        inc: origin.inc,
                        token: origin.token,
                        result: Some(result),
                    },
                ),
                Out::Abandoned(origin) => {
                    // openraft fails pending writes of a deposed leader, or the
                    // connection drops and the proposer only learns by timing out.
                    if self.rng.gen_bool(0.5) {
                        self.send(
                            m,
                            origin.member,
                            Msg::Reply {
                                inc: origin.inc,
                                token: origin.token,
                                result: None,
                            },
                        );
                    }
                }
            }
        }
        self.flush_waiting(m);
    }

    pub(super) fn flush_waiting(&mut self, m: usize) {
        let has_leader = self.members[m].raft.leader.is_some();
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        if !has_leader || d.waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut d.waiting);
        for (origin, cmd) in waiting {
            let still_pending = self.members[m]
                .daemon
                .as_ref()
                .is_some_and(|d| d.pending.contains_key(&origin.token));
            if still_pending {
                self.route_proposal(m, origin, cmd, 0);
            }
        }
    }

    pub(super) fn route_proposal(&mut self, m: usize, origin: Origin, cmd: Command, hops: u8) {
        let raft = &mut self.members[m].raft;
        if raft.role == Role::Leader {
            let mut out = Vec::new();
            raft.propose(cmd, origin, &mut out);
            self.process_outs(m, out);
        } else if let Some(leader) = raft.leader.filter(|l| *l != m) {
            self.send(m, leader, Msg::Forward { origin, cmd, hops });
        } else if let Some(d) = self.members[m].daemon.as_mut() {
            d.waiting.push((origin, cmd));
        }
    }

    pub(super) fn handle_forward(&mut self, m: usize, origin: Origin, cmd: Command, hops: u8) {
        let raft = &self.members[m].raft;
        if raft.role == Role::Leader {
            self.route_proposal(m, origin, cmd, hops);
        } else if let Some(leader) = raft.leader.filter(|l| *l != m && hops < 3) {
            // Stands for "not leader, try this one" and the proposer's retry.
            self.send(
                m,
                leader,
                Msg::Forward {
                    origin,
                    cmd,
                    hops: hops + 1,
                },
            );
        } else {
            self.send(
                m,
                origin.member,
                Msg::Reply {
                    inc: origin.inc,
                    token: origin.token,
                    result: None,
                },
            );
        }
    }

    pub(super) fn proposal_done(&mut self, m: usize, token: u64, result: Option<ApplyResult>) {
        let inc = self.daemon_inc(m);
        let Some(d) = self.members[m].daemon.as_mut() else {
            return;
        };
        if let Some(cmd) = d.pending.remove(&token) {
            self.trace(
                Some(m),
                Tr::Done {
                    cmd,
                    result: result.clone(),
                },
            );
            self.inbox
                .push_back((m, inc, Event::ProposalDone { token, result }));
        }
    }

    pub(super) fn apply_committed(&mut self, m: usize) {
        let mut out = Vec::new();
        if let Some(d) = self.members[m].daemon.as_mut() {
            d.apply_scheduled = false;
        }
        let applied = self.members[m].raft.apply(&mut out);
        if applied.is_empty() {
            self.process_outs(m, out);
            return;
        }
        for (idx, term, cmd) in applied {
            let i = (idx - 1) as usize;
            if i < self.committed_terms.len() {
                assert_eq!(
                    self.committed_terms[i], term,
                    "raft model: member {m} applied a different entry at index {idx}"
                );
            } else {
                assert_eq!(
                    i,
                    self.committed_terms.len(),
                    "raft model: applied out of order"
                );
                self.committed_terms.push(term);
                if let Some((cmd, result)) = cmd {
                    let moves = matches!(cmd, Command::Assign { .. } | Command::Release { .. })
                        && result == ApplyResult::Applied;
                    if moves && self.no_moves_after.is_some_and(|t| self.now >= t) {
                        let text = self.names(&format!("{cmd:?}"));
                        self.fail(
                            format!("NEEDLESS MOVE: {text} committed with only slow disks"),
                            &[m],
                        );
                    }
                    if let (Command::ClearFailures { group, .. }, ApplyResult::Applied) =
                        (&cmd, &result)
                    {
                        self.obs
                            .failures_cleared_at
                            .insert(group.to_string(), self.now);
                    }
                    self.trace(Some(m), Tr::Commit { idx, cmd, result });
                }
            }
        }
        let state = Arc::new(self.members[m].raft.sm.clone());
        let index = self.members[m].raft.applied;
        let inc = self.daemon_inc(m);
        // Applied and the proposal answers travel separately in the real
        // executor (a watch channel and RPC replies); either may come first.
        self.inbox
            .push_back((m, inc, Event::Applied { state, index }));
        self.process_outs(m, out);
    }
}
