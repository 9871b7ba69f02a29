//! Multiplexed request/response between members over mutual TLS.
//!
//! The server ([`serve`]) accepts connections concurrently, gives each one a single deadline
//! for TLS plus the Hello exchange, then dispatches every request to the [`RpcHandler`]
//! concurrently (up to a per-connection limit, beyond which it stops reading, so a busy
//! peer is slowed down rather than buffered without bound) and writes the responses back on
//! the same connection in completion order. The allowed set is consulted at the handshake
//! and again for every request, so a member removed from the cluster is cut off at once.
//!
//! The client ([`RpcClient`]) keeps one connection per peer, shared by all callers: a writer
//! task owns the sending half, a reader task routes responses to waiting callers by
//! request id. A broken connection is replaced on the next call.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use uphold_core::NodeName;

use crate::error::{HandshakeFailure, ProtoError, RpcError, PHASE_RESPONSE};
use crate::frame::{self, framed, FramedIo, MAX_FRAME_BYTES};
use crate::handshake::{handshake, AllowedPeers, HandshakeParams, Hello, Negotiated};
use crate::handshake::{MAGIC, PROTOCOL_VERSION};
use crate::tls::TlsIdentity;

/// How long a closing connection may take to say goodbye (TLS close_notify) before it is
/// simply dropped; a stuck peer must not delay shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests queued towards one peer's writer task before callers wait for room.
const CLIENT_QUEUE: usize = 256;
/// Pause after a failed `accept` (for example out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A member whose host dies never closes its connections. Keepalive probes find an idle
/// dead connection after about KEEPALIVE_IDLE + 3 * KEEPALIVE_INTERVAL; the user timeout
/// drops a connection whose sent data stays unacknowledged that long. Without these a dead
/// peer's connection (and its per-address slot) would stay open until the kernel gives up,
/// which can take a quarter of an hour.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits and timeouts of an endpoint. The defaults suit a cluster of a handful of members.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Budget for TLS plus the Hello exchange on a new connection, both directions.
    pub handshake_timeout: Duration,
    /// Requests of one connection handled at once; further requests wait unread.
    pub max_in_flight_per_connection: usize,
    /// Inbound connections from one IP address at once, handshaking or established.
    pub max_connections_per_ip: usize,
    /// Inbound connections at once, in total.
    pub max_connections: usize,
    /// Protocol versions we speak; only tests and future versions change these.
    pub protocol_min: u16,
    pub protocol_max: u16,
    /// Client side: a connection on which requests were outstanding but nothing was
    /// received for this long is closed when a call times out, so calls to a peer whose
    /// host died (and rebooted) recover quickly instead of waiting for TCP to give up.
    pub presume_dead_after: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            max_frame_bytes: MAX_FRAME_BYTES,
            handshake_timeout: Duration::from_secs(5),
            max_in_flight_per_connection: 64,
            max_connections_per_ip: 16,
            max_connections: 512,
            protocol_min: PROTOCOL_VERSION,
            protocol_max: PROTOCOL_VERSION,
            presume_dead_after: Duration::from_secs(2),
        }
    }
}

/// Everything a member needs to talk to the others: who it is, which cluster, whom it
/// accepts, and the limits.
#[derive(Debug)]
pub struct Endpoint {
    pub identity: TlsIdentity,
    pub cluster: String,
    pub allowed: AllowedPeers,
    pub options: EndpointOptions,
}

impl Endpoint {
    pub fn new(identity: TlsIdentity, cluster: impl Into<String>, allowed: AllowedPeers) -> Self {
        Endpoint {
            identity,
            cluster: cluster.into(),
            allowed,
            options: EndpointOptions::default(),
        }
    }

    pub fn with_options(mut self, options: EndpointOptions) -> Self {
        self.options = options;
        self
    }

    pub fn me(&self) -> &NodeName {
        self.identity.me()
    }

    fn hello(&self) -> Hello {
        Hello {
            magic: MAGIC,
            protocol_min: self.options.protocol_min,
            protocol_max: self.options.protocol_max,
            cluster: self.cluster.clone(),
            member: self.me().clone(),
        }
    }
}

/// One message on an established connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Request {
        id: u64,
        service: u16,
        // As one byte string: serde's default for Vec<u8> decodes byte by byte. The
        // encoding on the wire is the same (length, then the bytes).
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    Response {
        id: u64,
        #[serde(with = "bytes_result")]
        result: Result<Vec<u8>, String>,
    },
}

/// `Result<Vec<u8>, String>` with the bytes as one byte string (same wire encoding as
/// serde's own `Result`: variant index, then the value).
mod bytes_result {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    enum Ref<'a> {
        Ok(#[serde(with = "serde_bytes")] &'a [u8]),
        Err(&'a str),
    }

    #[derive(Deserialize)]
    enum Owned {
        Ok(#[serde(with = "serde_bytes")] Vec<u8>),
        Err(String),
    }

    pub fn serialize<S: Serializer>(r: &Result<Vec<u8>, String>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Ok(bytes) => Ref::Ok(bytes),
            Err(e) => Ref::Err(e),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Result<Vec<u8>, String>, D::Error> {
        Ok(match Owned::deserialize(d)? {
            Owned::Ok(bytes) => Ok(bytes),
            Owned::Err(e) => Err(e),
        })
    }
}

/// Serves requests. Service numbers and body encodings belong to the caller's crate.
/// The returned future may be dropped unfinished when the connection closes or the server
/// shuts down (nobody could receive its answer), so it must not leave state half-changed.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// Serves several handlers on one endpoint, each owning a range of service numbers
/// (the cluster 1-4, file sync 20, ...), so members need one port between them.
pub struct ServiceRouter {
    routes: Vec<(std::ops::RangeInclusive<u16>, Arc<dyn RpcHandler>)>,
}

impl ServiceRouter {
    pub fn new() -> Self {
        ServiceRouter { routes: Vec::new() }
    }

    pub fn route(
        mut self,
        services: std::ops::RangeInclusive<u16>,
        handler: Arc<dyn RpcHandler>,
    ) -> Self {
        self.routes.push((services, handler));
        self
    }
}

impl Default for ServiceRouter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.routes.iter().map(|(r, _)| r.clone()).collect();
        f.debug_struct("ServiceRouter")
            .field("routes", &ranges)
            .finish()
    }
}

impl RpcHandler for ServiceRouter {
    fn handle(
        &self,
        peer: NodeName,
        service: u16,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        match self
            .routes
            .iter()
            .find(|(range, _)| range.contains(&service))
        {
            Some((_, handler)) => handler.handle(peer, service, body),
            None => Box::pin(async move { Err(format!("unknown service {service}")) }),
        }
    }
}

/// Accepts and serves connections until `shutdown` completes, then closes every connection
/// and returns once they are all gone.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Endpoint>,
    handler: Arc<dyn RpcHandler>,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    if conns.len() >= ctx.options.max_connections {
                        tracing::warn!(peer = %addr, limit = ctx.options.max_connections,
                            "refusing connection: too many connections");
                        continue;
                    }
                    let Some(slot) = IpSlot::acquire(&per_ip, addr.ip(), ctx.options.max_connections_per_ip) else {
                        tracing::warn!(peer = %addr, limit = ctx.options.max_connections_per_ip,
                            "refusing connection: too many connections from this address");
                        continue;
                    };
                    conns.spawn(serve_connection(tcp, addr, ctx.clone(), handler.clone(), cancel.clone(), slot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    cancel.cancel();
    while conns.join_next().await.is_some() {}
}

/// Counts a connection against its source address until dropped.
struct IpSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpSlot {
    fn acquire(map: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut counts = map.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Latency and dead-peer settings for every member connection, both directions. Failing to
/// set them only degrades failure detection, so it is logged, not fatal.
fn tune_socket(tcp: &TcpStream, peer: SocketAddr) {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let result = tcp
        .set_nodelay(true)
        .and_then(|()| sock.set_tcp_keepalive(&keepalive))
        .and_then(|()| sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)));
    if let Err(e) = result {
        tracing::warn!(%peer, error = %e, "cannot set TCP options; dead peers will be noticed late");
    }
}

async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    ctx: Arc<Endpoint>,
    handler: Arc<dyn RpcHandler>,
    cancel: CancellationToken,
    _slot: IpSlot,
) {
    tune_socket(&tcp, addr);
    let deadline = Instant::now() + ctx.options.handshake_timeout;
    let established = tokio::select! {
        _ = cancel.cancelled() => return,
        r = establish_inbound(tcp, addr, &ctx, deadline) => r,
    };
    let (mut io, negotiated) = match established {
        Ok(ok) => ok,
        Err(e) => {
            // The handshake already logged its own refusals.
            if !matches!(
                e,
                ProtoError::Handshake { .. } | ProtoError::RefusedByPeer { .. }
            ) {
                tracing::warn!(peer = %addr, error = %e, "refused connection");
            }
            return;
        }
    };
    let member = negotiated.peer;
    tracing::debug!(peer = %addr, %member, version = negotiated.version, "connection established");
    match serve_requests(&mut io, &member, addr, &ctx, handler, &cancel).await {
        Ok(()) => tracing::debug!(peer = %addr, %member, "connection closed"),
        Err(e) => tracing::warn!(peer = %addr, %member, error = %e, "closing connection"),
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<Bytes>::close(&mut io)).await;
}

async fn establish_inbound(
    tcp: TcpStream,
    addr: SocketAddr,
    ctx: &Endpoint,
    deadline: Instant,
) -> Result<
    (
        FramedIo<tokio_rustls::server::TlsStream<TcpStream>>,
        Negotiated,
    ),
    ProtoError,
> {
    let (tls, cert_name) = timeout_at(deadline, ctx.identity.accept(tcp, addr))
        .await
        .map_err(|_| ProtoError::HandshakeTimeout {
            peer: addr,
            during: "the TLS handshake",
        })??;
    let mut io = framed(tls, ctx.options.max_frame_bytes);
    let hello = ctx.hello();
    let params = HandshakeParams {
        ours: &hello,
        cert_name: &cert_name,
        expected: None,
        allowed: &ctx.allowed,
        peer_addr: addr,
    };
    let negotiated = handshake(&mut io, params, deadline).await?;
    Ok((io, negotiated))
}

/// Returns `Ok` when the peer closes the connection or the server shuts down, `Err` on a
/// protocol violation or I/O failure.
async fn serve_requests<S>(
    io: &mut FramedIo<S>,
    peer: &NodeName,
    peer_addr: SocketAddr,
    ctx: &Endpoint,
    handler: Arc<dyn RpcHandler>,
    cancel: &CancellationToken,
) -> Result<(), ProtoError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_in_flight = ctx.options.max_in_flight_per_connection.max(1);
    let max_frame = ctx.options.max_frame_bytes;
    // Dropping the set aborts handlers whose answers nobody can receive any more.
    let mut handlers: JoinSet<(u64, Result<Vec<u8>, String>)> = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            Some(done) = handlers.join_next(), if !handlers.is_empty() => {
                // Handlers are never aborted while the set is alive and panics are caught
                // inside the task, so a join error cannot carry a request id to answer.
                let Ok((id, result)) = done else { continue };
                let bytes = encode_response(id, result, max_frame)?;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    sent = io.send(bytes) => sent?,
                }
            }
            next = io.next(), if handlers.len() < max_in_flight => {
                let payload = match next {
                    None => return Ok(()),
                    Some(payload) => payload?,
                };
                match frame::decode::<Frame>(&payload, "RPC frame")? {
                    Frame::Request { id, service, body } => {
                        // Membership may have changed since the handshake; a removed member
                        // loses its connection at its next request.
                        if !ctx.allowed.contains(peer) {
                            return Err(ProtoError::Handshake {
                                peer: peer_addr,
                                reason: HandshakeFailure::NotAllowed(peer.clone()),
                            });
                        }
                        let peer = peer.clone();
                        let handler = handler.clone();
                        handlers.spawn(async move {
                            let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                handler.handle(peer, service, body)
                            }));
                            let result = match call {
                                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                                Err(panic) => Err(panic),
                            };
                            (id, result.unwrap_or_else(|_| Err(format!("the handler of service {service} panicked"))))
                        });
                    }
                    Frame::Response { id, .. } => {
                        return Err(ProtoError::Decode {
                            what: "RPC frame",
                            reason: format!("the client sent a response (id {id}); only servers send responses"),
                        });
                    }
                }
            }
        }
    }
}

/// A response too large for a frame becomes an error response, so the caller learns why
/// instead of waiting for its timeout.
fn encode_response(
    id: u64,
    result: Result<Vec<u8>, String>,
    max_frame: usize,
) -> Result<Bytes, ProtoError> {
    match frame::encode(&Frame::Response { id, result }, "RPC response", max_frame) {
        Err(ProtoError::FrameTooLarge { len, max }) => {
            let result = Err(format!(
                "the response ({len} bytes encoded) exceeds the frame limit of {max} bytes"
            ));
            frame::encode(&Frame::Response { id, result }, "RPC response", max_frame)
        }
        other => other,
    }
}

type PeerSlot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// Calls other members. Cheap to share behind an `Arc`; one connection per peer.
pub struct RpcClient {
    ctx: Arc<Endpoint>,
    peers: Mutex<HashMap<NodeName, PeerSlot>>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("me", self.ctx.me())
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    pub fn new(ctx: Arc<Endpoint>) -> Self {
        RpcClient {
            ctx,
            peers: Mutex::default(),
        }
    }

    /// Sends one request to `peer` at `addr` and waits for its response. `timeout` covers
    /// everything: waiting for or establishing the connection, TLS, the Hello exchange,
    /// queueing and the response.
    pub async fn call(
        &self,
        peer: &NodeName,
        addr: SocketAddr,
        service: u16,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcError> {
        let deadline = Instant::now() + timeout;
        let timed_out = |phase| RpcError::Timeout {
            peer: peer.clone(),
            phase,
            after: timeout,
        };
        let max_frame = self.ctx.options.max_frame_bytes;
        if body.len() > max_frame {
            return Err(RpcError::Protocol {
                peer: peer.clone(),
                reason: format!(
                    "request body of {} bytes exceeds the frame limit of {max_frame} bytes",
                    body.len()
                ),
            });
        }
        let mut request = Frame::Request {
            id: 0,
            service,
            body,
        };
        // A connection found closed before our request was written is replaced once: the
        // request certainly was not sent, so trying again cannot run it twice.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let conn = timeout_at(deadline, self.connection(peer, addr, deadline))
                .await
                .map_err(|_| timed_out("connecting"))??;
            let (id, rx, guard) = match conn.register() {
                Ok(registered) => registered,
                Err(_) if attempts < 2 => {
                    self.forget(peer, &conn).await;
                    continue;
                }
                Err(reason) => return Err(reason.into_error(peer)),
            };
            if let Frame::Request { id: slot, .. } = &mut request {
                *slot = id;
            }
            let bytes = frame::encode(&request, "RPC request", max_frame).map_err(|e| {
                RpcError::Protocol {
                    peer: peer.clone(),
                    reason: e.to_string(),
                }
            })?;
            match timeout_at(deadline, conn.tx.send(bytes)).await {
                Err(_) => return Err(timed_out("queueing the request")),
                Ok(Err(_)) if attempts < 2 => {
                    drop(guard);
                    self.forget(peer, &conn).await;
                    continue;
                }
                Ok(Err(_)) => return Err(conn.shared.close_reason().into_error(peer)),
                Ok(Ok(())) => {}
            }
            let Ok(answer) = timeout_at(deadline, rx).await else {
                // Checked while our own request still counts as outstanding.
                conn.shared
                    .close_if_silent(self.ctx.options.presume_dead_after);
                drop(guard);
                return Err(timed_out(PHASE_RESPONSE));
            };
            drop(guard);
            return match answer {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(message)) => Err(RpcError::Remote {
                    peer: peer.clone(),
                    message,
                }),
                Err(_) => Err(conn.shared.close_reason().into_error(peer)),
            };
        }
    }

    /// Whether a live connection to `peer` exists right now.
    pub async fn is_connected(&self, peer: &NodeName) -> bool {
        let slot = self.slot_if_present(peer);
        match slot {
            Some(slot) => slot
                .lock()
                .await
                .as_ref()
                .is_some_and(|conn| !conn.shared.is_closed()),
            None => false,
        }
    }

    /// Closes the connection to `peer`, if any (for example when it leaves the cluster).
    /// Calls in flight on it fail with `Closed`.
    pub async fn disconnect(&self, peer: &NodeName) {
        let slot = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        if let Some(slot) = slot {
            if let Some(conn) = slot.lock().await.take() {
                conn.shared.close(CloseReason::Closed(
                    "disconnected by this member".to_string(),
                ));
            }
        }
    }

    fn slot_if_present(&self, peer: &NodeName) -> Option<PeerSlot> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
    }

    async fn forget(&self, peer: &NodeName, dead: &Arc<Conn>) {
        if let Some(slot) = self.slot_if_present(peer) {
            let mut guard = slot.lock().await;
            if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
                *guard = None;
            }
        }
    }

    /// The live connection to `peer`, establishing one if needed. The per-peer lock makes
    /// concurrent callers share one connection attempt instead of racing several.
    async fn connection(
        &self,
        peer: &NodeName,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Arc<Conn>, RpcError> {
        let slot = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer.clone())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.shared.is_closed() && conn.addr == addr {
                return Ok(conn.clone());
            }
        }
        // Drop a dead connection (or one to an old address) before dialing.
        *guard = None;
        let conn = Arc::new(self.connect(peer, addr, deadline).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(
        &self,
        peer: &NodeName,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Conn, RpcError> {
        let started = Instant::now();
        let timed_out = |phase| RpcError::Timeout {
            peer: peer.clone(),
            phase,
            after: started.elapsed(),
        };
        let tcp = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connecting"))?
            .map_err(|e| RpcError::Connect {
                peer: peer.clone(),
                addr,
                reason: e.to_string(),
            })?;
        tune_socket(&tcp, addr);
        let handshake_deadline = deadline.min(Instant::now() + self.ctx.options.handshake_timeout);
        let (tls, cert_name) = timeout_at(
            handshake_deadline,
            self.ctx.identity.connect(tcp, peer, addr),
        )
        .await
        .map_err(|_| timed_out("in the TLS handshake"))?
        .map_err(|e| connect_error(peer, addr, e))?;
        let mut io = framed(tls, self.ctx.options.max_frame_bytes);
        let hello = self.ctx.hello();
        let params = HandshakeParams {
            ours: &hello,
            cert_name: &cert_name,
            expected: Some(peer),
            allowed: &self.ctx.allowed,
            peer_addr: addr,
        };
        let negotiated = handshake(&mut io, params, handshake_deadline)
            .await
            .map_err(|e| match e {
                ProtoError::HandshakeTimeout { .. } => timed_out("in the Hello exchange"),
                other => connect_error(peer, addr, other),
            })?;
        tracing::debug!(%peer, %addr, version = negotiated.version, "connected");
        Ok(Conn::start(io, addr, peer.clone()))
    }
}

/// `RpcError` already names the peer and address, so only the inner reason is kept.
fn connect_error(peer: &NodeName, addr: SocketAddr, e: ProtoError) -> RpcError {
    let peer = peer.clone();
    match e {
        ProtoError::Tls { reason, .. } => RpcError::Tls { peer, addr, reason },
        ProtoError::PeerCertificate { reason, .. } => RpcError::Tls {
            peer,
            addr,
            reason: format!("its certificate is unusable: {reason}"),
        },
        ProtoError::Handshake { reason, .. } => RpcError::Handshake {
            peer,
            addr,
            reason: format!("we refused the peer: {reason}"),
        },
        ProtoError::RefusedByPeer { reason, .. } => RpcError::Handshake {
            peer,
            addr,
            reason: format!("the peer refused us: {reason}"),
        },
        other => RpcError::Handshake {
            peer,
            addr,
            reason: other.to_string(),
        },
    }
}

/// Why a client connection ended; decides between `RpcError::Closed` and `Protocol`.
#[derive(Debug, Clone)]
enum CloseReason {
    Closed(String),
    Protocol(String),
}

impl CloseReason {
    fn into_error(self, peer: &NodeName) -> RpcError {
        match self {
            CloseReason::Closed(reason) => RpcError::Closed {
                peer: peer.clone(),
                reason,
            },
            CloseReason::Protocol(reason) => RpcError::Protocol {
                peer: peer.clone(),
                reason,
            },
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>;

#[derive(Default)]
struct ConnState {
    pending: Pending,
    closed: Option<CloseReason>,
    /// Since when we have been waiting for the peer to say anything: the last frame
    /// received, or the moment a request was sent while none was outstanding. `None` while
    /// nothing is outstanding.
    silent_since: Option<Instant>,
}

/// State shared by callers, the reader task and the writer task of one connection.
#[derive(Default)]
struct Shared {
    state: Mutex<ConnState>,
    next_id: AtomicU64,
    /// Stops the reader and writer tasks.
    stop: CancellationToken,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Marks the connection closed (first reason wins), fails every waiting caller and
    /// stops the connection's tasks.
    fn close(&self, reason: CloseReason) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(reason);
            }
            std::mem::take(&mut state.pending)
        };
        // Dropping the senders wakes the callers, which then read the close reason.
        drop(pending);
        self.stop.cancel();
    }

    fn close_reason(&self) -> CloseReason {
        self.lock()
            .closed
            .clone()
            .unwrap_or_else(|| CloseReason::Closed("the connection ended".to_string()))
    }

    fn heard_from_peer(&self) {
        let mut state = self.lock();
        if state.silent_since.is_some() {
            state.silent_since = Some(Instant::now());
        }
    }

    /// After a call timed out: if the peer has been silent for `limit` while requests were
    /// outstanding, its host is probably gone and TCP would take a long time to notice, so
    /// give up on the connection and let the next call dial afresh (for example the
    /// rebooted peer). A merely slow peer keeps its connection as long as some response
    /// arrives within `limit`.
    fn close_if_silent(&self, limit: Duration) {
        let silent_for = self.lock().silent_since.map(|since| since.elapsed());
        if let Some(silent_for) = silent_for.filter(|s| *s >= limit) {
            self.close(CloseReason::Closed(format!(
                "no frame received for {silent_for:?} while waiting for responses; \
                 the connection is presumed dead"
            )));
        }
    }

    fn complete(&self, id: u64, result: Result<Vec<u8>, String>) {
        let waiter = {
            let mut state = self.lock();
            let waiter = state.pending.remove(&id);
            if state.pending.is_empty() {
                state.silent_since = None;
            }
            waiter
        };
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            // The caller gave up (timeout) and removed itself.
            None => tracing::debug!(id, "response for a request nobody waits for"),
        }
    }
}

/// Removes a caller's pending entry however the call ends (answer, timeout, cancellation).
struct PendingGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.pending.remove(&self.id);
        if state.pending.is_empty() {
            state.silent_since = None;
        }
    }
}

struct Conn {
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    /// Stops the reader and writer tasks when the last user drops the connection.
    _stop: DropGuard,
}

type OutboundIo = FramedIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl Conn {
    fn start(io: OutboundIo, addr: SocketAddr, peer: NodeName) -> Conn {
        let (sink, stream) = io.split();
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let shared = Arc::new(Shared::default());
        tokio::spawn(write_loop(sink, rx, shared.clone()));
        tokio::spawn(read_loop(stream, shared.clone(), peer));
        Conn {
            addr,
            tx,
            _stop: shared.stop.clone().drop_guard(),
            shared,
        }
    }

    #[allow(clippy::type_complexity)]
    fn register(
        &self,
    ) -> Result<
        (
            u64,
            oneshot::Receiver<Result<Vec<u8>, String>>,
            PendingGuard,
        ),
        CloseReason,
    > {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        if state.pending.is_empty() {
            state.silent_since = Some(Instant::now());
        }
        state.pending.insert(id, tx);
        drop(state);
        Ok((
            id,
            rx,
            PendingGuard {
                shared: self.shared.clone(),
                id,
            },
        ))
    }
}

async fn write_loop(
    mut sink: SplitSink<OutboundIo, Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let stop = &shared.stop;
    let reason = loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break None,
            next = rx.recv() => next,
        };
        let Some(first) = first else { break None };
        // Write everything already queued before flushing: one TLS record and one syscall
        // for a burst of concurrent calls.
        let batch = async {
            sink.feed(first).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(more).await?;
            }
            sink.flush().await
        };
        let written = tokio::select! {
            _ = stop.cancelled() => break None,
            written = batch => written,
        };
        if let Err(e) = written {
            break Some(CloseReason::Closed(format!("sending failed: {e}")));
        }
    };
    shared.close(
        reason.unwrap_or_else(|| CloseReason::Closed("the connection was closed".to_string())),
    );
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
}

async fn read_loop(mut stream: SplitStream<OutboundIo>, shared: Arc<Shared>, peer: NodeName) {
    let stop = &shared.stop;
    let reason = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break CloseReason::Closed("the connection was closed".to_string()),
            next = stream.next() => next,
        };
        match next {
            None => break CloseReason::Closed("the peer closed the connection".to_string()),
            Some(Err(e @ (ProtoError::FrameTooLarge { .. } | ProtoError::Decode { .. }))) => {
                break CloseReason::Protocol(e.to_string())
            }
            Some(Err(e)) => break CloseReason::Closed(e.to_string()),
            Some(Ok(payload)) => {
                shared.heard_from_peer();
                match frame::decode::<Frame>(&payload, "RPC frame") {
                    Ok(Frame::Response { id, result }) => shared.complete(id, result),
                    Ok(Frame::Request { id, .. }) => {
                        break CloseReason::Protocol(format!(
                            "the server sent a request (id {id}); only clients send requests"
                        ))
                    }
                    Err(e) => break CloseReason::Protocol(e.to_string()),
                }
            }
        }
    };
    match &reason {
        CloseReason::Protocol(why) => tracing::warn!(%peer, reason = %why, "closing connection"),
        CloseReason::Closed(why) => tracing::debug!(%peer, reason = %why, "connection closed"),
    }
    shared.close(reason);
}
