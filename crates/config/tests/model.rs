//! Good files: every key lands in the typed model, defaults are applied, warnings are
//! raised for legal-but-risky layouts, and the shipped examples keep parsing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use uphold_config::{
    parse_str, select_member, ClusterConfig, Config, GroupConfig, Loaded, Member, MemberRole,
    Timing,
};
use uphold_core::{node_id_for, ExecResource, GroupName, IpResource, NodeName, ResourceSpec};

fn load_ok(text: &str) -> Loaded {
    match parse_str(text, "t.toml") {
        Ok(loaded) => loaded,
        Err(errors) => panic!("unexpected errors:\n{errors}\nin:\n{text}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn node(name: &str) -> NodeName {
    NodeName::new(name).unwrap()
}

const FULL: &str = r#"
[cluster]
name = "shop"
state_dir = "/srv/uphold/{node}"
tls_dir = "/srv/uphold/tls/{node}"
lease = "3s"
renew_interval = "1s"
max_clock_drift = 0.05
heartbeat_interval = "150ms"
election_timeout_min = "600ms"
election_timeout_max = "1s 200ms"

[[cluster.member]]
name = "alpha"
address = "10.0.0.1:7400"
listen = "0.0.0.0:7400"
api = "127.0.0.1:8401"
role = "node"

[[cluster.member]]
name = "beta"
address = "[2001:db8::2]:7400"

[[cluster.member]]
name = "tiebreak"
address = "10.0.0.3:7400"
role = "witness"

[[group]]
name = "web"
nodes = ["beta", "alpha"]
failback = true

[[group.resource]]
type = "ip"
address = "10.0.0.100/24"
interface = "eth0"
arp_count = 5
monitor_interval = "500ms"

[[group.resource]]
type = "exec"
name = "nginx"
start = ["/usr/sbin/nginx"]
stop = ["/usr/sbin/nginx", "-s", "quit"]
monitor = ["/usr/bin/curl", "-fsS", "http://127.0.0.1/"]
interval = "3s"
timeout = "30s"
failures = 2
user = "nobody"

[[group]]
name = "db"

[[group.resource]]
type = "ip"
address = "2001:db8::100/64"
interface = "bond0.12"

[[group.resource]]
type = "exec"
name = "mariadb"
start = ["/bin/systemctl", "start", "mariadb"]
stop = ["/bin/systemctl", "stop", "mariadb"]
"#;

#[test]
fn full_file_lands_in_the_typed_model() {
    let loaded = load_ok(FULL);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let expected = Config {
        cluster: Some(ClusterConfig {
            name: "shop".to_string(),
            members: vec![
                Member {
                    name: node("alpha"),
                    id: node_id_for("alpha"),
                    address: addr("10.0.0.1:7400"),
                    listen: addr("0.0.0.0:7400"),
                    api: addr("127.0.0.1:8401"),
                    role: MemberRole::Node,
                },
                Member {
                    name: node("beta"),
                    id: node_id_for("beta"),
                    address: addr("[2001:db8::2]:7400"),
                    listen: addr("[2001:db8::2]:7400"),
                    api: addr("127.0.0.1:7401"),
                    role: MemberRole::Node,
                },
                Member {
                    name: node("tiebreak"),
                    id: node_id_for("tiebreak"),
                    address: addr("10.0.0.3:7400"),
                    listen: addr("10.0.0.3:7400"),
                    api: addr("127.0.0.1:7401"),
                    role: MemberRole::Witness,
                },
            ],
            groups: vec![
                GroupConfig {
                    name: GroupName::new("web").unwrap(),
                    nodes: vec![node("beta"), node("alpha")],
                    failback: true,
                    resources: vec![
                        ResourceSpec::Ip(IpResource {
                            address: "10.0.0.100".parse().unwrap(),
                            prefix_len: 24,
                            interface: "eth0".to_string(),
                            arp_count: 5,
                            monitor_interval: Duration::from_millis(500),
                        }),
                        ResourceSpec::Exec(ExecResource {
                            name: "nginx".to_string(),
                            start: vec!["/usr/sbin/nginx".to_string()],
                            stop: vec!["/usr/sbin/nginx".into(), "-s".into(), "quit".into()],
                            monitor: Some(vec![
                                "/usr/bin/curl".into(),
                                "-fsS".into(),
                                "http://127.0.0.1/".into(),
                            ]),
                            monitor_interval: Duration::from_secs(3),
                            timeout: Duration::from_secs(30),
                            failures_before_move: 2,
                            user: Some("nobody".to_string()),
                        }),
                    ],
                },
                GroupConfig {
                    name: GroupName::new("db").unwrap(),
                    // Defaulted: every role = "node" member in file order, never the witness.
                    nodes: vec![node("alpha"), node("beta")],
                    failback: false,
                    resources: vec![
                        ResourceSpec::Ip(IpResource {
                            address: "2001:db8::100".parse().unwrap(),
                            prefix_len: 64,
                            interface: "bond0.12".to_string(),
                            arp_count: 3,
                            monitor_interval: Duration::from_secs(1),
                        }),
                        ResourceSpec::Exec(ExecResource {
                            name: "mariadb".to_string(),
                            start: vec!["/bin/systemctl".into(), "start".into(), "mariadb".into()],
                            stop: vec!["/bin/systemctl".into(), "stop".into(), "mariadb".into()],
                            monitor: None,
                            monitor_interval: Duration::from_secs(2),
                            timeout: Duration::from_secs(20),
                            failures_before_move: 1,
                            user: None,
                        }),
                    ],
                },
            ],
            timing: Timing {
                lease: Duration::from_secs(3),
                renew_interval: Duration::from_secs(1),
                max_clock_drift: 0.05,
                heartbeat_interval: Duration::from_millis(150),
                election_timeout_min: Duration::from_millis(600),
                election_timeout_max: Duration::from_millis(1200),
            },
            state_dir: "/srv/uphold/{node}".to_string(),
            tls_dir: "/srv/uphold/tls/{node}".to_string(),
            protection: Default::default(),
        }),
        sync: Vec::new(),
        balance: Vec::new(),
        balancer: Default::default(),
    };
    assert_eq!(loaded.config, expected);
    let cluster = loaded.config.cluster.as_ref().unwrap();
    assert_eq!(
        cluster.state_dir_for(&node("beta")),
        PathBuf::from("/srv/uphold/beta")
    );
    assert_eq!(
        cluster.tls_dir_for(&node("beta")),
        PathBuf::from("/srv/uphold/tls/beta")
    );
}

#[test]
fn defaults_are_applied() {
    let loaded = load_ok(
        r#"
[cluster]
name = "shop"
[[cluster.member]]
name = "a"
address = "10.0.0.1:7400"
[[cluster.member]]
name = "b"
address = "10.0.0.2:7400"
[[cluster.member]]
name = "c"
address = "10.0.0.3:7400"
[[group]]
name = "g"
[[group.resource]]
type = "ip"
address = "10.0.0.10/24"
interface = "eth0"
"#,
    );
    let cluster = loaded.config.cluster.unwrap();
    assert_eq!(cluster.state_dir, "/var/lib/uphold");
    assert_eq!(cluster.tls_dir, "/etc/uphold/tls");
    assert_eq!(
        cluster.timing,
        Timing {
            lease: Duration::from_millis(800),
            renew_interval: Duration::from_millis(200),
            max_clock_drift: 0.01,
            heartbeat_interval: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
        }
    );
    let a = cluster.member("a").unwrap();
    assert_eq!(a.listen, a.address);
    assert_eq!(a.api, addr("127.0.0.1:7401"));
    assert_eq!(a.role, MemberRole::Node);
    assert_eq!(a.id, node_id_for("a"));
    assert_eq!(
        cluster.member_by_id(node_id_for("b")).unwrap().name,
        node("b")
    );
    let g = cluster.group("g").unwrap();
    assert_eq!(g.nodes, vec![node("a"), node("b"), node("c")]);
    assert!(!g.failback);
    match &g.resources[0] {
        ResourceSpec::Ip(ip) => {
            assert_eq!(ip.arp_count, 3);
            assert_eq!(ip.monitor_interval, Duration::from_secs(1));
        }
        other => panic!("expected an ip resource, got {other:?}"),
    }
}

#[test]
fn inline_tables_and_dotted_keys_are_the_same_config() {
    let inline = load_ok(
        r#"
cluster.name = "shop"
cluster.member = [
  { name = "a", address = "10.0.0.1:7400" },
  { name = "b", address = "10.0.0.2:7400" },
  { name = "w", address = "10.0.0.3:7400", role = "witness" },
]
group = [{ name = "g", resource = [{ type = "ip", address = "10.0.0.10/24", interface = "eth0" }] }]
"#,
    );
    let tables = load_ok(
        r#"
[cluster]
name = "shop"
[[cluster.member]]
name = "a"
address = "10.0.0.1:7400"
[[cluster.member]]
name = "b"
address = "10.0.0.2:7400"
[[cluster.member]]
name = "w"
address = "10.0.0.3:7400"
role = "witness"
[[group]]
name = "g"
[[group.resource]]
type = "ip"
address = "10.0.0.10/24"
interface = "eth0"
"#,
    );
    assert_eq!(inline, tables);
}

fn warnings_for(text: &str) -> Vec<String> {
    load_ok(text)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn members(n: usize, witnesses: usize) -> String {
    let mut text = String::from("[cluster]\nname = \"shop\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[cluster.member]]\nname = \"m{i}\"\naddress = \"10.0.0.{}:7400\"\n",
            i + 1
        ));
        if i >= n - witnesses {
            text.push_str("role = \"witness\"\n");
        }
    }
    text.push_str(
        "[[group]]\nname = \"g\"\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n",
    );
    text
}

#[test]
fn two_voters_warn_to_add_a_witness() {
    let warnings = warnings_for(&members(2, 0));
    assert_eq!(
        warnings,
        ["t.toml:3: a cluster of 2 voters stops every group when either is lost; add a witness (key cluster.member)"]
    );
}

#[test]
fn a_single_member_warns_that_there_is_no_failover() {
    let warnings = warnings_for(&members(1, 0));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no failover possible"), "{warnings:?}");
}

#[test]
fn four_voters_warn_and_odd_counts_do_not() {
    let warnings = warnings_for(&members(4, 1));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("even number of voters (4)"),
        "{warnings:?}"
    );
    assert!(warnings_for(&members(3, 1)).is_empty());
    assert!(warnings_for(&members(5, 0)).is_empty());
}

#[test]
fn a_cluster_without_groups_warns() {
    let text = members(3, 1);
    let cut = text.find("[[group]]").unwrap();
    let warnings = warnings_for(&text[..cut]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("no [[group]] sections"),
        "{warnings:?}"
    );
}

#[test]
fn an_empty_file_is_valid_but_warns() {
    for text in ["", "\n\n", "# only a comment\n"] {
        let loaded = load_ok(text);
        assert_eq!(
            loaded.config,
            Config {
                cluster: None,
                sync: Vec::new(),
                balance: Vec::new(),
                balancer: Default::default(),
            }
        );
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings, ["t.toml: no sections; nothing to run"]);
    }
}

#[test]
fn select_member_by_explicit_name() {
    let loaded = load_ok(FULL);
    let cluster = loaded.config.cluster.as_ref().unwrap();
    assert_eq!(
        select_member(cluster, Some("beta")).unwrap().name,
        node("beta")
    );
    // Witnesses run uphold too, so they can be selected.
    assert_eq!(
        select_member(cluster, Some("tiebreak")).unwrap().role,
        MemberRole::Witness
    );
    let error = select_member(cluster, Some("gamma")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no member named \"gamma\" (chosen by --node or UPHOLD_NODE); members are: alpha, beta, tiebreak \
         (key cluster.member)"
    );
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Examples are documentation people copy; they must always parse, cleanly.
#[test]
fn every_example_parses_without_warnings() {
    let mut seen = 0;
    let entries = std::fs::read_dir(examples_dir()).expect("examples/ exists");
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        seen += 1;
        match uphold_config::load(&path) {
            Ok(loaded) => assert!(
                loaded.warnings.is_empty(),
                "{}: unexpected warnings: {:?}",
                path.display(),
                loaded.warnings
            ),
            Err(errors) => panic!("{} does not parse:\n{errors}", path.display()),
        }
    }
    assert!(seen >= 2, "expected the example files, found {seen}");
}

#[test]
fn cluster_example_is_two_rooms_and_a_witness() {
    let loaded = uphold_config::load(&examples_dir().join("cluster.toml")).unwrap();
    let cluster = loaded.config.cluster.unwrap();
    let roles: Vec<MemberRole> = cluster.members.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [MemberRole::Node, MemberRole::Node, MemberRole::Witness]
    );
    assert_eq!(cluster.groups.len(), 1);
    let kinds: Vec<&str> = cluster.groups[0]
        .resources
        .iter()
        .map(|r| match r {
            ResourceSpec::Ip(_) => "ip",
            ResourceSpec::Exec(_) => "exec",
        })
        .collect();
    assert_eq!(kinds, ["ip", "exec"]);
}

/// The reference's own example is copied by readers too.
#[test]
fn config_md_examples_parse() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("CONFIG.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(!blocks.is_empty(), "CONFIG.md has no ```toml example");
    for block in blocks {
        let loaded = load_ok(block);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}

/// `CONFIG.md` documents exactly the keys the parser accepts, section by
/// section: a key added to a file struct without its row, or a row for a key
/// that was renamed or removed, fails here.
#[test]
fn config_md_documents_exactly_the_keys_the_parser_accepts() {
    use std::collections::{BTreeMap, BTreeSet};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("CONFIG.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let backticked = |text: &str| -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    // Heading (its first backticked text) -> keys named in the first cell of
    // its table's rows.
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut inline: BTreeMap<String, String> = BTreeMap::new();
    for line in doc.lines() {
        if line.starts_with("## ") || line.starts_with("### ") {
            current = backticked(line).into_iter().next();
            if let Some(heading) = &current {
                documented.entry(heading.clone()).or_default();
            }
            continue;
        }
        let Some(heading) = current.as_ref().filter(|_| line.starts_with("| `")) else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let keys = backticked(cells[1]);
        // A list of inline tables is described in its row's type cell.
        if let (Some(key), Some(kind)) = (keys.first(), cells.get(2)) {
            inline.insert(format!("{heading}.{key}"), kind.to_string());
        }
        documented.entry(heading.clone()).or_default().extend(keys);
    }
    for section in uphold_config::keys::sections() {
        let accepted: BTreeSet<String> = section.keys.iter().map(|k| k.to_string()).collect();
        let heading = section.heading;
        if let Some(parent) = heading
            .strip_prefix("[[")
            .and_then(|h| h.strip_suffix("]]"))
            .filter(|h| !documented.contains_key(heading) && h.contains('.'))
        {
            // Documented in its parent's row: `{ cert, key }`.
            let (outer, key) = parent.rsplit_once('.').unwrap();
            let row = inline
                .get(&format!("[[{outer}]].{key}"))
                .unwrap_or_else(|| {
                    panic!("{heading}: no section and no row `{key}` in [[{outer}]]")
                });
            for k in &accepted {
                assert!(
                    row.contains(k.as_str()),
                    "{heading}: key `{k}` missing from the row {row:?}"
                );
            }
            continue;
        }
        let rows = documented
            .get(heading)
            .unwrap_or_else(|| panic!("CONFIG.md has no section headed `{heading}`"));
        // A sub-table with a section of its own counts as documented.
        let bare = heading.trim_matches(|c| c == '[' || c == ']');
        let own_section = |key: &str| {
            documented.contains_key(&format!("[{bare}.{key}]"))
                || documented.contains_key(&format!("[[{bare}.{key}]]"))
        };
        let undocumented: Vec<&String> = accepted
            .iter()
            .filter(|k| !rows.contains(*k) && !own_section(k))
            .collect();
        let unknown: Vec<&String> = rows.difference(&accepted).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "{heading}: accepted but not in CONFIG.md: {undocumented:?}; in CONFIG.md but not accepted: {unknown:?}"
        );
    }
}

#[test]
fn a_lease_shorter_than_an_election_is_fine_since_leases_are_not_logged() {
    // Renewals no longer go through the Raft leader, so an election does not
    // stall them: a 400 ms lease with slow elections is valid and quiet.
    let text = members(3, 1).replace(
        "name = \"shop\"\n",
        "name = \"shop\"\nlease = \"400ms\"\nrenew_interval = \"100ms\"\nelection_timeout_max = \"400ms\"\n",
    );
    assert!(warnings_for(&text).is_empty(), "{:?}", warnings_for(&text));
    assert!(warnings_for(&members(3, 1)).is_empty());
}

#[test]
fn a_command_user_this_host_lacks_is_a_warning_not_an_error() {
    // The config is shared by every member; a witness need not have the web
    // servers' accounts, so only the members lacking it fail its commands.
    let text = members(2, 0).replace(
        "interface = \"eth0\"\n",
        "interface = \"eth0\"\n[[group.resource]]\ntype = \"exec\"\nname = \"site\"\n\
         start = [\"/bin/true\"]\nstop = [\"/bin/true\"]\nuser = \"uphold-no-such-user\"\n",
    );
    let warnings = warnings_for(&text);
    let lacking: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("user \"uphold-no-such-user\" does not exist on this host"))
        .collect();
    assert_eq!(lacking.len(), 1, "{warnings:?}");
    assert!(
        lacking[0].contains("group[0].resource[1].user"),
        "{warnings:?}"
    );
}
