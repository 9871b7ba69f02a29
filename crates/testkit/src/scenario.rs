//! Failover scenarios: one repetition = a fresh 3-node lab, an HA
//! implementation on every node, the VIP answering from one owner, one fault
//! injected into that owner at a recorded instant, and what the client and the
//! nodes' address tables saw. Shared by the end-to-end tests and
//! `bench/failover` (through the `uphold-lab` binary).

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::time::Duration;

use crate::deploy::{self, Deployment, Impl, Tools};
use crate::netns::{kill_group, node_name, process_running, signal_pid, Lab};
use crate::probe::{self, now_us, Observations, ObserveSpec, Observer};
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
    /// The owner is cut off from its peers; the client still reaches everyone.
    /// Healed afterwards, to see whether the VIP moves back.
    Partition,
    /// SIGSTOP to the owner daemon's process group for [`RepOptions::pause`],
    /// then SIGCONT.
    Pause,
    /// SIGTERM to the owner's daemon: a planned stop.
    Sigterm,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::LinkDown,
        Fault::ServiceKill,
        Fault::DaemonKill,
        Fault::Partition,
        Fault::Pause,
        Fault::Sigterm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::ServiceKill => "service-kill",
            Fault::DaemonKill => "daemon-kill",
            Fault::Partition => "partition",
            Fault::Pause => "pause",
            Fault::Sigterm => "sigterm",
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
    /// Lab creation to a stable owner.
    pub ready_ms: f64,
    /// Kept lab directory, if any.
    pub log_dir: Option<String>,
    pub warnings: Vec<String>,
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
    let dep = deploy::start(lab, opts.imp, &opts.tools)?;
    let spec = ObserveSpec {
        client_ns: lab.client_ns(),
        node_ns: (1..=lab.nodes())
            .map(|i| lab.node_ns(i))
            .collect::<Result<_>>()?,
        vip: dep.vip,
        port: dep.port,
        probe_timeout: opts.probe_timeout,
    };
    let obs = Observer::start(&spec)?;
    let owner = wait_stable_owner(&obs, &dep, opts.ready_timeout)?;
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
        Fault::DaemonKill => kill_group(pgid, Signal::SIGKILL)?,
        Fault::Partition => lab.partition_from_peers(owner)?,
        Fault::Pause => kill_group(pgid, Signal::SIGSTOP)?,
        Fault::Sigterm => signal_pid(pid, Signal::SIGTERM)?,
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
        _ => {
            wait_failover(&obs, t_fault, &owner_name, opts.deadline);
            std::thread::sleep(opts.settle);
        }
    }
    let t_end = now_us();
    let rec = obs.stop();
    drop(dep);

    let dt = probe::downtime(&rec.probes, t_fault);
    let dbl = probe::double_ownership(&rec.samples, t_obs, t_end);
    let failover = probe::first_served_by_other(&rec.probes, t_fault, &owner_name);
    let served_after = probe::served_last(&rec.probes);
    let moved_back =
        healed_at.map(|_| failover.is_some() && served_after.as_deref() == Some(&owner_name));
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
        ready_ms,
        log_dir: None,
        warnings,
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
        let pgids: Vec<i32> = dep.daemons.iter().map(|d| d.pgid).collect();
        let nodes = procstat::measure_idle(&pgids, window)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
