//! Whether a standby may be promoted by an automatic failover without losing acknowledged
//! commits (ARCHITECTURE.md §4). A pure function of what was observed, what the lease store
//! records, and the policy, so every rule is unit-tested without a server.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::observe::{PairSnapshot, SyncState};

/// Limits for an automatic promotion. Durations use humantime (`"10s"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EligibilityPolicy {
    /// Most WAL (bytes) the candidate may lack compared with the last known primary position.
    pub max_lag_bytes: u64,
    /// Most replay delay the candidate may have.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// Oldest usable observation of the candidate itself.
    #[serde(with = "humantime_serde")]
    pub max_standby_observation_age: Duration,
    /// Oldest usable observation of the primary. Longer than the standby's: in a failover the
    /// primary is gone and its last observation is all there is.
    #[serde(with = "humantime_serde")]
    pub max_primary_observation_age: Duration,
    /// Most WAL the candidate may have received but not yet replayed (promotion delay).
    pub max_replay_backlog_bytes: u64,
}

impl Default for EligibilityPolicy {
    fn default() -> Self {
        Self {
            max_lag_bytes: 0,
            max_lag: Duration::from_secs(5),
            max_standby_observation_age: Duration::from_secs(5),
            max_primary_observation_age: Duration::from_secs(30),
            max_replay_backlog_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Eligibility {
    Promotable,
    NotPromotable(NotPromotable),
}

/// Why a standby may not be promoted. `metric_label()` gives a stable label per rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotPromotable {
    #[error("the lease store records no synchronous standby")]
    NoSyncStandbyRecorded,
    #[error("the lease store records {recorded:?} as synchronous standby, not {candidate:?}")]
    NotRecordedSyncStandby { recorded: String, candidate: String },
    #[error("the candidate could not be observed: {0}")]
    CandidateUnreachable(String),
    #[error("the candidate is not in recovery")]
    CandidateNotStandby,
    #[error("the candidate's observation is {age:?} old (limit {limit:?})")]
    StaleStandbyObservation { age: Duration, limit: Duration },
    #[error("the primary's position is unknown, so the data at risk is unknown")]
    PrimaryPositionUnknown,
    #[error("the primary's last observation is {age:?} old (limit {limit:?})")]
    StalePrimaryObservation { age: Duration, limit: Duration },
    #[error("system identifier {candidate} differs from the primary's {primary}")]
    SystemIdMismatch { primary: u64, candidate: u64 },
    #[error("candidate on timeline {candidate}, primary on {primary}")]
    TimelineMismatch { primary: u32, candidate: u32 },
    #[error("the primary last listed the candidate as {0:?}, not sync")]
    NotSyncOnPrimary(Option<SyncState>),
    #[error("the candidate's received WAL position is unknown")]
    LagUnknown,
    #[error("{lag} bytes behind the primary (limit {limit})")]
    LagOverBytes { lag: u64, limit: u64 },
    #[error("replay {lag:?} behind (limit {limit:?})")]
    LagOverTime { lag: Duration, limit: Duration },
    #[error("{backlog} bytes received but not replayed (limit {limit})")]
    ReplayBacklog { backlog: u64, limit: u64 },
}

impl NotPromotable {
    pub fn metric_label(&self) -> &'static str {
        match self {
            NotPromotable::NoSyncStandbyRecorded => "no_sync_standby_recorded",
            NotPromotable::NotRecordedSyncStandby { .. } => "not_recorded_sync_standby",
            NotPromotable::CandidateUnreachable(_) => "candidate_unreachable",
            NotPromotable::CandidateNotStandby => "candidate_not_standby",
            NotPromotable::StaleStandbyObservation { .. } => "stale_standby_observation",
            NotPromotable::PrimaryPositionUnknown => "primary_position_unknown",
            NotPromotable::StalePrimaryObservation { .. } => "stale_primary_observation",
            NotPromotable::SystemIdMismatch { .. } => "system_id_mismatch",
            NotPromotable::TimelineMismatch { .. } => "timeline_mismatch",
            NotPromotable::NotSyncOnPrimary(_) => "not_sync_on_primary",
            NotPromotable::LagUnknown => "lag_unknown",
            NotPromotable::LagOverBytes { .. } => "lag_over_bytes",
            NotPromotable::LagOverTime { .. } => "lag_over_time",
            NotPromotable::ReplayBacklog { .. } => "replay_backlog",
        }
    }
}

/// Decides whether `snapshot.standby` may be promoted now. `snapshot.primary` may be the last
/// observation made before the primary became unreachable; `recorded_sync_standby` is what the
/// lease store lists as `sync_standby`.
pub fn evaluate(
    snapshot: &PairSnapshot,
    recorded_sync_standby: Option<&str>,
    policy: &EligibilityPolicy,
    now: SystemTime,
) -> Eligibility {
    match check(snapshot, recorded_sync_standby, policy, now) {
        Ok(()) => Eligibility::Promotable,
        Err(reason) => Eligibility::NotPromotable(reason),
    }
}

fn check(
    snapshot: &PairSnapshot,
    recorded_sync_standby: Option<&str>,
    policy: &EligibilityPolicy,
    now: SystemTime,
) -> Result<(), NotPromotable> {
    let candidate_name = snapshot.standby_name.as_str();
    match recorded_sync_standby {
        None => return Err(NotPromotable::NoSyncStandbyRecorded),
        Some(recorded) if recorded != candidate_name => {
            return Err(NotPromotable::NotRecordedSyncStandby {
                recorded: recorded.to_string(),
                candidate: candidate_name.to_string(),
            });
        }
        Some(_) => {}
    }
    let candidate = match &snapshot.standby {
        crate::observe::Observed::Standby(s) => s,
        crate::observe::Observed::Primary(_) => return Err(NotPromotable::CandidateNotStandby),
        crate::observe::Observed::Unreachable { error, .. } => {
            return Err(NotPromotable::CandidateUnreachable(error.clone()));
        }
    };
    // A clock step backwards makes the age 0; that only errs toward "fresh" by the step size.
    let age = |at: SystemTime| now.duration_since(at).unwrap_or_default();
    let standby_age = age(candidate.observed_at);
    if standby_age > policy.max_standby_observation_age {
        return Err(NotPromotable::StaleStandbyObservation {
            age: standby_age,
            limit: policy.max_standby_observation_age,
        });
    }
    let Some(primary) = snapshot.primary.as_primary() else { return Err(NotPromotable::PrimaryPositionUnknown) };
    let primary_age = age(primary.observed_at);
    if primary_age > policy.max_primary_observation_age {
        return Err(NotPromotable::StalePrimaryObservation {
            age: primary_age,
            limit: policy.max_primary_observation_age,
        });
    }
    if primary.position.system_id != candidate.system_id {
        return Err(NotPromotable::SystemIdMismatch {
            primary: primary.position.system_id,
            candidate: candidate.system_id,
        });
    }
    if primary.position.timeline != candidate.timeline {
        return Err(NotPromotable::TimelineMismatch {
            primary: primary.position.timeline,
            candidate: candidate.timeline,
        });
    }
    let row = primary.replica(candidate_name);
    let sync_state = row.and_then(|r| r.sync_state);
    if sync_state != Some(SyncState::Sync) {
        return Err(NotPromotable::NotSyncOnPrimary(sync_state));
    }
    // Data at risk: the primary's last position minus what the candidate has flushed. Received
    // WAL survives promotion, so flush (not replay) decides the loss.
    let Some(received) = candidate.receive_lsn else { return Err(NotPromotable::LagUnknown) };
    let lag_bytes = primary.position.lsn.bytes_after(received);
    if lag_bytes > policy.max_lag_bytes {
        return Err(NotPromotable::LagOverBytes { lag: lag_bytes, limit: policy.max_lag_bytes });
    }
    let Some(replayed) = candidate.replay_lsn else { return Err(NotPromotable::LagUnknown) };
    let backlog = received.bytes_after(replayed);
    if backlog > policy.max_replay_backlog_bytes {
        return Err(NotPromotable::ReplayBacklog { backlog, limit: policy.max_replay_backlog_bytes });
    }
    // replay_lag is NULL when idle; that is "no delay" only when nothing is outstanding.
    let replay_outstanding = primary.position.lsn.bytes_after(replayed);
    let lag_time = match row.and_then(|r| r.replay_lag) {
        Some(lag) => lag,
        None if replay_outstanding == 0 => Duration::ZERO,
        None => return Err(NotPromotable::LagUnknown),
    };
    if lag_time > policy.max_lag {
        return Err(NotPromotable::LagOverTime { lag: lag_time, limit: policy.max_lag });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{Lsn, WalPosition};
    use crate::observe::{Observed, PrimaryObservation, ReplicaStatus, StandbyObservation};

    const MB: u64 = 1024 * 1024;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    fn ago(secs: u64) -> SystemTime {
        now() - Duration::from_secs(secs)
    }

    /// A healthy pair: b is sync, caught up, observed just now.
    fn healthy() -> PairSnapshot {
        let position = WalPosition { system_id: 7, timeline: 3, lsn: Lsn(100 * MB) };
        PairSnapshot {
            standby_name: "b".into(),
            primary: Observed::Primary(PrimaryObservation {
                observed_at: ago(1),
                position,
                replicas: vec![ReplicaStatus {
                    application_name: "b".into(),
                    state: "streaming".into(),
                    sync_state: Some(SyncState::Sync),
                    sent_lsn: Some(position.lsn),
                    write_lsn: Some(position.lsn),
                    flush_lsn: Some(position.lsn),
                    replay_lsn: Some(position.lsn),
                    write_lag: None,
                    flush_lag: None,
                    replay_lag: None,
                    reply_age: Some(Duration::from_millis(200)),
                }],
            }),
            standby: Observed::Standby(StandbyObservation {
                observed_at: ago(0),
                system_id: 7,
                timeline: 3,
                receive_lsn: Some(position.lsn),
                replay_lsn: Some(position.lsn),
                replay_paused: false,
                streaming: true,
                last_message_age: Some(Duration::from_millis(100)),
            }),
        }
    }

    fn standby(s: &mut PairSnapshot) -> &mut StandbyObservation {
        match &mut s.standby {
            Observed::Standby(o) => o,
            _ => unreachable!(),
        }
    }

    fn primary(s: &mut PairSnapshot) -> &mut PrimaryObservation {
        match &mut s.primary {
            Observed::Primary(o) => o,
            _ => unreachable!(),
        }
    }

    type Case = (&'static str, Option<&'static str>, fn(&mut PairSnapshot), Option<&'static str>);

    #[test]
    fn every_rule() {
        let policy = EligibilityPolicy { max_lag_bytes: MB, ..EligibilityPolicy::default() };
        let cases: Vec<Case> = vec![
            ("healthy sync standby", Some("b"), |_| {}, None),
            ("no sync standby recorded", None, |_| {}, Some("no_sync_standby_recorded")),
            ("store records another standby", Some("c"), |_| {}, Some("not_recorded_sync_standby")),
            (
                "candidate unreachable",
                Some("b"),
                |s| s.standby = Observed::Unreachable { observed_at: ago(0), error: "refused".into() },
                Some("candidate_unreachable"),
            ),
            ("candidate is a primary", Some("b"), |s| s.standby = s.primary.clone(), Some("candidate_not_standby")),
            (
                "stale standby snapshot",
                Some("b"),
                |s| standby(s).observed_at = ago(6),
                Some("stale_standby_observation"),
            ),
            (
                "primary never observed: lag unknown, not 0",
                Some("b"),
                |s| s.primary = Observed::Unreachable { observed_at: ago(0), error: "gone".into() },
                Some("primary_position_unknown"),
            ),
            (
                "primary last seen long ago",
                Some("b"),
                |s| primary(s).observed_at = ago(31),
                Some("stale_primary_observation"),
            ),
            ("primary last seen recently (failover)", Some("b"), |s| primary(s).observed_at = ago(20), None),
            ("system id mismatch", Some("b"), |s| standby(s).system_id = 8, Some("system_id_mismatch")),
            ("timeline mismatch", Some("b"), |s| standby(s).timeline = 4, Some("timeline_mismatch")),
            (
                "primary listed it as async",
                Some("b"),
                |s| primary(s).replicas[0].sync_state = Some(SyncState::Async),
                Some("not_sync_on_primary"),
            ),
            ("primary had no row for it", Some("b"), |s| primary(s).replicas.clear(), Some("not_sync_on_primary")),
            ("receive position unknown", Some("b"), |s| standby(s).receive_lsn = None, Some("lag_unknown")),
            (
                "lag within bytes limit",
                Some("b"),
                |s| {
                    let o = standby(s);
                    o.receive_lsn = Some(Lsn(99 * MB));
                    o.replay_lsn = Some(Lsn(99 * MB));
                    primary(s).replicas[0].replay_lag = Some(Duration::from_millis(10));
                },
                None,
            ),
            (
                "lag over bytes limit",
                Some("b"),
                |s| standby(s).receive_lsn = Some(Lsn(98 * MB)),
                Some("lag_over_bytes"),
            ),
            (
                "replay backlog over limit",
                Some("b"),
                |s| standby(s).replay_lsn = Some(Lsn(80 * MB)),
                Some("replay_backlog"),
            ),
            (
                "replay lag over seconds limit",
                Some("b"),
                |s| primary(s).replicas[0].replay_lag = Some(Duration::from_secs(6)),
                Some("lag_over_time"),
            ),
            (
                "replay lag NULL while replay is behind: unknown, not 0",
                Some("b"),
                |s| standby(s).replay_lsn = Some(Lsn(100 * MB - 10)),
                Some("lag_unknown"),
            ),
            ("replay position unknown", Some("b"), |s| standby(s).replay_lsn = None, Some("lag_unknown")),
        ];
        for (name, recorded, mutate, expected) in cases {
            let mut snapshot = healthy();
            mutate(&mut snapshot);
            let got = evaluate(&snapshot, recorded, &policy, now());
            match (expected, &got) {
                (None, Eligibility::Promotable) => {}
                (Some(label), Eligibility::NotPromotable(reason)) if reason.metric_label() == label => {}
                _ => panic!("{name}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn default_policy_allows_no_byte_lag() {
        let mut snapshot = healthy();
        standby(&mut snapshot).receive_lsn = Some(Lsn(100 * MB - 8));
        let got = evaluate(&snapshot, Some("b"), &EligibilityPolicy::default(), now());
        assert_eq!(got, Eligibility::NotPromotable(NotPromotable::LagOverBytes { lag: 8, limit: 0 }));
    }
}
