//! What the balancer reports: per frontend and server, state, load, traffic, errors,
//! latency and health history, as JSON for `uphold status` and the API, as text for
//! the terminal, and as Prometheus metrics.

use crate::engine::health::{Health, Transition};
use crate::frontend::Frontend;
use crate::pool::{Admin, Server};
use crate::stats::Traffic;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use uphold_config::balance::{Algorithm, BalanceMode};

/// Label pairs of one sample, in order.
type Labels = Vec<(String, String)>;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BalanceStatus {
    pub frontends: Vec<FrontendStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrafficStatus {
    pub connections: u64,
    pub active: u64,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub connect_errors: u64,
    pub server_errors: u64,
    pub retries: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FrontendStatus {
    pub name: String,
    pub listen: String,
    pub mode: String,
    pub algorithm: String,
    pub check: String,
    pub traffic: TrafficStatus,
    pub no_server: u64,
    pub queued: u64,
    pub queue_timeouts: u64,
    pub over_limit: u64,
    #[serde(default)]
    pub over_client_limit: u64,
    pub bad_requests: u64,
    pub servers: Vec<ServerStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub address: String,
    /// up, down or unknown (no check finished yet).
    pub health: String,
    /// enabled, drain or disabled.
    pub admin: String,
    pub backup: bool,
    pub weight: u32,
    pub effective_weight: u32,
    pub maxconn: u32,
    /// Kept out by a pool-wide rule (two writable MySQL servers).
    pub fenced: bool,
    pub agent: Option<String>,
    pub last_check: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub traffic: TrafficStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub to: String,
    pub reason: String,
}

fn traffic(t: &Traffic) -> TrafficStatus {
    TrafficStatus {
        connections: t.connections.load(Relaxed),
        active: t.active.load(Relaxed),
        requests: t.requests.load(Relaxed),
        bytes_in: t.bytes_in.load(Relaxed),
        bytes_out: t.bytes_out.load(Relaxed),
        responses_2xx: t.responses_2xx.load(Relaxed),
        responses_3xx: t.responses_3xx.load(Relaxed),
        responses_4xx: t.responses_4xx.load(Relaxed),
        responses_5xx: t.responses_5xx.load(Relaxed),
        connect_errors: t.connect_errors.load(Relaxed),
        server_errors: t.server_errors.load(Relaxed),
        retries: t.retries.load(Relaxed),
        latency_p50_ms: t.latency.quantile_ms(0.5),
        latency_p99_ms: t.latency.quantile_ms(0.99),
    }
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

fn server(s: &Server, fe: &Frontend) -> ServerStatus {
    let addr = s
        .config
        .address_for(fe.config.ports.first, fe.config.ports.first);
    let address = if fe.config.ports.len() > 1 {
        let last = s
            .config
            .address_for(fe.config.ports.last, fe.config.ports.first);
        if last.port() == addr.port() {
            addr.to_string()
        } else {
            format!("{}-{}", addr, last.port())
        }
    } else {
        addr.to_string()
    };
    let (agent_state, agent_pct) = s.agent();
    let agent = match (agent_state, agent_pct) {
        (None, 100) => None,
        (state, pct) => Some(format!(
            "{}{pct}%",
            state
                .map(|s| format!("{s:?} ").to_lowercase())
                .unwrap_or_default()
        )),
    };
    ServerStatus {
        name: s.name().to_string(),
        address,
        health: health_word(s.health()).into(),
        admin: match s.admin() {
            Admin::Enabled => "enabled",
            Admin::Drain => "drain",
            Admin::Disabled => "disabled",
        }
        .into(),
        backup: s.config.backup,
        weight: s.weight(),
        effective_weight: s
            .state(fe.config.slowstart)
            .effective_weight(fe.config.slowstart),
        maxconn: s.config.maxconn,
        fenced: s.fenced(),
        agent,
        last_check: s.last_check(),
        history: s
            .history()
            .into_iter()
            .map(|t: Transition| HistoryEntry {
                at_ms: t.at_ms,
                to: health_word(t.to).into(),
                reason: t.reason,
            })
            .collect(),
        traffic: traffic(&s.traffic),
    }
}

pub fn frontend(fe: &Frontend) -> FrontendStatus {
    let c = &fe.config;
    let listen = if c.ports.len() > 1 {
        format!("{}:{}-{}", c.ip, c.ports.first, c.ports.last)
    } else {
        std::net::SocketAddr::new(c.ip, c.ports.first).to_string()
    };
    let p = &fe.pool;
    FrontendStatus {
        name: c.name.clone(),
        listen,
        mode: match c.mode {
            BalanceMode::Tcp => "tcp",
            BalanceMode::Http if c.tls.is_empty() => "http",
            BalanceMode::Http => "https",
        }
        .into(),
        algorithm: match c.algorithm {
            Algorithm::RoundRobin => "roundrobin",
            Algorithm::LeastConn => "leastconn",
            Algorithm::Source => "source",
            Algorithm::Random => "random",
        }
        .into(),
        check: crate::health::describe(&c.check),
        traffic: traffic(&p.traffic),
        no_server: p.counters.no_server.load(Relaxed),
        queued: p.counters.queued.load(Relaxed),
        queue_timeouts: p.counters.queue_timeouts.load(Relaxed),
        over_limit: p.counters.over_limit.load(Relaxed),
        over_client_limit: p.counters.over_client_limit.load(Relaxed),
        bad_requests: p.counters.bad_requests.load(Relaxed),
        servers: p.servers.iter().map(|s| server(s, fe)).collect(),
    }
}

impl BalanceStatus {
    /// The terminal view for `uphold status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.frontends {
            let t = &f.traffic;
            let up = f
                .servers
                .iter()
                .filter(|s| s.health == "up" && s.admin == "enabled")
                .count();
            let _ = writeln!(
                out,
                "balance {} ({} {}, {}): {}/{} servers up, {} active, {} connections, {} requests, {} refused",
                f.name,
                f.mode,
                f.listen,
                f.algorithm,
                up,
                f.servers.len(),
                t.active,
                t.connections,
                t.requests,
                f.no_server
            );
            let _ = writeln!(
                out,
                "  {:<16} {:<24} {:<8} {:<9} {:>6} {:>7} {:>10}  last check",
                "SERVER", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE", "REQUESTS"
            );
            for s in &f.servers {
                let health = if s.fenced {
                    "fenced".to_string()
                } else {
                    s.health.clone()
                };
                let weight = if s.effective_weight != s.weight {
                    format!("{}/{}", s.effective_weight, s.weight)
                } else {
                    s.weight.to_string()
                };
                let count = if f.mode == "tcp" {
                    s.traffic.connections
                } else {
                    s.traffic.requests
                };
                let _ = writeln!(
                    out,
                    "  {:<16} {:<24} {:<8} {:<9} {:>6} {:>7} {:>10}  {}{}",
                    s.name,
                    s.address,
                    health,
                    s.admin,
                    weight,
                    s.traffic.active,
                    count,
                    s.last_check.as_deref().unwrap_or("-"),
                    if s.backup { " (backup)" } else { "" }
                );
            }
        }
        out
    }

    /// Registers the same figures in `registry` (names `balance_*` below the
    /// daemon's `uphold` prefix; counters get their `_total`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("balance");
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
            registry.register(name, help, family.clone());
            family
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            registry.register(name, help, family.clone());
            family
        };
        let connections = counter(
            registry,
            "connections",
            "Client connections accepted (frontend) or server connections opened (server)",
        );
        let active = gauge(
            registry,
            "active",
            "Connections (tcp) or requests (http) in progress",
        );
        let requests = counter(registry, "requests", "HTTP requests");
        let bytes_in = counter(registry, "bytes_in", "Bytes from clients towards servers");
        let bytes_out = counter(registry, "bytes_out", "Bytes from servers towards clients");
        let responses = counter(registry, "responses", "HTTP responses by status class");
        let connect_errors = counter(registry, "connect_errors", "Failed connects to servers");
        let server_errors = counter(
            registry,
            "server_errors",
            "Servers that failed or timed out during a request",
        );
        let retries = counter(
            registry,
            "retries",
            "Requests or connections sent again to another server or connection",
        );
        let refused = counter(
            registry,
            "refused",
            "Clients refused for lack of a server (503 in http)",
        );
        let server_up = gauge(registry, "server_up", "1 when the server's health is up");
        let server_admin = gauge(
            registry,
            "server_admin",
            "Operator state: 0 enabled, 1 drain, 2 disabled",
        );
        let traffic = |labels: &Labels, t: &TrafficStatus| {
            let count = |family: &Family<Labels, Counter<f64, AtomicU64>>, n: u64| {
                family.get_or_create(labels).inc_by(n as f64);
            };
            count(&connections, t.connections);
            active.get_or_create(labels).set(t.active as f64);
            count(&requests, t.requests);
            count(&bytes_in, t.bytes_in);
            count(&bytes_out, t.bytes_out);
            count(&connect_errors, t.connect_errors);
            count(&server_errors, t.server_errors);
            count(&retries, t.retries);
            for (class, n) in [
                ("2xx", t.responses_2xx),
                ("3xx", t.responses_3xx),
                ("4xx", t.responses_4xx),
                ("5xx", t.responses_5xx),
            ] {
                let mut labels = labels.clone();
                labels.push(("class".into(), class.into()));
                responses.get_or_create(&labels).inc_by(n as f64);
            }
        };
        for f in &self.frontends {
            let frontend: Labels = vec![("frontend".into(), f.name.clone())];
            traffic(&frontend, &f.traffic);
            refused.get_or_create(&frontend).inc_by(f.no_server as f64);
            for s in &f.servers {
                let mut server = frontend.clone();
                server.push(("server".into(), s.name.clone()));
                traffic(&server, &s.traffic);
                server_up
                    .get_or_create(&server)
                    .set(f64::from(u8::from(s.health == "up" && !s.fenced)));
                let admin = match s.admin.as_str() {
                    "drain" => 1.0,
                    "disabled" => 2.0,
                    _ => 0.0,
                };
                server_admin.get_or_create(&server).set(admin);
            }
        }
    }
}
