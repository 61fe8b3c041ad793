//! End to end: a slow inter-region link must not cause a failover. Every connection between
//! regions (raft among `a`, `b` and the witness, PostgreSQL replication between `a` and `b`) gets
//! 200 ms of added round-trip latency (100 ms each way, as `netem delay 200ms` on one end of a
//! link) for a minute, with the daemons at their default timings and a writer running. The link
//! first drops for 300 ms (every connection reset), so all connections are re-established over
//! the slow link: TCP + TLS + the first request take longer than openraft's RPC deadline (the
//! heartbeat interval, 500 ms), which is what the lease network's background reconnect is for. The holder keeps the lease the whole
//! time: same holder, same epoch, lease held, no switchover, and writes keep being acknowledged.
//!
//! (`tc netem` is not available on these machines; the latency comes from the test kit's
//! userspace proxies, which delay every chunk without capping throughput.)

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, sync_standby_of};
use continuum::api::{LeaseState, PgRole};
use testkit::proxy::Mode;
use testkit::writer::Writer;

/// Added to the round trip; half of it in each direction.
const ADDED_RTT: Duration = Duration::from_millis(200);
const HOLD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_keeps_the_lease_over_a_slow_link() {
    // The shipped defaults: default timings and sync-fenced takeover (a slow link must not look
    // like a silent holder with its WAL stream gone).
    let options = Options { link_proxies: true, default_timings: true, takeover: "sync-fenced", ..Options::default() };
    let c = Cluster::start(options).await.unwrap();
    let before = c.status("a").await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    // A fault of fixed length, not a wait for a condition.
    c.set_links(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.set_links(Mode::Delay(ADDED_RTT / 2));
    let slow_since = Instant::now();
    let acked_before = writer.acked_count();
    let mut samples = 0;
    // Sampled for the whole minute: the claim is about every moment, not the end state.
    while slow_since.elapsed() < HOLD {
        for region in ["a", "b"] {
            let p = c.status(region).await.unwrap_or_else(|e| panic!("{region} status: {e:#}\n{}", c.logs()));
            let a_primary = p.regions.iter().any(|r| r.region == "a" && r.role == PgRole::Primary);
            let violation = if p.holder.as_deref() != Some("a") || p.epoch != before.epoch {
                Some(format!("holder {:?} epoch {} (was a, {})", p.holder, p.epoch, before.epoch))
            } else if p.in_flight.is_some() || p.last_switchover.is_some() {
                Some(format!("a switchover started: {:?}", p.last_switchover))
            } else if region == "a" && (p.lease.state != LeaseState::Held || !a_primary) {
                Some(format!("lease {:?}, a primary: {a_primary}", p.lease))
            } else {
                None
            };
            if let Some(violation) = violation {
                panic!("{region} after {:?} of added latency: {violation}\n{}", slow_since.elapsed(), c.logs());
            }
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acked_slow = writer.acked_count() - acked_before;

    c.set_links(Mode::Pass);
    // Durability did not quietly stay degraded: b is the synchronous standby again.
    c.wait_pair_on(&["a"], "b streams as a's sync standby", Duration::from_secs(30), |p| sync_standby_of(p, "a", "b"))
        .await
        .unwrap();
    let report = writer.stop().await;
    assert!(acked_slow >= 20, "writes stalled on the slow link: {acked_slow} acknowledged in {HOLD:?}");
    let lost = Cluster::missing_on(c.node("a"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    println!(
        "{HOLD:?} at +{ADDED_RTT:?} round trip: {samples} samples, holder a at epoch {} throughout, \
         {acked_slow} commits acknowledged",
        before.epoch
    );
}
