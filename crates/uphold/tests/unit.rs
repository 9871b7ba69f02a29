//! The systemd unit shipped in `examples/` is one systemd accepts as written:
//! every key known, every path it runs executable. Its sandboxing is part of the
//! product (SECURITY.md), so a typo that systemd would ignore with a warning must
//! fail here, not silently drop a protection.

use std::process::Command;

#[test]
fn the_example_unit_passes_systemd_analyze_verify_without_a_warning() {
    if !uphold_testkit::require_program(
        "the_example_unit_passes_systemd_analyze_verify_without_a_warning",
        "systemd-analyze",
    ) {
        return;
    }
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/uphold.service");
    let text = std::fs::read_to_string(unit).unwrap();
    // The unit names the installed path; verify checks that the program exists,
    // so point it at the binary under test.
    let installed = "/usr/local/bin/uphold";
    assert!(
        text.contains(installed),
        "the unit no longer runs {installed}"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("uphold.service");
    std::fs::write(&copy, text.replace(installed, env!("CARGO_BIN_EXE_uphold"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
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
    // Unknown keys are only warned about; any line naming the unit is one.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("uphold.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}
