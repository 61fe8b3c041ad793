//! End to end: region `a`'s PostgreSQL crashes and cannot start again (its data directory is
//! broken) while `a`'s daemon keeps running. The daemon must not sit on the lease: after
//! `primary_down_timeout` it makes sure the server stays down and lets the lease run out, `b`
//! fails over with a higher epoch, and no acknowledged commit is lost. Once the data directory
//! is repaired, `a` rejoins as `b`'s synchronous standby by itself.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use testkit::writer::Writer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_server_stays_down_lets_the_standby_take_over() {
    let mut c = Cluster::start(Options { primary_down_timeout: "3s", ..Options::default() }).await.unwrap();
    let before = c.status("a").await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();

    // Break a's data directory so no restart can succeed, then crash the server.
    let a = c.node("a").clone();
    let version = a.data_dir.join("PG_VERSION");
    let hidden = a.data_dir.join("PG_VERSION.hidden-by-test");
    std::fs::rename(&version, &hidden).unwrap();
    let crashed = Instant::now();
    a.kill9().unwrap();

    let taken = c
        .wait_pair_on(&["b"], "b holds the lease and is primary", Duration::from_secs(60), |p| {
            serves(p, "b", before.epoch)
        })
        .await
        .unwrap();
    let takeover_after = crashed.elapsed();
    let acked = writer.acked_count();
    writer.wait_acked(acked + 20, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(c.daemon("a").pid().is_some(), "a's daemon stayed up");
    assert!(!a.is_running(), "a's server must stay down once b serves");
    let audit = std::fs::read_to_string(c.dir().join("audit-a.log")).unwrap();
    assert!(audit.contains("lease.given_up"), "a's audit log records why it gave up the lease:\n{audit}");

    // Repaired: a comes back as b's synchronous standby on its own.
    std::fs::rename(&hidden, &version).unwrap();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(90), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap();

    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    println!(
        "b took over {takeover_after:?} after a's server crashed for good (epoch {} -> {}); {} acked, {} unknown",
        before.epoch,
        taken.epoch,
        report.acked.len(),
        report.unknown.len()
    );
}
