//! The balancer's decisions, pure: which server takes a connection, whether and with
//! what weight a server takes traffic, when a server is up, what an agent or a MySQL
//! server's answer means, how slow start scales weight, when a request or a
//! connection is tried again, which client requests are refused outright.

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod agent;
pub mod availability;
pub mod health;
pub mod mysql_verdict;
pub mod request;
pub mod retry;
pub mod select;
pub mod slowstart;
