//! CPU time and resident memory of process groups, read from /proc: how the
//! failover benchmark compares the idle cost of the HA daemons.

use anyhow::{Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Resource use of one process group at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GroupUsage {
    /// utime + stime + cutime + cstime of every member, in clock ticks. The
    /// children's share covers the check scripts a daemon forks and reaps.
    pub ticks: u64,
    /// Sum of VmRSS over the members, in KiB.
    pub rss_kib: u64,
    pub processes: usize,
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// Usage of all processes whose process group is `pgid`.
pub fn group_usage(pgid: i32) -> Result<GroupUsage> {
    let mut u = GroupUsage::default();
    for e in std::fs::read_dir("/proc")
        .context("reading /proc")?
        .flatten()
    {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Processes come and go while we scan; a vanished one is simply skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(f) = parse_stat(&stat) else { continue };
        if f.pgrp != pgid {
            continue;
        }
        u.ticks += f.ticks;
        u.processes += 1;
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            u.rss_kib += vm_rss_kib(&status).unwrap_or(0);
        }
    }
    Ok(u)
}

struct StatFields {
    pgrp: i32,
    ticks: u64,
}

/// Fields of /proc/PID/stat after the `(comm)`, which may itself contain spaces
/// and parentheses; hence the split at the last ')'.
fn parse_stat(stat: &str) -> Option<StatFields> {
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): pgrp is field 5, utime..cstime are 14..17.
    let num = |field: usize| -> Option<u64> { f.get(field - 3)?.parse().ok() };
    Some(StatFields {
        pgrp: f.get(5 - 3)?.parse().ok()?,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
    })
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Idle cost of one process group over a window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct IdleStat {
    /// CPU time used over wall time, percent of one core.
    pub cpu_percent: f64,
    /// RSS at the end of the window, KiB.
    pub rss_kib: u64,
    pub processes: usize,
}

/// Samples every node at the start and the end of `window` (nothing else runs
/// in between: the caller keeps the system idle). A node is one or more process
/// groups: uphold's guard runs in a session of its own, and its cost is the
/// daemon's.
pub fn measure_idle(nodes: &[Vec<i32>], window: Duration) -> Result<Vec<IdleStat>> {
    let usage = |groups: &Vec<i32>| -> Result<GroupUsage> {
        let mut sum = GroupUsage::default();
        for &g in groups {
            let u = group_usage(g)?;
            sum.ticks += u.ticks;
            sum.rss_kib += u.rss_kib;
            sum.processes += u.processes;
        }
        Ok(sum)
    };
    let t0 = Instant::now();
    let before: Vec<GroupUsage> = nodes.iter().map(usage).collect::<Result<_>>()?;
    std::thread::sleep(window);
    let wall = t0.elapsed().as_secs_f64();
    let hz = clk_tck() as f64;
    nodes
        .iter()
        .zip(before)
        .map(|(groups, b)| {
            let a = usage(groups)?;
            Ok(IdleStat {
                cpu_percent: a.ticks.saturating_sub(b.ticks) as f64 / hz / wall * 100.0,
                rss_kib: a.rss_kib,
                processes: a.processes,
            })
        })
        .collect()
}

/// Children of `pid` started with `arg` as their first argument (uphold's
/// guard: `uphold guard ...`), by pid.
pub fn children_with_arg(pid: i32, arg: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            let parent = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                });
            let first_arg = std::fs::read(format!("/proc/{child}/cmdline"))
                .ok()
                .and_then(|c| {
                    c.split(|b| *b == 0)
                        .nth(1)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                });
            parent == Some(pid) && first_arg.as_deref() == Some(arg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "1234 (a) b (c)) S 1 777 777 0 -1 4194560 100 0 0 0 11 22 3 4 20 0 1 0 5 0 0";
        let f = parse_stat(stat).unwrap();
        assert_eq!(f.pgrp, 777);
        assert_eq!(f.ticks, 11 + 22 + 3 + 4);
    }

    #[test]
    fn reads_vm_rss() {
        assert_eq!(vm_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn own_group_is_visible() {
        let me = nix::unistd::getpgrp().as_raw();
        let u = group_usage(me).unwrap();
        assert!(u.processes >= 1);
        assert!(u.rss_kib > 0);
    }
}
