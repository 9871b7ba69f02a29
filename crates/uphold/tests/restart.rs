//! A daemon SIGKILLed with its process group and started again at once, as
//! systemd's `Restart=on-failure` does, on three real `uphold run` members on
//! loopback (no root needed). The group's one resource logs every start and
//! stop with a timestamp, and its stop is slow (0.3 s), so the dead daemon's
//! guard is still stopping it when the new daemon comes up. Guards regression:
//! the new daemon started the resource while the old guard's stop ran, the
//! stop killed it, the monitor failed and the group moved.
//!
//! A second test kills the daemon while its (long) start command runs: the old
//! guard must end that command before it runs the stop.
//!
//! `UPHOLD_RESTART_ROUNDS` sets the number of kill-and-restart rounds (default 3).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uphold_testkit::loopback::{wait_until, Cluster};

#[derive(Debug, Clone, PartialEq)]
struct Op {
    at: f64,
    node: String,
    what: String,
}

/// The resource's log: "<unix time> <node> <start-begin|start-end|stop-begin|stop-end>".
fn read_ops(path: &Path) -> Vec<Op> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ops: Vec<Op> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let at = parts.next()?.parse().ok()?;
            Some(Op {
                at,
                node: parts.next()?.to_string(),
                what: parts.next()?.to_string(),
            })
        })
        .collect();
    ops.sort_by(|a, b| a.at.total_cmp(&b.at));
    ops
}

/// Operations on one node's resource that ran at the same time: a start
/// beginning while a stop was still running, or the other way round.
fn overlaps(ops: &[Op]) -> Vec<String> {
    let mut running: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    let mut found = Vec::new();
    for op in ops {
        let open = running.entry(op.node.as_str()).or_default();
        match op.what.as_str() {
            "start-begin" | "stop-begin" => {
                for other in open.iter() {
                    found.push(format!(
                        "{} {} at {:.3} while {} begun at {:.3} was running",
                        op.node, op.what, op.at, other.what, other.at
                    ));
                }
                open.push(op);
            }
            "start-end" | "stop-end" => {
                let begin = op.what.replace("-end", "-begin");
                if let Some(i) = open.iter().position(|o| o.what == begin) {
                    open.remove(i);
                }
            }
            _ => {}
        }
    }
    found
}

fn script(log: &Path, what: &str, body: &str) -> String {
    format!(
        "echo \"$(date +%s.%N) $UPHOLD_NODE {what}-begin\" >> {log}; {body} \
         echo \"$(date +%s.%N) $UPHOLD_NODE {what}-end\" >> {log}",
        log = log.display()
    )
}

/// Three members a, b, c running group `web`: one exec resource with these
/// shell scripts, monitored by the file its start touches; `extra` adds keys.
fn three_members(d: &Path, start: &str, stop: &str, extra: &str) -> Cluster {
    let group = format!(
        "[[group]]\nname = \"web\"\nnodes = [\"a\", \"b\", \"c\"]\n\
         [[group.resource]]\ntype = \"exec\"\nname = \"svc\"\n\
         start = [\"/bin/sh\", \"-c\", {start:?}]\n\
         stop = [\"/bin/sh\", \"-c\", {stop:?}]\n\
         monitor = [\"/bin/sh\", \"-c\", \"test -f {{dir}}/running-$UPHOLD_NODE\"]\n\
         interval = \"200ms\"\n{extra}"
    );
    let uphold = PathBuf::from(env!("CARGO_BIN_EXE_uphold"));
    let mut cluster = Cluster::create(&uphold, d, &["a", "b", "c"], &group).unwrap();
    for i in 0..3 {
        cluster.start(i).unwrap();
    }
    cluster
}

fn failed(cluster: &Cluster, ops_log: &Path, what: String) -> ! {
    panic!(
        "{what}\nresource log:\n{}\n{}",
        std::fs::read_to_string(ops_log).unwrap_or_default(),
        cluster.log_tails(40)
    )
}

#[test]
fn a_daemon_restarted_at_once_never_overlaps_its_old_guard_and_keeps_the_group() {
    let rounds: usize = std::env::var("UPHOLD_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ops_log = d.join("ops.log");
    let start = script(
        &ops_log,
        "start",
        "sleep 0.05; touch {dir}/running-$UPHOLD_NODE;",
    );
    let stop = script(
        &ops_log,
        "stop",
        "sleep 0.3; rm -f {dir}/running-$UPHOLD_NODE;",
    );
    let mut cluster = three_members(d, &start, &stop, "");
    let fail = |cluster: &Cluster, what: String| -> ! { failed(cluster, &ops_log, what) };
    for round in 0..rounds {
        let mut owner = None;
        if let Err(e) = wait_until("web running", Duration::from_secs(30), || {
            owner = cluster.running_on("web");
            owner.is_some()
        }) {
            fail(&cluster, format!("round {round}: {e}"));
        }
        let owner = owner.unwrap();
        // Settled: a monitor pass or two.
        std::thread::sleep(Duration::from_millis(500));
        let before = read_ops(&ops_log).len();
        let i = cluster.index(&owner).unwrap();
        let killed_at = Instant::now();
        cluster.kill(i).unwrap();
        cluster.start(i).unwrap();
        // Back up (anywhere), then give a move or a monitor failure time to show.
        let mut back_on = None;
        if let Err(e) = wait_until("web running again", Duration::from_secs(30), || {
            back_on = cluster.running_on("web");
            back_on.is_some()
        }) {
            fail(&cluster, format!("round {round}: {e}"));
        }
        let back_after = killed_at.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let ops = read_ops(&ops_log);
        let found = overlaps(&ops);
        if !found.is_empty() {
            fail(
                &cluster,
                format!("round {round}: overlapping operations: {found:#?}"),
            );
        }
        let round_ops = &ops[before..];
        let starts: Vec<&str> = round_ops
            .iter()
            .filter(|o| o.what == "start-end")
            .map(|o| o.node.as_str())
            .collect();
        // The service was down from the end of the old guard's stop to the end
        // of the new start: at most stop + start, and never overlapping.
        let stopped = round_ops
            .iter()
            .find(|o| o.what == "stop-end")
            .map(|o| o.at);
        let started = round_ops
            .iter()
            .rev()
            .find(|o| o.what == "start-end")
            .map(|o| o.at);
        let down_ms = match (stopped, started) {
            (Some(stop), Some(start)) => (start - stop) * 1000.0,
            _ => fail(
                &cluster,
                format!("round {round}: no stop and start in the log"),
            ),
        };
        eprintln!(
            "round {round}: owner {owner} killed and restarted; web back on {} after {:.0} ms; \
             service down {down_ms:.0} ms (stop 300 + start 50 ms); starts since: {starts:?}",
            back_on.as_deref().unwrap_or("?"),
            back_after.as_secs_f64() * 1000.0
        );
        // Stop plus start is 350 ms; a loaded CI machine gets some slack.
        if down_ms > 1500.0 {
            fail(
                &cluster,
                format!("round {round}: service down {down_ms:.0} ms"),
            );
        }
        // The node is healthy: the group stays on it, started once more.
        if starts != vec![owner.as_str()] || cluster.running_on("web").as_deref() != Some(&owner) {
            fail(
                &cluster,
                format!("round {round}: web did not stay on {owner}: starts {starts:?}"),
            );
        }
    }
}

/// The start commands' lines of kind `what` (start-begin, start-tick): time,
/// node and the pid of the start's shell.
fn start_lines(ops_log: &Path, what: &str) -> Vec<(f64, String, String)> {
    let text = std::fs::read_to_string(ops_log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let at: f64 = parts.next()?.parse().ok()?;
            let node = parts.next()?.to_string();
            (parts.next()? == what).then_some(())?;
            Some((at, node, parts.next()?.to_string()))
        })
        .collect()
}

/// The daemon is killed while its start command runs (a long one, 1 s), and
/// started again at once. Its guard must end that start before it runs the
/// stop: no tick of the old start may follow the stop's beginning.
#[test]
fn a_start_cut_short_by_the_daemons_death_is_ended_before_the_guard_stops() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ops_log = d.join("ops.log");
    let log = ops_log.display();
    let start = format!(
        "echo \"$(date +%s.%N) $UPHOLD_NODE start-begin $$\" >> {log}; \
         for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
         echo \"$(date +%s.%N) $UPHOLD_NODE start-tick $$\" >> {log}; sleep 0.05; done; \
         touch {{dir}}/running-$UPHOLD_NODE; \
         echo \"$(date +%s.%N) $UPHOLD_NODE start-end $$\" >> {log}"
    );
    let stop = script(
        &ops_log,
        "stop",
        "sleep 0.3; rm -f {dir}/running-$UPHOLD_NODE;",
    );
    let mut cluster = three_members(d, &start, &stop, "timeout = \"5s\"\n");
    let fail = |cluster: &Cluster, what: String| -> ! { failed(cluster, &ops_log, what) };
    let mut owner = None;
    if let Err(e) = wait_until("web running", Duration::from_secs(30), || {
        owner = cluster.running_on("web");
        owner.is_some()
    }) {
        fail(&cluster, e.to_string());
    }
    let owner = owner.unwrap();
    let i = cluster.index(&owner).unwrap();
    // A kill and restart makes the next run start the resource again...
    cluster.kill(i).unwrap();
    cluster.start(i).unwrap();
    let begun = |ops: &[Op]| ops.iter().filter(|o| o.what == "start-begin").count();
    let before = begun(&read_ops(&ops_log));
    if let Err(e) = wait_until("the new run's start", Duration::from_secs(30), || {
        begun(&read_ops(&ops_log)) > before
    }) {
        fail(&cluster, e.to_string());
    }
    // ...and a kill in the middle of that start leaves it running.
    cluster.kill(i).unwrap();
    cluster.start(i).unwrap();
    if let Err(e) = wait_until("web running again", Duration::from_secs(30), || {
        cluster.running_on("web").is_some()
    }) {
        fail(&cluster, e.to_string());
    }
    let ops = read_ops(&ops_log);
    let last_stop = ops
        .iter()
        .rev()
        .find(|o| o.what == "stop-begin" && o.node == owner)
        .map(|o| o.at);
    let Some(stop_at) = last_stop else {
        fail(&cluster, "no stop by the guard after the kill".into());
    };
    // Every start begun before that stop must be silent after it.
    let late: Vec<_> = start_lines(&ops_log, "start-tick")
        .into_iter()
        .filter(|(at, node, pid)| {
            *node == owner
                && *at > stop_at
                && start_lines(&ops_log, "start-begin")
                    .iter()
                    .any(|(begun, n, p)| n == node && p == pid && *begun < stop_at)
        })
        .collect();
    if !late.is_empty() {
        fail(
            &cluster,
            format!("the old start still ran during the guard's stop: {late:?}"),
        );
    }
    eprintln!("start cut short on {owner}: ended before the guard's stop at {stop_at:.3}");
}
