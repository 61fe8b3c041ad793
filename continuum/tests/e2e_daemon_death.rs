//! End to end: the lease holder's daemon dies (`kill -9`) or stops (SIGTERM) while its
//! PostgreSQL keeps running. The server never outlives the daemon's right to write: killed, the
//! fence watchdog stops it by the lease deadline, before the standby's region may promote;
//! stopped, the daemon hands the lease over (`on_shutdown = "switchover"`) or fences
//! (`"fence"`). A writer listing region a first resumes on b without losing an acknowledged
//! commit, and a's restarted daemon rejoins as b's synchronous standby.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, Writable, serves, sync_standby_of, writable};
use continuum::api::{SwitchoverKind, SwitchoverState};
use testkit::writer::{Writer, WriterHandle, WriterReport};

/// The test timings' lease duration.
const LEASE: Duration = Duration::from_secs(2);

/// When a's server was first seen refusing connections and b's first accepting writes, sampled
/// every 10 ms from `since` until b accepts writes.
async fn refused_then_promoted(c: &Cluster, since: Instant) -> (Option<Instant>, Instant) {
    let (a, b) = (c.node("a").conninfo(), c.node("b").conninfo());
    let mut a_refused = None;
    loop {
        let (wa, wb) = tokio::join!(writable(a.clone()), writable(b.clone()));
        let now = Instant::now();
        if wa == Writable::No && a_refused.is_none() {
            a_refused = Some(now);
        }
        if wb == Writable::Yes {
            return (a_refused, now);
        }
        assert!(since.elapsed() < Duration::from_secs(30), "b never accepted writes\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first acknowledged commit at or after `after`.
fn first_ack_after(report: &WriterReport, after: Instant) -> Option<Instant> {
    report.acked_at.iter().map(|(_, t)| *t).find(|t| *t >= after)
}

/// Stops the writer once it committed 10 more, and checks every acknowledged commit is on b.
async fn writes_resumed_on_b(c: &Cluster, mut writer: WriterHandle) -> WriterReport {
    let acked = writer.acked_count();
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    report
}

/// a's daemon starts again and rejoins as b's synchronous standby.
async fn restarted_a_rejoins_as_standby(c: &mut Cluster) {
    c.daemon("a").start().unwrap();
    c.wait_pair_on(&["b"], "a rejoined as b's sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a must be a standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_daemon_leaves_no_writable_server_behind() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    let before = c.status("b").await.unwrap();

    let killed = Instant::now();
    c.daemon("a").kill9();
    let (a_refused, b_writable) = refused_then_promoted(&c, killed).await;
    let a_refused = a_refused.unwrap_or_else(|| panic!("a's server still answered when b was promoted\n{}", c.logs()));
    assert!(a_refused < b_writable);
    c.wait_pair_on(&["b"], "b holds the lease", Duration::from_secs(10), |p| serves(p, "b", before.epoch))
        .await
        .unwrap();
    let report = writes_resumed_on_b(&c, writer).await;
    let resumed = first_ack_after(&report, b_writable).expect("an acknowledged commit on b") - killed;
    assert!(resumed <= LEASE + Duration::from_secs(2), "writes resumed {resumed:?} after the kill");
    println!(
        "kill -9 of a's daemon: a refused after {:?}, b writable after {:?}, writes resumed after {resumed:?}",
        a_refused - killed,
        b_writable - killed
    );

    restarted_a_rejoins_as_standby(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_on_shutdown_fence_stops_the_server_and_the_peer_fails_over() {
    let mut c = Cluster::start(Options { on_shutdown: "fence", ..Options::default() }).await.unwrap();
    let writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    let before = c.status("b").await.unwrap();

    let stopped = Instant::now();
    c.daemon("a").sigterm();
    let code = c.daemon("a").wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(code, Some(0), "{}", c.logs());
    assert!(c.node("a").is_in_recovery().await.is_err(), "a's server must be stopped when its daemon exits");
    let (a_refused, b_writable) = refused_then_promoted(&c, stopped).await;
    assert!(a_refused.is_some_and(|t| t < b_writable));
    c.wait_pair_on(&["b"], "b holds the lease", Duration::from_secs(10), |p| serves(p, "b", before.epoch))
        .await
        .unwrap();
    let report = writes_resumed_on_b(&c, writer).await;
    let resumed = first_ack_after(&report, b_writable).expect("an acknowledged commit on b") - stopped;
    assert!(resumed <= LEASE + Duration::from_secs(2), "writes resumed {resumed:?} after the SIGTERM");
    println!("SIGTERM (fence): writes resumed after {resumed:?}");

    restarted_a_rejoins_as_standby(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_on_shutdown_switchover_hands_the_lease_over_first() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    let before = c.status("b").await.unwrap();

    let stopped = Instant::now();
    c.daemon("a").sigterm();
    let code = c.daemon("a").wait_exit(Duration::from_secs(40)).await.unwrap();
    assert_eq!(code, Some(0), "{}", c.logs());
    let status = c
        .wait_pair_on(&["b"], "b holds the lease", Duration::from_secs(10), |p| serves(p, "b", before.epoch))
        .await
        .unwrap();
    let handover = status.last_switchover.expect("the hand-over is in b's history");
    assert_eq!((handover.kind, handover.from.as_str(), handover.to.as_str()), (SwitchoverKind::Planned, "a", "b"));
    assert_ne!(handover.state, SwitchoverState::RolledBack, "{handover:?}");
    // The old primary was handed over as a standby: running, read-only.
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a's server must be a standby after the hand-over");
    let report = writes_resumed_on_b(&c, writer).await;
    let gap = report.longest_gap_after(stopped);
    assert!(
        gap <= LEASE + Duration::from_secs(2),
        "write gap {gap:?}; writer errors {:?}\n{}",
        report.errors,
        c.logs()
    );
    println!("SIGTERM (switchover): exited after {:?}, write gap {gap:?}", stopped.elapsed());

    restarted_a_rejoins_as_standby(&mut c).await;
}
