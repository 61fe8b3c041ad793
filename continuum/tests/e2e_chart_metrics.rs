//! End to end: every metric name the Helm chart's alert rules and Grafana dashboard use
//! (`charts/continuum/templates/prometheusrule.yaml`, `charts/continuum/dashboards/continuum.json`)
//! is exposed by a real daemon set: the data daemons' and the witness's `/metrics`. A family shows
//! up only once it has a sample, so the test makes each happen for real: a refused API call (an
//! error), a planned switchover a → b (switchover and step durations), and the new holder cut off
//! from the quorum by freezing a and the witness (a fence). Counters answer to `_total`,
//! histograms to `_bucket`, `_sum` and `_count`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::cluster::{Cluster, Options, sync_standby_of};
use continuum::api::SwitchoverState;

/// Metric names a rule or panel may use for each `# TYPE` line of an exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["", "_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Every `continuum_…` token of a file: the metric names its expressions use.
fn used(path: &PathBuf) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("continuum_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(pid as i32, sig) };
}

async fn scrape(c: &Cluster, region: &str) -> String {
    let api = &c.daemons[region].api;
    let response = c.http.get(format!("{api}/metrics")).send().await.unwrap().error_for_status().unwrap();
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_chart_uses_exists_in_a_real_daemon() {
    let charts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/continuum");
    let rules = used(&charts.join("templates/prometheusrule.yaml"));
    let dashboard = used(&charts.join("dashboards/continuum.json"));
    assert!(rules.len() >= 10 && dashboard.len() >= 15, "too few names found: {rules:?} {dashboard:?}");

    let c = Cluster::start(Options::default()).await.unwrap();
    c.wait_pair("a holds the lease with b as sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "a", "b"))
        .await
        .unwrap();
    c.wait_ready("w").await.unwrap();

    // An error the API handles (and counts): an unknown switchover.
    let unknown = format!("{}/v1/switchovers/00000000-0000-0000-0000-000000000000", c.daemons["a"].api);
    let response = c.http.get(unknown).bearer_auth(common::VIEWER).send().await.unwrap();
    assert_eq!(response.status(), 404);

    let id = c.request_switchover("a", "b", "chart metrics").await;
    let record = c.wait_switchover_finished("a", &id, Duration::from_secs(60)).await;
    assert_eq!(record.state, SwitchoverState::Succeeded, "{record:?}\n{}", c.logs());
    c.wait_pair("b holds the lease with a as sync standby", Duration::from_secs(60), |p| sync_standby_of(p, "b", "a"))
        .await
        .unwrap();
    let mut names = exposed(&scrape(&c, "a").await);

    // b cut off from the quorum fences its primary before its lease deadline.
    let frozen: Vec<u32> = ["a", "w"].iter().map(|r| c.daemons[*r].pid().unwrap()).collect();
    for pid in &frozen {
        signal(*pid, libc::SIGSTOP);
    }
    let (http, api) = (c.http.clone(), c.daemons["b"].api.clone());
    let fenced = testkit::wait_for("b counts a fence", Duration::from_secs(10), || {
        let request = http.get(format!("{api}/metrics")).send();
        async move {
            let text = request.await?.text().await?;
            Ok(text.contains("continuum_fence_events_total{").then_some(text))
        }
    })
    .await;
    for pid in &frozen {
        signal(*pid, libc::SIGCONT);
    }
    names.extend(exposed(&fenced.unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()))));
    c.wait_ready("w").await.unwrap();
    let witness = exposed(&scrape(&c, "w").await);
    assert!(witness.contains("continuum_raft_leader_known"), "{witness:?}");
    names.extend(witness);
    assert!(names.contains("continuum_lease_epoch"), "{names:?}");

    for (origin, wanted) in [("alert rules", &rules), ("dashboard", &dashboard)] {
        let missing: Vec<_> = wanted.difference(&names).collect();
        assert!(missing.is_empty(), "the {origin} use metrics no daemon exposes: {missing:?}\nexposed: {names:?}");
    }
}
