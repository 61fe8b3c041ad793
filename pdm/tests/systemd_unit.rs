//! `deploy/systemd/pdm.service`: `systemd-analyze verify` (Debian's `systemd`) accepts it without
//! a warning once the binary it starts exists; it starts after PowerDNS and runs unprivileged.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pdm");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/pdm.service");
const INSTALLED: &str = "/usr/local/bin/pdm";

fn setting<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().rev().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn pdm_unit_passes_systemd_analyze_verify_and_starts_after_powerdns() {
    let text = std::fs::read_to_string(UNIT).unwrap();
    assert!(text.contains(INSTALLED));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pdm.service");
    std::fs::write(&path, text.replace(INSTALLED, BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");

    // PowerDNS answers before PDM's first call; PDM needs no privilege at all.
    assert!(setting(&text, "After").unwrap().split_whitespace().any(|u| u == "pdns.service"));
    assert_eq!(setting(&text, "User"), Some("pdm"));
    assert_eq!(setting(&text, "CapabilityBoundingSet"), Some(""));
    assert_eq!(setting(&text, "NoNewPrivileges"), Some("yes"));
    assert_eq!(setting(&text, "ProtectSystem"), Some("strict"));
}
