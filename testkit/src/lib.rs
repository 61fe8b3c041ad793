//! Test fixtures for Continuum: real PostgreSQL 15 pairs, a real PowerDNS Authoritative server,
//! waits with deadlines and free loopback ports.
//!
//! Every fixture owns a private temporary directory and its own ports, so `cargo nextest` can run
//! tests side by side, and every fixture stops what it started when dropped, including during a
//! panic. PostgreSQL refuses to run as root, so when the tests run as root the PostgreSQL
//! binaries are started as the `postgres` user (see [`os`]).

pub mod dns;
#[cfg(feature = "kube")]
pub mod kube;
pub mod netns;
pub mod os;
pub mod pdns;
pub mod pg;
pub mod ports;
pub mod proxy;
pub mod wait;
pub mod writer;

pub use dns::{DnsAnswer, DnsProbe};
pub use pdns::{PowerDns, PowerDnsBuilder};
pub use pg::{PgNode, PgPair, PgPairBuilder, StopMode};
pub use ports::free_port;
pub use wait::{wait_for, wait_until};

/// Installs rustls' ring provider as the process default. reqwest is built without a provider
/// (the workspace uses ring only), so it panics on `Client::new()` until one is installed.
/// Safe to call any number of times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Routes `tracing` output to the test harness' captured output. Honours `RUST_LOG`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_test_writer()
        .try_init();
}
