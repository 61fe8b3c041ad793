//! End to end: the holder loses its quorum (the other daemon and the witness are frozen with
//! SIGSTOP, its PostgreSQL keeps streaming to the standby) and must stop taking writes before its
//! lease deadline (invariant 3); after the freeze ends exactly one region serves again.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use continuum::api::PgRole;
use testkit::writer::Writer;

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(pid as i32, sig) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_quorum_fences_before_its_deadline() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(30, Duration::from_secs(20)).await.unwrap();

    let frozen: Vec<u32> = ["b", "w"].iter().map(|r| c.daemons[*r].pid().unwrap()).collect();
    let cut = Instant::now();
    for pid in &frozen {
        signal(*pid, libc::SIGSTOP);
    }
    // The lease (2 s) was last renewed before the cut: a must fence by then.
    let a = c.node("a").clone();
    testkit::wait_until("a stops taking writes", Duration::from_secs(4), || {
        let a = a.clone();
        async move { Ok(a.is_in_recovery().await.is_err()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let fenced_after = cut.elapsed();
    assert!(fenced_after < Duration::from_millis(2500), "fenced only {fenced_after:?} after the cut");
    // Hold the cut past the deadline: nothing may be acknowledged in that window.
    tokio::time::sleep_until((cut + Duration::from_secs(3)).into()).await;
    let healed = Instant::now();
    for pid in &frozen {
        signal(*pid, libc::SIGCONT);
    }

    // Exactly one region serves again, and writes resume.
    let acked = writer.acked_count();
    writer.wait_acked(acked + 20, Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let status = c
        .wait_pair("one primary, the lease holder's", Duration::from_secs(30), |p| {
            let primaries: Vec<&str> =
                p.regions.iter().filter(|r| r.role == PgRole::Primary).map(|r| r.region.as_str()).collect();
            primaries.len() == 1 && p.holder.as_deref() == Some(primaries[0])
        })
        .await
        .unwrap();
    let report = writer.stop().await;
    let late: Vec<i64> = report
        .acked_at
        .iter()
        .filter(|(_, t)| *t > cut + Duration::from_secs(2) && *t < healed)
        .map(|(id, _)| *id)
        .collect();
    assert!(late.is_empty(), "commits acknowledged after a's lease deadline while cut off: {late:?}");
    let holder = status.holder.unwrap();
    let on_primary = Cluster::ids_on(c.node(&holder), "probe").await.unwrap();
    let lost: Vec<i64> = report.acked.iter().copied().filter(|id| !on_primary.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    println!("a fenced {fenced_after:?} after the cut; {holder} serves now");
}
