//! End to end on separate hosts: every region (its PostgreSQL and daemon) and the witness run in
//! their own network namespace, joined by veth pairs to a bridge. Region `a` holds the lease; an
//! application in `a` writes to its local database while a global application writes through
//! the multi-host connection string. Then `a` is cut off (iptables DROP in its namespace):
//! - `a` fences itself before its lease deadline (invariant 3),
//! - `b` is promoted only after that, with a higher epoch, and DNS answers `b`,
//! - `a` acknowledges nothing after its deadline (so nothing after `b`'s epoch starts), and no
//!   acknowledged commit of either application is lost,
//! - after the heal `a` rejoins by itself as `b`'s synchronous standby, holding no row `b`
//!   lacks.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use testkit::writer::{Writer, WriterReport};
use tokio::sync::oneshot;

/// Lease duration in the harness' short timings.
const LEASE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_fences_before_b_takes_over_and_rejoins_after_heal() {
    let c = Cluster::start(Options { namespaces: true, ..Options::default() }).await.unwrap();
    let network = c.network.as_ref().expect("namespaces");
    let before = c.status("a").await.unwrap();
    assert_eq!(before.holder.as_deref(), Some("a"));

    // The global application follows the writable node; region a's application talks to a only.
    // It gives up on a commit after 3 s, or it would wait on a's vanished host for minutes.
    let mut global = Writer::start_abandoning(&c.conninfo(), "probe", Some(Duration::from_secs(3))).await.unwrap();
    let local_conninfo = format!("{} connect_timeout=2", c.node("a").conninfo());
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let local = network.host("a").netns.spawn(move || async move {
        let mut writer = Writer::start(&local_conninfo, "probe_local").await?;
        writer.wait_acked(30, Duration::from_secs(20)).await?;
        let _ = ready_tx.send(());
        let _ = stop_rx.await;
        Ok(writer.stop().await)
    });
    global.wait_acked(30, Duration::from_secs(20)).await.unwrap();
    ready_rx.await.expect("region a's writer acknowledged its first commits");

    let cut = Instant::now();
    network.isolate("a").unwrap();

    // a stops taking writes before its lease deadline. Its server is reachable over the Unix
    // socket whatever the network does.
    c.wait_stops_taking_writes("a", Duration::from_secs(4)).await.unwrap();
    let fenced_after = cut.elapsed();
    let fenced_wall = SystemTime::now();
    assert!(fenced_after < LEASE + Duration::from_millis(500), "a fenced only {fenced_after:?} after the cut");

    // b takes over with a higher epoch, and the global application writes there.
    let taken = c
        .wait_pair_on(&["b"], "b holds the lease and is primary", Duration::from_secs(30), |p| {
            serves(p, "b", before.epoch)
        })
        .await
        .unwrap();
    let takeover_after = cut.elapsed();
    c.wait_dns("b").await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let acked = global.acked_count();
    global.wait_acked(acked + 20, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // b was promoted after a had fenced (both times from this machine's clock).
    let b_client = c.node("b").connect().await.unwrap();
    let promoted_at: f64 = b_client
        .query_one(
            "SELECT extract(epoch FROM promoted_at)::float8 FROM continuum.fencing WHERE epoch = $1",
            &[&(taken.epoch as i64)],
        )
        .await
        .unwrap()
        .get(0);
    let fenced_at = fenced_wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(promoted_at > fenced_at, "b promoted at {promoted_at} before a was seen fenced at {fenced_at}");

    // Heal: a rejoins by itself as b's synchronous standby.
    let healed = Instant::now();
    network.heal("a").unwrap();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(90), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap();
    let rejoined_after = healed.elapsed();

    let _ = stop_tx.send(());
    let local: WriterReport = local.join().expect("writer thread").unwrap();
    let global = global.stop().await;

    let late: Vec<i64> = local.acked_at.iter().filter(|(_, t)| *t > cut + LEASE).map(|(id, _)| *id).collect();
    assert!(late.is_empty(), "a acknowledged commits after its lease deadline while cut off: {late:?}");

    for (table, report) in [("probe", &global), ("probe_local", &local)] {
        let on_b = Cluster::ids_on(c.node("b"), table).await.unwrap();
        let lost: Vec<i64> = report.acked.iter().copied().filter(|id| !on_b.contains(id)).collect();
        assert!(lost.is_empty(), "{table}: acknowledged commits lost: {lost:?}");
        // a's data after the heal: nothing that b does not have (its divergent tail is gone).
        let client = c.node("a").connect_local().await.unwrap();
        let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await.unwrap();
        let extra: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).filter(|id| !on_b.contains(id)).collect();
        assert!(extra.is_empty(), "{table}: rows on a that b never had: {extra:?}");
    }
    println!(
        "a fenced {fenced_after:?} after the cut, b took over after {takeover_after:?} (epoch {} -> {}), \
         a rejoined {rejoined_after:?} after the heal; acked: global {}, local {} ({} unknown)",
        before.epoch,
        taken.epoch,
        global.acked.len(),
        local.acked.len(),
        local.unknown.len()
    );
}
