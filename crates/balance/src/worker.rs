//! The proxy threads: each runs a single-threaded runtime (no work stealing, no
//! cross-thread wake-ups on the request path) and accepts on every listening socket;
//! a connection stays on the thread that accepted it.

use crate::frontend::Route;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uphold_config::balance::BalanceMode;

enum Command {
    Listen {
        listener: std::net::TcpListener,
        route: Route,
        stop: watch::Receiver<bool>,
        alive: std::sync::Arc<()>,
    },
}

pub struct Workers {
    commands: Vec<mpsc::UnboundedSender<Command>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Workers {
    pub fn start(count: usize) -> Result<Workers, String> {
        let (shutdown, _) = watch::channel(false);
        let mut commands = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a balancer thread: {e}"))?;
            let shutdown_rx = shutdown.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("balance-{i}"))
                .spawn(move || rt.block_on(run(rx, shutdown_rx)))
                .map_err(|e| format!("cannot start a balancer thread: {e}"))?;
            commands.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            commands,
            threads,
            shutdown,
        })
    }

    /// Every thread accepts on `listener` until `stop` turns true (or its sender goes).
    /// `alive` is held by every accept loop of the socket: when its count drops to
    /// one after `stop`, the socket is closed and the address free again.
    pub fn listen(
        &self,
        listener: &std::net::TcpListener,
        route: &Route,
        stop: &watch::Sender<bool>,
        alive: &std::sync::Arc<()>,
    ) -> Result<(), String> {
        for tx in &self.commands {
            let listener = listener
                .try_clone()
                .map_err(|e| format!("cannot share a listening socket: {e}"))?;
            let _ = tx.send(Command::Listen {
                listener,
                route: route.clone(),
                stop: stop.subscribe(),
                alive: alive.clone(),
            });
        }
        Ok(())
    }

    /// Stops accepting and ends every connection still open.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        drop(self.commands);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::Listen { listener, route, stop, alive }) => match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => { tokio::spawn(accept_loop(l, route, stop, alive)); }
                    Err(e) => tracing::error!("cannot register a listening socket: {e}"),
                },
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    route: Route,
    mut stop: watch::Receiver<bool>,
    _alive: std::sync::Arc<()>,
) {
    let Ok(listen_addr) = listener.local_addr() else {
        tracing::error!("a listening socket has no address; not accepting on it");
        return;
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = route.slot();
        let frontend = slot.current();
        let traffic = &frontend.pool.traffic;
        if traffic.active.load(Relaxed) >= u64::from(frontend.config.max_connections) {
            frontend.pool.counters.over_limit.fetch_add(1, Relaxed);
            continue;
        }
        let limit = frontend.config.max_connections_per_client;
        let Some(client) = frontend.pool.clients.acquire(peer.ip(), limit) else {
            // Closed at once: the address already holds its share.
            frontend
                .pool
                .counters
                .over_client_limit
                .fetch_add(1, Relaxed);
            continue;
        };
        // The listener's own address; for a wildcard listener the real local
        // address is looked up only where it is needed (PROXY protocol).
        let local = listen_addr;
        traffic.connections.fetch_add(1, Relaxed);
        traffic.active.fetch_add(1, Relaxed);
        let guard = ActiveGuard {
            frontend: frontend.clone(),
            _client: client,
        };
        match (frontend.config.mode, frontend.tls.clone()) {
            (BalanceMode::Tcp, _) => {
                tokio::spawn(async move {
                    crate::tcp::serve(stream, peer, local, guard.frontend.clone()).await;
                    drop(guard);
                });
            }
            (BalanceMode::Http, None) => {
                let slot = slot.clone();
                tokio::spawn(async move {
                    crate::http::serve(stream, peer, local, slot, false).await;
                    drop(guard);
                });
            }
            (BalanceMode::Http, Some(acceptor)) => {
                let slot = slot.clone();
                let limit = frontend.config.header_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            crate::http::serve_h2(tls, peer, local, slot).await
                        }
                        Ok(Ok(tls)) => crate::http::serve(tls, peer, local, slot, true).await,
                        failed => {
                            if let Ok(Err(e)) = failed {
                                tracing::debug!(client = %peer, "TLS handshake: {e}");
                            }
                            let counters = &guard.frontend.pool.counters;
                            counters.bad_requests.fetch_add(1, Relaxed);
                        }
                    }
                    drop(guard);
                });
            }
        }
    }
}

/// Counts a client connection as active until dropped.
/// One accepted connection, counted against the frontend and its client's
/// address until it ends.
struct ActiveGuard {
    frontend: std::sync::Arc<crate::frontend::Frontend>,
    _client: crate::clients::ClientSlot,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.frontend.pool.traffic.active.fetch_sub(1, Relaxed);
    }
}
