//! The holder role: take and keep the lease (the handle renews it), fence the local server
//! *before* the lease deadline when renewals fail, keep the peer recorded as synchronous
//! standby, finish an interrupted promotion, and give the lease up when the local server stays
//! down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cnpg_pair::{Durability as PgDurability, Observed, PairDriver, PromoteRequest, StoreWriteError, SyncRecordStore};
use lease::{LeaseApi, LeaseHandle, LeaseRecord, LeaseStatus};

use super::decide::{Duty, Hold, Observation, SyncChange};
use super::pair::PairCtl;
use crate::Error;
use crate::audit::AuditEntry;
use crate::config::Durability;

/// The lease client as the driver's sync-record store, writing with the holder's epoch.
pub(super) struct SyncStore {
    lease: Arc<dyn LeaseApi>,
    pair: String,
    region: String,
    epoch: u64,
}

#[async_trait]
impl SyncRecordStore for SyncStore {
    async fn record_sync_standby(&self, standby: Option<&str>) -> Result<(), StoreWriteError> {
        match self.lease.set_sync_standby(&self.pair, &self.region, self.epoch, standby).await {
            Ok(_) => Ok(()),
            Err(e) if e.certainly_not_applied() => Err(StoreWriteError::Rejected(e.to_string())),
            Err(e) => Err(StoreWriteError::Unknown(e.to_string())),
        }
    }
}

impl PairCtl {
    pub(super) fn sync_store(&self, epoch: u64) -> SyncStore {
        SyncStore { lease: self.lease.clone(), pair: self.name().to_string(), region: self.region.clone(), epoch }
    }

    /// Nobody holds the lease and the local server is the primary: take the lease, record the
    /// epoch on the server, commit DNS.
    pub(super) async fn bootstrap(&self, record: &LeaseRecord) -> Result<(), Error> {
        let handle = self.acquire(record, "bootstrap").await?;
        let epoch = handle.epoch();
        *self.holder.lock().await = Some(handle);
        self.require_watchdog().await?;
        self.driver
            .promote(&PromoteRequest { epoch, handover_token: None })
            .await
            .map_err(|source| Error::Driver { what: "record the epoch", source })?;
        self.commit_dns(epoch).await
    }

    /// Acquires (or, as the holder, re-acquires) the lease and starts the fence watcher.
    pub(super) async fn acquire(&self, record: &LeaseRecord, why: &str) -> Result<LeaseHandle, Error> {
        let handle = LeaseHandle::acquire(
            self.lease.clone(),
            self.name(),
            &self.region,
            self.handle_cfg.clone(),
            lease::boot_clock(),
        )
        .await
        .map_err(|source| Error::Lease { op: "acquire", source })?;
        let epoch = handle.epoch();
        if epoch != record.epoch {
            tracing::info!(pair = %self.name(), epoch, why, "lease granted");
            self.audit(
                "lease.acquired",
                Some(epoch),
                serde_json::json!({ "why": why, "previous_epoch": record.epoch }),
            )
            .await;
        }
        self.metrics.observe_lease(self.name(), Some(&self.region), epoch, Some(self.handle_cfg.duration));
        self.watch(&handle).await;
        Ok(handle)
    }

    /// The epoch of the lease this daemon holds, acquiring a handle first if it has none (after
    /// a restart, or as the target of a switchover). A holder whose re-acquire comes back with
    /// a new epoch had let its lease run out: refused.
    pub(super) async fn ensure_handle(&self, record: &LeaseRecord, why: &str) -> Result<u64, Error> {
        let mut holder = self.holder.lock().await;
        if let Some(handle) = holder.as_ref() {
            return Ok(handle.epoch());
        }
        let handle = self.acquire(record, why).await?;
        if record.holder.as_deref() == Some(self.region.as_str()) && handle.epoch() != record.epoch {
            handle.abandon().await;
            return Err(Error::Conflict { reason: format!("{why}: the lease was granted anew; not acting on it") });
        }
        let epoch = handle.epoch();
        *holder = Some(handle);
        Ok(epoch)
    }

    /// Starts the tasks that follow a new handle: the fence watcher, the fence watchdog's feed
    /// (armed before this returns) and the renewal recorder.
    pub(super) async fn watch(&self, handle: &LeaseHandle) {
        self.watch_fence(handle);
        self.feed_watchdog(handle).await;
        let recorder = self.metrics.record_renewals(self.name(), handle.renewals());
        self.detached.spawn(async move {
            let _ = recorder.await;
        });
    }

    /// Fences the local server the moment the handle says `FenceNow` or `Lost`: before the
    /// deadline, so no write is accepted once another region may hold the lease (invariant 3).
    /// The stop gets `fence_timeout` (below the fence lead) before the postmaster's process
    /// group is killed, and is retried until the server is confirmed stopped (the watchdog
    /// fences at the same instant, should this process be hung or gone).
    fn watch_fence(&self, handle: &LeaseHandle) {
        let mut status = handle.watch();
        let fenced = self.lease_fenced.clone();
        let (server, deadline) = (self.server.clone(), self.fence_timeout);
        let metrics = self.metrics.clone();
        let pair = self.name().to_string();
        let audit = self.audit.clone();
        self.detached.spawn(async move {
            loop {
                let current = *status.borrow_and_update();
                if let LeaseStatus::FenceNow { epoch, .. } | LeaseStatus::Lost { epoch } = current {
                    let reason =
                        if matches!(current, LeaseStatus::Lost { .. }) { "lease_lost" } else { "renewal_failing" };
                    tracing::error!(pair, epoch, reason, "fencing PostgreSQL before the lease deadline");
                    fenced.store(true, Ordering::SeqCst);
                    let started = Instant::now();
                    let attempts = super::process::fence_until_stopped(&server, deadline, &pair).await;
                    metrics.count_fence(&pair, reason);
                    let mut entry = AuditEntry::new(
                        "lease.fenced",
                        serde_json::json!({ "reason": reason, "took_ms": started.elapsed().as_millis() as u64,
                            "attempts": attempts }),
                    );
                    entry.pair = Some(pair.clone());
                    entry.epoch = Some(epoch);
                    entry.actor = Some("continuum".into());
                    let _ = audit.append(entry).await;
                    return;
                }
                if status.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// This region holds the lease: renew first if needed, then the duty [`super::decide()`] named.
    pub(super) async fn hold(&self, obs: &Observation, hold: Hold) -> Result<(), Error> {
        let record = &obs.record;
        if hold.duty == Duty::LetExpire {
            // Waiting for the lease to run out and the standby's region to take over.
            return Ok(());
        }
        {
            let mut seen = self.seen.lock().expect("seen poisoned");
            if hold.duty != Duty::Restart && !matches!(hold.duty, Duty::GiveUp { .. }) {
                seen.local_down_since = None;
            }
            if hold.resumed {
                // Someone brought the server back before anyone took over: serve again, under
                // a lease renewed now (refused below if it was granted anew meanwhile).
                tracing::warn!(pair = %self.name(), epoch = record.epoch, "server back before a takeover");
                seen.gave_up_epoch = None;
            }
        }
        let mut holder = self.holder.lock().await;
        // `hold.reacquire` said so when the round began; the lock decides.
        if holder.is_none() {
            // A restart, or the lease was fenced: renew as the holder (same epoch) if we still are.
            let handle = self.acquire(record, "restart").await?;
            if handle.epoch() != record.epoch {
                // Granted anew after our own lease ran out: the data may be stale; let it expire.
                tracing::error!(pair = %self.name(), "re-acquire gave a new epoch; abandoning");
                handle.abandon().await;
                return Ok(());
            }
            *holder = Some(handle);
        }
        let handle = holder.as_ref().expect("set");
        let epoch = handle.epoch();
        if let Some(deadline) = handle.deadline() {
            let remaining = deadline.saturating_duration_since(lease::boot_clock().now());
            self.metrics.observe_lease(self.name(), Some(&self.region), epoch, Some(remaining));
        }
        drop(holder);
        match hold.duty {
            Duty::LetExpire => Ok(()),
            Duty::Sync(change) => {
                self.keep_sync(obs, epoch, change).await;
                Ok(())
            }
            Duty::FinishPromotion => {
                // A failover (or a promote step) interrupted by a crash. Finish it: we hold the
                // lease, so promoting is ours to do.
                self.promote_local(epoch).await?;
                self.commit_dns(epoch).await
            }
            Duty::Restart => {
                self.seen.lock().expect("seen poisoned").local_down_since.get_or_insert_with(Instant::now);
                if !self.driver.is_running().await.unwrap_or(true) {
                    tracing::warn!(pair = %self.name(), "holder's PostgreSQL is stopped: starting it");
                    self.start_local().await?;
                }
                Ok(())
            }
            Duty::GiveUp { down_for } => self.give_up_lease(epoch, down_for).await,
        }
    }

    /// As the holder with a primary: export replication, then make the peer synchronous or
    /// relax as decided, keeping the clocks the decision reads.
    async fn keep_sync(&self, obs: &Observation, epoch: u64, change: SyncChange) {
        let Some(Observed::Primary(primary)) = &obs.local else { return };
        let row = primary.replica(&self.peer).filter(|r| r.state == "streaming");
        self.metrics.observe_replication(
            self.name(),
            &self.peer,
            row.and_then(|r| r.replay_lsn).map(|l| primary.position.lsn.bytes_after(l)),
            row.and_then(|r| r.replay_lag).map(|d| d.as_secs_f64()),
            row.and_then(|r| r.sync_state) == Some(cnpg_pair::SyncState::Sync),
        );
        {
            let mut seen = self.seen.lock().expect("seen poisoned");
            if row.is_some() {
                seen.standby_missing_since = None;
                seen.standby_streaming_since.get_or_insert_with(Instant::now);
            } else {
                seen.standby_streaming_since = None;
                if self.cfg.durability == Durability::Preferred {
                    seen.standby_missing_since.get_or_insert_with(Instant::now);
                }
            }
        }
        let store = self.sync_store(epoch);
        match change {
            SyncChange::Keep => {}
            SyncChange::Enable => match self.driver.enable_sync(&self.peer, &store).await {
                Ok(()) => {
                    tracing::info!(pair = %self.name(), standby = %self.peer, "synchronous standby recorded");
                    self.audit("sync.enabled", Some(epoch), serde_json::json!({ "standby": self.peer })).await;
                }
                Err(e) => tracing::warn!(pair = %self.name(), "enable sync: {e}"),
            },
            SyncChange::Drop => match self.driver.drop_sync(PgDurability::Preferred, &store).await {
                Ok(()) => {
                    tracing::warn!(pair = %self.name(), "standby gone: synchronous replication relaxed");
                    self.audit("sync.dropped", Some(epoch), serde_json::json!({ "standby": self.peer })).await;
                }
                Err(e) => tracing::warn!(pair = %self.name(), "drop sync: {e}"),
            },
        }
    }

    /// The holder's server stayed unreachable for `primary_down_timeout`: stop it for good (it
    /// may be alive but unreachable, and must not take writes once another region promotes) and
    /// let the lease run out, so the standby's region fails over by the ordinary path (lease
    /// expiry, eligibility, debounce). Keeps the lease if the server cannot be confirmed stopped.
    async fn give_up_lease(&self, epoch: u64, down_for: Duration) -> Result<(), Error> {
        if self.driver.is_running().await.unwrap_or(true) {
            self.stop_local("stop the unreachable server").await?;
        }
        self.seen.lock().expect("seen poisoned").gave_up_epoch = Some(epoch);
        if let Some(handle) = self.holder.lock().await.take() {
            handle.abandon().await;
        }
        tracing::error!(pair = %self.name(), epoch, ?down_for, "PostgreSQL down too long: letting the lease run out");
        self.metrics.count_fence(self.name(), "primary_down");
        self.audit(
            "lease.given_up",
            Some(epoch),
            serde_json::json!({ "reason": "primary_down", "down_for_ms": down_for.as_millis() as u64 }),
        )
        .await;
        Ok(())
    }

    /// Under `preferred`: stop waiting for the (absent) standby before promoting, so the new
    /// primary takes writes at once. Then promote with the epoch.
    pub(super) async fn promote_local(&self, epoch: u64) -> Result<(), Error> {
        self.require_watchdog().await?;
        if self.cfg.durability == Durability::Preferred {
            let store = self.sync_store(epoch);
            self.driver
                .drop_sync(PgDurability::Preferred, &store)
                .await
                .map_err(|source| Error::Driver { what: "drop sync before promote", source })?;
        }
        self.driver
            .promote(&PromoteRequest { epoch, handover_token: None })
            .await
            .map_err(|source| Error::Driver { what: "promote", source })?;
        Ok(())
    }
}
