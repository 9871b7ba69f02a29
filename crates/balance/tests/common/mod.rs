//! Real components for the balancer's tests: HTTP and TCP backends on loopback that
//! can be killed, a balancer started from config text, and HTTP clients with
//! keep-alive. Everything talks over real sockets.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uphold_balance::BalanceService;
#[allow(unused_imports)]
pub use uphold_testkit::http_backend::Backend;
#[allow(unused_imports)]
pub use uphold_testkit::loopback::wait_for_async as wait_until;

/// A TCP server that first writes `NAME PORT\n` (its own port), then echoes. With
/// `expect_proxy`, it first reads one PROXY v1 line and writes it back.
pub async fn tcp_backend(
    name: &str,
    addr: SocketAddr,
    expect_proxy: bool,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let name = name.clone();
            tokio::spawn(async move {
                if expect_proxy {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        line.push(b[0]);
                        if b[0] == b'\n' || line.len() > 200 {
                            break;
                        }
                    }
                    let _ = s.write_all(&line).await;
                }
                let _ = s.write_all(format!("{name} {port}\n").as_bytes()).await;
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

// Each test binary compiles this module and uses a part of it.
#[allow(unused_imports)]
pub use uphold_testkit::loopback::{free_port, free_ports};

pub fn config(text: &str) -> uphold_config::Config {
    match uphold_config::parse_str(text, "test.toml") {
        Ok(l) => l.config,
        Err(e) => panic!("config: {e}\n{text}"),
    }
}

pub fn start(text: &str) -> BalanceService {
    let c = config(text);
    BalanceService::start(&c.balance, &c.balancer, tokio::runtime::Handle::current()).unwrap()
}

pub fn server_health(lb: &BalanceService, frontend: &str, server: &str) -> String {
    let st = lb.status();
    let f = st.frontends.iter().find(|f| f.name == frontend).unwrap();
    f.servers
        .iter()
        .find(|s| s.name == server)
        .unwrap()
        .health
        .clone()
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, http::HeaderMap, String), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).to_string()))
    }

    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path, &[], b"")
            .await
            .map(|(s, _, b)| (s, b))
    }
}

/// One GET on a new connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut c = Client::connect(addr).await.map_err(|e| e.to_string())?;
    c.get(path).await
}

/// Keep-alive clients sending GET `path` in a loop until stopped.
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &str) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (ok, failed, failures, stop, path) = (
                    ok.clone(),
                    failed.clone(),
                    failures.clone(),
                    stop.clone(),
                    path.to_string(),
                );
                tokio::spawn(async move {
                    let mut client: Option<Client> = None;
                    while !stop.load(SeqCst) {
                        if client.is_none() {
                            match Client::connect(addr).await {
                                Ok(c) => client = Some(c),
                                Err(e) => {
                                    failed.fetch_add(1, SeqCst);
                                    failures.lock().unwrap().push(format!("connect: {e}"));
                                    continue;
                                }
                            }
                        }
                        let Some(c) = client.as_mut() else { continue };
                        match c.get(&path).await {
                            Ok((200, _)) => {
                                ok.fetch_add(1, SeqCst);
                            }
                            Ok((status, body)) => {
                                failed.fetch_add(1, SeqCst);
                                failures.lock().unwrap().push(format!("{status} {body}"));
                            }
                            Err(e) => {
                                // The balancer closed a keep-alive connection between
                                // requests: a client reconnects; that is not a failure
                                // unless the request itself was lost.
                                failed.fetch_add(1, SeqCst);
                                failures.lock().unwrap().push(format!("request: {e}"));
                                client = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            failures,
            stop,
            tasks,
        }
    }

    pub async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(SeqCst),
            self.failed.load(SeqCst),
            self.failures.lock().unwrap().clone(),
        )
    }

    pub async fn wait_ok(&self, n: u64) {
        let ok = self.ok.clone();
        wait_until("requests to succeed", Duration::from_secs(20), move || {
            ok.load(SeqCst) >= n
        })
        .await;
    }
}
