//! Gateway API traffic drain (switchover step `drain`, before the fence): the old primary
//! region's `HTTPRoute` backend weight goes to 0 over a window, and after the DNS step
//! [`restore`] gives the new primary's backend the weight the old one had. The daemon runs it
//! (its own crate so the daemon need not depend on the Kubernetes reconciler); the RBAC it needs
//! is `charts/continuum/files/rbac/daemon.yaml`.
//!
//! Fencing: every write tags the route with the switchover's lease epoch
//! ([`EPOCH_ANNOTATION`]) and is conditional on the `resourceVersion` it read, so a daemon
//! holding an older epoch than the route's tag gets [`Error::StaleEpoch`] and changes nothing,
//! and two writers never interleave unnoticed (a conflict re-reads). Idempotent: each write sets
//! an absolute weight computed from the weight recorded at the start of the drain
//! ([`FROM_WEIGHT_ANNOTATION`]), so re-running after a crash resumes from where the route is.

use std::path::Path;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

/// Every error of the drain. Variant names are metric/log labels ([`Error::label`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes client configuration ({from})")]
    Config {
        from: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Kubernetes API: {action}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("stale epoch {epoch}: {route} is already drained by epoch {current}")]
    StaleEpoch { route: String, epoch: u64, current: u64 },
    #[error("HTTPRoute {route}: {message}")]
    Route { route: String, message: String },
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Kube { .. } => "kube",
            Error::StaleEpoch { .. } => "stale_epoch",
            Error::Route { .. } => "route",
        }
    }

    fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }
}

/// A client from `kubeconfig`, or else the usual inference (in-cluster service account, then
/// `$KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let from = path.display().to_string();
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config { from: from.clone(), source: Box::new(e) })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config { from, source: Box::new(e) })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config { from: "in-cluster or $KUBECONFIG".into(), source: Box::new(e) })?,
    };
    Client::try_from(config).map_err(Error::kube("build the client"))
}

pub const EPOCH_ANNOTATION: &str = "dr.openova.io/traffic-epoch";
/// The drained backend's weight when its drain started (what [`restore`] hands on).
pub const FROM_WEIGHT_ANNOTATION: &str = "dr.openova.io/drained-weight";
/// How many weight changes a drain makes over its window.
pub const DRAIN_STEPS: u32 = 5;
/// Gateway API's default backendRef weight.
const DEFAULT_WEIGHT: i64 = 1;

/// Where the drain acts: the route and which backendRef serves which region.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub namespace: String,
    /// Unset: no route configured; every call is skipped with a reason.
    pub route: Option<String>,
    /// region → backendRef name.
    pub backends: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do, with the reason (reported as the step's `skipped` detail).
    Skipped(String),
    /// The route's weights after the call, backendRef name → weight (in rule order).
    Done(Vec<(String, i64)>),
}

fn api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk_with_plural(&gvk, "httproutes"))
}

/// Shifts `from_region`'s backend weight to 0 in [`DRAIN_STEPS`] steps spread over `window`.
/// `on_step` sees each weight written (tests check the order).
pub async fn drain(
    client: &Client,
    target: &RouteTarget,
    from_region: &str,
    window: Duration,
    epoch: u64,
    mut on_step: impl FnMut(i64),
) -> Result<Outcome, Error> {
    let Some((route, backend)) = resolve(target, from_region)? else {
        return Ok(Outcome::Skipped("no HTTPRoute configured (spec.traffic)".into()));
    };
    let api = api(client, &target.namespace);
    let pause = window / DRAIN_STEPS;
    loop {
        let obj = get(&api, route).await?;
        check_epoch(route, &obj, epoch)?;
        let current = weight_of(route, &obj, backend)?;
        // The weight at the drain's start, recorded by its first write of this epoch.
        let from = match annotation(&obj, EPOCH_ANNOTATION) {
            Some(e) if e == epoch => annotation(&obj, FROM_WEIGHT_ANNOTATION).map(|w| w as i64).unwrap_or(current),
            _ => current,
        };
        if current == 0 {
            // Also tags a route already at 0, so an older epoch cannot raise it again.
            let weights = write(&api, route, &obj, epoch, from, &[(backend, 0)]).await?;
            return Ok(Outcome::Done(weights));
        }
        // The next step below the current weight: absolute, so a re-run converges.
        let step_size = (from as f64 / DRAIN_STEPS as f64).max(1.0);
        let next = ((current as f64 - step_size).round() as i64).max(0);
        match write(&api, route, &obj, epoch, from, &[(backend, next)]).await {
            Ok(_) => on_step(next),
            Err(Error::Route { message, .. }) if message == CONFLICT => continue,
            Err(e) => return Err(e),
        }
        if next > 0 {
            tokio::time::sleep(pause).await;
        }
    }
}

/// After the DNS step: `to_region`'s backend gets the weight the drained backend had (default
/// 1), and every other region's backend listed in the target stays at 0.
pub async fn restore(client: &Client, target: &RouteTarget, to_region: &str, epoch: u64) -> Result<Outcome, Error> {
    let Some((route, backend)) = resolve(target, to_region)? else {
        return Ok(Outcome::Skipped("no HTTPRoute configured (spec.traffic)".into()));
    };
    let api = api(client, &target.namespace);
    loop {
        let obj = get(&api, route).await?;
        check_epoch(route, &obj, epoch)?;
        let weight = annotation(&obj, FROM_WEIGHT_ANNOTATION).map(|w| w as i64).unwrap_or(DEFAULT_WEIGHT).max(1);
        let mut set: Vec<(&str, i64)> = vec![(backend, weight)];
        for (region, other) in &target.backends {
            if region != to_region {
                set.push((other.as_str(), 0));
            }
        }
        match write(&api, route, &obj, epoch, weight, &set).await {
            Ok(weights) => return Ok(Outcome::Done(weights)),
            Err(Error::Route { message, .. }) if message == CONFLICT => continue,
            Err(e) => return Err(e),
        }
    }
}

const CONFLICT: &str = "changed meanwhile";

fn resolve<'a>(target: &'a RouteTarget, region: &str) -> Result<Option<(&'a str, &'a str)>, Error> {
    let Some(route) = target.route.as_deref() else { return Ok(None) };
    let backend = target.backends.get(region).ok_or_else(|| Error::Route {
        route: route.into(),
        message: format!("no backendRef is configured for region {region}"),
    })?;
    Ok(Some((route, backend)))
}

async fn get(api: &Api<DynamicObject>, route: &str) -> Result<DynamicObject, Error> {
    api.get(route).await.map_err(Error::kube(format!("get httproute {route}")))
}

fn annotation(obj: &DynamicObject, key: &str) -> Option<u64> {
    obj.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

fn check_epoch(route: &str, obj: &DynamicObject, epoch: u64) -> Result<(), Error> {
    match annotation(obj, EPOCH_ANNOTATION) {
        Some(current) if current > epoch => Err(Error::StaleEpoch { route: route.into(), epoch, current }),
        _ => Ok(()),
    }
}

fn rules(route: &str, obj: &DynamicObject) -> Result<Vec<Value>, Error> {
    obj.data["spec"]["rules"]
        .as_array()
        .cloned()
        .ok_or_else(|| Error::Route { route: route.into(), message: "has no spec.rules".into() })
}

fn weight_of(route: &str, obj: &DynamicObject, backend: &str) -> Result<i64, Error> {
    rules(route, obj)?
        .iter()
        .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
        .find(|b| b["name"] == backend)
        .map(|b| b["weight"].as_i64().unwrap_or(DEFAULT_WEIGHT))
        .ok_or_else(|| Error::Route { route: route.into(), message: format!("has no backendRef named {backend}") })
}

/// Sets the listed backendRefs' weights in every rule, tags the epoch, conditional on the
/// `resourceVersion` read (a concurrent change answers 409 and is reported as [`CONFLICT`]).
async fn write(
    api: &Api<DynamicObject>,
    route: &str,
    obj: &DynamicObject,
    epoch: u64,
    from_weight: i64,
    set: &[(&str, i64)],
) -> Result<Vec<(String, i64)>, Error> {
    let mut rules = rules(route, obj)?;
    let mut weights = Vec::new();
    for rule in &mut rules {
        for b in rule["backendRefs"].as_array_mut().into_iter().flatten() {
            if let Some((_, w)) = set.iter().find(|(name, _)| b["name"] == *name) {
                b["weight"] = json!(w);
            }
            weights.push((
                b["name"].as_str().unwrap_or_default().to_string(),
                b["weight"].as_i64().unwrap_or(DEFAULT_WEIGHT),
            ));
        }
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": obj.metadata.resource_version,
            "annotations": { EPOCH_ANNOTATION: epoch.to_string(), FROM_WEIGHT_ANNOTATION: from_weight.to_string() },
        },
        "spec": { "rules": rules },
    });
    match api.patch(route, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(weights),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(Error::Route { route: route.into(), message: CONFLICT.into() })
        }
        Err(e) => Err(Error::Kube { action: format!("patch httproute {route}"), source: e }),
    }
}
