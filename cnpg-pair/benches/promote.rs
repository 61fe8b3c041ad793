//! How long a standby takes to leave recovery after `pg_promote` once its primary was killed
//! (`kill -9` of the postmaster), for several ways of promoting, with the promotion requested
//! at spread-out moments after the kill (the startup process may be anywhere in its
//! reconnect / `wal_retrieve_retry_interval` cycle). Prints a table.
//!
//! `cargo bench -p cnpg-pair --bench promote` (`PROMOTE_RUNS`: runs per way, default 5).

use std::time::{Duration, Instant};

use testkit::{PgNode, PgPair};

/// The ways compared.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// `pg_promote(wait => true)` once, PostgreSQL defaults (`wal_retrieve_retry_interval` 5 s).
    WaitDefault,
    /// The same with `wal_retrieve_retry_interval = 200ms`.
    WaitShortRetry,
    /// `pg_promote(wait => false)` repeated every 100 ms until `pg_is_in_recovery()` is false.
    Repeat,
    /// `primary_conninfo = ''` and a reload (the WAL receiver stops), then `pg_promote(true)`.
    StopReceiver,
    /// What the driver does: short retry interval and the repeated request.
    ShortRetryAndRepeat,
}

impl Way {
    fn short_retry(self) -> bool {
        matches!(self, Way::WaitShortRetry | Way::ShortRetryAndRepeat)
    }
}

async fn promote(way: Way, standby: &PgNode) -> anyhow::Result<()> {
    let client = standby.connect().await?;
    match way {
        Way::WaitDefault | Way::WaitShortRetry => {
            let ok: bool = client.query_one("SELECT pg_promote(true, 60)", &[]).await?.get(0);
            anyhow::ensure!(ok, "pg_promote returned false");
        }
        Way::StopReceiver => {
            client.batch_execute("ALTER SYSTEM SET primary_conninfo = ''").await?;
            client.batch_execute("SELECT pg_reload_conf()").await?;
            let ok: bool = client.query_one("SELECT pg_promote(true, 60)", &[]).await?.get(0);
            anyhow::ensure!(ok, "pg_promote returned false");
        }
        Way::Repeat | Way::ShortRetryAndRepeat => loop {
            let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
            if !in_recovery {
                break;
            }
            // Refused with "recovery is not in progress" if it ended just now: look again.
            let _ = client.query_one("SELECT pg_promote(false)", &[]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    }
    // Writable, as a client would check (locally: its own standby is gone).
    client.batch_execute("SET synchronous_commit = local; CREATE TABLE IF NOT EXISTS promoted (x int)").await?;
    Ok(())
}

async fn run(way: Way, delay: Duration) -> anyhow::Result<Duration> {
    let retry = if way.short_retry() { "'200ms'" } else { "'5s'" };
    let builder = PgPair::builder().fsync(false).setting("wal_retrieve_retry_interval", retry);
    let pair = builder.start().await?;
    pair.primary.connect().await?.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await?;
    pair.primary.kill9()?;
    tokio::time::sleep(delay).await;
    let t = Instant::now();
    promote(way, &pair.standby).await?;
    Ok(t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs: u32 = std::env::var("PROMOTE_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let ways = [Way::WaitDefault, Way::WaitShortRetry, Way::Repeat, Way::StopReceiver, Way::ShortRetryAndRepeat];
    println!("{:<22} {:>8} {:>8}  runs (ms; promotion requested 0.3 s…5.3 s after the kill)", "way", "median", "worst");
    for way in ways {
        let mut times = Vec::new();
        for i in 0..runs {
            // Spread over one default retry interval (5 s), plus the first 300 ms.
            let delay = Duration::from_millis(300 + u64::from(i) * 5000 / u64::from(runs.max(1)));
            times.push(run(way, delay).await?.as_millis());
        }
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let worst = sorted[sorted.len() - 1];
        println!("{:<22} {median:>8} {worst:>8}  {times:?}", format!("{way:?}"));
    }
    Ok(())
}
