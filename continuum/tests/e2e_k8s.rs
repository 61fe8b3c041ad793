//! End to end with Kubernetes: the reconciler (as a service account bound to exactly its RBAC
//! rules) mirrors a real pair's daemons into the `Continuum` status, runs a switchover requested
//! with a `ContinuumSwitchover` through the daemons' API — whose drain step moves a Gateway API
//! `HTTPRoute` from a to b, as the daemons' own service account — and is never on the failover
//! path: with the API server stopped the pair fails over all the same, and the status catches up
//! once the API server is back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{Cluster, Options, serves};
use common::{OWNER, VIEWER};
use continuum::api::SwitchoverKind;
use continuum::config::TrafficConfig;
use continuum::record::{Step, SwitchoverRecord};
use continuum_k8s::crd::Continuum;
use continuum_k8s::metrics::Metrics;
use continuum_k8s::reconciler::{self, Context};
use continuum_k8s::switchover::{ContinuumSwitchover, RequestPhase};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::kube::KubeApiServer;
use testkit::wait::wait_for;

const NS: &str = "orders";

fn routes(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(client, NS, &ApiResource::from_gvk_with_plural(&gvk, "httproutes"))
}

/// The route's (a, b) backend weights.
async fn weights(api: &Api<DynamicObject>) -> anyhow::Result<(i64, i64)> {
    let route = api.get("orders").await?;
    let refs = route.data["spec"]["rules"][0]["backendRefs"].as_array().cloned().unwrap_or_default();
    let of = |name: &str| refs.iter().find(|b| b["name"] == name).and_then(|b| b["weight"].as_i64()).unwrap_or(-1);
    Ok((of("orders-a"), of("orders-b")))
}

/// When `step` ended, on the performer's clock.
fn ended(record: &SwitchoverRecord, step: Step) -> std::time::SystemTime {
    let s = record.step(step).unwrap();
    s.started_at.unwrap() + Duration::from_millis(s.duration_ms.unwrap())
}

async fn wait_status(
    api: &Api<Continuum>,
    what: &str,
    check: impl Fn(&continuum_k8s::crd::ContinuumStatus) -> bool,
) -> continuum_k8s::crd::ContinuumStatus {
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        let check = &check;
        async move { Ok(api.get("orders").await?.status.filter(|s| check(s))) }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_mirrors_switches_over_and_is_not_on_the_failover_path() {
    if !KubeApiServer::available() {
        return;
    }
    let mut kube = KubeApiServer::start().await.unwrap();
    kube.install_crds(&continuum_k8s::crds_yaml()).await.unwrap();
    kube.install_crds(&testkit::kube::upstream_crds("gateway-api-standard.yaml").unwrap()).await.unwrap();
    let sa = kube.service_account_client(NS, "reconciler", continuum_k8s::rbac::reconciler_rules()).await.unwrap();
    // The application's route: all traffic to a's backend.
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "orders", "namespace": NS },
        "spec": { "parentRefs": [{ "name": "edge" }], "rules": [{ "backendRefs": [
            { "name": "orders-a", "port": 80, "weight": 100 }, { "name": "orders-b", "port": 80, "weight": 0 } ] }] }
    });
    let route_api = routes(kube.client());
    route_api.patch("orders", &PatchParams::apply("test"), &Patch::Apply(&route)).await.unwrap();
    // The daemons reach it as the daemon's service account, bound to exactly its rules.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("daemon.kubeconfig");
    kube.service_account_kubeconfig(NS, "continuum-daemon", continuum_k8s::rbac::daemon_rules(), &kubeconfig)
        .await
        .unwrap();
    let traffic = TrafficConfig {
        namespace: NS.into(),
        http_route: "orders".into(),
        backends: BTreeMap::from([("a".into(), "orders-a".into()), ("b".into(), "orders-b".into())]),
        drain_window: Duration::from_secs(1),
        kubeconfig: Some(kubeconfig),
    };
    let mut c = Cluster::start(Options { traffic: Some(traffic), ..Options::default() }).await.unwrap();
    let before = c.status("a").await.unwrap();

    let secret = Secret {
        metadata: ObjectMeta { name: Some("continuum-api".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("viewer".to_string(), ByteString(VIEWER.as_bytes().to_vec())),
            ("owner".to_string(), ByteString(OWNER.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(kube.client(), NS).create(&PostParams::default(), &secret).await.unwrap();
    let region = |name: &str, id: u64| {
        let node = c.node(name);
        json!({ "name": name, "nodeId": id, "apiEndpoint": c.daemons[name].api, "raftAddress": format!("{name}.test:7100"),
                "tlsSecret": format!("tls-{name}"),
                "postgres": { "host": node.host, "port": node.port, "dataDir": node.data_dir } })
    };
    let ctm = json!({
        "apiVersion": "dr.openova.io/v1", "kind": "Continuum", "metadata": { "name": "orders", "namespace": NS },
        "spec": {
            "application": "orders", "pair": before.name,
            "regions": [region("a", 1), region("b", 2)],
            "witness": { "name": "w", "nodeId": 3, "raftAddress": "w.test:7100", "tlsSecret": "tls-w" },
            "dns": { "record": "db" },
            "pdm": { "url": "http://127.0.0.1:1", "zone": "continuum.test", "tokenSecret": { "name": "pdm", "key": "token" } },
            "apiTokens": {
                "tokensFile": { "name": "continuum-tokens", "key": "tokens.toml" },
                "viewer": { "name": "continuum-api", "key": "viewer" },
                "owner": { "name": "continuum-api", "key": "owner" }
            }
        }
    });
    let continuums: Api<Continuum> = Api::namespaced(kube.client(), NS);
    continuums.patch("orders", &PatchParams::apply("test"), &Patch::Apply(&ctm)).await.unwrap();

    let ctx = Context::new(sa, Metrics::new(), Duration::from_millis(300));
    let reconciler = tokio::spawn(async move { reconciler::run(ctx, Some(NS), std::future::pending()).await });
    wait_status(&continuums, "a holds the lease in the status", |s| {
        s.holder.as_deref() == Some("a")
            && s.epoch == Some(before.epoch)
            && s.regions.iter().all(|r| r.daemon_reachable)
    })
    .await;

    // Every weight the route goes through during the switchover, in order.
    let sampler = {
        let api = route_api.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            loop {
                if let Ok(w) = weights(&api).await
                    && seen.last() != Some(&w)
                {
                    seen.push(w);
                    if w == (0, 100) {
                        return seen;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // A Kubernetes-native switchover, run by the daemons with the owner token.
    let switchovers: Api<ContinuumSwitchover> = Api::namespaced(kube.client(), NS);
    let sw = json!({ "apiVersion": "dr.openova.io/v1", "kind": "ContinuumSwitchover", "metadata": { "name": "to-b" },
                     "spec": { "continuum": "orders", "to": "b", "reason": "drill" } });
    switchovers.patch("to-b", &PatchParams::apply("test"), &Patch::Apply(&sw)).await.unwrap();
    let done = wait_for("the switchover request succeeds", Duration::from_secs(90), || {
        let api = switchovers.clone();
        async move {
            let s = api.get("to-b").await?.status.unwrap_or_default();
            assert!(!s.phase.is_some_and(|p| p.is_final() && p != RequestPhase::Succeeded), "{s:?}");
            Ok((s.phase == Some(RequestPhase::Succeeded)).then_some(s))
        }
    })
    .await
    .unwrap();
    assert!(done.steps.iter().any(|s| s.step == "promote" && s.state == "done"), "{:?}", done.steps);
    let record = c.switchover_record("b", done.id.as_deref().unwrap()).await.unwrap();
    assert!(record.reason.contains("ContinuumSwitchover orders/to-b"), "{}", record.reason);

    // The drain ran before the fence, lowering a's weight step by step while b got nothing;
    // after the DNS step b got a's old weight.
    let seen =
        tokio::time::timeout(Duration::from_secs(10), sampler).await.expect("the route reached (0, 100)").unwrap();
    assert_eq!(seen.first(), Some(&(100, 0)), "{seen:?}");
    let drained = seen.iter().position(|w| *w == (0, 0)).unwrap_or_else(|| panic!("a never drained: {seen:?}"));
    assert!(drained >= 2, "a drain in steps, not one jump: {seen:?}");
    assert!(seen[..=drained].windows(2).all(|p| p[1].0 < p[0].0 && p[1].1 == 0), "{seen:?}");
    assert_eq!(weights(&route_api).await.unwrap(), (0, 100));
    assert_eq!(record.step(Step::Drain).unwrap().state, continuum::record::StepState::Done);
    assert!(ended(&record, Step::Drain) <= record.step(Step::Fence).unwrap().started_at.unwrap());
    let routed = route_api.get("orders").await.unwrap();
    let tag = routed.metadata.annotations.unwrap_or_default().get(continuum_traffic::EPOCH_ANNOTATION).cloned();
    assert_eq!(tag, record.epoch_after.map(|e| e.to_string()), "restored under the new epoch");
    let after_switch =
        wait_status(&continuums, "b holds the lease in the status", |s| s.holder.as_deref() == Some("b")).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(kube.client(), NS);
    let reasons: Vec<String> =
        events.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for reason in ["Accepted", "Step", "Finished", "LeaseChanged"] {
        assert!(reasons.iter().any(|r| r == reason), "no {reason} Event in {reasons:?}");
    }

    // Kubernetes goes away; region b (now primary) is lost; a takes over without it.
    kube.stop();
    let epoch = after_switch.epoch.unwrap();
    c.daemon("b").kill9();
    c.node("b").kill9().unwrap();
    let failed_over = c
        .wait_pair_on(&["a"], "a took over with the API server down", Duration::from_secs(30), |p| {
            serves(p, "a", epoch)
        })
        .await
        .unwrap();

    kube.restart().await.unwrap();
    let caught_up = wait_status(&continuums, "the status catches up with the failover", |s| {
        s.holder.as_deref() == Some("a") && s.epoch >= Some(failed_over.epoch)
    })
    .await;
    let last = caught_up.last_switchover.expect("the failover is in the status");
    assert_eq!((last.kind.as_str(), last.from.as_str(), last.to.as_str()), ("failover", "b", "a"));
    assert_eq!(failed_over.last_switchover.map(|l| l.kind), Some(SwitchoverKind::Failover));
    assert!(!caught_up.regions.iter().find(|r| r.name == "b").unwrap().daemon_reachable);
    // An automatic failover leaves the route alone (nothing on that path waits on Kubernetes).
    assert_eq!(weights(&route_api).await.unwrap(), (0, 100));
    reconciler.abort();
}
