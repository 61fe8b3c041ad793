//! PDM's HTTP API (axum). Every route but `/healthz` needs `Authorization: Bearer <token>`.
//!
//! | route | body → answer |
//! |---|---|
//! | `GET /healthz` | → `{"status":"ok"}` (503 when PowerDNS' API does not answer) |
//! | `POST /v1/commit` | [`CommitRequest`] → [`CommitResponse`] |
//! | `GET /v1/zones` | → [`ZoneList`] |
//! | `POST /v1/zones` | [`CreateZoneRequest`] → 201 [`ZoneInfo`] |
//! | `DELETE /v1/zones/{zone}?force=&reason=` | → 204 |
//! | `PUT /v1/zones/{parent}/delegations/{child}` | [`DelegationRequest`] → [`DelegationResponse`] |
//! | `GET /v1/records/{zone}/{name}` | → [`RecordsResponse`] |
//!
//! Errors are [`ErrorBody`] `{"error": "...", "code": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use crate::PdmError;
use crate::manager::Manager;
use crate::model::*;

#[derive(Clone)]
pub(crate) struct AppState {
    pub manager: Arc<Manager>,
    pub token: Arc<str>,
}

pub(crate) fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/commit", post(commit))
        .route("/v1/zones", get(list_zones).post(create_zone))
        .route("/v1/zones/{zone}", delete(delete_zone))
        .route("/v1/zones/{parent}/delegations/{child}", put(delegate))
        .route("/v1/records/{zone}/{name}", get(records))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().route("/healthz", get(healthz)).merge(v1).fallback(not_found).with_state(state)
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

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        return PdmError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, byte) in b.iter().enumerate() {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
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
    body: Result<Json<CommitRequest>, JsonRejection>,
) -> Result<Json<CommitResponse>, PdmError> {
    Ok(Json(state.manager.commit(json_body(body)?).await?))
}

async fn list_zones(State(state): State<AppState>) -> Result<Json<ZoneList>, PdmError> {
    Ok(Json(state.manager.list_zones().await?))
}

async fn create_zone(
    State(state): State<AppState>,
    body: Result<Json<CreateZoneRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ZoneInfo>), PdmError> {
    Ok((StatusCode::CREATED, Json(state.manager.create_zone(json_body(body)?).await?)))
}

async fn delete_zone(
    State(state): State<AppState>,
    Path(zone): Path<String>,
    params: Result<Query<DeleteZoneParams>, QueryRejection>,
) -> Result<StatusCode, PdmError> {
    let Query(params) = params.map_err(|e| PdmError::InvalidRequest(e.body_text()))?;
    state.manager.delete_zone(&zone, params).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delegate(
    State(state): State<AppState>,
    Path((parent, child)): Path<(String, String)>,
    body: Result<Json<DelegationRequest>, JsonRejection>,
) -> Result<Json<DelegationResponse>, PdmError> {
    Ok(Json(state.manager.delegate(&parent, &child, json_body(body)?).await?))
}

async fn records(
    State(state): State<AppState>,
    Path((zone, name)): Path<(String, String)>,
) -> Result<Json<RecordsResponse>, PdmError> {
    Ok(Json(state.manager.records(&zone, &name).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(super::constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!super::constant_time_eq(b"secret-toke", b"secret-token"));
        assert!(!super::constant_time_eq(b"secret-tokenX", b"secret-token"));
        assert!(!super::constant_time_eq(b"", b"secret-token"));
    }
}
