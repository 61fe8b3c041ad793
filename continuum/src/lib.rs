//! The region-local daemon: ties the lease store, the PostgreSQL driver and PDM into planned
//! switchover and automatic failover, with an HTTP API, CLI, metrics and audit log.
//!
//! # Layout
//! - [`config`]: the TOML file, defaults and cross-field validation.
//! - [`api`]: axum router, wire types and the [`api::Orchestrator`] seam the daemon implements.
//! - [`auth`]: bearer tokens with roles viewer < operator < owner.
//! - [`metrics`]: the Prometheus registry.
//! - [`audit`]: fsynced JSON-lines log, shipped to NATS JetStream.
//! - [`failpoint`]: named crash points at every switchover step edge.
//! - [`record`]: the replicated switchover format ([`record::SwitchoverRecord`], [`record::Step`]).
//! - [`switchover`]: the planned-switchover state machine over that record.
//! - [`daemon`]: the data region's [`api::Orchestrator`]: embedded lease node and one control
//!   loop per pair (observe → pure [`daemon::decide()`] → the holder, standby or switchover
//!   step it names); see its docs for the path of one switchover through the files.
//! - [`witness`]: the third site's voting node.
//! - [`watchdog`]: the fence watchdog process that stops the local server at the lease
//!   deadline when its daemon is gone.
//! - [`demo`]: `continuum demo`, the whole system on loopback; [`pki`]: its throwaway CA;
//!   [`topology`]: typed configs of such a deployment (demo, e2e harness, benchmarks).
//! - [`cli`]: the `continuum` command line (daemon and API client).
//! - [`telemetry`]: tracing setup.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod failpoint;
pub mod metrics;
pub mod pki;
pub mod record;
pub mod switchover;
pub mod telemetry;
pub mod topology;
pub mod watchdog;
pub mod witness;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Readiness};
use crate::audit::{Audit, AuditEntry};
use crate::auth::TokenStore;
use crate::config::{Config, Role};
use crate::failpoint::Failpoint;
use crate::metrics::Metrics;

/// Process exit status for a usage or configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: i32 = 64;
/// Process exit status when a service the command needs cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// Every error of this crate. The variant names double as metric labels ([`Error::metric_label`]).
/// `Display` never repeats the source; print chains with [`error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {key}: {message}")]
    Config { key: String, message: String },
    #[error("wrong use: {message}")]
    Usage { message: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{region} is not eligible: {reason}")]
    Ineligible { region: String, reason: String },
    #[error("conflict: {reason}")]
    Conflict { reason: String },
    #[error("bad request: {message}")]
    BadRequest { message: String },
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
    /// A driver call failed; the source's class decides retry or stop ([`Error::is_unsafe`]).
    #[error("{what}")]
    Driver {
        what: &'static str,
        #[source]
        source: cnpg_pair::Error,
    },
    /// A switchover step after the lease moved failed with an unsafe error: the switchover
    /// failed and is not retried.
    #[error("switchover {switchover}: step {step} is unsafe to go on with: {reason}")]
    UnsafeStep { switchover: uuid::Uuid, step: crate::record::Step, reason: String },
    /// A switchover record is stored but does not decode: nothing may act as if none were.
    #[error("switchover record unreadable: {reason}")]
    UnreadableRecord { reason: String },
    #[error("lease store {op}")]
    Lease {
        op: &'static str,
        #[source]
        source: lease::LeaseError,
    },
    #[error("PDM commit with epoch {epoch}")]
    Pdm {
        epoch: u64,
        #[source]
        source: pdm::PdmError,
    },
    #[error("PDM read-back of {name}")]
    PdmRead {
        name: String,
        #[source]
        source: pdm::PdmError,
    },
    #[error("traffic {op}")]
    Traffic {
        op: &'static str,
        #[source]
        source: continuum_traffic::Error,
    },
    #[error("`continuum {command}` is not available yet: {reason}")]
    NotYetAvailable { command: &'static str, reason: &'static str },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
    #[error("audit: {message}")]
    Audit {
        message: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("audit log is closed")]
    AuditClosed,
    #[error("cannot reach {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// The fence watchdog could not be started or did not confirm a request.
    #[error("fence watchdog: {message}")]
    Watchdog { message: String },
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl Error {
    /// A stable, low-cardinality name for metrics (`continuum_errors_total{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Usage { .. } => "usage",
            Error::NotFound { .. } => "not_found",
            Error::Ineligible { .. } => "ineligible",
            Error::Conflict { .. } => "conflict",
            Error::BadRequest { .. } => "bad_request",
            Error::Unavailable { .. } => "unavailable",
            Error::Driver { .. } => "driver",
            Error::UnreadableRecord { .. } => "unreadable_record",
            Error::UnsafeStep { .. } => "unsafe_step",
            Error::Lease { .. } => "lease",
            Error::Pdm { .. } => "pdm",
            Error::PdmRead { .. } => "pdm_read",
            Error::Traffic { .. } => "traffic",
            Error::NotYetAvailable { .. } => "not_yet_available",
            Error::Bind { .. } => "bind",
            Error::Serve(_) => "serve",
            Error::Audit { .. } => "audit",
            Error::AuditClosed => "audit_closed",
            Error::Http { .. } => "http",
            Error::Api { .. } => "api",
            Error::Watchdog { .. } => "watchdog",
            Error::Internal { .. } => "internal",
        }
    }

    /// Whether going on could lose acknowledged commits or make a second writable primary (the
    /// driver's [`cnpg_pair::ErrorClass::Unsafe`]): the pair's control loop stops and reports
    /// instead of retrying.
    pub fn is_unsafe(&self) -> bool {
        match self {
            Error::Driver { source, .. } => source.class() == cnpg_pair::ErrorClass::Unsafe,
            Error::UnsafeStep { .. } => true,
            _ => false,
        }
    }

    /// The process exit status for this error when it ends a command.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } | Error::Usage { .. } => EXIT_USAGE,
            Error::Http { .. } | Error::NotYetAvailable { .. } => EXIT_UNAVAILABLE,
            _ => 1,
        }
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out += ": ";
        out += &cause.to_string();
        source = cause.source();
    }
    out
}

/// Runs a data region's daemon (or the witness) until `shutdown` resolves: opens the audit log,
/// starts the lease node and the daemon's loops, serves the API. Configuration problems found here (e.g. an unreadable
/// tokens file) are [`Error::Config`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    // `Config::load` validated already; a config built in code gets the same checks.
    config.validate()?;
    config.check_secret_files()?;
    failpoint::arm(&config.failpoints)
        .map_err(|message| Error::Config { key: format!("failpoints / {}", failpoint::ENV), message })?;
    if config.role == Role::Witness {
        return witness::run(&config, shutdown).await;
    }
    let missing = |key: &str| Error::Config { key: key.into(), message: "required for role data".into() };
    let api_config = config.api.as_ref().ok_or_else(|| missing("api"))?;
    let audit_config = config.audit.as_ref().ok_or_else(|| missing("audit"))?;
    let tokens = Arc::new(TokenStore::load(&api_config.tokens_file)?);
    let tls = match (&api_config.tls_cert, &api_config.tls_key) {
        (Some(cert), Some(key)) => Some(api::TlsConfig::load(cert, key)?),
        _ => None,
    };
    let metrics = Metrics::new();
    // A log that cannot be opened is a wrong path or permission in the file: a configuration error.
    let (audit, audit_tasks) = Audit::open(audit_config, &config.region, metrics.clone())
        .map_err(|e| Error::Config { key: "audit.log".into(), message: error_chain(&e) })?;
    let listener = tokio::net::TcpListener::bind(api_config.listen)
        .await
        .map_err(|source| Error::Bind { addr: api_config.listen, source })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    audit.append(AuditEntry::new("daemon.started", serde_json::json!({ "api": addr.to_string() }))).await?;
    failpoint::hit(Failpoint::Startup);

    let (readiness, readiness_rx) = watch::channel(Readiness::NotReady("starting".into()));
    let (events, _) = broadcast::channel(256);
    let stop = CancellationToken::new();
    let daemon =
        daemon::Daemon::start(&config, audit.clone(), metrics.clone(), events.clone(), readiness, stop.clone()).await?;
    let state =
        ApiState { orchestrator: daemon.clone(), tokens, metrics, readiness: readiness_rx, shutdown: stop.clone() };
    tracing::info!(region = %config.region, %addr, tls = tls.is_some(), "API listening");
    let mut server = match tls {
        Some(tls) => tokio::spawn(api::serve_tls(listener, tls, state)),
        None => tokio::spawn(api::serve(listener, state)),
    };
    let served = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            // While the loops and the API still run: hand held leases over or fence.
            daemon.prepare_shutdown().await;
            stop.cancel();
            (&mut server).await
        }
        result = &mut server => result,
    };
    let served =
        served.map_err(|e| Error::Internal { message: format!("API task: {e}") }).and_then(|r| r.map_err(Error::Serve));
    stop.cancel();
    daemon.shutdown().await;
    let stopped = audit.append(AuditEntry::new("daemon.stopped", serde_json::json!({}))).await;
    // The audit writer ends once every handle is gone: the daemon's loops hold some.
    drop(daemon);
    drop(audit);
    audit_tasks.shutdown().await;
    served?;
    stopped?;
    tracing::info!("stopped");
    Ok(())
}
