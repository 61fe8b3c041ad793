//! The plain-PostgreSQL driver ("managed" mode): the daemon owns a data directory and runs the
//! server with `pg_ctl`, so the server is identified by its data directory.
//!
//! Configuration layout: `postgresql.conf` holds settings shared by both nodes and includes
//! `node.conf` (`include_if_exists = 'node.conf'`), which holds this node's own settings (port,
//! socket directory, `cluster_name`, `primary_conninfo`, `synchronous_standby_names`). The driver
//! owns `node.conf`. It changes `synchronous_standby_names` there (plus a reload), not with
//! `ALTER SYSTEM`: `postgresql.auto.conf` is copied by `pg_rewind`/`pg_basebackup` and read after
//! every other file, so a value set there on the source would silently override this node's own
//! settings after a rewind or clone. For the same reason the driver removes the keys it owns
//! from `postgresql.auto.conf`, and treats a `node.conf` whose `cluster_name` is not its own as a
//! copy of the source's and rewrites it from its configuration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::driver::{
    CaughtUp, FenceMethod, FenceOutcome, PairDriver, PromoteRequest, Promotion, RejoinMethod, Rejoined, Upstream,
};
use crate::error::{Error, Result};
use crate::lsn::{Lsn, WalPosition};
use crate::observe::{self, Observed, parse_lsn, timeline_of_walfile};
use crate::process;
pub use crate::process::RunAs;
use crate::query::{Connector, connect_config, timed_on};
use crate::sync::{self, Durability, SyncRecordStore, SyncSteps};
use crate::tls::{PgAuth, conninfo_value, pgpass_line};

/// Keys of this node's own settings. They live in `node.conf` only.
const OWNED_KEYS: [&str; 9] = [
    "port",
    "unix_socket_directories",
    "cluster_name",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "wal_retrieve_retry_interval",
    "wal_receiver_timeout",
    "wal_sender_timeout",
];

/// Server-log lines that mean "this node's history is not a prefix of the upstream's".
const DIVERGENCE_MARKERS: [&str; 4] = [
    "forked off current database system timeline",
    "is not in this server's history",
    "is not a child of this server's history",
    "is ahead of the WAL flush position of this server",
];

/// Size of a `CHECKPOINT_SHUTDOWN` WAL record in PostgreSQL 13–16: record header (24) + short
/// data header (2) + `CheckPoint` (88).
const SHUTDOWN_CHECKPOINT_RECORD_LEN: u64 = 114;
/// `pg_control version number` of the releases [`SHUTDOWN_CHECKPOINT_RECORD_LEN`] was checked
/// for. With another version the fence reports no final position rather than a wrong one.
const KNOWN_PG_CONTROL_VERSION: u64 = 1300;

/// Added to a `pg_ctl` wait for the command's hard deadline.
const PG_CTL_GRACE: Duration = Duration::from_secs(2);
/// Written into the data directory once `pg_basebackup` completed, removed once the copy
/// streams: a rejoin that failed after the clone (a slow follow) resumes from the copy instead
/// of cloning again. PostgreSQL ignores unknown files in its data directory.
pub const CLONE_MARKER: &str = "continuum.clone-complete";

/// One node in managed mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainNodeConfig {
    /// The node's name: `application_name` as a standby, `cluster_name`, the name the peer lists
    /// in `synchronous_standby_names`.
    pub name: String,
    pub data_dir: PathBuf,
    /// Directory of `pg_ctl`, `pg_controldata`, `pg_rewind`, `pg_basebackup`.
    pub bin_dir: PathBuf,
    /// Server log (`pg_ctl -l`); also read to detect timeline divergence on rejoin.
    pub log_file: PathBuf,
    #[serde(default = "default_host")]
    pub host: String,
    pub port: u16,
    /// This node's `listen_addresses`, kept in `node.conf`: pg_basebackup and pg_rewind copy the
    /// source's `postgresql.conf`, whose value names the other host's addresses (the server
    /// would then fail to bind). `None`: left to `postgresql.conf` (fine for `'*'`).
    #[serde(default)]
    pub listen_addresses: Option<String>,
    pub socket_dir: PathBuf,
    #[serde(default = "default_superuser")]
    pub superuser: String,
    #[serde(default = "default_superuser")]
    pub dbname: String,
    /// `None`: run binaries as the daemon's own user.
    #[serde(default)]
    pub run_as: Option<RunAs>,
    /// The standby this node waits for when it is primary, written to `node.conf` when the file
    /// has to be recreated (after a rewind or clone). Usually the peer's name.
    #[serde(default)]
    pub synchronous_standby: Option<String>,
    #[serde(default)]
    pub timeouts: PlainTimeouts,
    #[serde(default)]
    pub rejoin: RejoinPolicy,
    /// TLS and credentials of every session: its own server, the upstream, and the
    /// `primary_conninfo`, `pg_rewind` and `pg_basebackup` of a rejoin (same roles on both).
    #[serde(default)]
    pub auth: PgAuth,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_superuser() -> String {
    "postgres".into()
}

/// Deadlines of the plain driver (humantime in config files: `"10s"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlainTimeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// One query (observation, reload, fencing record).
    #[serde(with = "humantime_serde")]
    pub query: Duration,
    /// The `CHECKPOINT` before a fence; on expiry the fence goes on without it.
    #[serde(with = "humantime_serde")]
    pub checkpoint: Duration,
    /// Fast shutdown; on expiry the fence falls back to an immediate shutdown.
    #[serde(with = "humantime_serde")]
    pub fast_stop: Duration,
    #[serde(with = "humantime_serde")]
    pub immediate_stop: Duration,
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// `pg_promote(wait => true, …)`.
    #[serde(with = "humantime_serde")]
    pub promote: Duration,
    /// After a start as standby, until the upstream reports it streaming and caught up.
    #[serde(with = "humantime_serde")]
    pub follow: Duration,
    #[serde(with = "humantime_serde")]
    pub rewind: Duration,
    #[serde(with = "humantime_serde")]
    pub clone: Duration,
    /// Until a newly named synchronous standby reports `sync`.
    #[serde(with = "humantime_serde")]
    pub sync_wait: Duration,
    /// How often waits re-check their condition.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// `wal_retrieve_retry_interval` written to `node.conf`: how long a standby's startup
    /// process waits before it retries a lost upstream. PostgreSQL's 5 s default delays the
    /// first reconnect to a new primary after a rejoin and, when a promotion request races
    /// with the wait, the promotion itself.
    #[serde(with = "humantime_serde")]
    pub wal_retrieve_retry_interval: Duration,
    /// `wal_receiver_timeout` written to `node.conf`: a standby's WAL receiver gives up on an
    /// upstream it heard nothing from for this long (it pings at half of it), so a frozen or
    /// cut-off primary shows as "not streaming" within this bound. Also written as
    /// `wal_sender_timeout`: a primary cut off from its standby by a silent partition (packets
    /// dropped, no reset) otherwise shows it "streaming" for PostgreSQL's default 60 s, and
    /// `preferred` durability could not relax in time.
    #[serde(with = "humantime_serde")]
    pub wal_receiver_timeout: Duration,
}

impl Default for PlainTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            query: Duration::from_secs(5),
            checkpoint: Duration::from_secs(10),
            fast_stop: Duration::from_secs(10),
            immediate_stop: Duration::from_secs(10),
            start: Duration::from_secs(60),
            promote: Duration::from_secs(30),
            follow: Duration::from_secs(30),
            rewind: Duration::from_secs(300),
            clone: Duration::from_secs(1800),
            sync_wait: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            wal_retrieve_retry_interval: Duration::from_millis(200),
            wal_receiver_timeout: Duration::from_secs(60),
        }
    }
}

/// Retries of [`PlainDriver::rejoin_as_standby`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RejoinPolicy {
    /// Attempts in total (follow, rewind and re-clone each count) before giving up.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Whether to re-clone with `pg_basebackup` when `pg_rewind` fails. The old data directory is
    /// kept as `<data_dir>.continuum-replaced` until the clone streams.
    pub allow_reclone: bool,
}

impl Default for RejoinPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            allow_reclone: true,
        }
    }
}

/// Parsed `pg_controldata` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// "shut down", "shut down in recovery", "in production", "in archive recovery", …
    pub state: String,
    pub system_id: u64,
    pub checkpoint: Lsn,
    pub checkpoint_timeline: u32,
    pub wal_block_size: u64,
    pub wal_segment_size: u64,
    pub pg_control_version: u64,
}

impl ControlData {
    pub fn parse(node: &str, text: &str) -> Result<ControlData> {
        let field = |label: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(label).and_then(|rest| rest.strip_prefix(':')).map(str::trim))
                .ok_or_else(|| Error::Parse {
                    node: node.to_string(),
                    what: "pg_controldata",
                    detail: format!("no {label:?} line"),
                })
        };
        let number = |label: &str| {
            field(label)?.parse::<u64>().map_err(|e| Error::Parse {
                node: node.to_string(),
                what: "pg_controldata",
                detail: format!("{label}: {e}"),
            })
        };
        Ok(ControlData {
            state: field("Database cluster state")?.to_string(),
            system_id: number("Database system identifier")?,
            checkpoint: parse_lsn(node, field("Latest checkpoint location")?)?,
            checkpoint_timeline: number("Latest checkpoint's TimeLineID")? as u32,
            wal_block_size: number("WAL block size")?,
            wal_segment_size: number("Bytes per WAL segment")?,
            pg_control_version: number("pg_control version number")?,
        })
    }

    pub fn clean_shutdown(&self) -> bool {
        self.state == "shut down"
    }

    /// End of the latest checkpoint record, i.e. what a standby reports as received/replayed
    /// once it has it (a record may span pages; each page starts with a header). `None` for a
    /// PostgreSQL release whose record size is not known here.
    pub fn checkpoint_end(&self) -> Option<Lsn> {
        if self.pg_control_version != KNOWN_PG_CONTROL_VERSION {
            return None;
        }
        let block = self.wal_block_size.max(1);
        let mut pos = self.checkpoint.0;
        let mut remaining = SHUTDOWN_CHECKPOINT_RECORD_LEN;
        loop {
            let page_end = (pos / block + 1) * block;
            if remaining <= page_end - pos {
                pos += remaining;
                break;
            }
            remaining -= page_end - pos;
            // Long page header (40 bytes) at a segment start, short (24) otherwise.
            pos = page_end + if page_end.is_multiple_of(self.wal_segment_size.max(1)) { 40 } else { 24 };
        }
        Some(Lsn(pos.div_ceil(8) * 8))
    }
}

/// This node's own settings as written to `node.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct NodeSettings {
    primary_conninfo: Option<String>,
    synchronous_standby_names: String,
}

/// Plain PostgreSQL in managed mode.
#[derive(Debug, Clone)]
pub struct PlainDriver {
    config: PlainNodeConfig,
    /// The admin role's sessions to this node (and, retargeted, to an upstream).
    admin: Connector,
    /// The admin role's password, for the `.pgpass` of a rejoin.
    password: Option<String>,
    /// Shared by clones: one observation session per node.
    observer: Arc<observe::Observer>,
}

impl PlainDriver {
    /// Checks the configuration and reads its TLS and password files (nothing is touched).
    pub fn new(config: PlainNodeConfig) -> Result<PlainDriver> {
        let bad = |why: String| Err(Error::InvalidInput(format!("node {:?}: {why}", config.name)));
        if config.name.is_empty() || !config.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
            return bad("name must be non-empty ASCII letters, digits, '-' or '_'".into());
        }
        for (what, dir) in
            [("data_dir", &config.data_dir), ("bin_dir", &config.bin_dir), ("socket_dir", &config.socket_dir)]
        {
            if !dir.is_absolute() {
                return bad(format!("{what} {} must be absolute", dir.display()));
            }
        }
        if !config.bin_dir.join("pg_ctl").exists() {
            return bad(format!("no pg_ctl in {}", config.bin_dir.display()));
        }
        if config.port == 0 {
            return bad("port must not be 0".into());
        }
        if let Some(listen) = &config.listen_addresses
            && (listen.trim().is_empty() || listen.contains(['\n', '\r', '\'']))
        {
            return bad(format!("listen_addresses {listen:?} is empty or has quotes or line breaks"));
        }
        if let Some(standby) = &config.synchronous_standby
            && (standby.is_empty() || standby.contains(['"', '\'']))
        {
            return bad(format!("synchronous_standby {standby:?} is empty or has quotes"));
        }
        if config.rejoin.max_attempts == 0 {
            return bad("rejoin.max_attempts must be at least 1".into());
        }
        let auth = &config.auth;
        let invalid = |why: String| Error::InvalidInput(format!("node {:?}: {why}", config.name));
        let tls = auth.tls_client().map_err(invalid)?;
        let password = auth.password().map_err(invalid)?;
        let admin = Connector::new(pg_config(&config, &config.superuser), auth, tls.clone(), password.as_deref());
        let (observer_user, observer_password) = auth.observer(&config.superuser).map_err(invalid)?;
        let observer_connector =
            Connector::new(pg_config(&config, &observer_user), auth, tls, observer_password.as_deref());
        let observer = Arc::new(observe::Observer::new(
            config.name.clone(),
            observer_connector,
            config.timeouts.connect + config.timeouts.query,
        ));
        Ok(PlainDriver { config, admin, password, observer })
    }

    pub fn config(&self) -> &PlainNodeConfig {
        &self.config
    }

    fn node(&self) -> String {
        self.config.name.clone()
    }

    fn upstream_connector(&self, upstream: &Upstream) -> Connector {
        self.admin.to(&upstream.host, upstream.port, &upstream.user, &upstream.dbname)
    }

    async fn connect_to(&self, node: &str, connector: &Connector) -> Result<Client> {
        connector.connect(node, self.config.timeouts.connect).await
    }

    async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.config.name, &self.admin).await
    }

    /// Runs a query on this node under a deadline.
    async fn timed<T>(
        &self,
        what: &'static str,
        after: Duration,
        fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        timed_on(&self.config.name, what, after, fut).await
    }

    /// This node as `pg_ctl` sees it.
    pub fn server(&self) -> process::Server {
        process::Server {
            node: self.config.name.clone(),
            bin_dir: self.config.bin_dir.clone(),
            data_dir: self.config.data_dir.clone(),
            log_file: self.config.log_file.clone(),
            run_as: self.config.run_as,
        }
    }

    /// Runs a PostgreSQL binary as the PostgreSQL account; killed at the deadline.
    async fn run_tool_ok(&self, program: &str, args: Vec<OsString>, deadline: Duration) -> Result<Output> {
        process::run_tool_ok(&self.server(), program, args, deadline).await
    }

    fn data_dir_arg(&self) -> Vec<OsString> {
        vec!["-D".into(), self.config.data_dir.clone().into()]
    }

    /// Whether a postmaster runs on this data directory (`pg_ctl status`).
    pub async fn is_running(&self) -> Result<bool> {
        process::is_running(&self.server(), self.config.timeouts.query).await
    }

    pub async fn control_data(&self) -> Result<ControlData> {
        let output = self.run_tool_ok("pg_controldata", self.data_dir_arg(), self.config.timeouts.query).await?;
        ControlData::parse(&self.config.name, &String::from_utf8_lossy(&output.stdout))
    }

    async fn pg_ctl_start(&self) -> Result<()> {
        process::start(&self.server(), self.config.timeouts.start + PG_CTL_GRACE).await
    }

    /// Stops the server if it runs: fast, then immediate, then SIGKILL. Returns how.
    async fn stop_now(&self) -> Result<Option<FenceMethod>> {
        if !self.is_running().await? {
            return Ok(None);
        }
        let server = self.server();
        match process::stop_fast(&server, self.config.timeouts.fast_stop + PG_CTL_GRACE).await {
            Ok(()) => return Ok(Some(FenceMethod::Fast)),
            Err(e) => tracing::warn!(node = %self.config.name, "fast shutdown failed, stopping immediately: {e}"),
        }
        match process::stop_immediately(&server, self.config.timeouts.immediate_stop + PG_CTL_GRACE).await {
            Ok(()) => Ok(Some(FenceMethod::Immediate)),
            // The postmaster may have exited meanwhile (e.g. it had crashed and was a zombie).
            Err(_) if !self.is_running().await? => Ok(Some(FenceMethod::Immediate)),
            Err(e) => Err(e),
        }
    }

    fn io_err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let (node, path) = (self.node(), path.to_path_buf());
        move |source| Error::Io { node, path, source }
    }

    /// Writes a file in the data directory atomically, owned by the PostgreSQL account.
    fn write_owned(&self, path: &Path, contents: &str) -> Result<()> {
        self.write_owned_mode(path, contents, 0o644)
    }

    /// [`PlainDriver::write_owned`] with the file's mode (a secret: 0600, which libpq demands
    /// of a passfile).
    fn write_owned_mode(&self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("continuum-tmp");
        let _ = std::fs::remove_file(&tmp);
        // Synced before the rename, so a power loss leaves the old file or the new one.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(self.io_err(&tmp))?;
        file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(self.io_err(&tmp))?;
        if let Some(user) = self.config.run_as {
            std::os::unix::fs::chown(&tmp, Some(user.uid), Some(user.gid)).map_err(self.io_err(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(self.io_err(path))
    }

    fn read_node_settings(&self) -> Result<Option<NodeSettings>> {
        let path = self.config.data_dir.join("node.conf");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err(&path)(e)),
        };
        let mut settings = NodeSettings::default();
        let mut owner = None;
        for line in text.lines() {
            let Some((key, value)) = parse_conf_line(line) else { continue };
            match key {
                "cluster_name" => owner = Some(value),
                "primary_conninfo" => settings.primary_conninfo = Some(value),
                "synchronous_standby_names" => settings.synchronous_standby_names = value,
                _ => {}
            }
        }
        if owner.as_deref() != Some(self.config.name.as_str()) {
            // pg_rewind / pg_basebackup copied the source's node.conf: none of it is ours.
            tracing::warn!(node = %self.config.name, found = ?owner, "node.conf belongs to another node; rewriting it");
            return Ok(None);
        }
        Ok(Some(settings))
    }

    fn default_sync_names(&self) -> String {
        self.config.synchronous_standby.as_deref().map(first_one).unwrap_or_default()
    }

    fn write_node_settings(&self, settings: &NodeSettings) -> Result<()> {
        let c = &self.config;
        let mut out = format!(
            "# This node's own settings, owned by continuum (node {}). Rewritten after pg_rewind or pg_basebackup.\n",
            c.name
        );
        out += &format!("port = {}\n", c.port);
        if let Some(listen) = &c.listen_addresses {
            out += &format!("listen_addresses = {}\n", quote(listen));
        }
        out += &format!("unix_socket_directories = {}\n", quote(&c.socket_dir.to_string_lossy()));
        out += &format!("cluster_name = {}\n", quote(&c.name));
        if let Some(conninfo) = &settings.primary_conninfo {
            out += &format!("primary_conninfo = {}\n", quote(conninfo));
        }
        out += &format!("synchronous_standby_names = {}\n", quote(&settings.synchronous_standby_names));
        out += &format!("wal_retrieve_retry_interval = '{}ms'\n", c.timeouts.wal_retrieve_retry_interval.as_millis());
        out += &format!("wal_receiver_timeout = '{}ms'\n", c.timeouts.wal_receiver_timeout.as_millis());
        out += &format!("wal_sender_timeout = '{}ms'\n", c.timeouts.wal_receiver_timeout.as_millis());
        self.write_owned(&c.data_dir.join("node.conf"), &out)
    }

    fn owns(&self, key: &str) -> bool {
        OWNED_KEYS.contains(&key) || (key == "listen_addresses" && self.config.listen_addresses.is_some())
    }

    /// Removes the keys this node owns from `postgresql.auto.conf` (copied from the source by a
    /// rewind or clone, and read after node.conf, so it would win).
    fn scrub_auto_conf(&self) -> Result<()> {
        let path = self.config.data_dir.join("postgresql.auto.conf");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_err(&path)(e)),
        };
        let kept: Vec<&str> =
            text.lines().filter(|line| !parse_conf_line(line).is_some_and(|(key, _)| self.owns(key))).collect();
        if kept.len() != text.lines().count() {
            tracing::warn!(node = %self.config.name, "removing this node's own settings from postgresql.auto.conf");
            self.write_owned(&path, &(kept.join("\n") + "\n"))?;
        }
        Ok(())
    }

    fn set_standby_signal(&self, present: bool) -> Result<()> {
        let path = self.config.data_dir.join("standby.signal");
        if present {
            self.write_owned(&path, "")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io_err(&path)(e)),
                _ => Ok(()),
            }
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.config.log_file).map(|m| m.len()).unwrap_or(0)
    }

    fn divergence_in_log_since(&self, offset: u64) -> Option<String> {
        let bytes = std::fs::read(&self.config.log_file).ok()?;
        let start = (offset as usize).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[start..]);
        text.lines()
            .find(|line| DIVERGENCE_MARKERS.iter().any(|m| line.contains(m)))
            .map(|line| line.trim().to_string())
    }

    fn replication_conninfo(&self, upstream: &Upstream) -> Result<String> {
        Ok(format!("{} application_name={}", self.upstream_conninfo(upstream, None)?, self.config.name))
    }

    /// libpq conninfo of `upstream` for the server and its tools (run as the PostgreSQL
    /// account): TLS settings and, when a password is configured, a `passfile` written next to
    /// the data directory (never the password itself, which `primary_conninfo` would expose).
    fn upstream_conninfo(&self, upstream: &Upstream, dbname: Option<&str>) -> Result<String> {
        let mut out = format!(
            "host={} port={} user={}",
            conninfo_value(&upstream.host),
            upstream.port,
            conninfo_value(&upstream.user)
        );
        if let Some(dbname) = dbname {
            out += &format!(" dbname={}", conninfo_value(dbname));
        }
        let passfile = match &self.password {
            Some(password) => {
                let path = self.passfile();
                self.write_owned_mode(&path, &pgpass_line(&upstream.user, password), 0o600)?;
                Some(path)
            }
            None => None,
        };
        Ok(format!("{out} {}", self.config.auth.conninfo_params(passfile.as_deref())))
    }

    /// `<data_dir>.pgpass`: outside the data directory, which a re-clone replaces.
    fn passfile(&self) -> PathBuf {
        let mut name = self.config.data_dir.clone().into_os_string();
        name.push(".pgpass");
        PathBuf::from(name)
    }

    /// Standby configuration pointing at `upstream`, in crash-safe order: `standby.signal` first,
    /// so the server can never come up writable from a half-written configuration.
    fn configure_as_standby_of(&self, upstream: &Upstream) -> Result<()> {
        self.set_standby_signal(true)?;
        let mut settings = self.read_node_settings()?.unwrap_or_else(|| NodeSettings {
            primary_conninfo: None,
            synchronous_standby_names: self.default_sync_names(),
        });
        settings.primary_conninfo = Some(self.replication_conninfo(upstream)?);
        self.write_node_settings(&settings)?;
        self.scrub_auto_conf()
    }

    /// Starts as a standby and waits until the upstream reports it streaming and caught up with
    /// the upstream's position at that moment. Fails early with [`Error::Diverged`].
    async fn start_and_follow(&self, upstream: &Upstream) -> Result<()> {
        self.configure_as_standby_of(upstream)?;
        let log_offset = self.log_len();
        if let Err(e) = self.pg_ctl_start().await {
            if let Some(line) = self.divergence_in_log_since(log_offset) {
                return Err(Error::Diverged { node: self.node(), upstream: upstream.name.clone(), detail: line });
            }
            return Err(e);
        }
        let up = self.connect_to(&upstream.name, &self.upstream_connector(upstream)).await?;
        let row = timed_on(&upstream.name, "read upstream position", self.config.timeouts.query, up.query_one(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
                &[],
            ))
        .await?;
        if row.get::<_, bool>(0) {
            return Err(Error::WrongRole { node: upstream.name.clone(), expected: "a primary", found: "a standby" });
        }
        let target = parse_lsn(&upstream.name, row.get(1))?;
        let started = Instant::now();
        loop {
            if let Some(line) = self.divergence_in_log_since(log_offset) {
                return Err(Error::Diverged { node: self.node(), upstream: upstream.name.clone(), detail: line });
            }
            let row = timed_on(
                &upstream.name,
                "read pg_stat_replication on the upstream",
                self.config.timeouts.query,
                up.query_opt(
                    "SELECT state, replay_lsn::text FROM pg_stat_replication WHERE application_name = $1",
                    &[&self.config.name],
                ),
            )
            .await?;
            if let Some(row) = row {
                let state: Option<String> = row.get(0);
                let replay = row.get::<_, Option<&str>>(1).map(|t| parse_lsn(&upstream.name, t)).transpose()?;
                if state.as_deref() == Some("streaming") && replay.is_some_and(|lsn| lsn >= target) {
                    return Ok(());
                }
            }
            if started.elapsed() >= self.config.timeouts.follow {
                return Err(Error::Timeout {
                    node: self.node(),
                    what: "streaming from the upstream",
                    after: self.config.timeouts.follow,
                });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }

    /// Whether it already streams from `upstream` (a retried rejoin).
    async fn already_following(&self, upstream: &Upstream) -> bool {
        let local = match self.connect().await {
            Ok(client) => observe::observe_standby(&self.config.name, &client).await,
            Err(e) => Err(e),
        };
        if !local.is_ok_and(|s| s.streaming) {
            return false;
        }
        let Ok(up) = self.connect_to(&upstream.name, &self.upstream_connector(upstream)).await else { return false };
        let query = "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'";
        let name = &self.config.name;
        matches!(
            timed_on(&upstream.name, "check streaming", self.config.timeouts.query, up.query_opt(query, &[name])).await,
            Ok(Some(_))
        )
    }

    async fn try_follow(&self, upstream: &Upstream) -> Result<()> {
        self.stop_now().await?;
        self.start_and_follow(upstream).await
    }

    async fn try_rewind(&self, upstream: &Upstream) -> Result<()> {
        self.stop_now().await?;
        // pg_rewind may first run single-user crash recovery, which refuses standby.signal.
        self.set_standby_signal(false)?;
        let mut args = self.data_dir_arg();
        args.push("--source-server".into());
        args.push(self.upstream_conninfo(upstream, Some(&upstream.dbname))?.into());
        let output = self.run_tool_ok("pg_rewind", args, self.config.timeouts.rewind).await?;
        // pg_rewind reports on stderr.
        tracing::info!(node = %self.config.name, "pg_rewind: {}", String::from_utf8_lossy(&output.stderr).trim());
        // pg_rewind copied the source's node.conf and postgresql.auto.conf:
        // start_and_follow rewrites node.conf and scrubs postgresql.auto.conf.
        self.start_and_follow(upstream).await
    }

    fn replaced_dir(&self) -> PathBuf {
        let mut name = self.config.data_dir.clone().into_os_string();
        name.push(".continuum-replaced");
        PathBuf::from(name)
    }

    async fn try_reclone(&self, upstream: &Upstream) -> Result<()> {
        let data_dir = &self.config.data_dir;
        // Destroy nothing unless the source is there to copy from.
        let up = self.connect_to(&upstream.name, &self.upstream_connector(upstream)).await?;
        let query = up.query_one("SELECT pg_is_in_recovery()", &[]);
        if timed_on(&upstream.name, "check upstream role", self.config.timeouts.query, query).await?.get::<_, bool>(0) {
            return Err(Error::WrongRole { node: upstream.name.clone(), expected: "a primary", found: "a standby" });
        }
        if data_dir.exists() {
            self.stop_now().await?;
            let replaced = self.replaced_dir();
            if replaced.exists() {
                // The original is already set aside; this is a later, failed copy.
                std::fs::remove_dir_all(data_dir).map_err(self.io_err(data_dir))?;
            } else {
                std::fs::rename(data_dir, &replaced).map_err(self.io_err(data_dir))?;
            }
        }
        let mut args: Vec<OsString> = vec!["-D".into(), data_dir.clone().into(), "-d".into()];
        args.push(self.upstream_conninfo(upstream, None)?.into());
        args.extend(["-X".into(), "stream".into(), "-c".into(), "fast".into()]);
        if let Err(e) = self.run_tool_ok("pg_basebackup", args, self.config.timeouts.clone).await {
            // A partial copy must not be mistaken for a data directory on the next attempt.
            let _ = std::fs::remove_dir_all(data_dir);
            return Err(e);
        }
        // From here on the copy is kept: a failure to follow resumes from it.
        self.write_owned(&self.clone_marker(), "")?;
        self.start_and_follow(upstream).await
    }

    fn clone_marker(&self) -> PathBuf {
        self.config.data_dir.join(CLONE_MARKER)
    }

    /// Whether the data directory is a complete clone that has not streamed yet.
    fn fresh_clone(&self) -> bool {
        self.clone_marker().exists() && self.config.data_dir.join("global/pg_control").exists()
    }

    /// The clone streams (or is given up as diverged): it is an ordinary data directory now,
    /// and the original set aside before the clone is no longer needed.
    fn forget_clone(&self) {
        if !self.clone_marker().exists() {
            return;
        }
        if let Err(e) = std::fs::remove_file(self.clone_marker()) {
            tracing::warn!(node = %self.config.name, "could not remove the clone marker: {e}");
        }
        let replaced = self.replaced_dir();
        if replaced.exists()
            && let Err(e) = std::fs::remove_dir_all(&replaced)
        {
            tracing::warn!(node = %self.config.name, "could not remove {}: {e}", replaced.display());
        }
    }

    async fn record_epoch(&self, client: &mut Client, epoch: u64) -> Result<Promotion> {
        let epoch_i64 = i64::try_from(epoch).map_err(|_| Error::InvalidInput(format!("epoch {epoch} exceeds i64")))?;
        let after = self.config.timeouts.query;
        let tx = self.timed("begin", after, client.transaction()).await?;
        // Local commit: this node may already wait for a synchronous standby that is still
        // fenced; the record reaches it when it rejoins.
        let setup = "SET LOCAL synchronous_commit = local; \
             CREATE SCHEMA IF NOT EXISTS continuum; \
             CREATE TABLE IF NOT EXISTS continuum.fencing (epoch bigint PRIMARY KEY, timeline integer NOT NULL, \
               node text NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now()); \
             LOCK TABLE continuum.fencing IN EXCLUSIVE MODE";
        self.timed("create continuum.fencing", after, tx.batch_execute(setup)).await?;
        let row = self
            .timed(
                "read position",
                after,
                tx.query_one(
                    "SELECT (SELECT max(epoch) FROM continuum.fencing), \
                 (SELECT system_identifier FROM pg_control_system()), pg_current_wal_lsn()::text, \
                 pg_walfile_name(pg_current_wal_lsn())",
                    &[],
                ),
            )
            .await?;
        let recorded: Option<i64> = row.get(0);
        let position = WalPosition {
            system_id: row.get::<_, i64>(1) as u64,
            timeline: timeline_of_walfile(&self.config.name, row.get(3))?,
            lsn: parse_lsn(&self.config.name, row.get(2))?,
        };
        match recorded {
            Some(r) if r > epoch_i64 => {
                return Err(Error::EpochWentBackwards { node: self.node(), epoch, recorded: r as u64 });
            }
            Some(r) if r == epoch_i64 => return Ok(Promotion { position, already_promoted: true }),
            _ => {}
        }
        let timeline = position.timeline as i32;
        let insert = "INSERT INTO continuum.fencing (epoch, timeline, node) VALUES ($1, $2, $3)";
        self.timed("record epoch", after, tx.execute(insert, &[&epoch_i64, &timeline, &self.config.name])).await?;
        self.timed("commit epoch", after, tx.commit()).await?;
        Ok(Promotion { position, already_promoted: false })
    }
}

#[async_trait::async_trait]
impl SyncSteps for PlainDriver {
    async fn set_synchronous_standby(&self, standby: Option<&str>) -> Result<()> {
        let names = standby.map(first_one).unwrap_or_default();
        let mut settings = self
            .read_node_settings()?
            .unwrap_or_else(|| NodeSettings { primary_conninfo: None, synchronous_standby_names: String::new() });
        settings.synchronous_standby_names = names.clone();
        self.write_node_settings(&settings)?;
        self.scrub_auto_conf()?;
        if !self.is_running().await? {
            return Ok(()); // takes effect at the next start
        }
        let client = self.connect().await?;
        self.timed("reload", self.config.timeouts.query, client.execute("SELECT pg_reload_conf()", &[])).await?;
        // Reload is asynchronous: confirm the running value, which also proves nothing overrides it.
        let started = Instant::now();
        loop {
            let shown = self
                .timed(
                    "show synchronous_standby_names",
                    self.config.timeouts.query,
                    client.query_one("SELECT current_setting('synchronous_standby_names')", &[]),
                )
                .await?;
            if shown.get::<_, String>(0) == names {
                return Ok(());
            }
            if started.elapsed() >= self.config.timeouts.query {
                return Err(Error::Timeout {
                    node: self.node(),
                    what: "reload of synchronous_standby_names",
                    after: self.config.timeouts.query,
                });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }

    async fn wait_sync(&self, standby: &str) -> Result<()> {
        let client = self.connect().await?;
        let started = Instant::now();
        loop {
            let row = self
                .timed(
                    "read sync_state",
                    self.config.timeouts.query,
                    client.query_opt(
                        "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'",
                        &[&standby],
                    ),
                )
                .await?;
            if row.is_some() {
                return Ok(());
            }
            if started.elapsed() >= self.config.timeouts.sync_wait {
                return Err(Error::Timeout {
                    node: self.node(),
                    what: "standby becoming synchronous",
                    after: self.config.timeouts.sync_wait,
                });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }
}

#[async_trait::async_trait]
impl PairDriver for PlainDriver {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn observe(&self) -> Observed {
        self.observer.observe().await
    }

    async fn fence(&self) -> Result<FenceOutcome> {
        let node = &self.config.name;
        let mut method = FenceMethod::AlreadyStopped;
        if self.is_running().await? {
            // A CHECKPOINT while still serving makes the shutdown checkpoint (when writes are
            // already stopped) short. Best effort: the stop below is the fence.
            let checkpoint = async {
                let client = self.connect().await?;
                self.timed("CHECKPOINT", self.config.timeouts.checkpoint, client.batch_execute("CHECKPOINT")).await
            };
            if let Err(e) = checkpoint.await {
                tracing::warn!(node = %node, "CHECKPOINT before fencing failed, stopping anyway: {e}");
            }
            // Fast shutdown terminates every session (a sync-rep waiter gets no COMMIT reply) and
            // ships the shutdown checkpoint to connected standbys before exiting.
            method = self.stop_now().await?.unwrap_or(FenceMethod::AlreadyStopped);
        }
        let control = self.control_data().await?;
        let clean = control.clean_shutdown();
        let final_position = control.checkpoint_end().filter(|_| clean).map(|lsn| WalPosition {
            system_id: control.system_id,
            timeline: control.checkpoint_timeline,
            lsn,
        });
        if clean && final_position.is_none() {
            tracing::warn!(node = %node, version = control.pg_control_version, "unknown pg_control version: final position unknown");
        }
        tracing::info!(node = %node, ?method, state = %control.state, ?final_position, "fenced");
        Ok(FenceOutcome { method, clean, final_position, handover_token: None })
    }

    async fn wait_caught_up(&self, target: &WalPosition, timeout: Duration) -> Result<CaughtUp> {
        let client = self.connect().await?;
        let started = Instant::now();
        loop {
            let query = observe::observe_standby(&self.config.name, &client);
            let standby = match tokio::time::timeout(self.config.timeouts.query, query).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(Error::Timeout {
                        node: self.node(),
                        what: "observe",
                        after: self.config.timeouts.query,
                    });
                }
            };
            if standby.system_id != target.system_id {
                return Err(Error::SystemIdMismatch {
                    node: self.node(),
                    expected: target.system_id,
                    found: standby.system_id,
                });
            }
            // A lower timeline may still switch to the target's; a higher one never comes back.
            if standby.timeline > target.timeline {
                return Err(Error::TimelineMismatch {
                    node: self.node(),
                    expected: target.timeline,
                    found: standby.timeline,
                });
            }
            if let (Some(received), Some(replayed)) = (standby.received(), standby.replayed())
                && standby.timeline == target.timeline
                && received.lsn >= target.lsn
                && replayed.lsn >= target.lsn
            {
                return Ok(CaughtUp { received, replayed });
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout { node: self.node(), what: "catching up", after: timeout });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }

    async fn promote(&self, request: &PromoteRequest) -> Result<Promotion> {
        let mut client = self.connect().await?;
        let in_recovery: bool = self
            .timed("pg_is_in_recovery", self.config.timeouts.query, client.query_one("SELECT pg_is_in_recovery()", &[]))
            .await?
            .get(0);
        if in_recovery {
            self.promote_until_out_of_recovery(&client).await?;
        }
        let mut promotion = self.record_epoch(&mut client, request.epoch).await?;
        // A node found already promoted but without this epoch was promoted by an earlier,
        // interrupted call of ours; either way the epoch is now recorded.
        promotion.already_promoted = !in_recovery && promotion.already_promoted;
        tracing::info!(node = %self.config.name, epoch = request.epoch, position = %promotion.position, "promoted");
        Ok(promotion)
    }

    async fn rejoin_as_standby(&self, upstream: &Upstream) -> Result<Rejoined> {
        if upstream.name == self.config.name || upstream.host.is_empty() || upstream.port == 0 {
            return Err(Error::InvalidInput(format!("{}: cannot follow upstream {upstream:?}", self.config.name)));
        }
        if self.is_running().await.unwrap_or(false) && self.already_following(upstream).await {
            return Ok(Rejoined { method: RejoinMethod::AlreadyFollowing, attempts: 0 });
        }
        let policy = &self.config.rejoin;
        let mut method = if self.fresh_clone() || self.config.data_dir.join("global/pg_control").exists() {
            // A complete clone from an earlier attempt is followed, not cloned again.
            RejoinMethod::Follow
        } else {
            // No data directory (e.g. a crash in the middle of a re-clone): only a clone helps.
            RejoinMethod::Reclone
        };
        let mut backoff = policy.initial_backoff;
        let mut attempt = 0;
        let mut previous_failure = None;
        loop {
            attempt += 1;
            let result = match method {
                RejoinMethod::Rewind => self.try_rewind(upstream).await,
                RejoinMethod::Reclone => self.try_reclone(upstream).await,
                RejoinMethod::Follow | RejoinMethod::AlreadyFollowing => self.try_follow(upstream).await,
            };
            let error = match result {
                Ok(()) => {
                    self.forget_clone();
                    tracing::info!(node = %self.config.name, ?method, attempt, "rejoined as standby of {}", upstream.name);
                    return Ok(Rejoined { method, attempts: attempt });
                }
                Err(e) => e,
            };
            tracing::warn!(node = %self.config.name, ?method, attempt, "rejoin attempt failed: {error}");
            // Escalate when the cheaper method cannot work: at once on divergence or when the
            // node never caught up, else after the same method failed twice in a row. An
            // unreachable upstream is no reason to escalate: a rewind or clone needs it too.
            let upstream_down = matches!(&error,
                Error::Connect { node, .. } | Error::Timeout { node, .. } | Error::WrongRole { node, .. }
                    | Error::Auth { node, .. } | Error::Tls { node, .. }
                    if *node == upstream.name);
            let cannot_work = matches!(&error, Error::Diverged { .. } | Error::Timeout { .. });
            let failed_again = previous_failure == Some(method);
            previous_failure = Some(method);
            if matches!(error, Error::Diverged { .. }) {
                // A copy the upstream's history left behind (it failed over meanwhile) is
                // rewound or cloned again like any diverged data directory.
                self.forget_clone();
            }
            if self.fresh_clone() {
                // The clone completed; only following it failed (slow, or the upstream gone for
                // a moment): go on following the copy rather than destroying it.
                method = RejoinMethod::Follow;
                previous_failure = None;
            } else if !upstream_down && (cannot_work || failed_again) {
                let next = match method {
                    RejoinMethod::Follow | RejoinMethod::AlreadyFollowing => RejoinMethod::Rewind,
                    RejoinMethod::Rewind | RejoinMethod::Reclone if policy.allow_reclone => RejoinMethod::Reclone,
                    other => other,
                };
                if next != method {
                    previous_failure = None;
                    method = next;
                }
            }
            // An upstream that is not primary yet is worth waiting for; anything else unsafe is not.
            if attempt >= policy.max_attempts || (error.class() == crate::ErrorClass::Unsafe && !upstream_down) {
                return Err(Error::RejoinGaveUp { node: self.node(), attempts: attempt, last: Box::new(error) });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }

    async fn enable_sync(&self, standby: &str, store: &dyn SyncRecordStore) -> Result<()> {
        sync::enable_in_order(self, standby, store).await
    }

    async fn drop_sync(&self, durability: Durability, store: &dyn SyncRecordStore) -> Result<()> {
        sync::drop_in_order(self, durability, store).await
    }
}

#[path = "plain_recovery.rs"]
mod recovery;

/// How the daemon connects to `node` as `user` (observation and driver steps alike).
fn pg_config(node: &PlainNodeConfig, user: &str) -> tokio_postgres::Config {
    connect_config(&node.host, node.port, user, &node.dbname, node.timeouts.connect)
}

/// `FIRST 1 ("name")`: wait for exactly this standby.
fn first_one(standby: &str) -> String {
    format!("FIRST 1 (\"{}\")", standby.replace('"', ""))
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `key = 'value'` / `key = value` (comments and blank lines give `None`).
fn parse_conf_line(line: &str) -> Option<(&str, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (key, value) = line
        .split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .or_else(|| line.split_once(char::is_whitespace).map(|(k, v)| (k.trim(), v.trim())))?;
    let value = if let Some(inner) = value.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    break;
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        value.split('#').next().unwrap_or("").trim().to_string()
    };
    Some((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_config() -> PlainNodeConfig {
        PlainNodeConfig {
            name: "a".into(),
            data_dir: "/srv/pg/a".into(),
            bin_dir: std::env::var_os("CONTINUUM_PG_BIN").unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into()).into(),
            log_file: "/srv/pg/a.log".into(),
            host: default_host(),
            port: 5432,
            listen_addresses: None,
            socket_dir: "/run/postgresql".into(),
            superuser: default_superuser(),
            dbname: default_superuser(),
            run_as: None,
            synchronous_standby: Some("b".into()),
            timeouts: PlainTimeouts::default(),
            rejoin: RejoinPolicy::default(),
            auth: PgAuth::default(),
        }
    }

    #[test]
    fn bad_config_is_rejected_with_a_reason() {
        type Case = (&'static str, fn(&mut PlainNodeConfig));
        let cases: Vec<Case> = vec![
            ("name", |c| c.name = "a b".into()),
            ("name", |c| c.name = String::new()),
            ("absolute", |c| c.data_dir = "relative/a".into()),
            ("pg_ctl", |c| c.bin_dir = "/nonexistent".into()),
            ("port", |c| c.port = 0),
            ("listen_addresses", |c| c.listen_addresses = Some("*'\nfsync = off".into())),
            ("listen_addresses", |c| c.listen_addresses = Some(" ".into())),
            ("synchronous_standby", |c| c.synchronous_standby = Some("x\"y".into())),
            ("max_attempts", |c| c.rejoin.max_attempts = 0),
            ("sslrootcert", |c| c.auth.sslmode = crate::SslMode::VerifyFull),
            ("password_file", |c| c.auth.password_file = Some("/nonexistent/password".into())),
        ];
        for (expected, mutate) in cases {
            let mut config = valid_config();
            mutate(&mut config);
            match PlainDriver::new(config) {
                Err(Error::InvalidInput(why)) => assert!(why.contains(expected), "{expected}: {why}"),
                other => panic!("{expected}: expected InvalidInput, got {other:?}"),
            }
        }
    }

    #[test]
    fn conf_lines_parse_quotes_and_comments() {
        assert_eq!(parse_conf_line("port = 5432"), Some(("port", "5432".to_string())));
        assert_eq!(
            parse_conf_line("primary_conninfo = 'host=x application_name=''a'''"),
            Some(("primary_conninfo", "host=x application_name='a'".to_string()))
        );
        assert_eq!(parse_conf_line("# comment"), None);
        assert_eq!(parse_conf_line("wal_level replica # trailing"), Some(("wal_level", "replica".to_string())));
    }

    fn control(checkpoint: u64) -> ControlData {
        ControlData {
            state: "shut down".into(),
            system_id: 1,
            checkpoint: Lsn(checkpoint),
            checkpoint_timeline: 1,
            wal_block_size: 8192,
            wal_segment_size: 16 * 1024 * 1024,
            pg_control_version: KNOWN_PG_CONTROL_VERSION,
        }
    }

    #[test]
    fn checkpoint_end_matches_measured_record_and_skips_page_headers() {
        // Measured in research/cnpg.md §3.6: checkpoint at 0/21B8B2E8, standby reached 0/21B8B360.
        assert_eq!(control(0x21B8_B2E8).checkpoint_end(), Some(Lsn(0x21B8_B360)));
        // 16 bytes before a page end: 98 bytes continue after a 24-byte page header.
        assert_eq!(control(8192 - 16).checkpoint_end(), Some(Lsn(8192 + 24 + 104)));
        // Crossing into a new segment: long (40-byte) header.
        let seg = 16 * 1024 * 1024;
        assert_eq!(control(seg - 16).checkpoint_end(), Some(Lsn(seg + 40 + 104)));
        // Another release: unknown rather than guessed.
        let other = ControlData { pg_control_version: 1700, ..control(0x21B8_B2E8) };
        assert_eq!(other.checkpoint_end(), None);
    }

    #[test]
    fn controldata_parses_the_fields_it_needs() {
        let text = "pg_control version number:            1300\nDatabase system identifier:           7300000000000000001\n\
                    Database cluster state:               shut down\nLatest checkpoint location:           0/3000060\n\
                    Latest checkpoint's TimeLineID:       2\nWAL block size:                       8192\n\
                    Bytes per WAL segment:                16777216\n";
        let parsed = ControlData::parse("a", text).unwrap();
        assert!(parsed.clean_shutdown());
        assert_eq!(parsed.system_id, 7_300_000_000_000_000_001);
        assert_eq!(parsed.checkpoint, Lsn(0x300_0060));
        assert_eq!(parsed.checkpoint_timeline, 2);
        assert!(ControlData::parse("a", "garbage").is_err());
    }
}
