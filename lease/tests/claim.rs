//! Sync-fenced claims on a real three-node cluster over mutual-TLS sockets: refused, with
//! nothing changed, unless the claimant is the recorded synchronous standby and the holder
//! wrote nothing since the claimant looked; once a claim commits the old holder can neither
//! renew nor drop synchronous replication.

mod common;

use common::{Cluster, ClusterOpts, fast_handle};
use lease::{LeaseError, LeaseHandle, LeaseRecord, LeaseRequest, LeaseStatus, RefusalReason, boot_clock};

const PAIR: &str = "orders";

fn refusal(r: Result<LeaseRecord, LeaseError>) -> (RefusalReason, LeaseRecord) {
    match r {
        Err(LeaseError::Refused { reason, current }) => (reason, *current),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn claim(region: &str, epoch: u64, seq: u64) -> LeaseRequest {
    LeaseRequest::Claim { pair: PAIR.into(), region: region.into(), epoch, seq: Some(seq) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_needs_the_recorded_sync_standby_and_an_unchanged_record() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let (a, b) = (cluster.api(1), cluster.api(2));
    let held = a.acquire(PAIR, "a", fast_handle().duration).await?;

    // No synchronous standby recorded: refused, nothing changed.
    let (reason, current) = refusal(b.submit(claim("b", held.epoch, held.seq)).await);
    assert_eq!(reason, RefusalReason::NotSyncStandby);
    assert_eq!(current, held);
    assert_eq!(b.read(PAIR).await?.as_ref(), Some(&held));

    // Recorded, but the holder renewed after b looked: refused, nothing changed.
    let recorded = a.set_sync_standby(PAIR, "a", held.epoch, Some("b")).await?;
    let renewed = a.renew(PAIR, "a", held.epoch).await?;
    let (reason, current) = refusal(b.submit(claim("b", held.epoch, recorded.seq)).await);
    assert_eq!(reason, RefusalReason::ChangedSinceObserved);
    assert_eq!(current, renewed);
    assert_eq!(b.read(PAIR).await?.as_ref(), Some(&renewed));

    // A stale epoch is refused too.
    let (reason, _) = refusal(b.submit(claim("b", held.epoch - 1, renewed.seq)).await);
    assert_eq!(reason, RefusalReason::NotHolder);

    // Recorded and unchanged: the claim commits a new epoch for b, which renews it.
    let handle =
        LeaseHandle::claim(b.clone(), PAIR, "b", (held.epoch, renewed.seq), fast_handle(), boot_clock()).await?;
    assert!(handle.epoch() > held.epoch);
    assert!(matches!(handle.status(), LeaseStatus::Valid { .. }));
    let after = b.read(PAIR).await?.expect("record");
    assert_eq!(
        (after.holder.as_deref(), after.epoch, after.sync_standby.as_deref()),
        (Some("b"), handle.epoch(), None)
    );

    // The old holder can no longer drop synchronous replication, nor renew.
    let (reason, _) = refusal(a.set_sync_standby(PAIR, "a", held.epoch, None).await);
    assert_eq!(reason, RefusalReason::NotHolder);
    let (reason, _) = refusal(a.renew(PAIR, "a", held.epoch).await);
    assert_eq!(reason, RefusalReason::NotHolder);
    handle.abandon().await;
    Ok(())
}
