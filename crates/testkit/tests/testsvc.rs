//! The test service's start/stop/check contract, on loopback (no root needed).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use uphold_testkit::loopback::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_uphold-testsvc");

fn svc(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running uphold-testsvc")
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid")
}

#[test]
fn start_check_stop_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    let pidfile_s = pidfile.to_str().expect("utf-8 path");
    let addr = format!("127.0.0.1:{}", free_port());

    let out = svc(&[
        "start",
        "--listen",
        &addr,
        "--reply",
        "n7",
        "--pidfile",
        pidfile_s,
    ]);
    assert!(
        out.status.success(),
        "start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = pid_in(&pidfile);
    assert!(svc(&["check", "--addr", &addr]).status.success());

    // Starting again while it serves is a no-op that succeeds.
    let again = svc(&[
        "start",
        "--listen",
        &addr,
        "--reply",
        "n7",
        "--pidfile",
        pidfile_s,
    ]);
    assert!(again.status.success());
    assert_eq!(pid_in(&pidfile), pid);

    let reply = uphold_testkit::probe::probe_once_blocking(
        addr.parse().expect("addr"),
        Duration::from_secs(1),
    );
    assert_eq!(reply, Ok("n7".to_string()));

    assert!(svc(&["stop", "--pidfile", pidfile_s]).status.success());
    assert!(!pidfile.exists());
    assert!(!uphold_testkit::netns::process_running(pid));
    assert!(!svc(&["check", "--addr", &addr]).status.success());
    // Stopping what is already gone succeeds.
    assert!(svc(&["stop", "--pidfile", pidfile_s]).status.success());
}

#[test]
fn stop_never_signals_a_foreign_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawning sleep");
    std::fs::write(&pidfile, format!("{}\n", sleeper.id())).expect("writing pidfile");
    let out = svc(&["stop", "--pidfile", pidfile.to_str().expect("utf-8 path")]);
    assert!(out.status.success());
    assert_eq!(
        sleeper.try_wait().expect("try_wait"),
        None,
        "stop killed an unrelated process"
    );
    sleeper.kill().expect("killing sleep");
    sleeper.wait().expect("reaping sleep");
}

#[test]
fn check_fails_fast_on_a_closed_port() {
    let addr = format!("127.0.0.1:{}", free_port());
    let t = Instant::now();
    let out = svc(&["check", "--addr", &addr]);
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[test]
fn bad_pidfile_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("svc.pid");
    std::fs::write(&pidfile, "not-a-pid").expect("writing pidfile");
    let out = svc(&["stop", "--pidfile", pidfile.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a pid") && err.contains("svc.pid"),
        "{err}"
    );
}
