//! The driver against real PostgreSQL 15 pairs from the test kit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use cnpg_pair::{
    Durability, Eligibility, EligibilityPolicy, Error, ErrorClass, FenceMethod, NotPromotable, Observed, PairDriver,
    PairSnapshot, PlainDriver, PlainNodeConfig, PromoteRequest, RejoinMethod, RejoinPolicy, StoreWriteError,
    SyncRecordStore, SyncState, Upstream, evaluate,
};
use testkit::writer::{Writer, WriterReport};
use testkit::{PgNode, PgPair, wait_for, wait_until};

mod common;
use common::upstream;

const WAIT: Duration = Duration::from_secs(30);

fn driver(node: &PgNode, peer: &PgNode) -> PlainDriver {
    // A short first backoff keeps the rejoin retries of the crash tests quick.
    let rejoin = RejoinPolicy { initial_backoff: Duration::from_millis(200), ..Default::default() };
    PlainDriver::new(PlainNodeConfig { rejoin, ..common::node_config(node, peer) }).expect("valid driver config")
}

async fn snapshot(primary: &PlainDriver, standby: &PlainDriver) -> PairSnapshot {
    PairSnapshot {
        standby_name: standby.name().to_string(),
        primary: primary.observe().await,
        standby: standby.observe().await,
    }
}

/// Ids of `ids` missing from `table` on `node`.
async fn missing_ids(node: &PgNode, table: &str, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    let client = node.connect().await?;
    let present: Vec<i64> = client
        .query(&format!("SELECT id FROM {table} WHERE id = ANY($1)"), &[&ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    Ok(ids.iter().copied().filter(|id| !present.contains(id)).collect())
}

/// Planned switchover old → new at the driver level (§5 steps 2, 4, 6, 8).
async fn switchover(
    old: &PlainDriver,
    new: &PlainDriver,
    new_node: &PgNode,
    epoch: u64,
) -> anyhow::Result<cnpg_pair::Rejoined> {
    let fenced = old.fence().await?;
    assert_eq!(fenced.method, FenceMethod::Fast, "{fenced:?}");
    assert!(fenced.clean, "fast shutdown must leave a clean control file: {fenced:?}");
    let final_position = fenced.final_position.context("a clean fence knows its final position")?;
    let again = old.fence().await?;
    assert_eq!(again.method, FenceMethod::AlreadyStopped, "a retried fence finds the node stopped");
    assert_eq!(again.final_position, Some(final_position), "and reports the same final position");
    let caught_up = new.wait_caught_up(&final_position, WAIT).await?;
    assert!(caught_up.replayed.lsn >= final_position.lsn);
    let promotion = new.promote(&PromoteRequest { epoch, handover_token: None }).await?;
    assert_eq!(promotion.position.timeline, final_position.timeline + 1, "promotion starts a new timeline");
    assert!(!promotion.already_promoted);
    Ok(old.rejoin_as_standby(&upstream(new_node)).await?)
}

#[tokio::test]
async fn observer_reports_sync_zero_lag_growing_lag_and_unknown() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    let (a, b) = (driver(&pair.primary, &pair.standby), driver(&pair.standby, &pair.primary));

    let idle = wait_for("zero lag at idle", WAIT, || async {
        let s = snapshot(&a, &b).await;
        let lag = s.lag();
        Ok((lag.flush_bytes == Some(0) && lag.replay_bytes == Some(0)).then_some((s, lag)))
    })
    .await?;
    let (idle_snapshot, idle_lag) = idle;
    assert_eq!(idle_lag.sync_state, Some(SyncState::Sync));
    // PostgreSQL keeps the last replay_lag for a moment after the last commit; known, and small.
    assert!(idle_lag.replay_seconds.is_some_and(|s| s < 1.0), "{idle_lag:?}");
    let primary = idle_snapshot.primary.as_primary().expect("a is primary");
    let standby = idle_snapshot.standby.as_standby().expect("b is standby");
    assert_eq!(primary.position.system_id, standby.system_id);
    assert_eq!((primary.position.timeline, standby.timeline), (1, 1));
    assert!(standby.streaming);
    let policy = EligibilityPolicy::default();
    assert_eq!(evaluate(&idle_snapshot, Some("b"), &policy, SystemTime::now()), Eligibility::Promotable);

    // Paused replay: WAL still arrives (flush lag stays 0) but is not applied.
    let standby_client = pair.standby.connect().await?;
    standby_client.batch_execute("SELECT pg_wal_replay_pause()").await?;
    let writer = pair.primary.connect().await?;
    // Local commits: with remote_apply and replay paused, a normal commit would wait forever.
    writer.batch_execute("SET synchronous_commit = local; CREATE TABLE filler (x int)").await?;
    let mut last = 0;
    for round in 0..3 {
        writer.batch_execute("INSERT INTO filler SELECT generate_series(1, 2000)").await?;
        let lag = wait_for("replay lag to grow", WAIT, || async {
            let lag = snapshot(&a, &b).await.lag();
            Ok(lag.replay_bytes.filter(|&bytes| bytes > last).map(|_| lag))
        })
        .await?;
        let bytes = lag.replay_bytes.expect("known");
        assert!(bytes > last, "round {round}: replay lag {bytes} did not grow past {last}");
        last = bytes;
    }
    let paused = snapshot(&a, &b).await;
    assert!(paused.standby.as_standby().is_some_and(|s| s.replay_paused));
    standby_client.batch_execute("SELECT pg_wal_replay_resume()").await?;
    wait_until("lag back to zero", WAIT, || async { Ok(snapshot(&a, &b).await.lag().replay_bytes == Some(0)) }).await?;

    // Unreachable standby: lag is unknown, never 0.
    pair.standby.stop(testkit::StopMode::Immediate)?;
    let gone = wait_for("b gone from pg_stat_replication", WAIT, || async {
        let s = snapshot(&a, &b).await;
        Ok(s.primary.as_primary().is_some_and(|p| p.replica("b").is_none()).then_some(s))
    })
    .await?;
    assert!(matches!(gone.standby, Observed::Unreachable { .. }), "{:?}", gone.standby);
    let lag = gone.lag();
    assert_eq!((lag.flush_bytes, lag.replay_bytes, lag.replay_seconds, lag.sync_state), (None, None, None, None));
    assert!(matches!(
        evaluate(&gone, Some("b"), &policy, SystemTime::now()),
        Eligibility::NotPromotable(NotPromotable::CandidateUnreachable(_))
    ));
    Ok(())
}

#[tokio::test]
async fn planned_switchover_and_failback_under_writer_lose_nothing_and_need_no_rewind() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    let (a, b) = (driver(&pair.primary, &pair.standby), driver(&pair.standby, &pair.primary));
    let mut writer = Writer::start(&pair.multi_host_conninfo(), "probe").await?;
    writer.wait_acked(50, WAIT).await?;

    // A → B.
    let rejoined = switchover(&a, &b, &pair.standby, 2).await?;
    assert_eq!(rejoined.method, RejoinMethod::Follow, "the shutdown checkpoint reached b: no rewind");
    let acked = writer.acked_count();
    writer.wait_acked(acked + 50, WAIT).await.context("writes continue on b")?;
    let b_client = pair.standby.connect().await?;
    assert!(!pair.standby.is_in_recovery().await? && pair.primary.is_in_recovery().await?);
    b_client.batch_execute("CREATE TABLE marker (x int); INSERT INTO marker VALUES (1)").await?;
    // remote_apply: once the commit returns, a has applied it.
    let on_a: i64 = pair.primary.connect().await?.query_one("SELECT count(*) FROM marker", &[]).await?.get(0);
    assert_eq!(on_a, 1, "a commit on b is applied on a");

    // Retried steps are idempotent; a lower epoch is refused.
    let again = b.promote(&PromoteRequest { epoch: 2, handover_token: None }).await?;
    assert!(again.already_promoted);
    let backwards = b.promote(&PromoteRequest { epoch: 1, handover_token: None }).await.unwrap_err();
    assert!(matches!(backwards, Error::EpochWentBackwards { recorded: 2, .. }), "{backwards}");
    assert_eq!(backwards.class(), ErrorClass::Unsafe);
    assert_eq!(a.rejoin_as_standby(&upstream(&pair.standby)).await?.method, RejoinMethod::AlreadyFollowing);

    // Failback B → A.
    let rejoined = switchover(&b, &a, &pair.primary, 3).await?;
    assert_eq!(rejoined.method, RejoinMethod::Follow);
    let acked = writer.acked_count();
    writer.wait_acked(acked + 50, WAIT).await.context("writes continue on a")?;

    let report: WriterReport = writer.stop().await;
    assert!(report.acked.len() >= 150);
    let missing = missing_ids(&pair.primary, "probe", &report.acked).await?;
    assert!(missing.is_empty(), "acknowledged ids missing on the final primary: {missing:?}");
    let a_client = pair.primary.connect().await?;
    let epochs: Vec<i64> = a_client
        .query("SELECT epoch FROM continuum.fencing ORDER BY epoch", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(epochs, vec![2, 3], "both promotions recorded their epoch, replicated to the other node");
    Ok(())
}

#[tokio::test]
async fn crashed_primary_is_rewound_and_rejoins_without_losing_acknowledged_commits() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    let (a, b) = (driver(&pair.primary, &pair.standby), driver(&pair.standby, &pair.primary));
    let mut writer = Writer::start(&pair.multi_host_conninfo(), "probe").await?;
    writer.wait_acked(50, WAIT).await?;

    // Give a history b never sees: cut b's WAL stream, then commit locally on a (opting out of
    // synchronous replication, which only a local commit can). The writer's commits now block.
    pair.standby.write_node_conf(&testkit::pg::NodeSettings {
        primary_conninfo: Some(format!("host=127.0.0.1 port={} user=postgres", testkit::free_port())),
        synchronous_standby_names: vec![pair.primary.name.clone()],
    })?;
    pair.standby.connect().await?.batch_execute("SELECT pg_reload_conf()").await?;
    let a_client = pair.primary.connect().await?;
    wait_until("b's WAL receiver gone", WAIT, || async {
        Ok(a_client.query_opt("SELECT 1 FROM pg_stat_replication WHERE application_name = 'b'", &[]).await?.is_none())
    })
    .await?;
    a_client
        .batch_execute("SET synchronous_commit = local; CREATE TABLE only_on_a AS SELECT generate_series(1, 1000) AS x")
        .await?;
    pair.primary.kill9()?;

    let promotion = b.promote(&PromoteRequest { epoch: 2, handover_token: None }).await?;
    assert_eq!(promotion.position.timeline, 2);
    let rejoined = a.rejoin_as_standby(&upstream(&pair.standby)).await?;
    assert!(
        matches!(rejoined.method, RejoinMethod::Rewind | RejoinMethod::Reclone),
        "a diverged from b, so following alone cannot work: {rejoined:?}"
    );
    let acked = writer.acked_count();
    writer.wait_acked(acked + 20, WAIT).await.context("b accepts writes once a is its sync standby again")?;
    let report = writer.stop().await;
    assert!(!report.unknown.is_empty(), "the crash left at least one commit without a reply");

    let missing = missing_ids(&pair.standby, "probe", &report.acked).await?;
    assert!(missing.is_empty(), "acknowledged ids missing on b: {missing:?}");
    let missing_on_a = missing_ids(&pair.primary, "probe", &report.acked).await?;
    assert!(missing_on_a.is_empty(), "a follows b again: {missing_on_a:?}");
    let a_client = pair.primary.connect().await?;
    let gone: Option<String> = a_client.query_one("SELECT to_regclass('only_on_a')::text", &[]).await?.get(0);
    assert_eq!(gone, None, "a's diverged history was rewound away");
    // pg_rewind copied b's configuration; a's own settings were re-applied.
    let names: String = a_client.query_one("SHOW synchronous_standby_names", &[]).await?.get(0);
    assert_eq!(names, "FIRST 1 (\"b\")");
    let sync_state: String = pair
        .standby
        .connect()
        .await?
        .query_one("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'a'", &[])
        .await?
        .get(0);
    assert_eq!(sync_state, "sync");
    Ok(())
}

#[tokio::test]
async fn fence_terminates_a_session_waiting_for_sync_replication_without_acknowledging_it() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    let a = driver(&pair.primary, &pair.standby);
    pair.primary.connect().await?.batch_execute("CREATE TABLE t (id int)").await?;
    // No standby: a commit waits for synchronous replication forever.
    pair.standby.stop(testkit::StopMode::Fast)?;
    let waiter = pair.primary.connect().await?;
    let commit = tokio::spawn(async move { waiter.execute("INSERT INTO t VALUES (42)", &[]).await });
    let observer = pair.primary.connect().await?;
    wait_until("the INSERT waits for the standby", WAIT, || async {
        let n: i64 =
            observer.query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'", &[]).await?.get(0);
        Ok(n == 1)
    })
    .await?;

    let fenced = a.fence().await?;
    assert_eq!(fenced.method, FenceMethod::Fast);
    let outcome = tokio::time::timeout(WAIT, commit).await??;
    assert!(outcome.is_err(), "the client must not be told COMMIT succeeded: {outcome:?}");

    pair.standby.start()?;
    let on_b: i64 = pair.standby.connect().await?.query_one("SELECT count(*) FROM t WHERE id = 42", &[]).await?.get(0);
    assert_eq!(on_b, 0, "the row never reached b, so an acknowledgement would have been a lie");

    // Rejoining an upstream that does not answer: bounded retries, then a terminal status, and
    // the node is left a (read-only) standby, never a writable primary.
    let mut config = a.config().clone();
    config.rejoin = RejoinPolicy { max_attempts: 2, initial_backoff: Duration::from_millis(100), ..Default::default() };
    let impatient = PlainDriver::new(config)?;
    let nowhere = Upstream { port: testkit::free_port(), ..upstream(&pair.standby) };
    let gave_up = impatient.rejoin_as_standby(&nowhere).await.unwrap_err();
    assert!(matches!(gave_up, Error::RejoinGaveUp { attempts: 2, .. }), "{gave_up}");
    assert_eq!(gave_up.class(), ErrorClass::NeedsOperator);
    assert!(pair.primary.is_in_recovery().await?, "a gave-up rejoin leaves a standby");
    Ok(())
}

/// One store write: the value written, and the primary's `synchronous_standby_names` and b's
/// `sync_state` at that moment.
type StoreWrite = (Option<String>, String, Option<String>);

/// Records every write with what PostgreSQL reported at that moment, so the test sees the order.
struct RecordingStore {
    primary: PgNode,
    fail: AtomicBool,
    writes: Mutex<Vec<StoreWrite>>,
}

#[async_trait::async_trait]
impl SyncRecordStore for RecordingStore {
    async fn record_sync_standby(&self, standby: Option<&str>) -> Result<(), StoreWriteError> {
        let client = self.primary.connect().await.map_err(|e| StoreWriteError::Unknown(e.to_string()))?;
        let row = client
            .query_one(
                "SELECT current_setting('synchronous_standby_names'), \
                 (SELECT sync_state FROM pg_stat_replication WHERE application_name = 'b')",
                &[],
            )
            .await
            .map_err(|e| StoreWriteError::Unknown(e.to_string()))?;
        self.writes.lock().unwrap().push((standby.map(str::to_string), row.get(0), row.get(1)));
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreWriteError::Unknown("no quorum".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn sync_standby_is_added_before_the_record_and_dropped_after_it() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::builder().synchronous(false).start().await?;
    let a = driver(&pair.primary, &pair.standby);
    let store =
        RecordingStore { primary: pair.primary.clone(), fail: AtomicBool::new(false), writes: Mutex::default() };
    let client = pair.primary.connect().await?;
    let setting =
        || async { anyhow::Ok(client.query_one("SHOW synchronous_standby_names", &[]).await?.get::<_, String>(0)) };

    // Bad input changes nothing.
    let bad = a.enable_sync("b\" OR \"x", &store).await.unwrap_err();
    assert!(matches!(bad, Error::InvalidInput(_)), "{bad}");
    assert_eq!(setting().await?, "");
    assert!(store.writes.lock().unwrap().is_empty());

    a.enable_sync("b", &store).await?;
    let sync = "FIRST 1 (\"b\")".to_string();
    assert_eq!(setting().await?, sync);
    assert_eq!(
        store.writes.lock().unwrap().as_slice(),
        [(Some("b".into()), sync.clone(), Some("sync".into()))],
        "the record is written only once PostgreSQL lists b as sync"
    );

    let refused = a.drop_sync(Durability::Required, &store).await.unwrap_err();
    assert!(matches!(refused, Error::DurabilityRequired));
    assert_eq!((setting().await?, store.writes.lock().unwrap().len()), (sync.clone(), 1), "required never relaxes");

    store.fail.store(true, Ordering::SeqCst);
    let unknown = a.drop_sync(Durability::Preferred, &store).await.unwrap_err();
    assert!(matches!(unknown, Error::StoreWrite(StoreWriteError::Unknown(_))), "{unknown}");
    assert_eq!(unknown.class(), ErrorClass::Retryable);
    assert_eq!(setting().await?, sync, "without the store's yes, PostgreSQL keeps waiting for b");

    store.fail.store(false, Ordering::SeqCst);
    a.drop_sync(Durability::Preferred, &store).await?;
    assert_eq!(setting().await?, "");
    let last = store.writes.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.0, last.1), (None, sync), "the store said 'none' while PostgreSQL still waited for b");
    Ok(())
}

#[tokio::test]
async fn standby_without_a_data_directory_is_recloned_with_its_own_settings() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    // b's own listen addresses differ from a's (copied with a's postgresql.conf by the clone).
    let b_listen = "127.0.0.1,127.0.0.2";
    let b = PlainDriver::new(PlainNodeConfig {
        listen_addresses: Some(b_listen.into()),
        ..common::node_config(&pair.standby, &pair.primary)
    })?;
    pair.standby.stop(testkit::StopMode::Immediate)?;
    // As after a crash in the middle of an earlier re-clone.
    std::fs::remove_dir_all(&pair.standby.data_dir)?;

    let rejoined = b.rejoin_as_standby(&upstream(&pair.primary)).await?;
    assert_eq!(rejoined.method, RejoinMethod::Reclone);
    let b_client = pair.standby.connect().await?;
    for (setting, expected) in [
        ("cluster_name", "b".to_string()),
        ("port", pair.standby.port.to_string()),
        ("synchronous_standby_names", "FIRST 1 (\"a\")".to_string()),
        ("listen_addresses", b_listen.to_string()),
    ] {
        let value: String = b_client.query_one(&format!("SHOW {setting}"), &[]).await?.get(0);
        assert_eq!(value, expected, "{setting} is b's own, not a's copied one");
    }
    // remote_apply with b as the sync standby: the commit returns once b has applied it.
    pair.primary.connect().await?.batch_execute("CREATE TABLE after_clone AS SELECT 1 AS x").await?;
    let n: i64 = b_client.query_one("SELECT count(*) FROM after_clone", &[]).await?.get(0);
    assert_eq!(n, 1);
    Ok(())
}

/// Lets (or stops letting) `node` accept replication connections: `pg_basebackup` and WAL
/// receivers need them, ordinary sessions do not.
fn refuse_replication(node: &PgNode, refuse: bool) -> anyhow::Result<()> {
    const REJECT: &str = "host replication all 0.0.0.0/0 reject\n";
    let path = node.data_dir.join("pg_hba.conf");
    let text = std::fs::read_to_string(&path)?;
    let kept = text.strip_prefix(REJECT).unwrap_or(&text);
    std::fs::write(&path, if refuse { format!("{REJECT}{kept}") } else { kept.to_string() })?;
    node.reload()?;
    Ok(())
}

#[tokio::test]
async fn a_follow_failing_after_a_clone_resumes_that_copy_instead_of_cloning_again() -> anyhow::Result<()> {
    testkit::init_tracing();
    let pair = PgPair::start().await?;
    let b = PlainDriver::new(PlainNodeConfig {
        timeouts: cnpg_pair::PlainTimeouts { follow: Duration::from_secs(2), ..Default::default() },
        rejoin: RejoinPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        },
        ..common::node_config(&pair.standby, &pair.primary)
    })?;
    pair.standby.stop(testkit::StopMode::Immediate)?;
    std::fs::remove_dir_all(&pair.standby.data_dir)?;
    let upstream = upstream(&pair.primary);
    let rejoin = tokio::spawn(async move { b.rejoin_as_standby(&upstream).await });

    // pg_basebackup writes the manifest last: the copy is complete. From now on the clone's
    // WAL receiver is refused, so following it fails (times out) until replication is back.
    let manifest = pair.standby.data_dir.join("backup_manifest");
    let copied = wait_for("the clone's backup_manifest", WAIT, || {
        let manifest = manifest.clone();
        async move { Ok(std::fs::read(&manifest).ok()) }
    })
    .await?;
    refuse_replication(&pair.primary, true)?;
    let first = wait_for("the clone started", WAIT, || async { Ok(pair.standby.postmaster_pid()) }).await?;
    // A second start of the same copy: the first follow failed and was retried on it.
    wait_until("the copy restarted to follow again", WAIT, || async {
        Ok(pair.standby.postmaster_pid().is_some_and(|pid| pid != first))
    })
    .await?;
    refuse_replication(&pair.primary, false)?;

    let rejoined = rejoin.await??;
    assert!(rejoined.attempts >= 2, "the first follow must have failed: {rejoined:?}");
    assert_eq!(rejoined.method, RejoinMethod::Follow, "resumed the copy: {rejoined:?}");
    assert_eq!(std::fs::read(&manifest)?, copied, "the data directory is still the first copy");
    assert!(!pair.standby.data_dir.join(cnpg_pair::plain::CLONE_MARKER).exists(), "the marker goes once it streams");
    // remote_apply with b as the sync standby: the commit returns once b has applied it.
    pair.primary.connect().await?.batch_execute("CREATE TABLE after_resume AS SELECT 1 AS x").await?;
    let n: i64 = pair.standby.connect().await?.query_one("SELECT count(*) FROM after_resume", &[]).await?.get(0);
    assert_eq!(n, 1);
    Ok(())
}
