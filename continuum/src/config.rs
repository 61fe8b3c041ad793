//! The daemon's one configuration file (TOML), for a data region daemon or the witness.
//!
//! Every knob has a documented default (README, `## Configuration`). Parsing rejects unknown keys;
//! [`Config::validate`] checks the rules that span several keys and names the offending key, so
//! a bad file is refused before the daemon touches anything.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::failpoint::Failpoint;

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

/// When the standby's region may take the lease from a silent holder (§5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takeover {
    /// Wait for the holder's lease to run out.
    #[default]
    LeaseExpiry,
    /// Claim early once the holder is silent and its WAL stream is gone (needs `sync_standby`).
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
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            renew_interval: defaults::renew_interval(),
            duration: defaults::lease_duration(),
            drift_margin: defaults::drift_margin(),
            grant_margin: defaults::grant_margin(),
            call_timeout: defaults::call_timeout(),
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
    pub postgres: PostgresConfig,
    /// The pair's PostgreSQL servers in the other data regions (where a rejoining node streams
    /// from, and what the standby's daemon observes).
    #[serde(default)]
    pub peers: Vec<PgPeerConfig>,
    pub dns: DnsConfig,
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

/// Another region's PostgreSQL server of the pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPeerConfig {
    pub region: String,
    #[serde(default = "defaults::pg_host")]
    pub host: String,
    #[serde(default = "defaults::pg_port")]
    pub port: u16,
}

/// This region's PostgreSQL server of the pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub data_dir: PathBuf,
    #[serde(default = "defaults::pg_bin_dir")]
    pub bin_dir: PathBuf,
    #[serde(default = "defaults::pg_host")]
    pub host: String,
    #[serde(default = "defaults::pg_port")]
    pub port: u16,
    /// This server's `listen_addresses`, kept in its `node.conf` (a rewind or clone copies the
    /// peer's `postgresql.conf`). Unset: whatever `postgresql.conf` says.
    #[serde(default)]
    pub listen_addresses: Option<String>,
    #[serde(default = "defaults::pg_superuser")]
    pub superuser: String,
    /// OS account the PostgreSQL binaries run as (PostgreSQL refuses root). Unset: the daemon's own.
    pub run_as: Option<String>,
    /// Server log (`pg_ctl -l`). Unset: `<data_dir>.log`.
    pub log_file: Option<PathBuf>,
    /// Unix socket directory. Unset: the data directory's parent.
    pub socket_dir: Option<PathBuf>,
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
    pub fn election_min() -> Duration {
        Duration::from_secs(2)
    }
    pub fn election_max() -> Duration {
        Duration::from_secs(4)
    }
    pub fn renew_interval() -> Duration {
        Duration::from_secs(2)
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
    pub fn pdm_timeout() -> Duration {
        Duration::from_secs(5)
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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Error {
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
            let key = e.span().map(|span| key_at(text, span.start)).unwrap_or_else(|| "(file)".into());
            invalid(key, e.message().trim().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules. The first violation wins; its key is dotted (`lease.renew_interval`).
    pub fn validate(&self) -> Result<(), Error> {
        let lease = &self.lease;
        if self.region.trim().is_empty() {
            return Err(invalid("region", "must not be empty"));
        }
        if lease.duration.is_zero() {
            return Err(invalid("lease.duration", "must be greater than zero"));
        }
        if lease.drift_margin >= lease.duration {
            return Err(invalid("lease.drift_margin", "must be shorter than lease.duration"));
        }
        if lease.renew_interval.is_zero() || lease.renew_interval >= lease.duration - lease.drift_margin {
            return Err(invalid(
                "lease.renew_interval",
                format!(
                    "must be greater than zero and shorter than lease.duration minus lease.drift_margin ({})",
                    humantime::format_duration(lease.duration - lease.drift_margin)
                ),
            ));
        }
        if lease.call_timeout.is_zero() {
            return Err(invalid("lease.call_timeout", "must be greater than zero"));
        }
        let handle = crate::orchestrator::handle_config(lease);
        if handle.validate().is_err() {
            return Err(invalid(
                "lease.duration",
                format!(
                    "must exceed drift_margin + renew_interval + duration/5 (fence lead) + {} (renew call deadline)",
                    humantime::format_duration(handle.call_timeout)
                ),
            ));
        }
        self.validate_raft()?;
        self.validate_role_sections()?;
        for (i, pair) in self.pairs.iter().enumerate() {
            validate_pair(i, pair, lease)?;
        }
        if let Some(duplicate) = first_duplicate(self.pairs.iter().map(|p| p.name.as_str())) {
            return Err(invalid("pairs", format!("pair name {duplicate:?} appears twice")));
        }
        for (i, name) in self.failpoints.iter().enumerate() {
            name.parse::<Failpoint>().map_err(|message| invalid(format!("failpoints[{i}]"), message))?;
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), Error> {
        let raft = &self.raft;
        if raft.heartbeat_interval.is_zero() || raft.heartbeat_interval >= raft.election_timeout_min {
            return Err(invalid(
                "raft.heartbeat_interval",
                "must be greater than zero and below raft.election_timeout_min",
            ));
        }
        if raft.election_timeout_min > raft.election_timeout_max {
            return Err(invalid("raft.election_timeout_max", "must not be below raft.election_timeout_min"));
        }
        // A leader change must fit inside one lease, or renewals stall across an election.
        if raft.election_timeout_max >= self.lease.duration {
            return Err(invalid("raft.election_timeout_max", "must be shorter than lease.duration"));
        }
        for (i, peer) in raft.peers.iter().enumerate() {
            if peer.region.trim().is_empty() {
                return Err(invalid(format!("raft.peers[{i}].region"), "must not be empty"));
            }
            if peer.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(invalid(format!("raft.peers[{i}].address"), "must be host:port"));
            }
            if let Some(dial) = &peer.dial
                && dial.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none()
            {
                return Err(invalid(format!("raft.peers[{i}].dial"), "must be host:port"));
            }
        }
        if let Some(id) = first_duplicate(raft.peers.iter().map(|p| p.id)) {
            return Err(invalid("raft.peers", format!("id {id} appears twice")));
        }
        if let Some(region) = first_duplicate(raft.peers.iter().map(|p| p.region.as_str())) {
            return Err(invalid("raft.peers", format!("region {region:?} appears twice")));
        }
        if raft.peers.len() < 3 {
            return Err(invalid("raft.peers", "needs at least 3 voters (two data regions and a witness)"));
        }
        if raft.peers.len().is_multiple_of(2) {
            return Err(invalid("raft.peers", "needs an odd number of voters: an even one adds no fault tolerance"));
        }
        if raft.peers.iter().filter(|p| !p.witness).count() < 2 {
            return Err(invalid("raft.peers", "needs at least two data regions (witness = false)"));
        }
        let Some(me) = raft.peers.iter().find(|p| p.id == raft.node_id) else {
            return Err(invalid("raft.node_id", format!("no entry with id {} in raft.peers", raft.node_id)));
        };
        if me.region != self.region {
            return Err(invalid(
                "raft.node_id",
                format!("its raft.peers entry has region {:?}, but region is {:?}", me.region, self.region),
            ));
        }
        if me.witness != (self.role == Role::Witness) {
            return Err(invalid("raft.node_id", "its raft.peers entry's witness flag must match role"));
        }
        Ok(())
    }

    fn validate_role_sections(&self) -> Result<(), Error> {
        match self.role {
            Role::Witness => {
                if !self.pairs.is_empty() {
                    return Err(invalid("pairs", "a witness runs no PostgreSQL: remove its pairs"));
                }
                if self.pdm.is_some() {
                    return Err(invalid("pdm", "a witness commits no DNS: remove the pdm section"));
                }
            }
            Role::Data => {
                if self.pairs.is_empty() {
                    return Err(invalid("pairs", "a data daemon protects at least one pair"));
                }
                let Some(pdm) = &self.pdm else { return Err(invalid("pdm", "required for role data")) };
                if !(pdm.url.starts_with("http://") || pdm.url.starts_with("https://")) {
                    return Err(invalid("pdm.url", "must start with http:// or https://"));
                }
                if pdm.zone.trim().is_empty() {
                    return Err(invalid("pdm.zone", "must not be empty"));
                }
                if pdm.timeout.is_zero() {
                    return Err(invalid("pdm.timeout", "must be greater than zero"));
                }
                if self.api.is_none() {
                    return Err(invalid("api", "required for role data"));
                }
                if self.audit.is_none() {
                    return Err(invalid("audit", "required for role data"));
                }
            }
        }
        if let Some(api) = &self.api
            && api.tls_cert.is_some() != api.tls_key.is_some()
        {
            let missing = if api.tls_cert.is_none() { "api.tls_cert" } else { "api.tls_key" };
            return Err(invalid(missing, "api.tls_cert and api.tls_key go together"));
        }
        if let Some(audit) = &self.audit {
            if let Some(url) = &audit.nats_url
                && !(url.starts_with("nats://") || url.starts_with("tls://"))
            {
                return Err(invalid("audit.nats_url", "must start with nats:// or tls://"));
            }
            if audit.nats_subject.trim().is_empty() {
                return Err(invalid("audit.nats_subject", "must not be empty"));
            }
            if audit.nats_timeout.is_zero() {
                return Err(invalid("audit.nats_timeout", "must be greater than zero"));
            }
        }
        Ok(())
    }

    /// This daemon's raft peer entry (exists once validated).
    pub fn own_peer(&self) -> Option<&PeerConfig> {
        self.raft.peers.iter().find(|p| p.id == self.raft.node_id)
    }
}

fn validate_pair(i: usize, pair: &PairConfig, lease: &LeaseConfig) -> Result<(), Error> {
    let key = |field: &str| format!("pairs[{i}].{field}");
    if pair.name.trim().is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    if let Some(interval) = pair.observe_interval {
        // Longer than a renew interval and a failover waits rounds on top of the lease expiry.
        if interval < MIN_OBSERVE_INTERVAL || interval > lease.renew_interval {
            return Err(invalid(
                key("observe_interval"),
                format!(
                    "must be between {} and lease.renew_interval ({})",
                    humantime::format_duration(MIN_OBSERVE_INTERVAL),
                    humantime::format_duration(lease.renew_interval)
                ),
            ));
        }
    }
    if pair.max_lag_seconds.is_zero() {
        return Err(invalid(key("max_lag_seconds"), "must be greater than zero"));
    }
    if pair.primary_down_timeout < Duration::from_secs(1) {
        return Err(invalid(
            key("primary_down_timeout"),
            "must be at least 1s: a crashed server needs a moment to restart before the region gives up",
        ));
    }
    if pair.dns.record.trim().is_empty() {
        return Err(invalid(key("dns.record"), "must not be empty"));
    }
    if pair.postgres.port == 0 {
        return Err(invalid(key("postgres.port"), "must not be 0"));
    }
    if pair.postgres.superuser.trim().is_empty() {
        return Err(invalid(key("postgres.superuser"), "must not be empty"));
    }
    if !pair.postgres.data_dir.is_absolute() {
        return Err(invalid(key("postgres.data_dir"), "must be an absolute path"));
    }
    for (j, peer) in pair.peers.iter().enumerate() {
        if peer.port == 0 || peer.region.trim().is_empty() {
            return Err(invalid(key(&format!("peers[{j}]")), "needs a region and a non-zero port"));
        }
    }
    if !pair.dns.lua.is_empty() {
        let value = serde_json::to_value(&pair.dns.lua).map_err(|e| invalid(key("dns.lua"), e.to_string()))?;
        serde_json::from_value::<pdm::LuaSpec>(value).map_err(|e| invalid(key("dns.lua"), e.to_string()))?;
    }
    Ok(())
}

/// Below this a round's own work (two observations, a linearizable read) dominates.
const MIN_OBSERVE_INTERVAL: Duration = Duration::from_millis(50);

fn first_duplicate<T: std::hash::Hash + Eq + Copy>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut seen = HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

/// The dotted key of the line holding byte `offset` of a TOML document: the last table header
/// before it plus the line's own key. Good enough to point at the culprit in an error message.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let own = line.split_once('=').map(|(k, _)| k.trim().to_string());
    match (table, own) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(file)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_points_at_table_and_key() {
        let text = "region = \"a\"\n[lease]\nrenew_interval = \"2x\"\n";
        let offset = text.find("\"2x\"").unwrap();
        assert_eq!(key_at(text, offset), "lease.renew_interval");
        assert_eq!(key_at(text, 2), "region");
    }

    fn region_a(observe_interval: Option<&str>) -> Result<Config, Error> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/region-a.toml");
        let mut doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        pair.remove("observe_interval");
        if let Some(value) = observe_interval {
            pair.insert("observe_interval".into(), value.into());
        }
        Config::parse(&toml::to_string(&doc).unwrap())
    }

    #[test]
    fn observe_interval_defaults_to_half_the_renew_interval_within_bounds() {
        let config = region_a(None).unwrap();
        let interval = |renew_ms: u64| {
            let lease = LeaseConfig { renew_interval: Duration::from_millis(renew_ms), ..LeaseConfig::default() };
            config.pairs[0].effective_observe_interval(&lease)
        };
        assert_eq!(interval(2000), Duration::from_secs(1));
        assert_eq!(interval(300), Duration::from_millis(150));
        assert_eq!(interval(100), Duration::from_millis(100));
        assert_eq!(interval(5000), Duration::from_secs(1));
        let set = region_a(Some("700ms")).unwrap();
        assert_eq!(set.pairs[0].effective_observe_interval(&set.lease), Duration::from_millis(700));
    }

    #[test]
    fn observe_interval_out_of_range_names_the_key() {
        for bad in ["10ms", "1h", "0s"] {
            match region_a(Some(bad)) {
                Err(Error::Config { key, .. }) => assert_eq!(key, "pairs[0].observe_interval", "{bad}"),
                other => panic!("{bad}: {:?}", other.map(|_| ())),
            }
        }
        assert!(region_a(Some("1x")).is_err());
    }
}
