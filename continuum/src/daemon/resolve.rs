//! Ending a switchover that does not move on: the resolution [`super::deadline`] named once a
//! step ran past `pairs[].step_timeout`, an operator's abort (`POST /v1/switchovers/{id}/abort`),
//! and the backoff of a failed step's retries.

use std::time::{Duration, Instant, SystemTime};

use lease::{LeaseError, LeaseRecord};
use uuid::Uuid;

use super::deadline::Resolve;
use super::pair::{PairCtl, StepRetry};
use crate::Error;
use crate::backoff::Backoff;
use crate::record::{self, Step, StepState, SwitchoverRecord};
use crate::switchover::{self, StepOutcome};

/// How often an abort re-reads the record when a daemon's write raced it.
const ABORT_TRIES: u32 = 3;

impl PairCtl {
    /// After a performed step: a failure schedules the next try (doubling pauses up to
    /// `step_retry_max`), anything else clears the schedule.
    pub(super) fn schedule_retry(&self, sw: &SwitchoverRecord, step: Step, outcome: &StepOutcome) {
        let mut seen = self.seen.lock().expect("seen poisoned");
        if !matches!(outcome, StepOutcome::Failed(_)) || step.rolls_back() {
            seen.retry = None;
            return;
        }
        let mut retry = match seen.retry.take() {
            Some(retry) if retry.id == sw.id && retry.step == step => retry,
            _ => StepRetry {
                id: sw.id,
                step,
                backoff: Backoff::new(self.cfg.step_retry_initial, self.cfg.step_retry_max),
                due: Instant::now(),
            },
        };
        let pause = retry.backoff.failed();
        retry.due = Instant::now() + pause;
        tracing::info!(pair = %self.name(), %step, failures = retry.backoff.failures(), pause_ms = pause.as_millis() as u64,
            "switchover step retried after a pause");
        seen.retry = Some(retry);
    }

    /// The current step ran past its deadline: roll back, take over, resume or give up as
    /// decided, with the reason (`step_timeout:<step>: ...`) in the record and the audit log.
    pub(super) async fn resolve_deadline(
        &self,
        record: &LeaseRecord,
        mut sw: SwitchoverRecord,
        step: Step,
        waited: Duration,
        resolve: Resolve,
    ) -> Result<(), Error> {
        let limit = humantime::format_duration(self.step_timeout);
        let (from, to) = (sw.from.clone(), sw.to.clone());
        let other = if self.region == from { &to } else { &from };
        let detail = match resolve {
            Resolve::RollBack => format!("{step} not done within {limit}; {from} rolled back and serves again"),
            Resolve::TakeOver => {
                format!("the lease store shows the lease released, but {from} did not record it within {limit}")
            }
            Resolve::Resume => format!("{to} did not take the released lease within {limit}; {from} took it back"),
            Resolve::Abandon => format!(
                "{step} not done within {limit} and {other} silent for a lease; nothing safe left to do here, \
                 the ordinary failover rules apply"
            ),
        };
        tracing::warn!(pair = %self.name(), id = %sw.id, %step, ?resolve, "step deadline passed: {detail}");
        self.audit(
            "switchover.step_timeout",
            Some(record.epoch),
            serde_json::json!({ "switchover": sw.id, "step": step, "waited_ms": waited.as_millis() as u64,
                "resolution": format!("{resolve:?}").to_lowercase(), "detail": detail }),
        )
        .await;
        match resolve {
            Resolve::RollBack => {
                switchover::time_out(&mut sw, step, &detail);
                self.roll_back(record, sw).await
            }
            Resolve::TakeOver => {
                let entry = sw.step_mut(Step::MoveLease);
                entry.state = StepState::Done;
                entry.detail = Some(format!("{detail}; {to} takes over"));
                entry.ended_at = Some(SystemTime::now());
                self.cas(record, &sw).await
            }
            Resolve::Resume => {
                // The lease is free (or already taken back by an earlier round): only this
                // region's fenced server, at the final position the target replayed, may serve.
                let epoch = self.ensure_handle(record, "resume").await?;
                if !self.driver.is_running().await.unwrap_or(false) {
                    self.start_local().await?;
                }
                // Records the epoch on the server; under `preferred` it stops waiting for the gone
                // target first, as any promotion does.
                self.promote_local(epoch).await?;
                switchover::time_out(&mut sw, step, &detail);
                switchover::give_up(&mut sw);
                let current = self.read_record().await?;
                self.finish_record(&current, &sw).await
            }
            Resolve::Abandon => {
                switchover::time_out(&mut sw, step, &detail);
                switchover::give_up(&mut sw);
                self.finish_record(record, &sw).await
            }
        }
    }

    /// An operator's abort of switchover `id`: a compare-and-set on the stored record that marks
    /// the current step failed, so the old holder rolls back. Refused (409) once the lease is
    /// moving or the switchover finished; `None` when no such switchover is in flight here.
    pub(super) async fn abort(&self, id: Uuid, by: &str) -> Result<Option<SwitchoverRecord>, Error> {
        // A leader change makes the store briefly unreachable: 503, the client tries again.
        let unavailable = |e: Error| Error::Unavailable { reason: format!("{}; try again", crate::error_chain(&e)) };
        for _ in 0..ABORT_TRIES {
            let current = self.read_record().await.map_err(unavailable)?;
            let mut sw = match record::stored(&current) {
                Ok(Some(sw)) if sw.id == id => sw,
                Ok(_) => return Ok(None),
                Err(reason) => return Err(Error::Conflict { reason }),
            };
            let step = switchover::abort(&mut sw, by)?;
            let value = serde_json::to_value(&sw).map_err(|e| Error::Internal { message: e.to_string() })?;
            match self.lease.cas_switchover(self.name(), current.epoch, current.switchover_version, Some(value)).await {
                Ok(_) => {}
                // A daemon stored the record meanwhile: decide again on the new one.
                Err(LeaseError::Refused { .. }) => continue,
                Err(source) => return Err(unavailable(Error::Lease { op: "store the abort", source })),
            }
            tracing::warn!(pair = %self.name(), %id, %step, by, "switchover aborted: the old holder rolls back");
            self.audit(
                "switchover.aborted",
                Some(current.epoch),
                serde_json::json!({ "switchover": id, "step": step, "by": by, "from": sw.from, "to": sw.to }),
            )
            .await;
            let mut seen = self.seen.lock().expect("seen poisoned");
            self.note_switchover(&mut seen, &sw);
            return Ok(Some(sw));
        }
        Err(Error::Conflict { reason: format!("switchover {id} kept changing; try again") })
    }

    pub(super) async fn read_record(&self) -> Result<LeaseRecord, Error> {
        self.lease
            .read(self.name())
            .await
            .map_err(|source| Error::Lease { op: "read", source })?
            .ok_or_else(|| Error::Internal { message: "lease record vanished".into() })
    }
}
