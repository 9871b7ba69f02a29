//! Unit tests of the engines' actions, event by event, without I/O.

use super::*;
use std::sync::Arc;
use uphold_core::GroupName;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const W: u64 = 9;

fn web() -> GroupName {
    GroupName::new("web").unwrap()
}

fn topo(failback: bool) -> Topology {
    Topology::with_timing(
        vec![A, B, C],
        vec![topology::GroupSpec {
            name: web(),
            nodes: vec![A, B, C],
            failback,
        }],
        800,
        200,
        0.01,
    )
}

fn renewal(seq: u64) -> RenewalId {
    RenewalId {
        incarnation: 7,
        seq,
    }
}

fn owned_by(node: u64, epoch: u64) -> Arc<ClusterState> {
    let mut state = ClusterState::default();
    state.groups.insert(
        web(),
        GroupState {
            owner: Some(node),
            epoch,
            ..Default::default()
        },
    );
    Arc::new(state)
}

fn renew_seq(actions: &[AgentAction]) -> Option<u64> {
    actions.iter().find_map(|a| match a {
        AgentAction::Propose(Command::Renew { renewal, .. }) => Some(renewal.seq),
        _ => None,
    })
}

/// The renewal `seq` of node A is applied in A's copy of the state, which
/// assigns `web` to `owner` at epoch 1 (None: the log never mentioned it).
fn apply_renewal(
    agent: &mut Agent,
    seq: u64,
    owner: Option<u64>,
    now: u64,
    topo: &Topology,
) -> Vec<AgentAction> {
    let mut state = match owner {
        Some(node) => (*owned_by(node, 1)).clone(),
        None => ClusterState::default(),
    };
    state.apply(&Command::Renew {
        node: A,
        renewal: renewal(seq),
    });
    agent.on_event(AgentEvent::Applied(Arc::new(state)), now, topo)
}

/// An agent on node A that owns `web` at epoch 1 and has a lease from a renewal
/// sent at t=0 and committed at t=10; the group is running.
fn running_agent(topo: &Topology) -> Agent {
    let mut agent = Agent::new(A, 7);
    let first = agent.on_event(AgentEvent::Tick, 0, topo);
    let seq = renew_seq(&first).unwrap();
    let actions = apply_renewal(&mut agent, seq, Some(A), 20, topo);
    assert!(actions.contains(&AgentAction::StartGroup {
        group: web(),
        epoch: 1
    }));
    agent.on_event(
        AgentEvent::GroupStarted {
            group: web(),
            epoch: 1,
            result: Ok(()),
        },
        30,
        topo,
    );
    assert_eq!(agent.phase(&web()), Some(&GroupPhase::Running));
    agent
}

#[test]
fn agent_starts_only_with_ownership_and_a_committed_lease() {
    let topo = topo(false);
    let mut agent = Agent::new(A, 7);
    let actions = agent.on_event(AgentEvent::Applied(owned_by(A, 1)), 0, &topo);
    assert!(renew_seq(&actions).is_some(), "renews at once");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, AgentAction::StartGroup { .. })),
        "no lease yet, so no start: {actions:?}"
    );
    let actions = apply_renewal(&mut agent, 1, Some(A), 50, &topo);
    // The guard must know the deadline before anything starts; it acts half
    // the stop margin (100 ms) before the lease ends at 800.
    let hold = actions
        .iter()
        .position(|a| matches!(a, AgentAction::GuardHold { until: 750, .. }));
    let start = actions
        .iter()
        .position(|a| matches!(a, AgentAction::StartGroup { epoch: 1, .. }));
    assert!(
        hold.is_some() && start.is_some() && hold < start,
        "{actions:?}"
    );
    assert_eq!(
        agent.lease_until(),
        800,
        "lease runs from the send time, not the commit"
    );
}

#[test]
fn agent_counts_only_its_own_incarnations_renewals_once_applied() {
    let topo = topo(false);
    let mut agent = Agent::new(A, 7);
    agent.on_event(AgentEvent::Tick, 0, &topo);
    // The leader's answer alone grants nothing.
    agent.on_event(
        AgentEvent::ProposalDone {
            command: Command::Renew {
                node: A,
                renewal: renewal(1),
            },
            result: Some(ApplyResult::Applied),
        },
        5,
        &topo,
    );
    assert_eq!(agent.lease_until(), 0);
    // A renewal of an earlier run of the daemon, replayed from the log, neither.
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Renew {
        node: A,
        renewal: RenewalId {
            incarnation: 6,
            seq: 1,
        },
    });
    let actions = agent.on_event(AgentEvent::Applied(Arc::new(state)), 6, &topo);
    assert_eq!(agent.lease_until(), 0);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, AgentAction::StartGroup { .. })));
}

#[test]
fn restarted_agent_does_not_start_from_a_stale_view() {
    // Regression: a restarted daemon replays its log and briefly sees itself as the
    // owner of a group that has since moved. Its fresh renewal commits (through the
    // leader) before it has applied the move; it must not start the group.
    let topo = topo(false);
    let mut agent = Agent::new(A, 7);
    let stale = owned_by(A, 1);
    let actions = agent.on_event(AgentEvent::Applied(stale), 0, &topo);
    let seq = renew_seq(&actions).unwrap();
    let actions = agent.on_event(
        AgentEvent::ProposalDone {
            command: Command::Renew {
                node: A,
                renewal: renewal(seq),
            },
            result: Some(ApplyResult::Applied),
        },
        30,
        &topo,
    );
    assert!(!actions
        .iter()
        .any(|a| matches!(a, AgentAction::StartGroup { .. })));
    // Applying up to the renewal shows the group moved to B.
    let actions = apply_renewal(&mut agent, seq, Some(B), 60, &topo);
    assert!(agent.lease_until() > 60);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, AgentAction::StartGroup { .. })));
}

#[test]
fn agent_stops_in_emergency_before_the_lease_ends() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    // No renewal commits after the first: lease ends at 800, margin 100.
    let before = agent.on_event(AgentEvent::Tick, 699, &topo);
    assert!(!before
        .iter()
        .any(|a| matches!(a, AgentAction::StopGroup { .. })));
    let at = agent.on_event(AgentEvent::Tick, 700, &topo);
    assert!(
        at.contains(&AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Emergency
        }),
        "{at:?}"
    );
    // Once stopped it releases the guard but proposes nothing: it has no lease.
    let after = agent.on_event(
        AgentEvent::GroupStopped {
            group: web(),
            epoch: 1,
        },
        610,
        &topo,
    );
    assert!(after.contains(&AgentAction::GuardRelease { group: web() }));
    assert!(!after
        .iter()
        .any(|a| matches!(a, AgentAction::Propose(Command::Release { .. }))));
}

#[test]
fn agent_extends_the_guard_deadline_as_renewals_commit() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let actions = agent.on_event(AgentEvent::Tick, 200, &topo);
    let seq = renew_seq(&actions).expect("renews every 200 ms");
    let actions = apply_renewal(&mut agent, seq, Some(A), 210, &topo);
    assert!(
        actions.contains(&AgentAction::GuardHold {
            group: web(),
            until: 950
        }),
        "{actions:?}"
    );
}

#[test]
fn agent_moves_group_away_after_monitor_failure() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let actions = agent.on_event(
        AgentEvent::MonitorFailed {
            group: web(),
            epoch: 1,
            reason: "exec web: exit 1".into(),
        },
        100,
        &topo,
    );
    assert!(actions.contains(&AgentAction::StopGroup {
        group: web(),
        epoch: 1,
        kind: StopKind::Orderly
    }));
    let actions = agent.on_event(
        AgentEvent::GroupStopped {
            group: web(),
            epoch: 1,
        },
        150,
        &topo,
    );
    assert!(actions.contains(&AgentAction::Propose(Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: 7,
        reason: ReleaseReason::MonitorFailed("exec web: exit 1".into()),
    })));
}

#[test]
fn agent_does_not_restart_a_group_it_gave_up_while_the_release_is_pending() {
    // Regression (simulation seed 26): after a failed monitor the group was
    // stopped and released, and restarted in the same step because the log still
    // named this node owner until the release committed.
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    agent.on_event(
        AgentEvent::MonitorFailed {
            group: web(),
            epoch: 1,
            reason: "down".into(),
        },
        100,
        &topo,
    );
    let actions = agent.on_event(
        AgentEvent::GroupStopped {
            group: web(),
            epoch: 1,
        },
        150,
        &topo,
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, AgentAction::StartGroup { .. })),
        "{actions:?}"
    );
    // The release gets no answer: it is proposed again, and the group stays down.
    let release = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: 7,
        reason: ReleaseReason::MonitorFailed("down".into()),
    };
    let actions = agent.on_event(
        AgentEvent::ProposalDone {
            command: release.clone(),
            result: None,
        },
        400,
        &topo,
    );
    assert!(
        actions.contains(&AgentAction::Propose(release)),
        "{actions:?}"
    );
    let actions = agent.on_event(AgentEvent::Tick, 1200, &topo);
    assert!(!actions
        .iter()
        .any(|a| matches!(a, AgentAction::StartGroup { .. })));
}

#[test]
fn a_failed_stop_keeps_the_group_and_retries_instead_of_releasing() {
    // Review finding: a stop that failed (address still up, service still
    // running) must not be followed by a release, or another node would start
    // the group at once.
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    agent.on_event(
        AgentEvent::MonitorFailed {
            group: web(),
            epoch: 1,
            reason: "down".into(),
        },
        100,
        &topo,
    );
    let actions = agent.on_event(
        AgentEvent::GroupStopFailed {
            group: web(),
            epoch: 1,
            reason: "stop command exited 1".into(),
        },
        150,
        &topo,
    );
    assert!(
        !actions.iter().any(|a| matches!(
            a,
            AgentAction::Propose(Command::Release { .. }) | AgentAction::GuardRelease { .. }
        )),
        "{actions:?}"
    );
    let actions = agent.on_event(AgentEvent::Tick, 1150, &topo);
    assert!(
        actions.contains(&AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Orderly
        }),
        "retried after a second: {actions:?}"
    );
}

#[test]
fn agent_stops_when_the_log_moves_the_group() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let actions = agent.on_event(AgentEvent::Applied(owned_by(B, 2)), 100, &topo);
    assert!(actions.contains(&AgentAction::StopGroup {
        group: web(),
        epoch: 1,
        kind: StopKind::Emergency
    }));
}

#[test]
fn agent_hands_groups_back_on_shutdown() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let actions = agent.on_event(AgentEvent::Shutdown, 100, &topo);
    assert!(actions.contains(&AgentAction::StopGroup {
        group: web(),
        epoch: 1,
        kind: StopKind::Orderly
    }));
    assert!(!agent.is_done());
    let actions = agent.on_event(
        AgentEvent::GroupStopped {
            group: web(),
            epoch: 1,
        },
        120,
        &topo,
    );
    let release = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: 7,
        reason: ReleaseReason::Shutdown,
    };
    assert!(actions.contains(&AgentAction::Propose(release.clone())));
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Renew {
        node: A,
        renewal: renewal(1),
    });
    assert_eq!(state.apply(&release), ApplyResult::Applied);
    agent.on_event(AgentEvent::Applied(Arc::new(state)), 130, &topo);
    assert!(agent.is_done());
}

#[test]
fn witness_never_renews_or_starts() {
    let topo = topo(false);
    let mut agent = Agent::new(W, 1);
    let actions = agent.on_event(AgentEvent::Applied(owned_by(W, 1)), 0, &topo);
    assert!(actions.is_empty(), "{actions:?}");
}

fn live(nodes: &[u64], at: u64) -> Liveness {
    let mut l = Liveness::new(&[A, B, C], 0);
    for (i, n) in nodes.iter().enumerate() {
        l.renewal_appended(*n, renewal(i as u64 + 1), at, 800);
    }
    l
}

#[test]
fn placement_puts_an_unowned_group_on_the_first_live_preferred_node() {
    let topo = topo(false);
    let mut placement = Placement::new();
    let liveness = live(&[B, C], 100);
    let actions = placement.decide(&topo, &ClusterState::default(), &liveness, 100);
    assert_eq!(
        actions,
        vec![PlacementAction::Propose(Command::Assign {
            group: web(),
            node: Some(B),
            epoch: 0,
            owner_last_renewal: None
        })]
    );
    // One proposal per group in flight.
    assert!(placement
        .decide(&topo, &ClusterState::default(), &liveness, 150)
        .is_empty());
}

#[test]
fn placement_waits_out_the_owners_lease_with_drift_before_moving() {
    let topo = topo(false);
    let mut placement = Placement::new();
    let mut liveness = live(&[A, B], 1000);
    liveness.renewal_appended(B, renewal(9), 1800, 800);
    let state = owned_by(A, 1);
    // A's last renewal reached our log at 1000: 800 ms * 1.01 = 808 ms later at the earliest.
    assert!(placement.decide(&topo, &state, &liveness, 1807).is_empty());
    let actions = placement.decide(&topo, &state, &liveness, 1808);
    assert_eq!(
        actions,
        vec![PlacementAction::Propose(Command::Assign {
            group: web(),
            node: Some(B),
            epoch: 1,
            owner_last_renewal: Some(renewal(1)),
        })]
    );
}

#[test]
fn assign_is_refused_if_the_owner_renewed_in_between() {
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Renew {
        node: A,
        renewal: renewal(1),
    });
    state.apply(&Command::Renew {
        node: A,
        renewal: renewal(2),
    });
    let assign = Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 1,
        owner_last_renewal: Some(renewal(1)),
    };
    assert!(matches!(state.apply(&assign), ApplyResult::Rejected(_)));
    assert_eq!(state.owner_of(&web()), Some(A));
    // A stale epoch is refused too.
    let stale = Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 0,
        owner_last_renewal: Some(renewal(2)),
    };
    assert!(matches!(state.apply(&stale), ApplyResult::Rejected(_)));
    let good = Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 1,
        owner_last_renewal: Some(renewal(2)),
    };
    assert_eq!(state.apply(&good), ApplyResult::Applied);
    assert_eq!(state.group(&web()).epoch, 2);
}

#[test]
fn release_from_an_earlier_daemon_run_is_refused() {
    // Regression (simulation): a release sent just before the daemon crashed
    // committed after the restarted daemon had started the group again.
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Renew {
        node: A,
        renewal: RenewalId {
            incarnation: 8,
            seq: 1,
        },
    });
    let stale = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: 7,
        reason: ReleaseReason::Shutdown,
    };
    assert!(matches!(state.apply(&stale), ApplyResult::Rejected(_)));
    assert_eq!(state.owner_of(&web()), Some(A));
}

#[test]
fn a_delayed_renewal_of_an_earlier_run_does_not_revive_it() {
    let mut state = (*owned_by(A, 1)).clone();
    let run = |incarnation, seq| RenewalId { incarnation, seq };
    state.apply(&Command::Renew {
        node: A,
        renewal: run(8, 1),
    });
    let late = Command::Renew {
        node: A,
        renewal: run(7, 9),
    };
    assert!(matches!(state.apply(&late), ApplyResult::Rejected(_)));
    let old_release = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: 7,
        reason: ReleaseReason::Shutdown,
    };
    assert!(matches!(
        state.apply(&old_release),
        ApplyResult::Rejected(_)
    ));
    assert_eq!(state.owner_of(&web()), Some(A));
}

#[test]
fn rejected_assign_restarts_the_wait_from_the_committed_renewal() {
    let topo = topo(false);
    let mut placement = Placement::new();
    let mut liveness = live(&[A, B], 0);
    liveness.renewal_appended(A, renewal(5), 0, 800);
    liveness.renewal_appended(B, renewal(6), 900, 800);
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Renew {
        node: A,
        renewal: renewal(4),
    });
    let actions = placement.decide(&topo, &state, &liveness, 900);
    let PlacementAction::Propose(assign) = &actions[0];
    let result = state.apply(assign);
    assert!(matches!(result, ApplyResult::Rejected(_)));
    placement.on_result(assign, Some(&result), &state, &mut liveness, 900);
    assert_eq!(liveness.get(A).unwrap().renewal, Some(renewal(4)));
    assert!(!liveness.lease_expired(A, 1700, topo.lease_expiry_wait_ms));
    assert!(liveness.lease_expired(A, 1708, topo.lease_expiry_wait_ms));
}

#[test]
fn sticky_group_stays_and_failback_group_returns_when_stable() {
    let mut state = (*owned_by(B, 3)).clone();
    state.groups.get_mut(&web()).unwrap().owner = Some(B);
    let mut liveness = Liveness::new(&[A, B, C], 0);
    let mut t = 0;
    while t <= 5000 {
        liveness.renewal_appended(A, renewal(t), t, 800);
        liveness.renewal_appended(B, renewal(t + 1), t, 800);
        t += 200;
    }
    let sticky = topo(false);
    assert!(Placement::new()
        .decide(&sticky, &state, &liveness, 5000)
        .is_empty());
    let failback = topo(true);
    let actions = Placement::new().decide(&failback, &state, &liveness, 5000);
    assert_eq!(
        actions,
        vec![PlacementAction::Propose(Command::RequestMove {
            group: web(),
            to: A,
            epoch: 3
        })]
    );
}

#[test]
fn failed_nodes_are_skipped_and_cleared_when_nothing_else_is_left() {
    let topo = topo(false);
    let mut state = ClusterState::default();
    let mut gs = GroupState::default();
    gs.failed_on.insert(A);
    state.groups.insert(web(), gs);
    let liveness = live(&[A, B], 100);
    let actions = Placement::new().decide(&topo, &state, &liveness, 100);
    assert!(matches!(
        &actions[0],
        PlacementAction::Propose(Command::Assign { node: Some(B), .. })
    ));
    state.groups.get_mut(&web()).unwrap().failed_on.insert(B);
    let mut placement = Placement::new();
    let actions = placement.decide(&topo, &state, &liveness, 100);
    assert_eq!(
        actions,
        vec![PlacementAction::Propose(Command::ClearFailures {
            group: web(),
            epoch: 0
        })]
    );
}

#[test]
fn node_engine_feeds_appended_renewals_into_liveness() {
    let mut engine = NodeEngine::new(B, 1, topo(false), 0);
    engine.on_event(
        Event::Appended(Command::Renew {
            node: A,
            renewal: renewal(1),
        }),
        50,
    );
    let seen = engine.liveness().get(A).unwrap();
    assert_eq!((seen.renewal, seen.at), (Some(renewal(1)), 50));
}

#[test]
fn a_new_leader_waits_for_renewals_so_groups_start_on_their_preferred_node() {
    let assigns = |actions: &[Action]| -> Vec<Option<u64>> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Propose {
                    command: Command::Assign { node, .. },
                    ..
                } => Some(*node),
                _ => None,
            })
            .collect()
    };
    let mut engine = NodeEngine::new(B, 1, topo(false), 0);
    let renew = |node, seq| {
        Event::Appended(Command::Renew {
            node,
            renewal: renewal(seq),
        })
    };
    engine.on_event(renew(B, 1), 10);
    // B wins the election having seen only its own renewal: it must not take
    // the group from A, the preferred node, which just has not renewed yet.
    let actions = engine.on_event(Event::Leadership(true), 20);
    assert!(assigns(&actions).is_empty(), "{actions:?}");
    engine.on_event(renew(A, 2), 300);
    assert!(assigns(&engine.on_event(Event::Tick, 419)).is_empty());
    let actions = engine.on_event(Event::Tick, 420);
    assert_eq!(assigns(&actions), vec![Some(A)], "{actions:?}");
}
