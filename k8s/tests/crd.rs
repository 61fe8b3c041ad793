//! The CRDs: the committed copy equals the generated one, the schema is structural, and the real
//! API server accepts a valid `Continuum` and refuses an unknown field or a bad value.

use continuum_k8s::crd::Continuum;
use continuum_k8s::switchover::ContinuumSwitchover;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use testkit::kube::KubeApiServer;

mod common;
use common::valid_continuum;

const COMMITTED: &str = include_str!("../../charts/continuum/crds/continuum.yaml");

#[test]
fn the_committed_crd_equals_the_generated_one() {
    let generated = continuum_k8s::crds_yaml();
    if std::env::var_os("CONTINUUM_WRITE_CRD").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/continuum/crds/continuum.yaml"), &generated)
            .unwrap();
    }
    assert!(
        generated == COMMITTED,
        "charts/continuum/crds/continuum.yaml is stale: regenerate it with \
         `cargo run -p continuum-k8s --bin continuum-reconciler -- crd > charts/continuum/crds/continuum.yaml`"
    );
}

#[test]
fn the_schema_is_structural_and_keeps_no_unknown_fields() {
    assert!(!COMMITTED.contains("x-kubernetes-preserve-unknown-fields"));
    assert!(!COMMITTED.contains("additionalProperties: true"));
    // Every object level declares its properties (no free-form objects in spec or status)
    // except the map of region → backendRef name, which is typed as strings.
    let docs: Vec<serde_json::Value> =
        serde_yaml::Deserializer::from_str(COMMITTED).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    assert_eq!(docs.len(), 2);
    fn walk(path: &str, v: &serde_json::Value, bad: &mut Vec<String>) {
        if v.get("type") == Some(&json!("object"))
            && v.get("properties").is_none()
            && v.get("additionalProperties").is_none()
        {
            bad.push(path.to_string());
        }
        for key in ["properties"] {
            if let Some(props) = v.get(key).and_then(|p| p.as_object()) {
                for (k, child) in props {
                    walk(&format!("{path}.{k}"), child, bad);
                }
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = v.get(key).filter(|c| c.is_object()) {
                walk(&format!("{path}[]"), child, bad);
            }
        }
    }
    for doc in &docs {
        let schema = &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut bad = Vec::new();
        walk("", &schema["properties"]["spec"], &mut bad);
        walk("", &schema["properties"]["status"], &mut bad);
        assert!(bad.is_empty(), "free-form objects in {}: {bad:?}", doc["metadata"]["name"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_a_valid_continuum_and_refuses_unknown_fields() {
    if !KubeApiServer::available() {
        return;
    }
    let kube = KubeApiServer::start().await.unwrap();
    kube.install_crds(COMMITTED).await.unwrap();
    kube.namespace("crd").await.unwrap();
    let api: Api<Continuum> = Api::namespaced(kube.client(), "crd");
    let obj: Continuum = serde_json::from_value(valid_continuum("orders")).unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.spec, obj.spec, "the server keeps the spec as sent");
    assert_eq!(created.spec.lease.duration, "10s", "defaults are filled in");

    // An unknown field: refused with strict field validation (kubectl's default) ...
    let mut bad = valid_continuum("unknown-field");
    bad["spec"]["regions"][0]["colour"] = json!("blue");
    let strict =
        PatchParams { field_validation: Some(kube::api::ValidationDirective::Strict), ..PatchParams::apply("test") };
    let err = api.patch("unknown-field", &strict, &Patch::Apply(&bad)).await.unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    assert!(api.get_opt("unknown-field").await.unwrap().is_none(), "a refused object is not stored");
    // ... and by server-side apply whatever the client asks for; (a plain create would prune
    // it: the schema is structural).
    let err = api.patch("unknown-field", &PatchParams::apply("test"), &Patch::Apply(&bad)).await.unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");

    // A value outside the schema: refused whatever the client asks for.
    for (field, value) in [("durability", json!("sometimes")), ("regions", json!([]))] {
        let mut bad = valid_continuum("bad-value");
        bad["spec"][field] = value;
        let err = api.patch("bad-value", &PatchParams::apply("test"), &Patch::Apply(&bad)).await.unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }

    // A switchover request's spec cannot be edited.
    let sw_api: Api<ContinuumSwitchover> = Api::namespaced(kube.client(), "crd");
    let sw = json!({ "apiVersion": "dr.openova.io/v1", "kind": "ContinuumSwitchover", "metadata": { "name": "to-b" },
                     "spec": { "continuum": "orders", "to": "b", "reason": "drill" } });
    sw_api.patch("to-b", &PatchParams::apply("test"), &Patch::Apply(&sw)).await.unwrap();
    let mut edited = sw.clone();
    edited["spec"]["to"] = json!("a");
    let err = sw_api.patch("to-b", &PatchParams::apply("test"), &Patch::Apply(&edited)).await.unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_crds_install() {
    if !KubeApiServer::available() {
        return;
    }
    let kube = KubeApiServer::start().await.unwrap();
    kube.install_crds(&testkit::kube::upstream_crds("gateway-api-standard.yaml").unwrap()).await.unwrap();
    kube.install_crds(&testkit::kube::upstream_crds("cnpg-cluster.yaml").unwrap()).await.unwrap();
}
