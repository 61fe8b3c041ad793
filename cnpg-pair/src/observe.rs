//! Read-only observation of a node: what a primary reports about its standbys, and what a standby
//! reports about itself. Every value that PostgreSQL can leave NULL stays an `Option`: "unknown"
//! is never turned into 0.

use std::time::{Duration, Instant, SystemTime};

use tokio::time::error::Elapsed;
use tokio_postgres::{Client, Statement, ToStatement};

use crate::error::{Error, Result};
use crate::lsn::{Lsn, WalPosition};
use crate::query::Connector;

/// `sync_state` of a `pg_stat_replication` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Sync,
    Potential,
    Quorum,
    Async,
}

impl SyncState {
    fn parse(text: &str) -> Option<SyncState> {
        match text {
            "sync" => Some(SyncState::Sync),
            "potential" => Some(SyncState::Potential),
            "quorum" => Some(SyncState::Quorum),
            "async" => Some(SyncState::Async),
            _ => None,
        }
    }
}

/// One `pg_stat_replication` row (one walsender) as the primary sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub application_name: String,
    /// `streaming`, `catchup`, `startup`, `backup` or `stopping`.
    pub state: String,
    pub sync_state: Option<SyncState>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// PostgreSQL's `*_lag` columns: the commit delay of recent WAL, NULL when idle.
    pub write_lag: Option<Duration>,
    pub flush_lag: Option<Duration>,
    pub replay_lag: Option<Duration>,
    /// Age of the standby's last reply, measured on the primary's clock.
    pub reply_age: Option<Duration>,
}

/// A primary's view.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimaryObservation {
    pub observed_at: SystemTime,
    /// `pg_current_wal_lsn()` with the system identifier and current timeline.
    pub position: WalPosition,
    pub replicas: Vec<ReplicaStatus>,
}

impl PrimaryObservation {
    pub fn replica(&self, application_name: &str) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|r| r.application_name == application_name)
    }
}

/// A standby's view of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyObservation {
    pub observed_at: SystemTime,
    pub system_id: u64,
    /// Timeline it is receiving (or, with no WAL receiver, the one it last recovered on).
    pub timeline: u32,
    /// `pg_last_wal_receive_lsn()`: received and flushed; NULL if nothing was streamed yet.
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub replay_paused: bool,
    /// Whether the WAL receiver is streaming right now.
    pub streaming: bool,
    /// Age of the last message from the upstream (standby's clock).
    pub last_message_age: Option<Duration>,
}

impl StandbyObservation {
    pub fn received(&self) -> Option<WalPosition> {
        self.receive_lsn.map(|lsn| WalPosition { system_id: self.system_id, timeline: self.timeline, lsn })
    }

    pub fn replayed(&self) -> Option<WalPosition> {
        self.replay_lsn.map(|lsn| WalPosition { system_id: self.system_id, timeline: self.timeline, lsn })
    }
}

/// What one observation of a node found.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Primary(PrimaryObservation),
    Standby(StandbyObservation),
    Unreachable { observed_at: SystemTime, error: String },
}

impl Observed {
    pub fn observed_at(&self) -> SystemTime {
        match self {
            Observed::Primary(p) => p.observed_at,
            Observed::Standby(s) => s.observed_at,
            Observed::Unreachable { observed_at, .. } => *observed_at,
        }
    }

    pub fn as_primary(&self) -> Option<&PrimaryObservation> {
        match self {
            Observed::Primary(p) => Some(p),
            _ => None,
        }
    }

    pub fn as_standby(&self) -> Option<&StandbyObservation> {
        match self {
            Observed::Standby(s) => Some(s),
            _ => None,
        }
    }
}

/// Replication lag of one standby. `None` is "unknown", never "no lag".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lag {
    /// Primary position − standby flush: what a promotion now would lose (RPO).
    pub flush_bytes: Option<u64>,
    /// Primary position − standby replay: what it still has to apply (promotion delay).
    pub replay_bytes: Option<u64>,
    /// Replay delay in seconds. PostgreSQL's `replay_lag` is NULL when idle; that reads as 0 only
    /// when the byte lag is known to be 0.
    pub replay_seconds: Option<f64>,
    pub sync_state: Option<SyncState>,
}

/// The two sides of a pair, observed (possibly at different times).
#[derive(Debug, Clone, PartialEq)]
pub struct PairSnapshot {
    /// `application_name` of the standby (its name in `synchronous_standby_names`).
    pub standby_name: String,
    pub primary: Observed,
    pub standby: Observed,
}

impl PairSnapshot {
    /// The standby's lag: from the primary's `pg_stat_replication` row, or, when the row is gone,
    /// from what the standby itself reports if it is on the primary's system and timeline.
    /// Unknown (`None`) when the primary was not observed.
    pub fn lag(&self) -> Lag {
        let Some(primary) = self.primary.as_primary() else { return Lag::default() };
        let current = primary.position;
        let row = primary.replica(&self.standby_name);
        let standby =
            self.standby.as_standby().filter(|s| s.system_id == current.system_id && s.timeline == current.timeline);
        // The primary's row is the freshest view of what was acknowledged; the standby's own
        // numbers fill in when the row is gone (walsender not running).
        let flush = row.and_then(|r| r.flush_lsn).or_else(|| standby.and_then(|s| s.receive_lsn));
        let replay = row.and_then(|r| r.replay_lsn).or_else(|| standby.and_then(|s| s.replay_lsn));
        let replay_bytes = replay.map(|lsn| current.lsn.bytes_after(lsn));
        let replay_seconds = match (row.and_then(|r| r.replay_lag), replay_bytes) {
            (Some(lag), _) => Some(lag.as_secs_f64()),
            (None, Some(0)) => Some(0.0),
            (None, _) => None,
        };
        Lag {
            flush_bytes: flush.map(|lsn| current.lsn.bytes_after(lsn)),
            replay_bytes,
            replay_seconds,
            sync_state: row.and_then(|r| r.sync_state),
        }
    }
}

/// Observes one node: connects with `connector` (deadline `timeout` for the whole observation)
/// and reports it as a primary, a standby, or unreachable.
pub async fn observe(node: &str, connector: &Connector, timeout: Duration) -> Observed {
    settle(node, timeout, tokio::time::timeout(timeout, observe_inner(node, connector, timeout)).await)
}

fn settle(node: &str, timeout: Duration, outcome: std::result::Result<Result<Observed>, Elapsed>) -> Observed {
    match outcome {
        Ok(Ok(observed)) => observed,
        Ok(Err(e)) => Observed::Unreachable { observed_at: SystemTime::now(), error: e.to_string() },
        Err(_) => Observed::Unreachable {
            observed_at: SystemTime::now(),
            error: format!("{node}: no answer within {timeout:?}"),
        },
    }
}

async fn observe_inner(node: &str, connector: &Connector, timeout: Duration) -> Result<Observed> {
    observe_client(node, &connector.connect(node, timeout).await?).await
}

/// Repeated observation of one node over one long-lived session, as [`observe`] would report it.
///
/// A new connection per observation costs a PostgreSQL backend process (fork, authentication,
/// catalog caches) and most of the observer's CPU. The session is only a transport: every
/// observation runs its queries now, so nothing cached is ever reported. A reused session that
/// fails (closed by a restart, a fence, a terminated backend) is dropped and the observation is
/// retried once on a new connection within the same deadline, so the node reads as
/// [`Observed::Unreachable`] exactly when a fresh connection would fail too; a session that ran
/// out of time is dropped as well. Sessions are also replaced after [`SESSION_MAX_AGE`], so a
/// smart shutdown (which waits for every session to end) is held up for at most that long.
pub struct Observer {
    node: String,
    connector: Connector,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
}

struct Session {
    client: Client,
    prepared: Prepared,
    since: Instant,
}

/// How long one observation session is reused.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("node", &self.node).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Observer {
    /// `timeout` bounds one whole observation, reconnecting included.
    pub fn new(node: impl Into<String>, connector: Connector, timeout: Duration) -> Observer {
        Observer { node: node.into(), connector, timeout, session: tokio::sync::Mutex::new(None) }
    }

    pub async fn observe(&self) -> Observed {
        // Concurrent callers do not queue behind a slow observation: they observe on a
        // connection of their own, as before sessions were kept.
        let Ok(mut session) = self.session.try_lock() else {
            return observe(&self.node, &self.connector, self.timeout).await;
        };
        let node = self.node.as_str();
        let attempt = async {
            let reusable = session.take().filter(|s| !s.client.is_closed() && s.since.elapsed() < SESSION_MAX_AGE);
            if let Some(kept) = reusable {
                match observe_with(node, &kept.client, &kept.prepared.queries()).await {
                    Ok(observed) => {
                        *session = Some(kept);
                        return Ok(observed);
                    }
                    Err(e) => tracing::debug!(node, error = %e, "observation session failed; reconnecting"),
                }
            }
            let client = self.connector.connect(node, self.timeout).await?;
            let prepared = Prepared::new(node, &client).await?;
            let observed = observe_with(node, &client, &prepared.queries()).await?;
            *session = Some(Session { client, prepared, since: Instant::now() });
            Ok(observed)
        };
        settle(node, self.timeout, tokio::time::timeout(self.timeout, attempt).await)
    }
}

/// Observes the node behind an open client.
pub async fn observe_client(node: &str, client: &Client) -> Result<Observed> {
    observe_with(node, client, &SQL).await
}

const IN_RECOVERY_QUERY: &str = "SELECT pg_is_in_recovery()";
const PRIMARY_QUERY: &str = "SELECT (SELECT system_identifier FROM pg_control_system()), \
                             pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())";
const REPLICATION_QUERY: &str = "\
SELECT application_name, state, sync_state, sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text, \
       EXTRACT(EPOCH FROM write_lag)::float8, EXTRACT(EPOCH FROM flush_lag)::float8, \
       EXTRACT(EPOCH FROM replay_lag)::float8, EXTRACT(EPOCH FROM now() - reply_time)::float8 \
FROM pg_stat_replication";

/// The statements of one observation: SQL text (parsed on every use) or, on a kept session,
/// prepared once, which halves the round trips and spares the server the parsing and planning.
struct Queries<'a, T: ?Sized> {
    in_recovery: &'a T,
    primary: &'a T,
    replication: &'a T,
    standby: &'a T,
}

const SQL: Queries<'static, str> = Queries {
    in_recovery: IN_RECOVERY_QUERY,
    primary: PRIMARY_QUERY,
    replication: REPLICATION_QUERY,
    standby: STANDBY_QUERY,
};

/// [`SQL`] prepared on one session.
struct Prepared {
    in_recovery: Statement,
    primary: Statement,
    replication: Statement,
    standby: Statement,
}

impl Prepared {
    async fn new(node: &str, client: &Client) -> Result<Prepared> {
        let prepare = |sql| async move {
            client.prepare(sql).await.map_err(|source| Error::Query {
                node: node.to_string(),
                what: "prepare observation",
                source,
            })
        };
        Ok(Prepared {
            in_recovery: prepare(SQL.in_recovery).await?,
            primary: prepare(SQL.primary).await?,
            replication: prepare(SQL.replication).await?,
            standby: prepare(SQL.standby).await?,
        })
    }

    fn queries(&self) -> Queries<'_, Statement> {
        Queries {
            in_recovery: &self.in_recovery,
            primary: &self.primary,
            replication: &self.replication,
            standby: &self.standby,
        }
    }
}

async fn observe_with<T: ?Sized + ToStatement + Sync>(
    node: &str,
    client: &Client,
    queries: &Queries<'_, T>,
) -> Result<Observed> {
    let query_err = |what| move |source| Error::Query { node: node.to_string(), what, source };
    let in_recovery: bool =
        client.query_one(queries.in_recovery, &[]).await.map_err(query_err("pg_is_in_recovery"))?.get(0);
    if in_recovery {
        return standby_with(node, client, queries.standby).await.map(Observed::Standby);
    }
    let observed_at = SystemTime::now();
    let row = client.query_one(queries.primary, &[]).await.map_err(query_err("read primary position"))?;
    let system_id = row.get::<_, i64>(0) as u64;
    let lsn = parse_lsn(node, row.get(1))?;
    let timeline = timeline_of_walfile(node, row.get(2))?;
    let rows = client.query(queries.replication, &[]).await.map_err(query_err("read pg_stat_replication"))?;
    let mut replicas = Vec::with_capacity(rows.len());
    for r in rows {
        let lsn_at = |i: usize| r.get::<_, Option<&str>>(i).map(|t| parse_lsn(node, t)).transpose();
        replicas.push(ReplicaStatus {
            application_name: r.get::<_, Option<String>>(0).unwrap_or_default(),
            state: r.get::<_, Option<String>>(1).unwrap_or_default(),
            sync_state: r.get::<_, Option<&str>>(2).and_then(SyncState::parse),
            sent_lsn: lsn_at(3)?,
            write_lsn: lsn_at(4)?,
            flush_lsn: lsn_at(5)?,
            replay_lsn: lsn_at(6)?,
            write_lag: seconds(r.get(7)),
            flush_lag: seconds(r.get(8)),
            replay_lag: seconds(r.get(9)),
            reply_age: seconds(r.get(10)),
        });
    }
    Ok(Observed::Primary(PrimaryObservation {
        observed_at,
        position: WalPosition { system_id, timeline, lsn },
        replicas,
    }))
}

/// A standby's timeline: the WAL receiver's while it runs. Once the upstream is gone (e.g. right
/// after a fence) the receiver exits, so: the highest timeline of the WAL segment files that hold
/// the replay position (a standby writes received WAL under the timeline it belongs to), then
/// what `pg_control` says.
const STANDBY_QUERY: &str = "\
WITH r AS (SELECT pg_last_wal_replay_lsn() AS lsn, \
                  (SELECT setting::numeric FROM pg_settings WHERE name = 'wal_segment_size') AS seg), \
     s AS (SELECT floor((lsn - '0/1'::pg_lsn) / seg) AS segno, floor(4294967296 / seg) AS per FROM r), \
     w AS (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) AS tli FROM pg_ls_waldir(), s \
           WHERE length(name) = 24 AND substr(name, 9) = upper(lpad(to_hex(floor(segno / per)::bigint), 8, '0') \
                 || lpad(to_hex(mod(segno, per)::bigint), 8, '0'))) \
SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system()), \
       COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT tli FROM w), \
                NULLIF((SELECT min_recovery_end_timeline FROM pg_control_recovery()), 0), \
                (SELECT timeline_id FROM pg_control_checkpoint())), \
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
       pg_is_in_recovery() AND pg_is_wal_replay_paused(), \
       COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
       EXTRACT(EPOCH FROM now() - (SELECT last_msg_receipt_time FROM pg_stat_wal_receiver))::float8";

/// Observes a node that is in recovery. Fails with [`Error::WrongRole`] if it is not.
pub(crate) async fn observe_standby(node: &str, client: &Client) -> Result<StandbyObservation> {
    standby_with(node, client, STANDBY_QUERY).await
}

async fn standby_with<T: ?Sized + ToStatement + Sync>(
    node: &str,
    client: &Client,
    query: &T,
) -> Result<StandbyObservation> {
    let observed_at = SystemTime::now();
    let row = client.query_one(query, &[]).await.map_err(|source| Error::Query {
        node: node.to_string(),
        what: "read standby position",
        source,
    })?;
    if !row.get::<_, bool>(0) {
        return Err(Error::WrongRole { node: node.to_string(), expected: "a standby", found: "a primary" });
    }
    let lsn_at = |i: usize| row.get::<_, Option<&str>>(i).map(|t| parse_lsn(node, t)).transpose();
    Ok(StandbyObservation {
        observed_at,
        system_id: row.get::<_, i64>(1) as u64,
        timeline: row.get::<_, i32>(2) as u32,
        receive_lsn: lsn_at(3)?,
        replay_lsn: lsn_at(4)?,
        replay_paused: row.get(5),
        streaming: row.get(6),
        last_message_age: seconds(row.get(7)),
    })
}

pub(crate) fn parse_lsn(node: &str, text: &str) -> Result<Lsn> {
    text.parse().map_err(|e: crate::lsn::LsnParseError| Error::Parse {
        node: node.to_string(),
        what: "LSN",
        detail: e.to_string(),
    })
}

/// The timeline is the first 8 hex digits of a WAL file name.
pub(crate) fn timeline_of_walfile(node: &str, walfile: &str) -> Result<u32> {
    walfile.get(..8).and_then(|hex| u32::from_str_radix(hex, 16).ok()).ok_or_else(|| Error::Parse {
        node: node.to_string(),
        what: "WAL file name",
        detail: walfile.to_string(),
    })
}

fn seconds(value: Option<f64>) -> Option<Duration> {
    value.filter(|s| s.is_finite()).map(|s| Duration::from_secs_f64(s.max(0.0)))
}

#[cfg(test)]
mod tests {
    use testkit::{PgPair, StopMode};

    use super::*;

    const APP: &str = "observer-test";

    fn observer(port: u16) -> Observer {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("postgres").dbname("postgres").application_name(APP);
        config.connect_timeout(Duration::from_secs(2));
        let connector = Connector::from_auth(config, &crate::PgAuth::default(), false).unwrap();
        Observer::new("n", connector, Duration::from_secs(5))
    }

    /// Backends of `observer` sessions on `node`.
    async fn sessions(node: &testkit::PgNode) -> i64 {
        let client = node.connect().await.unwrap();
        let row = client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&APP])
            .await
            .unwrap();
        row.get(0)
    }

    #[tokio::test]
    async fn a_kept_session_never_hides_a_restart_or_an_outage() {
        let pair = PgPair::start().await.unwrap();
        let (primary, standby) = (observer(pair.primary.port), observer(pair.standby.port));
        assert!(matches!(standby.observe().await, Observed::Standby(_)));
        for _ in 0..3 {
            assert!(matches!(primary.observe().await, Observed::Primary(_)));
        }
        assert_eq!(sessions(&pair.primary).await, 1, "observations share one session");

        // The session's backend is gone: the next observation reconnects instead of failing.
        let admin = pair.primary.connect().await.unwrap();
        admin
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&APP])
            .await
            .unwrap();
        assert!(matches!(primary.observe().await, Observed::Primary(_)));

        // A restart between two observations is invisible, as with a new connection each time.
        pair.primary.stop(StopMode::Fast).unwrap();
        pair.primary.start().unwrap();
        PgPair::wait_accepting(&pair.primary, Duration::from_secs(30)).await.unwrap();
        assert!(matches!(primary.observe().await, Observed::Primary(_)));

        // A server that is down is unreachable, never its last answer.
        pair.primary.stop(StopMode::Fast).unwrap();
        assert!(matches!(primary.observe().await, Observed::Unreachable { .. }));
        pair.primary.start().unwrap();
        PgPair::wait_accepting(&pair.primary, Duration::from_secs(30)).await.unwrap();
        assert!(matches!(primary.observe().await, Observed::Primary(_)));
    }
}
