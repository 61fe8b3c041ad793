//! End to end: the daemon that performs a switchover step crashes at that step (failpoints,
//! `_exit(86)`), is restarted, and the switchover completes (after the lease moved) or rolls
//! back (before). A region that never comes back is resolved at the step deadline
//! (`pairs[].step_timeout`) or by an operator's abort. Never two writable primaries, no
//! acknowledged commit lost.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Options, SplitBrainSampler, serves, writable};
use continuum::api::{PairStatus, PgRole, StepState, SwitchoverRecord, SwitchoverState};
use continuum::failpoint::{Failpoint, Step};
use testkit::writer::{Writer, WriterHandle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_step_completes_or_rolls_back_without_two_primaries() {
    let mut c = Cluster::start(Options { auto_failover: false, ..Options::default() }).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    // Sampler: both servers writable at once would be split brain.
    let sampler = SplitBrainSampler::start(&c);

    let mut holder = "a".to_string();
    for failpoint in [
        Failpoint::After(Step::Intent),
        Failpoint::After(Step::Fence),
        Failpoint::After(Step::CatchUp),
        Failpoint::After(Step::MoveLease),
        Failpoint::Before(Step::Promote),
        Failpoint::After(Step::Promote),
        Failpoint::After(Step::Dns),
        Failpoint::After(Step::Rejoin),
        Failpoint::Before(Step::RestoreSync),
    ] {
        let step = match failpoint {
            Failpoint::Before(step) | Failpoint::After(step) | Failpoint::Fail(step) => step,
            Failpoint::Startup => unreachable!(),
        };
        let from = holder.clone();
        let to = if from == "a" { "b".to_string() } else { "a".to_string() };
        let performer = continuum::switchover::performer(step, &from, &to).to_string();
        let other = if performer == "a" { "b" } else { "a" };
        // Re-arm the performer: restart it with the failpoint.
        c.daemon(&performer).restart_armed(failpoint).unwrap();
        c.wait_ready(&performer).await.unwrap();
        c.wait_pair_on(&[other], "pair healthy before the switchover", Duration::from_secs(30), |p| {
            p.holder.as_deref() == Some(from.as_str()) && p.regions.iter().all(|r| r.role != PgRole::Down)
        })
        .await
        .unwrap();

        let id = c.request_switchover(other, &to, &format!("crash at {failpoint}")).await;

        let code = c.daemon(&performer).wait_exit(Duration::from_secs(60)).await.unwrap();
        assert_eq!(code, Some(continuum::failpoint::EXIT_CODE), "{failpoint}: {}", c.logs());
        let d = c.daemon(&performer);
        d.clear_env();
        d.start().unwrap();

        let record = c.wait_switchover_finished(other, &id, Duration::from_secs(60)).await;
        // A crash is not a failure: the restarted daemon repeats its step (every step is
        // idempotent), so the switchover completes; failed steps roll back (e2e_step_failure).
        let expected = SwitchoverState::Succeeded;
        assert_eq!(record.state, expected, "{failpoint}: {record:?}");
        holder = match record.state {
            SwitchoverState::Succeeded => to.clone(),
            _ => from.clone(),
        };
        c.wait_pair_on(&[holder.as_str()], &format!("pair healthy after {failpoint}"), Duration::from_secs(60), |p| {
            p.holder.as_deref() == Some(holder.as_str())
                && p.regions.iter().any(|r| r.region != holder && r.sync_state.as_deref() == Some("sync"))
        })
        .await
        .unwrap();
        c.wait_dns(&holder).await.unwrap();
        println!("{failpoint}: {:?}, holder now {holder}", record.state);
    }

    let split_brain = sampler.stop().await;
    let report = writer.stop().await;
    let on_primary = Cluster::ids_on(c.node(&holder), "probe").await.unwrap();
    let lost: Vec<i64> = report.acked.iter().copied().filter(|id| !on_primary.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    // The sampler ran through every switchover: hundreds of decisive samples at the least.
    split_brain.assert_safe(200);
    println!("split-brain samples: {split_brain:?}");
    println!("acked {}, unknown {}, longest gap {:?}", report.acked.len(), report.unknown.len(), report.longest_gap);
}

/// Step deadline of the never-comes-back tests: the shortest allowed (2 × the 2 s test lease)
/// plus room for the target's catch-up on a loaded machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(6);

/// Arms `region`'s daemon with `failpoint`, requests a switchover a → b through the other
/// daemon, waits until the armed daemon died there, and kills its postmaster too: the region
/// never comes back. Returns the switchover id and the pair as it was before.
async fn switchover_losing(c: &mut Cluster, region: &str, failpoint: Failpoint) -> (String, PairStatus) {
    let other = if region == "a" { "b" } else { "a" };
    c.daemon(region).restart_armed(failpoint).unwrap();
    c.wait_ready(region).await.unwrap();
    let before = c
        .wait_pair_on(&[other], "pair healthy before the switchover", Duration::from_secs(30), |p| {
            common::cluster::sync_standby_of(p, "a", "b")
        })
        .await
        .unwrap();
    let id = c.request_switchover(other, "b", &format!("{region} dies at {failpoint}")).await;
    let code = c.daemon(region).wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(code, Some(continuum::failpoint::EXIT_CODE), "{}", c.logs());
    c.daemon(region).clear_env();
    // The postmaster may already be stopped (fenced); either way it stays dead.
    let _ = c.node(region).kill9();
    (id, before)
}

/// Within `bound`: `region` serves (lease and primary) at an epoch above `above`, it is the one
/// writable server, and acknowledges new commits.
async fn one_writable_primary(
    c: &Cluster,
    writer: &mut WriterHandle,
    region: &str,
    above: u64,
    bound: Duration,
) -> PairStatus {
    let status = c
        .wait_pair_on(&[region], &format!("{region} the only primary"), bound, |p| serves(p, region, above))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let other = if region == "a" { "b" } else { "a" };
    assert_eq!(writable(c.node(region).conninfo()).await, common::cluster::Writable::Yes);
    assert_eq!(writable(c.node(other).conninfo()).await, common::cluster::Writable::No, "{other} must be down");
    let acked = writer.acked_count();
    writer.wait_acked(acked + 10, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    status
}

async fn finished(c: &Cluster, via: &str, id: &str, bound: Duration) -> SwitchoverRecord {
    let record = c.wait_switchover_finished(via, id, bound).await;
    let took = record.finished_at.and_then(|f| f.duration_since(record.requested_at).ok());
    println!("switchover {id} {:?} after {took:?}: {:?}", record.state, record.error);
    record
}

async fn no_acked_commit_lost(c: &Cluster, writer: WriterHandle, on: &str) {
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node(on), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_gone_after_the_fence_is_rolled_back_by_an_abort_and_by_the_step_deadline() {
    let options = Options { step_timeout: Some("6s"), ..Options::default() };
    let mut c = Cluster::start(options).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();
    let sampler = SplitBrainSampler::start(&c);

    // 1. b dies as its catch-up begins; the owner aborts before the deadline.
    let (id, before) = switchover_losing(&mut c, "b", Failpoint::Before(Step::CatchUp)).await;
    let out = c.cli("a").args(["switchover", "--abort", &id]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rolled_back"), "{stdout}");
    let record = c.switchover_record("a", &id).await.unwrap();
    assert_eq!(record.state, SwitchoverState::RolledBack, "{record:?}");
    assert_eq!(record.error.as_deref(), Some("catch_up: aborted by olivia"), "{record:?}");
    let aborted = c.audit_lines_of("a", &id).iter().filter(|l| l["kind"] == "switchover.aborted").count();
    assert_eq!(aborted, 1);
    let status = one_writable_primary(&c, &mut writer, "a", 0, Duration::from_secs(20)).await;
    assert_eq!(status.epoch, before.epoch, "a roll-back keeps the epoch");
    // Once finished, an abort is refused and changes nothing.
    let again = c.cli("a").args(["switchover", "--abort", &id]).output().await.unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"), "{again:?}");

    // b comes back and rejoins; then it dies at the same point again, and nobody aborts.
    c.daemon("b").start().unwrap();
    let (id, before) = switchover_losing(&mut c, "b", Failpoint::Before(Step::CatchUp)).await;
    let record = finished(&c, "a", &id, STEP_TIMEOUT + Duration::from_secs(15)).await;
    assert_eq!(record.state, SwitchoverState::RolledBack, "{record:?}");
    assert!(record.error.as_deref().is_some_and(|e| e.starts_with("step_timeout:catch_up")), "{record:?}");
    assert_eq!(record.epoch_after, None, "the lease never moved");
    let status = one_writable_primary(&c, &mut writer, "a", 0, Duration::from_secs(20)).await;
    assert_eq!(status.epoch, before.epoch);

    sampler.stop().await.assert_safe(100);
    no_acked_commit_lost(&c, writer, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_gone_after_move_lease_leaves_the_old_primary_serving_again() {
    let mut c = Cluster::start(Options { step_timeout: Some("6s"), ..Options::default() }).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();
    let sampler = SplitBrainSampler::start(&c);

    // b dies as it is about to take the lease a released.
    let (id, before) = switchover_losing(&mut c, "b", Failpoint::Before(Step::Promote)).await;
    let record = finished(&c, "a", &id, STEP_TIMEOUT + Duration::from_secs(15)).await;
    assert_eq!(record.state, SwitchoverState::Failed, "{record:?}");
    assert!(record.error.as_deref().is_some_and(|e| e.starts_with("step_timeout:promote")), "{record:?}");
    assert_eq!(record.step(Step::MoveLease).map(|s| s.state), Some(StepState::Done));
    // a took the lease back: a new epoch, its own server the only writable one.
    one_writable_primary(&c, &mut writer, "a", before.epoch, Duration::from_secs(20)).await;
    c.wait_dns("a").await.unwrap();

    sampler.stop().await.assert_safe(100);
    no_acked_commit_lost(&c, writer, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_holder_gone_after_releasing_is_completed_by_the_target() {
    let options = Options { step_timeout: Some("6s"), switchover_rejoin_timeout: "4s", ..Options::default() };
    let mut c = Cluster::start(options).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();
    let sampler = SplitBrainSampler::start(&c);

    // a releases the lease and dies before recording it: the store shows no holder.
    let (id, before) = switchover_losing(&mut c, "a", Failpoint::After(Step::MoveLease)).await;
    let record = finished(&c, "b", &id, STEP_TIMEOUT + Duration::from_secs(25)).await;
    assert_eq!(record.state, SwitchoverState::Succeeded, "{record:?}");
    let moved = record.step(Step::MoveLease).unwrap();
    assert!(moved.detail.as_deref().is_some_and(|d| d.contains("did not record it")), "{record:?}");
    assert_eq!(record.step(Step::Rejoin).map(|s| s.state), Some(StepState::Skipped), "{record:?}");
    let status = one_writable_primary(&c, &mut writer, "b", before.epoch, Duration::from_secs(20)).await;
    assert_eq!(record.epoch_after, Some(status.epoch));
    c.wait_dns("b").await.unwrap();

    sampler.stop().await.assert_safe(100);
    no_acked_commit_lost(&c, writer, "b").await;
}
