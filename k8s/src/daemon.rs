//! The reconciler's client of one daemon's HTTP API: short deadlines, the token from a Secret,
//! the daemon's own wire types (`continuum::api`).

use std::time::Duration;

use continuum::api::{ErrorBody, PairStatus, Status, SwitchoverAccepted, SwitchoverRecord, SwitchoverRequest};

use crate::Error;

/// Deadline of one daemon call: status is mirrored again on the next round anyway.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct DaemonClient {
    http: reqwest::Client,
}

impl Default for DaemonClient {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonClient {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("a reqwest client with a crypto provider installed builds");
        Self { http }
    }

    /// The pair named `pair` in `GET /v1/status` of the daemon at `url`.
    pub async fn pair_status(&self, region: &str, url: &str, token: &str, pair: &str) -> Result<PairStatus, Error> {
        let status: Status = self.get(region, url, "/v1/status", token).await?;
        status.pairs.into_iter().find(|p| p.name == pair).ok_or_else(|| Error::Daemon {
            region: region.into(),
            url: url.into(),
            message: format!("protects no pair named {pair}"),
            source: None,
        })
    }

    pub async fn switchover(&self, region: &str, url: &str, id: &str, token: &str) -> Result<SwitchoverRecord, Error> {
        self.get(region, url, &format!("/v1/switchovers/{id}"), token).await
    }

    /// `POST /v1/switchover`. A 4xx answer is [`Error::Refused`] with the daemon's message.
    pub async fn start_switchover(
        &self,
        region: &str,
        url: &str,
        token: &str,
        request: &SwitchoverRequest,
    ) -> Result<SwitchoverAccepted, Error> {
        let failed = |message: String, source: Option<reqwest::Error>| Error::Daemon {
            region: region.into(),
            url: url.into(),
            message,
            source,
        };
        let response = self
            .http
            .post(format!("{}/v1/switchover", url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(request)
            .send()
            .await
            .map_err(|e| failed("POST /v1/switchover".into(), Some(e)))?;
        let code = response.status();
        if code.is_client_error() {
            let message = match response.json::<ErrorBody>().await {
                Ok(body) => format!("{} ({}): {}", code.as_u16(), body.error.code, body.error.message),
                Err(_) => code.to_string(),
            };
            return Err(Error::Refused { message });
        }
        if !code.is_success() {
            return Err(failed(format!("POST /v1/switchover answered {code}"), None));
        }
        response.json().await.map_err(|e| failed("POST /v1/switchover: bad body".into(), Some(e)))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        region: &str,
        url: &str,
        path: &str,
        token: &str,
    ) -> Result<T, Error> {
        let failed = |message: String, source: Option<reqwest::Error>| Error::Daemon {
            region: region.into(),
            url: url.into(),
            message,
            source,
        };
        let response = self
            .http
            .get(format!("{}{path}", url.trim_end_matches('/')))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| failed(format!("GET {path}"), Some(e)))?;
        let code = response.status();
        if !code.is_success() {
            return Err(failed(format!("GET {path} answered {code}"), None));
        }
        response.json().await.map_err(|e| failed(format!("GET {path}: bad body"), Some(e)))
    }
}
