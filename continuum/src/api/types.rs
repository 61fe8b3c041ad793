//! The API's wire types, shared by the server, the CLI and the daemon. The switchover record
//! and its steps are the replicated format of [`crate::record`], re-exported here.
//!
//! Times are RFC 3339 strings; durations are integer milliseconds (`*_ms`); a value the daemon
//! could not measure is `null`, never `0`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{Durability, Takeover};
pub use crate::record::{Step, StepRecord, StepState, SwitchoverKind, SwitchoverRecord, SwitchoverState};

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The region of the daemon that answered.
    pub region: String,
    pub pairs: Vec<PairStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub name: String,
    /// Region holding the lease, if anyone does.
    pub holder: Option<String>,
    pub epoch: u64,
    pub lease: LeaseHealth,
    pub durability: Durability,
    pub takeover: Takeover,
    pub auto_failover: bool,
    /// The region the store lists as synchronous standby: the only one automatic failover may promote.
    pub sync_standby: Option<String>,
    pub regions: Vec<RegionStatus>,
    /// Why writes are blocked right now (e.g. durability `required` with the standby gone).
    pub writes_blocked: Option<String>,
    /// The switchover in progress, if any.
    pub in_flight: Option<Uuid>,
    /// What an operator must look at before the daemon acts on the pair again: a stored
    /// switchover record that does not decode, or a control loop stopped by an unsafe error.
    #[serde(default)]
    pub attention: Option<String>,
    pub last_switchover: Option<SwitchoverRecord>,
    /// The holder's view of the pair's DNS record (absent on a region that does not hold it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,
}

/// What the holder last read back from PDM for the pair's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// The record data PDM holds for the name: the addresses of a plain record, the body of a
    /// LUA record (its first tier is the holder's).
    pub answer: Vec<String>,
    /// The epoch PDM last committed the name with.
    pub epoch: Option<u64>,
    /// The record is what this holder commits, with its epoch.
    pub in_sync: bool,
    /// When it was last read back (milliseconds since the Unix epoch).
    pub checked_at_ms: Option<u64>,
    /// The last read-back or commit error, while it lasts.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Held,
    Expired,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHealth {
    pub state: LeaseState,
    /// Remaining validity as the holder sees it (renewal send time + duration − drift margin).
    pub remaining_ms: Option<u64>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgRole {
    Primary,
    Standby,
    /// Stopped by the daemon so it cannot accept writes.
    Fenced,
    Down,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub region: String,
    pub role: PgRole,
    /// Replay lag behind the primary, for standbys.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// `pg_stat_replication.sync_state` as the primary reports it (`sync`, `async`, ...).
    pub sync_state: Option<String>,
    /// Whether a planned switchover to this region may start now.
    pub eligible: bool,
    pub ineligible_reason: Option<String>,
}

/// `POST /v1/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Target region.
    pub to: String,
    /// Pair to move; may be left out when the daemon protects one pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// The dry run: exactly what a switchover would do now, and what stands in its way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub pair: String,
    pub from: String,
    pub to: String,
    /// Epoch now; the target would be granted a new, higher one (a raft log index).
    pub epoch: u64,
    pub steps: Vec<PlannedStep>,
    /// Unmet preconditions that would make `POST /v1/switchover` answer 409. Empty: it may start.
    pub blockers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step: Step,
    /// Region whose daemon performs the step.
    pub region: String,
    pub action: String,
    pub preconditions: Vec<Precondition>,
    /// Set when the step will be reported as skipped, with the reason.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub check: String,
    pub met: bool,
    pub detail: Option<String>,
}

/// `POST /v1/switchover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    pub to: String,
    /// Free text for the audit record.
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

/// `202 Accepted` answer to a switchover request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverAccepted {
    pub id: Uuid,
}

/// One server-sent event of `GET /v1/events`; the SSE event name is `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The lease of a pair changed hands or epoch.
    Lease { pair: String, holder: Option<String>, epoch: u64 },
    /// A switchover step changed state.
    Step { switchover: Uuid, pair: String, step: Step, state: StepState, duration_ms: Option<u64> },
    /// A switchover changed state.
    Switchover { id: Uuid, pair: String, state: SwitchoverState },
    /// This subscriber fell behind and missed events; re-read `/v1/status`.
    Lagged { missed: u64 },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Lease { .. } => "lease",
            Event::Step { .. } => "step",
            Event::Switchover { .. } => "switchover",
            Event::Lagged { .. } => "lagged",
        }
    }
}

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
