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
//!
//! Here: the socket tuning and timeouts both sides share. Beside it: the endpoint
//! and the routing of requests (`endpoint`), accepting (`server`), calling
//! (`client`) and one outbound connection's tasks (`connection`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

mod client;
mod connection;
mod endpoint;
mod server;

pub use client::RpcClient;
pub use endpoint::{Endpoint, EndpointOptions, Frame, RpcHandler, ServiceRouter};
pub use server::serve;

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
