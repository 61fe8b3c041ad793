//! Test fixtures for Continuum. The real parts (a synchronous PostgreSQL 15 pair, PowerDNS,
//! free ports, running PostgreSQL as `postgres`) come from `devstack`, which `continuum demo`
//! uses too, and are re-exported here; this crate adds what only tests need: network namespaces
//! ([`netns`]), link proxies ([`proxy`]), a commit-counting writer ([`writer`]), a DNS probe
//! ([`dns`]) and waits that return `anyhow` errors ([`wait`]).
//!
//! Every fixture owns a private temporary directory and its own ports, so `cargo nextest` can run
//! tests side by side, and every fixture stops what it started when dropped, including during a
//! panic.

pub mod dns;
#[cfg(feature = "kube")]
pub mod kube;
pub mod netns;
pub mod proxy;
pub mod wait;
pub mod writer;

pub use devstack::os;
pub use devstack::tls;
pub use devstack::{PgNode, PgPair, PgPairBuilder, PowerDns, PowerDnsBuilder, StopMode, install_crypto_provider};
pub use dns::{DnsAnswer, DnsProbe};
pub use wait::{wait_for, wait_until};

/// PostgreSQL servers and pairs (devstack's).
pub mod pg {
    pub use devstack::pair::{PgPair, PgPairBuilder, PgSecurity};
    pub use devstack::pg::{Launcher, NodeSettings, PgNode, StopMode};
}

/// A free loopback port (see `devstack::ports`); panics if loopback cannot be bound at all.
pub fn free_port() -> u16 {
    devstack::free_port().expect("a free loopback port")
}

/// Routes `tracing` output to the test harness' captured output. Honours `RUST_LOG`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_test_writer()
        .try_init();
}
