//! Host pressures for the stress scenarios: loads that run beside the cluster
//! while the client probes the VIP — what hosting servers do every night (a
//! backup or a VM snapshot flushing gigabytes, a database fsyncing, a busy CPU,
//! a memory-hungry job).
//!
//! | pressure | what runs | how it is bounded |
//! |---|---|---|
//! | `disk-flush` | a child process: `sh` repeating `dd if=/dev/zero of=FILE bs=1M count=N conv=fsync` and deleting FILE between rounds | `timeout -s KILL` around it; the whole process group is SIGKILLed and reaped at stop |
//! | `small-fsyncs` | threads appending 4 KiB and calling `fdatasync` after each write (a database's log), each file cut back to 0 every 64 MiB | a stop flag and a hard deadline checked after every write |
//! | `cpu` | busy-loop threads, [`PressureOptions::cpu_per_core`] per core, normal priority | a stop flag and a deadline checked about every millisecond |
//! | `memory` | one thread holding anonymous memory and re-touching every page, one thread cycling a sparse file through the page cache | as `cpu`; the memory is freed when the thread ends |
//!
//! Every file lives in the directory given to [`start`] (the lab's own scratch
//! directory, on the filesystem holding the members' state), and is deleted at
//! stop. The deadline given to [`start`] is a hard bound: the threads end with
//! the process in any case, and the `dd` child is killed by `timeout` even if
//! the harness itself dies before it can stop it.
//!
//! Memory is the one pressure that could hurt the machine, so it is bounded
//! twice: it never holds more than [`PressureOptions::memory_cap_mib`], and it
//! keeps MemAvailable (from /proc/meminfo) above
//! [`PressureOptions::memory_margin_mib`] at every step, giving memory back
//! when something else on the host needs it. There is no swap on the machines
//! this runs on, so the anonymous memory cannot push the daemons out; what it
//! does is make the kernel allocate, zero and reclaim at a high rate. The page
//! cache file is sparse: reading it fills the page cache with (zero) pages
//! without disk I/O, and `POSIX_FADV_DONTNEED` drops them again, so the memory
//! pressure causes page-cache turnover without turning into a disk pressure.

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PAGE: usize = 4096;
/// Size of one small-fsync write.
const SMALL_WRITE: usize = 4096;
/// A small-fsync file is cut back to 0 bytes when it reaches this size.
const SMALL_FILE_MAX: u64 = 64 * MIB;
/// Anonymous memory is taken and given back in chunks of this size.
const MEM_CHUNK: usize = 64 << 20;
/// How long a stopped child process group may take to disappear (a `dd` killed
/// in the middle of an fsync only dies when the fsync returns).
const REAP_TIMEOUT: Duration = Duration::from_secs(60);

/// A load on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pressure {
    /// `dd … conv=fsync` of [`PressureOptions::dd_mib`] MiB, over and over.
    DiskFlush,
    /// 4 KiB writes, each followed by `fdatasync`.
    SmallFsyncs,
    /// [`PressureOptions::cpu_per_core`] busy loops per core.
    Cpu,
    /// Anonymous memory held and re-touched, plus page-cache turnover.
    Memory,
}

impl Pressure {
    pub const ALL: [Pressure; 4] = [
        Pressure::DiskFlush,
        Pressure::SmallFsyncs,
        Pressure::Cpu,
        Pressure::Memory,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pressure::DiskFlush => "disk-flush",
            Pressure::SmallFsyncs => "small-fsyncs",
            Pressure::Cpu => "cpu",
            Pressure::Memory => "memory",
        }
    }

    pub fn from_name(s: &str) -> Option<Pressure> {
        Pressure::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Sizes of the loads. [`Default`] gives the values the tests and the benchmark use.
#[derive(Clone, Debug, PartialEq)]
pub struct PressureOptions {
    /// `disk-flush`: MiB written and fsynced per `dd` round. 3000 (the issue's
    /// figure) takes about 8.5 s per round on the 2-core development VM.
    pub dd_mib: u64,
    /// `small-fsyncs`: writer threads.
    pub fsync_writers: usize,
    /// `cpu`: busy threads per core (cores as the scheduler lets this process use).
    pub cpu_per_core: usize,
    /// `memory`: most anonymous memory held, MiB.
    pub memory_cap_mib: u64,
    /// `memory`: MemAvailable never pushed below this, MiB.
    pub memory_margin_mib: u64,
    /// `memory`: size of the sparse file cycled through the page cache, MiB.
    pub cache_file_mib: u64,
}

impl Default for PressureOptions {
    fn default() -> Self {
        PressureOptions {
            dd_mib: 3000,
            fsync_writers: 2,
            cpu_per_core: 4,
            memory_cap_mib: 4096,
            memory_margin_mib: 1024,
            cache_file_mib: 1024,
        }
    }
}

/// What a pressure did while it ran: evidence that the load was real.
#[derive(Clone, Debug, Serialize)]
pub struct PressureReport {
    pub pressure: Pressure,
    /// Start to stop.
    pub seconds: f64,
    /// Completed units of work: `dd` rounds, fdatasync calls, busy-loop
    /// blocks of 10^6 iterations, or passes over the held memory.
    pub ops: u64,
    /// Mean and longest unit (a whole `dd` round including its fsync; one
    /// fdatasync), when timing one means something.
    pub mean_op_ms: Option<f64>,
    pub max_op_ms: Option<f64>,
    /// Bytes the disk pressures wrote (including a `dd` round cut short at stop).
    pub bytes_written: u64,
    /// One line for people.
    pub summary: String,
    /// Errors the load itself met (first few).
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    /// memory: most bytes held at once; page-cache cycles.
    peak_bytes: AtomicU64,
    cycles: AtomicU64,
    /// memory: chunks given back because MemAvailable fell below the margin.
    released: AtomicU64,
    /// disk-flush: size of the file of the round cut short at stop.
    unfinished_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl PressureReport {
    /// Whether the load did anything at all (a run without it measures nothing).
    pub fn did_work(&self) -> bool {
        self.ops > 0 || self.bytes_written > 0
    }
}

impl Stats {
    fn op(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 10 {
            v.push(e);
        }
    }
}

/// A pressure being applied. Stop it with [`Running::stop`] to get its
/// report; dropping it stops it too (threads joined, children killed and
/// reaped, files removed).
pub struct Running {
    pressure: Pressure,
    dir: PathBuf,
    started: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Leaders of their own process groups.
    children: Vec<Child>,
    stats: Arc<Stats>,
    /// `disk-flush`: where `dd` reports each round, and the round's size.
    dd_log: Option<PathBuf>,
    dd_mib: u64,
    /// Extra words for the summary, fixed at start.
    setup: String,
    stopped: bool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("pressure", &self.pressure)
            .field("threads", &self.threads.len())
            .field("children", &self.children.len())
            .finish()
    }
}

/// Starts `pressure` with its files in `dir` (created if missing). It ends
/// by itself after `bound` at the latest.
pub fn start(
    pressure: Pressure,
    dir: &Path,
    opts: &PressureOptions,
    bound: Duration,
) -> Result<Running> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut run = Running {
        pressure,
        dir: dir.to_path_buf(),
        started: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        children: Vec::new(),
        stats: Arc::new(Stats::default()),
        dd_log: None,
        dd_mib: 0,
        setup: String::new(),
        stopped: false,
    };
    let deadline = run.started + bound;
    // On an early return `run` is dropped, which stops whatever already started.
    match pressure {
        Pressure::DiskFlush => start_disk_flush(&mut run, opts, bound)?,
        Pressure::SmallFsyncs => {
            let n = opts.fsync_writers.max(1);
            for i in 0..n {
                let path = dir.join(format!("fsync-{i}.dat"));
                let (stop, stats) = (run.stop.clone(), run.stats.clone());
                run.threads.push(spawn_named(format!("fsync-{i}"), move || {
                    small_fsync_loop(&path, &stop, deadline, &stats)
                })?);
            }
            run.setup = format!("{n} writers");
        }
        Pressure::Cpu => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let n = cores * opts.cpu_per_core.max(1);
            for i in 0..n {
                let (stop, stats) = (run.stop.clone(), run.stats.clone());
                run.threads.push(spawn_named(format!("busy-{i}"), move || {
                    busy_loop(i as u64, &stop, deadline, &stats)
                })?);
            }
            run.setup = format!("{n} busy threads on {cores} cores");
        }
        Pressure::Memory => {
            let (cap, margin) = (opts.memory_cap_mib * MIB, opts.memory_margin_mib * MIB);
            let (stop, stats) = (run.stop.clone(), run.stats.clone());
            run.threads.push(spawn_named("mem-hold".into(), move || {
                hold_memory(cap, margin, &stop, deadline, &stats)
            })?);
            let path = dir.join("cache.dat");
            let size = opts.cache_file_mib * MIB;
            let (stop, stats) = (run.stop.clone(), run.stats.clone());
            run.threads.push(spawn_named("mem-cache".into(), move || {
                cycle_page_cache(&path, size, &stop, deadline, &stats)
            })?);
            run.setup = format!(
                "cap {} MiB, MemAvailable kept above {} MiB, {} MiB page-cache file",
                opts.memory_cap_mib, opts.memory_margin_mib, opts.cache_file_mib
            );
        }
    }
    Ok(run)
}

fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .with_context(|| format!("starting pressure thread {name}"))
}

impl Running {
    pub fn pressure(&self) -> Pressure {
        self.pressure
    }

    /// Stops the load, waits for every thread and child to end, removes its
    /// files, and reports what it did.
    pub fn stop(mut self) -> Result<PressureReport> {
        let reaped = self.halt();
        let seconds = self.started.elapsed().as_secs_f64();
        let report = self.report(seconds);
        reaped.map(|()| report)
    }

    /// Idempotent. Errors only when a child could not be reaped.
    fn halt(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.stop.store(true, Ordering::SeqCst);
        if self.dd_log.is_some() {
            let len = fs::metadata(self.dir.join(FLUSH_FILE)).map_or(0, |m| m.len());
            self.stats.unfinished_bytes.store(len, Ordering::Relaxed);
        }
        let mut result = Ok(());
        for mut child in self.children.drain(..) {
            if let Err(e) = stop_child_group(&mut child) {
                result = Err(e);
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Only our own files: the directory holds nothing else of value.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "dat") {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        result
    }

    fn report(&self, seconds: f64) -> PressureReport {
        let s = &self.stats;
        let mut errors = s.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut bytes_written = 0;
        let (ops, mean, max, summary) = match self.pressure {
            Pressure::DiskFlush => {
                let text = self
                    .dd_log
                    .as_ref()
                    .and_then(|p| fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let rounds = parse_dd_seconds(&text);
                for line in text.lines().filter(|l| l.starts_with("dd:")).take(5) {
                    errors.push(line.to_string());
                }
                let n = rounds.len();
                let unfinished = s.unfinished_bytes.load(Ordering::Relaxed);
                bytes_written = n as u64 * self.dd_mib * MIB + unfinished;
                let mean = (n > 0).then(|| rounds.iter().sum::<f64>() / n as f64 * 1000.0);
                let max = rounds.iter().copied().reduce(f64::max).map(|m| m * 1000.0);
                let summary = format!(
                    "{n} dd rounds of {} ({}) completed in {seconds:.0} s{}, {} MiB of a round cut short at stop",
                    self.setup,
                    "bs=1M conv=fsync",
                    mean.map_or(String::new(), |m| format!(
                        ", {:.1} s per round (max {:.1} s)",
                        m / 1000.0,
                        max.unwrap_or(m) / 1000.0
                    )),
                    unfinished / MIB
                );
                (n as u64, mean, max, summary)
            }
            Pressure::SmallFsyncs => {
                let ops = s.ops.load(Ordering::Relaxed);
                bytes_written = ops * SMALL_WRITE as u64;
                let total = s.total_us.load(Ordering::Relaxed) as f64 / 1000.0;
                let mean = (ops > 0).then(|| total / ops as f64);
                let max = (ops > 0).then(|| s.max_us.load(Ordering::Relaxed) as f64 / 1000.0);
                let summary = format!(
                    "{ops} fdatasync calls after 4 KiB writes ({}, {:.0}/s), mean {:.2} ms, max {:.0} ms",
                    self.setup,
                    ops as f64 / seconds.max(1e-9),
                    mean.unwrap_or(0.0),
                    max.unwrap_or(0.0)
                );
                (ops, mean, max, summary)
            }
            Pressure::Cpu => {
                let ops = s.ops.load(Ordering::Relaxed);
                (
                    ops,
                    None,
                    None,
                    format!("{} ({ops} blocks of 10^6 iterations)", self.setup),
                )
            }
            Pressure::Memory => {
                let ops = s.ops.load(Ordering::Relaxed);
                let peak = s.peak_bytes.load(Ordering::Relaxed) / MIB;
                let cycles = s.cycles.load(Ordering::Relaxed);
                let released = s.released.load(Ordering::Relaxed) * (MEM_CHUNK as u64) / MIB;
                let mean = (ops > 0)
                    .then(|| s.total_us.load(Ordering::Relaxed) as f64 / 1000.0 / ops as f64);
                let max = (ops > 0).then(|| s.max_us.load(Ordering::Relaxed) as f64 / 1000.0);
                (
                    ops,
                    mean,
                    max,
                    format!(
                        "held up to {peak} MiB anonymous ({ops} re-touch passes, mean {:.0} ms, max {:.0} ms; \
                         {released} MiB given back to keep the margin), {cycles} page-cache cycles ({})",
                        mean.unwrap_or(0.0),
                        max.unwrap_or(0.0),
                        self.setup
                    ),
                )
            }
        };
        PressureReport {
            pressure: self.pressure,
            seconds,
            ops,
            mean_op_ms: mean,
            max_op_ms: max,
            bytes_written,
            summary,
            errors,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("pressure {}: {e:#}", self.pressure.name());
        }
    }
}

// ---------------------------------------------------------------------------
// disk-flush

/// The file `dd` writes, in the pressure's directory.
const FLUSH_FILE: &str = "flush.dat";

/// The loop `dd` runs in. File and size come in as positional parameters:
/// nothing is interpolated into the script.
const DD_SCRIPT: &str =
    r#"while :; do dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync; rm -f "$1"; done"#;

fn start_disk_flush(run: &mut Running, opts: &PressureOptions, bound: Duration) -> Result<()> {
    let timeout = crate::find_program("timeout")
        .ok_or_else(|| anyhow!("coreutils `timeout` not found on PATH"))?;
    let file = run.dir.join(FLUSH_FILE);
    let log_path = run.dir.join("dd.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let child = Command::new(timeout)
        .args(["-s", "KILL", &format!("{}s", bound.as_secs().max(1))])
        .args(["sh", "-c", DD_SCRIPT, "sh"])
        .arg(&file)
        .arg(opts.dd_mib.max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the dd writer")?;
    run.children.push(child);
    run.dd_log = Some(log_path);
    run.dd_mib = opts.dd_mib.max(1);
    run.setup = format!("{} MiB", opts.dd_mib.max(1));
    Ok(())
}

/// SIGKILLs the child's whole process group, reaps the child, and waits until
/// no process of the group is left.
fn stop_child_group(child: &mut Child) -> Result<()> {
    let pgid = i32::try_from(child.id()).map_err(|_| anyhow!("pid {} out of range", child.id()))?;
    if pgid <= 1 {
        bail!("refusing to signal process group {pgid}");
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    child
        .wait()
        .with_context(|| format!("reaping pressure process {pgid}"))?;
    // Grandchildren (sh, dd) are reparented when `timeout` dies; a dd in the
    // middle of an fsync leaves only when the fsync returns.
    let t0 = Instant::now();
    while killpg(Pid::from_raw(pgid), None::<Signal>).is_ok() {
        if t0.elapsed() > REAP_TIMEOUT {
            bail!(
                "pressure process group {pgid} still alive {} s after SIGKILL",
                REAP_TIMEOUT.as_secs()
            );
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Seconds per `dd` round, from dd's reports ("… copied, 8.54 s, 368 MB/s").
pub fn parse_dd_seconds(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.split_once(" copied, ")?.1;
            rest.split_once(" s")?.0.trim().parse().ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------
// small-fsyncs

fn small_fsync_loop(path: &Path, stop: &AtomicBool, deadline: Instant, stats: &Stats) {
    let buf = [0x5au8; SMALL_WRITE];
    let mut file: Option<File> = None;
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let f = match &mut file {
            Some(f) => f,
            None => match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => file.insert(f),
                Err(e) => {
                    stats.error(format!("{}: {e}", path.display()));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let r = f.write_all(&buf).and_then(|()| f.sync_data());
        match r {
            Ok(()) => {
                stats.op(t0.elapsed());
                written += SMALL_WRITE as u64;
                if written >= SMALL_FILE_MAX {
                    // Appends continue at the (new) end of an O_APPEND file.
                    if let Err(e) = f.set_len(0) {
                        stats.error(format!("truncating {}: {e}", path.display()));
                    }
                    written = 0;
                }
            }
            Err(e) => {
                stats.error(format!("{}: {e}", path.display()));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// cpu

fn busy_loop(seed: u64, stop: &AtomicBool, deadline: Instant, stats: &Stats) {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for _ in 0..1_000_000 {
            x = std::hint::black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
        stats.ops.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// memory

/// MemAvailable from /proc/meminfo, in bytes.
pub fn mem_available() -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    parse_mem_available(&text).ok_or_else(|| anyhow!("/proc/meminfo has no MemAvailable line"))
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many more chunks may be taken (positive) or must be given back
/// (negative), holding `held` bytes with `available` bytes still available.
fn chunk_delta(held: u64, available: u64, cap: u64, margin: u64) -> i64 {
    let chunk = MEM_CHUNK as u64;
    if available < margin {
        // Give back at least one chunk, more if far below.
        let short = margin - available;
        return -i64::try_from(short.div_ceil(chunk).max(1)).unwrap_or(i64::MAX);
    }
    if held + chunk <= cap && available >= margin + chunk {
        1
    } else {
        0
    }
}

fn hold_memory(cap: u64, margin: u64, stop: &AtomicBool, deadline: Instant, stats: &Stats) {
    let mut chunks: Vec<Box<[u8]>> = Vec::new();
    let mut pass: u8 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Grow or shrink one step, re-reading MemAvailable every time.
        let available = match mem_available() {
            Ok(a) => a,
            Err(e) => {
                stats.error(format!("{e:#}"));
                // Without the figure, hold nothing.
                chunks.clear();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let held = (chunks.len() * MEM_CHUNK) as u64;
        match chunk_delta(held, available, cap, margin) {
            d if d > 0 => {
                let mut c = vec![0u8; MEM_CHUNK].into_boxed_slice();
                touch(&mut c, 1);
                chunks.push(c);
                let now = (chunks.len() * MEM_CHUNK) as u64;
                stats.peak_bytes.fetch_max(now, Ordering::Relaxed);
                // Keep growing without a full pass in between.
                continue;
            }
            d if d < 0 => {
                let give = usize::try_from(d.unsigned_abs()).unwrap_or(usize::MAX);
                let keep = chunks.len().saturating_sub(give);
                stats
                    .released
                    .fetch_add((chunks.len() - keep) as u64, Ordering::Relaxed);
                chunks.truncate(keep);
            }
            _ => {}
        }
        // One pass over everything held, a check of the stop flag per chunk.
        pass = pass.wrapping_add(1);
        let t0 = Instant::now();
        for c in chunks.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            touch(c, pass);
        }
        stats.op(t0.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes one byte per page.
fn touch(buf: &mut [u8], v: u8) {
    for i in (0..buf.len()).step_by(PAGE) {
        buf[i] = v;
    }
    std::hint::black_box(&buf);
}

fn cycle_page_cache(path: &Path, size: u64, stop: &AtomicBool, deadline: Instant, stats: &Stats) {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size).map(|()| f));
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            stats.error(format!("{}: {e}", path.display()));
            return;
        }
    };
    let mut buf = vec![0u8; MIB as usize];
    'cycle: while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Err(e) = std::io::Seek::rewind(&mut file) {
            stats.error(format!("{}: {e}", path.display()));
            return;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'cycle;
            }
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    stats.error(format!("{}: {e}", path.display()));
                    return;
                }
            }
        }
        if let Err(e) = posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        ) {
            stats.error(format!("fadvise {}: {e}", path.display()));
        }
        stats.cycles.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_names_round_trip() {
        for p in Pressure::ALL {
            assert_eq!(Pressure::from_name(p.name()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.name())
            );
        }
    }

    #[test]
    fn dd_reports_are_parsed() {
        let text = "3000+0 records in\n3000+0 records out\n\
                    3145728000 bytes (3.1 GB, 2.9 GiB) copied, 8.54183 s, 368 MB/s\n\
                    dd: error writing '/x': No space left on device\n\
                    1048576 bytes (1.0 MB, 1.0 MiB) copied, 0.5 s, 2.1 MB/s\n";
        assert_eq!(parse_dd_seconds(text), vec![8.54183, 0.5]);
        assert!(parse_dd_seconds("").is_empty());
    }

    #[test]
    fn mem_available_is_read() {
        let m =
            "MemTotal:       24683772 kB\nMemFree:        24335916 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(m), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(mem_available().unwrap() > 0);
    }

    #[test]
    fn memory_stays_within_cap_and_margin() {
        let c = MEM_CHUNK as u64;
        let (cap, margin) = (4 * c, 2 * c);
        // Plenty available: grow up to the cap, then hold.
        assert_eq!(chunk_delta(0, 100 * c, cap, margin), 1);
        assert_eq!(chunk_delta(3 * c, 100 * c, cap, margin), 1);
        assert_eq!(chunk_delta(4 * c, 100 * c, cap, margin), 0);
        // Taking one more would cross the margin: hold.
        assert_eq!(chunk_delta(0, 2 * c + c / 2, cap, margin), 0);
        // Below the margin: give back enough to get above it.
        assert_eq!(chunk_delta(4 * c, 2 * c - 1, cap, margin), -1);
        assert_eq!(chunk_delta(4 * c, c / 2, cap, margin), -2);
    }

    #[test]
    fn small_pressures_start_and_stop_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PressureOptions {
            memory_cap_mib: 128,
            cache_file_mib: 4,
            fsync_writers: 1,
            cpu_per_core: 1,
            ..PressureOptions::default()
        };
        for p in [Pressure::SmallFsyncs, Pressure::Cpu, Pressure::Memory] {
            let run = start(p, dir.path(), &opts, Duration::from_secs(30)).unwrap();
            // Memory needs ~50 ms per 64 MiB chunk before its first pass.
            std::thread::sleep(Duration::from_millis(1000));
            let r = run.stop().unwrap();
            assert!(r.ops > 0, "{p:?} did nothing: {r:?}");
            assert!(r.errors.is_empty(), "{r:?}");
        }
        // Files are removed at stop.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn disk_flush_child_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PressureOptions {
            dd_mib: 4,
            ..PressureOptions::default()
        };
        let run = start(
            Pressure::DiskFlush,
            dir.path(),
            &opts,
            Duration::from_secs(30),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let pgid = i32::try_from(run.children[0].id()).unwrap();
        let r = run.stop().unwrap();
        assert!(r.ops >= 1, "{r:?}");
        assert!(r.did_work() && r.bytes_written >= 4 * MIB, "{r:?}");
        assert!(killpg(Pid::from_raw(pgid), None::<Signal>).is_err());
        assert!(!dir.path().join("flush.dat").exists());
    }

    #[test]
    fn disk_flush_ends_by_itself_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PressureOptions {
            dd_mib: 1,
            ..PressureOptions::default()
        };
        let mut run = start(
            Pressure::DiskFlush,
            dir.path(),
            &opts,
            Duration::from_secs(1),
        )
        .unwrap();
        let status = run.children[0].wait().unwrap();
        assert!(!status.success());
        drop(run);
    }
}
