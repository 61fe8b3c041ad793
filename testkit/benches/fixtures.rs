//! Start-up cost of the fixtures every integration test pays: `cargo bench -p testkit`.

use std::time::{Duration, Instant};

use testkit::{PgPair, PowerDns};

const RUNS: usize = 5;

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:>8.0} {:>8.0} {:>8.0}",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(*samples.last().expect("at least one run"))
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut pair_times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let pair = PgPair::start().await?;
        pair_times.push(started.elapsed());
        drop(pair);
    }
    let mut pdns_times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let pdns = PowerDns::start().await?;
        pdns_times.push(started.elapsed());
        drop(pdns);
    }
    println!("fixture start-up, {RUNS} runs (ms)");
    println!("{:<44} {:>8} {:>8} {:>8}", "fixture", "min", "median", "max");
    println!("{:<44} {}", "PgPair (initdb, basebackup, sync streaming)", summary(pair_times));
    println!("{:<44} {}", "PowerDns (sqlite schema, API and DNS up)", summary(pdns_times));
    Ok(())
}
