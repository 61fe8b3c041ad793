//! `continuum demo`: the whole system on one machine, on loopback. Two PostgreSQL 15 servers
//! (a synchronous pair), PowerDNS with the sqlite3 backend, PDM (in this process), two data
//! daemons and a witness (child processes running this binary), with a throwaway CA, tokens and
//! configs in a temporary directory. Prints how to reach everything, stays up until Ctrl-C or
//! SIGTERM, then stops every process and removes the directory.
//!
//! Installs nothing: it needs `postgresql-15`, `pdns-server`, `pdns-backend-sqlite3` and `sqlite3`.

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Error;
use crate::api::Status;
use crate::orchestrator::lookup_user;

const ZONE: &str = "demo.continuum.test";
const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";
const REGIONS: [&str; 2] = ["a", "b"];

fn fail(what: impl Into<String>) -> Error {
    Error::Unavailable { reason: what.into() }
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(format!("no free port: {e}")))?;
    Ok(listener.local_addr().map_err(|e| fail(e.to_string()))?.port())
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut file = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut file, &mut buf).expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_tool(mut cmd: Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().map_err(|e| fail(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{what} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(())
}

/// One PostgreSQL server of the demo pair.
#[derive(Clone)]
struct Pg {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
}

/// Everything the demo started; dropping it stops and removes it all.
struct Demo {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    run_as: Option<cnpg_pair::RunAs>,
    pgs: Vec<Pg>,
    pdns: Option<Child>,
    daemons: Vec<(String, Child)>,
    pdm_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Demo {
    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST").env("LC_ALL", "C");
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    fn node_conf(&self, pg: &Pg, upstream: Option<&Pg>, sync_with: &str) -> Result<(), Error> {
        let mut text = String::from("# This node's own settings (owned by the daemon's driver).\n");
        text += &format!("port = {}\n", pg.port);
        text += &format!("unix_socket_directories = '{}'\n", self.dir.path().display());
        text += &format!("cluster_name = '{}'\n", pg.name);
        if let Some(up) = upstream {
            text += &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={}'\n",
                up.port, pg.name
            );
        }
        text += &format!("synchronous_standby_names = 'FIRST 1 (\"{sync_with}\")'\n");
        let path = pg.data_dir.join("node.conf");
        std::fs::write(&path, text).map_err(|e| fail(format!("write {}: {e}", path.display())))?;
        self.give(&path)
    }

    fn give(&self, path: &Path) -> Result<(), Error> {
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| fail(format!("chown {}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn start_pg(&self, pg: &Pg) -> Result<(), Error> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("start").arg("-D").arg(&pg.data_dir).arg("-l").arg(&pg.log_file).args(["-w", "-t", "60"]);
        run_tool(cmd, &format!("start PostgreSQL {}", pg.name))
    }

    /// Writes server `index`'s own settings and starts it. The port was free when picked, but
    /// another program may have bound it since: then pick another one and try again.
    fn configure_and_start_pg(&mut self, index: usize, sync_with: &str) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            let upstream = (index > 0).then(|| self.pgs[0].clone());
            self.node_conf(&self.pgs[index], upstream.as_ref(), sync_with)?;
            match self.start_pg(&self.pgs[index]) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && log_tail(&self.pgs[index].log_file).contains("could not bind") => {
                    tracing::warn!(
                        port = self.pgs[index].port,
                        "PostgreSQL port taken meanwhile, picking another: {e}"
                    );
                    self.pgs[index].port = free_port()?;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn create_pair(&mut self) -> Result<(), Error> {
        let dir = self.dir.path().to_path_buf();
        for name in REGIONS {
            self.pgs.push(Pg {
                name: name.into(),
                port: free_port()?,
                data_dir: dir.join(format!("pg-{name}")),
                log_file: dir.join(format!("pg-{name}.log")),
            });
        }
        let a = &self.pgs[0];
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&a.data_dir);
        cmd.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        run_tool(cmd, "initdb")?;
        let mut conf = String::from("\n# continuum demo: settings shared by both servers.\n");
        for (key, value) in [
            ("listen_addresses", "'127.0.0.1'"),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_log_hints", "on"),
            ("hot_standby", "on"),
            ("synchronous_commit", "remote_apply"),
            ("wal_keep_size", "'256MB'"),
            ("shared_buffers", "'32MB'"),
            ("max_connections", "60"),
        ] {
            conf += &format!("{key} = {value}\n");
        }
        conf += "include_if_exists = 'node.conf'\n";
        let append = |path: PathBuf, text: &str| -> Result<(), Error> {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| fail(format!("open {}: {e}", path.display())))?;
            f.write_all(text.as_bytes()).map_err(|e| fail(format!("append {}: {e}", path.display())))
        };
        append(a.data_dir.join("postgresql.conf"), &conf)?;
        append(
            a.data_dir.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        self.configure_and_start_pg(0, "b")?;
        let (a, b) = (&self.pgs[0], &self.pgs[1]);
        let mut cmd = self.pg_command("pg_basebackup");
        cmd.arg("-D").arg(&b.data_dir);
        cmd.args(["-h", "127.0.0.1", "-p", &a.port.to_string(), "-U", "postgres", "-X", "stream", "-c", "fast"]);
        run_tool(cmd, "pg_basebackup")?;
        let signal = b.data_dir.join("standby.signal");
        std::fs::write(&signal, "").map_err(|e| fail(format!("write {}: {e}", signal.display())))?;
        self.give(&signal)?;
        self.configure_and_start_pg(1, "a")
    }

    fn start_pdns(&mut self) -> Result<(u16, String, String), Error> {
        let binary = std::env::var_os("CONTINUUM_PDNS_SERVER")
            .map_or_else(|| PathBuf::from("/usr/sbin/pdns_server"), PathBuf::from);
        let schema = std::fs::read_to_string(SCHEMA)
            .map_err(|e| fail(format!("{SCHEMA}: {e} (install pdns-backend-sqlite3)")))?;
        let dir = self.dir.path().join("pdns");
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let mut sqlite = Command::new("sqlite3")
            .arg(dir.join("pdns.sqlite3"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("sqlite3: {e} (install sqlite3)")))?;
        sqlite.stdin.take().expect("piped").write_all(schema.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let out = sqlite.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!("sqlite3: {}", String::from_utf8_lossy(&out.stderr))));
        }
        let (dns_port, api_port, key) = (free_port()?, free_port()?, random_hex(16));
        let settings = [
            ("launch", "gsqlite3".to_string()),
            ("gsqlite3-database", dir.join("pdns.sqlite3").display().to_string()),
            ("gsqlite3-dnssec", "yes".into()),
            ("local-address", "127.0.0.1".into()),
            ("local-port", dns_port.to_string()),
            ("api", "yes".into()),
            ("api-key", key.clone()),
            ("webserver", "yes".into()),
            ("webserver-address", "127.0.0.1".into()),
            ("webserver-port", api_port.to_string()),
            ("webserver-allow-from", "127.0.0.1/32".into()),
            ("enable-lua-records", "yes".into()),
            ("lua-health-checks-interval", "1".into()),
            ("security-poll-suffix", String::new()),
            ("daemon", "no".into()),
            ("guardian", "no".into()),
            ("disable-syslog", "yes".into()),
            ("socket-dir", dir.display().to_string()),
        ];
        let text: String = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(dir.join("pdns.conf"), text).map_err(|e| fail(e.to_string()))?;
        let log = std::fs::File::create(dir.join("pdns.log")).map_err(|e| fail(e.to_string()))?;
        let child = Command::new(&binary)
            .arg(format!("--config-dir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("{}: {e} (install pdns-server)", binary.display())))?;
        self.pdns = Some(child);
        Ok((dns_port, format!("http://127.0.0.1:{api_port}"), key))
    }
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
        for pg in &self.pgs {
            if pg.data_dir.join("postmaster.pid").exists() {
                let mut cmd = self.pg_command("pg_ctl");
                cmd.arg("stop").arg("-D").arg(&pg.data_dir).args(["-m", "immediate", "-w", "-t", "20"]);
                let _ = cmd.output();
            }
        }
        if let Some(mut pdns) = self.pdns.take() {
            let _ = pdns.kill();
            let _ = pdns.wait();
        }
        if let Some(stop) = self.pdm_stop.take() {
            let _ = stop.send(());
        }
    }
}

#[derive(Serialize)]
struct RegionFacts {
    name: String,
    api_url: String,
    /// The web console, logged in as the owner (the token is in the fragment, never sent).
    console_url: String,
    postgres_port: u16,
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
}

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(json: bool, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin_dir =
        std::env::var_os("CONTINUUM_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
    if !bin_dir.join("postgres").exists() {
        return Err(fail(format!(
            "no PostgreSQL 15 in {} (install postgresql-15 or set CONTINUUM_PG_BIN)",
            bin_dir.display()
        )));
    }
    // SAFETY: geteuid has no preconditions.
    let run_as = if unsafe { libc::geteuid() } == 0 {
        Some(lookup_user("postgres").map_err(|e| fail(format!("running as root needs the postgres account: {e}")))?)
    } else {
        None
    };
    let dir = tempfile::Builder::new().prefix("continuum-demo-").tempdir().map_err(|e| fail(e.to_string()))?;
    let mut demo = Demo { dir, bin_dir, run_as, pgs: Vec::new(), pdns: None, daemons: Vec::new(), pdm_stop: None };
    demo.give(demo.dir.path())?;
    let d = demo.dir.path().to_path_buf();
    if !json {
        eprintln!("starting the demo in {} ...", d.display());
    }
    demo.create_pair()?;
    let (dns_port, pdns_api, pdns_key) = demo.start_pdns()?;

    // PDM, in this process.
    // The daemons get a `commit` token; zone creation below needs the `admin` one.
    let (pdm_token, pdm_admin) = (random_hex(16), random_hex(16));
    std::fs::write(d.join("pdm.token"), format!("{pdm_token}\n")).map_err(|e| fail(e.to_string()))?;
    let tokens = format!(
        "[[tokens]]\nname = \"daemons\"\nrole = \"commit\"\ntoken = \"{pdm_token}\"\n\
         [[tokens]]\nname = \"demo\"\nrole = \"admin\"\ntoken = \"{pdm_admin}\"\n"
    );
    std::fs::write(d.join("pdm-tokens.toml"), tokens).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(d.join("pdm-tokens.toml"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| fail(e.to_string()))?;
    let pdm_config = pdm::Config::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n[powerdns]\napi_url = \"{pdns_api}\"\napi_key = \"{pdns_key}\"\n\
         dns_addr = \"127.0.0.1:{dns_port}\"\nhealth_check_interval = \"1s\"\n[zones]\ndefault_nameservers = [\"ns1.continuum.invalid.\"]\n",
        d.join("pdm-tokens.toml").display()
    ))
    .map_err(|e| fail(format!("PDM config: {e}")))?;
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
    let ca = crate::pki::LocalCa::new(&d)?;
    let owner_token = random_hex(16);
    std::fs::write(
        d.join("tokens.toml"),
        format!("[[tokens]]\nname = \"demo-owner\"\nrole = \"owner\"\ntoken = \"{owner_token}\"\n"),
    )
    .map_err(|e| fail(e.to_string()))?;
    let raft_ports = [free_port()?, free_port()?, free_port()?];
    let api_ports = [free_port()?, free_port()?];
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    for (i, region) in ["a", "b", "w"].into_iter().enumerate() {
        let files = ca.node(region)?;
        let witness = region == "w";
        let mut text = format!(
            "region = \"{region}\"\nrole = \"{}\"\n\n[raft]\nnode_id = {}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\
             heartbeat_interval = \"100ms\"\nelection_timeout_min = \"400ms\"\nelection_timeout_max = \"800ms\"\n\n",
            if witness { "witness" } else { "data" },
            i + 1,
            raft_ports[i],
            d.join(format!("raft-{region}")).display()
        );
        for (j, peer) in ["a", "b", "w"].into_iter().enumerate() {
            text += &format!(
                "[[raft.peers]]\nid = {}\nregion = \"{peer}\"\naddress = \"127.0.0.1:{}\"\nwitness = {}\n\n",
                j + 1,
                raft_ports[j],
                peer == "w"
            );
        }
        text += &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\n[lease]\nrenew_interval = \"500ms\"\nduration = \"3s\"\n\
             drift_margin = \"300ms\"\ngrant_margin = \"500ms\"\ncall_timeout = \"1s\"\n\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        );
        if !witness {
            let (pg, peer) = if i == 0 { (&demo.pgs[0], &demo.pgs[1]) } else { (&demo.pgs[1], &demo.pgs[0]) };
            text += &format!(
                "[[pairs]]\nname = \"app\"\nfailover_debounce = \"30s\"\n\n[pairs.postgres]\ndata_dir = \"{}\"\nbin_dir = \"{}\"\n\
                 port = {}\nlog_file = \"{}\"\nsocket_dir = \"{}\"\n{}\n[[pairs.peers]]\nregion = \"{}\"\nport = {}\n\n\
                 [pairs.dns]\nrecord = \"db\"\nttl = 1\naddresses = {{ a = \"127.0.0.1\", b = \"127.0.0.2\" }}\n\n\
                 [pdm]\nurl = \"{pdm_url}\"\ntoken_file = \"{}\"\nzone = \"{ZONE}\"\n\n\
                 [api]\nlisten = \"127.0.0.1:{}\"\ntokens_file = \"{}\"\n\n[audit]\nlog = \"{}\"\n",
                pg.data_dir.display(),
                demo.bin_dir.display(),
                pg.port,
                pg.log_file.display(),
                d.display(),
                if run_as.is_some() { "run_as = \"postgres\"\n" } else { "" },
                peer.name,
                peer.port,
                d.join("pdm.token").display(),
                api_ports[i],
                d.join("tokens.toml").display(),
                d.join(format!("audit-{region}.log")).display()
            );
        }
        let config = d.join(format!("{region}.toml"));
        std::fs::write(&config, text).map_err(|e| fail(e.to_string()))?;
        let log = std::fs::File::create(d.join(format!("daemon-{region}.log"))).map_err(|e| fail(e.to_string()))?;
        let child = Command::new(&exe)
            .arg(if witness { "witness" } else { "run" })
            .arg("--config")
            .arg(&config)
            .env_remove(crate::failpoint::ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", exe.display())))?;
        demo.daemons.push((region.to_string(), child));
    }

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

    let facts = Facts {
        regions: (0..2)
            .map(|i| RegionFacts {
                name: REGIONS[i].into(),
                api_url: format!("http://127.0.0.1:{}", api_ports[i]),
                console_url: format!("http://127.0.0.1:{}/#token={owner_token}", api_ports[i]),
                postgres_port: demo.pgs[i].port,
                daemon_pid: demo.daemons[i].1.id(),
                postmaster_pid: postmaster_pid(&demo.pgs[i].data_dir),
            })
            .collect(),
        witness_pid: demo.daemons[2].1.id(),
        owner_token: owner_token.clone(),
        conninfo: format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
            demo.pgs[0].port, demo.pgs[1].port
        ),
        dns_name: format!("db.{ZONE}"),
        dns_server: "127.0.0.1".into(),
        dns_port,
        pdm_url: pdm_url.clone(),
        dir: d.display().to_string(),
    };
    if json {
        println!("{}", serde_json::to_string(&facts).map_err(|e| fail(e.to_string()))?);
    } else {
        println!("continuum demo is up (Ctrl-C stops and removes everything)\n");
        for r in &facts.regions {
            println!(
                "  region {}: API {}  PostgreSQL port {}  daemon pid {}  postmaster pid {}",
                r.name,
                r.api_url,
                r.postgres_port,
                r.daemon_pid,
                r.postmaster_pid.map_or("-".into(), |p| p.to_string())
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
        println!("\n  try:  CONTINUUM_TOKEN={} continuum status --api {}", facts.owner_token, facts.regions[0].api_url);
        println!(
            "        CONTINUUM_TOKEN={} continuum switchover --to b --yes --api {}",
            facts.owner_token, facts.regions[0].api_url
        );
    }
    let _ = std::io::stdout().flush();
    shutdown.await;
    if !json {
        eprintln!("stopping the demo ...");
    }
    tokio::task::spawn_blocking(move || drop(demo)).await.map_err(|e| fail(e.to_string()))?;
    Ok(())
}
