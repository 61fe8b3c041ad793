//! The configuration file and the daemon binary's handling of it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ChildGuard, lines, write_daemon_config};
use continuum::Error;
use continuum::config::{Config, Durability, Role, Takeover};

const BIN: &str = env!("CARGO_BIN_EXE_continuum");

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).unwrap()
}

#[test]
fn shipped_examples_are_valid() {
    for name in ["region-a.toml", "region-b.toml", "witness.toml"] {
        let config = Config::parse(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.raft.peers.len(), 3, "{name}");
    }
    let a = Config::parse(&example("region-a.toml")).unwrap();
    assert_eq!((a.role, a.region.as_str()), (Role::Data, "a"));
    let w = Config::parse(&example("witness.toml")).unwrap();
    assert_eq!(w.role, Role::Witness);
    assert!(w.pairs.is_empty());
}

#[test]
fn defaults_apply_to_left_out_keys() {
    let mut doc: toml::Table = example("region-a.toml").parse().unwrap();
    doc.remove("lease");
    let raft = doc["raft"].as_table_mut().unwrap();
    for key in ["heartbeat_interval", "election_timeout_min", "election_timeout_max"] {
        raft.remove(key);
    }
    let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
    for key in ["durability", "takeover", "max_lag_bytes", "max_lag_seconds", "auto_failover", "failover_debounce"] {
        pair.remove(key);
    }
    let config = Config::parse(&toml::to_string(&doc).unwrap()).unwrap();
    assert_eq!(config.lease.renew_interval, Duration::from_secs(1));
    assert_eq!(config.lease.duration, Duration::from_secs(10));
    assert_eq!(config.raft.heartbeat_interval, Duration::from_millis(500));
    let elections = (config.raft.election_timeout_min, config.raft.election_timeout_max);
    assert_eq!(elections, (Duration::from_millis(1100), Duration::from_millis(1600)));
    let pair = &config.pairs[0];
    assert_eq!((pair.durability, pair.takeover), (Durability::Preferred, Takeover::SyncFenced));
    assert!(pair.auto_failover);
}

type Edit = Box<dyn FnOnce(&mut toml::Table)>;

/// Applies `edit` to the region-a example and returns the key the validation error names.
fn rejected_key(base: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut doc: toml::Table = example(base).parse().unwrap();
    edit(&mut doc);
    match Config::parse(&toml::to_string(&doc).unwrap()) {
        Err(Error::Config { key, .. }) => key,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn table<'a>(doc: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    doc.get_mut(key).unwrap().as_table_mut().unwrap()
}

fn first_pair(doc: &mut toml::Table) -> &mut toml::Table {
    doc.get_mut("pairs").unwrap().as_array_mut().unwrap()[0].as_table_mut().unwrap()
}

#[test]
fn invalid_configs_name_the_offending_key() {
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "region-a.toml",
            "lease.renew_interval",
            Box::new(|d| {
                table(d, "lease").insert("renew_interval".into(), "10s".into());
            }),
        ),
        (
            "region-a.toml",
            "lease.renew_interval",
            Box::new(|d| {
                table(d, "lease").insert("renew_interval".into(), "2 fortnights".into());
            }),
        ),
        (
            "region-a.toml",
            "lease.drift_margin",
            Box::new(|d| {
                table(d, "lease").insert("drift_margin".into(), "10s".into());
            }),
        ),
        (
            "region-a.toml",
            "lease.renew",
            Box::new(|d| {
                table(d, "lease").insert("renew".into(), "1s".into());
            }),
        ),
        (
            "region-a.toml",
            "raft.node_id",
            Box::new(|d| {
                table(d, "raft").insert("node_id".into(), 9.into());
            }),
        ),
        (
            "region-a.toml",
            "raft.election_timeout_max",
            Box::new(|d| {
                table(d, "raft").insert("election_timeout_max".into(), "20s".into());
            }),
        ),
        (
            "region-a.toml",
            "raft.peers",
            Box::new(|d| {
                table(d, "raft").get_mut("peers").unwrap().as_array_mut().unwrap().pop();
            }),
        ),
        (
            "region-a.toml",
            "raft.peers[1].dial",
            Box::new(|d| {
                let peers = table(d, "raft").get_mut("peers").unwrap().as_array_mut().unwrap();
                peers[1].as_table_mut().unwrap().insert("dial".into(), "relay-without-port".into());
            }),
        ),
        (
            "region-a.toml",
            "pairs[0].primary_down_timeout",
            Box::new(|d| {
                first_pair(d).insert("primary_down_timeout".into(), "200ms".into());
            }),
        ),
        (
            "region-a.toml",
            "pairs.durability",
            Box::new(|d| {
                first_pair(d).insert("durability".into(), "maybe".into());
            }),
        ),
        (
            "region-a.toml",
            "pairs[0].max_lag_seconds",
            Box::new(|d| {
                first_pair(d).insert("max_lag_seconds".into(), "0s".into());
            }),
        ),
        (
            "region-a.toml",
            "pdm.url",
            Box::new(|d| {
                table(d, "pdm").insert("url".into(), "ftp://pdm".into());
            }),
        ),
        (
            "region-a.toml",
            "pdm",
            Box::new(|d| {
                d.remove("pdm");
            }),
        ),
        (
            "region-a.toml",
            "failpoints[0]",
            Box::new(|d| {
                d.insert("failpoints".into(), toml::Value::Array(vec!["before_lunch".into()]));
            }),
        ),
        (
            "witness.toml",
            "pairs",
            Box::new(|d| {
                let region_a: toml::Table = example("region-a.toml").parse().unwrap();
                d.insert("pairs".into(), region_a["pairs"].clone());
            }),
        ),
    ];
    for (base, expected, edit) in cases {
        assert_eq!(rejected_key(base, edit), expected, "edit of {base} expected to be refused at {expected}");
    }
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(dir.path(), 1, |doc| {
        table(doc, "lease").insert("renew_interval".into(), "11s".into());
    });
    for command in ["run", "check-config"] {
        let out = Command::new(BIN).args([command, "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains("lease.renew_interval"), "{command}: {stderr}");
    }
    // Nothing was started: no audit log appeared.
    assert!(!dir.path().join("audit.log").exists());

    let missing = Command::new(BIN).args(["run", "--config", "/nonexistent/continuum.toml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/continuum.toml"));
}

#[test]
fn check_config_accepts_the_examples() {
    for name in ["region-a.toml", "region-b.toml", "witness.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
        let out = Command::new(BIN).arg("check-config").arg("--config").arg(&path).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn witness_runs_its_lease_node_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(dir.path(), testkit::free_port(), |_| {});
    // Turn region a's config into the witness's: node 3, no data sections.
    let mut doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    for key in ["pairs", "pdm", "audit", "api"] {
        doc.remove(key);
    }
    doc.insert("region".into(), "w".into());
    doc.insert("role".into(), "witness".into());
    let raft = doc["raft"].as_table_mut().unwrap();
    raft.insert("node_id".into(), 3.into());
    let witness_addr = raft["peers"].as_array().unwrap()[2]["address"].as_str().unwrap().to_string();
    raft.insert("listen".into(), witness_addr.clone().into());
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    // Still region a's certificate: peers authorize by its name, so the node refuses to start.
    let refused = Command::new(BIN).arg("witness").arg("--config").arg(&path).output().unwrap();
    assert_eq!(refused.status.code(), Some(64), "{}", String::from_utf8_lossy(&refused.stderr));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("tls.cert") && stderr.contains("`w`"), "{stderr}");
    let ca_dir = dir.path().join("witness-ca");
    std::fs::create_dir(&ca_dir).unwrap();
    let node = continuum::pki::LocalCa::new(&ca_dir).unwrap().node("w").unwrap();
    let tls = doc["tls"].as_table_mut().unwrap();
    tls.insert("cert".into(), node.cert.display().to_string().into());
    tls.insert("key".into(), node.key.display().to_string().into());
    tls.insert("ca".into(), node.ca.display().to_string().into());
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    let mut witness =
        ChildGuard(Command::new(BIN).arg("witness").arg("--config").arg(&path).stderr(Stdio::null()).spawn().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&witness_addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "witness never listened on {witness_addr}");
        assert!(witness.0.try_wait().unwrap().is_none(), "witness exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(witness.0.id() as i32, libc::SIGTERM) };
    assert!(witness.0.wait().unwrap().success());
}

#[tokio::test]
async fn daemon_serves_health_and_stops_on_sigterm() {
    testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let path = write_daemon_config(dir.path(), port, |_| {});
    let mut daemon = ChildGuard(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove(continuum::failpoint::ENV)
            .env("CONTINUUM_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    testkit::wait_until("daemon answering /healthz", Duration::from_secs(20), || {
        let request = http.get(format!("{base}/healthz"));
        async move { Ok(request.send().await.is_ok_and(|r| r.status().is_success())) }
    })
    .await
    .unwrap();

    // Not ready, and says why: no peer of the lease store is running.
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let reason = ready.text().await.unwrap();
    assert!(reason.contains("raft leader") || reason.contains("lease record"), "{reason}");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    // The API's operations need a token; the status says nobody is known to hold the lease.
    let status = http.get(format!("{base}/v1/status")).send().await.unwrap();
    assert_eq!(status.status(), 401);
    let status = http.get(format!("{base}/v1/status")).bearer_auth(common::VIEWER).send().await.unwrap();
    assert_eq!(status.status(), 200);
    let status: continuum::api::Status = status.json().await.unwrap();
    assert_eq!((status.region.as_str(), status.pairs[0].holder.as_deref()), ("a", None));
    assert_eq!(status.pairs[0].lease.state, continuum::api::LeaseState::Unknown);

    // An open event stream must not hold up the shutdown.
    let mut events = http.get(format!("{base}/v1/events")).bearer_auth(common::VIEWER).send().await.unwrap();
    assert_eq!(events.status(), 200);

    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.0.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(daemon.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "daemon exit {:?}: {}", status.0, status.1);
    // The stream ended with the daemon rather than being cut off mid-event.
    while let Some(chunk) = events.chunk().await.unwrap() {
        assert!(chunk.starts_with(b":") || chunk.is_empty(), "unexpected event {chunk:?}");
    }
    // Logs were JSON lines, one of them announcing the API.
    let logs: Vec<serde_json::Value> = status.1.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(logs.iter().any(|l| l["message"] == "API listening"), "{}", status.1);
    let kinds: Vec<String> = lines(&dir.path().join("audit.log"))
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["daemon.started", "daemon.stopped"]);
}

#[test]
fn failpoint_kills_the_daemon_abruptly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(dir.path(), testkit::free_port(), |_| {});
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env(continuum::failpoint::ENV, "startup")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(continuum::failpoint::EXIT_CODE), "{stderr}");
    assert!(stderr.contains("failpoint startup hit"), "{stderr}");
    // It died between two steps: the start was recorded (fsynced), the orderly stop never was.
    let kinds: Vec<String> = lines(&dir.path().join("audit.log"))
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["daemon.started"]);

    // The same through the config list.
    let path = write_daemon_config(dir.path(), testkit::free_port(), |doc| {
        doc.insert("failpoints".into(), toml::Value::Array(vec!["startup".into()]));
    });
    let out =
        Command::new(BIN).arg("run").arg("--config").arg(&path).env_remove(continuum::failpoint::ENV).output().unwrap();
    assert_eq!(out.status.code(), Some(continuum::failpoint::EXIT_CODE));
}

#[test]
fn unusable_tokens_file_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(dir.path(), testkit::free_port(), |_| {});
    std::fs::write(
        dir.path().join("tokens.toml"),
        "[[tokens]]\nname = \"x\"\nrole = \"root\"\ntoken = \"0123456789abcdef0\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("run").arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("api.tokens_file") && stderr.contains("root"), "{stderr}");
    assert!(!stderr.contains("0123456789abcdef0"), "the token leaked into the message: {stderr}");
}

/// A secret file others may read is refused at start, naming the key and the mode; nothing starts.
#[test]
fn world_readable_secret_files_exit_64() {
    use std::os::unix::fs::PermissionsExt;
    for (file, key) in [("tokens.toml", "api.tokens_file"), ("pdm.token", "pdm.token_file"), ("a.key", "tls.key")] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_daemon_config(dir.path(), testkit::free_port(), |_| {});
        std::fs::set_permissions(dir.path().join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = Command::new(BIN).arg("run").arg("--config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{file}: {stderr}");
        assert!(stderr.contains(key) && stderr.contains("644"), "{file}: {stderr}");
        assert!(!dir.path().join("audit.log").exists(), "{file}: something started");
    }
}

#[test]
fn unopenable_audit_log_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_daemon_config(dir.path(), testkit::free_port(), |doc| {
        table(doc, "audit").insert("log".into(), "/nonexistent-continuum-dir/audit.log".into());
    });
    let out = Command::new(BIN).arg("run").arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("audit.log") && stderr.contains("/nonexistent-continuum-dir"), "{stderr}");
}

#[tokio::test]
async fn daemon_serves_https_when_configured() {
    testkit::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("api.crt"), dir.path().join("api.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    continuum::topology::write_secret(&key, &certified.signing_key.serialize_pem()).unwrap();
    let port = testkit::free_port();
    let path = write_daemon_config(dir.path(), port, |doc| {
        let api = table(doc, "api");
        api.insert("tls_cert".into(), cert.display().to_string().into());
        api.insert("tls_key".into(), key.display().to_string().into());
    });
    let mut daemon = ChildGuard(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove(continuum::failpoint::ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let https = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    let base = format!("https://127.0.0.1:{port}");
    testkit::wait_until("daemon answering /healthz over TLS", Duration::from_secs(20), || {
        let request = https.get(format!("{base}/healthz"));
        async move { Ok(request.send().await.is_ok_and(|r| r.status().is_success())) }
    })
    .await
    .unwrap();
    // Plain HTTP gets no answer from a TLS port.
    assert!(reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err());

    // The CLI trusts the CA given with --ca and reaches the API.
    let out = tokio::process::Command::new(BIN)
        .args(["status", "--json", "--api", &base, "--ca"])
        .arg(&cert)
        .env("CONTINUUM_TOKEN", common::VIEWER)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["region"], "a");
    // Without the CA it refuses the unknown certificate.
    let out = tokio::process::Command::new(BIN)
        .args(["status", "--api", &base])
        .env("CONTINUUM_TOKEN", common::VIEWER)
        .env_remove("CONTINUUM_CA")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(continuum::EXIT_UNAVAILABLE), "{}", String::from_utf8_lossy(&out.stderr));

    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || daemon.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
}
