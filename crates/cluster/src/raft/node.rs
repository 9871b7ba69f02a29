//! [`RaftNode`], the handle the rest of uphold uses: start a member's Raft from the
//! config and its state directory, propose commands (forwarded to the leader when
//! needed), watch the applied state and the leader, report status, serve peers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uphold_config::{ClusterConfig, Timing};
use uphold_core::{NodeId, NodeName};
use uphold_proto::{RpcClient, RpcHandler};

use super::log_store::{AppendObserver, Liveness, LogStore, LogStoreOpenError, LOG_FILE};
use super::network::{AckTracker, NetworkFactory, RpcTransport, Transport, TransportError};
use super::rpc::{self, LocalProposeError, ProposeReply, ProposeRequest, RaftRpcHandler, PROPOSE};
use super::state_machine::{AppliedState, SnapshotLoadError, StateMachine};
use super::types::{MemberNode, Raft};
use crate::engine::state::{ApplyResult, Command};

/// What a member needs to run its Raft.
pub struct RaftOptions {
    pub cluster: ClusterConfig,
    pub me: NodeName,
    /// Holds `raft.redb` and `snapshot.bin`; created if missing.
    pub state_dir: PathBuf,
    pub rpc: Arc<RpcClient>,
    /// See [`AppendObserver`].
    pub on_append: AppendObserver,
}

/// Log compaction settings. The defaults suit production; tests shrink them to
/// exercise snapshot transfer.
#[derive(Clone, Debug)]
pub(crate) struct Compaction {
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the snapshot, so that a briefly lagging
    /// follower catches up from the log instead of a snapshot.
    pub keep_behind_snapshot: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        // Only joins, placements and admin commands are logged (leases are
        // renewed in memory), so the log grows by a handful of entries per
        // failover: a snapshot every 2000 entries keeps it small.
        Compaction {
            snapshot_every: 2000,
            keep_behind_snapshot: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("{me} is not a member of cluster {cluster}")]
    NotAMember { me: NodeName, cluster: String },
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogStoreOpenError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotLoadError),
    #[error("invalid Raft timing: {0}")]
    Timing(String),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("cannot initialize the Raft membership: {0}")]
    Initialize(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader known within {0:?}; is a majority of the members up and connected?")]
    NoLeader(Duration),
    #[error("not committed within {0:?}; the command may still commit")]
    Timeout(Duration),
    #[error("leader (node {leader}) is unreachable: {message}")]
    LeaderUnreachable { leader: NodeId, message: String },
    #[error(
        "leader (node {leader}) failed the request: {message}; the command may have committed"
    )]
    Forward { leader: NodeId, message: String },
    #[error("Raft refused the proposal: {0}")]
    Refused(String),
    #[error("Raft on this member has stopped: {0}")]
    Stopped(String),
}

/// Role of this member in the current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// Replication towards one follower, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    pub id: NodeId,
    /// Last log index known to be on the follower.
    pub matched_index: Option<u64>,
    /// Milliseconds since the follower last answered this leader; `None` if it
    /// has not answered in this term.
    pub millis_since_ack: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: RaftRole,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<NodeId>,
    /// Filled only on the leader.
    pub followers: Vec<FollowerStatus>,
    quorum: bool,
}

impl RaftStatus {
    /// On the leader: a majority of voters (itself included) answered within the
    /// maximum election timeout. Elsewhere: a leader is known to this member.
    pub fn has_quorum(&self) -> bool {
        self.quorum
    }
}

/// A running member of the Raft group.
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    transport: Arc<dyn Transport>,
    acks: Arc<AckTracker>,
    handler: Arc<RaftRpcHandler>,
    applied_rx: watch::Receiver<Arc<AppliedState>>,
    leader_rx: watch::Receiver<Option<NodeId>>,
    leader_task: JoinHandle<()>,
    log_liveness: Liveness,
    quorum_window: Duration,
    durable_at_start: std::sync::Mutex<Vec<Command>>,
}

/// How many times a proposal is sent in all (to this member or a leader) when
/// the previous try was certainly not accepted because leadership moved.
const PROPOSE_ATTEMPTS: usize = 3;

/// How long `shutdown` waits for the log database to be closed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn raft_config(cluster: &ClusterConfig, compaction: &Compaction) -> Result<Config, RaftStartError> {
    let timing = &cluster.timing;
    let config = Config {
        cluster_name: cluster.name.clone(),
        heartbeat_interval: millis(timing.heartbeat_interval),
        election_timeout_min: millis(timing.election_timeout_min),
        election_timeout_max: millis(timing.election_timeout_max),
        // The whole snapshot travels in one message; it is small, but give it
        // time beyond a heartbeat.
        install_snapshot_timeout: millis(timing.election_timeout_max * 4).max(2000),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(compaction.snapshot_every),
        max_in_snapshot_log_to_keep: compaction.keep_behind_snapshot,
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| RaftStartError::Timing(e.to_string()))
}

/// Members added to or removed from the config after the cluster was formed are
/// not applied to the Raft membership (that needs a joint-consensus change);
/// say so instead of failing in puzzling ways.
fn warn_if_membership_differs(raft: &Raft, cluster: &ClusterConfig) {
    let stored: std::collections::BTreeSet<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let configured: std::collections::BTreeSet<NodeId> =
        cluster.members.iter().map(|m| m.id).collect();
    if stored != configured {
        let names = |ids: &std::collections::BTreeSet<NodeId>| {
            ids.iter()
                .map(|id| match cluster.member_by_id(*id) {
                    Some(m) => m.name.to_string(),
                    None => format!("<node id {id}>"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::warn!(
            stored = %names(&stored),
            configured = %names(&configured),
            "the Raft membership in the state directory differs from the configured members; \
             membership changes are not applied automatically"
        );
    }
}

fn member_id(cluster: &ClusterConfig, me: &NodeName) -> Result<NodeId, RaftStartError> {
    cluster
        .member(me.as_str())
        .map(|m| m.id)
        .ok_or_else(|| RaftStartError::NotAMember {
            me: me.clone(),
            cluster: cluster.name.clone(),
        })
}

/// Every command in the log, read before openraft takes the store over.
async fn read_commands(log_store: &mut LogStore) -> Result<Vec<Command>, RaftStartError> {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    let read_error = |e: crate::raft::types::StorageError| {
        RaftStartError::Raft(format!("reading the log back at start: {e}"))
    };
    let state = log_store.get_log_state().await.map_err(read_error)?;
    let Some(last) = state.last_log_id else {
        return Ok(Vec::new());
    };
    let first = state.last_purged_log_id.map_or(0, |id| id.index + 1);
    let mut reader = log_store.get_log_reader().await;
    let entries = reader
        .try_get_log_entries(first..=last.index)
        .await
        .map_err(read_error)?;
    Ok(entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            openraft::EntryPayload::Normal(command) => Some(command),
            _ => None,
        })
        .collect())
}

fn backoff_bounds(timing: &Timing) -> (Duration, Duration) {
    (timing.heartbeat_interval, timing.election_timeout_max)
}

impl RaftNode {
    /// Starts this member's Raft. On a pristine state directory it initializes the
    /// membership with every configured member (nodes and witnesses) as a voter;
    /// with existing state it resumes from it (same term, vote and log).
    pub async fn start(opts: RaftOptions) -> Result<RaftNode, RaftStartError> {
        let transport = Arc::new(RpcTransport::new(opts.rpc, &opts.cluster));
        RaftNode::start_with(
            &opts.cluster,
            &opts.me,
            &opts.state_dir,
            opts.on_append,
            transport,
            Compaction::default(),
        )
        .await
    }

    /// Starts this member's Raft over `transport`. On a pristine state directory
    /// it initializes the membership with every configured member as a voter;
    /// with existing state it resumes from it (same term, vote and log).
    pub(crate) async fn start_with(
        cluster: &ClusterConfig,
        me: &NodeName,
        state_dir: &Path,
        on_append: AppendObserver,
        transport: Arc<dyn Transport>,
        compaction: Compaction,
    ) -> Result<RaftNode, RaftStartError> {
        let id = member_id(cluster, me)?;
        std::fs::create_dir_all(state_dir).map_err(|source| RaftStartError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;

        let log_store = LogStore::open(&state_dir.join(LOG_FILE), id, on_append)?;
        Self::start_on(cluster, me, id, state_dir, log_store, transport, compaction).await
    }

    /// [`RaftNode::start_with`] on a log store the test opened (with hooks that
    /// hold its writer, as a stalled disk would).
    #[cfg(test)]
    pub(crate) async fn start_with_log(
        cluster: &ClusterConfig,
        me: &NodeName,
        state_dir: &Path,
        log_store: LogStore,
        transport: Arc<dyn Transport>,
        compaction: Compaction,
    ) -> Result<RaftNode, RaftStartError> {
        let id = member_id(cluster, me)?;
        Self::start_on(cluster, me, id, state_dir, log_store, transport, compaction).await
    }

    async fn start_on(
        cluster: &ClusterConfig,
        me: &NodeName,
        id: NodeId,
        state_dir: &Path,
        mut log_store: LogStore,
        transport: Arc<dyn Transport>,
        compaction: Compaction,
    ) -> Result<RaftNode, RaftStartError> {
        let log_liveness = log_store.liveness();
        let durable_at_start = read_commands(&mut log_store).await?;
        let (applied_tx, applied_rx) = watch::channel(Arc::new(AppliedState::default()));
        let state_machine = StateMachine::open(state_dir, applied_tx)?;

        let config = raft_config(cluster, &compaction)?;
        let acks = Arc::new(AckTracker::default());
        let (backoff_min, backoff_max) = backoff_bounds(&cluster.timing);
        let network = NetworkFactory {
            me: id,
            transport: transport.clone(),
            acks: acks.clone(),
            backoff_min,
            backoff_max,
        };
        let raft = Raft::new(id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftStartError::Raft(e.to_string()))?;
        if initialized {
            warn_if_membership_differs(&raft, cluster);
        } else {
            // Every member initializes itself with the same membership, taken from
            // the same config; openraft documents this as safe, and it lets any
            // majority form the cluster without an operator picking a seed.
            let members: BTreeMap<NodeId, MemberNode> = cluster
                .members
                .iter()
                .map(|m| {
                    (
                        m.id,
                        MemberNode {
                            name: m.name.to_string(),
                            address: m.address.to_string(),
                        },
                    )
                })
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node = %me, "initialized Raft membership"),
                // A peer's message got here first: the cluster already exists.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let _ = raft.shutdown().await;
                    return Err(RaftStartError::Initialize(e.to_string()));
                }
            }
        }

        let (leader_tx, leader_rx) = watch::channel(raft.metrics().borrow().current_leader);
        let mut metrics = raft.metrics();
        let leader_task = tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let leader = metrics.borrow_and_update().current_leader;
                leader_tx.send_if_modified(|current| {
                    let changed = *current != leader;
                    *current = leader;
                    changed
                });
            }
            leader_tx.send_replace(None);
        });

        let members = cluster
            .members
            .iter()
            .map(|m| (m.name.clone(), m.id))
            .collect();
        let handler = Arc::new(RaftRpcHandler::new(raft.clone(), members));

        Ok(RaftNode {
            id,
            raft,
            transport,
            acks,
            handler,
            applied_rx,
            leader_rx,
            leader_task,
            log_liveness,
            quorum_window: cluster.timing.election_timeout_max,
            durable_at_start: std::sync::Mutex::new(durable_at_start),
        })
    }

    /// The commands this member's log held when it started, in log order (once;
    /// later calls return nothing). Together with the loaded snapshot they are
    /// what this member knew durably before it crashed.
    pub fn durable_at_start(&self) -> Vec<Command> {
        self.durable_at_start
            .lock()
            .map(|mut commands| std::mem::take(&mut *commands))
            .unwrap_or_default()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    #[cfg(test)]
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    #[cfg(test)]
    pub(crate) fn handler_for_tests(&self) -> Arc<RaftRpcHandler> {
        self.handler.clone()
    }

    /// The replicated state, updated after every applied batch.
    pub fn applied(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.applied_rx.clone()
    }

    /// The leader as known to this member (`None` during elections).
    pub fn leader_watch(&self) -> watch::Receiver<Option<NodeId>> {
        self.leader_rx.clone()
    }

    /// Server side of the Raft services (1..=4 in [`super::rpc`]), to serve with
    /// `uphold_proto::serve`.
    pub fn rpc_handler(&self) -> Arc<dyn RpcHandler> {
        self.handler.clone()
    }

    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let role = match metrics.state {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        };
        let is_leader = role == RaftRole::Leader;
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let mut followers = Vec::new();
        if is_leader {
            for &voter in voters.iter().filter(|&&v| v != self.id) {
                let matched_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&voter))
                    .and_then(|m| m.as_ref())
                    .map(|log_id| log_id.index);
                followers.push(FollowerStatus {
                    id: voter,
                    matched_index,
                    millis_since_ack: self
                        .acks
                        .since(voter, metrics.current_term)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                });
            }
        }
        let quorum = if is_leader {
            let window = u64::try_from(self.quorum_window.as_millis()).unwrap_or(u64::MAX);
            let answering = followers
                .iter()
                .filter(|f| f.millis_since_ack.is_some_and(|ms| ms <= window))
                .count();
            (1 + answering) * 2 > voters.len()
        } else {
            role == RaftRole::Follower && metrics.current_leader.is_some()
        };
        RaftStatus {
            id: self.id,
            role,
            leader: metrics.current_leader,
            term: metrics.current_term,
            is_leader,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|id| id.index),
            voters,
            followers,
            quorum,
        }
    }

    /// Commits `cmd` through the leader and returns what applying it produced.
    /// Forwards to the leader when this member is not it, and tries again (up to
    /// the deadline) when the attempt was certainly not accepted because
    /// leadership moved.
    pub async fn propose(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<ApplyResult, ProposeError> {
        let deadline = Instant::now() + timeout;
        // A leader named by a peer's refusal, not yet visible in our metrics.
        let mut hint: Option<NodeId> = None;
        // A leader that could not be reached; wait for a different one.
        let mut avoid: Option<NodeId> = None;
        let mut last_error = ProposeError::NoLeader(timeout);
        for _ in 0..PROPOSE_ATTEMPTS {
            let leader = match hint.take() {
                Some(leader) => leader,
                None => match self.wait_for_leader(avoid, deadline).await {
                    Some(leader) => leader,
                    None => return Err(last_error),
                },
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProposeError::Timeout(timeout));
            }
            let reply = if leader == self.id {
                rpc::propose_here(&self.raft, cmd.clone(), remaining)
                    .await
                    .map_err(|e| match e {
                        LocalProposeError::Timeout(_) => ProposeError::Timeout(timeout),
                        LocalProposeError::Refused(why) => ProposeError::Refused(why),
                        LocalProposeError::Stopped(why) => ProposeError::Stopped(why),
                    })?
            } else {
                match self.forward(leader, &cmd, remaining).await {
                    Ok(reply) => reply,
                    Err(TransportError::Unreachable(message)) => {
                        // Not delivered: safe to try a leader elected meanwhile.
                        avoid = Some(leader);
                        last_error = ProposeError::LeaderUnreachable { leader, message };
                        continue;
                    }
                    Err(TransportError::Timeout(_)) => return Err(ProposeError::Timeout(timeout)),
                    Err(TransportError::Remote(message) | TransportError::Failed(message)) => {
                        return Err(ProposeError::Forward { leader, message })
                    }
                }
            };
            match reply {
                ProposeReply::Applied(result) => return Ok(result),
                ProposeReply::NotLeader { leader: named } => {
                    hint = named.filter(|&n| n != leader);
                    avoid = Some(leader);
                    last_error = ProposeError::NoLeader(timeout);
                }
            }
        }
        Err(last_error)
    }

    async fn forward(
        &self,
        leader: NodeId,
        cmd: &Command,
        remaining: Duration,
    ) -> Result<ProposeReply, TransportError> {
        let request = ProposeRequest {
            command: cmd.clone(),
            timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        };
        let body = rpc::encode("propose request", &request).map_err(TransportError::Failed)?;
        let bytes = self
            .transport
            .call(leader, PROPOSE, body, remaining)
            .await?;
        rpc::decode("propose reply", &bytes).map_err(TransportError::Failed)
    }

    /// The current leader, waiting until one other than `avoid` is known or the
    /// deadline passes.
    async fn wait_for_leader(&self, avoid: Option<NodeId>, deadline: Instant) -> Option<NodeId> {
        let mut leader_rx = self.leader_rx.clone();
        let wanted = |leader: &Option<NodeId>| leader.is_some() && *leader != avoid;
        let found = tokio::time::timeout_at(deadline, leader_rx.wait_for(wanted)).await;
        match found {
            Ok(Ok(leader)) => *leader,
            _ => None,
        }
    }

    /// Stops Raft and waits until the log database is closed, so the same state
    /// directory can be opened again by a new `RaftNode`.
    pub async fn shutdown(self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft core task ended abnormally");
        }
        self.leader_task.abort();
        drop(self.handler);
        drop(self.raft);
        let deadline = Instant::now() + CLOSE_WAIT;
        // openraft's replication tasks hold log readers and end shortly after the
        // core; there is no event for their exit, so poll.
        while !self.log_liveness.is_closed() {
            if Instant::now() >= deadline {
                tracing::warn!("Raft log still open {CLOSE_WAIT:?} after shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
