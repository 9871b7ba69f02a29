//! How openraft reaches the other members: its `RaftNetwork` calls become RPCs on
//! a [`Transport`] (uphold's TLS RPC layer in production, an in-process router in
//! tests), each with a deadline, and transport failures become the openraft
//! errors that make it back off instead of retrying in a tight loop.
//!
//! The network also records, per follower, when it last answered an
//! AppendEntries, which is what `status` reports as reachability.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use tokio::time::Instant;
use uphold_config::ClusterConfig;
use uphold_core::{NodeId, NodeName};
use uphold_proto::{RpcClient, RpcError};

use super::rpc::{self, SnapshotRequest, RAFT_APPEND, RAFT_SNAPSHOT, RAFT_VOTE};
use super::types::{MemberNode, Snapshot, TypeConfig, Vote};

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum TransportError {
    /// The request was not delivered (no connection could be made).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No reply within the deadline; the peer may or may not have acted.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The peer's handler answered with an error.
    #[error("peer answered with an error: {0}")]
    Remote(String),
    /// The connection failed during the call.
    #[error("{0}")]
    Failed(String),
}

pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// One request/response exchange with a member, bounded by `timeout`.
pub(crate) trait Transport: Send + Sync + 'static {
    fn call(&self, target: NodeId, service: u16, body: Vec<u8>, timeout: Duration) -> CallFuture;
}

/// The production transport: uphold's mutual-TLS RPC client, dialling members at
/// the addresses in the config.
pub(crate) struct RpcTransport {
    client: Arc<RpcClient>,
    peers: HashMap<NodeId, (NodeName, std::net::SocketAddr)>,
}

impl RpcTransport {
    pub(crate) fn new(client: Arc<RpcClient>, cluster: &ClusterConfig) -> RpcTransport {
        let peers = cluster
            .members
            .iter()
            .map(|m| (m.id, (m.name.clone(), m.address)))
            .collect();
        RpcTransport { client, peers }
    }
}

impl Transport for RpcTransport {
    fn call(&self, target: NodeId, service: u16, body: Vec<u8>, timeout: Duration) -> CallFuture {
        let client = self.client.clone();
        let peer = self.peers.get(&target).cloned();
        Box::pin(async move {
            let Some((name, addr)) = peer else {
                return Err(TransportError::Unreachable(format!(
                    "node id {target} is not a member in the config"
                )));
            };
            client
                .call(&name, addr, service, body, timeout)
                .await
                .map_err(|e| match e {
                    e if e.is_not_sent() => TransportError::Unreachable(e.to_string()),
                    RpcError::Timeout { after, .. } => TransportError::Timeout(after),
                    RpcError::Remote { message, .. } => TransportError::Remote(message),
                    other => TransportError::Failed(other.to_string()),
                })
        })
    }
}

/// When each follower last answered an AppendEntries, and in which term.
#[derive(Default)]
pub(crate) struct AckTracker {
    last: Mutex<HashMap<NodeId, (u64, Instant)>>,
}

impl AckTracker {
    fn record(&self, target: NodeId, term: u64) {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(target, (term, Instant::now()));
    }

    /// Time since `target` last answered this node as leader of `term`.
    pub(crate) fn since(&self, target: NodeId, term: u64) -> Option<Duration> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last.get(&target) {
            Some((acked_term, at)) if *acked_term == term => Some(at.elapsed()),
            _ => None,
        }
    }
}

/// Creates one [`Network`] per target for openraft.
pub(crate) struct NetworkFactory {
    pub me: NodeId,
    pub transport: Arc<dyn Transport>,
    pub acks: Arc<AckTracker>,
    /// First wait after a peer turned out unreachable; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> Network {
        Network {
            me: self.me,
            target,
            transport: self.transport.clone(),
            acks: self.acks.clone(),
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        }
    }
}

pub(crate) struct Network {
    me: NodeId,
    target: NodeId,
    transport: Arc<dyn Transport>,
    acks: Arc<AckTracker>,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// How a failed call is reported to openraft.
enum Failure {
    Timeout(Duration),
    Unreachable(Unreachable),
    Network(NetworkError),
}

fn io_error(message: String) -> io::Error {
    io::Error::other(message)
}

impl Network {
    async fn exchange(
        &self,
        service: u16,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Failure> {
        let target = self.target;
        let what = service_name(service);
        match self.transport.call(target, service, body, timeout).await {
            Ok(bytes) => Ok(bytes),
            Err(TransportError::Timeout(after)) => Err(Failure::Timeout(after)),
            // A peer that cannot be reached, or whose Raft refuses to serve, will
            // not recover within milliseconds: back off.
            Err(e @ (TransportError::Unreachable(_) | TransportError::Remote(_))) => {
                Err(Failure::Unreachable(Unreachable::new(&io_error(format!(
                    "{what} to node {target}: {e}"
                )))))
            }
            Err(e @ TransportError::Failed(_)) => Err(Failure::Network(NetworkError::new(
                &io_error(format!("{what} to node {target}: {e}")),
            ))),
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        failure: Failure,
    ) -> RPCError<NodeId, MemberNode, E> {
        match failure {
            Failure::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            }),
            Failure::Unreachable(e) => RPCError::Unreachable(e),
            Failure::Network(e) => RPCError::Network(e),
        }
    }

    fn decode_error(&self, what: &str, message: String) -> NetworkError {
        NetworkError::new(&io_error(format!(
            "{what} from node {}: {message}",
            self.target
        )))
    }
}

fn service_name(service: u16) -> &'static str {
    match service {
        RAFT_APPEND => "append entries",
        RAFT_VOTE => "vote request",
        RAFT_SNAPSHOT => "snapshot",
        _ => "request",
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        let term = rpc.vote.leader_id().term;
        let body = rpc::encode("append request", &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&io_error(e))))?;
        let bytes = self
            .exchange(RAFT_APPEND, body, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::AppendEntries, f))?;
        let resp = rpc::decode("append response", &bytes)
            .map_err(|e| RPCError::Network(self.decode_error("append response", e)))?;
        self.acks.record(self.target, term);
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        // `full_snapshot` below sends the whole snapshot in one message, so
        // openraft never calls the chunked variant.
        Err(RPCError::Network(NetworkError::new(&io_error(
            "chunked snapshot transfer is not supported".to_string(),
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        let body = rpc::encode("vote request", &rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&io_error(e))))?;
        let bytes = self
            .exchange(RAFT_VOTE, body, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::Vote, f))?;
        rpc::decode("vote response", &bytes)
            .map_err(|e| RPCError::Network(self.decode_error("vote response", e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let request = SnapshotRequest {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let body = rpc::encode("snapshot request", &request)
            .map_err(|e| StreamingError::Network(NetworkError::new(&io_error(e))))?;
        let bytes = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            result = self.exchange(RAFT_SNAPSHOT, body, option.hard_ttl()) => match result {
                Ok(bytes) => bytes,
                Err(Failure::Timeout(timeout)) => {
                    return Err(StreamingError::Timeout(Timeout {
                        action: RPCTypes::InstallSnapshot,
                        id: self.me,
                        target: self.target,
                        timeout,
                    }))
                }
                Err(Failure::Unreachable(e)) => return Err(StreamingError::Unreachable(e)),
                Err(Failure::Network(e)) => return Err(StreamingError::Network(e)),
            },
        };
        rpc::decode("snapshot response", &bytes)
            .map_err(|e| StreamingError::Network(self.decode_error("snapshot response", e)))
    }

    fn backoff(&self) -> Backoff {
        let max = self.backoff_max;
        let mut next = self.backoff_min;
        Backoff::new(std::iter::from_fn(move || {
            let current = next;
            next = (next * 2).min(max);
            Some(current)
        }))
    }
}
