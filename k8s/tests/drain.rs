//! Gateway API traffic drain against the real API server with Gateway API's own CRDs, run as a
//! service account bound to exactly the daemon's RBAC rules.

use std::collections::BTreeMap;
use std::time::Duration;

use continuum_k8s::drain::{self, EPOCH_ANNOTATION, Error, Outcome, RouteTarget};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use testkit::kube::KubeApiServer;

const NS: &str = "traffic";

fn routes(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(client, NS, &ApiResource::from_gvk_with_plural(&gvk, "httproutes"))
}

async fn setup() -> (KubeApiServer, kube::Client, RouteTarget) {
    let kube = KubeApiServer::start().await.unwrap();
    kube.install_crds(&testkit::kube::upstream_crds("gateway-api-standard.yaml").unwrap()).await.unwrap();
    let daemon =
        kube.service_account_client(NS, "continuum-daemon", continuum_k8s::rbac::daemon_rules()).await.unwrap();
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "app", "namespace": NS },
        "spec": {
            "parentRefs": [{ "name": "edge" }],
            "rules": [{ "backendRefs": [
                { "name": "app-a", "port": 80, "weight": 100 },
                { "name": "app-b", "port": 80, "weight": 0 }
            ] }]
        }
    });
    routes(kube.client()).patch("app", &PatchParams::apply("test"), &Patch::Apply(&route)).await.unwrap();
    let target = RouteTarget {
        namespace: NS.into(),
        route: Some("app".into()),
        backends: BTreeMap::from([("a".into(), "app-a".into()), ("b".into(), "app-b".into())]),
    };
    (kube, daemon, target)
}

async fn weights(kube: &KubeApiServer) -> (Vec<i64>, Option<String>) {
    let r = routes(kube.client()).get("app").await.unwrap();
    let w = r.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_i64().unwrap())
        .collect();
    (w, r.metadata.annotations.unwrap_or_default().get(EPOCH_ANNOTATION).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lowers_the_old_region_in_order_restore_moves_it_and_a_stale_epoch_is_refused() {
    if !KubeApiServer::available() {
        return;
    }
    let (kube, daemon, target) = setup().await;
    let mut seen = Vec::new();
    let out = drain::drain(&daemon, &target, "a", Duration::from_millis(500), 7, |w| seen.push(w)).await.unwrap();
    assert_eq!(seen, vec![80, 60, 40, 20, 0], "weights step down in order");
    assert!(
        matches!(out, Outcome::Done(ref w) if w == &[("app-a".to_string(), 0), ("app-b".to_string(), 0)]),
        "{out:?}"
    );
    assert_eq!(weights(&kube).await, (vec![0, 0], Some("7".into())));

    // Idempotent: draining again at the same epoch changes nothing.
    drain::drain(&daemon, &target, "a", Duration::from_millis(500), 7, |_| panic!("no step")).await.unwrap();

    let out = drain::restore(&daemon, &target, "b", 7).await.unwrap();
    assert!(
        matches!(out, Outcome::Done(ref w) if w == &[("app-a".to_string(), 0), ("app-b".to_string(), 100)]),
        "{out:?}"
    );

    // A daemon still at epoch 6 cannot undo the newer switchover, and the route is untouched.
    for stale in [
        drain::restore(&daemon, &target, "a", 6).await,
        drain::drain(&daemon, &target, "b", Duration::ZERO, 6, |_| {}).await,
    ] {
        assert!(matches!(stale, Err(Error::StaleEpoch { epoch: 6, current: 7, .. })), "{stale:?}");
    }
    assert_eq!(weights(&kube).await, (vec![0, 100], Some("7".into())));

    // No route configured: skipped, with the reason.
    let none = RouteTarget { route: None, ..target.clone() };
    let out = drain::drain(&daemon, &none, "a", Duration::ZERO, 8, |_| {}).await.unwrap();
    assert!(matches!(out, Outcome::Skipped(ref why) if why.contains("no HTTPRoute")), "{out:?}");

    // The daemon's rules allow exactly this: deleting the route or reading Secrets is refused.
    let err = routes(daemon.clone()).delete("app", &Default::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(daemon, NS);
    let err = secrets.list(&Default::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_short_by_a_crash_resumes_where_the_route_is() {
    if !KubeApiServer::available() {
        return;
    }
    let (kube, daemon, target) = setup().await;
    // The "crash": the drain task is dropped right after its second weight change.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let first = {
        let (daemon, target) = (daemon.clone(), target.clone());
        tokio::spawn(async move {
            drain::drain(&daemon, &target, "a", Duration::from_secs(50), 9, move |w| {
                let _ = tx.send(w);
            })
            .await
        })
    };
    assert_eq!(rx.recv().await, Some(80));
    assert_eq!(rx.recv().await, Some(60));
    first.abort();
    let _ = first.await;
    assert_eq!(weights(&kube).await, (vec![60, 0], Some("9".into())));

    // The restarted daemon runs the step again with the same epoch: it continues from 60 in the
    // same steps (the starting weight is recorded on the route) and ends at 0.
    let mut seen = Vec::new();
    drain::drain(&daemon, &target, "a", Duration::from_millis(300), 9, |w| seen.push(w)).await.unwrap();
    assert_eq!(seen, vec![40, 20, 0]);
    let out = drain::restore(&daemon, &target, "b", 9).await.unwrap();
    assert!(matches!(out, Outcome::Done(ref w) if w[1] == ("app-b".to_string(), 100)), "{out:?}");
}
