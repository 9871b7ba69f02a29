//! Active health checks: one task per server on the daemon's main runtime, running
//! the frontend's check every interval within its timeout and feeding the result to
//! the server's health (rise/fall). Kinds: tcp, http, mysql, agent, exec, none.

pub mod mysql;
mod probes;

use crate::engine::mysql_verdict::{self, Observed, ReplicaObserved};
use crate::pool::{Pool, Server};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use uphold_config::balance::{CheckConfig, CheckKind, MysqlRequire};

/// The checks of one pool; dropping it stops them.
#[derive(Debug, Default)]
pub struct Checks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Checks {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Starts checking every server of `pool` on `runtime`.
pub fn start(
    runtime: &tokio::runtime::Handle,
    frontend: &str,
    pool: &Arc<Pool>,
    check: &CheckConfig,
    first_port: u16,
) -> Checks {
    let mut handles = Vec::new();
    let count = pool.servers.len().max(1) as u32;
    for (i, server) in pool.servers.iter().enumerate() {
        let addr = server.config.address_for(first_port, first_port);
        let addr = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
        // After a first round at once (a balancer that just started needs to know),
        // the servers' checks are spread over the interval instead of running together.
        let offset = check.interval / count * i as u32;
        let task = CheckTask {
            frontend: frontend.to_string(),
            pool: pool.clone(),
            server: server.clone(),
            check: check.clone(),
            addr,
        };
        handles.push(runtime.spawn(async move { task.run(offset).await }));
    }
    Checks(handles)
}

struct CheckTask {
    frontend: String,
    pool: Arc<Pool>,
    server: Arc<Server>,
    check: CheckConfig,
    addr: SocketAddr,
}

impl CheckTask {
    async fn run(self, offset: Duration) {
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, self.check.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let primary = matches!(
            self.check.kind,
            CheckKind::Mysql {
                require: MysqlRequire::Primary,
                ..
            }
        );
        let mut first = true;
        loop {
            if !first {
                ticker.tick().await;
            }
            first = false;
            let (mut ok, mut detail) =
                match tokio::time::timeout(self.check.timeout, self.once()).await {
                    Ok(r) => r,
                    Err(_) => (false, format!("no answer within {:?}", self.check.timeout)),
                };
            // The pool-wide rule goes first, so that a server that just turned
            // writable is never up for a moment beside another writable one, and a
            // fenced server stays down whatever its own check says.
            if primary {
                self.fence_if_split();
                if self.server.fenced() {
                    ok = false;
                    detail = format!("fenced: {detail}");
                }
            }
            if let Some(t) = self.server.observe(ok, &detail) {
                match t.to {
                    crate::engine::health::Health::Up => {
                        self.pool.wake_waiters();
                        tracing::info!(frontend = %self.frontend, server = %self.server.name(), "server is up: {}", t.reason)
                    }
                    _ => {
                        tracing::warn!(frontend = %self.frontend, server = %self.server.name(), "server is down: {}", t.reason)
                    }
                }
            }
        }
    }

    /// One check: whether it passed, and what it saw.
    async fn once(&self) -> (bool, String) {
        match &self.check.kind {
            CheckKind::None => {
                // Passive health only: a server taken down by failed connects gets
                // traffic again after `rise` intervals.
                (true, "no active check".into())
            }
            CheckKind::Tcp => match tokio::net::TcpStream::connect(self.addr).await {
                Ok(_) => (true, "connected".into()),
                Err(e) => (false, format!("connect to {}: {e}", self.addr)),
            },
            CheckKind::Http {
                method,
                path,
                host,
                expect_status,
                expect_body,
            } => {
                probes::http(
                    self.addr,
                    method,
                    path,
                    host.as_deref(),
                    expect_status,
                    expect_body.as_deref(),
                )
                .await
            }
            CheckKind::Agent => match probes::agent(self.addr).await {
                Ok(report) => {
                    self.server.set_agent(report);
                    let down = matches!(report.state, Some(crate::engine::agent::AgentState::Down));
                    (!down, format!("agent: {report:?}"))
                }
                Err(e) => (false, e),
            },
            CheckKind::Exec { command, user } => {
                let server = (self.server.name(), self.addr);
                probes::exec(command, user.as_deref(), server, self.check.timeout).await
            }
            CheckKind::Mysql {
                user,
                password,
                require,
            } => match mysql::probe(self.addr, user, password, self.check.timeout).await {
                Ok(state) => {
                    let observed = Observed {
                        read_only: state.read_only,
                        replica: state.replica.map(|r| ReplicaObserved {
                            io_running: r.io_running,
                            sql_running: r.sql_running,
                            seconds_behind: r.seconds_behind,
                        }),
                    };
                    self.server.writable.store(!observed.read_only, Relaxed);
                    mysql_verdict::verdict(*require, &observed)
                }
                Err(e) => {
                    self.server.writable.store(false, Relaxed);
                    (false, e)
                }
            },
        }
    }

    /// Two writable servers behind a "primary" frontend: writes to both would split
    /// the data, so neither gets traffic until one turns read-only.
    fn fence_if_split(&self) {
        let writable: Vec<bool> = self
            .pool
            .servers
            .iter()
            .map(|s| s.writable.load(Relaxed))
            .collect();
        let conflict = mysql_verdict::writable_conflict(&writable);
        let names: Vec<&str> = conflict
            .iter()
            .map(|&i| self.pool.servers[i].name())
            .collect();
        let reason = format!(
            "more than one writable server ({}); refusing to route",
            names.join(", ")
        );
        for (i, s) in self.pool.servers.iter().enumerate() {
            let fence = conflict.contains(&i);
            if s.set_fenced(fence, &reason).is_some() {
                tracing::error!(frontend = %self.frontend, server = %s.name(), "{reason}");
            }
        }
    }
}

/// The check in one line, for the status view.
pub fn describe(check: &CheckConfig) -> String {
    let kind = match &check.kind {
        CheckKind::None => "none",
        CheckKind::Tcp => "tcp",
        CheckKind::Http { .. } => "http",
        CheckKind::Mysql { .. } => "mysql",
        CheckKind::Agent => "agent",
        CheckKind::Exec { .. } => "exec",
    };
    format!(
        "{kind} every {}, timeout {}, rise {}, fall {}",
        humanize(check.interval),
        humanize(check.timeout),
        check.rise,
        check.fall
    )
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
