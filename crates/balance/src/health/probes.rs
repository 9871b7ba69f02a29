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
pub async fn exec(command: &[String], server: &str, addr: SocketAddr) -> (bool, String) {
    let Some((program, args)) = command.split_first() else {
        return (false, "empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("UPHOLD_SERVER_NAME", server)
        .env("UPHOLD_SERVER_ADDRESS", addr.ip().to_string())
        .env("UPHOLD_SERVER_PORT", addr.port().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {program}: {e}")),
    };
    match child.wait_with_output().await {
        Ok(out) if out.status.success() => (true, "exit 0".into()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            (
                false,
                format!(
                    "{}{}{}",
                    out.status,
                    if first.is_empty() { "" } else { ": " },
                    first
                ),
            )
        }
        Err(e) => (false, format!("{program}: {e}")),
    }
}
