//! Running user commands (resource start/stop/monitor, health checks) from an
//! argv, never through a shell: each in its own process group, bounded by a
//! timeout after which the whole group is killed, with the tail of its output
//! kept for messages, and with a minimal environment ([`COMMAND_PATH`], the
//! locale and time zone, and the caller's variables), not the daemon's; as root,
//! or as a configured user to drop root where a command does not need it.
//!
//! A `start` command may daemonize, leaving a long-running grandchild that still
//! holds our output pipe. So completion means "the direct child exited", not
//! "output reached EOF"; whatever the grandchild writes later is drained and
//! discarded in the background so that it neither blocks on a full pipe nor dies
//! of SIGPIPE.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use crate::clock::monotonic_now;
use crate::error::OsError;
use crate::process_id::ProcessId;

/// Told when a command starts and when it is over, so that someone else (the
/// guard) can end the commands still running if this process dies.
pub trait CommandWatch: Send + Sync {
    /// The command runs as `id`, leading its own process group.
    fn started(&self, id: ProcessId);
    /// The command `id` exited and was reaped, or was killed.
    fn ended(&self, id: ProcessId);
}

/// A [`CommandWatch`] that is told nothing.
pub struct Unwatched;

impl CommandWatch for Unwatched {
    fn started(&self, _: ProcessId) {}
    fn ended(&self, _: ProcessId) {}
}

/// How much of the combined stdout+stderr is kept.
pub const OUTPUT_TAIL_BYTES: usize = 2048;

/// Once the direct child exited, read at most this much more output before
/// leaving the rest to the background drain.
const DRAIN_AFTER_EXIT_LIMIT: usize = 64 * 1024;

/// Killed children in uninterruptible sleep may take a while to die; do not
/// hang the caller on them.
const REAP_AFTER_KILL_LIMIT: Duration = Duration::from_secs(5);

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Ran past its timeout; its whole process group was killed with SIGKILL.
    TimedOut,
}

impl fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExecStatus::Signaled(sig) => match Signal::try_from(*sig) {
                Ok(signal) => write!(f, "killed by signal {sig} ({signal})"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
            ExecStatus::TimedOut => f.write_str("timed out and was killed"),
        }
    }
}

/// Result of [`run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub status: ExecStatus,
    /// From spawn until the direct child exited (or was killed).
    pub duration: Duration,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and stderr, interleaved in the
    /// order written, lossily decoded as UTF-8.
    pub output: String,
}

impl ExecOutcome {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.status == ExecStatus::Exited(0)
    }

    /// One line for logs and status: the status plus the last output line.
    pub fn summary(&self) -> String {
        let last = self
            .output
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty());
        match last {
            Some(line) => format!("{} after {:?}: {line}", self.status, self.duration),
            None => format!("{} after {:?}", self.status, self.duration),
        }
    }
}

/// The last `OUTPUT_TAIL_BYTES` bytes seen.
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > OUTPUT_TAIL_BYTES {
            let excess = self.0.len() - OUTPUT_TAIL_BYTES;
            self.0.drain(..excess);
        }
    }

    fn into_string(self) -> String {
        // Cutting may have split a UTF-8 sequence; drop its orphaned tail bytes.
        let start = self
            .0
            .iter()
            .position(|b| (b & 0b1100_0000) != 0b1000_0000)
            .unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[start..]).into_owned()
    }
}

/// Owns the child until it has been reaped. Dropped early (timeout handling
/// failed, or the caller's future was cancelled), it kills the whole process
/// group: the group id is the child's pid, which stays reserved until the child
/// is reaped, so the signal cannot reach an unrelated group.
struct GroupGuard<'w> {
    child: Child,
    pgid: Option<Pid>,
    watched: Option<ProcessId>,
    watch: &'w dyn CommandWatch,
}

impl GroupGuard<'_> {
    fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            if let Err(errno) = killpg(pgid, Signal::SIGKILL) {
                tracing::debug!(pgid = pgid.as_raw(), %errno, "killpg failed");
            }
        }
    }

    /// The child was reaped: its group may now contain only daemons it started
    /// on purpose, which must be left alone.
    fn disarm(&mut self) {
        self.pgid = None;
        if let Some(id) = self.watched.take() {
            self.watch.ended(id);
        }
    }
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        self.kill_group();
        if let Some(id) = self.watched.take() {
            self.watch.ended(id);
        }
    }
}

fn convert_status(status: ExitStatus) -> ExecStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExecStatus::Exited(code),
        (None, Some(sig)) => ExecStatus::Signaled(sig),
        // Neither code nor signal does not happen for a reaped child.
        (None, None) => ExecStatus::Exited(-1),
    }
}

/// Reads what the exited child left in the pipe without waiting for writers
/// that are still alive. Returns true when the pipe reached EOF.
fn drain_available(receiver: &pipe::Receiver, tail: &mut Tail) -> bool {
    // A duplicate shares the open file description, hence O_NONBLOCK; reading
    // it directly sees data tokio's readiness tracking has not noticed yet.
    let Ok(fd) = receiver.as_fd().try_clone_to_owned() else {
        return false;
    };
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < DRAIN_AFTER_EXIT_LIMIT {
        match file.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                tail.push(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// `PATH` of every command: the daemon's own (whatever shell or unit started
/// it) is not passed on.
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Taken from the daemon's environment when set: what a command needs to speak
/// the operator's language and find its home, nothing that configures uphold.
const PASSED_THROUGH: &[&str] = &["HOME", "LANG", "LC_ALL", "TZ"];

/// The account a command runs as when it is not to run as root.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
    home: std::path::PathBuf,
}

impl RunAs {
    /// Looked up for every run (through NSS, as `su` does), so an account
    /// created or changed after the daemon started is seen.
    fn lookup(program: &str, name: &str) -> Result<RunAs, OsError> {
        let unknown = || OsError::UnknownUser {
            program: program.to_string(),
            user: name.to_string(),
        };
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(RunAs {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            }),
            Ok(None) => Err(unknown()),
            Err(errno) => Err(OsError::ExecSpawn {
                program: program.to_string(),
                source: io::Error::other(format!("looking up user {name:?}: {errno}")),
            }),
        }
    }
}

/// The whole environment of a command given `extra` variables: a command run
/// as another user gets that user's `HOME`, `USER` and `LOGNAME`.
fn command_environment(
    extra: &[(String, String)],
    user: Option<&RunAs>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env = vec![("PATH".into(), COMMAND_PATH.into())];
    for name in PASSED_THROUGH {
        if user.is_some() && *name == "HOME" {
            continue;
        }
        if let Some(value) = std::env::var_os(name) {
            env.push(((*name).into(), value));
        }
    }
    if let Some(user) = user {
        env.push(("HOME".into(), user.home.clone().into_os_string()));
        env.push(("USER".into(), user.name.clone().into()));
        env.push(("LOGNAME".into(), user.name.clone().into()));
    }
    env.extend(extra.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Runs `argv` (`argv[0]` is the program path or a name looked up in
/// [`COMMAND_PATH`]) with a minimal environment plus `env`, and stdin from
/// /dev/null. Returns
/// when the direct child exits, or after `timeout` with [`ExecStatus::TimedOut`]
/// once its process group has been killed. Dropping the returned future before
/// it completes kills the process group too.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
) -> Result<ExecOutcome, OsError> {
    run_watched(argv, timeout, env, None, &Unwatched).await
}

/// [`run`] as `user` (a login name) when given: the command gets that user's
/// uid and primary group and no supplementary groups, so a check or a service
/// command that needs no root runs without it.
pub async fn run_as(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    user: Option<&str>,
) -> Result<ExecOutcome, OsError> {
    run_watched(argv, timeout, env, user, &Unwatched).await
}

/// [`run_as`], telling `watch` when the command starts and when it is over
/// (right after the spawn, before any await, so nothing the caller does comes
/// between).
pub async fn run_watched(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    user: Option<&str>,
    watch: &dyn CommandWatch,
) -> Result<ExecOutcome, OsError> {
    let Some(program) = argv.first() else {
        return Err(OsError::EmptyArgv);
    };
    let run_as = user.map(|name| RunAs::lookup(program, name)).transpose()?;
    let spawn_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            OsError::ExecNotFound {
                program: program.clone(),
            }
        } else {
            OsError::ExecSpawn {
                program: program.clone(),
                source,
            }
        }
    };
    let (reader, writer) = io::pipe().map_err(spawn_error)?;
    let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(spawn_error)?;
    let writer_for_stderr = writer.try_clone().map_err(spawn_error)?;

    let started = monotonic_now();
    let child = {
        let mut command = Command::new(program);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(command_environment(env, run_as.as_ref()))
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_for_stderr)
            .process_group(0)
            .kill_on_drop(true);
        if let Some(user) = &run_as {
            // std drops the supplementary groups when root changes uid, and
            // changes the group before the user, as `setpriv` would.
            command.uid(user.uid).gid(user.gid);
        }
        // No pre_exec hook, on purpose: without one std starts the command with
        // posix_spawn (vfork-like) rather than fork, which would copy the page
        // tables of the whole daemon for every monitor run (a uid change makes
        // std fork anyway, only for commands that ask for one). The threads that
        // spawn commands keep the normal I/O and CPU priority (see
        // crate::protect), so the command has nothing to undo.
        command.spawn().map_err(spawn_error)?
        // `command` drops here, closing our copies of the pipe's write end.
    };
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let watched = pgid.and_then(|pgid| ProcessId::of(pgid.as_raw()));
    if let Some(id) = watched {
        watch.started(id);
    }
    let mut guard = GroupGuard {
        child,
        pgid,
        watched,
        watch,
    };
    let mut receiver = receiver;
    let mut tail = Tail(Vec::new());
    let mut reading = true;
    let mut buf = [0u8; 4096];

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let exited = loop {
        tokio::select! {
            status = guard.child.wait() => break Some(status),
            () = &mut deadline => break None,
            read = receiver.read(&mut buf), if reading => match read {
                Ok(0) => reading = false,
                Ok(n) => tail.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(program = %program, error = %e, "reading command output failed");
                    reading = false;
                }
            },
        }
    };

    let status = match exited {
        Some(Ok(status)) => {
            guard.disarm();
            convert_status(status)
        }
        Some(Err(source)) => {
            return Err(OsError::ExecWait {
                program: program.clone(),
                source,
            });
        }
        None => {
            guard.kill_group();
            match tokio::time::timeout(REAP_AFTER_KILL_LIMIT, guard.child.wait()).await {
                Ok(Ok(_)) => guard.disarm(),
                // Still unreaped: the guard's drop signals again and tokio
                // reaps it in the background (kill_on_drop).
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(program = %program, "command did not die within {REAP_AFTER_KILL_LIMIT:?} of SIGKILL");
                }
            }
            ExecStatus::TimedOut
        }
    };
    let duration = monotonic_now().saturating_sub(started);

    if reading && !drain_available(&receiver, &mut tail) {
        // A daemonized grandchild still holds the pipe: keep emptying it so its
        // writes never block or raise SIGPIPE, until it closes its end.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut receiver, &mut sink).await;
            });
        }
    }

    Ok(ExecOutcome {
        status,
        duration,
        output: tail.into_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use uphold_testkit::loopback::wait_for_async;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        argv(&["/bin/sh", "-c", script])
    }

    const LONG: Duration = Duration::from_secs(20);
    const WAIT_LIMIT: Duration = Duration::from_secs(10);

    /// Dead means gone or a zombie waiting for whoever inherited it.
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    async fn read_pid(path: &Path) -> i32 {
        wait_for_async("pid file", WAIT_LIMIT, || {
            std::fs::read_to_string(path).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
        })
        .await;
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn exit_codes_and_output() {
        let ok = run(&argv(&["/bin/true"]), LONG, &[]).await.unwrap();
        assert!(ok.success());
        assert_eq!(ok.output, "");

        let out = run(&sh("echo to-out; echo to-err >&2; exit 3"), LONG, &[])
            .await
            .unwrap();
        assert_eq!(out.status, ExecStatus::Exited(3));
        assert!(!out.success());
        assert_eq!(out.output, "to-out\nto-err\n");
        assert!(
            out.summary().contains("exited with code 3"),
            "{}",
            out.summary()
        );
        assert!(out.summary().ends_with("to-err"), "{}", out.summary());

        let killed = run(&sh("kill -TERM $$"), LONG, &[]).await.unwrap();
        assert_eq!(killed.status, ExecStatus::Signaled(libc::SIGTERM));
        assert!(killed.status.to_string().contains("SIGTERM"));
    }

    #[tokio::test]
    async fn argv_is_not_shell_parsed() {
        let out = run(&argv(&["/bin/echo", "a b", "$HOME", ";", "*"]), LONG, &[])
            .await
            .unwrap();
        assert_eq!(out.output, "a b $HOME ; *\n");
    }

    #[tokio::test]
    async fn the_environment_is_minimal_plus_the_callers_variables() {
        // The test harness's environment (CARGO_*, RUST_*, ...) stands for the
        // daemon's: none of it may reach a command.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        let env = vec![("UPHOLD_TEST_VALUE".to_string(), "hello".to_string())];
        let out = run(&argv(&["env"]), LONG, &env).await.unwrap();
        assert!(out.success(), "{}", out.summary());
        let mut names: Vec<&str> = out
            .output
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort();
        let mut expected = vec!["PATH", "UPHOLD_TEST_VALUE"];
        expected.extend(
            PASSED_THROUGH
                .iter()
                .filter(|n| std::env::var_os(n).is_some()),
        );
        expected.sort();
        assert_eq!(names, expected, "{}", out.output);
        assert!(out.output.contains(&format!("PATH={COMMAND_PATH}\n")));
        assert!(out.output.contains("UPHOLD_TEST_VALUE=hello\n"));
    }

    #[tokio::test]
    async fn a_command_runs_as_the_configured_user() {
        if !uphold_testkit::require_root("a_command_runs_as_the_configured_user") {
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let out = run_as(
            &sh("echo $(id -u) $(id -g) $(id -G) $USER $LOGNAME $HOME"),
            LONG,
            &[],
            Some("nobody"),
        )
        .await
        .unwrap();
        assert!(out.success(), "{}", out.summary());
        let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
        // Only the primary group: root's supplementary groups are not kept.
        assert_eq!(
            out.output,
            format!("{uid} {gid} {gid} nobody nobody {}\n", nobody.dir.display())
        );
        // Without a user the command keeps root.
        let out = run_as(&argv(&["id", "-u"]), LONG, &[], None).await.unwrap();
        assert_eq!(out.output, "0\n");
    }

    #[tokio::test]
    async fn an_unknown_user_is_a_clear_error_and_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let script = format!("touch {}", marker.display());
        let err = run_as(&sh(&script), LONG, &[], Some("uphold-no-such-user"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OsError::UnknownUser { user, .. } if user == "uphold-no-such-user"),
            "{err}"
        );
        assert!(
            err.to_string().contains("does not exist on this host"),
            "{err}"
        );
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn missing_program_and_empty_argv() {
        let err = run(&argv(&["/nonexistent/uphold-cmd", "x"]), LONG, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, OsError::ExecNotFound { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/uphold-cmd"), "{err}");

        let err = run(&argv(&["uphold-no-such-command-in-path"]), LONG, &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("uphold-no-such-command-in-path"),
            "{err}"
        );

        let err = run(&[], LONG, &[]).await.unwrap_err();
        assert!(matches!(err, OsError::EmptyArgv), "{err}");

        let dir = std::env::temp_dir();
        let err = run(&argv(&[dir.to_str().unwrap()]), LONG, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, OsError::ExecSpawn { .. }), "{err}");
    }

    #[tokio::test]
    async fn output_keeps_only_the_tail() {
        let out = run(
            &sh("i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo END"),
            LONG,
            &[],
        )
        .await
        .unwrap();
        assert!(out.output.len() <= OUTPUT_TAIL_BYTES);
        assert!(out.output.len() > OUTPUT_TAIL_BYTES - 20);
        assert!(out.output.ends_with("line-1999\nEND\n"), "{:?}", out.output);
    }

    #[test]
    fn tail_does_not_start_inside_a_utf8_sequence() {
        let mut tail = Tail(Vec::new());
        tail.push("é".repeat(OUTPUT_TAIL_BYTES).as_bytes());
        tail.push(b"x");
        let s = tail.into_string();
        assert!(!s.contains('\u{fffd}'));
        assert!(s.ends_with("éx"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!(
            "sleep 100 & echo $! > '{}'; echo waiting; wait",
            pidfile.display()
        );
        // Long enough for the shell to start its background job even on a
        // loaded machine.
        let out = run(&sh(&script), Duration::from_secs(1), &[])
            .await
            .unwrap();
        assert_eq!(out.status, ExecStatus::TimedOut);
        assert!(out.duration >= Duration::from_secs(1));
        assert!(out.duration < Duration::from_secs(10), "{:?}", out.duration);
        assert_eq!(out.output, "waiting\n");
        let bg = read_pid(&pidfile).await;
        wait_for_async("background sleep to die", WAIT_LIMIT, || is_dead(bg)).await;
    }

    #[tokio::test]
    async fn daemonizing_start_returns_when_the_child_exits() {
        // The background sleep inherits stdout and keeps it open for 100 s.
        let out = run(&sh("sleep 100 & echo $!; echo started"), LONG, &[])
            .await
            .unwrap();
        assert!(out.success(), "{}", out.summary());
        assert!(out.duration < Duration::from_secs(10), "{:?}", out.duration);
        let mut lines = out.output.lines();
        let daemon: i32 = lines.next().unwrap().parse().unwrap();
        assert_eq!(lines.next(), Some("started"));
        // A normal exit must not kill what the command left running.
        assert!(!is_dead(daemon), "the daemonized child was killed");
        nix::sys::signal::kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
        wait_for_async("test daemon to die", WAIT_LIMIT, || is_dead(daemon)).await;
    }

    #[tokio::test]
    async fn a_daemon_writing_after_start_returned_is_not_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        // 200 KiB is far more than a pipe buffer: without the background drain
        // the writer would block forever (or die of SIGPIPE without a reader).
        let script = format!(
            "(sleep 0.2; head -c 204800 /dev/zero; touch '{}') & echo started",
            done.display()
        );
        let out = run(&sh(&script), LONG, &[]).await.unwrap();
        assert!(out.success(), "{}", out.summary());
        wait_for_async("late writer to finish", WAIT_LIMIT, || done.exists()).await;
    }

    #[tokio::test]
    async fn cancelling_the_future_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 100 & echo $! > '{}'; wait", pidfile.display());
        let argv = sh(&script);
        let mut running = Box::pin(run(&argv, LONG, &[]));
        let bg = tokio::select! {
            result = &mut running => panic!("command finished early: {result:?}"),
            pid = read_pid(&pidfile) => pid,
        };
        assert!(!is_dead(bg));
        drop(running);
        wait_for_async("background sleep to die after cancel", WAIT_LIMIT, || {
            is_dead(bg)
        })
        .await;
    }
}
