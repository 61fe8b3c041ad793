//! End to end: a switchover step fails (failpoint `fail_<step>`: the step reports a failure
//! once, without running). Before the lease moved the switchover rolls back: the old primary is
//! unfenced and takes writes again under the same epoch, the target stays its sync standby.
//! After the lease moved it rolls forward: the step is retried and the switchover completes.
//! Throughout: never two writable primaries, no acknowledged commit lost. A step that keeps
//! failing (PDM down for a minute) is retried with capped exponential backoff: a bounded number
//! of audit lines and raft entries, and the switchover finishes once PDM is back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options, SplitBrainSampler};
use continuum::api::{PgRole, StepState, SwitchoverState};
use continuum::failpoint::{Failpoint, Step};
use testkit::proxy::Mode;
use testkit::writer::Writer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_rolls_back_before_the_lease_moves_and_forward_after() {
    let mut c = Cluster::start(Options { auto_failover: false, ..Options::default() }).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    let sampler = SplitBrainSampler::start(&c);

    let mut holder = "a".to_string();
    for step in [Step::Fence, Step::CatchUp, Step::Promote, Step::Dns, Step::Rejoin] {
        let failpoint = Failpoint::Fail(step);
        let from = holder.clone();
        let to = if from == "a" { "b".to_string() } else { "a".to_string() };
        let performer = continuum::switchover::performer(step, &from, &to).to_string();
        let other = if performer == "a" { "b" } else { "a" };
        c.daemon(&performer).restart_armed(failpoint).unwrap();
        c.wait_ready(&performer).await.unwrap();
        let before = c
            .wait_pair_on(&[other], "pair healthy before the switchover", Duration::from_secs(30), |p| {
                p.holder.as_deref() == Some(from.as_str())
                    && p.regions.iter().any(|r| r.region != from && r.sync_state.as_deref() == Some("sync"))
            })
            .await
            .unwrap();

        let id = c.request_switchover(other, &to, &failpoint.to_string()).await;
        let record = c.wait_switchover_finished(other, &id, Duration::from_secs(60)).await;

        let failed = record.steps.iter().find(|s| s.step == step).expect("the failed step is recorded");
        if step.rolls_back() {
            assert_eq!(record.state, SwitchoverState::RolledBack, "{failpoint}: {record:?}");
            assert!(
                matches!(failed.state, StepState::Failed | StepState::RolledBack),
                "{failpoint}: step recorded as {:?}",
                failed.state
            );
            assert!(record.error.as_deref().is_some_and(|e| e.contains("failpoint")), "{failpoint}: {record:?}");
            assert_eq!(record.epoch_after, None, "{failpoint}: the lease never moved");
        } else {
            assert_eq!(record.state, SwitchoverState::Succeeded, "{failpoint}: {record:?}");
            assert_eq!(failed.state, StepState::Done, "{failpoint}: retried to completion");
            holder = to.clone();
        }
        let after = c
            .wait_pair_on(
                &[holder.as_str()],
                &format!("pair healthy after {failpoint}"),
                Duration::from_secs(60),
                |p| {
                    p.holder.as_deref() == Some(holder.as_str())
                        && p.regions.iter().any(|r| r.region == holder && r.role == PgRole::Primary)
                        && p.regions.iter().any(|r| r.region != holder && r.sync_state.as_deref() == Some("sync"))
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        if step.rolls_back() {
            assert_eq!(after.epoch, before.epoch, "{failpoint}: a rollback keeps the epoch");
        } else {
            assert!(after.epoch > before.epoch, "{failpoint}: the new holder's epoch");
        }
        c.wait_dns(&holder).await.unwrap();
        let acked = writer.acked_count();
        writer.wait_acked(acked + 10, Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
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
}

/// How long PDM stays unreachable in the outage test.
const PDM_OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_pdm_costs_a_bounded_number_of_writes_and_the_switchover_then_finishes() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();
    let applied_before = c.raft_applied().await.unwrap();
    let measured = Instant::now();

    c.set_pdm(Mode::Refuse);
    let id = c.request_switchover("a", "b", "PDM down").await;
    // b promoted and holds the lease; only its DNS commit fails, and is retried.
    let failing = testkit::wait_for("the dns step failing", Duration::from_secs(30), || async {
        let record = c.switchover_record("b", &id).await?;
        Ok(record.step(Step::Dns).is_some_and(|s| s.state == StepState::Failed).then_some(record))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(!failing.state.is_finished(), "{failing:?}");
    // The outage itself is the scenario: PDM stays away for a minute, whatever the daemons do.
    tokio::time::sleep(PDM_OUTAGE).await;
    let during = c.switchover_record("b", &id).await.unwrap();
    assert!(!during.state.is_finished(), "a live holder keeps retrying its step: {during:?}");
    let attempts = during.step(Step::Dns).unwrap().attempts;

    c.set_pdm(Mode::Pass);
    // The next try is at most `step_retry_max` (5 s) away.
    let record = c.wait_switchover_finished("b", &id, Duration::from_secs(20)).await;
    assert_eq!(record.state, SwitchoverState::Succeeded, "{record:?}");
    c.wait_dns("b").await.unwrap();
    let elapsed = measured.elapsed();
    let entries = c.raft_applied().await.unwrap() - applied_before;

    // Backoff 100 ms doubling to 5 s: about 17 tries in a minute (a fixed 25 ms retry of a
    // 0.4 s failing commit made about 90).
    assert!((5..=25).contains(&attempts), "dns tries during the outage: {attempts}");
    // One line per state change (request, each step, the first dns failure, the end), on both.
    let lines: Vec<_> = ["a", "b"].iter().flat_map(|r| c.audit_lines_of(r, &id)).collect();
    let dns_failures =
        lines.iter().filter(|l| l["detail"]["step"] == "dns" && l["detail"]["outcome"] == "failed").count();
    assert_eq!(dns_failures, 1, "{lines:#?}");
    assert!(lines.len() <= 15, "{} audit lines: {lines:#?}", lines.len());
    // Raft entries: the holder's renewals (every 300 ms) and some 30 more, not one per try.
    let renewals = (elapsed.as_millis() / 300) as u64;
    assert!(entries <= renewals + 60, "{entries} raft entries in {elapsed:?} ({renewals} renewals)");
    println!("dns attempts {attempts}, audit lines {}, raft entries {entries} in {elapsed:?}", lines.len());

    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}
