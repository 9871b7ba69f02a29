//! Accepting members: one deadline for TLS plus the Hello exchange, then every
//! request dispatched to the handler concurrently, up to a per-connection limit.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

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
pub(super) struct IpSlot {
    pub(super) map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    pub(super) ip: IpAddr,
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

pub(super) async fn serve_connection(
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
