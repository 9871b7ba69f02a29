//! Server connections in http mode, and the idle pool that reuses them. Each proxy
//! thread keeps its own pool (a thread-local: the threads run single-threaded
//! runtimes, so a connection never moves between threads and no lock is taken).
//! Reusing server connections is what makes connection-per-request clients cheap.

use crate::pool::ServerSlot;
use http::{Request, Response};
use hyper::body::Incoming;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle server connections older than this are closed rather than reused: servers
/// close idle keep-alive connections after a few seconds (Apache: 5 s), and a request
/// written just as the server closes would be lost.
const MAX_IDLE: Duration = Duration::from_secs(4);
/// How long a pooled connection may take to become ready for the next request.
const READY_WAIT: Duration = Duration::from_secs(1);
/// Idle connections kept per server and thread.
const MAX_IDLE_PER_SERVER: usize = 256;

/// Request bodies towards servers: the client's, or none (also used to replay a
/// bodyless request).
/// The client's body is limited to the frontend's `max_body_bytes` as it streams.
pub type ReqBody =
    http_body_util::Either<http_body_util::Limited<Incoming>, http_body_util::Empty<bytes::Bytes>>;

pub struct Sender {
    inner: hyper::client::conn::http1::SendRequest<ReqBody>,
    /// Taken from the idle pool (the server may have closed it meanwhile).
    pub reused: bool,
    addr: SocketAddr,
    server_timeout: Duration,
    idle_since: Instant,
}

pub enum SendError {
    /// Nothing was written; the request comes back to be sent elsewhere.
    NotSent(Box<Request<ReqBody>>),
    Failed(Failed),
}

#[derive(Debug)]
pub struct Failed {
    pub message: String,
    pub timeout: bool,
    /// The client's body went past `max_body_bytes` while it was sent.
    pub body_too_large: bool,
}

impl Failed {
    pub fn is_timeout(&self) -> bool {
        self.timeout
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Sender {
    /// Sends the request and waits for the response head (at most the server timeout).
    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Response<Incoming>, SendError> {
        // A connection still busy with an earlier exchange (a server that answered
        // before reading the whole upload) is not waited for long.
        if !self.inner.is_ready() {
            match tokio::time::timeout(READY_WAIT, self.inner.ready()).await {
                Ok(Ok(())) => {}
                _ => return Err(SendError::NotSent(Box::new(req))),
            }
        }
        match tokio::time::timeout(self.server_timeout, self.inner.try_send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => {
                    let error = e.into_error();
                    Err(SendError::Failed(Failed {
                        message: error.to_string(),
                        timeout: false,
                        body_too_large: caused_by_length_limit(&error),
                    }))
                }
            },
            Err(_) => Err(SendError::Failed(Failed {
                message: format!("no response within {:?}", self.server_timeout),
                timeout: true,
                body_too_large: false,
            })),
        }
    }
}

/// Whether `error` comes from the client's body passing its length limit.
fn caused_by_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    // Bounded: an error chain is a handful of links.
    for _ in 0..16 {
        match cause {
            Some(e) if e.is::<http_body_util::LengthLimitError>() => return true,
            Some(e) => cause = e.source(),
            None => return false,
        }
    }
    false
}

/// A server connection whose response is complete, with the slot it held.
pub struct Returnable {
    pub sender: Sender,
    pub slot: ServerSlot,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Sender>>> = RefCell::new(HashMap::new());
}

/// An idle connection to `addr` that is still open, most recently used first (its
/// server-side timer is furthest from expiring).
pub async fn take_idle(addr: SocketAddr) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(mut s) = list.pop() {
            if !s.inner.is_closed() && s.idle_since.elapsed() < MAX_IDLE {
                s.reused = true;
                return Some(s);
            }
        }
        None
    })
}

/// Puts a finished connection back for reuse and frees its slot.
pub fn give_back(r: Returnable) {
    let Returnable { mut sender, slot } = r;
    drop(slot);
    if sender.inner.is_closed() {
        return;
    }
    sender.idle_since = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(sender.addr).or_default();
        // The oldest sit at the front: drop the ones too old to reuse, and the
        // oldest when the list is full (they are the likeliest to be closed).
        let stale = list
            .iter()
            .take_while(|s| s.idle_since.elapsed() >= MAX_IDLE || s.inner.is_closed())
            .count();
        list.drain(..stale);
        if list.len() >= MAX_IDLE_PER_SERVER {
            list.remove(0);
        }
        list.push(sender);
    });
}

/// HTTP/1.1 over a new server connection; the connection's task runs on this thread.
pub async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    server_timeout: Duration,
) -> Result<Sender, String> {
    let io = hyper_util::rt::TokioIo::new(stream);
    let (inner, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(server = %addr, "server connection: {e}");
        }
    });
    Ok(Sender {
        inner,
        reused: false,
        addr,
        server_timeout,
        idle_since: Instant::now(),
    })
}
