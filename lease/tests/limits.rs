//! Bounded inputs (README "Limits"): an entry at the limit still replicates and renewals keep
//! flowing behind it; one over the limit is refused and changes nothing; a state of many
//! maximum-size records is installed on a new node by snapshot.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOpts, PAIR};
use lease::LeaseError;

/// A switchover record whose JSON is exactly `bytes` long.
fn record_of(bytes: usize) -> serde_json::Value {
    let overhead = serde_json::to_vec(&serde_json::json!({ "pad": "" })).unwrap().len();
    serde_json::json!({ "pad": "x".repeat(bytes - overhead) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximum_size_record_replicates_and_a_larger_one_is_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    cluster.leader().await?;
    let a = cluster.api(1);
    let held = a.acquire(PAIR, "a", Duration::from_secs(3)).await?;

    let too_big = record_of(lease::MAX_SWITCHOVER_RECORD_BYTES + 1);
    match a.cas_switchover(PAIR, held.epoch, 0, Some(too_big)).await {
        Err(LeaseError::InvalidInput(message)) => assert!(message.contains("at most"), "{message}"),
        other => panic!("expected invalid input, got {other:?}"),
    }
    assert_eq!(a.read(PAIR).await?.expect("record").switchover_version, 0, "nothing changed");

    let biggest = record_of(lease::MAX_SWITCHOVER_RECORD_BYTES);
    let written = a.cas_switchover(PAIR, held.epoch, 0, Some(biggest.clone())).await?;
    assert_eq!(written.switchover_version, 1);
    // Renewals right behind it commit, and every node applies both.
    let renewed = a.renew(PAIR, "a", held.epoch).await?;
    testkit::wait_until("every node applied the big record and the renewal", Duration::from_secs(5), || async {
        Ok((1..=3).all(|id| {
            cluster
                .node(id)
                .local_record(PAIR)
                .is_some_and(|r| r.seq == renewed.seq && r.switchover == Some(biggest.clone()))
        }))
    })
    .await?;
    Ok(())
}

/// 40 pairs with maximum-size switchover records (~650 KiB of state, more than two snapshot
/// chunks): a node added after the log was compacted gets it all by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_state_is_installed_on_a_new_node_by_snapshot() -> anyhow::Result<()> {
    let pairs: Vec<String> = (0..40).map(|i| format!("pair-{i}")).collect();
    let mut opts = ClusterOpts { pairs: pairs.clone(), ..Default::default() };
    opts.raft.snapshot_every = 20;
    opts.raft.keep_after_snapshot = 0;
    let mut cluster = Cluster::start(opts).await?;
    cluster.leader().await?;
    let a = cluster.api(1);
    let record = record_of(lease::MAX_SWITCHOVER_RECORD_BYTES);
    for pair in &pairs {
        let held = a.acquire(pair, "a", Duration::from_secs(30)).await?;
        a.cas_switchover(pair, held.epoch, 0, Some(record.clone())).await?;
    }
    let leader = cluster.leader().await?;
    cluster.node(leader).raft().trigger().snapshot().await?;
    testkit::wait_until("the leader's log was compacted", Duration::from_secs(10), || async {
        Ok(cluster.node(leader).raft().metrics().borrow().purged.is_some_and(|p| p.index > 40))
    })
    .await?;

    let mut cfg = cluster.configs[&1].clone();
    cfg.id = 4;
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], common::node_port()));
    cfg.data_dir = cluster.dir.path().join("node4");
    cfg.tls = cluster.ca.node_files(common::region(4))?;
    cfg.members = Vec::new();
    cluster.configs.insert(4, cfg.clone());
    cluster.restart(4).await?;
    let info = lease::NodeInfo { region: common::region(4).into(), addr: cfg.listen.to_string(), witness: false };
    cluster.node(1).add_node(4, info, Duration::from_secs(30)).await?;
    testkit::wait_until("node 4 holds every record", Duration::from_secs(20), || async {
        Ok(pairs.iter().all(|p| cluster.node(4).local_record(p).is_some_and(|r| r.switchover == Some(record.clone()))))
    })
    .await?;
    Ok(())
}
