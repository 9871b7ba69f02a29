//! Naming one process so that another process can end it later without
//! risking a stranger that reused its pid: [`ProcessId`] is a pid with the
//! process's start time (from `/proc/PID/stat`), and
//! [`ProcessId::kill_group_and_wait`] checks both before it signals.
//!
//! The guard uses it for the commands a dead daemon left running: a `start`
//! still in progress must be over before the guard runs the `stop`, or two
//! controllers would drive one resource at once.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process, told apart from any later one with the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot at which it started.
    pub start_ticks: u64,
}

/// What [`ProcessId::kill_group_and_wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillOutcome {
    /// The process had already exited (or its pid belongs to another process).
    NotRunning,
    /// It was running; its process group got SIGKILL and it has exited.
    Killed,
    /// SIGKILL was sent but it had not exited within the wait (a process in
    /// uninterruptible sleep, e.g. on a hung NFS mount).
    StillRunning,
}

impl ProcessId {
    /// The running process `pid`, or None if there is none (or it is a zombie).
    pub fn of(pid: i32) -> Option<ProcessId> {
        let (state, start_ticks) = stat(pid)?;
        (!is_dead_state(state)).then_some(ProcessId { pid, start_ticks })
    }

    /// Whether this very process still runs (not exited, not a zombie).
    pub fn is_running(&self) -> bool {
        stat(self.pid)
            .is_some_and(|(state, ticks)| ticks == self.start_ticks && !is_dead_state(state))
    }

    /// Sends SIGKILL to the process group this process leads (every command
    /// uphold runs leads its own group) and waits up to `within` for the
    /// process itself to exit. Nothing is sent when the pid now names another
    /// process.
    pub fn kill_group_and_wait(&self, within: Duration) -> KillOutcome {
        if !self.is_running() {
            return KillOutcome::NotRunning;
        }
        match killpg(Pid::from_raw(self.pid), Signal::SIGKILL) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return KillOutcome::NotRunning,
            Err(errno) => {
                tracing::debug!(pid = self.pid, %errno, "killpg failed");
            }
        }
        // A SIGKILLed process is gone within microseconds unless it sleeps in
        // the kernel; the checks are spaced out so a stuck one costs nothing.
        let deadline = std::time::Instant::now() + within;
        let mut pause = Duration::from_millis(1);
        loop {
            if !self.is_running() {
                return KillOutcome::Killed;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return KillOutcome::StillRunning;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// State and start time from `/proc/PID/stat`, None if there is no such process.
fn stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The command name sits in parentheses and may itself hold spaces and ')', so
/// fields are counted after the last ')': state is field 3, start time field 22.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some((state, start_ticks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn parses_state_and_start_time_after_an_odd_name() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn a_pid_that_names_another_process_is_not_signalled() {
        let me = ProcessId::of(std::process::id() as i32).expect("this process runs");
        let stranger = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!stranger.is_running());
        assert_eq!(
            stranger.kill_group_and_wait(Duration::from_millis(10)),
            KillOutcome::NotRunning
        );
        assert_eq!(ProcessId::of(-1), None);
    }

    #[test]
    fn kills_the_group_of_a_running_command_and_sees_it_gone() {
        // A shell that leads its own group and starts a second process in it.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 60 & sleep 60"])
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let id = ProcessId::of(child.id() as i32).expect("the shell runs");
        assert!(id.is_running());
        // Reaped here, as init would reap an orphan: a zombie counts as gone too.
        let reaper = std::thread::spawn(move || child.wait());
        assert_eq!(
            id.kill_group_and_wait(Duration::from_secs(5)),
            KillOutcome::Killed
        );
        assert!(reaper.join().unwrap().is_ok());
        assert!(!id.is_running());
        assert_eq!(
            id.kill_group_and_wait(Duration::from_millis(10)),
            KillOutcome::NotRunning
        );
    }
}
