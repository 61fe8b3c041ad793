//! A synchronous pair: initdb of the primary with the shared settings, `pg_basebackup` of the
//! standby, both started on free ports, and a wait until the standby streams as `sync`
//! (`synchronous_commit = remote_apply`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os;
use crate::pg::{Launcher, NodeSettings, PgNode, StopMode};
use crate::ports::free_port;
use crate::wait::wait_for;
use crate::{Error, Result, io};

/// TLS and passwords for a pair: TCP connections need TLS and scram-sha-256 (`hostssl` only in
/// `pg_hba.conf`), the Unix socket stays `trust` (local administration, the tests' back door).
#[derive(Debug, Clone)]
pub struct PgSecurity {
    /// PEM server certificate and key, valid for every host of the pair: both data directories
    /// hold it (`server.crt`, `server.key`) because a clone or rewind copies the other's.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Password of `postgres`, the daemons' admin role (fence, promote, replicate).
    pub admin_password: String,
    /// The observation role (`pg_monitor` only) and its password.
    pub observer_user: String,
    pub observer_password: String,
}

/// Options for a [`PgPair`].
#[derive(Debug, Clone)]
pub struct PgPairBuilder {
    primary_name: String,
    standby_name: String,
    synchronous: bool,
    fsync: bool,
    parent: Option<PathBuf>,
    extra_settings: Vec<(String, String)>,
    placements: Vec<(String, IpAddr, Launcher)>,
    security: Option<PgSecurity>,
}

impl Default for PgPairBuilder {
    fn default() -> Self {
        Self {
            primary_name: "a".into(),
            standby_name: "b".into(),
            synchronous: true,
            fsync: true,
            parent: None,
            extra_settings: Vec::new(),
            placements: Vec::new(),
            security: None,
        }
    }
}

impl PgPairBuilder {
    /// Server names (region names in the demo and the end-to-end tests); default `a` (primary)
    /// and `b`.
    pub fn names(mut self, primary: &str, standby: &str) -> Self {
        self.primary_name = primary.into();
        self.standby_name = standby.into();
        self
    }

    /// Whether the primary waits for the standby (`remote_apply`); default true.
    pub fn synchronous(mut self, synchronous: bool) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// `fsync`; default on. Off makes write-heavy tests faster and proves nothing about power loss.
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Where the pair's own temporary directory is created; default the system's.
    pub fn parent(mut self, dir: &Path) -> Self {
        self.parent = Some(dir.to_path_buf());
        self
    }

    /// Server `name` listens on `addr` (its host) and every command for it goes through
    /// `launcher`. Servers then listen on every address of their host and trust its subnet.
    pub fn place(mut self, name: &str, addr: IpAddr, launcher: Launcher) -> Self {
        self.placements.push((name.into(), addr, launcher));
        self
    }

    /// TLS and password authentication over TCP (default: `trust`, no TLS).
    pub fn secure(mut self, security: PgSecurity) -> Self {
        self.security = Some(security);
        self
    }

    /// An extra `postgresql.conf` line for both servers.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.extra_settings.push((key.into(), value.into()));
        self
    }

    /// Creates and starts the pair, and waits until the standby streams (and, when synchronous,
    /// is listed as `sync` in `pg_stat_replication`).
    pub async fn start(self) -> Result<PgPair> {
        let bin_dir = os::pg_bin_dir()?;
        let run_as = os::postgres_user()?;
        let dir = crate::temp_dir(self.parent.as_deref(), "continuum-pg-")?;
        os::hand_over(dir.path(), run_as)?;
        let node = |name: &str| -> Result<PgNode> {
            let placed = self.placements.iter().find(|(n, _, _)| n == name);
            Ok(PgNode {
                name: name.to_string(),
                host: placed.map_or_else(|| "127.0.0.1".to_string(), |(_, addr, _)| addr.to_string()),
                launcher: placed.map(|(_, _, launcher)| launcher.clone()),
                port: free_port()?,
                data_dir: dir.path().join(name),
                socket_dir: dir.path().to_path_buf(),
                log_file: dir.path().join(format!("{name}.log")),
                bin_dir: bin_dir.clone(),
                run_as,
                password: self.security.as_ref().map(|s| s.admin_password.clone()),
            })
        };
        let (primary, standby) = (node(&self.primary_name)?, node(&self.standby_name)?);
        let mut pair = PgPair { primary, standby, dir };
        let (primary_sync, standby_sync) = if self.synchronous {
            (vec![self.standby_name.clone()], vec![self.primary_name.clone()])
        } else {
            (vec![], vec![])
        };

        self.initdb(&pair.primary)?;
        let primary_settings = NodeSettings { primary_conninfo: None, synchronous_standby_names: primary_sync };
        start_retrying_port(&mut pair.primary, &primary_settings)?;
        if let Some(security) = &self.security {
            create_roles(&pair.primary, security).await?;
        }

        let mut cmd = pair.primary.command("pg_basebackup");
        cmd.arg("-D").arg(&pair.standby.data_dir);
        cmd.args(["-h", &pair.primary.host, "-p", &pair.primary.port.to_string(), "-U", "postgres"]);
        cmd.args(["-X", "stream", "-c", "fast", "--no-sync"]);
        if let Some(security) = &self.security {
            cmd.env("PGPASSWORD", &security.admin_password).env("PGSSLMODE", "require");
        }
        os::run(cmd)?;
        pair.standby.write_standby_signal()?;
        let standby_settings = NodeSettings {
            primary_conninfo: Some(pair.primary.replication_conninfo(&pair.standby.name)),
            synchronous_standby_names: standby_sync,
        };
        start_retrying_port(&mut pair.standby, &standby_settings)?;
        pair.wait_streaming(self.synchronous, Duration::from_secs(30)).await?;
        Ok(pair)
    }

    fn initdb(&self, node: &PgNode) -> Result<()> {
        let mut cmd = node.command("initdb");
        cmd.arg("-D").arg(&node.data_dir);
        cmd.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        os::run(cmd)?;
        let mut conf = String::from("\n# Continuum dev stack: settings shared by both servers.\n");
        for (key, value) in [
            ("listen_addresses", if self.placements.is_empty() { "'127.0.0.1'" } else { "'*'" }),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_log_hints", "on"),
            ("hot_standby", "on"),
            ("synchronous_commit", "remote_apply"),
            ("wal_keep_size", "'256MB'"),
            ("shared_buffers", "'32MB'"),
            ("max_connections", "60"),
            ("fsync", if self.fsync { "on" } else { "off" }),
            ("log_line_prefix", "'%m [%p] %a '"),
            // A standby retries a lost upstream after this (PostgreSQL's default is 5 s); the
            // daemon's driver writes the same into each node's node.conf.
            ("wal_retrieve_retry_interval", "'200ms'"),
        ] {
            conf += &format!("{key} = {value}\n");
        }
        for (key, value) in &self.extra_settings {
            conf += &format!("{key} = {value}\n");
        }
        if let Some(security) = &self.security {
            // Relative to the data directory; a clone or rewind copies them along.
            conf += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
            conf += "password_encryption = 'scram-sha-256'\n";
            install_server_tls(node, security)?;
            write_pgpass(node, security)?;
        }
        conf += "include_if_exists = 'node.conf'\n";
        append(&node.data_dir.join("postgresql.conf"), &conf)?;
        let hba = node.data_dir.join("pg_hba.conf");
        if self.security.is_some() {
            // Replaces initdb's file: no `host ... trust` line may remain.
            std::fs::write(
                &hba,
                "local all all trust\nlocal replication all trust\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\nhostssl replication all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all samenet scram-sha-256\nhostssl replication all samenet scram-sha-256\n",
            )
            .map_err(io(format!("write {}", hba.display())))
        } else {
            append(
                &hba,
                "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n\
                 host all all samenet trust\nhost replication all samenet trust\n",
            )
        }
    }
}

/// The server's certificate and key as `server.crt` / `server.key` in the data directory, owned
/// by the PostgreSQL account (it refuses a key that others may read).
fn install_server_tls(node: &PgNode, security: &PgSecurity) -> Result<()> {
    for (from, to) in [(&security.server_cert, "server.crt"), (&security.server_key, "server.key")] {
        let to = node.data_dir.join(to);
        write_private(&to, &std::fs::read(from).map_err(io(format!("read {}", from.display())))?)?;
        os::hand_over(&to, node.run_as)?;
    }
    Ok(())
}

/// The `.pgpass` the standbys' `primary_conninfo` names, in the pair's directory.
fn write_pgpass(node: &PgNode, security: &PgSecurity) -> Result<()> {
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let path = node.passfile();
    write_private(&path, format!("*:*:*:postgres:{}\n", escape(&security.admin_password)).as_bytes())?;
    os::hand_over(&path, node.run_as)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    file.write_all(contents).map_err(io(format!("write {}", path.display())))
}

/// The admin role's password and the observation role, over the Unix socket (`trust`), before
/// the standby is cloned (it copies them).
async fn create_roles(primary: &PgNode, security: &PgSecurity) -> Result<()> {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let sql = format!(
        // Local commits: the primary already waits for its synchronous standby, not cloned yet.
        "SET synchronous_commit = local; ALTER ROLE postgres PASSWORD {}; \
         CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor",
        literal(&security.admin_password),
        ident(&security.observer_user),
        literal(&security.observer_password)
    );
    let client = primary.connect_local().await?;
    client.batch_execute(&sql).await.map_err(|source| Error::Postgres { what: "create the roles".into(), source })
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(io(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(io(format!("append to {}", path.display())))
}

/// Starts `node`; if its port was taken in the meantime, picks another one and tries again.
fn start_retrying_port(node: &mut PgNode, settings: &NodeSettings) -> Result<()> {
    let mut attempt = 0;
    loop {
        node.write_node_conf(settings)?;
        match node.start() {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 && node.log_tail(20).contains("could not bind") => {
                tracing::warn!(node = %node.name, port = node.port, "port taken, retrying: {e}");
                node.port = free_port()?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A primary and a streaming standby. Dropping it stops both servers (immediately) and removes
/// their directories.
#[derive(Debug)]
pub struct PgPair {
    pub primary: PgNode,
    pub standby: PgNode,
    dir: tempfile::TempDir,
}

impl PgPair {
    pub fn builder() -> PgPairBuilder {
        PgPairBuilder::default()
    }

    /// A synchronous (`remote_apply`) pair named `a` (primary) and `b` (standby).
    pub async fn start() -> Result<PgPair> {
        Self::builder().start().await
    }

    /// The directory holding both data directories, sockets and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// libpq multi-host connection string that finds whichever server is writable.
    pub fn multi_host_conninfo(&self) -> String {
        format!(
            "host={},{} port={},{} user=postgres dbname=postgres target_session_attrs=read-write{}",
            self.primary.host,
            self.standby.host,
            self.primary.port,
            self.standby.port,
            self.primary.credentials()
        )
    }

    /// Waits until the primary reports the standby as streaming (and `sync` when `synchronous`).
    pub async fn wait_streaming(&self, synchronous: bool, timeout: Duration) -> Result<()> {
        let (primary, standby) = (&self.primary, &self.standby.name);
        let what = format!("{} streaming to {standby}", primary.name);
        wait_for(&what, timeout, || async move {
            let client = primary.connect().await?;
            let row = client
                .query_opt("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1", &[standby])
                .await
                .map_err(|source| Error::Postgres { what: "read pg_stat_replication".into(), source })?;
            let streaming = row.is_some_and(|row| {
                row.get::<_, String>(0) == "streaming" && (!synchronous || row.get::<_, String>(1) == "sync")
            });
            Ok::<_, Error>(streaming.then_some(()))
        })
        .await
        .map_err(|e| Error::Start { what, log: self.standby.log_tail(15), source: Box::new(e) })
    }

    /// Waits until `node` accepts connections (e.g. after a start by someone else).
    pub async fn wait_accepting(node: &PgNode, timeout: Duration) -> Result<()> {
        wait_for(&format!("{} accepting connections", node.name), timeout, || async {
            Ok::<_, Error>(node.connect().await.ok().map(|_| ()))
        })
        .await
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for node in [&self.primary, &self.standby] {
            if let Some(pid) = node.postmaster_pid() {
                // Immediate: the data is thrown away, so there is nothing to checkpoint.
                if node.stop(StopMode::Immediate).is_err() {
                    os::signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}
