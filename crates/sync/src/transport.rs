//! How the sender reaches one receiver: over the members' mutual-TLS RPC in production,
//! or straight into a [`Receiver`] in the same process (tests of the replication logic on
//! real files, without sockets). Counts the bytes of every request and response.

use crate::protocol::{decode, encode, Request, Response, SYNC_SERVICE};
use crate::receiver::Receiver;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uphold_core::NodeName;
use uphold_proto::rpc::RpcClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer: connection refused, timed out, broken. The target counts as down.
    Unreachable(String),
    /// The receiver answered with an error (refused the set, a bad path, a full disk).
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            CallError::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

pub trait Transport: Send + Sync {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, CallError>>;
    /// Bytes sent and received so far (message bodies).
    fn bytes(&self) -> (u64, u64);
}

#[derive(Debug, Default)]
struct ByteCounts {
    sent: AtomicU64,
    received: AtomicU64,
}

/// The real transport: one RPC client per sync thread (a connection of its own, so bulk
/// transfers never delay the cluster's heartbeats on the members' main connection).
pub struct RpcTransport {
    pub rpc: Arc<RpcClient>,
    pub peer: NodeName,
    pub addr: SocketAddr,
    pub timeout: Duration,
    counts: ByteCounts,
}

impl RpcTransport {
    pub fn new(rpc: Arc<RpcClient>, peer: NodeName, addr: SocketAddr, timeout: Duration) -> Self {
        RpcTransport {
            rpc,
            peer,
            addr,
            timeout,
            counts: ByteCounts::default(),
        }
    }
}

impl Transport for RpcTransport {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, CallError>> {
        Box::pin(async move {
            let body = encode(&request).map_err(CallError::Refused)?;
            self.counts
                .sent
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            match self
                .rpc
                .call(&self.peer, self.addr, SYNC_SERVICE, body, self.timeout)
                .await
            {
                Ok(answer) => {
                    self.counts
                        .received
                        .fetch_add(answer.len() as u64, Ordering::Relaxed);
                    decode(&answer).map_err(CallError::Refused)
                }
                Err(uphold_proto::error::RpcError::Remote { message, .. }) => {
                    Err(CallError::Refused(message))
                }
                Err(e) => Err(CallError::Unreachable(e.to_string())),
            }
        })
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.received.load(Ordering::Relaxed),
        )
    }
}

/// A failure injected into a [`LocalTransport`] (tests of crashes and cuts): the call
/// after `after` matching calls fails as unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Matching calls still answered normally.
    pub after: u64,
    /// Count and trip only `Chunk` calls (a failure in the middle of a stream).
    pub chunks_only: bool,
    /// The tripping call reaches the receiver and only its answer is lost (a timeout
    /// after the work was done), instead of never arriving.
    pub delivered: bool,
    /// The network stays cut after the trip (`cut` is set) until the test restores it;
    /// otherwise only the tripping call fails.
    pub latch: bool,
}

/// Calls a receiver in this process (tests). Messages are still encoded and decoded, so
/// byte counts and size limits are those of the real thing.
pub struct LocalTransport {
    pub receiver: Arc<Receiver>,
    pub peer: NodeName,
    counts: ByteCounts,
    /// While set, every call fails as if the network were cut.
    pub cut: std::sync::atomic::AtomicBool,
    /// Calls made, answered or not (`Chunk` calls also in `chunks`).
    pub calls: AtomicU64,
    pub chunks: AtomicU64,
    fault: std::sync::Mutex<Option<Fault>>,
}

impl LocalTransport {
    pub fn new(receiver: Arc<Receiver>, peer: NodeName) -> Self {
        LocalTransport {
            receiver,
            peer,
            counts: ByteCounts::default(),
            cut: std::sync::atomic::AtomicBool::new(false),
            calls: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            fault: std::sync::Mutex::new(None),
        }
    }

    /// Arms one fault (replacing an armed one); it disarms when it trips.
    pub fn arm(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Whether the armed fault has not tripped yet.
    pub fn armed(&self) -> bool {
        self.fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Whether this call trips the armed fault.
    fn trips(&self, request: &Request) -> Option<Fault> {
        let mut armed = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let fault = armed.as_mut()?;
        if fault.chunks_only && !matches!(request, Request::Chunk { .. }) {
            return None;
        }
        if fault.after > 0 {
            fault.after -= 1;
            return None;
        }
        let tripped = armed.take();
        if tripped.is_some_and(|f| f.latch) {
            self.cut.store(true, Ordering::Relaxed);
        }
        tripped
    }
}

impl Transport for LocalTransport {
    fn call(&self, request: Request) -> BoxFuture<'_, Result<Response, CallError>> {
        Box::pin(async move {
            if self.cut.load(Ordering::Relaxed) {
                return Err(CallError::Unreachable("network cut (test)".into()));
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            if matches!(request, Request::Chunk { .. }) {
                self.chunks.fetch_add(1, Ordering::Relaxed);
            }
            let tripped = self.trips(&request);
            if tripped.is_some_and(|f| !f.delivered) {
                return Err(CallError::Unreachable(
                    "injected fault: request lost".into(),
                ));
            }
            let body = encode(&request).map_err(CallError::Refused)?;
            self.counts
                .sent
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            let request: Request = decode(&body).map_err(CallError::Refused)?;
            let receiver = self.receiver.clone();
            let peer = self.peer.clone();
            let handled =
                tokio::task::spawn_blocking(move || receiver.handle_request(&peer, request)).await;
            if tripped.is_some() {
                return Err(CallError::Unreachable("injected fault: answer lost".into()));
            }
            let response = handled
                .map_err(|e| CallError::Unreachable(e.to_string()))?
                .map_err(CallError::Refused)?;
            let answer = encode(&response).map_err(CallError::Refused)?;
            self.counts
                .received
                .fetch_add(answer.len() as u64, Ordering::Relaxed);
            decode(&answer).map_err(CallError::Refused)
        })
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.received.load(Ordering::Relaxed),
        )
    }
}
