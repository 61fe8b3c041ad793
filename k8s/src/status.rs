//! From what the daemons report to the `Continuum` status: a pure function, so the mapping is
//! tested without a cluster.

use std::time::SystemTime;

use continuum::api::{PairStatus, PgRole, SwitchoverRecord, SwitchoverState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ContinuumSpec, ContinuumStatus, LastSwitchover, Phase, RegionStatus};

/// The freshest report: the answer with the highest epoch (a stale region may still answer with
/// an old view), and which regions answered at all.
pub struct Observation {
    pub pair: Option<PairStatus>,
    pub reachable: Vec<String>,
    pub now: SystemTime,
}

pub fn build(
    spec: &ContinuumSpec,
    previous: Option<&ContinuumStatus>,
    obs: &Observation,
    generation: Option<i64>,
) -> ContinuumStatus {
    let Some(p) = &obs.pair else {
        let mut status = previous.cloned().unwrap_or_default();
        status.phase = Some(Phase::Unknown);
        status.observed_generation = generation;
        for r in &mut status.regions {
            r.daemon_reachable = false;
        }
        status.conditions = conditions(
            previous,
            obs.now,
            generation,
            [
                ("Ready", false, "NoDaemonAnswered", "no region's daemon answered".to_string()),
                ("Degraded", true, "NoDaemonAnswered", "no region's daemon answered".to_string()),
                in_progress(None),
            ],
        );
        return status;
    };
    let regions: Vec<RegionStatus> = spec
        .regions
        .iter()
        .map(|r| {
            let reported = p.regions.iter().find(|s| s.region == r.name);
            RegionStatus {
                name: r.name.clone(),
                role: reported.map(|s| role(s.role)).unwrap_or("unknown").to_string(),
                lag_bytes: reported.and_then(|s| s.lag_bytes),
                lag_ms: reported.and_then(|s| s.lag_seconds).map(|s| (s * 1000.0).round() as u64),
                sync_state: reported.and_then(|s| s.sync_state.clone()),
                eligible: reported.is_some_and(|s| s.eligible),
                ineligible_reason: reported.and_then(|s| s.ineligible_reason.clone()),
                daemon_reachable: obs.reachable.contains(&r.name),
            }
        })
        .collect();
    let serving = p.holder.as_ref().is_some_and(|h| regions.iter().any(|r| &r.name == h && r.role == "primary"));
    let silent: Vec<&str> = regions.iter().filter(|r| !r.daemon_reachable).map(|r| r.name.as_str()).collect();
    let degraded_reason = if !serving {
        Some(("NotServing", "no region holds the lease with a primary".to_string()))
    } else if let Some(why) = &p.writes_blocked {
        Some(("WritesBlocked", why.clone()))
    } else if p.sync_standby.is_none() {
        Some(("NoSyncStandby", "no synchronous standby: acknowledged writes live in one region".to_string()))
    } else if !silent.is_empty() {
        Some(("DaemonSilent", format!("no answer from {}", silent.join(", "))))
    } else {
        None
    };
    let phase = if p.in_flight.is_some() {
        Phase::SwitchingOver
    } else if !serving {
        Phase::Unknown
    } else if degraded_reason.is_some() {
        Phase::Degraded
    } else {
        Phase::Healthy
    };
    let ready = serving && p.writes_blocked.is_none();
    let (dr, dm) = degraded_reason.clone().unwrap_or(("AllHealthy", "replicating synchronously".into()));
    ContinuumStatus {
        observed_generation: generation,
        phase: Some(phase),
        holder: p.holder.clone(),
        epoch: Some(p.epoch),
        sync_standby: p.sync_standby.clone(),
        writes_blocked: p.writes_blocked.clone(),
        regions,
        last_switchover: p.last_switchover.as_ref().map(last_switchover),
        observed_at: Some(humantime::format_rfc3339_seconds(obs.now).to_string()),
        conditions: conditions(
            previous,
            obs.now,
            generation,
            [
                if ready {
                    (
                        "Ready",
                        true,
                        "Serving",
                        format!("{} serves writes at epoch {}", p.holder.as_deref().unwrap_or("?"), p.epoch),
                    )
                } else {
                    ("Ready", false, dr, dm.clone())
                },
                ("Degraded", degraded_reason.is_some(), dr, dm),
                in_progress(p.in_flight.map(|id| id.to_string())),
            ],
        ),
    }
}

fn in_progress(id: Option<String>) -> (&'static str, bool, &'static str, String) {
    match id {
        Some(id) => ("SwitchoverInProgress", true, "Running", format!("switchover {id}")),
        None => ("SwitchoverInProgress", false, "Idle", "no switchover running".into()),
    }
}

fn role(r: PgRole) -> &'static str {
    match r {
        PgRole::Primary => "primary",
        PgRole::Standby => "standby",
        PgRole::Fenced => "fenced",
        PgRole::Down => "down",
        PgRole::Unknown => "unknown",
    }
}

pub fn last_switchover(r: &SwitchoverRecord) -> LastSwitchover {
    let rto = r.finished_at.and_then(|f| f.duration_since(r.requested_at).ok()).map(|d| d.as_millis() as u64);
    LastSwitchover {
        id: r.id.to_string(),
        kind: json_name(&r.kind),
        from: r.from.clone(),
        to: r.to.clone(),
        state: json_name(&r.state),
        requested_at: humantime::format_rfc3339_millis(r.requested_at).to_string(),
        finished_at: r.finished_at.map(|f| humantime::format_rfc3339_millis(f).to_string()),
        observed_rto_ms: rto,
        write_gap_ms: r.write_gap_ms,
        error: r.error.clone(),
    }
}

/// A `snake_case` serde enum's wire name.
pub fn json_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

pub fn finished(state: SwitchoverState) -> bool {
    state.is_finished()
}

/// Conditions keep their `lastTransitionTime` while their status does not change.
fn conditions<const N: usize>(
    previous: Option<&ContinuumStatus>,
    now: SystemTime,
    generation: Option<i64>,
    wanted: [(&str, bool, &str, String); N],
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|(kind, on, reason, message)| {
            let status = if on { "True" } else { "False" }.to_string();
            let old = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == kind));
            let last_transition_time = match old {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Time(
                    k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                ),
            };
            Condition {
                type_: kind.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}
