//! Stress scenarios: a fresh 3-node lab, the HA implementation up with the VIP
//! answering from one stable owner, then one [`Pressure`] on the host for a
//! bounded time while the client keeps probing, then the pressure stopped and
//! a short observation after it. Nothing is injected into the cluster: the
//! question is whether a busy host alone makes the group stop or move.
//! Shared by the end-to-end tests (crates/uphold/tests/stress.rs) and
//! `bench/failover` (`uphold-lab stress`).
//!
//! What is reported, over the whole window from starting the pressure to the
//! end of the observation after it:
//! - **uptime**: the share of client probes (one every 10 ms) that were
//!   answered, and the longest run of failed probes;
//! - **transitions**: the address samplers' count of times a node holding the
//!   VIP stopped holding it (a group stop, in place or as part of a move), and
//!   separately the owner changes (the VIP appearing on another node);
//! - the daemons' own account: group stops and starts and leader elections
//!   counted in their logs ([`DaemonEvents`]);
//! - double ownership, as in the failover scenarios;
//! - what the pressure did ([`PressureReport`]), so a run where the load did
//!   not happen cannot pass for a quiet one.

use anyhow::{anyhow, Result};
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::deploy::{self, Impl, Tools};
use crate::netns::{node_name, process_running, Lab};
use crate::pressure::{self, Pressure, PressureOptions, PressureReport};
use crate::probe::{self, now_us, ProbeRecord};
use crate::scenario::{self, DaemonEvents, LogTail};

/// A successful probe slower than this is counted as slow (it is not downtime).
pub const SLOW_PROBE_MS: f64 = 100.0;

/// Knobs of one stress run. [`StressOptions::new`] gives the benchmark's values.
#[derive(Clone, Debug)]
pub struct StressOptions {
    pub imp: Impl,
    pub pressure: Pressure,
    pub tools: Tools,
    /// Namespace prefix; stale namespaces with it are cleaned up.
    pub prefix: String,
    /// How long to wait for the VIP to answer from one stable owner at start.
    pub ready_timeout: Duration,
    /// How long the pressure runs.
    pub duration: Duration,
    /// Observation after the pressure has stopped (effects that lag behind it,
    /// such as a lease that ran out while the last fsync finished).
    pub settle: Duration,
    /// Deadline of one probe. A probe answered within it counts as up; slow
    /// answers are reported separately ([`StressResult::slow_probes`]).
    pub probe_timeout: Duration,
    pub load: PressureOptions,
    /// Keep the lab directory (configs, logs) even on success.
    pub keep_logs: bool,
}

impl StressOptions {
    pub fn new(imp: Impl, pressure: Pressure, tools: Tools, duration: Duration) -> StressOptions {
        StressOptions {
            imp,
            pressure,
            tools,
            prefix: "uphstress".into(),
            ready_timeout: Duration::from_secs(60),
            duration,
            settle: Duration::from_secs(3),
            // A loaded host answers slowly before it stops answering: 1 s
            // separates "slow" from "down" (a client's TCP SYN retry is 1 s).
            probe_timeout: Duration::from_secs(1),
            load: PressureOptions::default(),
            keep_logs: false,
        }
    }
}

/// What one stress run measured. Times in ms.
#[derive(Clone, Debug, Serialize)]
pub struct StressResult {
    #[serde(rename = "impl")]
    pub imp: Impl,
    pub pressure: Pressure,
    /// Length of the measured window (pressure plus settle), s.
    pub window_secs: f64,
    /// Node that held the VIP and served when the pressure started.
    pub owner_before: String,
    /// Node that answered the last probe.
    pub served_after: Option<String>,
    /// Answered probes over all probes started in the window, percent.
    pub uptime_percent: f64,
    pub probes: usize,
    pub failed_probes: usize,
    /// Longest run of failed probes (first failure to next success).
    pub longest_downtime_ms: f64,
    /// False if probes were still failing when observation ended.
    pub recovered: bool,
    /// Share of the window in which some node held the VIP (address samples), percent.
    pub vip_held_percent: f64,
    /// Times a node holding the VIP stopped holding it (address samples).
    pub transitions: usize,
    /// Times the VIP appeared on a node other than its previous holder.
    pub owner_changes: usize,
    /// How often the node answering the client changed.
    pub serving_changes: usize,
    /// Group stops and starts and leader elections in the daemons' logs.
    pub daemon_events: DaemonEvents,
    /// Time ≥ 2 nodes held the VIP (see [`probe::double_ownership`]).
    pub double_ms: f64,
    pub double_ms_max: f64,
    pub double_at_end: bool,
    /// Slowest answered probe, and how many answered probes took over
    /// [`SLOW_PROBE_MS`].
    pub max_probe_ms: f64,
    pub slow_probes: usize,
    /// Longest time between two consecutive probe starts, ms (10 when the
    /// prober kept its schedule): an outage shorter than this could be missed.
    pub max_probe_gap_ms: f64,
    /// What the pressure did.
    pub load: PressureReport,
    /// Daemons that exited during the run.
    pub daemons_exited: Vec<String>,
    /// Lab creation to a stable owner.
    pub ready_ms: f64,
    /// Kept lab directory, if any.
    pub log_dir: Option<String>,
    pub warnings: Vec<String>,
    /// The last lines of every daemon's log, for failure messages.
    #[serde(skip)]
    pub log_tail: LogTail,
}

impl StressResult {
    /// The figures on a few lines, for messages.
    pub fn summary(&self) -> String {
        format!(
            "{} under {} for {:.0} s: uptime {:.3} % ({} of {} probes failed, longest outage {:.0} ms{}), \
             VIP held {:.3} % of the time, {} transitions, {} owner changes, {} serving changes, \
             daemons logged {} group stops ({} lease-ending), {} starts, {} leader elections; \
             double ownership {:.0} ms (≤ {:.0}){}; slowest answer {:.0} ms, {} answers over {:.0} ms, \
             longest gap between probes {:.0} ms\n\
             load: {}{}{}",
            self.imp.name(),
            self.pressure.name(),
            self.window_secs,
            self.uptime_percent,
            self.failed_probes,
            self.probes,
            self.longest_downtime_ms,
            if self.recovered { "" } else { ", not recovered" },
            self.vip_held_percent,
            self.transitions,
            self.owner_changes,
            self.serving_changes,
            self.daemon_events.stops(),
            self.daemon_events.emergency_stops,
            self.daemon_events.starts,
            self.daemon_events.leader_elections,
            self.double_ms,
            self.double_ms_max,
            if self.double_at_end { ", still double at end" } else { "" },
            self.max_probe_ms,
            self.slow_probes,
            SLOW_PROBE_MS,
            self.max_probe_gap_ms,
            self.load.summary,
            if self.load.errors.is_empty() {
                String::new()
            } else {
                format!("; load errors: {:?}", self.load.errors)
            },
            if self.daemons_exited.is_empty() {
                String::new()
            } else {
                format!("\ndaemons exited: {:?}", self.daemons_exited)
            },
        )
    }
}

/// Runs one stress scenario in a fresh lab. On error the lab directory is kept
/// and named in the error.
pub fn run_stress(opts: &StressOptions) -> Result<StressResult> {
    let t_create = now_us();
    let mut lab = Lab::create(&opts.prefix, 3)?;
    let r = stress_in_lab(&lab, opts, t_create);
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

fn stress_in_lab(lab: &Lab, opts: &StressOptions, t_create: u64) -> Result<StressResult> {
    let (dep, obs, owner) = scenario::bring_up_with(
        lab,
        opts.imp,
        &opts.tools,
        opts.probe_timeout,
        opts.ready_timeout,
    )?;
    let ready_ms = (now_us() - t_create) as f64 / 1000.0;
    let mut warnings = Vec::new();
    let load_dir = lab.dir().join("pressure");
    std::fs::create_dir_all(&load_dir)?;
    // The disk pressures are meant for the filesystem holding the state.
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    for i in 1..=lab.nodes() {
        let state = deploy::node_dir(lab, i).join("state");
        if let (Some(a), Some(b)) = (dev(&load_dir), dev(&state)) {
            if a != b {
                warnings.push(format!(
                    "{} is not on the filesystem of {}",
                    load_dir.display(),
                    state.display()
                ));
            }
        }
    }
    let marks = scenario::log_marks(&dep);

    let t_start = now_us();
    // Hard bound: the pressure ends by itself a minute after its planned stop.
    let bound = opts.duration + Duration::from_secs(60);
    let load = pressure::start(opts.pressure, &load_dir, &opts.load, bound)?;
    let mut daemons_exited = Vec::new();
    let end = t_start + opts.duration.as_micros() as u64;
    while now_us() < end {
        for d in &dep.daemons {
            let name = node_name(d.node);
            if !daemons_exited.contains(&name) && !process_running(d.pgid) {
                daemons_exited.push(name);
            }
        }
        let left = end.saturating_sub(now_us());
        std::thread::sleep(Duration::from_micros(left.min(200_000)));
    }
    let load = load.stop()?;
    std::thread::sleep(opts.settle);
    let t_end = now_us();
    let rec = obs.stop();
    let daemon_events = scenario::events_since(&dep, &marks);
    let log_tail = LogTail(dep.log_tails(40));
    drop(dep);

    let window: Vec<ProbeRecord> = rec
        .probes
        .iter()
        .filter(|p| p.start_us >= t_start && p.start_us <= t_end)
        .cloned()
        .collect();
    let (ok, slow, max_ms) = answered(&window);
    let probes = window.len();
    if probes == 0 {
        return Err(anyhow!("no probes recorded between start and end"));
    }
    let dt = probe::downtime(&window, t_start);
    let history = scenario::vip_history(&rec.samples, Some(owner), t_start, t_end);
    let dbl = probe::double_ownership(&rec.samples, t_start, t_end);
    warnings.extend(rec.sample_errors.iter().take(5).cloned());
    if rec.sample_errors.len() > 5 {
        warnings.push(format!(
            "... {} sampler errors in all",
            rec.sample_errors.len()
        ));
    }
    Ok(StressResult {
        imp: opts.imp,
        pressure: opts.pressure,
        window_secs: (t_end - t_start) as f64 / 1e6,
        owner_before: node_name(owner),
        served_after: probe::served_last(&window),
        uptime_percent: ok as f64 / probes as f64 * 100.0,
        probes,
        failed_probes: probes - ok,
        longest_downtime_ms: dt.longest_ms,
        recovered: dt.recovered,
        vip_held_percent: history.held_percent(),
        transitions: history.losses,
        owner_changes: history.owner_changes,
        serving_changes: probe::serving_changes(&window, t_start),
        daemon_events,
        double_ms: dbl.observed_ms,
        double_ms_max: dbl.upper_ms,
        double_at_end: probe::holders_at_end(&rec.samples).len() >= 2,
        max_probe_ms: max_ms,
        slow_probes: slow,
        max_probe_gap_ms: max_gap_ms(&window),
        load,
        daemons_exited,
        ready_ms,
        log_dir: None,
        warnings,
        log_tail,
    })
}

/// Longest time between consecutive probe starts (probes sorted by start), ms.
fn max_gap_ms(probes: &[ProbeRecord]) -> f64 {
    probes
        .windows(2)
        .map(|w| w[1].start_us.saturating_sub(w[0].start_us) as f64 / 1000.0)
        .fold(0.0, f64::max)
}

/// Answered probes, how many of them took over [`SLOW_PROBE_MS`], and the
/// slowest answer in ms.
fn answered(probes: &[ProbeRecord]) -> (usize, usize, f64) {
    let mut ok = 0;
    let mut slow = 0;
    let mut max_ms: f64 = 0.0;
    for p in probes.iter().filter(|p| p.served().is_some()) {
        ok += 1;
        let ms = p.end_us.saturating_sub(p.start_us) as f64 / 1000.0;
        if ms > SLOW_PROBE_MS {
            slow += 1;
        }
        max_ms = max_ms.max(ms);
    }
    (ok, slow, max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_counts_slow_and_failed_probes() {
        let p = |start: u64, ms: u64, ok: bool| ProbeRecord {
            start_us: start,
            end_us: start + ms * 1000,
            outcome: if ok { Ok("n1".into()) } else { Err("x".into()) },
        };
        let probes = vec![p(0, 1, true), p(10, 250, true), p(20, 1000, false)];
        assert_eq!(answered(&probes), (2, 1, 250.0));
        assert_eq!(max_gap_ms(&probes), 0.01);
    }
}
