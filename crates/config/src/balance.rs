//! The `[[balance]]` role and the process-wide `[balancer]` table: their file structs,
//! typed forms and validation. A frontend listens on an address and a port or a port
//! range and spreads connections (tcp) or requests (http) over its servers, which are
//! health-checked.

use crate::file::{Argv, DurationText};
use crate::locate::KeyPath;
use crate::validate::{argv, duration, Ctx};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A password file holds one password; anything larger is a wrong path.
const MAX_PASSWORD_FILE_BYTES: usize = 64 * 1024;

pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;
pub(crate) const DEFAULT_RETRIES: u32 = 2;
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub(crate) const DEFAULT_QUEUE: u32 = 1_000;
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: u32 = 1_000;
pub(crate) const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
pub(crate) const MAX_WEIGHT: u32 = 256;
pub(crate) const DEFAULT_BALANCER_ADMIN_SOCKET: &str = "/run/uphold/admin.sock";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalancerFile {
    pub threads: Option<i64>,
    pub api: Option<String>,
    pub admin_socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceFile {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub mode: Option<String>,
    pub algorithm: Option<String>,
    pub cookie: Option<String>,
    pub freebind: Option<bool>,
    pub retries: Option<i64>,
    pub connect_timeout: Option<DurationText>,
    pub client_timeout: Option<DurationText>,
    pub server_timeout: Option<DurationText>,
    pub header_timeout: Option<DurationText>,
    pub max_connections: Option<i64>,
    pub max_connections_per_client: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<DurationText>,
    pub slowstart: Option<DurationText>,
    pub forwarded_for: Option<bool>,
    pub max_header_bytes: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub tls: Option<Vec<TlsFile>>,
    pub check: Option<CheckFile>,
    pub server: Option<Vec<ServerFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
    pub maxconn: Option<i64>,
    pub proxy_protocol: Option<String>,
}

/// An HTTP status in the file: `200`, `"2xx"` or `"200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StatusText {
    Code(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub port: Option<i64>,
    // http
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<StatusText>,
    pub expect_body: Option<String>,
    // mysql
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub require: Option<String>,
    pub max_lag: Option<DurationText>,
    // exec
    pub command: Option<Argv>,
}

/// Process-wide balancer settings (`[balancer]`).
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerSettings {
    /// Proxy worker threads; `None`: one per CPU.
    pub threads: Option<usize>,
    /// The local API of a file without `[cluster]` (with one, each member's `api`).
    pub api: SocketAddr,
    /// The admin socket of a file without `[cluster]` (with one, `admin.sock` in
    /// the member's state directory).
    pub admin_socket: PathBuf,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        BalancerSettings {
            threads: None,
            admin_socket: PathBuf::from(DEFAULT_BALANCER_ADMIN_SOCKET),
            api: crate::validate::DEFAULT_API
                .parse()
                .expect("default API address"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceMode {
    /// Whole connections go to one server; bytes are passed through.
    Tcp,
    /// Requests are spread one by one; server connections are pooled and reused.
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// Hash of the client address: a client keeps its server while the set is stable.
    Source,
    /// Two servers picked at random, the less loaded one used.
    Random,
}

/// The ports a frontend listens on: one, or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

/// Where a server takes the traffic of one listening port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerPort {
    /// The port the client connected to (port ranges).
    Same,
    /// Always this port.
    Fixed(u16),
    /// Port ranges: the listening range shifted so that its first port lands here.
    RangeStart(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    V1,
    V2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub ip: IpAddr,
    pub port: ServerPort,
    pub weight: u32,
    pub backup: bool,
    /// Concurrent connections at most; 0: no limit.
    pub maxconn: u32,
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl ServerConfig {
    /// The server's address for traffic that arrived on `listen_port` of a frontend
    /// whose range starts at `first`. Ports outside the mapping (a keep-alive
    /// connection on a port that a reload removed) saturate instead of wrapping;
    /// callers that can see such ports use [`ServerConfig::address_in`].
    pub fn address_for(&self, listen_port: u16, first: u16) -> SocketAddr {
        let port = match self.port {
            ServerPort::Same => listen_port,
            ServerPort::Fixed(p) => p,
            ServerPort::RangeStart(start) => {
                start.saturating_add(listen_port.saturating_sub(first))
            }
        };
        SocketAddr::new(self.ip, port)
    }

    /// The server's address for `listen_port`, or `None` when the frontend does not
    /// listen on that port (any more).
    pub fn address_in(&self, listen_port: u16, ports: PortRange) -> Option<SocketAddr> {
        (ports.first..=ports.last)
            .contains(&listen_port)
            .then(|| self.address_for(listen_port, ports.first))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    Range(u16, u16),
}

impl StatusMatch {
    pub fn matches(&self, code: u16) -> bool {
        match self {
            StatusMatch::Range(a, b) => (*a..=*b).contains(&code),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MysqlRequire {
    /// Writable (`read_only` off). Two writable servers at once: neither is used.
    Primary,
    /// Read-only, replication threads running, at most `max_lag` behind.
    Replica { max_lag: Duration },
    /// Logs in and answers.
    Any,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CheckKind {
    /// Only passive health: failed connects count against a server.
    None,
    Tcp,
    Http {
        method: String,
        path: String,
        host: Option<String>,
        expect_status: StatusMatch,
        expect_body: Option<String>,
    },
    Mysql {
        user: String,
        password: String,
        require: MysqlRequire,
    },
    /// The server's agent answers one line: `up`, `down`, `drain`, `maint`, `ready`
    /// and/or a weight like `50%`.
    Agent,
    /// A program; exit 0 is up. It gets UPHOLD_SERVER_NAME, _ADDRESS and _PORT.
    Exec {
        command: Vec<String>,
        /// Run as this system user instead of root.
        user: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a down server up.
    pub rise: u32,
    /// Failures in a row that take an up server down.
    pub fall: u32,
    /// Port to check instead of the server's (required for `agent`).
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BalanceConfig {
    pub name: String,
    pub ip: IpAddr,
    pub ports: PortRange,
    pub mode: BalanceMode,
    pub algorithm: Algorithm,
    /// http: name of the persistence cookie set on responses; off when `None`.
    pub cookie: Option<String>,
    /// Bind even when the address is not (yet) on this machine.
    pub freebind: bool,
    /// Other servers tried after a failed connect.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Client idle (and keep-alive) limit.
    pub client_timeout: Duration,
    /// Server inactivity limit while a response is awaited or streamed.
    pub server_timeout: Duration,
    /// http: the whole request head must arrive within this.
    pub header_timeout: Duration,
    pub max_connections: u32,
    /// Connections one client address may hold open at once.
    pub max_connections_per_client: u32,
    /// Connections or requests that may wait for a server slot.
    pub queue: u32,
    pub queue_timeout: Duration,
    /// A recovered server's weight grows from 0 to full over this; zero: at once.
    pub slowstart: Duration,
    /// http: add X-Forwarded-For and X-Forwarded-Proto.
    pub forwarded_for: bool,
    /// http: the largest request body passed on; larger ones get 413.
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// http: terminate TLS with these certificates (SNI picks; the first is the default).
    pub tls: Vec<TlsCert>,
    pub check: CheckConfig,
    pub servers: Vec<ServerConfig>,
}

impl BalanceConfig {
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }
}

pub(crate) fn validate_balancer(ctx: &mut Ctx<'_>, file: Option<BalancerFile>) -> BalancerSettings {
    let file = file.unwrap_or_default();
    let path = KeyPath::root().key("balancer");
    let threads = match file.threads {
        None => None,
        Some(n) if (1..=256).contains(&n) => Some(n as usize),
        Some(n) => {
            ctx.error(
                &path.key("threads"),
                format!("[balancer] threads = {n}: must be between 1 and 256 (leave it out for one per CPU)"),
            );
            None
        }
    };
    let api = match &file.api {
        None => BalancerSettings::default().api,
        Some(text) => match crate::validate::socket_addr(text) {
            Ok(a) if a.ip().is_loopback() => a,
            Ok(_) => {
                ctx.error(
                    &path.key("api"),
                    format!("[balancer] api {text:?} is not a loopback address; the HTTP API is read-only and unauthenticated, so it listens on 127.0.0.0/8 or ::1 only"),
                );
                BalancerSettings::default().api
            }
            Err(why) => {
                ctx.error(
                    &path.key("api"),
                    format!("[balancer] invalid api address {text:?}: {why}"),
                );
                BalancerSettings::default().api
            }
        },
    };
    let admin_socket = match &file.admin_socket {
        None => PathBuf::from(DEFAULT_BALANCER_ADMIN_SOCKET),
        Some(text) => {
            if let Err(why) = crate::validate::admin_socket_path(Path::new(text)) {
                ctx.error(
                    &path.key("admin_socket"),
                    format!("[balancer] admin_socket {text:?}: {why}"),
                );
            }
            PathBuf::from(text)
        }
    };
    BalancerSettings {
        threads,
        api,
        admin_socket,
    }
}

pub(crate) fn validate_balance(
    ctx: &mut Ctx<'_>,
    frontends: Vec<BalanceFile>,
) -> Vec<BalanceConfig> {
    let list = KeyPath::root().key("balance");
    let mut out: Vec<BalanceConfig> = Vec::new();
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    let mut ports: Vec<(IpAddr, PortRange, String)> = Vec::new();
    for (i, f) in frontends.into_iter().enumerate() {
        let p = list.index(i);
        let who = match &f.name {
            Some(n) => format!("balance {n:?}"),
            None => format!("balance frontend {}", i + 1),
        };
        let name = match &f.name {
            None => {
                ctx.error(
                    &p.key("name"),
                    format!("{who} is missing the required key `name` (e.g. name = \"web\")"),
                );
                None
            }
            Some(n) if !valid_name(n) => {
                ctx.error(
                    &p.key("name"),
                    format!(
                        "invalid balance name {n:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                    ),
                );
                None
            }
            Some(n) => {
                if let Some(first) = names.get(n) {
                    let place = ctx.place(first);
                    ctx.error(
                        &p.key("name"),
                        format!("balance name {n:?} is used twice (first at {place})"),
                    );
                    None
                } else {
                    names.insert(n.clone(), p.key("name"));
                    Some(n.clone())
                }
            }
        };
        let listen = match &f.listen {
            None => {
                ctx.error(
                    &p.key("listen"),
                    format!("{who} is missing the required key `listen`, e.g. listen = \"0.0.0.0:80\" or \"10.0.0.5:8000-8099\""),
                );
                None
            }
            Some(text) => match listen_spec(text) {
                Ok(l) => Some(l),
                Err(e) => {
                    ctx.error(&p.key("listen"), format!("{who}: listen {text:?}: {e}"));
                    None
                }
            },
        };
        if let Some((ip, range)) = listen {
            for (other_ip, other, other_name) in &ports {
                let same_ip = *other_ip == ip || other_ip.is_unspecified() || ip.is_unspecified();
                if same_ip && range.first <= other.last && other.first <= range.last {
                    ctx.error(
                        &p.key("listen"),
                        format!("{who}: its ports overlap those of balance {other_name:?}"),
                    );
                }
            }
            ports.push((ip, range, f.name.clone().unwrap_or_default()));
        }
        let mode = match f.mode.as_deref() {
            None | Some("tcp") => Some(BalanceMode::Tcp),
            Some("http") => Some(BalanceMode::Http),
            Some(other) => {
                ctx.error(
                    &p.key("mode"),
                    format!("{who}: unknown mode {other:?}; use \"tcp\" (default) or \"http\""),
                );
                None
            }
        };
        let algorithm = match f.algorithm.as_deref() {
            None | Some("roundrobin") => Some(Algorithm::RoundRobin),
            Some("leastconn") => Some(Algorithm::LeastConn),
            Some("source") => Some(Algorithm::Source),
            Some("random") => Some(Algorithm::Random),
            Some(other) => {
                ctx.error(
                    &p.key("algorithm"),
                    format!("{who}: unknown algorithm {other:?}; use \"roundrobin\" (default), \"leastconn\", \"source\" or \"random\""),
                );
                None
            }
        };
        let is_http = mode == Some(BalanceMode::Http);
        if let Some(cookie) = &f.cookie {
            if !is_http {
                ctx.error(
                    &p.key("cookie"),
                    format!("{who}: cookie persistence needs mode = \"http\""),
                );
            } else if cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                ctx.error(
                    &p.key("cookie"),
                    format!(
                        "{who}: cookie name {cookie:?} must be letters, digits, '-', '_' or '.'"
                    ),
                );
            }
        }
        if f.forwarded_for.is_some() && !is_http {
            ctx.error(
                &p.key("forwarded_for"),
                format!("{who}: forwarded_for is for mode = \"http\"; in tcp mode use proxy_protocol on the servers"),
            );
        }
        let tls = tls_certs(ctx, &p, &who, f.tls.unwrap_or_default(), is_http);
        let retries = bounded(
            ctx,
            &p.key("retries"),
            &who,
            "retries",
            f.retries,
            DEFAULT_RETRIES as i64,
            0,
            10,
        );
        let max_connections = bounded(
            ctx,
            &p.key("max_connections"),
            &who,
            "max_connections",
            f.max_connections,
            DEFAULT_MAX_CONNECTIONS as i64,
            1,
            10_000_000,
        );
        let max_body = bounded(
            ctx,
            &p.key("max_body_bytes"),
            &who,
            "max_body_bytes",
            f.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES as i64,
            1,
            1 << 50,
        );
        let per_client = bounded(
            ctx,
            &p.key("max_connections_per_client"),
            &who,
            "max_connections_per_client",
            f.max_connections_per_client,
            DEFAULT_MAX_CONNECTIONS_PER_CLIENT as i64,
            1,
            10_000_000,
        );
        let queue = bounded(
            ctx,
            &p.key("queue"),
            &who,
            "queue",
            f.queue,
            DEFAULT_QUEUE as i64,
            0,
            10_000_000,
        );
        let max_header_bytes = bounded(
            ctx,
            &p.key("max_header_bytes"),
            &who,
            "max_header_bytes",
            f.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as i64,
            8192,
            1024 * 1024,
        );
        let connect_timeout = duration(
            ctx,
            &p.key("connect_timeout"),
            f.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let client_timeout = duration(
            ctx,
            &p.key("client_timeout"),
            f.client_timeout.as_ref(),
            DEFAULT_CLIENT_TIMEOUT,
        );
        let server_timeout = duration(
            ctx,
            &p.key("server_timeout"),
            f.server_timeout.as_ref(),
            DEFAULT_SERVER_TIMEOUT,
        );
        let header_timeout = duration(
            ctx,
            &p.key("header_timeout"),
            f.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        );
        let queue_timeout = duration(
            ctx,
            &p.key("queue_timeout"),
            f.queue_timeout.as_ref(),
            DEFAULT_QUEUE_TIMEOUT,
        );
        let slowstart = match &f.slowstart {
            Some(DurationText(t)) if t.trim() == "0" || t.trim() == "0s" => Some(Duration::ZERO),
            other => duration(ctx, &p.key("slowstart"), other.as_ref(), Duration::ZERO),
        };
        let check = check_config(ctx, &p.key("check"), &who, f.check);
        let servers = servers(
            ctx,
            &p,
            &who,
            f.server.unwrap_or_default(),
            listen.map(|l| l.1),
        );
        if let (
            Some(CheckConfig {
                kind: CheckKind::Agent,
                port: None,
                ..
            }),
            _,
        ) = (&check, ())
        {
            ctx.error(
                &p.key("check").key("port"),
                format!(
                    "{who}: an agent check needs `port`, the port the servers' agents listen on"
                ),
            );
        }
        let (Some(name), Some((ip, ports)), Some(mode), Some(algorithm), Some(tls)) =
            (name, listen, mode, algorithm, tls)
        else {
            continue;
        };
        let (Some(retries), Some(max_connections), Some(queue), Some(max_header_bytes)) =
            (retries, max_connections, queue, max_header_bytes)
        else {
            continue;
        };
        let (Some(per_client), Some(max_body)) = (per_client, max_body) else {
            continue;
        };
        let (
            Some(connect_timeout),
            Some(client_timeout),
            Some(server_timeout),
            Some(header_timeout),
            Some(queue_timeout),
            Some(slowstart),
        ) = (
            connect_timeout,
            client_timeout,
            server_timeout,
            header_timeout,
            queue_timeout,
            slowstart,
        )
        else {
            continue;
        };
        let (Some(check), Some(servers)) = (check, servers) else {
            continue;
        };
        if mode == BalanceMode::Http {
            if let Some(i) = servers.iter().position(|s| s.proxy_protocol.is_some()) {
                ctx.error(
                    &p.key("server").index(i).key("proxy_protocol"),
                    format!("{who}: proxy_protocol is for mode = \"tcp\"; in http mode servers get X-Forwarded-For"),
                );
                continue;
            }
        }
        out.push(BalanceConfig {
            name,
            ip,
            ports,
            mode,
            algorithm,
            cookie: if is_http { f.cookie } else { None },
            freebind: f.freebind.unwrap_or(false),
            retries: retries as u32,
            connect_timeout,
            client_timeout,
            server_timeout,
            header_timeout,
            max_connections: max_connections as u32,
            max_connections_per_client: per_client as u32,
            queue: queue as u32,
            queue_timeout,
            slowstart,
            forwarded_for: f.forwarded_for.unwrap_or(is_http),
            max_header_bytes: max_header_bytes as usize,
            max_body_bytes: max_body as u64,
            tls,
            check,
            servers,
        });
    }
    out
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[allow(clippy::too_many_arguments)]
fn bounded(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    key: &str,
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    match value {
        None => Some(default),
        Some(v) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            ctx.error(
                path,
                format!("{who}: {key} = {v} is out of range ({min} to {max})"),
            );
            None
        }
    }
}

/// `IP:PORT` or `IP:FIRST-LAST`; IPv6 in brackets.
fn listen_spec(text: &str) -> Result<(IpAddr, PortRange), String> {
    let (host, ports) = split_host_port(text)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{host:?} is not an IP address (use 0.0.0.0 or [::] for every address)")
    })?;
    let Some(ports) = ports else {
        return Err("missing port; write ip:port or ip:first-last, e.g. \"0.0.0.0:80\"".into());
    };
    Ok((ip, port_range(ports)?))
}

fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".into());
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    if text.matches(':').count() > 1 {
        if text.parse::<IpAddr>().is_ok() {
            return Ok((text, None));
        }
        return Err("IPv6 addresses with a port need brackets, e.g. \"[2001:db8::1]:80\"".into());
    }
    match text.split_once(':') {
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((text, None)),
    }
}

fn port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u16>() {
        Ok(0) => Err("port must not be 0".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{text:?} is not a port (1-65535)")),
    }
}

fn port_range(text: &str) -> Result<PortRange, String> {
    match text.split_once('-') {
        None => {
            let p = port(text)?;
            Ok(PortRange { first: p, last: p })
        }
        Some((a, b)) => {
            let (first, last) = (port(a)?, port(b)?);
            if last < first {
                return Err(format!("port range {first}-{last} runs backwards"));
            }
            Ok(PortRange { first, last })
        }
    }
}

fn tls_certs(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    list: Vec<TlsFile>,
    is_http: bool,
) -> Option<Vec<TlsCert>> {
    if !list.is_empty() && !is_http {
        ctx.error(
            &p.key("tls"),
            format!("{who}: TLS termination needs mode = \"http\" (in tcp mode the servers' TLS passes through untouched)"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, t) in list.into_iter().enumerate() {
        let tp = p.key("tls").index(i);
        let mut file = |key: &str, v: Option<String>| -> Option<PathBuf> {
            match v {
                None => {
                    ctx.error(
                        &tp.key(key),
                        format!("{who}: tls entry {} is missing `{key}` (a PEM file)", i + 1),
                    );
                    None
                }
                Some(v) if !v.starts_with('/') => {
                    ctx.error(
                        &tp.key(key),
                        format!("{who}: {key} path {v:?} must be absolute"),
                    );
                    None
                }
                Some(v) => Some(PathBuf::from(v)),
            }
        };
        match (file("cert", t.cert), file("key", t.key)) {
            (Some(cert), Some(key)) => out.push(TlsCert { cert, key }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn servers(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    list: Vec<ServerFile>,
    listen: Option<PortRange>,
) -> Option<Vec<ServerConfig>> {
    if list.is_empty() {
        ctx.error(
            &p.key("server"),
            format!(
                "{who} has no servers; add at least one [[balance.server]] with name and address"
            ),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    let mut names: HashMap<String, KeyPath> = HashMap::new();
    for (i, s) in list.into_iter().enumerate() {
        let sp = p.key("server").index(i);
        let swho = match &s.name {
            Some(n) => format!("{who} server {n:?}"),
            None => format!("{who} server {}", i + 1),
        };
        let name = match s.name {
            None => {
                ctx.error(
                    &sp.key("name"),
                    format!("{swho} is missing the required key `name`"),
                );
                None
            }
            Some(n) if !valid_name(&n) => {
                ctx.error(
                    &sp.key("name"),
                    format!(
                        "invalid server name {n:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
                    ),
                );
                None
            }
            Some(n) => {
                if let Some(first) = names.get(&n) {
                    let place = ctx.place(first);
                    ctx.error(
                        &sp.key("name"),
                        format!("{swho}: the name is used twice (first at {place})"),
                    );
                    None
                } else {
                    names.insert(n.clone(), sp.key("name"));
                    Some(n)
                }
            }
        };
        let address = match &s.address {
            None => {
                ctx.error(
                    &sp.key("address"),
                    format!("{swho} is missing the required key `address`, e.g. address = \"10.0.0.11:80\""),
                );
                None
            }
            Some(text) => match server_address(text, listen) {
                Ok(a) => Some(a),
                Err(e) => {
                    ctx.error(&sp.key("address"), format!("{swho}: address {text:?}: {e}"));
                    None
                }
            },
        };
        let weight = bounded(
            ctx,
            &sp.key("weight"),
            &swho,
            "weight",
            s.weight,
            1,
            0,
            MAX_WEIGHT as i64,
        );
        let maxconn = bounded(
            ctx,
            &sp.key("maxconn"),
            &swho,
            "maxconn",
            s.maxconn,
            0,
            0,
            10_000_000,
        );
        let proxy_protocol = match s.proxy_protocol.as_deref() {
            None => Some(None),
            Some("v1") => Some(Some(ProxyProtocol::V1)),
            Some("v2") => Some(Some(ProxyProtocol::V2)),
            Some(other) => {
                ctx.error(
                    &sp.key("proxy_protocol"),
                    format!("{swho}: unknown proxy_protocol {other:?}; use \"v1\" or \"v2\""),
                );
                None
            }
        };
        match (name, address, weight, maxconn, proxy_protocol) {
            (Some(name), Some((ip, port)), Some(weight), Some(maxconn), Some(proxy_protocol)) => {
                out.push(ServerConfig {
                    name,
                    ip,
                    port,
                    weight: weight as u32,
                    backup: s.backup.unwrap_or(false),
                    maxconn: maxconn as u32,
                    proxy_protocol,
                })
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn server_address(text: &str, listen: Option<PortRange>) -> Result<(IpAddr, ServerPort), String> {
    let (host, ports) = split_host_port(text)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{host:?} is not an IP address (host names are not resolved)"))?;
    let is_range = listen.is_some_and(|l| l.len() > 1);
    match ports {
        None if is_range => Ok((ip, ServerPort::Same)),
        None => Err("missing port; write ip:port (only a frontend with a port range may leave it out: the client's port is kept)".into()),
        Some(p) => {
            let range = port_range(p)?;
            if range.len() == 1 {
                return Ok((ip, ServerPort::Fixed(range.first)));
            }
            match listen {
                Some(l) if l.len() == range.len() => Ok((ip, ServerPort::RangeStart(range.first))),
                Some(l) if l.len() > 1 => Err(format!(
                    "the range has {} ports but the frontend listens on {}; give a range of the same size, one port, or none",
                    range.len(),
                    l.len()
                )),
                _ => Err("a port range needs a frontend that listens on a port range".into()),
            }
        }
    }
}

fn check_config(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    file: Option<CheckFile>,
) -> Option<CheckConfig> {
    let Some(c) = file else {
        return Some(CheckConfig {
            kind: CheckKind::Tcp,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
        });
    };
    let kind_name = c.kind.as_deref().unwrap_or("tcp");
    let misplaced = |key: &str, present: bool, ctx: &mut Ctx<'_>| {
        if present {
            ctx.error(
                &p.key(key),
                format!("{who}: `{key}` does not apply to a check of type {kind_name:?}"),
            );
        }
    };
    let is = |k: &str| kind_name == k;
    misplaced("method", c.method.is_some() && !is("http"), ctx);
    misplaced("path", c.path.is_some() && !is("http"), ctx);
    misplaced("host", c.host.is_some() && !is("http"), ctx);
    misplaced(
        "expect_status",
        c.expect_status.is_some() && !is("http"),
        ctx,
    );
    misplaced("expect_body", c.expect_body.is_some() && !is("http"), ctx);
    misplaced("user", c.user.is_some() && !is("mysql") && !is("exec"), ctx);
    misplaced("password", c.password.is_some() && !is("mysql"), ctx);
    misplaced(
        "password_file",
        c.password_file.is_some() && !is("mysql"),
        ctx,
    );
    misplaced("require", c.require.is_some() && !is("mysql"), ctx);
    misplaced("max_lag", c.max_lag.is_some() && !is("mysql"), ctx);
    misplaced("command", c.command.is_some() && !is("exec"), ctx);
    let kind = match kind_name {
        "none" => Some(CheckKind::None),
        "tcp" => Some(CheckKind::Tcp),
        "http" => http_check(ctx, p, who, &c),
        "mysql" => mysql_check(ctx, p, who, &c),
        "agent" => Some(CheckKind::Agent),
        "exec" => {
            let command = argv(ctx, &p.key("command"), who, "command", c.command, true);
            let user = crate::validate::system_user(ctx, &p.key("user"), who, c.user.clone());
            match (command, user) {
                (Some(Some(command)), Some(user)) => Some(CheckKind::Exec { command, user }),
                _ => None,
            }
        }
        other => {
            ctx.error(
                &p.key("type"),
                format!("{who}: unknown check type {other:?}; use \"tcp\" (default), \"http\", \"mysql\", \"agent\", \"exec\" or \"none\""),
            );
            None
        }
    };
    let interval = duration(
        ctx,
        &p.key("interval"),
        c.interval.as_ref(),
        DEFAULT_CHECK_INTERVAL,
    );
    // Unless set, a check may take up to its interval (at most the default timeout).
    let default_timeout = interval.map_or(DEFAULT_CHECK_TIMEOUT, |i| i.min(DEFAULT_CHECK_TIMEOUT));
    let timeout = duration(ctx, &p.key("timeout"), c.timeout.as_ref(), default_timeout);
    let rise = bounded(
        ctx,
        &p.key("rise"),
        who,
        "check rise",
        c.rise,
        DEFAULT_RISE as i64,
        1,
        100,
    );
    let fall = bounded(
        ctx,
        &p.key("fall"),
        who,
        "check fall",
        c.fall,
        DEFAULT_FALL as i64,
        1,
        100,
    );
    let port = match c.port {
        None => Some(None),
        Some(n) if (1..=65535).contains(&n) => Some(Some(n as u16)),
        Some(n) => {
            ctx.error(
                &p.key("port"),
                format!("{who}: check port {n} is not a port (1-65535)"),
            );
            None
        }
    };
    if let (Some(i), Some(t)) = (interval, timeout) {
        if t > i {
            ctx.warn(
                &p.key("timeout"),
                format!("{who}: the check timeout is longer than its interval; checks will run back to back"),
            );
        }
    }
    Some(CheckConfig {
        kind: kind?,
        interval: interval?,
        timeout: timeout?,
        rise: rise? as u32,
        fall: fall? as u32,
        port: port?,
    })
}

fn http_check(ctx: &mut Ctx<'_>, p: &KeyPath, who: &str, c: &CheckFile) -> Option<CheckKind> {
    let method = c.method.clone().unwrap_or_else(|| "GET".into());
    let mut ok = true;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        ctx.error(&p.key("method"), format!("{who}: check method {method:?} must be an HTTP method in capitals, e.g. \"GET\" or \"HEAD\""));
        ok = false;
    }
    let path = c.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        ctx.error(&p.key("path"), format!("{who}: check path {path:?} must start with '/' and hold no spaces or control characters"));
        ok = false;
    }
    if let Some(h) = &c.host {
        if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f) {
            ctx.error(
                &p.key("host"),
                format!("{who}: check host {h:?} holds spaces or control characters"),
            );
            ok = false;
        }
    }
    let expect_status = match &c.expect_status {
        None => Some(StatusMatch::Range(200, 399)),
        Some(StatusText::Code(n)) if (100..=599).contains(n) => {
            Some(StatusMatch::Range(*n as u16, *n as u16))
        }
        Some(StatusText::Code(n)) => {
            ctx.error(
                &p.key("expect_status"),
                format!("{who}: {n} is not an HTTP status"),
            );
            None
        }
        Some(StatusText::Text(t)) => match status_match(t) {
            Some(m) => Some(m),
            None => {
                ctx.error(
                    &p.key("expect_status"),
                    format!("{who}: expect_status {t:?}: write a status (200), a class (\"2xx\") or a range (\"200-399\")"),
                );
                None
            }
        },
    };
    let expect_status = expect_status?;
    ok.then(|| CheckKind::Http {
        method,
        path,
        host: c.host.clone(),
        expect_status,
        expect_body: c.expect_body.clone(),
    })
}

fn status_match(t: &str) -> Option<StatusMatch> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
    };
    let t = t.trim();
    if t.len() == 3 && t.ends_with("xx") {
        let d = t[..1].parse::<u16>().ok().filter(|d| (1..=5).contains(d))?;
        return Some(StatusMatch::Range(d * 100, d * 100 + 99));
    }
    match t.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (code(a)?, code(b)?);
            (a <= b).then_some(StatusMatch::Range(a, b))
        }
        None => code(t).map(|n| StatusMatch::Range(n, n)),
    }
}

fn mysql_check(ctx: &mut Ctx<'_>, p: &KeyPath, who: &str, c: &CheckFile) -> Option<CheckKind> {
    let user = match &c.user {
        Some(u) if !u.is_empty() => Some(u.clone()),
        _ => {
            ctx.error(
                &p.key("user"),
                format!("{who}: a mysql check needs `user`, an account that may log in (it needs no privileges for read_only; REPLICATION CLIENT or SLAVE MONITOR for replica state)"),
            );
            None
        }
    };
    let password = match (&c.password, &c.password_file) {
        (Some(_), Some(_)) => {
            ctx.error(
                &p.key("password_file"),
                format!("{who}: give `password` or `password_file`, not both"),
            );
            None
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(file)) => match crate::read_bounded(Path::new(file), MAX_PASSWORD_FILE_BYTES) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                ctx.error(
                    &p.key("password_file"),
                    format!("{who}: cannot read password_file {file:?}: {e}"),
                );
                None
            }
        },
        (None, None) => Some(String::new()),
    };
    let max_lag = duration(
        ctx,
        &p.key("max_lag"),
        c.max_lag.as_ref(),
        Duration::from_secs(30),
    );
    let require = match c.require.as_deref() {
        None | Some("primary") => Some(MysqlRequire::Primary),
        Some("replica") => max_lag.map(|max_lag| MysqlRequire::Replica { max_lag }),
        Some("any") => Some(MysqlRequire::Any),
        Some(other) => {
            ctx.error(
                &p.key("require"),
                format!("{who}: unknown require {other:?}; use \"primary\" (default: writable servers only), \"replica\" or \"any\""),
            );
            None
        }
    };
    Some(CheckKind::Mysql {
        user: user?,
        password: password?,
        require: require?,
    })
}
