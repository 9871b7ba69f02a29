//! `uphold status`: ask the local daemon's API and print the cluster picture.

use crate::check::print_config_errors;
use crate::cli::StatusArgs;
use crate::EXIT_CONFIG;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;
use uphold_cluster::runtime::status::ClusterStatus;

/// Responses larger than this are not a status document.
const MAX_RESPONSE: u64 = 4 << 20;

pub fn main(args: StatusArgs) -> ExitCode {
    let loaded = match uphold_config::load(&args.select.config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_config_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (who, api) = match local_api(&loaded.config, args.select.node.as_deref()) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {}: {e}", args.select.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match fetch_document(api) {
        Ok(doc) => {
            if args.json {
                match serde_json::to_string_pretty(&doc) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                match render(&doc) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("error: unreadable status document: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot get status from {who} at {api}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which daemon to ask and where: this member's API, or the `[balancer]` API of a
/// file without `[cluster]`.
pub fn local_api(
    config: &uphold_config::Config,
    node: Option<&str>,
) -> Result<(String, SocketAddr), String> {
    local_endpoints(config, node).map(|(who, api, _)| (who, api))
}

/// Who the local daemon is, its read-only API and its admin socket.
pub fn local_endpoints(
    config: &uphold_config::Config,
    node: Option<&str>,
) -> Result<(String, SocketAddr, std::path::PathBuf), String> {
    match &config.cluster {
        Some(cluster) => {
            let me = uphold_config::select_member(cluster, node).map_err(|e| e.to_string())?;
            Ok((
                me.name.to_string(),
                me.api,
                cluster.admin_socket_for(&me.name),
            ))
        }
        None if !config.balance.is_empty() => Ok((
            "the balancer".to_string(),
            config.balancer.api,
            config.balancer.admin_socket.clone(),
        )),
        None => Err("no [cluster] and no [[balance]] section".to_string()),
    }
}

/// The whole status document of the local daemon: the cluster's fields at the top
/// level (when it runs groups), `sync` when sets are configured.
pub fn fetch_document(api: SocketAddr) -> Result<serde_json::Value, String> {
    let body = http_get(api, "/v1/status")?;
    serde_json::from_slice(&body).map_err(|e| format!("unreadable status document: {e}"))
}

/// The cluster part of the local daemon's status.
pub fn fetch_status(api: SocketAddr) -> Result<ClusterStatus, String> {
    let doc = fetch_document(api)?;
    if doc.get("cluster").is_none() {
        return Err("this member runs no groups (no cluster status)".into());
    }
    serde_json::from_value(doc).map_err(|e| format!("unreadable status document: {e}"))
}

fn render(doc: &serde_json::Value) -> Result<String, String> {
    let mut out = String::new();
    if doc.get("cluster").is_some() {
        let cluster: ClusterStatus =
            serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        out.push_str(&cluster.render());
    }
    if let Some(sync) = doc.get("sync") {
        let sync: uphold_sync::status::SyncStatus =
            serde_json::from_value(sync.clone()).map_err(|e| e.to_string())?;
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&sync.render());
    }
    if let Some(balance) = doc.get("balance") {
        let balance: uphold_balance::BalanceStatus =
            serde_json::from_value(balance.clone()).map_err(|e| e.to_string())?;
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&balance.render());
    }
    Ok(out)
}

pub fn http_get(api: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    http_request(api, "GET", path, "")
}

/// One request to the local API; the body of a 200 answer, else the API's own words.
pub fn http_request(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Vec<u8>, String> {
    let stream = TcpStream::connect_timeout(&api, API_TIMEOUT)
        .map_err(|e| format!("is `uphold run` running? ({e})"))?;
    stream
        .set_read_timeout(Some(API_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(API_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    exchange(stream, &api.to_string(), method, path, body)
}

/// One command to the daemon's admin socket (root and the `uphold` group).
pub fn admin_request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Vec<u8>, String> {
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            "commands need root or the uphold group"
        } else {
            "is `uphold run` running?"
        };
        format!("admin socket {}: {e} ({hint})", socket.display())
    })?;
    stream
        .set_read_timeout(Some(API_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(API_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    exchange(stream, "localhost", method, path, body)
}

const API_TIMEOUT: Duration = Duration::from_secs(3);

fn exchange(
    mut stream: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Vec<u8>, String> {
    // One write: a request split over several segments can be half-read by a
    // simple server, which then resets the connection.
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        let text = String::from_utf8_lossy(&response[split + 4..])
            .trim()
            .to_string();
        if text.is_empty() {
            return Err(format!("API answered {status_line:?}"));
        }
        return Err(text);
    }
    Ok(response[split + 4..].to_vec())
}
