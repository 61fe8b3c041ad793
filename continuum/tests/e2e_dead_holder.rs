//! End to end: the old holder's daemon (and its postmaster) die for good in the middle of a
//! planned switchover. Before the lease moved, the target takes over by automatic failover and
//! supersedes the stale record; after it moved, the new holder completes the record once the
//! rejoin timeout ran out, and the old region rejoins as a standby when it comes back.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Options};
use continuum::api::{PgRole, Plan, StepState, SwitchoverRecord, SwitchoverState};
use continuum::failpoint::{Failpoint, Step};
use testkit::writer::Writer;

/// Arms region a's daemon with `failpoint`, requests a switchover a → b, and waits until a's
/// daemon died there; then kills a's postmaster too. Returns the switchover id and b's epoch.
async fn switchover_with_a_dying_at(c: &mut Cluster, failpoint: Failpoint) -> (String, u64) {
    c.daemon("a").restart_armed(failpoint).unwrap();
    c.wait_ready("a").await.unwrap();
    let before = c
        .wait_pair_on(&["b"], "pair healthy before the switchover", Duration::from_secs(30), |p| {
            p.holder.as_deref() == Some("a")
                && p.regions.iter().any(|r| r.region == "b" && r.sync_state.as_deref() == Some("sync"))
        })
        .await
        .unwrap();
    let id = c.request_switchover("b", "b", &format!("a dies at {failpoint}")).await;
    let code = c.daemon("a").wait_exit(Duration::from_secs(30)).await.unwrap();
    assert_eq!(code, Some(continuum::failpoint::EXIT_CODE), "{}", c.logs());
    c.daemon("a").clear_env();
    // The postmaster may already be stopped (fenced); either way it stays dead.
    let _ = c.node("a").kill9();
    (id, before.epoch)
}

async fn record(c: &Cluster, id: &str) -> anyhow::Result<SwitchoverRecord> {
    c.switchover_record("b", id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_holder_dead_before_move_lease_the_target_fails_over_and_supersedes_the_switchover() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    let (id, epoch_before) = switchover_with_a_dying_at(&mut c, Failpoint::After(Step::Fence)).await;
    // Lease 2 s + grant margin 0.3 s + a lease of silence, plus a few seconds.
    let status = c
        .wait_pair_on(&["b"], "b primary by failover, no switchover in flight", Duration::from_secs(12), |p| {
            p.holder.as_deref() == Some("b")
                && p.epoch > epoch_before
                && p.in_flight.is_none()
                && p.regions.iter().any(|r| r.region == "b" && r.role == PgRole::Primary)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    c.wait_dns("b").await.unwrap();
    let acked = writer.acked_count();
    writer.wait_acked(acked + 20, Duration::from_secs(20)).await.unwrap();

    let stale = record(&c, &id).await.unwrap();
    assert_eq!(stale.state, SwitchoverState::Failed, "{stale:?}");
    assert!(stale.error.as_deref().unwrap_or_default().contains("superseded"), "{stale:?}");
    let last = status.last_switchover.expect("the failover is in the history");
    assert_eq!((last.from.as_str(), last.to.as_str()), ("a", "b"));

    // No switchover blocker left: a new planned switchover could be requested.
    let api = c.daemons["b"].api.clone();
    let plan: Plan = c
        .http
        .post(format!("{api}/v1/plan"))
        .bearer_auth(common::OWNER)
        .json(&serde_json::json!({ "to": "a" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!plan.blockers.iter().any(|b| b.contains("switchover is in flight")), "{plan:?}");

    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_holder_dead_after_move_lease_the_record_completes_after_the_rejoin_timeout() {
    let mut c = Cluster::start(Options { switchover_rejoin_timeout: "4s", ..Options::default() }).await.unwrap();
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    let (id, epoch_before) = switchover_with_a_dying_at(&mut c, Failpoint::Before(Step::Rejoin)).await;
    let finished = testkit::wait_for("switchover completed without a's rejoin", Duration::from_secs(20), || {
        let c = &c;
        let id = id.clone();
        async move {
            let r = record(c, &id).await?;
            Ok(r.state.is_finished().then_some(r))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert_eq!(finished.state, SwitchoverState::Succeeded, "{finished:?}");
    let rejoin = finished.steps.iter().find(|s| s.step == Step::Rejoin).unwrap();
    assert_eq!(rejoin.state, StepState::Skipped, "{finished:?}");
    assert!(rejoin.detail.as_deref().unwrap_or_default().contains("not rejoined"), "{finished:?}");
    c.wait_pair_on(&["b"], "b primary, nothing in flight", Duration::from_secs(10), |p| {
        p.holder.as_deref() == Some("b")
            && p.epoch > epoch_before
            && p.in_flight.is_none()
            && p.regions.iter().any(|r| r.region == "b" && r.role == PgRole::Primary)
    })
    .await
    .unwrap();
    let acked = writer.acked_count();
    writer.wait_acked(acked + 20, Duration::from_secs(20)).await.unwrap();

    // a's daemon comes back: it rejoins as b's synchronous standby by the ordinary path.
    c.daemon("a").start().unwrap();
    c.wait_pair_on(&["b"], "a streams as b's sync standby", Duration::from_secs(40), |p| {
        p.holder.as_deref() == Some("b")
            && p.regions
                .iter()
                .any(|r| r.region == "a" && r.role == PgRole::Standby && r.sync_state.as_deref() == Some("sync"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node("b"), "probe", &report.acked).await.unwrap();
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert!(c.node("a").is_in_recovery().await.unwrap(), "a must be a standby");
}
