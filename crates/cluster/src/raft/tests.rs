//! Tests of the Raft adapter: openraft's storage conformance suite against the
//! redb log and the snapshotting state machine, persistence across reopen, the
//! RPC handler's sender checks, and three-member clusters over an in-process
//! transport (with partitions) and over the real mutual-TLS RPC layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::Instant;
use uphold_config::{ClusterConfig, Member, MemberRole, Timing};
use uphold_core::{GroupName, NodeId, NodeName};

use super::log_store::{LogStore, LogStoreOpenError, WriterHooks, LOG_FILE};
use super::network::{CallFuture, Transport, TransportError};
use super::node::{Compaction, ProposeError, RaftNode, RaftOptions, RaftRole};
use super::rpc::{self, RaftRpcHandler, RAFT_VOTE};
use super::state_machine::{AppliedState, StateMachine};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::engine::state::{ApplyResult, Command};

// ---------------------------------------------------------------------------
// Storage

struct TempStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let log = LogStore::open(&dir.path().join(LOG_FILE), 0, Arc::new(|_: &Command| {}))
            .expect("open log store");
        let (tx, _rx) = watch::channel(Arc::new(AppliedState::default()));
        let sm = StateMachine::open(dir.path(), tx).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite() {
    Suite::test_all(TempStore).expect("storage suite");
}

fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// A logged command that names its sender; its incarnation stands for a counter
/// the tests follow.
fn join(node: NodeId, incarnation: u64) -> Command {
    Command::Join { node, incarnation }
}

#[tokio::test]
async fn log_and_vote_survive_reopen_and_belong_to_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observer = {
        let seen = seen.clone();
        Arc::new(move |c: &Command| seen.lock().unwrap().push(c.clone()))
    };
    {
        let mut log = LogStore::open(&path, 7, observer).unwrap();
        log.save_vote(&Vote::new(3, 7)).await.unwrap();
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry {
                log_id: log_id(3, 7, i),
                payload: EntryPayload::Normal(join(7, i)),
            })
            .collect();
        log.blocking_append(entries).await.unwrap();
        log.save_committed(Some(log_id(3, 7, 2))).await.unwrap();
    }
    // The observer saw every appended command, in order.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![join(7, 1), join(7, 2), join(7, 3)]
    );

    let mut log = LogStore::open(&path, 7, Arc::new(|_: &Command| {})).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(3, 7, 3)));
    let entries = log.try_get_log_entries(1..4).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2].payload, EntryPayload::Normal(join(7, 3)));
    drop(log);

    match LogStore::open(&path, 8, Arc::new(|_: &Command| {})) {
        Err(LogStoreOpenError::WrongNode {
            stored: 7,
            expected: 8,
            ..
        }) => {}
        Err(other) => panic!("expected WrongNode, got {other}"),
        Ok(_) => panic!("a log written by node 7 was opened as node 8"),
    }
}

#[tokio::test]
async fn snapshot_file_restores_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(Arc::new(AppliedState::default()));
    let mut sm = StateMachine::open(dir.path(), tx).unwrap();
    let entries: Vec<Entry> = (1..=5)
        .map(|i| Entry {
            log_id: log_id(1, 1, i),
            payload: EntryPayload::Normal(join(1, i)),
        })
        .collect();
    let results = sm.apply(entries).await.unwrap();
    assert_eq!(results, vec![ApplyResult::Applied; 5]);
    assert_eq!(rx.borrow().last_applied_index, 5);
    let state = rx.borrow().state.clone();
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(sm);

    let (tx, rx) = watch::channel(Arc::new(AppliedState::default()));
    let mut sm = StateMachine::open(dir.path(), tx).unwrap();
    assert_eq!(rx.borrow().last_applied_index, 5);
    assert_eq!(rx.borrow().state, state);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 5)));
    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(current.meta, snapshot.meta);

    std::fs::write(dir.path().join(super::SNAPSHOT_FILE), b"garbage").unwrap();
    let (tx, _rx) = watch::channel(Arc::new(AppliedState::default()));
    let err = StateMachine::open(dir.path(), tx)
        .err()
        .expect("corrupt snapshot refused");
    assert!(err.to_string().contains("snapshot.bin"), "{err}");
}

// ---------------------------------------------------------------------------
// Cluster fixtures

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn test_timing() -> Timing {
    // Generous for a loaded two-core machine running debug builds.
    Timing {
        lease: Duration::from_secs(3),
        renew_interval: Duration::from_secs(1),
        max_clock_drift: 0.01,
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
    }
}

fn cluster_config(names: &[&str], addresses: &[SocketAddr], roles: &[MemberRole]) -> ClusterConfig {
    let members = names
        .iter()
        .zip(addresses)
        .zip(roles)
        .map(|((n, addr), role)| {
            let node = name(n);
            Member {
                id: node.id(),
                name: node,
                address: *addr,
                listen: *addr,
                api: "127.0.0.1:1".parse().unwrap(),
                role: *role,
            }
        })
        .collect();
    ClusterConfig {
        name: "test".to_string(),
        members,
        groups: Vec::new(),
        timing: test_timing(),
        state_dir: "/nonexistent/{node}".to_string(),
        tls_dir: "/nonexistent/{node}".to_string(),
        protection: Default::default(),
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it holds or `WAIT` passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Appended = Arc<Mutex<Vec<Command>>>;

/// Waits until every node in `nodes` names the same leader, which is one of them
/// and calls itself leader.
async fn agreed_leader<'a>(nodes: impl Iterator<Item = &'a RaftNode> + Clone) -> NodeId {
    let mut found = None;
    eventually("the members to agree on a leader", || {
        let statuses: Vec<_> = nodes.clone().map(|n| n.status()).collect();
        let leader = statuses[0].leader;
        let agreed = leader.is_some()
            && statuses.iter().all(|s| s.leader == leader)
            && statuses.iter().any(|s| Some(s.id) == leader && s.is_leader);
        if agreed {
            found = leader;
        }
        agreed
    })
    .await;
    found.expect("leader")
}

async fn wait_applied(node: &RaftNode, what: &str, check: impl Fn(&AppliedState) -> bool) {
    let mut rx = node.applied();
    let waited = tokio::time::timeout(WAIT, rx.wait_for(|s| check(s))).await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "timed out waiting on node {} for: {what}",
        node.id()
    );
}

fn last_seq(state: &AppliedState, node: NodeId) -> Option<u64> {
    state.state.incarnations.get(&node).copied()
}

// ---------------------------------------------------------------------------
// In-process transport

/// Routes calls between members of one test process. A member in `cut` can
/// neither send nor receive.
#[derive(Default)]
struct MemNet {
    handlers: Mutex<HashMap<NodeId, Arc<RaftRpcHandler>>>,
    cut: Mutex<HashSet<NodeId>>,
}

struct MemTransport {
    net: Arc<MemNet>,
    from: NodeName,
}

impl Transport for MemTransport {
    fn call(&self, target: NodeId, service: u16, body: Vec<u8>, timeout: Duration) -> CallFuture {
        let cut = self.net.cut.lock().unwrap();
        let handler = if cut.contains(&target) || cut.contains(&self.from.id()) {
            None
        } else {
            self.net.handlers.lock().unwrap().get(&target).cloned()
        };
        drop(cut);
        let from = self.from.clone();
        Box::pin(async move {
            let Some(handler) = handler else {
                return Err(TransportError::Unreachable(format!(
                    "node {target} is down"
                )));
            };
            match tokio::time::timeout(timeout, handler.serve(from, service, body)).await {
                Err(_) => Err(TransportError::Timeout(timeout)),
                Ok(Err(message)) => Err(TransportError::Remote(message)),
                Ok(Ok(bytes)) => Ok(bytes),
            }
        })
    }
}

struct MemCluster {
    _dir: TempDir,
    root: PathBuf,
    cluster: ClusterConfig,
    net: Arc<MemNet>,
    compaction: Compaction,
    nodes: BTreeMap<NodeId, RaftNode>,
    appended: HashMap<NodeId, Appended>,
    /// Each member's log writer, which a test can hold like a stalled disk.
    disks: HashMap<NodeId, Arc<WriterHooks>>,
}

impl MemCluster {
    async fn start(names: &[&str], compaction: Compaction) -> MemCluster {
        MemCluster::start_timed(names, compaction, test_timing()).await
    }

    async fn start_timed(names: &[&str], compaction: Compaction, timing: Timing) -> MemCluster {
        let dir = tempfile::tempdir().unwrap();
        let addresses: Vec<SocketAddr> = (0..names.len())
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
            .collect();
        let roles = vec![MemberRole::Node; names.len()];
        let mut c = MemCluster {
            root: dir.path().to_path_buf(),
            _dir: dir,
            cluster: ClusterConfig {
                timing,
                ..cluster_config(names, &addresses, &roles)
            },
            net: Arc::default(),
            compaction,
            nodes: BTreeMap::new(),
            appended: HashMap::new(),
            disks: HashMap::new(),
        };
        for n in names {
            c.start_node(n).await;
        }
        c
    }

    fn id(n: &str) -> NodeId {
        name(n).id()
    }

    fn state_dir(&self, n: &str) -> PathBuf {
        self.root.join(n)
    }

    async fn start_node(&mut self, n: &str) {
        let appended: Appended = Arc::default();
        let observer = {
            let appended = appended.clone();
            Arc::new(move |c: &Command| appended.lock().unwrap().push(c.clone()))
        };
        let transport = Arc::new(MemTransport {
            net: self.net.clone(),
            from: name(n),
        });
        let disk = Arc::new(WriterHooks::default());
        std::fs::create_dir_all(self.state_dir(n)).unwrap();
        let log = LogStore::open_with_hooks(
            &self.state_dir(n).join(LOG_FILE),
            Self::id(n),
            observer,
            disk.clone(),
        )
        .unwrap();
        let node = RaftNode::start_with_log(
            &self.cluster,
            &name(n),
            &self.state_dir(n),
            log,
            transport,
            self.compaction.clone(),
        )
        .await
        .unwrap();
        self.disks.insert(node.id(), disk);
        let handler = node.handler_for_tests();
        self.net.handlers.lock().unwrap().insert(node.id(), handler);
        self.appended.insert(node.id(), appended);
        self.nodes.insert(node.id(), node);
    }

    async fn stop_node(&mut self, id: NodeId) {
        self.net.handlers.lock().unwrap().remove(&id);
        let node = self.nodes.remove(&id).expect("running node");
        node.shutdown().await;
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    fn set_cut(&self, id: NodeId, cut: bool) {
        let mut set = self.net.cut.lock().unwrap();
        if cut {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    async fn leader(&self) -> NodeId {
        agreed_leader(self.nodes.values()).await
    }

    async fn leader_among(&self, ids: &[NodeId]) -> NodeId {
        agreed_leader(ids.iter().map(|id| &self.nodes[id])).await
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
const PROPOSE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// In-process cluster tests

/// The leader every member names, if they all name the same one.
fn common_leader(c: &MemCluster) -> Option<NodeId> {
    let leaders: Vec<Option<NodeId>> = c.nodes.values().map(|n| n.status().leader).collect();
    leaders
        .iter()
        .all(|l| *l == leaders[0])
        .then_some(leaders[0])
        .flatten()
}

/// How long a disk may stall before Raft leadership moves, with the default
/// timing (heartbeat 100 ms, elections 300-600 ms). Leases are not logged, so
/// in steady state nothing is written and a stall of any length changes
/// nothing. openraft 0.9 waits inside its core for an entry's fsync, so while
/// an entry is being written a stalled leader disk stops its heartbeats and the
/// others elect a leader with a working disk after an election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_moves_leadership_only_while_an_entry_waits_for_it() {
    let timing = Timing {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        ..test_timing()
    };
    let c = MemCluster::start_timed(&NAMES, Compaction::default(), timing).await;
    let leader = c.leader().await;
    let term = c.node(leader).status().term;

    // Every disk stalls for 3 s (five to ten election timeouts), nothing is written.
    for disk in c.disks.values() {
        disk.hold();
    }
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(3) {
        assert_eq!(common_leader(&c), Some(leader), "leadership moved");
        assert_eq!(c.node(leader).status().term, term);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for disk in c.disks.values() {
        disk.release();
    }

    // The leader's disk stalls while it writes an entry.
    c.disks[&leader].hold();
    let raft = c.node(leader).raft().clone();
    let write = tokio::spawn(async move { raft.client_write(join(leader, 9)).await });
    c.disks[&leader].wait_until_writer_held();
    let stalled = Instant::now();
    let others: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != leader).collect();
    eventually("the others to elect a leader with a working disk", || {
        let s = c.node(others[0]).status();
        s.leader.is_some_and(|l| l != leader) && s.term > term
    })
    .await;
    let moved_after = stalled.elapsed();
    println!("leader's disk stalled during a write: leadership moved after {moved_after:?}");
    assert!(
        moved_after >= Duration::from_millis(100) && moved_after < Duration::from_secs(3),
        "{moved_after:?}"
    );
    c.disks[&leader].release();
    let _ = write.await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_commit_and_forward() {
    let c = MemCluster::start(&NAMES, Compaction::default()).await;
    let leader = c.leader().await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();

    // From a follower: forwarded to the leader, and the apply result comes back.
    let r = c
        .node(follower)
        .propose(join(follower, 1), PROPOSE_WAIT)
        .await;
    assert_eq!(r, Ok(ApplyResult::Applied));
    let stale = Command::ClearFailures {
        group: GroupName::new("web").unwrap(),
        epoch: 42,
    };
    let r = c.node(follower).propose(stale, PROPOSE_WAIT).await;
    assert!(matches!(r, Ok(ApplyResult::Rejected(_))), "{r:?}");
    // On the leader itself.
    let r = c.node(leader).propose(join(leader, 1), PROPOSE_WAIT).await;
    assert_eq!(r, Ok(ApplyResult::Applied));

    for node in c.nodes.values() {
        wait_applied(node, "both renewals applied", |s| {
            last_seq(s, follower) == Some(1) && last_seq(s, leader) == Some(1)
        })
        .await;
    }
    // Every member observed the renewals as they were appended to its own log.
    for (id, appended) in &c.appended {
        eventually(&format!("node {id} to observe both renewals"), || {
            let seen = appended.lock().unwrap();
            seen.contains(&join(follower, 1)) && seen.contains(&join(leader, 1))
        })
        .await;
    }

    // Status: all three vote; the leader hears from both followers.
    eventually("the leader to see acks from both followers", || {
        let s = c.node(leader).status();
        s.followers.len() == 2 && s.followers.iter().all(|f| f.millis_since_ack.is_some())
    })
    .await;
    let s = c.node(leader).status();
    assert!(s.is_leader && s.has_quorum(), "{s:?}");
    assert_eq!(s.role, RaftRole::Leader);
    assert_eq!(s.voters.len(), 3);
    let f = c.node(follower).status();
    assert!(
        !f.is_leader && f.has_quorum() && f.followers.is_empty(),
        "{f:?}"
    );
    assert_eq!(f.leader, Some(leader));
    assert_eq!(*c.node(follower).leader_watch().borrow(), Some(leader));

    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_and_a_restarted_member_resumes() {
    let mut c = MemCluster::start(&NAMES, Compaction::default()).await;
    let old_leader = c.leader().await;
    let r = c
        .node(old_leader)
        .propose(join(old_leader, 1), PROPOSE_WAIT)
        .await;
    assert_eq!(r, Ok(ApplyResult::Applied));
    let old_term = c.node(old_leader).status().term;
    let old_last_log = c.node(old_leader).status().last_log_index;

    c.stop_node(old_leader).await;
    let rest: Vec<NodeId> = c.nodes.keys().copied().collect();
    let new_leader = c.leader_among(&rest).await;
    assert_ne!(new_leader, old_leader);
    let follower = *rest.iter().find(|&&id| id != new_leader).unwrap();
    for seq in 1..=5 {
        let r = c
            .node(follower)
            .propose(join(follower, seq), PROPOSE_WAIT)
            .await;
        assert_eq!(r, Ok(ApplyResult::Applied), "proposal {seq} after failover");
    }
    let s = c.node(new_leader).status();
    assert!(s.term > old_term, "new term {} after {old_term}", s.term);
    assert!(s.has_quorum(), "two of three answer: {s:?}");

    // Restart the old leader cut off from the others: it comes back with its own
    // persisted term and log, not re-initialized.
    let old_name = NAMES
        .iter()
        .find(|n| MemCluster::id(n) == old_leader)
        .unwrap();
    c.set_cut(old_leader, true);
    c.start_node(old_name).await;
    let s = c.node(old_leader).status();
    assert_eq!(s.id, old_leader);
    assert!(
        s.term >= old_term,
        "term went back from {old_term} to {}",
        s.term
    );
    assert!(s.last_log_index >= old_last_log, "log shrank: {s:?}");
    assert_eq!(s.voters.len(), 3);
    // Committed entries are re-applied from the local log without a leader.
    wait_applied(c.node(old_leader), "own renewal re-applied", |st| {
        last_seq(st, old_leader) == Some(1)
    })
    .await;

    // Reconnected, it follows the new leader and catches up.
    c.set_cut(old_leader, false);
    wait_applied(c.node(old_leader), "caught up with the new leader", |st| {
        last_seq(st, follower) == Some(5)
    })
    .await;
    let leader = c.leader().await;
    let r = c
        .node(old_leader)
        .propose(join(old_leader, 2), PROPOSE_WAIT)
        .await;
    assert_eq!(r, Ok(ApplyResult::Applied));
    for node in c.nodes.values() {
        wait_applied(node, "renewal from the restarted member", |st| {
            last_seq(st, old_leader) == Some(2)
        })
        .await;
    }
    assert!(c.nodes.contains_key(&leader));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_from_a_snapshot_and_keeps_it() {
    let compaction = Compaction {
        snapshot_every: 10,
        keep_behind_snapshot: 2,
    };
    let mut c = MemCluster::start(&NAMES, compaction).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    c.set_cut(lagging, true);
    for seq in 1..=40 {
        let r = c
            .node(leader)
            .propose(join(leader, seq), PROPOSE_WAIT)
            .await;
        assert_eq!(r, Ok(ApplyResult::Applied), "proposal {seq}");
    }
    // The leader has compacted past what the lagging member has.
    let lagging_last = c.node(lagging).status().last_log_index.unwrap_or(0);
    eventually("the leader to purge its log", || {
        let m = c.node(leader).raft().metrics().borrow().clone();
        m.purged.map(|p| p.index).unwrap_or(0) > lagging_last
    })
    .await;

    c.set_cut(lagging, false);
    wait_applied(c.node(lagging), "caught up", |st| {
        last_seq(st, leader) == Some(40)
    })
    .await;
    eventually("the lagging member to hold a snapshot", || {
        c.node(lagging).raft().metrics().borrow().snapshot.is_some()
    })
    .await;

    // After a restart, cut off, its state comes back from the snapshot file and
    // its log.
    let lagging_name = NAMES.iter().find(|n| MemCluster::id(n) == lagging).unwrap();
    c.stop_node(lagging).await;
    assert!(c
        .state_dir(lagging_name)
        .join(super::SNAPSHOT_FILE)
        .exists());
    c.set_cut(lagging, true);
    c.start_node(lagging_name).await;
    wait_applied(c.node(lagging), "state restored", |st| {
        last_seq(st, leader) == Some(40)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_without_quorum_fails_within_its_timeout() {
    let mut c = MemCluster::start(&NAMES, Compaction::default()).await;
    let leader = c.leader().await;
    let others: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    for id in &others {
        c.stop_node(*id).await;
    }
    let started = Instant::now();
    let r = c
        .node(leader)
        .propose(join(leader, 1), Duration::from_millis(1500))
        .await;
    let took = started.elapsed();
    assert!(r.is_err(), "committed without a quorum: {r:?}");
    assert!(took < Duration::from_secs(5), "propose took {took:?}");
    eventually("the lone member to report no quorum", || {
        !c.node(leader).status().has_quorum()
    })
    .await;
    c.shutdown().await;
}

#[tokio::test]
async fn handler_refuses_strangers_and_impersonation() {
    let dir = tempfile::tempdir().unwrap();
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
        .collect();
    let cluster = cluster_config(&NAMES, &addresses, &[MemberRole::Node; 3]);
    let node = RaftNode::start_with(
        &cluster,
        &name("alpha"),
        dir.path(),
        Arc::new(|_: &Command| {}),
        Arc::new(MemTransport {
            net: Arc::default(),
            from: name("alpha"),
        }),
        Compaction::default(),
    )
    .await
    .unwrap();
    let handler = node.handler_for_tests();
    let vote = openraft::raft::VoteRequest::new(Vote::new(9, name("charlie").id()), None);
    let body = rpc::encode("vote", &vote).unwrap();

    let r = handler
        .serve(name("mallory"), RAFT_VOTE, body.clone())
        .await;
    assert!(r.unwrap_err().contains("not a member"));
    let r = handler.serve(name("bravo"), RAFT_VOTE, body.clone()).await;
    assert!(r.unwrap_err().contains("on behalf of"));
    let r = handler.serve(name("charlie"), RAFT_VOTE, body).await;
    assert!(r.is_ok(), "{r:?}");
    let r = handler.serve(name("bravo"), 99, Vec::new()).await;
    assert!(r.unwrap_err().contains("unknown Raft service"));
    let r = handler.serve(name("bravo"), RAFT_VOTE, vec![0xff; 3]).await;
    assert!(r.unwrap_err().contains("decoding"));
    node.shutdown().await;
}

#[tokio::test]
async fn start_refuses_a_non_member_and_another_members_state() {
    let dir = tempfile::tempdir().unwrap();
    let addresses: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
        .collect();
    let cluster = cluster_config(&NAMES, &addresses, &[MemberRole::Node; 3]);
    let transport = |n: &str| {
        Arc::new(MemTransport {
            net: Arc::default(),
            from: name(n),
        })
    };
    let observer: super::AppendObserver = Arc::new(|_: &Command| {});
    let r = RaftNode::start_with(
        &cluster,
        &name("zulu"),
        dir.path(),
        observer.clone(),
        transport("zulu"),
        Compaction::default(),
    )
    .await;
    assert!(matches!(r, Err(super::RaftStartError::NotAMember { .. })));

    let alpha = RaftNode::start_with(
        &cluster,
        &name("alpha"),
        dir.path(),
        observer.clone(),
        transport("alpha"),
        Compaction::default(),
    )
    .await
    .unwrap();
    alpha.shutdown().await;
    let r = RaftNode::start_with(
        &cluster,
        &name("bravo"),
        dir.path(),
        observer,
        transport("bravo"),
        Compaction::default(),
    )
    .await;
    match r {
        Err(super::RaftStartError::Log(LogStoreOpenError::WrongNode { .. })) => {}
        Err(other) => panic!("expected WrongNode, got {other}"),
        Ok(_) => panic!("bravo started on alpha's state"),
    }
}

// ---------------------------------------------------------------------------
// Over the real RPC layer (mutual TLS on loopback)

struct TlsMember {
    node: RaftNode,
    stop_server: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

struct TlsCluster {
    _dir: TempDir,
    root: PathBuf,
    cluster: ClusterConfig,
    members: BTreeMap<NodeId, TlsMember>,
}

impl TlsCluster {
    async fn start(names: &[&str], roles: &[MemberRole]) -> TlsCluster {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let tls = root.join("tls");
        uphold_proto::init_ca(&tls, "test", false).unwrap();
        let mut addresses = Vec::new();
        for n in names {
            uphold_proto::issue_member_cert(&tls, "test", &name(n)).unwrap();
            // Reserve a free port; the listener is bound again at start.
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addresses.push(probe.local_addr().unwrap());
        }
        let mut c = TlsCluster {
            _dir: dir,
            root,
            cluster: cluster_config(names, &addresses, roles),
            members: BTreeMap::new(),
        };
        for n in names {
            c.start_member(n).await;
        }
        c
    }

    async fn start_member(&mut self, n: &str) {
        let me = name(n);
        let member = self.cluster.member(n).unwrap().clone();
        let identity = uphold_proto::TlsIdentity::load(&self.root.join("tls"), &me).unwrap();
        let allowed =
            uphold_proto::AllowedPeers::set(self.cluster.members.iter().map(|m| m.name.clone()));
        let endpoint = Arc::new(uphold_proto::Endpoint::new(identity, "test", allowed));
        let listener = bind_retrying(member.listen).await;
        let node = RaftNode::start(RaftOptions {
            cluster: self.cluster.clone(),
            me: me.clone(),
            state_dir: self.root.join(n),
            rpc: Arc::new(uphold_proto::RpcClient::new(endpoint.clone())),
            on_append: Arc::new(|_: &Command| {}),
        })
        .await
        .unwrap();
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(uphold_proto::serve(
            listener,
            endpoint,
            node.rpc_handler(),
            async move {
                let _ = stopped.await;
            },
        ));
        self.members.insert(
            member.id,
            TlsMember {
                node,
                stop_server,
                server,
            },
        );
    }

    async fn stop_member(&mut self, id: NodeId) {
        let m = self.members.remove(&id).expect("running member");
        let _ = m.stop_server.send(());
        m.server.await.expect("server task");
        m.node.shutdown().await;
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.members[&id].node
    }

    async fn leader(&self) -> NodeId {
        agreed_leader(self.members.values().map(|m| &m.node)).await
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.stop_member(id).await;
        }
    }
}

/// Binding the same port again right after closing it can briefly fail.
async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "port busy, retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_over_tls_fail_over_and_rejoin() {
    // A witness votes like any other member.
    let roles = [MemberRole::Node, MemberRole::Node, MemberRole::Witness];
    let mut c = TlsCluster::start(&NAMES, &roles).await;
    let leader = c.leader().await;
    let follower = *c.members.keys().find(|&&id| id != leader).unwrap();
    let r = c
        .node(follower)
        .propose(join(follower, 1), PROPOSE_WAIT)
        .await;
    assert_eq!(r, Ok(ApplyResult::Applied));
    for m in c.members.values() {
        wait_applied(&m.node, "forwarded renewal", |s| {
            last_seq(s, follower) == Some(1)
        })
        .await;
    }
    eventually("the leader to see acks from both followers", || {
        let s = c.node(leader).status();
        s.has_quorum() && s.followers.iter().all(|f| f.millis_since_ack.is_some())
    })
    .await;

    // Lose the leader: the other two elect one and keep committing.
    let old_term = c.node(leader).status().term;
    let leader_name = *NAMES.iter().find(|n| name(n).id() == leader).unwrap();
    c.stop_member(leader).await;
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    assert!(c.node(new_leader).status().term > old_term);
    let r = c
        .node(follower)
        .propose(join(follower, 2), PROPOSE_WAIT)
        .await;
    assert_eq!(r, Ok(ApplyResult::Applied));

    // The old leader comes back with its identity and state and catches up.
    c.start_member(leader_name).await;
    let s = c.node(leader).status();
    assert_eq!(s.id, leader);
    assert!(s.term >= old_term);
    wait_applied(c.node(leader), "caught up after rejoining", |st| {
        last_seq(st, follower) == Some(2)
    })
    .await;
    let r = c.node(leader).propose(join(leader, 1), PROPOSE_WAIT).await;
    assert_eq!(r, Ok(ApplyResult::Applied));
    c.leader().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_with_the_leader_unreachable_reports_it() {
    let mut c = MemCluster::start(&NAMES, Compaction::default()).await;
    let leader = c.leader().await;
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let other = *c
        .nodes
        .keys()
        .find(|&&id| id != leader && id != follower)
        .unwrap();
    // Stop everyone but `follower` so no new leader can be elected.
    c.stop_node(other).await;
    c.stop_node(leader).await;
    let r = c
        .node(follower)
        .propose(join(follower, 1), Duration::from_millis(1500))
        .await;
    match r {
        Err(ProposeError::LeaderUnreachable { .. } | ProposeError::NoLeader(_)) => {}
        other => panic!("expected the leader to be unreachable, got {other:?}"),
    }
    c.shutdown().await;
}
