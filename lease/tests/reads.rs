//! Linearizable reads on a real three-node cluster over mutual-TLS sockets, with a
//! fault-injecting proxy on every link: a follower's read survives a leader that stops
//! answering, and a cut-off leader that still believes it leads never serves a record the new
//! leader has changed.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, ClusterOpts, PAIR, fast_rules};
use lease::{GrantRules, LeaseError, NodeId};
use testkit::proxy::Mode;

/// The leader every node in `among` agrees on, if it is one of them.
async fn leader_among(cluster: &Cluster, among: &[NodeId]) -> anyhow::Result<NodeId> {
    testkit::wait_for("a leader among the connected nodes", Duration::from_secs(15), || async {
        let leaders: Vec<_> = among.iter().map(|id| cluster.node(*id).status().leader).collect();
        Ok(match leaders.first() {
            Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) && among.contains(l) => Some(*l),
            _ => None,
        })
    })
    .await
}

/// The leader goes silent (every link to and from it holds connections open and forwards
/// nothing, as for a SIGSTOPped process). A follower that still believes in it forwards a read:
/// the attempt is cut off after an election timeout and the read is asked again of the new
/// leader, well within the call deadline, and returns the committed record. Before per-attempt
/// deadlines the first attempt used the whole deadline and the read failed as "unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_outlives_a_frozen_leader() -> anyhow::Result<()> {
    let rules = GrantRules { call_timeout: Duration::from_secs(3), ..fast_rules() };
    let cluster = Cluster::start(ClusterOpts { proxies: true, rules, ..Default::default() }).await?;
    let held = cluster.api(1).acquire(PAIR, "a", Duration::from_secs(2)).await?;
    let frozen = cluster.leader().await?;
    let follower = (1..=3).find(|id| *id != frozen).expect("a follower");
    assert_eq!(cluster.api(follower).read(PAIR).await?.as_ref(), Some(&held), "read before the freeze");

    cluster.isolate(frozen, Mode::Blackhole);
    let t = Instant::now();
    let read = cluster.api(follower).read(PAIR).await;
    let took = t.elapsed();
    eprintln!("follower read across a frozen leader: {took:?} (call_timeout 3 s, election 200–400 ms)");
    assert_eq!(read?.as_ref(), Some(&held));
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != frozen).collect();
    assert_ne!(leader_among(&cluster, &others).await?, frozen, "the record came from a new leader");
    Ok(())
}

/// The leader is cut off after a confirmed read; the other two elect a new leader and change
/// the record. The old leader still believes it leads (openraft 0.9 keeps it in office) and has
/// applied nothing since its last confirmed read, yet its read must not return the old record:
/// a confirmation started before the read, or a reused earlier one, would serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_cannot_serve_a_read_the_new_leader_changed() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts { proxies: true, ..Default::default() }).await?;
    let held = cluster.api(1).acquire(PAIR, "a", Duration::from_secs(2)).await?;
    let old = cluster.leader().await?;
    let stale = cluster.api(old);
    assert_eq!(stale.read(PAIR).await?.as_ref(), Some(&held), "a confirmed read before the cut");

    cluster.isolate(old, Mode::Blackhole);
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    leader_among(&cluster, &others).await?;
    let writer = *others.iter().find(|id| **id != 3).expect("a data node among the others");
    let record = Some(serde_json::json!({ "changed_by": common::region(writer) }));
    let changed = cluster.api(writer).cas_switchover(PAIR, held.epoch, held.switchover_version, record).await?;
    assert_ne!(changed, held);

    // The premise: the old leader still leads in its own eyes and holds the old record.
    assert_eq!(cluster.node(old).status().leader, Some(old));
    assert_eq!(cluster.node(old).local_record(PAIR).as_ref(), Some(&held));
    match stale.read(PAIR).await {
        Err(LeaseError::Unknown { .. } | LeaseError::NoLeader) => {}
        other => panic!("a cut-off leader answered a read: {other:?} (the current record is {changed:?})"),
    }

    // Reconnected, it serves the new record.
    cluster.heal();
    let back = testkit::wait_for("the old leader reads the new record", Duration::from_secs(15), || async {
        Ok(stale.read(PAIR).await.ok().flatten().filter(|r| *r == changed))
    })
    .await?;
    assert_eq!(back, changed);
    Ok(())
}
