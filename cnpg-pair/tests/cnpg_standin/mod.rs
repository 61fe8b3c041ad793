//! TEST STAND-IN, NOT CLOUDNATIVEPG. It imitates, for one `Cluster` and one PostgreSQL server,
//! the few things CloudNativePG's operator and instance manager do in a distributed topology, so
//! the CNPG driver can be tested against a real API server (with CNPG's real `Cluster` CRD) and
//! real PostgreSQL without a kubelet. The driver does not know it talks to this: it only sees the
//! `Cluster` object and PostgreSQL. Each behaviour cites the CNPG documentation (paths in the
//! `cloudnative-pg/cloudnative-pg` repository, see `shared/research/cnpg.md` §1) it imitates:
//!
//! - role: a replica when `spec.replica.enabled`, else when `self` (or `metadata.name`) differs
//!   from `spec.replica.primary` (`api/v1/cluster_funcs.go` `IsReplica`);
//! - demotion: `switchReplicaClusterStatus.inProgress`, CHECKPOINT then fast shutdown, standby
//!   configuration following `spec.replica.source`, `pg_controldata` of the stopped server, then
//!   `status.demotionToken` = base64 JSON (`PgControldataTokenContent`), restart as designated
//!   primary (`docs/src/replica_cluster.md` "Demoting a Primary to a Replica Cluster",
//!   `pkg/reconciler/replicaclusterswitch`, `pkg/utils/parser.go`);
//! - promotion with a token differing from `status.lastPromotionToken`: CHECKPOINT (restartpoint),
//!   then system identifier, timeline and REDO location must match the token; behind: retry;
//!   mismatch: phase "Cluster is unrecoverable and needs manual intervention" (`instance_token.go`,
//!   `pkg/promotiontoken`); without a token: promote at once ("a failover will be triggered",
//!   `replica_cluster.md`);
//! - a replica follows `externalClusters[source].connectionParameters`; a former primary that
//!   cannot follow is re-cloned ("requiring the former primary to be re-cloned",
//!   `replica_cluster.md`);
//! - `spec.postgresql.synchronous` (`method: first`, `standbyNamesPre`, no local pods) is rendered
//!   into `synchronous_standby_names` (`docs/src/replication.md`).
//!
//! Unlike CNPG it reconciles every [`RESYNC`] instead of requeueing every 10 s, so test timings
//! are lower bounds of what a real CNPG adds.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testkit::pg::{NodeSettings, PgNode, StopMode};
use tokio::task::JoinHandle;

/// Reconcile at least this often (CNPG: 10 s requeues).
const RESYNC: Duration = Duration::from_millis(200);
pub const UNRECOVERABLE: &str = "Cluster is unrecoverable and needs manual intervention";

pub fn clusters(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("postgresql.cnpg.io", "v1", "Cluster");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "clusters"))
}

/// The stand-in for one `Cluster`; stops when dropped.
pub struct StandIn {
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    pub fn start(api: Api<DynamicObject>, cluster: &str, node: PgNode) -> StandIn {
        let mut me = Instance { api, cluster: cluster.into(), node, written: None, last_status: Value::Null };
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().fields(&format!("metadata.name={}", me.cluster));
            let mut events = watcher(me.api.clone(), config).boxed();
            loop {
                tracing::debug!(cluster = %me.cluster, "stand-in: reconcile");
                if let Err(e) = me.reconcile().await {
                    tracing::warn!(cluster = %me.cluster, "stand-in reconcile: {e:#}");
                }
                // A change of the Cluster, or the resync period; a failing watch (API server
                // down) waits the period out rather than spinning.
                if let Ok(Some(Err(_))) = tokio::time::timeout(RESYNC, events.next()).await {
                    tokio::time::sleep(RESYNC).await;
                }
            }
        });
        StandIn { task }
    }
}

struct Instance {
    api: Api<DynamicObject>,
    cluster: String,
    node: PgNode,
    /// What this stand-in last wrote to node.conf (upstream, synchronous names).
    written: Option<(Option<String>, Vec<String>)>,
    last_status: Value,
}

fn text(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

impl Instance {
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        // Bounded: a request caught by an API-server restart would otherwise hang for seconds.
        let obj = tokio::time::timeout(Duration::from_secs(1), self.api.get(&self.cluster)).await??;
        let data = serde_json::to_value(&obj)?;
        let self_name = text(&data, "/spec/replica/self").unwrap_or_else(|| self.cluster.clone());
        let replica = match data.pointer("/spec/replica/enabled").and_then(Value::as_bool) {
            Some(enabled) => enabled,
            None => text(&data, "/spec/replica/primary").is_some_and(|p| p != self_name),
        };
        if text(&data, "/status/phase").as_deref() == Some(UNRECOVERABLE) {
            return Ok(()); // manual intervention
        }
        let running = self.node.is_running();
        let in_recovery = if running { Some(self.node.is_in_recovery().await?) } else { None };
        if replica {
            let conninfo = self.source_conninfo(&data)?;
            if in_recovery == Some(false) {
                self.demote(&conninfo, &data).await?;
            } else if !running || self.written.as_ref().map(|w| &w.0) != Some(&Some(conninfo.clone())) {
                self.follow(&conninfo, &data).await?;
            }
        } else {
            if in_recovery == Some(true) {
                let token = text(&data, "/spec/replica/promotionToken");
                match token {
                    Some(t) if Some(&t) == text(&data, "/status/lastPromotionToken").as_ref() => {}
                    Some(t) => self.promote_with_token(&t).await?,
                    None => self.promote().await?,
                }
            } else if !running {
                self.node.start()?;
            }
            self.apply_sync(&data)?;
        }
        self.report(&data).await
    }

    /// `externalClusters[source].connectionParameters` as a libpq connection string.
    fn source_conninfo(&self, data: &Value) -> anyhow::Result<String> {
        let source = text(data, "/spec/replica/source").context("spec.replica.source")?;
        let entries = data.pointer("/spec/externalClusters").and_then(Value::as_array).context("externalClusters")?;
        let entry = entries
            .iter()
            .find(|e| e["name"] == source.as_str())
            .with_context(|| format!("no externalClusters entry {source}"))?;
        let params = entry["connectionParameters"].as_object().context("connectionParameters")?;
        Ok(params
            .iter()
            .filter(|(k, _)| *k != "dbname")
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn sync_names(data: &Value) -> Vec<String> {
        let pre = data.pointer("/spec/postgresql/synchronous/standbyNamesPre").and_then(Value::as_array);
        pre.map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    fn write_conf(&mut self, upstream: Option<String>, sync: Vec<String>) -> anyhow::Result<()> {
        let settings = NodeSettings { primary_conninfo: upstream.clone(), synchronous_standby_names: sync.clone() };
        self.node.write_node_conf(&settings)?;
        self.written = Some((upstream, sync));
        Ok(())
    }

    fn apply_sync(&mut self, data: &Value) -> anyhow::Result<()> {
        let sync = Self::sync_names(data);
        if self.written.as_ref().map(|w| (&w.0, &w.1)) != Some((&None, &sync)) {
            self.write_conf(None, sync)?;
            self.node.reload()?;
        }
        Ok(())
    }

    async fn patch_status(&mut self, status: Value) -> anyhow::Result<()> {
        let body = json!({ "status": status });
        self.api.patch_status(&self.cluster, &PatchParams::default(), &Patch::Merge(&body)).await?;
        Ok(())
    }

    async fn demote(&mut self, conninfo: &str, data: &Value) -> anyhow::Result<()> {
        tracing::info!(cluster = %self.cluster, "stand-in: demoting");
        self.patch_status(json!({ "switchReplicaClusterStatus": { "inProgress": true } })).await?;
        self.node.connect().await?.batch_execute("CHECKPOINT").await?;
        self.node.stop(StopMode::Fast)?;
        let control = self.controldata()?;
        anyhow::ensure!(control_field(&control, "Database cluster state")?.starts_with("shut down"), "not shut down");
        let token = json!({
            "latestCheckpointTimelineID": control_field(&control, "Latest checkpoint's TimeLineID")?,
            "redoWalFile": control_field(&control, "Latest checkpoint's REDO WAL file")?,
            "databaseSystemIdentifier": control_field(&control, "Database system identifier")?,
            "latestCheckpointREDOLocation": control_field(&control, "Latest checkpoint's REDO location")?,
            "timeOfLatestCheckpoint": control_field(&control, "Time of latest checkpoint")?,
            "operatorVersion": "0.0.0-test-stand-in",
        });
        let token = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&token)?);
        self.node.write_standby_signal()?;
        self.write_conf(Some(conninfo.to_string()), Self::sync_names(data))?;
        self.patch_status(json!({ "demotionToken": token, "switchReplicaClusterStatus": { "inProgress": false } }))
            .await?;
        self.node.start()?;
        Ok(())
    }

    /// Standby of `conninfo`; a node that cannot follow (diverged history) is re-cloned.
    async fn follow(&mut self, conninfo: &str, data: &Value) -> anyhow::Result<()> {
        tracing::info!(cluster = %self.cluster, %conninfo, "stand-in: following");
        if self.node.is_running() {
            self.node.stop(StopMode::Fast)?;
        }
        self.node.write_standby_signal()?;
        self.write_conf(Some(conninfo.to_string()), Self::sync_names(data))?;
        let log_start = std::fs::metadata(&self.node.log_file).map(|m| m.len()).unwrap_or(0);
        if self.node.start().is_ok() && self.streams_within(Duration::from_secs(10), log_start).await {
            return Ok(());
        }
        tracing::warn!(cluster = %self.cluster, "stand-in: cannot follow, re-cloning");
        self.reclone(conninfo, data)
    }

    async fn streams_within(&self, limit: Duration, log_start: u64) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            let log = std::fs::read(&self.node.log_file).unwrap_or_default();
            let fresh = String::from_utf8_lossy(&log[(log_start as usize).min(log.len())..]).to_string();
            if fresh.contains("forked off") || fresh.contains("not a child of") || fresh.contains("ahead of the WAL") {
                return false;
            }
            if let Ok(client) = self.node.connect().await
                && let Ok(row) =
                    client.query_one("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'", &[]).await
                && row.get::<_, i64>(0) == 1
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn reclone(&mut self, conninfo: &str, data: &Value) -> anyhow::Result<()> {
        if self.node.is_running() {
            self.node.stop(StopMode::Immediate)?;
        }
        std::fs::remove_dir_all(&self.node.data_dir)?;
        let mut cmd = self.node.command("pg_basebackup");
        cmd.arg("-D").arg(&self.node.data_dir).args(["-d", conninfo, "-X", "stream", "-c", "fast"]);
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.node.write_standby_signal()?;
        self.write_conf(Some(conninfo.to_string()), Self::sync_names(data))?;
        Ok(self.node.start()?)
    }

    fn controldata(&self) -> anyhow::Result<String> {
        let mut cmd = self.node.command("pg_controldata");
        cmd.arg("-D").arg(&self.node.data_dir);
        let out = cmd.output()?;
        anyhow::ensure!(out.status.success(), "pg_controldata: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn promote_with_token(&mut self, token: &str) -> anyhow::Result<()> {
        let content: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(token)?)?;
        self.node.connect().await?.batch_execute("CHECKPOINT").await?;
        let control = self.controldata()?;
        let local = |key| control_field(&control, key);
        let want = |key: &str| content[key].as_str().unwrap_or("").to_string();
        let timeline = |s: &str| s.parse::<u32>().unwrap_or(0);
        let lsn = |s: &str| s.parse::<cnpg_pair::Lsn>().map(|l| l.0).unwrap_or(0);
        let (token_tl, local_tl) =
            (timeline(&want("latestCheckpointTimelineID")), timeline(&local("Latest checkpoint's TimeLineID")?));
        let (token_redo, local_redo) =
            (lsn(&want("latestCheckpointREDOLocation")), lsn(&local("Latest checkpoint's REDO location")?));
        let fatal = want("databaseSystemIdentifier") != local("Database system identifier")?
            || token_tl < local_tl
            || (token_tl == local_tl && local_redo > token_redo);
        if fatal {
            tracing::error!(cluster = %self.cluster, "stand-in: promotion token does not match");
            return self
                .patch_status(json!({ "phase": UNRECOVERABLE,
                    "phaseReason": "Promotion token content is not correct for current instance" }))
                .await;
        }
        if token_tl > local_tl || local_redo < token_redo {
            return Ok(()); // not replayed up to the token yet: retry at the next reconcile
        }
        self.promote().await?;
        self.patch_status(json!({ "lastPromotionToken": token })).await
    }

    async fn promote(&mut self) -> anyhow::Result<()> {
        tracing::info!(cluster = %self.cluster, "stand-in: promoting");
        let promoted: bool = self.node.connect().await?.query_one("SELECT pg_promote(true, 60)", &[]).await?.get(0);
        anyhow::ensure!(promoted, "pg_promote did not finish");
        self.written = None; // node.conf still names the old upstream: rewritten by apply_sync
        Ok(())
    }

    async fn report(&mut self, data: &Value) -> anyhow::Result<()> {
        let mut status =
            json!({ "phase": "Cluster in healthy state", "currentPrimary": format!("{}-1", self.cluster) });
        if let Ok(client) = self.node.connect().await {
            let row = client
                .query_one("SELECT system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint()) FROM pg_control_system()", &[])
                .await?;
            status["systemID"] = json!(row.get::<_, String>(0));
            status["timelineID"] = json!(row.get::<_, i32>(1));
        }
        if status != self.last_status || data.pointer("/status/phase").is_none() {
            self.patch_status(status.clone()).await?;
            self.last_status = status;
        }
        Ok(())
    }
}

fn control_field(control: &str, key: &str) -> anyhow::Result<String> {
    control
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
        .with_context(|| format!("pg_controldata has no {key:?}"))
}
