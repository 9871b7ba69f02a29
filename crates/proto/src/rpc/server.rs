//! Accepting members: one deadline for TLS plus the Hello exchange, then every
//! request dispatched to the handler concurrently, up to a per-connection limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use uphold_core::NodeName;

use super::endpoint::{Endpoint, Frame, RpcHandler};
use super::{tune_socket, ACCEPT_BACKOFF, CLOSE_TIMEOUT};
use crate::error::{HandshakeFailure, ProtoError};
use crate::frame::{self, framed, FramedIo};
use crate::handshake::{handshake, HandshakeParams, Negotiated};

/// Accepts and serves connections until `shutdown` completes, then closes every connection
/// and returns once they are all gone.
///
/// Before a peer has authenticated it costs little and holds little: a source address
/// that is not a member's is closed at accept, and connections still in TLS or the
/// Hello count against their own small allowance (`max_handshaking`, per address and in
/// total) with a short deadline. Authenticated members count against
/// `max_connections`, which those never reach. Refusals are logged as counts, at most
/// one line per [`REFUSAL_LOG_INTERVAL`].
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Endpoint>,
    handler: Arc<dyn RpcHandler>,
    shutdown: impl Future<Output = ()>,
) {
    let cancel = CancellationToken::new();
    let slots = Arc::new(Slots {
        handshaking: SlotTable::new(
            ctx.options.max_handshaking,
            ctx.options.max_handshaking_per_ip,
        ),
        established: SlotTable::new(
            ctx.options.max_connections,
            ctx.options.max_connections_per_ip,
        ),
        refusals: Mutex::new(RefusalLog::default()),
    });
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let ip = addr.ip().to_canonical();
                    if let Some(admitted) = &ctx.options.admitted_sources {
                        if !admitted.contains(&ip) {
                            slots.refused(addr, "not a member's address");
                            continue;
                        }
                    }
                    let Some(slot) = slots.handshaking.acquire(ip) else {
                        slots.refused(addr, "too many connections handshaking");
                        continue;
                    };
                    conns.spawn(serve_connection(tcp, addr, ctx.clone(), handler.clone(), cancel.clone(), slots.clone(), slot));
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

/// Refusals of unauthenticated connections are logged one line each up to
/// [`REFUSAL_LINES_PER_INTERVAL`] per interval, then counted: a flood must not
/// become a flood of log lines, and a refused member is still visible at once.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
pub const REFUSAL_LINES_PER_INTERVAL: u32 = 5;

pub(super) struct Slots {
    handshaking: Arc<SlotTable>,
    established: Arc<SlotTable>,
    refusals: Mutex<RefusalLog>,
}

impl Slots {
    fn refused(&self, addr: SocketAddr, why: &str) {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.refused(std::time::Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(peer = %addr, reason = why, not_logged_before = suppressed,
                    "refused connection ({suppressed} more were refused without a line in the last interval)");
            } else {
                tracing::warn!(peer = %addr, reason = why, "refused connection");
            }
        }
    }
}

/// How many refusals were logged in the current interval, and how many not.
#[derive(Default)]
struct RefusalLog {
    interval_start: Option<std::time::Instant>,
    lines: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether to log this refusal: `Some(refusals not logged before it)`.
    fn refused(&mut self, now: std::time::Instant) -> Option<u64> {
        let new_interval = self
            .interval_start
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL);
        if new_interval {
            self.interval_start = Some(now);
            self.lines = 0;
        }
        if self.lines >= REFUSAL_LINES_PER_INTERVAL {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Connections counted per source address and in total.
pub(super) struct SlotTable {
    counts: Mutex<(HashMap<IpAddr, usize>, usize)>,
    total_limit: usize,
    per_ip_limit: usize,
}

impl SlotTable {
    fn new(total_limit: usize, per_ip_limit: usize) -> Arc<Self> {
        Arc::new(SlotTable {
            counts: Mutex::default(),
            total_limit,
            per_ip_limit,
        })
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut guard = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip_limit || *total >= self.total_limit {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        *total += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// One connection counted against its source address until dropped.
pub(super) struct IpSlot {
    table: Arc<SlotTable>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut guard = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

pub(super) async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    ctx: Arc<Endpoint>,
    handler: Arc<dyn RpcHandler>,
    cancel: CancellationToken,
    slots: Arc<Slots>,
    handshaking: IpSlot,
) {
    tune_socket(&tcp, addr);
    let deadline = Instant::now() + ctx.options.handshake_timeout;
    let established = tokio::select! {
        _ = cancel.cancelled() => return,
        r = establish_inbound(tcp, addr, &ctx, deadline) => r,
    };
    drop(handshaking);
    let (mut io, negotiated) = match established {
        Ok(ok) => ok,
        Err(e) => {
            // The handshake already logged its own refusals of members.
            if !matches!(
                e,
                ProtoError::Handshake { .. } | ProtoError::RefusedByPeer { .. }
            ) {
                slots.refused(addr, &e.to_string());
            }
            return;
        }
    };
    let member = negotiated.peer;
    let Some(_slot) = slots.established.acquire(addr.ip().to_canonical()) else {
        tracing::warn!(peer = %addr, %member, limit_total = ctx.options.max_connections,
            limit_per_address = ctx.options.max_connections_per_ip,
            "closing a member's connection: too many connections");
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<Bytes>::close(&mut io)).await;
        return;
    };
    tracing::debug!(peer = %addr, %member, version = negotiated.version, "connection established");
    match serve_requests(&mut io, &member, addr, &ctx, handler, &cancel).await {
        Ok(()) => tracing::debug!(peer = %addr, %member, "connection closed"),
        Err(e) => tracing::warn!(peer = %addr, %member, error = %e, "closing connection"),
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::<Bytes>::close(&mut io)).await;
}

pub(super) async fn establish_inbound(
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
pub(super) async fn serve_requests<S>(
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
pub(super) fn encode_response(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_a_few_lines_per_interval_then_counted() {
        let mut log = RefusalLog::default();
        let start = std::time::Instant::now();
        let logged: Vec<Option<u64>> = (0..8).map(|_| log.refused(start)).collect();
        assert_eq!(
            logged,
            vec![
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None
            ]
        );
        let later = start + REFUSAL_LOG_INTERVAL;
        assert_eq!(log.refused(later), Some(3));
        assert_eq!(log.refused(later), Some(0));
    }
}
