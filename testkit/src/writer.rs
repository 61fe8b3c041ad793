//! A writer probe: a client that inserts one row per transaction and logs which commits were
//! acknowledged, so a test can prove that no acknowledged commit was lost across a switchover
//! or a crash, and measure the longest write gap a client saw.
//!
//! Rules the probe follows, because a careless probe hides exactly the bugs it should find:
//! - a commit counts as acknowledged only when the server's reply arrived; a commit whose reply
//!   never came (connection lost, server shut down, probe stopped while waiting) is "unknown",
//!   never "acknowledged" and never "failed";
//! - it never cancels a statement (no `statement_timeout`, no cancel request): a cancelled wait
//!   for synchronous replication is reported to the client as a successful COMMIT. It abandons a
//!   wait by dropping the connection instead;
//! - an id is never reused, so an unknown commit that did land cannot collide with a later one;
//! - after a broken connection it reconnects with the connection string it was given (use a
//!   multi-host string with `target_session_attrs=read-write` to follow the primary).

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config};

/// Pause between failed connection attempts: short, because the probe measures write gaps.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Connect timeout per host when the connection string sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many error messages are kept in the report.
const MAX_ERRORS_KEPT: usize = 200;

/// Starts writer probes.
pub struct Writer;

impl Writer {
    /// Creates `table` (`id bigint primary key`) if needed and starts inserting ids 1, 2, 3…
    /// through `conninfo` until [`WriterHandle::stop`].
    pub async fn start(conninfo: &str, table: &str) -> anyhow::Result<WriterHandle> {
        Self::start_abandoning(conninfo, table, None).await
    }

    /// Like [`Writer::start`], but a commit without an answer after `abandon_after` is given up
    /// (counted unknown, connection dropped, reconnect), as an application with a client-side
    /// timeout would. Needed when the server's host can vanish silently (a partition): without
    /// it the probe waits for TCP to notice, which takes many minutes.
    pub async fn start_abandoning(
        conninfo: &str,
        table: &str,
        abandon_after: Option<Duration>,
    ) -> anyhow::Result<WriterHandle> {
        anyhow::ensure!(
            !table.is_empty() && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
            "table name {table:?} must be a plain (optionally schema-qualified) identifier"
        );
        let mut config = Config::from_str(conninfo).context("parse the writer's connection string")?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let client = connect(&config).await.map_err(|e| anyhow::anyhow!("writer: first connection: {e}"))?;
        client
            .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY)"))
            .await
            .context("writer: create table")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (progress_tx, progress_rx) = watch::channel(0usize);
        let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
        let task = tokio::spawn(run(config, Some(client), insert, abandon_after, stop_rx, progress_tx));
        Ok(WriterHandle { stop: stop_tx, progress: progress_rx, task })
    }
}

/// A running writer probe.
pub struct WriterHandle {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<usize>,
    task: JoinHandle<WriterReport>,
}

impl WriterHandle {
    /// How many commits have been acknowledged so far.
    pub fn acked_count(&self) -> usize {
        *self.progress.borrow()
    }

    /// Waits until at least `n` commits are acknowledged in total (fails after `timeout`).
    pub async fn wait_acked(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let outcome = tokio::time::timeout(timeout, self.progress.wait_for(|acked| *acked >= n))
            .await
            .map(|waited| waited.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("writer stopped before {n} acknowledged commits"),
            Err(_) => {
                let have = *self.progress.borrow();
                anyhow::bail!("timed out after {timeout:?} waiting for {n} acknowledged commits (have {have})")
            }
        }
    }

    /// Stops the probe. A commit still waiting for its reply is abandoned (connection dropped)
    /// and reported as unknown.
    pub async fn stop(self) -> WriterReport {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(report) => report,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// What the probe saw.
#[derive(Debug, Clone, Default)]
pub struct WriterReport {
    /// Ids whose COMMIT was acknowledged, in order.
    pub acked: Vec<i64>,
    /// Ids whose outcome is unknown (may or may not be committed).
    pub unknown: Vec<i64>,
    /// Ids the server definitely rejected (e.g. the server was read-only).
    pub rejected: Vec<i64>,
    /// Errors seen (connection and statement), oldest first, at most a few hundred.
    pub errors: Vec<String>,
    /// Longest time between two consecutive acknowledgements.
    pub longest_gap: Duration,
    /// Each acknowledged id with the time its acknowledgement arrived.
    pub acked_at: Vec<(i64, Instant)>,
}

impl WriterReport {
    /// The longest gap between consecutive acknowledgements that ended after `after`.
    pub fn longest_gap_after(&self, after: Instant) -> Duration {
        self.acked_at
            .windows(2)
            .filter(|w| w[1].1 >= after)
            .map(|w| w[1].1.duration_since(w[0].1))
            .max()
            .unwrap_or_default()
    }

    fn record_error(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}

/// Connects to the first host that accepts (with `target_session_attrs`), bounding each
/// host's whole attempt by the connect timeout as libpq does: tokio-postgres bounds only the
/// TCP connect, and a frozen server accepts TCP (the kernel does) but never answers the
/// startup packet, which would hold the writer on that host for good.
async fn connect(config: &Config) -> Result<Client, String> {
    let per_host = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let mut errors = Vec::new();
    for one in single_host_configs(config) {
        match tokio::time::timeout(per_host, one.connect(devstack::tls::client())).await {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Ok(client);
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push(format!("no answer within {per_host:?}")),
        }
    }
    Err(errors.join("; "))
}

/// One configuration per host of `config` (TCP hosts; ports paired like libpq's).
fn single_host_configs(config: &Config) -> Vec<Config> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let mut one = Config::new();
            match host {
                tokio_postgres::config::Host::Tcp(h) => one.host(h),
                tokio_postgres::config::Host::Unix(path) => one.host_path(path),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            one.port(port).target_session_attrs(config.get_target_session_attrs()).ssl_mode(config.get_ssl_mode());
            if let Some(user) = config.get_user() {
                one.user(user);
            }
            if let Some(db) = config.get_dbname() {
                one.dbname(db);
            }
            if let Some(password) = config.get_password() {
                one.password(password);
            }
            if let Some(name) = config.get_application_name() {
                one.application_name(name);
            }
            if let Some(timeout) = config.get_connect_timeout() {
                one.connect_timeout(*timeout);
            }
            one
        })
        .collect()
}

async fn run(
    config: Config,
    mut client: Option<Client>,
    insert: String,
    abandon_after: Option<Duration>,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<usize>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut next_id: i64 = 1;
    loop {
        if *stop.borrow() {
            return report;
        }
        let Some(conn) = client.as_ref() else {
            tokio::select! {
                _ = stop.changed() => return report,
                connected = connect(&config) => match connected {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        report.record_error(format!("connect: {e}"));
                        tokio::select! {
                            _ = stop.changed() => return report,
                            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                        }
                    }
                },
            }
            continue;
        };
        let id = next_id;
        next_id += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let deadline = async {
            match abandon_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            _ = stop.changed() => None,
            result = conn.execute(insert.as_str(), &params) => Some(result),
            () = deadline => {
                report.unknown.push(id);
                report.record_error(format!("insert {id}: no answer within {abandon_after:?}, abandoned"));
                client = None;
                continue;
            }
        };
        match result {
            None => {
                // Abandon the in-flight commit by dropping the connection (never cancel it).
                report.unknown.push(id);
                return report;
            }
            Some(Ok(_)) => {
                let now = Instant::now();
                if let Some((_, last)) = report.acked_at.last() {
                    report.longest_gap = report.longest_gap.max(now.duration_since(*last));
                }
                report.acked.push(id);
                report.acked_at.push((id, now));
                progress.send_replace(report.acked.len());
            }
            Some(Err(e)) => {
                if definitely_not_committed(&e) {
                    report.rejected.push(id);
                } else {
                    report.unknown.push(id);
                }
                report.record_error(format!("insert {id}: {e}"));
                client = None;
            }
        }
    }
}

/// Errors that the server raised before the commit could happen. Anything else (a lost
/// connection, a shutdown, a termination while waiting for a standby) leaves the outcome unknown.
fn definitely_not_committed(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|code| *code == SqlState::READ_ONLY_SQL_TRANSACTION)
}
