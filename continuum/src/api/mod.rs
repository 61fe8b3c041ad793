//! The daemon's HTTP API (axum): health, readiness, metrics, and the `/v1` operations, which it
//! hands to an [`Orchestrator`].
//!
//! | route | role |
//! | --- | --- |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none |
//! | `GET /v1/status`, `GET /v1/switchovers[/{id}]`, `GET /v1/events` | viewer |
//! | `POST /v1/plan` | operator |
//! | `POST /v1/switchover`, `POST /v1/switchovers/{id}/abort` | owner |
//!
//! Errors use real status codes and one body shape, [`ErrorBody`]. Authentication runs before the
//! body is read, so a rejected request never reaches the orchestrator.

mod types;
pub mod validate;

use std::convert::Infallible;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::types::*;
use crate::Error;
use crate::auth::{Caller, Gate, Role, TokenStore, require_role};
use crate::metrics::Metrics;

/// The operations behind `/v1`. The daemon's implementation drives the replicated switchover
/// record; the router only authenticates, parses and maps errors to status codes.
///
/// Errors map to: [`Error::NotFound`] 404, [`Error::Ineligible`] and [`Error::Conflict`] 409,
/// [`Error::BadRequest`] 400, [`Error::Unavailable`] 503, anything else 500.
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    async fn status(&self) -> Result<Status, Error>;
    /// Dry run: changes nothing.
    async fn plan(&self, request: &PlanRequest) -> Result<Plan, Error>;
    /// Starts a switchover and returns its id once the intent is durable; progress is reported
    /// through [`Orchestrator::subscribe`] and [`Orchestrator::switchover`].
    async fn start_switchover(&self, request: &SwitchoverRequest, caller: &Caller) -> Result<Uuid, Error>;
    /// Past and in-flight switchovers, newest first.
    async fn history(&self) -> Result<Vec<SwitchoverRecord>, Error>;
    async fn switchover(&self, id: Uuid) -> Result<SwitchoverRecord, Error>;
    /// Aborts switchover `id` before the lease moves (the old holder rolls back): the record as
    /// stored by the abort. [`Error::NotFound`] for an unknown id, [`Error::Conflict`] once the
    /// lease is moving or the switchover finished.
    async fn abort_switchover(&self, id: Uuid, caller: &Caller) -> Result<SwitchoverRecord, Error>;
    /// State changes and step progress from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// Whether the daemon should receive traffic, with the reason when it should not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub orchestrator: Arc<dyn Orchestrator>,
    pub tokens: Arc<TokenStore>,
    pub metrics: Metrics,
    pub readiness: watch::Receiver<Readiness>,
    /// Cancelled when the daemon stops; ends event streams so graceful shutdown can finish.
    pub shutdown: CancellationToken,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(ref r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body over {} bytes", validate::MAX_BODY_BYTES),
            ),
            // Syntax errors and wrong shapes alike are the client's malformed body: 400 with
            // serde's words for what is wrong.
            other => Self::bad_request(format!("malformed JSON body: {}", other.body_text())),
        }
    }
}

/// `Json` whose rejection is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
struct Body<T>(T);

impl ApiState {
    /// Turns an orchestrator error into an answer; the error is logged and counted here, where
    /// it is handled.
    fn reject(&self, error: Error) -> ApiError {
        self.metrics.count_error(&error);
        let message = error.to_string();
        let (status, code) = match &error {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Error::Ineligible { .. } => (StatusCode::CONFLICT, "ineligible"),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            Error::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => {
                tracing::error!(error = %crate::error_chain(&error), "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        if status != StatusCode::INTERNAL_SERVER_ERROR {
            tracing::info!(%message, "request refused");
        }
        ApiError::new(status, code, message)
    }
}

/// The API's router.
pub fn router(state: ApiState) -> Router {
    let gate = |min: Role| Gate { tokens: state.tokens.clone(), min };
    let viewer = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/switchovers", get(history))
        .route("/v1/switchovers/{id}", get(switchover))
        .route("/v1/events", get(events))
        .route_layer(from_fn_with_state(gate(Role::Viewer), require_role));
    let operator =
        Router::new().route("/v1/plan", post(plan)).route_layer(from_fn_with_state(gate(Role::Operator), require_role));
    let owner = Router::new()
        .route("/v1/switchover", post(start_switchover))
        .route("/v1/switchovers/{id}/abort", post(abort_switchover))
        .route_layer(from_fn_with_state(gate(Role::Owner), require_role));
    Router::new()
        .route("/", get(|| async { console_asset("text/html; charset=utf-8", CONSOLE_HTML) }))
        .route("/console.js", get(|| async { console_asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/console.css", get(|| async { console_asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(viewer)
        .merge(operator)
        .merge(owner)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(axum::extract::DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `state.shutdown` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Like [`serve`], over TLS.
pub async fn serve_tls(listener: tokio::net::TcpListener, tls: TlsConfig, state: ApiState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    serve_router_tls(listener, tls, router(state), shutdown).await
}

/// Serves any router over TLS until `shutdown` is cancelled (then a short grace for open
/// requests).
pub async fn serve_router_tls(
    listener: tokio::net::TcpListener,
    tls: TlsConfig,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let on_shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        // Event streams end on the same signal, so open requests finish well within the grace.
        on_shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls.0)?.handle(handle).serve(router.into_make_service()).await
}

/// How long a TLS shutdown waits for open requests.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The API's TLS server configuration (rustls with ring).
#[derive(Clone)]
pub struct TlsConfig(axum_server::tls_rustls::RustlsConfig);

impl TlsConfig {
    /// Loads a PEM certificate chain and private key; errors name `api.tls_cert` / `api.tls_key`.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, Error> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |key: &str, message: String| Error::Config { key: key.into(), message };
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid("api.tls_cert", format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(invalid("api.tls_cert", format!("{} holds no certificate", cert.display())));
        }
        let private_key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("api.tls_key", format!("{}: {e}", key.display())))?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private_key))
                .map_err(|e| invalid("api.tls_key", format!("does not match api.tls_cert or is unusable: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config))))
    }
}

// The console: static files, no data in them; the page calls the API with the user's token.
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");
/// Scripts and styles from this origin only, no framing (the page has a switchover button).
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                               img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn console_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match &*state.readiness.borrow() {
        Readiness::Ready => "ready\n".into_response(),
        Readiness::NotReady(reason) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason.clone()).into_response()
        }
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => state.reject(error).into_response(),
    }
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    state.orchestrator.status().await.map(Json).map_err(|e| state.reject(e))
}

fn require_region(to: &str) -> Result<(), ApiError> {
    if to.trim().is_empty() {
        return Err(ApiError::bad_request("`to` must name a region"));
    }
    Ok(())
}

async fn plan(State(state): State<ApiState>, Body(request): Body<PlanRequest>) -> Result<Json<Plan>, ApiError> {
    require_region(&request.to)?;
    validate::request_sizes(&request.to, request.pair.as_deref(), "").map_err(|e| state.reject(e))?;
    state.orchestrator.plan(&request).await.map(Json).map_err(|e| state.reject(e))
}

async fn start_switchover(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Body(request): Body<SwitchoverRequest>,
) -> Result<Response, ApiError> {
    require_region(&request.to)?;
    validate::request_sizes(&request.to, request.pair.as_deref(), &request.reason).map_err(|e| state.reject(e))?;
    let id = state.orchestrator.start_switchover(&request, &caller).await.map_err(|e| state.reject(e))?;
    tracing::info!(%id, caller = %caller.name, to = %request.to, "switchover accepted");
    let location = HeaderValue::from_str(&format!("/v1/switchovers/{id}")).expect("a uuid path is a valid header");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(SwitchoverAccepted { id })).into_response())
}

async fn abort_switchover(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SwitchoverRecord>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::bad_request(format!("switchover id {id:?}: {e}")))?;
    let record = state.orchestrator.abort_switchover(id, &caller).await.map_err(|e| state.reject(e))?;
    tracing::warn!(%id, caller = %caller.name, "switchover aborted");
    Ok(Json(record))
}

async fn history(State(state): State<ApiState>) -> Result<Json<Vec<SwitchoverRecord>>, ApiError> {
    state.orchestrator.history().await.map(Json).map_err(|e| state.reject(e))
}

async fn switchover(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<SwitchoverRecord>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::bad_request(format!("switchover id {id:?}: {e}")))?;
    state.orchestrator.switchover(id).await.map(Json).map_err(|e| state.reject(e))
}

async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<axum::response::sse::Event, Infallible>>> {
    let receiver = state.orchestrator.subscribe();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((event, receiver))
    })
    .map(|event| {
        let sse = axum::response::sse::Event::default().event(event.name());
        Ok(sse.json_data(&event).unwrap_or_else(|_| axum::response::sse::Event::default().comment("unencodable")))
    })
    .take_until(state.shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}
