//! The daemon's one configuration file (TOML), for a data region daemon or the witness.
//!
//! Every knob has a documented default (README, `## Configuration`). Parsing rejects unknown keys;
//! [`Config::validate`] checks the rules that span several keys and names the offending key, so
//! a bad file is refused before the daemon touches anything. [`validate`] holds those rules;
//! [`to_lease`] maps the file onto the lease crate's types.

mod driver;
pub use driver::{CnpgPairConfig, DriverKind};
mod postgres;
pub use postgres::{PgPeerConfig, PostgresConfig};
mod secret_files;
mod to_lease;
pub use to_lease::lease_start_error;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// What this daemon is: a data region's daemon or the third-site witness (votes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Data,
    Witness,
}

/// How a pair trades availability for durability when the synchronous standby is gone (§4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Never relax synchronous replication: writes block while the standby is away.
    Required,
    /// Drop the standby from the sync record (quorum first), then keep accepting writes.
    #[default]
    Preferred,
}

/// What a graceful stop (SIGTERM, SIGINT) of the daemon does while its region holds a pair's
/// lease. Either way the server does not outlive the lease; a daemon killed outright leaves
/// that to the fence watchdog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnShutdown {
    /// Hand the lease over by a planned switchover when the peer is eligible (the old primary
    /// rejoins as its standby before the daemon exits); otherwise, or if it does not finish in
    /// `shutdown_timeout`, fence.
    #[default]
    Switchover,
    /// Stop the server (immediate shutdown) and let the lease run out: the peer fails over.
    Fence,
}

/// When the standby's region may take the lease from a silent holder (§5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takeover {
    /// Wait for the holder's lease to run out.
    LeaseExpiry,
    /// Claim early once the holder is silent and its WAL stream is gone (needs `sync_standby`).
    /// The default: failover in ~2.5 s instead of a lease (docs/takeover.md has the argument).
    #[default]
    SyncFenced,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This daemon's region name; must match its entry in `raft.peers`.
    pub region: String,
    pub role: Role,
    pub raft: RaftConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
    /// Protected pairs (data role only).
    #[serde(default)]
    pub pairs: Vec<PairConfig>,
    /// Required for the data role, absent for the witness.
    pub pdm: Option<PdmConfig>,
    /// Required for the data role; the witness may serve health and metrics.
    pub api: Option<ApiConfig>,
    /// Required for the data role.
    pub audit: Option<AuditConfig>,
    /// Failpoints armed at start (see `failpoint`); adds to `CONTINUUM_FAILPOINTS`.
    #[serde(default)]
    pub failpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// This node's id; must appear in `peers`.
    pub node_id: u64,
    /// Address the raft (mTLS) listener binds.
    pub listen: SocketAddr,
    /// Durable raft log and snapshots.
    pub data_dir: PathBuf,
    /// Leader heartbeat. WAN value: a region link may add tens of milliseconds.
    #[serde(with = "humantime_serde", default = "defaults::heartbeat")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde", default = "defaults::election_min")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde", default = "defaults::election_max")]
    pub election_timeout_max: Duration,
    /// Every voter, this node included.
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub region: String,
    /// `host:port` of the peer's raft listener (a name is fine: it is resolved at connect time).
    pub address: String,
    #[serde(default)]
    pub witness: bool,
    /// Where this node dials the peer when that differs from `address` (NAT, a relay or a test
    /// proxy). Local only: `address` is what the cluster's membership records.
    #[serde(default)]
    pub dial: Option<String>,
}

/// Daemon-to-daemon mutual TLS (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs every peer's certificate; peers presenting anything else are refused.
    pub ca: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    #[serde(with = "humantime_serde", default = "defaults::renew_interval")]
    pub renew_interval: Duration,
    #[serde(with = "humantime_serde", default = "defaults::lease_duration")]
    pub duration: Duration,
    /// Subtracted from the holder's validity to absorb clock-rate differences between nodes.
    #[serde(with = "humantime_serde", default = "defaults::drift_margin")]
    pub drift_margin: Duration,
    /// Store side: added to a silent holder's duration before another region may be granted.
    #[serde(with = "humantime_serde", default = "defaults::grant_margin")]
    pub grant_margin: Duration,
    /// Deadline of one lease-store write or linearizable read; then the outcome is unknown.
    #[serde(with = "humantime_serde", default = "defaults::call_timeout")]
    pub call_timeout: Duration,
    /// How long the holder's fence (`pg_ctl stop -m immediate`) may take before the postmaster
    /// is killed. Unset: half the fence lead ([`LeaseConfig::fence_lead`]); set, below it.
    #[serde(with = "humantime_serde", default, skip_serializing_if = "Option::is_none")]
    pub fence_timeout: Option<Duration>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            renew_interval: defaults::renew_interval(),
            duration: defaults::lease_duration(),
            drift_margin: defaults::drift_margin(),
            grant_margin: defaults::grant_margin(),
            call_timeout: defaults::call_timeout(),
            fence_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    pub name: String,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub takeover: Takeover,
    /// `takeover = "sync-fenced"`: how long the holder must have written nothing to the lease
    /// store before this region may claim. Unset: twice `lease.renew_interval`, see
    /// [`PairConfig::effective_suspect_window`].
    #[serde(with = "humantime_serde", default)]
    pub suspect_window: Option<Duration>,
    /// How long a standby's WAL stream may bring no message before it counts as gone (written
    /// to the standby's `wal_receiver_timeout`; sync-fenced claims need the stream gone). Unset:
    /// the suspect window, at least 1 s, see [`PairConfig::effective_wal_stream_timeout`].
    #[serde(with = "humantime_serde", default)]
    pub wal_stream_timeout: Option<Duration>,
    /// Automatic failover only when the standby's replay is within this many bytes.
    #[serde(default = "defaults::max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// ... and within this much time.
    #[serde(with = "humantime_serde", default = "defaults::max_lag_seconds")]
    pub max_lag_seconds: Duration,
    #[serde(default = "defaults::auto_failover")]
    pub auto_failover: bool,
    /// Minimum time between two automatic failovers of this pair (no flapping).
    #[serde(with = "humantime_serde", default = "defaults::failover_debounce")]
    pub failover_debounce: Duration,
    /// How long the new lease holder waits for a dead old region's remaining switchover steps
    /// (its `rejoin`) before it completes the record without them.
    #[serde(with = "humantime_serde", default = "defaults::switchover_rejoin_timeout")]
    pub switchover_rejoin_timeout: Duration,
    /// How long one switchover step may stay current (from the end of the step before, on the
    /// replicated record) before the switchover rolls back (lease not moved) or the surviving
    /// region completes it or fails it (moved). Unset: see [`PairConfig::effective_step_timeout`].
    #[serde(with = "humantime_serde", default, skip_serializing_if = "Option::is_none")]
    pub step_timeout: Option<Duration>,
    /// First pause before a failed step (after the lease moved) is tried again; doubles per
    /// failure up to `step_retry_max`.
    #[serde(with = "humantime_serde", default = "defaults::step_retry_initial")]
    pub step_retry_initial: Duration,
    #[serde(with = "humantime_serde", default = "defaults::step_retry_max")]
    pub step_retry_max: Duration,
    /// How long the lease holder's own server may stay unreachable (crashed and not restartable,
    /// or alive but not answering) before the holder stops it for good and lets its lease run out,
    /// so that the standby's region takes over. Crash recovery longer than this fails over.
    #[serde(with = "humantime_serde", default = "defaults::primary_down_timeout")]
    pub primary_down_timeout: Duration,
    /// Pause between two rounds of the control loop outside switchovers (each round observes
    /// both servers and reads the lease record). Unset: derived, see
    /// [`PairConfig::effective_observe_interval`].
    #[serde(with = "humantime_serde", default)]
    pub observe_interval: Option<Duration>,
    /// What a graceful stop of the daemon does while this region holds the lease.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
    /// How long a graceful stop may spend handing the lease over (`on_shutdown = "switchover"`)
    /// before it fences instead.
    #[serde(with = "humantime_serde", default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// How long a switchover's target waits to replay the old primary's shutdown checkpoint.
    #[serde(with = "humantime_serde", default = "defaults::catch_up_timeout")]
    pub catch_up_timeout: Duration,
    /// How long the primary waits for a newly named synchronous standby to report `sync`.
    #[serde(with = "humantime_serde", default = "defaults::sync_wait_timeout")]
    pub sync_wait_timeout: Duration,
    /// Connect deadline of the session observing the peer's server.
    #[serde(with = "humantime_serde", default = "defaults::peer_connect_timeout")]
    pub peer_connect_timeout: Duration,
    /// Deadline of one observation of the peer's server (connect included).
    #[serde(with = "humantime_serde", default = "defaults::peer_observe_timeout")]
    pub peer_observe_timeout: Duration,
    /// Which driver runs this region's PostgreSQL: `plain` (the daemon, with `pg_ctl`) or `cnpg`
    /// (CloudNativePG; the daemon patches this region's `Cluster`, see `cnpg`).
    #[serde(default)]
    pub driver: DriverKind,
    /// This region's CloudNativePG `Cluster` (required with `driver = "cnpg"`, refused otherwise).
    #[serde(default)]
    pub cnpg: Option<CnpgPairConfig>,
    pub postgres: PostgresConfig,
    /// The pair's PostgreSQL servers in the other data regions (where a rejoining node streams
    /// from, and what the standby's daemon observes).
    #[serde(default)]
    pub peers: Vec<PgPeerConfig>,
    pub dns: DnsConfig,
    /// Gateway API traffic drain (switchover step `drain`). Unset: the step is skipped.
    #[serde(default)]
    pub traffic: Option<TrafficConfig>,
}

/// The `HTTPRoute` whose backend weights follow the primary: before the fence the old region's
/// weight goes to 0 over `drain_window`; after the DNS step the new region's backend gets it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    pub namespace: String,
    pub http_route: String,
    /// region → the route's backendRef name serving that region (every data region listed).
    pub backends: std::collections::BTreeMap<String, String>,
    #[serde(with = "humantime_serde", default = "defaults::drain_window")]
    pub drain_window: Duration,
    /// Client configuration. Unset: in-cluster service account, then `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

impl TrafficConfig {
    pub fn route_target(&self) -> continuum_traffic::RouteTarget {
        continuum_traffic::RouteTarget {
            namespace: self.namespace.clone(),
            route: Some(self.http_route.clone()),
            backends: self.backends.clone(),
        }
    }
}

impl PairConfig {
    /// The control loop's pause: `observe_interval` if set, else half the renew interval
    /// clamped to 100 ms..1 s. It bounds how late a standby notices an expired lease (failover)
    /// and a lost primary; the holder's own fencing does not wait for it (the lease handle fences).
    pub fn effective_observe_interval(&self, lease: &LeaseConfig) -> Duration {
        self.observe_interval
            .unwrap_or_else(|| (lease.renew_interval / 2).clamp(Duration::from_millis(100), Duration::from_secs(1)))
    }
}

impl PairConfig {
    /// The step deadline: `step_timeout` if set, else `catch_up_timeout` plus three lease
    /// durations (the longest step another region waits for is the target's catch-up; the
    /// lease durations cover a restart of its daemon and the record's round trips).
    pub fn effective_step_timeout(&self, lease: &LeaseConfig) -> Duration {
        self.step_timeout.unwrap_or(self.catch_up_timeout + lease.duration * 3)
    }

    /// The sync-fenced suspect window: `suspect_window` if set, else two renew intervals (one
    /// missed renewal is routine jitter, two are not).
    pub fn effective_suspect_window(&self, lease: &LeaseConfig) -> Duration {
        self.suspect_window.unwrap_or(lease.renew_interval * 2)
    }

    /// The WAL stream timeout: `wal_stream_timeout` if set, else the suspect window but at
    /// least 1 s (PostgreSQL's WAL receiver pings at half of it on an idle stream, so shorter
    /// values cost replication traffic and spurious reconnects on slow links).
    pub fn effective_wal_stream_timeout(&self, lease: &LeaseConfig) -> Duration {
        self.wal_stream_timeout.unwrap_or_else(|| self.effective_suspect_window(lease).max(Duration::from_secs(1)))
    }
}

/// The pair's DNS record, committed through PDM on every holder change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Record name inside `pdm.zone`, e.g. `db` for `db.example.org.`.
    pub record: String,
    /// Typed LUA record spec, passed to PDM as is; its schema belongs to the `pdm` crate. The
    /// tier holding the lease holder's address is moved first on every commit.
    #[serde(default)]
    pub lua: toml::Table,
    /// The address each region's clients should reach (region → IP). Without `lua`, the record
    /// is a plain A/AAAA record of the holder's address.
    #[serde(default)]
    pub addresses: std::collections::BTreeMap<String, String>,
    #[serde(default = "defaults::dns_ttl")]
    pub ttl: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdmConfig {
    pub url: String,
    /// File holding PDM's bearer token (one line).
    pub token_file: PathBuf,
    pub zone: String,
    /// Deadline of one commit; a timeout is an unknown outcome and is retried with the same epoch.
    #[serde(with = "humantime_serde", default = "defaults::pdm_timeout")]
    pub timeout: Duration,
    /// Commit attempts per DNS change before the step (or round) reports a failure.
    #[serde(default = "defaults::pdm_commit_attempts")]
    pub commit_attempts: u32,
    /// Pause between two commit attempts.
    #[serde(with = "humantime_serde", default = "defaults::pdm_commit_retry_pause")]
    pub commit_retry_pause: Duration,
    /// How often the holder reads its DNS record back from PDM and re-commits it with its epoch
    /// when it differs (after a failover whose commit failed, an edit behind PDM's back, ...).
    #[serde(with = "humantime_serde", default = "defaults::pdm_reconcile_interval")]
    pub reconcile_interval: Duration,
    /// Longest pause between two reconcile attempts while PDM fails (the pause doubles from
    /// `commit_retry_pause` up to this).
    #[serde(with = "humantime_serde", default = "defaults::pdm_reconcile_max_backoff")]
    pub reconcile_max_backoff: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "defaults::api_listen")]
    pub listen: SocketAddr,
    /// API tokens and roles (format: `auth` module, README).
    pub tokens_file: PathBuf,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key`); unset: plain HTTP.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only JSON-lines log; each record is fsynced before it counts as written.
    pub log: PathBuf,
    /// NATS server (`nats://host:port`); unset: local log only.
    pub nats_url: Option<String>,
    #[serde(default = "defaults::nats_subject")]
    pub nats_subject: String,
    /// JetStream stream over `nats_subject`, created when missing.
    #[serde(default = "defaults::nats_stream")]
    pub nats_stream: String,
    /// Deadline for one publish acknowledgement.
    #[serde(with = "humantime_serde", default = "defaults::nats_timeout")]
    pub nats_timeout: Duration,
    /// Upper bound of the exponential retry backoff while NATS is unreachable.
    #[serde(with = "humantime_serde", default = "defaults::nats_max_backoff")]
    pub nats_max_backoff: Duration,
}

impl AuditConfig {
    /// An audit log at `log`, with every other knob at its default and NATS off.
    pub fn local(log: impl Into<PathBuf>) -> Self {
        Self {
            log: log.into(),
            nats_url: None,
            nats_subject: defaults::nats_subject(),
            nats_stream: defaults::nats_stream(),
            nats_timeout: defaults::nats_timeout(),
            nats_max_backoff: defaults::nats_max_backoff(),
        }
    }
}

/// Default values, one function each because serde's `default =` wants a path.
mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn heartbeat() -> Duration {
        Duration::from_millis(500)
    }
    /// Short enough that a leader change (up to twice `election_max`: openraft's voters refuse
    /// votes for `election_max` after the last heartbeat) fits between two renewals with room,
    /// and that the standby's claim after losing a holder that also led raft is not held up by
    /// the election; long enough that a heartbeat delayed by a WAN hiccup does not start one.
    pub fn election_min() -> Duration {
        Duration::from_millis(1100)
    }
    pub fn election_max() -> Duration {
        Duration::from_millis(1600)
    }
    /// Two missed renewals (the sync-fenced suspect window) take 2 s: the claim's floor.
    pub fn renew_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn lease_duration() -> Duration {
        Duration::from_secs(10)
    }
    pub fn drift_margin() -> Duration {
        Duration::from_millis(500)
    }
    pub fn grant_margin() -> Duration {
        Duration::from_secs(1)
    }
    pub fn call_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn max_lag_bytes() -> u64 {
        16 * 1024 * 1024
    }
    pub fn max_lag_seconds() -> Duration {
        Duration::from_secs(5)
    }
    pub fn auto_failover() -> bool {
        true
    }
    pub fn primary_down_timeout() -> Duration {
        Duration::from_secs(15)
    }

    pub fn failover_debounce() -> Duration {
        Duration::from_secs(60)
    }
    pub fn switchover_rejoin_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn step_retry_initial() -> Duration {
        Duration::from_millis(100)
    }
    /// A raft write and a record update per try: every 5 s at most while a dependency is down.
    pub fn step_retry_max() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pg_bin_dir() -> PathBuf {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    }
    pub fn pg_host() -> String {
        "127.0.0.1".into()
    }
    pub fn pg_port() -> u16 {
        5432
    }
    pub fn pg_superuser() -> String {
        "postgres".into()
    }
    pub fn dns_ttl() -> u32 {
        5
    }
    /// Long enough for a load balancer to stop sending new requests, short against the
    /// switchover: it runs before the fence, so it adds to the switchover, not the write gap.
    pub fn drain_window() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pdm_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pdm_commit_attempts() -> u32 {
        3
    }
    pub fn pdm_reconcile_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn pdm_reconcile_max_backoff() -> Duration {
        Duration::from_secs(5)
    }
    pub fn pdm_commit_retry_pause() -> Duration {
        Duration::from_millis(200)
    }
    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn catch_up_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn sync_wait_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn peer_connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn peer_observe_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn pg_stop_timeout() -> Duration {
        Duration::from_secs(6)
    }
    pub fn pg_start_timeout() -> Duration {
        Duration::from_secs(65)
    }
    pub fn api_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn nats_subject() -> String {
        "catalyst.audit".into()
    }
    pub fn nats_stream() -> String {
        "CATALYST_AUDIT".into()
    }
    pub fn nats_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn nats_max_backoff() -> Duration {
        Duration::from_secs(30)
    }
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config { key: key.into(), message: message.into() }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("--config", format!("cannot read {}: {e}", path.display())))?;
        let config = Self::parse(&text).map_err(|e| match e {
            Error::Config { key, message } => invalid(key, format!("{message} (in {})", path.display())),
            other => other,
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending line, which names the key.
            let key = e.span().map(|span| validate::key_at(text, span.start)).unwrap_or_else(|| "(file)".into());
            invalid(key, e.message().trim().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// This daemon's raft peer entry (exists once validated).
    pub fn own_peer(&self) -> Option<&PeerConfig> {
        self.raft.peers.iter().find(|p| p.id == self.raft.node_id)
    }
}
