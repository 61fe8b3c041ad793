//! End to end: the daemon that performs a switchover step crashes at that step (failpoints,
//! `_exit(86)`), is restarted, and the switchover completes (after the lease moved) or rolls
//! back (before). Never two writable primaries, no acknowledged commit lost.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Options, SplitBrainSampler};
use continuum::api::{PgRole, SwitchoverState};
use continuum::failpoint::{Failpoint, Step};
use testkit::writer::Writer;

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
