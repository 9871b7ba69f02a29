//! The balancing role as the daemon runs it: binds every frontend, starts the proxy
//! threads and the health checks, applies reloads without dropping connections, and
//! answers status and operator commands.

use crate::frontend::{Frontend, Route, Slot};
use crate::health::Checks;
use crate::pool::{Admin, Pool};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use uphold_config::balance::{BalanceConfig, BalancerSettings};

struct Running {
    slot: Slot,
    _checks: Checks,
}

/// A listening socket. It belongs to an address, not to a frontend: reload points it
/// at whichever frontend now listens there.
struct Socket {
    route: Route,
    stop: watch::Sender<bool>,
    /// Held by the socket's accept loops; the socket is closed when only this one is left.
    alive: Arc<()>,
}

pub struct BalanceService {
    frontends: Mutex<HashMap<String, Running>>,
    sockets: Mutex<HashMap<(IpAddr, u16), Socket>>,
    /// Frontend names in config order, for status.
    order: Mutex<Vec<String>>,
    workers: Mutex<Option<crate::worker::Workers>>,
    runtime: tokio::runtime::Handle,
}

/// What an operator can do to a server at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Enable,
    Drain,
    Disable,
    Weight(u32),
}

/// How long a reload waits for the proxy threads to close a socket whose address is
/// needed again (a wildcard listener replaced by a specific address on the same port).
const SOCKET_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

impl BalanceService {
    /// Binds every frontend and starts serving. Checks run on `runtime`. Any
    /// frontend that cannot start is an error here (at start-up nothing runs yet).
    pub fn start(
        configs: &[BalanceConfig],
        settings: &BalancerSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<BalanceService, String> {
        let threads = settings.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let workers = crate::worker::Workers::start(threads)?;
        let service = BalanceService {
            frontends: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            order: Mutex::new(Vec::new()),
            workers: Mutex::new(Some(workers)),
            runtime,
        };
        let errors = service.apply(configs);
        if !errors.is_empty() {
            service.stop();
            return Err(errors.join("; "));
        }
        tracing::info!(frontends = configs.len(), threads, "balancer started");
        Ok(service)
    }

    fn build(
        &self,
        config: &BalanceConfig,
        previous: Option<&Pool>,
    ) -> Result<(Arc<Frontend>, Checks), String> {
        let tls = if config.tls.is_empty() {
            None
        } else {
            Some(
                crate::tls::acceptor(&config.tls)
                    .map_err(|e| format!("balance {:?}: {e}", config.name))?,
            )
        };
        let pool = Arc::new(Pool::new(config, previous));
        let checks = crate::health::start(
            &self.runtime,
            &config.name,
            &pool,
            &config.check,
            config.ports.first,
        );
        Ok((
            Arc::new(Frontend {
                config: config.clone(),
                pool,
                tls,
            }),
            checks,
        ))
    }

    /// Applies a new set of frontends. Established connections are not touched;
    /// servers keep their health, operator state and counters where they did not
    /// change; sockets of addresses still in use stay open (even when they move to a
    /// renamed frontend). A frontend whose new version cannot be built (a bad
    /// certificate) keeps running as it was; a port that cannot be bound is left
    /// unserved. Both are returned as errors.
    pub fn reload(&self, configs: &[BalanceConfig]) -> Vec<String> {
        self.apply(configs)
    }

    fn apply(&self, configs: &[BalanceConfig]) -> Vec<String> {
        let mut errors = Vec::new();
        let (Ok(mut frontends), Ok(mut sockets)) = (self.frontends.lock(), self.sockets.lock())
        else {
            return vec!["balancer state poisoned".into()];
        };
        // 1. The frontends: unchanged ones as they are, changed and new ones built.
        let mut next: HashMap<String, Running> = HashMap::new();
        let mut effective: Vec<BalanceConfig> = Vec::new();
        for c in configs {
            let old = frontends.remove(&c.name);
            match old {
                Some(running) if running.slot.current().config == *c => {
                    next.insert(c.name.clone(), running);
                    effective.push(c.clone());
                }
                Some(running) => {
                    let current = running.slot.current();
                    match self.build(c, Some(&current.pool)) {
                        Ok((frontend, checks)) => {
                            running.slot.replace(frontend);
                            next.insert(
                                c.name.clone(),
                                Running {
                                    slot: running.slot,
                                    _checks: checks,
                                },
                            );
                            effective.push(c.clone());
                            tracing::info!(frontend = %c.name, "reload: frontend updated");
                        }
                        Err(e) => {
                            errors.push(e);
                            effective.push(current.config.clone());
                            next.insert(c.name.clone(), running);
                        }
                    }
                }
                None => match self.build(c, None) {
                    Ok((frontend, checks)) => {
                        next.insert(
                            c.name.clone(),
                            Running {
                                slot: Slot::new(frontend),
                                _checks: checks,
                            },
                        );
                        effective.push(c.clone());
                    }
                    Err(e) => errors.push(e),
                },
            }
        }
        for name in frontends.keys() {
            tracing::info!(frontend = %name, "reload: frontend removed; its open connections finish");
        }
        // 2. The sockets: every address wanted, and by whom.
        let mut wanted: HashMap<(IpAddr, u16), (Slot, bool, String)> = HashMap::new();
        for c in &effective {
            if let Some(running) = next.get(&c.name) {
                for port in c.ports.iter() {
                    wanted.insert(
                        (c.ip, port),
                        (running.slot.clone(), c.freebind, c.name.clone()),
                    );
                }
            }
        }
        let unwanted: Vec<(IpAddr, u16)> = sockets
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        let mut released = Vec::new();
        for key in unwanted {
            if let Some(socket) = sockets.remove(&key) {
                let _ = socket.stop.send(true);
                released.push(socket.alive);
            }
        }
        // A specific address and a wildcard on the same port cannot both listen:
        // give the threads a moment to close what was just stopped.
        let deadline = std::time::Instant::now() + SOCKET_RELEASE;
        while released.iter().any(|a| Arc::strong_count(a) > 1)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let workers = self.workers.lock();
        let workers = match &workers {
            Ok(w) => w.as_ref(),
            Err(_) => None,
        };
        for (key, (slot, freebind, name)) in wanted {
            if let Some(socket) = sockets.get(&key) {
                socket.route.set(slot);
                continue;
            }
            let Some(workers) = workers else {
                errors.push("the balancer is stopping".into());
                break;
            };
            let listener = match crate::listen::bind(key.0, key.1, freebind) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(format!("balance {name:?}: {e}"));
                    continue;
                }
            };
            let socket = Socket {
                route: Route::new(slot),
                stop: watch::channel(false).0,
                alive: Arc::new(()),
            };
            match workers.listen(&listener, &socket.route, &socket.stop, &socket.alive) {
                Ok(()) => {
                    sockets.insert(key, socket);
                }
                Err(e) => {
                    let _ = socket.stop.send(true);
                    errors.push(format!("balance {name:?}: {e}"));
                }
            }
        }
        *frontends = next;
        drop(frontends);
        drop(sockets);
        if let Ok(mut order) = self.order.lock() {
            *order = effective.iter().map(|c| c.name.clone()).collect();
        }
        errors
    }

    /// `target` is `FRONTEND/SERVER`, or `SERVER` when only one frontend has it.
    pub fn control(&self, target: &str, action: Action) -> Result<String, String> {
        let frontends = self.frontends.lock().map_err(|_| "poisoned")?;
        let matches: Vec<(String, Arc<crate::pool::Server>)> = match target.split_once('/') {
            Some((fe, server)) => {
                let running = frontends
                    .get(fe)
                    .ok_or_else(|| format!("no frontend {fe:?}"))?;
                let s = running
                    .slot
                    .current()
                    .pool
                    .server(server)
                    .cloned()
                    .ok_or_else(|| format!("frontend {fe:?} has no server {server:?}"))?;
                vec![(fe.to_string(), s)]
            }
            None => frontends
                .iter()
                .filter_map(|(name, r)| {
                    r.slot
                        .current()
                        .pool
                        .server(target)
                        .cloned()
                        .map(|s| (name.clone(), s))
                })
                .collect(),
        };
        let (fe, server) = match matches.len() {
            0 => return Err(format!("no server {target:?} in any frontend")),
            1 => matches.into_iter().next().ok_or("no match")?,
            _ => {
                let names: Vec<String> = matches
                    .iter()
                    .map(|(f, _)| format!("{f}/{target}"))
                    .collect();
                return Err(format!(
                    "server {target:?} is in several frontends; name one of: {}",
                    names.join(", ")
                ));
            }
        };
        let wake = matches!(action, Action::Enable | Action::Weight(_));
        match action {
            Action::Enable => server.set_admin(Admin::Enabled),
            Action::Drain => server.set_admin(Admin::Drain),
            Action::Disable => server.set_admin(Admin::Disabled),
            Action::Weight(w) => server.set_weight(w),
        }
        let what = match action {
            Action::Enable => "enabled".to_string(),
            Action::Drain => format!("draining ({} connections open)", server.active()),
            Action::Disable => format!("disabled ({} connections open)", server.active()),
            Action::Weight(w) => format!("weight {w}"),
        };
        if wake {
            if let Some(running) = frontends.get(&fe) {
                running.slot.current().pool.wake_waiters();
            }
        }
        tracing::info!(frontend = %fe, server = %server.name(), "operator: {what}");
        Ok(format!("{fe}/{}: {what}", server.name()))
    }

    pub fn status(&self) -> crate::status::BalanceStatus {
        let order = self.order.lock().map(|o| o.clone()).unwrap_or_default();
        let frontends = self.frontends.lock();
        let list = match &frontends {
            Ok(f) => order
                .iter()
                .filter_map(|n| f.get(n))
                .map(|r| crate::status::frontend(&r.slot.current()))
                .collect(),
            Err(_) => Vec::new(),
        };
        crate::status::BalanceStatus { frontends: list }
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        if let Ok(mut f) = self.frontends.lock() {
            f.clear();
        }
        if let Ok(mut s) = self.sockets.lock() {
            for socket in s.values() {
                let _ = socket.stop.send(true);
            }
            s.clear();
        }
        let workers = self.workers.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = workers {
            w.stop();
        }
    }
}
