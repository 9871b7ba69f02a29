//! The simulated world: machines with their own clocks, guard processes and
//! resources; daemons that each run Raft (`super::raft`) and a `NodeEngine`;
//! executors that start and stop groups with delays; a network that delays,
//! reorders, loses and partitions messages; and the faults injected into all of it.
//!
//! One thread, one event queue ordered by (real time, insertion number), one
//! seeded ChaCha RNG, only ordered maps: a seed replays exactly.
//!
//! The safety invariant (a group is active on at most one node, never on a
//! witness) is checked whenever a resource comes up; so is "one controller per
//! resource per node" (a restarted daemon never drives a resource while the
//! guard of its crashed predecessor is still undoing it). Liveness after healing
//! is checked by scheduled deadlines, and plans of disk stalls alone check that
//! a slow disk never moves a group.
//!
//! Starts go one resource at a time, each asked for by the engine while its
//! claim holds; the simulated executor only carries them out (with delays and
//! injected failures), so the start gate on the lease is the engine's, tested here.
//!
//! Disks: every member's log writes may stall (a flush taking seconds). What
//! openraft does only once a write is durable waits for the member's disk: a
//! follower's append acknowledgement, a vote, a candidate's vote requests, the
//! log store's append hook. Heartbeats, leases and applying do not. A stalled
//! write is slow, not lost: crashes lose no acknowledged write in this model.

use super::clock::LocalClock;
use super::raft::Out as RaftOut;
use super::raft::{Msg, Origin, Out, Raft, RaftTiming, Role};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use uphold_cluster::engine::{
    Action, ApplyResult, ClusterState, Command, Event, GroupSpec, NodeEngine, ResourceReport,
    ResourceRule, StopKind, Topology,
};
use uphold_core::{node_id_for, GroupName, Millis, NodeId};

/// Microseconds per millisecond: real time is kept in microseconds.
pub const MS: u64 = 1000;

#[derive(Clone, Debug)]
pub struct GroupCfg {
    pub name: String,
    /// Preference order, as member indices (never the witness).
    pub nodes: Vec<usize>,
    pub failback: bool,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Raft voters, including the witness if there is one.
    pub voters: usize,
    /// The last voter is a witness: it votes and may lead, but runs no group.
    pub witness: bool,
    pub groups: Vec<GroupCfg>,
    pub lease_ms: Millis,
    pub renew_ms: Millis,
    pub raft: RaftTiming,
    /// Per member: a different election timeout range (scenarios use it to pick
    /// the leader).
    pub election_override: Vec<Option<(Millis, Millis)>>,
    pub raft_tick_ms: Millis,
    /// Fixed wakeup period of the engine, used when `engine_max_idle_ms` is None.
    pub engine_tick_ms: Millis,
    /// Wake the engine at `NodeEngine::next_deadline(now, max_idle)` after every
    /// event, as the executor does; None: a fixed tick every `engine_tick_ms`.
    pub engine_max_idle_ms: Option<Millis>,
    /// How long a resource may be missing before its monitor reports it.
    pub monitor_ms: Millis,
    pub net_delay_us: (u64, u64),
    pub net_loss: f64,
    /// Chance that a message takes a long detour (retransmission).
    pub slow_msg_prob: f64,
    pub start_us: (u64, u64),
    pub stop_orderly_us: (u64, u64),
    pub stop_emergency_us: (u64, u64),
    pub start_fail_prob: f64,
    /// Bound of clock rate errors in ppm (rho); 4000 = 0.004.
    pub max_ppm: i64,
    /// Clock rate error per member at the first boot.
    pub ppm: Vec<i64>,
    /// Per member: when its machine first boots (ms of virtual time).
    pub boot_at_ms: Vec<u64>,
}

impl SimConfig {
    /// Members that can run groups.
    pub fn nodes(&self) -> Vec<usize> {
        let n = if self.witness {
            self.voters - 1
        } else {
            self.voters
        };
        (0..n).collect()
    }

    pub fn member_name(&self, m: usize) -> String {
        if self.witness && m == self.voters - 1 {
            "w".to_string()
        } else {
            format!("n{}", m + 1)
        }
    }
}

/// Which faults a plan injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanKind {
    /// Every kind of fault.
    Mixed,
    /// Only crashes of daemons and machines, spaced out: clean failover samples.
    CrashOnly,
    /// Only disk stalls, with the network whole and nothing crashing: no group
    /// may move or stop (checked from the start of the plan).
    DiskOnly,
}

/// Random fault injection: what to inject, and when.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub kind: PlanKind,
    pub from_us: u64,
    pub until_us: u64,
    pub mean_gap_ms: u64,
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Pick and inject the next random fault (plan-driven runs).
    Next,
    CrashDaemon(usize),
    RestartDaemon(usize),
    CrashMachine(usize),
    BootMachine(usize),
    /// Cut the listed directed links (from, to).
    Partition {
        id: u64,
        cuts: Vec<(usize, usize)>,
    },
    HealPartition(u64),
    Pause(usize),
    Resume(usize),
    Loss {
        id: u64,
        p: f64,
    },
    LossEnd(u64),
    Delay {
        id: u64,
        extra_us: u64,
    },
    DelayEnd(u64),
    /// Messages sent from `from` to `to` take `extra_us` longer (a TCP
    /// connection stuck in retransmission), until `SlowLinkEnd`.
    SlowLink {
        id: u64,
        from: usize,
        to: usize,
        extra_us: u64,
    },
    SlowLinkEnd(u64),
    /// Every log write of these members takes `latency_us` (and waits for the
    /// writes before it) until `DiskStallEnd`.
    DiskStall {
        id: u64,
        members: Vec<usize>,
        latency_us: u64,
    },
    DiskStallEnd(u64),
    MonitorFail {
        m: usize,
        g: usize,
    },
    /// SIGTERM: the daemon hands its groups over and exits (restarted later).
    Shutdown(usize),
    /// End of the fault phase: everything up, connected, resumed; start the
    /// liveness checks.
    HealAll,
}

#[derive(Clone, Debug)]
enum Step {
    StartDone {
        epoch: u64,
        resource: usize,
        result: Result<(), String>,
        gen: u64,
    },
    StopDeact {
        epoch: u64,
    },
    StopDone {
        epoch: u64,
    },
    Monitor {
        epoch: u64,
        reason: String,
    },
}

#[derive(Clone, Debug)]
enum Check {
    LivenessDeadline,
    Final,
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    RaftTick {
        m: usize,
        inc: u64,
        gen: u64,
    },
    EngineTick {
        m: usize,
        inc: u64,
        gen: u64,
    },
    ApplyDue {
        m: usize,
        inc: u64,
    },
    ProposalTimeout {
        m: usize,
        inc: u64,
        token: u64,
    },
    Exec {
        m: usize,
        inc: u64,
        g: usize,
        step: Step,
    },
    Signal {
        m: usize,
        inc: u64,
    },
    GuardDeadline {
        m: usize,
        boot: u64,
        g: usize,
        until: Millis,
    },
    /// The guard of a dead daemon finished undoing the group.
    GuardUndone {
        m: usize,
        boot: u64,
        g: usize,
    },
    /// Raft outputs of daemon run `inc` that waited for its log writes.
    DiskDone {
        m: usize,
        inc: u64,
        outs: Vec<RaftOut>,
    },
    Fault(Fault),
    Check(Check),
}

impl Ev {
    /// The daemon an event is for, and the incarnation it must still be.
    fn daemon_target(&self) -> Option<(usize, Option<u64>)> {
        match self {
            Ev::Deliver { to, .. } => Some((*to, None)),
            Ev::RaftTick { m, inc, .. }
            | Ev::EngineTick { m, inc, .. }
            | Ev::ApplyDue { m, inc }
            | Ev::ProposalTimeout { m, inc, .. }
            | Ev::Exec { m, inc, .. }
            | Ev::Signal { m, inc }
            | Ev::DiskDone { m, inc, .. } => Some((*m, Some(*inc))),
            Ev::GuardDeadline { .. } | Ev::GuardUndone { .. } | Ev::Fault(_) | Ev::Check(_) => None,
        }
    }
}

/// A queued event, ordered so that the heap pops the earliest (time, insertion).
#[derive(Debug)]
struct Queued {
    at: u64,
    seq: u64,
    ev: Box<Ev>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Queued) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Start { epoch: u64, resource: usize },
    Stop { epoch: u64, kind: StopKind },
}

#[derive(Debug, Default)]
struct Exec {
    ops: VecDeque<Op>,
    busy: bool,
    /// The start in progress, if the current operation is one.
    starting: bool,
    /// Bumped when a start is aborted, so its completion is ignored.
    gen: u64,
    /// Started successfully and no stop asked since: monitors run.
    running: Option<u64>,
    /// When the resources were found gone while running (the guard removed them).
    missing_since: Option<Millis>,
    monitor_reported: bool,
}

#[derive(Debug)]
pub struct Daemon {
    pub inc: u64,
    pub engine: NodeEngine,
    pub paused: bool,
    queue: Vec<Ev>,
    pending: BTreeMap<u64, Command>,
    /// Proposals waiting for a leader to be known.
    waiting: Vec<(Origin, Command)>,
    exec: Vec<Exec>,
    apply_scheduled: bool,
    tick_gen: u64,
    /// The pending deadline wakeup (local ms) and its generation.
    wake_at: Option<Millis>,
    wake_gen: u64,
    /// Wakeups in a row at the same local millisecond (a busy loop if many).
    same_ms_wakes: (Millis, u32),
    /// SIGTERM received at this local time: hand over, then exit.
    shutdown_since: Option<Millis>,
}

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub id: NodeId,
    pub witness: bool,
    pub machine_up: bool,
    pub boot: u64,
    pub clock: LocalClock,
    /// The guard process: per group, the local deadline it enforces.
    pub guard: Vec<Option<Millis>>,
    /// Per group: a dead daemon's guard is still undoing it (stop commands
    /// running). The next daemon run's guard gets its lock (and the engine
    /// `GuardReady`) only once every group is undone.
    pub guard_undoing: Vec<bool>,
    /// Log writes complete in order, in flushes (group commit): the last
    /// scheduled flush starts and ends at these times; writes that arrive before
    /// it starts join it.
    flush_start: u64,
    disk_free_at: u64,
    pub raft: Raft,
    pub daemon: Option<Daemon>,
    starts: u64,
}

#[derive(Clone, Debug)]
pub enum Tr {
    Fault(String),
    Action(Action),
    Done {
        cmd: Command,
        result: Option<ApplyResult>,
    },
    Commit {
        idx: u64,
        cmd: Command,
        result: ApplyResult,
    },
    Leader {
        leading: bool,
        term: u64,
    },
    Active {
        group: String,
        on: bool,
        why: &'static str,
    },
    Engine(String),
}

#[derive(Clone, Debug)]
pub struct TraceRec {
    pub t_us: u64,
    pub member: Option<usize>,
    pub local: Millis,
    pub what: Tr,
}

#[derive(Clone, Copy, Debug)]
pub struct FailoverSample {
    pub ms: f64,
    /// No other fault happened while the group was down.
    pub clean: bool,
    /// The crashed owner was also the Raft leader.
    pub leader: bool,
    pub lease_ms: Millis,
}

#[derive(Clone, Debug)]
struct PendingFailover {
    g: usize,
    since: u64,
    clean: bool,
    leader: bool,
}

#[derive(Debug, Default)]
pub struct Obs {
    pending: Vec<PendingFailover>,
    pub failovers: Vec<FailoverSample>,
    pub heal_at: Option<u64>,
    /// Per group: when it was first up on exactly one node after healing.
    pub up_after_heal: Vec<Option<u64>>,
    /// Per group: when the log last cleared its failure marks (every candidate
    /// had failed it, and the leader waited `failure_retry_ms`).
    failures_cleared_at: BTreeMap<String, u64>,
    liveness_extended: bool,
    pub final_at: Option<u64>,
    pub faults: u64,
    pub events: u64,
}

const RING: usize = 400;
/// Resources per simulated group: the address, then a service. Each starts on
/// its own engine step, so the start gate on the lease is exercised between them.
const SIM_RESOURCES: usize = 2;

pub struct World {
    pub seed: u64,
    pub cfg: SimConfig,
    pub rng: ChaCha8Rng,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    pub members: Vec<Member>,
    pub topo: Topology,
    pub groups: Vec<GroupName>,
    /// [group][member]: the group's resources are present there.
    pub active: Vec<Vec<bool>>,
    cut: Vec<Vec<u32>>,
    partitions: BTreeMap<u64, Vec<(usize, usize)>>,
    loss_bursts: BTreeMap<u64, f64>,
    delay_bursts: BTreeMap<u64, u64>,
    slow_links: BTreeMap<u64, (usize, usize, u64)>,
    /// Active disk stalls: id -> (members, latency).
    disk_stalls: BTreeMap<u64, (Vec<usize>, u64)>,
    /// From this time on, no group may stop or move (disk-only plans).
    pub no_moves_after: Option<u64>,
    next_id: u64,
    inbox: VecDeque<(usize, u64, Event)>,
    ring: VecDeque<TraceRec>,
    pub full_trace: Option<Vec<TraceRec>>,
    pub violation: Option<String>,
    pub obs: Obs,
    plan: Option<FaultPlan>,
    /// Start failures and monitor failures are injected only while faults are.
    pub injections: bool,
    /// Term of the entry at each index, as first applied anywhere (model check).
    committed_terms: Vec<u64>,
    leaders_by_term: BTreeMap<u64, usize>,
    /// How long the liveness check gives the cluster after healing.
    pub liveness_bound_ms: u64,
    /// Extra run time after the liveness bound for failback to settle.
    pub settle_ms: u64,
}

impl World {
    pub fn new(seed: u64, cfg: SimConfig, mut rng: ChaCha8Rng, full_trace: bool) -> World {
        let n = cfg.voters;
        let node_ids: Vec<NodeId> = cfg
            .nodes()
            .iter()
            .map(|m| node_id_for(&cfg.member_name(*m)))
            .collect();
        let specs: Vec<GroupSpec> = cfg
            .groups
            .iter()
            .map(|g| GroupSpec {
                name: GroupName::new(g.name.clone()).expect("valid group name"),
                nodes: g
                    .nodes
                    .iter()
                    .map(|m| node_id_for(&cfg.member_name(*m)))
                    .collect(),
                failback: g.failback,
                // The address, then a service; either moves the group at its
                // first failed check.
                resources: vec![ResourceRule::STRICT; SIM_RESOURCES],
            })
            .collect();
        let witnesses: Vec<NodeId> = (cfg.nodes().len()..n)
            .map(|m| node_id_for(&cfg.member_name(m)))
            .collect();
        let topo = Topology::with_timing(node_ids, specs, cfg.lease_ms, cfg.renew_ms, 0.01)
            .with_witnesses(&witnesses);
        let groups: Vec<GroupName> = topo.groups.iter().map(|g| g.name.clone()).collect();
        let members = (0..n)
            .map(|m| {
                let name = cfg.member_name(m);
                let mut timing = cfg.raft;
                if let Some(Some((lo, hi))) = cfg.election_override.get(m) {
                    timing.election_min_ms = *lo;
                    timing.election_max_ms = *hi;
                }
                Member {
                    id: node_id_for(&name),
                    name,
                    witness: cfg.witness && m == n - 1,
                    machine_up: false,
                    boot: 0,
                    clock: LocalClock::new(rng.gen_range(0..1_000_000_000), cfg.ppm[m]),
                    guard: vec![None; groups.len()],
                    guard_undoing: vec![false; groups.len()],
                    flush_start: 0,
                    disk_free_at: 0,
                    raft: Raft::new(m, n, timing),
                    daemon: None,
                    starts: 0,
                }
            })
            .collect();
        // Recovery within 5 s of healing, or with long leases what recovery
        // needs at most: two elections, the leader's wait for the old owner's
        // lease and the new owner's gate; plus the resources' starts one after
        // another.
        let recovery = 2 * cfg.raft.election_max_ms + topo.lease_expiry_wait_ms + topo.gate_wait_ms;
        let liveness_bound_ms = recovery.max(5000) + SIM_RESOURCES as u64 * cfg.start_us.1 / MS;
        let settle_ms = topo.failback_stable_ms + 4000;
        let mut world = World {
            seed,
            active: vec![vec![false; n]; groups.len()],
            cut: vec![vec![0; n]; n],
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            members,
            topo,
            groups,
            partitions: BTreeMap::new(),
            loss_bursts: BTreeMap::new(),
            delay_bursts: BTreeMap::new(),
            slow_links: BTreeMap::new(),
            disk_stalls: BTreeMap::new(),
            no_moves_after: None,
            next_id: 1,
            inbox: VecDeque::new(),
            ring: VecDeque::new(),
            full_trace: full_trace.then(Vec::new),
            violation: None,
            obs: Obs::default(),
            plan: None,
            injections: true,
            committed_terms: Vec::new(),
            leaders_by_term: BTreeMap::new(),
            liveness_bound_ms,
            settle_ms,
        };
        for m in 0..n {
            match world.cfg.boot_at_ms.get(m).copied().unwrap_or(0) {
                0 => {
                    world.members[m].machine_up = true;
                    world.members[m].boot = 1;
                    world.start_daemon(m);
                }
                at => world.schedule(at * MS, Ev::Fault(Fault::BootMachine(m))),
            }
        }
        world
    }

    // ----- queries used by scenarios and checks -----

    pub fn now_ms(&self) -> f64 {
        self.now as f64 / MS as f64
    }

    pub fn local(&self, m: usize) -> Millis {
        self.members[m].clock.now_ms(self.now)
    }

    pub fn holders(&self, g: usize) -> Vec<usize> {
        (0..self.members.len())
            .filter(|m| self.active[g][*m])
            .collect()
    }

    /// The group is on exactly one node and started there successfully.
    pub fn group_up(&self, g: usize) -> Option<usize> {
        let holders = self.holders(g);
        let [m] = holders[..] else { return None };
        let d = self.members[m].daemon.as_ref()?;
        d.exec[g].running.map(|_| m)
    }

    /// The member that leads in the highest term, if any member thinks it leads.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .enumerate()
            .filter(|(_, mb)| mb.daemon.is_some() && mb.raft.role == Role::Leader)
            .max_by_key(|(_, mb)| mb.raft.term)
            .map(|(m, _)| m)
    }

    /// The applied state of the member that has applied the most.
    pub fn latest_state(&self) -> ClusterState {
        self.members
            .iter()
            .filter(|mb| mb.daemon.is_some())
            .max_by_key(|mb| mb.raft.applied)
            .map(|mb| mb.raft.sm.clone())
            .unwrap_or_default()
    }

    pub fn member_of(&self, id: NodeId) -> Option<usize> {
        self.members.iter().position(|mb| mb.id == id)
    }

    pub fn owner_in_log(&self, g: usize) -> Option<usize> {
        self.latest_state()
            .owner_of(&self.groups[g])
            .and_then(|id| self.member_of(id))
    }

    /// When and why the group's resources went down on `m` (full-trace mode).
    pub fn deactivations(&self, m: usize, g: usize) -> Vec<(u64, &'static str)> {
        let name = self.groups[g].to_string();
        self.full_trace
            .iter()
            .flatten()
            .filter(|r| r.member == Some(m))
            .filter_map(|r| match &r.what {
                Tr::Active {
                    group,
                    on: false,
                    why,
                } if *group == name => Some((r.t_us, *why)),
                _ => None,
            })
            .collect()
    }

    /// When the group's resources came up on `m` (full-trace mode).
    pub fn activations(&self, m: usize, g: usize) -> Vec<u64> {
        let name = self.groups[g].to_string();
        self.full_trace
            .iter()
            .flatten()
            .filter(|r| r.member == Some(m))
            .filter_map(|r| match &r.what {
                Tr::Active {
                    group, on: true, ..
                } if *group == name => Some(r.t_us),
                _ => None,
            })
            .collect()
    }

    /// When `m`'s daemon exited after a SIGTERM (full-trace mode).
    pub fn exits(&self, m: usize) -> Vec<u64> {
        self.full_trace
            .iter()
            .flatten()
            .filter(|r| r.member == Some(m))
            .filter(|r| matches!(&r.what, Tr::Engine(text) if text.starts_with("daemon exits")))
            .map(|r| r.t_us)
            .collect()
    }

    /// Test of the checker itself: brings a group up on `m` behind the
    /// engine's back, as a broken engine would.
    pub fn rogue_activation(&mut self, g: usize, m: usize) -> Option<String> {
        self.set_active(g, m, true, "rogue activation (checker self-test)");
        self.violation.clone()
    }

    // ----- scheduling -----

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at: at.max(self.now),
            seq: self.seq,
            ev: Box::new(ev),
        });
    }

    /// Schedules a fault at an absolute virtual time in milliseconds.
    pub fn at_ms(&mut self, ms: u64, fault: Fault) {
        self.schedule(ms * MS, Ev::Fault(fault));
    }

    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Random faults from `plan.from_us` to `plan.until_us`, then everything
    /// heals and the liveness checks run.
    pub fn set_plan(&mut self, plan: FaultPlan) {
        self.schedule(plan.from_us, Ev::Fault(Fault::Next));
        self.schedule(plan.until_us, Ev::Fault(Fault::HealAll));
        self.plan = Some(plan);
    }

    /// The time of the final check, once healing has been scheduled.
    pub fn end_us(&self) -> Option<u64> {
        self.obs.final_at
    }

    /// Runs events up to and including `until_us`.
    pub fn run_until(&mut self, until_us: u64) -> Result<(), String> {
        self.run_until_cond(until_us, |_| false).map(|_| ())
    }

    /// Runs until `cond` holds after an event (returns that time) or `until_us`.
    pub fn run_until_cond(
        &mut self,
        until_us: u64,
        mut cond: impl FnMut(&World) -> bool,
    ) -> Result<Option<u64>, String> {
        loop {
            if let Some(v) = &self.violation {
                return Err(v.clone());
            }
            let Some(next) = self.queue.peek() else {
                self.now = self.now.max(until_us);
                return Ok(None);
            };
            if next.at > until_us {
                self.now = until_us;
                return Ok(None);
            }
            let next = self.queue.pop().expect("queued event");
            self.now = next.at;
            let ev = *next.ev;
            self.obs.events += 1;
            self.dispatch(ev);
            self.drain_inbox();
            // The executor checks after every event whether a shutdown is complete.
            for m in 0..self.members.len() {
                let running = self.members[m]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.shutdown_since.is_some() && !d.paused);
                if running {
                    self.maybe_exit(m);
                }
            }
            self.track_liveness();
            if let Some(v) = &self.violation {
                return Err(v.clone());
            }
            if cond(self) {
                return Ok(Some(self.now));
            }
        }
    }

    // ----- dispatch -----

    fn dispatch(&mut self, ev: Ev) {
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

    fn daemon_inc(&self, m: usize) -> u64 {
        self.members[m].daemon.as_ref().map_or(0, |d| d.inc)
    }

    fn daemon_event(&mut self, m: usize, ev: Ev) {
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
    fn waits_for_disk(out: &Out) -> bool {
        match out {
            Out::Appended(_) | Out::SnapshotInstalled(_) => true,
            Out::Send(_, Msg::AppendResp { success, .. }) => *success,
            Out::Send(_, Msg::VoteResp { granted, .. }) => *granted,
            Out::Send(_, Msg::Vote { .. }) => true,
            _ => false,
        }
    }

    fn process_outs(&mut self, m: usize, outs: Vec<Out>) {
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

    fn process_durable(&mut self, m: usize, outs: Vec<Out>) {
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

    fn flush_waiting(&mut self, m: usize) {
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

    fn route_proposal(&mut self, m: usize, origin: Origin, cmd: Command, hops: u8) {
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

    fn handle_forward(&mut self, m: usize, origin: Origin, cmd: Command, hops: u8) {
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

    fn proposal_done(&mut self, m: usize, token: u64, result: Option<ApplyResult>) {
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

    fn apply_committed(&mut self, m: usize) {
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

    // ----- engine -----

    fn feed(&mut self, m: usize, event: Event) {
        let inc = self.daemon_inc(m);
        self.inbox.push_back((m, inc, event));
        self.drain_inbox();
    }

    fn drain_inbox(&mut self) {
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
    fn reschedule_wake(&mut self, m: usize) {
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

    fn group_index(&self, group: &GroupName) -> usize {
        self.groups
            .iter()
            .position(|g| g == group)
            .unwrap_or_else(|| panic!("engine named unknown group {group}"))
    }

    fn perform(&mut self, m: usize, action: Action) {
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

    // ----- executor -----

    fn pump(&mut self, m: usize, g: usize) {
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

    fn exec_step(&mut self, m: usize, g: usize, step: Step) {
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
    fn run_monitors(&mut self, m: usize) {
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

    fn guard_undone(&mut self, m: usize, boot: u64, g: usize) {
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

    fn guard_deadline(&mut self, m: usize, boot: u64, g: usize, until: Millis) {
        let member = &self.members[m];
        if !member.machine_up || member.boot != boot || member.guard[g] != Some(until) {
            return;
        }
        if self.active[g][m] {
            self.set_active(g, m, false, "guard deadline reached");
        }
    }

    // ----- resources and the invariant -----

    fn set_active(&mut self, g: usize, m: usize, on: bool, why: &'static str) {
        if self.active[g][m] == on {
            return;
        }
        self.active[g][m] = on;
        self.trace(
            Some(m),
            Tr::Active {
                group: self.groups[g].to_string(),
                on,
                why,
            },
        );
        if !on {
            if self.no_moves_after.is_some_and(|t| self.now >= t) {
                self.fail(
                    format!(
                        "NEEDLESS STOP: group {} stopped on {} ({why}) with only slow disks",
                        self.groups[g], self.members[m].name
                    ),
                    &[m],
                );
            }
            return;
        }

        if self.members[m].witness {
            self.fail(
                format!(
                    "group {} active on witness {}",
                    self.groups[g], self.members[m].name
                ),
                &[m],
            );
            return;
        }
        let holders = self.holders(g);
        if holders.len() > 1 {
            let names: Vec<String> = holders
                .iter()
                .map(|h| self.members[*h].name.clone())
                .collect();
            self.fail(
                format!(
                    "SPLIT BRAIN: group {} active on {} at once",
                    self.groups[g],
                    names.join(" and ")
                ),
                &holders,
            );
        }
    }

    fn record_restored(&mut self, g: usize) {
        let now = self.now;
        let mut i = 0;
        while i < self.obs.pending.len() {
            if self.obs.pending[i].g == g {
                let p = self.obs.pending.remove(i);
                self.obs.failovers.push(FailoverSample {
                    ms: (now - p.since) as f64 / MS as f64,
                    clean: p.clean,
                    leader: p.leader,
                    lease_ms: self.cfg.lease_ms,
                });
            } else {
                i += 1;
            }
        }
    }

    fn fail(&mut self, what: String, involved: &[usize]) {
        if self.violation.is_some() {
            return;
        }
        let mut msg = format!(
            "seed {}: {what} at t={:.3} ms\n{}\nlast relevant events:\n",
            self.seed,
            self.now_ms(),
            self.describe_config()
        );
        let wanted: Vec<NodeId> = involved.iter().map(|m| self.members[*m].id).collect();
        let relevant: Vec<&TraceRec> = self
            .ring
            .iter()
            .filter(|r| {
                !is_renewal(&r.what) || renewal_of(&r.what).is_some_and(|n| wanted.contains(&n))
            })
            .collect();
        let skip = relevant.len().saturating_sub(60);
        for rec in relevant.into_iter().skip(skip) {
            let _ = writeln!(msg, "  {}", self.format_rec(rec));
        }
        self.violation = Some(msg.trim_end().to_string());
    }

    pub fn describe_config(&self) -> String {
        let c = &self.cfg;
        let groups: Vec<String> = c
            .groups
            .iter()
            .map(|g| {
                let nodes: Vec<String> = g.nodes.iter().map(|m| c.member_name(*m)).collect();
                format!(
                    "{}[{}]{}",
                    g.name,
                    nodes.join(">"),
                    if g.failback { " failback" } else { "" }
                )
            })
            .collect();
        let ids: Vec<String> = self
            .members
            .iter()
            .map(|mb| format!("{}={:#x}", mb.name, mb.id))
            .collect();
        format!(
            "config: {} voters{}, groups {}, lease {} ms, renew {} ms, raft hb {} ms election {}..{} ms, \
             engine wakeups {}, eager commit {}, snapshots {}, loss {}, start failures {}; ids {}",
            c.voters,
            if c.witness { " (one witness)" } else { "" },
            groups.join(", "),
            c.lease_ms,
            c.renew_ms,
            c.raft.heartbeat_ms,
            c.raft.election_min_ms,
            c.raft.election_max_ms,
            match c.engine_max_idle_ms {
                Some(idle) => format!("at deadlines (max idle {idle} ms)"),
                None => format!("every {} ms", c.engine_tick_ms),
            },
            c.raft.eager_commit,
            c.raft.snapshots,
            c.net_loss,
            c.start_fail_prob,
            ids.join(" ")
        )
    }

    // ----- tracing -----

    fn trace(&mut self, member: Option<usize>, what: Tr) {
        let rec = TraceRec {
            t_us: self.now,
            member,
            local: member.map_or(0, |m| self.local(m)),
            what,
        };
        if let Some(full) = self.full_trace.as_mut() {
            full.push(rec.clone());
        }
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(rec);
    }

    pub fn format_rec(&self, rec: &TraceRec) -> String {
        let who = rec
            .member
            .map_or_else(|| "--".to_string(), |m| self.members[m].name.clone());
        let what = match &rec.what {
            Tr::Fault(s) => format!("FAULT {s}"),
            Tr::Action(a) => format!("action {}", self.names(&format!("{a:?}"))),
            Tr::Done { cmd, result } => {
                format!(
                    "proposal done {} -> {result:?}",
                    self.names(&format!("{cmd:?}"))
                )
            }
            Tr::Commit { idx, cmd, result } => {
                format!(
                    "commit #{idx} {} -> {result:?}",
                    self.names(&format!("{cmd:?}"))
                )
            }
            Tr::Leader { leading, term } => {
                if *leading {
                    format!("became leader, term {term}")
                } else {
                    format!("stopped leading, term {term}")
                }
            }
            Tr::Active { group, on, why } => {
                format!(
                    "{group} {} ({why})",
                    if *on { "ACTIVE" } else { "inactive" }
                )
            }
            Tr::Engine(s) => format!("event {}", self.names(s)),
        };
        format!(
            "{:>10.3} ms  {:<3} local {:>10}  {what}",
            rec.t_us as f64 / MS as f64,
            who,
            rec.local
        )
    }

    /// Replaces node ids by member names in a formatted value.
    fn names(&self, text: &str) -> String {
        let mut text = text.to_string();
        for mb in &self.members {
            text = text.replace(&mb.id.to_string(), &mb.name);
        }
        text
    }

    pub fn dump_trace(&self) -> String {
        self.dump_trace_since(0)
    }

    /// The full trace from real time `since_us` on, without renewals.
    pub fn dump_trace_since(&self, since_us: u64) -> String {
        let mut out = String::new();
        if let Some(full) = &self.full_trace {
            for rec in full
                .iter()
                .filter(|r| r.t_us >= since_us && !is_renewal(&r.what))
            {
                let _ = writeln!(out, "{}", self.format_rec(rec));
            }
        }
        out
    }

    /// A hash of the whole trace (full-trace mode), for determinism checks.
    pub fn trace_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for rec in self.full_trace.iter().flatten() {
            for b in format!("{}|{:?}|{}|{:?}", rec.t_us, rec.member, rec.local, rec.what).bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h ^ self.obs.events
    }

    // ----- network -----

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
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

    // ----- processes and machines -----

    fn start_daemon(&mut self, m: usize) {
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
                super::raft::Payload::Cmd(cmd) => Some(cmd.clone()),
                super::raft::Payload::Blank => None,
            })
            .collect();
        let d = self.members[m].daemon.as_mut().expect("daemon");
        d.engine.restore_durable(None, durable);
        self.start_ticks(m);
        if !self.members[m].guard_undoing.contains(&true) {
            self.feed(m, Event::GuardReady);
        }
    }

    fn start_ticks(&mut self, m: usize) {
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
    fn crash_daemon(&mut self, m: usize) {
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
    fn crash_machine(&mut self, m: usize) {
        self.crash_daemon(m);
        for g in 0..self.groups.len() {
            self.members[m].guard_undoing[g] = false;
            if self.active[g][m] {
                self.set_active(g, m, false, "machine down");
            }
        }
        self.members[m].machine_up = false;
    }

    fn new_clock(&mut self) -> LocalClock {
        let ppm = self.rng.gen_range(-self.cfg.max_ppm..=self.cfg.max_ppm);
        LocalClock::new(self.rng.gen_range(0..1_000_000_000), ppm)
    }

    fn apply_fault(&mut self, fault: Fault) {
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
    fn maybe_exit(&mut self, m: usize) {
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

    fn fault_is_noop(&self, fault: &Fault) -> bool {
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

    fn fault_text(&self, fault: &Fault) -> String {
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

    fn resume(&mut self, m: usize) {
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

    fn heal_all(&mut self) {
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

    // ----- liveness -----

    fn track_liveness(&mut self) {
        if self.obs.heal_at.is_none() {
            return;
        }
        for g in 0..self.groups.len() {
            if self.obs.up_after_heal[g].is_none() && self.group_up(g).is_some() {
                self.obs.up_after_heal[g] = Some(self.now);
            }
        }
    }

    /// Every node a group may run on has failed it: the leader waits
    /// `failure_retry_ms` before clearing the marks.
    fn all_candidates_failed(&self, g: usize) -> bool {
        let state = self.latest_state();
        let gs = state.group(&self.groups[g]);
        self.topo.groups[g]
            .nodes
            .iter()
            .all(|n| gs.failed_on.contains(n))
    }

    fn check(&mut self, check: Check) {
        let heal = self.obs.heal_at.unwrap_or(0);
        match check {
            Check::LivenessDeadline => {
                for g in 0..self.groups.len() {
                    if self.obs.up_after_heal[g].is_some() {
                        continue;
                    }
                    // A group every candidate failed is blocked by design until the
                    // leader clears the marks; its start after that may still be
                    // under way at the deadline.
                    let cleared_since_heal = self
                        .obs
                        .failures_cleared_at
                        .get(self.groups[g].as_str())
                        .is_some_and(|at| *at >= heal);
                    if !self.obs.liveness_extended
                        && (self.all_candidates_failed(g) || cleared_since_heal)
                    {
                        self.obs.liveness_extended = true;
                        let extra = self.topo.failure_retry_ms;
                        self.schedule(self.now + extra * MS, Ev::Check(Check::LivenessDeadline));
                        let final_at = self.obs.final_at.unwrap_or(self.now) + extra * MS;
                        self.obs.final_at = Some(final_at);
                        self.schedule(final_at, Ev::Check(Check::Final));
                        return;
                    }
                    let holders: Vec<String> = self
                        .holders(g)
                        .iter()
                        .map(|m| self.members[*m].name.clone())
                        .collect();
                    let all: Vec<usize> = (0..self.members.len()).collect();
                    self.fail(
                        format!(
                            "LIVENESS: group {} not up on exactly one node {} ms after healing (active on [{}], log owner {:?})",
                            self.groups[g],
                            (self.now - heal) / MS,
                            holders.join(", "),
                            self.owner_in_log(g).map(|m| self.members[m].name.clone())
                        ),
                        &all,
                    );
                    return;
                }
            }
            Check::Final => {
                if Some(self.now) != self.obs.final_at {
                    return;
                }
                let state = self.latest_state();
                for g in 0..self.groups.len() {
                    let all: Vec<usize> = (0..self.members.len()).collect();
                    let Some(m) = self.group_up(g) else {
                        let holders: Vec<String> = self
                            .holders(g)
                            .iter()
                            .map(|m| self.members[*m].name.clone())
                            .collect();
                        self.fail(
                            format!(
                                "LIVENESS: group {} not up on exactly one node at the end (active on [{}])",
                                self.groups[g],
                                holders.join(", ")
                            ),
                            &all,
                        );
                        return;
                    };
                    let spec = &self.topo.groups[g];
                    let gs = state.group(&spec.name);
                    if gs.owner != Some(self.members[m].id) {
                        self.fail(
                            format!(
                                "group {} runs on {} but the log names {:?}",
                                spec.name, self.members[m].name, gs.owner
                            ),
                            &all,
                        );
                        return;
                    }
                    if spec.failback {
                        let preferred = spec
                            .nodes
                            .iter()
                            .find(|n| !gs.failed_on.contains(n))
                            .copied();
                        if preferred.is_some() && preferred != Some(self.members[m].id) {
                            let name = self.names(&format!("{preferred:?}"));
                            self.fail(
                                format!(
                                    "FAILBACK: group {} still on {} at the end, preferred node {name} is healthy",
                                    spec.name, self.members[m].name
                                ),
                                &all,
                            );
                            return;
                        }
                    }
                }
            }
        }
    }

    // ----- random faults -----

    fn next_random_fault(&mut self) {
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
    fn random_disk_stall(&mut self) {
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
    fn maybe_trigger(&mut self, m: usize, command: &Command) {
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
    fn random_cuts(&mut self) -> Vec<(usize, usize)> {
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

fn is_renewal(what: &Tr) -> bool {
    renewal_of(what).is_some()
}

/// The member a lease message in the trace belongs to.
fn renewal_of(what: &Tr) -> Option<NodeId> {
    match what {
        Tr::Action(Action::SendRenewal(renewal)) => Some(renewal.node),
        _ => None,
    }
}
