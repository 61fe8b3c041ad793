//! The daemon's Prometheus metrics (OpenMetrics text at `GET /metrics`).
//!
//! A value the daemon could not measure is exported as NaN, never as 0: "unknown" is not "no
//! lag" (previous-system lesson: lag read as 0 while the standby was 16 s behind).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::Error;
use crate::record::Step;

/// The `Content-Type` of the metrics answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    pair: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairRegionLabels {
    pair: String,
    region: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pair: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchoverLabels {
    pair: String,
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FenceLabels {
    pair: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s: renewals, PDM commits and single steps.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn switchover_histogram() -> Histogram {
    Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0])
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

struct Inner {
    registry: Registry,
    lease_holder: Family<PairRegionLabels, Gauge>,
    lease_epoch: Family<PairLabels, Gauge>,
    lease_remaining: Family<PairLabels, FloatGauge>,
    lease_renew: HistogramFamily<PairLabels>,
    lag_bytes: Family<PairRegionLabels, FloatGauge>,
    lag_seconds: Family<PairRegionLabels, FloatGauge>,
    sync: Family<PairRegionLabels, Gauge>,
    eligible: Family<PairRegionLabels, Gauge>,
    switchovers: Family<SwitchoverLabels, Counter>,
    switchover_duration: HistogramFamily<SwitchoverLabels>,
    switchover_started: Family<PairLabels, FloatGauge>,
    step_duration: HistogramFamily<StepLabels>,
    fences: Family<FenceLabels, Counter>,
    watchdog_armed: Family<PairLabels, Gauge>,
    pdm_commit: HistogramFamily<OutcomeLabels>,
    dns_in_sync: Family<PairLabels, Gauge>,
    write_gap: Family<KindLabels, FloatGauge>,
    dns_reconcile_commits: Family<PairLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    audit_backlog: Gauge,
    audit_published: Counter,
    /// Last holder per pair, so a new holder's series replaces the old one's.
    holders: Mutex<HashMap<String, String>>,
}

/// The metrics registry and typed recorders. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("continuum");
        let lease_holder = Family::<PairRegionLabels, Gauge>::default();
        registry.register("lease_holder", "1 for the region holding the pair's lease", lease_holder.clone());
        let lease_epoch = Family::<PairLabels, Gauge>::default();
        registry.register("lease_epoch", "Current lease epoch (fencing token) of the pair", lease_epoch.clone());
        let lease_remaining = Family::<PairLabels, FloatGauge>::default();
        registry.register_with_unit(
            "lease_remaining_validity",
            "Remaining lease validity as this daemon sees it; NaN when unknown",
            Unit::Seconds,
            lease_remaining.clone(),
        );
        let lease_renew: HistogramFamily<PairLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "lease_renew_latency",
            "Round trip of the lease renewals the store confirmed (request to commit)",
            Unit::Seconds,
            lease_renew.clone(),
        );
        let lag_bytes = Family::<PairRegionLabels, FloatGauge>::default();
        registry.register_with_unit(
            "replication_lag",
            "Standby replay lag behind the primary; NaN when unknown",
            Unit::Bytes,
            lag_bytes.clone(),
        );
        let lag_seconds = Family::<PairRegionLabels, FloatGauge>::default();
        registry.register_with_unit(
            "replication_lag",
            "Standby replay lag in time; NaN when unknown",
            Unit::Seconds,
            lag_seconds.clone(),
        );
        let sync = Family::<PairRegionLabels, Gauge>::default();
        registry.register(
            "replication_sync",
            "1 when the standby is a synchronous standby (sync_state = sync)",
            sync.clone(),
        );
        let eligible = Family::<PairRegionLabels, Gauge>::default();
        registry.register(
            "failover_eligible",
            "1 when the region may be promoted by automatic failover",
            eligible.clone(),
        );
        let switchovers = Family::<SwitchoverLabels, Counter>::default();
        registry.register("switchovers", "Switchovers and failovers by kind and outcome", switchovers.clone());
        let switchover_duration: HistogramFamily<SwitchoverLabels> = Family::new_with_constructor(switchover_histogram);
        registry.register_with_unit(
            "switchover_duration",
            "Request to done, by kind and outcome",
            Unit::Seconds,
            switchover_duration.clone(),
        );
        let switchover_started = Family::<PairLabels, FloatGauge>::default();
        registry.register_with_unit(
            "switchover_started_timestamp",
            "When the pair's running switchover or failover was requested (Unix time); 0 when none runs",
            Unit::Seconds,
            switchover_started.clone(),
        );
        let step_duration: HistogramFamily<StepLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "switchover_step_duration",
            "Duration of each switchover step, by outcome",
            Unit::Seconds,
            step_duration.clone(),
        );
        let fences = Family::<FenceLabels, Counter>::default();
        registry.register("fence_events", "Times this daemon fenced its primary, by reason", fences.clone());
        let watchdog_armed = Family::<PairLabels, Gauge>::default();
        registry.register(
            "fence_watchdog_armed",
            "1 while the fence watchdog confirmed the holder's current lease deadline for the pair",
            watchdog_armed.clone(),
        );
        let pdm_commit: HistogramFamily<OutcomeLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "pdm_commit_latency",
            "PDM /v1/commit round trip",
            Unit::Seconds,
            pdm_commit.clone(),
        );
        let dns_in_sync = Family::<PairLabels, Gauge>::default();
        registry.register(
            "dns_in_sync",
            "On the holder: 1 when PDM's record for the pair is the holder's, with its epoch",
            dns_in_sync.clone(),
        );
        let write_gap = Family::<KindLabels, FloatGauge>::default();
        registry.register_with_unit(
            "switchover_last_write_gap",
            "Write gap of the pair's last finished switchover or failover, by kind, as the daemons measured it",
            Unit::Seconds,
            write_gap.clone(),
        );
        let dns_reconcile_commits = Family::<PairLabels, Counter>::default();
        registry.register(
            "dns_reconcile_commits",
            "DNS commits made because the read-back record differed from the holder's",
            dns_reconcile_commits.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Errors handled, by kind", errors.clone());
        let audit_backlog = Gauge::default();
        registry.register(
            "audit_backlog",
            "Audit records written locally but not yet acknowledged by NATS",
            audit_backlog.clone(),
        );
        let audit_published = Counter::default();
        registry.register("audit_published", "Audit records acknowledged by NATS JetStream", audit_published.clone());
        Self {
            inner: Arc::new(Inner {
                registry,
                lease_holder,
                lease_epoch,
                lease_remaining,
                lease_renew,
                lag_bytes,
                lag_seconds,
                sync,
                eligible,
                switchovers,
                switchover_duration,
                switchover_started,
                step_duration,
                fences,
                watchdog_armed,
                pdm_commit,
                dns_in_sync,
                write_gap,
                dns_reconcile_commits,
                errors,
                audit_backlog,
                audit_published,
                holders: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .map_err(|_| Error::Internal { message: "encoding metrics failed".into() })?;
        Ok(out)
    }

    /// The pair's lease as last observed: holder (if any), epoch and remaining validity (None:
    /// unknown).
    pub fn observe_lease(&self, pair: &str, holder: Option<&str>, epoch: u64, remaining: Option<Duration>) {
        let inner = &self.inner;
        let mut holders = inner.holders.lock().expect("metrics holder map poisoned");
        if let Some(previous) = holders.remove(pair) {
            inner.lease_holder.remove(&PairRegionLabels { pair: pair.into(), region: previous });
        }
        if let Some(holder) = holder {
            inner.lease_holder.get_or_create(&PairRegionLabels { pair: pair.into(), region: holder.into() }).set(1);
            holders.insert(pair.into(), holder.into());
        }
        let labels = PairLabels { pair: pair.into() };
        inner.lease_epoch.get_or_create(&labels).set(i64::try_from(epoch).unwrap_or(i64::MAX));
        inner.lease_remaining.get_or_create(&labels).set(remaining.map_or(f64::NAN, seconds));
    }

    pub fn observe_renew(&self, pair: &str, latency: Duration) {
        self.inner.lease_renew.get_or_create(&PairLabels { pair: pair.into() }).observe(seconds(latency));
    }

    /// Records each renewal reported by `renewals` ([`lease::LeaseHandle::renewals`]) until the
    /// handle stops renewing.
    pub fn record_renewals(
        &self,
        pair: &str,
        mut renewals: watch::Receiver<Option<lease::Renewal>>,
    ) -> tokio::task::JoinHandle<()> {
        let (metrics, pair) = (self.clone(), pair.to_string());
        tokio::spawn(async move {
            while renewals.changed().await.is_ok() {
                let renewal = *renewals.borrow_and_update();
                if let Some(renewal) = renewal {
                    metrics.observe_renew(&pair, renewal.round_trip);
                }
            }
        })
    }

    /// A standby's replication state; `None` lags are exported as NaN.
    pub fn observe_replication(
        &self,
        pair: &str,
        region: &str,
        lag_bytes: Option<u64>,
        lag_seconds: Option<f64>,
        synchronous: bool,
    ) {
        let labels = PairRegionLabels { pair: pair.into(), region: region.into() };
        // u64 -> f64 loses precision only beyond 2^53 bytes, far past any lag worth telling apart.
        self.inner.lag_bytes.get_or_create(&labels).set(lag_bytes.map_or(f64::NAN, |b| b as f64));
        self.inner.lag_seconds.get_or_create(&labels).set(lag_seconds.unwrap_or(f64::NAN));
        self.inner.sync.get_or_create(&labels).set(i64::from(synchronous));
    }

    pub fn set_eligible(&self, pair: &str, region: &str, eligible: bool) {
        let labels = PairRegionLabels { pair: pair.into(), region: region.into() };
        self.inner.eligible.get_or_create(&labels).set(i64::from(eligible));
    }

    /// A finished switchover (`kind`: planned | failover; `outcome`: succeeded | rolled_back | failed).
    pub fn observe_switchover(&self, pair: &str, kind: &str, outcome: &str, took: Duration) {
        let labels = SwitchoverLabels { pair: pair.into(), kind: kind.into(), outcome: outcome.into() };
        self.inner.switchovers.get_or_create(&labels).inc();
        self.inner.switchover_duration.get_or_create(&labels).observe(seconds(took));
    }

    /// The pair's switchover in flight as the last round read it (stuck-switchover alert).
    pub fn observe_switchover_running(&self, pair: &str, requested_at: Option<std::time::SystemTime>) {
        let at = requested_at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0.0, seconds);
        self.inner.switchover_started.get_or_create(&PairLabels { pair: pair.into() }).set(at);
    }

    pub fn observe_step(&self, step: Step, outcome: &str, took: Duration) {
        let labels = StepLabels { step: step.as_str().into(), outcome: outcome.into() };
        self.inner.step_duration.get_or_create(&labels).observe(seconds(took));
    }

    pub fn count_fence(&self, pair: &str, reason: &str) {
        self.inner.fences.get_or_create(&FenceLabels { pair: pair.into(), reason: reason.into() }).inc();
    }

    pub fn set_watchdog_armed(&self, pair: &str, armed: bool) {
        self.inner.watchdog_armed.get_or_create(&PairLabels { pair: pair.into() }).set(i64::from(armed));
    }

    pub fn observe_pdm_commit(&self, outcome: &str, took: Duration) {
        self.inner.pdm_commit.get_or_create(&OutcomeLabels { outcome: outcome.into() }).observe(seconds(took));
    }

    pub fn set_write_gap(&self, pair: &str, kind: &str, gap_ms: Option<u64>) {
        if let Some(ms) = gap_ms {
            let labels = KindLabels { pair: pair.into(), kind: kind.into() };
            self.inner.write_gap.get_or_create(&labels).set(ms as f64 / 1000.0);
        }
    }

    pub fn set_dns_in_sync(&self, pair: &str, in_sync: bool) {
        self.inner.dns_in_sync.get_or_create(&PairLabels { pair: pair.into() }).set(i64::from(in_sync));
    }

    /// This region no longer owns the pair's record: its series goes (the new holder reports).
    pub fn clear_dns_in_sync(&self, pair: &str) {
        self.inner.dns_in_sync.remove(&PairLabels { pair: pair.into() });
    }

    pub fn count_dns_reconcile_commit(&self, pair: &str) {
        self.inner.dns_reconcile_commits.get_or_create(&PairLabels { pair: pair.into() }).inc();
    }

    pub fn count_error(&self, error: &Error) {
        self.inner.errors.get_or_create(&ErrorLabels { kind: error.metric_label().into() }).inc();
    }

    pub fn set_audit_backlog(&self, records: u64) {
        self.inner.audit_backlog.set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    pub fn count_audit_published(&self) {
        self.inner.audit_published.inc();
    }
}
