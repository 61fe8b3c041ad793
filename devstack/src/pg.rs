//! One PostgreSQL 15 server, managed through its data directory with `pg_ctl`, so anything else
//! (a daemon's driver, a test that kills the postmaster) can stop, start or rewind it by the same
//! directory. Settings shared by both servers of a pair live in `postgresql.conf`; each server's
//! own settings (port, name, upstream, which standby it waits for) live in `node.conf`, included
//! from it, because `pg_basebackup` and `pg_rewind` copy the source's configuration files.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::os::{self, RunAs};
use crate::{Error, Result, io};

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
    pub fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Prepares every command of a server instead of the plain switch to [`RunAs`], e.g. to join a
/// test's network namespace first (which needs root) and then drop to the account.
#[derive(Clone)]
pub struct Launcher(Arc<Prepare>);

type Prepare = dyn Fn(&mut Command, Option<RunAs>) + Send + Sync;

impl Launcher {
    pub fn new(prepare: impl Fn(&mut Command, Option<RunAs>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(prepare))
    }
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Launcher")
    }
}

/// One PostgreSQL server: on 127.0.0.1, or on another address with a [`Launcher`].
#[derive(Debug, Clone)]
pub struct PgNode {
    /// The server's name: its `application_name` as a standby and its `cluster_name`.
    pub name: String,
    /// Address clients use (TCP).
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Directory of the Unix socket (shared by the servers of a pair; sockets are named by port).
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub bin_dir: PathBuf,
    /// Who the PostgreSQL processes run as (`None`: the current user).
    pub run_as: Option<RunAs>,
    /// Prepares its commands instead of the plain switch to `run_as`.
    pub launcher: Option<Launcher>,
    /// The `postgres` role's password when the server is secured ([`crate::PgSecurity`]): TCP
    /// then needs TLS and this password (scram-sha-256); the Unix socket stays `trust`.
    pub password: Option<String>,
}

impl PgNode {
    /// libpq key/value connection string for the `postgres` database as the `postgres` user
    /// (with TLS and the password when the server is secured).
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres{}", self.host, self.port, self.credentials())
    }

    /// ` sslmode=require password=…` for a secured server, else nothing.
    pub fn credentials(&self) -> String {
        self.password
            .as_ref()
            .map(|p| format!(" sslmode=require password='{}'", p.replace('\\', "\\\\").replace('\'', "\\'")))
            .unwrap_or_default()
    }

    /// The `.pgpass` file of a secured pair (in the directory it shares), which standbys'
    /// `primary_conninfo` names instead of a password.
    pub fn passfile(&self) -> std::path::PathBuf {
        self.socket_dir.join("pgpass")
    }

    /// Like [`PgNode::conninfo`] over the Unix socket: reaches the server even when its host is
    /// cut off (sockets live in the file system, not in a network namespace).
    pub fn local_conninfo(&self) -> String {
        format!("host={} port={} user=postgres dbname=postgres", self.socket_dir.display(), self.port)
    }

    /// Connection string a standby of this server uses (no dbname: a replication connection).
    pub fn replication_conninfo(&self, application_name: &str) -> String {
        self.replication_conninfo_at(&self.host, self.port, application_name)
    }

    /// [`PgNode::replication_conninfo`] through another address (a link proxy).
    pub fn replication_conninfo_at(&self, host: &str, port: u16, application_name: &str) -> String {
        let secured = match &self.password {
            Some(_) => format!(" sslmode=require passfile='{}'", self.passfile().display()),
            None => String::new(),
        };
        format!("host={host} port={port} user=postgres application_name={application_name}{secured}")
    }

    /// Opens a client; the connection task is spawned on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        connect(&self.conninfo(), &self.name, self.port).await
    }

    /// Opens a client over the Unix socket (see [`PgNode::local_conninfo`]).
    pub async fn connect_local(&self) -> Result<Client> {
        connect(&self.local_conninfo(), &self.name, self.port).await
    }

    /// A command for a PostgreSQL binary that runs as the PostgreSQL account.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.launcher {
            None => os::pg_command(&self.bin_dir, program, self.run_as),
            Some(launcher) => {
                let mut cmd = os::pg_command(&self.bin_dir, program, None);
                os::set_home(&mut cmd, self.run_as);
                (launcher.0)(&mut cmd, self.run_as);
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
    pub fn start(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start").arg("-D").arg(&self.data_dir).arg("-l").arg(&self.log_file);
        cmd.args(["-w", "-t", "60"]);
        os::run(cmd).map(|_| ()).map_err(|e| Error::Start {
            what: format!("start PostgreSQL {}", self.name),
            log: self.log_tail(20),
            source: Box::new(e),
        })
    }

    /// Stops the server and waits until it is down.
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", mode.as_arg(), "-w", "-t", "60"]);
        os::run(cmd).map(|_| ())
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
    pub fn kill9(&self) -> Result<i32> {
        let Some(pid) = self.postmaster_pid() else {
            return Err(Error::Missing { what: format!("{} has no postmaster.pid", self.name) });
        };
        if !os::signal(pid, libc::SIGKILL) {
            return Err(Error::Missing { what: format!("{} postmaster {pid} is not running", self.name) });
        }
        Ok(pid)
    }

    /// Whether the server is in recovery (a standby). Errors if it cannot be reached.
    pub async fn is_in_recovery(&self) -> Result<bool> {
        let client = self.connect().await?;
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|source| Error::Postgres { what: format!("pg_is_in_recovery() on {}", self.name), source })?;
        Ok(row.get(0))
    }

    /// The last `n` lines of the server log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        os::log_tail(&self.log_file, n)
    }

    /// Rewrites `node.conf`, this server's own settings. Takes effect on the next start or reload.
    pub fn write_node_conf(&self, settings: &NodeSettings) -> Result<()> {
        let path = self.data_dir.join("node.conf");
        std::fs::write(&path, settings.render(self)).map_err(io(format!("write {}", path.display())))?;
        os::hand_over(&path, self.run_as)
    }

    /// Marks the data directory as a standby (`standby.signal`).
    pub fn write_standby_signal(&self) -> Result<()> {
        let path = self.data_dir.join("standby.signal");
        std::fs::write(&path, b"").map_err(io(format!("write {}", path.display())))?;
        os::hand_over(&path, self.run_as)
    }

    /// `pg_ctl reload`: re-reads `postgresql.conf` and `node.conf`.
    pub fn reload(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(&self.data_dir);
        os::run(cmd).map(|_| ())
    }
}

async fn connect(conninfo: &str, name: &str, port: u16) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, crate::tls::client())
        .await
        .map_err(|source| Error::Postgres { what: format!("connect to {name} on port {port}"), source })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A server's own settings, written to `node.conf`.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    /// Upstream for a standby (`primary_conninfo`), `None` for a primary.
    pub primary_conninfo: Option<String>,
    /// Standby names this server waits for when it is the primary; empty: asynchronous.
    pub synchronous_standby_names: Vec<String>,
}

impl NodeSettings {
    fn render(&self, node: &PgNode) -> String {
        let quote = |value: &str| value.replace('\'', "''");
        let mut out = String::from("# This node's own settings (re-applied after pg_basebackup or pg_rewind).\n");
        out += &format!("port = {}\n", node.port);
        out += &format!("unix_socket_directories = '{}'\n", quote(&node.socket_dir.display().to_string()));
        out += &format!("cluster_name = '{}'\n", quote(&node.name));
        if let Some(conninfo) = &self.primary_conninfo {
            out += &format!("primary_conninfo = '{}'\n", quote(conninfo));
        }
        let names = if self.synchronous_standby_names.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> =
                self.synchronous_standby_names.iter().map(|n| format!("\"{}\"", n.replace('"', ""))).collect();
            format!("FIRST 1 ({})", quoted.join(", "))
        };
        out += &format!("synchronous_standby_names = '{}'\n", quote(&names));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_conf_quotes_what_it_inserts() {
        let node = PgNode {
            name: "a".into(),
            host: "127.0.0.1".into(),
            port: 5433,
            data_dir: "/d/a".into(),
            socket_dir: "/tmp/it's here".into(),
            log_file: "/d/a.log".into(),
            bin_dir: "/bin".into(),
            run_as: None,
            launcher: None,
            password: None,
        };
        let settings = NodeSettings {
            primary_conninfo: Some(node.replication_conninfo("b")),
            synchronous_standby_names: vec!["b".into()],
        };
        let text = settings.render(&node);
        assert!(text.contains("port = 5433\n"), "{text}");
        assert!(text.contains("unix_socket_directories = '/tmp/it''s here'\n"), "{text}");
        assert!(text.contains("primary_conninfo = 'host=127.0.0.1 port=5433 user=postgres application_name=b'"));
        assert!(text.contains("synchronous_standby_names = 'FIRST 1 (\"b\")'\n"), "{text}");
        let primary = NodeSettings::default().render(&node);
        assert!(primary.contains("synchronous_standby_names = ''\n") && !primary.contains("primary_conninfo"));
    }
}
