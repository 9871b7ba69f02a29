//! Calling members: one connection per peer shared by all callers, replaced on the
//! next call once broken.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use uphold_core::NodeName;

use super::connection::{CloseReason, Conn};
use super::endpoint::{Endpoint, Frame};
use super::tune_socket;
use crate::error::{ProtoError, RpcError, PHASE_RESPONSE};
use crate::frame::{self, framed};
use crate::handshake::{handshake, HandshakeParams};

pub(super) type PeerSlot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

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
        let tcp = timeout_at(deadline, dial(addr, self.ctx.options.source_ip))
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
pub(super) fn connect_error(peer: &NodeName, addr: SocketAddr, e: ProtoError) -> RpcError {
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

/// Connects to `addr` from `source` when one is given and can be bound here (the
/// peers admit only the members' addresses); otherwise from whatever address the
/// kernel picks.
async fn dial(addr: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source.filter(|s| s.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    match socket.bind(SocketAddr::new(source, 0)) {
        Ok(()) => socket.connect(addr).await,
        Err(e) => {
            tracing::debug!(%source, error = %e, "cannot connect from the member address; letting the kernel choose");
            TcpStream::connect(addr).await
        }
    }
}
