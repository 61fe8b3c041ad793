//! A typed client for PDM's API, for the daemon (and the tests).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::PdmError;
use crate::model::*;

#[derive(Debug, Clone)]
pub struct PdmClient {
    http: reqwest::Client,
    base: String,
    token: String,
    /// Bound of one HTTP exchange; also the slack on top of PDM's own deadline when polling.
    timeout: Duration,
}

/// [`PdmClient::with_http`] does not know its client's timeout; this is what it assumes.
const ASSUMED_TIMEOUT: Duration = Duration::from_secs(5);

impl PdmClient {
    /// `base_url` e.g. `http://127.0.0.1:8053`. `timeout` bounds each call; a commit that times
    /// out is [`PdmError::OutcomeUnknown`] and is safe to retry with the same epoch.
    pub fn new(base_url: &str, token: &str, timeout: Duration) -> Result<Self, PdmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PdmError::Config(format!("build HTTP client: {e}")))?;
        Ok(Self { timeout, ..Self::with_http(http, base_url, token) })
    }

    /// Reuses a configured client (e.g. one that trusts PDM's TLS certificate).
    pub fn with_http(http: reqwest::Client, base_url: &str, token: &str) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            timeout: ASSUMED_TIMEOUT,
        }
    }

    /// Commits, following a 202 (a long commit, e.g. a pre-warm) by polling its operation until
    /// PDM answers for good or PDM's announced deadline plus this client's timeout has passed.
    /// Each HTTP exchange stays within the timeout. Anything that breaks off a poll leaves the
    /// outcome unknown ([`PdmError::OutcomeUnknown`]): retry with the same epoch (a retry while
    /// PDM still runs the commit joins it).
    pub async fn commit(&self, request: &CommitRequest) -> Result<CommitResponse, PdmError> {
        let post = self.http.post(format!("{}/v1/commit", self.base)).bearer_auth(&self.token).json(request);
        let mut response = post.send().await.map_err(transport)?;
        let mut deadline: Option<Instant> = None;
        while response.status() == StatusCode::ACCEPTED {
            let pending: OperationPending = response
                .json()
                .await
                .map_err(|e| PdmError::OutcomeUnknown(format!("decode PDM's pending answer: {e}")))?;
            let until = *deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_millis(pending.deadline_ms) + self.timeout);
            if Instant::now() >= until {
                return Err(PdmError::OutcomeUnknown(format!(
                    "PDM operation {} still pending past its deadline",
                    pending.operation
                )));
            }
            let url = format!("{}/v1/operations/{}", self.base, pending.operation);
            response =
                self.http.get(url).bearer_auth(&self.token).send().await.map_err(|e| {
                    PdmError::OutcomeUnknown(format!("polling PDM operation {}: {e}", pending.operation))
                })?;
            if response.status() == StatusCode::NOT_FOUND {
                return Err(PdmError::OutcomeUnknown(format!(
                    "PDM lost operation {} (restarted?): {}",
                    pending.operation,
                    remote_error(response).await
                )));
            }
        }
        if !response.status().is_success() {
            return Err(remote_error(response).await);
        }
        response.json().await.map_err(|e| PdmError::Transport(format!("decode PDM answer: {e}")))
    }

    /// Sets a name's recorded epoch (admin token).
    pub async fn reset_epoch(
        &self,
        zone: &str,
        name: &str,
        request: &EpochResetRequest,
    ) -> Result<EpochResetResponse, PdmError> {
        self.call(Method::PUT, &format!("/v1/epochs/{zone}/{name}"), Some(request)).await
    }

    pub async fn zones(&self) -> Result<ZoneList, PdmError> {
        self.call::<(), _>(Method::GET, "/v1/zones", None).await
    }

    pub async fn create_zone(&self, request: &CreateZoneRequest) -> Result<ZoneInfo, PdmError> {
        self.call(Method::POST, "/v1/zones", Some(request)).await
    }

    /// Deletes a zone; `force_reason` overrides the foreign-records guard.
    pub async fn delete_zone(&self, zone: &str, force_reason: Option<&str>) -> Result<(), PdmError> {
        let mut url = format!("{}/v1/zones/{zone}", self.base);
        if let Some(reason) = force_reason {
            url.push_str(&format!("?force=true&reason={}", percent_encode(reason)));
        }
        let response = self.http.delete(url).bearer_auth(&self.token).send().await.map_err(transport)?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(remote_error(response).await)
    }

    pub async fn delegate(
        &self,
        parent: &str,
        child: &str,
        request: &DelegationRequest,
    ) -> Result<DelegationResponse, PdmError> {
        self.call(Method::PUT, &format!("/v1/zones/{parent}/delegations/{child}"), Some(request)).await
    }

    pub async fn records(&self, zone: &str, name: &str) -> Result<RecordsResponse, PdmError> {
        self.call::<(), _>(Method::GET, &format!("/v1/records/{zone}/{name}"), None).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, PdmError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(transport)?;
        if !response.status().is_success() {
            return Err(remote_error(response).await);
        }
        response.json().await.map_err(|e| PdmError::Transport(format!("decode PDM answer: {e}")))
    }
}

fn transport(e: reqwest::Error) -> PdmError {
    if e.is_timeout() {
        PdmError::OutcomeUnknown(format!("PDM call timed out: {e}"))
    } else {
        PdmError::Transport(e.to_string())
    }
}

async fn remote_error(response: reqwest::Response) -> PdmError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => PdmError::Remote { status, code: body.code, message: body.error },
        Err(_) => PdmError::Remote { status, code: "unknown".into(), message: text },
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
