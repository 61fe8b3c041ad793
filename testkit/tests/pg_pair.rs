//! The PostgreSQL fixture delivers what every later test relies on: a primary and a standby
//! where COMMIT returns only once the standby has applied the transaction.

use std::time::Duration;

use testkit::{PgPair, StopMode};

#[tokio::test]
async fn pair_starts_with_a_synchronous_standby() -> anyhow::Result<()> {
    let pair = PgPair::start().await?;
    assert!(!pair.primary.is_in_recovery().await?, "primary must be writable");
    assert!(pair.standby.is_in_recovery().await?, "standby must be in recovery");

    let primary = pair.primary.connect().await?;
    let row = primary
        .query_one("SELECT sync_state, state FROM pg_stat_replication WHERE application_name = $1", &[&"b"])
        .await?;
    assert_eq!(row.get::<_, String>(0), "sync");
    assert_eq!(row.get::<_, String>(1), "streaming");
    let level: String = primary.query_one("SHOW synchronous_commit", &[]).await?.get(0);
    assert_eq!(level, "remote_apply");
    let wal_log_hints: String = primary.query_one("SHOW wal_log_hints", &[]).await?.get(0);
    assert_eq!(wal_log_hints, "on", "pg_rewind needs wal_log_hints");
    Ok(())
}

#[tokio::test]
async fn every_commit_is_visible_on_the_standby_when_commit_returns() -> anyhow::Result<()> {
    let pair = PgPair::start().await?;
    let primary = pair.primary.connect().await?;
    let standby = pair.standby.connect().await?;
    primary.batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").await?;
    for id in 0..50i32 {
        primary.execute("INSERT INTO acked VALUES ($1)", &[&id]).await?;
        // No wait: remote_apply means the standby already replayed it.
        let seen = standby.query_opt("SELECT 1 FROM acked WHERE id = $1", &[&id]).await?;
        assert!(seen.is_some(), "row {id} acknowledged by the primary but not visible on the standby");
    }
    Ok(())
}

#[tokio::test]
async fn commit_blocks_while_the_standby_is_down_and_completes_when_it_returns() -> anyhow::Result<()> {
    let pair = PgPair::start().await?;
    let primary = pair.primary.connect().await?;
    primary.batch_execute("CREATE TABLE acked (id int PRIMARY KEY)").await?;

    pair.standby.stop(StopMode::Fast)?;
    let mut commit = Box::pin(primary.execute("INSERT INTO acked VALUES (1)", &[]));
    let early = tokio::time::timeout(Duration::from_secs(2), &mut commit).await;
    assert!(early.is_err(), "COMMIT returned with no synchronous standby: {early:?}");

    pair.standby.start()?;
    let done = tokio::time::timeout(Duration::from_secs(30), &mut commit).await;
    assert_eq!(done.expect("COMMIT still blocked 30 s after the standby returned")?, 1);
    let standby = pair.standby.connect().await?;
    assert!(standby.query_opt("SELECT 1 FROM acked WHERE id = 1", &[]).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn dropping_the_pair_stops_both_servers() -> anyhow::Result<()> {
    let pair = PgPair::start().await?;
    let pids = [pair.primary.postmaster_pid().unwrap(), pair.standby.postmaster_pid().unwrap()];
    let dir = pair.dir().to_path_buf();
    drop(pair);
    for pid in pids {
        testkit::wait_until("postmaster exit", Duration::from_secs(10), || async move {
            Ok(!testkit::os::process_exists(pid))
        })
        .await?;
    }
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    Ok(())
}
