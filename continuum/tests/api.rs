//! The HTTP API over a real socket: authentication, roles, the error model, metrics, events.

mod common;

use std::time::Duration;

use common::{ApiServer, INELIGIBLE_REASON, MemoryOrchestrator, OPERATOR, OWNER, VIEWER};
use continuum::api::{ErrorBody, Plan, Readiness, Status, SwitchoverAccepted, SwitchoverRecord, SwitchoverState};
use continuum::failpoint::Step;
use serde_json::json;

fn client() -> reqwest::Client {
    testkit::install_crypto_provider();
    reqwest::Client::new()
}

async fn error_of(response: reqwest::Response) -> (u16, ErrorBody) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("error body {body:?}: {e}")))
}

#[tokio::test]
async fn unauthenticated_requests_get_401_with_a_bearer_challenge() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let attempts = [
        http.post(format!("{}/v1/switchover", server.url)).json(&json!({"to": "b"})),
        http.post(format!("{}/v1/switchover", server.url)).bearer_auth("not-a-token").json(&json!({"to": "b"})),
        http.post(format!("{}/v1/switchover", server.url)).header("Authorization", OWNER).json(&json!({"to": "b"})),
        http.get(format!("{}/v1/status", server.url)),
        http.post(format!("{}/v1/plan", server.url)).json(&json!({"to": "b"})),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let (status, body) = error_of(response).await;
        assert_eq!((status, body.error.code.as_str()), (401, "unauthenticated"));
    }
    assert_eq!(orchestrator.calls(), Vec::<String>::new(), "a rejected request reached the orchestrator");
}

#[tokio::test]
async fn switchover_needs_the_owner_role() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    for token in [VIEWER, OPERATOR] {
        let response = http
            .post(format!("{}/v1/switchover", server.url))
            .bearer_auth(token)
            .json(&json!({"to": "b", "reason": "drill"}))
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(response).await;
        assert_eq!((status, body.error.code.as_str()), (403, "forbidden"));
        assert!(body.error.message.contains("owner"), "{}", body.error.message);
    }
    // A viewer may not even ask for a plan.
    let response = http
        .post(format!("{}/v1/plan", server.url))
        .bearer_auth(VIEWER)
        .json(&json!({"to": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(orchestrator.calls(), Vec::<String>::new());

    // Nothing changed: the holder is still a, at the same epoch.
    let status: Status =
        http.get(format!("{}/v1/status", server.url)).bearer_auth(VIEWER).send().await.unwrap().json().await.unwrap();
    assert_eq!((status.pairs[0].holder.as_deref(), status.pairs[0].epoch), (Some("a"), 7));
}

#[tokio::test]
async fn malformed_bodies_get_400_saying_what_is_wrong() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let url = format!("{}/v1/switchover", server.url);
    let cases = [
        (r#"{"to": "b""#, "EOF"),
        (r#"{"reason": "no target"}"#, "missing field `to`"),
        (r#"{"to": 3}"#, "invalid type"),
        (r#"{"to": "b", "force": true}"#, "unknown field `force`"),
        (r#"{"to": ""}"#, "`to` must name a region"),
    ];
    for (body, expected) in cases {
        let response = http
            .post(&url)
            .bearer_auth(OWNER)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!((status, error.error.code.as_str()), (400, "bad_request"), "{body}");
        assert!(error.error.message.contains(expected), "{body}: {}", error.error.message);
    }
    let response = http.post(&url).bearer_auth(OWNER).body(r#"{"to": "b"}"#).send().await.unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(orchestrator.calls(), Vec::<String>::new());
}

/// The documented limits (README "Limits"): a reason over 1 KiB is 400, a body over 16 KiB is
/// 413, and neither reaches the orchestrator; a reason of exactly 1 KiB is accepted.
#[tokio::test]
async fn oversized_requests_are_refused_before_anything_starts() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let url = format!("{}/v1/switchover", server.url);
    let reason = "r".repeat(continuum::api::validate::MAX_REASON_BYTES + 1);
    let response = http.post(&url).bearer_auth(OWNER).json(&json!({"to": "b", "reason": reason})).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!((status, body.error.code.as_str()), (400, "bad_request"));
    assert!(body.error.message.contains("`reason` is 1025 bytes long; at most 1024"), "{}", body.error.message);

    let to = "b".repeat(continuum::api::validate::MAX_NAME_BYTES + 1);
    let response = http.post(&url).bearer_auth(OWNER).json(&json!({"to": to})).send().await.unwrap();
    assert_eq!(response.status(), 400, "a 254-byte target");

    let huge = "h".repeat(continuum::api::validate::MAX_BODY_BYTES);
    let response = http.post(&url).bearer_auth(OWNER).json(&json!({"to": "b", "reason": huge})).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!((status, body.error.code.as_str()), (413, "payload_too_large"));
    assert_eq!(orchestrator.calls(), Vec::<String>::new(), "nothing reached the orchestrator");

    let reason = "r".repeat(continuum::api::validate::MAX_REASON_BYTES);
    let response = http.post(&url).bearer_auth(OWNER).json(&json!({"to": "b", "reason": reason})).send().await.unwrap();
    assert_eq!(response.status(), 202, "a reason at the limit is accepted");
}

#[tokio::test]
async fn switchover_to_an_ineligible_region_gets_409_with_the_reason() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let response = http
        .post(format!("{}/v1/switchover", server.url))
        .bearer_auth(OWNER)
        .json(&json!({"to": "c", "reason": "drill"}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!((status, body.error.code.as_str()), (409, "ineligible"));
    assert!(body.error.message.contains(INELIGIBLE_REASON), "{}", body.error.message);

    let response = http
        .post(format!("{}/v1/switchover", server.url))
        .bearer_auth(OWNER)
        .json(&json!({"to": "zz"}))
        .send()
        .await
        .unwrap();
    // As the daemon answers it (`api::validate`): a target outside the pair is a bad request.
    let (status, body) = error_of(response).await;
    assert_eq!((status, body.error.code.as_str()), (400, "bad_request"));
    assert!(body.error.message.contains(r#"unknown region "zz""#), "{}", body.error.message);
    let response = http
        .post(format!("{}/v1/plan", server.url))
        .bearer_auth(OPERATOR)
        .json(&json!({"to": "b", "pair": "billing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 404, "a pair the daemon does not protect");

    // Refused switchovers leave no history and no change of holder.
    let history: Vec<SwitchoverRecord> = http
        .get(format!("{}/v1/switchovers", server.url))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(history.is_empty());
    // The metrics count what was refused, by error kind.
    let metrics = http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("continuum_errors_total{kind=\"ineligible\"} 1"), "{metrics}");
}

#[tokio::test]
async fn owner_switchover_is_accepted_and_its_history_is_served() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let plan: Plan = http
        .post(format!("{}/v1/plan", server.url))
        .bearer_auth(OPERATOR)
        .json(&json!({"to": "b"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plan.blockers.is_empty());
    assert_eq!(plan.steps.iter().map(|s| s.step).collect::<Vec<_>>(), Step::ALL);

    let mut events = http.get(format!("{}/v1/events", server.url)).bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");

    let response = http
        .post(format!("{}/v1/switchover", server.url))
        .bearer_auth(OWNER)
        .json(&json!({"to": "b", "reason": "maintenance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let accepted: SwitchoverAccepted = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/switchovers/{}", accepted.id));

    let record: SwitchoverRecord =
        http.get(format!("{}{location}", server.url)).bearer_auth(VIEWER).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (record.state, record.requested_by.as_str(), record.reason.as_str()),
        (SwitchoverState::Succeeded, "olivia", "maintenance")
    );

    // The event stream carried the steps and the outcome.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: switchover") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk()).await.expect("events in time").unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: step") && seen.contains("\"step\":\"promote\""), "{seen}");
    assert!(seen.contains(&accepted.id.to_string()));

    let response =
        http.get(format!("{}/v1/switchovers/not-a-uuid", server.url)).bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 400);
    let response = http
        .get(format!("{}/v1/switchovers/{}", server.url, uuid::Uuid::new_v4()))
        .bearer_auth(VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 404);
}

#[tokio::test]
async fn health_readiness_and_metrics_need_no_token() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let http = client();
    assert_eq!(http.get(format!("{}/healthz", server.url)).send().await.unwrap().status(), 200);

    let (status, body) = error_of(http.get(format!("{}/readyz", server.url)).send().await.unwrap()).await;
    assert_eq!((status, body.error.code.as_str(), body.error.message.as_str()), (503, "not_ready", "starting"));
    server.readiness.send(Readiness::Ready).unwrap();
    assert_eq!(http.get(format!("{}/readyz", server.url)).send().await.unwrap().status(), 200);

    server.metrics.observe_lease("app", Some("a"), 7, Some(Duration::from_millis(8500)));
    server.metrics.observe_lease("app", Some("b"), 8, None);
    server.metrics.observe_replication("app", "a", Some(4096), None, true);
    server.metrics.observe_switchover("app", "planned", "succeeded", Duration::from_secs(3));
    server.metrics.observe_renew("app", Duration::from_millis(3));
    server.metrics.set_eligible("app", "b", true);
    server.metrics.observe_step(Step::Promote, "done", Duration::from_millis(250));
    server.metrics.count_fence("app", "lease_deadline");
    server.metrics.observe_pdm_commit("ok", Duration::from_millis(20));
    let response = http.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let text = response.text().await.unwrap();
    for expected in [
        "continuum_lease_holder{pair=\"app\",region=\"b\"} 1",
        "continuum_lease_epoch{pair=\"app\"} 8",
        "continuum_lease_remaining_validity_seconds{pair=\"app\"} NaN",
        "continuum_replication_lag_bytes{pair=\"app\",region=\"a\"} 4096.0",
        "continuum_replication_lag_seconds{pair=\"app\",region=\"a\"} NaN",
        "continuum_replication_sync{pair=\"app\",region=\"a\"} 1",
        "continuum_switchovers_total{pair=\"app\",kind=\"planned\",outcome=\"succeeded\"} 1",
        "continuum_switchover_duration_seconds_count{pair=\"app\",kind=\"planned\",outcome=\"succeeded\"} 1",
        "continuum_lease_renew_latency_seconds_count{pair=\"app\"} 1",
        "continuum_failover_eligible{pair=\"app\",region=\"b\"} 1",
        "continuum_switchover_step_duration_seconds_count{step=\"promote\",outcome=\"done\"} 1",
        "continuum_fence_events_total{pair=\"app\",reason=\"lease_deadline\"} 1",
        "continuum_pdm_commit_latency_seconds_count{outcome=\"ok\"} 1",
        "# EOF",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The old holder's series is gone, not left at 1.
    assert!(!text.contains("continuum_lease_holder{pair=\"app\",region=\"a\"}"), "{text}");

    let (status, body) = error_of(http.get(format!("{}/v2/nothing", server.url)).send().await.unwrap()).await;
    assert_eq!((status, body.error.code.as_str()), (404, "not_found"));
    let response = http.delete(format!("{}/v1/switchover", server.url)).bearer_auth(OWNER).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn abort_needs_the_owner_and_says_unknown_finished_or_malformed() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let http = client();
    let abort =
        |id: &str, token: &str| http.post(format!("{}/v1/switchovers/{id}/abort", server.url)).bearer_auth(token);
    let unknown = uuid::Uuid::new_v4().to_string();
    for token in [VIEWER, OPERATOR] {
        let (status, body) = error_of(abort(&unknown, token).send().await.unwrap()).await;
        assert_eq!((status, body.error.code.as_str()), (403, "forbidden"), "{token}");
    }
    let (status, _) =
        error_of(http.post(format!("{}/v1/switchovers/{unknown}/abort", server.url)).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(orchestrator.calls(), Vec::<String>::new(), "a rejected abort reached the orchestrator");

    let (status, body) = error_of(abort("not-a-uuid", OWNER).send().await.unwrap()).await;
    assert_eq!((status, body.error.code.as_str()), (400, "bad_request"));
    let (status, body) = error_of(abort(&unknown, OWNER).send().await.unwrap()).await;
    assert_eq!((status, body.error.code.as_str()), (404, "not_found"));
    // The fake finishes every switchover at once: aborting one afterwards is a conflict.
    let accepted: SwitchoverAccepted = http
        .post(format!("{}/v1/switchover", server.url))
        .bearer_auth(OWNER)
        .json(&json!({"to": "b", "reason": "drill"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, body) = error_of(abort(&accepted.id.to_string(), OWNER).send().await.unwrap()).await;
    assert_eq!((status, body.error.code.as_str()), (409, "conflict"));
    assert!(body.error.message.contains("already finished (succeeded)"), "{}", body.error.message);
    assert_eq!(orchestrator.calls().last().unwrap(), &format!("abort:{}:olivia", accepted.id));
}
