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
//! injected failures), so the lease check between resources is the engine's,
//! tested here.
//!
//! Here: the world's types, its construction, queries and scheduling. Beside it:
//! `dispatch` (events to members), `engine` (each daemon's `NodeEngine` and its
//! actions), `executor` (resource operations), `invariant` (who holds what, the
//! safety check), `network`, `processes` (daemons, machines, clocks, disks),
//! `liveness`, `faults` (the fault plans) and `tracing`.
//!
//! Disks: every member's log writes may stall (a flush taking seconds). What
//! openraft does only once a write is durable waits for the member's disk: a
//! follower's append acknowledgement, a vote, a candidate's vote requests, the
//! log store's append hook. Heartbeats, leases and applying do not. A stalled
//! write is slow, not lost: crashes lose no acknowledged write in this model.

use super::clock::LocalClock;
use super::raft::Out as RaftOut;
use super::raft::{Msg, Origin, Out, Payload, Raft, RaftTiming, Role};
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
mod dispatch;
mod engine;
mod executor;
mod faults;
mod invariant;
mod liveness;
mod network;
mod processes;
mod tracing;

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
