//! End to end: planned switchover A → B and failback B → A through the CLI, with a writer
//! probe logging every acknowledged commit.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, Options};
use continuum::api::{PgRole, SwitchoverState};
use testkit::writer::Writer;

async fn switch(c: &Cluster, via: &str, to: &str) -> String {
    let out = c.cli(via).args(["switchover", "--to", to, "--reason", "e2e drill", "--yes"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "switchover to {to} failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_and_failback_via_cli_lose_no_acknowledged_commit() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let before = c.status("a").await.unwrap();

    // The holder's renewals are measured (renew interval 300 ms).
    let metrics = format!("{}/metrics", c.daemons["a"].api);
    testkit::wait_until("a's renew latency recorded", Duration::from_secs(10), || {
        let request = c.http.get(&metrics).send();
        async move {
            let text = request.await?.text().await?;
            Ok(text
                .lines()
                .find_map(|l| l.strip_prefix("continuum_lease_renew_latency_seconds_count{pair=\"app\"} "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0))
        }
    })
    .await
    .unwrap();

    // Against the real daemon: a refused mutation changes nothing.
    let api = &c.daemons["b"].api;
    let post = |token: Option<&str>, body: &str| {
        let mut request = c.http.post(format!("{api}/v1/switchover")).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.body(body.to_string()).send()
    };
    assert_eq!(post(None, r#"{"to":"b"}"#).await.unwrap().status(), 401);
    assert_eq!(post(Some(common::VIEWER), r#"{"to":"b"}"#).await.unwrap().status(), 403);
    assert_eq!(post(Some(common::OWNER), r#"{"to":"#).await.unwrap().status(), 400);
    let refused = post(Some(common::OWNER), r#"{"to":"a"}"#).await.unwrap();
    assert_eq!(refused.status(), 409);
    let body = refused.text().await.unwrap();
    assert!(body.contains("a already holds the lease"), "{body}");
    let unchanged = c.status("b").await.unwrap();
    assert_eq!((unchanged.holder.as_deref(), unchanged.epoch, unchanged.in_flight), (Some("a"), before.epoch, None));
    let mut writer = Writer::start(&c.conninfo(), "probe").await.unwrap();
    writer.wait_acked(20, Duration::from_secs(20)).await.unwrap();

    for (from, to) in [("a", "b"), ("b", "a")] {
        let acked = writer.acked_count();
        let printed = switch(&c, from, to).await;
        println!("{printed}");
        let status = c
            .wait_pair_on(
                &[to],
                &format!("{to} holds the lease, {from} streams as sync standby"),
                Duration::from_secs(30),
                |p| {
                    p.holder.as_deref() == Some(to)
                        && p.sync_standby.as_deref() == Some(from)
                        && p.regions.iter().any(|r| {
                            r.region == from && r.role == PgRole::Standby && r.sync_state.as_deref() == Some("sync")
                        })
                        && p.last_switchover
                            .as_ref()
                            .is_some_and(|s| s.state == SwitchoverState::Succeeded && s.to == to)
                },
            )
            .await
            .unwrap();
        assert!(status.epoch > before.epoch);
        c.wait_dns(to).await.unwrap();
        // Writes go on against the new primary.
        writer.wait_acked(acked + 20, Duration::from_secs(20)).await.unwrap();
        let record = status.last_switchover.unwrap();
        println!(
            "{from} -> {to}: write gap {:?} ms, epoch {} -> {:?}",
            record.write_gap_ms, record.epoch_before, record.epoch_after
        );
    }

    let report = writer.stop().await;
    let on_a = Cluster::ids_on(c.node("a"), "probe").await.unwrap();
    let on_b = Cluster::ids_on(c.node("b"), "probe").await.unwrap();
    let lost: Vec<i64> = report.acked.iter().copied().filter(|id| !on_a.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged commits missing on the primary: {lost:?}");
    // b streams from a synchronously, so it converges to the same rows.
    testkit::wait_until("b replays every acknowledged commit", Duration::from_secs(10), || async {
        let on_b = Cluster::ids_on(c.node("b"), "probe").await?;
        Ok(report.acked.iter().all(|id| on_b.contains(id)))
    })
    .await
    .unwrap();
    drop(on_b);
    println!(
        "acked {}, unknown {}, longest write gap {:?}",
        report.acked.len(),
        report.unknown.len(),
        report.longest_gap
    );
}
