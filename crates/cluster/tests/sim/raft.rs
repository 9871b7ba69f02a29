//! A small, complete Raft for the simulation: terms, randomized elections with
//! the up-to-date-log vote rule, log replication with the log-matching check and
//! truncation of conflicting suffixes, commit by a majority of voters in the
//! leader's own term, and in-order application. It keeps exactly the properties
//! the failover engine relies on from openraft, and nothing that would make the
//! simulated world friendlier than a real one (a deposed leader keeps believing it
//! leads until it hears a higher term; uncommitted entries may be lost).
//!
//! It is pure: messages and notifications go out through `Out`, time comes in as
//! the member's local clock.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use uphold_cluster::engine::{
    ApplyResult, ClusterState, Command, GateAnswer, GateQuery, Renewal, RenewalAck,
};
use uphold_core::Millis;

/// Whole log entries per AppendEntries message: a lagging follower catches up in
/// several round trips, as with a real batch limit.
const MAX_BATCH: usize = 64;

#[derive(Clone, Debug)]
pub enum Payload {
    /// The entry a new leader appends to commit its predecessors' entries.
    Blank,
    Cmd(Command),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub term: u64,
    pub payload: Payload,
}

/// Who is waiting for the result of a proposal: a process incarnation of a
/// member and the engine's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub member: usize,
    pub inc: u64,
    pub token: u64,
}

#[derive(Clone, Debug)]
pub enum Msg {
    Vote {
        term: u64,
        last_idx: u64,
        last_term: u64,
    },
    VoteResp {
        term: u64,
        granted: bool,
    },
    Append {
        term: u64,
        prev_idx: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        /// Entries up to this index arrive as part of a snapshot: the log store's
        /// append hook does not see them.
        snapshot_upto: u64,
    },
    AppendResp {
        term: u64,
        success: bool,
        /// On success the last index known to match; on failure a hint where to retry.
        idx: u64,
    },
    /// A proposal on its way to the leader.
    Forward {
        origin: Origin,
        cmd: Command,
        hops: u8,
    },
    /// The answer to a proposal (None: not committed as far as the sender knows).
    Reply {
        inc: u64,
        token: u64,
        result: Option<ApplyResult>,
    },
    /// The lease protocol between daemons (not Raft): a renewal and its answer.
    Renew(Renewal),
    RenewAck(RenewalAck),
    Gate(GateQuery),
    GateReply {
        query: GateQuery,
        answer: GateAnswer,
    },
}

impl Msg {
    fn term(&self) -> Option<u64> {
        match self {
            Msg::Vote { term, .. }
            | Msg::VoteResp { term, .. }
            | Msg::Append { term, .. }
            | Msg::AppendResp { term, .. } => Some(*term),
            Msg::Forward { .. }
            | Msg::Reply { .. }
            | Msg::Renew(_)
            | Msg::RenewAck(_)
            | Msg::Gate(_)
            | Msg::GateReply { .. } => None,
        }
    }
}

/// One applied entry: index, term, and the command with its result (None for
/// a leader's blank entry).
pub type Applied = (u64, u64, Option<(Command, ApplyResult)>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, Copy, Debug)]
pub struct RaftTiming {
    pub heartbeat_ms: Millis,
    pub election_min_ms: Millis,
    pub election_max_ms: Millis,
    /// The leader tells followers about a new commit index at once instead of
    /// with the next heartbeat or entry (implementations differ).
    pub eager_commit: bool,
    /// A follower far behind gets a snapshot instead of the entries.
    pub snapshots: bool,
}

#[derive(Clone, Debug)]
pub enum Out {
    Send(usize, Msg),
    /// An entry carrying a command was appended to this member's log.
    Appended(Command),
    /// Entries up to this index arrived as a snapshot (openraft installs it as a
    /// whole; the log store's append hook does not see them).
    SnapshotInstalled(u64),
    Leadership(bool),
    /// The commit index moved: schedule application.
    Commit,
    /// A committed-and-applied proposal's result for its proposer.
    Reply(Origin, ApplyResult),
    /// This member stopped leading with the proposal unanswered.
    Abandoned(Origin),
}

#[derive(Debug)]
pub struct Raft {
    pub me: usize,
    pub n: usize,
    pub timing: RaftTiming,
    // Durable: survives a crash of the process and of the machine.
    pub term: u64,
    pub voted_for: Option<usize>,
    pub log: Vec<Entry>,
    // Volatile: lost with the process.
    pub role: Role,
    pub leader: Option<usize>,
    pub commit: u64,
    pub applied: u64,
    pub sm: ClusterState,
    election_deadline: Millis,
    last_heartbeat: Millis,
    votes: BTreeSet<usize>,
    next: Vec<u64>,
    matched: Vec<u64>,
    responders: BTreeMap<u64, (u64, Origin)>,
}

impl Raft {
    pub fn new(me: usize, n: usize, timing: RaftTiming) -> Raft {
        Raft {
            me,
            n,
            timing,
            term: 0,
            voted_for: None,
            log: Vec::new(),
            role: Role::Follower,
            leader: None,
            commit: 0,
            applied: 0,
            sm: ClusterState::default(),
            election_deadline: 0,
            last_heartbeat: 0,
            votes: BTreeSet::new(),
            next: vec![1; n],
            matched: vec![0; n],
            responders: BTreeMap::new(),
        }
    }

    /// A process (re)start: durable state stays, the rest is rebuilt from the
    /// log once the commit index is learned again.
    pub fn restart(&mut self, now: Millis, rng: &mut ChaCha8Rng) {
        self.role = Role::Follower;
        self.leader = None;
        self.commit = 0;
        self.applied = 0;
        self.sm = ClusterState::default();
        self.votes.clear();
        self.next = vec![1; self.n];
        self.matched = vec![0; self.n];
        self.responders.clear();
        self.reset_election(now, rng);
    }

    pub fn last_idx(&self) -> u64 {
        self.log.len() as u64
    }

    pub fn term_at(&self, idx: u64) -> u64 {
        if idx == 0 {
            0
        } else {
            self.log[(idx - 1) as usize].term
        }
    }

    fn majority(&self) -> usize {
        self.n / 2 + 1
    }

    fn reset_election(&mut self, now: Millis, rng: &mut ChaCha8Rng) {
        let t = self.timing;
        self.election_deadline = now + rng.gen_range(t.election_min_ms..=t.election_max_ms);
    }

    pub fn tick(&mut self, now: Millis, rng: &mut ChaCha8Rng, out: &mut Vec<Out>) {
        match self.role {
            Role::Leader => {
                if now >= self.last_heartbeat + self.timing.heartbeat_ms {
                    self.last_heartbeat = now;
                    self.broadcast(out);
                }
            }
            Role::Follower | Role::Candidate => {
                if now >= self.election_deadline {
                    self.start_election(now, rng, out);
                }
            }
        }
    }

    fn start_election(&mut self, now: Millis, rng: &mut ChaCha8Rng, out: &mut Vec<Out>) {
        self.term += 1;
        self.voted_for = Some(self.me);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.me);
        self.reset_election(now, rng);
        let (last_idx, last_term) = (self.last_idx(), self.term_at(self.last_idx()));
        for peer in 0..self.n {
            if peer != self.me {
                out.push(Out::Send(
                    peer,
                    Msg::Vote {
                        term: self.term,
                        last_idx,
                        last_term,
                    },
                ));
            }
        }
    }

    fn step_down(&mut self, term: u64, out: &mut Vec<Out>) {
        if self.role == Role::Leader {
            out.push(Out::Leadership(false));
            for (_, (_, origin)) in std::mem::take(&mut self.responders) {
                out.push(Out::Abandoned(origin));
            }
        }
        self.role = Role::Follower;
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.leader = None;
        }
    }

    fn become_leader(&mut self, now: Millis, out: &mut Vec<Out>) {
        self.role = Role::Leader;
        self.leader = Some(self.me);
        self.next = vec![self.last_idx() + 1; self.n];
        self.matched = vec![0; self.n];
        self.log.push(Entry {
            term: self.term,
            payload: Payload::Blank,
        });
        self.matched[self.me] = self.last_idx();
        out.push(Out::Leadership(true));
        self.last_heartbeat = now;
        self.broadcast(out);
    }

    /// Appends `cmd` if this member leads; false otherwise.
    pub fn propose(&mut self, cmd: Command, origin: Origin, out: &mut Vec<Out>) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        self.log.push(Entry {
            term: self.term,
            payload: Payload::Cmd(cmd.clone()),
        });
        let idx = self.last_idx();
        self.matched[self.me] = idx;
        self.responders.insert(idx, (self.term, origin));
        out.push(Out::Appended(cmd));
        self.broadcast(out);
        self.advance_commit(out);
        true
    }

    fn broadcast(&mut self, out: &mut Vec<Out>) {
        for peer in 0..self.n {
            if peer != self.me {
                self.send_append(peer, out);
            }
        }
    }

    fn send_append(&self, peer: usize, out: &mut Vec<Out>) {
        let prev_idx = self.next[peer].saturating_sub(1).min(self.last_idx());
        let end = (prev_idx as usize + MAX_BATCH).min(self.log.len());
        let snapshot_upto = if self.timing.snapshots && self.commit >= prev_idx + MAX_BATCH as u64 {
            self.commit
        } else {
            0
        };
        out.push(Out::Send(
            peer,
            Msg::Append {
                term: self.term,
                prev_idx,
                prev_term: self.term_at(prev_idx),
                entries: self.log[prev_idx as usize..end].to_vec(),
                commit: self.commit,
                snapshot_upto,
            },
        ));
    }

    fn advance_commit(&mut self, out: &mut Vec<Out>) {
        let mut idx = self.last_idx();
        while idx > self.commit {
            // Only entries of the current term are committed by counting replicas.
            if self.term_at(idx) == self.term {
                let count = self.matched.iter().filter(|m| **m >= idx).count();
                if count >= self.majority() {
                    self.commit = idx;
                    out.push(Out::Commit);
                    if self.timing.eager_commit {
                        self.broadcast(out);
                    }
                    return;
                }
            } else {
                return;
            }
            idx -= 1;
        }
    }

    /// Handles a Raft message (Forward and Reply are the caller's).
    pub fn handle(
        &mut self,
        from: usize,
        msg: Msg,
        now: Millis,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<Out>,
    ) {
        if let Some(term) = msg.term() {
            if term > self.term {
                self.step_down(term, out);
            }
        }
        match msg {
            Msg::Vote {
                term,
                last_idx,
                last_term,
            } => {
                let my_last_term = self.term_at(self.last_idx());
                let up_to_date = last_term > my_last_term
                    || (last_term == my_last_term && last_idx >= self.last_idx());
                let granted =
                    term == self.term && up_to_date && self.voted_for.is_none_or(|v| v == from);
                if granted {
                    self.voted_for = Some(from);
                    self.reset_election(now, rng);
                }
                out.push(Out::Send(
                    from,
                    Msg::VoteResp {
                        term: self.term,
                        granted,
                    },
                ));
            }
            Msg::VoteResp { term, granted } => {
                if term == self.term && self.role == Role::Candidate && granted {
                    self.votes.insert(from);
                    if self.votes.len() >= self.majority() {
                        self.become_leader(now, out);
                    }
                }
            }
            Msg::Append {
                term,
                prev_idx,
                prev_term,
                entries,
                commit,
                snapshot_upto,
            } => {
                if term < self.term {
                    out.push(Out::Send(
                        from,
                        Msg::AppendResp {
                            term: self.term,
                            success: false,
                            idx: 0,
                        },
                    ));
                    return;
                }
                assert!(
                    self.role != Role::Leader,
                    "raft model: two leaders in term {term} ({} and {from})",
                    self.me
                );
                self.role = Role::Follower;
                self.leader = Some(from);
                self.reset_election(now, rng);
                if prev_idx > self.last_idx() || self.term_at(prev_idx) != prev_term {
                    let hint = prev_idx.saturating_sub(1).min(self.last_idx());
                    out.push(Out::Send(
                        from,
                        Msg::AppendResp {
                            term: self.term,
                            success: false,
                            idx: hint,
                        },
                    ));
                    return;
                }
                let mut idx = prev_idx;
                let mut installed = 0;
                for entry in entries {
                    idx += 1;
                    if idx <= self.last_idx() {
                        if self.term_at(idx) == entry.term {
                            continue;
                        }
                        assert!(
                            idx > self.commit,
                            "raft model: member {} would truncate committed entry {idx}",
                            self.me
                        );
                        self.log.truncate((idx - 1) as usize);
                    }
                    if let Payload::Cmd(cmd) = &entry.payload {
                        if idx > snapshot_upto {
                            out.push(Out::Appended(cmd.clone()));
                        }
                    }
                    if idx <= snapshot_upto {
                        installed = idx;
                    }
                    self.log.push(entry);
                }
                if installed > 0 {
                    out.push(Out::SnapshotInstalled(installed));
                }
                let new_commit = commit.min(idx);
                if new_commit > self.commit {
                    self.commit = new_commit;
                    out.push(Out::Commit);
                }
                out.push(Out::Send(
                    from,
                    Msg::AppendResp {
                        term: self.term,
                        success: true,
                        idx,
                    },
                ));
            }
            Msg::AppendResp { term, success, idx } => {
                if term != self.term || self.role != Role::Leader {
                    return;
                }
                if success {
                    self.matched[from] = self.matched[from].max(idx);
                    self.next[from] = self.next[from].max(idx + 1);
                    self.advance_commit(out);
                    if self.next[from] <= self.last_idx() {
                        self.send_append(from, out);
                    }
                } else {
                    self.next[from] = (self.next[from].saturating_sub(1)).min(idx + 1).max(1);
                    self.send_append(from, out);
                }
            }
            Msg::Forward { .. }
            | Msg::Reply { .. }
            | Msg::Renew(_)
            | Msg::RenewAck(_)
            | Msg::Gate(_)
            | Msg::GateReply { .. } => {}
        }
    }

    /// The state after applying the log up to `upto` from scratch (what a
    /// snapshot of that prefix holds).
    pub fn state_at(&self, upto: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for entry in self.log.iter().take(upto as usize) {
            if let Payload::Cmd(cmd) = &entry.payload {
                state.apply(cmd);
            }
        }
        state
    }

    /// Applies every committed entry not yet applied, in log order. Returns the
    /// applied (index, term, command, result) for the world's checks.
    pub fn apply(&mut self, out: &mut Vec<Out>) -> Vec<Applied> {
        let mut done = Vec::new();
        while self.applied < self.commit {
            self.applied += 1;
            let idx = self.applied;
            let entry = &self.log[(idx - 1) as usize];
            let term = entry.term;
            match &entry.payload {
                Payload::Blank => done.push((idx, term, None)),
                Payload::Cmd(cmd) => {
                    let result = self.sm.apply(cmd);
                    if let Some((t, origin)) = self.responders.remove(&idx) {
                        if t == term && self.role == Role::Leader {
                            out.push(Out::Reply(origin, result.clone()));
                        }
                    }
                    done.push((idx, term, Some((cmd.clone(), result))));
                }
            }
        }
        done
    }
}
