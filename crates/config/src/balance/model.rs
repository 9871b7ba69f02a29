//! The typed frontends, servers and health checks handed to the balance role,
//! and the process-wide `[balancer]` settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const DEFAULT_BALANCER_ADMIN_SOCKET: &str = "/run/uphold/admin.sock";

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
            api: crate::values::DEFAULT_API
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
