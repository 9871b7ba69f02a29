//! `[[balance]]` validation: the typed model of a full frontend, and a clear error
//! naming the line and key for each way of getting it wrong.

use std::time::Duration;
use uphold_config::balance::*;

fn errors(text: &str) -> Vec<String> {
    match uphold_config::parse_str(text, "b.toml") {
        Ok(l) => panic!("expected errors, got {:?}", l.config.balance),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str, want: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "no error containing {want:?} in {errs:#?}"
    );
}

const MIN: &str = "[[balance]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n[[balance.server]]\nname = \"a\"\naddress = \"10.0.0.1:80\"\n";

fn with_check(lines: &str) -> String {
    MIN.replace(
        "[[balance.server]]",
        &format!("[balance.check]\n{lines}\n[[balance.server]]"),
    )
}

#[test]
fn a_minimal_frontend_gets_sane_defaults() {
    let c = uphold_config::parse_str(MIN, "b.toml").unwrap().config;
    let f = &c.balance[0];
    assert_eq!(f.mode, BalanceMode::Tcp);
    assert_eq!(f.algorithm, Algorithm::RoundRobin);
    assert_eq!(
        f.ports,
        PortRange {
            first: 8080,
            last: 8080
        }
    );
    assert_eq!(f.check.kind, CheckKind::Tcp);
    assert_eq!(
        (f.check.interval, f.check.rise, f.check.fall),
        (Duration::from_secs(2), 2, 3)
    );
    assert_eq!(f.retries, 2);
    assert!(!f.forwarded_for, "tcp mode has no headers to add");
    assert_eq!(f.servers[0].weight, 1);
    assert_eq!(c.balancer.api.to_string(), "127.0.0.1:7401");
}

#[test]
fn a_full_http_frontend_lands_in_the_model() {
    let text = r#"
[balancer]
threads = 2
[[balance]]
name = "web"
listen = "[::]:8000-8009"
mode = "http"
algorithm = "source"
cookie = "SRV"
slowstart = "30s"
[balance.check]
type = "http"
method = "HEAD"
path = "/health"
expect_status = "2xx"
expect_body = "ok"
interval = "500ms"
[[balance.server]]
name = "a"
address = "[2001:db8::1]:9000-9009"
weight = 5
maxconn = 100
[[balance.server]]
name = "b"
address = "[2001:db8::2]"
backup = true
"#;
    let c = uphold_config::parse_str(text, "b.toml").unwrap().config;
    let f = &c.balance[0];
    assert_eq!(c.balancer.threads, Some(2));
    assert_eq!((f.ports.first, f.ports.last), (8000, 8009));
    assert_eq!(
        f.check.timeout,
        Duration::from_millis(500),
        "timeout defaults to the shorter interval"
    );
    assert!(
        f.check.kind
            == CheckKind::Http {
                method: "HEAD".into(),
                path: "/health".into(),
                host: None,
                expect_status: StatusMatch::Range(200, 299),
                expect_body: Some("ok".into()),
            }
    );
    assert_eq!(
        f.servers[0].address_for(8003, 8000).to_string(),
        "[2001:db8::1]:9003"
    );
    assert_eq!(
        f.servers[1].address_for(8003, 8000).to_string(),
        "[2001:db8::2]:8003"
    );
    assert!(f.forwarded_for);
}

#[test]
fn mistakes_are_named_with_line_and_key() {
    one_error(&MIN.replace("127.0.0.1:8080", "127.0.0.1"), "missing port");
    one_error(
        &MIN.replace("127.0.0.1:8080", "127.0.0.1:90-80"),
        "runs backwards",
    );
    one_error(
        &MIN.replace("127.0.0.1:8080", "web.example:80"),
        "not an IP address",
    );
    one_error(&MIN.replace("10.0.0.1:80", "10.0.0.1"), "missing port");
    one_error(
        &MIN.replace("127.0.0.1:8080", "127.0.0.1:80-82")
            .replace("10.0.0.1:80", "10.0.0.1:90-91"),
        "the range has 2 ports but the frontend listens on 3",
    );
    one_error(
        &MIN.replace("name = \"web\"", "name = \"web\"\nalgorithm = \"fastest\""),
        "unknown algorithm \"fastest\"",
    );
    one_error(
        &MIN.replace("name = \"web\"", "name = \"web\"\ncookie = \"S\""),
        "cookie persistence needs mode = \"http\"",
    );
    one_error(
        &with_check("type = \"agent\""),
        "an agent check needs `port`",
    );
    one_error(
        &with_check("type = \"tcp\"\npath = \"/\""),
        "`path` does not apply to a check of type \"tcp\"",
    );
    one_error(
        &with_check("type = \"mysql\""),
        "a mysql check needs `user`",
    );
    one_error(
        &with_check("type = \"http\"\nexpect_status = \"2xy\""),
        "expect_status \"2xy\"",
    );
    one_error(
        &MIN.replace(
            "address = \"10.0.0.1:80\"",
            "address = \"10.0.0.1:80\"\nweight = 300",
        ),
        "weight = 300 is out of range",
    );
    one_error(
        &format!("{MIN}{MIN}"),
        "balance name \"web\" is used twice (first at line 2)",
    );
    one_error(
        &format!(
            "{MIN}{}",
            MIN.replace("\"web\"", "\"web2\"")
                .replace("8080", "8079-8081")
        ),
        "overlap",
    );
    one_error(
        "[[balance]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\n",
        "has no servers",
    );
    one_error(
        &MIN.replace(
            "name = \"web\"",
            "name = \"web\"\ntls = [{ cert = \"/c.pem\", key = \"/k.pem\" }]",
        ),
        "TLS termination needs mode = \"http\"",
    );
    one_error(
        &format!("[balancer]\napi = \"0.0.0.0:7401\"\n{MIN}"),
        "not a loopback address",
    );
    one_error(
        &MIN.replace("name = \"web\"", "name = \"web\"\nmode = \"http\"")
            .replace(
                "address = \"10.0.0.1:80\"",
                "address = \"10.0.0.1:80\"\nproxy_protocol = \"v1\"",
            ),
        "proxy_protocol is for mode = \"tcp\"",
    );
    one_error(
        &MIN.replace("name = \"web\"", "name = \"web\"\nmax_header_bytes = 1024"),
        "max_header_bytes = 1024 is out of range",
    );
    let errs = errors(&MIN.replace("127.0.0.1:8080", "127.0.0.1:0"));
    assert!(errs[0].starts_with("b.toml:3:"), "{errs:?}");
    assert!(errs[0].contains("balance[0].listen"), "{errs:?}");
}

#[test]
fn unknown_keys_are_refused() {
    one_error(
        &MIN.replace("name = \"web\"", "name = \"web\"\nbalance_mode = \"x\""),
        "balance_mode",
    );
    one_error(
        &MIN.replace("name = \"a\"", "name = \"a\"\nport = 80"),
        "port",
    );
}

#[test]
fn an_exec_check_may_run_as_a_system_user() {
    let loaded = uphold_config::parse_str(
        &with_check("type = \"exec\"\ncommand = [\"/usr/local/bin/check-web\"]\nuser = \"nobody\""),
        "b.toml",
    )
    .unwrap();
    assert_eq!(
        loaded.config.balance[0].check.kind,
        CheckKind::Exec {
            command: vec!["/usr/local/bin/check-web".to_string()],
            user: Some("nobody".to_string()),
        }
    );
    one_error(
        &with_check("type = \"exec\"\ncommand = [\"/bin/true\"]\nuser = \"Web Admin\""),
        "invalid user \"Web Admin\"",
    );
    // `user` is the MySQL account of a mysql check, and means nothing to tcp.
    one_error(
        &with_check("type = \"tcp\"\nuser = \"nobody\""),
        "`user` does not apply to a check of type \"tcp\"",
    );
}
