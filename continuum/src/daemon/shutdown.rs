//! A graceful stop (SIGTERM, SIGINT): before the daemon exits, each pair whose lease this region
//! holds either hands it over by a planned switchover or fences its server
//! (`pairs[].on_shutdown`), so the server does not outlive the lease. A daemon killed outright
//! leaves that to the fence watchdog ([`super::watchdog`]).

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Daemon;
use super::pair::PairCtl;
use crate::Error;
use crate::config::OnShutdown;
use crate::record::{Step, StepState, SwitchoverState};

/// How often the hand-over's progress is looked at.
const POLL: Duration = Duration::from_millis(50);

impl Daemon {
    /// Runs every pair's `on_shutdown` concurrently, while the loops and the API still run;
    /// each pair's loop is stopped when its part is over.
    pub async fn prepare_shutdown(&self) {
        let loops = std::mem::take(&mut *self.pair_loops.lock().expect("pair loops poisoned"));
        let work = self.pairs.iter().map(|(name, ctl)| {
            let pair_loop = loops.get(name).map(|(stop, task)| (stop.clone(), task.abort_handle()));
            async move {
                ctl.on_shutdown(pair_loop).await;
            }
        });
        futures::future::join_all(work).await;
    }
}

impl PairCtl {
    async fn on_shutdown(&self, pair_loop: Option<(tokio_util::sync::CancellationToken, tokio::task::AbortHandle)>) {
        let stop_loop = async || {
            if let Some((stop, task)) = &pair_loop {
                stop.cancel();
                // The loop returns at its next await point; until it has, it may still act.
                while !task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        if self.holder.lock().await.is_none() {
            stop_loop().await;
            return;
        }
        if self.cfg.on_shutdown == OnShutdown::Switchover {
            match self.hand_over().await {
                Ok(true) => {
                    stop_loop().await;
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(pair = %self.name(), "shutdown hand-over: {e}; fencing instead"),
            }
        }
        // The loop first: it must not start the server again (a holder restarts a stopped one).
        stop_loop().await;
        self.fence_for_shutdown().await;
    }

    /// A planned switchover to the peer, followed until this region's part is done (the lease
    /// moved and the old primary rejoined as a standby). `Ok(false)`: not possible now, rolled
    /// back, or not done within `shutdown_timeout`: fence instead.
    async fn hand_over(&self) -> Result<bool, Error> {
        let reason = "the daemon is stopping (on_shutdown = switchover)";
        let id = match self.start_switchover(&self.peer, reason, "continuum").await {
            Ok(id) => id,
            Err(e @ (Error::Ineligible { .. } | Error::Conflict { .. })) => {
                tracing::warn!(pair = %self.name(), "shutdown: no switchover to {}: {e}; fencing", self.peer);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        tracing::info!(pair = %self.name(), %id, to = %self.peer, "shutdown: handing the lease over");
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        loop {
            if let Some(done) = self.handed_over(id) {
                return Ok(done);
            }
            if Instant::now() >= deadline {
                tracing::warn!(pair = %self.name(), %id, timeout = ?self.cfg.shutdown_timeout, "shutdown: the hand-over did not finish; fencing");
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `Some(true)` once this region's part of switchover `id` is over, `Some(false)` if it
    /// ended otherwise, `None` while it runs.
    fn handed_over(&self, id: Uuid) -> Option<bool> {
        let seen = self.seen.lock().expect("seen poisoned");
        let sw = seen.history.iter().find(|r| r.id == id)?;
        match sw.state {
            SwitchoverState::Succeeded => Some(true),
            SwitchoverState::RolledBack | SwitchoverState::Failed => Some(false),
            _ if sw.step(Step::Rejoin).is_some_and(|s| s.state == StepState::Done) => Some(true),
            _ => None,
        }
    }

    /// Stops the server for good (retried until confirmed), then tells the watchdog: nothing is
    /// left to guard. The lease is abandoned afterwards and runs out; the peer fails over.
    async fn fence_for_shutdown(&self) {
        let epoch = self.holder.lock().await.as_ref().map(lease::LeaseHandle::epoch);
        tracing::warn!(pair = %self.name(), ?epoch, "shutdown: fencing PostgreSQL (on_shutdown = fence or no hand-over)");
        let started = Instant::now();
        let attempts = super::process::fence_until_stopped(&self.server, self.fence_timeout, self.name()).await;
        self.metrics.count_fence(self.name(), "shutdown");
        self.audit(
            "lease.fenced",
            epoch,
            serde_json::json!({ "reason": "shutdown", "took_ms": started.elapsed().as_millis() as u64,
                "attempts": attempts }),
        )
        .await;
        // Renewals end first, so that none arms the watchdog again.
        self.abandon_lease().await;
        self.disarm_watchdog(epoch).await;
    }
}
