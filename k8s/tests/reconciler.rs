//! The reconciler against the real API server, as a service account bound to exactly the rules
//! in charts/continuum/files/rbac/reconciler.yaml, with no daemon reachable: it renders the
//! ConfigMaps (secrets named, not copied), says in the status that no daemon answers, counts the
//! typed error, and is refused anything outside its rules. (With real daemons: continuum's
//! e2e_k8s test.)

use std::collections::BTreeMap;
use std::time::Duration;

use continuum_k8s::crd::{Continuum, Phase};
use continuum_k8s::metrics::Metrics;
use continuum_k8s::reconciler::{self, Context};
use continuum_k8s::render::{CONFIG_KEY, SECRETS_ANNOTATION};
use continuum_k8s::switchover::{ContinuumSwitchover, RequestPhase};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::kube::KubeApiServer;
use testkit::wait::wait_for;

const NS: &str = "rec";

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_renders_config_reports_silent_daemons_and_stays_within_its_rules() {
    if !KubeApiServer::available() {
        return;
    }
    let kube = KubeApiServer::start().await.unwrap();
    kube.install_crds(&continuum_k8s::crds_yaml()).await.unwrap();
    let sa = kube.service_account_client(NS, "reconciler", continuum_k8s::rbac::reconciler_rules()).await.unwrap();
    let secret = Secret {
        metadata: ObjectMeta { name: Some("continuum-api".into()), ..Default::default() },
        data: Some(BTreeMap::from([
            ("viewer".to_string(), ByteString(b"viewer-secret-value-0123".to_vec())),
            ("owner".to_string(), ByteString(b"owner-secret-value-0123".to_vec())),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(kube.client(), NS).create(&PostParams::default(), &secret).await.unwrap();
    let mut ctm = common::valid_continuum("orders");
    // Nothing listens on ports 1 and 2 of loopback: every daemon call fails fast.
    ctm["metadata"]["namespace"] = json!(NS);
    let continuums: Api<Continuum> = Api::namespaced(kube.client(), NS);
    continuums.patch("orders", &PatchParams::apply("test"), &Patch::Apply(&ctm)).await.unwrap();

    let metrics = Metrics::new();
    let ctx = Context::new(sa.clone(), metrics.clone(), Duration::from_millis(500));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        reconciler::run(ctx, Some(NS), async move {
            let _ = stopped.await;
        })
        .await
    });

    let config_maps: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let cm = wait_for("region a's ConfigMap", Duration::from_secs(30), || {
        let api = config_maps.clone();
        async move { Ok(api.get_opt("orders-a").await?) }
    })
    .await
    .unwrap();
    let text = &cm.data.as_ref().unwrap()[CONFIG_KEY];
    let parsed = continuum::config::Config::parse(text).unwrap();
    assert_eq!(parsed.region, "a");
    assert!(!text.contains("viewer-secret-value"), "no secret value in a ConfigMap");
    assert_eq!(cm.metadata.annotations.as_ref().unwrap()[SECRETS_ANNOTATION], "continuum-tokens,pdm,tls-a");
    // The reconciler writes the regions' ConfigMaps one after another: wait for each.
    for name in ["orders-b", "orders-w"] {
        wait_for(&format!("{name}'s ConfigMap"), Duration::from_secs(30), || {
            let api = config_maps.clone();
            async move { Ok(api.get_opt(name).await?) }
        })
        .await
        .unwrap();
    }

    let status = wait_for("status says no daemon answered", Duration::from_secs(30), || {
        let api = continuums.clone();
        async move {
            let s = api.get("orders").await?.status;
            Ok(s.filter(|s| s.phase == Some(Phase::Unknown)))
        }
    })
    .await
    .unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "NoDaemonAnswered"));
    let status_manager = continuums.get("orders").await.unwrap().metadata.managed_fields.unwrap_or_default();
    assert!(status_manager.iter().any(|m| m.manager.as_deref() == Some("continuum-reconciler")
        && m.subresource.as_deref() == Some("status")));
    wait_for("the typed error is counted", Duration::from_secs(10), || {
        let m = metrics.clone();
        async move { Ok((m.errors("Continuum", "no_daemon") >= 2).then_some(())) }
    })
    .await
    .unwrap();
    assert!(metrics.encode().contains(r#"continuum_reconcile_errors_total{kind="Continuum",error="no_daemon"}"#));

    // A request for a Continuum that does not exist is rejected, in its status.
    let switchovers: Api<ContinuumSwitchover> = Api::namespaced(kube.client(), NS);
    let sw = json!({ "apiVersion": "dr.openova.io/v1", "kind": "ContinuumSwitchover", "metadata": { "name": "typo" },
                     "spec": { "continuum": "ordres", "to": "b" } });
    switchovers.patch("typo", &PatchParams::apply("test"), &Patch::Apply(&sw)).await.unwrap();
    let s = wait_for("the request is rejected", Duration::from_secs(30), || {
        let api = switchovers.clone();
        async move { Ok(api.get("typo").await?.status.filter(|s| s.phase == Some(RequestPhase::Rejected))) }
    })
    .await
    .unwrap();
    assert!(s.message.unwrap().contains("no Continuum named ordres"));

    // Outside its rules: refused by the API server.
    let forbidden = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(ref s)) if s.code == 403);
    assert!(forbidden(
        Api::<Continuum>::namespaced(sa.clone(), NS).delete("orders", &Default::default()).await.map(|_| ())
    ));
    assert!(forbidden(Api::<Secret>::namespaced(sa.clone(), NS).list(&Default::default()).await.map(|_| ())));
    assert!(forbidden(
        Api::<ConfigMap>::namespaced(sa.clone(), NS).delete("orders-a", &Default::default()).await.map(|_| ())
    ));
    assert!(forbidden(
        Api::<Continuum>::namespaced(sa.clone(), NS)
            .patch("orders", &PatchParams::apply("x"), &Patch::Apply(&ctm))
            .await
            .map(|_| ())
    ));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), run).await.unwrap().unwrap();
}
