//! Audit append latency and throughput on this machine's disk (each append is fsynced; waiting
//! appends share one fsync). Prints a table; run with `cargo bench -p continuum --bench audit_append`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use continuum::audit::{Audit, AuditEntry};
use continuum::config::AuditConfig;
use continuum::metrics::Metrics;

const APPENDS_PER_TASK: usize = 200;

async fn measure(concurrency: usize) -> (Duration, Duration, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (audit, tasks) = Audit::open(&AuditConfig::local(dir.path().join("audit.log")), "bench", Metrics::new())
        .expect("open audit log");
    let audit = Arc::new(audit);
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..concurrency {
        let audit = audit.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(APPENDS_PER_TASK);
            for n in 0..APPENDS_PER_TASK {
                let entry = AuditEntry::new("bench.append", serde_json::json!({ "task": task, "n": n }));
                let t = Instant::now();
                audit.append(entry).await.expect("append");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("bench task"));
    }
    let elapsed = started.elapsed();
    drop(audit);
    tasks.shutdown().await;
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    (p50, p99, latencies.len() as f64 / elapsed.as_secs_f64())
}

#[tokio::main]
async fn main() {
    println!("{:>11} {:>10} {:>10} {:>12}", "concurrency", "p50", "p99", "appends/s");
    for concurrency in [1, 4, 16] {
        let (p50, p99, rate) = measure(concurrency).await;
        println!("{concurrency:>11} {:>10.2?} {:>10.2?} {rate:>12.0}", p50, p99);
    }
}
