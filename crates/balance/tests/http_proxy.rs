//! The balancer in http mode against real HTTP backends and real clients: failover
//! under load, draining, reload, cookie persistence, forwarding headers, hostile
//! clients, the queue.

mod common;

use common::*;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn two_server_config(port: u16, a: &Backend, b: &Backend, extra: &str) -> String {
    format!(
        r#"
[balancer]
threads = 2
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
{extra}
[balance.check]
type = "http"
path = "/"
interval = "100ms"
timeout = "100ms"
rise = 2
fall = 2
[[balance.server]]
name = "a"
address = "{}"
[[balance.server]]
name = "b"
address = "{}"
"#,
        a.addr, b.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_under_load_loses_no_request_and_gets_none_after_detection() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(port, &a, &b, ""));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("both servers up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up" && server_health(&lb, "web", "b") == "up"
    })
    .await;
    let load = Load::start(addr, 8, "/");
    load.wait_ok(500).await;
    assert!(b.requests.load(SeqCst) > 0);
    b.kill();
    wait_until("b marked down", Duration::from_secs(5), || {
        server_health(&lb, "web", "b") == "down"
    })
    .await;
    let errors_at_detection = connect_errors(&lb, "b");
    let done = load.ok.load(SeqCst);
    load.wait_ok(done + 1000).await;
    let (ok, failed, failures) = load.stop().await;
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        connect_errors(&lb, "b"),
        errors_at_detection,
        "new connects went to b after it was marked down"
    );
    assert!(ok > 1500);
    lb.stop();
}

fn connect_errors(lb: &uphold_balance::BalanceService, server: &str) -> u64 {
    let st = lb.status();
    st.frontends[0]
        .servers
        .iter()
        .find(|s| s.name == server)
        .unwrap()
        .traffic
        .connect_errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_redispatched_before_any_check_notices() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    // Checks far apart: only passive health and redispatch can save the requests.
    let text =
        two_server_config(port, &a, &b, "").replace("interval = \"100ms\"", "interval = \"60s\"");
    let lb = start(&text);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("first checks", Duration::from_secs(5), || {
        server_health(&lb, "web", "b") == "up"
    })
    .await;
    b.kill();
    for _ in 0..50 {
        // New client connection each time: no pooled server connection is reused.
        let (status, body) = get_once(addr, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "a"));
    }
    let st = lb.status();
    assert!(
        st.frontends[0].traffic.retries > 0,
        "no request was redispatched"
    );
    assert_eq!(
        server_health(&lb, "web", "b"),
        "down",
        "failed connects did not count"
    );
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_and_sends_new_ones_elsewhere() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(
        port,
        &a,
        &b,
        "algorithm = \"leastconn\"",
    ));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("both up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up"
    })
    .await;
    // Slow requests land on both servers.
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get_once(addr, "/slow?ms=700").await }))
        .collect();
    wait_until("requests in flight on b", Duration::from_secs(5), || {
        b.requests.load(SeqCst) >= 1
    })
    .await;
    let answer = lb.control("web/b", uphold_balance::Action::Drain).unwrap();
    assert!(answer.contains("draining"), "{answer}");
    let before = b.requests.load(SeqCst);
    for _ in 0..20 {
        assert_eq!(get_once(addr, "/").await.unwrap(), (200, "a".to_string()));
    }
    assert_eq!(
        b.requests.load(SeqCst),
        before,
        "a draining server got a new request"
    );
    let mut served_by_b = 0;
    for s in slow {
        let (status, body) = s.await.unwrap().unwrap();
        assert_eq!(status, 200);
        served_by_b += usize::from(body == "b");
    }
    assert!(served_by_b >= 1, "no in-flight request was on b");
    lb.control("b", uphold_balance::Action::Enable).unwrap();
    let mut saw_b = false;
    for _ in 0..20 {
        saw_b |= get_once(addr, "/").await.unwrap().1 == "b";
    }
    assert!(saw_b, "b got nothing after enable");
    assert!(lb
        .control("nope", uphold_balance::Action::Drain)
        .unwrap_err()
        .contains("no server"));
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_keeps_health() {
    let (a, b, c) = (
        Backend::http("a").await,
        Backend::http("b").await,
        Backend::http("c").await,
    );
    let port = free_port();
    let text = two_server_config(port, &a, &b, "");
    let lb = start(&text);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("both up", Duration::from_secs(5), || {
        server_health(&lb, "web", "b") == "up"
    })
    .await;
    lb.control("web/a", uphold_balance::Action::Weight(3))
        .unwrap();
    let load = Load::start(addr, 8, "/");
    load.wait_ok(300).await;
    // Add a server, change the algorithm: a and b are unchanged and keep their state.
    let new_text = format!(
        "{}\n[[balance.server]]\nname = \"c\"\naddress = \"{}\"\n",
        text.replace(
            "mode = \"http\"",
            "mode = \"http\"\nalgorithm = \"leastconn\""
        ),
        c.addr
    );
    for round in 0..5 {
        let cfg = if round % 2 == 0 { &new_text } else { &text };
        let errors = lb.reload(&config(cfg).balance);
        assert!(errors.is_empty(), "{errors:?}");
        let n = load.ok.load(SeqCst);
        load.wait_ok(n + 200).await;
    }
    assert_eq!(server_health(&lb, "web", "a"), "up");
    let st = lb.status();
    assert_eq!(st.frontends[0].servers.len(), 3);
    let a_status = st.frontends[0]
        .servers
        .iter()
        .find(|s| s.name == "a")
        .unwrap();
    assert_eq!(
        a_status.weight, 3,
        "the operator's weight was lost in the reload"
    );
    wait_until("c used", Duration::from_secs(5), || {
        c.requests.load(SeqCst) > 1
    })
    .await;
    let (_, failed, failures) = load.stop().await;
    assert_eq!(failed, 0, "{:?}", &failures[..failures.len().min(5)]);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_persistence_and_forwarding_headers() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(port, &a, &b, "cookie = \"SRV\""));
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("both up", Duration::from_secs(5), || {
        server_health(&lb, "web", "b") == "up"
    })
    .await;
    let mut c = Client::connect(addr).await.unwrap();
    let (status, headers, body) = c
        .request(
            "GET",
            "/headers",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
            ],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        !body.contains("x-secret"),
        "a header named in Connection was forwarded: {body}"
    );
    let cookie = headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let server = body.lines().next().unwrap().to_string();
    assert!(cookie.starts_with(&format!("SRV={server};")), "{cookie}");
    for _ in 0..10 {
        let mut fresh = Client::connect(addr).await.unwrap();
        let (_, h, body) = fresh
            .request(
                "GET",
                "/",
                &[("cookie", &format!("other=1; SRV={server}"))],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(body, server);
        assert!(h.get("set-cookie").is_none());
    }
    // A POST body passes through.
    let (status, _, body) = c
        .request("POST", "/echo", &[], &vec![b'x'; 100_000])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with(" 100000"), "{body}");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_slow_clients_get_their_error_and_others_are_served() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(
        port,
        &a,
        &b,
        "header_timeout = \"500ms\"",
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up"
    })
    .await;
    // Garbage: a 400 and the connection closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // Headers too large: 431.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // Slowloris: half a request head, then nothing; closed after the header timeout,
    // while a normal client is served meanwhile.
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert_eq!(get_once(addr, "/").await.unwrap().0, 200);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
        .await
        .expect("the slow client was never cut off");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "cut off after {took:?}"
    );
    assert!(lb.status().frontends[0].bad_requests >= 2);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_and_tunnels_are_refused_before_any_server() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(port, &a, &b, ""));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up" && server_health(&lb, "web", "b") == "up"
    })
    .await;
    let before = a.requests.load(SeqCst) + b.requests.load(SeqCst);
    for (request, status) in [
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "400",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "400"),
        (
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
            "405",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&head);
        assert_eq!(head, format!("HTTP/1.1 {status}"), "{request:?}");
    }
    // HTTP/1.0 without a Host is still served.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let after = a.requests.load(SeqCst) + b.requests.load(SeqCst);
    assert_eq!(after - before, 1, "a refused request reached a server");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_past_max_body_bytes_get_413() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&two_server_config(port, &a, &b, "max_body_bytes = 1000"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up" && server_health(&lb, "web", "b") == "up"
    })
    .await;
    let status_of = |request: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer before it reads the whole body.
        let _ = s.write_all(&request).await;
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
            .await
            .expect("no answer")
            .unwrap();
        String::from_utf8_lossy(&head[9..12]).into_owned()
    };
    let post = |body: &[u8]| {
        let mut r = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    assert_eq!(status_of(post(&[b'x'; 1000])).await, "200");
    // Announced too large: refused before any server is asked.
    let before = a.requests.load(SeqCst) + b.requests.load(SeqCst);
    assert_eq!(status_of(post(&[b'x'; 5000])).await, "413");
    assert_eq!(a.requests.load(SeqCst) + b.requests.load(SeqCst), before);
    // Of unknown length (chunked): cut at the limit as it streams.
    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend_from_slice(b"3e8\r\n");
        chunked.extend_from_slice(&[b'y'; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(chunked).await, "413");
    assert!(lb.status().frontends[0].bad_requests >= 2);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_servers_queue_requests_and_a_full_queue_answers_503() {
    let a = Backend::http("a").await;
    let port = free_port();
    let text = format!(
        r#"
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
queue = 2
queue_timeout = "5s"
[[balance.server]]
name = "a"
address = "{}"
maxconn = 1
"#,
        a.addr
    );
    let lb = start(&text);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let reqs: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get_once(addr, "/slow?ms=300").await }))
        .collect();
    wait_until("two queued", Duration::from_secs(5), || {
        lb.status().frontends[0].queued == 2
    })
    .await;
    // The queue is full: one more is refused at once.
    let (status, body) = get_once(addr, "/").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue"), "{body}");
    for r in reqs {
        assert_eq!(r.await.unwrap().unwrap(), (200, "a".into()));
    }
    // One at a time: three slow requests take three times as long.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_server_only_when_all_others_are_down() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let text = two_server_config(port, &a, &b, "")
        .replace("name = \"b\"\n", "name = \"b\"\nbackup = true\n");
    let lb = start(&text);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up"
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get_once(addr, "/").await.unwrap().1, "a");
    }
    lb.control("a", uphold_balance::Action::Disable).unwrap();
    for _ in 0..10 {
        assert_eq!(get_once(addr, "/").await.unwrap().1, "b");
    }
    lb.control("b", uphold_balance::Action::Disable).unwrap();
    assert_eq!(get_once(addr, "/").await.unwrap().0, 503);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_and_the_server_hears_https() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["www.example.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("www.pem"), dir.path().join("www.key"));
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();

    let a = Backend::http("a").await;
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "tls"
listen = "127.0.0.1:{port}"
mode = "http"
tls = [{{ cert = "{}", key = "{}" }}]
[[balance.server]]
name = "a"
address = "{}"
"#,
        cert_path.display(),
        key_path.display(),
        a.addr
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("www.example.test").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the balancer");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri("/headers")
            .header("host", "www.example.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("x-forwarded-proto: https"), "{body}");
    }
    // HTTP/2 to the balancer (ALPN h2), HTTP/1.1 to the server.
    let mut h2_config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        roots
    })
    .with_no_client_auth();
    h2_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(h2_config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("www.example.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Several requests at once on the one connection.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri("https://www.example.test/headers")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }));
    }
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("host: www.example.test"), "{body}");
        assert!(body.contains("x-forwarded-proto: https"), "{body}");
    }
    // A client that does not speak TLS is dropped without harm to others.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .expect("not closed");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    assert_eq!(lb.status().frontends[0].mode, "https");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_the_queue_free_their_place() {
    let a = Backend::http("a").await;
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
queue = 2
[[balance.server]]
name = "a"
address = "{}"
maxconn = 1
"#,
        a.addr
    ));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let busy = tokio::spawn(async move { get_once(addr, "/slow?ms=1500").await });
    wait_until("the server busy", Duration::from_secs(5), || {
        a.requests.load(SeqCst) == 1
    })
    .await;
    // Two clients queue, then hang up.
    let mut quitters = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        quitters.push(s);
    }
    wait_until("two queued", Duration::from_secs(5), || {
        lb.status().frontends[0].queued == 2
    })
    .await;
    drop(quitters);
    wait_until("their places freed", Duration::from_secs(5), || {
        lb.status().frontends[0].queued == 0
    })
    .await;
    // The queue takes new clients again, and they are served when the slot frees.
    assert_eq!(get_once(addr, "/").await.unwrap(), (200, "a".to_string()));
    assert_eq!(busy.await.unwrap().unwrap().0, 200);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_hands_ports_between_frontends_and_addresses() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let text = |name: &str, ip: &str, server: &Backend, ports: &str| {
        format!(
            "[[balance]]\nname = \"{name}\"\nlisten = \"{ip}:{ports}\"\nmode = \"http\"\n[[balance.server]]\nname = \"s\"\naddress = \"{}\"\n",
            server.addr
        )
    };
    let lb = start(&text("web", "127.0.0.1", &a, &port.to_string()));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_once(addr, "/").await.unwrap().1, "a");
    // Renamed (and pointed at another server): the same socket goes on serving.
    let errors = lb.reload(&config(&text("www", "127.0.0.1", &b, &port.to_string())).balance);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(get_once(addr, "/").await.unwrap().1, "b");
    // From one address to the wildcard on the same port.
    let errors = lb.reload(&config(&text("www", "0.0.0.0", &b, &port.to_string())).balance);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(get_once(addr, "/").await.unwrap().1, "b");
    // A keep-alive client on a port that a reload removes gets a clear 503.
    let range = free_ports(2);
    let errors = lb.reload(
        &config(&text(
            "www",
            "127.0.0.1",
            &a,
            &format!("{range}-{}", range + 1),
        ))
        .balance,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let mut kept = Client::connect(format!("127.0.0.1:{}", range + 1).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(kept.get("/").await.unwrap().0, 200);
    let errors = lb.reload(&config(&text("www", "127.0.0.1", &a, &range.to_string())).balance);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(kept.get("/").await.unwrap().0, 503);
    assert_eq!(
        get_once(format!("127.0.0.1:{range}").parse().unwrap(), "/")
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", range + 1))
            .await
            .is_err(),
        "the removed port still accepts"
    );
    lb.stop();
}

/// A server that switches every request to an echo protocol (as a WebSocket
/// server would), after checking the upgrade headers arrived.
async fn upgrade_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n").await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_style_upgrades_pass_through() {
    let backend = upgrade_backend().await;
    let port = free_port();
    let lb = start(&format!(
        "[[balance]]\nname = \"ws\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n[[balance.server]]\nname = \"a\"\naddress = \"{backend}\"\n"
    ));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in [&b"ping"[..], b"a longer message", &[7u8; 100_000][..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    assert_eq!(
        lb.status().frontends[0].servers[0].traffic.active,
        1,
        "the upgraded connection holds its slot"
    );
    drop(s);
    wait_until("the slot freed", Duration::from_secs(5), || {
        lb.status().frontends[0].servers[0].traffic.active == 0
    })
    .await;
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_goes_to_a_server_enabled_meanwhile() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
queue_timeout = "20s"
[[balance.server]]
name = "a"
address = "{}"
maxconn = 1
[[balance.server]]
name = "b"
address = "{}"
maxconn = 1
"#,
        a.addr, b.addr
    ));
    lb.control("b", uphold_balance::Action::Disable).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let busy = tokio::spawn(async move { get_once(addr, "/slow?ms=5000").await });
    wait_until("a busy", Duration::from_secs(5), || {
        a.requests.load(SeqCst) == 1
    })
    .await;
    let waiting = tokio::spawn(async move { get_once(addr, "/").await });
    wait_until("one queued", Duration::from_secs(5), || {
        lb.status().frontends[0].queued == 1
    })
    .await;
    let enabled = Instant::now();
    lb.control("b", uphold_balance::Action::Enable).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the queued request was not woken")
        .unwrap()
        .unwrap();
    assert_eq!(answer, (200, "b".to_string()));
    assert!(enabled.elapsed() < Duration::from_secs(2));
    busy.abort();
    lb.stop();
}
