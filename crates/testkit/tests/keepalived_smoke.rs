//! One real repetition of the failover runner against keepalived (root and
//! keepalived needed): the lab, the probes and the analysis end to end.

use serde_json::Value;
use std::process::Command;
use uphold_testkit::{require_program, require_root};

#[test]
fn keepalived_link_down_fails_over_to_the_next_priority() {
    let name = "keepalived_link_down_fails_over_to_the_next_priority";
    if !require_root(name) || !require_program(name, "keepalived") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_uphold-lab"))
        .args([
            "failover",
            "--impl",
            "keepalived-1s",
            "--fault",
            "link-down",
            "--reps",
            "1",
            "--json",
        ])
        .output()
        .expect("running uphold-lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "uphold-lab failed:\n{stdout}\n{stderr}"
    );
    let rep: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "rep")
        .unwrap_or_else(|| panic!("no rep line in:\n{stdout}\n{stderr}"));
    assert!(rep.get("error").is_none(), "{rep}");
    // Priorities 150/100/50: node 1 starts as master, node 2 takes over.
    assert_eq!(rep["owner_before"], "n1", "{rep}");
    assert_eq!(rep["served_after"], "n2", "{rep}");
    assert_eq!(rep["recovered"], true, "{rep}");
    // advert_int 1: backups wait 3 adverts + skew (~3.6 s for priority 100).
    let down = rep["downtime_ms"].as_f64().expect("downtime_ms");
    assert!(
        (2500.0..=8000.0).contains(&down),
        "downtime {down} ms: {rep}"
    );
    // On carrier loss keepalived enters FAULT and drops the VIP at once.
    let double = rep["double_ms"].as_f64().expect("double_ms");
    assert!(double < 500.0, "double ownership {double} ms: {rep}");
}
