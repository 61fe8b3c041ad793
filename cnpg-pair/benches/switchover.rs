//! Driver-level planned switchover on loopback under a continuous writer: the write gap a client
//! with a multi-host connection string sees, and the time of each step. Prints a table.
//!
//! `cargo bench -p cnpg-pair` (set `SWITCHOVER_RUNS` to change the runs per mode; default 5).

use std::time::{Duration, Instant};

use cnpg_pair::{Durability, PairDriver, PlainDriver, PromoteRequest, RejoinMethod, StoreWriteError, SyncRecordStore};
use testkit::PgNode;
use testkit::writer::{Writer, WriterReport};

#[path = "../tests/common/mod.rs"]
mod common;
use common::upstream;

const WAIT: Duration = Duration::from_secs(30);

/// Stands in for the lease store (its latency is not what this measures).
struct AcceptingStore;

#[async_trait::async_trait]
impl SyncRecordStore for AcceptingStore {
    async fn record_sync_standby(&self, _standby: Option<&str>) -> Result<(), StoreWriteError> {
        Ok(())
    }
}

fn driver(node: &PgNode, peer: &PgNode) -> PlainDriver {
    PlainDriver::new(common::node_config(node, peer)).expect("valid config")
}

struct Run {
    mode: Durability,
    direction: String,
    started: Instant,
    fence: Duration,
    catch_up: Duration,
    promote: Duration,
    rejoin: Duration,
    sync: Duration,
    method: RejoinMethod,
}

async fn switchover(
    mode: Durability,
    old: &PlainDriver,
    new: &PlainDriver,
    new_node: &PgNode,
    epoch: u64,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let t = Instant::now();
    let fenced = old.fence().await?;
    let fence = t.elapsed();
    let target = fenced.final_position.ok_or_else(|| anyhow::anyhow!("unclean fence: {fenced:?}"))?;
    let t = Instant::now();
    new.wait_caught_up(&target, WAIT).await?;
    let catch_up = t.elapsed();
    if mode == Durability::Preferred {
        // The store records "no sync standby" (epoch N+1 moves the lease); the new primary then
        // accepts writes without waiting for the old one to rejoin.
        new.drop_sync(mode, &AcceptingStore).await?;
    }
    let t = Instant::now();
    new.promote(&PromoteRequest { epoch, handover_token: None }).await?;
    let promote = t.elapsed();
    let t = Instant::now();
    let rejoined = old.rejoin_as_standby(&upstream(new_node)).await?;
    let rejoin = t.elapsed();
    let t = Instant::now();
    new.enable_sync(old.name(), &AcceptingStore).await?;
    let sync = t.elapsed();
    Ok(Run {
        mode,
        direction: format!("{}→{}", old.name(), new.name()),
        started,
        fence,
        catch_up,
        promote,
        rejoin,
        sync,
        method: rejoined.method,
    })
}

/// Longest gap between two acknowledgements that straddles or follows `from`, before `until`.
fn gap(report: &WriterReport, from: Instant, until: Option<Instant>) -> Duration {
    report
        .acked_at
        .windows(2)
        .filter(|w| w[1].1 > from && until.is_none_or(|u| w[0].1 < u))
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("SWITCHOVER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let pair = testkit::PgPair::start().await?;
    let (a, b) = (driver(&pair.primary, &pair.standby), driver(&pair.standby, &pair.primary));
    let mut writer = Writer::start(&pair.multi_host_conninfo(), "bench_probe").await?;
    writer.wait_acked(100, WAIT).await?;

    let mut results = Vec::new();
    let mut epoch = 1;
    // `required` first: the test kit configures both nodes to wait for each other.
    for mode in [Durability::Required, Durability::Preferred] {
        for i in 0..runs {
            epoch += 1;
            let (old, new, new_node) = if i % 2 == 0 { (&a, &b, &pair.standby) } else { (&b, &a, &pair.primary) };
            results.push(switchover(mode, old, new, new_node, epoch).await?);
            let acked = writer.acked_count();
            writer.wait_acked(acked + 100, WAIT).await?;
        }
        // Leave `a` primary for the next mode.
        if runs % 2 == 1 {
            epoch += 1;
            switchover(mode, &b, &a, &pair.primary, epoch).await?;
            let acked = writer.acked_count();
            writer.wait_acked(acked + 100, WAIT).await?;
        }
    }
    let report = writer.stop().await;
    let missing = {
        let client = pair.primary.connect().await?;
        let present: i64 =
            client.query_one("SELECT count(*) FROM bench_probe WHERE id = ANY($1)", &[&report.acked]).await?.get(0);
        report.acked.len() as i64 - present
    };

    println!("\nplanned switchover, driver level, loopback, writer = 1 INSERT per transaction (remote_apply)\n");
    println!(
        "{:<10} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}  rejoin",
        "mode", "dir", "gap ms", "fence", "catch-up", "promote", "rejoin", "sync", "writable ms"
    );
    let mut summary = Vec::new();
    for mode in [Durability::Required, Durability::Preferred] {
        let mut gaps = Vec::new();
        let mut cols: [Vec<Duration>; 6] = Default::default();
        let of_mode: Vec<&Run> = results.iter().filter(|r| r.mode == mode).collect();
        for (i, r) in of_mode.iter().enumerate() {
            let until = of_mode.get(i + 1).map(|n| n.started);
            let g = gap(&report, r.started, until);
            let writable = r.fence + r.catch_up + r.promote;
            println!(
                "{:<10} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}  {:?}",
                format!("{mode:?}").to_lowercase(),
                r.direction,
                ms(g),
                ms(r.fence),
                ms(r.catch_up),
                ms(r.promote),
                ms(r.rejoin),
                ms(r.sync),
                ms(writable),
                r.method
            );
            gaps.push(g);
            for (col, v) in cols.iter_mut().zip([r.fence, r.catch_up, r.promote, r.rejoin, r.sync, writable]) {
                col.push(v);
            }
        }
        let med: Vec<String> = cols.into_iter().map(|c| ms(median(c))).collect();
        summary.push(format!(
            "{:<10} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
            format!("{mode:?}").to_lowercase(),
            "median",
            ms(median(gaps)),
            med[0],
            med[1],
            med[2],
            med[3],
            med[4],
            med[5]
        ));
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    println!(
        "\nacked {} commits, {} unknown, {} acknowledged missing on the final primary (must be 0)",
        report.acked.len(),
        report.unknown.len(),
        missing
    );
    println!("target: write gap ≤ 500 ms (preferred: the new primary accepts writes before the old one rejoins)");
    anyhow::ensure!(missing == 0, "acknowledged commits lost");
    Ok(())
}
