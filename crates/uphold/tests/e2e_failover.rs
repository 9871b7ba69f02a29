//! End to end: three real `uphold run` daemons and a client in network
//! namespaces on a bridge, a VIP and a small service; the client probes the VIP
//! every 10 ms and every namespace's addresses are sampled every 10 ms. Each test
//! injects one fault on the owner and checks the downtime bound and that the VIP
//! was never held by two nodes. Needs root (skipped with a message otherwise;
//! a failure when CI=true).

use std::path::PathBuf;
use std::time::Duration;
use uphold_testkit::deploy::{Impl, Tools};
use uphold_testkit::scenario::{run_rep, Fault, RepOptions, RepResult};

/// CI runs on a loaded 2-core machine, so the bounds here are looser than the
/// benchmark targets (median node-loss downtime <= 1.0 s), which `bench/failover`
/// measures.
const NODE_LOSS_BOUND_MS: f64 = 2500.0;

fn run(fault: Fault, test: &str) -> Option<RepResult> {
    if !uphold_testkit::require_root(test) {
        return None;
    }
    let uphold = PathBuf::from(env!("CARGO_BIN_EXE_uphold"));
    let tools = Tools::discover(Some(uphold)).expect("tools for the lab");
    let mut opts = RepOptions::new(Impl::Uphold, fault, tools);
    opts.prefix = "uphe2e".into();
    opts.ready_timeout = Duration::from_secs(30);
    let result = run_rep(&opts).unwrap_or_else(|e| panic!("{test}: {e:#}"));
    eprintln!("{test}: {result:?}");
    Some(result)
}

fn assert_never_held_twice(r: &RepResult) {
    assert!(
        r.double_ms == 0.0 && !r.double_at_end,
        "VIP held by two nodes for {} ms (upper bound {} ms): {r:?}",
        r.double_ms,
        r.double_ms_max
    );
}

fn assert_moved_within(r: &RepResult, bound_ms: f64) {
    assert!(r.recovered, "service never came back: {r:?}");
    let failover = r.failover_ms.expect("another node took the VIP");
    assert!(
        failover <= bound_ms,
        "failover took {failover} ms (bound {bound_ms}): {r:?}"
    );
    assert!(
        r.downtime_ms <= bound_ms,
        "downtime {} ms (bound {bound_ms}): {r:?}",
        r.downtime_ms
    );
    assert_ne!(
        r.served_after.as_deref(),
        Some(r.owner_before.as_str()),
        "{r:?}"
    );
}

#[test]
fn daemon_killed_with_its_process_group_leaves_no_vip_behind() {
    let Some(r) = run(Fault::DaemonKill, "daemon_killed") else {
        return;
    };
    assert_never_held_twice(&r);
    assert_moved_within(&r, NODE_LOSS_BOUND_MS);
}

#[test]
fn owner_link_down_moves_the_vip() {
    let Some(r) = run(Fault::LinkDown, "owner_link_down") else {
        return;
    };
    assert_never_held_twice(&r);
    assert_moved_within(&r, NODE_LOSS_BOUND_MS);
}

#[test]
fn failed_service_monitor_moves_the_group() {
    let Some(r) = run(Fault::ServiceKill, "service_killed") else {
        return;
    };
    assert_never_held_twice(&r);
    // The monitor runs every 500 ms in the lab config: two intervals plus the move.
    assert_moved_within(&r, 1000.0 + NODE_LOSS_BOUND_MS);
}

#[test]
fn owner_partitioned_from_peers_gives_up_before_anyone_takes_over_and_stays_moved() {
    let Some(r) = run(Fault::Partition, "owner_partitioned") else {
        return;
    };
    assert_never_held_twice(&r);
    assert_moved_within(&r, NODE_LOSS_BOUND_MS);
    assert_eq!(
        r.moved_back,
        Some(false),
        "sticky: no move back after heal: {r:?}"
    );
}

#[test]
fn owner_paused_past_its_lease_is_cleaned_up_by_the_guard() {
    let Some(r) = run(Fault::Pause, "owner_paused") else {
        return;
    };
    assert_never_held_twice(&r);
    assert_moved_within(&r, NODE_LOSS_BOUND_MS);
}

#[test]
fn planned_stop_hands_the_group_over() {
    let Some(r) = run(Fault::Sigterm, "planned_stop") else {
        return;
    };
    assert_never_held_twice(&r);
    assert_moved_within(&r, 1500.0);
}
