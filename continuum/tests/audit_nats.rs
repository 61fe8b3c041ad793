//! The audit trail against a real `nats-server` with JetStream.

mod common;

use std::time::Duration;

use common::{NatsServer, lines, stream_messages};
use continuum::audit::{Audit, AuditEntry, AuditRecord};
use continuum::config::AuditConfig;
use continuum::metrics::Metrics;
use serde_json::json;

const STREAM: &str = "CATALYST_AUDIT";

fn config(dir: &std::path::Path, nats_port: u16) -> AuditConfig {
    let mut config = AuditConfig::local(dir.join("audit.log"));
    config.nats_url = Some(format!("nats://127.0.0.1:{nats_port}"));
    config.nats_timeout = Duration::from_secs(2);
    // Short, so the test does not wait long for a retry once NATS is back.
    config.nats_max_backoff = Duration::from_millis(400);
    config
}

fn entry(n: u64) -> AuditEntry {
    let mut entry = AuditEntry::new("switchover.step", json!({ "n": n }));
    entry.pair = Some("app".into());
    entry.epoch = Some(7);
    entry
}

/// Waits until the stream holds `count` messages, then returns them all.
async fn wait_for_stream(url: &str, count: usize) -> Vec<(String, String)> {
    testkit::wait_for(&format!("{count} messages on {STREAM}"), Duration::from_secs(30), || async {
        let messages = stream_messages(url, STREAM).await?;
        Ok((messages.len() >= count).then_some(messages))
    })
    .await
    .unwrap()
}

/// The stream must hold exactly the log, line for line, in order, each once.
fn assert_stream_matches_log(messages: &[(String, String)], log: &[String]) {
    assert_eq!(messages.len(), log.len(), "stream and log differ in length");
    for ((id, payload), line) in messages.iter().zip(log) {
        let record: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(payload, line);
        assert_eq!(id, &record.id.to_string(), "Nats-Msg-Id must be the record id");
    }
}

#[tokio::test]
async fn records_arrive_on_the_stream_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(testkit::free_port(), dir.path()).await;
    let config = config(dir.path(), nats.port);
    let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
    for n in 1..=3 {
        audit.append(entry(n)).await.unwrap();
    }
    let messages = wait_for_stream(&nats.url(), 3).await;
    assert_stream_matches_log(&messages, &lines(&config.log));
    let subjects: Vec<u64> =
        messages.iter().map(|(_, p)| serde_json::from_str::<AuditRecord>(p).unwrap().seq).collect();
    assert_eq!(subjects, [1, 2, 3]);
    drop(audit);
    tasks.shutdown().await;
}

#[tokio::test]
async fn nats_outage_never_blocks_and_the_backlog_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let config = config(dir.path(), port);

    // NATS is down: appends still complete at once, and the local log has every record.
    let metrics = Metrics::new();
    let (audit, tasks) = Audit::open(&config, "a", metrics.clone()).unwrap();
    for n in 1..=3 {
        tokio::time::timeout(Duration::from_secs(2), audit.append(entry(n)))
            .await
            .expect("an append must not wait for NATS")
            .unwrap();
    }
    assert_eq!(lines(&config.log).len(), 3);
    testkit::wait_until("backlog of 3 reported", Duration::from_secs(10), || {
        let text = metrics.encode().unwrap();
        async move { Ok(text.contains("continuum_audit_backlog 3\n")) }
    })
    .await
    .unwrap();

    // The daemon restarts while NATS is still down; the backlog is in the log, not in memory.
    drop(audit);
    tasks.shutdown().await;
    let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
    for n in 4..=5 {
        tokio::time::timeout(Duration::from_secs(2), audit.append(entry(n))).await.unwrap().unwrap();
    }

    // NATS comes up: the whole backlog arrives, in order, once.
    let metrics = Metrics::new();
    drop(audit);
    tasks.shutdown().await;
    let (audit, tasks) = Audit::open(&config, "a", metrics.clone()).unwrap();
    let nats = NatsServer::start(port, nats_dir.path()).await;
    let messages = wait_for_stream(&nats.url(), 5).await;
    assert_stream_matches_log(&messages, &lines(&config.log));
    testkit::wait_until("backlog drained", Duration::from_secs(10), || {
        let text = metrics.encode().unwrap();
        async move {
            Ok(text.contains("continuum_audit_backlog 0\n") && text.contains("continuum_audit_published_total 5\n"))
        }
    })
    .await
    .unwrap();

    // Records written while connected follow, still without duplicates.
    audit.append(entry(6)).await.unwrap();
    let messages = wait_for_stream(&nats.url(), 6).await;
    assert_stream_matches_log(&messages, &lines(&config.log));
    drop(audit);
    tasks.shutdown().await;

    // After another restart nothing already acknowledged is sent again.
    let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
    audit.append(entry(7)).await.unwrap();
    let messages = wait_for_stream(&nats.url(), 7).await;
    assert_stream_matches_log(&messages, &lines(&config.log));
    drop(audit);
    tasks.shutdown().await;
}

#[tokio::test]
async fn a_nats_restart_while_connected_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let config = config(dir.path(), port);
    let nats = NatsServer::start(port, nats_dir.path()).await;
    let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
    for n in 1..=2 {
        audit.append(entry(n)).await.unwrap();
    }
    wait_for_stream(&nats.url(), 2).await;

    drop(nats);
    for n in 3..=5 {
        tokio::time::timeout(Duration::from_secs(2), audit.append(entry(n)))
            .await
            .expect("an append must not wait for NATS")
            .unwrap();
    }
    // Same port and store: the stream and its first two records survive the restart.
    let nats = NatsServer::start(port, nats_dir.path()).await;
    let messages = wait_for_stream(&nats.url(), 5).await;
    assert_stream_matches_log(&messages, &lines(&config.log));
    drop(audit);
    tasks.shutdown().await;
}
