//! End to end: the witness's monitoring endpoints. Ready while it sees a raft leader; its
//! metrics and status show the membership; status needs a token. With both data daemons gone it
//! reports "not ready" (no quorum reachable from the third site), and ready again once they are
//! back.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Options};
use continuum::witness::WitnessStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_reports_raft_health_for_monitoring() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.daemons["w"].api.clone();
    c.wait_ready("w").await.unwrap();

    let metrics = c.http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("continuum_raft_leader_known 1"), "{metrics}");
    assert!(metrics.contains("continuum_raft_voters 3"), "{metrics}");

    let anonymous = c.http.get(format!("{api}/v1/status")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "status needs a token");
    let status: WitnessStatus = c.witness_status().await.unwrap();
    assert_eq!((status.region.as_str(), status.node_id, status.voters.clone()), ("w", 3, vec![1, 2, 3]));
    assert!(status.leader.is_some());

    // Both data daemons gone: the witness alone has no quorum and says so.
    c.daemon("a").kill9();
    c.daemon("b").kill9();
    let http = c.http.clone();
    let readyz = format!("{api}/readyz");
    let reason = testkit::wait_for("witness not ready", Duration::from_secs(20), || {
        let request = http.get(&readyz).send();
        async move {
            let response = request.await?;
            Ok((response.status() == 503).then_some(response.text().await?))
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("no raft leader"), "{reason}");

    c.daemon("a").start().unwrap();
    c.daemon("b").start().unwrap();
    c.wait_ready("w").await.unwrap();
}
