//! Guard tests: the guard loop in-process over a pipe (deadlines, EOF, release,
//! shutdown, bad input), address removal inside a test namespace, and the real
//! process path through [`GuardClient`] with this test binary as the guard.

use super::*;
use crate::testns::TestNetns;
use std::io::PipeWriter;
use std::path::PathBuf;
use std::time::Instant;
use uphold_core::{ExecResource, IpResource};
use uphold_testkit::loopback::wait_for;

const WAIT_LIMIT: Duration = Duration::from_secs(10);
const FAR: u64 = 60_000;

fn exec_resource(name: &str, stop: Vec<String>) -> ResourceSpec {
    ResourceSpec::Exec(ExecResource {
        name: name.to_string(),
        start: vec!["/bin/true".to_string()],
        stop,
        monitor: None,
        monitor_interval: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        failures_before_move: 3,
        user: None,
    })
}

fn ip_resource(address: &str, prefix_len: u8, interface: &str) -> ResourceSpec {
    ResourceSpec::Ip(IpResource {
        address: address.parse().unwrap(),
        prefix_len,
        interface: interface.to_string(),
        arp_count: 0,
        monitor_interval: Duration::from_secs(5),
    })
}

fn touch(path: &Path) -> Vec<String> {
    vec!["/bin/touch".to_string(), path.display().to_string()]
}

/// A stop command that appends `word` to `log`, to observe order.
fn append(log: &Path, word: &str) -> Vec<String> {
    vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("echo {word} >> '{}'", log.display()),
    ]
}

/// Waits for `cond` and checks it did not come true before `until`: the
/// condition is sampled before the clock, so a true sample with an earlier
/// clock reading proves it happened early.
fn wait_not_before(what: &str, until: u64, mut cond: impl FnMut() -> bool) {
    wait_for(what, WAIT_LIMIT, || {
        let done = cond();
        let now = monotonic_now_ms();
        assert!(
            !done || now >= until,
            "{what} happened {} ms before the deadline",
            until - now
        );
        done
    });
}

fn in_ms(ms: u64) -> u64 {
    monotonic_now_ms() + ms
}

/// The daemon end of an in-process guard.
struct Daemon {
    writer: Option<PipeWriter>,
    result: mpsc::Receiver<Result<(), OsError>>,
}

impl Daemon {
    fn start() -> Daemon {
        let (reader, writer) = io::pipe().unwrap();
        let (tx, result) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run_guard(reader));
        });
        Daemon {
            writer: Some(writer),
            result,
        }
    }

    fn send(&mut self, message: &GuardMessage) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.raw(&line);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.writer.as_mut().unwrap().write_all(bytes).unwrap();
    }

    fn hold(&mut self, group: &str, until: u64, resources: Vec<ResourceSpec>) {
        self.send(&GuardMessage::Hold {
            group: group.to_string(),
            until_monotonic_ms: until,
            resources,
            env: Vec::new(),
        });
    }

    /// The guard's return value, which must come within the wait limit.
    fn finished(&self) -> Result<(), OsError> {
        self.result
            .recv_timeout(WAIT_LIMIT)
            .expect("the guard did not exit")
    }

    fn close(&mut self) -> Result<(), OsError> {
        self.writer = None;
        self.finished()
    }
}

#[test]
fn message_format_is_tagged_json() {
    let release = GuardMessage::Release {
        group: "web".to_string(),
    };
    assert_eq!(
        serde_json::to_string(&release).unwrap(),
        r#"{"type":"release","group":"web"}"#
    );
    assert_eq!(
        serde_json::to_string(&GuardMessage::Shutdown).unwrap(),
        r#"{"type":"shutdown"}"#
    );
    let hold = GuardMessage::Hold {
        group: "web".to_string(),
        until_monotonic_ms: 1234,
        resources: vec![
            ip_resource("10.0.0.5", 24, "eth0"),
            exec_resource("app", touch(Path::new("/tmp/x"))),
        ],
        env: vec![("UPHOLD_GROUP".to_string(), "web".to_string())],
    };
    let text = serde_json::to_string(&hold).unwrap();
    assert!(text.starts_with(r#"{"type":"hold","group":"web","until_monotonic_ms":1234"#));
    assert_eq!(serde_json::from_str::<GuardMessage>(&text).unwrap(), hold);
}

#[test]
fn deadlines_fire_in_time_order_and_resources_undo_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let lines = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let mut daemon = Daemon::start();
    let late_until = in_ms(400);
    let early_until = in_ms(100);
    daemon.hold(
        "a-late",
        late_until,
        vec![exec_resource("late", append(&log, "late"))],
    );
    daemon.hold(
        "b-early",
        early_until,
        vec![
            exec_resource("first", append(&log, "early-first")),
            exec_resource("second", append(&log, "early-second")),
        ],
    );
    wait_not_before("the early group's stops", early_until, || lines() >= 2);
    wait_not_before("the late group's stop", late_until, || lines() >= 3);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "early-second\nearly-first\nlate\n"
    );
    // Expired groups are forgotten: EOF now has nothing left to undo.
    daemon.close().unwrap();
    assert_eq!(lines(), 3);
}

#[test]
fn a_new_hold_replaces_the_old_deadline_and_resources() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    let mut daemon = Daemon::start();
    daemon.hold("web", in_ms(FAR), vec![exec_resource("app", touch(&old))]);
    daemon.hold("web", in_ms(100), vec![exec_resource("app", touch(&new))]);
    wait_for("the replaced hold to expire", WAIT_LIMIT, || new.exists());
    daemon.close().unwrap();
    assert!(!old.exists(), "the replaced resources were undone");
}

#[test]
fn stop_commands_get_the_environment_of_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let mut daemon = Daemon::start();
    let stop = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("echo \"$UPHOLD_GROUP\" > '{}'", out.display()),
    ];
    daemon.send(&GuardMessage::Hold {
        group: "web".to_string(),
        until_monotonic_ms: in_ms(FAR),
        resources: vec![exec_resource("app", stop)],
        env: vec![("UPHOLD_GROUP".to_string(), "web".to_string())],
    });
    daemon.close().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "web\n");
}

#[test]
fn eof_undoes_every_group_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let db = dir.path().join("db");
    let mut daemon = Daemon::start();
    daemon.hold("web", in_ms(FAR), vec![exec_resource("app", touch(&web))]);
    daemon.hold("db", in_ms(FAR), vec![exec_resource("mysql", touch(&db))]);
    let started = Instant::now();
    daemon.close().unwrap();
    assert!(started.elapsed() < Duration::from_secs(FAR / 1000));
    assert!(web.exists() && db.exists());
}

#[test]
fn release_prevents_the_undo() {
    let dir = tempfile::tempdir().unwrap();
    let released = dir.path().join("released");
    let later = dir.path().join("later");
    let mut daemon = Daemon::start();
    // Margins are wide so that a loaded machine cannot let the lease run out
    // between the Hold and the Release.
    daemon.hold(
        "web",
        in_ms(500),
        vec![exec_resource("app", touch(&released))],
    );
    daemon.send(&GuardMessage::Release {
        group: "web".to_string(),
    });
    // A later deadline proves the guard went past the released one.
    daemon.hold(
        "db",
        in_ms(700),
        vec![exec_resource("mysql", touch(&later))],
    );
    wait_for("the later group to expire", WAIT_LIMIT, || later.exists());
    assert!(!released.exists(), "a released group was undone");
    daemon.send(&GuardMessage::Shutdown);
    daemon.finished().unwrap();
    assert!(
        !released.exists(),
        "a released group was undone at shutdown"
    );
}

#[test]
fn shutdown_undoes_what_is_still_held_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let mut daemon = Daemon::start();
    daemon.hold("web", in_ms(FAR), vec![exec_resource("app", touch(&web))]);
    daemon.send(&GuardMessage::Shutdown);
    // The pipe stays open: the guard must exit on the message itself.
    daemon.finished().unwrap();
    assert!(web.exists());
}

#[test]
fn unreadable_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let mut daemon = Daemon::start();
    daemon.raw(b"not json\n");
    daemon.raw(b"{\"type\":\"bogus\"}\n");
    daemon.raw(&[0xff, 0xfe, b'\n']);
    daemon.hold("web", in_ms(50), vec![exec_resource("app", touch(&web))]);
    wait_for("the hold after garbage to expire", WAIT_LIMIT, || {
        web.exists()
    });
    daemon.close().unwrap();
}

#[test]
fn failing_stop_commands_do_not_stop_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let mut daemon = Daemon::start();
    daemon.hold(
        "web",
        in_ms(FAR),
        vec![
            exec_resource("app", touch(&web)),
            exec_resource("broken", vec!["/nonexistent/stop".to_string()]),
            exec_resource("failing", vec!["/bin/false".to_string()]),
            exec_resource("empty", vec![]),
        ],
    );
    daemon.close().unwrap();
    assert!(web.exists());
}

fn ns_has(ns: &str, cidr: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-o", "addr", "show", "dev", "veth0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {cidr} "))
}

#[test]
fn addresses_are_removed_at_expiry_and_on_eof_in_a_namespace() {
    let Some(ns) = TestNetns::create_or_skip("guard") else {
        return;
    };
    ns.ip(&["addr", "add", "10.80.0.5/24", "dev", "veth0"]);
    ns.ip(&["addr", "add", "10.80.0.6/24", "dev", "veth0"]);
    ns.ip(&["addr", "add", "fd00:80::6/64", "dev", "veth0", "nodad"]);
    assert!(ns_has(ns.name(), "10.80.0.5/24"));

    let (reader, writer) = io::pipe().unwrap();
    let name = ns.name().to_string();
    let controller = std::thread::spawn(move || {
        let mut daemon = Daemon {
            writer: Some(writer),
            result: mpsc::channel().1,
        };
        daemon.hold(
            "web",
            in_ms(100),
            vec![ip_resource("10.80.0.5", 24, "veth0")],
        );
        daemon.hold(
            "db",
            in_ms(FAR),
            vec![
                ip_resource("10.80.0.6", 24, "veth0"),
                ip_resource("fd00:80::6", 64, "veth0"),
                // Gone already: reported, not fatal.
                ip_resource("10.80.0.7", 24, "veth0"),
            ],
        );
        wait_for("10.80.0.5 to be removed", WAIT_LIMIT, || {
            !ns_has(&name, "10.80.0.5/24")
        });
        assert!(ns_has(&name, "10.80.0.6/24"), "db was undone before EOF");
        // Dropping `daemon` closes the pipe.
    });
    // The guard runs on a thread inside the namespace, as `uphold guard`
    // would run inside the daemon's namespace.
    let result = ns.run_sync(move || run_guard(reader));
    if let Err(panic) = controller.join() {
        std::panic::resume_unwind(panic);
    }
    result.unwrap();
    assert!(!ns_has(ns.name(), "10.80.0.6/24"));
    assert!(!ns_has(ns.name(), "fd00:80::6/64"));
}

// ------------------------------------------------------ real guard process

/// Positional argument that marks the child invocation of this test binary;
/// as an `--exact` filter it matches no test, so it changes nothing else.
const CHILD_MARKER: &str = "uphold-os-guard-child-marker";
const CHILD_TEST: &str = "guard::tests::guard_child_process";

/// Not a test: the body of the guard process that the tests below start by
/// re-running this test binary. Run without the marker it does nothing.
#[test]
#[ignore = "helper run as a child process by the GuardClient tests"]
fn guard_child_process() {
    if std::env::args().any(|a| a == CHILD_MARKER) {
        run_guard_process(None).unwrap();
    }
}

fn spawn_test_guard() -> GuardClient {
    let exe: PathBuf = std::env::current_exe().unwrap();
    GuardClient::spawn(
        &exe,
        &[
            CHILD_TEST,
            CHILD_MARKER,
            "--exact",
            "--ignored",
            "--quiet",
            "--test-threads=1",
        ],
    )
    .unwrap()
}

fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn guard_process_runs_in_its_own_session_and_undoes_when_the_daemon_goes() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let db = dir.path().join("db");
    let mut client = spawn_test_guard();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(client.pid()).unwrap());
    assert_eq!(
        nix::unistd::getsid(Some(pid)).unwrap(),
        pid,
        "not a session leader"
    );
    assert_ne!(
        nix::unistd::getpgid(Some(pid)).unwrap(),
        nix::unistd::getpgrp(),
        "shares the daemon's process group"
    );
    assert!(client.is_alive());

    client
        .hold("web", in_ms(200), &[exec_resource("app", touch(&web))], &[])
        .unwrap();
    wait_for(
        "web lease to expire in the guard process",
        WAIT_LIMIT,
        || web.exists(),
    );
    client
        .hold("db", in_ms(FAR), &[exec_resource("mysql", touch(&db))], &[])
        .unwrap();
    assert!(client.is_alive());
    let guard_pid = client.pid();
    // What a SIGKILLed daemon leaves behind: the pipe closes, nothing else.
    drop(client);
    wait_for(
        "db to be undone after the daemon vanished",
        WAIT_LIMIT,
        || db.exists(),
    );
    wait_for("the guard to exit", WAIT_LIMIT, || is_dead(guard_pid));
}

#[test]
fn guard_process_shutdown_undoes_and_reports_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let kept = dir.path().join("kept");
    let mut client = spawn_test_guard();
    client
        .hold("web", in_ms(FAR), &[exec_resource("app", touch(&web))], &[])
        .unwrap();
    client
        .hold(
            "kept",
            in_ms(FAR),
            &[exec_resource("app", touch(&kept))],
            &[],
        )
        .unwrap();
    client.release("kept").unwrap();
    client.shutdown().unwrap();
    assert!(web.exists());
    assert!(!kept.exists());
}

#[test]
fn sigterm_makes_the_guard_process_undo_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web");
    let mut client = spawn_test_guard();
    client
        .hold("web", in_ms(FAR), &[exec_resource("app", touch(&web))], &[])
        .unwrap();
    // Wait until the guard has the hold: a release of an unknown group is a
    // no-op, so use a probe group whose expiry proves the hold was read.
    let probe = dir.path().join("probe");
    client
        .hold(
            "probe",
            in_ms(0),
            &[exec_resource("probe", touch(&probe))],
            &[],
        )
        .unwrap();
    wait_for("the guard to process the holds", WAIT_LIMIT, || {
        probe.exists()
    });
    let pid = nix::unistd::Pid::from_raw(i32::try_from(client.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("web to be undone on SIGTERM", WAIT_LIMIT, || web.exists());
    wait_for("the guard to exit", WAIT_LIMIT, || !client.is_alive());
}

#[test]
fn a_dead_guard_is_detected() {
    let mut client = GuardClient::spawn(Path::new("/bin/sh"), &["-c", "exit 3"]).unwrap();
    wait_for("the short-lived guard to exit", WAIT_LIMIT, || {
        !client.is_alive()
    });
    let err = client.release("web").unwrap_err();
    assert!(matches!(err, OsError::GuardGone { .. }), "{err}");
    let err = client.shutdown().unwrap_err();
    assert!(matches!(err, OsError::GuardFailed { .. }), "{err}");
}

#[test]
fn a_guard_that_does_not_read_is_reported_as_stalled_not_blocking() {
    // `sleep` never reads its stdin, like a SIGSTOPped guard.
    let mut client = GuardClient::spawn(Path::new("/bin/sleep"), &["100"]).unwrap();
    let resources: Vec<ResourceSpec> = (0..50)
        .map(|i| exec_resource(&format!("service-{i}"), vec!["/bin/true".to_string()]))
        .collect();
    let mut stalled = false;
    for _ in 0..10_000 {
        match client.hold("web", in_ms(FAR), &resources, &[]) {
            Ok(()) => {}
            Err(OsError::GuardStalled) => {
                stalled = true;
                break;
            }
            Err(err) => panic!("unexpected error: {err}"),
        }
    }
    assert!(
        stalled,
        "writes to a guard that does not read never stalled"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(client.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for("the test guard to die", WAIT_LIMIT, || !client.is_alive());
}

#[test]
fn spawning_a_missing_guard_names_it() {
    let err = GuardClient::spawn(Path::new("/nonexistent/uphold"), &["guard"]).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/uphold"), "{err}");
}

/// A command of this test that leads its own process group, as the daemon's
/// commands do, with a thread that reaps it as init reaps an orphan.
fn running_command(script: &str) -> (ProcessId, std::thread::JoinHandle<()>) {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new("/bin/sh")
        .args(["-c", script])
        .process_group(0)
        .spawn()
        .unwrap();
    let process = ProcessId::of(child.id() as i32).expect("the command runs");
    let reaper = std::thread::spawn(move || {
        let _ = child.wait();
    });
    (process, reaper)
}

#[test]
fn a_command_the_daemon_left_running_is_ended_before_the_stop_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let (start, start_reaper) = running_command("sleep 60");
    let (other, other_reaper) = running_command("sleep 60");
    // The stop writes whether the start command was still alive beside it.
    let stop = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!(
            "s=$(awk '{{print $3}}' /proc/{}/stat 2>/dev/null); \
             case \"$s\" in ''|Z|X) echo stop;; *) echo overlap;; esac >> '{}'",
            start.pid,
            log.display()
        ),
    ];
    let mut daemon = Daemon::start();
    daemon.hold("web", in_ms(FAR), vec![exec_resource("app", stop)]);
    daemon.send(&GuardMessage::CommandStarted {
        group: "web".into(),
        process: start,
    });
    // A group the guard does not hold: its command is not the guard's to end.
    daemon.send(&GuardMessage::CommandStarted {
        group: "batch".into(),
        process: other,
    });
    daemon.close().unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\n");
    start_reaper.join().unwrap();
    assert!(!start.is_running());
    assert!(
        other.is_running(),
        "the other group's command was left alone"
    );
    assert_eq!(other.kill_group_and_wait(WAIT_LIMIT), KillOutcome::Killed);
    other_reaper.join().unwrap();
}

#[test]
fn a_command_that_ended_is_not_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let (command, reaper) = running_command("sleep 60");
    let mut daemon = Daemon::start();
    daemon.hold("web", in_ms(FAR), vec![exec_resource("app", touch(&done))]);
    daemon.send(&GuardMessage::CommandStarted {
        group: "web".into(),
        process: command,
    });
    daemon.send(&GuardMessage::CommandEnded { process: command });
    daemon.close().unwrap();
    assert!(done.exists());
    assert!(command.is_running(), "an ended command is forgotten");
    assert_eq!(command.kill_group_and_wait(WAIT_LIMIT), KillOutcome::Killed);
    reaper.join().unwrap();
}

#[test]
fn the_ledger_tells_the_guard_process_of_a_start_still_running_when_the_daemon_goes() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = dir.path().join("stopped");
    let mut client = spawn_test_guard();
    let ledger = CommandLedger::default();
    ledger.attach(&client);
    client
        .hold(
            "web",
            in_ms(FAR),
            &[exec_resource("app", touch(&stopped))],
            &[],
        )
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = vec!["/bin/sleep".to_string(), "60".to_string()];
    let watch = ledger.watch("web");
    let outcome = runtime.block_on(async {
        let run = exec::run_watched(&start, Duration::from_secs(60), &[], None, &watch);
        tokio::pin!(run);
        // Once the start runs, the daemon "dies": its end of the pipe closes.
        let mut client = Some(client);
        loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                () = tokio::time::sleep(Duration::from_millis(20)), if client.is_some() => {
                    if !ledger.lock().running.is_empty() {
                        drop(client.take());
                    }
                }
            }
        }
    });
    let outcome = outcome.unwrap();
    assert_eq!(
        outcome.status,
        exec::ExecStatus::Signaled(9),
        "the guard killed the start"
    );
    wait_for("the guard's stop", WAIT_LIMIT, || stopped.exists());
    assert!(ledger.lock().running.is_empty(), "the killed start is over");
}
