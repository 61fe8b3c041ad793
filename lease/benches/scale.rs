//! `cargo bench -p lease --bench scale`: the lease store protecting 1, 20 and 100 pairs.
//!
//! Three processes (this binary re-run as a child per node): data regions `a` and `b`, each a
//! lease node plus what its daemon asks of it (renew the pairs it holds every renew interval,
//! read every pair once per observe interval, as the control loop does), and the witness (a
//! node alone). Real nodes over loopback mutual TLS. Each child measures itself over the same
//! wall-clock window: CPU (utime + stime from `/proc/self/stat`), RSS (`VmRSS`), renew
//! latency, reads, and raft entries appended. Prints a table.
//!
//! `LEASE_SCALE_SECS` (default 20): length of the measured window per row.
//! `LEASE_SCALE_ROWS`: comma-separated row names to run (default all: `fast-1`, `default-1`,
//! `default-20`, `default-100`).
//! `LEASE_SCALE_READS=0`: no reads (renewals and raft alone), to see what the reads cost.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ClusterOpts, TestCa};
use lease::{GrantRules, LeaseApi, LeaseNode, NodeConfig, RaftTimings};
use serde::{Deserialize, Serialize};

/// What the daemons ask of the store, as the continuum daemon derives it from its lease timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    name: String,
    pairs: usize,
    duration: Duration,
    renew: Duration,
    /// The control loop's round: `renew / 2`, clamped to 100 ms–1 s.
    observe: Duration,
    raft: RaftTimings,
    rules: GrantRules,
}

fn profiles() -> Vec<Profile> {
    // continuum's `--timings fast`: lease 3 s, renew 500 ms, grant margin 500 ms, raft heartbeat
    // 100 ms, elections 0.4–0.8 s.
    let fast = Profile {
        name: "fast".into(),
        pairs: 1,
        duration: Duration::from_secs(3),
        renew: Duration::from_millis(500),
        observe: Duration::from_millis(250),
        raft: RaftTimings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            ..RaftTimings::wan()
        },
        rules: GrantRules { grant_margin: Duration::from_millis(500), call_timeout: Duration::from_secs(1) },
    };
    // The daemon's shipped defaults: lease 10 s, renew 2 s, WAN raft timings.
    let default = |pairs| Profile {
        name: "default".into(),
        pairs,
        duration: Duration::from_secs(10),
        renew: Duration::from_secs(2),
        observe: Duration::from_secs(1),
        raft: RaftTimings::wan(),
        rules: GrantRules::default(),
    };
    vec![fast, default(1), default(20), default(100)]
}

/// One child's measurements over the window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    id: u64,
    cpu_secs: f64,
    rss_kib: u64,
    renew_ms: Vec<f64>,
    renew_failures: u64,
    reads: u64,
    read_failures: u64,
    /// Raft log entries appended on this node during the window.
    entries: u64,
    leader: Option<u64>,
}

fn pair_name(i: usize) -> String {
    format!("p{i:03}")
}

/// The region that holds pair `i`: half the pairs each, a first.
fn holder_of(i: usize) -> u64 {
    if i.is_multiple_of(2) { 1 } else { 2 }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sleep_until_unix(at: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(at.saturating_sub(unix_now()))
}

/// A child: one node and its daemon's load, measured between `start` and `end` (unix time).
async fn child(config: NodeConfig, profile: Profile, start: Duration, end: Duration) -> anyhow::Result<Report> {
    testkit::install_crypto_provider();
    let id = config.id;
    let node = LeaseNode::start(config).await?;
    let api: Arc<dyn LeaseApi> = Arc::new(node.clone());
    let region = common::region(id);
    let data = id != 3;
    // Same leader in every run (region a's node), so rows compare.
    if id == 1 {
        while node.status().leader != Some(1) {
            let _ = node.raft().trigger().elect().await;
            tokio::time::sleep(profile.raft.election_timeout_max).await;
        }
    }
    let renews = Arc::new(std::sync::Mutex::new((Vec::new(), 0u64)));
    let reads = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let in_window = move || {
        let now = unix_now();
        now >= start && now < end
    };
    let mut tasks = Vec::new();
    for i in (0..profile.pairs).filter(|_| data) {
        let pair = pair_name(i);
        if holder_of(i) == id {
            let (api, profile, renews, pair) = (api.clone(), profile.clone(), renews.clone(), pair.clone());
            tasks.push(tokio::spawn(async move {
                let held = loop {
                    match api.acquire(&pair, region, profile.duration).await {
                        Ok(rec) => break rec,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                loop {
                    tokio::time::sleep(profile.renew).await;
                    let t = Instant::now();
                    let ok = api.renew(&pair, region, held.epoch).await.is_ok();
                    if in_window() {
                        let mut r = renews.lock().expect("renews");
                        if ok { r.0.push(t.elapsed().as_secs_f64() * 1000.0) } else { r.1 += 1 }
                    }
                }
            }));
        }
        if std::env::var("LEASE_SCALE_READS").is_ok_and(|v| v == "0") {
            continue;
        }
        let (api, observe, reads) = (api.clone(), profile.observe, reads.clone());
        tasks.push(tokio::spawn(async move {
            // Pairs' control loops run independently: spread their phases over one round.
            tokio::time::sleep(observe.mul_f64(i as f64 / profile.pairs as f64)).await;
            let mut tick = tokio::time::interval(observe);
            loop {
                tick.tick().await;
                let ok = api.read(&pair).await.is_ok();
                if in_window() {
                    let mut r = reads.lock().expect("reads");
                    if ok { r.0 += 1 } else { r.1 += 1 }
                }
            }
        }));
    }
    sleep_until_unix(start).await;
    let (cpu0, log0) = (cpu_secs(), node.status().last_applied.unwrap_or(0));
    sleep_until_unix(end).await;
    let (cpu1, status) = (cpu_secs(), node.status());
    let report = {
        let (renew_ms, renew_failures) = std::mem::take(&mut *renews.lock().expect("renews"));
        let (reads, read_failures) = *reads.lock().expect("reads");
        Report {
            id,
            cpu_secs: cpu1 - cpu0,
            rss_kib: rss_kib(),
            renew_ms,
            renew_failures,
            reads,
            read_failures,
            entries: status.last_applied.unwrap_or(0).saturating_sub(log0),
            leader: status.leader,
        }
    };
    for t in tasks {
        t.abort();
    }
    Ok(report)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs one row: three children over a fresh cluster.
fn row(profile: &Profile, secs: u64) -> anyhow::Result<BTreeMap<u64, Report>> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new(dir.path(), "cluster")?;
    let pairs = (0..profile.pairs).map(pair_name).collect();
    let opts = ClusterOpts { raft: profile.raft.clone(), rules: profile.rules.clone(), pairs, ..Default::default() };
    let listen = common::listen_addrs(&[1, 2, 3]);
    let configs = common::make_configs(dir.path(), &ca, &opts, &listen, |_| BTreeMap::new())?;
    // Time to start, elect, acquire every pair and settle before the window opens.
    let start = unix_now() + Duration::from_secs(12);
    let end = start + Duration::from_secs(secs);
    let mut children = Vec::new();
    for (id, cfg) in &configs {
        let job = serde_json::json!({ "config": cfg, "profile": profile, "start": start, "end": end });
        let child = std::process::Command::new(std::env::current_exe()?)
            .env("LEASE_SCALE_CHILD", job.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        children.push((*id, child));
    }
    let mut reports = BTreeMap::new();
    for (id, mut child) in children {
        let out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let line = std::io::BufReader::new(out).lines().find_map(|l| l.ok().filter(|l| l.starts_with('{')));
        let _ = child.kill();
        let _ = child.wait();
        let report: Report = serde_json::from_str(&line.ok_or_else(|| anyhow::anyhow!("node {id} reported nothing"))?)?;
        reports.insert(id, report);
    }
    Ok(reports)
}

fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("warn,openraft=off").try_init();
    if let Ok(job) = std::env::var("LEASE_SCALE_CHILD") {
        #[derive(Deserialize)]
        struct Job {
            config: NodeConfig,
            profile: Profile,
            start: Duration,
            end: Duration,
        }
        let job: Job = serde_json::from_str(&job)?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let report = rt.block_on(child(job.config, job.profile, job.start, job.end))?;
        println!("{}", serde_json::to_string(&report)?);
        // Exit without waiting for the node: the parent kills us anyway.
        std::process::exit(0);
    }
    let secs: u64 = std::env::var("LEASE_SCALE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let only: Option<Vec<String>> =
        std::env::var("LEASE_SCALE_ROWS").ok().map(|s| s.split(',').map(String::from).collect());
    println!(
        "\n{:<12} | {:>17} | {:>17} | {:>16} | {:>9} | {:>8} | {:>7}",
        "profile", "CPU % a / b / w", "RSS MiB a / b / w", "renew p50 / p99", "renews/s", "reads/s", "raft e/s"
    );
    println!("{}", "-".repeat(105));
    for profile in profiles() {
        let name = format!("{}-{}", profile.name, profile.pairs);
        if only.as_ref().is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        let reports = row(&profile, secs)?;
        let s = secs as f64;
        let cpu = |id| reports[&id].cpu_secs / s * 100.0;
        let rss = |id| reports[&id].rss_kib as f64 / 1024.0;
        let mut renew: Vec<f64> = reports.values().flat_map(|r| r.renew_ms.iter().copied()).collect();
        renew.sort_by(f64::total_cmp);
        let failures: u64 = reports.values().map(|r| r.renew_failures + r.read_failures).sum();
        let reads: u64 = reports.values().map(|r| r.reads).sum();
        println!(
            "{:<12} | {:>5.2} {:>5.2} {:>5.2} | {:>5.1} {:>5.1} {:>5.1} | {:>6.2} {:>6.2} ms | {:>9.1} | {:>8.1} | {:>7.1}{}",
            name,
            cpu(1),
            cpu(2),
            cpu(3),
            rss(1),
            rss(2),
            rss(3),
            percentile(&renew, 0.5),
            percentile(&renew, 0.99),
            renew.len() as f64 / s,
            reads as f64 / s,
            reports[&1].entries as f64 / s,
            if failures > 0 { format!("  ({failures} failed calls)") } else { String::new() },
        );
    }
    Ok(())
}
