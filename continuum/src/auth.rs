//! Bearer tokens for the HTTP API, with three roles: viewer < operator < owner.
//!
//! The tokens file (`api.tokens_file`) is TOML:
//!
//! ```toml
//! [[tokens]]
//! name = "alice"        # who: shows up in logs and audit records
//! role = "owner"        # viewer | operator | owner
//! sha256 = "9f86d0…"    # hex SHA-256 of the token (preferred: the file then holds no secret)
//!
//! [[tokens]]
//! name = "grafana"
//! role = "viewer"
//! token = "a-long-random-string"   # or the token itself (at least 16 characters)
//! ```
//!
//! Presented tokens are hashed and compared against every entry in constant time. Tokens are
//! never logged; only the entry's `name` is.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Error;
use crate::api::ApiError;

/// Shortest plain token accepted from the file: anything shorter is guessable.
const MIN_TOKEN_LEN: usize = 16;

/// What a token may do. Ordered: a role may do everything the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads status, history and events.
    Viewer,
    /// Also asks for plans (dry runs).
    Operator,
    /// Also starts switchovers.
    Owner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Owner => "owner",
        })
    }
}

/// The authenticated caller of a request (a request extension once the gate let it through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: Option<String>,
    token: Option<String>,
}

struct Known {
    caller: Caller,
    digest: [u8; 32],
}

/// The tokens the API accepts.
pub struct TokenStore {
    known: Vec<Known>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.known.iter().map(|k| k.caller.name.as_str()).collect();
        f.debug_struct("TokenStore").field("names", &names).finish()
    }
}

fn tokens_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Config { key: "api.tokens_file".into(), message: format!("{}: {}", path.display(), message.into()) }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex SHA-256 of `token`: what goes into a tokens file's `sha256`.
pub fn token_sha256_hex(token: &str) -> String {
    sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl TokenStore {
    /// Loads and checks a tokens file. Errors name the file and the entry.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| tokens_error(path, format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(|message| tokens_error(path, message))
    }

    /// Parses the tokens file format; the error says which entry is wrong (never its secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
        let mut known = Vec::with_capacity(file.tokens.len());
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let key = format!("tokens[{i}] ({:?})", entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!("tokens[{i}].name must not be empty"));
            }
            let digest = match (entry.sha256, entry.token) {
                (Some(hex), None) => {
                    parse_hex_digest(&hex).ok_or_else(|| format!("{key}: sha256 must be 64 hex digits"))?
                }
                (None, Some(token)) if token.len() >= MIN_TOKEN_LEN => sha256(token.as_bytes()),
                (None, Some(_)) => return Err(format!("{key}: token must be at least {MIN_TOKEN_LEN} characters")),
                _ => return Err(format!("{key}: give exactly one of sha256 or token")),
            };
            known.push(Known { caller: Caller { name: entry.name, role: entry.role }, digest });
        }
        Ok(Self { known })
    }

    /// The caller a token belongs to. Every entry is compared, in constant time, so the time taken
    /// says nothing about which entry (or which prefix) matched.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for known in &self.known {
            if bool::from(known.digest.ct_eq(&presented)) && found.is_none() {
                found = Some(known.caller.clone());
            }
        }
        found
    }
}

/// What a route group demands: an authenticated caller with at least `min` role.
#[derive(Clone)]
pub struct Gate {
    pub tokens: Arc<TokenStore>,
    pub min: Role,
}

/// Axum middleware for [`Gate`]: 401 (with `WWW-Authenticate: Bearer`) without a known token, 403
/// below the required role. Runs before the handler's extractors, so a rejected request is never
/// parsed, let alone acted on.
pub async fn require_role(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = presented else {
        return ApiError::unauthenticated("missing bearer token").into_response();
    };
    let Some(caller) = gate.tokens.authenticate(token) else {
        tracing::info!(path = %request.uri().path(), "rejected an unknown bearer token");
        return ApiError::unauthenticated("unknown bearer token").into_response();
    };
    if caller.role < gate.min {
        tracing::info!(caller = %caller.name, role = %caller.role, path = %request.uri().path(), "forbidden");
        return ApiError::forbidden(format!("role {} required; {} has role {}", gate.min, caller.name, caller.role))
            .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_by_hash_or_plain() {
        let hash = token_sha256_hex("owner-token-0123456789");
        let store = TokenStore::parse(&format!(
            "[[tokens]]\nname = \"o\"\nrole = \"owner\"\nsha256 = \"{hash}\"\n\
             [[tokens]]\nname = \"v\"\nrole = \"viewer\"\ntoken = \"viewer-token-0123456789\"\n"
        ))
        .unwrap();
        assert_eq!(store.authenticate("owner-token-0123456789").unwrap().role, Role::Owner);
        assert_eq!(store.authenticate("viewer-token-0123456789").unwrap().name, "v");
        assert_eq!(store.authenticate("owner-token-012345678"), None);
        assert_eq!(store.authenticate(""), None);
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_secrets() {
        let err =
            TokenStore::parse("[[tokens]]\nname = \"x\"\nrole = \"owner\"\ntoken = \"short-secret\"\n").err().unwrap();
        assert!(err.contains("at least 16"), "{err}");
        assert!(!err.contains("short-secret"), "{err}");
        let err = TokenStore::parse("[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"0123456789abcdef\"\n")
            .err()
            .unwrap();
        assert!(err.contains("admin"), "{err}");
        let err = TokenStore::parse("[[tokens]]\nname = \"x\"\nrole = \"owner\"\n").err().unwrap();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Owner);
    }
}
