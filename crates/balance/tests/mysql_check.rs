//! The `mysql` health-check probe against real MariaDB servers: private
//! mariadbd instances in temp dirs (a primary and a replica), plus a fake
//! server that accepts and never answers; and a tcp balancer frontend with
//! `require = "primary"` routing real client logins to whichever server is
//! writable, refusing everyone while two are.

mod common;

use common::free_port;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uphold_balance::health::mysql::{probe, MysqlState, ReplicaState};
use uphold_balance::BalanceService;
use uphold_testkit::{find_program, require_program};

const USER: &str = "uphold";
const PASSWORD: &str = "probe-secret";
/// An account without SLAVE MONITOR: the probe must still succeed.
const PLAIN_USER: &str = "plain";
const PLAIN_PASSWORD: &str = "plain-secret";
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn mariadb_available(test: &str) -> bool {
    ["mariadbd", "mariadb-install-db", "mariadb"]
        .iter()
        .all(|prog| require_program(test, prog))
}

/// A private mariadbd: own datadir, socket and port in a temp dir; killed
/// (and reaped) on drop.
struct Mariadb {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mariadb {
    /// Starts a server with `extra` server options, waits until it answers,
    /// and creates the probe accounts (outside the binlog, so a replica of
    /// this server does not replay them).
    fn start(extra: &[String]) -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("uphold-mysql-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        // A private tmpdir: instances sharing /tmp can collide on temp-table
        // file names, which made concurrent installs fail now and then.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("create tmpdir");
        let install = Command::new(find_program("mariadb-install-db").expect("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .args(run_as_root_flag())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr)
        );

        let port = free_port();
        let log = dir.path().join("error.log");
        let child = Command::new(find_program("mariadbd").expect("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--log-error={}", log.display()))
            // Grants are for 127.0.0.1; reverse DNS would only slow logins.
            .arg("--skip-name-resolve")
            .args(run_as_root_flag())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        let mut server = Mariadb { child, port, dir };

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.sql("SELECT 1").is_ok() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "mariadbd exited ({status}) before accepting:\n{}",
                    server.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd not accepting after 60s:\n{}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        server.sql_ok(&format!(
            "SET sql_log_bin=0; \
             CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; \
             GRANT SLAVE MONITOR ON *.* TO '{USER}'@'127.0.0.1'; \
             CREATE USER '{PLAIN_USER}'@'127.0.0.1' IDENTIFIED BY '{PLAIN_PASSWORD}';"
        ));
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs statements as root over the unix socket; stdout or the client's error.
    fn sql(&self, statements: &str) -> Result<String, String> {
        let out = Command::new(find_program("mariadb").expect("mariadb"))
            .arg("--no-defaults")
            .arg("--protocol=socket")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args([
                "--user=root",
                "--batch",
                "--skip-column-names",
                "--connect-timeout=5",
            ])
            .arg("--execute")
            .arg(statements)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql_ok(&self, statements: &str) -> String {
        self.sql(statements)
            .unwrap_or_else(|e| panic!("{statements}: {e}\n{}", self.log_tail()))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        // SIGKILL: the datadir is thrown away, so a clean shutdown buys nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mariadbd refuses to run as root unless told to.
fn run_as_root_flag() -> Vec<String> {
    if nix::unistd::geteuid().is_root() {
        vec!["--user=root".to_string()]
    } else {
        Vec::new()
    }
}

async fn probe_ok(addr: SocketAddr) -> MysqlState {
    probe(addr, USER, PASSWORD, PROBE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe of {addr}: {e}"))
}

#[tokio::test]
async fn probe_follows_read_only() {
    if !mariadb_available("probe_follows_read_only") {
        return;
    }
    let server = Mariadb::start(&[]);
    let writable = MysqlState {
        read_only: false,
        replica: None,
    };
    assert_eq!(probe_ok(server.addr()).await, writable);

    server.sql_ok("SET GLOBAL read_only=1");
    assert_eq!(
        probe_ok(server.addr()).await,
        MysqlState {
            read_only: true,
            replica: None
        }
    );

    server.sql_ok("SET GLOBAL read_only=0");
    assert_eq!(probe_ok(server.addr()).await, writable);

    let plain = probe(server.addr(), PLAIN_USER, PLAIN_PASSWORD, PROBE_TIMEOUT).await;
    assert_eq!(plain, Ok(writable));
}

#[tokio::test]
async fn wrong_password_is_refused_quickly() {
    if !mariadb_available("wrong_password_is_refused_quickly") {
        return;
    }
    let server = Mariadb::start(&[]);
    let started = Instant::now();
    let err = probe(server.addr(), USER, "not-the-password", PROBE_TIMEOUT)
        .await
        .expect_err("a wrong password must fail");
    let elapsed = started.elapsed();
    assert!(err.starts_with("login refused: "), "{err}");
    assert!(err.contains("denied"), "{err}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}: {err}");
}

#[tokio::test]
async fn silent_and_closed_servers_fail_within_the_timeout() {
    // Accepts and then says nothing: the handshake never starts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = probe(silent, USER, PASSWORD, timeout)
        .await
        .expect_err("silent server");
    let elapsed = started.elapsed();
    assert_eq!(err, "timed out after 1s");
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(500),
        "took {elapsed:?}"
    );
    holder.abort();

    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let started = Instant::now();
    let err = probe(closed, USER, PASSWORD, timeout)
        .await
        .expect_err("closed port");
    assert!(err.starts_with("connect failed: "), "{err}");
    assert!(
        started.elapsed() < timeout,
        "took {:?}: {err}",
        started.elapsed()
    );
}

#[tokio::test]
async fn replica_threads_are_reported() {
    if !mariadb_available("replica_threads_are_reported") {
        return;
    }
    let primary = Mariadb::start(&[
        "--server-id=1".to_string(),
        "--log-bin=primary-bin".to_string(),
    ]);
    let replica = Mariadb::start(&["--server-id=2".to_string(), "--read-only".to_string()]);
    primary.sql_ok(
        "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl-secret'; \
         GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';",
    );
    replica.sql_ok(&format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
         MASTER_USER='repl', MASTER_PASSWORD='repl-secret', \
         MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=no; \
         START SLAVE;",
        primary.port
    ));

    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let state = probe_ok(replica.addr()).await;
        if let Some(r) = &state.replica {
            if r.io_running && r.sql_running {
                break state;
            }
        }
        assert!(
            Instant::now() < deadline,
            "replica threads not running after 30s: {state:?}\n{}",
            replica.sql("SHOW SLAVE STATUS\\G").unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(running.read_only, "{running:?}");
    let lag = running.replica.as_ref().and_then(|r| r.seconds_behind);
    assert!(lag.is_some_and(|s| s < 60), "{running:?}");
    // The primary's CREATE USER replicated: proof the SQL thread applies events.
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica
        .sql_ok("SELECT COUNT(*) FROM mysql.user WHERE user='repl'")
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "primary's events never applied");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An account that may not read the replica status still gets an answer.
    let plain = probe(replica.addr(), PLAIN_USER, PLAIN_PASSWORD, PROBE_TIMEOUT).await;
    assert_eq!(
        plain,
        Ok(MysqlState {
            read_only: true,
            replica: None
        })
    );

    replica.sql_ok("STOP SLAVE");
    assert_eq!(
        probe_ok(replica.addr()).await,
        MysqlState {
            read_only: true,
            replica: Some(ReplicaState {
                io_running: false,
                sql_running: false,
                seconds_behind: None
            })
        }
    );
}

/// A frontend server's health and whether it is fenced, from the status view.
fn server_state(lb: &BalanceService, server: &str) -> (String, bool) {
    let status = lb.status();
    let s = status
        .frontends
        .iter()
        .find(|f| f.name == "db")
        .and_then(|f| f.servers.iter().find(|s| s.name == server))
        .unwrap_or_else(|| panic!("server {server} missing from status: {status:?}"));
    (s.health.clone(), s.fenced)
}

/// Status of servers a and b, for failure messages.
fn describe_servers(lb: &BalanceService) -> String {
    let status = lb.status();
    status
        .frontends
        .iter()
        .flat_map(|f| f.servers.iter())
        .map(|s| {
            format!(
                "{}: health {} fenced {} last check {:?}",
                s.name, s.health, s.fenced, s.last_check
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Polls the status until a and b show `want` (health, fenced) each.
async fn wait_for_servers(lb: &BalanceService, want_a: (&str, bool), want_b: (&str, bool)) {
    let limit = Duration::from_secs(15);
    let deadline = Instant::now() + limit;
    loop {
        let (a, b) = (server_state(lb, "a"), server_state(lb, "b"));
        if (a.0.as_str(), a.1) == want_a && (b.0.as_str(), b.1) == want_b {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {limit:?} wanted a {want_a:?}, b {want_b:?}; status: {}",
            describe_servers(lb)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A real client login through the balancer on a new connection, answering
/// the port of the server it reached.
async fn port_via(balancer: SocketAddr) -> Result<u16, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(balancer.ip().to_string())
        .tcp_port(balancer.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        // The driver would otherwise switch to the server's unix socket once it
        // sees a local server, and bypass the balancer.
        .prefer_socket(false)
        .stmt_cache_size(0);
    let session = async {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let port: Option<u16> = conn
            .query_first("SELECT @@port")
            .await
            .map_err(|e| format!("SELECT @@port: {e}"))?;
        let _ = conn.disconnect().await;
        port.ok_or_else(|| "SELECT @@port: no row".to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), session).await {
        Ok(result) => result,
        Err(_) => Err("no answer within 5s".to_string()),
    }
}

/// Several new connections through the balancer all land on `server`.
async fn assert_routed_to(balancer: SocketAddr, server: &Mariadb, name: &str) {
    for i in 0..4 {
        match port_via(balancer).await {
            Ok(port) => assert_eq!(
                port, server.port,
                "connection {i} should have reached {name} (port {})",
                server.port
            ),
            Err(e) => panic!("connection {i} through the balancer, expecting {name}: {e}"),
        }
    }
}

/// Runs root statements on a server directly (not through the balancer)
/// without stalling the runtime's other tasks (the health checks).
fn direct_sql(server: &Mariadb, statements: &str) {
    tokio::task::block_in_place(|| server.sql_ok(statements));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_writable_server() {
    if !mariadb_available("writes_follow_the_writable_server") {
        return;
    }
    let started = Instant::now();
    // Installing a datadir takes seconds: both at once.
    let (a, b) = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let a = scope.spawn(|| Mariadb::start(&[]));
            let b = scope.spawn(|| Mariadb::start(&["--read-only".to_string()]));
            (
                a.join().expect("start server a"),
                b.join().expect("start server b"),
            )
        })
    });
    let servers_ready = started.elapsed();
    let port = common::free_port();
    let balancer = SocketAddr::from(([127, 0, 0, 1], port));
    let lb = common::start(&format!(
        r#"
[balancer]
threads = 1
[[balance]]
name = "db"
listen = "{balancer}"
mode = "tcp"
[balance.check]
type = "mysql"
user = "{USER}"
password = "{PASSWORD}"
require = "primary"
interval = "200ms"
timeout = "2s"
rise = 1
fall = 1
[[balance.server]]
name = "a"
address = "{}"
[[balance.server]]
name = "b"
address = "{}"
"#,
        a.addr(),
        b.addr()
    ));

    // 1. A is the writable one.
    wait_for_servers(&lb, ("up", false), ("down", false)).await;
    assert_routed_to(balancer, &a, "a").await;

    // 2. Switchover. Until A's next check, the balancer may still believe A
    // writable and fence both for a moment; the wait covers that.
    direct_sql(&a, "SET GLOBAL read_only=1");
    direct_sql(&b, "SET GLOBAL read_only=0");
    wait_for_servers(&lb, ("down", false), ("up", false)).await;
    assert_routed_to(balancer, &b, "b").await;

    // 3. Split: both writable, nobody gets a connection.
    direct_sql(&a, "SET GLOBAL read_only=0");
    common::wait_until("a and b fenced", Duration::from_secs(15), || {
        server_state(&lb, "a").1 && server_state(&lb, "b").1
    })
    .await;
    for i in 0..3 {
        let attempt = Instant::now();
        let result = port_via(balancer).await;
        let took = attempt.elapsed();
        assert!(
            result.is_err(),
            "connection {i} reached port {result:?} while both servers are writable; status: {}",
            describe_servers(&lb)
        );
        assert!(
            took < Duration::from_secs(3),
            "refusal {i} took {took:?}: {result:?}"
        );
    }
    let (a_state, b_state) = (server_state(&lb, "a"), server_state(&lb, "b"));
    assert!(a_state.1 && b_state.1, "a {a_state:?}, b {b_state:?}");

    // 4. Heal: A read-only again, B takes the connections.
    direct_sql(&a, "SET GLOBAL read_only=1");
    wait_for_servers(&lb, ("down", false), ("up", false)).await;
    assert_routed_to(balancer, &b, "b").await;

    lb.stop();
    eprintln!(
        "writes_follow_the_writable_server: {:?} (servers started in {:?})",
        started.elapsed(),
        servers_ready
    );
}
