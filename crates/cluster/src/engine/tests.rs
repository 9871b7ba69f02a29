//! Unit tests of the engines' actions, event by event, without I/O. Each test
//! asserts the whole list of actions an event produces.

use super::*;
use std::sync::Arc;
use uphold_core::GroupName;

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const W: u64 = 9;
/// Agent A's daemon run.
const INC: u64 = 7;

fn web() -> GroupName {
    GroupName::new("web").unwrap()
}

/// lease 800 ms, renew 200 ms, drift 1%: stop margin 100 ms, leader wait
/// 808 ms, gate wait 817 ms.
fn topo(failback: bool) -> Topology {
    Topology::with_timing(
        vec![A, B, C],
        vec![topology::GroupSpec {
            name: web(),
            nodes: vec![A, B, C],
            failback,
            resources: vec![
                ResourceRule::STRICT,
                ResourceRule {
                    failures_before_move: 3,
                },
            ],
        }],
        800,
        200,
        0.01,
    )
}

/// `web` owned by `owner` at `epoch`, and agent A's run joined.
fn owned_by(owner: u64, epoch: u64) -> Arc<ClusterState> {
    let mut state = ClusterState::default();
    state.groups.insert(
        web(),
        GroupState {
            owner: Some(owner),
            epoch,
            ..Default::default()
        },
    );
    state.incarnations.insert(A, INC);
    Arc::new(state)
}

fn claim(epoch: u64) -> Claim {
    Claim {
        group: web(),
        epoch,
    }
}

fn renewal_of_a(seq: u64, claims: Vec<Claim>, withdrawn: Vec<Claim>) -> AgentAction {
    AgentAction::Renew(Renewal {
        node: A,
        id: RenewalId {
            incarnation: INC,
            seq,
        },
        claims,
        withdrawn,
    })
}

fn ack(seq: u64, refused: Vec<GroupName>) -> RenewalAck {
    RenewalAck {
        id: RenewalId {
            incarnation: INC,
            seq,
        },
        refused,
        heard: Vec::new(),
    }
}

fn query(epoch: u64, applied_index: u64) -> GateQuery {
    GateQuery {
        group: web(),
        epoch,
        applied_index,
    }
}

/// Voters `from` answer A's gate query for `web` at epoch 1 (applied index 5):
/// fenced, nothing granted for long. The actions of each answer.
fn open_gate(agent: &mut Agent, topo: &Topology, from: &[u64], at: u64) -> Vec<Vec<AgentAction>> {
    from.iter()
        .map(|from| {
            agent.on_event(
                AgentEvent::GateAnswered {
                    from: *from,
                    query: query(1, 5),
                    answer: GateAnswer::Fenced { since_ms: 5000 },
                },
                at,
                topo,
            )
        })
        .collect()
}

/// Voters `from` grant A's renewal `seq` without refusing anything. The
/// actions of each answer.
fn grant(
    agent: &mut Agent,
    topo: &Topology,
    seq: u64,
    from: &[u64],
    at: u64,
) -> Vec<Vec<AgentAction>> {
    from.iter()
        .map(|from| {
            agent.on_event(
                AgentEvent::RenewalAnswered {
                    from: *from,
                    ack: ack(seq, vec![]),
                },
                at,
                topo,
            )
        })
        .collect()
}

fn started_at_760() -> Vec<AgentAction> {
    vec![
        AgentAction::GuardHold {
            group: web(),
            until: 760,
        },
        AgentAction::StartResource {
            group: web(),
            epoch: 1,
            resource: 0,
        },
    ]
}

fn resource_started(resource: usize, result: Result<(), String>) -> AgentEvent {
    AgentEvent::Resource(ResourceReport::Started {
        group: web(),
        epoch: 1,
        resource,
        result,
    })
}

/// Agent A, joined, owning `web` at epoch 1, its first resource asked for at
/// t=13 with a claim granted until 810 (renewal 2 sent at 10).
fn starting_agent(topo: &Topology) -> Agent {
    let mut agent = Agent::new(A, INC);
    agent.on_event(AgentEvent::GuardReady, 0, topo);
    agent.on_event(
        AgentEvent::Applied {
            state: owned_by(A, 1),
            index: 5,
        },
        10,
        topo,
    );
    open_gate(&mut agent, topo, &[A, B], 12);
    let granted = grant(&mut agent, topo, 2, &[A, B], 13);
    assert_eq!(granted, vec![vec![], started_at_760()]);
    agent
}

/// As `starting_agent`, with both resources up by t=60.
fn running_agent(topo: &Topology) -> Agent {
    let mut agent = starting_agent(topo);
    assert_eq!(
        agent.on_event(resource_started(0, Ok(())), 40, topo),
        vec![AgentAction::StartResource {
            group: web(),
            epoch: 1,
            resource: 1,
        }]
    );
    assert_eq!(
        agent.on_event(resource_started(1, Ok(())), 60, topo),
        vec![AgentAction::StartMonitors {
            group: web(),
            epoch: 1,
        }]
    );
    assert_eq!(agent.phase(&web()), Some(&GroupPhase::Running));
    agent
}

#[test]
fn agent_joins_renews_and_starts_only_with_a_granted_claim_and_an_open_gate() {
    let topo = topo(false);
    let mut agent = Agent::new(A, INC);
    assert_eq!(
        agent.on_event(AgentEvent::GuardReady, 0, &topo),
        vec![
            AgentAction::Propose(Command::Join {
                node: A,
                incarnation: INC
            }),
            renewal_of_a(1, vec![], vec![]),
        ]
    );
    // The log gives A the group: claim it at once and ask the gate.
    assert_eq!(
        agent.on_event(
            AgentEvent::Applied {
                state: owned_by(A, 1),
                index: 5
            },
            10,
            &topo
        ),
        vec![
            AgentAction::QueryGate(query(1, 5)),
            renewal_of_a(2, vec![claim(1)], vec![]),
        ]
    );
    assert_eq!(agent.phase(&web()), Some(&GroupPhase::Waiting));
    // B granted a claim on an earlier epoch 100 ms ago: with A's answer that
    // majority opens the gate 817 - 100 ms from now...
    for (from, since_ms) in [(A, 5000), (B, 100)] {
        let actions = agent.on_event(
            AgentEvent::GateAnswered {
                from,
                query: query(1, 5),
                answer: GateAnswer::Fenced { since_ms },
            },
            12,
            &topo,
        );
        assert_eq!(actions, vec![]);
    }
    // ...but C's answer makes a majority {A, C} that opens it now. Still no
    // claim granted, so nothing starts.
    let actions = agent.on_event(
        AgentEvent::GateAnswered {
            from: C,
            query: query(1, 5),
            answer: GateAnswer::Fenced { since_ms: 5000 },
        },
        12,
        &topo,
    );
    assert_eq!(actions, vec![]);
    // A's own voter and B grant renewal 2 (sent at 10): claim until 810.
    let actions = agent.on_event(
        AgentEvent::RenewalAnswered {
            from: A,
            ack: ack(2, vec![]),
        },
        13,
        &topo,
    );
    assert_eq!(actions, vec![]);
    let actions = agent.on_event(
        AgentEvent::RenewalAnswered {
            from: B,
            ack: ack(2, vec![]),
        },
        13,
        &topo,
    );
    assert_eq!(actions, started_at_760());
    assert_eq!(agent.claim_until(&web()), Some(810));
}

#[test]
fn agent_does_not_start_before_its_join_is_in_the_log() {
    let topo = topo(false);
    let mut agent = Agent::new(A, INC);
    agent.on_event(AgentEvent::GuardReady, 0, &topo);
    let mut state = (*owned_by(A, 1)).clone();
    state.incarnations.insert(A, INC - 1);
    agent.on_event(
        AgentEvent::Applied {
            state: Arc::new(state),
            index: 5,
        },
        10,
        &topo,
    );
    open_gate(&mut agent, &topo, &[A, B], 12);
    assert_eq!(
        grant(&mut agent, &topo, 2, &[A, B], 13),
        vec![vec![], vec![]]
    );
    // The Join arrives: now it starts.
    let actions = agent.on_event(
        AgentEvent::Applied {
            state: owned_by(A, 1),
            index: 6,
        },
        20,
        &topo,
    );
    assert_eq!(actions, started_at_760());
}

#[test]
fn agent_starts_nothing_while_an_earlier_runs_guard_is_undoing() {
    let topo = topo(false);
    let mut agent = Agent::new(A, INC);
    agent.on_event(AgentEvent::Tick, 0, &topo);
    agent.on_event(
        AgentEvent::Applied {
            state: owned_by(A, 1),
            index: 5,
        },
        10,
        &topo,
    );
    open_gate(&mut agent, &topo, &[A, B], 12);
    assert_eq!(
        grant(&mut agent, &topo, 2, &[A, B], 13),
        vec![vec![], vec![]]
    );
    // The group stays claimed here (no move) until the old guard is done.
    assert_eq!(agent.phase(&web()), Some(&GroupPhase::Waiting));
    assert_eq!(
        agent.on_event(AgentEvent::GuardReady, 300, &topo),
        vec![
            AgentAction::GuardHold {
                group: web(),
                until: 760
            },
            AgentAction::StartResource {
                group: web(),
                epoch: 1,
                resource: 0,
            },
            renewal_of_a(3, vec![claim(1)], vec![]),
        ]
    );
}

#[test]
fn agent_extends_the_guard_as_claims_are_granted_and_stops_before_they_end() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    // Renewal 3 at 210, granted by B: the claim and the guard move on.
    assert_eq!(
        agent.on_event(AgentEvent::Tick, 210, &topo),
        vec![renewal_of_a(3, vec![claim(1)], vec![])]
    );
    agent.on_event(
        AgentEvent::RenewalAnswered {
            from: A,
            ack: ack(3, vec![]),
        },
        211,
        &topo,
    );
    let actions = agent.on_event(
        AgentEvent::RenewalAnswered {
            from: B,
            ack: ack(3, vec![]),
        },
        212,
        &topo,
    );
    assert_eq!(
        actions,
        vec![AgentAction::GuardHold {
            group: web(),
            until: 960
        }]
    );
    // Nothing answers any more: at 910 the claim (until 1010) is within the
    // stop margin, and the group goes down, addresses first.
    let actions = agent.on_event(AgentEvent::Tick, 910, &topo);
    assert_eq!(
        actions,
        vec![
            AgentAction::StopGroup {
                group: web(),
                epoch: 1,
                kind: StopKind::Emergency
            },
            renewal_of_a(4, vec![claim(1)], vec![]),
        ]
    );
}

#[test]
fn a_claim_refused_by_a_majority_stops_the_group_and_hands_it_back() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    agent.on_event(AgentEvent::Tick, 210, &topo);
    // B refuses: a minority, the group stays.
    let actions = agent.on_event(
        AgentEvent::RenewalAnswered {
            from: B,
            ack: ack(3, vec![web()]),
        },
        211,
        &topo,
    );
    assert_eq!(actions, vec![]);
    // C refuses too: no majority can grant epoch 1 any more.
    let actions = agent.on_event(
        AgentEvent::RenewalAnswered {
            from: C,
            ack: ack(3, vec![web()]),
        },
        212,
        &topo,
    );
    assert_eq!(
        actions,
        vec![AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Emergency
        }]
    );
    // Stopped: the guard lets go, the claim is withdrawn, the group released.
    let actions = agent.on_event(
        AgentEvent::Resource(ResourceReport::Stopped {
            group: web(),
            epoch: 1,
        }),
        230,
        &topo,
    );
    assert_eq!(
        actions,
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(Command::Release {
                group: web(),
                node: A,
                epoch: 1,
                incarnation: INC,
                reason: ReleaseReason::Fenced,
            }),
            renewal_of_a(4, vec![], vec![claim(1)]),
        ]
    );
}

#[test]
fn only_failures_in_a_row_up_to_the_resources_allowance_move_the_group() {
    // Resource 1 of `web` may fail three checks in a row; a pass in between
    // starts the count again, and the other resource's allowance is its own.
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let check = |resource: usize, failure: Option<&str>| {
        AgentEvent::Resource(ResourceReport::MonitorChecked {
            group: web(),
            epoch: 1,
            resource,
            failure: failure.map(str::to_string),
        })
    };
    for event in [
        check(1, Some("refused")),
        check(1, Some("refused")),
        check(1, None),
        check(1, Some("refused")),
        check(1, Some("refused")),
    ] {
        assert_eq!(agent.on_event(event, 100, &topo), vec![]);
    }
    assert_eq!(
        agent.on_event(check(1, Some("timed out")), 100, &topo),
        vec![AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Orderly
        }]
    );
    // Stopping: later reports change nothing.
    assert_eq!(agent.on_event(check(0, Some("gone")), 100, &topo), vec![]);
    let release = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: INC,
        reason: ReleaseReason::MonitorFailed("timed out".into()),
    };
    assert_eq!(
        agent.on_event(
            AgentEvent::Resource(ResourceReport::Stopped {
                group: web(),
                epoch: 1,
            }),
            150,
            &topo,
        ),
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(release),
            renewal_of_a(3, vec![], vec![claim(1)]),
        ]
    );
}

#[test]
fn a_start_resumed_after_the_claim_ran_low_adds_nothing_more_and_stops() {
    let topo = topo(false);
    let mut agent = starting_agent(&topo);
    // The first resource took until 720: the claim (810) is within the stop
    // margin (100), so the second is not asked for and the group stops.
    assert_eq!(
        agent.on_event(resource_started(0, Ok(())), 720, &topo),
        vec![
            AgentAction::StopGroup {
                group: web(),
                epoch: 1,
                kind: StopKind::Emergency
            },
            renewal_of_a(3, vec![claim(1)], vec![]),
        ]
    );
    assert!(matches!(
        agent.phase(&web()),
        Some(GroupPhase::Stopping {
            kind: StopKind::Emergency,
            then_release: None
        })
    ));
    // Stopped: the claim is withdrawn, so the voters forget their grants on
    // it, and this run never claims epoch 1 again (seed 19614 of the sweep ran
    // the group again on grants sent before the withdrawal, beside the next
    // owner). It goes back to the leader instead.
    assert_eq!(
        agent.on_event(
            AgentEvent::Resource(ResourceReport::Stopped {
                group: web(),
                epoch: 1,
            }),
            730,
            &topo,
        ),
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(Command::Release {
                group: web(),
                node: A,
                epoch: 1,
                incarnation: INC,
                reason: ReleaseReason::LeaseLost,
            }),
            renewal_of_a(4, vec![], vec![claim(1)]),
        ]
    );
    assert_eq!(
        agent.on_event(AgentEvent::Tick, 930, &topo),
        vec![renewal_of_a(5, vec![], vec![claim(1)])]
    );
    assert_eq!(agent.phase(&web()), None);
}

#[test]
fn a_resource_that_fails_to_start_hands_the_group_over() {
    let topo = topo(false);
    let mut agent = starting_agent(&topo);
    assert_eq!(
        agent.on_event(resource_started(0, Err("exit status 1".into())), 40, &topo),
        vec![AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Orderly
        }]
    );
    assert_eq!(
        agent.on_event(
            AgentEvent::Resource(ResourceReport::Stopped {
                group: web(),
                epoch: 1,
            }),
            60,
            &topo,
        ),
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(Command::Release {
                group: web(),
                node: A,
                epoch: 1,
                incarnation: INC,
                reason: ReleaseReason::StartFailed("exit status 1".into()),
            }),
            renewal_of_a(3, vec![], vec![claim(1)]),
        ]
    );
}

#[test]
fn a_start_answer_that_was_not_asked_for_is_ignored() {
    let topo = topo(false);
    let mut agent = starting_agent(&topo);
    let wrong_epoch = AgentEvent::Resource(ResourceReport::Started {
        group: web(),
        epoch: 0,
        resource: 0,
        result: Ok(()),
    });
    assert_eq!(agent.on_event(wrong_epoch, 30, &topo), vec![]);
    assert_eq!(
        agent.on_event(resource_started(1, Ok(())), 31, &topo),
        vec![]
    );
    assert_eq!(agent.phase(&web()), Some(&GroupPhase::Starting));
}

#[test]
fn a_report_for_another_epoch_is_ignored() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let stale = AgentEvent::Resource(ResourceReport::MonitorChecked {
        group: web(),
        epoch: 0,
        resource: 0,
        failure: Some("down".into()),
    });
    assert_eq!(agent.on_event(stale, 100, &topo), vec![]);
}

#[test]
fn agent_moves_group_away_after_monitor_failure_and_never_restarts_it_there() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    let actions = agent.on_event(
        AgentEvent::Resource(ResourceReport::MonitorChecked {
            group: web(),
            epoch: 1,
            resource: 0,
            failure: Some("down".into()),
        }),
        100,
        &topo,
    );
    assert_eq!(
        actions,
        vec![AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Orderly
        }]
    );
    let release = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: INC,
        reason: ReleaseReason::MonitorFailed("down".into()),
    };
    let actions = agent.on_event(
        AgentEvent::Resource(ResourceReport::Stopped {
            group: web(),
            epoch: 1,
        }),
        150,
        &topo,
    );
    assert_eq!(
        actions,
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(release.clone()),
            renewal_of_a(3, vec![], vec![claim(1)]),
        ]
    );
    // The release got no answer; the log still names A at epoch 1. A proposes
    // it again and never starts the group again.
    let actions = agent.on_event(
        AgentEvent::ProposalDone {
            command: release.clone(),
            result: None,
        },
        200,
        &topo,
    );
    assert_eq!(actions, vec![AgentAction::Propose(release)]);
    assert_eq!(
        agent.on_event(AgentEvent::Tick, 400, &topo),
        vec![renewal_of_a(4, vec![], vec![claim(1)])]
    );
    assert_eq!(agent.phase(&web()), None);
}

#[test]
fn a_failed_stop_keeps_the_group_and_retries_instead_of_releasing() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    agent.on_event(AgentEvent::Shutdown, 100, &topo);
    let actions = agent.on_event(
        AgentEvent::Resource(ResourceReport::StopFailed {
            group: web(),
            epoch: 1,
            reason: "stop timed out".into(),
        }),
        120,
        &topo,
    );
    assert_eq!(actions, vec![]);
    let actions = agent.on_event(AgentEvent::Tick, 1120, &topo);
    assert_eq!(
        actions,
        vec![
            AgentAction::StopGroup {
                group: web(),
                epoch: 1,
                kind: StopKind::Orderly
            },
            renewal_of_a(3, vec![claim(1)], vec![]),
        ]
    );
}

#[test]
fn agent_hands_groups_back_on_shutdown() {
    let topo = topo(false);
    let mut agent = running_agent(&topo);
    assert_eq!(
        agent.on_event(AgentEvent::Shutdown, 100, &topo),
        vec![AgentAction::StopGroup {
            group: web(),
            epoch: 1,
            kind: StopKind::Orderly
        }]
    );
    let actions = agent.on_event(
        AgentEvent::Resource(ResourceReport::Stopped {
            group: web(),
            epoch: 1,
        }),
        150,
        &topo,
    );
    assert_eq!(
        actions,
        vec![
            AgentAction::GuardRelease { group: web() },
            AgentAction::Propose(Command::Release {
                group: web(),
                node: A,
                epoch: 1,
                incarnation: INC,
                reason: ReleaseReason::Shutdown,
            }),
            renewal_of_a(3, vec![], vec![claim(1)]),
        ]
    );
    assert!(!agent.is_done());
    let mut released = (*owned_by(A, 1)).clone();
    released.apply(&Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: INC,
        reason: ReleaseReason::Shutdown,
    });
    agent.on_event(
        AgentEvent::Applied {
            state: Arc::new(released),
            index: 7,
        },
        160,
        &topo,
    );
    assert!(agent.is_done());
}

#[test]
fn a_waiting_group_the_log_moves_away_is_dropped_without_a_stop() {
    let topo = topo(false);
    let mut agent = Agent::new(A, INC);
    agent.on_event(AgentEvent::GuardReady, 0, &topo);
    agent.on_event(
        AgentEvent::Applied {
            state: owned_by(A, 1),
            index: 5,
        },
        10,
        &topo,
    );
    let actions = agent.on_event(
        AgentEvent::Applied {
            state: owned_by(B, 2),
            index: 6,
        },
        20,
        &topo,
    );
    assert_eq!(actions, vec![]);
    assert_eq!(agent.phase(&web()), None);
}

#[test]
fn witness_renews_but_never_joins_or_starts() {
    let topo = topo(false).with_witnesses(&[W]);
    let mut agent = Agent::new(W, 1);
    let mut state = (*owned_by(W, 1)).clone();
    state.incarnations.insert(W, 1);
    let actions = agent.on_event(
        AgentEvent::Applied {
            state: Arc::new(state),
            index: 3,
        },
        0,
        &topo,
    );
    assert_eq!(
        actions,
        vec![AgentAction::Renew(Renewal {
            node: W,
            id: RenewalId {
                incarnation: 1,
                seq: 1
            },
            claims: vec![],
            withdrawn: vec![],
        })]
    );
}

// ----- the voter -----

fn renewal(node: u64, incarnation: u64, seq: u64, claims: Vec<Claim>) -> Renewal {
    Renewal {
        node,
        id: RenewalId { incarnation, seq },
        claims,
        withdrawn: vec![],
    }
}

#[test]
fn voter_refuses_claims_on_epochs_its_log_has_ended_and_reports_whom_it_hears() {
    let mut voter = LeaseVoter::new(0);
    let ack = voter
        .on_renewal(&renewal(A, 7, 1, vec![claim(1)]), 100, 817)
        .unwrap();
    assert_eq!(
        ack,
        RenewalAck {
            id: RenewalId {
                incarnation: 7,
                seq: 1
            },
            refused: vec![],
            heard: vec![Heard { node: A, age_ms: 0 }],
        }
    );
    // The log durably moves web to epoch 2 (appended, not yet committed).
    voter.on_durable(&Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 1,
    });
    let ack = voter
        .on_renewal(&renewal(A, 7, 2, vec![claim(1)]), 300, 817)
        .unwrap();
    assert_eq!(ack.refused, vec![web()]);
    // B's claim on the new epoch is fine; A is heard of 100 ms ago.
    let ack = voter
        .on_renewal(&renewal(B, 3, 1, vec![claim(2)]), 400, 817)
        .unwrap();
    assert_eq!(ack.refused, vec![]);
    assert_eq!(
        ack.heard,
        vec![
            Heard {
                node: A,
                age_ms: 100
            },
            Heard { node: B, age_ms: 0 }
        ]
    );
    // A delayed renewal of an earlier run of A is ignored.
    assert_eq!(voter.on_renewal(&renewal(A, 6, 9, vec![]), 500, 817), None);
}

#[test]
fn voter_answers_the_gate_once_fenced_with_its_latest_earlier_grant() {
    let mut voter = LeaseVoter::new(0);
    voter.on_renewal(&renewal(A, 7, 1, vec![claim(1)]), 1000, 817);
    // Not applied far enough, and not fenced: not yet.
    assert_eq!(voter.on_gate_query(&query(2, 9), 1100), GateAnswer::NotYet);
    voter.on_durable(&Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 1,
    });
    assert_eq!(voter.on_gate_query(&query(2, 9), 1100), GateAnswer::NotYet);
    voter.on_applied(9);
    assert_eq!(
        voter.on_gate_query(&query(2, 9), 1100),
        GateAnswer::Fenced { since_ms: 100 }
    );
    // After a withdrawal of A's claim (A stopped it), only the voter's start
    // bounds what it may have granted.
    voter.on_renewal(
        &Renewal {
            withdrawn: vec![claim(1)],
            ..renewal(A, 7, 2, vec![])
        },
        1200,
        817,
    );
    assert_eq!(
        voter.on_gate_query(&query(2, 9), 1300),
        GateAnswer::Fenced { since_ms: 1300 }
    );
}

#[test]
fn a_restarted_voter_rebuilds_its_floors_and_counts_its_own_start() {
    let mut voter = LeaseVoter::new(5000);
    let mut snapshot = ClusterState::default();
    snapshot.groups.insert(
        web(),
        GroupState {
            owner: Some(B),
            epoch: 4,
            ..Default::default()
        },
    );
    voter.on_durable_state(&snapshot);
    voter.on_durable(&Command::Release {
        group: web(),
        node: B,
        epoch: 4,
        incarnation: 3,
        reason: ReleaseReason::Shutdown,
    });
    assert_eq!(voter.floor(&web()), 5);
    let ack = voter
        .on_renewal(&renewal(B, 3, 1, vec![claim(4)]), 5010, 817)
        .unwrap();
    assert_eq!(ack.refused, vec![web()]);
    voter.on_applied(20);
    assert_eq!(
        voter.on_gate_query(&query(5, 20), 5100),
        GateAnswer::Fenced { since_ms: 100 }
    );
}

#[test]
fn gate_wait_covers_the_drift_of_three_clocks() {
    assert_eq!(lease::gate_wait_ms(800, 0.01), 817);
    assert_eq!(lease::gate_wait_ms(800, 0.0), 800);
    assert_eq!(lease::gate_remaining_ms(817, 100), 717);
    assert_eq!(lease::gate_remaining_ms(817, 5000), 0);
}

// ----- the replicated state -----

#[test]
fn release_from_an_earlier_daemon_run_is_refused() {
    // Regression (simulation): a release sent just before the daemon crashed
    // committed after the restarted daemon had started the group again.
    let mut state = (*owned_by(A, 1)).clone();
    state.apply(&Command::Join {
        node: A,
        incarnation: 8,
    });
    let stale = Command::Release {
        group: web(),
        node: A,
        epoch: 1,
        incarnation: INC,
        reason: ReleaseReason::Shutdown,
    };
    assert!(matches!(state.apply(&stale), ApplyResult::Rejected(_)));
    assert_eq!(state.owner_of(&web()), Some(A));
    // A join of the earlier run, delayed, does not make it current again.
    let late = Command::Join {
        node: A,
        incarnation: INC,
    };
    assert!(matches!(state.apply(&late), ApplyResult::Rejected(_)));
    assert!(matches!(state.apply(&stale), ApplyResult::Rejected(_)));
}

#[test]
fn assign_needs_the_current_epoch() {
    let mut state = (*owned_by(A, 1)).clone();
    let stale = Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 0,
    };
    assert!(matches!(state.apply(&stale), ApplyResult::Rejected(_)));
    let same = Command::Assign {
        group: web(),
        node: Some(A),
        epoch: 1,
    };
    assert!(matches!(state.apply(&same), ApplyResult::Rejected(_)));
    let good = Command::Assign {
        group: web(),
        node: Some(B),
        epoch: 1,
    };
    assert_eq!(state.apply(&good), ApplyResult::Applied);
    let gs = state.group(&web());
    assert_eq!((gs.owner, gs.epoch), (Some(B), 2));
}

// ----- placement -----

fn live(nodes: &[u64], at: u64) -> Liveness {
    let mut l = Liveness::new(&[A, B, C], 0);
    for n in nodes {
        l.renewed(*n, at, 800);
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
        })]
    );
    // One proposal per group in flight.
    assert_eq!(
        placement.decide(&topo, &ClusterState::default(), &liveness, 150),
        vec![]
    );
}

#[test]
fn placement_waits_out_the_owners_lease_with_drift_before_moving() {
    let topo = topo(false);
    let mut placement = Placement::new();
    let mut liveness = live(&[A, B], 1000);
    liveness.renewed(B, 1800, 800);
    let state = owned_by(A, 1);
    // A's last renewal was accepted at 1000: 800 ms * 1.01 = 808 ms later.
    assert_eq!(placement.decide(&topo, &state, &liveness, 1807), vec![]);
    assert_eq!(
        placement.decide(&topo, &state, &liveness, 1808),
        vec![PlacementAction::Propose(Command::Assign {
            group: web(),
            node: Some(B),
            epoch: 1,
        })]
    );
}

#[test]
fn an_owner_the_leader_cannot_reach_but_another_voter_hears_keeps_its_group() {
    let topo = topo(false);
    let mut placement = Placement::new();
    let mut liveness = live(&[A, B], 1000);
    // Only C hears A; C's acknowledgement of our renewal reports it.
    for t in (1200..=3000).step_by(200) {
        liveness.report(
            &[Heard {
                node: A,
                age_ms: 30,
            }],
            t,
            800,
        );
        liveness.renewed(B, t, 800);
    }
    assert_eq!(
        placement.decide(&topo, &owned_by(A, 1), &liveness, 3000),
        vec![]
    );
}

#[test]
fn sticky_group_stays_and_failback_group_returns_when_stable() {
    let state = owned_by(B, 3);
    let mut liveness = Liveness::new(&[A, B, C], 0);
    for t in (0..=5000).step_by(200) {
        liveness.renewed(A, t, 800);
        liveness.renewed(B, t, 800);
    }
    assert_eq!(
        Placement::new().decide(&topo(false), &state, &liveness, 5000),
        vec![]
    );
    assert_eq!(
        Placement::new().decide(&topo(true), &state, &liveness, 5000),
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
    assert_eq!(
        Placement::new().decide(&topo, &state, &liveness, 100),
        vec![PlacementAction::Propose(Command::Assign {
            group: web(),
            node: Some(B),
            epoch: 0,
        })]
    );
    state.groups.get_mut(&web()).unwrap().failed_on.insert(B);
    assert_eq!(
        Placement::new().decide(&topo, &state, &liveness, 100),
        vec![PlacementAction::Propose(Command::ClearFailures {
            group: web(),
            epoch: 0
        })]
    );
}

// ----- one member's engine -----

#[test]
fn node_engine_answers_its_own_renewal_and_learns_liveness_from_reports() {
    let mut engine = NodeEngine::new(B, 1, topo(false), 0);
    let actions = engine.on_event(Event::GuardReady, 10);
    assert_eq!(
        actions,
        vec![
            Action::Propose {
                token: 1,
                command: Command::Join {
                    node: B,
                    incarnation: 1
                }
            },
            Action::SendRenewal(Renewal {
                node: B,
                id: RenewalId {
                    incarnation: 1,
                    seq: 1
                },
                claims: vec![],
                withdrawn: vec![],
            }),
        ]
    );
    // B's own voter accepted it.
    assert_eq!(
        engine.liveness().get(B).map(|s| (s.at, s.heard)),
        Some((10, true))
    );
    // C's acknowledgement reports A, heard 40 ms before.
    engine.on_event(
        Event::RenewalAnswered {
            from: C,
            ack: RenewalAck {
                id: RenewalId {
                    incarnation: 1,
                    seq: 1,
                },
                refused: vec![],
                heard: vec![Heard {
                    node: A,
                    age_ms: 40,
                }],
            },
        },
        100,
    );
    assert_eq!(
        engine.liveness().get(A).map(|s| (s.at, s.heard)),
        Some((60, true))
    );
    // A renewal in another member's name is not answered.
    assert_eq!(engine.on_renewal(C, &renewal(A, 1, 1, vec![]), 120), None);
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
    engine.on_event(Event::Tick, 10);
    // B wins the election having heard only itself: it must not place the
    // group on itself before A, the preferred node, had time to renew.
    let actions = engine.on_event(Event::Leadership(true), 20);
    assert_eq!(assigns(&actions), vec![]);
    engine.on_renewal(A, &renewal(A, 5, 1, vec![]), 300);
    assert_eq!(assigns(&engine.on_event(Event::Tick, 419)), vec![]);
    let actions = engine.on_event(Event::Tick, 420);
    assert_eq!(assigns(&actions), vec![Some(A)], "{actions:?}");
}
