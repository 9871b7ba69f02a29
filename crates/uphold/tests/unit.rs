//! The systemd unit shipped in `examples/` is one systemd accepts as written:
//! every key known, every path it runs executable. Its sandboxing is part of the
//! product (SECURITY.md), so a typo that systemd would ignore with a warning must
//! fail here, not silently drop a protection. The same holds for the drop-in
//! `uphold check --systemd` writes.

use std::path::Path;
use std::process::Command;

mod common;
use common::uphold;

/// Copies the example unit into `dir`, running the binary under test (verify
/// checks that the program exists).
fn unit_in(dir: &Path) -> std::path::PathBuf {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/uphold.service");
    let text = std::fs::read_to_string(unit).unwrap();
    let installed = "/usr/local/bin/uphold";
    assert!(
        text.contains(installed),
        "the unit no longer runs {installed}"
    );
    let copy = dir.join("uphold.service");
    std::fs::write(&copy, text.replace(installed, env!("CARGO_BIN_EXE_uphold"))).unwrap();
    copy
}

/// `systemd-analyze verify` passes, and says nothing about the unit or its
/// drop-ins: unknown keys are only warned about, and a warning names the file.
fn assert_verifies_cleanly(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("uphold.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}

#[test]
fn the_example_unit_passes_systemd_analyze_verify_without_a_warning() {
    if !uphold_testkit::require_program(
        "the_example_unit_passes_systemd_analyze_verify_without_a_warning",
        "systemd-analyze",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    assert_verifies_cleanly(&unit_in(dir.path()));
}

#[test]
fn check_writes_a_drop_in_that_leaves_only_the_configs_paths_writable() {
    if !uphold_testkit::require_program(
        "check_writes_a_drop_in_that_leaves_only_the_configs_paths_writable",
        "systemd-analyze",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("uphold.toml");
    std::fs::write(
        &config,
        "[cluster]\nname = \"t\"\nstate_dir = \"/var/lib/uphold/{node}\"\ntls_dir = \"/etc/uphold/tls\"\n\
         [[cluster.member]]\nname = \"a\"\naddress = \"10.0.0.1:7400\"\n\
         [[cluster.member]]\nname = \"b\"\naddress = \"10.0.0.2:7400\"\n\
         [[cluster.member]]\nname = \"w\"\naddress = \"10.0.0.3:7400\"\nrole = \"witness\"\n\
         [[group]]\nname = \"web\"\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.100/24\"\ninterface = \"eth0\"\n\
         [[sync]]\nname = \"www\"\nsource = \"/srv/www\"\ntarget = \"/srv/web root\"\ngroup = \"web\"\n",
    )
    .unwrap();
    let out = uphold()
        .args(["check", "--systemd", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drop_in = String::from_utf8(out.stdout).unwrap();
    let settings: Vec<&str> = drop_in.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        settings,
        vec![
            "[Service]",
            "ProtectSystem=strict",
            "ReadWritePaths=\"-/srv/web root\"",
            "ReadWritePaths=-/var/lib/uphold/a",
            "ReadWritePaths=-/var/lib/uphold/b",
            "ReadWritePaths=-/var/lib/uphold/w",
        ]
    );
    // systemd reads the drop-in beside the unit, and accepts every line of it.
    let unit = unit_in(dir.path());
    std::fs::create_dir(dir.path().join("uphold.service.d")).unwrap();
    std::fs::write(dir.path().join("uphold.service.d/paths.conf"), drop_in).unwrap();
    assert_verifies_cleanly(&unit);
}
