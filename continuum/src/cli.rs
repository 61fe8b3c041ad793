//! The `continuum` command line: the daemon (`run`, `witness`, `check-config`) and an HTTP client
//! of a daemon's API (`status`, `plan`, `switchover`, `history`).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::Error;
use crate::api::{
    ErrorBody, LeaseState, Plan, PlanRequest, Status, StepState, SwitchoverAccepted, SwitchoverRecord,
    SwitchoverRequest, SwitchoverState,
};
use crate::config::{Config, Role};
use crate::telemetry::LogFormat;

mod abort;
mod generate;
mod watch;

/// How often `switchover` polls for progress.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// How long `switchover` keeps following through unreachable-daemon errors (e.g. its restart).
const FOLLOW_OUTAGE: Duration = Duration::from_secs(60);
/// Deadline of one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Parser)]
#[command(name = "continuum", version, about = "Keeps a PostgreSQL-backed application writable across regions")]
pub struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, env = "CONTINUUM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a data region's daemon.
    Run(ConfigArg),
    /// Run the witness (votes in the lease store only).
    Witness(ConfigArg),
    /// Start the whole system on this machine (two PostgreSQL servers, PowerDNS, PDM, two
    /// daemons and a witness, all on loopback) until Ctrl-C; prints how to reach it.
    Demo {
        /// Print the facts as one JSON line once everything is ready.
        #[arg(long)]
        json: bool,
        /// `fast`: the demo's short timings (lease 3 s); `default`: the daemon's shipped defaults.
        #[arg(long, value_enum, default_value_t = crate::demo::DemoTimings::Fast)]
        timings: crate::demo::DemoTimings,
        /// `lease-expiry` or `sync-fenced` (`pairs[].takeover`).
        #[arg(long, value_enum, default_value_t = crate::demo::DemoTakeover::SyncFenced)]
        takeover: crate::demo::DemoTakeover,
    },
    /// Validate a configuration file and exit (status 64 when invalid).
    CheckConfig(ConfigArg),
    /// Show the pairs, lease holder, epoch, roles and lag.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Keep showing it, refreshed in place on a terminal (a plain re-print otherwise, one
        /// JSON line per refresh with --json) until Ctrl-C.
        #[arg(long, short)]
        watch: bool,
        /// Pause between two refreshes with --watch, e.g. `500ms`, `2s`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        interval: Duration,
    },
    /// Dry run of a switchover: its steps, preconditions and blockers.
    Plan {
        #[command(flatten)]
        client: ClientArgs,
        /// Target region.
        #[arg(long)]
        to: String,
        /// Pair to move (needed when the daemon protects several).
        #[arg(long)]
        pair: Option<String>,
    },
    /// Move the primary to another region and follow the steps; or, with --abort, stop one
    /// before the lease moves (the old primary is unfenced and serves again).
    Switchover {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, required_unless_present = "abort")]
        to: Option<String>,
        /// Abort switchover ID instead (owner; refused once the lease is moving or it finished),
        /// then follow its roll-back.
        #[arg(long, value_name = "ID", conflicts_with_all = ["to", "reason", "pair", "yes"])]
        abort: Option<Uuid>,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        pair: Option<String>,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Past switchovers, or one of them in detail.
    History {
        #[command(flatten)]
        client: ClientArgs,
        id: Option<Uuid>,
    },
    /// Print a shell completion script, e.g.
    /// `continuum completions bash > /etc/bash_completion.d/continuum`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `continuum man | man -l -`), or with --dir write one page
    /// per command there (`continuum.1`, `continuum-status.1`, ...).
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Internal: the fence watchdog a data daemon starts (see `continuum::watchdog`).
    #[command(hide = true)]
    FenceWatchdog {
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The daemon's TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct ClientArgs {
    /// Base URL of a daemon's API.
    #[arg(long, env = "CONTINUUM_API", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Bearer token (prefer --token-file or the environment: arguments show up in `ps`).
    #[arg(long, env = "CONTINUUM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token; wins over --token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an https:// API instead of the system's roots.
    #[arg(long, env = "CONTINUUM_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for ClientArgs {
    // By hand, so a token never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("api", &self.api)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca", &self.ca)
            .field("json", &self.json)
            .finish()
    }
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::load(&args.config)?;
            crate::run(config, shutdown_signal()).await
        }
        Command::Witness(args) => {
            let config = Config::load(&args.config)?;
            if config.role != Role::Witness {
                return Err(Error::Config {
                    key: "role".into(),
                    message: "`continuum witness` needs role = \"witness\"".into(),
                });
            }
            crate::run(config, shutdown_signal()).await
        }
        Command::Demo { json, timings, takeover } => {
            crate::demo::run(crate::demo::DemoOptions { json, timings, takeover }, shutdown_signal()).await
        }
        Command::FenceWatchdog { state_dir } => crate::watchdog::run(&state_dir).await,
        Command::CheckConfig(args) => {
            let config = Config::load(&args.config)?;
            let role = match config.role {
                Role::Data => "data",
                Role::Witness => "witness",
            };
            println!(
                "{}: valid ({role} daemon of region {}, {} voters, {} pair(s))",
                args.config.display(),
                config.region,
                config.raft.peers.len(),
                config.pairs.len()
            );
            Ok(())
        }
        Command::Status { client, watch, interval } => {
            let api = ApiClient::new(&client)?;
            if watch {
                return watch::status(&api, client.json, interval).await;
            }
            let status: Status = api.get("/v1/status").await?;
            if client.json {
                print_json(&status)
            } else {
                print!("{}", render_status(&status))
            }
            Ok(())
        }
        Command::Plan { client, to, pair } => {
            let api = ApiClient::new(&client)?;
            let plan: Plan = api.post("/v1/plan", &PlanRequest { to, pair }).await?;
            if client.json {
                print_json(&plan)
            } else {
                print_plan(&plan)
            }
            Ok(())
        }
        Command::Switchover { client, abort: Some(id), .. } => {
            let api = ApiClient::new(&client)?;
            abort::run(&api, id, client.json).await
        }
        Command::Switchover { client, to, reason, pair, yes, abort: None } => {
            let to = to.ok_or_else(|| Error::Usage { message: "--to is required".into() })?;
            let api = ApiClient::new(&client)?;
            if !yes {
                confirm(&api, &to, &pair).await?;
            }
            let accepted: SwitchoverAccepted =
                api.post("/v1/switchover", &SwitchoverRequest { to, reason, pair }).await?;
            if !client.json {
                println!("switchover {} accepted", accepted.id);
            }
            let record = follow(&api, accepted.id, !client.json).await?;
            if client.json {
                print_json(&record);
            }
            match record.state {
                SwitchoverState::Succeeded => Ok(()),
                state => Err(Error::Conflict {
                    reason: format!(
                        "switchover {} ended {}: {}",
                        record.id,
                        state_name(state),
                        record.error.as_deref().unwrap_or("no reason given")
                    ),
                }),
            }
        }
        Command::History { client, id } => {
            let api = ApiClient::new(&client)?;
            match id {
                Some(id) => {
                    let record: SwitchoverRecord = api.get(&format!("/v1/switchovers/{id}")).await?;
                    if client.json { print_json(&record) } else { print_record(&record) }
                }
                None => {
                    let records: Vec<SwitchoverRecord> = api.get("/v1/switchovers").await?;
                    if client.json { print_json(&records) } else { print_history(&records) }
                }
            }
            Ok(())
        }
        Command::Completions { shell } => {
            generate::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => generate::man(dir.as_deref()),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: `run` polls it only after start-up, and a signal arriving in between
/// would otherwise kill the process with the default action instead of stopping it cleanly.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    fn new(args: &ClientArgs) -> Result<Self, Error> {
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Usage { message: format!("--token-file {}: {e}", path.display()) })?
                    .trim()
                    .to_string(),
            ),
            None => args.token.clone(),
        };
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(path) = &args.ca {
            let usage = |message: String| Error::Usage { message: format!("--ca {}: {message}", path.display()) };
            let pem = std::fs::read(path).map_err(|e| usage(e.to_string()))?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| usage(e.to_string()))?;
            builder = builder.tls_certs_only([ca]);
        }
        let http = builder.build().map_err(|source| Error::Http { url: args.api.clone(), source })?;
        Ok(Self { http, base: args.api.trim_end_matches('/').to_string(), token })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(self.http.get(format!("{}{path}", self.base)), path).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body), path).await
    }

    async fn send<T: DeserializeOwned>(&self, mut request: reqwest::RequestBuilder, path: &str) -> Result<T, Error> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let url = format!("{}{path}", self.base);
        let response = request.send().await.map_err(|source| Error::Http { url: url.clone(), source })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|source| Error::Http { url: url.clone(), source })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(answer) => {
                    Error::Api { status: status.as_u16(), code: answer.error.code, message: answer.error.message }
                }
                Err(_) => Error::Api {
                    status: status.as_u16(),
                    code: "http".into(),
                    message: String::from_utf8_lossy(&body).chars().take(256).collect(),
                },
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Internal { message: format!("unexpected answer from {url}: {e}") })
    }
}

/// Shows the plan and asks the operator to type the target region. Refuses without a terminal:
/// a switchover is never confirmed by accident from a script.
async fn confirm(api: &ApiClient, to: &str, pair: &Option<String>) -> Result<(), Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage {
            message: "refusing to switch over without confirmation: stdin is not a terminal (pass --yes)".into(),
        });
    }
    let plan: Plan = api.post("/v1/plan", &PlanRequest { to: to.into(), pair: pair.clone() }).await?;
    print_plan(&plan);
    print!(
        "Switch pair {} from {} to {}? Type the target region ({}) to confirm: ",
        plan.pair, plan.from, plan.to, plan.to
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::Usage { message: format!("reading confirmation: {e}") })?;
    if answer.trim() != plan.to {
        return Err(Error::Usage { message: "not confirmed; nothing changed".into() });
    }
    Ok(())
}

/// Polls the switchover until it finishes, printing each step once it is over.
async fn follow(api: &ApiClient, id: Uuid, human: bool) -> Result<SwitchoverRecord, Error> {
    let mut shown = HashSet::new();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match api.get::<SwitchoverRecord>(&format!("/v1/switchovers/{id}")).await {
            Ok(record) => {
                unreachable_since = None;
                if human {
                    for step in &record.steps {
                        let over = !matches!(step.state, StepState::Pending | StepState::Running);
                        if over && shown.insert(step.step) {
                            println!(
                                "  {:<11} {:<12} {}",
                                step_state_name(step.state),
                                step.step.as_str(),
                                millis(step.duration_ms)
                            );
                            if let Some(detail) = &step.detail {
                                println!("              {detail}");
                            }
                        }
                    }
                }
                if record.state.is_finished() {
                    if human {
                        print_outcome(&record);
                    }
                    return Ok(record);
                }
            }
            Err(error @ Error::Http { .. }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > FOLLOW_OUTAGE {
                    return Err(error);
                }
            }
            Err(other) => return Err(other),
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("API types serialize"));
}

fn millis(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms >= 1000 => format!("{:.2}s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms}ms"),
        None => "-".into(),
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// The name the API and the console use for a value (`preferred`, `lease-expiry`,
/// `rolled_back`), so the CLI never shows Rust's own names.
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

fn state_name(state: SwitchoverState) -> String {
    wire(&state)
}

fn step_state_name(state: StepState) -> String {
    wire(&state)
}

fn print_outcome(record: &SwitchoverRecord) {
    let took = record
        .finished_at
        .and_then(|end| end.duration_since(record.requested_at).ok())
        .map(|d| millis(Some(d.as_millis() as u64)))
        .unwrap_or_else(|| "-".into());
    let epoch = record.epoch_after.map(|e| e.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "switchover {} {}: {} -> {}, epoch {} -> {}, took {took}, write gap {}",
        record.id,
        state_name(record.state),
        record.from,
        record.to,
        record.epoch_before,
        epoch,
        millis(record.write_gap_ms)
    );
    if let Some(error) = &record.error {
        println!("  error: {error}");
    }
}

/// The text `status` prints.
fn render_status(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "daemon region: {}", status.region);
    for pair in &status.pairs {
        let lease = match pair.lease.state {
            LeaseState::Held => format!("held, {} left", millis(pair.lease.remaining_ms)),
            LeaseState::Expired => "expired".into(),
            LeaseState::Unknown => "unknown".into(),
        };
        let _ = writeln!(
            out,
            "\npair {}: holder {}, epoch {}, lease {lease}, durability {}, takeover {}, auto-failover {}",
            pair.name,
            or_dash(pair.holder.as_deref()),
            pair.epoch,
            wire(&pair.durability),
            wire(&pair.takeover),
            if pair.auto_failover { "on" } else { "off" }
        );
        let _ = writeln!(out, "  sync standby: {}", or_dash(pair.sync_standby.as_deref()));
        if let Some(blocked) = &pair.writes_blocked {
            let _ = writeln!(out, "  WRITES BLOCKED: {blocked}");
        }
        if let Some(id) = pair.in_flight {
            let _ = writeln!(out, "  switchover in flight: {id}");
        }
        let _ =
            writeln!(out, "  {:<16} {:<8} {:>14} {:>10} {:<6} eligible", "region", "role", "lag bytes", "lag", "sync");
        for region in &pair.regions {
            let eligible = match (&region.eligible, &region.ineligible_reason) {
                (true, _) => "yes".to_string(),
                (false, Some(reason)) => format!("no: {reason}"),
                (false, None) => "no".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {:<8} {:>14} {:>10} {:<6} {eligible}",
                region.region,
                wire(&region.role),
                region.lag_bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                region.lag_seconds.map(|s| format!("{s:.2}s")).unwrap_or_else(|| "-".into()),
                or_dash(region.sync_state.as_deref()),
            );
        }
        if let Some(last) = &pair.last_switchover {
            let _ = writeln!(
                out,
                "  last switchover: {} {} -> {} {} at {}",
                last.id,
                last.from,
                last.to,
                state_name(last.state),
                humantime::format_rfc3339_seconds(last.requested_at)
            );
        }
    }
    out
}

fn print_plan(plan: &Plan) {
    // Epochs are raft log indexes: the new one is higher, not known before the grant.
    println!("plan for pair {}: {} -> {} (epoch {} -> a higher one)", plan.pair, plan.from, plan.to, plan.epoch);
    for (i, step) in plan.steps.iter().enumerate() {
        println!("  {}. {:<12} [{}] {}", i + 1, step.step.as_str(), step.region, step.action);
        if let Some(reason) = &step.skipped {
            println!("       skipped: {reason}");
        }
        for pre in &step.preconditions {
            let mark = if pre.met { "ok  " } else { "FAIL" };
            match &pre.detail {
                Some(detail) => println!("       {mark} {} ({detail})", pre.check),
                None => println!("       {mark} {}", pre.check),
            }
        }
    }
    if plan.blockers.is_empty() {
        println!("no blockers: the switchover may start");
    } else {
        println!("blockers:");
        for blocker in &plan.blockers {
            println!("  - {blocker}");
        }
    }
}

fn print_record(record: &SwitchoverRecord) {
    println!(
        "switchover {} ({}) pair {}: {} -> {}, requested by {} at {}: {}",
        record.id,
        wire(&record.kind),
        record.pair,
        record.from,
        record.to,
        record.requested_by,
        humantime::format_rfc3339_seconds(record.requested_at),
        if record.reason.is_empty() { "(no reason)" } else { &record.reason }
    );
    for step in &record.steps {
        println!("  {:<11} {:<12} {}", step_state_name(step.state), step.step.as_str(), millis(step.duration_ms));
    }
    print_outcome(record);
}

fn print_history(records: &[SwitchoverRecord]) {
    if records.is_empty() {
        println!("no switchovers yet");
        return;
    }
    println!(
        "{:<36}  {:<10} {:<9} {:<20} {:<11} {:>9} {:>9}",
        "id", "pair", "kind", "from -> to", "state", "took", "gap"
    );
    for r in records {
        let took = r
            .finished_at
            .and_then(|end| end.duration_since(r.requested_at).ok())
            .map(|d| millis(Some(d.as_millis() as u64)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<36}  {:<10} {:<9} {:<20} {:<11} {:>9} {:>9}",
            r.id,
            r.pair,
            wire(&r.kind),
            format!("{} -> {}", r.from, r.to),
            state_name(r.state),
            took,
            millis(r.write_gap_ms)
        );
    }
}
