//! One protected pair in this region: its parts, what its loop remembers between rounds, and
//! the control loop itself (observe → [`decide()`] → perform).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cnpg_pair::{EligibilityPolicy, Observed, PlainDriver, Upstream};
use lease::{HandleConfig, LeaseApi, LeaseHandle, LeaseRecord};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::build::{PairParts, Pdm, Shared};
use super::decide::{Action, decide};
use crate::api::Event;
use crate::audit::{Audit, AuditEntry};
use crate::config::{Config, PairConfig};
use crate::metrics::Metrics;
use crate::record::{Step, SwitchoverRecord};
use crate::switchover::StepRunner;
use crate::{Error, error_chain};

/// Loop pause while a switchover is in flight: the other region may have moved on. A failed
/// step is not retried at this pace: its retry waits for its backoff ([`StepRetry`]).
const SWITCHOVER_TICK: Duration = Duration::from_millis(25);

/// What the control loop remembers between rounds; read by the API.
#[derive(Default)]
pub(super) struct Seen {
    pub record: Option<LeaseRecord>,
    pub record_error: Option<String>,
    /// The stored switchover record does not decode (reported; nothing starts over it).
    pub switchover_error: Option<String>,
    /// When the record's `seq` last changed, on this node's clock.
    pub seq_changed: Option<(u64, Instant)>,
    pub local: Option<Observed>,
    pub peer: Option<Observed>,
    /// The peer's last observation as primary (eligibility needs the primary's position).
    pub peer_as_primary: Option<Observed>,
    pub history: Vec<SwitchoverRecord>,
    pub last_failover: Option<Instant>,
    pub standby_missing_since: Option<Instant>,
    /// Since when the peer streams to this (holder's) server without a break.
    pub standby_streaming_since: Option<Instant>,
    /// As the holder: since when the local server is unreachable without a break.
    pub local_down_since: Option<Instant>,
    /// The epoch whose lease this region gave up because its server stayed down: it is left to
    /// run out, never renewed, and the server is not started under it again.
    pub gave_up_epoch: Option<u64>,
    /// As a switchover's new lease holder: since when the record waits for the old region's
    /// step (switchover id, step).
    pub waiting_on_old: Option<(Uuid, Step, Instant)>,
    /// A switchover step of this region that failed, and when it may be tried again.
    pub retry: Option<StepRetry>,
    /// An unsafe error stopped the loop: it observes, and acts on nothing until a restart.
    pub halted: Option<String>,
}

/// A failed switchover step's retry schedule (capped exponential backoff, kept in memory: a
/// restarted daemon tries at once, then backs off again).
pub(super) struct StepRetry {
    pub id: Uuid,
    pub step: Step,
    pub backoff: crate::backoff::Backoff,
    pub due: Instant,
}

/// One protected pair in this region.
pub(super) struct PairCtl {
    pub cfg: PairConfig,
    pub region: String,
    pub peer: String,
    /// The peer's server, observed over a kept session like the local one.
    pub peer_observer: Arc<cnpg_pair::Observer>,
    /// A peer observation still running when its round went on (see [`PairCtl::observe_peer`]).
    pub peer_probe: tokio::sync::Mutex<Option<tokio::task::JoinHandle<Observed>>>,
    pub peer_upstream: Upstream,
    /// The local server as `pg_ctl` sees it.
    pub server: cnpg_pair::process::Server,
    pub lease: Arc<dyn LeaseApi>,
    /// Stops the local server at the lease deadline should this daemon be gone.
    pub watchdog: Arc<super::watchdog::Watchdog>,
    pub driver: PlainDriver,
    pub pdm: Pdm,
    /// The Gateway API route the switchover drains, if configured.
    pub traffic: Option<super::traffic::Traffic>,
    pub handle_cfg: HandleConfig,
    /// How long the lease fence may take before the postmaster is killed (below the fence lead).
    pub fence_timeout: Duration,
    pub runner: StepRunner,
    pub audit: Audit,
    pub metrics: Metrics,
    pub events: broadcast::Sender<Event>,
    pub seen: Mutex<Seen>,
    pub holder: tokio::sync::Mutex<Option<LeaseHandle>>,
    /// Set by the fence watcher: the lease could not be renewed in time and PostgreSQL was
    /// stopped; the loop abandons the handle.
    pub lease_fenced: Arc<AtomicBool>,
    pub tick: Duration,
    /// `sync-fenced`: the holder's silence that makes it a suspect, and the WAL stream timeout.
    pub suspect_window: Duration,
    pub wal_stream_timeout: Duration,
    /// `pairs[].step_timeout` as configured or derived.
    pub step_timeout: Duration,
    /// Fence watchers and renewal recorders, joined on shutdown.
    pub detached: TaskTracker,
    /// What the DNS reconciler last found (`None` while this region does not own the record).
    pub dns_status: Mutex<Option<crate::api::DnsStatus>>,
}

impl PairCtl {
    pub(super) fn new(config: &Config, parts: PairParts, shared: &Shared, detached: TaskTracker) -> Self {
        let PairParts { cfg, peer, peer_observer, peer_upstream, driver } = parts;
        PairCtl {
            region: config.region.clone(),
            peer,
            peer_observer,
            peer_probe: tokio::sync::Mutex::new(None),
            peer_upstream,
            server: driver.server(),
            lease: shared.lease.clone(),
            watchdog: shared.watchdog.clone(),
            driver,
            pdm: shared.pdm.clone(),
            traffic: cfg.traffic.clone().map(super::traffic::Traffic::new),
            handle_cfg: config.lease.handle_config(),
            fence_timeout: config.lease.effective_fence_timeout(),
            runner: StepRunner { metrics: shared.metrics.clone(), audit: shared.audit.clone() },
            audit: shared.audit.clone(),
            metrics: shared.metrics.clone(),
            events: shared.events.clone(),
            seen: Mutex::new(Seen::default()),
            holder: tokio::sync::Mutex::new(None),
            lease_fenced: Arc::new(AtomicBool::new(false)),
            tick: cfg.effective_observe_interval(&config.lease),
            suspect_window: cfg.effective_suspect_window(&config.lease),
            wal_stream_timeout: cfg.effective_wal_stream_timeout(&config.lease),
            step_timeout: cfg.effective_step_timeout(&config.lease),
            cfg,
            detached,
            dns_status: Mutex::new(None),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(super) fn policy(&self) -> EligibilityPolicy {
        EligibilityPolicy {
            max_lag_bytes: self.cfg.max_lag_bytes,
            max_lag: self.cfg.max_lag_seconds,
            ..EligibilityPolicy::default()
        }
    }

    pub(super) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(super) async fn audit(&self, kind: &str, epoch: Option<u64>, detail: serde_json::Value) {
        let mut entry = AuditEntry::new(kind, detail);
        entry.pair = Some(self.name().to_string());
        entry.epoch = epoch;
        entry.actor = Some("continuum".into());
        if let Err(error) = self.audit.append(entry).await {
            self.metrics.count_error(&error);
            tracing::error!(error = %error_chain(&error), kind, "audit record not written");
        }
    }

    /// Why this pair makes the daemon not ready (empty: ready).
    pub(super) fn not_ready(&self) -> Vec<String> {
        let seen = self.seen.lock().expect("seen poisoned");
        let mut reasons = Vec::new();
        if let Some(e) = &seen.record_error {
            reasons.push(format!("{}: lease record unreadable: {e}", self.name()));
        }
        if seen.local.is_none() {
            reasons.push(format!("{}: local PostgreSQL not observed yet", self.name()));
        }
        if let Some(e) = &seen.switchover_error {
            reasons.push(format!("{}: {e}", self.name()));
        }
        if let Some(e) = &seen.halted {
            reasons.push(format!("{}: control loop stopped: {e}", self.name()));
        }
        reasons
    }

    /// Stops renewing without releasing (shutdown): the lease runs out, as after a crash.
    pub(super) async fn abandon_lease(&self) {
        if let Some(handle) = self.holder.lock().await.take() {
            handle.abandon().await;
        }
    }

    // ---------------------------------------------------------------- the control loop

    pub(super) async fn run(self: Arc<Self>, stop: CancellationToken) {
        // Settings of this daemon's configuration that live in node.conf (the WAL stream
        // timeout) apply to a server that is already running.
        if let Err(e) = self.driver.refresh_node_settings().await {
            tracing::warn!(pair = %self.name(), error = %e, "node.conf settings not applied to the running server");
        }
        let mut switchover_in_flight = false;
        loop {
            // A stop in the middle of a step is a crash between steps: every step is idempotent.
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.round(switchover_in_flight) => result,
            };
            switchover_in_flight = matches!(result, Ok(true));
            let pause = match result {
                Ok(true) => SWITCHOVER_TICK,
                Ok(false) => self.tick,
                Err(error) if error.is_unsafe() => {
                    self.metrics.count_error(&error);
                    self.halt(&error).await;
                    self.tick
                }
                Err(error) => {
                    self.metrics.count_error(&error);
                    tracing::warn!(pair = %self.name(), error = %error_chain(&error), "control loop");
                    self.tick
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Retrying would be unsafe: stop acting on the pair (it is still observed, for status) and
    /// tell an operator, in the log, the audit trail, status and readiness.
    async fn halt(&self, error: &Error) {
        let reason = error_chain(error);
        tracing::error!(pair = %self.name(), error = %reason, "unsafe to go on: the control loop stops acting on the pair");
        self.seen.lock().expect("seen poisoned").halted = Some(reason.clone());
        self.audit("pair.halted", None, serde_json::json!({ "error": reason })).await;
    }

    /// One round; `Ok(true)` while a switchover is in flight.
    async fn round(&self, switchover_in_flight: bool) -> Result<bool, Error> {
        let Some(mut obs) = self.observe(switchover_in_flight).await else { return Ok(false) };
        if switchover_in_flight && obs.switchover_in_flight().is_none() {
            // The switchover just ended: never act on server observations from before it (a
            // peer observation still running then counts as none).
            self.seen.lock().expect("seen poisoned").peer = None;
            let Some(fresh) = self.observe(false).await else { return Ok(false) };
            obs = fresh;
        }
        if self.seen.lock().expect("seen poisoned").halted.is_some() {
            return Ok(false);
        }
        if self.lease_fenced.swap(false, Ordering::SeqCst)
            && let Some(handle) = self.holder.lock().await.take()
        {
            tracing::warn!(pair = %self.name(), "lease renewal failed: fenced, abandoning the lease");
            handle.abandon().await;
        }
        let action = decide(&obs, &self.timers().await);
        tracing::trace!(pair = %self.name(), ?action, "round");
        match action {
            Action::Unobserved => Ok(true),
            Action::RecordUnreadable(reason) => Err(Error::UnreadableRecord { reason }),
            Action::Idle => Ok(false),
            Action::Bootstrap => self.bootstrap(&obs.record).await.map(|()| false),
            Action::Hold(hold) => self.hold(&obs, hold).await.map(|()| false),
            Action::Follow(follow) => self.follow(&obs, follow).await.map(|()| false),
            Action::Switchover(next) => self.switchover(obs, next).await.map(|()| true),
        }
    }
}
