//! Request and response bodies of PDM's HTTP API, shared by the server and [`crate::PdmClient`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::lua::LuaSpec;

/// `POST /v1/commit`: all records are applied in one atomic PATCH, fenced by `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub zone: String,
    /// The caller's lease epoch; refused if lower than one already committed for any name.
    pub epoch: u64,
    pub records: Vec<RecordSpec>,
}

/// One record. Exactly one of `content` (a static record in presentation format) or `lua` (a
/// typed LUA spec, `type` being the synthesised type, A or AAAA) is set. Records with the same
/// name and type form one rrset; a commit replaces every rrset at each of its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lua: Option<LuaSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitResponse {
    pub zone: String,
    pub epoch: u64,
    /// Names whose new body had new health checks and was pre-warmed on a scratch name first.
    pub prewarmed: Vec<String>,
    /// Names whose LUA body only reordered warm checks (a flip).
    pub flipped: Vec<String>,
    /// What the authoritative server answers for each committed name and type after the PATCH.
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    /// Sorted record data, empty for NODATA/NXDOMAIN.
    pub records: Vec<String>,
    /// Set when the verification query failed (SERVFAIL, timeout); `records` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A nameserver of a new zone or a delegation. `addresses` become glue and are required when
/// the nameserver's name lies inside the zone that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameserver {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// `POST /v1/zones`. Without `nameservers`, the configured defaults are used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateZoneRequest {
    pub name: String,
    #[serde(default)]
    pub nameservers: Vec<Nameserver>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneInfo {
    pub name: String,
    pub kind: String,
    pub serial: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneList {
    pub zones: Vec<ZoneInfo>,
}

/// `DELETE /v1/zones/{zone}` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteZoneParams {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `PUT /v1/zones/{parent}/delegations/{child}`: NS records for `child` in `parent`, plus glue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationRequest {
    pub nameservers: Vec<Nameserver>,
    #[serde(default = "default_delegation_ttl")]
    pub ttl: u32,
}

fn default_delegation_ttl() -> u32 {
    3600
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegationResponse {
    pub parent: String,
    pub child: String,
    pub nameservers: Vec<String>,
}

/// `GET /v1/records/{zone}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsResponse {
    pub zone: String,
    pub name: String,
    /// The last epoch committed for this name, if PDM ever committed it.
    pub epoch: Option<u64>,
    /// Rrsets by type (`LUA` for LUA records), each with its TTL and contents.
    pub rrsets: BTreeMap<String, RRSetView>,
    /// The LUA specs PDM committed here, as the caller sent them (type → spec).
    pub lua: Vec<LuaRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RRSetView {
    pub ttl: u32,
    pub records: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuaRecord {
    #[serde(rename = "type")]
    pub rtype: String,
    pub lua: LuaSpec,
}

/// 202 from `POST /v1/commit` or `GET /v1/operations/{id}`: the commit still runs; poll
/// `GET /v1/operations/{operation}` (same token) for its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationPending {
    pub operation: String,
    /// `"pending"`.
    pub state: String,
    /// How much longer PDM expects the commit to take at most (a hint bounding the poll).
    pub deadline_ms: u64,
}

/// `PUT /v1/epochs/{zone}/{name}` (admin): set the name's recorded epoch, e.g. back down after
/// an implausible one got through or the lease store was rebuilt. Logged with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochResetRequest {
    pub epoch: u64,
    /// Why (required, shows up in the log line).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochResetResponse {
    pub zone: String,
    pub name: String,
    pub old_epoch: u64,
    pub new_epoch: u64,
    /// The token name that reset it.
    pub by: String,
}

/// Every 4xx/5xx answer of PDM's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// [`crate::PdmError::metric_label`] of the error.
    pub code: String,
}
