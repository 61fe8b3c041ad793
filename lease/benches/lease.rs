//! `cargo bench -p lease`: renew latency, holder death → new grant, witness RSS.
//! Prints a table; numbers are for loopback on the machine it runs on.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ClusterOpts, TestCa, fast_rules};
use lease::{GrantRules, LeaseApi, LeaseError, RaftTimings};

const PAIR: &str = "bench";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn opts() -> ClusterOpts {
    ClusterOpts { pairs: vec![PAIR.into()], ..Default::default() }
}

/// Makes node `id` the raft leader.
async fn make_leader(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    while cluster.leader().await? != id {
        cluster.node(id).raft().trigger().elect().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Region a renews through its own node (node 1), once while that node leads and once while
/// node 2 leads (node 1 forwards).
async fn renew_latency(rows: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let cluster = Cluster::start(opts()).await?;
    cluster.leader().await?;
    let api = cluster.api(1);
    let held = api.acquire(PAIR, "a", Duration::from_secs(10)).await?;
    for (label, leader) in [("raft leader", 1), ("follower (forwarded)", 2)] {
        make_leader(&cluster, leader).await?;
        let mut samples = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            api.renew(PAIR, "a", held.epoch).await?;
            samples.push(t.elapsed());
        }
        samples.sort();
        rows.push((
            format!("renew latency via {label}, 3 nodes, n=300"),
            format!("p50 {:.2} ms, p99 {:.2} ms", ms(percentile(&samples, 0.5)), ms(percentile(&samples, 0.99))),
        ));
    }
    cluster.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The holder region's daemon and lease node die (the node stops, no more renewals); the other
/// data region polls acquire every 20 ms. Measured from the send time of the holder's last
/// successful renewal to the other region's grant. `holder_leads`: the dying node is the raft
/// leader, so a re-election happens inside the measured window.
async fn takeover(
    rows: &mut Vec<(String, String)>,
    name: &str,
    raft: RaftTimings,
    rules: GrantRules,
    duration: Duration,
    holder_leads: bool,
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts { raft, rules: rules.clone(), ..opts() }).await?;
    let mut leader = cluster.leader().await?;
    while leader == 3 {
        // The witness leads: hand leadership to a data node so both cases can be measured.
        cluster.node(1).raft().trigger().elect().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        leader = cluster.leader().await?;
    }
    let other = if leader == 1 { 2 } else { 1 };
    let (holder, taker) = if holder_leads { (leader, other) } else { (other, leader) };
    let (holder_region, taker_region) = (common::region(holder), common::region(taker));
    let api = cluster.api(holder);
    let held = api.acquire(PAIR, holder_region, duration).await?;
    // Steady state: the holder renews for a while so every node has watched it.
    let steady = Instant::now();
    while steady.elapsed() < duration + rules.grant_margin {
        api.renew(PAIR, holder_region, held.epoch).await?;
        tokio::time::sleep(duration / 5).await;
    }
    let t_last = Instant::now();
    api.renew(PAIR, holder_region, held.epoch).await?;
    cluster.stop(holder).await;
    let taker_api = cluster.api(taker);
    loop {
        match taker_api.acquire(PAIR, taker_region, duration).await {
            Ok(_) => break,
            Err(LeaseError::Refused { .. } | LeaseError::Unknown { .. } | LeaseError::NoLeader) => {}
            Err(e) => anyhow::bail!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let role = if holder_leads { "holder's node was raft leader" } else { "holder's node was a follower" };
    rows.push((
        format!("holder death → new grant, {name}, {role}"),
        format!("{:.2} s (duration {duration:?} + margin {:?})", t_last.elapsed().as_secs_f64(), rules.grant_margin),
    ));
    cluster.shutdown().await;
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Witness as a real `lease-node` process in a 3-node cluster, after 10 s of renewals every 200 ms.
async fn witness_rss(rows: &mut Vec<(String, String)>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new(dir.path(), "cluster")?;
    let opts = opts();
    let listen = common::listen_addrs(&[1, 2, 3]);
    let configs = common::make_configs(dir.path(), &ca, &opts, &listen, |_| BTreeMap::new())?;
    let witness = common::NodeProcess::spawn(&configs[&3], dir.path())?;
    let n1 = lease::LeaseNode::start(configs[&1].clone()).await?;
    let n2 = lease::LeaseNode::start(configs[&2].clone()).await?;
    let api: Arc<dyn LeaseApi> = Arc::new(n1.clone());
    let held = testkit::wait_for("first grant", Duration::from_secs(20), || async {
        Ok(api.acquire(PAIR, "a", Duration::from_secs(10)).await.ok())
    })
    .await?;
    let idle = rss_kib(witness.child.id())?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        api.renew(PAIR, "a", held.epoch).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy = rss_kib(witness.child.id())?;
    rows.push(("witness RSS (lease-node process), after start".into(), format!("{:.1} MiB", idle as f64 / 1024.0)));
    rows.push(("witness RSS after 10 s of renewals every 200 ms".into(), format!("{:.1} MiB", busy as f64 / 1024.0)));
    n1.shutdown().await;
    n2.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // openraft logs every failed heartbeat to the dead node at ERROR; the table is what matters.
    let _ = tracing_subscriber::fmt().with_env_filter("warn,openraft=off").try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut rows = Vec::new();
        renew_latency(&mut rows).await?;
        for holder_leads in [false, true] {
            let fast = Duration::from_secs(2);
            takeover(&mut rows, "fast profile", RaftTimings::fast(), fast_rules(), fast, holder_leads).await?;
        }
        for holder_leads in [false, true] {
            let (raft, rules, d) = (RaftTimings::wan(), GrantRules::default(), Duration::from_secs(10));
            takeover(&mut rows, "default profile", raft, rules, d, holder_leads).await?;
        }
        witness_rss(&mut rows).await?;
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        println!("\n{:<width$} | result", "lease benchmark");
        println!("{}-|-{}", "-".repeat(width), "-".repeat(28));
        for (k, v) in rows {
            println!("{k:<width$} | {v}");
        }
        Ok(())
    })
}
