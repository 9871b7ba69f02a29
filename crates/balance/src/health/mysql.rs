//! The MySQL/MariaDB probe behind the `mysql` health check: one fresh
//! connection per probe (real handshake and login), reads whether the server
//! is read-only and, if it is a replica, the state of its replication threads,
//! then disconnects. Turning that state into healthy/unhealthy is the
//! caller's business.

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Error, IoError, OptsBuilder, Row, Value};

/// Replication state of a replica. With several replication sources
/// (MariaDB multi-source), a thread counts as running only when it runs for
/// every source, and the lag is the worst one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub io_running: bool,
    pub sql_running: bool,
    /// `None` when the server does not know (a thread stopped, or no event yet).
    pub seconds_behind: Option<u64>,
}

/// What one probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlState {
    pub read_only: bool,
    /// `None` when the server is not a replica, or when the account may not
    /// read the replica status (logged at debug level).
    pub replica: Option<ReplicaState>,
}

/// Connects (real handshake and login), reads @@global.read_only (true also
/// when super_read_only is on) and the replica state (SHOW ALL SLAVES STATUS /
/// SHOW REPLICA STATUS; `None` when not a replica; if the account lacks the
/// privilege for it, treat as Ok with replica None but say so in a debug log).
/// The whole probe, connect included, ends within `timeout` (a hung server
/// that accepts and never answers must give Err within timeout). Errors are
/// short human strings, e.g. "login refused: Access denied for user ..." or
/// "timed out after 1s". The connection is closed (disconnect) before
/// returning; no pool.
pub async fn probe(
    addr: SocketAddr,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<MysqlState, String> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        // The address is already resolved; no lookup, and IPv6 needs no brackets.
        .resolved_ips(Some(vec![addr.ip()]))
        .user(Some(user))
        .pass(Some(password))
        .db_name(None::<String>)
        // Otherwise the driver would reconnect over the server's unix socket
        // when it is local, and we would not be testing the address we balance to.
        .prefer_socket(false)
        .stmt_cache_size(0);
    match tokio::time::timeout(timeout, probe_unbounded(opts)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn probe_unbounded(opts: OptsBuilder) -> Result<MysqlState, String> {
    let mut conn = Conn::new(opts).await.map_err(connect_error)?;
    let state = read_state(&mut conn).await;
    if let Err(e) = conn.disconnect().await {
        // The answer is already in hand; a failed goodbye does not change it.
        tracing::debug!("mysql probe: disconnect failed: {e}");
    }
    state
}

async fn read_state(conn: &mut Conn) -> Result<MysqlState, String> {
    // No separate look at super_read_only: the server forces read_only on
    // whenever super_read_only is on (MySQL), and MariaDB has no such variable.
    let value: Option<Value> = conn
        .query_first("SELECT @@global.read_only")
        .await
        .map_err(|e| query_error("SELECT @@global.read_only", e))?;
    let read_only = value.as_ref().is_some_and(value_is_on);
    let replica = replica_state(conn).await?;
    Ok(MysqlState { read_only, replica })
}

/// ER_PARSE_ERROR: this server's dialect lacks the statement.
const PARSE_ERROR: u16 = 1064;
/// ER_SPECIFIC_ACCESS_DENIED_ERROR: lacks SLAVE MONITOR / REPLICATION CLIENT.
const PRIVILEGE_MISSING: u16 = 1227;

async fn replica_state(conn: &mut Conn) -> Result<Option<ReplicaState>, String> {
    // MariaDB first (its plain SHOW SLAVE STATUS covers only the default
    // source), then MySQL >= 8.0.22, then older MySQL.
    const STATEMENTS: [&str; 3] = [
        "SHOW ALL SLAVES STATUS",
        "SHOW REPLICA STATUS",
        "SHOW SLAVE STATUS",
    ];
    for stmt in STATEMENTS {
        match conn.query::<Row, _>(stmt).await {
            Ok(rows) => return Ok(aggregate(&rows)),
            Err(Error::Server(e)) if e.code == PARSE_ERROR => continue,
            Err(Error::Server(e)) if e.code == PRIVILEGE_MISSING => {
                tracing::debug!(
                    "mysql probe: cannot read replica status, reporting no replica: {}",
                    e.message
                );
                return Ok(None);
            }
            Err(e) => return Err(query_error(stmt, e)),
        }
    }
    Err("query failed: the server knows no statement for replica status".to_string())
}

fn aggregate(rows: &[Row]) -> Option<ReplicaState> {
    let mut state: Option<ReplicaState> = None;
    for row in rows {
        let io = text(row, &["Slave_IO_Running", "Replica_IO_Running"]);
        let sql = text(row, &["Slave_SQL_Running", "Replica_SQL_Running"]);
        let behind = seconds(row, &["Seconds_Behind_Master", "Seconds_Behind_Source"]);
        let this = ReplicaState {
            // "Connecting" and "Preparing" are not running yet.
            io_running: io.as_deref() == Some("Yes"),
            sql_running: sql.as_deref() == Some("Yes"),
            seconds_behind: behind,
        };
        state = Some(match state {
            None => this,
            Some(s) => ReplicaState {
                io_running: s.io_running && this.io_running,
                sql_running: s.sql_running && this.sql_running,
                seconds_behind: s
                    .seconds_behind
                    .zip(this.seconds_behind)
                    .map(|(a, b)| a.max(b)),
            },
        });
    }
    state
}

/// The first of `names` present in `row`, as text; `None` for missing,
/// NULL or non-text values (never panics on an odd server).
fn text(row: &Row, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| match row.get_opt::<Value, _>(*name)? {
            Ok(Value::Bytes(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        })
}

fn seconds(row: &Row, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|name| match row.get_opt::<Value, _>(*name)? {
            Ok(Value::Bytes(b)) => std::str::from_utf8(&b).ok()?.trim().parse().ok(),
            Ok(Value::Int(n)) => u64::try_from(n).ok(),
            Ok(Value::UInt(n)) => Some(n),
            _ => None,
        })
}

/// read_only comes back as 0/1, or as text (newer MariaDB makes it an enum:
/// OFF, ON, NO_LOCK, NO_LOCK_NO_ADMIN; all but OFF refuse writes).
fn value_is_on(value: &Value) -> bool {
    match value {
        Value::Int(n) => *n != 0,
        Value::UInt(n) => *n != 0,
        Value::Bytes(b) => {
            let s = String::from_utf8_lossy(b);
            let s = s.trim();
            !(s == "0" || s.eq_ignore_ascii_case("OFF"))
        }
        _ => false,
    }
}

/// Errors the server sends instead of letting us in.
const LOGIN_REFUSALS: [u16; 7] = [
    1044, // ER_DBACCESS_DENIED_ERROR
    1045, // ER_ACCESS_DENIED_ERROR
    1129, // ER_HOST_IS_BLOCKED
    1130, // ER_HOST_NOT_PRIVILEGED
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1862, // ER_MUST_CHANGE_PASSWORD_LOGIN
];

fn connect_error(e: Error) -> String {
    match e {
        Error::Server(e) if LOGIN_REFUSALS.contains(&e.code) => {
            format!("login refused: {}", e.message)
        }
        Error::Server(e) => format!("server refused connection: {}", e.message),
        other => format!("connect failed: {}", short(&other)),
    }
}

fn query_error(stmt: &str, e: Error) -> String {
    format!("{stmt} failed: {}", short(&e))
}

/// The driver's messages without its "Input/output error:" style wrapping.
fn short(e: &Error) -> String {
    match e {
        Error::Server(e) => e.message.clone(),
        Error::Io(IoError::Io(e)) => e.to_string(),
        Error::Io(e) => e.to_string(),
        Error::Driver(e) => e.to_string(),
        other => other.to_string(),
    }
}
