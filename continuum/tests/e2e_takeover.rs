//! End to end: how fast the standby's region takes over from a holder that is killed (`kill -9`
//! of daemon and postmaster) or frozen (SIGSTOP of daemon, fence watchdog, postmaster and
//! backends; SIGCONT later), with `takeover = "lease-expiry"`. A frozen holder must cost no
//! more than a killed one, and after the thaw it must fence, acknowledge nothing more and
//! rejoin. Prints the times (kill/freeze → b primary, → writes resume).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use common::freeze::Frozen;
use testkit::writer::Writer;

/// Test timings: lease 2 s, grant margin 0.3 s; the rest is loop cadence and promotion. When
/// the frozen holder's node is also the raft leader, b's lease reads wait for a new leader
/// first (measured 5.3 s in all; issue #13 keeps this open), and a loaded CI machine adds
/// about a second to a killed holder's takeover (measured 4.0 s): the bound leaves room for
/// both and still fails one that hangs. Printed times are the figures to watch.
const TAKEOVER_BOUND: Duration = Duration::from_millis(2300 + 4000);
const ABANDON: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_taken_over_as_fast_as_a_killed_one_and_fences_after_the_thaw() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start_abandoning(&c.conninfo(), "probe", Some(ABANDON)).await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();

    let daemon = c.daemons["a"].pid().unwrap();
    let postmaster = c.node("a").postmaster_pid().unwrap() as u32;
    let acked = writer.acked_count();
    let frozen_at = Instant::now();
    let frozen = Frozen::roots(&[daemon, postmaster]);
    c.wait_pair_on(&["b"], "b is primary with a newer epoch", Duration::from_secs(15), |p| {
        serves(p, "b", before.epoch)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let took_over = frozen_at.elapsed();
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let resumed = frozen_at.elapsed();
    println!("freeze -> b primary {took_over:?}, freeze -> writes resume {resumed:?}");
    assert!(took_over < TAKEOVER_BOUND, "takeover of a frozen holder took {took_over:?}");

    let thawed_at = Instant::now();
    frozen.thaw();
    // a's server is stopped by its own daemon (or its fence watchdog), then rejoins b.
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a must be a standby");
    println!("thaw -> a rejoined {:?}", thawed_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_within_the_lease_and_promotion_has_no_slow_tail() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start_abandoning(&c.conninfo(), "probe", Some(ABANDON)).await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();

    let acked = writer.acked_count();
    let killed_at = Instant::now();
    c.daemon("a").kill9();
    c.node("a").kill9().unwrap();
    c.wait_pair_on(&["b"], "b is primary with a newer epoch", Duration::from_secs(15), |p| {
        serves(p, "b", before.epoch)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let took_over = killed_at.elapsed();
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let resumed = killed_at.elapsed();
    println!("kill -> b primary {took_over:?}, kill -> writes resume {resumed:?}");
    assert!(took_over < TAKEOVER_BOUND, "takeover of a killed holder took {took_over:?}");
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}
