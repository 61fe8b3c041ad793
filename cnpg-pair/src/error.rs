//! The crate's one error type, classified for the daemon's retry/alert decisions.

use std::path::PathBuf;
use std::time::Duration;

use crate::sync::StoreWriteError;

/// What the caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient or of unknown outcome: retry the same (idempotent) operation after a backoff.
    Retryable,
    /// Will not fix itself (bad config, missing binary, gave up): a human has to look.
    NeedsOperator,
    /// Proceeding could lose acknowledged commits or create a second writable primary: stop the
    /// sequence and keep the node fenced.
    Unsafe,
}

/// Errors of the data-plane driver. Every variant names the node it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("{node}: cannot connect to PostgreSQL: {}", with_causes(source))]
    Connect {
        node: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server refused the role or its password (or `pg_hba.conf` has no entry for it).
    #[error("{node}: PostgreSQL refused the credentials: {}", with_causes(source))]
    Auth {
        node: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The TLS handshake failed: a server certificate that does not verify under `sslmode`
    /// (unknown CA, wrong host name), or TLS required but not offered.
    #[error("{node}: TLS with PostgreSQL failed: {}", with_causes(source))]
    Tls {
        node: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("{node}: {what} failed: {}", with_causes(source))]
    Query {
        node: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The deadline passed before an answer: the outcome is unknown, not failed.
    #[error("{node}: {what} did not finish within {after:?}; outcome unknown")]
    Timeout { node: String, what: &'static str, after: Duration },

    #[error("{node}: `{command}` failed: {detail}")]
    Command { node: String, command: String, detail: String },

    #[error("{node}: {path}: {source}")]
    Io {
        node: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{node}: unexpected output from {what}: {detail}")]
    Parse { node: String, what: &'static str, detail: String },

    #[error("{node}: system identifier {found} does not match {expected}; LSNs are not comparable")]
    SystemIdMismatch { node: String, expected: u64, found: u64 },

    #[error("{node}: on timeline {found}, expected {expected}; LSNs are not comparable")]
    TimelineMismatch { node: String, expected: u32, found: u32 },

    #[error("{node}: is {found}, expected {expected}")]
    WrongRole { node: String, expected: &'static str, found: &'static str },

    #[error("{node}: refuses epoch {epoch}: epoch {recorded} is already recorded")]
    EpochWentBackwards { node: String, epoch: u64, recorded: u64 },

    #[error("{node}: pg_promote did not confirm the promotion; outcome unknown")]
    PromotionNotConfirmed { node: String },

    /// Its history diverged from the upstream's: it cannot simply follow (needs pg_rewind).
    #[error("{node}: diverged from {upstream}: {detail}")]
    Diverged { node: String, upstream: String, detail: String },

    #[error("durability is `required`: synchronous replication is never relaxed")]
    DurabilityRequired,

    #[error("lease store write: {0}")]
    StoreWrite(#[from] StoreWriteError),

    #[error("{node}: rejoin gave up after {attempts} attempts; last error: {last}")]
    RejoinGaveUp { node: String, attempts: u32, last: Box<Error> },

    /// The Kubernetes client could not be configured (kubeconfig, in-cluster credentials).
    #[error("{node}: Kubernetes client configuration ({from}): {source}")]
    KubeConfig {
        node: String,
        from: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A Kubernetes API call failed; [`Error::class`] looks at the HTTP status.
    #[error("{node}: Kubernetes API: {action}: {source}")]
    Kube {
        node: String,
        action: String,
        /// Boxed: `kube::Error` is large and would bloat every `Result` of the crate.
        #[source]
        source: Box<kube::Error>,
    },

    /// The `Cluster` resource is not what the CNPG driver needs (missing field, wrong topology).
    #[error("{node}: Cluster {cluster}: {detail}")]
    ClusterSpec { node: String, cluster: String, detail: String },

    /// CNPG reports the `Cluster` as needing manual intervention (e.g. a promotion token that
    /// does not match the instance).
    #[error("{node}: Cluster {cluster} is in phase {phase:?}: {reason}")]
    ClusterUnrecoverable { node: String, cluster: String, phase: String, reason: String },

    /// A demotion/promotion token that does not decode or is not CNPG's format.
    #[error("{node}: invalid CNPG token: {detail}")]
    BadToken { node: String, detail: String },

    /// The token was used before (or CNPG already consumed it): sending it again would make CNPG
    /// ignore it or mark the cluster unrecoverable.
    #[error("{node}: refuses to send a promotion token that was already used ({token_prefix}…)")]
    TokenReused { node: String, token_prefix: String },

    /// The token belongs to another history than the local instance's (system or timeline).
    #[error("{node}: promotion token does not match the local instance: {detail}")]
    StaleToken { node: String, detail: String },
}

impl Error {
    /// A short stable label for metrics (`error="timeout"`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::Connect { .. } => "connect",
            Error::Auth { .. } => "auth",
            Error::Tls { .. } => "tls",
            Error::Query { .. } => "query",
            Error::Timeout { .. } => "timeout",
            Error::Command { .. } => "command",
            Error::Io { .. } => "io",
            Error::Parse { .. } => "parse",
            Error::SystemIdMismatch { .. } => "system_id_mismatch",
            Error::TimelineMismatch { .. } => "timeline_mismatch",
            Error::WrongRole { .. } => "wrong_role",
            Error::EpochWentBackwards { .. } => "epoch_went_backwards",
            Error::PromotionNotConfirmed { .. } => "promotion_not_confirmed",
            Error::Diverged { .. } => "diverged",
            Error::DurabilityRequired => "durability_required",
            Error::StoreWrite(_) => "store_write",
            Error::RejoinGaveUp { .. } => "rejoin_gave_up",
            Error::KubeConfig { .. } => "kube_config",
            Error::Kube { .. } => "kube",
            Error::ClusterSpec { .. } => "cluster_spec",
            Error::ClusterUnrecoverable { .. } => "cluster_unrecoverable",
            Error::BadToken { .. } => "bad_token",
            Error::TokenReused { .. } => "token_reused",
            Error::StaleToken { .. } => "stale_token",
        }
    }

    /// Whether to retry, page someone, or stop because going on is unsafe.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Connect { .. }
            | Error::Query { .. }
            | Error::Timeout { .. }
            | Error::Command { .. }
            | Error::PromotionNotConfirmed { .. }
            | Error::Diverged { .. }
            | Error::StoreWrite(_) => ErrorClass::Retryable,
            Error::InvalidInput(_)
            | Error::Auth { .. }
            | Error::Tls { .. }
            | Error::Io { .. }
            | Error::Parse { .. }
            | Error::DurabilityRequired
            | Error::RejoinGaveUp { .. }
            | Error::KubeConfig { .. }
            | Error::ClusterSpec { .. }
            | Error::ClusterUnrecoverable { .. }
            | Error::BadToken { .. } => ErrorClass::NeedsOperator,
            Error::Kube { source, .. } => kube_class(source.as_ref()),
            Error::SystemIdMismatch { .. }
            | Error::TimelineMismatch { .. }
            | Error::WrongRole { .. }
            | Error::EpochWentBackwards { .. }
            | Error::TokenReused { .. }
            | Error::StaleToken { .. } => ErrorClass::Unsafe,
        }
    }
}

/// An API server that is down, slow or busy (or a write conflict) is worth retrying; one that
/// answers "forbidden", "not found" or "invalid" will not change its mind.
fn kube_class(error: &kube::Error) -> ErrorClass {
    match error {
        kube::Error::Api(status) if matches!(status.code, 400 | 401 | 403 | 404 | 422) => ErrorClass::NeedsOperator,
        _ => ErrorClass::Retryable,
    }
}

/// tokio-postgres' message with its causes ("db error: FATAL: password authentication failed
/// …", "error performing TLS handshake: invalid peer certificate: UnknownIssuer"): its own
/// text names the kind only.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_connect_error_says_why_not_only_that_it_failed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("x");
        let source = config.connect(tokio_postgres::NoTls).await.err().expect("nothing listens there");
        let text = super::Error::Connect { node: "b".into(), source }.to_string();
        assert!(text.starts_with("b: cannot connect to PostgreSQL: error connecting to server: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
