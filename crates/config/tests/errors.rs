//! Bad inputs: every error must name the file, the line and the key, and quote the
//! offending value. Each case marks the line the error must point at with `#!`.

use uphold_config::{parse_str, ConfigError};

/// A valid file with slots; each case replaces one slot.
const TEMPLATE: &str = r#"[cluster]
{cluster}

[[cluster.member]]
{alpha}

[[cluster.member]]
name = "beta"
address = "10.0.0.2:7400"

[[cluster.member]]
name = "gamma"
address = "10.0.0.3:7400"
role = "witness"

[[group]]
{group}

[[group.resource]]
{ip}

[[group.resource]]
{exec}
{extra}
"#;

const SLOTS: &[(&str, &str)] = &[
    ("cluster", "name = \"shop\""),
    ("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\""),
    ("group", "name = \"web\""),
    ("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\""),
    (
        "exec",
        "type = \"exec\"\nname = \"nginx\"\nstart = [\"/usr/sbin/nginx\"]\nstop = [\"/usr/sbin/nginx\", \"-s\", \"quit\"]",
    ),
    ("extra", ""),
];

const IP: &str = "type = \"ip\"\ninterface = \"eth0\"\n";
const EXEC: &str = "type = \"exec\"\nname = \"nginx\"\nstop = [\"/bin/true\"]\n";

struct Case {
    /// Slot to replace, or "file" for the whole text.
    slot: &'static str,
    content: &'static str,
    key: &'static str,
    fragment: &'static str,
}

const fn case(
    slot: &'static str,
    content: &'static str,
    key: &'static str,
    fragment: &'static str,
) -> Case {
    Case {
        slot,
        content,
        key,
        fragment,
    }
}

fn render(case: &Case) -> String {
    if case.slot == "file" {
        return case.content.to_string();
    }
    let mut text = TEMPLATE.to_string();
    for (slot, default) in SLOTS {
        let value = if *slot == case.slot {
            case.content
        } else {
            default
        };
        text = text.replace(&format!("{{{slot}}}"), value);
    }
    assert!(
        !text.contains('{') || case.content.contains('{'),
        "unfilled slot in {text}"
    );
    text
}

fn marked_line(text: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("#!"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "each case marks exactly one line with #!:\n{text}"
    );
    lines[0]
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // Syntax errors.
        case("file", "[cluster #!\nname = \"a\"\n", "cluster", "syntax error"),
        case("cluster", "name = \"shop\"\nlease = \"800ms #!", "cluster.lease", "syntax error"),
        case("cluster", "name = \"shop\"\nname = \"x\" #!", "cluster.name", "duplicate key"),
        case("extra", "[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.7/24\"\ninterface = = \"eth0\" #!", "group[0].resource[2].interface", "syntax error"),
        // Unknown keys, at every level.
        case("file", "[bogus] #!\nx = 1\n", "bogus", "unknown field `bogus`"),
        case("file", "colour = 1 #!\n", "colour", "unknown field `colour`"),
        case("extra", "[mysql] #!\nhost = \"db\"", "mysql", "unknown field `mysql`"),
        case("cluster", "name = \"shop\"\nleese = \"1s\" #!", "cluster.leese", "unknown field `leese`"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"\nrol = \"node\" #!", "cluster.member[0].rol", "unknown field `rol`"),
        case("group", "name = \"web\"\nfailover = true #!", "group[0].failover", "unknown field `failover`"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\narp = 3 #!", "group[0].resource[0].arp", "unknown field `arp`"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\ncommand = \"x\" #!", "group[0].resource[1].command", "unknown field `command`"),
        case("file", "[cluster]\nname = \"shop\"\nmember = [{ name = \"alpha\", address = \"10.0.0.1:7400\", colour = 1 }] #!\n", "cluster.member[0].colour", "unknown field `colour`"),
        // Wrong types and shapes.
        case("file", "group = [{ name = \"g\", resource = [{ type = \"ip\", address = \"10.0.0.9/24\", interface = \"eth0\" }, { type = \"exec\", name = \"x\", start = [\"/a\"], stop = [\"/a\"], every = 1 }] }] #!\n[cluster]\nname = \"shop\"\nmember = [{ name = \"a\", address = \"10.0.0.1:7400\" }]\n", "group[0].resource[1].every", "unknown field `every`"),
        case("ip", "type = \"vip\" #!\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"", "group[0].resource[0].type", "unknown variant `vip`"),
        case("extra", "[[group.resource]] #!\naddress = \"10.0.0.5/24\"", "group[0].resource[2].type", "missing field `type`"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\narp_count = \"3\" #!", "group[0].resource[0].arp_count", "invalid type"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = \"nginx -g daemon\" #!\nstop = [\"/a\"]", "group[0].resource[1].start", "shell command lines are not accepted"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\ninterval = 5 #!", "group[0].resource[1].interval", "with a unit"),
        case("cluster", "name = \"shop\"\nlease = 800 #!", "cluster.lease", "with a unit"),
        case("cluster", "name = \"shop\"\nmax_clock_drift = \"x\" #!", "cluster.max_clock_drift", "invalid type"),
        case("group", "name = \"web\"\nfailback = \"yes\" #!", "group[0].failback", "invalid type"),
        // [cluster] values.
        case("cluster", "name = \"Shop\" #!", "cluster.name", "invalid cluster name \"Shop\""),
        case("file", "[cluster] #!\n[[cluster.member]]\nname = \"a\"\naddress = \"10.0.0.1:7400\"\n", "cluster.name", "missing the required key `name`"),
        case("cluster", "name = \"shop\"\nstate_dir = \"\" #!", "cluster.state_dir", "must not be empty"),
        case("cluster", "name = \"shop\"\nlease = \"soon\" #!", "cluster.lease", "invalid duration \"soon\""),
        case("cluster", "name = \"shop\"\nlease = \"0s\" #!", "cluster.lease", "must be greater than 0"),
        case("cluster", "name = \"shop\"\nrenew_interval = \"400ms\" #!", "cluster.renew_interval", "at most a third of lease"),
        case("cluster", "name = \"shop\"\nmax_clock_drift = 0.9 #!", "cluster.max_clock_drift", "invalid max_clock_drift 0.9"),
        case("cluster", "name = \"shop\"\nmax_clock_drift = -0.1 #!", "cluster.max_clock_drift", "between 0 and 0.5"),
        case("cluster", "name = \"shop\"\nelection_timeout_min = \"40ms\" #!", "cluster.election_timeout_min", "greater than heartbeat_interval"),
        case("cluster", "name = \"shop\"\nelection_timeout_max = \"150ms\" #!", "cluster.election_timeout_max", "greater than election_timeout_min"),
        // Members.
        case("file", "[cluster] #!\nname = \"shop\"\n", "cluster.member", "at least one"),
        case("alpha", "name = \"Alpha\" #!\naddress = \"10.0.0.1:7400\"", "cluster.member[0].name", "invalid member name \"Alpha\""),
        case("extra", "[[cluster.member]]\nname = \"alpha\" #!\naddress = \"10.0.0.9:7400\"", "cluster.member[3].name", "\"alpha\" is used twice (first at line 5)"),
        case("extra", "[[cluster.member]] #!\nname = \"delta\"", "cluster.member[3].address", "missing the required key `address`"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1\" #!", "cluster.member[0].address", "invalid address \"10.0.0.1\": missing port"),
        case("alpha", "name = \"alpha\"\naddress = \"db1.example.com:7400\" #!", "cluster.member[0].address", "DNS names are not supported"),
        case("alpha", "name = \"alpha\"\naddress = \"fe80::1:7400\" #!", "cluster.member[0].address", "IPv6 addresses need brackets"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:0\" #!", "cluster.member[0].address", "port must not be 0"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:70000\" #!", "cluster.member[0].address", "invalid port \"70000\""),
        case("alpha", "name = \"alpha\"\naddress = \"0.0.0.0:7400\" #!", "cluster.member[0].address", "unspecified"),
        case("extra", "[[cluster.member]]\nname = \"delta\"\naddress = \"10.0.0.1:7400\" #!", "cluster.member[3].address", "\"10.0.0.1:7400\" is already used by another member (line 6)"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"\nlisten = \"nope\" #!", "cluster.member[0].listen", "invalid listen address \"nope\""),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"\napi = \"127.0.0.1\" #!", "cluster.member[0].api", "invalid api address \"127.0.0.1\": missing port"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"\napi = \"0.0.0.0:7401\" #!", "cluster.member[0].api", "not a loopback address"),
        case("alpha", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"\nrole = \"arbiter\" #!", "cluster.member[0].role", "invalid role \"arbiter\""),
        // Groups.
        case("file", "[[group]] #!\nname = \"web\"\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.1/24\"\ninterface = \"eth0\"\n", "group[0]", "needs a [cluster] section"),
        case("group", "name = \"Web\" #!", "group[0].name", "invalid group name \"Web\""),
        case("extra", "[[group]] #!\nfailback = true\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.8/24\"\ninterface = \"eth0\"", "group[1].name", "group 2 is missing the required key `name`"),
        case("extra", "[[group]]\nname = \"web\" #!\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.200/24\"\ninterface = \"eth0\"", "group[1].name", "group name \"web\" is used twice"),
        case("group", "name = \"web\"\nnodes = [\"alpha\", \"omega\"] #!", "group[0].nodes[1]", "unknown member \"omega\" in nodes; members are: alpha, beta, gamma"),
        case("group", "name = \"web\"\nnodes = [\"gamma\"] #!", "group[0].nodes[0]", "\"gamma\" is a witness"),
        case("group", "name = \"web\"\nnodes = [\"alpha\", \"beta\", \"alpha\"] #!", "group[0].nodes[2]", "\"alpha\" is listed twice"),
        case("group", "name = \"web\"\nnodes = [] #!", "group[0].nodes", "nodes is empty"),
        case("extra", "[[group]] #!\nname = \"db\"", "group[1].resource", "group \"db\" has no resources"),
        // ip resources.
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "invalid address \"10.0.0.100\": missing prefix length"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.1/33\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "group \"web\" resource 1: invalid address \"10.0.0.1/33\": prefix length must be at most 32"),
        case("ip", "type = \"ip\"\naddress = \"2001:db8::1/129\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "prefix length must be at most 128"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.1/0\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "prefix length must be at least 1"),
        case("ip", "type = \"ip\"\naddress = \"www/24\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "\"www\" is not an IP address"),
        case("ip", "type = \"ip\"\naddress = \"224.0.0.1/24\" #!\ninterface = \"eth0\"", "group[0].resource[0].address", "unicast"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"\" #!", "group[0].resource[0].interface", "invalid interface \"\": must not be empty"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"averyverylongname\" #!", "group[0].resource[0].interface", "at most 15 bytes"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0:1\" #!", "group[0].resource[0].interface", "aliases"),
        case("extra", "[[group.resource]] #!\ntype = \"ip\"\naddress = \"10.0.0.8/24\"", "group[0].resource[2].interface", "missing the required key `interface`"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\narp_count = -1 #!", "group[0].resource[0].arp_count", "invalid arp_count -1"),
        case("ip", "type = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\nmonitor_interval = \"0ms\" #!", "group[0].resource[0].monitor_interval", "must be greater than 0"),
        case("extra", "[[group]]\nname = \"api\"\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.100/24\" #!\ninterface = \"eth1\"", "group[1].resource[0].address", "10.0.0.100 is already used by group \"web\" (line 22)"),
        // exec resources.
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [] #!\nstop = [\"/a\"]", "group[0].resource[1].start", "`start` must not be empty"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"\", \"-v\"] #!\nstop = [\"/a\"]", "group[0].resource[1].start[0]", "names no program"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/bin/kill\", \"a\\u0000b\"] #!", "group[0].resource[1].stop[1]", "NUL byte"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\nmonitor = [] #!", "group[0].resource[1].monitor", "`monitor` must not be empty"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\nfailures = 0 #!", "group[0].resource[1].failures", "invalid failures 0: must be at least 1"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\ntimeout = \"forever\" #!", "group[0].resource[1].timeout", "invalid duration \"forever\""),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\nuser = \"Root; rm\" #!", "group[0].resource[1].user", "invalid user \"Root; rm\": a login name"),
        case("exec", "type = \"exec\"\nname = \"x\"\nstart = [\"/a\"]\nstop = [\"/a\"]\nuser = \"\" #!", "group[0].resource[1].user", "invalid user \"\""),
        case("extra", "[[group.resource]] #!\ntype = \"exec\"\nstart = [\"/a\"]\nstop = [\"/a\"]", "group[0].resource[2].name", "missing the required key `name`"),
        case("extra", "[[group.resource]] #!\ntype = \"exec\"\nname = \"php\"\nstop = [\"/bin/true\"]", "group[0].resource[2].start", "missing the required key `start`"),
        case("extra", "[[group.resource]]\ntype = \"exec\"\nname = \"nginx\" #!\nstart = [\"/a\"]\nstop = [\"/a\"]", "group[0].resource[2].name", "\"nginx\" is used twice in this group"),
    ]
}

fn only_error(text: &str) -> ConfigError {
    let errors = match parse_str(text, "t.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(errors) => errors,
    };
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error for:\n{text}\ngot:\n{errors}"
    );
    errors.errors[0].clone()
}

#[test]
fn the_template_itself_is_valid() {
    let text = render(&case("none", "", "", ""));
    parse_str(&text, "t.toml").unwrap();
}

#[test]
fn every_bad_input_names_file_line_and_key() {
    let mut failures = Vec::new();
    for case in cases() {
        let text = render(&case);
        let line = marked_line(&text);
        let error = only_error(&text);
        let shown = error.to_string();
        let ok = error.file == "t.toml"
            && error.line == Some(line)
            && error.key == case.key
            && shown.starts_with(&format!("t.toml:{line}: "))
            && shown.contains(&format!("(key {})", case.key))
            && shown.contains(case.fragment);
        if !ok {
            failures.push(format!(
                "want line {line}, key {:?}, containing {:?}\n got {error:?}\n shown {shown}\n in:\n{text}",
                case.key, case.fragment
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn display_format_is_file_line_message_key() {
    let text = render(&case(
        "ip",
        "type = \"ip\"\naddress = \"10.0.0.1/33\"\ninterface = \"eth0\"",
        "",
        "",
    ));
    let error = only_error(&text);
    assert_eq!(
        error.to_string(),
        "t.toml:22: group \"web\" resource 1: invalid address \"10.0.0.1/33\": prefix length must be at most 32 \
         (key group[0].resource[0].address)"
    );
}

#[test]
fn all_validation_errors_are_reported_in_one_run() {
    let text = r#"
[cluster]
name = "Shop"
lease = "soon"

[[cluster.member]]
name = "alpha"
address = "alpha.example.com:7400"

[[group]]
name = "web"
nodes = ["omega"]

[[group.resource]]
type = "ip"
address = "10.0.0.1/40"
interface = "eth0"
"#;
    let errors = parse_str(text, "t.toml").unwrap_err();
    let keys: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        vec![
            ("cluster.name", Some(3)),
            ("cluster.lease", Some(4)),
            ("cluster.member[0].address", Some(8)),
            ("group[0].nodes[0]", Some(12)),
            ("group[0].resource[0].address", Some(16)),
        ],
        "{errors}"
    );
    // One error per line in the combined display.
    assert_eq!(errors.to_string().lines().count(), 5);
}

#[test]
fn ip_resource_errors_are_collected_with_exec_ones() {
    let text = render(&case(
        "exec",
        "type = \"exec\"\nname = \"x\"\nstart = []\nstop = [\"/a\"]\nfailures = 0",
        "",
        "",
    ))
    .replace("interface = \"eth0\"", "interface = \"\"");
    let errors = parse_str(&text, "t.toml").unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "group[0].resource[0].interface",
            "group[0].resource[1].start",
            "group[0].resource[1].failures"
        ],
        "{errors}"
    );
}

/// Resource errors are found by re-reading resource tables; an identical message from
/// an earlier key must still point at that earlier key.
#[test]
fn same_message_elsewhere_does_not_move_the_error_into_a_resource() {
    let text = render(&case("cluster", "name = \"shop\"\nlease = 5", "", "")).replace(
        "stop = [\"/usr/sbin/nginx\", \"-s\", \"quit\"]",
        "stop = [\"/usr/sbin/nginx\", \"-s\", \"quit\"]\ninterval = 5",
    );
    let error = only_error(&text);
    assert_eq!(
        (error.key.as_str(), error.line),
        ("cluster.lease", Some(3)),
        "{error}"
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let path = std::path::Path::new("/nonexistent/uphold-test/uphold.toml");
    let errors = uphold_config::load(path).unwrap_err();
    let shown = errors.to_string();
    assert!(
        shown.starts_with("/nonexistent/uphold-test/uphold.toml: cannot read config file"),
        "{shown}"
    );
}

#[test]
fn an_oversized_config_is_refused_before_it_is_parsed() {
    // A 50 MB array once took 8.6 GB of memory and 30 s to parse.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uphold.toml");
    let mut huge = String::from("[cluster]\nname = \"shop\"\nx = [");
    while huge.len() <= uphold_config::MAX_CONFIG_BYTES {
        huge.push_str("1111111111,");
    }
    huge.push_str("1]\n");
    std::fs::write(&path, &huge).unwrap();
    let started = std::time::Instant::now();
    let shown = uphold_config::load(&path).unwrap_err().to_string();
    assert!(
        shown.contains("cannot read config file: larger than the limit of 4194304 bytes"),
        "{shown}"
    );
    let shown = parse_str(&huge, "big.toml").unwrap_err().to_string();
    assert!(
        shown.contains("larger than the limit of 4194304 bytes"),
        "{shown}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A device that never ends is refused as well, after reading just past the cap.
    let shown = uphold_config::load(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(shown.contains("larger than the limit"), "{shown}");
}

#[test]
fn missing_ip_and_exec_keys_are_listed() {
    let with_holes = TEMPLATE
        .replace("{cluster}", "name = \"shop\"")
        .replace("{alpha}", "name = \"alpha\"\naddress = \"10.0.0.1:7400\"")
        .replace("{group}", "name = \"web\"")
        .replace("{ip}", IP)
        .replace("{exec}", EXEC)
        .replace("{extra}", "");
    let errors = parse_str(&with_holes, "t.toml").unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["group[0].resource[0].address", "group[0].resource[1].start"],
        "{errors}"
    );
}
