//! A typed, minimal view of a CloudNativePG `Cluster` (`postgresql.cnpg.io/v1`): only the fields
//! the driver reads or writes, everything else is left alone. Writes are JSON merge patches of
//! `spec` under the field manager [`FIELD_MANAGER`] (a merge patch never creates a missing
//! object, and `null` removes a field, which the token handling needs).

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::config::KubeAccess;
use crate::error::{Error, Result};

/// Who the API server records as the writer of the fields the driver sets.
pub const FIELD_MANAGER: &str = "continuum";

/// CNPG's phase for "stop, a human must look" (`PhaseUnrecoverable` in `api/v1/cluster_types.go`);
/// a promotion token that does not match the instance ends there.
pub const PHASE_UNRECOVERABLE: &str = "Cluster is unrecoverable and needs manual intervention";

/// `spec.replica` (`ReplicaClusterConfiguration`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    #[serde(rename = "self")]
    pub self_name: Option<String>,
    pub primary: Option<String>,
    pub source: Option<String>,
    /// Legacy standalone replica switch; wins over `primary` when set (CNPG's `IsReplica`).
    pub enabled: Option<bool>,
    pub promotion_token: Option<String>,
}

/// `spec.postgresql.synchronous`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousSpec {
    pub method: Option<String>,
    pub number: Option<i64>,
    #[serde(default)]
    pub standby_names_pre: Vec<String>,
    pub max_standby_names_from_cluster: Option<i64>,
    pub data_durability: Option<String>,
}

/// One `status.conditions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchStatus {
    #[serde(default)]
    pub in_progress: bool,
}

/// The `status` fields the driver reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub phase: Option<String>,
    pub phase_reason: Option<String>,
    pub current_primary: Option<String>,
    pub demotion_token: Option<String>,
    pub last_promotion_token: Option<String>,
    #[serde(rename = "timelineID")]
    pub timeline_id: Option<i64>,
    #[serde(rename = "systemID")]
    pub system_id: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub switch_replica_cluster_status: Option<SwitchStatus>,
}

/// What the driver knows of its `Cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub name: String,
    pub replica: ReplicaSpec,
    pub synchronous: Option<SynchronousSpec>,
    pub status: ClusterStatus,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    replica: Option<ReplicaSpec>,
    postgresql: Option<RawPostgresql>,
}

#[derive(Deserialize, Default)]
struct RawPostgresql {
    synchronous: Option<SynchronousSpec>,
}

impl ClusterView {
    fn from_object(obj: DynamicObject) -> std::result::Result<ClusterView, serde_json::Error> {
        let field = |key: &str| obj.data.get(key).cloned().unwrap_or(Value::Null);
        let spec: Option<RawSpec> = serde_json::from_value(field("spec"))?;
        let status: Option<ClusterStatus> = serde_json::from_value(field("status"))?;
        let spec = spec.unwrap_or_default();
        Ok(ClusterView {
            name: obj.metadata.name.unwrap_or_default(),
            replica: spec.replica.unwrap_or_default(),
            synchronous: spec.postgresql.and_then(|p| p.synchronous),
            status: status.unwrap_or_default(),
        })
    }

    /// Whether the spec makes `me` the topology's primary (CNPG's `IsReplica`, negated).
    pub fn leads(&self, me: &str) -> bool {
        match self.replica.enabled {
            Some(enabled) => !enabled,
            None => self.replica.primary.as_deref() == Some(me),
        }
    }

    /// A non-empty token, if published.
    pub fn demotion_token(&self) -> Option<&str> {
        self.status.demotion_token.as_deref().filter(|t| !t.is_empty())
    }

    /// CNPG says a human must intervene.
    pub fn unrecoverable(&self) -> bool {
        self.status.phase.as_deref() == Some(PHASE_UNRECOVERABLE)
    }
}

/// This region's `Cluster` through the API server; the client is built on first use.
pub(crate) struct ClusterApi {
    node: String,
    name: String,
    namespace: String,
    access: KubeAccess,
    client: OnceCell<kube::Client>,
    timeout: Duration,
}

impl ClusterApi {
    pub fn new(node: &str, name: &str, namespace: &str, access: KubeAccess, timeout: Duration) -> ClusterApi {
        ClusterApi {
            node: node.into(),
            name: name.into(),
            namespace: namespace.into(),
            access,
            client: OnceCell::new(),
            timeout,
        }
    }

    pub fn with_client(self, client: kube::Client) -> ClusterApi {
        ClusterApi { client: OnceCell::new_with(Some(client)), ..self }
    }

    async fn api(&self) -> Result<Api<DynamicObject>> {
        let client = self.client.get_or_try_init(|| client(&self.node, &self.access)).await?;
        let gvk = GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "clusters");
        Ok(Api::namespaced_with(client.clone(), &self.namespace, &resource))
    }

    async fn call<T>(&self, action: &str, fut: impl Future<Output = std::result::Result<T, kube::Error>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => {
                Err(Error::Kube { node: self.node.clone(), action: action.into(), source: Box::new(source) })
            }
            Err(_) => Err(Error::Timeout { node: self.node.clone(), what: "Kubernetes API call", after: self.timeout }),
        }
    }

    fn spec_error(&self, detail: String) -> Error {
        Error::ClusterSpec { node: self.node.clone(), cluster: self.name.clone(), detail }
    }

    pub async fn get(&self) -> Result<ClusterView> {
        let api = self.api().await?;
        let obj = self.call(&format!("get Cluster {}/{}", self.namespace, self.name), api.get(&self.name)).await?;
        ClusterView::from_object(obj).map_err(|e| self.spec_error(format!("unexpected shape: {e}")))
    }

    /// Merge-patches `spec` with `patch` (the `spec` object's content).
    pub async fn patch_spec(&self, patch: Value) -> Result<ClusterView> {
        let api = self.api().await?;
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let body = serde_json::json!({ "spec": patch });
        tracing::info!(node = %self.node, cluster = %self.name, patch = %body, "patching Cluster");
        let action = format!("patch Cluster {}/{}", self.namespace, self.name);
        let obj = self.call(&action, api.patch(&self.name, &params, &Patch::Merge(&body))).await?;
        ClusterView::from_object(obj).map_err(|e| self.spec_error(format!("unexpected shape: {e}")))
    }

    pub fn cluster_error(&self, view: &ClusterView) -> Error {
        Error::ClusterUnrecoverable {
            node: self.node.clone(),
            cluster: self.name.clone(),
            phase: view.status.phase.clone().unwrap_or_default(),
            reason: view.status.phase_reason.clone().unwrap_or_default(),
        }
    }
}

/// A client from the kubeconfig file, or else the usual inference (in-cluster service account,
/// then `$KUBECONFIG` / `~/.kube/config`).
pub async fn client(node: &str, access: &KubeAccess) -> Result<kube::Client> {
    let config_err = |from: String| {
        let node = node.to_string();
        move |e: kube::config::KubeconfigError| Error::KubeConfig { node, from, source: Box::new(e) }
    };
    let config = match &access.kubeconfig {
        Some(path) => {
            let from = path.display().to_string();
            let file = kube::config::Kubeconfig::read_from(path).map_err(config_err(from.clone()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(config_err(from))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::KubeConfig {
            node: node.to_string(),
            from: "in-cluster or $KUBECONFIG".into(),
            source: Box::new(e),
        })?,
    };
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        node: node.to_string(),
        action: "build the client".into(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: Value) -> ClusterView {
        let obj: DynamicObject = serde_json::from_value(json).unwrap();
        ClusterView::from_object(obj).unwrap()
    }

    #[test]
    fn reads_the_fields_it_needs_and_ignores_the_rest() {
        let v = view(serde_json::json!({
            "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": { "name": "pg-a", "namespace": "db" },
            "spec": { "instances": 3, "replica": { "primary": "pg-a", "source": "pg-b" },
                      "postgresql": { "parameters": {}, "synchronous": { "method": "first", "number": 1,
                                      "standbyNamesPre": ["b"] } } },
            "status": { "phase": "Cluster in healthy state", "currentPrimary": "pg-a-1", "timelineID": 2,
                        "demotionToken": "", "conditions": [{ "type": "Ready", "status": "True" }] }
        }));
        assert_eq!(v.name, "pg-a");
        assert!(v.leads("pg-a") && !v.leads("pg-b"));
        assert_eq!(v.demotion_token(), None, "an empty token is no token");
        assert_eq!(v.synchronous.as_ref().unwrap().standby_names_pre, vec!["b".to_string()]);
        assert_eq!(v.status.timeline_id, Some(2));
        assert_eq!(v.status.conditions[0].type_, "Ready");
        assert!(!v.unrecoverable());
    }

    #[test]
    fn legacy_enabled_wins_over_primary() {
        let v = view(serde_json::json!({
            "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": { "name": "pg-a" },
            "spec": { "replica": { "enabled": true, "primary": "pg-a", "source": "pg-b" } }
        }));
        assert!(!v.leads("pg-a"));
    }
}
