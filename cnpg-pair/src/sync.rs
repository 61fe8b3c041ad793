//! Synchronous-standby management in the order §4 requires, with the lease-store write as a step
//! the caller cannot skip or reorder:
//! - add: configure PostgreSQL → wait until the standby is `sync` → record it in the store;
//! - drop (durability `preferred` only): record "none" in the store → relax PostgreSQL, and only
//!   if the store write succeeded. A partitioned primary cannot reach quorum, so it keeps
//!   blocking writes: that is the point.
//!
//! Drivers supply the PostgreSQL steps through the crate-private [`SyncSteps`]; the order lives
//! here only.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How strictly the pair keeps synchronous replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Never relax: with the standby gone, writes block (zero loss, availability second).
    Required,
    /// Relax after the store records that no standby is synchronous.
    Preferred,
}

/// A failed lease-store write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreWriteError {
    /// The store answered no (e.g. a compare-and-swap on the epoch failed).
    #[error("rejected: {0}")]
    Rejected(String),
    /// No answer in time: it may or may not have been committed.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// The one lease-store write sync management needs: set the pair's `sync_standby`. `Ok` means
/// committed by a quorum. The daemon plugs in its lease client.
#[async_trait::async_trait]
pub trait SyncRecordStore: Send + Sync {
    async fn record_sync_standby(&self, standby: Option<&str>) -> Result<(), StoreWriteError>;
}

/// PostgreSQL-side steps a driver provides.
#[async_trait::async_trait]
pub(crate) trait SyncSteps: Send + Sync {
    /// Makes the primary wait for `standby` (or for nobody) and confirms the running setting.
    async fn set_synchronous_standby(&self, standby: Option<&str>) -> Result<()>;
    /// Waits until `standby` is listed as `sync` by the primary.
    async fn wait_sync(&self, standby: &str) -> Result<()>;
}

pub(crate) async fn enable_in_order(steps: &dyn SyncSteps, standby: &str, store: &dyn SyncRecordStore) -> Result<()> {
    if standby.is_empty() || standby.contains(['"', '\'', '\0']) {
        return Err(Error::InvalidInput(format!("standby name {standby:?} is empty or has quotes")));
    }
    steps.set_synchronous_standby(Some(standby)).await?;
    steps.wait_sync(standby).await?;
    store.record_sync_standby(Some(standby)).await?;
    Ok(())
}

pub(crate) async fn drop_in_order(
    steps: &dyn SyncSteps,
    durability: Durability,
    store: &dyn SyncRecordStore,
) -> Result<()> {
    if durability == Durability::Required {
        return Err(Error::DurabilityRequired);
    }
    store.record_sync_standby(None).await?;
    steps.set_synchronous_standby(None).await
}
