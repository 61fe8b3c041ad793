//! The replicated switchover format: the [`SwitchoverRecord`] both data regions read from and
//! write to the lease store (compare-and-set), its [`Step`]s, and the text a step leaves in it
//! for the next one (the fence's final WAL position). The API shows the same values
//! (`crate::api` re-exports them); the state machine over them is [`crate::switchover`].

use std::fmt;
use std::time::SystemTime;

use cnpg_pair::{Lsn, WalPosition};
use lease::LeaseRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The steps of a planned switchover (ARCHITECTURE §5), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Write the switchover intent to the lease store.
    Intent,
    /// Drain HTTP traffic away from the old region (Gateway API `HTTPRoute` weights, while it
    /// still serves); skipped when no route is configured.
    Drain,
    /// Stop the old primary (checkpoint, fast shutdown).
    Fence,
    /// Wait until the target replayed the old primary's shutdown checkpoint.
    CatchUp,
    /// The old holder releases the lease; the target acquires it (a new, higher epoch).
    MoveLease,
    /// Promote the target.
    Promote,
    /// Commit the new DNS record through PDM with the new epoch.
    Dns,
    /// The old primary rejoins as a standby of the new one.
    Rejoin,
    /// The new primary makes the rejoined old primary its synchronous standby again (and the
    /// lease store records it). Was called `audit` before; records that say so still decode.
    #[serde(alias = "audit")]
    RestoreSync,
}

impl Step {
    pub const ALL: [Step; 9] = [
        Step::Intent,
        Step::Drain,
        Step::Fence,
        Step::CatchUp,
        Step::MoveLease,
        Step::Promote,
        Step::Dns,
        Step::Rejoin,
        Step::RestoreSync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Intent => "intent",
            Step::Drain => "drain",
            Step::Fence => "fence",
            Step::CatchUp => "catch_up",
            Step::MoveLease => "move_lease",
            Step::Promote => "promote",
            Step::Dns => "dns",
            Step::Rejoin => "rejoin",
            Step::RestoreSync => "restore_sync",
        }
    }

    /// Whether a failure at this step rolls the switchover back (before the lease moved) or
    /// forward (after it did).
    pub fn rolls_back(self) -> bool {
        self < Step::MoveLease
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverKind {
    Planned,
    Failover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverState {
    Pending,
    Running,
    Succeeded,
    /// Failed before the lease moved: the old primary is unfenced and still primary.
    RolledBack,
    /// Could not complete nor roll back; `error` says what an operator must look at.
    Failed,
}

impl SwitchoverState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed)
    }
}

/// One switchover or failover, as stored in the lease record and listed by `GET /v1/switchovers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverRecord {
    pub id: Uuid,
    pub pair: String,
    pub kind: SwitchoverKind,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Token name of the caller, or `continuum` for automatic failovers.
    pub requested_by: String,
    #[serde(with = "humantime_serde")]
    pub requested_at: SystemTime,
    #[serde(default, with = "humantime_serde")]
    pub finished_at: Option<SystemTime>,
    pub state: SwitchoverState,
    pub epoch_before: u64,
    /// The epoch the target was granted (a raft log index, so not `epoch_before + 1`); set once
    /// the target holds the lease.
    pub epoch_after: Option<u64>,
    pub steps: Vec<StepRecord>,
    /// Longest time a writer could not commit, as observed by the daemon.
    pub write_gap_ms: Option<u64>,
    pub error: Option<String>,
}

impl SwitchoverRecord {
    /// The first step not done or skipped: the one in progress, failed or next.
    pub fn current_step(&self) -> Option<&StepRecord> {
        self.steps.iter().find(|s| !matches!(s.state, StepState::Done | StepState::Skipped))
    }

    pub fn step(&self, step: Step) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == step)
    }

    pub fn step_mut(&mut self, step: Step) -> &mut StepRecord {
        self.steps.iter_mut().find(|s| s.step == step).expect("a record holds every step")
    }

    /// When the current step became current: the end of the last step done or skipped, else the
    /// request. A step's deadline (`pairs[].step_timeout`) runs from here, on the replicated
    /// record, so a restarted daemon (or the other region) sees the same clock.
    pub fn current_since(&self) -> SystemTime {
        self.steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Done | StepState::Skipped))
            .filter_map(StepRecord::ended)
            .max()
            .map_or(self.requested_at, |ended| ended.max(self.requested_at))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub state: StepState,
    #[serde(default, with = "humantime_serde")]
    pub started_at: Option<SystemTime>,
    pub duration_ms: Option<u64>,
    pub detail: Option<String>,
    /// How many times the step was begun (retries after the lease moved count too).
    #[serde(default)]
    pub attempts: u32,
    /// When it was done or skipped.
    #[serde(default, with = "humantime_serde")]
    pub ended_at: Option<SystemTime>,
}

impl StepRecord {
    /// When it ended: `ended_at`, or for records written before that field, the last attempt's
    /// start plus its duration.
    pub fn ended(&self) -> Option<SystemTime> {
        self.ended_at.or_else(|| {
            let started = self.started_at?;
            Some(started + std::time::Duration::from_millis(self.duration_ms.unwrap_or(0)))
        })
    }
}

/// The switchover record stored with a lease record. `Ok(None)`: none stored. An error means a
/// record is stored but does not decode (another version wrote it, or it is damaged): never
/// "no switchover in flight", so nothing may start over it.
pub fn stored(record: &LeaseRecord) -> Result<Option<SwitchoverRecord>, String> {
    match &record.switchover {
        None => Ok(None),
        Some(value) => serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| format!("the stored switchover record does not decode: {e}")),
    }
}

/// The fence step's final position as kept in its `detail`: `system_id:timeline:lsn`.
pub fn encode_position(p: &WalPosition) -> String {
    format!("{}:{}:{}", p.system_id, p.timeline, p.lsn)
}

pub fn decode_position(text: &str) -> Option<WalPosition> {
    let mut parts = text.splitn(3, ':');
    let system_id = parts.next()?.parse().ok()?;
    let timeline = parts.next()?.parse().ok()?;
    let lsn: Lsn = parts.next()?.parse().ok()?;
    Some(WalPosition { system_id, timeline, lsn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let p = WalPosition { system_id: 7, timeline: 2, lsn: "0/3000148".parse().unwrap() };
        assert_eq!(decode_position(&encode_position(&p)), Some(p));
        assert_eq!(decode_position("garbage"), None);
    }

    #[test]
    fn the_current_step_runs_from_the_end_of_the_last_one_done() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let mut sw = crate::switchover::new_record("app", "a", "b", "", "olivia", 7);
        sw.requested_at = at(100);
        assert_eq!(sw.current_since(), at(100));
        let intent = sw.step_mut(Step::Intent);
        (intent.state, intent.started_at, intent.duration_ms) = (StepState::Done, Some(at(101)), Some(2000));
        assert_eq!(sw.current_since(), at(103), "an old record without ended_at: start + duration");
        let drain = sw.step_mut(Step::Drain);
        (drain.state, drain.ended_at) = (StepState::Skipped, Some(at(110)));
        // A failed step is current; its failure does not restart the clock.
        let fence = sw.step_mut(Step::Fence);
        (fence.state, fence.ended_at) = (StepState::Failed, Some(at(120)));
        assert_eq!(sw.current_since(), at(110));
    }

    #[test]
    fn the_last_step_keeps_decoding_under_its_old_name() {
        let step: Step = serde_json::from_str("\"audit\"").unwrap();
        assert_eq!(step, Step::RestoreSync);
        assert_eq!(serde_json::to_string(&Step::RestoreSync).unwrap(), "\"restore_sync\"");
    }

    #[test]
    fn an_undecodable_stored_record_is_an_error_not_none() {
        let mut record = LeaseRecord { pair: "app".into(), ..Default::default() };
        assert_eq!(stored(&record), Ok(None));
        record.switchover = Some(serde_json::json!({ "id": "not a uuid", "steps": 3 }));
        assert!(stored(&record).unwrap_err().contains("does not decode"));
    }
}
