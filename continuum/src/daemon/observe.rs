//! Observation: one [`Observation`] per round (the lease record, the local and the peer's
//! server), what the status and history keep of it, and the [`Timers`] the decision reads.

use std::time::{Duration, Instant, SystemTime};

use cnpg_pair::{Observed, PairDriver};
use lease::LeaseRecord;

use super::decide::{Limits, Observation, Timers};
use super::pair::{PairCtl, Seen};
use crate::api::Event;
use crate::record::{self, StepState, SwitchoverRecord};

/// History entries kept per pair.
const HISTORY_LEN: usize = 100;
/// Longest a round waits for the peer's observation before it goes on with the last one.
const PEER_WAIT: Duration = Duration::from_millis(200);

impl PairCtl {
    /// Reads the lease record and (unless a switchover is in flight: then only the record
    /// matters, and fast rounds must stay cheap) observes the local and the peer's server.
    /// `None` when the record could not be read (kept for status and readiness).
    pub(super) async fn observe(&self, switchover_in_flight: bool) -> Option<Observation> {
        let servers = async {
            if switchover_in_flight { None } else { Some(tokio::join!(self.driver.observe(), self.observe_peer())) }
        };
        let (servers, record) = tokio::join!(servers, self.lease.read(self.name()));
        let mut seen = self.seen.lock().expect("seen poisoned");
        if let Some((local, peer)) = servers {
            if let Some(peer) = peer {
                if matches!(peer, Observed::Primary(_)) {
                    seen.peer_as_primary = Some(peer.clone());
                }
                seen.peer = Some(peer);
            }
            seen.local = Some(local);
        }
        let record = match record {
            Ok(record) => record.unwrap_or_else(|| LeaseRecord { pair: self.name().to_string(), ..Default::default() }),
            Err(e) => {
                seen.record_error = Some(e.to_string());
                return None;
            }
        };
        let previous = seen.record.as_ref().map(|r| (r.holder.clone(), r.epoch));
        if previous != Some((record.holder.clone(), record.epoch)) {
            self.metrics.observe_lease(self.name(), record.holder.as_deref(), record.epoch, None);
            if previous.is_some() || record.epoch > 0 {
                self.emit(Event::Lease {
                    pair: self.name().to_string(),
                    holder: record.holder.clone(),
                    epoch: record.epoch,
                });
            }
        }
        if seen.seq_changed.is_none_or(|(seq, _)| seq != record.seq) {
            seen.seq_changed = Some((record.seq, Instant::now()));
        }
        let switchover = record::stored(&record);
        let running = switchover.as_ref().ok().and_then(Option::as_ref).filter(|sw| !sw.state.is_finished());
        self.metrics.observe_switchover_running(self.name(), running.map(|sw| sw.requested_at));
        match &switchover {
            Ok(Some(sw)) => self.note_switchover(&mut seen, sw),
            Ok(None) => {}
            Err(reason) if seen.switchover_error.as_ref() != Some(reason) => {
                tracing::error!(pair = %self.name(), "{reason}: no switchover or failover starts until it is replaced");
            }
            Err(_) => {}
        }
        seen.switchover_error = switchover.as_ref().err().cloned();
        seen.record = Some(record.clone());
        seen.record_error = None;
        Some(Observation {
            region: self.region.clone(),
            peer: self.peer.clone(),
            record,
            switchover,
            local: seen.local.clone(),
            peer_server: seen.peer.clone(),
            peer_as_primary: seen.peer_as_primary.clone(),
        })
    }

    /// The peer's server, if its observation finishes within [`PEER_WAIT`]; `None` (keep the
    /// last one) while it is still running. A frozen or cut-off peer answers nothing until the
    /// observation's own deadline (`peer_observe_timeout`) turns it into `Unreachable`; waiting
    /// for that in every round would slow the loop to one round per deadline, and with it the
    /// takeover. The running observation is kept for the next round, never started twice.
    async fn observe_peer(&self) -> Option<Observed> {
        let mut probe = self.peer_probe.lock().await;
        let mut running = probe.take().unwrap_or_else(|| {
            let observer = self.peer_observer.clone();
            tokio::spawn(async move { observer.observe().await })
        });
        match tokio::time::timeout(PEER_WAIT, &mut running).await {
            Ok(Ok(observed)) => Some(observed),
            Ok(Err(e)) => {
                tracing::warn!(pair = %self.name(), "peer observation task failed: {e}");
                None
            }
            Err(_) => {
                *probe = Some(running);
                None
            }
        }
    }

    /// Keeps history and emits events for a switchover record as seen in the store.
    pub(super) fn note_switchover(&self, seen: &mut Seen, sw: &SwitchoverRecord) {
        let before = seen.history.iter().find(|r| r.id == sw.id).cloned();
        if before.as_ref() == Some(sw) {
            return;
        }
        for step in &sw.steps {
            let old = before.as_ref().and_then(|b| b.step(step.step)).map(|s| s.state);
            if old != Some(step.state) && step.state != StepState::Pending {
                self.emit(Event::Step {
                    switchover: sw.id,
                    pair: sw.pair.clone(),
                    step: step.step,
                    state: step.state,
                    duration_ms: step.duration_ms,
                });
            }
        }
        if before.as_ref().map(|b| b.state) != Some(sw.state) {
            self.emit(Event::Switchover { id: sw.id, pair: sw.pair.clone(), state: sw.state });
        }
        seen.history.retain(|r| r.id != sw.id);
        seen.history.push(sw.clone());
        if seen.history.len() > HISTORY_LEN {
            seen.history.remove(0);
        }
    }

    /// The clocks as of now, for [`super::decide()`].
    pub(super) async fn timers(&self) -> Timers {
        let have_handle = self.holder.lock().await.is_some();
        let seen = self.seen.lock().expect("seen poisoned");
        let since = |at: Option<Instant>| at.map_or(std::time::Duration::ZERO, |at| at.elapsed());
        Timers {
            now: SystemTime::now(),
            record_silent_for: since(seen.seq_changed.map(|(_, at)| at)),
            local_down_for: since(seen.local_down_since),
            standby_streaming_for: since(seen.standby_streaming_since),
            standby_missing_for: since(seen.standby_missing_since),
            since_last_failover: seen.last_failover.map(|at| at.elapsed()),
            waiting_on_old: seen.waiting_on_old.map(|(id, step, at)| (id, step, at.elapsed())),
            retry_in: seen.retry.as_ref().map(|r| (r.id, r.step, r.due.saturating_duration_since(Instant::now()))),
            gave_up_epoch: seen.gave_up_epoch,
            have_handle,
            limits: Limits {
                lease_duration: self.handle_cfg.duration,
                durability: self.cfg.durability,
                auto_failover: self.cfg.auto_failover,
                failover_debounce: self.cfg.failover_debounce,
                primary_down_timeout: self.cfg.primary_down_timeout,
                switchover_rejoin_timeout: self.cfg.switchover_rejoin_timeout,
                step_timeout: self.step_timeout,
                eligibility: self.policy(),
                takeover: self.cfg.takeover,
                suspect_window: self.suspect_window,
                wal_stream_timeout: self.wal_stream_timeout,
            },
        }
    }
}
