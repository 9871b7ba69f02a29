//! One member's whole decision logic: its agent, its view of everyone's liveness,
//! and the placement it runs while it leads. The executor and the simulation both
//! drive exactly this type.

use crate::engine::agent::{Agent, AgentAction, AgentEvent, ResourceReport};
use crate::engine::lease::{GateAnswer, GateQuery, LeaseVoter, Renewal, RenewalAck};
use crate::engine::liveness::Liveness;
use crate::engine::placement::{Placement, PlacementAction};
use crate::engine::state::{ApplyResult, ClusterState, Command};
use crate::engine::topology::Topology;
use std::sync::Arc;
use uphold_core::{GroupName, Millis, NodeId};

pub use crate::engine::agent::StopKind;

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Tick,
    /// A command is durable in this member's log (leader or follower), or was
    /// read back from it at start.
    Appended(Command),
    /// A state this member holds durably: the snapshot loaded at start, or one
    /// built or installed since.
    DurableState(Arc<ClusterState>),
    /// The state machine applied the log up to `index`.
    Applied {
        state: Arc<ClusterState>,
        index: u64,
    },
    /// This member became or stopped being the leader.
    Leadership(bool),
    ProposalDone {
        token: u64,
        /// None: no answer (lost, timed out, no leader).
        result: Option<ApplyResult>,
    },
    /// A voter acknowledged one of this member's renewals.
    RenewalAnswered {
        from: NodeId,
        ack: RenewalAck,
    },
    /// A voter answered one of this member's gate queries.
    GateAnswered {
        from: NodeId,
        query: GateQuery,
        answer: GateAnswer,
    },
    /// What the executor reports about a group's resources here (a resource
    /// asked for by `Action::StartResource` is up, a group stopped, a check).
    Resource(ResourceReport),
    Shutdown,
    /// This run's guard is in control of the node's resources (see
    /// `AgentEvent::GuardReady`).
    GuardReady,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Commit `command` through the quorum; answer with `Event::ProposalDone { token }`.
    Propose {
        token: u64,
        command: Command,
    },
    /// Send the renewal to every other voter; answer each acknowledgement with
    /// `Event::RenewalAnswered` (this member's own voter has answered already).
    SendRenewal(Renewal),
    /// Send the query to every other voter; answer with `Event::GateAnswered`.
    SendGateQuery(GateQuery),
    /// Start one resource of the group (its place in the group; the ones before
    /// it are up); answer with `ResourceReport::Started`. The engine asks for
    /// each only while this node's claim holds.
    StartResource {
        group: GroupName,
        epoch: u64,
        resource: usize,
    },
    /// Every resource of the group is up: check each at its interval and
    /// report with `Event::MonitorChecked`.
    StartMonitors {
        group: GroupName,
        epoch: u64,
    },
    /// Stop the group's resources; answer with `ResourceReport::Stopped`.
    StopGroup {
        group: GroupName,
        epoch: u64,
        kind: StopKind,
    },
    GuardHold {
        group: GroupName,
        until: Millis,
    },
    GuardRelease {
        group: GroupName,
    },
}

#[derive(Debug)]
enum Origin {
    Agent,
    Placement,
}

#[derive(Debug)]
pub struct NodeEngine {
    pub me: NodeId,
    topo: Topology,
    agent: Agent,
    voter: LeaseVoter,
    liveness: Liveness,
    placement: Placement,
    is_leader: bool,
    state: Arc<ClusterState>,
    next_token: u64,
    proposals: std::collections::BTreeMap<u64, (Origin, Command)>,
}

impl NodeEngine {
    pub fn new(me: NodeId, incarnation: u64, topo: Topology, now: Millis) -> NodeEngine {
        let liveness = Liveness::new(&topo.nodes, now);
        NodeEngine {
            me,
            agent: Agent::new(me, incarnation),
            voter: LeaseVoter::new(now),
            liveness,
            placement: Placement::new(),
            is_leader: false,
            state: Arc::new(ClusterState::default()),
            next_token: 1,
            proposals: Default::default(),
            topo,
        }
    }

    /// A reloaded config changed the groups (membership and timing cannot change
    /// at run time). Removed groups are stopped and released by their owner, new
    /// ones placed by the leader, all through the usual steps.
    pub fn set_topology(&mut self, topo: Topology) {
        self.topo = topo;
        self.placement.reset();
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }
    pub fn voter(&self) -> &LeaseVoter {
        &self.voter
    }

    /// What this member held durably when it started: its snapshot's state and
    /// the commands in its log. Feeds only the lease voter (what it may no
    /// longer grant), before the first event and before any renewal is answered.
    pub fn restore_durable(
        &mut self,
        snapshot: Option<&ClusterState>,
        log: impl IntoIterator<Item = Command>,
    ) {
        if let Some(state) = snapshot {
            self.voter.on_durable_state(state);
        }
        for command in log {
            self.voter.on_durable(&command);
        }
    }

    /// A renewal from member `from` (authenticated by the transport). None: it
    /// is not this cluster's, or comes from an earlier run of its daemon.
    pub fn on_renewal(
        &mut self,
        from: NodeId,
        renewal: &Renewal,
        now: Millis,
    ) -> Option<RenewalAck> {
        if renewal.node != from || !self.topo.voters.contains(&from) {
            return None;
        }
        let ack = self
            .voter
            .on_renewal(renewal, now, self.topo.gate_wait_ms)?;
        self.liveness.renewed(from, now, self.topo.lease_ms);
        Some(ack)
    }

    /// A gate query from member `from`.
    pub fn on_gate_query(&self, from: NodeId, query: &GateQuery, now: Millis) -> GateAnswer {
        if !self.topo.voters.contains(&from) {
            return GateAnswer::NotYet;
        }
        self.voter.on_gate_query(query, now)
    }
    pub fn is_leader(&self) -> bool {
        self.is_leader
    }
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }
    /// When the engine next needs a `Tick` if no other event arrives: the agent's
    /// renewal or lease deadline and, while leading, the moment a silent owner's
    /// lease certainly expires. Never later than `now + max_idle`, so slower
    /// conditions (failback stability, retries) are still checked.
    pub fn next_deadline(&self, now: Millis, max_idle: Millis) -> Millis {
        let mut next = now.saturating_add(max_idle);
        if let Some(agent) = self.agent.next_deadline(now, &self.topo) {
            next = next.min(agent);
        }
        if self.is_leader {
            for spec in &self.topo.groups {
                if let Some(owner) = self.state.owner_of(&spec.name) {
                    if let Some(seen) = self.liveness.get(owner) {
                        let expiry = seen.at.saturating_add(self.topo.lease_expiry_wait_ms);
                        if expiry > now {
                            next = next.min(expiry);
                        }
                    }
                }
            }
        }
        next.max(now)
    }

    /// Shut down, every group handed back, and (if leading) placed elsewhere.
    pub fn is_done(&self, now: Millis) -> bool {
        self.agent.is_done()
            && !(self.is_leader
                && self.placement.has_pending_work(
                    &self.topo,
                    &self.state,
                    &self.liveness,
                    self.me,
                    now,
                ))
    }

    pub fn on_event(&mut self, event: Event, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        let agent_event = match event {
            Event::Tick => AgentEvent::Tick,
            Event::Appended(command) => {
                self.voter.on_durable(&command);
                AgentEvent::Tick
            }
            Event::DurableState(state) => {
                self.voter.on_durable_state(&state);
                AgentEvent::Tick
            }
            Event::Applied { state, index } => {
                self.voter.on_applied(index);
                self.state = state.clone();
                AgentEvent::Applied { state, index }
            }
            Event::Leadership(leading) => {
                if leading != self.is_leader {
                    self.placement.reset();
                    self.placement.set_leading_since(leading.then_some(now));
                }
                self.is_leader = leading;
                AgentEvent::Tick
            }
            Event::ProposalDone { token, result } => match self.proposals.remove(&token) {
                Some((Origin::Agent, command)) => AgentEvent::ProposalDone { command, result },
                Some((Origin::Placement, command)) => {
                    self.placement.on_result(&command);
                    AgentEvent::Tick
                }
                None => AgentEvent::Tick,
            },
            Event::RenewalAnswered { from, ack } => {
                self.liveness.report(&ack.heard, now, self.topo.lease_ms);
                AgentEvent::RenewalAnswered { from, ack }
            }
            Event::GateAnswered {
                from,
                query,
                answer,
            } => AgentEvent::GateAnswered {
                from,
                query,
                answer,
            },
            Event::Resource(report) => AgentEvent::Resource(report),
            Event::Shutdown => AgentEvent::Shutdown,
            Event::GuardReady => AgentEvent::GuardReady,
        };
        // This member's own voter answers its renewals and gate queries at once;
        // the answers go back into the agent before anything leaves.
        let mut queue = std::collections::VecDeque::from([agent_event]);
        while let Some(agent_event) = queue.pop_front() {
            for action in self.agent.on_event(agent_event, now, &self.topo) {
                match action {
                    AgentAction::Propose(command) => self.propose(Origin::Agent, command, &mut out),
                    AgentAction::Renew(renewal) => {
                        if let Some(ack) = self.on_renewal(self.me, &renewal, now) {
                            queue.push_back(AgentEvent::RenewalAnswered { from: self.me, ack });
                        }
                        out.push(Action::SendRenewal(renewal));
                    }
                    AgentAction::QueryGate(query) => {
                        let answer = self.on_gate_query(self.me, &query, now);
                        queue.push_back(AgentEvent::GateAnswered {
                            from: self.me,
                            query: query.clone(),
                            answer,
                        });
                        out.push(Action::SendGateQuery(query));
                    }
                    AgentAction::StartResource {
                        group,
                        epoch,
                        resource,
                    } => out.push(Action::StartResource {
                        group,
                        epoch,
                        resource,
                    }),
                    AgentAction::StartMonitors { group, epoch } => {
                        out.push(Action::StartMonitors { group, epoch })
                    }
                    AgentAction::StopGroup { group, epoch, kind } => {
                        out.push(Action::StopGroup { group, epoch, kind })
                    }
                    AgentAction::GuardHold { group, until } => {
                        out.push(Action::GuardHold { group, until })
                    }
                    AgentAction::GuardRelease { group } => out.push(Action::GuardRelease { group }),
                }
            }
        }
        if self.is_leader {
            self.placement
                .set_excluded(self.agent.is_shutting_down().then_some(self.me));
            let decided = self
                .placement
                .decide(&self.topo, &self.state, &self.liveness, now);
            for PlacementAction::Propose(command) in decided {
                self.propose(Origin::Placement, command, &mut out);
            }
        }
        out
    }

    fn propose(&mut self, origin: Origin, command: Command, out: &mut Vec<Action>) {
        let token = self.next_token;
        self.next_token += 1;
        self.proposals.insert(token, (origin, command.clone()));
        out.push(Action::Propose { token, command });
    }
}
