//! End to end: automatic failover after `kill -9` of region A's daemon and postmaster, and A
//! rejoining by itself as standby when its daemon comes back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use continuum::api::SwitchoverKind;
use testkit::writer::Writer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_region_fails_over_and_the_old_primary_rejoins_by_itself() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(50, Duration::from_secs(20)).await.unwrap();

    let acked = writer.acked_count();
    let killed_at = Instant::now();
    c.daemon("a").kill9();
    c.node("a").kill9().unwrap();

    // Lease duration 2 s + grant margin 0.3 s, plus a few seconds of headroom for a loaded CI machine
    // (the benchmark measures the real figure).
    let status = c
        .wait_pair_on(&["b"], "b is primary with a newer epoch", Duration::from_secs(15), |p| {
            serves(p, "b", before.epoch)
        })
        .await
        .unwrap();
    let took_over = killed_at.elapsed();
    assert!(took_over < Duration::from_secs(2 + 8), "takeover took {took_over:?}");
    c.wait_dns("b").await.unwrap();
    // Durability `preferred`: writes resume on b while a is down.
    writer.wait_acked(acked + 20, Duration::from_secs(20)).await.unwrap();
    let resumed = killed_at.elapsed();
    let last = status.last_switchover.expect("the failover is in the history");
    assert_eq!((last.kind, last.from.as_str(), last.to.as_str()), (SwitchoverKind::Failover, "a", "b"));
    println!(
        "kill -> b primary {took_over:?}, kill -> writes resume {resumed:?}, epoch {} -> {}",
        before.epoch, status.epoch
    );

    // a's daemon comes back alone: it must rejoin as b's standby by itself (its server was
    // killed and is down), and b records it as synchronous standby again.
    c.daemon("a").start().unwrap();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap();

    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits missing after failover: {lost:?}");
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a must be a standby");
    println!("acked {}, unknown {}", report.acked.len(), report.unknown.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durability_required_writes_block_after_failover_until_the_old_primary_rejoins() {
    let mut c = Cluster::start(Options { durability: "required", ..Options::default() }).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();

    c.daemon("a").kill9();
    c.node("a").kill9().unwrap();
    let status = c
        .wait_pair_on(&["b"], "b primary, writes blocked and saying why", Duration::from_secs(10), |p| {
            serves(p, "b", before.epoch) && p.writes_blocked.is_some()
        })
        .await
        .unwrap();
    println!("writes blocked: {}", status.writes_blocked.unwrap());
    // Nothing is acknowledged while the synchronous standby is away (give the writer time to
    // reconnect to b: its commits must wait, not succeed).
    let acked = writer.acked_count();
    let waited = writer.wait_acked(acked + 1, Duration::from_secs(3)).await;
    assert!(waited.is_err(), "a commit was acknowledged with durability required and no standby");

    // a comes back, rejoins as b's synchronous standby, and the blocked commits go through.
    c.daemon("a").start().unwrap();
    writer.wait_acked(acked + 20, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits missing: {lost:?}");
}
