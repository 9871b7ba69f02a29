//! Self-protection (`[cluster]` lock_memory, cpu_priority, io_priority): applied
//! once at start, before the runtime exists. See `uphold_os::protect`.

use tracing::{info, warn};

/// What the daemon started with; a reload cannot change it.
static STARTED_PROTECTION: std::sync::OnceLock<uphold_config::Protection> =
    std::sync::OnceLock::new();

/// Locks memory and raises the I/O priority for the whole process (the threads
/// and commands started later inherit the I/O priority), and raises the CPU
/// priority of this thread, which runs the cluster's decision loop (`block_on`).
/// Logs one line with what is in effect; a refusal is a warning, or part of that
/// one info line when uphold runs without root (as `uphold demo` does). Returns
/// the CPU priority for the runtime's threads: the one this thread got.
pub(super) fn protect_self(
    wanted: Option<uphold_config::Protection>,
) -> uphold_os::protect::CpuPriority {
    use uphold_config::{CpuPriority as Want, IoPriority as WantIo};
    use uphold_os::protect::{self, CpuPriority, IoPriority, MemoryLock, ProtectError};
    // Without [cluster] nothing decides: the balancer alone runs unprotected.
    let Some(wanted) = wanted else {
        return CpuPriority::Normal;
    };
    let _ = STARTED_PROTECTION.set(wanted);
    let mut active: Vec<String> = Vec::new();
    let mut refused: Vec<ProtectError> = Vec::new();
    if wanted.lock_memory {
        match protect::lock_memory() {
            Ok(MemoryLock::OnFault) => active.push("memory locked".into()),
            Ok(MemoryLock::AllPages) => active.push(
                "memory locked (every mapped page: this kernel has no MCL_ONFAULT, so the \
                 resident size is the mapped size)"
                    .into(),
            ),
            Err(e) => refused.push(e),
        }
    }
    if wanted.io_priority == WantIo::High {
        match protect::enable_state_io_priority(IoPriority::High) {
            Ok(()) => active.push("I/O priority best-effort 0 for the Raft log's writes".into()),
            Err(e) => refused.push(e),
        }
    }
    let mut cpu = CpuPriority::Normal;
    if wanted.cpu_priority == Want::Realtime {
        match protect::set_thread_cpu_priority(CpuPriority::Realtime) {
            Ok(()) => {
                cpu = CpuPriority::Realtime;
                active.push(format!(
                    "CPU priority realtime (SCHED_RR {}, at most {} ms of CPU without sleeping) \
                     for the decision loop, Raft and RPC, nice {} for their blocking jobs",
                    protect::REALTIME_PRIORITY,
                    protect::REALTIME_BUDGET.as_millis(),
                    protect::HIGH_NICE
                ));
            }
            Err(e) => refused.push(e),
        }
    }
    if wanted.cpu_priority != Want::Normal && cpu == CpuPriority::Normal {
        match protect::set_thread_cpu_priority(CpuPriority::High) {
            Ok(()) => {
                cpu = CpuPriority::High;
                let instead = if wanted.cpu_priority == Want::Realtime {
                    ", instead of realtime,"
                } else {
                    ""
                };
                active.push(format!(
                    "CPU priority high (nice {}){instead} for the decision loop, Raft and RPC",
                    protect::HIGH_NICE
                ));
            }
            Err(e) => refused.push(e),
        }
    }
    let active = if active.is_empty() {
        "nothing".to_string()
    } else {
        active.join("; ")
    };
    let root = nix::unistd::geteuid().is_root();
    if refused.is_empty() {
        info!("self-protection: {active}");
    } else if !root && refused.iter().all(ProtectError::is_not_permitted) {
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        info!(
            "self-protection without root: {active}; not in effect: {}",
            refused.join("; ")
        );
    } else {
        info!("self-protection: {active}");
        for e in &refused {
            warn!("self-protection: {e}; running without it");
        }
    }
    cpu
}

/// Gives the main runtime's blocking threads the priority `cpu`, from their
/// start, but never realtime: blocking jobs include file-sync work that can
/// compute for seconds, which the realtime budget would end. The thread that
/// runs the runtime itself was raised by [`protect_self`]. The balancer's own
/// runtimes are started from threads marked reset-on-fork, so they stay at
/// normal priority.
pub(super) fn protect_blocking_threads(
    builder: &mut tokio::runtime::Builder,
    cpu: uphold_os::protect::CpuPriority,
) {
    use uphold_os::protect::CpuPriority;
    let for_blocking = match cpu {
        CpuPriority::Normal => return,
        CpuPriority::Realtime => CpuPriority::High,
        other => other,
    };
    builder.on_thread_start(move || raise_thread(for_blocking));
}

/// Raises the calling runtime thread; only the first failure is logged (the
/// same would follow for every thread).
fn raise_thread(cpu: uphold_os::protect::CpuPriority) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = uphold_os::protect::set_thread_cpu_priority(cpu) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            warn!("self-protection: {e}, for a runtime thread; it runs without it");
        }
    }
}

/// A reload keeps the protection the daemon started with; say so when the file
/// now asks for another.
pub(super) fn warn_if_protection_changed(cluster: Option<&uphold_config::ClusterConfig>) {
    let (Some(started), Some(cluster)) = (STARTED_PROTECTION.get(), cluster) else {
        return;
    };
    if cluster.protection != *started {
        warn!("reload: lock_memory, cpu_priority and io_priority take effect at the next restart");
    }
}
