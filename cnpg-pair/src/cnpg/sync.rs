//! Synchronous replication across clusters: the peer's designated primary streams straight
//! from this cluster's primary with `application_name` = the peer's region name, so it can be a
//! synchronous standby; CNPG renders `spec.postgresql.synchronous.standbyNamesPre` into
//! `synchronous_standby_names` (`docs/src/replication.md`). `maxStandbyNamesFromCluster: 0`
//! makes the peer the only candidate (`FIRST 1 ("<peer>")`), as in the plain driver, so an
//! acknowledged commit is in the other region.

use std::time::Instant;

use serde_json::json;

use super::CnpgDriver;
use crate::error::{Error, Result};
use crate::query::timed_on;
use crate::sync::SyncSteps;

#[async_trait::async_trait]
impl SyncSteps for CnpgDriver {
    async fn set_synchronous_standby(&self, standby: Option<&str>) -> Result<()> {
        let synchronous = match standby {
            Some(name) => json!({
                "method": "first", "number": 1, "standbyNamesPre": [name],
                "maxStandbyNamesFromCluster": 0, "dataDurability": "required",
            }),
            None => serde_json::Value::Null,
        };
        self.cluster.patch_spec(json!({ "postgresql": { "synchronous": synchronous } })).await?;
        // The instance manager applies it with a reload; confirm the running value.
        let started = Instant::now();
        let deadline = self.config.timeouts.sync_wait;
        loop {
            let shown = self.running_sync_names().await;
            match (&shown, standby) {
                (Ok(names), Some(name)) if names.contains(&format!("\"{name}\"")) || names == name => return Ok(()),
                (Ok(names), None) if names.is_empty() => return Ok(()),
                _ => {}
            }
            if started.elapsed() >= deadline {
                shown?;
                return Err(Error::Timeout { node: self.node(), what: "CNPG applying synchronous", after: deadline });
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    async fn wait_sync(&self, standby: &str) -> Result<()> {
        let started = Instant::now();
        let deadline = self.config.timeouts.sync_wait;
        let query = "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync'";
        loop {
            let client = self.connect().await?;
            let row = timed_on(&self.config.name, "read sync_state", self.config.timeouts.query, async {
                client.query_opt(query, &[&standby]).await
            })
            .await?;
            if row.is_some() {
                return Ok(());
            }
            if started.elapsed() >= deadline {
                return Err(Error::Timeout {
                    node: self.node(),
                    what: "standby becoming synchronous",
                    after: deadline,
                });
            }
            tokio::time::sleep(self.poll()).await;
        }
    }
}
