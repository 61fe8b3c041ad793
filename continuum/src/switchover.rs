//! The planned-switchover state machine (ARCHITECTURE §5), as pure functions over the
//! [`SwitchoverRecord`] that will live in the lease store.
//!
//! Every daemon reads the record and asks [`next_for`] what *its region* has to do now; it does
//! that one step through [`StepRunner::run`] (failpoints on both edges, metrics, audit), writes
//! the updated record back, and reacts again. A daemon that crashes between two steps therefore
//! resumes from the record: a failure before the lease moved rolls back (the old primary is
//! unfenced and stays primary), a failure after it rolls forward (the step is retried).

use std::time::{Instant, SystemTime};

use uuid::Uuid;

use crate::Error;
use crate::audit::{Audit, AuditEntry};
use crate::failpoint::{self, Failpoint};
use crate::metrics::Metrics;
use crate::record::{Step, StepRecord, StepState, SwitchoverKind, SwitchoverRecord, SwitchoverState};

/// What a region's daemon should do about a switchover now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Perform this step (first attempt, or a roll-forward retry).
    Perform(Step),
    /// A step before the lease moved failed: undo what this region did (unfence its primary).
    RollBack,
    /// Another region's daemon has the next move.
    Wait,
    /// Nothing left to do.
    Finished,
}

/// The region whose daemon performs `step` of a switchover `from` → `to`. The old holder prepares
/// and hands over the lease; the new holder promotes and publishes DNS; the old primary then
/// rejoins as its standby, and the new holder makes it synchronous again.
pub fn performer<'a>(step: Step, from: &'a str, to: &'a str) -> &'a str {
    match step {
        Step::Intent | Step::Fence | Step::Drain | Step::MoveLease | Step::Rejoin => from,
        Step::CatchUp | Step::Promote | Step::Dns | Step::RestoreSync => to,
    }
}

/// A new planned switchover record: every step pending.
pub fn new_record(pair: &str, from: &str, to: &str, reason: &str, requested_by: &str, epoch: u64) -> SwitchoverRecord {
    SwitchoverRecord {
        id: Uuid::new_v4(),
        pair: pair.into(),
        kind: SwitchoverKind::Planned,
        from: from.into(),
        to: to.into(),
        reason: reason.into(),
        requested_by: requested_by.into(),
        requested_at: SystemTime::now(),
        finished_at: None,
        state: SwitchoverState::Pending,
        epoch_before: epoch,
        epoch_after: None,
        steps: Step::ALL
            .into_iter()
            .map(|step| StepRecord {
                step,
                state: StepState::Pending,
                started_at: None,
                duration_ms: None,
                detail: None,
                attempts: 0,
                ended_at: None,
            })
            .collect(),
        write_gap_ms: None,
        error: None,
    }
}

/// What `region` should do next for `record`.
pub fn next_for(record: &SwitchoverRecord, region: &str) -> Next {
    if record.state.is_finished() {
        return Next::Finished;
    }
    let Some(current) = record.steps.iter().find(|s| !matches!(s.state, StepState::Done | StepState::Skipped)) else {
        return Next::Finished;
    };
    if current.state == StepState::Failed && current.step.rolls_back() {
        return if region == record.from { Next::RollBack } else { Next::Wait };
    }
    // Pending, running (its performer crashed mid-step: do it again, steps are idempotent) or
    // failed after the lease moved (roll forward).
    if performer(current.step, &record.from, &record.to) == region { Next::Perform(current.step) } else { Next::Wait }
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Done,
    /// Not applicable here, with the reason (e.g. no HTTPRoute drain configured).
    Skipped(String),
    /// Retried (after the lease moved) or rolled back (before).
    Failed(String),
    /// Going on could lose commits or make a second primary (an unsafe driver error). Before the
    /// lease moved this rolls back like any failure; after, the switchover fails for an operator
    /// to look at instead of being retried.
    Unsafe(String),
}

/// What a performed step leaves in the record besides its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted {
    pub outcome: StepOutcome,
    /// Replaces the step's detail (e.g. the fence's final position).
    pub detail: Option<String>,
    /// The lease epoch the step acted under; after the lease moved, the target's real epoch
    /// (raft log index), which becomes the record's `epoch_after`.
    pub epoch: Option<u64>,
    pub write_gap_ms: Option<u64>,
}

impl From<StepOutcome> for Acted {
    fn from(outcome: StepOutcome) -> Self {
        Acted { outcome, detail: None, epoch: None, write_gap_ms: None }
    }
}

fn step_mut(record: &mut SwitchoverRecord, step: Step) -> &mut StepRecord {
    record.step_mut(step)
}

/// Marks `step` as running. Refuses a step that is not the next one: the record is shared, and
/// acting on a stale copy must not skip ahead.
pub fn begin(record: &mut SwitchoverRecord, step: Step) -> Result<(), Error> {
    let expected =
        record.steps.iter().find(|s| !matches!(s.state, StepState::Done | StepState::Skipped)).map(|s| s.step);
    if expected != Some(step) || record.state.is_finished() {
        return Err(Error::Conflict {
            reason: format!(
                "switchover {}: step {step} is not next (next: {})",
                record.id,
                expected.map_or("none".to_string(), |s| s.to_string())
            ),
        });
    }
    record.state = SwitchoverState::Running;
    let entry = step_mut(record, step);
    entry.state = StepState::Running;
    entry.started_at = Some(SystemTime::now());
    entry.attempts += 1;
    entry.detail = None;
    Ok(())
}

/// Records how `step` ended and moves the whole record on.
pub fn finish(record: &mut SwitchoverRecord, step: Step, outcome: StepOutcome, took_ms: u64) {
    let entry = step_mut(record, step);
    entry.duration_ms = Some(took_ms);
    match outcome {
        StepOutcome::Done => {
            entry.state = StepState::Done;
            entry.ended_at = Some(SystemTime::now());
        }
        StepOutcome::Skipped(reason) => {
            entry.state = StepState::Skipped;
            entry.detail = Some(reason);
            entry.ended_at = Some(SystemTime::now());
        }
        StepOutcome::Failed(error) => {
            entry.state = StepState::Failed;
            entry.detail = Some(error.clone());
            record.error = Some(format!("{step}: {error}"));
        }
        StepOutcome::Unsafe(error) => {
            entry.state = StepState::Failed;
            entry.detail = Some(error.clone());
            record.error = Some(format!("{step}: unsafe to go on: {error}"));
            if !step.rolls_back() {
                record.state = SwitchoverState::Failed;
                record.finished_at = Some(SystemTime::now());
                return;
            }
        }
    }
    if record.steps.iter().all(|s| matches!(s.state, StepState::Done | StepState::Skipped)) {
        record.state = SwitchoverState::Succeeded;
        record.finished_at = Some(SystemTime::now());
        record.error = None;
    }
}

/// Records that the old primary's region undid its steps after a failure before the lease moved.
pub fn rolled_back(record: &mut SwitchoverRecord) {
    for entry in &mut record.steps {
        if matches!(entry.state, StepState::Done | StepState::Running) {
            entry.state = StepState::RolledBack;
        }
    }
    record.state = SwitchoverState::RolledBack;
    record.finished_at = Some(SystemTime::now());
}

/// An operator's abort (`POST /v1/switchovers/{id}/abort`): the current step is marked failed,
/// so the old holder rolls back as after any failure before the lease moved. Refused once the
/// lease is moving (`move_lease` or later: rolling back could leave no one holding it, or undo
/// a promotion) and once the switchover finished. Returns the step it failed.
pub fn abort(record: &mut SwitchoverRecord, by: &str) -> Result<Step, Error> {
    if record.state.is_finished() {
        return Err(Error::Conflict {
            reason: format!("switchover {} already finished ({})", record.id, record.state.as_str()),
        });
    }
    let Some(step) = record.current_step().map(|s| s.step) else {
        return Err(Error::Conflict { reason: format!("switchover {} has no step left", record.id) });
    };
    if !step.rolls_back() {
        return Err(Error::Conflict {
            reason: format!(
                "switchover {} is at {step}: the lease is moving or moved, rolling back is no longer safe",
                record.id
            ),
        });
    }
    let detail = format!("aborted by {by}");
    let entry = step_mut(record, step);
    entry.state = StepState::Failed;
    entry.detail = Some(detail.clone());
    record.error = Some(format!("{step}: {detail}"));
    Ok(step)
}

/// The current step ran past its deadline: records why (`step_timeout:<step>: ...`) on the step
/// and the record. The caller then rolls back, completes, or finishes the record as failed.
pub fn time_out(record: &mut SwitchoverRecord, step: Step, detail: &str) {
    let entry = step_mut(record, step);
    if !matches!(entry.state, StepState::Done | StepState::Skipped) {
        entry.state = StepState::Failed;
        entry.detail = Some(detail.to_string());
    }
    record.error = Some(format!("step_timeout:{step}: {detail}"));
}

/// Finishes a switchover that can neither complete nor roll back; `error` already says why.
pub fn give_up(record: &mut SwitchoverRecord) {
    record.state = SwitchoverState::Failed;
    record.finished_at = Some(SystemTime::now());
}

/// Runs one step with everything around it that every step needs: failpoints on both edges,
/// the step-duration metric and an audit record.
pub struct StepRunner {
    pub metrics: Metrics,
    pub audit: Audit,
}

impl StepRunner {
    /// Performs `step` of `record` with `action`, and updates `record`. The caller stores the
    /// record. An audit failure is logged, never fatal: the local log is the daemon's own trail
    /// and must not roll a switchover back.
    pub async fn run<F, Fut, O>(
        &self,
        record: &mut SwitchoverRecord,
        step: Step,
        action: F,
    ) -> Result<StepOutcome, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
        O: Into<Acted>,
    {
        let retry = record.step(step).is_some_and(|s| s.state == StepState::Failed);
        begin(record, step)?;
        failpoint::hit(Failpoint::Before(step));
        let started = Instant::now();
        let acted = if failpoint::fails(step) {
            StepOutcome::Failed(format!("failpoint fail_{step}")).into()
        } else {
            action().await.into()
        };
        let Acted { outcome, detail, epoch, write_gap_ms } = acted;
        let took = started.elapsed();
        failpoint::hit(Failpoint::After(step));
        let label = match &outcome {
            StepOutcome::Done => "done",
            StepOutcome::Skipped(_) => "skipped",
            StepOutcome::Failed(_) | StepOutcome::Unsafe(_) => "failed",
        };
        self.metrics.observe_step(step, label, took);
        finish(record, step, outcome.clone(), u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        if let Some(detail) = detail {
            step_mut(record, step).detail = Some(detail);
        }
        if write_gap_ms.is_some() {
            record.write_gap_ms = write_gap_ms;
        }
        if let Some(epoch) = epoch
            && !step.rolls_back()
            && epoch != record.epoch_before
        {
            record.epoch_after = Some(epoch);
        }
        // The audit trail gets state changes: a step done, skipped or failing for the first time;
        // a retry that fails again only updates the record (attempts, detail) and the metric.
        if retry && label == "failed" {
            return Ok(outcome);
        }
        let attempts = record.step(step).map_or(1, |s| s.attempts);
        let mut entry = AuditEntry::new(
            "switchover.step",
            serde_json::json!({
                "switchover": record.id,
                "step": step,
                "outcome": label,
                "duration_ms": took.as_millis() as u64,
                "attempts": attempts,
                "detail": record.steps.iter().find(|s| s.step == step).and_then(|s| s.detail.clone()),
            }),
        );
        entry.pair = Some(record.pair.clone());
        entry.epoch = Some(epoch.or(record.epoch_after).unwrap_or(record.epoch_before));
        entry.actor = Some(record.requested_by.clone());
        if let Err(error) = self.audit.append(entry).await {
            self.metrics.count_error(&error);
            tracing::error!(error = %crate::error_chain(&error), switchover = %record.id, %step, "audit record not written");
        }
        Ok(outcome)
    }
}

#[cfg(test)]
#[path = "switchover_tests.rs"]
mod tests;
