//! The CloudNativePG driver: each region runs a CNPG `Cluster`, the two joined as a distributed
//! topology (CNPG >= 1.24: `spec.replica.primary` / `source`, demotion and promotion tokens). The
//! daemon of a region patches only its own region's `Cluster`; CNPG's instance manager does the
//! PostgreSQL work. CNPG never fails over across clusters ("cannot perform any cross-cluster
//! automated failover", `docs/src/architecture.md`): deciding and carrying the token is ours.
//!
//! - [`PairDriver::fence`]: `spec.replica.primary = <peer>`; CNPG shuts the primary down (fast),
//!   restarts it as a designated primary following the peer and publishes
//!   `status.demotionToken`, read until non-empty and stable. The token is the handover token.
//! - [`PairDriver::promote`] with a token: `primary = <self>` and `promotionToken` in ONE patch,
//!   after checking the token against the local instance the way CNPG will (system, timeline,
//!   restartpoint REDO) and that it was never sent before. Without a token (failover): `primary =
//!   <self>` and no token.
//! - [`PairDriver::rejoin_as_standby`]: `primary = source = <peer>`; CNPG follows (or rebuilds).
//! - Sync replication: `spec.postgresql.synchronous` of the primary's `Cluster`, in the order of
//!   [`crate::sync`].
//!
//! Observation reads PostgreSQL directly (the `-rw` service), plus [`CnpgDriver::observe_cluster`].

mod cluster;
mod config;
mod pg;
mod steps;
mod sync;
mod token;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cluster::{ClusterStatus, ClusterView, Condition, FIELD_MANAGER, PHASE_UNRECOVERABLE, ReplicaSpec};
pub use config::{CnpgConfig, CnpgTimeouts, KubeAccess, PgEndpoint};
pub use token::DemotionToken;

use crate::driver::{CaughtUp, FenceOutcome, PairDriver, PromoteRequest, Promotion, Rejoined, Upstream};
use crate::error::{Error, Result};
use crate::lsn::WalPosition;
use crate::observe::{Observed, Observer};
use crate::sync::{Durability, SyncRecordStore};

/// One region's CNPG `Cluster`, as its daemon drives it.
pub struct CnpgDriver {
    config: CnpgConfig,
    observer: Arc<Observer>,
    cluster: cluster::ClusterApi,
    /// Every promotion token this process sent. CNPG ignores a token equal to
    /// `status.lastPromotionToken` and marks the cluster unrecoverable for a stale one, so a token
    /// is sent once at most; the Cluster's own fields carry the memory across restarts.
    sent_tokens: Mutex<HashSet<String>>,
    /// The local primary's last position seen before a demotion: the token published for it
    /// must be of that history and not older (a token left from an earlier round is not).
    demoted_from: Mutex<Option<WalPosition>>,
}

impl std::fmt::Debug for CnpgDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnpgDriver").field("config", &self.config).finish_non_exhaustive()
    }
}

impl CnpgDriver {
    /// Checks the configuration; the Kubernetes client is built on first use.
    pub fn new(config: CnpgConfig) -> Result<CnpgDriver> {
        config.validate()?;
        let t = &config.timeouts;
        let pg = crate::query::connect_config(
            &config.postgres.host,
            config.postgres.port,
            &config.postgres.user,
            &config.postgres.dbname,
            t.connect,
        );
        let connector = crate::Connector::from_auth(pg, &crate::PgAuth::default(), true)
            .map_err(|why| Error::InvalidInput(format!("{}: {why}", config.name)))?;
        let observer = Arc::new(Observer::new(config.name.clone(), connector, t.connect + t.query));
        let cluster =
            cluster::ClusterApi::new(&config.name, &config.cluster, &config.namespace, config.kube.clone(), t.api);
        Ok(CnpgDriver {
            config,
            observer,
            cluster,
            sent_tokens: Mutex::new(HashSet::new()),
            demoted_from: Mutex::new(None),
        })
    }

    /// As [`CnpgDriver::new`], with a ready client instead of [`CnpgConfig::kube`].
    pub fn with_client(config: CnpgConfig, client: kube::Client) -> Result<CnpgDriver> {
        let mut driver = CnpgDriver::new(config)?;
        driver.cluster = driver.cluster.with_client(client);
        Ok(driver)
    }

    pub fn config(&self) -> &CnpgConfig {
        &self.config
    }

    /// The region's `Cluster` as the API server has it now (spec role, phase, current primary,
    /// demotion token, conditions). Fails when the API server cannot be reached.
    pub async fn observe_cluster(&self) -> Result<ClusterView> {
        self.cluster.get().await
    }

    fn pg_config(&self) -> tokio_postgres::Config {
        let c = &self.config;
        crate::query::connect_config(
            &c.postgres.host,
            c.postgres.port,
            &c.postgres.user,
            &c.postgres.dbname,
            c.timeouts.connect,
        )
    }

    fn node(&self) -> String {
        self.config.name.clone()
    }

    fn poll(&self) -> Duration {
        self.config.timeouts.poll_interval
    }
}

#[async_trait::async_trait]
impl PairDriver for CnpgDriver {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn observe(&self) -> Observed {
        self.observer.observe().await
    }

    async fn fence(&self) -> Result<FenceOutcome> {
        self.demote().await
    }

    async fn wait_caught_up(&self, target: &WalPosition, timeout: Duration) -> Result<CaughtUp> {
        self.caught_up(target, timeout).await
    }

    async fn promote(&self, request: &PromoteRequest) -> Result<Promotion> {
        self.promote_cluster(request).await
    }

    async fn rejoin_as_standby(&self, upstream: &Upstream) -> Result<Rejoined> {
        if upstream.name == self.config.name || upstream.host.is_empty() || upstream.port == 0 {
            return Err(Error::InvalidInput(format!("{}: cannot follow upstream {upstream:?}", self.config.name)));
        }
        self.follow_peer(upstream).await
    }

    async fn enable_sync(&self, standby: &str, store: &dyn SyncRecordStore) -> Result<()> {
        crate::sync::enable_in_order(self, standby, store).await
    }

    async fn drop_sync(&self, durability: Durability, store: &dyn SyncRecordStore) -> Result<()> {
        crate::sync::drop_in_order(self, durability, store).await
    }
}
