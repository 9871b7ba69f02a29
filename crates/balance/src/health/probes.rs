//! The network and process probes behind the check kinds: an HTTP request over a
//! fresh connection, an agent's one-line reply, a program's exit status.

use crate::engine::agent::{self, AgentReport};
use http_body_util::{BodyExt, Empty, Limited};
use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use uphold_config::balance::StatusMatch;

/// Bodies are read up to this for `expect_body`.
const MAX_CHECK_BODY: usize = 64 * 1024;

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
    expect: &StatusMatch,
    expect_body: Option<&str>,
) -> (bool, String) {
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return (false, format!("connect to {addr}: {e}")),
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io).await {
            Ok(pair) => pair,
            Err(e) => return (false, format!("http: {e}")),
        };
    let conn = tokio::spawn(conn);
    let host = host.map(str::to_string).unwrap_or_else(|| addr.to_string());
    let req = match http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "uphold-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new())
    {
        Ok(r) => r,
        Err(e) => return (false, format!("http: cannot build the request: {e}")),
    };
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = resp.status().as_u16();
        if !expect.matches(status) {
            return Err(format!("http status {status}"));
        }
        if let Some(want) = expect_body {
            let body = Limited::new(resp.into_body(), MAX_CHECK_BODY)
                .collect()
                .await
                .map_err(|e| format!("http body: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            if !text.contains(want) {
                return Err(format!("http status {status}, body without {want:?}"));
            }
        }
        Ok(format!("http status {status}"))
    }
    .await;
    conn.abort();
    match result {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    }
}

/// Reads the agent's one line (it closes the connection or ends the line).
pub async fn agent(addr: SocketAddr) -> Result<AgentReport, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("agent connect to {addr}: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("agent read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() > 512 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("");
    agent::parse(line)
}

/// Runs the program (no shell) with the server in its environment; exit 0 is up.
/// It runs as every command uphold runs ([`uphold_os::exec::run`]): in a process
/// group of its own, killed as a whole at `timeout` (a check that forks leaves
/// no orphans), its output kept only as a bounded tail.
pub async fn exec(
    command: &[String],
    user: Option<&str>,
    (server, addr): (&str, SocketAddr),
    timeout: std::time::Duration,
) -> (bool, String) {
    let env = [
        ("UPHOLD_SERVER_NAME".to_string(), server.to_string()),
        ("UPHOLD_SERVER_ADDRESS".to_string(), addr.ip().to_string()),
        ("UPHOLD_SERVER_PORT".to_string(), addr.port().to_string()),
    ];
    match uphold_os::exec::run_as(command, timeout, &env, user).await {
        Ok(outcome) if outcome.success() => (true, "exit 0".into()),
        Ok(outcome) => (false, outcome.summary()),
        Err(e) => (false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Gone, or a zombie waiting for init: not running any more.
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        }
    }

    #[tokio::test]
    async fn a_check_that_forks_leaves_no_process_behind_on_timeout() {
        // Once, only the direct child was killed: 92 orphans after 90 s.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let command = vec!["sh".to_string(), "-c".to_string(), script];
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (up, why) = exec(&command, None, ("a", addr), Duration::from_millis(300)).await;
        assert!(!up);
        assert!(why.contains("timed out"), "{why}");
        let orphan: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        uphold_testkit::loopback::wait_until(
            "the check's background process to die",
            Duration::from_secs(5),
            || is_dead(orphan),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_check_sees_the_server_and_reports_its_last_output_line() {
        let command = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo \"$UPHOLD_SERVER_NAME $UPHOLD_SERVER_ADDRESS $UPHOLD_SERVER_PORT\"; exit 2"
                .to_string(),
        ];
        let addr: SocketAddr = "127.0.0.7:8080".parse().unwrap();
        let (up, why) = exec(&command, None, ("web1", addr), Duration::from_secs(5)).await;
        assert!(!up);
        assert!(why.ends_with("web1 127.0.0.7 8080"), "{why}");
        assert!(why.contains("code 2"), "{why}");
    }
}
