//! `ContinuumSwitchover`: a one-shot request for a planned switchover of one `Continuum`.
//!
//! Why a resource rather than an annotation on the `Continuum`: the request then has its own
//! status (the daemon's switchover id, each step, the outcome) that stays readable after the
//! fact, it is its own audit trail (`kubectl get ctmsw`), and RBAC can grant "may request a
//! switchover" (`create continuumswitchovers`, the daemon's owner role) without "may edit the
//! protected application's spec" (`update continuums`). The spec is immutable (a CEL rule): a
//! new request is a new object. The reconciler executes it through the daemon's API
//! (`POST /v1/switchover` with the owner token from the Secret the `Continuum` names), so the
//! daemon's own rules (eligibility, roles, the one-switchover-at-a-time lock) still decide.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dr.openova.io",
    version = "v1",
    kind = "ContinuumSwitchover",
    plural = "continuumswitchovers",
    shortname = "ctmsw",
    namespaced,
    status = "SwitchoverStatus",
    printcolumn = r#"{"name":"Continuum","type":"string","jsonPath":".spec.continuum"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.to"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "a switchover request is immutable; create a new one"}]))]
pub struct ContinuumSwitchoverSpec {
    /// The `Continuum` (same namespace) whose pair moves.
    pub continuum: String,
    /// Target region.
    pub to: String,
    /// Free text for the daemon's audit record.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchoverStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    /// The daemon's switchover id once it accepted the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Why the request was refused or failed, in the daemon's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_after: Option<u64>,
    #[serde(default)]
    pub steps: Vec<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_gap_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestPhase {
    /// Accepted by the daemon, not started.
    Pending,
    Running,
    Succeeded,
    /// Failed before the lease moved; the old primary is still primary.
    RolledBack,
    Failed,
    /// The daemon refused to start it (ineligible target, another switchover running, ...).
    Rejected,
}

impl RequestPhase {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed | Self::Rejected)
    }

    pub fn from_daemon(state: continuum::api::SwitchoverState) -> Self {
        use continuum::api::SwitchoverState as S;
        match state {
            S::Pending => Self::Pending,
            S::Running => Self::Running,
            S::Succeeded => Self::Succeeded,
            S::RolledBack => Self::RolledBack,
            S::Failed => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepStatus {
    /// `intent`, `drain`, `fence`, `catch_up`, `move_lease`, `promote`, `dns`, `rejoin`, `restore_sync`.
    pub step: String,
    /// `pending`, `running`, `done`, `skipped`, `failed`, `rolled_back`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
