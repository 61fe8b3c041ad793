//! End-to-end timings on loopback with real processes (the e2e harness): planned switchover
//! client write gap and request → done, failover kill → writes resume, daemon RSS and idle CPU
//! (at the short test timings and, on a cluster of its own, at the daemon's default timings).
//! Prints a table of medians; run with `cargo bench -p continuum --bench switchover`.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use continuum::api::PgRole;
use testkit::writer::Writer;

const RUNS: usize = 5;
const IDLE: Duration = Duration::from_secs(10);

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

/// `/proc/PID/stat` fields after the command name: state is 0, ppid 1, utime 11, stime 12,
/// cutime 13, cstime 14.
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return Vec::new() };
    rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

fn field(fields: &[u64], i: usize) -> u64 {
    fields.get(i).copied().unwrap_or(0)
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fields = stat_fields(pid);
    (rss_kib, field(&fields, 11) + field(&fields, 12))
}

/// CPU ticks of a PostgreSQL server so far: the postmaster, the children it reaped (backends
/// that ended, e.g. one per observer connection) and its live children.
fn server_ticks(postmaster: u32) -> u64 {
    let own = stat_fields(postmaster);
    let live: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .map(stat_fields)
        .filter(|f| field(f, 1) == u64::from(postmaster))
        .map(|f| field(&f, 11) + field(&f, 12))
        .sum();
    (11..=14).map(|i| field(&own, i)).sum::<u64>() + live
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

struct Idle {
    /// Per daemon: region, RSS MiB, CPU % of a core.
    daemons: Vec<(String, f64, f64)>,
    /// Per PostgreSQL server: region, CPU % of a core (server and backends, the writer's too).
    servers: Vec<(String, f64)>,
}

/// RSS and CPU over `IDLE` with only the writer running.
async fn idle(c: &Cluster) -> Idle {
    let pids: Vec<(String, u32)> = c.daemons.iter().filter_map(|(r, d)| d.pid().map(|p| (r.clone(), p))).collect();
    let postmasters: Vec<(String, u32)> = ["a", "b"]
        .iter()
        .filter_map(|r| Some((r.to_string(), u32::try_from(c.node(r).postmaster_pid()?).ok()?)))
        .collect();
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_stat(*p)).collect();
    let servers_before: Vec<u64> = postmasters.iter().map(|(_, p)| server_ticks(*p)).collect();
    tokio::time::sleep(IDLE).await;
    let after: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_stat(*p)).collect();
    let servers_after: Vec<u64> = postmasters.iter().map(|(_, p)| server_ticks(*p)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let percent = |ticks: u64| ticks as f64 / hz / IDLE.as_secs_f64() * 100.0;
    Idle {
        daemons: pids
            .iter()
            .enumerate()
            .map(|(i, (region, _))| {
                (region.clone(), after[i].0 as f64 / 1024.0, percent(after[i].1.saturating_sub(before[i].1)))
            })
            .collect(),
        servers: postmasters
            .iter()
            .enumerate()
            .map(|(i, (region, _))| (region.clone(), percent(servers_after[i].saturating_sub(servers_before[i]))))
            .collect(),
    }
}

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

    let mut c = Cluster::start(Options { failover_debounce: "1s", ..Options::default() }).await.expect("cluster");
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
    println!("\nall switchover gaps {gaps:?}\nall failover resumes {resumes:?}");
    println!("acked {}, unknown {}", report.acked.len(), report.unknown.len());
}
