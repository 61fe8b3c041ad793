//! Process control of the local server, through the driver crate's one implementation
//! ([`cnpg_pair::process`]) with this pair's deadlines (`pairs[].postgres.{start,stop}_timeout`).
//! The lease fence uses the same stop with `lease.fence_timeout` ([`super::holder`]).

use std::time::Duration;

use super::pair::PairCtl;
use crate::Error;
use crate::backoff::Backoff;

/// Pauses between two attempts of a fence that failed.
const FENCE_RETRY_FIRST: Duration = Duration::from_millis(100);
const FENCE_RETRY_MAX: Duration = Duration::from_secs(2);

/// Stops `server` for a fence ([`cnpg_pair::process::fence_stop`]), retried with backoff until
/// it is confirmed stopped: a fence is never given up. Returns the attempts it took.
pub(super) async fn fence_until_stopped(server: &cnpg_pair::process::Server, deadline: Duration, pair: &str) -> u32 {
    let mut backoff = Backoff::new(FENCE_RETRY_FIRST, FENCE_RETRY_MAX);
    loop {
        match cnpg_pair::process::fence_stop(server, deadline).await {
            Ok(()) => return backoff.failures() + 1,
            Err(e) => {
                let pause = backoff.failed();
                tracing::error!(pair, attempt = backoff.failures(), ?pause, "fence failed, retrying: {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

impl PairCtl {
    /// `pg_ctl start` of the local server as it is configured (primary unless `standby.signal`),
    /// only under a lease the fence watchdog guards.
    pub(super) async fn start_local(&self) -> Result<(), Error> {
        self.require_watchdog().await?;
        cnpg_pair::process::start(&self.server, self.cfg.postgres.start_timeout)
            .await
            .map_err(|source| Error::Driver { what: "pg_ctl start", source })
    }

    /// Immediate stop of the local server, then SIGKILL of the postmaster's process group: the
    /// fastest way to stop writes. An error unless the server is confirmed stopped.
    pub(super) async fn stop_local(&self, what: &'static str) -> Result<(), Error> {
        cnpg_pair::process::fence_stop(&self.server, self.cfg.postgres.stop_timeout)
            .await
            .map_err(|source| Error::Driver { what, source })
    }
}
