//! The CNPG driver's direct PostgreSQL steps: it never runs PostgreSQL (CNPG's instance manager
//! does) but reads it to know when a patch of the `Cluster` took effect, and records the lease
//! epoch in `continuum.fencing` exactly as the plain driver does.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config};

use super::CnpgDriver;
use crate::driver::{CaughtUp, Promotion, Upstream};
use crate::error::{Error, Result};
use crate::lsn::{Lsn, WalPosition};
use crate::observe::{self, parse_lsn, timeline_of_walfile};
use crate::query::{Connector, connect_config, timed_on};

impl CnpgDriver {
    /// With the default [`crate::PgAuth`] (TLS when offered, no password): the CNPG driver
    /// takes no credentials yet (the daemon cannot run a CNPG pair).
    pub(super) async fn connect_to(&self, node: &str, config: &Config) -> Result<Client> {
        let connector = Connector::from_auth(config.clone(), &crate::PgAuth::default(), false)
            .map_err(|why| Error::InvalidInput(format!("{node}: {why}")))?;
        connector.connect(node, self.config.timeouts.connect).await
    }

    pub(super) async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.config.name, &self.pg_config()).await
    }

    fn upstream_config(&self, upstream: &Upstream) -> Config {
        connect_config(&upstream.host, upstream.port, &upstream.user, &upstream.dbname, self.config.timeouts.connect)
    }

    /// Waits until the local standby has received and replayed `target` (same system/timeline).
    pub(super) async fn caught_up(&self, target: &WalPosition, timeout: Duration) -> Result<CaughtUp> {
        let node = self.config.name.clone();
        let started = Instant::now();
        loop {
            let client = self.connect().await?;
            let query = observe::observe_standby(&node, &client);
            let standby = timed_or(&node, "observe", self.config.timeouts.query, query).await?;
            if standby.system_id != target.system_id {
                return Err(Error::SystemIdMismatch { node, expected: target.system_id, found: standby.system_id });
            }
            // A lower timeline may still switch to the target's; a higher one never comes back.
            if standby.timeline > target.timeline {
                return Err(Error::TimelineMismatch { node, expected: target.timeline, found: standby.timeline });
            }
            if let (Some(received), Some(replayed)) = (standby.received(), standby.replayed())
                && standby.timeline == target.timeline
                && received.lsn >= target.lsn
                && replayed.lsn >= target.lsn
            {
                return Ok(CaughtUp { received, replayed });
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout { node, what: "catching up", after: timeout });
            }
            tokio::time::sleep(self.config.timeouts.poll_interval).await;
        }
    }

    /// CNPG's own promotion check, done before the token is sent so a mismatch never reaches the
    /// operator (which would mark the cluster unrecoverable): a restartpoint (`CHECKPOINT` on the
    /// standby), then its REDO location must equal the token's. Returns the restartpoint's REDO.
    pub(super) async fn restartpoint_redo(&self) -> Result<(Lsn, u32)> {
        let node = &self.config.name;
        let client = self.connect().await?;
        let after = self.config.timeouts.query;
        timed_on(node, "CHECKPOINT (restartpoint)", after, client.batch_execute("CHECKPOINT")).await?;
        let row = timed_on(
            node,
            "read pg_control_checkpoint",
            after,
            client.query_one("SELECT redo_lsn::text, timeline_id FROM pg_control_checkpoint()", &[]),
        )
        .await?;
        Ok((parse_lsn(node, row.get(0))?, row.get::<_, i32>(1) as u32))
    }

    /// Whether the local server accepts writes now (`None`: unreachable).
    pub(super) async fn local_is_primary(&self) -> Option<bool> {
        let client = self.connect().await.ok()?;
        let query = client.query_one("SELECT NOT pg_is_in_recovery()", &[]);
        timed_on(&self.config.name, "pg_is_in_recovery", self.config.timeouts.query, query).await.ok().map(|r| r.get(0))
    }

    /// Whether the local server streams from `upstream` and the upstream sees it streaming with
    /// everything it had when the wait began replayed.
    pub(super) async fn following(&self, upstream: &Upstream, target: &mut Option<Lsn>) -> Result<bool> {
        let node = &self.config.name;
        let local = self.connect().await?;
        let standby = timed_or(node, "observe", self.config.timeouts.query, observe::observe_standby(node, &local));
        match standby.await {
            Ok(s) if s.streaming => {}
            Ok(_) | Err(Error::WrongRole { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        let up = self.connect_to(&upstream.name, &self.upstream_config(upstream)).await?;
        let after = self.config.timeouts.query;
        if target.is_none() {
            let row = timed_on(
                &upstream.name,
                "read upstream position",
                after,
                up.query_one("SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END", &[]),
            )
            .await?;
            let Some(lsn) = row.get::<_, Option<&str>>(0) else {
                return Err(Error::WrongRole {
                    node: upstream.name.clone(),
                    expected: "a primary",
                    found: "a standby",
                });
            };
            *target = Some(parse_lsn(&upstream.name, lsn)?);
        }
        let query =
            "SELECT replay_lsn::text FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'";
        let row = timed_on(&upstream.name, "read pg_stat_replication", after, up.query_opt(query, &[node])).await?;
        let replayed = row.and_then(|r| r.get::<_, Option<&str>>(0).map(str::to_string));
        match (replayed, *target) {
            (Some(lsn), Some(target)) => Ok(parse_lsn(&upstream.name, &lsn)? >= target),
            _ => Ok(false),
        }
    }

    /// Records `epoch` in `continuum.fencing` on the (now primary) local server; refuses an
    /// epoch lower than one recorded. Same table and rules as the plain driver.
    pub(super) async fn record_epoch(&self, epoch: u64) -> Result<Promotion> {
        let node = &self.config.name;
        let mut client = self.connect().await?;
        let epoch_i64 = i64::try_from(epoch).map_err(|_| Error::InvalidInput(format!("epoch {epoch} exceeds i64")))?;
        let after = self.config.timeouts.query;
        let tx = timed_on(node, "begin", after, client.transaction()).await?;
        // Local commit: the peer may still be fenced; the record reaches it when it rejoins.
        let setup = "SET LOCAL synchronous_commit = local; \
             CREATE SCHEMA IF NOT EXISTS continuum; \
             CREATE TABLE IF NOT EXISTS continuum.fencing (epoch bigint PRIMARY KEY, timeline integer NOT NULL, \
               node text NOT NULL, promoted_at timestamptz NOT NULL DEFAULT now()); \
             LOCK TABLE continuum.fencing IN EXCLUSIVE MODE";
        timed_on(node, "create continuum.fencing", after, tx.batch_execute(setup)).await?;
        let position_query = "SELECT (SELECT max(epoch) FROM continuum.fencing), \
             (SELECT system_identifier FROM pg_control_system()), pg_current_wal_lsn()::text, \
             pg_walfile_name(pg_current_wal_lsn())";
        let row = timed_on(node, "read position", after, tx.query_one(position_query, &[])).await?;
        let recorded: Option<i64> = row.get(0);
        let position = WalPosition {
            system_id: row.get::<_, i64>(1) as u64,
            timeline: timeline_of_walfile(node, row.get(3))?,
            lsn: parse_lsn(node, row.get(2))?,
        };
        match recorded {
            Some(r) if r > epoch_i64 => {
                return Err(Error::EpochWentBackwards { node: node.clone(), epoch, recorded: r as u64 });
            }
            Some(r) if r == epoch_i64 => return Ok(Promotion { position, already_promoted: true }),
            _ => {}
        }
        let insert = "INSERT INTO continuum.fencing (epoch, timeline, node) VALUES ($1, $2, $3)";
        let timeline = position.timeline as i32;
        timed_on(node, "record epoch", after, tx.execute(insert, &[&epoch_i64, &timeline, node])).await?;
        timed_on(node, "commit epoch", after, tx.commit()).await?;
        Ok(Promotion { position, already_promoted: false })
    }

    /// The running `synchronous_standby_names`.
    pub(super) async fn running_sync_names(&self) -> Result<String> {
        let client = self.connect().await?;
        let query = client.query_one("SELECT current_setting('synchronous_standby_names')", &[]);
        Ok(timed_on(&self.config.name, "show synchronous_standby_names", self.config.timeouts.query, query)
            .await?
            .get(0))
    }
}

/// Like [`timed_on`] for a future that already yields this crate's `Result`.
async fn timed_or<T>(
    node: &str,
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(after, fut).await.unwrap_or_else(|_| Err(Error::Timeout { node: node.into(), what, after }))
}
