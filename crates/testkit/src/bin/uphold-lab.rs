//! Scenario runner for the failover lab: runs repetitions of one fault against
//! one HA implementation and prints one JSON line per repetition (plus a
//! summary), runs one implementation under one host pressure (stress), measures
//! idle cost, and turns collected JSON lines into the markdown tables of
//! `bench/failover`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use uphold_testkit::deploy::{Impl, Tools};
use uphold_testkit::pressure::{Pressure, PressureOptions};
use uphold_testkit::scenario::{self, Fault, RepOptions};
use uphold_testkit::stress::{self, StressOptions};

#[derive(Parser, Debug)]
#[command(
    name = "uphold-lab",
    about = "failover scenarios in a network-namespace lab (root only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// HA implementation on the nodes.
    #[arg(long = "impl", value_enum)]
    imp: Impl,
    /// The uphold binary (required for --impl uphold).
    #[arg(long)]
    uphold_bin: Option<PathBuf>,
    /// keepalived (default: from PATH or /usr/sbin).
    #[arg(long)]
    keepalived_bin: Option<PathBuf>,
    /// uphold-testsvc (default: next to this program).
    #[arg(long)]
    testsvc_bin: Option<PathBuf>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Keep each lab's directory (configs, daemon logs) even on success.
    #[arg(long)]
    keep_logs: bool,
    /// A `[cluster]` setting for uphold, KEY=VALUE with a TOML value, e.g.
    /// `--uphold-set 'lease="400ms"'`; repeatable.
    #[arg(long = "uphold-set", value_name = "KEY=VALUE")]
    uphold_set: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Inject FAULT into the VIP's owner, REPS times, each in a fresh lab.
    Failover {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum)]
        fault: Fault,
        #[arg(long, default_value_t = 1)]
        reps: u32,
        /// Seconds to wait for another node to answer after the fault.
        #[arg(long, default_value_t = 15)]
        deadline_secs: u64,
        /// partial-partition: seconds the owner stays cut off from one peer.
        #[arg(long, default_value_t = 10)]
        partial_hold_secs: u64,
    },
    /// Run the implementation for SECONDS under one host PRESSURE while the
    /// client probes the VIP: uptime, transitions, downtime, double ownership.
    Stress {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum)]
        pressure: Pressure,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// disk-flush: MiB per `dd … conv=fsync` round.
        #[arg(long, default_value_t = PressureOptions::default().dd_mib)]
        dd_mib: u64,
        /// memory: most anonymous memory held, MiB (MemAvailable is also kept
        /// above --memory-margin-mib).
        #[arg(long, default_value_t = PressureOptions::default().memory_cap_mib)]
        memory_cap_mib: u64,
        #[arg(long, default_value_t = PressureOptions::default().memory_margin_mib)]
        memory_margin_mib: u64,
    },
    /// Measure the daemons' idle CPU and RSS per node.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Read JSON lines (from failover/idle --json) and print the markdown table.
    Report { files: Vec<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Failover {
            common,
            fault,
            reps,
            deadline_secs,
            partial_hold_secs,
        } => failover(&common, fault, reps, deadline_secs, partial_hold_secs),
        Cmd::Stress {
            common,
            pressure,
            seconds,
            dd_mib,
            memory_cap_mib,
            memory_margin_mib,
        } => {
            let load = PressureOptions {
                dd_mib,
                memory_cap_mib,
                memory_margin_mib,
                ..PressureOptions::default()
            };
            stress_run(&common, pressure, seconds, load)
        }
        Cmd::Idle { common, seconds } => idle(&common, seconds),
        Cmd::Report { files } => report(&files),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("uphold-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(common: &Common, fault: Fault) -> Result<RepOptions> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (it creates network namespaces)");
    }
    let mut tools = Tools::discover(common.uphold_bin.clone())?;
    if let Some(k) = &common.keepalived_bin {
        tools.keepalived = k.clone();
    }
    if let Some(t) = &common.testsvc_bin {
        tools.testsvc = t.clone();
    }
    for setting in &common.uphold_set {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--uphold-set {setting:?}: expected KEY=VALUE, e.g. 'lease=\"400ms\"'");
        };
        tools
            .uphold_settings
            .push(format!("{} = {}", key.trim(), value.trim()));
    }
    if fault == Fault::LeaderOwnerKill {
        tools.uphold_head_start = Duration::from_secs(1);
    }
    let mut o = RepOptions::new(common.imp, fault, tools);
    o.keep_logs = common.keep_logs;
    Ok(o)
}

fn failover(
    common: &Common,
    fault: Fault,
    reps: u32,
    deadline_secs: u64,
    partial_hold_secs: u64,
) -> Result<bool> {
    let mut opts = options(common, fault)?;
    opts.deadline = Duration::from_secs(deadline_secs);
    opts.partial_hold = Duration::from_secs(partial_hold_secs);
    let mut downtimes = Vec::new();
    let mut doubles = Vec::new();
    let mut errors = 0;
    for rep in 1..=reps {
        match scenario::run_rep(&opts) {
            Ok(r) => {
                downtimes.push(r.downtime_ms);
                doubles.push(r.double_ms);
                if common.json {
                    let mut v = serde_json::to_value(&r).context("encoding result")?;
                    if let Value::Object(m) = &mut v {
                        m.insert("kind".into(), json!("rep"));
                        m.insert("rep".into(), json!(rep));
                    }
                    println!("{v}");
                } else {
                    println!(
                        "{} {} rep {rep}: owner {} -> {}, downtime {:.0} ms{}{}, failover {}, {} serving change(s), double-held {:.0} ms (≤ {:.0}){}{}",
                        r.imp.name(),
                        r.fault.name(),
                        r.owner_before,
                        r.served_after.as_deref().unwrap_or("nobody"),
                        r.downtime_ms,
                        if r.recovered { "" } else { " (not recovered)" },
                        r.downtime_from_ms.map_or(String::new(), |t| format!(" from +{t:.0} ms")),
                        r.failover_ms.map_or("never".to_string(), |t| format!("{t:.0} ms")),
                        r.serving_changes,
                        r.double_ms,
                        r.double_ms_max,
                        if r.double_at_end { " still double-held at end" } else { "" },
                        r.moved_back.map_or(String::new(), |m| format!(", moved back after heal: {m}")),
                    );
                    if let Some(leader) = r.owner_was_leader {
                        println!("  owner was the Raft leader: {leader}");
                    }
                    if let Some(peer) = &r.cut_peer {
                        println!(
                            "  cut off from {peer} only (Raft leader: {}): {} owner change(s), VIP lost {} time(s), {} group stop(s) logged",
                            r.cut_peer_was_leader.map_or("unknown".to_string(), |l| l.to_string()),
                            r.owner_changes,
                            r.vip_losses,
                            r.daemon_events.stops(),
                        );
                    }
                }
            }
            Err(e) => {
                errors += 1;
                if common.json {
                    println!(
                        "{}",
                        json!({"kind": "rep", "impl": common.imp, "fault": fault, "rep": rep, "error": format!("{e:#}")})
                    );
                }
                eprintln!("{} {} rep {rep}: {e:#}", common.imp.name(), fault.name());
            }
        }
    }
    let summary = json!({
        "kind": "summary",
        "impl": common.imp,
        "fault": fault,
        "reps": reps,
        "errors": errors,
        "downtime_ms": stats(&downtimes),
        "double_ms": stats(&doubles),
    });
    if common.json {
        println!("{summary}");
    } else if !downtimes.is_empty() {
        println!(
            "summary: downtime {}, double-held {}",
            fmt_stats(&downtimes),
            fmt_stats(&doubles)
        );
    }
    Ok(errors == 0)
}

fn stress_run(
    common: &Common,
    pressure: Pressure,
    seconds: u64,
    load: PressureOptions,
) -> Result<bool> {
    let base = options(common, Fault::LinkDown)?;
    let mut opts = StressOptions::new(
        common.imp,
        pressure,
        base.tools,
        Duration::from_secs(seconds),
    );
    opts.keep_logs = common.keep_logs;
    opts.load = load;
    match stress::run_stress(&opts) {
        Ok(r) => {
            if common.json {
                let mut v = serde_json::to_value(&r).context("encoding result")?;
                if let Value::Object(m) = &mut v {
                    m.insert("kind".into(), json!("stress"));
                    m.insert("seconds".into(), json!(seconds));
                }
                println!("{v}");
            } else {
                println!("{}", r.summary());
            }
            Ok(true)
        }
        Err(e) => {
            if common.json {
                println!(
                    "{}",
                    json!({"kind": "stress", "impl": common.imp, "pressure": pressure, "seconds": seconds, "error": format!("{e:#}")})
                );
            }
            eprintln!("{} under {}: {e:#}", common.imp.name(), pressure.name());
            Ok(false)
        }
    }
}

fn idle(common: &Common, seconds: u64) -> Result<bool> {
    let mut opts = options(common, Fault::LinkDown)?;
    // The same check as keepalived's vrrp_script, as often (every 1 s).
    opts.tools.uphold_check_interval_ms = 1000;
    let r = scenario::measure_idle(&opts, Duration::from_secs(seconds))?;
    if common.json {
        let mut v = serde_json::to_value(&r).context("encoding result")?;
        if let Value::Object(m) = &mut v {
            m.insert("kind".into(), json!("idle"));
        }
        println!("{v}");
    } else {
        println!(
            "{} idle over {} s: CPU {:.2}% per node, RSS {:.1} MiB per node",
            r.imp.name(),
            seconds,
            r.mean_cpu_percent,
            r.mean_rss_kib / 1024.0
        );
    }
    Ok(true)
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"median": median(&s), "min": s[0], "max": s[s.len() - 1], "n": s.len()})
}

/// Median of a sorted, non-empty slice.
fn median(s: &[f64]) -> f64 {
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn fmt_stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(lo), Some(hi)) => format!("{:.0} ms ({:.0}–{:.0})", median(&s), lo, hi),
        _ => "n/a".into(),
    }
}

#[derive(Default)]
struct Cell {
    downtime: Vec<f64>,
    double: Vec<f64>,
    unrecovered: usize,
    double_at_end: usize,
    errors: usize,
    moved_back: usize,
    /// Repetitions in which the VIP moved or was lost at all (what
    /// partial-partition counts).
    moved: usize,
}

/// One stress run as read back from its JSON line.
struct StressRun {
    uptime: f64,
    transitions: u64,
    owner_changes: u64,
    stops: u64,
    longest_ms: f64,
    double_ms: f64,
    double_at_end: bool,
}

#[derive(Default)]
struct StressCell {
    runs: Vec<StressRun>,
    errors: usize,
    seconds: Option<f64>,
}

fn report(files: &[PathBuf]) -> Result<bool> {
    if files.is_empty() {
        bail!("report needs at least one file of JSON lines");
    }
    let mut cells: BTreeMap<(Fault, Impl), Cell> = BTreeMap::new();
    let mut idle: BTreeMap<Impl, Vec<(f64, f64)>> = BTreeMap::new();
    let mut idle_secs: Option<f64> = None;
    let mut stressed: BTreeMap<(Pressure, Impl), StressCell> = BTreeMap::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", f.display(), n + 1))?;
            let Some(imp) = v
                .get("impl")
                .and_then(Value::as_str)
                .and_then(Impl::from_name)
            else {
                continue;
            };
            match v.get("kind").and_then(Value::as_str) {
                Some("rep") => {
                    let Some(fault) = v
                        .get("fault")
                        .and_then(Value::as_str)
                        .and_then(Fault::from_name)
                    else {
                        continue;
                    };
                    let c = cells.entry((fault, imp)).or_default();
                    if v.get("error").is_some() {
                        c.errors += 1;
                        continue;
                    }
                    if let Some(d) = v.get("downtime_ms").and_then(Value::as_f64) {
                        c.downtime.push(d);
                    }
                    if let Some(d) = v.get("double_ms").and_then(Value::as_f64) {
                        c.double.push(d);
                    }
                    if v.get("recovered").and_then(Value::as_bool) == Some(false) {
                        c.unrecovered += 1;
                    }
                    if v.get("double_at_end").and_then(Value::as_bool) == Some(true) {
                        c.double_at_end += 1;
                    }
                    if v.get("moved_back").and_then(Value::as_bool) == Some(true) {
                        c.moved_back += 1;
                    }
                    let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                    if !v.get("failover_ms").is_none_or(Value::is_null)
                        || count("serving_changes") > 0
                        || count("owner_changes") > 0
                        || count("vip_losses") > 0
                    {
                        c.moved += 1;
                    }
                }
                Some("stress") => {
                    let Some(pressure) = v
                        .get("pressure")
                        .and_then(Value::as_str)
                        .and_then(Pressure::from_name)
                    else {
                        continue;
                    };
                    let c = stressed.entry((pressure, imp)).or_default();
                    c.seconds = v.get("seconds").and_then(Value::as_f64).or(c.seconds);
                    if v.get("error").is_some() {
                        c.errors += 1;
                        continue;
                    }
                    let num = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    let count = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let events = v.get("daemon_events");
                    let ev = |k: &str| {
                        events
                            .and_then(|e| e.get(k))
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    };
                    c.runs.push(StressRun {
                        uptime: num("uptime_percent"),
                        transitions: count("transitions"),
                        owner_changes: count("owner_changes"),
                        stops: ev("emergency_stops") + ev("orderly_stops"),
                        longest_ms: num("longest_downtime_ms"),
                        double_ms: num("double_ms"),
                        double_at_end: v.get("double_at_end").and_then(Value::as_bool)
                            == Some(true),
                    });
                }
                Some("idle") => {
                    let cpu = v
                        .get("mean_cpu_percent")
                        .and_then(Value::as_f64)
                        .unwrap_or(f64::NAN);
                    let rss = v
                        .get("mean_rss_kib")
                        .and_then(Value::as_f64)
                        .unwrap_or(f64::NAN);
                    idle.entry(imp).or_default().push((cpu, rss));
                    idle_secs = v.get("seconds").and_then(Value::as_f64).or(idle_secs);
                }
                _ => {}
            }
        }
    }

    let mut header = vec!["fault".to_string()];
    for imp in Impl::ALL {
        header.push(format!("{} downtime median (min–max)", imp.name()));
        header.push(format!("{} double-held", imp.name()));
    }
    header.push("ratio downtime uphold/keepalived-1s".into());
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for fault in Fault::ALL {
        let mut row = vec![fault.name().to_string()];
        for imp in Impl::ALL {
            let c = cells.get(&(fault, imp));
            row.push(c.map_or("n/a".into(), cell_downtime));
            row.push(c.map_or("n/a".into(), cell_double));
        }
        let med = |imp| {
            cells.get(&(fault, imp)).and_then(|c: &Cell| {
                let mut s = c.downtime.clone();
                s.sort_by(f64::total_cmp);
                (!s.is_empty()).then(|| median(&s))
            })
        };
        row.push(match (med(Impl::Uphold), med(Impl::Keepalived1s)) {
            (Some(u), Some(k)) if k > 0.0 => format!("{:.2}", u / k),
            (Some(_), Some(_)) => "— (keepalived 0 ms)".into(),
            _ => "n/a".into(),
        });
        println!("| {} |", row.join(" | "));
    }
    println!();
    println!("Downtime: longest run of failed client probes (every 10 ms) after the fault. Double-held: median time ≥ 2 nodes had the VIP configured at once (max in parentheses); \"still double at end\": both still held it when observation stopped (2 s after failover), so the real figure is larger. \"moved back\": after healing the partition the old owner served again.");
    let mut parts = Vec::new();
    for imp in Impl::ALL {
        if let Some(v) = idle.get(&imp) {
            let k = v.len() as f64;
            let cpu = v.iter().map(|x| x.0).sum::<f64>() / k;
            let rss = v.iter().map(|x| x.1).sum::<f64>() / k;
            parts.push(format!(
                "{} {:.2}% CPU, {:.1} MiB RSS",
                imp.name(),
                cpu,
                rss / 1024.0
            ));
        }
    }
    if !parts.is_empty() {
        println!();
        println!(
            "Idle, per node (daemon process group and, for uphold, its guard; {:.0} s): {}.",
            idle_secs.unwrap_or(f64::NAN),
            parts.join("; ")
        );
    }
    let idle_mean: BTreeMap<Impl, (f64, f64)> = idle
        .iter()
        .map(|(imp, v)| {
            let k = v.len() as f64;
            (
                *imp,
                (
                    v.iter().map(|x| x.0).sum::<f64>() / k,
                    v.iter().map(|x| x.1).sum::<f64>() / k,
                ),
            )
        })
        .collect();
    stress_table(&stressed, &cells, &idle_mean, idle_secs);
    Ok(true)
}

/// The second table: each implementation under each host pressure, the
/// partial partition, and the idle cost, with uphold against keepalived-1s.
fn stress_table(
    stressed: &BTreeMap<(Pressure, Impl), StressCell>,
    cells: &BTreeMap<(Fault, Impl), Cell>,
    idle: &BTreeMap<Impl, (f64, f64)>,
    idle_secs: Option<f64>,
) {
    let partial = |imp| cells.get(&(Fault::PartialPartition, imp));
    if stressed.is_empty() && idle.is_empty() && Impl::ALL.iter().all(|&i| partial(i).is_none()) {
        return;
    }
    let secs: Vec<f64> = stressed.values().filter_map(|c| c.seconds).collect();
    let secs = match (
        secs.iter().copied().reduce(f64::min),
        secs.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) if a == b => format!("{a:.0} s each"),
        (Some(a), Some(b)) => format!("{a:.0}–{b:.0} s"),
        _ => "none run".into(),
    };
    println!();
    let mut header = vec![format!("under load ({secs})")];
    header.extend(Impl::ALL.iter().map(|imp| imp.name().to_string()));
    header.push("uphold vs keepalived-1s".into());
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for p in Pressure::ALL {
        let mut row = vec![p.name().to_string()];
        for imp in Impl::ALL {
            row.push(stressed.get(&(p, imp)).map_or("n/a".into(), stress_cell));
        }
        let worst_up = |imp| {
            stressed
                .get(&(p, imp))
                .and_then(|c| c.runs.iter().map(|r| r.uptime).reduce(f64::min))
        };
        row.push(
            match (worst_up(Impl::Uphold), worst_up(Impl::Keepalived1s)) {
                (Some(u), Some(k)) if k < 100.0 => {
                    format!("unavailable time ×{:.2}", (100.0 - u) / (100.0 - k))
                }
                (Some(u), Some(_)) if u < 100.0 => format!("{:.2} % down vs 0", 100.0 - u),
                (Some(_), Some(_)) => "both 100 % up".into(),
                _ => "n/a".into(),
            },
        );
        println!("| {} |", row.join(" | "));
    }
    let mut row = vec!["partial-partition".to_string()];
    for imp in Impl::ALL {
        row.push(partial(imp).map_or("n/a".into(), |c| {
            let n = c.downtime.len();
            let mut d = c.downtime.clone();
            d.sort_by(f64::total_cmp);
            let dbl = c.double.iter().copied().fold(0.0, f64::max);
            let mut s = format!(
                "moved {}/{n}, downtime {}, double {dbl:.0} ms",
                c.moved,
                if d.is_empty() {
                    "n/a".into()
                } else {
                    format!("{:.0} ms (max {:.0})", median(&d), d[d.len() - 1])
                }
            );
            if c.errors > 0 {
                s.push_str(&format!(", {} failed runs", c.errors));
            }
            s
        }));
    }
    row.push(match (partial(Impl::Uphold), partial(Impl::Keepalived1s)) {
        (Some(u), Some(k)) => format!("moves {} vs {}", u.moved, k.moved),
        _ => "n/a".into(),
    });
    println!("| {} |", row.join(" | "));
    let mut row = vec![match idle_secs {
        Some(s) => format!("idle cost per node ({s:.0} s)"),
        None => "idle cost per node".to_string(),
    }];
    for imp in Impl::ALL {
        row.push(idle.get(&imp).map_or("n/a".into(), |(cpu, rss)| {
            format!("{cpu:.2} % CPU, {:.1} MiB RSS", rss / 1024.0)
        }));
    }
    row.push(
        match (idle.get(&Impl::Uphold), idle.get(&Impl::Keepalived1s)) {
            (Some((uc, ur)), Some((kc, kr))) if *kc > 0.0 && *kr > 0.0 => {
                format!("CPU ×{:.1}, RSS ×{:.2}", uc / kc, ur / kr)
            }
            _ => "n/a".into(),
        },
    );
    println!("| {} |", row.join(" | "));
    println!();
    println!("Under load: the pressure runs for the time shown while the client probes the VIP every 10 ms (1 s deadline), plus 3 s after it stops. Uptime: answered probes. Transitions: times a node holding the VIP stopped holding it (address samples every 10 ms); \"moves\": the VIP appeared on another node; \"stops\": group stops in the daemons' logs (uphold; keepalived: leaving MASTER). With several runs a cell shows the worst. Partial partition: the owner cut off from one of its two peers (nftables drops between the two only) for 10 s; \"moved\": runs in which the VIP moved or was dropped at all. Ratios: uphold's unavailable time over keepalived-1s's; idle CPU and RSS uphold over keepalived-1s.");
}

fn stress_cell(c: &StressCell) -> String {
    if c.runs.is_empty() {
        return if c.errors > 0 {
            format!("{} failed runs", c.errors)
        } else {
            "n/a".into()
        };
    }
    let worst =
        |f: fn(&StressRun) -> f64| c.runs.iter().map(f).reduce(f64::max).unwrap_or(f64::NAN);
    let up = c
        .runs
        .iter()
        .map(|r| r.uptime)
        .reduce(f64::min)
        .unwrap_or(f64::NAN);
    let transitions = c.runs.iter().map(|r| r.transitions).max().unwrap_or(0);
    let moves = c.runs.iter().map(|r| r.owner_changes).max().unwrap_or(0);
    let stops = c.runs.iter().map(|r| r.stops).max().unwrap_or(0);
    let at_end = c.runs.iter().any(|r| r.double_at_end);
    let mut s = format!(
        "{up:.2} % up, {transitions} transitions ({moves} moves, {stops} stops), longest {:.0} ms, double {}{:.0} ms",
        worst(|r| r.longest_ms),
        if at_end { "≥ " } else { "" },
        worst(|r| r.double_ms),
    );
    if let Some(secs) = c.seconds {
        s.push_str(&format!(", over {secs:.0} s"));
    }
    if c.runs.len() > 1 {
        s.push_str(&format!(" (worst of {})", c.runs.len()));
    }
    if c.errors > 0 {
        s.push_str(&format!(", {} failed runs", c.errors));
    }
    s
}

fn cell_downtime(c: &Cell) -> String {
    let mut s = if c.downtime.is_empty() {
        "n/a".to_string()
    } else {
        fmt_stats(&c.downtime)
    };
    if c.unrecovered > 0 {
        s.push_str(&format!(", {} not recovered", c.unrecovered));
    }
    if c.errors > 0 {
        s.push_str(&format!(", {} failed runs", c.errors));
    }
    s
}

fn cell_double(c: &Cell) -> String {
    let mut s = c.double.clone();
    s.sort_by(f64::total_cmp);
    // Still double-held when observation stopped: the figure is only a lower bound.
    let lower_bound = if c.double_at_end > 0 { "≥ " } else { "" };
    let mut out = match s.last() {
        Some(hi) => format!("{lower_bound}{:.0} ms (max {:.0})", median(&s), hi),
        None => "n/a".into(),
    };
    if c.double_at_end > 0 {
        out.push_str(&format!(
            ", still double at end {}/{}",
            c.double_at_end,
            c.double.len()
        ));
    }
    if c.moved_back > 0 {
        out.push_str(&format!(
            ", moved back {}/{}",
            c.moved_back,
            c.downtime.len()
        ));
    }
    out
}
