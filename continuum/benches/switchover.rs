//! End-to-end timings on loopback with real processes (the e2e harness): planned switchover
//! client write gap and request → done, daemon RSS and idle CPU (at the short test timings and,
//! on a cluster of its own, at the daemon's default timings). Failover times: `benches/failover.rs`.
//! Prints a table of medians; run with `cargo bench -p continuum --bench switchover`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use support::{gap_within, healthy, idle, median};
use testkit::writer::Writer;

const RUNS: usize = 5;

#[tokio::main]
async fn main() {
    // Idle cost at the daemon's default (WAN) timings first, on a cluster of its own.
    let wan_idle = {
        let c = Cluster::start(Options { default_timings: true, ..Options::default() }).await.expect("cluster");
        let mut writer = Writer::start(&c.conninfo(), "bench").await.expect("writer");
        writer.wait_acked(50, Duration::from_secs(20)).await.expect("writes");
        let idle = idle(&c).await;
        writer.stop().await;
        idle
    };

    let c = Cluster::start(Options { failover_debounce: "1s", ..Options::default() }).await.expect("cluster");
    let mut writer = Writer::start(&c.conninfo(), "bench").await.expect("writer");
    writer.wait_acked(50, Duration::from_secs(20)).await.expect("writes");
    let test_idle = idle(&c).await;

    let mut holder = "a".to_string();
    let (mut gaps, mut dones, mut reported) = (Vec::new(), Vec::new(), Vec::new());
    let mut windows = Vec::new();
    for _ in 0..RUNS {
        let to = if holder == "a" { "b" } else { "a" };
        let t0 = Instant::now();
        let id = c.request_switchover(&holder, to, "bench").await;
        let record = c.wait_switchover_finished(&holder, &id, Duration::from_secs(60)).await;
        // Done = succeeded, DNS flipped and the old primary streaming (the record's last step
        // waits for the old primary to be synchronous again).
        c.wait_dns(to).await.expect("dns");
        let done = t0.elapsed();
        dones.push(done);
        reported.push(Duration::from_millis(record.write_gap_ms.unwrap_or(0)));
        windows.push((t0, t0 + done));
        holder = to.to_string();
        healthy(&c, &holder).await;
        let acked = writer.acked_count();
        writer.wait_acked(acked + 20, Duration::from_secs(20)).await.expect("writes after switchover");
    }

    let report = writer.stop().await;
    let acked_at: Vec<Instant> = report.acked_at.iter().map(|(_, t)| *t).collect();
    for (from, to) in &windows {
        gaps.push(gap_within(&acked_at, *from, *to));
    }
    println!("\n| measure (median of {RUNS}, loopback, 2 cores, release build) | value | target |");
    println!("| --- | --- | --- |");
    println!("| planned switchover: client write gap | {:?} | ≤ 0.5 s |", median(gaps.clone()));
    println!("| planned switchover: write gap as recorded by the daemon | {:?} | |", median(reported));
    println!(
        "| planned switchover: request → done (DNS flipped, old primary streaming) | {:?} | ≤ 5 s |",
        median(dones)
    );
    for (profile, rows) in [("test timings: lease 2 s, heartbeat 100 ms", &test_idle), ("default timings", &wan_idle)] {
        for (region, rss, cpu) in &rows.daemons {
            println!(
                "| daemon {region}: RSS / idle CPU ({profile}) | {rss:.1} MiB / {cpu:.2} % of a core | ≤ 25 MiB / ≤ 1 % |"
            );
        }
        for (region, cpu) in &rows.servers {
            println!(
                "| PostgreSQL {region}: CPU under the writer, server + backends ({profile}) | {cpu:.2} % of a core | |"
            );
        }
    }
    println!("\nall switchover gaps {gaps:?}");
    println!("acked {}, unknown {}", report.acked.len(), report.unknown.len());
}
