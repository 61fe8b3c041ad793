//! Real parts on one machine, bootstrapped the same way for `continuum demo` and for the tests
//! (`testkit` re-exports this and adds what only tests need: network namespaces, proxies, a
//! writer, a DNS probe).
//!
//! - [`pair`]: initdb + shared settings + basebackup of a synchronous (`remote_apply`) pair.
//! - [`pg`]: one PostgreSQL server managed through its data directory (`pg_ctl`, `node.conf`,
//!   postmaster pid, log tail).
//! - [`pdns`]: `pdns_server` with the sqlite3 schema, API and LUA records.
//! - [`tls`]: the TLS client of test sessions (encrypts, verifies nothing; daemons verify).
//! - [`ports`]: free loopback ports; servers retry with a fresh one when the bind fails.
//! - [`os`]: PostgreSQL binaries run as the `postgres` account when we are root.
//!
//! Every server owns a temporary directory and stops what it started when dropped.

pub mod os;
pub mod pair;
pub mod pdns;
pub mod pg;
pub mod ports;
pub mod tls;
pub mod wait;

use std::time::Duration;

pub use pair::{PgPair, PgPairBuilder, PgSecurity};
pub use pdns::{PowerDns, PowerDnsBuilder};
pub use pg::{Launcher, NodeSettings, PgNode, StopMode};
pub use ports::free_port;

/// Everything that can go wrong while bootstrapping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and exited unsuccessfully.
    #[error("{command} exited with {status}\nstdout: {stdout}\nstderr: {stderr}")]
    Command { command: String, status: std::process::ExitStatus, stdout: String, stderr: String },
    /// Something this machine lacks (a package, an account), with what to install.
    #[error("{what}")]
    Missing { what: String },
    /// A server did not start; `log` is the tail of its log.
    #[error("{what}; log tail:\n{log}")]
    Start {
        what: String,
        log: String,
        #[source]
        source: Box<Error>,
    },
    #[error("{what}")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("HTTP client")]
    Http(#[source] reqwest::Error),
    /// A condition awaited with a deadline did not come true; `last` is the last probe error.
    #[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Timeout { what: String, timeout: Duration, last: Option<String> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A new temporary directory named `prefix…` in `parent` (default: the system's).
pub(crate) fn temp_dir(parent: Option<&std::path::Path>, prefix: &str) -> Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .map_err(io(format!(
        "create a temporary directory {prefix}* in {}",
        parent.map_or("the system's".into(), |p| p.display().to_string())
    )))
}

/// Installs rustls' ring provider as the process default. reqwest is built without a provider
/// (the workspace uses ring only), so it panics on `Client::new()` until one is installed.
/// Safe to call any number of times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `bytes` random bytes as lower-case hex: throwaway tokens and API keys.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}
