//! Self-protection of the daemon on a loaded host, as Corosync does it: memory that
//! is never swapped out, a raised CPU priority for the threads that decide, and a
//! raised I/O priority. Each function returns what it achieved or a
//! [`ProtectError`] the caller logs; nothing here panics, and a refusal (no root, a
//! missing capability) is an ordinary outcome, told apart by
//! [`ProtectError::is_not_permitted`].
//!
//! - [`lock_memory`]: `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`. With
//!   `MCL_ONFAULT` a page is locked when first touched, so the resident size stays
//!   what the daemon uses, not every page it has mapped (thread stacks, allocator
//!   reservations). Kernels without it (before 4.4) get a plain
//!   `MCL_CURRENT | MCL_FUTURE` and [`MemoryLock::AllPages`] says so.
//! - [`set_thread_cpu_priority`]: on Linux the nice value and the scheduling policy
//!   belong to a thread, so this is called on each thread to raise. It also sets
//!   `SCHED_RESET_ON_FORK`: threads and processes the raised thread starts (a
//!   balancer runtime, a sync thread, the user's `exec` commands) begin at normal
//!   priority instead of inheriting it.
//! - [`set_io_priority`]: best-effort class, level 0, for the calling thread and
//!   everything it starts afterwards (the I/O priority is inherited).
//!   [`enable_state_io_priority`] turns it on for the threads that write the
//!   daemon's own state only ([`raise_state_writer_io`] for a dedicated writer
//!   thread, [`with_state_io_priority`] for one job on a shared thread). The rest
//!   of the daemon keeps the normal priority, and so do the commands it starts:
//!   nothing has to be undone between fork and exec, so commands start through
//!   `posix_spawn`, which does not copy the daemon's page tables as `fork` does.
//!
//! The realtime level comes with a CPU budget ([`REALTIME_BUDGET`]) set through
//! `RLIMIT_RTTIME`: a realtime thread that runs that long without once sleeping gets
//! SIGXCPU (which ends the process), and SIGKILL at [`REALTIME_BUDGET_HARD`], so a
//! runaway loop cannot hold a CPU against the rest of the host.

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The nice value of [`CpuPriority::High`] (the range is -20..19; 0 is normal).
pub const HIGH_NICE: i32 = -10;
/// The `SCHED_RR` priority of [`CpuPriority::Realtime`]: above every normal
/// thread, below the kernel's own realtime threads (50 for threaded interrupts,
/// 99 for the watchdogs) and the usual audio or PTP daemons.
pub const REALTIME_PRIORITY: i32 = 5;
/// CPU time a realtime thread may use without once sleeping (blocking in a system
/// call) before the kernel sends SIGXCPU. uphold's threads sleep every few
/// milliseconds while healthy; one that computes for this long is stuck, and the
/// lease (800 ms by default) would not survive it anyway.
pub const REALTIME_BUDGET: Duration = Duration::from_millis(200);
/// Past this the kernel sends SIGKILL (in case SIGXCPU was caught or ignored).
pub const REALTIME_BUDGET_HARD: Duration = Duration::from_millis(400);

// From linux/ioprio.h and linux/capability.h; libc does not carry them.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
const IOPRIO_CLASS_BE: libc::c_int = 2;
const CAP_IPC_LOCK: u32 = 14;

/// Why a protection is not in effect.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    /// Refused for lack of a privilege: expected when uphold runs without root
    /// (as `uphold demo` does). `why` says what would allow it.
    #[error("{what} is not permitted: {why}")]
    NotPermitted { what: &'static str, why: String },
    /// The kernel refused for another reason.
    #[error("{what} failed: {source}")]
    Failed {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ProtectError {
    /// True when the refusal is only a missing privilege.
    pub fn is_not_permitted(&self) -> bool {
        matches!(self, ProtectError::NotPermitted { .. })
    }
}

/// How [`lock_memory`] locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLock {
    /// Pages are locked as they are first touched (`MCL_ONFAULT`).
    OnFault,
    /// This kernel has no `MCL_ONFAULT`: every mapped page, touched or not, was
    /// made resident and locked, so the resident size grows to the mapped size.
    AllPages,
}

/// CPU priority of a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPriority {
    /// Leave the thread as it is.
    Normal,
    /// Nice [`HIGH_NICE`].
    High,
    /// `SCHED_RR` at [`REALTIME_PRIORITY`], within [`REALTIME_BUDGET`].
    Realtime,
}

/// I/O priority of a thread and what it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPriority {
    /// Leave it as it is.
    Normal,
    /// Best-effort class, level 0 (the highest level open to every user; the
    /// realtime class could starve the services' own disk access).
    High,
}

/// Locks the process's memory, now and for every later mapping.
///
/// Without `CAP_IPC_LOCK` the kernel counts locked memory against
/// `RLIMIT_MEMLOCK` (a few MiB by default), and with `MCL_FUTURE` every later
/// allocation beyond it would fail; so unless that limit is unlimited this refuses
/// without trying.
pub fn lock_memory() -> Result<MemoryLock, ProtectError> {
    const WHAT: &str = "locking memory";
    let privileged = has_capability(CAP_IPC_LOCK);
    if !privileged {
        let limit = getrlimit(Resource::RLIMIT_MEMLOCK).map(|(soft, _)| soft);
        if limit != Ok(RLIM_INFINITY) {
            let limit = match limit {
                Ok(bytes) => format!("{} KiB", bytes / 1024),
                Err(e) => format!("unknown ({e})"),
            };
            return Err(ProtectError::NotPermitted {
                what: WHAT,
                why: format!(
                    "needs root (CAP_IPC_LOCK) or an unlimited RLIMIT_MEMLOCK \
                     (LimitMEMLOCK=infinity); the limit here is {limit}, and once it is \
                     reached every allocation would fail"
                ),
            });
        }
    }
    let refused = |errno: Errno| match errno {
        Errno::EPERM | Errno::EACCES => ProtectError::NotPermitted {
            what: WHAT,
            why: format!("needs root (CAP_IPC_LOCK) ({errno})"),
        },
        Errno::ENOMEM if !privileged => ProtectError::NotPermitted {
            what: WHAT,
            why: format!("over RLIMIT_MEMLOCK; needs root (CAP_IPC_LOCK) ({errno})"),
        },
        _ => ProtectError::Failed {
            what: WHAT,
            source: io::Error::from(errno),
        },
    };
    match mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) {
        Ok(()) => Ok(MemoryLock::OnFault),
        // A kernel older than 4.4 does not know MCL_ONFAULT.
        Err(Errno::EINVAL) => mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE)
            .map(|()| MemoryLock::AllPages)
            .map_err(refused),
        Err(errno) => Err(refused(errno)),
    }
}

fn mlockall(flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: mlockall only changes how the kernel treats this process's pages;
    // it reads no memory of ours.
    let rc = unsafe { libc::mlockall(flags) };
    Errno::result(rc).map(drop)
}

/// Sets the CPU priority of the calling thread (not the whole process), marking it
/// reset-on-fork so that what it starts begins at normal priority.
pub fn set_thread_cpu_priority(priority: CpuPriority) -> Result<(), ProtectError> {
    match priority {
        CpuPriority::Normal => Ok(()),
        CpuPriority::High => {
            const WHAT: &str = "raising the CPU priority (nice -10)";
            // First the flag, so the thread is never raised without it.
            set_scheduler(libc::SCHED_OTHER, 0).map_err(|errno| ProtectError::Failed {
                what: WHAT,
                source: io::Error::from(errno),
            })?;
            let tid = nix::unistd::gettid().as_raw();
            // SAFETY: setpriority takes plain integers; PRIO_PROCESS with a thread
            // id changes that one thread's nice value.
            let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HIGH_NICE) };
            Errno::result(rc).map(drop).map_err(|errno| match errno {
                Errno::EPERM | Errno::EACCES => ProtectError::NotPermitted {
                    what: WHAT,
                    why: format!(
                        "needs root (CAP_SYS_NICE) or RLIMIT_NICE of at least 30 \
                         (LimitNICE=-10) ({errno})"
                    ),
                },
                _ => ProtectError::Failed {
                    what: WHAT,
                    source: io::Error::from(errno),
                },
            })
        }
        CpuPriority::Realtime => {
            const WHAT: &str = "realtime scheduling (SCHED_RR)";
            // The budget comes first: never realtime without it.
            limit_realtime_cpu().map_err(|errno| ProtectError::Failed {
                what: WHAT,
                source: io::Error::other(format!("cannot set RLIMIT_RTTIME: {errno}")),
            })?;
            set_scheduler(libc::SCHED_RR, REALTIME_PRIORITY).map_err(|errno| match errno {
                Errno::EPERM => ProtectError::NotPermitted {
                    what: WHAT,
                    why: format!(
                        "needs root (CAP_SYS_NICE) or RLIMIT_RTPRIO of at least \
                         {REALTIME_PRIORITY} (LimitRTPRIO={REALTIME_PRIORITY}); as root, a cgroup \
                         with no realtime budget (cgroup v1 cpu.rt_runtime_us) refuses it too \
                         ({errno})"
                    ),
                },
                _ => ProtectError::Failed {
                    what: WHAT,
                    source: io::Error::from(errno),
                },
            })
        }
    }
}

/// `sched_setscheduler` on the calling thread, always with `SCHED_RESET_ON_FORK`.
fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> Result<(), Errno> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param that
    // the kernel only reads during the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy | libc::SCHED_RESET_ON_FORK, &param) };
    Errno::result(rc).map(drop)
}

/// Lowers RLIMIT_RTTIME (a process-wide limit) to the budget; never raises it, so
/// a stricter limit set by the administrator stays.
fn limit_realtime_cpu() -> Result<(), Errno> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_RTTIME)?;
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let hard = hard.min(micros(REALTIME_BUDGET_HARD));
    let soft = soft.min(micros(REALTIME_BUDGET)).min(hard);
    setrlimit(Resource::RLIMIT_RTTIME, soft, hard)
}

/// Sets the I/O priority of the calling thread, inherited by the threads and
/// processes it starts afterwards.
pub fn set_io_priority(priority: IoPriority) -> Result<(), ProtectError> {
    const WHAT: &str = "raising the I/O priority (best-effort, level 0)";
    match priority {
        IoPriority::Normal => Ok(()),
        IoPriority::High => {
            ioprio_set(IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT).map_err(|errno| match errno {
                Errno::EPERM | Errno::EACCES => ProtectError::NotPermitted {
                    what: WHAT,
                    why: format!("needs root (CAP_SYS_NICE) ({errno})"),
                },
                _ => ProtectError::Failed {
                    what: WHAT,
                    source: io::Error::from(errno),
                },
            })
        }
    }
}

/// Gives the calling thread back the I/O priority that follows its nice value (no
/// class), undoing an inherited [`set_io_priority`]. Async-signal-safe (one raw
/// system call).
pub fn clear_io_priority() -> io::Result<()> {
    ioprio_set(0).map_err(io::Error::from)
}

/// Whether the threads that write the daemon's state run at high I/O priority; set
/// once at start by [`enable_state_io_priority`].
static STATE_IO_HIGH: AtomicBool = AtomicBool::new(false);

/// Asks that the threads writing the daemon's own state (the Raft log and its
/// snapshots) run at `priority`. The raise is tried on the calling thread, so a
/// refusal is reported here, and then undone there: only the writers keep it.
pub fn enable_state_io_priority(priority: IoPriority) -> Result<(), ProtectError> {
    if priority == IoPriority::Normal {
        STATE_IO_HIGH.store(false, Ordering::Relaxed);
        return Ok(());
    }
    let before = ioprio_get();
    set_io_priority(priority)?;
    if let Ok(before) = before {
        let _ = ioprio_set(before);
    }
    STATE_IO_HIGH.store(true, Ordering::Relaxed);
    Ok(())
}

/// Gives the calling thread the state writers' I/O priority, if
/// [`enable_state_io_priority`] asked for one. For a thread that does nothing but
/// write state; it was checked at start, so a refusal here is not reported again.
pub fn raise_state_writer_io() {
    if STATE_IO_HIGH.load(Ordering::Relaxed) {
        let _ = ioprio_set(IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT);
    }
}

/// Runs `f` at the state writers' I/O priority and then gives the calling thread
/// its own back: for one write of state on a shared (blocking pool) thread.
pub fn with_state_io_priority<T>(f: impl FnOnce() -> T) -> T {
    if !STATE_IO_HIGH.load(Ordering::Relaxed) {
        return f();
    }
    let before = ioprio_get();
    raise_state_writer_io();
    let out = f();
    if let Ok(before) = before {
        let _ = ioprio_set(before);
    }
    out
}

fn ioprio_get() -> Result<libc::c_int, Errno> {
    // SAFETY: ioprio_get takes two integers; who = 0 with IOPRIO_WHO_PROCESS is
    // the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    let rc = Errno::result(rc)?;
    libc::c_int::try_from(rc).map_err(|_| Errno::EINVAL)
}

fn ioprio_set(ioprio: libc::c_int) -> Result<(), Errno> {
    // SAFETY: ioprio_set takes three integers; who = 0 with IOPRIO_WHO_PROCESS is
    // the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, ioprio) };
    Errno::result(rc).map(drop)
}

/// Whether the calling thread holds capability `cap` in its effective set (from
/// /proc; capabilities belong to a thread). False when it cannot be read.
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/thread-self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1u64 << cap) != 0)
}

#[cfg(test)]
mod tests {
    //! Each call is made for real. Run as root (as CI does) they must take effect,
    //! read back from the kernel; without the privilege they must say
    //! "not permitted". The refusals are also forced as root, by dropping the
    //! capability in a thread of the test (capabilities belong to a thread).
    //! Priorities are changed only in threads spawned here, which end after the test.

    use super::*;
    use std::sync::Mutex;

    const CAP_SYS_NICE: u32 = 23;

    /// The memory tests lock and unlock the whole test process: one at a time.
    static MEMORY: Mutex<()> = Mutex::new(());

    fn status_kib(field: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix(field))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    }

    fn unlock_memory() {
        // SAFETY: munlockall only changes how the kernel treats our pages.
        let rc = unsafe { libc::munlockall() };
        assert_eq!(rc, 0, "munlockall: {}", Errno::last());
    }

    fn thread_nice() -> i32 {
        let tid = nix::unistd::gettid().as_raw();
        Errno::clear();
        // SAFETY: getpriority takes plain integers.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        assert!(
            nice != -1 || Errno::last_raw() == 0,
            "getpriority: {}",
            Errno::last()
        );
        nice
    }

    /// (policy without flags, reset-on-fork flag, realtime priority) of this thread.
    fn thread_scheduler() -> (libc::c_int, bool, libc::c_int) {
        // SAFETY: pid 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        assert!(policy >= 0, "sched_getscheduler: {}", Errno::last());
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param the kernel writes into.
        let rc = unsafe { libc::sched_getparam(0, &mut param) };
        assert_eq!(rc, 0, "sched_getparam: {}", Errno::last());
        (
            policy & !libc::SCHED_RESET_ON_FORK,
            policy & libc::SCHED_RESET_ON_FORK != 0,
            param.sched_priority,
        )
    }

    fn thread_ioprio() -> libc::c_long {
        // SAFETY: ioprio_get takes two integers; who = 0 is the calling thread.
        let prio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
        assert!(prio >= 0, "ioprio_get: {}", Errno::last());
        prio
    }

    /// Nice value and policy of another process, from /proc/PID/stat.
    fn process_nice_and_policy(pid: u32) -> (i64, i64) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name, which sits in parentheses; nice is field
        // 19 and policy field 41, counted from 1.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        (
            fields[19 - 3].parse().unwrap(),
            fields[41 - 3].parse().unwrap(),
        )
    }

    /// Removes `cap` from the calling thread's effective set.
    fn drop_capability(cap: u32) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: a v3 header and the two data words capget(2) fills.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        assert_eq!(rc, 0, "capget: {}", Errno::last());
        data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
        // SAFETY: the same header and data, read by capset(2); it changes only
        // the calling thread's credentials.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", Errno::last());
    }

    fn in_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn lock_memory_locks_or_says_not_permitted() {
        let _one = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        match lock_memory() {
            Ok(how) => {
                let locked = status_kib("VmLck:").unwrap();
                unlock_memory();
                // This machine's kernel knows MCL_ONFAULT (Linux 4.4+).
                assert_eq!(how, MemoryLock::OnFault);
                assert!(locked > 0, "VmLck is 0 after locking");
                assert_eq!(status_kib("VmLck:"), Some(0));
            }
            Err(e) => {
                assert!(e.is_not_permitted(), "{e}");
                assert!(
                    !has_capability(CAP_IPC_LOCK),
                    "refused with CAP_IPC_LOCK: {e}"
                );
                assert!(e.to_string().contains("CAP_IPC_LOCK"), "{e}");
            }
        }
    }

    #[test]
    fn lock_memory_without_cap_ipc_lock_and_a_finite_limit_is_refused_untried() {
        let _one = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        let (limit, _) = getrlimit(Resource::RLIMIT_MEMLOCK).unwrap();
        let result = in_thread(|| {
            drop_capability(CAP_IPC_LOCK);
            assert!(!has_capability(CAP_IPC_LOCK));
            lock_memory().map_err(|e| e.to_string())
        });
        if limit == RLIM_INFINITY {
            // Allowed then; undo it.
            assert_eq!(result, Ok(MemoryLock::OnFault));
            unlock_memory();
        } else {
            let e = result.unwrap_err();
            assert!(e.contains("is not permitted"), "{e}");
            assert!(e.contains("LimitMEMLOCK=infinity"), "{e}");
            assert_eq!(status_kib("VmLck:"), Some(0), "locked anyway");
        }
    }

    #[test]
    fn high_cpu_priority_sets_nice_on_this_thread_only() {
        let (before, result, after, sched, child) = in_thread(|| {
            let before = thread_nice();
            let result = set_thread_cpu_priority(CpuPriority::High);
            let after = thread_nice();
            let sched = thread_scheduler();
            // A thread started by the raised one begins at nice 0.
            let child = std::thread::spawn(thread_nice).join().unwrap();
            (before, result, after, sched, child)
        });
        match result {
            Ok(()) => {
                assert_eq!(after, HIGH_NICE);
                assert_eq!(sched, (libc::SCHED_OTHER, true, 0));
                assert_eq!(child, 0, "a thread inherited the raised priority");
            }
            Err(e) => {
                assert!(e.is_not_permitted(), "{e}");
                assert_eq!(after, before);
            }
        }
        // The test's own thread is untouched.
        assert_ne!(thread_nice(), HIGH_NICE);
    }

    #[test]
    fn high_cpu_priority_without_cap_sys_nice_is_not_permitted() {
        let (limit, _) = getrlimit(Resource::RLIMIT_NICE).unwrap();
        let result = in_thread(|| {
            drop_capability(CAP_SYS_NICE);
            set_thread_cpu_priority(CpuPriority::High)
                .map_err(|e| (e.is_not_permitted(), e.to_string()))
        });
        if limit == RLIM_INFINITY || limit >= 30 {
            assert_eq!(result, Ok(()));
        } else {
            let (not_permitted, shown) = result.unwrap_err();
            assert!(not_permitted, "{shown}");
            assert!(shown.contains("CAP_SYS_NICE"), "{shown}");
        }
    }

    #[test]
    fn realtime_sets_round_robin_with_a_cpu_budget_and_children_start_normal() {
        let (result, sched, child, process) = in_thread(|| {
            let result = set_thread_cpu_priority(CpuPriority::Realtime);
            let sched = thread_scheduler();
            let child = std::thread::spawn(thread_scheduler).join().unwrap();
            let mut sleeper = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
            let process = process_nice_and_policy(sleeper.id());
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            // Back to normal before the thread ends.
            set_scheduler(libc::SCHED_OTHER, 0).unwrap();
            assert_eq!(thread_scheduler().0, libc::SCHED_OTHER);
            (result, sched, child, process)
        });
        match result {
            Ok(()) => {
                assert_eq!(sched, (libc::SCHED_RR, true, REALTIME_PRIORITY));
                assert_eq!(child.0, libc::SCHED_OTHER, "a thread inherited SCHED_RR");
                assert_eq!(
                    process,
                    (0, i64::from(libc::SCHED_OTHER)),
                    "a command inherited it"
                );
                let (soft, hard) = getrlimit(Resource::RLIMIT_RTTIME).unwrap();
                assert!(
                    soft <= 200_000 && hard <= 400_000,
                    "RLIMIT_RTTIME {soft}/{hard}"
                );
                assert!(soft > 0 && soft <= hard);
            }
            Err(e) => {
                assert!(e.is_not_permitted(), "{e}");
                assert_eq!(sched.0, libc::SCHED_OTHER);
            }
        }
    }

    #[test]
    fn realtime_without_cap_sys_nice_is_not_permitted() {
        let (limit, _) = getrlimit(Resource::RLIMIT_RTPRIO).unwrap();
        let result = in_thread(|| {
            drop_capability(CAP_SYS_NICE);
            let result = set_thread_cpu_priority(CpuPriority::Realtime);
            let sched = thread_scheduler().0;
            (
                result.map_err(|e| (e.is_not_permitted(), e.to_string())),
                sched,
            )
        });
        if limit == RLIM_INFINITY || limit >= REALTIME_PRIORITY as u64 {
            assert_eq!(result, (Ok(()), libc::SCHED_RR));
        } else {
            let (not_permitted, shown) = result.0.unwrap_err();
            assert!(not_permitted, "{shown}");
            assert!(shown.contains("LimitRTPRIO"), "{shown}");
            assert_eq!(result.1, libc::SCHED_OTHER);
        }
    }

    #[test]
    fn normal_changes_nothing() {
        let (before, result, after) = in_thread(|| {
            let before = (thread_nice(), thread_scheduler(), thread_ioprio());
            let result = set_thread_cpu_priority(CpuPriority::Normal).is_ok()
                && set_io_priority(IoPriority::Normal).is_ok();
            (
                before,
                result,
                (thread_nice(), thread_scheduler(), thread_ioprio()),
            )
        });
        assert!(result);
        assert_eq!(before, after);
    }

    #[test]
    fn high_io_priority_is_best_effort_level_0_and_inherited_until_cleared() {
        let (result, prio, child, cleared) = in_thread(|| {
            let result = set_io_priority(IoPriority::High);
            let prio = thread_ioprio();
            let child = std::thread::spawn(thread_ioprio).join().unwrap();
            let cleared = clear_io_priority().map(|()| thread_ioprio());
            (result, prio, child, cleared)
        });
        match result {
            Ok(()) => {
                let be0 = libc::c_long::from(IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT);
                assert_eq!(prio, be0);
                assert_eq!(child, be0, "threads started later share it");
                // Cleared, the kernel reports the priority derived from nice
                // (best-effort, (nice + 20) / 5), never level 0 for nice 0.
                let cleared = cleared.unwrap();
                assert_ne!(cleared, be0);
            }
            Err(e) => assert!(e.is_not_permitted(), "{e}"),
        }
    }

    #[test]
    fn state_io_priority_stays_with_the_writers() {
        let (result, caller, writer, during, after) = in_thread(|| {
            let before = thread_ioprio();
            let result = enable_state_io_priority(IoPriority::High);
            let caller = thread_ioprio() == before;
            let writer = std::thread::spawn(|| {
                raise_state_writer_io();
                thread_ioprio()
            })
            .join()
            .unwrap();
            let during = with_state_io_priority(thread_ioprio);
            let after = thread_ioprio() == before;
            STATE_IO_HIGH.store(false, Ordering::Relaxed);
            (result, caller, writer, during, after)
        });
        assert!(caller, "the caller keeps its own priority");
        assert!(after, "a scoped job gives the thread its priority back");
        match result {
            Ok(()) => {
                let be0 = libc::c_long::from(IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT);
                assert_eq!(writer, be0);
                assert_eq!(during, be0);
            }
            Err(e) => assert!(e.is_not_permitted(), "{e}"),
        }
    }
}
