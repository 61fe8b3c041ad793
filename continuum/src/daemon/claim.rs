//! Sync-fenced takeover (`takeover = "sync-fenced"`, ARCHITECTURE §5, docs/takeover.md): the
//! holder went silent and its WAL stream to this server is gone, so this region claims the lease
//! without waiting for it to run out. The order is what makes it safe:
//! 1. stop the WAL receiver: from here on this server confirms nothing the old primary sends,
//!    so under `remote_apply` with this region as its only synchronous standby the old primary
//!    cannot complete another commit;
//! 2. claim (epoch N+1) by compare-and-swap: refused unless this region is the recorded
//!    `sync_standby` and the holder wrote nothing since it was judged silent. Once committed the
//!    old holder's `SetSyncStandby` fails, so it can never relax synchronous replication and
//!    commit alone; it fences on its next renewal;
//! 3. promote and commit DNS, as any failover.
//!
//! A refused or failed claim points the WAL receiver at the holder again.

use std::time::Duration;

use lease::{LeaseError, LeaseHandle, LeaseRecord};

use super::pair::PairCtl;
use super::standby::Taken;
use crate::Error;

impl PairCtl {
    pub(super) async fn claim(&self, record: &LeaseRecord, silent_for: Duration, seq: u64) -> Result<(), Error> {
        self.metrics.set_eligible(self.name(), &self.region, true);
        let holder = record.holder.as_deref().unwrap_or_default();
        tracing::warn!(
            pair = %self.name(), %holder, epoch = record.epoch, silent_ms = silent_for.as_millis() as u64,
            "holder silent and its WAL stream gone: claiming the lease (sync-fenced)"
        );
        if let Err(source) = self.driver.stop_wal_receiver().await {
            self.resume_streaming().await;
            return Err(Error::Driver { what: "stop the WAL receiver before a claim", source });
        }
        let claimed = LeaseHandle::claim(
            self.lease.clone(),
            self.name(),
            &self.region,
            (record.epoch, seq),
            self.handle_cfg.clone(),
            lease::boot_clock(),
        )
        .await;
        let handle = match claimed {
            Ok(handle) => handle,
            Err(e) => {
                // Refused: nothing changed. Unknown: if it did commit, the next round finds this
                // region holding the lease with a standby and finishes the promotion; streaming
                // meanwhile is safe (whatever is applied here before promotion is kept).
                self.resume_streaming().await;
                return match e {
                    LeaseError::Refused { reason, .. } => {
                        tracing::info!(pair = %self.name(), ?reason, "claim refused; still following the holder");
                        self.audit(
                            "lease.claim_refused",
                            Some(record.epoch),
                            serde_json::json!({ "holder": holder, "reason": format!("{reason:?}") }),
                        )
                        .await;
                        Ok(())
                    }
                    source => Err(Error::Lease { op: "claim", source }),
                };
            }
        };
        let reason = format!("sync-fenced claim: holder silent for {} ms, WAL stream gone", silent_for.as_millis());
        self.took_over(handle, record, silent_for, None, Taken { why: "claim", reason }).await
    }

    async fn resume_streaming(&self) {
        if let Err(e) = self.driver.resume_wal_receiver(&self.peer_upstream).await {
            tracing::warn!(pair = %self.name(), error = %e, "WAL receiver not pointed at the holder again");
        }
    }
}
