//! The namespace lab itself (root only): wiring, link faults, partitions,
//! cleanup, and the measurement instruments against a hand-moved VIP.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use uphold_testkit::netns::{node_addr, node_name, vip, Lab, CLIENT_ADDR};
use uphold_testkit::probe::{self, connect_from, now_us, ObserveSpec, Observer};
use uphold_testkit::require_root;

const PORT: u16 = 8080;
const TESTSVC: &str = env!("CARGO_BIN_EXE_uphold-testsvc");

fn at(ip: std::net::Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), PORT)
}

/// Polls `f` until it returns true or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reaches(from_ns: &str, to: SocketAddr) -> bool {
    connect_from(from_ns, to, Duration::from_millis(300)).is_ok()
}

/// Starts `uphold-testsvc serve` on every node, replying with the node's name,
/// and waits until the client reaches each.
fn serve_everywhere(lab: &Lab) -> Vec<Child> {
    let mut kids = Vec::new();
    for i in 1..=lab.nodes() {
        let ns = lab.node_ns(i).expect("node ns");
        let log = lab.dir().join(format!("svc-{i}.log"));
        let argv = [
            TESTSVC,
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--reply",
            &node_name(i),
        ];
        kids.push(lab.spawn_in(&ns, &argv, &log).expect("spawning service"));
        let client = lab.client_ns();
        assert!(
            eventually(Duration::from_secs(5), || connect_from(
                &client,
                at(node_addr(i)),
                Duration::from_millis(300)
            )
            .is_ok_and(|r| r == node_name(i))),
            "client never reached {}",
            node_name(i)
        );
    }
    kids
}

fn ns_exists(ns: &str) -> bool {
    Lab::ns_path(ns).exists()
}

#[test]
fn lab_wiring_faults_and_cleanup() {
    if !require_root("lab_wiring_faults_and_cleanup") {
        return;
    }
    let lab = Lab::create("uphtest", 3).expect("creating lab");
    let names: Vec<String> = (1..=3)
        .map(|i| lab.node_ns(i).expect("node ns"))
        .chain([lab.client_ns(), lab.switch_ns()])
        .collect();
    assert!(names.iter().all(|n| ns_exists(n)));
    let dir = lab.dir().to_path_buf();
    let mut kids = serve_everywhere(&lab);
    let (n1, n2, n3, client) = (
        lab.node_ns(1).expect("ns"),
        lab.node_ns(2).expect("ns"),
        lab.node_ns(3).expect("ns"),
        lab.client_ns(),
    );

    // Nodes reach each other; the client's address is what the plan says.
    assert!(reaches(&n1, at(node_addr(2))));
    assert!(reaches(&n3, at(node_addr(1))));
    let out = lab
        .run(&client, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{CLIENT_ADDR}/24")));

    // Link down: node 1 is unreachable from everyone, the others are not.
    lab.link_down(1).expect("link down");
    assert!(!reaches(&client, at(node_addr(1))));
    assert!(!reaches(&n2, at(node_addr(1))));
    assert!(reaches(&client, at(node_addr(2))));
    let carrier = lab
        .run(&n1, &["ip", "-o", "link", "show", "dev", "eth0"])
        .expect("ip link");
    assert!(
        String::from_utf8_lossy(&carrier.stdout).contains("NO-CARRIER"),
        "node should see carrier loss: {}",
        String::from_utf8_lossy(&carrier.stdout)
    );
    lab.link_up(1).expect("link up");
    assert!(eventually(Duration::from_secs(5), || reaches(
        &client,
        at(node_addr(1))
    )));

    // Partition: node 1 and its peers cannot talk; the client reaches everyone.
    lab.partition_from_peers(1).expect("partition");
    assert!(!reaches(&n1, at(node_addr(2))));
    assert!(!reaches(&n2, at(node_addr(1))));
    assert!(!reaches(&n3, at(node_addr(1))));
    assert!(reaches(&n2, at(node_addr(3))));
    assert!(reaches(&client, at(node_addr(1))));
    assert!(reaches(&client, at(node_addr(2))));
    lab.heal(1).expect("heal");
    assert!(eventually(Duration::from_secs(5), || reaches(
        &n1,
        at(node_addr(2))
    )));
    assert!(reaches(&n2, at(node_addr(1))));

    drop(lab);
    for n in &names {
        assert!(!ns_exists(n), "{n} survived drop");
    }
    assert!(!dir.exists(), "{} survived drop", dir.display());
    for k in &mut kids {
        let status = k.wait().expect("reaping service");
        assert_eq!(
            status.signal(),
            Some(9),
            "service should have been killed by the lab"
        );
    }
}

#[test]
fn lab_is_removed_when_a_test_panics() {
    if !require_root("lab_is_removed_when_a_test_panics") {
        return;
    }
    let mut seen = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::create("uphtest", 2).expect("creating lab");
        seen.push(lab.switch_ns());
        seen.push(lab.node_ns(2).expect("ns"));
        panic!("test failure inside a lab");
    }));
    assert!(r.is_err());
    assert_eq!(seen.len(), 2);
    for n in &seen {
        assert!(!ns_exists(n), "{n} survived a panic");
    }
}

#[test]
fn stale_namespaces_of_dead_runs_are_removed() {
    if !require_root("stale_namespaces_of_dead_runs_are_removed") {
        return;
    }
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("spawning true");
    let dead = gone.id();
    gone.wait().expect("reaping true");
    let stale = format!("uphstale-{dead}-0-n1");
    let live = format!("uphstale-{}-999-n1", std::process::id());
    for n in [&stale, &live] {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .expect("ip netns add");
        assert!(st.success());
    }
    let lab = Lab::create("uphstale", 1).expect("creating lab");
    assert!(
        !ns_exists(&stale),
        "stale namespace of dead pid {dead} was kept"
    );
    assert!(ns_exists(&live), "namespace of a live process was removed");
    drop(lab);
    let st = std::process::Command::new("ip")
        .args(["netns", "del", &live])
        .status()
        .expect("ip netns del");
    assert!(st.success());
}

/// Moves the VIP by hand and checks what the observer reports: a clean move
/// shows no double ownership and a bounded outage; an overlapping move shows
/// double ownership of about the overlap.
#[test]
fn observer_measures_a_hand_moved_vip() {
    if !require_root("observer_measures_a_hand_moved_vip") {
        return;
    }
    let lab = Lab::create("uphtest", 2).expect("creating lab");
    let mut kids = serve_everywhere(&lab);
    let (n1, n2, client) = (
        lab.node_ns(1).expect("ns"),
        lab.node_ns(2).expect("ns"),
        lab.client_ns(),
    );
    let cidr = format!("{}/24", vip(0));
    let add = |ns: &str| {
        lab.run(ns, &["ip", "addr", "add", &cidr, "dev", "eth0"])
            .expect("adding VIP")
    };
    let del = |ns: &str| {
        lab.run(ns, &["ip", "addr", "del", &cidr, "dev", "eth0"])
            .expect("removing VIP")
    };
    // Without gratuitous ARP the client keeps the old MAC; flushing its
    // neighbour cache stands in for the announcement.
    let flush = || {
        lab.run(&client, &["ip", "neigh", "flush", "dev", "eth0"])
            .expect("flushing neighbours")
    };

    add(&n1);
    let obs = Observer::start(&ObserveSpec {
        client_ns: client.clone(),
        node_ns: vec![n1.clone(), n2.clone()],
        vip: vip(0),
        port: PORT,
        probe_timeout: Duration::from_millis(100),
    })
    .expect("starting observer");
    let stable = |want: usize| {
        eventually(Duration::from_secs(10), || {
            probe::stable_owner(&obs.snapshot(), now_us(), 500_000, 20) == Some(want)
        })
    };
    assert!(stable(1), "node 1 never became the stable owner");

    // Clean move 1 -> 2.
    let t_move = now_us();
    del(&n1);
    add(&n2);
    flush();
    assert!(stable(2), "node 2 never became the stable owner");

    // Overlapping move 2 -> 1: both hold it for ~300 ms.
    let t_overlap = now_us();
    add(&n1);
    std::thread::sleep(Duration::from_millis(300));
    del(&n2);
    flush();
    assert!(stable(1), "node 1 never became the stable owner again");
    let rec = obs.stop();

    let clean = probe::double_ownership(&rec.samples, t_move, t_overlap);
    assert_eq!(
        clean.observed_ms, 0.0,
        "clean move reported double ownership: {clean:?}"
    );
    let d = probe::downtime(&rec.probes, t_move);
    assert!(d.recovered);
    assert!(
        d.longest_ms < 3000.0,
        "outage of a hand move too long: {d:?}"
    );
    assert_eq!(
        probe::first_served_by_other(&rec.probes, t_move, "n1").map(|(_, n)| n),
        Some("n2".to_string())
    );

    let overlap = probe::double_ownership(&rec.samples, t_overlap, now_us());
    assert!(overlap.any);
    assert!(
        (250.0..=1000.0).contains(&overlap.observed_ms),
        "overlap of ~300 ms measured as {overlap:?}"
    );
    assert!(overlap.upper_ms >= overlap.observed_ms);
    assert!(rec.sample_errors.is_empty(), "{:?}", rec.sample_errors);

    drop(lab);
    for k in &mut kids {
        let _ = k.wait();
    }
}

#[test]
fn spawn_in_starts_a_process_group_in_the_namespace() {
    if !require_root("spawn_in_starts_a_process_group_in_the_namespace") {
        return;
    }
    let lab = Lab::create("uphtest", 1).expect("creating lab");
    let ns = lab.node_ns(1).expect("ns");
    let log = lab.dir().join("sleep.log");
    let mut child = lab.spawn_in(&ns, &["sleep", "30"], &log).expect("spawning");
    let pid = i32::try_from(child.id()).expect("pid");
    // `ip netns exec` enters the namespace after the fork, so this takes a moment.
    assert!(
        eventually(Duration::from_secs(2), || Lab::pids_in(&ns).contains(&pid)),
        "process is not in {ns}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let pgrp: i32 = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .expect("pgrp field");
    assert_eq!(pgrp, pid, "spawned process should lead its own group");
    uphold_testkit::netns::kill_group(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
        })
    };
    assert!(
        eventually(Duration::from_secs(2), stopped),
        "SIGSTOP did not stop the group"
    );
    uphold_testkit::netns::kill_group(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(child.wait().expect("wait").signal(), Some(9));
    assert!(Path::new(&log).exists());
}
