//! `continuum demo`: the whole system on one machine, on loopback. Two PostgreSQL 15 servers
//! (a synchronous pair) and PowerDNS with the sqlite3 backend, bootstrapped by `devstack` as the
//! tests do; PDM (in this process); two data daemons and a witness (child processes running this
//! binary), with a throwaway CA, tokens and configs ([`crate::topology`]) in a temporary
//! directory. Prints how to reach everything, stays up until Ctrl-C or SIGTERM, then stops every
//! process and removes the directory.
//!
//! Installs nothing: it needs `postgresql-15`, `pdns-server`, `pdns-backend-sqlite3` and `sqlite3`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::Status;
use crate::config::{LeaseConfig, PgPeerConfig};
use crate::topology::{self, DataNode, Node, Timings, Topology};
use crate::{Error, error_chain};

const ZONE: &str = "demo.continuum.test";
const REGIONS: [&str; 2] = ["a", "b"];

fn fail(what: impl Into<String>) -> Error {
    Error::Unavailable { reason: what.into() }
}

fn stack(what: &str) -> impl FnOnce(devstack::Error) -> Error {
    move |e| fail(format!("{what}: {}", error_chain(&e)))
}

fn io(e: std::io::Error) -> Error {
    fail(e.to_string())
}

/// Everything the demo started; dropping it stops and removes it all.
struct Demo {
    daemons: Vec<(String, Child)>,
    pdm_stop: Option<tokio::sync::oneshot::Sender<()>>,
    pair: Option<devstack::PgPair>,
    pdns: Option<devstack::PowerDns>,
    /// Last: removed once every process in it is gone.
    dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for (_, child) in &mut self.daemons {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(stop) = self.pdm_stop.take() {
            let _ = stop.send(());
        }
        // The pair and PowerDNS stop themselves when dropped, before the directory goes.
        self.pair.take();
        self.pdns.take();
    }
}

#[derive(Serialize)]
struct RegionFacts {
    name: String,
    api_url: String,
    /// The web console, logged in as the owner (the token is in the fragment, never sent).
    console_url: String,
    postgres_port: u16,
    postgres_data_dir: String,
    daemon_pid: u32,
    postmaster_pid: Option<i32>,
}

#[derive(Serialize)]
struct Facts {
    regions: Vec<RegionFacts>,
    witness_pid: u32,
    owner_token: String,
    conninfo: String,
    dns_name: String,
    dns_server: String,
    dns_port: u16,
    pdm_url: String,
    dir: String,
    /// Absolute path of this `continuum` binary: the printed commands work without it on PATH.
    cli: String,
    /// The active timings and takeover mode (`--timings`, `--takeover`).
    timings: String,
}

/// Which timings the demo's daemons run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTimings {
    /// Lease 3 s, renew 500 ms, grant margin 500 ms, raft heartbeat 100 ms, elections 0.4–0.8 s.
    Fast,
    /// The daemon's shipped defaults (README, Configuration).
    Default,
}

/// `pairs[].takeover` of the demo's pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTakeover {
    LeaseExpiry,
    SyncFenced,
}

/// `continuum demo` flags.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub json: bool,
    pub timings: DemoTimings,
    pub takeover: DemoTakeover,
}

/// The active timings as one line for the facts.
fn timings_line(config: &crate::config::Config, name: &str) -> String {
    let f = |d: Duration| humantime::format_duration(d).to_string();
    let (l, r) = (&config.lease, &config.raft);
    let mut line = format!(
        "{name}: lease {}, renew {}, grant margin {}, raft heartbeat {}, elections {}–{}",
        f(l.duration),
        f(l.renew_interval),
        f(l.grant_margin),
        f(r.heartbeat_interval),
        f(r.election_timeout_min),
        f(r.election_timeout_max)
    );
    if let Some(pair) = config.pairs.first() {
        match pair.takeover {
            crate::config::Takeover::LeaseExpiry => line += ", takeover lease-expiry",
            crate::config::Takeover::SyncFenced => {
                line += &format!(
                    ", takeover sync-fenced (suspect window {}, WAL stream timeout {})",
                    f(pair.effective_suspect_window(l)),
                    f(pair.effective_wal_stream_timeout(l))
                );
            }
        }
    }
    line
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(options: DemoOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let json = options.json;
    devstack::install_crypto_provider();
    let run_as = devstack::os::postgres_user().map_err(stack("PostgreSQL account"))?;
    let dir = tempfile::Builder::new().prefix("continuum-demo-").tempdir().map_err(io)?;
    devstack::os::hand_over(dir.path(), run_as).map_err(stack("demo directory"))?;
    let mut demo = Demo { daemons: Vec::new(), pdm_stop: None, pair: None, pdns: None, dir };
    let d = demo.dir.path().to_path_buf();
    if !json {
        eprintln!("starting the demo in {} ...", d.display());
    }
    // One throwaway CA for the daemons' mutual TLS and the servers' certificates: PostgreSQL
    // takes TLS with scram-sha-256 over TCP, trust on the Unix socket only.
    let ca = crate::pki::LocalCa::new(&d)?;
    let (security, pg_auth) = topology::secure_postgres(&d, &ca, &[])?;
    let pair = devstack::PgPair::builder()
        .names("a", "b")
        .parent(&d)
        .secure(security)
        .start()
        .await
        .map_err(stack("PostgreSQL"))?;
    let pair: &devstack::PgPair = demo.pair.insert(pair);
    let pdns = devstack::PowerDns::builder()
        .health_check_interval(topology::HEALTH_CHECK_SECS)
        .parent(&d)
        .start()
        .await
        .map_err(stack("PowerDNS"))?;
    let pdns: &devstack::PowerDns = demo.pdns.insert(pdns);
    let dns_port = pdns.dns_addr.port();

    // PDM, in this process.
    // The daemons get a `commit` token; zone creation below needs the `admin` one.
    let (pdm_token, pdm_admin) = (devstack::random_hex(16), devstack::random_hex(16));
    topology::write_secret(&d.join("pdm.token"), &format!("{pdm_token}\n"))?;
    topology::write_pdm_tokens(&d.join("pdm-tokens.toml"), &pdm_token, &pdm_admin)?;
    let pdm_config =
        topology::pdm_config(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), &d.join("pdm-tokens.toml"), pdns)?;
    let server = pdm::Server::bind(&pdm_config).await.map_err(|e| fail(format!("PDM: {e}")))?;
    let pdm_url = format!("http://{}", server.local_addr());
    let (pdm_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    demo.pdm_stop = Some(pdm_stop);
    tokio::spawn(async move {
        if let Err(e) = server
            .serve(async {
                let _ = stopped.await;
            })
            .await
        {
            tracing::error!("PDM stopped: {e}");
        }
    });
    let pdm = pdm::PdmClient::new(&pdm_url, &pdm_admin, Duration::from_secs(10)).map_err(|e| fail(e.to_string()))?;
    let started = Instant::now();
    loop {
        match pdm.create_zone(&pdm::CreateZoneRequest { name: ZONE.into(), nameservers: vec![] }).await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(20) => {
                tracing::debug!("PowerDNS not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(fail(format!("create zone {ZONE} through PDM: {e}"))),
        }
    }

    // Certificates, tokens, configs; then the daemons.
    let owner_token = devstack::random_hex(16);
    topology::write_secret(
        &d.join("tokens.toml"),
        &format!("[[tokens]]\nname = \"demo-owner\"\nrole = \"owner\"\ntoken = \"{owner_token}\"\n"),
    )?;
    let port = || devstack::free_port().map_err(stack("free port"));
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let data = |server: &devstack::PgNode, peer: &devstack::PgNode| DataNode {
        server: server.clone(),
        peer: PgPeerConfig { region: peer.name.clone(), host: peer.host.clone(), port: peer.port },
    };
    let mut nodes = Vec::new();
    for (region, data) in
        [("a", Some(data(&pair.primary, &pair.standby))), ("b", Some(data(&pair.standby, &pair.primary))), ("w", None)]
    {
        let api_port = if data.is_some() { Some(port()?) } else { None };
        let tls = ca.node(region)?;
        nodes.push(Node {
            region: region.into(),
            host: localhost,
            raft_port: port()?,
            api_port,
            tls,
            data,
            dial: BTreeMap::new(),
        });
    }
    let topology = Topology {
        dir: d.clone(),
        nodes,
        timings: (options.timings == DemoTimings::Fast).then(|| Timings {
            lease: LeaseConfig {
                renew_interval: Duration::from_millis(500),
                duration: Duration::from_secs(3),
                drift_margin: Duration::from_millis(300),
                grant_margin: Duration::from_millis(500),
                call_timeout: Duration::from_secs(1),
                fence_timeout: None,
            },
            ..Timings::fast()
        }),
        addresses: BTreeMap::from([("a".into(), "127.0.0.1".into()), ("b".into(), "127.0.0.2".into())]),
        pdm_url: pdm_url.clone(),
        pdm_token_file: d.join("pdm.token"),
        zone: ZONE.into(),
        tokens_file: d.join("tokens.toml"),
        pg_auth,
    };
    let exe = std::env::current_exe().map_err(io)?;
    let mut timings = String::new();
    for mut config in topology.configs()? {
        for pair in &mut config.pairs {
            pair.takeover = match options.takeover {
                DemoTakeover::LeaseExpiry => crate::config::Takeover::LeaseExpiry,
                DemoTakeover::SyncFenced => crate::config::Takeover::SyncFenced,
            };
            pair.failover_debounce = Duration::from_secs(30);
            // Ctrl-C stops every daemon at once: no peer would be left to hand the lease to.
            pair.on_shutdown = crate::config::OnShutdown::Fence;
        }
        if timings.is_empty() && !config.pairs.is_empty() {
            let name = if options.timings == DemoTimings::Fast { "fast" } else { "default" };
            timings = timings_line(&config, name);
        }
        let region = config.region.clone();
        let path = d.join(format!("{region}.toml"));
        topology::write(&config, &path)?;
        let log = std::fs::File::create(d.join(format!("daemon-{region}.log"))).map_err(io)?;
        let child = Command::new(&exe)
            .arg(if config.pairs.is_empty() { "witness" } else { "run" })
            .arg("--config")
            .arg(&path)
            .env_remove(crate::failpoint::ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", exe.display())))?;
        demo.daemons.push((region, child));
    }
    let api_ports: Vec<u16> = topology.nodes.iter().filter_map(|n| n.api_port).collect();

    // Ready once region a holds the lease with b recorded as synchronous standby.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().map_err(|e| fail(e.to_string()))?;
    let status_url = format!("http://127.0.0.1:{}/v1/status", api_ports[0]);
    let started = Instant::now();
    loop {
        let ready = async {
            let status: Status =
                http.get(&status_url).bearer_auth(&owner_token).send().await.ok()?.json().await.ok()?;
            let pair = status.pairs.into_iter().next()?;
            (pair.holder.as_deref() == Some("a") && pair.sync_standby.as_deref() == Some("b")).then_some(())
        };
        if ready.await.is_some() {
            break;
        }
        for (region, child) in &mut demo.daemons {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!(
                    "daemon {region} exited with {status}; see {}/daemon-{region}.log",
                    d.display()
                )));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(fail(format!("the daemons did not become ready within 60 s; logs in {}", d.display())));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let servers = [&pair.primary, &pair.standby];
    let facts = Facts {
        regions: (0..2)
            .map(|i| RegionFacts {
                name: REGIONS[i].into(),
                api_url: format!("http://127.0.0.1:{}", api_ports[i]),
                console_url: format!("http://127.0.0.1:{}/#token={owner_token}", api_ports[i]),
                postgres_port: servers[i].port,
                postgres_data_dir: servers[i].data_dir.display().to_string(),
                daemon_pid: demo.daemons[i].1.id(),
                postmaster_pid: servers[i].postmaster_pid(),
            })
            .collect(),
        witness_pid: demo.daemons[2].1.id(),
        owner_token: owner_token.clone(),
        conninfo: pair.multi_host_conninfo(),
        dns_name: format!("{}.{ZONE}", topology::RECORD),
        dns_server: "127.0.0.1".into(),
        dns_port,
        pdm_url: pdm_url.clone(),
        dir: d.display().to_string(),
        cli: exe.display().to_string(),
        timings,
    };
    if json {
        println!("{}", serde_json::to_string(&facts).map_err(|e| fail(e.to_string()))?);
    } else {
        print_facts(&facts);
    }
    let _ = std::io::stdout().flush();
    shutdown.await;
    if !json {
        eprintln!("stopping the demo ...");
    }
    tokio::task::spawn_blocking(move || drop(demo)).await.map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn print_facts(facts: &Facts) {
    println!("continuum demo is up (Ctrl-C stops and removes everything)\n");
    for r in &facts.regions {
        println!(
            "  region {}: API {}  PostgreSQL port {}  daemon pid {}  postmaster pid {}\n            data {}",
            r.name,
            r.api_url,
            r.postgres_port,
            r.daemon_pid,
            r.postmaster_pid.map_or("-".into(), |p| p.to_string()),
            r.postgres_data_dir
        );
    }
    println!("  witness pid {}", facts.witness_pid);
    for r in &facts.regions {
        println!("  console {}: {}", r.name, r.console_url);
    }
    println!("\n  owner token:  {}", facts.owner_token);
    println!("  connect:      psql \"{}\"", facts.conninfo);
    println!("  DNS:          dig @127.0.0.1 -p {} {} A", facts.dns_port, facts.dns_name);
    println!("  PDM:          {}", facts.pdm_url);
    println!("  timings:      {}", facts.timings);
    let cli = shell_word(&facts.cli);
    println!("\n  try:  CONTINUUM_TOKEN={} {cli} status --api {}", facts.owner_token, facts.regions[0].api_url);
    println!(
        "        CONTINUUM_TOKEN={} {cli} switchover --to b --yes --api {}",
        facts.owner_token, facts.regions[0].api_url
    );
}

/// `word` as one shell word: as it is when it holds nothing the shell would interpret, else in
/// single quotes, so a printed command pastes as printed.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
