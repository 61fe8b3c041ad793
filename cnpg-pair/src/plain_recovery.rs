//! Leaving recovery at once: the promotion request repeated until the server is out of
//! recovery, and the WAL receiver stopped on request (sync-fenced takeover), plus re-applying
//! this node's `node.conf` settings to a running server.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{NodeSettings, PlainDriver};
use crate::driver::Upstream;
use crate::error::{Error, Result};

/// How often `pg_promote` is asked again while the server still reports recovery.
const PROMOTE_REPEAT: Duration = Duration::from_millis(100);

impl PlainDriver {
    /// Asks for promotion (`pg_promote(wait => false)`) and repeats the request until
    /// `pg_is_in_recovery()` is false, within `timeouts.promote`. One `pg_promote(wait => true)`
    /// relies on a single signal reaching the startup process at a moment it looks; repeating
    /// it bounds the delay by [`PROMOTE_REPEAT`] whatever the startup process was doing.
    pub(super) async fn promote_until_out_of_recovery(&self, client: &Client) -> Result<()> {
        let deadline = self.config.timeouts.promote;
        let started = Instant::now();
        let mut asked: Option<Instant> = None;
        loop {
            let in_recovery: bool = self
                .timed(
                    "pg_is_in_recovery",
                    self.config.timeouts.query,
                    client.query_one("SELECT pg_is_in_recovery()", &[]),
                )
                .await?
                .get(0);
            if !in_recovery {
                return Ok(());
            }
            if asked.is_none_or(|at| at.elapsed() >= PROMOTE_REPEAT) {
                let asked_now = self.timed(
                    "pg_promote",
                    self.config.timeouts.query,
                    client.query_one("SELECT pg_promote(false)", &[]),
                );
                match asked_now.await {
                    Ok(row) if !row.get::<_, bool>(0) => {
                        return Err(Error::PromotionNotConfirmed { node: self.node() });
                    }
                    Ok(_) => {}
                    // Recovery ended between the two queries ("recovery is not in progress").
                    Err(Error::Query { source, .. })
                        if source.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {}
                    Err(e) => return Err(e),
                }
                asked = Some(Instant::now());
            }
            if started.elapsed() >= deadline {
                return Err(Error::Timeout { node: self.node(), what: "promotion", after: deadline });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }

    /// Stops the standby's WAL receiver: `primary_conninfo` removed from `node.conf`, a reload,
    /// then a wait until `pg_stat_wal_receiver` is empty. After this returns the standby
    /// receives, and so confirms, nothing more from its upstream (sync-fenced takeover: the
    /// old primary can no longer complete a `remote_apply` commit through this node).
    pub async fn stop_wal_receiver(&self) -> Result<()> {
        let mut settings = self.read_node_settings()?.unwrap_or_else(|| NodeSettings {
            primary_conninfo: None,
            synchronous_standby_names: self.default_sync_names(),
        });
        settings.primary_conninfo = None;
        self.write_node_settings(&settings)?;
        self.scrub_auto_conf()?;
        let client = self.connect().await?;
        self.reload_and_wait(&client, "SELECT count(*) = 0 FROM pg_stat_wal_receiver", "WAL receiver stop").await
    }

    /// Points the standby at `upstream` again after [`PlainDriver::stop_wal_receiver`] (a
    /// takeover that was refused), and reloads.
    pub async fn resume_wal_receiver(&self, upstream: &Upstream) -> Result<()> {
        self.configure_as_standby_of(upstream)?;
        let client = self.connect().await?;
        self.reload_and_wait(&client, "SELECT current_setting('primary_conninfo') <> ''", "primary_conninfo reload")
            .await
    }

    /// Rewrites this node's `node.conf` from the configuration (keeping its `primary_conninfo`
    /// and `synchronous_standby_names`) and reloads a running server, so changed settings such
    /// as `wal_receiver_timeout` apply without a restart. A `node.conf` that is not this
    /// node's (a copy from a rewind or clone) is left for the next rejoin to rewrite.
    pub async fn refresh_node_settings(&self) -> Result<()> {
        let Some(settings) = self.read_node_settings()? else { return Ok(()) };
        self.write_node_settings(&settings)?;
        if !self.is_running().await? {
            return Ok(());
        }
        let client = self.connect().await?;
        // `setting` is in milliseconds for this parameter.
        let check = format!(
            "SELECT bool_and(setting::bigint = {}) FROM pg_settings \
             WHERE name IN ('wal_receiver_timeout', 'wal_sender_timeout')",
            self.config.timeouts.wal_receiver_timeout.as_millis()
        );
        self.reload_and_wait(&client, &check, "node.conf reload").await
    }

    /// `pg_reload_conf()`, then polls `check` (one boolean) until it is true, within
    /// `timeouts.query`: a reload is asynchronous.
    async fn reload_and_wait(&self, client: &Client, check: &str, what: &'static str) -> Result<()> {
        let limit = self.config.timeouts.query;
        self.timed("reload", limit, client.execute("SELECT pg_reload_conf()", &[])).await?;
        let started = Instant::now();
        loop {
            let done: bool = self.timed(what, limit, client.query_one(check, &[])).await?.get(0);
            if done {
                return Ok(());
            }
            if started.elapsed() >= limit {
                return Err(Error::Timeout { node: self.node(), what, after: limit });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }
}
