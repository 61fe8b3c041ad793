#![allow(dead_code)] // each bench uses a part of this
//! What the end-to-end benches share: medians, write gaps from a writer's acknowledgements,
//! and a cluster's idle cost (RSS and CPU from `/proc`).

use std::time::{Duration, Instant};

use continuum::api::PgRole;

use crate::common::cluster::Cluster;

/// How long [`idle`] measures.
pub const IDLE: Duration = Duration::from_secs(10);

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Longest time without an acknowledged commit inside `[from, to]`.
pub fn gap_within(acked_at: &[Instant], from: Instant, to: Instant) -> Duration {
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

pub async fn healthy(c: &Cluster, holder: &str) {
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

pub struct Idle {
    /// Per daemon: region, RSS MiB, CPU % of a core.
    pub daemons: Vec<(String, f64, f64)>,
    /// Per PostgreSQL server: region, CPU % of a core (server and backends, the writer's too).
    pub servers: Vec<(String, f64)>,
}

/// RSS and CPU over `IDLE` with only the writer running.
pub async fn idle(c: &Cluster) -> Idle {
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
