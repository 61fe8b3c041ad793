//! The driver interface the daemon orchestrates. One implementation per way of running
//! PostgreSQL: the plain driver, [`crate::plain::PlainDriver`] (the daemon manages the data
//! directory), and the CloudNativePG driver, [`crate::cnpg::CnpgDriver`] (the daemon patches its
//! region's `Cluster`).
//!
//! Each method is one step of §5 and is idempotent: after a crash between any two steps the
//! daemon calls the same method again and gets the same result.

use std::time::Duration;

use crate::error::Result;
use crate::lsn::WalPosition;
use crate::observe::Observed;
use crate::sync::{Durability, SyncRecordStore};

/// How the old primary was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMethod {
    /// `CHECKPOINT` + fast shutdown: the shutdown checkpoint went to connected standbys.
    Fast,
    /// Fast shutdown stalled past its deadline; immediate shutdown (no shutdown checkpoint).
    Immediate,
    /// Not running when asked (fenced before, or crashed).
    AlreadyStopped,
}

/// Result of [`PairDriver::fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceOutcome {
    pub method: FenceMethod,
    /// The node stopped cleanly (`pg_controldata`: "shut down"), so it can follow a promoted
    /// standby that received `final_position` without a rewind.
    pub clean: bool,
    /// End of the shutdown checkpoint: the standby must receive and replay this before it is
    /// promoted. `None` when the shutdown was not clean (the position is then not known).
    pub final_position: Option<WalPosition>,
    /// What the other side needs to promote without loss (CNPG: the demotion token). The plain
    /// driver needs none.
    pub handover_token: Option<String>,
}

/// Result of [`PairDriver::wait_caught_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    pub received: WalPosition,
    pub replayed: WalPosition,
}

/// Input of [`PairDriver::promote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteRequest {
    /// The lease epoch under which this node becomes primary; recorded at the resource.
    pub epoch: u64,
    /// The old primary's [`FenceOutcome::handover_token`], if it produced one.
    pub handover_token: Option<String>,
}

/// Result of [`PairDriver::promote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The new primary's position right after promotion (its new timeline).
    pub position: WalPosition,
    /// It was already primary with this epoch recorded (a retried call).
    pub already_promoted: bool,
}

/// The node a rejoining node follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The upstream's name (its region / node name).
    pub name: String,
    pub host: String,
    pub port: u16,
    /// A user allowed both replication and `pg_rewind`'s queries (a superuser in managed mode).
    pub user: String,
    pub dbname: String,
}

/// How a node got back to streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejoinMethod {
    /// It was already streaming from the upstream.
    AlreadyFollowing,
    /// Restarted as a standby; its history was a prefix of the upstream's.
    Follow,
    /// Needed `pg_rewind` first.
    Rewind,
    /// Needed a fresh copy (`pg_basebackup`).
    Reclone,
}

/// Result of [`PairDriver::rejoin_as_standby`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejoined {
    pub method: RejoinMethod,
    pub attempts: u32,
}

/// One region's PostgreSQL, as the daemon drives it.
#[async_trait::async_trait]
pub trait PairDriver: Send + Sync {
    /// The node's name: its `application_name` as a standby.
    fn name(&self) -> &str;

    /// What the node reports right now (primary, standby or unreachable). Never fails.
    async fn observe(&self) -> Observed;

    /// Stops the node accepting writes for good (until [`PairDriver::rejoin_as_standby`]).
    /// Sessions waiting for a synchronous standby are terminated, never cancelled, so none of
    /// them is told its COMMIT succeeded.
    async fn fence(&self) -> Result<FenceOutcome>;

    /// Waits until this standby has received and replayed `target` (same system and timeline).
    async fn wait_caught_up(&self, target: &WalPosition, timeout: Duration) -> Result<CaughtUp>;

    /// Promotes this standby and records `request.epoch` on it; refuses an epoch lower than one
    /// already recorded.
    async fn promote(&self, request: &PromoteRequest) -> Result<Promotion>;

    /// Makes this (fenced or crashed) node a streaming standby of `upstream`: follow, else rewind,
    /// else re-clone, with bounded retries; [`crate::Error::RejoinGaveUp`] when out of options.
    async fn rejoin_as_standby(&self, upstream: &Upstream) -> Result<Rejoined>;

    /// On the primary: make `standby` synchronous, wait until it is, then record it in the store.
    async fn enable_sync(&self, standby: &str, store: &dyn SyncRecordStore) -> Result<()>;

    /// On the primary: record "no sync standby" in the store, then stop waiting for one. Refused
    /// (nothing changes) under [`Durability::Required`].
    async fn drop_sync(&self, durability: Durability, store: &dyn SyncRecordStore) -> Result<()>;
}
