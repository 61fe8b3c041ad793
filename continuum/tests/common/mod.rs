//! Shared test parts: an in-memory orchestrator behind the real router on a real socket, a real
//! `nats-server` with JetStream, and token fixtures.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use continuum::Error;
use continuum::api::validate;
use continuum::api::*;
use continuum::auth::{Caller, TokenStore, token_sha256_hex};
use continuum::config::{Durability, Takeover};
use continuum::failpoint::Step;
use continuum::metrics::Metrics;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod cluster;
pub mod freeze;

pub const OWNER: &str = "owner-token-0123456789abcdef";
pub const OPERATOR: &str = "operator-token-0123456789abcdef";
pub const VIEWER: &str = "viewer-token-0123456789abcdef";

/// A tokens file with one token per role (the owner stored by hash, the others in plain).
pub fn tokens_toml() -> String {
    format!(
        "[[tokens]]\nname = \"olivia\"\nrole = \"owner\"\nsha256 = \"{}\"\n\n\
         [[tokens]]\nname = \"oscar\"\nrole = \"operator\"\ntoken = \"{OPERATOR}\"\n\n\
         [[tokens]]\nname = \"vera\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n",
        token_sha256_hex(OWNER)
    )
}

/// An orchestrator for one pair `app` over regions `a` (holder), `b` (sync standby, eligible) and
/// `c` (lagging, ineligible). It records every call, so tests can prove a rejected request never
/// reached it, and walks a switchover through all steps at once. Requests are checked by the
/// daemon's own `api::validate`, so a bad request gets the status the daemon gives it; what the
/// fake cannot know (a measured write gap) it leaves unset rather than inventing it.
pub struct MemoryOrchestrator {
    calls: Mutex<Vec<String>>,
    state: Mutex<PairState>,
    events: broadcast::Sender<Event>,
}

struct PairState {
    holder: String,
    epoch: u64,
    history: Vec<SwitchoverRecord>,
}

/// The fake pair's regions.
pub const REGIONS: [&str; 3] = ["a", "b", "c"];

pub const INELIGIBLE_REASON: &str = "replay lag 20971520 bytes exceeds max_lag_bytes 16777216";

impl MemoryOrchestrator {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            state: Mutex::new(PairState { holder: "a".into(), epoch: 7, history: Vec::new() }),
            events: broadcast::channel(64).0,
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn history_snapshot(&self) -> Vec<SwitchoverRecord> {
        self.state.lock().unwrap().history.clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The daemon's request checks: the pair named (if any) exists, the target is a region.
    fn validate(&self, pair: Option<&str>, to: &str) -> Result<(), Error> {
        validate::pair(&BTreeMap::from([("app".to_string(), ())]), pair)?;
        validate::target(to, &REGIONS)
    }

    fn eligibility(&self, holder: &str, to: &str) -> Result<(), Error> {
        match to {
            _ if to == holder => Err(Error::Conflict { reason: format!("{to} already holds the lease") }),
            "c" => Err(Error::Ineligible { region: to.into(), reason: INELIGIBLE_REASON.into() }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Orchestrator for MemoryOrchestrator {
    async fn status(&self) -> Result<Status, Error> {
        self.record("status".into());
        let state = self.state.lock().unwrap();
        let standby = if state.holder == "a" { "b" } else { "a" };
        let region = |name: &str| RegionStatus {
            region: name.into(),
            role: if name == state.holder { PgRole::Primary } else { PgRole::Standby },
            lag_bytes: (name != state.holder).then_some(if name == "c" { 20 * 1024 * 1024 } else { 0 }),
            lag_seconds: (name != state.holder).then_some(if name == "c" { 12.5 } else { 0.0 }),
            sync_state: (name == standby).then(|| "sync".to_string()),
            eligible: name == standby,
            ineligible_reason: (name == "c").then(|| INELIGIBLE_REASON.to_string()),
        };
        Ok(Status {
            region: "a".into(),
            pairs: vec![PairStatus {
                name: "app".into(),
                holder: Some(state.holder.clone()),
                epoch: state.epoch,
                lease: LeaseHealth { state: LeaseState::Held, remaining_ms: Some(8_500), duration_ms: 10_000 },
                durability: Durability::Preferred,
                takeover: Takeover::LeaseExpiry,
                auto_failover: true,
                sync_standby: Some(standby.into()),
                regions: vec![region("a"), region("b"), region("c")],
                writes_blocked: None,
                in_flight: None,
                attention: None,
                last_switchover: state.history.first().cloned(),
                dns: None,
            }],
        })
    }

    async fn plan(&self, request: &PlanRequest) -> Result<Plan, Error> {
        self.record(format!("plan:{}", request.to));
        self.validate(request.pair.as_deref(), &request.to)?;
        let state = self.state.lock().unwrap();
        let blockers = match self.eligibility(&state.holder, &request.to) {
            Ok(()) => vec![],
            Err(e) => vec![e.to_string()],
        };
        let steps = Step::ALL
            .into_iter()
            .map(|step| PlannedStep {
                step,
                region: if step < Step::MoveLease { state.holder.clone() } else { request.to.clone() },
                action: format!("{step} step"),
                preconditions: vec![Precondition {
                    check: "target is sync standby".into(),
                    met: blockers.is_empty(),
                    detail: None,
                }],
                skipped: (step == Step::Drain).then(|| "no HTTPRoute drain configured".to_string()),
            })
            .collect();
        Ok(Plan {
            pair: "app".into(),
            from: state.holder.clone(),
            to: request.to.clone(),
            epoch: state.epoch,
            steps,
            blockers,
        })
    }

    async fn start_switchover(&self, request: &SwitchoverRequest, caller: &Caller) -> Result<Uuid, Error> {
        self.record(format!("switchover:{}", request.to));
        self.validate(request.pair.as_deref(), &request.to)?;
        let mut state = self.state.lock().unwrap();
        self.eligibility(&state.holder, &request.to)?;
        let id = Uuid::new_v4();
        let started = SystemTime::now();
        let steps = Step::ALL
            .into_iter()
            .map(|step| {
                let _ = self.events.send(Event::Step {
                    switchover: id,
                    pair: "app".into(),
                    step,
                    state: StepState::Done,
                    duration_ms: Some(1),
                });
                StepRecord {
                    step,
                    state: if step == Step::Drain { StepState::Skipped } else { StepState::Done },
                    started_at: Some(started),
                    duration_ms: Some(1),
                    detail: None,
                    attempts: 1,
                    ended_at: Some(started),
                }
            })
            .collect();
        let record = SwitchoverRecord {
            id,
            pair: "app".into(),
            kind: SwitchoverKind::Planned,
            from: state.holder.clone(),
            to: request.to.clone(),
            reason: request.reason.clone(),
            requested_by: caller.name.clone(),
            requested_at: started,
            finished_at: Some(SystemTime::now()),
            state: SwitchoverState::Succeeded,
            epoch_before: state.epoch,
            epoch_after: Some(state.epoch + 1),
            steps,
            write_gap_ms: None,
            error: None,
        };
        state.holder = request.to.clone();
        state.epoch += 1;
        state.history.insert(0, record);
        let _ = self.events.send(Event::Switchover { id, pair: "app".into(), state: SwitchoverState::Succeeded });
        Ok(id)
    }

    async fn history(&self) -> Result<Vec<SwitchoverRecord>, Error> {
        self.record("history".into());
        Ok(self.state.lock().unwrap().history.clone())
    }

    async fn switchover(&self, id: Uuid) -> Result<SwitchoverRecord, Error> {
        self.record(format!("get:{id}"));
        let state = self.state.lock().unwrap();
        state.history.iter().find(|r| r.id == id).cloned().ok_or(Error::NotFound { what: format!("switchover {id}") })
    }

    async fn abort_switchover(&self, id: Uuid, caller: &Caller) -> Result<SwitchoverRecord, Error> {
        self.record(format!("abort:{id}:{}", caller.name));
        let state = self.state.lock().unwrap();
        // The fake walks every switchover to its end at once: a known one is always finished.
        match state.history.iter().find(|r| r.id == id) {
            Some(r) => {
                Err(Error::Conflict { reason: format!("switchover {id} already finished ({})", r.state.as_str()) })
            }
            None => Err(Error::NotFound { what: format!("switchover {id}") }),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// The real router on a real loopback socket, over an orchestrator chosen by the test.
pub struct ApiServer {
    pub url: String,
    pub metrics: Metrics,
    pub readiness: watch::Sender<Readiness>,
    stop: CancellationToken,
}

impl ApiServer {
    pub async fn start(orchestrator: Arc<dyn Orchestrator>) -> ApiServer {
        testkit::install_crypto_provider();
        let tokens = Arc::new(TokenStore::parse(&tokens_toml()).expect("test tokens parse"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let (readiness, readiness_rx) = watch::channel(Readiness::NotReady("starting".into()));
        let stop = CancellationToken::new();
        let state = ApiState {
            orchestrator,
            tokens,
            metrics: metrics.clone(),
            readiness: readiness_rx,
            shutdown: stop.clone(),
        };
        tokio::spawn(serve(listener, state));
        ApiServer { url: format!("http://{addr}"), metrics, readiness, stop }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A real `nats-server` with JetStream on a loopback port, killed when dropped.
pub struct NatsServer {
    child: Child,
    pub port: u16,
}

impl NatsServer {
    /// Starts on `port` with its store in `dir` and waits until it accepts connections.
    pub async fn start(port: u16, dir: &Path) -> NatsServer {
        let binary =
            std::env::var_os("CONTINUUM_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| "nats-server".into());
        let log = std::fs::File::create(dir.join(format!("nats-{port}.log"))).unwrap();
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary:?} (install nats-server): {e}"));
        let server = NatsServer { child, port };
        testkit::wait_until("nats-server accepting connections", Duration::from_secs(10), || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
        })
        .await
        .unwrap();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped (a test's daemon).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every message of a JetStream stream, in stream order: (Nats-Msg-Id, payload).
pub async fn stream_messages(url: &str, stream: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = async_nats::connect(url).await?;
    let context = async_nats::jetstream::new(client);
    let mut handle = context.get_stream(stream).await?;
    let count = handle.info().await?.state.messages;
    let mut out = Vec::new();
    for sequence in 1..=count {
        let message = handle.get_raw_message(sequence).await?;
        let id = message.headers.get("Nats-Msg-Id").map(|v| v.to_string()).unwrap_or_default();
        out.push((id, String::from_utf8(message.payload.to_vec())?));
    }
    Ok(out)
}

/// Writes a valid data-role config for the binary (the region-a example with the API on
/// `api_port`, the audit log, tokens, raft data, throwaway certificates and the PDM token in
/// `dir`, raft on free loopback ports with no peer running, PostgreSQL absent), after `edit`
/// had its say.
pub fn write_daemon_config(dir: &Path, api_port: u16, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    continuum::topology::write_secret(&dir.join("tokens.toml"), &tokens_toml()).unwrap();
    continuum::topology::write_secret(&dir.join("pdm.token"), "pdm-token\n").unwrap();
    let ca = continuum::pki::LocalCa::new(dir).unwrap();
    let node = ca.node("a").unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/region-a.toml")).unwrap();
    let mut doc: toml::Table = example.parse().unwrap();
    let api = doc["api"].as_table_mut().unwrap();
    api.insert("listen".into(), format!("127.0.0.1:{api_port}").into());
    api.insert("tokens_file".into(), dir.join("tokens.toml").display().to_string().into());
    let mut audit = toml::Table::new();
    audit.insert("log".into(), dir.join("audit.log").display().to_string().into());
    doc.insert("audit".into(), audit.into());
    let raft = doc["raft"].as_table_mut().unwrap();
    raft.insert("listen".into(), format!("127.0.0.1:{}", testkit::free_port()).into());
    raft.insert("data_dir".into(), dir.join("raft").display().to_string().into());
    for peer in raft["peers"].as_array_mut().unwrap() {
        peer.as_table_mut().unwrap().insert("address".into(), format!("127.0.0.1:{}", testkit::free_port()).into());
    }
    let tls = doc["tls"].as_table_mut().unwrap();
    tls.insert("cert".into(), node.cert.display().to_string().into());
    tls.insert("key".into(), node.key.display().to_string().into());
    tls.insert("ca".into(), node.ca.display().to_string().into());
    doc["pdm"].as_table_mut().unwrap().insert("token_file".into(), dir.join("pdm.token").display().to_string().into());
    let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
    let pg = pair["postgres"].as_table_mut().unwrap();
    pg.insert("data_dir".into(), dir.join("pgdata").display().to_string().into());
    pg.insert("port".into(), i64::from(testkit::free_port()).into());
    pg.remove("run_as");
    edit(&mut doc);
    let path = dir.join("continuum.toml");
    std::fs::write(&path, toml::to_string(&doc).unwrap()).unwrap();
    path
}

/// Lines of a file, or none when it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(String::from).collect()).unwrap_or_default()
}
