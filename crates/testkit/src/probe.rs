//! Measurement from inside the lab's namespaces, in-process: threads that move
//! themselves (and only themselves) into a namespace with `setns`, a client
//! prober that keeps connecting to the VIP, and per-node samplers that record
//! whether the VIP is configured. Also the pure analysis of what they recorded:
//! downtime, double ownership, who served before and after.
//!
//! All timestamps are CLOCK_MONOTONIC in microseconds ([`now_us`]).

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::time::{clock_gettime, ClockId};
use serde::Serialize;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Lab;

/// Probing and sampling period.
pub const TICK: Duration = Duration::from_millis(10);

/// CLOCK_MONOTONIC now, in microseconds.
pub fn now_us() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let s = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let ns = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            s * 1_000_000 + ns / 1_000
        }
        // CLOCK_MONOTONIC cannot fail on Linux; 0 keeps callers total.
        Err(_) => 0,
    }
}

/// Moves the calling thread into network namespace `ns`. Other threads of the
/// process stay where they are.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path: PathBuf = Lab::ns_path(ns);
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace panicked"))?
}

/// One client probe: a TCP connect to the VIP and one line read back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeRecord {
    pub start_us: u64,
    pub end_us: u64,
    /// `Ok(reply line)` (the serving node's name) or `Err(why)`.
    pub outcome: Result<String, String>,
}

impl ProbeRecord {
    pub fn served(&self) -> Option<&str> {
        self.outcome.as_deref().ok()
    }
}

/// One address sample in one node namespace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AddrSample {
    pub ts_us: u64,
    pub present: bool,
}

/// Connects to `addr` and reads one line, all within `timeout`. Blocking; call
/// from a thread that is already in the right namespace (or use [`in_netns`]).
pub fn probe_once_blocking(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(probe_once(addr, timeout))
}

/// Connects to `addr` in namespace `ns` and returns the line it sends.
pub fn connect_from(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<String> {
    in_netns(ns, move || {
        probe_once_blocking(addr, timeout).map_err(|e| anyhow!("{addr}: {e}"))
    })
}

async fn probe_once(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 64];
        // The service writes one short line and closes; stop at the newline or a cap.
        while !buf.contains(&b'\n') && buf.len() < 256 {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.lines().next().unwrap_or("").trim().to_string();
        if line.is_empty() {
            Err("empty reply".to_string())
        } else {
            Ok(line)
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {} ms", timeout.as_millis())),
    }
}

/// Whether `vip` is configured on any interface of the calling thread's namespace.
pub fn vip_present_here(vip: Ipv4Addr) -> Result<bool> {
    let addrs = nix::ifaddrs::getifaddrs().context("getifaddrs")?;
    Ok(addrs.into_iter().any(|a| {
        a.address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == vip)
    }))
}

/// What an [`Observer`] is pointed at.
#[derive(Clone, Debug)]
pub struct ObserveSpec {
    /// Namespace the prober connects from.
    pub client_ns: String,
    /// Namespaces whose addresses are sampled, in node order (index 0 = node 1).
    pub node_ns: Vec<String>,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// Deadline of one probe (connect + read). Probes start every [`TICK`]
    /// regardless of earlier ones still in flight, so an outage is resolved to
    /// one tick no matter how long a single probe may hang.
    pub probe_timeout: Duration,
}

#[derive(Default)]
struct Shared {
    probes: Mutex<Vec<ProbeRecord>>,
    samples: Vec<Mutex<Vec<AddrSample>>>,
    sample_errors: Mutex<Vec<String>>,
}

/// Everything recorded so far.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observations {
    pub probes: Vec<ProbeRecord>,
    /// Per node (index 0 = node 1), in time order.
    pub samples: Vec<Vec<AddrSample>>,
    pub sample_errors: Vec<String>,
}

/// The running prober and samplers. Stop with [`Observer::stop`]; dropping it
/// also stops the threads (without collecting).
pub struct Observer {
    started_us: u64,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("threads", &self.threads.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking recorder thread leaves plain data behind; keep measuring.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Observer {
    /// Starts one prober thread in the client namespace and one sampler thread
    /// per node namespace. Fails if a thread cannot enter its namespace.
    pub fn start(spec: &ObserveSpec) -> Result<Observer> {
        let shared = Arc::new(Shared {
            probes: Mutex::new(Vec::new()),
            samples: spec
                .node_ns
                .iter()
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            sample_errors: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut obs = Observer {
            started_us: now_us(),
            stop: stop.clone(),
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();

        for (idx, ns) in spec.node_ns.iter().enumerate() {
            let (ns, vip, stop, shared, ready) = (
                ns.clone(),
                spec.vip,
                stop.clone(),
                shared.clone(),
                ready_tx.clone(),
            );
            obs.threads.push(std::thread::spawn(move || {
                let entered = enter_netns(&ns);
                let ok = entered.is_ok();
                let _ = ready.send(entered);
                if ok {
                    sample_loop(idx, &ns, vip, &stop, &shared);
                }
            }));
        }
        {
            let (ns, stop, shared, ready) = (
                spec.client_ns.clone(),
                stop.clone(),
                shared.clone(),
                ready_tx.clone(),
            );
            let target = SocketAddr::new(IpAddr::V4(spec.vip), spec.port);
            let timeout = spec.probe_timeout;
            obs.threads.push(std::thread::spawn(move || {
                let entered = enter_netns(&ns);
                let ok = entered.is_ok();
                let _ = ready.send(entered);
                if ok {
                    probe_loop(target, timeout, &stop, &shared);
                }
            }));
        }
        drop(ready_tx);
        for _ in 0..obs.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.context("starting observer")),
                Err(_) => {
                    return Err(anyhow!(
                        "observer thread died before entering its namespace"
                    ))
                }
            }
        }
        Ok(obs)
    }

    /// When the threads were started.
    pub fn started_us(&self) -> u64 {
        self.started_us
    }

    /// Finished probes started at or after `t_us`, sorted by start.
    pub fn probes_since(&self, t_us: u64) -> Vec<ProbeRecord> {
        let mut v: Vec<ProbeRecord> = lock(&self.shared.probes)
            .iter()
            .filter(|p| p.start_us >= t_us)
            .cloned()
            .collect();
        v.sort_by_key(|p| p.start_us);
        v
    }

    /// A copy of what was recorded so far.
    pub fn snapshot(&self) -> Observations {
        let mut probes = lock(&self.shared.probes).clone();
        probes.sort_by_key(|p| p.start_us);
        Observations {
            probes,
            samples: self
                .shared
                .samples
                .iter()
                .map(|s| lock(s).clone())
                .collect(),
            sample_errors: lock(&self.shared.sample_errors).clone(),
        }
    }

    /// Stops every thread and returns the full record (probes sorted by start).
    pub fn stop(mut self) -> Observations {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn sample_loop(idx: usize, ns: &str, vip: Ipv4Addr, stop: &AtomicBool, shared: &Shared) {
    let tick = TICK.as_micros() as u64;
    let mut next = now_us();
    while !stop.load(Ordering::SeqCst) {
        let ts = now_us();
        let present = match vip_present_here(vip) {
            Ok(p) => p,
            Err(e) => {
                lock(&shared.sample_errors).push(format!("{ns}: {e:#}"));
                false
            }
        };
        if let Some(s) = shared.samples.get(idx) {
            lock(s).push(AddrSample { ts_us: ts, present });
        }
        // Absolute schedule: a slow sample does not shift later ones.
        next += tick;
        let now = now_us();
        if next > now {
            std::thread::sleep(Duration::from_micros(next - now));
        } else {
            next = now;
        }
    }
}

fn probe_loop(target: SocketAddr, timeout: Duration, stop: &AtomicBool, shared: &Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            lock(&shared.sample_errors).push(format!("prober runtime: {e}"));
            return;
        }
    };
    // Everything (sockets included) is created on this thread, which is in the
    // client namespace; a current-thread runtime never hops to another thread.
    rt.block_on(async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut inflight = tokio::task::JoinSet::new();
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let shared = shared.clone();
            inflight.spawn(async move {
                let start_us = now_us();
                let outcome = probe_once(target, timeout).await;
                let end_us = now_us();
                lock(&shared.probes).push(ProbeRecord {
                    start_us,
                    end_us,
                    outcome,
                });
            });
            while inflight.try_join_next().is_some() {}
        }
        while inflight.join_next().await.is_some() {}
    });
}

// ---------------------------------------------------------------------------
// Analysis (pure)

/// The longest outage seen by the prober.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Downtime {
    /// Longest run of failed probes: start of its first failure to the start of
    /// the next successful probe, in ms. 0 when no probe failed.
    pub longest_ms: f64,
    /// Start of that run.
    pub from_us: Option<u64>,
    /// False when the run had not ended when observation stopped (then
    /// `longest_ms` runs to the last probe's start).
    pub recovered: bool,
    pub failed_probes: usize,
}

/// Longest run of failed probes among those started at or after `after_us`.
/// `probes` must be sorted by `start_us`.
pub fn downtime(probes: &[ProbeRecord], after_us: u64) -> Downtime {
    let mut best = Downtime {
        longest_ms: 0.0,
        from_us: None,
        recovered: true,
        failed_probes: 0,
    };
    let mut run_start: Option<u64> = None;
    let mut last_start = after_us;
    for p in probes.iter().filter(|p| p.start_us >= after_us) {
        last_start = p.start_us;
        match (&p.outcome, run_start) {
            (Err(_), None) => {
                best.failed_probes += 1;
                run_start = Some(p.start_us);
            }
            (Err(_), Some(_)) => best.failed_probes += 1,
            (Ok(_), Some(s)) => {
                let ms = (p.start_us - s) as f64 / 1000.0;
                if ms > best.longest_ms {
                    best.longest_ms = ms;
                    best.from_us = Some(s);
                    best.recovered = true;
                }
                run_start = None;
            }
            (Ok(_), None) => {}
        }
    }
    if let Some(s) = run_start {
        // Still failing at the end: the outage lasts at least until the last probe.
        let ms = (last_start - s) as f64 / 1000.0 + TICK.as_secs_f64() * 1000.0;
        if ms > best.longest_ms || best.from_us.is_none() {
            best.longest_ms = ms;
            best.from_us = Some(s);
            best.recovered = false;
        }
    }
    best
}

/// Time during which two or more nodes held the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DoubleOwnership {
    /// Total time (ms) where the presence intervals of ≥ 2 nodes overlap; a
    /// node's interval runs from the first to the last sample that saw the VIP.
    pub observed_ms: f64,
    /// Same, but each interval widened to the neighbouring samples that did not
    /// see the VIP (the most the truth can be, given a 10 ms grid).
    pub upper_ms: f64,
    /// Whether any two nodes' presence intervals touch at all, even for one sample.
    pub any: bool,
}

/// Presence intervals `[from, to]` (µs) of one node's samples.
/// `widened`: extend each run to the neighbouring absent samples.
pub fn presence_intervals(samples: &[AddrSample], widened: bool) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        if !samples[i].present {
            i += 1;
            continue;
        }
        let first = i;
        while i + 1 < samples.len() && samples[i + 1].present {
            i += 1;
        }
        let last = i;
        let (from, to) = if widened {
            let from = if first > 0 {
                samples[first - 1].ts_us
            } else {
                samples[first].ts_us
            };
            let to = samples
                .get(last + 1)
                .map_or(samples[last].ts_us, |s| s.ts_us);
            (from, to)
        } else {
            (samples[first].ts_us, samples[last].ts_us)
        };
        out.push((from, to));
        i += 1;
    }
    out
}

/// Double ownership across all nodes' samples, restricted to `[from_us, to_us]`.
pub fn double_ownership(per_node: &[Vec<AddrSample>], from_us: u64, to_us: u64) -> DoubleOwnership {
    let clip = |v: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        v.into_iter()
            .filter_map(|(a, b)| {
                let (a, b) = (a.max(from_us), b.min(to_us));
                (a <= b).then_some((a, b))
            })
            .collect()
    };
    let observed: Vec<Vec<(u64, u64)>> = per_node
        .iter()
        .map(|s| clip(presence_intervals(s, false)))
        .collect();
    let widened: Vec<Vec<(u64, u64)>> = per_node
        .iter()
        .map(|s| clip(presence_intervals(s, true)))
        .collect();
    let (observed_us, any) = overlap_at_least_two(&observed);
    let (upper_us, _) = overlap_at_least_two(&widened);
    DoubleOwnership {
        observed_ms: observed_us as f64 / 1000.0,
        upper_ms: upper_us as f64 / 1000.0,
        any,
    }
}

/// Measure of the time covered by ≥ 2 of the nodes' closed intervals, and
/// whether any point is covered by ≥ 2 at all.
fn overlap_at_least_two(per_node: &[Vec<(u64, u64)>]) -> (u64, bool) {
    // (time, kind): kind 0 = start, 1 = end, so at equal times starts come first
    // and touching closed intervals count as overlapping.
    let mut events: Vec<(u64, u8)> = Vec::new();
    for v in per_node {
        for &(a, b) in v {
            events.push((a, 0));
            events.push((b, 1));
        }
    }
    events.sort_unstable();
    let mut depth = 0i32;
    let mut total = 0u64;
    let mut any = false;
    let mut since = 0u64;
    for (t, kind) in events {
        if kind == 0 {
            depth += 1;
            if depth == 2 {
                since = t;
                any = true;
            }
        } else {
            if depth == 2 {
                total += t - since;
            }
            depth -= 1;
        }
    }
    (total, any)
}

/// The node that answered the last successful probe started before `t_us`.
pub fn served_before(probes: &[ProbeRecord], t_us: u64) -> Option<String> {
    probes
        .iter()
        .rev()
        .filter(|p| p.start_us < t_us)
        .find_map(|p| p.served())
        .map(str::to_string)
}

/// First successful probe started at or after `t_us` answered by a node other
/// than `not`: (its start, the node).
pub fn first_served_by_other(
    probes: &[ProbeRecord],
    t_us: u64,
    not: &str,
) -> Option<(u64, String)> {
    probes.iter().filter(|p| p.start_us >= t_us).find_map(|p| {
        p.served()
            .filter(|s| *s != not)
            .map(|s| (p.start_us, s.to_string()))
    })
}

/// How often the serving node changed among successful probes started at or after `t_us`.
pub fn serving_changes(probes: &[ProbeRecord], t_us: u64) -> usize {
    let mut last: Option<&str> = None;
    let mut n = 0;
    for s in probes
        .iter()
        .filter(|p| p.start_us >= t_us)
        .filter_map(|p| p.served())
    {
        if last.is_some_and(|l| l != s) {
            n += 1;
        }
        last = Some(s);
    }
    n
}

/// Nodes (1-based) whose last sample saw the VIP.
pub fn holders_at_end(per_node: &[Vec<AddrSample>]) -> Vec<usize> {
    per_node
        .iter()
        .enumerate()
        .filter(|(_, s)| s.last().is_some_and(|s| s.present))
        .map(|(i, _)| i + 1)
        .collect()
}

/// The node that answered the last successful probe.
pub fn served_last(probes: &[ProbeRecord]) -> Option<String> {
    probes
        .iter()
        .rev()
        .find_map(|p| p.served())
        .map(str::to_string)
}

/// If, over the last `window_us` of the record (ending at `now_us`), every
/// finished probe succeeded from the same node, there were at least
/// `min_probes` of them, and exactly that node's namespace held the VIP in
/// every sample, returns that node's 1-based index.
pub fn stable_owner(
    obs: &Observations,
    now_us: u64,
    window_us: u64,
    min_probes: usize,
) -> Option<usize> {
    let from = now_us.saturating_sub(window_us);
    let mut served: Option<&str> = None;
    let mut n = 0;
    for p in obs
        .probes
        .iter()
        .filter(|p| p.start_us >= from && p.end_us <= now_us)
    {
        let s = p.served()?;
        if served.is_some_and(|prev| prev != s) {
            return None;
        }
        served = Some(s);
        n += 1;
    }
    if n < min_probes {
        return None;
    }
    let owner = crate::netns::node_index(served?)?;
    for (idx, samples) in obs.samples.iter().enumerate() {
        let mut window = samples
            .iter()
            .filter(|s| s.ts_us >= from && s.ts_us <= now_us)
            .peekable();
        window.peek()?;
        let want = idx + 1 == owner;
        if !window.all(|s| s.present == want) {
            return None;
        }
    }
    Some(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: u64, n: &str) -> ProbeRecord {
        ProbeRecord {
            start_us: t * 1000,
            end_us: t * 1000 + 1,
            outcome: Ok(n.into()),
        }
    }
    fn err(t: u64) -> ProbeRecord {
        ProbeRecord {
            start_us: t * 1000,
            end_us: t * 1000 + 100,
            outcome: Err("x".into()),
        }
    }
    fn samples(present_ms: &[(u64, bool)]) -> Vec<AddrSample> {
        present_ms
            .iter()
            .map(|&(t, p)| AddrSample {
                ts_us: t * 1000,
                present: p,
            })
            .collect()
    }

    #[test]
    fn downtime_is_longest_failed_run_after_fault() {
        let probes = vec![
            err(0), // before the fault: ignored
            ok(10, "n1"),
            err(20),
            ok(30, "n1"),
            err(40),
            err(50),
            err(60),
            ok(70, "n2"),
        ];
        let d = downtime(&probes, 5_000);
        assert_eq!(d.longest_ms, 30.0);
        assert_eq!(d.from_us, Some(40_000));
        assert!(d.recovered);
        assert_eq!(d.failed_probes, 4);
    }

    #[test]
    fn downtime_unrecovered_runs_to_the_end() {
        let probes = vec![ok(0, "n1"), err(10), err(20), err(30)];
        let d = downtime(&probes, 0);
        assert!(!d.recovered);
        assert_eq!(d.longest_ms, 30.0);
    }

    #[test]
    fn no_failures_no_downtime() {
        let d = downtime(&[ok(0, "n1"), ok(10, "n2")], 0);
        assert_eq!(d.longest_ms, 0.0);
        assert_eq!(d.from_us, None);
        assert!(d.recovered);
    }

    #[test]
    fn clean_handover_has_no_observed_double_ownership() {
        let a = samples(&[(0, true), (10, true), (20, false), (30, false)]);
        let b = samples(&[(5, false), (15, false), (25, true), (35, true)]);
        let d = double_ownership(&[a, b], 0, 100_000);
        assert_eq!(d.observed_ms, 0.0);
        assert!(!d.any);
        // Widened: a may have held until 20, b may have held from 15.
        assert_eq!(d.upper_ms, 5.0);
    }

    #[test]
    fn overlapping_holders_are_counted_once_per_instant() {
        let a = samples(&[(0, true), (100, true), (110, false)]);
        let b = samples(&[(0, false), (40, true), (200, true)]);
        let c = samples(&[(0, false), (50, true), (60, true), (70, false)]);
        let d = double_ownership(&[a, b, c], 0, 1_000_000);
        // ≥2 holders from 40 to 100.
        assert_eq!(d.observed_ms, 60.0);
        assert!(d.any);
    }

    #[test]
    fn touching_single_samples_count_as_any() {
        let a = samples(&[(0, true), (10, false)]);
        let b = samples(&[(0, true), (10, false)]);
        let d = double_ownership(&[a, b], 0, 1_000_000);
        assert!(d.any);
        assert_eq!(d.observed_ms, 0.0);
    }

    #[test]
    fn holders_at_end_reads_last_samples() {
        let a = samples(&[(0, true), (10, true)]);
        let b = samples(&[(0, true), (10, false)]);
        let c = samples(&[(0, false), (10, true)]);
        assert_eq!(holders_at_end(&[a, b, c]), vec![1, 3]);
    }

    #[test]
    fn who_served() {
        let probes = vec![
            ok(0, "n1"),
            err(10),
            ok(20, "n1"),
            ok(30, "n2"),
            ok(40, "n3"),
        ];
        assert_eq!(served_before(&probes, 15_000).as_deref(), Some("n1"));
        assert_eq!(
            first_served_by_other(&probes, 15_000, "n1"),
            Some((30_000, "n2".into()))
        );
        assert_eq!(served_last(&probes).as_deref(), Some("n3"));
        assert_eq!(serving_changes(&probes, 0), 2);
        assert_eq!(serving_changes(&probes, 35_000), 0);
    }

    #[test]
    fn stable_owner_needs_agreement() {
        let mut obs = Observations {
            probes: (0..100).map(|t| ok(t * 10, "n2")).collect(),
            samples: vec![
                samples(&(0..100).map(|t| (t * 10, false)).collect::<Vec<_>>()),
                samples(&(0..100).map(|t| (t * 10, true)).collect::<Vec<_>>()),
            ],
            sample_errors: vec![],
        };
        assert_eq!(stable_owner(&obs, 1_000_000, 500_000, 20), Some(2));
        obs.samples[0][90].present = true;
        assert_eq!(stable_owner(&obs, 1_000_000, 500_000, 20), None);
        obs.samples[0][90].present = false;
        obs.probes[95] = err(950);
        assert_eq!(stable_owner(&obs, 1_000_000, 500_000, 20), None);
    }
}
