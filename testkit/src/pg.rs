//! Real PostgreSQL 15 instances: a primary and a streaming standby wired for
//! `synchronous_commit = remote_apply`.
//!
//! Each node is a data directory managed with `pg_ctl`, so anything else (the driver under test,
//! a test that kills the postmaster) can stop, start or rewind it by the same directory. Settings
//! shared by both nodes live in `postgresql.conf`; each node's own settings (port, name, upstream,
//! which standby it waits for) live in `node.conf`, included from it, because `pg_basebackup` and
//! `pg_rewind` copy the source's configuration files and a node must re-assert its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use tokio_postgres::{Client, NoTls};

use crate::netns::NetNs;
use crate::os::{self, RunAs};
use crate::ports::free_port;
use crate::wait::{wait_for, wait_until};

/// How `pg_ctl stop` ends the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for clients to disconnect.
    Smart,
    /// Terminates sessions, writes a shutdown checkpoint and ships it to connected standbys.
    Fast,
    /// No shutdown checkpoint; crash recovery on the next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One PostgreSQL instance: on 127.0.0.1, or on its own host's address inside a network
/// namespace ([`PgPairBuilder::place`]).
#[derive(Debug, Clone)]
pub struct PgNode {
    /// The node's name: its `application_name` as a standby and its `cluster_name`.
    pub name: String,
    /// Address clients use (TCP).
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Directory of the Unix socket (shared by the nodes of a pair; sockets are named by port).
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub bin_dir: PathBuf,
    run_as: Option<RunAs>,
    netns: Option<NetNs>,
}

impl PgNode {
    /// libpq key/value connection string for the `postgres` database as the `postgres` user.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.host, self.port)
    }

    /// Like [`PgNode::conninfo`] over the Unix socket: reaches the node even when its host is
    /// partitioned (sockets live in the file system, not in a network namespace).
    pub fn local_conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.socket_dir.display(), self.port)
    }

    /// Connection string a standby of this node uses (no dbname: it is a replication connection).
    pub fn replication_conninfo(&self, application_name: &str) -> String {
        format!("host={} port={} user=postgres application_name={application_name}", self.host, self.port)
    }

    /// Opens a client; the connection task is spawned on the current runtime.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        connect(&self.conninfo(), &self.name, self.port).await
    }

    /// Opens a client over the Unix socket (see [`PgNode::local_conninfo`]).
    pub async fn connect_local(&self) -> anyhow::Result<Client> {
        connect(&self.local_conninfo(), &self.name, self.port).await
    }

    /// A command for a PostgreSQL binary that runs as the PostgreSQL account.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.netns {
            None => os::pg_command(&self.bin_dir, program, self.run_as),
            Some(netns) => {
                let mut cmd = os::pg_command(&self.bin_dir, program, None);
                netns.apply_as(&mut cmd, self.run_as.map(|u| (u.uid, u.gid)));
                cmd
            }
        };
        cmd.current_dir(&self.socket_dir);
        cmd
    }

    /// Who the PostgreSQL processes run as (`None`: the current user).
    pub fn run_as(&self) -> Option<RunAs> {
        self.run_as
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start").arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file);
        cmd.args(["-w", "-t", "60"]);
        os::run(cmd).map(|_| ()).with_context(|| format!("start {}; log tail:\n{}", self.name, self.log_tail(20)))
    }

    /// Stops the server and waits until it is down.
    pub fn stop(&self, mode: StopMode) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", mode.as_arg(), "-w", "-t", "60"]);
        os::run(cmd).map(|_| ()).with_context(|| format!("stop {} ({mode:?})", self.name))
    }

    /// Whether `pg_ctl status` reports a running server.
    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data_dir);
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// The postmaster's pid from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `kill -9` of the postmaster, as a crash would. Its backends notice and exit on their own.
    pub fn kill9(&self) -> anyhow::Result<i32> {
        let Some(pid) = self.postmaster_pid() else { bail!("{} has no postmaster.pid", self.name) };
        if !os::signal(pid, libc::SIGKILL) {
            bail!("{} postmaster {pid} is not running", self.name);
        }
        Ok(pid)
    }

    /// Whether the server is in recovery (a standby). Errors if it cannot be reached.
    pub async fn is_in_recovery(&self) -> anyhow::Result<bool> {
        let client = self.connect().await?;
        Ok(client.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0))
    }

    /// The last `n` lines of the server log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Rewrites `node.conf`, this node's own settings. Takes effect on the next start or reload.
    pub fn write_node_conf(&self, settings: &NodeSettings) -> anyhow::Result<()> {
        let path = self.data_dir.join("node.conf");
        std::fs::write(&path, settings.render(self)).with_context(|| format!("write {}", path.display()))?;
        os::hand_over(&path, self.run_as)
    }

    /// Marks the data directory as a standby (`standby.signal`).
    pub fn write_standby_signal(&self) -> anyhow::Result<()> {
        let path = self.data_dir.join("standby.signal");
        std::fs::write(&path, b"").with_context(|| format!("write {}", path.display()))?;
        os::hand_over(&path, self.run_as)
    }
}

async fn connect(conninfo: &str, name: &str, port: u16) -> anyhow::Result<Client> {
    let (client, connection) =
        tokio_postgres::connect(conninfo, NoTls).await.with_context(|| format!("connect to {name} on port {port}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A node's own settings, written to `node.conf`.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    /// Upstream for a standby (`primary_conninfo`), `None` for a primary.
    pub primary_conninfo: Option<String>,
    /// Standby names this node waits for when it is the primary; empty: asynchronous.
    pub synchronous_standby_names: Vec<String>,
}

impl NodeSettings {
    fn render(&self, node: &PgNode) -> String {
        let mut out = String::from("# This node's own settings (re-applied after pg_basebackup or pg_rewind).\n");
        out += &format!("port = {}\n", node.port);
        out += &format!("unix_socket_directories = '{}'\n", node.socket_dir.display());
        out += &format!("cluster_name = '{}'\n", node.name);
        if let Some(conninfo) = &self.primary_conninfo {
            out += &format!("primary_conninfo = '{}'\n", conninfo.replace('\'', "''"));
        }
        let names = if self.synchronous_standby_names.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> =
                self.synchronous_standby_names.iter().map(|n| format!("\"{}\"", n.replace('"', ""))).collect();
            format!("FIRST 1 ({})", quoted.join(", "))
        };
        out += &format!("synchronous_standby_names = '{names}'\n");
        out
    }
}

/// Options for a [`PgPair`].
#[derive(Debug, Clone)]
pub struct PgPairBuilder {
    primary_name: String,
    standby_name: String,
    synchronous: bool,
    fsync: bool,
    extra_settings: Vec<(String, String)>,
    placements: Vec<(String, Ipv4Addr, NetNs)>,
}

impl Default for PgPairBuilder {
    fn default() -> Self {
        Self {
            primary_name: "a".into(),
            standby_name: "b".into(),
            synchronous: true,
            fsync: true,
            extra_settings: Vec::new(),
            placements: Vec::new(),
        }
    }
}

impl PgPairBuilder {
    /// Node names (region names in the end-to-end tests); default `a` (primary) and `b`.
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

    /// Runs node `name` inside a network namespace, reached at `addr` (see [`crate::netns`]).
    /// Nodes then listen on every address of their host and trust clients on its subnet.
    pub fn place(mut self, name: &str, addr: Ipv4Addr, netns: &NetNs) -> Self {
        self.placements.push((name.into(), addr, netns.clone()));
        self
    }

    /// An extra `postgresql.conf` line for both nodes.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.extra_settings.push((key.into(), value.into()));
        self
    }

    /// Creates and starts the pair, and waits until the standby streams (and, when synchronous,
    /// is listed as `sync` in `pg_stat_replication`).
    pub async fn start(self) -> anyhow::Result<PgPair> {
        let bin_dir = os::pg_bin_dir()?;
        let run_as = os::postgres_user()?;
        let dir = tempfile::Builder::new().prefix("continuum-pg-").tempdir().context("create temp dir")?;
        os::hand_over(dir.path(), run_as)?;
        let node = |name: &str| {
            let placed = self.placements.iter().find(|(n, _, _)| n == name);
            PgNode {
                name: name.to_string(),
                host: placed.map_or_else(|| "127.0.0.1".to_string(), |(_, addr, _)| addr.to_string()),
                netns: placed.map(|(_, _, netns)| netns.clone()),
                port: free_port(),
                data_dir: dir.path().join(name),
                socket_dir: dir.path().to_path_buf(),
                log_file: dir.path().join(format!("{name}.log")),
                bin_dir: bin_dir.clone(),
                run_as,
            }
        };
        let mut pair = PgPair { primary: node(&self.primary_name), standby: node(&self.standby_name), dir };
        let (primary_sync, standby_sync) = if self.synchronous {
            (vec![self.standby_name.clone()], vec![self.primary_name.clone()])
        } else {
            (vec![], vec![])
        };

        self.initdb(&pair.primary)?;
        let primary_settings = NodeSettings { primary_conninfo: None, synchronous_standby_names: primary_sync };
        start_retrying_port(&mut pair.primary, &primary_settings)?;

        let mut cmd = pair.primary.command("pg_basebackup");
        cmd.arg("-D").arg(&pair.standby.data_dir);
        cmd.args(["-h", &pair.primary.host, "-p", &pair.primary.port.to_string(), "-U", "postgres"]);
        cmd.args(["-X", "stream", "-c", "fast", "--no-sync"]);
        os::run(cmd).context("pg_basebackup the standby")?;
        pair.standby.write_standby_signal()?;
        let standby_settings = NodeSettings {
            primary_conninfo: Some(pair.primary.replication_conninfo(&pair.standby.name)),
            synchronous_standby_names: standby_sync,
        };
        start_retrying_port(&mut pair.standby, &standby_settings)?;
        pair.wait_streaming(self.synchronous, Duration::from_secs(30)).await?;
        Ok(pair)
    }

    fn initdb(&self, node: &PgNode) -> anyhow::Result<()> {
        let mut cmd = node.command("initdb");
        cmd.arg("-D").arg(&node.data_dir);
        cmd.args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        os::run(cmd).context("initdb")?;
        let mut conf = String::from("\n# Continuum test kit: settings shared by both nodes.\n");
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
        ] {
            conf += &format!("{key} = {value}\n");
        }
        for (key, value) in &self.extra_settings {
            conf += &format!("{key} = {value}\n");
        }
        conf += "include_if_exists = 'node.conf'\n";
        append(&node.data_dir.join("postgresql.conf"), &conf)?;
        append(
            &node.data_dir.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n\
             host all all samenet trust\nhost replication all samenet trust\n",
        )
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("open {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("append to {}", path.display()))
}

/// Starts `node`; if its port was taken in the meantime, picks another one and tries again.
fn start_retrying_port(node: &mut PgNode, settings: &NodeSettings) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        node.write_node_conf(settings)?;
        match node.start() {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 && node.log_tail(20).contains("could not bind") => {
                tracing::warn!(node = %node.name, port = node.port, "port taken, retrying: {e:#}");
                node.port = free_port();
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
    pub async fn start() -> anyhow::Result<PgPair> {
        Self::builder().start().await
    }

    /// The directory holding both data directories, sockets and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// libpq multi-host connection string that finds whichever node is writable.
    pub fn multi_host_conninfo(&self) -> String {
        format!(
            "host={},{} port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
            self.primary.host, self.standby.host, self.primary.port, self.standby.port
        )
    }

    /// Waits until the primary reports the standby as streaming (and `sync` when `synchronous`).
    pub async fn wait_streaming(&self, synchronous: bool, timeout: Duration) -> anyhow::Result<()> {
        let primary = &self.primary;
        let standby_name = self.standby.name.clone();
        wait_until(&format!("{} streaming to {}", primary.name, standby_name), timeout, || {
            let standby_name = standby_name.clone();
            async move {
                let client = primary.connect().await?;
                let row = client
                    .query_opt(
                        "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
                        &[&standby_name],
                    )
                    .await?;
                Ok(match row {
                    Some(row) => {
                        let state: String = row.get(0);
                        let sync_state: String = row.get(1);
                        state == "streaming" && (!synchronous || sync_state == "sync")
                    }
                    None => false,
                })
            }
        })
        .await
        .with_context(|| format!("standby log tail:\n{}", self.standby.log_tail(15)))
    }

    /// Waits until `node` accepts connections (e.g. after a start by someone else).
    pub async fn wait_accepting(node: &PgNode, timeout: Duration) -> anyhow::Result<()> {
        wait_for(&format!("{} accepting connections", node.name), timeout, || async {
            Ok(node.connect().await.ok().map(|_| ()))
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
