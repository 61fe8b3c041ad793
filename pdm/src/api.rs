//! PDM's HTTP API (axum). Every route but `/healthz` needs `Authorization: Bearer <token>` of
//! a token in `tokens_file` with at least the route's role ([`crate::auth::Role`]).
//!
//! | route | role | body → answer |
//! |---|---|---|
//! | `GET /healthz` | – | → `{"status":"ok"}` (503 when PowerDNS' API does not answer) |
//! | `POST /v1/commit` | commit | [`CommitRequest`] → [`CommitResponse`], or 202 [`OperationPending`] |
//! | `GET /v1/operations/{id}` | commit (the same token name) | → what the commit answers, or 202 |
//! | `GET /v1/zones` | commit | → [`ZoneList`] |
//! | `GET /v1/records/{zone}/{name}` | commit | → [`RecordsResponse`] |
//! | `POST /v1/zones` | admin | [`CreateZoneRequest`] → 201 [`ZoneInfo`] |
//! | `DELETE /v1/zones/{zone}?force=&reason=` | admin | → 204 |
//! | `PUT /v1/zones/{parent}/delegations/{child}` | admin | [`DelegationRequest`] → [`DelegationResponse`] |
//! | `PUT /v1/epochs/{zone}/{name}` | admin | [`EpochResetRequest`] → [`EpochResetResponse`] |
//!
//! Errors are [`ErrorBody`] `{"error": "...", "code": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use std::time::Duration;

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use crate::PdmError;
use crate::auth::{Caller, Role, TokenStore};
use crate::manager::Manager;
use crate::model::*;
use crate::ops::{Operations, Progress};

#[derive(Clone)]
pub(crate) struct AppState {
    pub manager: Arc<Manager>,
    pub tokens: Arc<TokenStore>,
    pub ops: Arc<Operations>,
    /// `commit.answer_within`: how long a commit or poll waits before answering 202.
    pub answer_within: Duration,
}

/// The token gate of one route group: who may pass.
#[derive(Clone)]
struct Gate {
    tokens: Arc<TokenStore>,
    min: Role,
}

pub(crate) fn router(state: AppState) -> Router {
    let gate = |min| middleware::from_fn_with_state(Gate { tokens: state.tokens.clone(), min }, require_role);
    let commit_routes = Router::new()
        .route("/v1/commit", post(commit))
        .route("/v1/operations/{id}", get(operation))
        .route("/v1/zones", get(list_zones))
        .route("/v1/records/{zone}/{name}", get(records))
        .route_layer(gate(Role::Commit));
    let admin_routes = Router::new()
        .route("/v1/zones", post(create_zone))
        .route("/v1/zones/{zone}", delete(delete_zone))
        .route("/v1/zones/{parent}/delegations/{child}", put(delegate))
        .route("/v1/epochs/{zone}/{name}", put(reset_epoch))
        .route_layer(gate(Role::Admin));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(commit_routes)
        .merge(admin_routes)
        .fallback(not_found)
        .with_state(state)
}

impl IntoResponse for PdmError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.metric_label(), error = %self, "request failed");
        } else {
            tracing::info!(code = self.metric_label(), error = %self, "request refused");
        }
        let body = ErrorBody { error: self.to_string(), code: self.metric_label().into() };
        (status, Json(body)).into_response()
    }
}

/// 401 without a known token, 403 below the group's role. Runs before the handler's extractors,
/// so a refused request is never parsed, let alone acted on; the caller's name (never the
/// token) is what logs show.
async fn require_role(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(caller) = gate.tokens.authenticate(presented) else {
        tracing::info!(path = %request.uri().path(), "rejected a missing or unknown bearer token");
        return PdmError::Unauthorized.into_response();
    };
    if caller.role < gate.min {
        tracing::warn!(caller = %caller.name, role = %caller.role, method = %request.method(),
            path = %request.uri().path(), "forbidden");
        return PdmError::Forbidden { caller: caller.name, role: caller.role, needed: gate.min }.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, PdmError> {
    body.map(|Json(v)| v).map_err(|e| PdmError::InvalidRequest(e.body_text()))
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.manager.ready().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "powerdns unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody { error: "no such route".into(), code: "not_found".into() })).into_response()
}

async fn commit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<Response, PdmError> {
    let request = json_body(body)?;
    // Equal requests (a retry with the same epoch) join one pending operation.
    let key = serde_json::to_string(&request).map_err(|e| PdmError::InvalidRequest(e.to_string()))?;
    let budget = state.manager.commit_budget(&request);
    let manager = state.manager.clone();
    let who = caller.name.clone();
    let work = async move { manager.commit(request, &who).await };
    Ok(progress_response(state.ops.run(&caller.name, key, budget, state.answer_within, work).await))
}

async fn operation(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, PdmError> {
    // Another token's operation is as unknown as an expired one.
    let progress = state.ops.wait(&caller.name, &id, state.answer_within).await;
    Ok(progress_response(progress.ok_or(PdmError::UnknownOperation(id))?))
}

fn progress_response(progress: Progress) -> Response {
    match progress {
        Progress::Done(Ok(response)) => Json(response).into_response(),
        Progress::Done(Err((status, body))) => {
            (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(body)).into_response()
        }
        Progress::Pending { id, remaining } => {
            let deadline_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            let body = OperationPending { operation: id, state: "pending".into(), deadline_ms };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
    }
}

async fn list_zones(State(state): State<AppState>) -> Result<Json<ZoneList>, PdmError> {
    Ok(Json(state.manager.list_zones().await?))
}

async fn create_zone(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<CreateZoneRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ZoneInfo>), PdmError> {
    Ok((StatusCode::CREATED, Json(state.manager.create_zone(json_body(body)?, &caller.name).await?)))
}

async fn delete_zone(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(zone): Path<String>,
    params: Result<Query<DeleteZoneParams>, QueryRejection>,
) -> Result<StatusCode, PdmError> {
    let Query(params) = params.map_err(|e| PdmError::InvalidRequest(e.body_text()))?;
    state.manager.delete_zone(&zone, params, &caller.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delegate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((parent, child)): Path<(String, String)>,
    body: Result<Json<DelegationRequest>, JsonRejection>,
) -> Result<Json<DelegationResponse>, PdmError> {
    Ok(Json(state.manager.delegate(&parent, &child, json_body(body)?, &caller.name).await?))
}

async fn reset_epoch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((zone, name)): Path<(String, String)>,
    body: Result<Json<EpochResetRequest>, JsonRejection>,
) -> Result<Json<EpochResetResponse>, PdmError> {
    Ok(Json(state.manager.reset_epoch(&zone, &name, json_body(body)?, &caller.name).await?))
}

async fn records(
    State(state): State<AppState>,
    Path((zone, name)): Path<(String, String)>,
) -> Result<Json<RecordsResponse>, PdmError> {
    Ok(Json(state.manager.records(&zone, &name).await?))
}
