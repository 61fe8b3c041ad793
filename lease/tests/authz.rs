//! The certificate decides who the caller is (README "Security model"): a command that acts for
//! a region is accepted only from that region's certificate, membership changes only from
//! members, and a refused request changes nothing, not even by creating a record.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOpts, PAIR, raw_client};
use lease::{LeaseApi, LeaseError, LeaseRecord, LeaseRequest, RemoteLease};

/// Every mutating request a member could send about `PAIR`, each acting for `region` where it
/// names one.
fn mutations(epoch: u64, version: u64) -> Vec<LeaseRequest> {
    let pair = PAIR.to_string();
    vec![
        LeaseRequest::Acquire { pair: pair.clone(), region: "a".into(), duration_ms: 3_600_000 },
        LeaseRequest::Acquire { pair: pair.clone(), region: "b".into(), duration_ms: 3_600_000 },
        LeaseRequest::Renew { pair: pair.clone(), region: "a".into(), epoch },
        LeaseRequest::Release { pair: pair.clone(), region: "a".into(), epoch },
        LeaseRequest::SetSyncStandby { pair: pair.clone(), region: "a".into(), epoch, standby: None },
        LeaseRequest::SetDemotionToken { pair: pair.clone(), region: "a".into(), epoch, token: Some("forged".into()) },
        LeaseRequest::CasSwitchover {
            pair: pair.clone(),
            epoch,
            expected_version: version,
            record: Some(serde_json::json!({"forged": true})),
        },
        LeaseRequest::Claim { pair, region: "b".into(), epoch, seq: None },
    ]
}

/// What a user would compare to see that nothing changed.
fn fingerprint(r: &LeaseRecord) -> (Option<String>, u64, u64, Option<String>, u64, Option<String>) {
    (r.holder.clone(), r.epoch, r.seq, r.sync_standby.clone(), r.switchover_version, r.demotion_token.clone())
}

async fn held_by_a(cluster: &Cluster) -> anyhow::Result<LeaseRecord> {
    cluster.leader().await?;
    let a = cluster.api(1);
    let held = a.acquire(PAIR, "a", Duration::from_secs(30)).await?;
    Ok(a.set_sync_standby(PAIR, "a", held.epoch, Some("b")).await?)
}

fn remote(cluster: &Cluster, node: u64, cert: &str) -> anyhow::Result<RemoteLease> {
    let addr = cluster.configs[&node].listen.to_string();
    Ok(RemoteLease::new(&addr, &cluster.ca.node_files(cert)?, Duration::from_secs(3))?)
}

fn assert_forbidden(r: Result<LeaseRecord, LeaseError>, what: &str) {
    match r {
        Err(LeaseError::Forbidden(message)) => assert!(!message.is_empty()),
        other => panic!("{what}: expected forbidden, got {other:?}"),
    }
}

/// A certificate from the cluster CA that names no member (a client's, an operator's, one a
/// shared cert-manager issuer handed out) is refused every mutating command on every node with
/// HTTP 403, membership changes included, and may still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_certificate_can_read_but_not_write() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let before = held_by_a(&cluster).await?;
    for node in 1..=3 {
        let client = remote(&cluster, node, "client")?;
        for req in mutations(before.epoch, before.switchover_version) {
            assert_forbidden(client.submit(req.clone()).await, &format!("node {node}: {req:?}"));
        }
        assert_eq!(fingerprint(&client.read(PAIR).await?.expect("record")), fingerprint(&before), "client read");

        let raw = raw_client(&cluster.ca.node_files("client")?)?;
        let base = format!("https://{}", cluster.configs[&node].listen);
        let submit = raw.post(format!("{base}/api/submit")).json(&mutations(before.epoch, 0)[3]).send().await?;
        assert_eq!(submit.status(), reqwest::StatusCode::FORBIDDEN, "node {node}: submit");
        let info = serde_json::json!({ "id": 9, "node": { "region": "x", "addr": "127.0.0.1:1" } });
        let add = raw.post(format!("{base}/admin/add-node")).json(&info).send().await?;
        assert_eq!(add.status(), reqwest::StatusCode::FORBIDDEN, "node {node}: add-node");
        let remove = raw.post(format!("{base}/admin/remove-node")).json(&serde_json::json!({ "id": 3 })).send().await?;
        assert_eq!(remove.status(), reqwest::StatusCode::FORBIDDEN, "node {node}: remove-node");
    }
    let after = cluster.api(2).read(PAIR).await?.expect("record");
    assert_eq!(fingerprint(&after), fingerprint(&before), "nothing changed");
    assert_eq!(cluster.node(1).status().voters.len(), 3, "membership unchanged");
    Ok(())
}

/// Region b's certificate cannot renew, release, set the sync standby or the demotion token for
/// a — neither remotely nor through b's own node — and a cannot claim or acquire for b; a's own
/// operations work through any node (a follower redirects a's write to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_acts_only_for_itself() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let before = held_by_a(&cluster).await?;
    let epoch = before.epoch;
    let pair = || PAIR.to_string();
    let for_a = [
        LeaseRequest::Renew { pair: pair(), region: "a".into(), epoch },
        LeaseRequest::Release { pair: pair(), region: "a".into(), epoch },
        LeaseRequest::SetSyncStandby { pair: pair(), region: "a".into(), epoch, standby: None },
        LeaseRequest::SetDemotionToken { pair: pair(), region: "a".into(), epoch, token: None },
    ];
    let for_b = [
        LeaseRequest::Claim { pair: pair(), region: "b".into(), epoch, seq: None },
        LeaseRequest::Acquire { pair: pair(), region: "b".into(), duration_ms: 1000 },
    ];
    for node in 1..=3 {
        let b = remote(&cluster, node, "b")?;
        for req in &for_a {
            assert_forbidden(b.submit(req.clone()).await, &format!("b via node {node}: {req:?}"));
        }
        let a = remote(&cluster, node, "a")?;
        for req in &for_b {
            assert_forbidden(a.submit(req.clone()).await, &format!("a via node {node}: {req:?}"));
        }
    }
    // In process: b's node acts with b's certificate.
    for req in &for_a {
        assert_forbidden(cluster.api(2).submit(req.clone()).await, &format!("b's node: {req:?}"));
    }
    assert_eq!(fingerprint(&cluster.api(1).read(PAIR).await?.expect("record")), fingerprint(&before));

    // a's own renewals through every node, the witness included.
    let mut seq = before.seq;
    for node in 1..=3 {
        let renewed = remote(&cluster, node, "a")?.renew(PAIR, "a", epoch).await?;
        assert_eq!(renewed.epoch, epoch);
        assert!(renewed.seq > seq, "renewal via node {node} applied");
        seq = renewed.seq;
    }
    Ok(())
}

/// A member may forward to the leader only what its own certificate allows, and a forwarded
/// grant still passes the leader's observed-time rule: b cannot release a's lease through the
/// internal route, nor take a's valid lease with a hand-made compare-and-swap acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_are_checked_by_the_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let before = held_by_a(&cluster).await?;
    let leader = cluster.leader().await?;
    let b = raw_client(&cluster.ca.node_files("b")?)?;
    let url = format!("https://{}/internal/write", cluster.configs[&leader].listen);

    let release =
        lease::Command::Request(LeaseRequest::Release { pair: PAIR.into(), region: "a".into(), epoch: before.epoch });
    let response = b.post(&url).json(&release).send().await?;
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN, "b forwarding a's release");

    let grab = lease::Command::Acquire {
        pair: PAIR.into(),
        candidate: "b".into(),
        duration_ms: 3_600_000,
        expected_epoch: before.epoch,
        expected_seq: before.seq,
    };
    let answer: Result<lease::CommandResult, LeaseError> = b.post(&url).json(&grab).send().await?.json().await?;
    match answer {
        Err(LeaseError::Refused { reason: lease::RefusalReason::HeldByOther, .. }) => {}
        other => panic!("a hand-made acquire of a valid lease must be refused, got {other:?}"),
    }
    assert_eq!(fingerprint(&cluster.api(1).read(PAIR).await?.expect("record")), fingerprint(&before));
    Ok(())
}

/// A request for a pair no daemon is configured with is refused and leaves no record behind,
/// on any node and for any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pairs_are_refused_and_create_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    cluster.leader().await?;
    let ghost = || "ghost".to_string();
    let attempts = [
        (1, LeaseRequest::Acquire { pair: ghost(), region: "a".into(), duration_ms: 1000 }),
        (2, LeaseRequest::Renew { pair: ghost(), region: "b".into(), epoch: 1 }),
        (1, LeaseRequest::CasSwitchover { pair: ghost(), epoch: 1, expected_version: 0, record: None }),
    ];
    for (node, req) in attempts {
        match cluster.api(node).submit(req.clone()).await {
            Err(LeaseError::UnknownPair(p)) => assert_eq!(p, "ghost"),
            other => panic!("{req:?}: expected unknown pair, got {other:?}"),
        }
        match remote(&cluster, node, common::region(node))?.submit(req.clone()).await {
            Err(LeaseError::UnknownPair(_)) => {}
            other => panic!("remote {req:?}: expected unknown pair, got {other:?}"),
        }
    }
    for node in 1..=3 {
        assert!(cluster.node(node).local_record("ghost").is_none(), "node {node} created a record");
    }
    assert_eq!(cluster.api(1).read("ghost").await?, None);
    // The configured pair is created by its first request.
    assert_eq!(cluster.api(1).acquire(PAIR, "a", Duration::from_secs(2)).await?.holder.as_deref(), Some("a"));
    Ok(())
}

/// A node that has not joined a cluster yet accepts raft traffic only from its configured
/// members' certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uninitialised_node_refuses_non_members() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    // Same member list, but not one of them: it does not bootstrap and waits to be added.
    let mut cfg = cluster.configs[&1].clone();
    cfg.id = 9;
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], common::node_port()));
    cfg.data_dir = cluster.dir.path().join("node9");
    cfg.tls = cluster.ca.node_files("c")?;
    let joiner = lease::LeaseNode::start(cfg.clone()).await?;
    let base = format!("https://{}", cfg.listen);
    for route in ["/raft/vote", "/raft/append", "/internal/write", "/internal/read"] {
        let client = raw_client(&cluster.ca.node_files("client")?)?;
        let response = client.post(format!("{base}{route}")).body("{}").send().await?;
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN, "{route} from a client");
        let member = raw_client(&cluster.ca.node_files("a")?)?;
        let response = member.post(format!("{base}{route}")).body("{}").send().await?;
        assert_ne!(response.status(), reqwest::StatusCode::FORBIDDEN, "{route} from member a");
    }
    assert!(joiner.local_record(PAIR).is_none());
    joiner.shutdown().await;
    Ok(())
}
