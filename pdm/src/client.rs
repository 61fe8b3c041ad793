//! A small client for the PowerDNS Authoritative HTTP API (`/api/v1/servers/localhost`).
//!
//! The key goes in the `X-API-Key` header only (the `?api-key=` form leaks into logs and is gone
//! in 5.1). Errors keep PowerDNS' own `{"error": ...}` text. A timed-out call is
//! [`PdmError::OutcomeUnknown`]: PowerDNS may have applied it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::PdmError;

/// One rrset as PowerDNS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RRSet {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: u32,
    pub records: Vec<Record>,
    #[serde(default)]
    pub comments: Vec<Comment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub content: String,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub content: String,
    #[serde(default)]
    pub account: String,
}

/// A zone with its rrsets.
#[derive(Debug, Clone, Deserialize)]
pub struct Zone {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub serial: u64,
    #[serde(default)]
    pub rrsets: Vec<RRSet>,
}

/// A zone in the server's zone list (no rrsets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneSummary {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub serial: u64,
}

/// One change of a PATCH; all changes of one PATCH are applied in one transaction.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "changetype", rename_all = "UPPERCASE")]
pub enum RRSetChange {
    Replace {
        name: String,
        #[serde(rename = "type")]
        rtype: String,
        ttl: u32,
        records: Vec<Record>,
        /// Replaces the rrset's comments (PDM keeps the LUA spec there, atomically with the body).
        comments: Vec<Comment>,
    },
    Delete {
        name: String,
        #[serde(rename = "type")]
        rtype: String,
    },
}

/// What a new zone starts with; PowerDNS adds the SOA from `default-soa-content`.
#[derive(Debug, Clone, Serialize)]
pub struct NewZone {
    pub name: String,
    pub kind: String,
    pub nameservers: Vec<String>,
    pub rrsets: Vec<RRSet>,
    pub soa_edit_api: String,
}

#[derive(Debug, Clone)]
pub struct PowerDnsClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl PowerDnsClient {
    /// `api_url` is the webserver root, e.g. `http://127.0.0.1:8081`. Needs a rustls crypto
    /// provider installed (reqwest is built without one).
    pub fn new(api_url: &str, api_key: &str, timeout: Duration) -> Result<Self, PdmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PdmError::Config(format!("build PowerDNS HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api/v1/servers/localhost", api_url.trim_end_matches('/')),
            api_key: api_key.to_string(),
        })
    }

    pub async fn list_zones(&self) -> Result<Vec<ZoneSummary>, PdmError> {
        let response = self.call(Method::GET, "/zones", None).await?;
        decode(response).await
    }

    /// The zone with all its rrsets, or `None` if PowerDNS does not know it.
    pub async fn get_zone(&self, zone: &str) -> Result<Option<Zone>, PdmError> {
        match self.call(Method::GET, &format!("/zones/{zone}"), None).await {
            Ok(response) => Ok(Some(decode(response).await?)),
            Err(e) if is_missing_zone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A zone that must exist.
    pub async fn zone(&self, zone: &str) -> Result<Zone, PdmError> {
        self.get_zone(zone).await?.ok_or_else(|| PdmError::ZoneNotFound(zone.to_string()))
    }

    pub async fn create_zone(&self, zone: &NewZone) -> Result<(), PdmError> {
        let body = serde_json::to_value(zone).map_err(|e| PdmError::InvalidRequest(e.to_string()))?;
        match self.call(Method::POST, "/zones", Some(body)).await {
            Err(PdmError::PowerDnsRejected { status: 409, .. }) => Err(PdmError::ZoneExists(zone.name.clone())),
            other => other.map(drop),
        }
    }

    pub async fn delete_zone(&self, zone: &str) -> Result<(), PdmError> {
        match self.call(Method::DELETE, &format!("/zones/{zone}"), None).await {
            Err(e) if is_missing_zone(&e) => Err(PdmError::ZoneNotFound(zone.to_string())),
            other => other.map(drop),
        }
    }

    /// Applies all `changes` atomically (PowerDNS purges the zone from its caches).
    pub async fn patch_rrsets(&self, zone: &str, changes: &[RRSetChange]) -> Result<(), PdmError> {
        let body = json!({ "rrsets": changes });
        match self.call(Method::PATCH, &format!("/zones/{zone}"), Some(body)).await {
            Err(e) if is_missing_zone(&e) => Err(PdmError::ZoneNotFound(zone.to_string())),
            other => other.map(drop),
        }
    }

    /// Values of one metadata kind; PowerDNS only accepts custom kinds starting with `X-`.
    pub async fn get_metadata(&self, zone: &str, kind: &str) -> Result<Vec<String>, PdmError> {
        #[derive(Deserialize)]
        struct Metadata {
            #[serde(default)]
            metadata: Vec<String>,
        }
        let response = self.call(Method::GET, &format!("/zones/{zone}/metadata/{kind}"), None).await?;
        Ok(decode::<Metadata>(response).await?.metadata)
    }

    /// Replaces the values of one metadata kind.
    pub async fn put_metadata(&self, zone: &str, kind: &str, values: &[String]) -> Result<(), PdmError> {
        let body = json!({ "kind": kind, "metadata": values });
        self.call(Method::PUT, &format!("/zones/{zone}/metadata/{kind}"), Some(body)).await.map(drop)
    }

    /// Drops the zone from the packet and query caches (needed after zone-level PUTs only;
    /// PATCH and DELETE purge by themselves).
    pub async fn flush_cache(&self, zone: &str) -> Result<(), PdmError> {
        self.call(Method::PUT, &format!("/cache/flush?domain={zone}"), None).await.map(drop)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, PdmError> {
        let what = format!("{method} {path}");
        let mut request = self.http.request(method, format!("{}{path}", self.base)).header("X-API-Key", &self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                PdmError::OutcomeUnknown(format!("PowerDNS {what} timed out"))
            } else if e.is_connect() {
                // Nothing was sent: the call definitely did not happen.
                PdmError::PowerDnsUnavailable(format!("{what}: {e}"))
            } else {
                PdmError::OutcomeUnknown(format!("PowerDNS {what}: {e}"))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(text);
        Err(PdmError::PowerDnsRejected { status: status.as_u16(), message: format!("{what}: {message}") })
    }
}

fn is_missing_zone(e: &PdmError) -> bool {
    // 4.7 answers an unknown zone with 404, and with 422 "Could not find domain" on some paths.
    matches!(e, PdmError::PowerDnsRejected { status, message }
        if *status == StatusCode::NOT_FOUND.as_u16() || message.contains("Could not find domain"))
}

async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, PdmError> {
    let bytes = response.bytes().await.map_err(|e| PdmError::PowerDnsUnavailable(format!("read answer: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PdmError::PowerDnsData(format!("unexpected answer ({e}): {}", String::from_utf8_lossy(&bytes))))
}
