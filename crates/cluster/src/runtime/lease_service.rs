//! The lease protocol on the members' port: renewals and start-gate queries
//! between members (services [`LEASE_RENEW`] and [`LEASE_GATE`]), carried by the
//! mutual-TLS RPC layer. The server side hands each request to the executor's
//! loop, which answers from the engine; nothing here touches the disk, so a slow
//! disk never delays an acknowledgement.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uphold_core::{NodeId, NodeName};
use uphold_proto::RpcHandler;

use crate::engine::{GateAnswer, GateQuery, Renewal, RenewalAck};
use crate::raft::rpc::member_id;
pub(crate) use crate::raft::rpc::{decode, encode};

/// A renewal: [`Renewal`] -> `Option<RenewalAck>` (None: ignored, an earlier run).
pub const LEASE_RENEW: u16 = 5;
/// A start-gate query: [`GateQuery`] -> [`GateAnswer`].
pub const LEASE_GATE: u16 = 6;

/// Requests waiting for the executor's loop; beyond this a request is refused
/// at once (a renewal is repeated anyway, and a queue this long means the loop
/// is not keeping up, so answering late would not help).
pub const REQUEST_QUEUE: usize = 256;
/// How long a request waits for the executor's answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(1);

/// One request for the executor's loop, with where its answer goes.
#[derive(Debug)]
pub enum LeaseRequest {
    Renew {
        from: NodeId,
        renewal: Renewal,
        reply: oneshot::Sender<Option<RenewalAck>>,
    },
    Gate {
        from: NodeId,
        query: GateQuery,
        reply: oneshot::Sender<GateAnswer>,
    },
}

/// Serves [`LEASE_RENEW`] and [`LEASE_GATE`]. The peer's name comes from the
/// authenticated TLS session; a member may only renew in its own name.
pub struct LeaseHandler {
    members: Arc<Vec<(NodeName, NodeId)>>,
    requests: mpsc::Sender<LeaseRequest>,
}

impl LeaseHandler {
    pub fn new(members: Vec<(NodeName, NodeId)>, requests: mpsc::Sender<LeaseRequest>) -> Self {
        LeaseHandler {
            members: Arc::new(members),
            requests,
        }
    }
}

async fn ask<T>(
    requests: &mpsc::Sender<LeaseRequest>,
    request: LeaseRequest,
    answer: oneshot::Receiver<T>,
) -> Result<T, String> {
    requests
        .try_send(request)
        .map_err(|_| "the lease service is busy or stopping".to_string())?;
    match tokio::time::timeout(ANSWER_DEADLINE, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err("the lease service stopped".to_string()),
        Err(_) => Err(format!(
            "no answer from the lease service within {ANSWER_DEADLINE:?}"
        )),
    }
}

impl RpcHandler for LeaseHandler {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let members = self.members.clone();
        let requests = self.requests.clone();
        Box::pin(async move {
            let from = member_id(&members, &peer)?;
            match service {
                LEASE_RENEW => {
                    let renewal: Renewal = decode("renewal", &body)?;
                    if renewal.node != from {
                        return Err(format!(
                            "{peer} sent a renewal in the name of another member"
                        ));
                    }
                    let (reply, answer) = oneshot::channel();
                    let ack = ask(
                        &requests,
                        LeaseRequest::Renew {
                            from,
                            renewal,
                            reply,
                        },
                        answer,
                    )
                    .await?;
                    encode("renewal answer", &ack)
                }
                LEASE_GATE => {
                    let query: GateQuery = decode("gate query", &body)?;
                    let (reply, answer) = oneshot::channel();
                    let answer =
                        ask(&requests, LeaseRequest::Gate { from, query, reply }, answer).await?;
                    encode("gate answer", &answer)
                }
                other => Err(format!("unknown lease service {other}")),
            }
        })
    }
}
