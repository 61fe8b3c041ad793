//! The CNPG driver against a real Kubernetes API server (etcd + kube-apiserver, CloudNativePG's
//! real `Cluster` CRD) and real PostgreSQL 15, with a TEST STAND-IN for CNPG's operator and
//! instance manager ([`cnpg_standin`]) doing the PostgreSQL work CNPG would do. The drivers
//! authenticate as service accounts allowed only to get and patch `Cluster`s.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use cnpg_pair::cnpg::{CnpgConfig, CnpgTimeouts, KubeAccess, PgEndpoint};
use cnpg_pair::{
    CnpgDriver, Error, ErrorClass, Observed, PairDriver, PromoteRequest, StoreWriteError, SyncRecordStore, Upstream,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;
use testkit::kube::{KubeApiServer, upstream_crds};
use testkit::writer::Writer;
use testkit::{PgNode, PgPair, wait_until};

mod cnpg_standin;
use cnpg_standin::{StandIn, clusters};

const NS: &str = "db";
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    kube: KubeApiServer,
    pair: PgPair,
    api: Api<DynamicObject>,
    dir: tempfile::TempDir,
}

/// The lease store's `sync_standby` record, kept in memory (the store is not under test here).
#[derive(Default)]
struct Store(Mutex<Vec<Option<String>>>);

#[async_trait::async_trait]
impl SyncRecordStore for Store {
    async fn record_sync_standby(&self, standby: Option<&str>) -> Result<(), StoreWriteError> {
        self.0.lock().unwrap().push(standby.map(str::to_string));
        Ok(())
    }
}

fn cluster_object(name: &str, primary: &str, source: &str, pair: &PgPair, sync: Option<&str>) -> serde_json::Value {
    // Each side's entry for its peer names the region it streams as (application_name).
    let entry = |cluster: &str, node: &PgNode, app: &str| {
        json!({ "name": cluster, "connectionParameters": { "host": node.host, "port": node.port.to_string(),
                "user": "postgres", "dbname": "postgres", "application_name": app } })
    };
    let me = if name == "pg-a" { "a" } else { "b" };
    let mut spec = json!({
        "instances": 1,
        "replica": { "primary": primary, "source": source },
        "externalClusters": [entry("pg-a", &pair.primary, me), entry("pg-b", &pair.standby, me)],
    });
    if let Some(standby) = sync {
        spec["postgresql"] = json!({ "synchronous": { "method": "first", "number": 1, "standbyNamesPre": [standby],
                                     "maxStandbyNamesFromCluster": 0, "dataDurability": "required" } });
    }
    json!({ "apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": { "name": name, "namespace": NS },
            "spec": spec })
}

async fn setup() -> anyhow::Result<Option<Env>> {
    testkit::init_tracing();
    if !KubeApiServer::available() {
        return Ok(None);
    }
    let kube = KubeApiServer::start().await?;
    kube.install_crds(&upstream_crds("cnpg-cluster.yaml")?).await?;
    kube.namespace(NS).await?;
    let pair = PgPair::start().await?;
    let api = clusters(&kube.client(), NS);
    for object in
        [cluster_object("pg-a", "pg-a", "pg-b", &pair, Some("b")), cluster_object("pg-b", "pg-a", "pg-a", &pair, None)]
    {
        let object: DynamicObject = serde_json::from_value(object)?;
        api.create(&PostParams::default(), &object).await.context("create Cluster")?;
    }
    Ok(Some(Env { kube, pair, api, dir: tempfile::tempdir()? }))
}

impl Env {
    fn standin(&self, cluster: &str) -> StandIn {
        let node = if cluster == "pg-a" { &self.pair.primary } else { &self.pair.standby };
        StandIn::start(self.api.clone(), cluster, node.clone())
    }

    /// Region `region`'s driver, with a kubeconfig of its own service account.
    async fn driver(&self, region: &str) -> anyhow::Result<CnpgDriver> {
        let (cluster, peer, node) = match region {
            "a" => ("pg-a", "pg-b", &self.pair.primary),
            _ => ("pg-b", "pg-a", &self.pair.standby),
        };
        let kubeconfig = self.dir.path().join(format!("kubeconfig-{region}"));
        let rules = vec![PolicyRule {
            api_groups: Some(vec!["postgresql.cnpg.io".into()]),
            resources: Some(vec!["clusters".into()]),
            verbs: vec!["get".into(), "patch".into()],
            ..Default::default()
        }];
        self.kube.service_account_kubeconfig(NS, &format!("continuum-{region}"), rules, &kubeconfig).await?;
        let timeouts = CnpgTimeouts {
            poll_interval: Duration::from_millis(50),
            api: Duration::from_secs(3),
            ..Default::default()
        };
        Ok(CnpgDriver::new(CnpgConfig {
            name: region.into(),
            cluster: cluster.into(),
            namespace: NS.into(),
            self_name: None,
            peer_cluster: peer.into(),
            postgres: PgEndpoint {
                host: node.host.clone(),
                port: node.port,
                user: "postgres".into(),
                dbname: "postgres".into(),
            },
            kube: KubeAccess { kubeconfig: Some(kubeconfig) },
            timeouts,
        })?)
    }

    async fn spec_replica(&self, cluster: &str) -> anyhow::Result<serde_json::Value> {
        let obj = self.api.get(cluster).await?;
        Ok(obj.data["spec"]["replica"].clone())
    }
}

fn upstream(node: &PgNode) -> Upstream {
    Upstream {
        name: node.name.clone(),
        host: node.host.clone(),
        port: node.port,
        user: "postgres".into(),
        dbname: "postgres".into(),
    }
}

async fn missing_ids(node: &PgNode, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    let rows = node.connect().await?.query("SELECT id FROM probe WHERE id = ANY($1)", &[&ids]).await?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(ids.iter().copied().filter(|id| !present.contains(id)).collect())
}

/// What one switchover took.
#[derive(Debug)]
struct Timings {
    fence: Duration,
    catch_up: Duration,
    promote: Duration,
    rejoin: Duration,
    sync: Duration,
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fence (patch to stable token) {:?}, catch-up {:?}, promote (patch to writable) {:?}, rejoin {:?}, sync {:?}",
            self.fence, self.catch_up, self.promote, self.rejoin, self.sync
        )
    }
}

/// A planned switchover old → new, step by step as the daemon runs it. Returns the token used.
async fn switchover(
    old: &CnpgDriver,
    new: &CnpgDriver,
    new_node: &PgNode,
    epoch: u64,
    store: &Store,
) -> anyhow::Result<(String, Timings)> {
    let started = Instant::now();
    let fenced = old.fence().await?;
    let fence = started.elapsed();
    let token = fenced.handover_token.clone().context("CNPG mode hands over a token")?;
    let target = fenced.final_position.context("the token gives the final position")?;
    assert!(fenced.clean);
    let seen = old.observe_cluster().await?;
    assert_eq!(seen.demotion_token(), Some(token.as_str()), "the Cluster status shows the token handed over");
    assert!(!seen.leads(&old.config().cluster) && seen.status.phase.is_some(), "{seen:?}");
    let again = old.fence().await?;
    assert_eq!(again.handover_token.as_deref(), Some(token.as_str()), "a retried fence reports the same token");
    let at = Instant::now();
    new.wait_caught_up(&target, WAIT).await?;
    let catch_up = at.elapsed();
    let at = Instant::now();
    let promotion = new.promote(&PromoteRequest { epoch, handover_token: Some(token.clone()) }).await?;
    let promote = at.elapsed();
    assert_eq!(promotion.position.timeline, target.timeline + 1, "promotion starts a new timeline");
    assert!(!promotion.already_promoted);
    let seen = new.observe_cluster().await?;
    assert!(seen.leads(&new.config().cluster), "{seen:?}");
    assert_eq!(seen.status.last_promotion_token.as_deref(), Some(token.as_str()), "CNPG consumed the token");
    let retried = new.promote(&PromoteRequest { epoch, handover_token: Some(token.clone()) }).await?;
    assert!(retried.already_promoted, "a retried promotion sends nothing and reports it done");
    let at = Instant::now();
    old.rejoin_as_standby(&upstream(new_node)).await?;
    let rejoin = at.elapsed();
    let at = Instant::now();
    new.enable_sync(old.name(), store).await?;
    let sync = at.elapsed();
    Ok((token, Timings { fence, catch_up, promote, rejoin, sync }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchover_and_failback_through_cnpg_lose_nothing_and_never_resend_a_token() -> anyhow::Result<()> {
    let Some(env) = setup().await? else { return Ok(()) };
    let (_sa, _sb) = (env.standin("pg-a"), env.standin("pg-b"));
    env.pair.wait_streaming(true, WAIT).await?;
    let (a, b) = (env.driver("a").await?, env.driver("b").await?);
    let store = Store::default();
    let mut writer = Writer::start(&env.pair.multi_host_conninfo(), "probe").await?;
    writer.wait_acked(50, WAIT).await?;

    let at = Instant::now();
    let (t1, to_b) = switchover(&a, &b, &env.pair.standby, 2, &store).await?;
    eprintln!("TIMING switchover a->b: {to_b}, total {:?}", at.elapsed());
    assert!(!env.pair.standby.is_in_recovery().await? && env.pair.primary.is_in_recovery().await?);
    let acked = writer.acked_count();
    writer.wait_acked(acked + 50, WAIT).await.context("writes continue on b")?;
    assert_eq!(env.spec_replica("pg-b").await?["promotionToken"], json!(t1), "token and primary in one spec");

    let at = Instant::now();
    let (t2, to_a) = switchover(&b, &a, &env.pair.primary, 3, &store).await?;
    eprintln!("TIMING failback b->a: {to_a}, total {:?}", at.elapsed());
    assert_ne!(t1, t2);
    let acked = writer.acked_count();
    writer.wait_acked(acked + 50, WAIT).await.context("writes continue on a")?;
    let report = writer.stop().await;
    eprintln!("TIMING writer: {} acked, longest gap {:?}", report.acked.len(), report.longest_gap);
    let missing = missing_ids(&env.pair.primary, &report.acked).await?;
    assert!(missing.is_empty(), "acknowledged ids missing on the final primary: {missing:?}");
    assert_eq!(*store.0.lock().unwrap(), vec![Some("a".to_string()), Some("b".to_string())]);

    // Stale and reused tokens are refused before anything is sent, by this driver and by a
    // restarted one (which only has the Cluster's memory: status.lastPromotionToken).
    let before = env.spec_replica("pg-b").await?;
    for driver in [&b, &env.driver("b").await?] {
        let reused = driver.promote(&PromoteRequest { epoch: 4, handover_token: Some(t1.clone()) }).await.unwrap_err();
        assert!(matches!(reused, Error::TokenReused { .. }), "{reused}");
        assert_eq!(reused.class(), ErrorClass::Unsafe);
    }
    // b's own old demotion token (consumed by a): from an older timeline than b's history.
    let stale = env.driver("b").await?.promote(&PromoteRequest { epoch: 4, handover_token: Some(t2.clone()) }).await;
    let stale = stale.unwrap_err();
    assert!(matches!(stale, Error::StaleToken { .. }), "{stale}");
    assert_eq!(env.spec_replica("pg-b").await?, before, "nothing was sent");
    assert!(env.pair.standby.is_in_recovery().await?, "b is still a standby");
    let phase = env.api.get("pg-b").await?.data["status"]["phase"].clone();
    assert_eq!(phase, json!("Cluster in healthy state"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_after_a_is_killed_then_a_returns_as_a_replica_of_b() -> anyhow::Result<()> {
    let Some(mut env) = setup().await? else { return Ok(()) };
    let standin_a = env.standin("pg-a");
    let _sb = env.standin("pg-b");
    env.pair.wait_streaming(true, WAIT).await?;
    let b = env.driver("b").await?;
    let mut writer = Writer::start(&env.pair.multi_host_conninfo(), "probe").await?;
    writer.wait_acked(100, WAIT).await?;

    // Region a is gone: its CNPG, its daemon (never started here) and its PostgreSQL (kill -9).
    drop(standin_a);
    env.pair.primary.kill9()?;
    let killed = Instant::now();
    wait_until("b sees a gone", WAIT, || async {
        Ok(matches!(b.observe().await, Observed::Standby(s) if !s.streaming))
    })
    .await?;

    // Without the API server the driver cannot promote (it patches the Cluster): a retryable
    // error, and nothing changed.
    env.kube.stop();
    let at = Instant::now();
    let down = b.promote(&PromoteRequest { epoch: 2, handover_token: None }).await.unwrap_err();
    eprintln!("TIMING promote with the API server down fails after {:?}: {down}", at.elapsed());
    assert_eq!(down.class(), ErrorClass::Retryable, "{down}");
    assert!(env.pair.standby.is_in_recovery().await?);
    env.kube.restart().await?;

    let at = Instant::now();
    let promotion = b.promote(&PromoteRequest { epoch: 2, handover_token: None }).await?;
    eprintln!("TIMING failover promote (no token): {:?}; from kill -9: {:?}", at.elapsed(), killed.elapsed());
    assert_eq!(promotion.position.timeline, 2);
    assert!(env.spec_replica("pg-b").await?.get("promotionToken").is_none_or(|t| t.is_null()));
    let acked = writer.acked_count();
    writer.wait_acked(acked + 50, WAIT).await.context("writes continue on b")?;

    // a returns: its daemon patches pg-a into a replica of pg-b before a's CNPG starts again.
    let a = env.driver("a").await?;
    let at = Instant::now();
    let (api, to_b) = (env.api.clone(), upstream(&env.pair.standby));
    let (rejoined, standin_a) = tokio::join!(a.rejoin_as_standby(&to_b), async {
        wait_until("pg-a patched into a replica of pg-b", WAIT, || async {
            Ok(api.get("pg-a").await?.data["spec"]["replica"]["primary"] == json!("pg-b"))
        })
        .await
        .map(|()| env.standin("pg-a"))
    });
    let _standin_a = standin_a?;
    rejoined?;
    eprintln!("TIMING rejoin of a as a replica of b: {:?}", at.elapsed());
    assert_eq!(env.spec_replica("pg-a").await?["source"], json!("pg-b"));
    assert!(env.pair.primary.is_in_recovery().await?, "a is a standby");
    let report = writer.stop().await;
    eprintln!("TIMING writer: {} acked, longest gap {:?}", report.acked.len(), report.longest_gap);
    let missing = missing_ids(&env.pair.standby, &report.acked).await?;
    assert!(missing.is_empty(), "acknowledged ids missing on b after the failover: {missing:?}");
    Ok(())
}
