//! Process control of the local server, through the driver crate's one implementation
//! ([`cnpg_pair::process`]) with this pair's deadlines (`pairs[].postgres.{start,stop}_timeout`).
//! The lease fence uses the same stop with `lease.fence_timeout` ([`super::holder`]).

use super::pair::PairCtl;
use crate::Error;

impl PairCtl {
    /// `pg_ctl start` of the local server as it is configured (primary unless `standby.signal`).
    pub(super) async fn start_local(&self) -> Result<(), Error> {
        cnpg_pair::process::start(&self.server, self.cfg.postgres.start_timeout)
            .await
            .map_err(|source| Error::Driver { what: "pg_ctl start", source })
    }

    /// Immediate stop of the local server, then SIGKILL of the postmaster: the fastest way to
    /// stop writes.
    pub(super) async fn stop_local(&self, what: &'static str) -> Result<(), Error> {
        cnpg_pair::process::stop_immediately(&self.server, self.cfg.postgres.stop_timeout)
            .await
            .map_err(|source| Error::Driver { what, source })
    }
}
