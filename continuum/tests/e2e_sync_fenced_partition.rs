//! End to end on separate hosts (network namespaces), `takeover = "sync-fenced"`, partitions
//! instead of crashes (docs/takeover.md, "Cases"):
//! - a cut off from b **and** the witness: b claims, region a's own application gets no
//!   acknowledgement b lacks (a blocks on its synchronous standby, then fences), no commit of
//!   either application is lost, and a rejoins after the heal holding nothing b lacks;
//! - a cut off from b **only** (a still reaches the witness): a keeps renewing, so b never
//!   claims — a stays the one primary at the same epoch throughout — and with `preferred` a goes
//!   on without its synchronous standby; after the heal b streams as its standby again.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves, sync_standby_of};
use continuum::api::PgRole;
use testkit::writer::{Writer, WriterHandle, WriterReport};
use tokio::sync::oneshot;

fn options() -> Options {
    Options { namespaces: true, takeover: "sync-fenced", ..Options::default() }
}

/// A writer inside region a's namespace talking to a's server only, as a's local application.
struct LocalWriter {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<WriterReport>>,
}

async fn start_local_writer(c: &Cluster) -> LocalWriter {
    let network = c.network.as_ref().expect("namespaces");
    let conninfo = format!("{} connect_timeout=2", c.node("a").conninfo());
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let thread = network.host("a").netns.spawn(move || async move {
        let mut writer = Writer::start_abandoning(&conninfo, "probe_local", Some(Duration::from_secs(3))).await?;
        writer.wait_acked(20, Duration::from_secs(20)).await?;
        let _ = ready_tx.send(());
        let _ = stop_rx.await;
        Ok(writer.stop().await)
    });
    ready_rx.await.expect("region a's writer acknowledged its first commits");
    LocalWriter { stop, thread }
}

impl LocalWriter {
    fn stop(self) -> WriterReport {
        let _ = self.stop.send(());
        self.thread.join().expect("writer thread").expect("local writer")
    }
}

async fn global_writer(c: &Cluster) -> WriterHandle {
    let mut w = Writer::start_abandoning(&c.conninfo(), "probe", Some(Duration::from_secs(3))).await.unwrap();
    w.wait_acked(20, Duration::from_secs(20)).await.unwrap();
    w
}

/// Every acknowledged id of each report is on `on`, and `other` holds no row `on` lacks.
async fn nothing_lost_nothing_extra(c: &Cluster, on: &str, other: &str, reports: &[(&str, &WriterReport)]) {
    for (table, report) in reports {
        let have = Cluster::ids_on(c.node(on), table).await.unwrap();
        let lost: Vec<i64> = report.acked.iter().copied().filter(|id| !have.contains(id)).collect();
        assert!(lost.is_empty(), "{table}: acknowledged commits missing on {on}: {lost:?}");
        let client = c.node(other).connect_local().await.unwrap();
        let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await.unwrap();
        let extra: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).filter(|id| !have.contains(id)).collect();
        assert!(extra.is_empty(), "{table}: rows on {other} that {on} never had: {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_holder_is_claimed_and_acknowledges_nothing_the_claimant_lacks() {
    let c = Cluster::start(options()).await.unwrap();
    let network = c.network.as_ref().expect("namespaces");
    let before = c.status("b").await.unwrap();
    let mut global = global_writer(&c).await;
    let local = start_local_writer(&c).await;

    let cut = Instant::now();
    network.isolate("a").unwrap();
    c.wait_pair_on(&["b"], "b holds the lease and is primary", Duration::from_secs(30), |p| {
        serves(p, "b", before.epoch)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let took = cut.elapsed();
    let acked = global.acked_count();
    global.wait_acked(acked + 20, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // a, cut off, stops taking writes by its own lease deadline (its Unix socket still works).
    c.wait_stops_taking_writes("a", Duration::from_secs(10)).await.unwrap();

    let healed = Instant::now();
    network.heal("a").unwrap();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(90), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let rejoined = healed.elapsed();
    let local = local.stop();
    let global = global.stop().await;
    // The claim's promise: a acknowledged nothing b does not have, whichever client asked.
    nothing_lost_nothing_extra(&c, "b", "a", &[("probe", &global), ("probe_local", &local)]).await;
    println!(
        "isolated a: b took over after {took:?} (sync-fenced), a rejoined {rejoined:?} after the heal; acked: \
         global {}, a's local {} ({} unknown)",
        global.acked.len(),
        local.acked.len(),
        local.unknown.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_standby_only_keeps_the_lease_and_nobody_claims() {
    let c = Cluster::start(options()).await.unwrap();
    let network = c.network.as_ref().expect("namespaces");
    let before = c.status("a").await.unwrap();
    assert_eq!(before.holder.as_deref(), Some("a"));
    // When b's node leads raft, a cut from b cannot renew at all (writes go to the leader, not
    // through the witness), so b's claim is the right outcome and this case does not arise;
    // the isolated-holder test covers that path. Found in a full run; docs/takeover.md's case
    // "a cut off from b only" assumes b's node does not lead.
    if c.witness_status().await.unwrap().leader == Some(2) {
        println!("b's node leads raft: a cut from b only cannot renew; not this case");
        return;
    }
    let mut global = global_writer(&c).await;

    network.cut("a", "b").unwrap();
    let cut = Instant::now();
    // Long enough for any claim (suspect window 600 ms, WAL stream timeout 1 s at test timings)
    // and for a lease to run out several times over: sampled throughout, not at the end.
    let mut samples = 0;
    let mut went_on_alone = None;
    while cut.elapsed() < Duration::from_secs(8) {
        let p = c.status("a").await.unwrap_or_else(|e| panic!("a: {e:#}\n{}", c.logs()));
        let a_primary = p.regions.iter().any(|r| r.region == "a" && r.role == PgRole::Primary);
        assert!(
            p.holder.as_deref() == Some("a") && p.epoch == before.epoch && a_primary,
            "after {:?} cut from b only: holder {:?} epoch {} (was a, {}), a primary {a_primary}\n{}",
            cut.elapsed(),
            p.holder,
            p.epoch,
            before.epoch,
            c.logs()
        );
        if went_on_alone.is_none() && p.sync_standby.is_none() {
            went_on_alone = Some(cut.elapsed());
        }
        // b, unable to reach a, must not have promoted itself either.
        let b_primary = c.node("b").is_in_recovery().await.map(|r| !r).unwrap_or(false);
        assert!(!b_primary, "b promoted while a still held the lease\n{}", c.logs());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let went_on_alone = went_on_alone
        .unwrap_or_else(|| panic!("with `preferred`, a records no synchronous standby and goes on\n{}", c.logs()));
    let acked = global.acked_count();
    global.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    network.heal("a").unwrap();
    c.wait_pair_on(&["a"], "b streams as a's sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "a", "b"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let global = global.stop().await;
    nothing_lost_nothing_extra(&c, "a", "b", &[("probe", &global)]).await;
    println!(
        "a cut from b only: {samples} samples over 8 s, holder a at epoch {} throughout, no synchronous standby \
         after {went_on_alone:?}; {} acknowledged",
        before.epoch,
        global.acked.len()
    );
}
