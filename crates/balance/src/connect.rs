//! Opening a connection to a server for a client: acquire a slot, connect within the
//! timeout, and on failure count it against the server (passive health) and try
//! another (redispatch), up to the frontend's `retries`.

use crate::engine::retry;
use crate::frontend::Frontend;
use crate::pool::{Refusal, ServerSlot};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio::net::TcpStream;

pub enum Failure {
    Refused(Refusal),
    /// Every attempt to connect failed; the last error.
    Unreachable(String),
}

/// Connects to `slot`'s server for traffic that arrived on `listen_port`.
pub async fn open(
    frontend: &Frontend,
    slot: &ServerSlot,
    listen_port: u16,
) -> Result<TcpStream, String> {
    let cfg = &frontend.config;
    let Some(addr) = slot.server.config.address_in(listen_port, cfg.ports) else {
        return Err(format!(
            "port {listen_port} is no longer served by this frontend"
        ));
    };
    let started = Instant::now();
    let result = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
        Err(_) => Err(format!(
            "connect to {addr}: no answer within {:?}",
            cfg.connect_timeout
        )),
    };
    let server = &slot.server;
    match &result {
        Ok(_) => {
            server.traffic.connections.fetch_add(1, Relaxed);
            server.traffic.latency.record(started.elapsed());
        }
        Err(e) => {
            server.traffic.connect_errors.fetch_add(1, Relaxed);
            frontend.pool.traffic.connect_errors.fetch_add(1, Relaxed);
            if let Some(t) = server.observe(false, e) {
                tracing::warn!(frontend = %cfg.name, server = %server.name(), "server is {:?}: {}", t.to, t.reason);
            }
        }
    }
    result
}

/// A slot and a connected stream, trying other servers after failed connects.
pub async fn connect_any(
    frontend: &Frontend,
    client: u64,
    preferred: Option<usize>,
    listen_port: u16,
    mut exclude: Vec<usize>,
) -> Result<(ServerSlot, TcpStream), Failure> {
    let mut last_error = String::new();
    let first = exclude.len() as u32;
    for attempt in first..=frontend.config.retries {
        let slot = match frontend
            .pool
            .acquire(
                client,
                if attempt == first { preferred } else { None },
                &exclude,
            )
            .await
        {
            Ok(l) => l,
            Err(Refusal::NoServer) if attempt > first => {
                return Err(Failure::Unreachable(last_error))
            }
            Err(r) => return Err(Failure::Refused(r)),
        };
        match open(frontend, &slot, listen_port).await {
            Ok(stream) => return Ok((slot, stream)),
            Err(e) => {
                last_error = e;
                exclude.push(slot.index);
                if retry::tries_another_server(attempt, frontend.config.retries) {
                    frontend.pool.traffic.retries.fetch_add(1, Relaxed);
                }
            }
        }
    }
    Err(Failure::Unreachable(last_error))
}
