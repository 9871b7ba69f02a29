//! Building blocks for the hand-written scenarios: a small cluster whose
//! leader is chosen through election timeouts, and waits on conditions.

use super::plan::base_config;
use super::world::{GroupCfg, SimConfig, World, MS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `nodes` nodes (n1..) and optionally a witness (last); one group `g1` on
/// `group_nodes` in that order of preference; `leader` wins the first election
/// (its timeout is far shorter than everyone's default one). Members in
/// `late` boot 500 ms after the others, so they are not live when the leader
/// first places the group.
pub fn cluster(
    nodes: usize,
    witness: bool,
    failback: bool,
    leader: usize,
    group_nodes: &[usize],
    late: &[usize],
) -> SimConfig {
    let group = GroupCfg {
        name: "g1".into(),
        nodes: group_nodes.to_vec(),
        failback,
    };
    let mut cfg = base_config(nodes, witness, vec![group]);
    cfg.election_override = (0..cfg.voters)
        .map(|m| (m == leader).then_some((40, 60)))
        .collect();
    cfg.boot_at_ms = (0..cfg.voters)
        .map(|m| if late.contains(&m) { 500 } else { 0 })
        .collect();
    // Skewed but legal clocks: the scenarios must hold on any allowed clock.
    cfg.ppm = (0..cfg.voters)
        .map(|m| if m % 2 == 0 { 3900 } else { -3900 })
        .collect();
    cfg
}

pub fn world(seed: u64, cfg: SimConfig) -> World {
    World::new(seed, cfg, ChaCha8Rng::seed_from_u64(seed), true)
}

/// Runs until `cond` holds, failing the test with the trace after `within_ms`.
pub fn wait_for(
    w: &mut World,
    within_ms: u64,
    what: &str,
    cond: impl FnMut(&World) -> bool,
) -> u64 {
    let deadline = w.now + within_ms * MS;
    match w.run_until_cond(deadline, cond) {
        Ok(Some(t)) => t,
        Ok(None) => panic!(
            "{what}: not within {within_ms} ms (now {:.0} ms)\n{}",
            w.now_ms(),
            w.dump_trace()
        ),
        Err(violation) => panic!("{violation}\n--- trace ---\n{}", w.dump_trace()),
    }
}

/// Runs for `ms` of virtual time; the world's checks must hold throughout.
pub fn run_for(w: &mut World, ms: u64) {
    let until = w.now + ms * MS;
    if let Err(violation) = w.run_until(until) {
        panic!("{violation}\n--- trace ---\n{}", w.dump_trace());
    }
}

/// The cluster has elected `leader` and placed g1 on `owner`.
pub fn settle(w: &mut World, leader: usize, owner: usize) {
    wait_for(w, 5000, "initial election and placement", |w| {
        w.leader() == Some(leader) && w.group_up(0) == Some(owner)
    });
    run_for(w, 1000);
    assert_eq!(w.leader(), Some(leader), "leader changed while settling");
    assert_eq!(w.group_up(0), Some(owner), "group moved while settling");
}
