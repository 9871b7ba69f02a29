//! The `[[balance]]` role and the process-wide `[balancer]` table. A frontend
//! listens on an address and a port or a port range and spreads connections
//! (tcp) or requests (http) over its servers, which are health-checked. The
//! typed form is re-exported here, where the other crates name it
//! (`uphold_config::balance::BalanceConfig`).

mod address;
mod check;
pub(crate) mod file;
mod model;
mod servers;
mod validate;

pub use model::*;
pub(crate) use validate::{validate_balance, validate_balancer};
