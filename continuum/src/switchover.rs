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
    entry.detail = None;
    Ok(())
}

/// Records how `step` ended and moves the whole record on.
pub fn finish(record: &mut SwitchoverRecord, step: Step, outcome: StepOutcome, took_ms: u64) {
    let entry = step_mut(record, step);
    entry.duration_ms = Some(took_ms);
    match outcome {
        StepOutcome::Done => entry.state = StepState::Done,
        StepOutcome::Skipped(reason) => {
            entry.state = StepState::Skipped;
            entry.detail = Some(reason);
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
        let mut entry = AuditEntry::new(
            "switchover.step",
            serde_json::json!({
                "switchover": record.id,
                "step": step,
                "outcome": label,
                "duration_ms": took.as_millis() as u64,
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
mod tests {
    use super::*;

    /// Drives a record to the end, each step performed by whichever region `next_for` names.
    fn drive(record: &mut SwitchoverRecord, fail_at: Option<Step>) {
        for _ in 0..50 {
            let (a, b) = (next_for(record, "a"), next_for(record, "b"));
            match (a, b) {
                (Next::Finished, Next::Finished) => return,
                (Next::RollBack, Next::Wait) => rolled_back(record),
                (Next::Perform(step), Next::Wait) | (Next::Wait, Next::Perform(step)) => {
                    begin(record, step).unwrap();
                    let outcome =
                        if fail_at == Some(step) { StepOutcome::Failed("boom".into()) } else { StepOutcome::Done };
                    finish(record, step, outcome, 1);
                }
                other => panic!("both or neither region acting: {other:?}"),
            }
        }
        panic!("switchover did not finish");
    }

    #[test]
    fn each_step_is_performed_by_one_region_in_order() {
        let mut record = new_record("app", "a", "b", "drill", "olivia", 7);
        assert_eq!(next_for(&record, "a"), Next::Perform(Step::Intent));
        assert_eq!(next_for(&record, "b"), Next::Wait);
        drive(&mut record, None);
        assert_eq!(record.state, SwitchoverState::Succeeded);
        // Only the target's real grant sets it (see the step runner test).
        assert_eq!(record.epoch_after, None);
        assert!(record.steps.iter().all(|s| s.state == StepState::Done));
    }

    #[test]
    fn failure_before_the_lease_moves_rolls_back() {
        for step in [Step::Drain, Step::Fence, Step::CatchUp] {
            let mut record = new_record("app", "a", "b", "", "olivia", 7);
            drive(&mut record, Some(step));
            assert_eq!(record.state, SwitchoverState::RolledBack, "{step}");
            assert_eq!(record.epoch_after, None, "{step}: the lease must not have moved");
            assert!(record.error.as_deref().unwrap().starts_with(step.as_str()));
        }
    }

    #[test]
    fn failure_after_the_lease_moves_is_retried_forward() {
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease] {
            begin(&mut record, step).unwrap();
            finish(&mut record, step, StepOutcome::Done, 1);
        }
        begin(&mut record, Step::Promote).unwrap();
        finish(&mut record, Step::Promote, StepOutcome::Failed("timeout".into()), 1);
        assert_eq!(next_for(&record, "b"), Next::Perform(Step::Promote));
        assert_eq!(next_for(&record, "a"), Next::Wait);
        drive(&mut record, None);
        assert_eq!((record.state, record.error.as_deref()), (SwitchoverState::Succeeded, None));
    }

    #[test]
    fn a_crash_mid_step_resumes_that_step_and_stale_copies_cannot_skip_ahead() {
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        begin(&mut record, Step::Intent).unwrap();
        // The performer died while running: the step is offered again to the same region.
        assert_eq!(next_for(&record, "a"), Next::Perform(Step::Intent));
        assert!(matches!(begin(&mut record, Step::Fence), Err(Error::Conflict { .. })));
    }

    #[tokio::test]
    async fn step_runner_records_metrics_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let metrics = Metrics::new();
        let (audit, tasks) = Audit::open(&crate::config::AuditConfig::local(&log), "a", metrics.clone()).unwrap();
        let runner = StepRunner { metrics: metrics.clone(), audit };
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        runner.run(&mut record, Step::Intent, || async { StepOutcome::Done }).await.unwrap();
        let skipped = StepOutcome::Skipped("no HTTPRoute configured".into());
        runner.run(&mut record, Step::Drain, || async { skipped }).await.unwrap();
        runner.run(&mut record, Step::Fence, || async { StepOutcome::Done }).await.unwrap();
        // Out of order: refused before the action runs.
        let refused = runner
            .run(&mut record, Step::Promote, || async {
                panic!("must not run");
                #[allow(unreachable_code)]
                StepOutcome::Done
            })
            .await;
        assert!(matches!(refused, Err(Error::Conflict { .. })));
        drop(runner);
        tasks.shutdown().await;

        let steps: Vec<(String, String)> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["detail"]["step"].as_str().unwrap().to_string(),
                    v["detail"]["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected = [("intent", "done"), ("drain", "skipped"), ("fence", "done")];
        assert_eq!(steps, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("continuum_switchover_step_duration_seconds_count{step=\"drain\",outcome=\"skipped\"} 1")
        );
    }

    #[tokio::test]
    async fn the_targets_real_epoch_becomes_epoch_after_and_tags_its_audit_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let metrics = Metrics::new();
        let (audit, tasks) = Audit::open(&crate::config::AuditConfig::local(&log), "a", metrics.clone()).unwrap();
        let runner = StepRunner { metrics, audit };
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp] {
            runner.run(&mut record, step, || async { StepOutcome::Done }).await.unwrap();
        }
        let released = Acted { epoch: Some(7), ..StepOutcome::Done.into() };
        runner.run(&mut record, Step::MoveLease, || async { released }).await.unwrap();
        assert_eq!(record.epoch_after, None, "released, not granted yet");
        // Epochs are raft log indexes: the grant is whatever index it got, not 7 + 1.
        let promoted = Acted { epoch: Some(23), ..StepOutcome::Done.into() };
        runner.run(&mut record, Step::Promote, || async { promoted }).await.unwrap();
        assert_eq!(record.epoch_after, Some(23));
        drop(runner);
        tasks.shutdown().await;
        let epochs: Vec<(String, u64)> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["detail"]["step"].as_str().unwrap().to_string(), v["epoch"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(epochs[4], ("move_lease".to_string(), 7));
        assert_eq!(epochs[5], ("promote".to_string(), 23));
    }

    #[test]
    fn an_unsafe_failure_after_the_move_fails_the_switchover_instead_of_retrying() {
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease] {
            begin(&mut record, step).unwrap();
            finish(&mut record, step, StepOutcome::Done, 1);
        }
        begin(&mut record, Step::Promote).unwrap();
        finish(&mut record, Step::Promote, StepOutcome::Unsafe("epoch went backwards".into()), 1);
        assert_eq!(record.state, SwitchoverState::Failed);
        assert_eq!(next_for(&record, "b"), Next::Finished);
        // Before the move, unsafe rolls back like any failure.
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        for step in [Step::Intent, Step::Drain] {
            begin(&mut record, step).unwrap();
            finish(&mut record, step, StepOutcome::Done, 1);
        }
        begin(&mut record, Step::Fence).unwrap();
        finish(&mut record, Step::Fence, StepOutcome::Unsafe("timeline".into()), 1);
        assert_eq!(next_for(&record, "a"), Next::RollBack);
    }

    /// Set in the child process of the failpoint test: where its audit log goes.
    const CHILD_LOG_ENV: &str = "CONTINUUM_TEST_FAILPOINT_CHILD_LOG";

    #[tokio::test]
    async fn armed_failpoint_kills_the_process_between_a_step_and_its_audit_record() {
        if let Some(log) = std::env::var_os(CHILD_LOG_ENV) {
            // Child: arm from the environment and walk the steps until the process dies.
            failpoint::arm(&[]).unwrap();
            let metrics = Metrics::new();
            let (audit, _tasks) = Audit::open(&crate::config::AuditConfig::local(log), "a", metrics.clone()).unwrap();
            let runner = StepRunner { metrics, audit };
            let mut record = new_record("app", "a", "b", "", "olivia", 7);
            for step in Step::ALL {
                runner.run(&mut record, step, || async { StepOutcome::Done }).await.unwrap();
            }
            unreachable!("the failpoint should have ended the process");
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "switchover::tests::armed_failpoint_kills_the_process_between_a_step_and_its_audit_record",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_LOG_ENV, &log)
            .env(failpoint::ENV, "after_fence")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(failpoint::EXIT_CODE), "{stderr}");
        assert!(stderr.contains("failpoint after_fence hit"), "{stderr}");
        // The intent and the drain were recorded; the fence ran but died before its record was written.
        let kinds: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["detail"]["step"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(kinds, ["intent", "drain"]);
    }
}
