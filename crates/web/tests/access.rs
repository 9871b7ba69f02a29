//! Who can change what through the local API, against the real listeners: the
//! read-only TCP side refuses commands, browsers and rebinding names; the admin
//! socket takes commands from its owner and root, and an unprivileged user is
//! refused by the socket's mode and by the credential check behind it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Api {
    listen: SocketAddr,
    commands: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listen: SocketAddr = format!("127.0.0.1:{}", uphold_testkit::loopback::free_port())
            .parse()
            .unwrap();
        let commands = Arc::new(AtomicUsize::new(0));
        let counted = commands.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime
                .block_on(uphold_web::serve(
                    listen,
                    &path,
                    Arc::new(|| Some(serde_json::json!({"ok": true}))),
                    Arc::new(String::new),
                    Some(Arc::new(move |command: &str, _body: &str| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Ok(format!("did {command}"))
                    })),
                    async move {
                        let _ = stopped.await;
                    },
                ))
                .unwrap();
        });
        uphold_testkit::loopback::wait_until("the API to listen", Duration::from_secs(10), || {
            TcpStream::connect(listen).is_ok() && socket.exists()
        })
        .unwrap();
        Api {
            listen,
            commands,
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn tcp(&self, request: &str) -> (u16, String) {
        exchange(TcpStream::connect(self.listen).unwrap(), request)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn exchange(mut stream: impl Read + Write, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn post(host: &str, extra: &str) -> String {
    format!(
        "POST /v1/balance/disable HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nweb/a"
    )
}

#[test]
fn the_tcp_api_only_reads_and_only_for_local_programs() {
    let api = Api::start();
    let host = api.listen.to_string();
    let get = |host: &str, extra: &str| {
        api.tcp(&format!(
            "GET /v1/status HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        ))
    };
    assert_eq!(get(&host, "").0, 200);
    assert_eq!(get("localhost", "").0, 200);
    // DNS rebinding: an attacker's name that resolves to 127.0.0.1.
    let (code, body) = get("rebind.example:7401", "");
    assert_eq!(code, 421, "{body}");
    // A page in a browser on this host, cross-origin (a "simple" text/plain POST
    // needs no preflight) and a same-looking GET.
    let (code, body) = api.tcp(&post(&host, "Origin: http://evil.example\r\n"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("web pages"), "{body}");
    assert_eq!(get(&host, "Origin: http://evil.example\r\n").0, 403);
    // Even a local program cannot send commands over TCP.
    let (code, body) = api.tcp(&post(&host, ""));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(&api.socket.display().to_string()), "{body}");
    assert_eq!(api.commands.load(Ordering::SeqCst), 0);
}

#[test]
fn the_admin_socket_takes_commands_from_its_owner_only() {
    let api = Api::start();
    let (code, body) = exchange(
        UnixStream::connect(&api.socket).unwrap(),
        &post("localhost", ""),
    );
    assert_eq!((code, body.as_str()), (200, "did balance/disable\n"));
    assert_eq!(api.commands.load(Ordering::SeqCst), 1);
    let mode = std::fs::metadata(&api.socket).unwrap().permissions().mode() & 0o777;
    assert!(mode == 0o600 || mode == 0o660, "socket mode {mode:o}");

    let test = "the_admin_socket_takes_commands_from_its_owner_only (as nobody)";
    if !uphold_testkit::require_root(test) || !uphold_testkit::require_program(test, "curl") {
        return;
    }
    // nobody may reach the directory; the socket itself is what keeps it out.
    std::fs::set_permissions(
        api.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The socket's mode keeps `nobody` out at connect.
    assert_eq!(as_nobody(&api.socket), "000");
    // With the mode loosened by mistake, the credential check still refuses.
    std::fs::set_permissions(&api.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(as_nobody(&api.socket), "403");
    assert_eq!(api.commands.load(Ordering::SeqCst), 1);
}

/// Sends the command with curl running as `nobody` (uid and gid 65534) and
/// returns the HTTP status it got, "000" when it could not even connect.
fn as_nobody(socket: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("curl")
        .uid(65534)
        .gid(65534)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("--unix-socket")
        .arg(socket)
        .args([
            "-X",
            "POST",
            "--data",
            "web/a",
            "http://localhost/v1/balance/disable",
        ])
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
