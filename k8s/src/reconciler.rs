//! The reconciler: two kube-runtime controllers.
//!
//! - `Continuum`: renders each region's daemon configuration into a ConfigMap (server-side
//!   apply, owned by the resource), polls every region's daemon (`GET /v1/status`) and mirrors
//!   the freshest answer into the status subresource (server-side apply, field manager
//!   [`MANAGER`]), with an Event when the lease moves or a switchover changes state.
//! - `ContinuumSwitchover`: starts the requested switchover through the daemon's API with the
//!   owner token and follows it, step by step, into its status and Events.
//!
//! It is never on the failover path: the daemons do not read anything it writes at run time
//! (their configuration is a mounted file), and when the API server is away the reconciler's
//! writes fail, are counted and retried with backoff, and the next successful round catches up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::Error;
use crate::crd::{Continuum, ContinuumStatus, SecretKeyRef};
use crate::daemon::DaemonClient;
use crate::metrics::Metrics;
use crate::status::{self, Observation};

/// Field manager of every write.
pub const MANAGER: &str = "continuum-reconciler";

pub struct Context {
    pub client: Client,
    pub daemons: DaemonClient,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Pause between two status polls of one `Continuum`.
    pub poll_interval: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, poll_interval: Duration) -> Arc<Self> {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            daemons: DaemonClient::new(),
            metrics,
            poll_interval,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Exponential backoff per object: 500 ms doubling to 30 s; reset by a success.
    fn backoff(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(key).or_insert(0);
        *n = (*n + 1).min(16);
        (Duration::from_millis(500) * 2u32.saturating_pow(*n - 1)).min(Duration::from_secs(30))
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().expect("failures lock").remove(key);
    }

    pub async fn secret(&self, namespace: &str, r: &SecretKeyRef) -> Result<String, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api.get(&r.name).await.map_err(Error::kube(format!("get secret {namespace}/{}", r.name)))?;
        let bytes = secret.data.and_then(|mut d| d.remove(&r.key)).ok_or_else(|| Error::Secret {
            name: r.name.clone(),
            key: r.key.clone(),
            message: "no such key".into(),
        })?;
        String::from_utf8(bytes.0).map(|s| s.trim().to_string()).map_err(|_| Error::Secret {
            name: r.name.clone(),
            key: r.key.clone(),
            message: "not UTF-8".into(),
        })
    }

    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, kind: EventType, reason: &str, note: String) {
        let event =
            Event { type_: kind, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        // An Event is a courtesy; failing to record one never fails the reconcile.
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not record an Event");
        }
    }
}

fn key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
}

/// One round for a `Continuum`: ConfigMaps, then the daemons' status.
pub async fn reconcile_continuum(ctm: Arc<Continuum>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ctm.namespace().unwrap_or_default();
    let name = ctm.name_any();
    let apply = PatchParams::apply(MANAGER).force();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let rendered = match crate::render::config_maps(&ctm) {
        Ok(r) => r,
        Err(e) => {
            ctx.event(ctm.as_ref(), EventType::Warning, "InvalidSpec", crate::error_chain(&e)).await;
            return Err(e);
        }
    };
    for cm in rendered {
        let cm_name = cm.name_any();
        config_maps
            .patch(&cm_name, &apply, &Patch::Apply(&cm))
            .await
            .map_err(Error::kube(format!("apply configmap {namespace}/{cm_name}")))?;
    }

    let token = ctx.secret(&namespace, &ctm.spec.api_tokens.viewer).await?;
    let polls = ctm.spec.regions.iter().map(|r| {
        let (ctx, token, pair) = (ctx.clone(), token.clone(), ctm.spec.pair.clone());
        async move { (r.name.clone(), ctx.daemons.pair_status(&r.name, &r.api_endpoint, &token, &pair).await) }
    });
    let answers = futures::future::join_all(polls).await;
    let mut reachable = Vec::new();
    let mut freshest: Option<continuum::api::PairStatus> = None;
    for (region, answer) in answers {
        match answer {
            Ok(p) => {
                // The highest epoch wins (a cut-off region may still answer with an old view);
                // at equal epochs the holder's own view does.
                let better = freshest.as_ref().is_none_or(|f| {
                    p.epoch > f.epoch || (p.epoch == f.epoch && p.holder.as_deref() == Some(region.as_str()))
                });
                if better {
                    freshest = Some(p);
                }
                reachable.push(region);
            }
            Err(e) => tracing::debug!(continuum = %name, error = %crate::error_chain(&e), "daemon did not answer"),
        }
    }
    let previous = ctm.status.as_ref();
    let obs = Observation { pair: freshest, reachable, now: SystemTime::now() };
    let new = status::build(&ctm.spec, previous, &obs, ctm.metadata.generation);
    apply_status::<Continuum>(&ctx.client, &namespace, &name, &new).await?;
    lease_events(&ctx, &ctm, previous, &new).await;
    if obs.pair.is_none() {
        // Counted and retried like any failure, but the status already says so.
        return Err(Error::NoDaemon { name });
    }
    Ok(Action::requeue(ctx.poll_interval))
}

async fn lease_events(ctx: &Context, ctm: &Continuum, previous: Option<&ContinuumStatus>, new: &ContinuumStatus) {
    let (old_holder, old_epoch) = previous.map(|p| (p.holder.clone(), p.epoch)).unwrap_or_default();
    if new.epoch.is_some() && (old_holder != new.holder || old_epoch != new.epoch) {
        let note = format!(
            "lease: {} → {} at epoch {}",
            old_holder.as_deref().unwrap_or("nobody"),
            new.holder.as_deref().unwrap_or("nobody"),
            new.epoch.unwrap_or_default()
        );
        ctx.event(ctm, EventType::Normal, "LeaseChanged", note).await;
    }
    let old_last = previous.and_then(|p| p.last_switchover.as_ref());
    if let Some(last) = &new.last_switchover
        && old_last.map(|o| (&o.id, &o.state)) != Some((&last.id, &last.state))
    {
        let kind = if last.state == "failed" { EventType::Warning } else { EventType::Normal };
        let note = format!("{} {} {} → {}: {}", last.kind, last.id, last.from, last.to, last.state);
        ctx.event(ctm, kind, "Switchover", note).await;
    }
}

/// Server-side apply of `status` to the status subresource of `K` `namespace/name`.
pub async fn apply_status<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(Error::kube(format!("apply status of {} {namespace}/{name}", K::kind(&()))))?;
    Ok(())
}

fn error_policy<K: Resource>(obj: Arc<K>, e: &Error, ctx: Arc<Context>, kind: &str) -> Action {
    ctx.metrics.failed(kind, e);
    let wait = ctx.backoff(format!("{kind}/{}", key(obj.as_ref())));
    tracing::warn!(object = %key(obj.as_ref()), error = %crate::error_chain(e), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Runs both controllers until the process ends (or, with `shutdown`, until it resolves).
/// `namespace`: watch one namespace (the tests), or every namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (continuums, switchovers, config_maps) = match namespace {
        Some(ns) => (
            Api::<Continuum>::namespaced(ctx.client.clone(), ns),
            Api::<crate::switchover::ContinuumSwitchover>::namespaced(ctx.client.clone(), ns),
            Api::<ConfigMap>::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=continuum-reconciler");
    let c = Controller::new(continuums, watcher::Config::default())
        .owns(config_maps, owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |obj, ctx: Arc<Context>| async move {
                let k = format!("Continuum/{}", key(obj.as_ref()));
                let r = reconcile_continuum(obj, ctx.clone()).await;
                ctx.metrics.reconciled("Continuum");
                if r.is_ok() {
                    ctx.succeeded(&k);
                }
                r
            },
            |obj, e, ctx| error_policy(obj, e, ctx, "Continuum"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let s = Controller::new(switchovers, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            |obj, ctx: Arc<Context>| async move {
                let k = format!("ContinuumSwitchover/{}", key(obj.as_ref()));
                let r = crate::reconciler_switchover::reconcile(obj, ctx.clone()).await;
                ctx.metrics.reconciled("ContinuumSwitchover");
                if r.is_ok() {
                    ctx.succeeded(&k);
                }
                r
            },
            |obj, e, ctx| error_policy(obj, e, ctx, "ContinuumSwitchover"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    futures::future::join(c, s).await;
}
