//! Commit latency against a real PowerDNS 4.7 on loopback: from sending `POST /v1/commit` to the
//! authoritative server answering the new region, over flips (tier reorders) and, for
//! comparison, a few pre-warmed commits of new bodies. Run with `cargo bench -p pdm`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Harness, HealthTarget};
use pdm::{CheckOptions, CommitRequest, LuaSpec, RecordSpec, UrlTarget};

const FLIPS: usize = 200;
const PREWARMED: usize = 3;
const NAME: &str = "db.bench.test.";

fn spec(order: [(&str, &HealthTarget); 2], timeout: u32) -> LuaSpec {
    LuaSpec::Ifurlextup {
        tiers: order
            .iter()
            .map(|(address, target)| vec![UrlTarget { address: address.to_string(), url: target.url() }])
            .collect(),
        options: CheckOptions { timeout: Some(timeout), ..Default::default() },
    }
}

fn request(epoch: u64, lua: LuaSpec) -> CommitRequest {
    CommitRequest {
        zone: "bench.test".into(),
        epoch,
        records: vec![RecordSpec { name: NAME.into(), rtype: "A".into(), ttl: 5, content: None, lua: Some(lua) }],
    }
}

struct Sample {
    commit_returned: Duration,
    answer_changed: Duration,
    queries_until_changed: u32,
}

/// Commits, then queries until the server answers `region`.
async fn timed_commit(h: &Harness, request: &CommitRequest, region: &str) -> anyhow::Result<Sample> {
    let started = Instant::now();
    h.client.commit(request).await?;
    let commit_returned = started.elapsed();
    let mut queries_until_changed = 0;
    loop {
        queries_until_changed += 1;
        if h.dns.a(NAME).await? == [region] {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "answer never changed to {region}");
    }
    Ok(Sample { commit_returned, answer_changed: started.elapsed(), queries_until_changed })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn row(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!(
        "| {what:<50} | {:>4} | {:>8} | {:>8} | {:>8} |",
        sorted.len(),
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        ms(*sorted.last().expect("samples"))
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Quiet by default: one log line per commit would bury the table.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    let h = Harness::start().await?;
    h.create_zone("bench.test").await?;
    let a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let b = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let (region_a, region_b) = ("192.0.2.1", "192.0.2.2");
    h.client.commit(&request(1, spec([(region_a, &a), (region_b, &b)], 1))).await?;

    let mut flips = Vec::new();
    for i in 0..FLIPS {
        let epoch = 2 + i as u64;
        let (region, order) = if i % 2 == 0 {
            (region_b, [(region_b, &b), (region_a, &a)])
        } else {
            (region_a, [(region_a, &a), (region_b, &b)])
        };
        flips.push(timed_commit(&h, &request(epoch, spec(order, 1)), region).await?);
    }

    // New bodies (a different check timeout makes every check new) pay the pre-warm wait.
    let mut prewarmed = Vec::new();
    for i in 0..PREWARMED {
        let epoch = 10_000 + i as u64;
        let (region, order) = if i % 2 == 0 {
            (region_b, [(region_b, &b), (region_a, &a)])
        } else {
            (region_a, [(region_a, &a), (region_b, &b)])
        };
        prewarmed.push(timed_commit(&h, &request(epoch, spec(order, 2 + i as u32)), region).await?);
    }

    println!();
    println!(
        "PDM commit latency, PowerDNS 4.7 on loopback, lua-health-checks-interval={}s",
        common::CHECK_INTERVAL_SECS
    );
    println!("| {:<50} | {:>4} | {:>8} | {:>8} | {:>8} |", "measure", "n", "p50 ms", "p99 ms", "max ms");
    println!("|{:-<52}|{:->6}|{:->10}|{:->10}|{:->10}|", "", "", "", "", "");
    row("flip: request -> commit returned", &flips.iter().map(|s| s.commit_returned).collect::<Vec<_>>());
    row("flip: request -> authoritative answer changed", &flips.iter().map(|s| s.answer_changed).collect::<Vec<_>>());
    row(
        "new body (pre-warmed): request -> answer changed",
        &prewarmed.iter().map(|s| s.answer_changed).collect::<Vec<_>>(),
    );
    let first_query = flips.iter().filter(|s| s.queries_until_changed == 1).count();
    println!("flips answered by the first query after the commit returned: {first_query}/{}", flips.len());
    Ok(())
}
