//! The standby role: another region holds the lease. Stay (or become again) a standby of the
//! holder; take over when the holder's lease ran out and this region is the recorded,
//! caught-up synchronous standby (automatic failover, recorded like a switchover).

use std::time::{Duration, Instant, SystemTime};

use cnpg_pair::PairDriver;
use lease::{LeaseError, LeaseHandle, LeaseRecord, RefusalReason};

use super::decide::{FailoverCheck, Follow, Observation};
use super::pair::PairCtl;
use crate::record::{Step, StepState, SwitchoverKind, SwitchoverRecord, SwitchoverState};
use crate::{Error, error_chain, switchover};

impl PairCtl {
    pub(super) async fn follow(&self, obs: &Observation, follow: Follow) -> Result<(), Error> {
        if let Some(handle) = self.holder.lock().await.take() {
            handle.abandon().await;
        }
        match follow {
            Follow::FenceRoguePrimary => {
                // Another region holds the lease: this server must not take writes.
                tracing::error!(pair = %self.name(), holder = ?obs.record.holder, "primary without the lease: fencing");
                self.metrics.count_fence(self.name(), "not_holder");
                self.stop_local("fence a primary without the lease").await?;
                self.audit("lease.fenced", Some(obs.record.epoch), serde_json::json!({ "reason": "not_holder" })).await;
                Ok(())
            }
            Follow::Rejoin => self.rejoin().await,
            Follow::WaitForPrimary => Ok(()),
            Follow::Standby(check) => self.fail_over(&obs.record, check, None).await,
            Follow::Claim { silent_for, seq } => self.claim(&obs.record, silent_for, seq).await,
        }
    }

    pub(super) async fn rejoin(&self) -> Result<(), Error> {
        tracing::info!(pair = %self.name(), upstream = %self.peer, "rejoining as standby");
        let rejoined = self
            .driver
            .rejoin_as_standby(&self.peer_upstream)
            .await
            .map_err(|source| Error::Driver { what: "rejoin", source })?;
        self.audit(
            "rejoined",
            None,
            serde_json::json!({ "upstream": self.peer, "method": format!("{:?}", rejoined.method) }),
        )
        .await;
        Ok(())
    }

    /// Takes the lease over if the check says so (the store's own gate still refuses while the
    /// holder may be valid), promotes and commits DNS, and records it as a failover. With
    /// `superseding`, the planned switchover it replaces is marked failed.
    pub(super) async fn fail_over(
        &self,
        record: &LeaseRecord,
        check: FailoverCheck,
        superseding: Option<&SwitchoverRecord>,
    ) -> Result<(), Error> {
        self.metrics.set_eligible(self.name(), &self.region, check.eligible.is_ok());
        let Ok(silent_for) = check.verdict else { return Ok(()) };
        let handle = match LeaseHandle::acquire(
            self.lease.clone(),
            self.name(),
            &self.region,
            self.handle_cfg.clone(),
            lease::boot_clock(),
        )
        .await
        {
            Ok(handle) => handle,
            Err(LeaseError::Refused { reason: RefusalReason::HeldByOther, .. }) => return Ok(()),
            Err(source) => return Err(Error::Lease { op: "failover acquire", source }),
        };
        let reason = match superseding {
            Some(stale) => format!("lease expired during switchover {}", stale.id),
            None => "lease expired".to_string(),
        };
        self.took_over(handle, record, silent_for, superseding, Taken { why: "failover", reason }).await
    }

    /// After the lease was taken (acquired on expiry, or claimed): watch it, promote, commit
    /// DNS, record the failover.
    pub(super) async fn took_over(
        &self,
        handle: LeaseHandle,
        record: &LeaseRecord,
        silent_for: Duration,
        superseding: Option<&SwitchoverRecord>,
        taken: Taken,
    ) -> Result<(), Error> {
        let Taken { why, reason } = taken;
        let epoch = handle.epoch();
        self.watch(&handle).await;
        *self.holder.lock().await = Some(handle);
        self.seen.lock().expect("seen poisoned").last_failover = Some(Instant::now());
        let started = Instant::now();
        let from = record.holder.clone().unwrap_or_default();
        tracing::warn!(pair = %self.name(), %from, epoch, why, "automatic failover: lease taken over");
        self.audit(
            "lease.acquired",
            Some(epoch),
            serde_json::json!({ "why": why, "previous_epoch": record.epoch, "from": from }),
        )
        .await;
        if let Some(stale) = superseding {
            self.supersede(stale, epoch).await;
        }
        let mut sw = failover_record(self.name(), &from, &self.region, &reason, record.epoch, epoch);
        let result = async {
            let t = Instant::now();
            self.promote_local(epoch).await?;
            mark(&mut sw, Step::Promote, StepState::Done, None).duration_ms = Some(t.elapsed().as_millis() as u64);
            sw.write_gap_ms = Some(silent_for.as_millis() as u64 + started.elapsed().as_millis() as u64);
            let t = Instant::now();
            self.commit_dns(epoch).await?;
            mark(&mut sw, Step::Dns, StepState::Done, None).duration_ms = Some(t.elapsed().as_millis() as u64);
            Ok::<(), Error>(())
        }
        .await;
        mark(&mut sw, Step::Rejoin, StepState::Skipped, Some("the old primary rejoins by itself when it returns"));
        mark(&mut sw, Step::RestoreSync, StepState::Skipped, Some("the holder makes it synchronous once it streams"));
        sw.finished_at = Some(SystemTime::now());
        let outcome = match &result {
            Ok(()) => {
                sw.state = SwitchoverState::Succeeded;
                "succeeded"
            }
            Err(e) => {
                sw.state = SwitchoverState::Failed;
                sw.error = Some(error_chain(e));
                "failed"
            }
        };
        self.metrics.observe_switchover(self.name(), "failover", outcome, started.elapsed());
        self.metrics.set_write_gap(self.name(), "failover", sw.write_gap_ms);
        self.audit("failover.finished", Some(epoch), serde_json::to_value(&sw).unwrap_or_default()).await;
        self.store_record_best_effort(&sw).await;
        result
    }

    /// Marks a planned switchover failed: the old holder's lease expired before the lease moved.
    async fn supersede(&self, stale: &SwitchoverRecord, epoch: u64) {
        let why = "superseded by automatic failover: the old holder's lease expired before the lease moved";
        tracing::warn!(pair = %self.name(), id = %stale.id, "{why}");
        let mut stale = stale.clone();
        stale.state = SwitchoverState::Failed;
        stale.error = Some(why.to_string());
        stale.finished_at = Some(SystemTime::now());
        self.note_switchover(&mut self.seen.lock().expect("seen poisoned"), &stale);
        self.metrics.observe_switchover(self.name(), "planned", "failed", Duration::ZERO);
        self.audit(
            "switchover.superseded",
            Some(epoch),
            serde_json::json!({ "switchover": stale.id, "from": stale.from, "to": stale.to, "reason": why }),
        )
        .await;
    }

    /// Publishes a finished record in the store (so the other region's history shows it).
    async fn store_record_best_effort(&self, sw: &SwitchoverRecord) {
        if let Ok(Some(record)) = self.lease.read(self.name()).await {
            let value = serde_json::to_value(sw).ok();
            if let Err(e) = self.lease.cas_switchover(self.name(), record.epoch, record.switchover_version, value).await
            {
                tracing::warn!(pair = %self.name(), "switchover record not stored: {e}");
            }
        }
        let mut seen = self.seen.lock().expect("seen poisoned");
        self.note_switchover(&mut seen, sw);
    }
}

/// How the lease was taken: `why` for the audit record, `reason` for the failover record.
pub(super) struct Taken {
    pub why: &'static str,
    pub reason: String,
}

/// A running failover record: the steps before promotion are skipped or done by the takeover.
fn failover_record(pair: &str, from: &str, to: &str, reason: &str, before: u64, after: u64) -> SwitchoverRecord {
    let mut sw = switchover::new_record(pair, from, to, reason, "continuum", before);
    sw.kind = SwitchoverKind::Failover;
    sw.state = SwitchoverState::Running;
    mark(&mut sw, Step::Intent, StepState::Skipped, Some("automatic failover"));
    mark(&mut sw, Step::Fence, StepState::Skipped, Some("the old holder's lease expired; it fences itself"));
    mark(&mut sw, Step::Drain, StepState::Skipped, Some("automatic failover: the route is not touched"));
    mark(&mut sw, Step::CatchUp, StepState::Skipped, Some("eligibility checked: recorded synchronous standby"));
    mark(&mut sw, Step::MoveLease, StepState::Done, None);
    sw.epoch_after = Some(after);
    sw
}

fn mark<'a>(
    sw: &'a mut SwitchoverRecord,
    step: Step,
    state: StepState,
    detail: Option<&str>,
) -> &'a mut crate::record::StepRecord {
    let entry = sw.step_mut(step);
    entry.state = state;
    entry.detail = detail.map(str::to_string);
    entry.started_at = Some(SystemTime::now());
    entry
}
