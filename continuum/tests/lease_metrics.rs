//! Lease renewals reach `/metrics` through the same recorder the orchestrator attaches to its
//! lease handle, without a whole deployment: the store is an in-memory one that says yes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{ApiServer, MemoryOrchestrator};
use lease::{HandleConfig, LeaseApi, LeaseError, LeaseHandle, LeaseRecord, LeaseRequest};

/// Grants and renews every request; counts renewals.
#[derive(Default)]
struct Granting {
    renewals: AtomicU64,
}

#[async_trait::async_trait]
impl LeaseApi for Granting {
    async fn submit(&self, req: LeaseRequest) -> Result<LeaseRecord, LeaseError> {
        if matches!(req, LeaseRequest::Renew { .. }) {
            self.renewals.fetch_add(1, Ordering::SeqCst);
        }
        Ok(LeaseRecord {
            pair: "app".into(),
            holder: Some("a".into()),
            epoch: 3,
            duration_ms: 2000,
            ..Default::default()
        })
    }

    async fn read(&self, _pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        Ok(None)
    }
}

/// `continuum_lease_renew_latency_seconds_count{pair="app"}` in an exposition, if present.
fn renew_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("continuum_lease_renew_latency_seconds_count{pair=\"app\"} "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn renewals_show_up_as_renew_latency() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let store = Arc::new(Granting::default());
    let cfg = HandleConfig {
        duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(100),
        drift_margin: Duration::from_millis(200),
        fence_lead: Duration::from_millis(400),
        call_timeout: Duration::from_millis(500),
    };
    let handle = LeaseHandle::acquire(store.clone(), "app", "a", cfg, lease::boot_clock()).await.unwrap();
    let recorder = server.metrics.record_renewals("app", handle.renewals());

    let http = reqwest::Client::new();
    let url = format!("{}/metrics", server.url);
    let count = testkit::wait_for("two renewals recorded", Duration::from_secs(10), || {
        let request = http.get(&url).send();
        async move {
            let text = request.await?.text().await?;
            Ok(renew_count(&text).filter(|n| *n >= 2))
        }
    })
    .await
    .unwrap();
    assert!(count <= store.renewals.load(Ordering::SeqCst), "more samples than renewals");
    let text = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE continuum_lease_renew_latency_seconds histogram"), "{text}");

    // The recorder ends with the handle.
    handle.abandon().await;
    tokio::time::timeout(Duration::from_secs(5), recorder).await.expect("recorder stops").unwrap();
}
