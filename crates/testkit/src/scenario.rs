//! Failover scenarios: one repetition = a fresh 3-node lab, an HA
//! implementation on every node, the VIP answering from one owner, one fault
//! injected into that owner at a recorded instant, and what the client and the
//! nodes' address tables saw. Shared by the end-to-end tests and
//! `bench/failover` (through the `uphold-lab` binary).

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::deploy::{self, Deployment, Impl, Tools};
use crate::netns::{kill_group, node_addr, node_name, process_running, signal_pid, Lab};
use crate::probe::{self, now_us, AddrSample, Observations, ObserveSpec, Observer};
use crate::procstat::{self, IdleStat};

/// What happens to the owner of the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The owner's switch port goes down (the owner sees carrier loss).
    LinkDown,
    /// The service on the owner is SIGKILLed; the health check must move the VIP.
    ServiceKill,
    /// SIGKILL to the owner's HA daemon's whole process group.
    DaemonKill,
    /// The same when the owner is also uphold's Raft leader, so the failover
    /// waits for an election as well as for the lease. Node 1 gets a head start
    /// so that it usually leads; a rep where it does not is void (an error).
    /// keepalived has no leader: for it this is `daemon-kill`.
    LeaderOwnerKill,
    /// The owner is cut off from its peers; the client still reaches everyone.
    /// Healed afterwards, to see whether the VIP moves back.
    Partition,
    /// SIGSTOP to the owner daemon's process group for [`RepOptions::pause`],
    /// then SIGCONT.
    Pause,
    /// SIGTERM to the owner's daemon: a planned stop.
    Sigterm,
    /// The owner is cut off from ONE of its two peers for
    /// [`RepOptions::partial_hold`]; the client and the third node still reach
    /// everyone, so the owner keeps a majority and nothing should move. The
    /// peer cut is the Raft leader when the owner is not the leader (uphold),
    /// else the next node. See [`cut_between`].
    PartialPartition,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::LinkDown,
        Fault::ServiceKill,
        Fault::DaemonKill,
        Fault::LeaderOwnerKill,
        Fault::Partition,
        Fault::Pause,
        Fault::Sigterm,
        Fault::PartialPartition,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::ServiceKill => "service-kill",
            Fault::DaemonKill => "daemon-kill",
            Fault::LeaderOwnerKill => "leader-owner-kill",
            Fault::Partition => "partition",
            Fault::Pause => "pause",
            Fault::Sigterm => "sigterm",
            Fault::PartialPartition => "partial-partition",
        }
    }

    pub fn from_name(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Knobs of one repetition. [`RepOptions::new`] gives the benchmark's values.
#[derive(Clone, Debug)]
pub struct RepOptions {
    pub imp: Impl,
    pub fault: Fault,
    pub tools: Tools,
    /// Namespace prefix; stale namespaces with it are cleaned up.
    pub prefix: String,
    /// How long to wait for the VIP to answer from one stable owner at start.
    pub ready_timeout: Duration,
    /// How long after the fault to wait for another node to answer.
    pub deadline: Duration,
    /// Observation after the failover (or deadline), for double ownership.
    pub settle: Duration,
    /// Length of the `pause` fault.
    pub pause: Duration,
    /// Observation after healing a partition.
    pub after_heal: Duration,
    /// How long the `partial-partition` cut lasts.
    pub partial_hold: Duration,
    pub probe_timeout: Duration,
    /// Keep the lab directory (configs, logs) even on success.
    pub keep_logs: bool,
}

impl RepOptions {
    pub fn new(imp: Impl, fault: Fault, tools: Tools) -> RepOptions {
        RepOptions {
            imp,
            fault,
            tools,
            prefix: "uphlab".into(),
            ready_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(15),
            settle: Duration::from_secs(2),
            pause: Duration::from_secs(3),
            after_heal: Duration::from_secs(3),
            partial_hold: Duration::from_secs(10),
            probe_timeout: Duration::from_millis(100),
            keep_logs: false,
        }
    }
}

/// What one repetition measured. Times in ms; instants relative to the fault.
#[derive(Clone, Debug, Serialize)]
pub struct RepResult {
    #[serde(rename = "impl")]
    pub imp: Impl,
    pub fault: Fault,
    /// Node that held the VIP and served before the fault.
    pub owner_before: String,
    /// Node that answered the last probe of the run.
    pub served_after: Option<String>,
    /// Fault to the first probe answered by another node (None: never).
    pub failover_ms: Option<f64>,
    /// Longest run of failed probes after the fault (first failure to next success).
    pub downtime_ms: f64,
    /// False if probes were still failing when observation ended.
    pub recovered: bool,
    pub failed_probes: usize,
    pub probes: usize,
    /// Time ≥ 2 nodes held the VIP (presence intervals between first and last
    /// sample that saw it).
    pub double_ms: f64,
    /// Upper bound of the same, intervals widened by one sample on each side.
    pub double_ms_max: f64,
    /// Whether two nodes were ever seen holding the VIP around the same sample.
    pub double_any: bool,
    /// Start of the longest outage, relative to the fault.
    pub downtime_from_ms: Option<f64>,
    /// How often the serving node changed after the fault (1 = a clean move;
    /// more = the client flapped between nodes).
    pub serving_changes: usize,
    /// Time ≥ 2 nodes held the VIP when observation ended: double ownership was
    /// still going on, so `double_ms` is only a lower bound.
    pub double_at_end: bool,
    /// Partition only: when the partition was healed, relative to the fault.
    pub heal_ms: Option<f64>,
    /// Partition only: the node serving just before healing.
    pub served_before_heal: Option<String>,
    /// Partition only: another node had answered after the fault, and at the end
    /// the old owner answers again (no stickiness).
    pub moved_back: Option<bool>,
    /// Times the VIP appeared on a node other than its previous holder, from the
    /// address samples after the fault (the client may not have noticed).
    pub owner_changes: usize,
    /// Times a node that held the VIP stopped holding it, after the fault.
    pub vip_losses: usize,
    /// What the daemons logged after the fault (group stops and starts, leader
    /// elections).
    pub daemon_events: DaemonEvents,
    /// Partial partition only: the peer cut off from the owner, and whether it
    /// was the Raft leader then (None: not known, e.g. keepalived).
    pub cut_peer: Option<String>,
    pub cut_peer_was_leader: Option<bool>,
    /// Whether the owner was also the Raft leader at the fault (uphold only):
    /// then the failover waits for an election as well as the lease.
    pub owner_was_leader: Option<bool>,
    /// Lab creation to a stable owner.
    pub ready_ms: f64,
    /// Kept lab directory, if any.
    pub log_dir: Option<String>,
    pub warnings: Vec<String>,
    /// The last lines of every daemon's log, for failure messages.
    #[serde(skip)]
    pub log_tail: LogTail,
}

/// The last lines of the daemons' logs. Displayed whole; its `Debug` only
/// counts the lines, so results stay readable when printed with `{:?}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LogTail(pub String);

impl std::fmt::Display for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for LogTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogTail({} lines)", self.0.lines().count())
    }
}

/// Runs one repetition. On error the lab directory is kept and named in the error.
pub fn run_rep(opts: &RepOptions) -> Result<RepResult> {
    let t_create = now_us();
    let mut lab = Lab::create(&opts.prefix, 3)?;
    let r = run_in_lab(&lab, opts, t_create);
    if r.is_err() || opts.keep_logs {
        lab.keep_dir(true);
    }
    let dir = lab.dir().display().to_string();
    drop(lab);
    match r {
        Ok(mut res) => {
            if opts.keep_logs {
                res.log_dir = Some(dir);
            }
            Ok(res)
        }
        Err(e) => Err(e.context(format!("logs kept in {dir}"))),
    }
}

/// Starts the implementation and the observer and waits for one stable owner.
pub fn bring_up(lab: &Lab, opts: &RepOptions) -> Result<(Deployment, Observer, usize)> {
    bring_up_with(
        lab,
        opts.imp,
        &opts.tools,
        opts.probe_timeout,
        opts.ready_timeout,
    )
}

/// [`bring_up`] with its knobs spelled out, for scenarios without a fault.
pub fn bring_up_with(
    lab: &Lab,
    imp: Impl,
    tools: &Tools,
    probe_timeout: Duration,
    ready_timeout: Duration,
) -> Result<(Deployment, Observer, usize)> {
    let dep = deploy::start(lab, imp, tools)?;
    let spec = ObserveSpec {
        client_ns: lab.client_ns(),
        node_ns: (1..=lab.nodes())
            .map(|i| lab.node_ns(i))
            .collect::<Result<_>>()?,
        vip: dep.vip,
        port: dep.port,
        probe_timeout,
    };
    let obs = Observer::start(&spec)?;
    let owner = wait_stable_owner(&obs, &dep, ready_timeout)?;
    Ok((dep, obs, owner))
}

/// Polls until one node has held the VIP alone and answered every probe for 1 s.
pub fn wait_stable_owner(obs: &Observer, dep: &Deployment, timeout: Duration) -> Result<usize> {
    let deadline = now_us() + timeout.as_micros() as u64;
    loop {
        let now = now_us();
        let snap = obs.snapshot();
        if let Some(owner) = probe::stable_owner(&snap, now, 1_000_000, 50) {
            return Ok(owner);
        }
        if now >= deadline {
            bail!(
                "no stable VIP owner within {} s ({})\n{}",
                timeout.as_secs(),
                describe_recent(&snap, now),
                dep.log_tails(15)
            );
        }
        for d in &dep.daemons {
            if !process_running(d.pgid) {
                bail!(
                    "{} daemon on {} exited during startup\n{}",
                    dep.imp.name(),
                    node_name(d.node),
                    dep.log_tails(30)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe_recent(snap: &Observations, now: u64) -> String {
    let recent: Vec<&probe::ProbeRecord> = snap
        .probes
        .iter()
        .filter(|p| p.start_us + 1_000_000 >= now)
        .collect();
    let last = recent
        .iter()
        .max_by_key(|p| p.start_us)
        .map(|p| format!("{:?}", p.outcome))
        .unwrap_or_else(|| "no probes".into());
    let holders: Vec<String> = snap
        .samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.last().is_some_and(|s| s.present))
        .map(|(i, _)| node_name(i + 1))
        .collect();
    format!("last probe: {last}; VIP held by: {holders:?}")
}

/// Polls until a probe started after `t_fault_us` is answered by a node other
/// than `owner`, or `deadline` passes. Returns when that probe started.
pub fn wait_failover(
    obs: &Observer,
    t_fault_us: u64,
    owner: &str,
    deadline: Duration,
) -> Option<u64> {
    let end = t_fault_us + deadline.as_micros() as u64;
    loop {
        let probes = obs.probes_since(t_fault_us);
        if let Some((t, _)) = probe::first_served_by_other(&probes, t_fault_us, owner) {
            return Some(t);
        }
        if now_us() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_in_lab(lab: &Lab, opts: &RepOptions, t_create: u64) -> Result<RepResult> {
    let (dep, obs, owner) = bring_up(lab, opts)?;
    let ready_ms = (now_us() - t_create) as f64 / 1000.0;
    let owner_name = node_name(owner);
    let daemon = dep.daemon(owner)?;
    let (pgid, pid) = (daemon.pgid, daemon.pgid);
    let t_obs = obs.started_us();
    // Chosen before the fault instant: asking a daemon takes a moment.
    let (cut_peer, cut_peer_was_leader) = if opts.fault == Fault::PartialPartition {
        let (peer, was_leader) = partial_peer(lab, &opts.tools, &dep, owner);
        (Some(peer), was_leader)
    } else {
        (None, None)
    };
    let owner_was_leader = if dep.imp.is_uphold() {
        raft_leader(lab, &opts.tools, owner)
            .ok()
            .flatten()
            .map(|l| l == owner)
    } else {
        None
    };
    if opts.fault == Fault::LeaderOwnerKill && owner_was_leader == Some(false) {
        bail!("void rep: the owner {owner_name} was not the Raft leader at the fault");
    }
    let log_marks = log_marks(&dep);

    let t_fault = now_us();
    let mut served_before_heal = None;
    let mut healed_at = None;
    match opts.fault {
        Fault::LinkDown => lab.link_down(owner)?,
        Fault::ServiceKill => {
            let pidfile = deploy::service_pidfile(lab, owner);
            let svc: i32 = std::fs::read_to_string(&pidfile)
                .with_context(|| format!("reading {}", pidfile.display()))?
                .trim()
                .parse()
                .with_context(|| format!("{}: not a pid", pidfile.display()))?;
            signal_pid(svc, Signal::SIGKILL)?;
        }
        Fault::DaemonKill | Fault::LeaderOwnerKill => kill_group(pgid, Signal::SIGKILL)?,
        Fault::Partition => lab.partition_from_peers(owner)?,
        Fault::Pause => kill_group(pgid, Signal::SIGSTOP)?,
        Fault::Sigterm => signal_pid(pid, Signal::SIGTERM)?,
        Fault::PartialPartition => {
            let peer = cut_peer.ok_or_else(|| anyhow!("no peer chosen"))?;
            cut_between(lab, owner, peer)?;
        }
    }

    match opts.fault {
        Fault::Pause => {
            // The pause length is the fault itself, not a wait for a condition.
            std::thread::sleep(opts.pause);
            kill_group(pgid, Signal::SIGCONT)?;
            std::thread::sleep(opts.settle);
        }
        Fault::Partition => {
            wait_failover(&obs, t_fault, &owner_name, opts.deadline);
            std::thread::sleep(opts.settle);
            served_before_heal = probe::served_last(&obs.probes_since(t_fault));
            healed_at = Some(now_us());
            lab.heal(owner)?;
            std::thread::sleep(opts.after_heal);
        }
        Fault::PartialPartition => {
            // Nothing should happen: the cut lasts its full length whatever is seen.
            std::thread::sleep(opts.partial_hold);
            served_before_heal = probe::served_last(&obs.probes_since(t_fault));
            healed_at = Some(now_us());
            if let Some(peer) = cut_peer {
                heal_between(lab, owner, peer)?;
            }
            std::thread::sleep(opts.after_heal);
        }
        _ => {
            wait_failover(&obs, t_fault, &owner_name, opts.deadline);
            std::thread::sleep(opts.settle);
        }
    }
    let t_end = now_us();
    let rec = obs.stop();
    let daemon_events = events_since(&dep, &log_marks);
    let log_tail = LogTail(dep.log_tails(40));
    drop(dep);
    let history = vip_history(&rec.samples, Some(owner), t_fault, t_end);

    let dt = probe::downtime(&rec.probes, t_fault);
    let dbl = probe::double_ownership(&rec.samples, t_obs, t_end);
    let failover = probe::first_served_by_other(&rec.probes, t_fault, &owner_name);
    let served_after = probe::served_last(&rec.probes);
    let moved_back = match opts.fault {
        Fault::Partition => {
            healed_at.map(|_| failover.is_some() && served_after.as_deref() == Some(&owner_name))
        }
        _ => None,
    };
    let rel_ms = |t: u64| t.saturating_sub(t_fault) as f64 / 1000.0;
    if opts.keep_logs {
        let trace = serde_json::json!({
            "t_fault_us": t_fault,
            "t_heal_us": healed_at,
            "t_end_us": t_end,
            "observations": rec,
        });
        let path = lab.dir().join("observations.json");
        if let Err(e) = std::fs::write(&path, trace.to_string()) {
            eprintln!("writing {}: {e}", path.display());
        }
    }
    let mut warnings: Vec<String> = rec.sample_errors.iter().take(5).cloned().collect();
    if rec.sample_errors.len() > 5 {
        warnings.push(format!(
            "... {} sampler errors in all",
            rec.sample_errors.len()
        ));
    }
    Ok(RepResult {
        imp: opts.imp,
        fault: opts.fault,
        owner_before: owner_name,
        served_after,
        failover_ms: failover.as_ref().map(|(t, _)| rel_ms(*t)),
        downtime_ms: dt.longest_ms,
        recovered: dt.recovered,
        failed_probes: dt.failed_probes,
        probes: rec.probes.iter().filter(|p| p.start_us >= t_fault).count(),
        double_ms: dbl.observed_ms,
        double_ms_max: dbl.upper_ms,
        double_any: dbl.any,
        downtime_from_ms: dt.from_us.map(rel_ms),
        serving_changes: probe::serving_changes(&rec.probes, t_fault),
        double_at_end: probe::holders_at_end(&rec.samples).len() >= 2,
        heal_ms: healed_at.map(rel_ms),
        served_before_heal,
        moved_back,
        owner_changes: history.owner_changes,
        vip_losses: history.losses,
        daemon_events,
        cut_peer: cut_peer.map(node_name),
        cut_peer_was_leader,
        owner_was_leader,
        ready_ms,
        log_dir: None,
        warnings,
        log_tail,
    })
}

/// Idle cost of an implementation: per node, CPU% and RSS of the daemon's
/// process group over `window`, once the VIP is stable and nothing probes.
#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    #[serde(rename = "impl")]
    pub imp: Impl,
    pub seconds: f64,
    pub nodes: Vec<IdleStat>,
    pub mean_cpu_percent: f64,
    pub mean_rss_kib: f64,
}

pub fn measure_idle(opts: &RepOptions, window: Duration) -> Result<IdleResult> {
    let mut lab = Lab::create(&opts.prefix, 3)?;
    let r = (|| {
        let (dep, obs, _owner) = bring_up(&lab, opts)?;
        drop(obs.stop());
        // The daemon's process group, plus uphold's guard (its own session).
        let groups: Vec<Vec<i32>> = dep
            .daemons
            .iter()
            .map(|d| {
                let mut groups = vec![d.pgid];
                groups.extend(procstat::children_with_arg(d.pgid, "guard"));
                groups
            })
            .collect();
        let nodes = procstat::measure_idle(&groups, window)?;
        if nodes.iter().any(|n| n.processes == 0) {
            return Err(anyhow!(
                "a daemon exited during the idle window\n{}",
                dep.log_tails(20)
            ));
        }
        let k = nodes.len().max(1) as f64;
        Ok(IdleResult {
            imp: opts.imp,
            seconds: window.as_secs_f64(),
            mean_cpu_percent: nodes.iter().map(|n| n.cpu_percent).sum::<f64>() / k,
            mean_rss_kib: nodes.iter().map(|n| n.rss_kib as f64).sum::<f64>() / k,
            nodes,
        })
    })();
    if r.is_err() {
        lab.keep_dir(true);
    }
    r
}

// ---------------------------------------------------------------------------
// Partial partition

/// nftables table (inet family, in the two node namespaces) of a partial partition.
const PARTIAL_TABLE: &str = "uphold_partial";

/// Which peer a partial partition cuts off from `owner`: for uphold the Raft
/// leader when the owner is not the leader itself (the harder case: the owner
/// no longer hears the leader directly), else the next node; for keepalived
/// the next node (node 2 when node 1 owns: the backup that would take over).
/// Returns the peer and whether it was the leader (None when not known).
pub fn partial_peer(
    lab: &Lab,
    tools: &Tools,
    dep: &Deployment,
    owner: usize,
) -> (usize, Option<bool>) {
    let n = lab.nodes();
    let next = owner % n + 1;
    if !dep.imp.is_uphold() {
        return (next, None);
    }
    match raft_leader(lab, tools, owner) {
        Ok(Some(l)) if l != owner => (l, Some(true)),
        Ok(Some(_)) => (next, Some(false)),
        Ok(None) => (next, None),
        Err(e) => {
            eprintln!(
                "partial partition: leader unknown ({e:#}); cutting {}",
                node_name(next)
            );
            (next, None)
        }
    }
}

/// The Raft leader as uphold's node `i` sees it (`uphold status --json`).
pub fn raft_leader(lab: &Lab, tools: &Tools, i: usize) -> Result<Option<usize>> {
    let uphold = tools
        .uphold
        .as_ref()
        .ok_or_else(|| anyhow!("no uphold binary"))?;
    let cfg = deploy::node_dir(lab, i).join("uphold.toml");
    let out = lab.run(
        &lab.node_ns(i)?,
        &[
            "timeout".to_string(),
            "5".into(),
            uphold.display().to_string(),
            "status".into(),
            "--json".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--node".into(),
            node_name(i),
        ],
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("uphold status --json: not JSON")?;
    Ok(v.get("leader")
        .and_then(serde_json::Value::as_str)
        .and_then(crate::netns::node_index))
}

/// Cuts nodes `a` and `b` off from each other, and nothing else: in each of
/// the two namespaces an nftables table drops IP packets from and to the other
/// one's address. Filtering in both namespaces also drops multicast from one to
/// the other (VRRP adverts), which a filter on the sender's side cannot single
/// out by destination. The client and the third node still reach both. The
/// tables go away with the namespaces, so a failed run leaves nothing behind.
pub fn cut_between(lab: &Lab, a: usize, b: usize) -> Result<()> {
    if a == b {
        bail!("cannot cut node {a} off from itself");
    }
    for (me, other) in [(a, b), (b, a)] {
        let peer = node_addr(other);
        let rules = [
            format!("table inet {PARTIAL_TABLE} {{"),
            " chain input {".into(),
            "  type filter hook input priority -10; policy accept;".into(),
            format!("  ip saddr {peer} drop"),
            " }".into(),
            " chain output {".into(),
            "  type filter hook output priority -10; policy accept;".into(),
            format!("  ip daddr {peer} drop"),
            " }".into(),
            "}\n".into(),
        ]
        .join("\n");
        nft_in(lab, &lab.node_ns(me)?, &rules)?;
    }
    Ok(())
}

/// Undoes [`cut_between`].
pub fn heal_between(lab: &Lab, a: usize, b: usize) -> Result<()> {
    for i in [a, b] {
        nft_in(
            lab,
            &lab.node_ns(i)?,
            &format!("delete table inet {PARTIAL_TABLE}\n"),
        )?;
    }
    Ok(())
}

fn nft_in(lab: &Lab, ns: &str, rules: &str) -> Result<()> {
    let mut child = lab
        .exec(ns, &["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running nft in {ns} (is the nftables package installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .with_context(|| format!("writing nft rules in {ns}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for nft in {ns}"))?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed ({}): {}\nrules:\n{rules}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What the daemons logged and what the address samplers saw

/// Group stops and starts and leader elections, counted in the daemons' logs.
/// Exact for uphold (its log lines, crates/cluster/src/runtime/mod.rs);
/// approximate for keepalived, whose VRRP state changes stand in for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DaemonEvents {
    /// uphold: "lease ending: stopping group now" (the lease ran out);
    /// keepalived: "Entering FAULT STATE".
    pub emergency_stops: usize,
    /// uphold: "stopping group" (a move, a failed monitor);
    /// keepalived: "Entering BACKUP STATE".
    pub orderly_stops: usize,
    /// uphold: "starting group"; keepalived: "Entering MASTER STATE".
    pub starts: usize,
    /// uphold: "leadership changed leader=true" (a member became Raft leader);
    /// keepalived: none (no leader).
    pub leader_elections: usize,
}

impl DaemonEvents {
    /// Every group stop, whatever the reason.
    pub fn stops(&self) -> usize {
        self.emergency_stops + self.orderly_stops
    }

    fn add(&mut self, o: DaemonEvents) {
        self.emergency_stops += o.emergency_stops;
        self.orderly_stops += o.orderly_stops;
        self.starts += o.starts;
        self.leader_elections += o.leader_elections;
    }
}

/// Counts [`DaemonEvents`] in log text of implementation `imp`.
pub fn count_daemon_events(imp: Impl, text: &str) -> DaemonEvents {
    let mut e = DaemonEvents::default();
    for line in text.lines() {
        match imp {
            Impl::Uphold | Impl::UpholdFast => {
                if line.contains("lease ending: stopping group now") {
                    e.emergency_stops += 1;
                } else if line.contains("stopping group") && !line.contains("stopping groups") {
                    e.orderly_stops += 1;
                } else if line.contains("starting group") {
                    e.starts += 1;
                } else if line.contains("leadership changed") && line.contains("leader=true") {
                    e.leader_elections += 1;
                }
            }
            Impl::Keepalived1s | Impl::KeepalivedFast => {
                if line.contains("Entering FAULT STATE") {
                    e.emergency_stops += 1;
                } else if line.contains("Entering BACKUP STATE") {
                    e.orderly_stops += 1;
                } else if line.contains("Entering MASTER STATE") {
                    e.starts += 1;
                }
            }
        }
    }
    e
}

/// Current length of every daemon's log, to count only what comes after.
pub fn log_marks(dep: &Deployment) -> Vec<u64> {
    dep.daemons
        .iter()
        .map(|d| std::fs::metadata(&d.log).map_or(0, |m| m.len()))
        .collect()
}

/// [`DaemonEvents`] logged by all daemons since `marks` (from [`log_marks`]).
pub fn events_since(dep: &Deployment, marks: &[u64]) -> DaemonEvents {
    let mut total = DaemonEvents::default();
    for (d, &mark) in dep.daemons.iter().zip(marks) {
        let Ok(bytes) = std::fs::read(&d.log) else {
            continue;
        };
        let from = usize::try_from(mark).unwrap_or(usize::MAX).min(bytes.len());
        total.add(count_daemon_events(
            dep.imp,
            &String::from_utf8_lossy(&bytes[from..]),
        ));
    }
    total
}

/// Who held the VIP over a window, from the address samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct VipHistory {
    /// Times a node that held the VIP stopped holding it.
    pub losses: usize,
    /// Times the VIP appeared on a node other than its previous holder.
    pub owner_changes: usize,
    /// Time at least one node held the VIP, ms.
    pub held_ms: f64,
    /// Length of the window, ms.
    pub window_ms: f64,
}

impl VipHistory {
    /// Share of the window with some node holding the VIP, percent.
    pub fn held_percent(&self) -> f64 {
        if self.window_ms <= 0.0 {
            return 0.0;
        }
        self.held_ms / self.window_ms * 100.0
    }
}

/// [`VipHistory`] of samples (index 0 = node 1) in `[from_us, to_us]`.
/// `owner` (1-based) is the holder before the window, when known. A node's
/// state between two of its samples is that of the earlier one.
pub fn vip_history(
    per_node: &[Vec<AddrSample>],
    owner: Option<usize>,
    from_us: u64,
    to_us: u64,
) -> VipHistory {
    let mut h = VipHistory {
        window_ms: to_us.saturating_sub(from_us) as f64 / 1000.0,
        ..VipHistory::default()
    };
    // State at the start of the window: each node's last sample at or before it.
    let mut present: Vec<bool> = per_node
        .iter()
        .map(|s| {
            s.iter()
                .take_while(|x| x.ts_us <= from_us)
                .last()
                .is_some_and(|x| x.present)
        })
        .collect();
    let mut events: Vec<(u64, usize, bool)> = per_node
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.iter()
                .filter(|x| x.ts_us > from_us && x.ts_us <= to_us)
                .map(move |x| (x.ts_us, i, x.present))
        })
        .collect();
    events.sort_by_key(|e| (e.0, e.1));
    let mut last_owner = owner
        .map(|o| o.saturating_sub(1))
        .or_else(|| present.iter().position(|p| *p));
    let mut t = from_us;
    let mut held_us = 0u64;
    for (ts, i, p) in events {
        if present.iter().any(|x| *x) {
            held_us += ts - t;
        }
        t = ts;
        let Some(was) = present.get_mut(i) else {
            continue;
        };
        match (*was, p) {
            (true, false) => h.losses += 1,
            (false, true) => {
                if last_owner.is_some_and(|o| o != i) {
                    h.owner_changes += 1;
                }
                last_owner = Some(i);
            }
            _ => {}
        }
        *was = p;
    }
    if present.iter().any(|x| *x) {
        held_us += to_us.saturating_sub(t);
    }
    h.held_ms = held_us as f64 / 1000.0;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(v: &[(u64, bool)]) -> Vec<AddrSample> {
        v.iter()
            .map(|&(t, present)| AddrSample {
                ts_us: t * 1000,
                present,
            })
            .collect()
    }

    #[test]
    fn steady_owner_has_no_history() {
        let a = samples(&[(0, true), (10, true), (20, true), (30, true)]);
        let b = samples(&[(0, false), (10, false), (20, false), (30, false)]);
        let h = vip_history(&[a, b], Some(1), 5_000, 30_000);
        assert_eq!((h.losses, h.owner_changes), (0, 0));
        assert_eq!(h.held_ms, 25.0);
        assert_eq!(h.held_percent(), 100.0);
    }

    #[test]
    fn a_restart_in_place_is_a_loss_not_a_move() {
        let a = samples(&[(0, true), (10, false), (20, false), (30, true), (40, true)]);
        let b = samples(&[(0, false), (40, false)]);
        let h = vip_history(&[a, b], Some(1), 0, 40_000);
        assert_eq!((h.losses, h.owner_changes), (1, 0));
        assert_eq!(h.held_ms, 20.0);
    }

    #[test]
    fn a_move_is_a_loss_and_an_owner_change() {
        let a = samples(&[(0, true), (10, false), (20, false), (30, true)]);
        let b = samples(&[(5, false), (15, true), (25, false)]);
        let h = vip_history(&[a, b], Some(1), 0, 30_000);
        // n1 -> n2 at 15, n2 -> n1 at 30.
        assert_eq!((h.losses, h.owner_changes), (2, 2));
        assert_eq!(h.held_ms, 10.0 + 10.0);
    }

    #[test]
    fn daemon_events_are_counted_from_log_lines() {
        let uphold = "\
2026-01-01T00:00:00Z  INFO uphold_cluster::runtime: starting group group=vip epoch=3
2026-01-01T00:00:01Z  WARN uphold_cluster::runtime: lease ending: stopping group now group=vip epoch=3
2026-01-01T00:00:02Z  INFO uphold_cluster::runtime: stopping group group=vip epoch=4
2026-01-01T00:00:02Z  INFO uphold_cluster::runtime: group stopped group=vip epoch=4
2026-01-01T00:00:03Z  INFO uphold_cluster::runtime: shutting down: stopping groups and handing them over
2026-01-01T00:00:03Z  INFO uphold_cluster::runtime: leadership changed leader=true
2026-01-01T00:00:03Z  INFO uphold_cluster::runtime: leadership changed leader=false
";
        let e = count_daemon_events(Impl::Uphold, uphold);
        assert_eq!(
            e,
            DaemonEvents {
                emergency_stops: 1,
                orderly_stops: 1,
                starts: 1,
                leader_elections: 1
            }
        );
        assert_eq!(e.stops(), 2);
        let ka = "Tue Nov 24 (VI_1) Entering MASTER STATE\nTue (VI_1) Entering BACKUP STATE\nx (VI_1) Entering FAULT STATE\n";
        let e = count_daemon_events(Impl::Keepalived1s, ka);
        assert_eq!((e.starts, e.orderly_stops, e.emergency_stops), (1, 1, 1));
    }

    #[test]
    fn fault_names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.name())
            );
        }
    }
}
