//! A frontend's servers at run time: their health, administrative state, weight and
//! load, stored in atomics shared by the proxy threads and the health checks; and the
//! acquisition of a server slot (selection, connection limits, the bounded queue).
//! What the state means (available, weight) is `crate::engine::availability`'s.

use crate::engine::agent::{AgentReport, AgentState};
pub use crate::engine::availability::Admin;
use crate::engine::availability::ServerState;
use crate::engine::health::{Health, HealthTracker, Transition};
use crate::engine::select::{Candidate, Pick, Selector};
use crate::stats::{FrontendCounters, Traffic};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;
use uphold_config::balance::{BalanceConfig, CheckKind, ServerConfig};

fn admin_from_u8(v: u8) -> Admin {
    match v {
        1 => Admin::Drain,
        2 => Admin::Disabled,
        _ => Admin::Enabled,
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_UP: u8 = 1;
const HEALTH_DOWN: u8 = 2;

#[derive(Debug)]
pub struct Server {
    pub config: ServerConfig,
    /// The check config the health state belongs to (a reload that changes the check
    /// starts the server's health afresh).
    pub check: uphold_config::balance::CheckConfig,
    /// Unknown health counts as up, except for MySQL checks: writes must not reach a
    /// server never seen writable.
    unknown_is_up: bool,
    health: AtomicU8,
    admin: AtomicU8,
    weight: AtomicU32,
    agent_percent: AtomicU32,
    agent_state: AtomicU8,
    /// Milliseconds since the process epoch when the server last came up; 0: never
    /// (or long enough ago that slow start is over).
    up_at_ms: AtomicU64,
    /// Kept out by a pool-wide rule (two writable MySQL servers).
    fenced: AtomicBool,
    active: AtomicU32,
    tracker: Mutex<HealthTracker>,
    /// Last MySQL probe said writable.
    pub writable: AtomicBool,
    pub traffic: Traffic,
}

impl Server {
    pub fn new(config: ServerConfig, check: &uphold_config::balance::CheckConfig) -> Self {
        let unknown_is_up = !matches!(check.kind, CheckKind::Mysql { .. });
        Server {
            weight: AtomicU32::new(config.weight),
            config,
            check: check.clone(),
            unknown_is_up,
            health: AtomicU8::new(HEALTH_UNKNOWN),
            admin: AtomicU8::new(0),
            agent_percent: AtomicU32::new(100),
            agent_state: AtomicU8::new(0),
            up_at_ms: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
            active: AtomicU32::new(0),
            tracker: Mutex::new(HealthTracker::new(check.rise, check.fall)),
            writable: AtomicBool::new(false),
            traffic: Traffic::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            HEALTH_UP => Health::Up,
            HEALTH_DOWN => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn admin(&self) -> Admin {
        admin_from_u8(self.admin.load(Relaxed))
    }

    pub fn set_admin(&self, admin: Admin) {
        self.admin.store(admin as u8, Relaxed);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub fn set_weight(&self, w: u32) {
        self.weight.store(w, Relaxed);
    }

    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Relaxed)
    }

    pub fn agent(&self) -> (Option<AgentState>, u32) {
        let state = match self.agent_state.load(Relaxed) {
            1 => Some(AgentState::Up),
            2 => Some(AgentState::Down),
            3 => Some(AgentState::Drain),
            4 => Some(AgentState::Maint),
            _ => None,
        };
        (state, self.agent_percent.load(Relaxed))
    }

    pub fn set_agent(&self, report: AgentReport) {
        if let Some(p) = report.weight_percent {
            self.agent_percent.store(p, Relaxed);
        }
        if let Some(s) = report.state {
            let v = match s {
                AgentState::Up => 1,
                AgentState::Down => 2,
                AgentState::Drain => 3,
                AgentState::Maint => 4,
            };
            self.agent_state.store(v, Relaxed);
        }
    }

    /// The server's state now, read from the atomics. `slowstart` only bounds how
    /// long the time since it came up is worth reading the clock for.
    pub fn state(&self, slowstart: Duration) -> ServerState {
        let (agent, agent_percent) = self.agent();
        ServerState {
            health: self.health(),
            unknown_is_up: self.unknown_is_up,
            fenced: self.fenced(),
            admin: self.admin(),
            weight: self.weight(),
            agent,
            agent_percent,
            since_up: self.since_up(slowstart),
            active: self.active(),
            maxconn: self.config.maxconn,
            backup: self.config.backup,
        }
    }

    fn since_up(&self, slowstart: Duration) -> Option<Duration> {
        let up_at = self.up_at_ms.load(Relaxed);
        if up_at == 0 || slowstart.is_zero() {
            return None;
        }
        let since = Duration::from_millis(now_ms().saturating_sub(up_at));
        if since >= slowstart {
            // Past the window the up time no longer matters: forget it so that
            // later picks skip the clock.
            self.up_at_ms.store(0, Relaxed);
            return None;
        }
        Some(since)
    }

    /// One check result (active or passive). Returns the transition, if any.
    pub fn observe(&self, ok: bool, detail: &str) -> Option<Transition> {
        let t = self
            .tracker
            .lock()
            .ok()?
            .observe(ok, detail, SystemTime::now());
        self.apply(&t);
        t
    }

    /// Forces the health (pool-wide rules); `fenced` keeps it out until lifted.
    pub fn set_fenced(&self, fenced: bool, reason: &str) -> Option<Transition> {
        if self.fenced.swap(fenced, Relaxed) == fenced {
            return None;
        }
        if fenced {
            let t = self
                .tracker
                .lock()
                .ok()?
                .force(Health::Down, reason, SystemTime::now());
            self.apply(&t);
            t
        } else {
            None
        }
    }

    fn apply(&self, t: &Option<Transition>) {
        if let Some(t) = t {
            let (v, came_up) = match t.to {
                Health::Up => (HEALTH_UP, self.health.load(Relaxed) == HEALTH_DOWN),
                Health::Down => (HEALTH_DOWN, false),
                Health::Unknown => (HEALTH_UNKNOWN, false),
            };
            if came_up {
                self.up_at_ms.store(now_ms(), Relaxed);
            }
            self.health.store(v, Relaxed);
        }
    }

    /// Takes over another server's health (a reload changed only its weight or limits).
    fn inherit_health(&self, old: &Server) {
        if let (Ok(mut mine), Ok(theirs)) = (self.tracker.lock(), old.tracker.lock()) {
            *mine = theirs.clone();
        }
        self.health.store(old.health.load(Relaxed), Relaxed);
        self.up_at_ms.store(old.up_at_ms.load(Relaxed), Relaxed);
    }

    pub fn last_check(&self) -> Option<String> {
        self.tracker.lock().ok()?.last_result().map(str::to_string)
    }

    pub fn history(&self) -> Vec<Transition> {
        self.tracker
            .lock()
            .map(|t| t.history().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a slot unless the server is at its limit.
    fn try_take(&self) -> bool {
        let max = self.config.maxconn;
        if max == 0 {
            self.active.fetch_add(1, Relaxed);
            return true;
        }
        self.active
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok()
    }
}

thread_local! {
    /// Selection's view of the servers, reused: no allocation per pick.
    static CANDIDATES: std::cell::RefCell<Vec<Candidate>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct QueuePlace<'a>(&'a FrontendCounters);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
    }
}

/// Why no server was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoServer,
    QueueFull,
    QueueTimeout,
}

#[derive(Debug)]
pub struct Pool {
    pub servers: Vec<Arc<Server>>,
    selector: Mutex<Selector>,
    slowstart: Duration,
    /// The algorithm draws random numbers.
    random: bool,
    queue_max: u32,
    queue_timeout: Duration,
    freed: Arc<Notify>,
    pub counters: Arc<FrontendCounters>,
    pub traffic: Arc<Traffic>,
    /// Connections open per client address (`max_connections_per_client`).
    pub clients: Arc<crate::clients::ClientSlots>,
}

/// A slot on a server, given back when dropped.
#[derive(Debug)]
pub struct ServerSlot {
    pub server: Arc<Server>,
    pub index: usize,
    pool: Arc<Pool>,
}

impl Drop for ServerSlot {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Relaxed);
        self.server.traffic.active.fetch_sub(1, Relaxed);
        if self.server.config.maxconn > 0 {
            self.pool.freed.notify_one();
        }
    }
}

impl Pool {
    /// Builds the pool of `config`, reusing the servers of `previous` that did not
    /// change (same settings and check) so their health and counters carry over.
    pub fn new(config: &BalanceConfig, previous: Option<&Pool>) -> Pool {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| p.servers.iter().find(|o| o.name() == s.name));
                match old {
                    Some(old) if old.config == *s && old.check == config.check => old.clone(),
                    Some(old) => {
                        // Changed settings: a new server, but what the operator set
                        // and, for the same address and check, its health stay.
                        let new = Server::new(s.clone(), &config.check);
                        new.set_admin(old.admin());
                        if old.config.ip == s.ip
                            && old.config.port == s.port
                            && old.check == config.check
                        {
                            new.inherit_health(old);
                        }
                        Arc::new(new)
                    }
                    None => Arc::new(Server::new(s.clone(), &config.check)),
                }
            })
            .collect::<Vec<_>>();
        Pool {
            selector: Mutex::new(Selector::new(config.algorithm, servers.len())),
            servers,
            slowstart: config.slowstart,
            random: config.algorithm == uphold_config::balance::Algorithm::Random,
            queue_max: config.queue,
            queue_timeout: config.queue_timeout,
            // Shared with the previous version: its server slots wake this one's waiters,
            // and the frontend's counters go on.
            freed: previous.map(|p| p.freed.clone()).unwrap_or_default(),
            counters: previous.map(|p| p.counters.clone()).unwrap_or_default(),
            traffic: previous.map(|p| p.traffic.clone()).unwrap_or_default(),
            clients: previous.map(|p| p.clients.clone()).unwrap_or_default(),
        }
    }

    /// Requests waiting in the queue look again (a server came up or was enabled).
    pub fn wake_waiters(&self) {
        self.freed.notify_waiters();
    }

    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.name() == name)
    }

    /// A slot on a server: `preferred` (a persistence cookie) when it can take it,
    /// else one picked by the algorithm, never one of `exclude`. Waits in the queue
    /// while every usable server is at its limit.
    pub async fn acquire(
        self: &Arc<Self>,
        client: u64,
        preferred: Option<usize>,
        exclude: &[usize],
    ) -> Result<ServerSlot, Refusal> {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let notified = self.freed.notified();
            match self.try_acquire(client, preferred, exclude) {
                Ok(slot) => return Ok(slot),
                Err(Pick::AllFull) => {}
                Err(_) => return Err(Refusal::NoServer),
            }
            let deadline = *deadline.get_or_insert_with(|| {
                let now = tokio::time::Instant::now();
                now.checked_add(self.queue_timeout)
                    .unwrap_or(now + Duration::from_secs(86_400))
            });
            let queued = self.counters.queued.fetch_add(1, Relaxed);
            // Counted out by a guard: the waiting future may be dropped (the client
            // went away), and the place must not stay taken.
            let place = QueuePlace(&self.counters);
            if queued >= u64::from(self.queue_max) {
                return Err(Refusal::QueueFull);
            }
            let woke = tokio::time::timeout_at(deadline, notified).await;
            drop(place);
            if woke.is_err() {
                self.counters.queue_timeouts.fetch_add(1, Relaxed);
                return Err(Refusal::QueueTimeout);
            }
        }
    }

    fn try_acquire(
        self: &Arc<Self>,
        client: u64,
        preferred: Option<usize>,
        exclude: &[usize],
    ) -> Result<ServerSlot, Pick> {
        if let Some(i) = preferred.filter(|i| !exclude.contains(i)) {
            let s = &self.servers[i];
            // Draining servers still take their persistent clients, so sessions end
            // where they started.
            if s.state(self.slowstart).takes_persistent_client() && s.try_take() {
                return Ok(self.slot(i));
            }
        }
        // Lost races for the last slot are retried a few times before queueing.
        for _ in 0..4 {
            let random = if self.random {
                [rand::random::<u64>(), rand::random::<u64>()]
            } else {
                [0, 0]
            };
            let pick = CANDIDATES.with(|buf| {
                let mut candidates = buf.borrow_mut();
                candidates.clear();
                candidates.extend(
                    self.servers
                        .iter()
                        .map(|s| s.state(self.slowstart).candidate(self.slowstart)),
                );
                self.selector
                    .lock()
                    .map(|mut sel| sel.pick(&candidates, client, random, exclude))
                    .unwrap_or(Pick::NoServer)
            });
            match pick {
                Pick::Server(i) => {
                    if self.servers[i].try_take() {
                        return Ok(self.slot(i));
                    }
                }
                other => return Err(other),
            }
        }
        Err(Pick::AllFull)
    }

    fn slot(self: &Arc<Self>, index: usize) -> ServerSlot {
        let server = self.servers[index].clone();
        server.traffic.active.fetch_add(1, Relaxed);
        ServerSlot {
            server,
            index,
            pool: self.clone(),
        }
    }
}
