//! The balancer's decisions, pure: which server takes a connection, when a server is
//! up, what an agent or a MySQL server's answer means, how slow start scales weight.

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod agent;
pub mod health;
pub mod mysql_verdict;
pub mod select;
pub mod slowstart;
