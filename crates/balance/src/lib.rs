//! Load balancing (the `[[balance]]` role): listeners on an address and a port or a
//! port range, pools of servers with health checks, and TCP and HTTP proxying. The
//! decisions (selection, health, agent replies, MySQL verdicts, slow start) are pure,
//! in `engine`; everything else does the I/O. `service` is what the daemon runs.

pub mod clients;
mod connect;
pub mod engine;
pub mod frontend;
pub mod health;
mod http;
mod idle;
pub mod listen;
pub mod pool;
pub mod proxy_protocol;
pub mod service;
pub mod stats;
pub mod status;
mod tcp;
pub mod tls;
mod upgrade;
mod upstream;
mod worker;

pub use service::{Action, BalanceService};

/// What the HTTP proxy does with a client's request head before a server sees it,
/// for the fuzz targets (`crates/fuzz-targets`): the modules that hold it are
/// private because nothing else outside the crate has a use for them.
#[doc(hidden)]
pub mod request_head {
    pub use crate::http::{cookie_value, upstream_head};
    pub use crate::upgrade::is_upgrade;
}
pub use status::BalanceStatus;
