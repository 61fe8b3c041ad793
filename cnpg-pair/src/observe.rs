//! Read-only observation of a node: what a primary reports about its standbys, and what a standby
//! reports about itself. Every value that PostgreSQL can leave NULL stays an `Option`: "unknown"
//! is never turned into 0.

use std::time::{Duration, SystemTime};

use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};
use crate::lsn::{Lsn, WalPosition};

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

/// Observes one node: connects with `config` (deadline `timeout` for the whole observation) and
/// reports it as a primary, a standby, or unreachable.
pub async fn observe(node: &str, config: &Config, timeout: Duration) -> Observed {
    match tokio::time::timeout(timeout, observe_inner(node, config)).await {
        Ok(Ok(observed)) => observed,
        Ok(Err(e)) => Observed::Unreachable { observed_at: SystemTime::now(), error: e.to_string() },
        Err(_) => Observed::Unreachable {
            observed_at: SystemTime::now(),
            error: format!("{node}: no answer within {timeout:?}"),
        },
    }
}

async fn observe_inner(node: &str, config: &Config) -> Result<Observed> {
    let (client, connection) =
        config.connect(NoTls).await.map_err(|source| Error::Connect { node: node.to_string(), source })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    observe_client(node, &client).await
}

/// Observes the node behind an open client.
pub async fn observe_client(node: &str, client: &Client) -> Result<Observed> {
    let query_err = |what| move |source| Error::Query { node: node.to_string(), what, source };
    let in_recovery: bool =
        client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(query_err("pg_is_in_recovery"))?.get(0);
    if in_recovery {
        return observe_standby(node, client).await.map(Observed::Standby);
    }
    let observed_at = SystemTime::now();
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_control_system()), pg_current_wal_lsn()::text, \
             pg_walfile_name(pg_current_wal_lsn())",
            &[],
        )
        .await
        .map_err(query_err("read primary position"))?;
    let system_id = row.get::<_, i64>(0) as u64;
    let lsn = parse_lsn(node, row.get(1))?;
    let timeline = timeline_of_walfile(node, row.get(2))?;
    let rows = client
        .query(
            "SELECT application_name, state, sync_state, sent_lsn::text, write_lsn::text, flush_lsn::text, \
             replay_lsn::text, EXTRACT(EPOCH FROM write_lag)::float8, EXTRACT(EPOCH FROM flush_lag)::float8, \
             EXTRACT(EPOCH FROM replay_lag)::float8, EXTRACT(EPOCH FROM now() - reply_time)::float8 \
             FROM pg_stat_replication",
            &[],
        )
        .await
        .map_err(query_err("read pg_stat_replication"))?;
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
    let observed_at = SystemTime::now();
    let row = client.query_one(STANDBY_QUERY, &[]).await.map_err(|source| Error::Query {
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
