//! The witness: a voting lease node with no PostgreSQL, at a third site. With an `[api]` section
//! it also serves what monitoring that site needs: `/healthz`, `/readyz` (a raft leader is known
//! and this node votes), `/metrics` (raft term, leader, applied index, voters) and, for a viewer
//! token, `GET /v1/status`. Nothing on it mutates anything.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lease::{LeaseNode, NodeStatus};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::api::{ApiError, TlsConfig};
use crate::auth::{Gate, Role, TokenStore, require_role};
use crate::config::Config;

/// `GET /v1/status` of a witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    pub region: String,
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// As leader: milliseconds since a quorum last acknowledged this node.
    pub millis_since_quorum_ack: Option<u64>,
}

#[derive(Clone)]
struct WitnessState {
    region: String,
    node: LeaseNode,
    /// A leader unacknowledged by a quorum for longer than this is not ready: any follower
    /// would have started an election by then.
    quorum_ack_limit: std::time::Duration,
}

impl WitnessState {
    fn status(&self) -> WitnessStatus {
        let NodeStatus { id, leader, term, last_applied, voters, learners, millis_since_quorum_ack } =
            self.node.status();
        WitnessStatus {
            region: self.region.clone(),
            node_id: id,
            leader,
            term,
            last_applied,
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
            millis_since_quorum_ack,
        }
    }
}

/// Runs the witness until `shutdown` resolves.
pub async fn run(config: &Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let node = LeaseNode::start(config.lease_node_config()).await.map_err(crate::config::lease_start_error)?;
    tracing::info!(region = %config.region, addr = %node.local_addr(), "witness lease node running");
    let stop = CancellationToken::new();
    let server = match &config.api {
        None => None,
        Some(api) => {
            let tokens = Arc::new(TokenStore::load(&api.tokens_file)?);
            let tls = match (&api.tls_cert, &api.tls_key) {
                (Some(cert), Some(key)) => Some(TlsConfig::load(cert, key)?),
                _ => None,
            };
            let listener = tokio::net::TcpListener::bind(api.listen)
                .await
                .map_err(|source| Error::Bind { addr: api.listen, source })?;
            let addr = listener.local_addr().map_err(Error::Serve)?;
            let state = WitnessState {
                region: config.region.clone(),
                node: node.clone(),
                quorum_ack_limit: config.raft.election_timeout_max,
            };
            let app = router(state, tokens);
            tracing::info!(region = %config.region, %addr, tls = tls.is_some(), "witness API listening");
            let shutdown = stop.clone();
            Some(match tls {
                Some(tls) => tokio::spawn(crate::api::serve_router_tls(listener, tls, app, shutdown)),
                None => tokio::spawn(async move {
                    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
                }),
            })
        }
    };
    shutdown.await;
    stop.cancel();
    if let Some(server) = server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "witness API ended with an error"),
            Err(e) => tracing::warn!(error = %e, "witness API task failed"),
        }
    }
    node.shutdown().await;
    Ok(())
}

fn router(state: WitnessState, tokens: Arc<TokenStore>) -> Router {
    let viewer = Router::new()
        .route("/v1/status", get(status))
        .route_layer(from_fn_with_state(Gate { tokens, min: Role::Viewer }, require_role));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(viewer)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

async fn status(State(state): State<WitnessState>) -> Json<WitnessStatus> {
    Json(state.status())
}

async fn readyz(State(state): State<WitnessState>) -> Response {
    let status = state.status();
    let reason = if !status.voters.contains(&status.node_id) {
        Some("this node is not a voter (yet)".to_string())
    } else if status.leader.is_none() {
        Some("no raft leader known: no quorum reachable from here".to_string())
    } else if status.leader == Some(status.node_id)
        && status.millis_since_quorum_ack.is_none_or(|ms| ms > state.quorum_ack_limit.as_millis() as u64)
    {
        Some(format!(
            "no raft leader with a quorum: this node leads but no quorum acknowledged it for {}",
            status.millis_since_quorum_ack.map_or("ever".to_string(), |ms| format!("{ms} ms"))
        ))
    } else {
        None
    };
    match reason {
        None => "ready\n".into_response(),
        Some(reason) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response(),
    }
}

/// Read at scrape time from the node, so there is nothing to keep in sync.
async fn metrics(State(state): State<WitnessState>) -> Response {
    let status = state.status();
    let mut registry = Registry::with_prefix("continuum_raft");
    let gauge = |value: i64| {
        let g = Gauge::<i64>::default();
        g.set(value);
        g
    };
    registry.register("term", "Current raft term", gauge(status.term as i64));
    registry.register("leader_known", "1 if this node knows a raft leader", gauge(i64::from(status.leader.is_some())));
    registry.register(
        "is_leader",
        "1 if this node is the raft leader",
        gauge(i64::from(status.leader == Some(status.node_id))),
    );
    registry.register(
        "last_applied_index",
        "Index of the last log entry applied here",
        gauge(status.last_applied.unwrap_or(0) as i64),
    );
    registry.register("voters", "Voters in the membership", gauge(status.voters.len() as i64));
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out).into_response(),
        Err(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "encoding metrics failed").into_response()
        }
    }
}
