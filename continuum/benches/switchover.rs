//! End-to-end timings on loopback with real processes (the e2e harness): planned switchover
//! client write gap and request → done, failover kill → writes resume, daemon RSS and idle CPU.
//! Prints a table of medians; run with `cargo bench -p continuum --bench switchover`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use continuum::api::PgRole;
use testkit::writer::Writer;

const RUNS: usize = 5;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Longest time without an acknowledged commit inside `[from, to]`.
fn gap_within(acked_at: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> = acked_at.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    times.sort();
    let mut last = from;
    let mut worst = Duration::ZERO;
    for t in times {
        worst = worst.max(t - last);
        last = t;
    }
    worst.max(to.saturating_duration_since(last))
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss_kib, ticks)
}

async fn healthy(c: &Cluster, holder: &str) {
    c.wait_pair_on(&[holder], "pair healthy", Duration::from_secs(60), |p| {
        p.holder.as_deref() == Some(holder)
            && p.sync_standby.is_some()
            && p.regions
                .iter()
                .any(|r| r.region != holder && r.role == PgRole::Standby && r.sync_state.as_deref() == Some("sync"))
    })
    .await
    .expect("pair healthy");
}

#[tokio::main]
async fn main() {
    let mut c = Cluster::start(Options { failover_debounce: "1s", ..Options::default() }).await.expect("cluster");
    let mut writer = Writer::start(&c.conninfo(), "bench").await.expect("writer");
    writer.wait_acked(50, Duration::from_secs(20)).await.expect("writes");

    // Idle daemons: RSS and CPU over 10 s.
    let pids: Vec<(String, u32)> = c.daemons.iter().filter_map(|(r, d)| d.pid().map(|p| (r.clone(), p))).collect();
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_stat(*p)).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_stat(*p)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;

    let mut holder = "a".to_string();
    let (mut gaps, mut dones, mut reported) = (Vec::new(), Vec::new(), Vec::new());
    let mut windows = Vec::new();
    for _ in 0..RUNS {
        let to = if holder == "a" { "b" } else { "a" };
        let api = c.daemons[&holder].api.clone();
        let t0 = Instant::now();
        let response = c
            .http
            .post(format!("{api}/v1/switchover"))
            .bearer_auth(common::OWNER)
            .json(&serde_json::json!({ "to": to, "reason": "bench" }))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 202);
        let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        let record: continuum::api::SwitchoverRecord =
            testkit::wait_for("switchover done", Duration::from_secs(60), || {
                let request = c.http.get(format!("{api}/v1/switchovers/{id}")).bearer_auth(common::VIEWER).send();
                async move {
                    let record: continuum::api::SwitchoverRecord = request.await?.json().await?;
                    Ok(record.state.is_finished().then_some(record))
                }
            })
            .await
            .expect("finished");
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

    let mut kills = Vec::new();
    for _ in 0..RUNS {
        let victim = holder.clone();
        let survivor = if victim == "a" { "b" } else { "a" };
        let killed = Instant::now();
        c.daemon(&victim).kill9();
        c.node(&victim).kill9().expect("kill postmaster");
        // Backends of a killed postmaster may still answer for a moment: wait for the takeover
        // itself, then for writes on the survivor.
        c.wait_pair_on(&[survivor], "survivor holds the lease", Duration::from_secs(30), |p| {
            p.holder.as_deref() == Some(survivor)
        })
        .await
        .expect("takeover");
        let acked = writer.acked_count();
        writer.wait_acked(acked + 5, Duration::from_secs(30)).await.expect("writes resume");
        kills.push((killed, Instant::now()));
        c.daemon(&victim).start().expect("restart");
        holder = survivor.to_string();
        healthy(&c, &holder).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = writer.stop().await;
    let acked_at: Vec<Instant> = report.acked_at.iter().map(|(_, t)| *t).collect();
    for (from, to) in &windows {
        gaps.push(gap_within(&acked_at, *from, *to));
    }
    // Writes resumed at the end of the longest gap that follows the kill.
    let resumes: Vec<Duration> = kills
        .iter()
        .map(|(k, resumed_by)| {
            let mut times: Vec<Instant> = acked_at.iter().copied().filter(|t| *t >= *k && *t <= *resumed_by).collect();
            times.sort();
            let (mut last, mut end, mut worst) = (*k, *k, Duration::ZERO);
            for t in times {
                if t - last > worst {
                    worst = t - last;
                    end = t;
                }
                last = t;
            }
            end - *k
        })
        .collect();

    println!("\n| measure (median of {RUNS}, loopback, 2 cores, release build) | value | target |");
    println!("| --- | --- | --- |");
    println!("| planned switchover: client write gap | {:?} | ≤ 0.5 s |", median(gaps.clone()));
    println!("| planned switchover: write gap as recorded by the daemon | {:?} | |", median(reported));
    println!(
        "| planned switchover: request → done (DNS flipped, old primary streaming) | {:?} | ≤ 5 s |",
        median(dones)
    );
    println!(
        "| failover: kill -9 → writes resume (lease 2 s, grant margin 0.3 s) | {:?} | ≤ lease + 2 s |",
        median(resumes.clone())
    );
    for (i, (region, _)) in pids.iter().enumerate() {
        let cpu = (after[i].1.saturating_sub(before[i].1)) as f64 / hz / 10.0 * 100.0;
        println!(
            "| daemon {region}: RSS / idle CPU | {:.1} MiB / {:.2} % of a core | ≤ 25 MiB / ≤ 1 % |",
            after[i].0 as f64 / 1024.0,
            cpu
        );
    }
    println!("\nall switchover gaps {gaps:?}\nall failover resumes {resumes:?}");
    println!("acked {}, unknown {}", report.acked.len(), report.unknown.len());
}
