//! The data region's orchestrator: the real [`api::Orchestrator`].
//!
//! Each daemon embeds a lease node, drives its own region's PostgreSQL server with the plain
//! driver and commits DNS through PDM. One control loop per pair:
//! - observe the local server (and the peer's, for eligibility and status), read the lease record;
//! - a switchover in flight (the record in the lease store) takes precedence: this daemon
//!   performs only its own region's steps ([`switchover::next_for`]), each wrapped by
//!   [`StepRunner::run`] and stored with compare-and-set, so either daemon may crash between
//!   steps and the other resumes (or the old holder rolls back);
//! - holder: keep the lease renewed ([`LeaseHandle`]), fence *before* its deadline on
//!   `FenceNow`, keep the peer recorded as synchronous standby;
//! - not holder: be a standby of the holder; take over when the holder's lease ran out and this
//!   region is the recorded, caught-up synchronous standby (automatic failover).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use cnpg_pair::{
    Durability as PgDurability, Eligibility, EligibilityPolicy, Lsn, Observed, PairDriver, PairSnapshot, PlainDriver,
    PlainNodeConfig, PlainTimeouts, PromoteRequest, RejoinPolicy, RunAs, StoreWriteError, SyncRecordStore, SyncState,
    Upstream, WalPosition,
};
use lease::{HandleConfig, LeaseApi, LeaseError, LeaseHandle, LeaseNode, LeaseRecord, LeaseStatus, RefusalReason};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::{
    self, Event, LeaseHealth, LeaseState, PairStatus, PgRole, Plan, PlannedStep, Precondition, Readiness, RegionStatus,
    StepState, SwitchoverKind, SwitchoverRecord, SwitchoverState,
};
use crate::audit::{Audit, AuditEntry};
use crate::auth::Caller;
use crate::config::{Config, Durability, LeaseConfig, PairConfig, Role};
use crate::failpoint::Step;
use crate::metrics::Metrics;
use crate::switchover::{self, Next, StepOutcome, StepRunner};
use crate::{Error, error_chain};

/// The holder-side timing of a lease, derived from `lease.*`: the renew call gets at most the
/// renew interval (and 1.5 s), and `FenceNow` fires a fifth of the duration before the deadline.
pub fn handle_config(lease: &LeaseConfig) -> HandleConfig {
    HandleConfig {
        duration: lease.duration,
        renew_interval: lease.renew_interval,
        drift_margin: lease.drift_margin,
        fence_lead: lease.duration / 5,
        call_timeout: lease.renew_interval.min(Duration::from_millis(1500)),
    }
}

/// The lease node configuration of this daemon (data region or witness).
pub fn node_config(config: &Config) -> lease::NodeConfig {
    let raft = &config.raft;
    let mut timings = lease::RaftTimings::wan();
    timings.heartbeat_interval = raft.heartbeat_interval;
    timings.election_timeout_min = raft.election_timeout_min;
    timings.election_timeout_max = raft.election_timeout_max;
    lease::NodeConfig {
        id: raft.node_id,
        listen: raft.listen,
        data_dir: raft.data_dir.clone(),
        tls: lease::TlsFiles { ca: config.tls.ca.clone(), cert: config.tls.cert.clone(), key: config.tls.key.clone() },
        raft: timings,
        lease: lease::GrantRules { grant_margin: config.lease.grant_margin, call_timeout: config.lease.call_timeout },
        members: raft
            .peers
            .iter()
            .map(|p| lease::Member { id: p.id, region: p.region.clone(), addr: p.address.clone(), witness: p.witness })
            .collect(),
        dial_overrides: raft.peers.iter().filter_map(|p| Some((p.id, p.dial.clone()?))).collect(),
    }
}

pub(crate) fn lease_config_error(error: LeaseError) -> Error {
    match error {
        LeaseError::Config { key, message } => Error::Config { key: format!("raft/tls: {key}"), message },
        LeaseError::Tls(message) => Error::Config { key: "tls".into(), message },
        other => Error::Unavailable { reason: format!("lease store: {other}") },
    }
}

/// Looks up an OS account's uid and gid.
pub fn lookup_user(name: &str) -> Result<RunAs, String> {
    let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` outlives `pwd`'s use.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(format!("no such user: {name}"));
    }
    Ok(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid })
}

fn encode_position(p: &WalPosition) -> String {
    format!("{}:{}:{}", p.system_id, p.timeline, p.lsn)
}

fn decode_position(text: &str) -> Option<WalPosition> {
    let mut parts = text.splitn(3, ':');
    let system_id = parts.next()?.parse().ok()?;
    let timeline = parts.next()?.parse().ok()?;
    let lsn: Lsn = parts.next()?.parse().ok()?;
    Some(WalPosition { system_id, timeline, lsn })
}

/// The lease client as the driver's sync-record store, writing with the holder's epoch.
struct SyncStore {
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

/// What the control loop last saw; read by the API.
#[derive(Default)]
struct Seen {
    record: Option<LeaseRecord>,
    record_error: Option<String>,
    /// When the record's `seq` last changed, on this node's clock.
    seq_changed: Option<(u64, Instant)>,
    local: Option<Observed>,
    peer: Option<Observed>,
    /// The peer's last observation as primary (eligibility needs the primary's position).
    peer_as_primary: Option<Observed>,
    history: Vec<SwitchoverRecord>,
    last_record_seen: Option<SwitchoverRecord>,
    last_failover: Option<Instant>,
    standby_missing_since: Option<Instant>,
    /// Since when the peer streams to this (holder's) server without a break.
    standby_streaming_since: Option<Instant>,
    /// As the holder: since when the local server is unreachable without a break.
    local_down_since: Option<Instant>,
    /// The epoch whose lease this region gave up because its server stayed down: it is left to
    /// run out, never renewed, and the server is not started under it again.
    gave_up_epoch: Option<u64>,
    /// As a switchover's new lease holder: since when the record waits for the old region's
    /// step (switchover id, step).
    waiting_on_old: Option<(Uuid, Step, Instant)>,
}

/// One protected pair in this region.
struct PairCtl {
    cfg: PairConfig,
    region: String,
    peer: String,
    /// The peer's server, observed over a kept session like the local one.
    peer_observer: cnpg_pair::Observer,
    peer_upstream: Upstream,
    run_as: Option<RunAs>,
    lease: Arc<dyn LeaseApi>,
    driver: PlainDriver,
    pdm: pdm::PdmClient,
    zone: String,
    handle_cfg: HandleConfig,
    runner: StepRunner,
    audit: Audit,
    metrics: Metrics,
    events: broadcast::Sender<Event>,
    seen: Mutex<Seen>,
    holder: tokio::sync::Mutex<Option<LeaseHandle>>,
    /// Set by the fence watcher: the lease could not be renewed in time and PostgreSQL was
    /// stopped; the loop abandons the handle.
    lease_fenced: Arc<AtomicBool>,
    tick: Duration,
}

/// The orchestrator of a data region's daemon.
pub struct Daemon {
    region: String,
    node: LeaseNode,
    pairs: BTreeMap<String, Arc<PairCtl>>,
    events: broadcast::Sender<Event>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Daemon {
    /// Starts the lease node and one control loop per pair (stopped by `stop`).
    pub async fn start(
        config: &Config,
        audit: Audit,
        metrics: Metrics,
        events: broadcast::Sender<Event>,
        readiness: watch::Sender<Readiness>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        debug_assert_eq!(config.role, Role::Data);
        let pdm_config = config
            .pdm
            .as_ref()
            .ok_or_else(|| Error::Config { key: "pdm".into(), message: "required for role data".into() })?;
        let token = std::fs::read_to_string(&pdm_config.token_file).map_err(|e| Error::Config {
            key: "pdm.token_file".into(),
            message: format!("{}: {e}", pdm_config.token_file.display()),
        })?;
        let pdm = pdm::PdmClient::new(&pdm_config.url, token.trim(), pdm_config.timeout)
            .map_err(|e| Error::Config { key: "pdm.url".into(), message: e.to_string() })?;
        let mut prepared = Vec::new();
        for (i, pair) in config.pairs.iter().enumerate() {
            if pair.takeover == crate::config::Takeover::SyncFenced {
                tracing::warn!(pair = %pair.name, "takeover = sync-fenced is not implemented yet: taking over on lease expiry");
            }
            let key = |k: &str| format!("pairs[{i}].{k}");
            let peer_cfg = pair.peers.iter().find(|p| p.region != config.region).ok_or_else(|| Error::Config {
                key: key("peers"),
                message: "name the other data region's PostgreSQL server (region, host, port)".into(),
            })?;
            let run_as = match &pair.postgres.run_as {
                Some(user) => {
                    Some(lookup_user(user).map_err(|message| Error::Config { key: key("postgres.run_as"), message })?)
                }
                None => None,
            };
            let data_dir = pair.postgres.data_dir.clone();
            let log_file = pair.postgres.log_file.clone().unwrap_or_else(|| {
                let mut name = data_dir.clone().into_os_string();
                name.push(".log");
                PathBuf::from(name)
            });
            let socket_dir = pair
                .postgres
                .socket_dir
                .clone()
                .unwrap_or_else(|| data_dir.parent().map_or_else(|| PathBuf::from("/tmp"), PathBuf::from));
            let timeouts = PlainTimeouts { sync_wait: Duration::from_secs(10), ..PlainTimeouts::default() };
            let driver = PlainDriver::new(PlainNodeConfig {
                name: config.region.clone(),
                data_dir,
                bin_dir: pair.postgres.bin_dir.clone(),
                log_file,
                host: pair.postgres.host.clone(),
                port: pair.postgres.port,
                listen_addresses: pair.postgres.listen_addresses.clone(),
                socket_dir,
                superuser: pair.postgres.superuser.clone(),
                dbname: "postgres".into(),
                run_as,
                synchronous_standby: Some(peer_cfg.region.clone()),
                timeouts,
                rejoin: RejoinPolicy::default(),
            })
            .map_err(|e| Error::Config { key: key("postgres"), message: e.to_string() })?;
            let mut peer_pg = tokio_postgres::Config::new();
            peer_pg
                .host(&peer_cfg.host)
                .port(peer_cfg.port)
                .user(&pair.postgres.superuser)
                .dbname("postgres")
                .application_name("continuum")
                .connect_timeout(Duration::from_secs(2));
            let upstream = Upstream {
                name: peer_cfg.region.clone(),
                host: peer_cfg.host.clone(),
                port: peer_cfg.port,
                user: pair.postgres.superuser.clone(),
                dbname: "postgres".into(),
            };
            let peer_observer = cnpg_pair::Observer::new(peer_cfg.region.clone(), peer_pg, Duration::from_secs(3));
            prepared.push((pair.clone(), peer_cfg.region.clone(), peer_observer, upstream, run_as, driver));
        }

        let node = LeaseNode::start(node_config(config)).await.map_err(lease_config_error)?;
        let lease: Arc<dyn LeaseApi> = Arc::new(node.clone());
        let handle_cfg = handle_config(&config.lease);
        let mut pairs = BTreeMap::new();
        for (cfg, peer, peer_observer, peer_upstream, run_as, driver) in prepared {
            let tick = cfg.effective_observe_interval(&config.lease);
            let ctl = Arc::new(PairCtl {
                region: config.region.clone(),
                peer,
                peer_observer,
                peer_upstream,
                run_as,
                lease: lease.clone(),
                driver,
                pdm: pdm.clone(),
                zone: pdm_config.zone.clone(),
                handle_cfg: handle_cfg.clone(),
                runner: StepRunner { metrics: metrics.clone(), audit: audit.clone() },
                audit: audit.clone(),
                metrics: metrics.clone(),
                events: events.clone(),
                seen: Mutex::new(Seen::default()),
                holder: tokio::sync::Mutex::new(None),
                lease_fenced: Arc::new(AtomicBool::new(false)),
                tick,
                cfg,
            });
            pairs.insert(ctl.cfg.name.clone(), ctl);
        }
        let daemon =
            Arc::new(Self { region: config.region.clone(), node, pairs, events, tasks: Mutex::new(Vec::new()) });
        let mut tasks = Vec::new();
        for ctl in daemon.pairs.values() {
            tasks.push(tokio::spawn(ctl.clone().run(stop.clone())));
        }
        tasks.push(tokio::spawn(daemon.clone().readiness_loop(readiness, stop.clone())));
        *daemon.tasks.lock().expect("tasks poisoned") = tasks;
        Ok(daemon)
    }

    /// Waits for the loops (cancel their token first), then stops the lease node.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks poisoned"));
        for task in tasks {
            let _ = task.await;
        }
        for ctl in self.pairs.values() {
            // Stop renewing without releasing: the lease runs out, as after a crash. A planned
            // handover goes through a switchover.
            if let Some(handle) = ctl.holder.lock().await.take() {
                handle.abandon().await;
            }
        }
        self.node.shutdown().await;
    }

    async fn readiness_loop(self: Arc<Self>, readiness: watch::Sender<Readiness>, stop: CancellationToken) {
        loop {
            let mut reasons = Vec::new();
            if self.node.status().leader.is_none() {
                reasons.push("lease store: no raft leader known".to_string());
            }
            for ctl in self.pairs.values() {
                let seen = ctl.seen.lock().expect("seen poisoned");
                if let Some(e) = &seen.record_error {
                    reasons.push(format!("{}: lease record unreadable: {e}", ctl.cfg.name));
                }
                if seen.local.is_none() {
                    reasons.push(format!("{}: local PostgreSQL not observed yet", ctl.cfg.name));
                }
            }
            let state = if reasons.is_empty() { Readiness::Ready } else { Readiness::NotReady(reasons.join("; ")) };
            readiness.send_if_modified(|current| {
                if *current != state {
                    *current = state.clone();
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn pair(&self, name: Option<&str>) -> Result<&Arc<PairCtl>, Error> {
        match name {
            Some(name) => self.pairs.get(name).ok_or_else(|| Error::NotFound { what: format!("pair {name:?}") }),
            None if self.pairs.len() == 1 => Ok(self.pairs.values().next().expect("one pair")),
            None => Err(Error::BadRequest { message: "this daemon protects several pairs: name `pair`".into() }),
        }
    }
}

#[async_trait]
impl api::Orchestrator for Daemon {
    async fn status(&self) -> Result<api::Status, Error> {
        let mut pairs = Vec::new();
        for ctl in self.pairs.values() {
            pairs.push(ctl.status().await);
        }
        Ok(api::Status { region: self.region.clone(), pairs })
    }

    async fn plan(&self, request: &api::PlanRequest) -> Result<Plan, Error> {
        let ctl = self.pair(request.pair.as_deref())?;
        ctl.plan(&request.to).await
    }

    async fn start_switchover(&self, request: &api::SwitchoverRequest, caller: &Caller) -> Result<Uuid, Error> {
        let ctl = self.pair(request.pair.as_deref())?;
        ctl.start_switchover(&request.to, &request.reason, &caller.name).await
    }

    async fn history(&self) -> Result<Vec<SwitchoverRecord>, Error> {
        let mut all: Vec<SwitchoverRecord> = Vec::new();
        for ctl in self.pairs.values() {
            all.extend(ctl.seen.lock().expect("seen poisoned").history.iter().cloned());
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
        Ok(all)
    }

    async fn switchover(&self, id: Uuid) -> Result<SwitchoverRecord, Error> {
        for ctl in self.pairs.values() {
            if let Some(record) = ctl.seen.lock().expect("seen poisoned").history.iter().find(|r| r.id == id) {
                return Ok(record.clone());
            }
        }
        Err(Error::NotFound { what: format!("switchover {id}") })
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Loop pause while a switchover is in flight.
const SWITCHOVER_TICK: Duration = Duration::from_millis(25);

fn lease_err(op: &str, e: LeaseError) -> Error {
    Error::Unavailable { reason: format!("lease store {op}: {e}") }
}

fn parse_switchover(record: &LeaseRecord) -> Option<SwitchoverRecord> {
    record.switchover.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn role_of(observed: Option<&Observed>) -> PgRole {
    match observed {
        Some(Observed::Primary(_)) => PgRole::Primary,
        Some(Observed::Standby(_)) => PgRole::Standby,
        Some(Observed::Unreachable { .. }) => PgRole::Down,
        None => PgRole::Unknown,
    }
}

fn sync_name(state: SyncState) -> String {
    format!("{state:?}").to_lowercase()
}

impl PairCtl {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn policy(&self) -> EligibilityPolicy {
        EligibilityPolicy {
            max_lag_bytes: self.cfg.max_lag_bytes,
            max_lag: self.cfg.max_lag_seconds,
            ..EligibilityPolicy::default()
        }
    }

    fn pg_durability(&self) -> PgDurability {
        match self.cfg.durability {
            Durability::Required => PgDurability::Required,
            Durability::Preferred => PgDurability::Preferred,
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    async fn audit(&self, kind: &str, epoch: Option<u64>, detail: serde_json::Value) {
        let mut entry = AuditEntry::new(kind, detail);
        entry.pair = Some(self.name().to_string());
        entry.epoch = epoch;
        entry.actor = Some("continuum".into());
        if let Err(error) = self.audit.append(entry).await {
            self.metrics.count_error(&error);
            tracing::error!(error = %error_chain(&error), kind, "audit record not written");
        }
    }

    // ---------------------------------------------------------------- the control loop

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut busy = false;
        loop {
            // A stop in the middle of a step is a crash between steps: every step is idempotent.
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.tick_once(busy) => result,
            };
            busy = matches!(result, Ok(true));
            let pause = match result {
                // A switchover in flight: look again soon, the other region may have moved on.
                Ok(true) => SWITCHOVER_TICK,
                Ok(false) => self.tick,
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

    /// Observes the lease record and (unless `light`: a switchover in flight only needs the
    /// record, and fast rounds must stay cheap) the local and peer servers.
    async fn observe(&self, light: bool) -> Option<LeaseRecord> {
        let servers = async {
            if light { None } else { Some(tokio::join!(self.driver.observe(), self.peer_observer.observe())) }
        };
        let (servers, record) = tokio::join!(servers, self.lease.read(self.name()));
        let mut seen = self.seen.lock().expect("seen poisoned");
        if let Some((local, peer)) = servers {
            if matches!(peer, Observed::Primary(_)) {
                seen.peer_as_primary = Some(peer.clone());
            }
            seen.local = Some(local);
            seen.peer = Some(peer);
        }
        match record {
            Ok(record) => {
                let record =
                    record.unwrap_or_else(|| LeaseRecord { pair: self.name().to_string(), ..Default::default() });
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
                if let Some(sw) = parse_switchover(&record) {
                    self.note_switchover(&mut seen, &sw);
                }
                seen.record = Some(record.clone());
                seen.record_error = None;
                Some(record)
            }
            Err(e) => {
                seen.record_error = Some(e.to_string());
                None
            }
        }
    }

    /// Keeps history and emits events for a switchover record as seen in the store.
    fn note_switchover(&self, seen: &mut Seen, sw: &SwitchoverRecord) {
        let before = seen.history.iter().find(|r| r.id == sw.id).cloned();
        if before.as_ref() == Some(sw) {
            return;
        }
        for step in &sw.steps {
            let old = before.as_ref().and_then(|b| b.steps.iter().find(|s| s.step == step.step)).map(|s| s.state);
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
        if seen.history.len() > 100 {
            seen.history.remove(0);
        }
        seen.last_record_seen = Some(sw.clone());
    }

    /// One round; `Ok(true)` while a switchover is in flight.
    async fn tick_once(&self, light: bool) -> Result<bool, Error> {
        let Some(mut record) = self.observe(light).await else { return Ok(false) };
        let in_flight = parse_switchover(&record).is_some_and(|sw| !sw.state.is_finished());
        if light && !in_flight {
            // The switchover just ended: never act on server observations from before it.
            let Some(fresh) = self.observe(false).await else { return Ok(false) };
            record = fresh;
        }
        let Some(local) = self.seen.lock().expect("seen poisoned").local.clone() else {
            return Ok(true);
        };

        if self.lease_fenced.swap(false, Ordering::SeqCst)
            && let Some(handle) = self.holder.lock().await.take()
        {
            tracing::warn!(pair = %self.name(), "lease renewal failed: fenced, abandoning the lease");
            handle.abandon().await;
        }

        if let Some(sw) = parse_switchover(&record)
            && !sw.state.is_finished()
        {
            if self.old_holder_gone(&record, &sw) {
                // The old holder died before the lease moved and stays silent past its lease:
                // the ordinary automatic failover (same checks, the store's gate) supersedes it.
                let fresh = self.observe(false).await;
                let local = self.seen.lock().expect("seen poisoned").local.clone();
                if let Some(fresh) = fresh
                    && parse_switchover(&fresh).is_some_and(|f| f.id == sw.id && self.old_holder_gone(&fresh, &f))
                    && let Some(local @ Observed::Standby(_)) = local
                {
                    self.maybe_fail_over(&fresh, &local, Some(&sw)).await?;
                }
                return Ok(true);
            }
            return self.drive_switchover(record, sw).await.map(|()| true);
        }

        let me = self.region.as_str();
        match record.holder.as_deref() {
            Some(holder) if holder == me => self.as_holder(&record, &local).await,
            Some(_) => self.as_standby(&record, &local).await,
            None => self.unheld(&record, &local).await,
        }
        .map(|()| false)
    }

    /// Nobody holds the lease: the first start of a pair, or a release not followed by a grant.
    /// The region whose server is the primary takes it.
    async fn unheld(&self, record: &LeaseRecord, local: &Observed) -> Result<(), Error> {
        if !matches!(local, Observed::Primary(_)) {
            return Ok(());
        }
        let handle = self.acquire(record, "bootstrap").await?;
        let epoch = handle.epoch();
        self.driver
            .promote(&PromoteRequest { epoch, handover_token: None })
            .await
            .map_err(|e| Error::Unavailable { reason: format!("record epoch: {e}") })?;
        self.commit_dns(epoch).await?;
        Ok(())
    }

    /// Acquires (or, as the holder, re-acquires) the lease and starts the fence watcher.
    async fn acquire(&self, record: &LeaseRecord, why: &str) -> Result<LeaseHandle, Error> {
        let handle = LeaseHandle::acquire(
            self.lease.clone(),
            self.name(),
            &self.region,
            self.handle_cfg.clone(),
            lease::boot_clock(),
        )
        .await
        .map_err(|e| lease_err("acquire", e))?;
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
        self.watch_fence(&handle);
        self.metrics.record_renewals(self.name(), handle.renewals());
        Ok(handle)
    }

    /// The epoch of the lease this daemon holds, acquiring a handle first if it has none (after
    /// a restart, or as the target of a switchover). A holder whose re-acquire comes back with
    /// a new epoch had let its lease run out: refused.
    async fn ensure_handle(&self, record: &LeaseRecord, why: &str) -> Result<u64, Error> {
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

    /// Fences the local server the moment the handle says `FenceNow` or `Lost`: before the
    /// deadline, so no write is accepted once another region may hold the lease (invariant 3).
    fn watch_fence(&self, handle: &LeaseHandle) {
        let mut status = handle.watch();
        let fenced = self.lease_fenced.clone();
        let data_dir = self.driver.config().data_dir.clone();
        let bin_dir = self.driver.config().bin_dir.clone();
        let run_as = self.run_as;
        let metrics = self.metrics.clone();
        let pair = self.name().to_string();
        let audit = self.audit.clone();
        tokio::spawn(async move {
            loop {
                let current = *status.borrow_and_update();
                if let LeaseStatus::FenceNow { epoch, .. } | LeaseStatus::Lost { epoch } = current {
                    let reason =
                        if matches!(current, LeaseStatus::Lost { .. }) { "lease_lost" } else { "renewal_failing" };
                    tracing::error!(pair, epoch, reason, "fencing PostgreSQL before the lease deadline");
                    fenced.store(true, Ordering::SeqCst);
                    let started = Instant::now();
                    let result = stop_immediately(&bin_dir, &data_dir, run_as).await;
                    metrics.count_fence(&pair, reason);
                    let mut entry = AuditEntry::new(
                        "lease.fenced",
                        serde_json::json!({ "reason": reason, "took_ms": started.elapsed().as_millis() as u64,
                            "error": result.as_ref().err() }),
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

    async fn as_holder(&self, record: &LeaseRecord, local: &Observed) -> Result<(), Error> {
        let local_down = matches!(local, Observed::Unreachable { .. });
        {
            let mut seen = self.seen.lock().expect("seen poisoned");
            if !local_down {
                seen.local_down_since = None;
            }
            if seen.gave_up_epoch == Some(record.epoch) {
                if local_down {
                    // Waiting for the lease to run out and the standby's region to take over.
                    return Ok(());
                }
                // Someone brought the server back before anyone took over: serve again, under
                // a lease renewed now (refused below if it was granted anew meanwhile).
                tracing::warn!(pair = %self.name(), epoch = record.epoch, "server back before a takeover");
                seen.gave_up_epoch = None;
            }
        }
        let mut holder = self.holder.lock().await;
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
        let epoch = holder.as_ref().expect("set").epoch();
        if let Some(handle) = holder.as_ref()
            && let Some(deadline) = handle.deadline()
        {
            let remaining = deadline.saturating_duration_since(lease::boot_clock().now());
            self.metrics.observe_lease(self.name(), Some(&self.region), epoch, Some(remaining));
        }
        drop(holder);
        match local {
            Observed::Primary(primary) => {
                let store = self.sync_store(epoch);
                let row = primary.replica(&self.peer).filter(|r| r.state == "streaming");
                self.metrics.observe_replication(
                    self.name(),
                    &self.peer,
                    row.and_then(|r| r.replay_lsn).map(|l| primary.position.lsn.bytes_after(l)),
                    row.and_then(|r| r.replay_lag).map(|d| d.as_secs_f64()),
                    row.and_then(|r| r.sync_state) == Some(SyncState::Sync),
                );
                let recorded = record.sync_standby.as_deref() == Some(self.peer.as_str());
                if row.is_some() {
                    let streaming_for = {
                        let mut seen = self.seen.lock().expect("seen poisoned");
                        seen.standby_missing_since = None;
                        seen.standby_streaming_since.get_or_insert_with(Instant::now).elapsed()
                    };
                    // A standby that just came back (a rejoin may still restart it) is made
                    // synchronous only once it streamed for half a lease: otherwise commits
                    // would block on its next restart.
                    let settled = streaming_for >= self.handle_cfg.duration / 2;
                    let repair = recorded && row.and_then(|r| r.sync_state) != Some(SyncState::Sync);
                    if (!recorded && settled) || repair {
                        match self.driver.enable_sync(&self.peer, &store).await {
                            Ok(()) => {
                                tracing::info!(pair = %self.name(), standby = %self.peer, "synchronous standby recorded");
                                self.audit("sync.enabled", Some(epoch), serde_json::json!({ "standby": self.peer }))
                                    .await;
                            }
                            Err(e) => tracing::warn!(pair = %self.name(), "enable sync: {e}"),
                        }
                    }
                } else {
                    self.seen.lock().expect("seen poisoned").standby_streaming_since = None;
                    if self.cfg.durability != Durability::Preferred {
                        return Ok(());
                    }
                    let missing_since = *self
                        .seen
                        .lock()
                        .expect("seen poisoned")
                        .standby_missing_since
                        .get_or_insert_with(Instant::now);
                    let sync_names_set = recorded || record.sync_standby.is_some();
                    if missing_since.elapsed() >= self.handle_cfg.duration / 2 && sync_names_set {
                        match self.driver.drop_sync(PgDurability::Preferred, &store).await {
                            Ok(()) => {
                                tracing::warn!(pair = %self.name(), "standby gone: synchronous replication relaxed");
                                self.audit("sync.dropped", Some(epoch), serde_json::json!({ "standby": self.peer }))
                                    .await;
                            }
                            Err(e) => tracing::warn!(pair = %self.name(), "drop sync: {e}"),
                        }
                    }
                }
                Ok(())
            }
            Observed::Standby(_) => {
                // Holder with a standby server: a failover (or a promote step) interrupted by a
                // crash. Finish it: we hold the lease, so promoting is ours to do.
                self.promote_local(epoch).await?;
                self.commit_dns(epoch).await
            }
            Observed::Unreachable { .. } => {
                let down_for = self
                    .seen
                    .lock()
                    .expect("seen poisoned")
                    .local_down_since
                    .get_or_insert_with(Instant::now)
                    .elapsed();
                if down_for >= self.cfg.primary_down_timeout {
                    return self.give_up_lease(epoch, down_for).await;
                }
                if !self.driver.is_running().await.unwrap_or(true) {
                    tracing::warn!(pair = %self.name(), "holder's PostgreSQL is stopped: starting it");
                    start_server(&self.driver, self.run_as).await?;
                }
                Ok(())
            }
        }
    }

    /// The holder's server stayed unreachable for `primary_down_timeout`: stop it for good (it
    /// may be alive but unreachable, and must not take writes once another region promotes) and
    /// let the lease run out, so the standby's region fails over by the ordinary path (lease
    /// expiry, eligibility, debounce). Keeps the lease if the server cannot be confirmed stopped.
    async fn give_up_lease(&self, epoch: u64, down_for: Duration) -> Result<(), Error> {
        if self.driver.is_running().await.unwrap_or(true) {
            stop_immediately(&self.driver.config().bin_dir, &self.driver.config().data_dir, self.run_as)
                .await
                .map_err(|reason| Error::Unavailable { reason: format!("stop the unreachable server: {reason}") })?;
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

    fn sync_store(&self, epoch: u64) -> SyncStore {
        SyncStore { lease: self.lease.clone(), pair: self.name().to_string(), region: self.region.clone(), epoch }
    }

    /// Under `preferred`: stop waiting for the (absent) standby before promoting, so the new
    /// primary takes writes at once. Then promote with the epoch.
    async fn promote_local(&self, epoch: u64) -> Result<(), Error> {
        if self.cfg.durability == Durability::Preferred {
            let store = self.sync_store(epoch);
            self.driver
                .drop_sync(self.pg_durability(), &store)
                .await
                .map_err(|e| Error::Unavailable { reason: format!("drop sync before promote: {e}") })?;
        }
        self.driver
            .promote(&PromoteRequest { epoch, handover_token: None })
            .await
            .map_err(|e| Error::Unavailable { reason: format!("promote: {e}") })?;
        Ok(())
    }

    async fn as_standby(&self, record: &LeaseRecord, local: &Observed) -> Result<(), Error> {
        if let Some(handle) = self.holder.lock().await.take() {
            handle.abandon().await;
        }
        match local {
            Observed::Primary(_) => {
                // Another region holds the lease: this server must not take writes.
                tracing::error!(pair = %self.name(), holder = ?record.holder, "primary without the lease: fencing");
                self.metrics.count_fence(self.name(), "not_holder");
                stop_immediately(&self.driver.config().bin_dir, &self.driver.config().data_dir, self.run_as)
                    .await
                    .map_err(|reason| Error::Unavailable { reason })?;
                self.audit("lease.fenced", Some(record.epoch), serde_json::json!({ "reason": "not_holder" })).await;
                Ok(())
            }
            Observed::Unreachable { .. } => {
                let peer_is_primary =
                    matches!(self.seen.lock().expect("seen poisoned").peer, Some(Observed::Primary(_)));
                if peer_is_primary {
                    self.rejoin().await?;
                }
                Ok(())
            }
            Observed::Standby(_) => self.maybe_fail_over(record, local, None).await,
        }
    }

    async fn rejoin(&self) -> Result<(), Error> {
        tracing::info!(pair = %self.name(), upstream = %self.peer, "rejoining as standby");
        let rejoined = self
            .driver
            .rejoin_as_standby(&self.peer_upstream)
            .await
            .map_err(|e| Error::Unavailable { reason: format!("rejoin: {e}") })?;
        self.audit(
            "rejoined",
            None,
            serde_json::json!({ "upstream": self.peer, "method": format!("{:?}", rejoined.method) }),
        )
        .await;
        Ok(())
    }

    fn eligibility(&self, record: &LeaseRecord, local: &Observed) -> Result<(), String> {
        let seen = self.seen.lock().expect("seen poisoned");
        let primary = match &seen.peer {
            Some(p @ Observed::Primary(_)) => p.clone(),
            _ => seen.peer_as_primary.clone().unwrap_or_else(|| Observed::Unreachable {
                observed_at: SystemTime::UNIX_EPOCH,
                error: "never observed".into(),
            }),
        };
        let snapshot = PairSnapshot { standby_name: self.region.clone(), primary, standby: local.clone() };
        match cnpg_pair::evaluate(&snapshot, record.sync_standby.as_deref(), &self.policy(), SystemTime::now()) {
            Eligibility::Promotable => Ok(()),
            Eligibility::NotPromotable(reason) => Err(reason.to_string()),
        }
    }

    /// A planned switchover to this region whose old holder still holds the lease but has been
    /// silent (no lease write) for a whole lease duration, before the lease moved.
    fn old_holder_gone(&self, record: &LeaseRecord, sw: &SwitchoverRecord) -> bool {
        let before_move = sw
            .steps
            .iter()
            .any(|s| s.step == Step::MoveLease && !matches!(s.state, StepState::Done | StepState::Skipped));
        self.cfg.auto_failover
            && sw.to == self.region
            && record.holder.as_deref() == Some(sw.from.as_str())
            && before_move
            && self
                .seen
                .lock()
                .expect("seen poisoned")
                .seq_changed
                .is_some_and(|(_, at)| at.elapsed() >= record.duration())
    }

    async fn maybe_fail_over(
        &self,
        record: &LeaseRecord,
        local: &Observed,
        superseding: Option<&SwitchoverRecord>,
    ) -> Result<(), Error> {
        let eligible = self.eligibility(record, local);
        self.metrics.set_eligible(self.name(), &self.region, eligible.is_ok());
        if !self.cfg.auto_failover || eligible.is_err() {
            return Ok(());
        }
        let silent_for = {
            let seen = self.seen.lock().expect("seen poisoned");
            if seen.last_failover.is_some_and(|at| at.elapsed() < self.cfg.failover_debounce) {
                return Ok(());
            }
            seen.seq_changed.map_or(Duration::ZERO, |(_, at)| at.elapsed())
        };
        if silent_for < record.duration() {
            return Ok(());
        }
        // The store's own gate refuses while the holder may still be valid.
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
            Err(e) => return Err(lease_err("failover acquire", e)),
        };
        let epoch = handle.epoch();
        self.watch_fence(&handle);
        *self.holder.lock().await = Some(handle);
        self.seen.lock().expect("seen poisoned").last_failover = Some(Instant::now());
        let started = Instant::now();
        let from = record.holder.clone().unwrap_or_default();
        tracing::warn!(pair = %self.name(), %from, epoch, "automatic failover: lease taken over");
        self.audit(
            "lease.acquired",
            Some(epoch),
            serde_json::json!({ "why": "failover", "previous_epoch": record.epoch, "from": from }),
        )
        .await;
        let reason = match superseding {
            Some(stale) => format!("lease expired during switchover {}", stale.id),
            None => "lease expired".to_string(),
        };
        if let Some(stale) = superseding {
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
        let mut sw = switchover::new_record(self.name(), &from, &self.region, &reason, "continuum", record.epoch);
        sw.kind = SwitchoverKind::Failover;
        sw.state = SwitchoverState::Running;
        let mark = |sw: &mut SwitchoverRecord, step: Step, state: StepState, detail: Option<&str>| {
            if let Some(s) = sw.steps.iter_mut().find(|s| s.step == step) {
                s.state = state;
                s.detail = detail.map(str::to_string);
                s.started_at = Some(SystemTime::now());
            }
        };
        mark(&mut sw, Step::Intent, StepState::Skipped, Some("automatic failover"));
        mark(&mut sw, Step::Fence, StepState::Skipped, Some("the old holder's lease expired; it fences itself"));
        mark(&mut sw, Step::Drain, StepState::Skipped, Some("no HTTPRoute drain configured"));
        mark(&mut sw, Step::CatchUp, StepState::Skipped, Some("eligibility checked: recorded synchronous standby"));
        mark(&mut sw, Step::MoveLease, StepState::Done, None);
        sw.epoch_after = Some(epoch);
        let result = async {
            let t = Instant::now();
            self.promote_local(epoch).await?;
            mark(&mut sw, Step::Promote, StepState::Done, None);
            sw.steps.iter_mut().find(|s| s.step == Step::Promote).expect("step").duration_ms =
                Some(t.elapsed().as_millis() as u64);
            sw.write_gap_ms = Some(silent_for.as_millis() as u64 + started.elapsed().as_millis() as u64);
            let t = Instant::now();
            self.commit_dns(epoch).await?;
            mark(&mut sw, Step::Dns, StepState::Done, None);
            sw.steps.iter_mut().find(|s| s.step == Step::Dns).expect("step").duration_ms =
                Some(t.elapsed().as_millis() as u64);
            Ok::<(), Error>(())
        }
        .await;
        mark(&mut sw, Step::Rejoin, StepState::Skipped, Some("the old primary rejoins by itself when it returns"));
        mark(&mut sw, Step::Audit, StepState::Done, None);
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
        self.audit("failover.finished", Some(epoch), serde_json::to_value(&sw).unwrap_or_default()).await;
        self.store_record_best_effort(&sw).await;
        result
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

    /// Commits the pair's DNS record with `epoch`; an unknown outcome is retried with the same epoch.
    async fn commit_dns(&self, epoch: u64) -> Result<(), Error> {
        let dns = &self.cfg.dns;
        let name = if dns.record.ends_with('.') {
            dns.record.clone()
        } else {
            format!("{}.{}", dns.record, self.zone.trim_end_matches('.'))
        };
        let my_address = dns.addresses.get(&self.region).cloned();
        let record = if dns.lua.is_empty() {
            let Some(address) = my_address else {
                return Err(Error::Config {
                    key: format!("pairs.{}.dns.addresses", self.name()),
                    message: format!("no address for region {}", self.region),
                });
            };
            let rtype = if address.contains(':') { "AAAA" } else { "A" };
            pdm::RecordSpec { name, rtype: rtype.into(), ttl: dns.ttl, content: Some(address), lua: None }
        } else {
            let value = serde_json::to_value(&dns.lua).map_err(|e| Error::Internal { message: e.to_string() })?;
            let mut spec: pdm::LuaSpec =
                serde_json::from_value(value).map_err(|e| Error::Internal { message: e.to_string() })?;
            if let Some(address) = &my_address {
                match &mut spec {
                    pdm::LuaSpec::Ifurlup { tiers, .. } => {
                        if let Some(i) = tiers.iter().position(|t| t.contains(address)) {
                            let tier = tiers.remove(i);
                            tiers.insert(0, tier);
                        }
                    }
                    pdm::LuaSpec::Ifurlextup { tiers, .. } => {
                        if let Some(i) = tiers.iter().position(|t| t.iter().any(|u| &u.address == address)) {
                            let tier = tiers.remove(i);
                            tiers.insert(0, tier);
                        }
                    }
                    _ => {}
                }
            }
            pdm::RecordSpec { name, rtype: "A".into(), ttl: dns.ttl, content: None, lua: Some(spec) }
        };
        let request = pdm::CommitRequest { zone: self.zone.clone(), epoch, records: vec![record] };
        let mut last = String::new();
        for attempt in 0..3 {
            let started = Instant::now();
            match self.pdm.commit(&request).await {
                Ok(response) => {
                    self.metrics.observe_pdm_commit("ok", started.elapsed());
                    tracing::info!(pair = %self.name(), epoch, answers = ?response.answers, "DNS committed");
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.observe_pdm_commit("error", started.elapsed());
                    last = e.to_string();
                    tracing::warn!(pair = %self.name(), epoch, attempt, "PDM commit: {last}");
                    if last.contains("stale_epoch") {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Err(Error::Unavailable { reason: format!("PDM commit with epoch {epoch}: {last}") })
    }

    // ---------------------------------------------------------------- planned switchover

    async fn drive_switchover(&self, record: LeaseRecord, mut sw: SwitchoverRecord) -> Result<(), Error> {
        let me = self.region.clone();
        match switchover::next_for(&sw, &me) {
            Next::Finished => Ok(()),
            Next::Wait => self.wait_on_old(&record, sw).await,
            Next::RollBack => {
                tracing::warn!(pair = %self.name(), id = %sw.id, "rolling the switchover back");
                // Serve again only under a lease renewed now (this daemon may have restarted
                // and let it run out meanwhile).
                self.ensure_handle(&record, "rollback").await?;
                if !self.driver.is_running().await.unwrap_or(false) {
                    start_server(&self.driver, self.run_as).await?;
                }
                switchover::rolled_back(&mut sw);
                self.finish_record(&record, &sw).await
            }
            Next::Perform(step) => {
                let started_record = sw.clone();
                let outcome = self.perform(&record, &mut sw, step).await?;
                if let StepOutcome::Failed(reason) = &outcome {
                    tracing::warn!(pair = %self.name(), %step, reason, "switchover step failed");
                }
                let _ = started_record;
                // Re-read: the lease (and so the epoch the CAS needs) may have moved in the step.
                let current = self
                    .lease
                    .read(self.name())
                    .await
                    .map_err(|e| lease_err("read", e))?
                    .ok_or_else(|| Error::Internal { message: "lease record vanished".into() })?;
                if step == Step::Promote || step == Step::MoveLease {
                    if let Some(holder) = current.holder.as_deref()
                        && holder == sw.to
                    {
                        sw.epoch_after = Some(current.epoch);
                    } else if step == Step::MoveLease {
                        sw.epoch_after = None;
                    }
                }
                if sw.state.is_finished() {
                    return self.finish_record(&current, &sw).await;
                }
                self.cas(&current, &sw).await
            }
        }
    }

    /// As the switchover's new lease holder, waiting for the old region's step (its `rejoin`,
    /// or recording its `move_lease`): after `switchover_rejoin_timeout` the old region counts
    /// as gone; the record is completed without it. It rejoins by the ordinary path on return.
    async fn wait_on_old(&self, record: &LeaseRecord, mut sw: SwitchoverRecord) -> Result<(), Error> {
        let current = sw.steps.iter().find(|s| !matches!(s.state, StepState::Done | StepState::Skipped));
        let Some((step, state)) = current.map(|s| (s.step, s.state)) else { return Ok(()) };
        let me = self.region.as_str();
        if sw.to != me
            || record.holder.as_deref() != Some(me)
            || switchover::performer(step, &sw.from, &sw.to) != sw.from
            || (state == StepState::Failed && step.rolls_back())
        {
            self.seen.lock().expect("seen poisoned").waiting_on_old = None;
            return Ok(());
        }
        let waited = {
            let mut seen = self.seen.lock().expect("seen poisoned");
            match seen.waiting_on_old {
                Some((id, s, since)) if id == sw.id && s == step => since.elapsed(),
                _ => {
                    seen.waiting_on_old = Some((sw.id, step, Instant::now()));
                    Duration::ZERO
                }
            }
        };
        let timeout = self.cfg.switchover_rejoin_timeout;
        if waited < timeout {
            return Ok(());
        }
        let detail = format!("the old region {} did not act within {timeout:?}", sw.from);
        tracing::warn!(pair = %self.name(), id = %sw.id, %step, "{detail}: completing without it");
        let entry = sw.steps.iter_mut().find(|s| s.step == step).expect("a record holds every step");
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

    async fn cas(&self, current: &LeaseRecord, sw: &SwitchoverRecord) -> Result<(), Error> {
        let value = serde_json::to_value(sw).map_err(|e| Error::Internal { message: e.to_string() })?;
        self.lease
            .cas_switchover(self.name(), current.epoch, current.switchover_version, Some(value))
            .await
            .map_err(|e| lease_err("store switchover record", e))?;
        let mut seen = self.seen.lock().expect("seen poisoned");
        self.note_switchover(&mut seen, sw);
        Ok(())
    }

    async fn finish_record(&self, current: &LeaseRecord, sw: &SwitchoverRecord) -> Result<(), Error> {
        self.cas(current, sw).await?;
        let took = sw.finished_at.and_then(|f| f.duration_since(sw.requested_at).ok()).unwrap_or_default();
        let outcome = match sw.state {
            SwitchoverState::Succeeded => "succeeded",
            SwitchoverState::RolledBack => "rolled_back",
            _ => "failed",
        };
        self.metrics.observe_switchover(self.name(), "planned", outcome, took);
        self.audit(
            "switchover.finished",
            sw.epoch_after.or(Some(sw.epoch_before)),
            serde_json::json!({ "switchover": sw.id, "outcome": outcome, "from": sw.from, "to": sw.to,
                "took_ms": took.as_millis() as u64, "write_gap_ms": sw.write_gap_ms }),
        )
        .await;
        Ok(())
    }

    async fn perform(&self, record: &LeaseRecord, sw: &mut SwitchoverRecord, step: Step) -> Result<StepOutcome, Error> {
        let fence_position = sw
            .steps
            .iter()
            .find(|s| s.step == Step::Fence)
            .and_then(|s| s.detail.clone())
            .and_then(|d| decode_position(&d));
        let fence_started = sw.steps.iter().find(|s| s.step == Step::Fence).and_then(|s| s.started_at);
        let from = sw.from.clone();
        // The old region was gone past the rejoin timeout: it rejoins by the ordinary path and
        // the holder makes it synchronous again once it streams (durability as configured).
        let not_rejoined = sw.steps.iter().any(|s| s.step == Step::Rejoin && s.state == StepState::Skipped);
        let mut detail: Option<String> = None;
        let mut gap: Option<u64> = None;
        let outcome = self
            .runner
            .run(sw, step, || async {
                match step {
                    Step::Intent => StepOutcome::Done,
                    Step::Fence => match self.driver.fence().await {
                        Ok(fenced) => match fenced.final_position {
                            Some(position) => {
                                detail = Some(encode_position(&position));
                                StepOutcome::Done
                            }
                            None => StepOutcome::Failed(format!(
                                "fence was not clean ({:?}): the final position is unknown",
                                fenced.method
                            )),
                        },
                        Err(e) => StepOutcome::Failed(e.to_string()),
                    },
                    Step::Drain => StepOutcome::Skipped("no HTTPRoute drain configured (Gateway API pending)".into()),
                    Step::CatchUp => match fence_position {
                        None => StepOutcome::Failed("the fence step recorded no final position".into()),
                        Some(target) => match self.driver.wait_caught_up(&target, Duration::from_secs(30)).await {
                            Ok(_) => StepOutcome::Done,
                            Err(e) => StepOutcome::Failed(e.to_string()),
                        },
                    },
                    Step::MoveLease => {
                        let handle = self.holder.lock().await.take();
                        let released = match handle {
                            Some(handle) => handle.release().await,
                            None => self.lease.release(self.name(), &self.region, record.epoch).await,
                        };
                        match released {
                            Ok(_) => StepOutcome::Done,
                            // Released earlier (a retried step): the holder is gone already.
                            Err(LeaseError::Refused { current, .. })
                                if current.holder.as_deref() != Some(&self.region) =>
                            {
                                StepOutcome::Done
                            }
                            Err(e) => StepOutcome::Failed(e.to_string()),
                        }
                    }
                    Step::Promote => {
                        let epoch = match self.ensure_handle(record, "switchover").await {
                            Ok(epoch) => epoch,
                            Err(e) => return StepOutcome::Failed(error_chain(&e)),
                        };
                        match self.promote_local(epoch).await {
                            Ok(()) => {
                                gap = fence_started
                                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                                    .map(|d| d.as_millis() as u64);
                                StepOutcome::Done
                            }
                            Err(e) => StepOutcome::Failed(error_chain(&e)),
                        }
                    }
                    Step::Dns => match self.ensure_handle(record, "switchover").await {
                        Ok(epoch) => match self.commit_dns(epoch).await {
                            Ok(()) => StepOutcome::Done,
                            Err(e) => StepOutcome::Failed(error_chain(&e)),
                        },
                        Err(e) => StepOutcome::Failed(error_chain(&e)),
                    },
                    Step::Rejoin => match self.rejoin().await {
                        Ok(()) => StepOutcome::Done,
                        Err(e) => StepOutcome::Failed(error_chain(&e)),
                    },
                    Step::Audit if not_rejoined => {
                        detail = Some(format!("done, old primary {from} not rejoined"));
                        StepOutcome::Done
                    }
                    Step::Audit => {
                        let epoch = match self.ensure_handle(record, "switchover").await {
                            Ok(epoch) => epoch,
                            Err(e) => return StepOutcome::Failed(error_chain(&e)),
                        };
                        let store = self.sync_store(epoch);
                        match self.driver.enable_sync(&from, &store).await {
                            Ok(()) => StepOutcome::Done,
                            Err(e) => StepOutcome::Failed(format!("{from} not synchronous yet: {e}")),
                        }
                    }
                }
            })
            .await?;
        if let Some(detail) = detail
            && let Some(entry) = sw.steps.iter_mut().find(|s| s.step == step)
        {
            entry.detail = Some(detail);
        }
        if gap.is_some() {
            sw.write_gap_ms = gap;
        }
        Ok(outcome)
    }

    async fn start_switchover(&self, to: &str, reason: &str, caller: &str) -> Result<Uuid, Error> {
        let record = self.lease.read(self.name()).await.map_err(|e| lease_err("read", e))?.unwrap_or_default();
        let blockers = self.blockers(&record, to);
        if let Some(first) = blockers.first() {
            if blockers.iter().any(|b| b.starts_with("a switchover is in flight")) {
                return Err(Error::Conflict { reason: first.clone() });
            }
            if to != self.region && to != self.peer {
                return Err(Error::BadRequest { message: first.clone() });
            }
            return Err(Error::Ineligible { region: to.to_string(), reason: blockers.join("; ") });
        }
        let from = record.holder.clone().expect("blockers checked a holder");
        let sw = switchover::new_record(self.name(), &from, to, reason, caller, record.epoch);
        let id = sw.id;
        let value = serde_json::to_value(&sw).map_err(|e| Error::Internal { message: e.to_string() })?;
        self.lease.cas_switchover(self.name(), record.epoch, record.switchover_version, Some(value)).await.map_err(
            |e| match e {
                LeaseError::Refused { .. } => Error::Conflict { reason: "the lease record changed; try again".into() },
                other => lease_err("store switchover intent", other),
            },
        )?;
        self.audit(
            "switchover.requested",
            Some(record.epoch),
            serde_json::json!({ "switchover": id, "from": from, "to": to, "reason": reason, "by": caller }),
        )
        .await;
        let mut seen = self.seen.lock().expect("seen poisoned");
        self.note_switchover(&mut seen, &sw);
        Ok(id)
    }

    /// Why a planned switchover to `to` cannot start now (empty: it may).
    fn blockers(&self, record: &LeaseRecord, to: &str) -> Vec<String> {
        let mut out = Vec::new();
        if to != self.region && to != self.peer {
            out.push(format!("unknown region {to:?} (data regions: {}, {})", self.region, self.peer));
            return out;
        }
        if let Some(sw) = parse_switchover(record)
            && !sw.state.is_finished()
        {
            out.push(format!("a switchover is in flight: {} ({} → {})", sw.id, sw.from, sw.to));
        }
        match record.holder.as_deref() {
            None => out.push("nobody holds the lease".into()),
            Some(h) if h == to => out.push(format!("{to} already holds the lease")),
            Some(_) => {}
        }
        let seen = self.seen.lock().expect("seen poisoned");
        let (target, primary) = if to == self.region {
            (seen.local.clone(), seen.peer.clone())
        } else {
            (seen.peer.clone(), seen.local.clone())
        };
        match target {
            Some(Observed::Standby(s)) if s.streaming => {}
            Some(Observed::Standby(_)) => out.push(format!("{to} is a standby but not streaming")),
            Some(Observed::Primary(_)) => out.push(format!("{to} is a primary, not a standby")),
            Some(Observed::Unreachable { error, .. }) => out.push(format!("{to} is unreachable: {error}")),
            None => out.push(format!("{to} not observed yet")),
        }
        match primary.as_ref().and_then(Observed::as_primary) {
            Some(p) => match p.replica(to) {
                Some(row) if row.sync_state == Some(SyncState::Sync) => {}
                Some(row) => out.push(format!(
                    "{to} is not a synchronous standby (sync_state {})",
                    row.sync_state.map_or("unknown".to_string(), sync_name)
                )),
                None => out.push(format!("the primary does not list {to} in pg_stat_replication")),
            },
            None => out.push("the primary could not be observed".into()),
        }
        out
    }

    async fn plan(&self, to: &str) -> Result<Plan, Error> {
        let record = self.lease.read(self.name()).await.map_err(|e| lease_err("read", e))?.unwrap_or_default();
        let blockers = self.blockers(&record, to);
        if to != self.region && to != self.peer {
            return Err(Error::BadRequest { message: blockers.join("; ") });
        }
        let from = record.holder.clone().unwrap_or_default();
        let pre = |check: &str, met: bool, detail: Option<String>| Precondition { check: check.into(), met, detail };
        let target_ok = !blockers.iter().any(|b| b.starts_with(to));
        let steps = Step::ALL
            .into_iter()
            .map(|step| {
                let region = switchover::performer(step, &from, to).to_string();
                let (action, preconditions, skipped) = match step {
                    Step::Intent => (
                        "write the switchover intent to the lease store (compare-and-set)",
                        vec![
                            pre(
                                "no switchover in flight",
                                !blockers.iter().any(|b| b.starts_with("a switchover")),
                                None,
                            ),
                            pre(&format!("{from} holds the lease"), !from.is_empty() && from != to, None),
                        ],
                        None,
                    ),
                    Step::Fence => ("CHECKPOINT and fast shutdown of the old primary", vec![], None),
                    Step::Drain => (
                        "drain HTTP traffic",
                        vec![],
                        Some("no HTTPRoute drain configured (Gateway API pending)".to_string()),
                    ),
                    Step::CatchUp => (
                        "wait until the target replayed the shutdown checkpoint",
                        vec![pre(&format!("{to} streams as synchronous standby"), target_ok, None)],
                        None,
                    ),
                    Step::MoveLease => {
                        ("release the lease (after the fence); the target acquires epoch + 1", vec![], None)
                    }
                    Step::Promote => (
                        if self.cfg.durability == Durability::Preferred {
                            "drop synchronous replication (store first), then promote with the new epoch"
                        } else {
                            "promote with the new epoch (durability required: writes wait for the old primary)"
                        },
                        vec![],
                        None,
                    ),
                    Step::Dns => ("commit the DNS record through PDM with the new epoch", vec![], None),
                    Step::Rejoin => {
                        ("the old primary rejoins as standby (follow, else pg_rewind, else re-clone)", vec![], None)
                    }
                    Step::Audit => (
                        "re-enable synchronous replication to the old primary and write the audit record",
                        vec![],
                        None,
                    ),
                };
                PlannedStep { step, region, action: action.to_string(), preconditions, skipped }
            })
            .collect();
        Ok(Plan { pair: self.name().to_string(), from, to: to.to_string(), epoch: record.epoch, steps, blockers })
    }

    async fn status(&self) -> PairStatus {
        let handle_remaining = self
            .holder
            .lock()
            .await
            .as_ref()
            .and_then(LeaseHandle::deadline)
            .map(|d| d.saturating_duration_since(lease::boot_clock().now()));
        let seen = self.seen.lock().expect("seen poisoned");
        let record = seen.record.clone().unwrap_or_default();
        let lease_state = if seen.record_error.is_some() || seen.record.is_none() {
            LeaseState::Unknown
        } else if record.holder.is_some() && seen.seq_changed.is_some_and(|(_, at)| at.elapsed() < record.duration()) {
            LeaseState::Held
        } else {
            LeaseState::Expired
        };
        let primary_obs =
            [seen.local.as_ref(), seen.peer.as_ref()].into_iter().flatten().find_map(|o| o.as_primary()).cloned();
        let region_status = |region: &str, observed: Option<&Observed>| {
            let row = primary_obs.as_ref().and_then(|p| p.replica(region));
            let role = role_of(observed);
            let lag_bytes = match (row, &primary_obs) {
                (Some(r), Some(p)) => r.replay_lsn.map(|l| p.position.lsn.bytes_after(l)),
                _ => None,
            };
            let lag_seconds = row.and_then(|r| r.replay_lag.map(|d| d.as_secs_f64())).or(match lag_bytes {
                Some(0) => Some(0.0),
                _ => None,
            });
            let blockers = if record.holder.as_deref() == Some(region) {
                vec![format!("{region} holds the lease")]
            } else {
                drop_locked_blockers(region, observed, primary_obs.as_ref())
            };
            RegionStatus {
                region: region.to_string(),
                role,
                lag_bytes,
                lag_seconds,
                sync_state: row.and_then(|r| r.sync_state).map(sync_name),
                eligible: blockers.is_empty(),
                ineligible_reason: (!blockers.is_empty()).then(|| blockers.join("; ")),
            }
        };
        let regions =
            vec![region_status(&self.region, seen.local.as_ref()), region_status(&self.peer, seen.peer.as_ref())];
        let writes_blocked = match &primary_obs {
            None => Some("no primary is running".to_string()),
            Some(p)
                if self.cfg.durability == Durability::Required
                    && p.replica(if record.holder.as_deref() == Some(&self.region) {
                        &self.peer
                    } else {
                        &self.region
                    })
                    .is_none_or(|r| r.sync_state != Some(SyncState::Sync)) =>
            {
                Some("durability required: commits wait until the synchronous standby is back".to_string())
            }
            _ => None,
        };
        let current = parse_switchover(&record);
        let in_flight = current.as_ref().filter(|s| !s.state.is_finished()).map(|s| s.id);
        let last_switchover = seen.history.iter().max_by_key(|r| r.requested_at).cloned();
        PairStatus {
            name: self.name().to_string(),
            holder: record.holder.clone(),
            epoch: record.epoch,
            lease: LeaseHealth {
                state: lease_state,
                remaining_ms: handle_remaining.map(|d| d.as_millis() as u64),
                duration_ms: if record.duration_ms > 0 {
                    record.duration_ms
                } else {
                    self.handle_cfg.duration.as_millis() as u64
                },
            },
            durability: self.cfg.durability,
            takeover: self.cfg.takeover,
            auto_failover: self.cfg.auto_failover,
            sync_standby: record.sync_standby.clone(),
            regions,
            writes_blocked,
            in_flight,
            last_switchover,
        }
    }
}

fn drop_locked_blockers(
    region: &str,
    observed: Option<&Observed>,
    primary: Option<&cnpg_pair::PrimaryObservation>,
) -> Vec<String> {
    let mut out = Vec::new();
    match observed {
        Some(Observed::Standby(s)) if s.streaming => {}
        Some(Observed::Standby(_)) => out.push("not streaming".to_string()),
        Some(Observed::Primary(_)) => out.push("is a primary".to_string()),
        Some(Observed::Unreachable { error, .. }) => out.push(format!("unreachable: {error}")),
        None => out.push("not observed yet".to_string()),
    }
    match primary.and_then(|p| p.replica(region)) {
        Some(row) if row.sync_state == Some(SyncState::Sync) => {}
        Some(_) => out.push("not synchronous".to_string()),
        None if out.is_empty() => out.push("not listed by the primary".to_string()),
        None => {}
    }
    out
}

/// `pg_ctl stop -m immediate`, then SIGKILL of the postmaster: the fastest way to stop writes.
async fn stop_immediately(
    bin_dir: &std::path::Path,
    data_dir: &std::path::Path,
    run_as: Option<RunAs>,
) -> Result<(), String> {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    let mut cmd = tokio::process::Command::new(bin_dir.join("pg_ctl"));
    cmd.arg("stop").arg("-D").arg(data_dir).args(["-m", "immediate", "-w", "-t", "5"]);
    cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null()).current_dir("/").kill_on_drop(true);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let output = tokio::time::timeout(Duration::from_secs(6), cmd.output()).await;
    match output {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        other => {
            if let Some(pid) = pid {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Ok(());
            }
            match other {
                Ok(Ok(out))
                    if String::from_utf8_lossy(&out.stderr).contains("not running")
                        || String::from_utf8_lossy(&out.stderr).contains("does not exist") =>
                {
                    Ok(())
                }
                Ok(Ok(out)) => Err(format!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr).trim())),
                Ok(Err(e)) => Err(format!("pg_ctl stop: {e}")),
                Err(_) => Err("pg_ctl stop timed out".into()),
            }
        }
    }
}

/// `pg_ctl start` of the local server as it is configured (primary unless `standby.signal`).
async fn start_server(driver: &PlainDriver, run_as: Option<RunAs>) -> Result<(), Error> {
    let config = driver.config();
    let mut cmd = tokio::process::Command::new(config.bin_dir.join("pg_ctl"));
    cmd.arg("start").arg("-D").arg(&config.data_dir).arg("-l").arg(&config.log_file).args(["-w", "-t", "60"]);
    cmd.env("LC_ALL", "C").stdin(std::process::Stdio::null()).current_dir("/").kill_on_drop(true);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = tokio::time::timeout(Duration::from_secs(65), cmd.output())
        .await
        .map_err(|_| Error::Unavailable { reason: "pg_ctl start timed out".into() })?
        .map_err(|e| Error::Unavailable { reason: format!("pg_ctl start: {e}") })?;
    if !out.status.success() {
        return Err(Error::Unavailable {
            reason: format!("pg_ctl start: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let p = WalPosition { system_id: 7, timeline: 2, lsn: "0/3000148".parse().unwrap() };
        assert_eq!(decode_position(&encode_position(&p)), Some(p));
        assert_eq!(decode_position("garbage"), None);
    }

    #[test]
    fn default_and_test_lease_timings_make_a_valid_handle() {
        assert!(handle_config(&LeaseConfig::default()).validate().is_ok());
        let fast = LeaseConfig {
            renew_interval: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            drift_margin: Duration::from_millis(200),
            ..LeaseConfig::default()
        };
        assert!(handle_config(&fast).validate().is_ok());
    }
}
