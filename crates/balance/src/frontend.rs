//! A frontend as the proxy threads see it: its config, its server pool and its TLS
//! acceptor. A reload swaps the whole value in the slot; connections that started
//! earlier keep the one they took.

use crate::pool::Pool;
use std::sync::{Arc, RwLock};
use uphold_config::balance::BalanceConfig;

pub struct Frontend {
    pub config: BalanceConfig,
    pub pool: Arc<Pool>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// The current version of a frontend, replaced on reload.
#[derive(Clone, Debug)]
pub struct Slot(Arc<RwLock<Arc<Frontend>>>);

impl Slot {
    pub fn new(frontend: Arc<Frontend>) -> Slot {
        Slot(Arc::new(RwLock::new(frontend)))
    }

    pub fn current(&self) -> Arc<Frontend> {
        match self.0.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, frontend: Arc<Frontend>) {
        match self.0.write() {
            Ok(mut f) => *f = frontend,
            Err(poisoned) => *poisoned.into_inner() = frontend,
        }
    }
}

/// Which frontend a listening socket serves now. A reload can hand a socket to
/// another frontend (a renamed one, or a port moved between frontends) without
/// closing it.
#[derive(Clone, Debug)]
pub struct Route(Arc<RwLock<Slot>>);

impl Route {
    pub fn new(slot: Slot) -> Route {
        Route(Arc::new(RwLock::new(slot)))
    }

    pub fn slot(&self) -> Slot {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, slot: Slot) {
        match self.0.write() {
            Ok(mut s) => *s = slot,
            Err(poisoned) => *poisoned.into_inner() = slot,
        }
    }
}
