//! End to end: DNS converges to the holder by itself. PDM is unreachable while region a dies
//! (as when PDM ran in the lost region): b takes over but cannot commit its record; once PDM is
//! back, b's reconciler commits it with its epoch and DNS answers b, with no request from anyone.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, serves};
use testkit::proxy::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_follows_the_holder_once_pdm_is_back_after_a_failover_without_it() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let before = c.status("a").await.unwrap();
    let dns = before.dns.expect("the holder reports its DNS record");
    assert!(dns.in_sync && dns.epoch == Some(before.epoch), "{dns:?}");

    c.set_pdm(Mode::Refuse);
    c.daemon("a").kill9();
    c.node("a").kill9().unwrap();
    let status = c
        .wait_pair_on(&["b"], "b is primary with a newer epoch", Duration::from_secs(20), |p| {
            serves(p, "b", before.epoch)
        })
        .await
        .unwrap();
    // b holds the lease, but DNS still names a: its commit could not reach PDM.
    c.wait_pair_on(&["b"], "b reports its DNS record out of sync", Duration::from_secs(20), |p| {
        p.dns.as_ref().is_some_and(|d| !d.in_sync && d.error.is_some())
    })
    .await
    .unwrap();
    assert_eq!(c.dns.a(common::cluster::RECORD).await.unwrap(), [common::cluster::address_of("a")]);

    c.set_pdm(Mode::Pass);
    let back = Instant::now();
    c.wait_dns("b").await.unwrap();
    let converged = back.elapsed();
    let after = c
        .wait_pair_on(&["b"], "b reports its DNS record in sync", Duration::from_secs(10), |p| {
            p.dns.as_ref().is_some_and(|d| d.in_sync && d.error.is_none())
        })
        .await
        .unwrap();
    assert_eq!(after.dns.unwrap().epoch, Some(status.epoch), "committed with b's epoch");
    let api = &c.daemons["b"].api;
    let metrics = c.http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("continuum_dns_in_sync{pair=\"app\"} 1"), "{metrics}");
    println!("PDM back -> DNS answers b in {converged:?}");
}
