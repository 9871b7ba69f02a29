//! The VIP guard: a small process, in its own session, that undoes a group's
//! resources when the daemon can no longer vouch for them.
//!
//! The daemon holds a group only while its lease lasts. If the daemon is killed
//! (SIGKILL to its whole process group) or stopped past its lease (SIGSTOP, a
//! hung VM), nothing in the daemon can remove the floating address any more, and
//! another node will soon take it over: two owners. The guard closes that gap.
//! The daemon streams newline-delimited JSON [`GuardMessage`]s into the guard's
//! stdin; the guard undoes a group (resources in reverse order: addresses
//! removed, exec `stop` commands run) when that group's lease deadline passes on
//! CLOCK_MONOTONIC, and undoes every group at once when its input reaches EOF
//! (the daemon died), its parent process changes, or it receives SIGTERM (as
//! systemd sends to the rest of a unit whose main process died).
//!
//! One guard per node holds the node's resources: every guard takes an exclusive
//! lock on a file in the state directory before it says it is ready, and keeps
//! it until it exits. A daemon restarted right after a crash starts a new guard
//! at once; that guard is ready only once the old one has finished undoing (its
//! stop commands may take a while), and the daemon touches no resource before.
//! So two controllers never drive one resource, and this does not depend on
//! timing: the kernel drops the lock when the old guard exits.
//!
//! Daemon side: [`GuardClient`]. Guard side: [`run_guard_process`], the body of
//! the `uphold guard` subcommand, around the loop [`run_guard`].

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg, OFlag};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde::{Deserialize, Serialize};
use uphold_core::{EmergencyStop, ResourceSpec};

use crate::clock::monotonic_now_ms;
use crate::error::OsError;
use crate::exec;
use crate::process_id::{KillOutcome, ProcessId};
use crate::vip::{Netlink, RemoveOutcome};

/// One message from the daemon to its guard, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuardMessage {
    /// The daemon holds `group` until `until_monotonic_ms` (CLOCK_MONOTONIC,
    /// milliseconds, see [`crate::monotonic_now_ms`]). Replaces any earlier hold
    /// of the group. `resources` are in start order; they are undone in reverse.
    Hold {
        group: String,
        until_monotonic_ms: u64,
        resources: Vec<ResourceSpec>,
        /// Environment for the exec `stop` commands (UPHOLD_NODE, UPHOLD_GROUP),
        /// the same the daemon gives them.
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    /// The daemon stopped the group itself; nothing to undo.
    Release { group: String },
    /// A command of `group` (start, stop or monitor) runs as `process`. If the
    /// group is undone while it still runs, its process group is killed first:
    /// a start of a dead daemon must not run beside the guard's stop.
    CommandStarted { group: String, process: ProcessId },
    /// That command is over.
    CommandEnded { process: ProcessId },
    /// The daemon is stopping cleanly. Groups still held are undone now, then
    /// the guard exits.
    Shutdown,
}

/// Log prefix of every guard line, so its actions stand out in the daemon's
/// stderr (which the guard shares).
const PREFIX: &str = "uphold-guard:";

/// The line a guard writes on its stdout once it holds the node's lock.
const READY_LINE: &str = "uphold-guard-ready";

/// Writes one line to stderr, ignoring failures: the guard outlives the
/// daemon, and whatever read their shared stderr (a pipe to a logger) may be
/// gone; `eprintln!` would then panic before the undo ran.
#[cfg(not(test))]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}
// In unit tests the guard runs inside the test harness, whose output capture
// only sees the print macros.
#[cfg(test)]
macro_rules! say {
    ($($arg:tt)*) => {{
        eprintln!($($arg)*);
    }};
}

/// Set by the SIGTERM handler of [`run_guard_process`]. Under systemd, a
/// daemon that dies makes systemd SIGTERM the rest of the unit's cgroup, the
/// guard included; it must undo before it goes rather than just vanish.
static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_signal: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

/// How often the guard checks that its parent is still the daemon, in case the
/// daemon died without its pipe reaching EOF (another process holding the
/// write end).
const PARENT_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The same check while the guard holds nothing: there is nothing to undo, so
/// it only bounds how long a guard outlives its daemon; checking rarely keeps an
/// idle member's guard asleep.
const PARENT_CHECK_IDLE_INTERVAL: Duration = Duration::from_secs(5);

/// A longer line is not a message the daemon sends; it is skipped.
const MAX_LINE_BYTES: u64 = 4 * 1024 * 1024;

/// Messages the daemon could not hand over because the guard is not reading;
/// beyond this, new messages are dropped (the guard then undoes early, which
/// is the safe direction).
const MAX_PENDING_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------- daemon side

/// The daemon's handle on its guard process.
///
/// Dropping it closes the guard's input, which makes the guard undo every held
/// group and exit: exactly what should happen when the daemon goes away.
/// Writing relies on SIGPIPE being ignored (the Rust runtime's default), so a
/// dead guard is reported as [`OsError::GuardGone`] instead of killing the
/// daemon.
pub struct GuardClient {
    child: Child,
    writer: Arc<Mutex<Writer>>,
    stdout: Option<ChildStdout>,
}

/// The guard's input, shared by the daemon's event loop (holds, releases) and
/// its command tasks ([`CommandLedger`]); one lock keeps every line whole.
struct Writer {
    stdin: Option<ChildStdin>,
    pending: Vec<u8>,
}

fn lock_writer(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // A panic while holding it leaves bytes, not broken invariants.
    writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The guard's announcement that it holds the node's lock; see
/// [`GuardClient::take_ready`].
pub struct GuardReady(ChildStdout);

impl std::fmt::Debug for GuardReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardReady")
    }
}

impl GuardReady {
    /// Blocks until the guard holds the node's lock (the guard of an earlier
    /// run has exited), or fails if the guard exits first.
    pub fn wait(self) -> Result<(), OsError> {
        let mut reader = BufReader::new(self.0);
        let mut line = Vec::new();
        loop {
            let read = read_line(&mut reader, &mut line)
                .map_err(|source| OsError::GuardGone { source })?;
            if read == 0 {
                return Err(OsError::GuardGone {
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the guard exited before it was ready",
                    ),
                });
            }
            if line.trim_ascii() == READY_LINE.as_bytes() {
                return Ok(());
            }
        }
    }
}

impl std::fmt::Debug for GuardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardClient")
            .field("pid", &self.child.id())
            .field("pending_bytes", &lock_writer(&self.writer).pending.len())
            .finish()
    }
}

impl GuardClient {
    /// Starts `program args...` in a new session (so signals sent to the
    /// daemon's process group or terminal do not reach it) with pipes as its
    /// stdin and stdout (which only says when it is ready); stderr is inherited.
    pub fn spawn(program: &Path, args: &[&str]) -> Result<GuardClient, OsError> {
        let spawn_error = |source: io::Error| OsError::GuardSpawn {
            program: program.to_path_buf(),
            source,
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs in the forked child before exec; it only
        // calls setsid(2), which is async-signal-safe, and builds an io::Error
        // from an errno, which does not allocate.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(|errno| io::Error::from_raw_os_error(errno as i32))
            });
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let Some(stdin) = child.stdin.take() else {
            return Err(spawn_error(io::Error::other("no stdin pipe")));
        };
        // A stopped or hung guard must not block the daemon's event loop.
        let fd = stdin.as_raw_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL)
            .map(OFlag::from_bits_truncate)
            .and_then(|flags| fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)));
        if let Err(errno) = flags {
            // The guard is already running; do not leave it behind.
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(io::Error::from(errno)));
        }
        let stdout = child.stdout.take();
        Ok(GuardClient {
            child,
            writer: Arc::new(Mutex::new(Writer {
                stdin: Some(stdin),
                pending: Vec::new(),
            })),
            stdout,
        })
    }

    /// The guard's readiness, once: wait on it (off the async workers) before
    /// starting or stopping any resource.
    pub fn take_ready(&mut self) -> Option<GuardReady> {
        self.stdout.take().map(GuardReady)
    }

    /// Process id of the guard.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// False once the guard process has exited (it is reaped here). The daemon
    /// should then release what it holds, since nothing guards it any more.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Tells the guard the daemon holds `group` until `until_monotonic_ms`.
    pub fn hold(
        &mut self,
        group: &str,
        until_monotonic_ms: u64,
        resources: &[ResourceSpec],
        env: &[(String, String)],
    ) -> Result<(), OsError> {
        self.send(&GuardMessage::Hold {
            group: group.to_string(),
            until_monotonic_ms,
            resources: resources.to_vec(),
            env: env.to_vec(),
        })
    }

    /// Tells the guard the daemon stopped `group` itself.
    pub fn release(&mut self, group: &str) -> Result<(), OsError> {
        self.send(&GuardMessage::Release {
            group: group.to_string(),
        })
    }

    /// Sends one message. [`OsError::GuardStalled`] means the guard is not
    /// reading: the message is queued and goes out with the next call, unless
    /// the queue is full, in which case it is dropped.
    pub fn send(&mut self, message: &GuardMessage) -> Result<(), OsError> {
        lock_writer(&self.writer).send(message)
    }
}

impl Writer {
    fn send(&mut self, message: &GuardMessage) -> Result<(), OsError> {
        let mut line =
            serde_json::to_vec(message).map_err(|source| OsError::GuardEncode { source })?;
        line.push(b'\n');
        if !self.flush_pending()? && self.pending.len() + line.len() > MAX_PENDING_BYTES {
            return Err(OsError::GuardStalled);
        }
        self.pending.extend_from_slice(&line);
        if self.flush_pending()? {
            Ok(())
        } else {
            Err(OsError::GuardStalled)
        }
    }

    /// Writes queued bytes; true when the queue is empty afterwards.
    fn flush_pending(&mut self) -> Result<bool, OsError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(OsError::GuardGone {
                source: io::Error::from(io::ErrorKind::BrokenPipe),
            });
        };
        while !self.pending.is_empty() {
            match stdin.write(&self.pending) {
                Ok(0) => {
                    return Err(OsError::GuardGone {
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    })
                }
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(OsError::GuardGone { source }),
            }
        }
        Ok(true)
    }
}

impl GuardClient {
    /// Tells the guard the daemon is stopping, closes its input and waits for
    /// it to exit. Blocks while the guard undoes groups still held (bounded by
    /// their stop timeouts), and indefinitely if the guard itself is stopped;
    /// from async code call it via `spawn_blocking`. Release every group first
    /// to make it return at once.
    pub fn shutdown(mut self) -> Result<(), OsError> {
        if let Err(err) = self.send(&GuardMessage::Shutdown) {
            // EOF has the same effect; the wait below reports a dead guard.
            tracing::debug!(error = %err, "could not send Shutdown to the guard");
        }
        // Closing the pipe ends the guard even if the message did not get
        // through: EOF undoes whatever is still held, just as Shutdown does.
        lock_writer(&self.writer).stdin = None;
        let status = self
            .child
            .wait()
            .map_err(|source| OsError::GuardGone { source })?;
        if status.success() {
            Ok(())
        } else {
            Err(OsError::GuardFailed { status })
        }
    }
}

/// The commands the daemon is running, told to its guard as they start and end
/// ([`GuardMessage::CommandStarted`], [`GuardMessage::CommandEnded`]). Shared by
/// every command task; [`CommandLedger::attach`] points it at a (new) guard and
/// tells that guard what is already running.
#[derive(Clone, Default)]
pub struct CommandLedger(Arc<Mutex<Ledger>>);

#[derive(Default)]
struct Ledger {
    /// Weak: dropping the [`GuardClient`] must still close the guard's input.
    writer: std::sync::Weak<Mutex<Writer>>,
    running: BTreeMap<ProcessId, String>,
}

impl std::fmt::Debug for CommandLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandLedger")
    }
}

impl CommandLedger {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reports to `guard` from now on, starting with the commands running now.
    pub fn attach(&self, guard: &GuardClient) {
        let mut ledger = self.lock();
        let writer = &guard.writer;
        for (process, group) in &ledger.running {
            let message = GuardMessage::CommandStarted {
                group: group.clone(),
                process: *process,
            };
            if let Err(e) = lock_writer(writer).send(&message) {
                tracing::warn!("guard unreachable: {e}");
            }
        }
        ledger.writer = Arc::downgrade(writer);
    }

    /// The [`exec::CommandWatch`] for the commands of `group`.
    pub fn watch(&self, group: &str) -> GroupCommands {
        GroupCommands {
            ledger: self.clone(),
            group: group.to_string(),
        }
    }

    fn record(&self, group: &str, process: ProcessId, running: bool) {
        let mut ledger = self.lock();
        let message = if running {
            ledger.running.insert(process, group.to_string());
            GuardMessage::CommandStarted {
                group: group.to_string(),
                process,
            }
        } else {
            ledger.running.remove(&process);
            GuardMessage::CommandEnded { process }
        };
        if let Some(writer) = ledger.writer.upgrade() {
            if let Err(e) = lock_writer(&writer).send(&message) {
                tracing::warn!(group, "guard unreachable: {e}");
            }
        }
    }
}

/// [`CommandLedger`]'s watch over one group's commands.
pub struct GroupCommands {
    ledger: CommandLedger,
    group: String,
}

impl exec::CommandWatch for GroupCommands {
    fn started(&self, id: ProcessId) {
        self.ledger.record(&self.group, id, true);
    }

    fn ended(&self, id: ProcessId) {
        self.ledger.record(&self.group, id, false);
    }
}

// ----------------------------------------------------------------- guard side

enum Input {
    Message(GuardMessage),
    Eof,
    Failed(io::Error),
}

/// Why a group is being undone; worded for the log line.
#[derive(Clone, Copy)]
enum Reason {
    Expired,
    DaemonGone,
    ParentChanged,
    Terminated,
    Shutdown,
}

impl Reason {
    fn describe(self, group: &str) -> String {
        match self {
            Reason::Expired => format!("lease of group {group} expired"),
            Reason::DaemonGone => {
                format!(
                    "daemon connection closed (daemon exited or died) while holding group {group}"
                )
            }
            Reason::ParentChanged => {
                format!("daemon process is gone while holding group {group}")
            }
            Reason::Terminated => {
                format!("guard received SIGTERM while the daemon held group {group}")
            }
            Reason::Shutdown => format!("daemon shut down while still holding group {group}"),
        }
    }
}

struct Hold {
    until_ms: u64,
    resources: Vec<ResourceSpec>,
    env: Vec<(String, String)>,
}

struct Guard {
    runtime: tokio::runtime::Runtime,
    netlink: Option<Netlink>,
    holds: BTreeMap<String, Hold>,
    /// Commands the daemon runs, with their group.
    commands: BTreeMap<ProcessId, String>,
}

/// How long the guard waits for a killed command of the daemon to exit before
/// it runs the stop commands anyway (a process stuck in the kernel does not
/// die of SIGKILL until it leaves it).
const COMMAND_KILL_WAIT: Duration = Duration::from_secs(2);

impl Guard {
    fn apply(&mut self, message: GuardMessage) {
        match message {
            GuardMessage::Hold {
                group,
                until_monotonic_ms,
                resources,
                env,
            } => {
                let changed = self
                    .holds
                    .get(&group)
                    .is_none_or(|old| old.resources != resources);
                if changed {
                    let labels: Vec<String> = resources.iter().map(ResourceSpec::label).collect();
                    say!("{PREFIX} guarding group {group}: {}", labels.join(", "));
                }
                self.holds.insert(
                    group,
                    Hold {
                        until_ms: until_monotonic_ms,
                        resources,
                        env,
                    },
                );
            }
            GuardMessage::Release { group } => {
                if self.holds.remove(&group).is_some() {
                    say!("{PREFIX} group {group} released by the daemon");
                }
            }
            GuardMessage::CommandStarted { group, process } => {
                self.commands.insert(process, group);
            }
            GuardMessage::CommandEnded { process } => {
                self.commands.remove(&process);
            }
            GuardMessage::Shutdown => {}
        }
    }

    /// Ends the commands of `group` the daemon left running (a start cut short
    /// by its death, say) so the stop commands that follow are the only ones
    /// driving the group's resources.
    fn end_commands(&mut self, group: &str) {
        let theirs: Vec<ProcessId> = self
            .commands
            .iter()
            .filter(|(_, g)| g.as_str() == group)
            .map(|(process, _)| *process)
            .collect();
        for process in theirs {
            self.commands.remove(&process);
            match process.kill_group_and_wait(COMMAND_KILL_WAIT) {
                KillOutcome::NotRunning => {}
                KillOutcome::Killed => say!(
                    "{PREFIX} ended a command of group {group} still running (pid {})",
                    process.pid
                ),
                KillOutcome::StillRunning => say!(
                    "{PREFIX} FAILED: a command of group {group} (pid {}) did not exit within \
                     {COMMAND_KILL_WAIT:?} of SIGKILL; stopping anyway",
                    process.pid
                ),
            }
        }
    }

    fn expire_due(&mut self, now_ms: u64) {
        let mut due: Vec<(u64, String)> = self
            .holds
            .iter()
            .filter(|(_, hold)| hold.until_ms <= now_ms)
            .map(|(group, hold)| (hold.until_ms, group.clone()))
            .collect();
        // Earliest lease first: after a stall, groups are undone in the order
        // their leases ran out.
        due.sort();
        let groups: Vec<(String, Hold)> = due
            .into_iter()
            .filter_map(|(_, group)| self.holds.remove(&group).map(|hold| (group, hold)))
            .collect();
        self.undo_groups(groups, Reason::Expired);
    }

    fn undo_all(&mut self, reason: Reason) {
        let groups = std::mem::take(&mut self.holds).into_iter().collect();
        self.undo_groups(groups, reason);
    }

    /// Every group's addresses go before any group's services: all of a node's
    /// groups share one lease, and one slow stop command must not keep another
    /// group's address up after another node may have taken it.
    fn undo_groups(&mut self, groups: Vec<(String, Hold)>, reason: Reason) {
        for (group, hold) in &groups {
            self.undo(group, hold, reason, true);
        }
        for (group, _) in &groups {
            self.end_commands(group);
        }
        for (group, hold) in &groups {
            self.undo(group, hold, reason, false);
        }
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.holds.values().map(|hold| hold.until_ms).min()
    }

    /// Undoes the group's addresses (`addresses`) or its services (reverse order).
    fn undo(&mut self, group: &str, hold: &Hold, reason: Reason, addresses: bool) {
        let why = reason.describe(group);
        let phases = EmergencyStop::of(&hold.resources);
        let order = if addresses {
            phases.addresses
        } else {
            phases.services
        };
        for resource in order {
            match resource {
                ResourceSpec::Ip(ip) => {
                    say!(
                        "{PREFIX} {why}; removing {}/{} from {}",
                        ip.address,
                        ip.prefix_len,
                        ip.interface
                    );
                    let result = self.remove_address(&ip.interface, ip.address, ip.prefix_len);
                    match result {
                        Ok(RemoveOutcome::Removed) => {}
                        Ok(RemoveOutcome::NotPresent) => say!(
                            "{PREFIX} {}/{} was not on {} any more",
                            ip.address,
                            ip.prefix_len,
                            ip.interface
                        ),
                        Err(err) => say!("{PREFIX} FAILED: {err}"),
                    }
                }
                ResourceSpec::Exec(service) => {
                    if service.stop.is_empty() {
                        say!("{PREFIX} {why}; {} has no stop command", service.name);
                        continue;
                    }
                    say!(
                        "{PREFIX} {why}; stopping {}: {}",
                        service.name,
                        service.stop.join(" ")
                    );
                    let run = exec::run_as(
                        &service.stop,
                        service.timeout,
                        &hold.env,
                        service.user.as_deref(),
                    );
                    match self.runtime.block_on(run) {
                        Ok(outcome) if outcome.success() => {}
                        Ok(outcome) => say!(
                            "{PREFIX} FAILED: stop of {} {}",
                            service.name,
                            outcome.summary()
                        ),
                        Err(err) => say!("{PREFIX} FAILED: stop of {}: {err}", service.name),
                    }
                }
            }
        }
    }

    fn remove_address(
        &mut self,
        interface: &str,
        addr: std::net::IpAddr,
        prefix_len: u8,
    ) -> Result<RemoveOutcome, OsError> {
        let netlink = match self.netlink.take() {
            Some(netlink) => netlink,
            None => self.runtime.block_on(async { Netlink::new() })?,
        };
        let result = self
            .runtime
            .block_on(netlink.remove_address(interface, addr, prefix_len));
        self.netlink = Some(netlink);
        result
    }
}

/// One line of the daemon-guard channel into `line`, at most `MAX_LINE_BYTES`
/// of it: a peer that never sends a newline cannot grow the buffer without
/// bound. Returns the bytes read; 0 at end of input.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<usize> {
    line.clear();
    reader.take(MAX_LINE_BYTES).read_until(b'\n', line)
}

/// Reads lines from `input` and forwards them; ends with Eof or Failed.
fn read_messages(input: impl Read, tx: mpsc::Sender<Input>) {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        let input = match read_line(&mut reader, &mut line) {
            Ok(0) => Input::Eof,
            Ok(_) => match serde_json::from_slice::<GuardMessage>(&line) {
                Ok(message) => Input::Message(message),
                Err(err) => {
                    let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
                    say!(
                        "{PREFIX} ignoring an unreadable message ({err}): {}",
                        shown.trim_end()
                    );
                    continue;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Input::Failed(e),
        };
        let last = !matches!(input, Input::Message(_));
        if tx.send(input).is_err() || last {
            return;
        }
    }
}

/// The guard's main loop: applies messages from `input` (normally stdin) and
/// undoes groups at their deadline, on EOF, on [`GuardMessage::Shutdown`] or
/// when the parent process changes. Returns `Ok(())` after undoing everything.
///
/// `input` is read on a detached thread, hence `'static`.
pub fn run_guard(input: impl Read + Send + 'static) -> Result<(), OsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| OsError::GuardSetup {
            what: "start its runtime",
            source,
        })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("uphold-guard-input".to_string())
        .spawn(move || read_messages(input, tx))
        .map_err(|source| OsError::GuardSetup {
            what: "start its input thread",
            source,
        })?;
    let parent = std::os::unix::process::parent_id();
    let mut guard = Guard {
        runtime,
        netlink: None,
        holds: BTreeMap::new(),
        commands: BTreeMap::new(),
    };
    say!(
        "{PREFIX} started (pid {}, daemon pid {parent})",
        std::process::id()
    );

    loop {
        if TERMINATED.load(Ordering::SeqCst) {
            guard.undo_all(Reason::Terminated);
            say!("{PREFIX} terminated by SIGTERM; exiting");
            return Ok(());
        }
        let now = monotonic_now_ms();
        guard.expire_due(now);
        let wait = match guard.next_deadline_ms() {
            Some(until) => Duration::from_millis(until.saturating_sub(monotonic_now_ms()))
                .min(PARENT_CHECK_INTERVAL),
            None => PARENT_CHECK_IDLE_INTERVAL,
        };
        match rx.recv_timeout(wait) {
            Ok(Input::Message(GuardMessage::Shutdown)) => {
                guard.undo_all(Reason::Shutdown);
                say!("{PREFIX} daemon shut down; exiting");
                return Ok(());
            }
            Ok(Input::Message(message)) => guard.apply(message),
            Ok(Input::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                guard.undo_all(Reason::DaemonGone);
                say!("{PREFIX} daemon connection closed; exiting");
                return Ok(());
            }
            Ok(Input::Failed(err)) => {
                say!("{PREFIX} cannot read from the daemon ({err}); treating it as gone");
                guard.undo_all(Reason::DaemonGone);
                return Ok(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if std::os::unix::process::parent_id() != parent {
                    guard.undo_all(Reason::ParentChanged);
                    say!("{PREFIX} daemon (pid {parent}) is gone; exiting");
                    return Ok(());
                }
            }
        }
    }
}

/// Takes the node's guard lock at `path`, waiting for the guard of an earlier
/// daemon run to exit if it holds it. The returned lock is held until dropped
/// (at the guard's exit); the file is opened close-on-exec, so stop commands
/// run by the guard do not inherit it.
fn take_lock(path: &Path) -> Result<Flock<std::fs::File>, OsError> {
    let setup = |what: &'static str| move |source: io::Error| OsError::GuardSetup { what, source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(setup("open its lock file"))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let mut holder = String::new();
            let _ = (&file).read_to_string(&mut holder);
            say!(
                "{PREFIX} waiting for the guard of an earlier run (pid {}) to finish undoing",
                holder.trim()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| setup("lock its lock file")(io::Error::from(errno)))?
        }
        Err((_, errno)) => return Err(setup("lock its lock file")(io::Error::from(errno))),
    };
    // Who holds it, for the next guard's message.
    let _ = lock.set_len(0);
    let _ = (&*lock).seek(io::SeekFrom::Start(0));
    let _ = writeln!(&mut *lock, "{}", std::process::id());
    Ok(lock)
}

/// The whole `uphold guard` subcommand: takes the node's lock at `lock` (if
/// given; see the module docs), says it is ready, then runs [`run_guard`] on
/// stdin, with SIGTERM undoing everything held before exiting (seen within
/// half a second). Call it from the process's main thread, once.
pub fn run_guard_process(lock: Option<&Path>) -> Result<(), OsError> {
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
    // and it replaces the default action of a signal nothing else in the guard
    // process handles.
    unsafe { sigaction(Signal::SIGTERM, &action) }.map_err(|errno| OsError::GuardSetup {
        what: "handle SIGTERM",
        source: io::Error::from(errno),
    })?;
    let _lock = lock.map(take_lock).transpose()?;
    // The daemon waits for this line before it touches any resource; nothing
    // else is ever written to stdout.
    // A daemon that does not wait for it (it restarted a dead guard) may have
    // closed the pipe: that is no reason to stop guarding.
    let mut stdout = io::stdout();
    let _ = writeln!(stdout, "{READY_LINE}").and_then(|()| stdout.flush());
    run_guard(io::stdin())
}

#[cfg(test)]
mod tests;
