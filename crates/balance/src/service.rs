//! The balancing role as the daemon runs it: binds every frontend, starts the proxy
//! threads and the health checks, applies reloads without dropping connections, and
//! answers status and operator commands.

use crate::frontend::{Frontend, Slot};
use crate::health::Checks;
use crate::pool::{Admin, Pool};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use uphold_config::balance::{BalanceConfig, BalancerSettings};

struct Running {
    slot: Slot,
    ip: IpAddr,
    freebind: bool,
    /// Per listening port: the signal that stops its accept loops.
    listeners: HashMap<u16, watch::Sender<bool>>,
    _checks: Checks,
}

pub struct BalanceService {
    frontends: Mutex<HashMap<String, Running>>,
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

impl BalanceService {
    /// Binds every frontend and starts serving. Checks run on `runtime`.
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
            order: Mutex::new(Vec::new()),
            workers: Mutex::new(Some(workers)),
            runtime,
        };
        for c in configs {
            if let Err(e) = service.add(c) {
                service.stop();
                return Err(e);
            }
        }
        *service.order.lock().map_err(|_| "poisoned")? =
            configs.iter().map(|c| c.name.clone()).collect();
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

    fn bind_ports(
        &self,
        config: &BalanceConfig,
        slot: &Slot,
        keep: &mut HashMap<u16, watch::Sender<bool>>,
    ) -> Result<HashMap<u16, watch::Sender<bool>>, String> {
        let workers = self.workers.lock().map_err(|_| "poisoned")?;
        let workers = workers.as_ref().ok_or("the balancer is stopping")?;
        // Bind every new port first, so a failure changes nothing.
        let mut bound = Vec::new();
        for port in config.ports.iter() {
            if !keep.contains_key(&port) {
                bound.push((
                    port,
                    crate::listen::bind(config.ip, port, config.freebind)
                        .map_err(|e| format!("balance {:?}: {e}", config.name))?,
                ));
            }
        }
        let mut out = HashMap::new();
        for port in config.ports.iter() {
            if let Some(stop) = keep.remove(&port) {
                out.insert(port, stop);
            }
        }
        for (port, listener) in bound {
            let (stop, _) = watch::channel(false);
            workers.listen(&listener, slot, &stop)?;
            out.insert(port, stop);
        }
        Ok(out)
    }

    fn add(&self, config: &BalanceConfig) -> Result<(), String> {
        let (frontend, checks) = self.build(config, None)?;
        let slot = Slot::new(frontend);
        let listeners = self.bind_ports(config, &slot, &mut HashMap::new())?;
        self.frontends.lock().map_err(|_| "poisoned")?.insert(
            config.name.clone(),
            Running {
                slot,
                ip: config.ip,
                freebind: config.freebind,
                listeners,
                _checks: checks,
            },
        );
        Ok(())
    }

    /// Applies a new set of frontends. Established connections are not touched;
    /// servers whose settings did not change keep their health, state and counters.
    /// A frontend that cannot be applied (a port that will not bind, a bad
    /// certificate) keeps running as it was; the errors are returned.
    pub fn reload(&self, configs: &[BalanceConfig]) -> Vec<String> {
        let mut errors = Vec::new();
        let Ok(mut frontends) = self.frontends.lock() else {
            return vec!["balancer state poisoned".into()];
        };
        let wanted: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        frontends.retain(|name, running| {
            let keep = wanted.contains(&name.as_str());
            if !keep {
                for stop in running.listeners.values() {
                    let _ = stop.send(true);
                }
                tracing::info!(frontend = %name, "reload: frontend removed; its open connections finish");
            }
            keep
        });
        for c in configs {
            match frontends.get_mut(&c.name) {
                None => {
                    drop(frontends);
                    if let Err(e) = self.add(c) {
                        errors.push(e);
                    }
                    frontends = match self.frontends.lock() {
                        Ok(f) => f,
                        Err(_) => return errors,
                    };
                }
                Some(running) => {
                    let old = running.slot.current();
                    if old.config == *c {
                        continue;
                    }
                    let built = match self.build(c, Some(&old.pool)) {
                        Ok(b) => b,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let mut keep = if running.ip == c.ip && running.freebind == c.freebind {
                        std::mem::take(&mut running.listeners)
                    } else {
                        HashMap::new()
                    };
                    let new_slot_value = built.0;
                    // Listeners read the slot on every accept, so they are bound to it
                    // before the new frontend is put in.
                    match self.bind_ports(c, &running.slot, &mut keep) {
                        Ok(listeners) => {
                            for stop in keep.values() {
                                let _ = stop.send(true);
                            }
                            if !(running.ip == c.ip && running.freebind == c.freebind) {
                                for stop in running.listeners.values() {
                                    let _ = stop.send(true);
                                }
                            }
                            running.listeners = listeners;
                            running.ip = c.ip;
                            running.freebind = c.freebind;
                            running.slot.replace(new_slot_value);
                            running._checks = built.1;
                            tracing::info!(frontend = %c.name, "reload: frontend updated");
                        }
                        Err(e) => {
                            // Put back what was taken.
                            if running.listeners.is_empty() {
                                running.listeners = keep;
                            }
                            errors.push(e);
                        }
                    }
                }
            }
        }
        drop(frontends);
        if let Ok(mut order) = self.order.lock() {
            *order = configs.iter().map(|c| c.name.clone()).collect();
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
        let workers = self.workers.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = workers {
            w.stop();
        }
    }
}
