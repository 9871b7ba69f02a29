//! The Raft services a member serves over uphold's RPC layer, the bodies they
//! carry (postcard), and the server side that hands them to the local Raft.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uphold_core::{NodeId, NodeName};
use uphold_proto::RpcHandler;

use super::types::{Raft, Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::engine::state::{ApplyResult, Command};

/// AppendEntries (and heartbeats): `AppendEntriesRequest` -> `AppendEntriesResponse`.
pub const RAFT_APPEND: u16 = 1;
/// RequestVote: `VoteRequest` -> `VoteResponse`.
pub const RAFT_VOTE: u16 = 2;
/// A whole snapshot in one message (the state is small): `SnapshotRequest` ->
/// `SnapshotResponse`.
pub const RAFT_SNAPSHOT: u16 = 3;
/// A client write forwarded to the leader: `ProposeRequest` -> `ProposeReply`.
pub const PROPOSE: u16 = 4;

/// Upper bound on how long a forwarded proposal may wait for its commit on the
/// leader, whatever the caller asked for.
const MAX_PROPOSE_WAIT: Duration = Duration::from_secs(60);

// Public (hidden) with `ProposeRequest`, `ProposeReply`, `encode` and `decode` so
// that the fuzz targets (`crates/fuzz-targets`) decode peers' bodies as the real
// types and make their seed inputs with the real encoder.
#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

#[doc(hidden)]
#[derive(Serialize, Deserialize)]
pub struct ProposeRequest {
    pub command: Command,
    /// How long the caller will wait; the leader stops waiting for the commit
    /// after this (the command may still commit).
    pub timeout_ms: u64,
}

#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
pub enum ProposeReply {
    Applied(ApplyResult),
    /// The receiver is not the leader and did not append the command; the caller
    /// should ask `leader` (when known) instead.
    NotLeader {
        leader: Option<NodeId>,
    },
}

/// The node id of `peer`, the name its TLS certificate proves; a stranger is
/// refused.
pub(crate) fn member_id(members: &[(NodeName, NodeId)], peer: &NodeName) -> Result<NodeId, String> {
    members
        .iter()
        .find(|(name, _)| name == peer)
        .map(|(_, id)| *id)
        .ok_or_else(|| format!("{peer} is not a member of this cluster"))
}

#[doc(hidden)]
pub fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| format!("encoding {what}: {e}"))
}

#[doc(hidden)]
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("decoding {what}: {e}"))
}

/// Serves [`RAFT_APPEND`], [`RAFT_VOTE`], [`RAFT_SNAPSHOT`] and [`PROPOSE`] for
/// the local Raft. The peer name comes from the authenticated TLS session.
pub struct RaftRpcHandler {
    raft: Raft,
    /// Members of the cluster by name; anyone else is refused.
    members: Arc<Vec<(NodeName, NodeId)>>,
}

impl RaftRpcHandler {
    pub(crate) fn new(raft: Raft, members: Vec<(NodeName, NodeId)>) -> RaftRpcHandler {
        RaftRpcHandler {
            raft,
            members: Arc::new(members),
        }
    }

    /// Handles one request from `peer`. Errors are returned to the caller as the
    /// RPC's failure.
    pub(crate) fn serve(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let raft = self.raft.clone();
        let members = self.members.clone();
        Box::pin(async move {
            let peer_id = member_id(&members, &peer)?;
            match service {
                RAFT_APPEND => {
                    let req: AppendEntriesRequest<TypeConfig> = decode("append request", &body)?;
                    check_sender(&peer, peer_id, &req.vote)?;
                    let resp = raft
                        .append_entries(req)
                        .await
                        .map_err(|e| format!("append entries: {e}"))?;
                    encode("append response", &resp)
                }
                RAFT_VOTE => {
                    let req: VoteRequest<u64> = decode("vote request", &body)?;
                    check_sender(&peer, peer_id, &req.vote)?;
                    let resp = raft.vote(req).await.map_err(|e| format!("vote: {e}"))?;
                    encode("vote response", &resp)
                }
                RAFT_SNAPSHOT => {
                    let req: SnapshotRequest = decode("snapshot request", &body)?;
                    check_sender(&peer, peer_id, &req.vote)?;
                    let snapshot = Snapshot {
                        meta: req.meta,
                        snapshot: Box::new(std::io::Cursor::new(req.data)),
                    };
                    let resp = raft
                        .install_full_snapshot(req.vote, snapshot)
                        .await
                        .map_err(|e| format!("install snapshot: {e}"))?;
                    encode("snapshot response", &resp)
                }
                PROPOSE => {
                    let req: ProposeRequest = decode("propose request", &body)?;
                    // A member speaks only for itself: joins and releases name
                    // their sender, and a forged one could free a group its owner
                    // still runs.
                    if let Command::Join { node, .. } | Command::Release { node, .. } = &req.command
                    {
                        if *node != peer_id {
                            return Err(format!(
                                "{peer} proposed a join or release in the name of another member"
                            ));
                        }
                    }
                    let wait = Duration::from_millis(req.timeout_ms).min(MAX_PROPOSE_WAIT);
                    let reply = propose_here(&raft, req.command, wait)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode("propose reply", &reply)
                }
                other => Err(format!("unknown Raft service {other}")),
            }
        })
    }
}

impl RpcHandler for RaftRpcHandler {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        self.serve(peer, service, body)
    }
}

/// A member may only speak for itself: requests carry the sender's vote, whose
/// candidate or leader must be the authenticated peer.
fn check_sender(peer: &NodeName, peer_id: NodeId, vote: &Vote) -> Result<(), String> {
    if vote.leader_id().voted_for() == Some(peer_id) {
        Ok(())
    } else {
        Err(format!(
            "{peer} (node id {peer_id}) sent a request on behalf of node {:?}",
            vote.leader_id().voted_for()
        ))
    }
}

/// Why a proposal made on this member did not produce a reply.
#[derive(Debug)]
pub(crate) enum LocalProposeError {
    /// Appended but not applied in time; it may still commit.
    Timeout(Duration),
    /// openraft refused the write for a reason other than leadership.
    Refused(String),
    /// Raft has stopped on this member.
    Stopped(String),
}

impl std::fmt::Display for LocalProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalProposeError::Timeout(wait) => {
                write!(
                    f,
                    "not committed within {wait:?}; the command may still commit"
                )
            }
            LocalProposeError::Refused(why) => write!(f, "proposal refused: {why}"),
            LocalProposeError::Stopped(why) => write!(f, "Raft has stopped: {why}"),
        }
    }
}

/// Appends `command` if this member is the leader and waits up to `wait` for it
/// to be applied.
pub(crate) async fn propose_here(
    raft: &Raft,
    command: Command,
    wait: Duration,
) -> Result<ProposeReply, LocalProposeError> {
    match tokio::time::timeout(wait, raft.client_write(command)).await {
        Err(_) => Err(LocalProposeError::Timeout(wait)),
        Ok(Ok(resp)) => Ok(ProposeReply::Applied(resp.data)),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            // Either never appended here, or appended and then truncated by a newer
            // leader: in both cases it cannot commit.
            Ok(ProposeReply::NotLeader {
                leader: forward.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(other))) => Err(LocalProposeError::Refused(other.to_string())),
        Ok(Err(RaftError::Fatal(fatal))) => Err(LocalProposeError::Stopped(fatal.to_string())),
    }
}
