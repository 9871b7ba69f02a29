//! One outbound connection: the writer task that owns the sending half, the reader
//! task that routes responses to waiting callers by request id, and how it closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use uphold_core::NodeName;

use super::endpoint::Frame;
use super::{CLIENT_QUEUE, CLOSE_TIMEOUT};
use crate::error::{ProtoError, RpcError};
use crate::frame::{self, FramedIo};

/// Why a client connection ended; decides between `RpcError::Closed` and `Protocol`.
#[derive(Debug, Clone)]
pub(super) enum CloseReason {
    Closed(String),
    Protocol(String),
}

impl CloseReason {
    pub(super) fn into_error(self, peer: &NodeName) -> RpcError {
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

pub(super) type Pending = HashMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>;

#[derive(Default)]
pub(super) struct ConnState {
    pub(super) pending: Pending,
    pub(super) closed: Option<CloseReason>,
    /// Since when we have been waiting for the peer to say anything: the last frame
    /// received, or the moment a request was sent while none was outstanding. `None` while
    /// nothing is outstanding.
    pub(super) silent_since: Option<Instant>,
}

/// State shared by callers, the reader task and the writer task of one connection.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) state: Mutex<ConnState>,
    pub(super) next_id: AtomicU64,
    /// Stops the reader and writer tasks.
    pub(super) stop: CancellationToken,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Marks the connection closed (first reason wins), fails every waiting caller and
    /// stops the connection's tasks.
    pub(super) fn close(&self, reason: CloseReason) {
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

    pub(super) fn close_reason(&self) -> CloseReason {
        self.lock()
            .closed
            .clone()
            .unwrap_or_else(|| CloseReason::Closed("the connection ended".to_string()))
    }

    pub(super) fn heard_from_peer(&self) {
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
    pub(super) fn close_if_silent(&self, limit: Duration) {
        let silent_for = self.lock().silent_since.map(|since| since.elapsed());
        if let Some(silent_for) = silent_for.filter(|s| *s >= limit) {
            self.close(CloseReason::Closed(format!(
                "no frame received for {silent_for:?} while waiting for responses; \
                 the connection is presumed dead"
            )));
        }
    }

    pub(super) fn complete(&self, id: u64, result: Result<Vec<u8>, String>) {
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
pub(super) struct PendingGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
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

pub(super) struct Conn {
    pub(super) addr: SocketAddr,
    pub(super) tx: mpsc::Sender<Bytes>,
    pub(super) shared: Arc<Shared>,
    /// Stops the reader and writer tasks when the last user drops the connection.
    pub(super) _stop: DropGuard,
}

pub(super) type OutboundIo = FramedIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl Conn {
    pub(super) fn start(io: OutboundIo, addr: SocketAddr, peer: NodeName) -> Conn {
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
    pub(super) fn register(
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

pub(super) async fn write_loop(
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

pub(super) async fn read_loop(
    mut stream: SplitStream<OutboundIo>,
    shared: Arc<Shared>,
    peer: NodeName,
) {
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
