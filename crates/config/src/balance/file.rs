//! The `[[balance]]` and `[balancer]` tables as serde reads them, unknown keys
//! refused.

use crate::values::{Argv, DurationText};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalancerFile {
    pub threads: Option<i64>,
    pub api: Option<String>,
    pub admin_socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceFile {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub mode: Option<String>,
    pub algorithm: Option<String>,
    pub cookie: Option<String>,
    pub freebind: Option<bool>,
    pub retries: Option<i64>,
    pub connect_timeout: Option<DurationText>,
    pub client_timeout: Option<DurationText>,
    pub server_timeout: Option<DurationText>,
    pub header_timeout: Option<DurationText>,
    pub max_connections: Option<i64>,
    pub max_connections_per_client: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<DurationText>,
    pub slowstart: Option<DurationText>,
    pub forwarded_for: Option<bool>,
    pub max_header_bytes: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub tls: Option<Vec<TlsFile>>,
    pub check: Option<CheckFile>,
    pub server: Option<Vec<ServerFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub weight: Option<i64>,
    pub backup: Option<bool>,
    pub maxconn: Option<i64>,
    pub proxy_protocol: Option<String>,
}

/// An HTTP status in the file: `200`, `"2xx"` or `"200-399"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StatusText {
    Code(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckFile {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub port: Option<i64>,
    // http
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<StatusText>,
    pub expect_body: Option<String>,
    // mysql
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub require: Option<String>,
    pub max_lag: Option<DurationText>,
    // exec
    pub command: Option<Argv>,
}
