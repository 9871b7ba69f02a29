use super::*;
use proptest::prelude::*;

fn up(weight: u32) -> Candidate {
    Candidate {
        weight,
        active: 0,
        available: true,
        full: false,
        backup: false,
    }
}

fn counts(sel: &mut Selector, servers: &[Candidate], n: usize) -> Vec<usize> {
    let mut c = vec![0; servers.len()];
    for k in 0..n {
        match sel.pick(servers, k as u64, [mix(k as u64), mix(k as u64 + 7)], &[]) {
            Pick::Server(i) => c[i] += 1,
            other => panic!("expected a server, got {other:?}"),
        }
    }
    c
}

#[test]
fn round_robin_follows_weights_and_interleaves() {
    let servers = [up(5), up(1), up(1)];
    let mut sel = Selector::new(Algorithm::RoundRobin, 3);
    let order: Vec<usize> = (0..7)
        .map(|_| match sel.pick(&servers, 0, [0, 0], &[]) {
            Pick::Server(i) => i,
            p => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(order.iter().filter(|&&i| i == 0).count(), 5);
    // Smooth: the heavy server never gets more than 3 in a row out of 7.
    assert!(
        !order.windows(4).any(|w| w.iter().all(|&i| i == 0)),
        "{order:?}"
    );
    assert_eq!(counts(&mut sel, &servers, 700), vec![500, 100, 100]);
}

#[test]
fn unavailable_full_and_zero_weight_servers_are_skipped() {
    let mut servers = [up(1), up(1), up(0)];
    servers[0].available = false;
    let mut sel = Selector::new(Algorithm::RoundRobin, 3);
    assert_eq!(counts(&mut sel, &servers, 10), vec![0, 10, 0]);
    servers[1].full = true;
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[]), Pick::AllFull);
    servers[1].available = false;
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[]), Pick::NoServer);
}

#[test]
fn backups_only_when_no_regular_server_is_usable() {
    let mut servers = [up(1), up(1)];
    servers[1].backup = true;
    let mut sel = Selector::new(Algorithm::RoundRobin, 2);
    assert_eq!(counts(&mut sel, &servers, 10), vec![10, 0]);
    // A full regular server makes requests wait; they do not spill to the backup.
    servers[0].full = true;
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[]), Pick::AllFull);
    servers[0].full = false;
    servers[0].available = false;
    assert_eq!(counts(&mut sel, &servers, 10), vec![0, 10]);
}

#[test]
fn excluded_servers_are_not_picked_again() {
    let servers = [up(1), up(1)];
    let mut sel = Selector::new(Algorithm::LeastConn, 2);
    for _ in 0..10 {
        assert_eq!(sel.pick(&servers, 0, [0, 0], &[0]), Pick::Server(1));
    }
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[0, 1]), Pick::NoServer);
}

#[test]
fn least_conn_prefers_the_least_loaded_relative_to_weight() {
    let mut servers = [up(1), up(2), up(1)];
    servers[0].active = 3;
    servers[1].active = 4; // 2 per unit of weight
    servers[2].active = 1;
    let mut sel = Selector::new(Algorithm::LeastConn, 3);
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[]), Pick::Server(2));
    servers[2].active = 5;
    assert_eq!(sel.pick(&servers, 0, [0, 0], &[]), Pick::Server(1));
}

#[test]
fn least_conn_spreads_ties() {
    let servers = [up(1), up(1), up(1)];
    let mut sel = Selector::new(Algorithm::LeastConn, 3);
    let c = counts(&mut sel, &servers, 300);
    assert!(c.iter().all(|&n| n == 100), "{c:?}");
}

#[test]
fn random_of_two_prefers_the_idle_server() {
    let mut servers = [up(1), up(1)];
    servers[0].active = 10;
    let mut sel = Selector::new(Algorithm::Random, 2);
    // Whenever both choices differ, the idle one wins.
    assert_eq!(sel.pick(&servers, 0, [0, 1], &[]), Pick::Server(1));
    assert_eq!(sel.pick(&servers, 0, [1, 0], &[]), Pick::Server(1));
    let c = counts(&mut sel, &[up(1), up(3)], 4000);
    assert!((800..1200).contains(&c[0]), "{c:?}");
}

#[test]
fn source_hash_is_sticky_and_moves_only_the_lost_servers_clients() {
    let servers = [up(1), up(1), up(1), up(1)];
    let mut sel = Selector::new(Algorithm::Source, 4);
    let before: Vec<Pick> = (0..2000u64)
        .map(|c| sel.pick(&servers, mix(c), [0, 0], &[]))
        .collect();
    let again: Vec<Pick> = (0..2000u64)
        .map(|c| sel.pick(&servers, mix(c), [0, 0], &[]))
        .collect();
    assert_eq!(before, again);
    let mut fewer = servers;
    fewer[2].available = false;
    let mut moved_from_others = 0;
    for (c, was) in before.iter().enumerate() {
        let now = sel.pick(&fewer, mix(c as u64), [0, 0], &[]);
        if *was != Pick::Server(2) && now != *was {
            moved_from_others += 1;
        }
    }
    assert_eq!(moved_from_others, 0);
    let c = counts(&mut sel, &servers, 0);
    assert_eq!(c.len(), 4);
}

proptest! {
    /// Whatever the servers look like, a pick is always a server that may take
    /// traffic, and `NoServer`/`AllFull` are only answered when true.
    #[test]
    fn picks_are_always_legal(
        raw in prop::collection::vec((0u32..4, 0u32..5, any::<bool>(), any::<bool>(), any::<bool>()), 1..8),
        algo in 0usize..4,
        client in any::<u64>(),
        random in any::<[u64; 2]>(),
        excl in prop::collection::vec(0usize..8, 0..3),
    ) {
        let servers: Vec<Candidate> = raw.iter().map(|&(weight, active, available, full, backup)| Candidate { weight, active, available, full, backup }).collect();
        let algorithm = [Algorithm::RoundRobin, Algorithm::LeastConn, Algorithm::Source, Algorithm::Random][algo];
        let mut sel = Selector::new(algorithm, servers.len());
        let usable = |i: usize| servers[i].available && servers[i].weight > 0 && !excl.contains(&i);
        let any_regular = (0..servers.len()).any(|i| usable(i) && !servers[i].backup);
        match sel.pick(&servers, client, random, &excl) {
            Pick::Server(i) => {
                prop_assert!(usable(i) && !servers[i].full);
                prop_assert_eq!(servers[i].backup, !any_regular);
            }
            Pick::AllFull => prop_assert!((0..servers.len()).any(usable)),
            Pick::NoServer => prop_assert!(!(0..servers.len()).any(usable)),
        }
    }
}
