//! The crate's one error type. Every variant has a stable [`LeaseError::metric_label`].

use serde::{Deserialize, Serialize};

use crate::types::{LeaseRecord, RefusalReason};

/// Everything a lease operation can fail with. Serializable so that a node can hand a forwarded
/// caller the same error it would have seen locally.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum LeaseError {
    /// The store answered and said no; nothing changed. `current` is the record as it was.
    #[error("refused ({reason:?}); current holder {:?} epoch {}", current.holder, current.epoch)]
    Refused { reason: RefusalReason, current: Box<LeaseRecord> },
    /// The call did not complete in time. It may or may not have been applied: treat it as the
    /// unsafe outcome (a holder must assume its lease may be gone).
    #[error("{op}: no answer within {timeout_ms} ms, outcome unknown")]
    Unknown { op: String, timeout_ms: u64 },
    /// No raft leader is known right now; the request was not submitted.
    #[error("no raft leader known")]
    NoLeader,
    /// The request could not be delivered (connection refused, TLS handshake failed).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Request rejected before reaching the store; nothing changed.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// No record exists for the pair and this node is not configured to create it; nothing
    /// changed.
    #[error("unknown pair `{0}`: a pair's record is created only by a data daemon configured with it")]
    UnknownPair(String),
    /// The caller's certificate does not allow this request (HTTP 403); nothing changed.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// This node does not lead; a remote client resubmits to `leader` (an address), if known.
    /// Nothing changed. Remote requests are not forwarded: the leader must see the caller's own
    /// certificate.
    #[error("not the raft leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    #[error("invalid config key `{key}`: {message}")]
    Config { key: String, message: String },
    #[error("tls: {0}")]
    Tls(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("transport: {0}")]
    Transport(String),
}

impl LeaseError {
    /// A short, stable label for metrics (`lease_errors_total{kind="..."}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaseError::Refused { .. } => "refused",
            LeaseError::Unknown { .. } => "unknown",
            LeaseError::NoLeader => "no_leader",
            LeaseError::Unreachable(_) => "unreachable",
            LeaseError::InvalidInput(_) => "invalid_input",
            LeaseError::Forbidden(_) => "forbidden",
            LeaseError::UnknownPair(_) => "unknown_pair",
            LeaseError::NotLeader { .. } => "not_leader",
            LeaseError::Config { .. } => "config",
            LeaseError::Tls(_) => "tls",
            LeaseError::Storage(_) => "storage",
            LeaseError::Raft(_) => "raft",
            LeaseError::Transport(_) => "transport",
        }
    }

    /// True when the request certainly changed nothing, so retrying it cannot apply it twice.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            LeaseError::Refused { .. }
                | LeaseError::NoLeader
                | LeaseError::Unreachable(_)
                | LeaseError::InvalidInput(_)
                | LeaseError::Forbidden(_)
                | LeaseError::UnknownPair(_)
                | LeaseError::NotLeader { .. }
                | LeaseError::Config { .. }
        )
    }

    pub(crate) fn config(key: &str, message: impl Into<String>) -> Self {
        LeaseError::Config { key: key.to_string(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Errors cross the wire when a node forwards a request: every variant must round-trip.
    #[test]
    fn every_variant_round_trips_as_json() {
        let all = [
            LeaseError::Refused { reason: RefusalReason::HeldByOther, current: Box::default() },
            LeaseError::Unknown { op: "renew".into(), timeout_ms: 5 },
            LeaseError::NoLeader,
            LeaseError::Unreachable("x".into()),
            LeaseError::InvalidInput("x".into()),
            LeaseError::Forbidden("x".into()),
            LeaseError::UnknownPair("x".into()),
            LeaseError::NotLeader { leader: Some("127.0.0.1:1".into()) },
            LeaseError::NotLeader { leader: None },
            LeaseError::config("k", "m"),
            LeaseError::Tls("x".into()),
            LeaseError::Storage("x".into()),
            LeaseError::Raft("x".into()),
            LeaseError::Transport("x".into()),
        ];
        for e in all {
            let json = serde_json::to_string(&e).unwrap_or_else(|err| panic!("{}: {err}", e.metric_label()));
            assert_eq!(serde_json::from_str::<LeaseError>(&json).unwrap(), e);
        }
    }
}
