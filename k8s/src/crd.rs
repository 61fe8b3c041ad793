//! The `Continuum` custom resource (`dr.openova.io/v1`): what one protected application looks
//! like to Kubernetes. The spec is the operator's intent (regions, lease, durability, DNS,
//! objectives); the status is a mirror of what the daemons report, never an input to them.
//!
//! Every struct rejects unknown fields on the Rust side (`deny_unknown_fields`) and the generated
//! schema is structural (no `x-kubernetes-preserve-unknown-fields`), so the API server prunes or,
//! with `fieldValidation=Strict` (kubectl's default), refuses fields it does not know.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::lua::{CheckOptions, LuaFunction, LuaRecord, Selector, UrlTarget, WeightedAddress};

/// API group of every Continuum resource.
pub const GROUP: &str = "dr.openova.io";

/// One protected application: a PostgreSQL pair spread over data regions, each with its own
/// `continuum` daemon, and the DNS record its clients resolve.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dr.openova.io",
    version = "v1",
    kind = "Continuum",
    plural = "continuums",
    shortname = "ctm",
    namespaced,
    status = "ContinuumStatus",
    printcolumn = r#"{"name":"Holder","type":"string","jsonPath":".status.holder"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Durability","type":"string","jsonPath":".spec.durability"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContinuumSpec {
    /// The protected application, as people call it (labels, Events, audit reasons).
    pub application: String,
    /// Name of the pair inside the daemons' configuration (`pairs[].name`).
    #[serde(default = "defaults::pair")]
    pub pair: String,
    /// The data regions, at least two; the first is where the pair starts as primary.
    #[schemars(length(min = 2))]
    pub regions: Vec<RegionSpec>,
    /// The third-site witness that votes in the lease store.
    pub witness: WitnessSpec,
    #[serde(default)]
    pub lease: LeaseSpec,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub takeover: Takeover,
    /// Whether the daemons fail over on their own when the lease holder's region is lost.
    /// Planned switchovers work either way.
    #[serde(default = "defaults::yes")]
    pub auto_failover: bool,
    pub dns: DnsSpec,
    pub pdm: PdmSpec,
    #[serde(default)]
    pub objectives: Objectives,
    /// API tokens the reconciler uses: a viewer token to mirror status, an owner token to run
    /// switchovers requested with `ContinuumSwitchover`.
    pub api_tokens: ApiTokens,
    /// Gateway API route whose backend weights follow the primary (switchover drain step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionSpec {
    /// Region name (`region` in the daemon configuration), e.g. `eu-west`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 40))]
    pub name: String,
    /// Raft node id of this region's daemon, unique across regions and witness.
    #[schemars(range(min = 1))]
    pub node_id: u64,
    /// Base URL of the daemon's HTTP API, e.g. `https://continuum.eu-west.example:8080`.
    pub api_endpoint: String,
    /// `host:port` of the daemon's raft (mutual TLS) listener as the other regions dial it.
    pub raft_address: String,
    /// Secret with this daemon's mutual-TLS material (`tls.crt`, `tls.key`, `ca.crt`); mounted
    /// by the daemon's pod, only named here.
    pub tls_secret: String,
    /// The PostgreSQL server this region's daemon owns.
    pub postgres: PostgresRef,
    /// Address this region's clients get from DNS while the region holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_address: Option<String>,
}

/// The PostgreSQL server of one region: a CloudNativePG `Cluster` or a plain node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresRef {
    /// CloudNativePG `Cluster` name in the region's cluster, when the region runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnpg_cluster: Option<String>,
    /// Where the server listens, as the peers reach it.
    pub host: String,
    #[serde(default = "defaults::pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Data directory on the daemon's host.
    pub data_dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WitnessSpec {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 40))]
    pub name: String,
    #[schemars(range(min = 1))]
    pub node_id: u64,
    pub raft_address: String,
    pub tls_secret: String,
}

/// Lease timings, as duration strings (`500ms`, `2s`, `1m`). Defaults are the daemon's (WAN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseSpec {
    #[serde(default = "defaults::renew")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub renew_interval: String,
    #[serde(default = "defaults::duration")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub duration: String,
    #[serde(default = "defaults::drift")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub drift_margin: String,
}

impl Default for LeaseSpec {
    fn default() -> Self {
        Self { renew_interval: defaults::renew(), duration: defaults::duration(), drift_margin: defaults::drift() }
    }
}

/// `required`: writes block while the synchronous standby is away; `preferred`: the daemon drops
/// the standby from the sync record (quorum first) and keeps accepting writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    Required,
    #[default]
    Preferred,
}

/// When the standby's region may take the lease from a silent holder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Takeover {
    #[default]
    LeaseExpiry,
    SyncFenced,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSpec {
    /// Record name inside `pdm.zone` (or fully qualified, ending in `.`).
    pub record: String,
    #[serde(default = "defaults::ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: u32,
    /// LUA record synthesised by PowerDNS; unset: a plain A/AAAA record of the holder's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lua: Option<LuaRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PdmSpec {
    pub url: String,
    pub zone: String,
    /// Secret key holding PDM's bearer token (mounted into the daemons' pods).
    pub token_secret: SecretKeyRef,
}

/// Recovery targets the status is judged against (`Degraded` when a switchover misses them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Objectives {
    /// Longest acceptable switchover, request to completion, in seconds.
    #[serde(default = "defaults::rto")]
    #[schemars(range(min = 1))]
    pub rto_seconds: u32,
    /// Largest acceptable loss of acknowledged writes, in bytes of WAL; `0` means none
    /// (synchronous durability), which is what `durability: required` guarantees.
    #[serde(default)]
    pub rpo_bytes: u64,
}

impl Default for Objectives {
    fn default() -> Self {
        Self { rto_seconds: defaults::rto(), rpo_bytes: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiTokens {
    /// The daemons' own tokens file (`api.tokens_file`, TOML), mounted into their pods.
    pub tokens_file: SecretKeyRef,
    /// Viewer (or higher) token for `GET /v1/status`.
    pub viewer: SecretKeyRef,
    /// Owner token for `POST /v1/switchover`; unset: `ContinuumSwitchover` requests are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSpec {
    /// The `HTTPRoute` (in the resource's namespace) carrying one backendRef per region.
    pub http_route: String,
    /// region name → backendRef name in that route.
    pub backends: std::collections::BTreeMap<String, String>,
    /// How long the old region's weight takes to reach 0 before the fence.
    #[serde(default = "defaults::drain_window")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub drain_window: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContinuumStatus {
    /// `metadata.generation` the ConfigMaps were last rendered from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Region holding the lease, as the daemons report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Lease epoch (fencing token); only ever grows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The region the lease store lists as synchronous standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_standby: Option<String>,
    /// Why writes are blocked right now, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_blocked: Option<String>,
    #[serde(default)]
    pub regions: Vec<RegionStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<LastSwitchover>,
    /// When a daemon last answered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// `Ready`, `Degraded`, `SwitchoverInProgress`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// A region holds the lease, serves writes, and its synchronous standby streams.
    Healthy,
    /// Writes are served but something is missing (standby away, writes blocked, a region silent).
    Degraded,
    SwitchingOver,
    /// No daemon answered, or nobody holds the lease.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegionStatus {
    pub name: String,
    /// `primary`, `standby`, `fenced`, `down`, `unknown`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Replay lag in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    /// Whether a planned switchover may target it now (with the reason when not).
    pub eligible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineligible_reason: Option<String>,
    /// Whether this region's daemon answered the last poll.
    pub daemon_reachable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LastSwitchover {
    pub id: String,
    /// `planned` or `failover`.
    pub kind: String,
    pub from: String,
    pub to: String,
    /// `pending`, `running`, `succeeded`, `rolled_back`, `failed`.
    pub state: String,
    pub requested_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Request to completion, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rto_ms: Option<u64>,
    /// Longest time a writer could not commit, as the daemon observed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_gap_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

mod defaults {
    pub fn pair() -> String {
        "main".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn pg_port() -> u16 {
        5432
    }
    pub fn renew() -> String {
        "2s".into()
    }
    pub fn duration() -> String {
        "10s".into()
    }
    pub fn drift() -> String {
        "500ms".into()
    }
    pub fn ttl() -> u32 {
        5
    }
    pub fn rto() -> u32 {
        60
    }
    pub fn drain_window() -> String {
        "10s".into()
    }
}
