//! Holder side: keep a granted lease renewed and say "fence now" before it can run out.
//!
//! The deadline is `t_send(last successful renewal) + duration − drift_margin` on the boot-time
//! clock, where `t_send` is read *before* the request leaves. The store's grant gate waits
//! `duration + grant_margin` from when it *applied* that renewal (which is later than `t_send`),
//! so the holder's deadline always comes first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::client::LeaseApi;
use crate::clock::{BootInstant, Clock};
use crate::error::LeaseError;
use crate::types::{LeaseRecord, LeaseRequest};

/// Holder-side timing knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandleConfig {
    /// Lease duration requested on acquire.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Time between renewal attempts.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// Subtracted from the deadline for clock-rate error between holder and store.
    #[serde(with = "humantime_serde")]
    pub drift_margin: Duration,
    /// `FenceNow` fires this long before the deadline, leaving the caller time to fence.
    #[serde(with = "humantime_serde")]
    pub fence_lead: Duration,
    /// Deadline of one renewal call; a renewal that runs out is "unknown" (not success).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
}

impl Default for HandleConfig {
    /// ARCHITECTURE §3 defaults: renew every 2 s, duration 10 s.
    fn default() -> Self {
        HandleConfig {
            duration: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            drift_margin: Duration::from_millis(500),
            fence_lead: Duration::from_secs(2),
            call_timeout: Duration::from_millis(1500),
        }
    }
}

impl HandleConfig {
    pub fn validate(&self) -> Result<(), LeaseError> {
        let c = |k: &str, m: &str| Err(LeaseError::config(k, m));
        if self.renew_interval.is_zero() || self.call_timeout.is_zero() {
            return c("renew_interval", "renew_interval and call_timeout must be greater than zero");
        }
        if self.drift_margin + self.fence_lead + self.renew_interval + self.call_timeout >= self.duration {
            return c(
                "duration",
                "must exceed drift_margin + fence_lead + renew_interval + call_timeout, or one slow renewal fences",
            );
        }
        Ok(())
    }
}

/// What the holder may do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Renewals succeed; the lease is certainly ours until `deadline`.
    Valid { epoch: u64, deadline: BootInstant },
    /// Renewals have not succeeded for a while and the deadline is near (or past): stop accepting
    /// writes now. Returns to `Valid` if a later renewal succeeds with the same epoch.
    FenceNow { epoch: u64, deadline: BootInstant },
    /// The store refused a renewal: another epoch exists. Final.
    Lost { epoch: u64 },
}

/// One renewal the store confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// When the request left (the deadline is counted from here).
    pub sent_at: BootInstant,
    /// Request to confirmed commit.
    pub round_trip: Duration,
}

/// A held lease, renewed in the background until released or dropped.
pub struct LeaseHandle {
    api: Arc<dyn LeaseApi>,
    pair: String,
    region: String,
    epoch: u64,
    cfg: HandleConfig,
    clock: Arc<dyn Clock>,
    status: watch::Receiver<LeaseStatus>,
    renewals: watch::Receiver<Option<Renewal>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

type RenewFuture = Pin<Box<dyn Future<Output = (BootInstant, Duration, Result<LeaseRecord, LeaseError>)> + Send>>;

impl LeaseHandle {
    /// Acquires the lease and starts renewing it. Fails with `Refused` if another region's lease
    /// may still be valid.
    pub async fn acquire(
        api: Arc<dyn LeaseApi>,
        pair: &str,
        region: &str,
        cfg: HandleConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LeaseError> {
        cfg.validate()?;
        let t_send = clock.now();
        let rec = timed(cfg.call_timeout, "acquire", api.acquire(pair, region, cfg.duration)).await?;
        Ok(Self::start(api, pair, region, cfg, clock, t_send, &rec))
    }

    /// Sync-fenced takeover (ARCHITECTURE §5): takes the lease of the holder of `epoch` for
    /// `region`, its recorded synchronous standby, without waiting for it to run out, if the
    /// record's `seq` is still `seq` (the holder wrote nothing since the caller judged it
    /// silent); then renews it like an acquired lease. Refused (`NotSyncStandby`, `NotHolder`,
    /// `ChangedSinceObserved`) with nothing changed otherwise.
    pub async fn claim(
        api: Arc<dyn LeaseApi>,
        pair: &str,
        region: &str,
        (epoch, seq): (u64, u64),
        cfg: HandleConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LeaseError> {
        cfg.validate()?;
        let t_send = clock.now();
        let req = LeaseRequest::Claim { pair: pair.into(), region: region.into(), epoch, seq: Some(seq) };
        let rec = timed(cfg.call_timeout, "claim", api.submit(req)).await?;
        Ok(Self::start(api, pair, region, cfg, clock, t_send, &rec))
    }

    /// Starts renewing a lease just granted as `rec` (the request was sent at `t_send`).
    fn start(
        api: Arc<dyn LeaseApi>,
        pair: &str,
        region: &str,
        cfg: HandleConfig,
        clock: Arc<dyn Clock>,
        t_send: BootInstant,
        rec: &LeaseRecord,
    ) -> Self {
        let deadline = crate::gate::holder_deadline(t_send, rec.duration(), cfg.drift_margin);
        let initial = LeaseStatus::Valid { epoch: rec.epoch, deadline };
        let (tx, status) = watch::channel(initial);
        let (renewed, renewals) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let renewer = Renewer {
            api: api.clone(),
            pair: pair.to_string(),
            region: region.to_string(),
            epoch: rec.epoch,
            cfg: cfg.clone(),
            clock: clock.clone(),
            tx,
            renewed,
            deadline,
        };
        let task = tokio::spawn(renewer.run(stop_rx));
        LeaseHandle {
            api,
            pair: pair.to_string(),
            region: region.to_string(),
            epoch: rec.epoch,
            cfg,
            clock,
            status,
            renewals,
            stop: Some(stop_tx),
            task,
        }
    }

    /// The fencing token to attach to every side effect.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn status(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    /// Until when the lease is certainly held (`None` once lost).
    pub fn deadline(&self) -> Option<BootInstant> {
        match self.status() {
            LeaseStatus::Valid { deadline, .. } | LeaseStatus::FenceNow { deadline, .. } => Some(deadline),
            LeaseStatus::Lost { .. } => None,
        }
    }

    /// True while the holder may act: renewals are current and the fence point is not reached.
    pub fn is_valid(&self) -> bool {
        match self.status() {
            LeaseStatus::Valid { deadline, .. } => {
                deadline.checked_sub(self.cfg.fence_lead).is_some_and(|f| self.clock.now() < f)
            }
            _ => false,
        }
    }

    /// Status changes; `FenceNow` arrives `fence_lead` before the deadline.
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// The last renewal the store confirmed (`None` before the first); changes with each one.
    /// Renewals that failed or ran out are not reported: their latency is unknown.
    pub fn renewals(&self) -> watch::Receiver<Option<Renewal>> {
        self.renewals.clone()
    }

    /// Stops renewing and releases the lease. Fence before calling this: once it returns another
    /// region may be granted immediately.
    pub async fn release(mut self) -> Result<LeaseRecord, LeaseError> {
        self.stop_renewing().await;
        timed(self.cfg.call_timeout, "release", self.api.release(&self.pair, &self.region, self.epoch)).await
    }

    /// Stops renewing without releasing: the lease runs out at its deadline (a crash, in effect).
    pub async fn abandon(mut self) {
        self.stop_renewing().await;
    }

    async fn stop_renewing(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn timed<T>(
    timeout: Duration,
    op: &str,
    fut: impl Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(LeaseError::Unknown { op: op.to_string(), timeout_ms: timeout.as_millis() as u64 }))
}

struct Renewer {
    api: Arc<dyn LeaseApi>,
    pair: String,
    region: String,
    epoch: u64,
    cfg: HandleConfig,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<LeaseStatus>,
    renewed: watch::Sender<Option<Renewal>>,
    deadline: BootInstant,
}

impl Renewer {
    fn fence_point(&self) -> BootInstant {
        self.deadline.checked_sub(self.cfg.fence_lead).unwrap_or(BootInstant(Duration::ZERO))
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        // tokio timers run on CLOCK_MONOTONIC, which stops during suspend: never sleep longer
        // than `tick` before looking at the boot-time clock again.
        let tick = (self.cfg.renew_interval / 4).min(Duration::from_millis(100));
        let mut next_renew = tokio::time::Instant::now() + self.cfg.renew_interval;
        let mut inflight: Option<RenewFuture> = None;
        loop {
            let now = self.clock.now();
            if now >= self.fence_point() && matches!(*self.tx.borrow(), LeaseStatus::Valid { .. }) {
                tracing::warn!(pair = %self.pair, epoch = self.epoch, "lease renewal failing: fence now");
                self.tx.send_replace(LeaseStatus::FenceNow { epoch: self.epoch, deadline: self.deadline });
            }
            let wake = self.fence_point().saturating_duration_since(now).min(tick).max(Duration::from_millis(1));
            tokio::select! {
                _ = &mut stop => return,
                (t_send, round_trip, res) = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    if res.is_ok() {
                        self.renewed.send_replace(Some(Renewal { sent_at: t_send, round_trip }));
                    }
                    if !self.on_renewal(t_send, res) {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_renew), if inflight.is_none() => {
                    next_renew = tokio::time::Instant::now() + self.cfg.renew_interval;
                    let (api, pair, region, epoch) = (self.api.clone(), self.pair.clone(), self.region.clone(), self.epoch);
                    let (clock, timeout) = (self.clock.clone(), self.cfg.call_timeout);
                    inflight = Some(Box::pin(async move {
                        let (t_send, started) = (clock.now(), std::time::Instant::now());
                        let res = timed(timeout, "renew", api.renew(&pair, &region, epoch)).await;
                        (t_send, started.elapsed(), res)
                    }));
                }
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Returns false when the lease is lost for good.
    fn on_renewal(&mut self, t_send: BootInstant, res: Result<LeaseRecord, LeaseError>) -> bool {
        match res {
            Ok(rec) => {
                let deadline = crate::gate::holder_deadline(t_send, rec.duration(), self.cfg.drift_margin);
                self.deadline = self.deadline.max(deadline);
                if self.clock.now() < self.fence_point() {
                    self.tx.send_replace(LeaseStatus::Valid { epoch: self.epoch, deadline: self.deadline });
                }
                true
            }
            Err(LeaseError::Refused { current, .. }) => {
                tracing::warn!(pair = %self.pair, epoch = self.epoch, now_epoch = current.epoch, holder = ?current.holder, "lease lost");
                self.tx.send_replace(LeaseStatus::Lost { epoch: self.epoch });
                false
            }
            Err(e) => {
                // Unknown or not delivered: the deadline stays where the last sure renewal put it.
                tracing::warn!(pair = %self.pair, epoch = self.epoch, error = %e, kind = e.metric_label(), "lease renewal did not succeed");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::boot_clock;
    use crate::types::LeaseRequest;

    /// A store that grants and renews everything.
    struct AlwaysYes;

    #[async_trait::async_trait]
    impl LeaseApi for AlwaysYes {
        async fn submit(&self, _req: LeaseRequest) -> Result<LeaseRecord, LeaseError> {
            Ok(LeaseRecord {
                pair: "p".into(),
                holder: Some("a".into()),
                epoch: 1,
                duration_ms: 1200,
                ..Default::default()
            })
        }
        async fn read(&self, _pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
            Ok(None)
        }
    }

    #[tokio::test]
    async fn confirmed_renewals_are_reported_with_their_round_trip() {
        let cfg = HandleConfig {
            duration: Duration::from_millis(1200),
            renew_interval: Duration::from_millis(50),
            drift_margin: Duration::from_millis(100),
            fence_lead: Duration::from_millis(300),
            call_timeout: Duration::from_millis(250),
        };
        let before = boot_clock().now();
        let handle = LeaseHandle::acquire(Arc::new(AlwaysYes), "p", "a", cfg, boot_clock()).await.unwrap();
        let mut renewals = handle.renewals();
        assert_eq!(*renewals.borrow(), None, "the acquire is not a renewal");
        let renewal = tokio::time::timeout(Duration::from_secs(5), renewals.wait_for(Option::is_some))
            .await
            .expect("a renewal within 5 s")
            .unwrap()
            .expect("some");
        assert!(renewal.sent_at >= before, "{renewal:?}");
        assert!(renewal.round_trip < Duration::from_millis(250), "{renewal:?}");
        handle.abandon().await;
    }
}
