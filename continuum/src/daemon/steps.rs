//! Planned-switchover execution: the move [`super::decide()`] named for this region, one
//! function per step (each a driver or lease call), and the compare-and-set that stores the
//! record for the other region's next move.

use std::time::{Duration, Instant, SystemTime};

use cnpg_pair::PairDriver;
use lease::{LeaseError, LeaseRecord};

use super::decide::{Observation, SwitchoverMove};
use super::pair::PairCtl;
use crate::record::{self, Step, StepState, SwitchoverRecord, SwitchoverState};
use crate::switchover::{self, Acted, StepOutcome};
use crate::{Error, error_chain};

/// A step's failure as the record shows it: unsafe errors after the lease moved stop the
/// switchover instead of being retried.
fn failed(step: Step, error: &Error) -> StepOutcome {
    if error.is_unsafe() && !step.rolls_back() {
        StepOutcome::Unsafe(error_chain(error))
    } else {
        StepOutcome::Failed(error_chain(error))
    }
}

fn ended(step: Step, result: Result<Acted, Error>) -> Acted {
    result.unwrap_or_else(|e| failed(step, &e).into())
}

impl PairCtl {
    pub(super) async fn switchover(&self, obs: Observation, next: SwitchoverMove) -> Result<(), Error> {
        let sw = obs.switchover_in_flight().cloned().expect("decided on a switchover in flight");
        let record = obs.record;
        if !matches!(next, SwitchoverMove::WaitOnOld { .. } | SwitchoverMove::Supersede { .. }) {
            self.seen.lock().expect("seen poisoned").waiting_on_old = None;
        }
        match next {
            SwitchoverMove::Finished | SwitchoverMove::Wait | SwitchoverMove::Backoff(_) => Ok(()),
            SwitchoverMove::Deadline { step, waited, resolve } => {
                self.resolve_deadline(&record, sw, step, waited, resolve).await
            }
            SwitchoverMove::Supersede { id, .. } => self.supersede_if_still_gone(id, &sw).await,
            SwitchoverMove::WaitOnOld { step, timed_out: false } => {
                let mut seen = self.seen.lock().expect("seen poisoned");
                if !matches!(seen.waiting_on_old, Some((i, s, _)) if i == sw.id && s == step) {
                    seen.waiting_on_old = Some((sw.id, step, Instant::now()));
                }
                Ok(())
            }
            SwitchoverMove::WaitOnOld { step, timed_out: true } => self.complete_without_old(&record, sw, step).await,
            SwitchoverMove::RollBack => self.roll_back(&record, sw).await,
            SwitchoverMove::Perform(step) => self.perform(&record, sw, step).await,
        }
    }

    /// The old holder died before the lease moved and stays silent past its lease: the ordinary
    /// automatic failover (same checks, the store's gate) supersedes the switchover, decided
    /// again on a fresh observation of both servers.
    async fn supersede_if_still_gone(&self, id: uuid::Uuid, sw: &SwitchoverRecord) -> Result<(), Error> {
        let Some(fresh) = self.observe(false).await else { return Ok(()) };
        let action = super::decide(&fresh, &self.timers().await);
        if let super::Action::Switchover(SwitchoverMove::Supersede { id: again, check: Some(check) }) = action
            && again == id
        {
            self.fail_over(&fresh.record, check, Some(sw)).await?;
        }
        Ok(())
    }

    /// Before the lease moved a step failed: serve again, under a lease renewed now (this
    /// daemon may have restarted and let it run out meanwhile).
    pub(super) async fn roll_back(&self, record: &LeaseRecord, mut sw: SwitchoverRecord) -> Result<(), Error> {
        tracing::warn!(pair = %self.name(), id = %sw.id, "rolling the switchover back");
        self.ensure_handle(record, "rollback").await?;
        if !self.driver.is_running().await.unwrap_or(false) {
            self.start_local().await?;
        }
        // Serving again: the drained route's weight comes back too (a no-op when it never moved).
        if sw.step(Step::Drain).is_some_and(|s| s.state == StepState::Done) {
            self.restore_traffic(record.epoch).await?;
        }
        switchover::rolled_back(&mut sw);
        self.finish_record(record, &sw).await
    }

    /// Runs `step` (through the step runner: failpoints, metrics, audit) and stores the record.
    async fn perform(&self, record: &LeaseRecord, mut sw: SwitchoverRecord, step: Step) -> Result<(), Error> {
        // The steps read the record as it was before this one began (the runner updates `sw`).
        let before = sw.clone();
        let outcome = self
            .runner
            .run(&mut sw, step, || async {
                match step {
                    Step::Intent => Acted::from(StepOutcome::Done),
                    Step::Fence => ended(step, self.step_fence().await),
                    Step::Drain => ended(step, self.step_drain(record.epoch).await),
                    Step::CatchUp => ended(step, self.step_catch_up(&before).await),
                    Step::MoveLease => ended(step, self.step_move_lease(record).await),
                    Step::Promote => ended(step, self.step_promote(record, &before).await),
                    Step::Dns => ended(step, self.step_dns(record).await),
                    Step::Rejoin => ended(step, self.step_rejoin().await),
                    Step::RestoreSync => ended(step, self.step_restore_sync(record, &before).await),
                }
            })
            .await?;
        if let StepOutcome::Failed(reason) | StepOutcome::Unsafe(reason) = &outcome {
            tracing::warn!(pair = %self.name(), %step, reason, "switchover step failed");
        }
        self.schedule_retry(&sw, step, &outcome);
        // Re-read: the lease (and so the epoch the CAS needs) may have moved in the step.
        let current = self
            .lease
            .read(self.name())
            .await
            .map_err(|source| Error::Lease { op: "read", source })?
            .ok_or_else(|| Error::Internal { message: "lease record vanished".into() })?;
        if sw.state.is_finished() {
            self.finish_record(&current, &sw).await?;
        } else {
            self.cas(&current, &sw).await?;
        }
        match outcome {
            // The record says so; the loop stops acting on the pair too.
            StepOutcome::Unsafe(reason) => Err(Error::UnsafeStep { switchover: sw.id, step, reason }),
            _ => Ok(()),
        }
    }

    /// Old primary: CHECKPOINT and fast shutdown; the final position goes into the record.
    async fn step_fence(&self) -> Result<Acted, Error> {
        let fenced = self.driver.fence().await.map_err(|source| Error::Driver { what: "fence", source })?;
        match fenced.final_position {
            Some(position) => {
                Ok(Acted { detail: Some(record::encode_position(&position)), ..StepOutcome::Done.into() })
            }
            None => Ok(StepOutcome::Failed(format!(
                "fence was not clean ({:?}): the final position is unknown",
                fenced.method
            ))
            .into()),
        }
    }

    /// Target: wait until it replayed the old primary's shutdown checkpoint.
    async fn step_catch_up(&self, sw: &SwitchoverRecord) -> Result<Acted, Error> {
        let target = sw.step(Step::Fence).and_then(|s| s.detail.as_deref()).and_then(record::decode_position);
        let Some(target) = target else {
            return Ok(StepOutcome::Failed("the fence step recorded no final position".into()).into());
        };
        self.driver
            .wait_caught_up(&target, self.cfg.catch_up_timeout)
            .await
            .map_err(|source| Error::Driver { what: "catch up", source })?;
        Ok(StepOutcome::Done.into())
    }

    /// Old holder: release the lease (after the fence). The target is granted a new epoch when
    /// it promotes; this step records the epoch released.
    async fn step_move_lease(&self, record: &LeaseRecord) -> Result<Acted, Error> {
        let handle = self.holder.lock().await.take();
        let released = match handle {
            Some(handle) => handle.release().await,
            None => self.lease.release(self.name(), &self.region, record.epoch).await,
        };
        let done = Acted {
            detail: Some(format!("released epoch {}; the target is granted a new one", record.epoch)),
            epoch: Some(record.epoch),
            ..StepOutcome::Done.into()
        };
        let result = match released {
            Ok(_) => Ok(done),
            // Released earlier (a retried step): the holder is gone already.
            Err(LeaseError::Refused { current, .. }) if current.holder.as_deref() != Some(&self.region) => Ok(done),
            Err(source) => Err(Error::Lease { op: "release", source }),
        };
        if result.is_ok() {
            // The fence stopped the server and the lease is given back: the rejoin that follows
            // starts it as a standby, which the watchdog must leave alone.
            self.disarm_watchdog(Some(record.epoch)).await;
        }
        result
    }

    /// Target: acquire the lease (its real epoch), drop sync under `preferred`, promote.
    async fn step_promote(&self, record: &LeaseRecord, sw: &SwitchoverRecord) -> Result<Acted, Error> {
        let epoch = self.ensure_handle(record, "switchover").await?;
        self.promote_local(epoch).await?;
        let fence_started = sw.step(Step::Fence).and_then(|s| s.started_at);
        let gap = fence_started.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_millis() as u64);
        Ok(Acted { epoch: Some(epoch), write_gap_ms: gap, ..StepOutcome::Done.into() })
    }

    /// Target: commit the pair's DNS record with the new epoch ([`super::dns`]), then restore the
    /// HTTP route's weight toward this region.
    async fn step_dns(&self, record: &LeaseRecord) -> Result<Acted, Error> {
        let epoch = self.ensure_handle(record, "switchover").await?;
        self.commit_dns(epoch).await?;
        // Then the HTTP route, toward this region under the new epoch (what the drain moved away).
        let routed = self.restore_traffic(epoch).await?;
        Ok(Acted {
            epoch: Some(epoch),
            detail: routed.detail.map(|w| format!("route {w}")),
            ..StepOutcome::Done.into()
        })
    }

    /// Old primary: rejoin as a standby of the new one.
    async fn step_rejoin(&self) -> Result<Acted, Error> {
        self.rejoin().await?;
        Ok(StepOutcome::Done.into())
    }

    /// Target: make the old primary synchronous again (the store records it). Skipped in effect
    /// when the old region was gone past the rejoin timeout: it rejoins by the ordinary path and
    /// the holder makes it synchronous once it streams (durability as configured).
    async fn step_restore_sync(&self, record: &LeaseRecord, sw: &SwitchoverRecord) -> Result<Acted, Error> {
        let from = &sw.from;
        if sw.step(Step::Rejoin).is_some_and(|s| s.state == StepState::Skipped) {
            return Ok(Acted {
                detail: Some(format!("done, old primary {from} not rejoined")),
                ..StepOutcome::Done.into()
            });
        }
        let epoch = self.ensure_handle(record, "switchover").await?;
        let store = self.sync_store(epoch);
        match self.driver.enable_sync(from, &store).await {
            Ok(()) => Ok(Acted { epoch: Some(epoch), ..StepOutcome::Done.into() }),
            Err(e) => Ok(StepOutcome::Failed(format!("{from} not synchronous yet: {e}")).into()),
        }
    }

    /// The old region did not act within `switchover_rejoin_timeout`: complete the record
    /// without it. It rejoins by the ordinary path on return.
    async fn complete_without_old(
        &self,
        record: &LeaseRecord,
        mut sw: SwitchoverRecord,
        step: Step,
    ) -> Result<(), Error> {
        let timeout = self.cfg.switchover_rejoin_timeout;
        let detail = format!("the old region {} did not act within {timeout:?}", sw.from);
        tracing::warn!(pair = %self.name(), id = %sw.id, %step, "{detail}: completing without it");
        let entry = sw.step_mut(step);
        match step {
            Step::Rejoin => {
                entry.state = StepState::Skipped;
                entry.detail = Some(format!("old primary not rejoined: {detail}; it rejoins as a standby on return"));
            }
            Step::MoveLease => {
                // This region holds the lease: it moved; the old holder died before recording it.
                entry.state = StepState::Done;
                entry.detail = Some(format!("the lease moved; {detail}"));
                sw.epoch_after = Some(record.epoch);
            }
            _ => {
                sw.state = SwitchoverState::Failed;
                sw.error = Some(format!("superseded: this region holds the lease; {detail}"));
                sw.finished_at = Some(SystemTime::now());
            }
        }
        self.audit(
            "switchover.old_region_gone",
            sw.epoch_after.or(Some(record.epoch)),
            serde_json::json!({ "switchover": sw.id, "step": step, "from": sw.from, "detail": detail }),
        )
        .await;
        self.seen.lock().expect("seen poisoned").waiting_on_old = None;
        if sw.state.is_finished() {
            return self.finish_record(record, &sw).await;
        }
        self.cas(record, &sw).await
    }

    /// Stores the record (compare-and-set on the record's switchover version).
    pub(super) async fn cas(&self, current: &LeaseRecord, sw: &SwitchoverRecord) -> Result<(), Error> {
        let value = serde_json::to_value(sw).map_err(|e| Error::Internal { message: e.to_string() })?;
        self.lease
            .cas_switchover(self.name(), current.epoch, current.switchover_version, Some(value))
            .await
            .map_err(|source| Error::Lease { op: "store switchover record", source })?;
        let mut seen = self.seen.lock().expect("seen poisoned");
        self.note_switchover(&mut seen, sw);
        Ok(())
    }

    pub(super) async fn finish_record(&self, current: &LeaseRecord, sw: &SwitchoverRecord) -> Result<(), Error> {
        self.cas(current, sw).await?;
        let took = sw.finished_at.and_then(|f| f.duration_since(sw.requested_at).ok()).unwrap_or(Duration::ZERO);
        let outcome = match sw.state {
            SwitchoverState::Succeeded => "succeeded",
            SwitchoverState::RolledBack => "rolled_back",
            _ => "failed",
        };
        self.metrics.observe_switchover(self.name(), "planned", outcome, took);
        self.metrics.set_write_gap(self.name(), "planned", sw.write_gap_ms);
        self.audit(
            "switchover.finished",
            sw.epoch_after.or(Some(sw.epoch_before)),
            serde_json::json!({ "switchover": sw.id, "outcome": outcome, "from": sw.from, "to": sw.to,
                "took_ms": took.as_millis() as u64, "write_gap_ms": sw.write_gap_ms, "error": sw.error }),
        )
        .await;
        Ok(())
    }
}
