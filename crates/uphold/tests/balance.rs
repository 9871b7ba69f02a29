//! The balancer through the real binary: a balancer-only config run by `uphold run`,
//! HTTP backends and clients on loopback, SIGHUP reload with a client connection open
//! across it, `uphold balance drain`, `uphold status` and the metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};
use uphold_testkit::child::KilledOnDrop;
use uphold_testkit::http_backend::Backend;
use uphold_testkit::loopback::{free_port, wait_for};

mod common;
use common::uphold;

/// A keep-alive client connection speaking just enough HTTP/1.1.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    fn get(&mut self) -> Result<String, String> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        self.reader
            .read_line(&mut status)
            .map_err(|e| e.to_string())?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("status {status:?}"));
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).map_err(|e| e.to_string())?;
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| "bad length".to_string())?;
            }
        }
        let mut body = vec![0u8; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&body).to_string())
    }
}

fn get(port: u16) -> String {
    Client::connect(port).get().unwrap()
}

fn config(api: u16, admin: &std::path::Path, port: u16, servers: &[(&str, u16)]) -> String {
    let admin = admin.display();
    let mut text = format!(
        "[balancer]\nthreads = 1\napi = \"127.0.0.1:{api}\"\nadmin_socket = \"{admin}\"\n\n[[balance]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\nmode = \"http\"\n[balance.check]\ntype = \"http\"\ninterval = \"100ms\"\n"
    );
    for (name, p) in servers {
        text.push_str(&format!(
            "[[balance.server]]\nname = \"{name}\"\naddress = \"127.0.0.1:{p}\"\n"
        ));
    }
    text
}

fn run_cli(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = uphold()
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn balancer_only_daemon_reloads_drains_and_reports() {
    // The backends run on a runtime of their own while this test blocks.
    let backends = tokio::runtime::Runtime::new().unwrap();
    let (server_a, server_b) =
        backends.block_on(async { (Backend::http("a").await, Backend::http("b").await) });
    let (a, b) = (server_a.addr.port(), server_b.addr.port());
    let (api, port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uphold.toml");
    let admin = dir.path().join("admin.sock");
    std::fs::write(&path, config(api, &admin, port, &[("a", a)])).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let daemon = KilledOnDrop(
        uphold()
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("the balancer to serve", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok().and_then(|s| {
            drop(s);
            Client::connect(port).get().ok()
        }) == Some("a".to_string())
    });
    // A client keeps its connection through the reload.
    let mut kept = Client::connect(port);
    assert_eq!(kept.get().unwrap(), "a");
    std::fs::write(&path, config(api, &admin, port, &[("a", a), ("b", b)])).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(
        "b to get requests after the reload",
        Duration::from_secs(10),
        || get(port) == "b",
    );
    for _ in 0..10 {
        let answer = kept
            .get()
            .expect("the connection open across the reload failed");
        assert!(answer == "a" || answer == "b");
    }
    let (ok, text) = run_cli(&["balance", "drain", "a"], &path);
    assert!(ok && text.contains("web/a: draining"), "{text}");
    for _ in 0..10 {
        assert_eq!(get(port), "b");
    }
    let (ok, text) = run_cli(&["status"], &path);
    assert!(ok, "{text}");
    assert!(text.contains("balance web (http 127.0.0.1:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with('a') && l.contains("drain")),
        "{text}"
    );
    let (ok, text) = run_cli(&["status", "--json"], &path);
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(ok);
    assert_eq!(doc["balance"]["frontends"][0]["servers"][1]["health"], "up");
    let (ok, text) = run_cli(&["balance", "enable", "web/nope"], &path);
    assert!(!ok && text.contains("no server \"nope\""), "{text}");
    let mut metrics = String::new();
    let mut s = TcpStream::connect(("127.0.0.1", api)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    s.read_to_string(&mut metrics).unwrap();
    assert!(
        metrics.contains("uphold_balance_requests_total{frontend=\"web\",server=\"b\"}"),
        "{metrics}"
    );
    // SIGTERM: a clean exit.
    let mut daemon = daemon;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            assert!(status.success(), "exit {status}");
            break;
        }
        assert!(Instant::now() < deadline, "uphold did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
