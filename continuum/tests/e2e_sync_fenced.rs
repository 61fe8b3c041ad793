//! End to end, `takeover = "sync-fenced"`: b claims the lease from a killed or frozen holder
//! before a's lease could expire, loses no acknowledged commit, and after a thaw a fences,
//! acknowledges nothing b does not have, and rejoins. Prints the times.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use common::freeze::Frozen;
use testkit::writer::Writer;

/// Lease expiry needs 2 s + 0.3 s margin after a's last renewal: a takeover faster than this
/// was a claim.
const LEASE_EXPIRY: Duration = Duration::from_millis(2300);

fn sync_fenced() -> Options {
    Options { takeover: "sync-fenced", ..Options::default() }
}

/// Waits until b serves by a claim (by any takeover unless `claim_expected`); with `bound`,
/// asserts it came within it.
async fn assert_claimed(
    c: &Cluster,
    before: u64,
    started: Instant,
    what: &str,
    bound: Option<Duration>,
    claim_expected: bool,
) -> Duration {
    let status = c
        .wait_pair_on(&["b"], "b is primary with a newer epoch", Duration::from_secs(15), |p| serves(p, "b", before))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let took = started.elapsed();
    println!("{what} -> b primary {took:?} (sync-fenced)");
    let last = status.last_switchover.expect("the failover is in the history");
    assert!(!claim_expected || last.reason.contains("sync-fenced claim"), "{last:?}");
    if let Some(bound) = bound {
        assert!(took < bound, "{what}: takeover took {took:?}, no faster than lease expiry");
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_holder_is_claimed_before_its_lease_could_expire() {
    let mut c = Cluster::start(sync_fenced()).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start_abandoning(&c.conninfo(), "probe", Some(Duration::from_millis(500))).await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();
    let acked = writer.acked_count();
    let killed_at = Instant::now();
    c.daemon("a").kill9();
    c.node("a").kill9().unwrap();
    assert_claimed(&c, before.epoch, killed_at, "kill", Some(LEASE_EXPIRY), true).await;
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    println!("kill -> writes resume {:?}", killed_at.elapsed());
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_claimed_and_after_the_thaw_fences_having_acknowledged_nothing_more() {
    let c = Cluster::start(sync_fenced()).await.unwrap();
    let before = c.status("b").await.unwrap();
    let mut writer = Writer::start_abandoning(&c.conninfo(), "probe", Some(Duration::from_millis(500))).await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();
    let daemon = c.daemons["a"].pid().unwrap();
    let postmaster = c.node("a").postmaster_pid().unwrap() as u32;
    let acked = writer.acked_count();
    let frozen_at = Instant::now();
    // When a's node leads raft, b's lease reads wait for a new leader after the freeze, and the
    // lease may expire first (issue #13 keeps this open; measured 3.1-4.1 s): then any takeover
    // is accepted, and everything below — a fences, nothing acknowledged is lost — still holds.
    // Node 1 is a.
    let a_leads = c.witness_status().await.unwrap().leader == Some(1);
    let frozen = Frozen::roots(&[daemon, postmaster]);
    assert_claimed(&c, before.epoch, frozen_at, "freeze", None, !a_leads).await;
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    println!("freeze -> writes resume {:?}", frozen_at.elapsed());

    frozen.thaw();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let report = writer.stop().await;
    // Every acknowledged commit is on b: a acknowledged nothing after b's claim that b lacks.
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits missing on b (acknowledged by a after the claim?): {lost:?}");
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a must be a standby");
}
