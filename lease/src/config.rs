//! Node configuration (TOML). Durations are human strings (`"500ms"`, `"2s"`).
//!
//! ```toml
//! id = 3
//! listen = "0.0.0.0:7400"
//! data_dir = "/var/lib/continuum/lease"
//!
//! [tls]                      # mutual TLS: every peer and client must present a cert from `ca`
//! ca = "/etc/continuum/ca.pem"
//! cert = "/etc/continuum/node.pem"
//! key = "/etc/continuum/node.key"
//!
//! [raft]                     # all optional; WAN defaults shown
//! heartbeat_interval = "500ms"
//! election_timeout_min = "2s"
//! election_timeout_max = "4s"
//! install_snapshot_timeout = "10s"
//!
//! [lease]                    # all optional
//! grant_margin = "1s"        # added to a holder's duration before another region may take over
//! call_timeout = "3s"        # deadline of every raft write / linearizable read; then "unknown"
//!
//! [[members]]                # identical on every node; bootstraps the cluster once
//! id = 1
//! region = "hz-fsn-rtz-prod"
//! addr = "10.0.1.5:7400"
//! [[members]]
//! id = 2
//! region = "hz-hel-rtz-prod"
//! addr = "10.0.2.5:7400"
//! [[members]]
//! id = 3
//! region = "mgt"
//! addr = "10.0.3.5:7400"
//! witness = true
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LeaseError;
use crate::types::{NodeId, NodeInfo};

/// Everything one lease node needs. Public so the daemon can embed it (`continuum witness`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's raft id; must appear in `members` unless the node is added later by API.
    pub id: NodeId,
    /// Address the mutual-TLS endpoint binds (raft RPCs, client API, admin).
    pub listen: SocketAddr,
    /// Directory for the log, vote, state machine and snapshot. Created if missing.
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
    #[serde(default)]
    pub raft: RaftTimings,
    #[serde(default)]
    pub lease: GrantRules,
    /// Initial voters. Every node gets the same list; initialising twice with it is harmless.
    #[serde(default)]
    pub members: Vec<Member>,
    /// Optional per-peer dial address (node id → `host:port`) overriding the one in the
    /// membership, for NAT or a proxy in between.
    #[serde(default)]
    pub dial_overrides: BTreeMap<NodeId, String>,
    /// Pairs this node may create a lease record for (a data daemon's configured pairs). A
    /// request for a pair that has no record yet and is not listed here is refused, so a stray
    /// or hostile request cannot add state. Pairs that already have a record need no listing.
    #[serde(default)]
    pub pairs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM bundle of the cluster CA: the only issuer whose certificates are accepted.
    pub ca: PathBuf,
    /// PEM certificate chain of this node (used as server and as client certificate).
    pub cert: PathBuf,
    /// PEM private key of this node.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: NodeId,
    pub region: String,
    pub addr: String,
    #[serde(default)]
    pub witness: bool,
}

impl Member {
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo { region: self.region.clone(), addr: self.addr.clone(), witness: self.witness }
    }
}

/// Raft timings. Defaults are WAN values ([`RaftTimings::wan`]); [`RaftTimings::fast`] is for
/// loopback tests and benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Per-chunk snapshot RPC timeout; openraft's 200 ms default retries forever on slow links.
    #[serde(with = "humantime_serde")]
    pub install_snapshot_timeout: Duration,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so slow followers catch up without a snapshot.
    pub keep_after_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self::wan()
    }
}

impl RaftTimings {
    /// Cross-region values: heartbeat 500 ms, election 2–4 s.
    pub fn wan() -> Self {
        RaftTimings {
            heartbeat_interval: Duration::from_millis(500),
            election_timeout_min: Duration::from_secs(2),
            election_timeout_max: Duration::from_secs(4),
            install_snapshot_timeout: Duration::from_secs(10),
            snapshot_every: 5000,
            keep_after_snapshot: 1000,
        }
    }

    /// Loopback values for tests and benchmarks: heartbeat 50 ms, election 200–400 ms.
    pub fn fast() -> Self {
        RaftTimings {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            install_snapshot_timeout: Duration::from_secs(2),
            snapshot_every: 500,
            keep_after_snapshot: 100,
        }
    }

    pub(crate) fn to_openraft(&self, cluster: &str) -> Result<openraft::Config, LeaseError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let cfg = openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.install_snapshot_timeout),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            // Bounded by construction below the endpoint's body limit (`node::MAX_BODY_BYTES`):
            // entries are at most ~17 KiB (`types::MAX_SWITCHOVER_RECORD_BYTES`), and snapshot
            // bytes travel as a JSON array of numbers (up to 4 characters per byte).
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        };
        cfg.validate().map_err(|e| LeaseError::config("raft", e.to_string()))
    }
}

/// Entries per AppendEntries request: 16 × ~17 KiB stays far below the 2 MiB body limit.
pub const MAX_ENTRIES_PER_APPEND: u64 = 16;
/// Snapshot bytes per InstallSnapshot request: ≤ 1 MiB as JSON, half the body limit.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 256 * 1024;

/// Store-side lease rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GrantRules {
    /// Extra time on top of a holder's duration before another region may be granted the lease.
    /// Must cover clock-rate error over one duration plus scheduling delays; it is what keeps
    /// the old holder's deadline strictly before the new grant.
    #[serde(with = "humantime_serde")]
    pub grant_margin: Duration,
    /// Deadline of every raft write and linearizable read. A call that runs out is "unknown".
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
}

impl Default for GrantRules {
    fn default() -> Self {
        GrantRules { grant_margin: Duration::from_secs(1), call_timeout: Duration::from_secs(3) }
    }
}

impl NodeConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, LeaseError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LeaseError::config("<file>", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, LeaseError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_else(|| "<document>".into());
            LeaseError::config(&key, e.message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the things TOML typing cannot; errors name the key.
    pub fn validate(&self) -> Result<(), LeaseError> {
        self.raft.to_openraft("validate")?;
        let r = &self.raft;
        if r.election_timeout_min <= r.heartbeat_interval * 2 {
            return Err(LeaseError::config("raft.election_timeout_min", "must exceed twice raft.heartbeat_interval"));
        }
        if r.install_snapshot_timeout < Duration::from_millis(500) {
            return Err(LeaseError::config("raft.install_snapshot_timeout", "must be at least 500ms"));
        }
        if self.lease.call_timeout.is_zero() {
            return Err(LeaseError::config("lease.call_timeout", "must be greater than zero"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            if !ids.insert(m.id) {
                return Err(LeaseError::config(&format!("members[{i}].id"), format!("duplicate id {}", m.id)));
            }
            if m.region.is_empty() {
                return Err(LeaseError::config(&format!("members[{i}].region"), "must not be empty"));
            }
            if !m.addr.contains(':') {
                return Err(LeaseError::config(&format!("members[{i}].addr"), "must be host:port"));
            }
        }
        if !self.members.is_empty() && self.members.iter().filter(|m| !m.witness).count() == 0 {
            return Err(LeaseError::config("members", "at least one member must be a data region (witness = false)"));
        }
        Ok(())
    }
}

/// The dotted key on the line containing byte `offset` (serde's messages name values, not keys).
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = before[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[').map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string()));
    let key = match line.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => line.trim().trim_matches(|c| c == '[' || c == ']').to_string(),
    };
    match section {
        Some(sec) if !line.trim_start().starts_with('[') => format!("{sec}.{key}"),
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
id = 1
listen = "127.0.0.1:7400"
data_dir = "/tmp/x"
[tls]
ca = "ca.pem"
cert = "n.pem"
key = "n.key"
"#;

    #[test]
    fn defaults_are_wan() {
        let cfg = NodeConfig::from_toml(BASE).unwrap();
        assert_eq!(cfg.raft, RaftTimings::wan());
        assert_eq!(cfg.lease.grant_margin, Duration::from_secs(1));
    }

    #[test]
    fn full_example_parses_and_round_trips() {
        let text = format!(
            "{BASE}[raft]\nheartbeat_interval = \"100ms\"\nelection_timeout_min = \"1s\"\nelection_timeout_max = \"2s\"\n\
             [lease]\ngrant_margin = \"2s\"\n[dial_overrides]\n2 = \"10.0.0.9:7400\"\n\
             [[members]]\nid = 1\nregion = \"a\"\naddr = \"10.0.0.1:7400\"\n\
             [[members]]\nid = 2\nregion = \"w\"\naddr = \"10.0.0.2:7400\"\nwitness = true\n"
        );
        let cfg = NodeConfig::from_toml(&text).unwrap();
        assert_eq!(cfg.raft.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(cfg.lease.grant_margin, Duration::from_secs(2));
        assert_eq!(cfg.dial_overrides.get(&2).map(String::as_str), Some("10.0.0.9:7400"));
        assert!(cfg.members[1].witness);
        let again = NodeConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again.members, cfg.members);
        assert_eq!(again.dial_overrides, cfg.dial_overrides);
    }

    #[test]
    fn errors_name_the_key() {
        let err = NodeConfig::from_toml(&format!("{BASE}[raft]\nheartbeat_interval = \"fast\"\n")).unwrap_err();
        assert!(err.to_string().contains("`raft.heartbeat_interval`"), "{err}");
        let text = format!("{BASE}[raft]\nheartbeat_interval = \"2s\"\nelection_timeout_min = \"3s\"\n");
        let err = NodeConfig::from_toml(&text).unwrap_err();
        assert!(err.to_string().contains("raft.election_timeout_min"), "{err}");
        let err = NodeConfig::from_toml(&format!("{BASE}bogus = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let text = format!("{BASE}[[members]]\nid = 1\nregion = \"\"\naddr = \"a:1\"\n");
        assert!(NodeConfig::from_toml(&text).unwrap_err().to_string().contains("members[0].region"));
    }
}
