//! The systemd units in `deploy/systemd/` for the data daemon and the witness: `systemd-analyze
//! verify` (Debian's `systemd` package) accepts them without a single warning once the binary
//! they start and the manual page they name exist, and their stop behaviour fits the daemon's
//! (PostgreSQL is never killed by systemd, the stop timeout covers a hand-over at the example
//! configuration's timings).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use continuum::config::Config;

const BIN: &str = env!("CARGO_BIN_EXE_continuum");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");
const INSTALLED: &str = "/usr/local/bin/continuum";

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(UNITS).join(name)).unwrap()
}

/// The value of `key=` in `text` (the last one wins, as in systemd).
fn setting<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().rev().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // `Documentation=man:continuum(1)` is checked too: the page `continuum man` writes.
    let man = dir.path().join("man");
    let out = Command::new(BIN).args(["man", "--dir"]).arg(man.join("man1")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut paths = Vec::new();
    for name in ["continuum.service", "continuum-witness.service"] {
        let text = unit(name);
        assert!(text.contains(INSTALLED), "{name} starts {INSTALLED}");
        let path = dir.path().join(name);
        // The binary this test was built with, where the unit expects the installed one.
        std::fs::write(&path, text.replace(INSTALLED, BIN)).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("MANPATH", &man)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned:\n{stderr}");
}

#[test]
fn the_data_daemon_unit_leaves_postgresql_to_the_daemon() {
    let text = unit("continuum.service");
    // SIGTERM (and at the timeout SIGKILL) to the daemon only: never to the postmaster.
    assert_eq!(setting(&text, "KillMode"), Some("process"));
    // pg_ctl runs as `run_as`: the daemon must be able to switch user, so no User= here...
    assert_eq!(setting(&text, "User"), None);
    let caps: Vec<&str> = setting(&text, "CapabilityBoundingSet").unwrap().split_whitespace().collect();
    for needed in ["CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_DAC_OVERRIDE"] {
        assert!(caps.contains(&needed), "{needed} in {caps:?}");
    }
    assert!(!caps.contains(&"CAP_SYS_ADMIN") && caps.len() <= 6, "{caps:?}");
    // ...but sandboxed all the same, with PostgreSQL's directories writable.
    assert_eq!(setting(&text, "NoNewPrivileges"), Some("yes"));
    assert_eq!(setting(&text, "ProtectSystem"), Some("strict"));
    assert!(setting(&text, "ReadWritePaths").unwrap().contains("/var/lib/postgresql"));
    assert_eq!(setting(&text, "StateDirectory"), Some("continuum"));
    assert_eq!(setting(&text, "RestartPreventExitStatus"), Some(continuum::EXIT_USAGE.to_string().as_str()));

    // The stop timeout covers a hand-over at the example configuration's timings: the target's
    // catch-up, the sync wait, a lease duration, every DNS commit attempt.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/region-a.toml")).unwrap();
    let config: Config = toml::from_str(&example).unwrap();
    let pair = &config.pairs[0];
    let pdm = config.pdm.as_ref().unwrap();
    let hand_over =
        pair.catch_up_timeout + pair.sync_wait_timeout + config.lease.duration + pdm.timeout * pdm.commit_attempts;
    let stop = humantime::parse_duration(setting(&text, "TimeoutStopSec").unwrap()).unwrap();
    assert!(stop >= hand_over + Duration::from_secs(30), "TimeoutStopSec {stop:?} vs a hand-over of {hand_over:?}");
    for text in [unit("continuum-witness.service"), text] {
        assert_eq!(setting(&text, "ProtectHome"), Some("yes"));
        assert_eq!(setting(&text, "PrivateTmp"), Some("yes"));
    }
}
