//! A real HTTP server for tests, on loopback: it answers its name (and echoes
//! headers or counts a body on request), counts the requests that are not
//! health checks, and can be killed as a crashed process would be. The
//! balancer's tests and the binary's balancer test share it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// An HTTP server answering its name; `/slow?ms=N` waits first, `/headers` lists
/// the request headers, `/echo` counts the body. `requests` leaves out health checks. `kill` closes its
/// listener and every connection, as a crashed process would.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    alive: Arc<AtomicBool>,
}

impl Backend {
    pub async fn http(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_http(name, listener)
    }

    pub async fn http_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve_http(name, listener)
    }

    fn serve_http(name: &str, listener: tokio::net::TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (n, r, t) = (name.to_string(), requests.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, r) = (n.clone(), r.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (n, r) = (n.clone(), r.clone());
                            async move {
                                // Health checks are not traffic.
                                if req
                                    .headers()
                                    .get("user-agent")
                                    .is_none_or(|v| v != "uphold-check")
                                {
                                    r.fetch_add(1, SeqCst);
                                }
                                let q = req.uri().query().unwrap_or("").to_string();
                                if req.uri().path() == "/slow" {
                                    let ms: u64 = q
                                        .strip_prefix("ms=")
                                        .and_then(|v| v.parse().ok())
                                        .unwrap_or(500);
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                let mut text = n.clone();
                                if req.uri().path() == "/headers" {
                                    for (k, v) in req.headers() {
                                        text.push_str(&format!(
                                            "\n{k}: {}",
                                            v.to_str().unwrap_or("?")
                                        ));
                                    }
                                }
                                if req.uri().path() == "/echo" {
                                    let body = req
                                        .into_body()
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    text = format!("{n} {}", body.len());
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from(text),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Backend {
            name: name.to_string(),
            addr,
            requests,
            tasks,
            alive,
        }
    }

    pub fn kill(&self) {
        self.alive.store(false, SeqCst);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}
