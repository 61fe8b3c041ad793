//! Configuration of the CloudNativePG driver: which `Cluster` is this region's, how to reach its
//! PostgreSQL for observation, how to reach the Kubernetes API server, and the deadlines.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One region of a CNPG distributed topology, as its daemon drives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnpgConfig {
    /// The region's name: the `application_name` its designated primary streams with (set it in
    /// the peer's `externalClusters[].connectionParameters`), the name sync replication lists.
    pub name: String,
    /// This region's `Cluster` (`metadata.name`) and namespace: the only object the driver writes.
    pub cluster: String,
    pub namespace: String,
    /// This cluster's name in the topology (`spec.replica.self`); unset: [`CnpgConfig::cluster`].
    #[serde(default)]
    pub self_name: Option<String>,
    /// The peer region's entry in `externalClusters` (what `spec.replica.primary`/`source` name).
    pub peer_cluster: String,
    /// This region's PostgreSQL as the daemon reaches it (the `-rw` service or the primary pod).
    pub postgres: PgEndpoint,
    #[serde(default)]
    pub kube: KubeAccess,
    #[serde(default)]
    pub timeouts: CnpgTimeouts,
}

/// A PostgreSQL endpoint (superuser or a role with `pg_monitor` plus the fencing table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgEndpoint {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default = "default_user")]
    pub dbname: String,
}

fn default_port() -> u16 {
    5432
}

fn default_user() -> String {
    "postgres".into()
}

/// How the driver authenticates to the Kubernetes API server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeAccess {
    /// A kubeconfig file. Unset: in-cluster service account, then `$KUBECONFIG` / `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

/// Deadlines of the CNPG driver (humantime in config files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnpgTimeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// One PostgreSQL query.
    #[serde(with = "humantime_serde")]
    pub query: Duration,
    /// One Kubernetes API call.
    #[serde(with = "humantime_serde")]
    pub api: Duration,
    /// From the demotion patch until `status.demotionToken` is published and stable. CNPG
    /// requeues every 10 s while it waits for the shutdown, so leave room for a few rounds.
    #[serde(with = "humantime_serde")]
    pub demotion: Duration,
    /// How long a published token must stay unchanged before it is handed over (CNPG #11075: a
    /// token could be lost and rewritten by a requeued reconcile).
    #[serde(with = "humantime_serde")]
    pub token_stable: Duration,
    /// From the promotion patch until the local PostgreSQL accepts writes.
    #[serde(with = "humantime_serde")]
    pub promotion: Duration,
    /// From the rejoin patch until the local PostgreSQL streams from the new primary.
    #[serde(with = "humantime_serde")]
    pub follow: Duration,
    /// Until a newly named synchronous standby reports `sync`.
    #[serde(with = "humantime_serde")]
    pub sync_wait: Duration,
    /// How often waits re-check their condition.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for CnpgTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            query: Duration::from_secs(5),
            api: Duration::from_secs(10),
            demotion: Duration::from_secs(120),
            token_stable: Duration::from_millis(500),
            promotion: Duration::from_secs(120),
            follow: Duration::from_secs(120),
            sync_wait: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// A Kubernetes object name (DNS-1123 subdomain, which CNPG narrows to a label).
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl CnpgConfig {
    /// This cluster's name in the topology (what `spec.replica.primary` names when it leads).
    pub fn self_name(&self) -> &str {
        self.self_name.as_deref().unwrap_or(&self.cluster)
    }

    /// Checks the configuration (nothing is touched).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidInput(format!("cnpg node {:?}: {why}", self.name)));
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
            return bad("name must be non-empty ASCII letters, digits, '-' or '_'".into());
        }
        for (what, value) in [("cluster", &self.cluster), ("namespace", &self.namespace)] {
            if !is_dns_label(value) {
                return bad(format!("{what} {value:?} is not a Kubernetes name (lowercase letters, digits, '-')"));
            }
        }
        for (what, value) in [("self_name", self.self_name()), ("peer_cluster", &self.peer_cluster)] {
            if !is_dns_label(value) {
                return bad(format!("{what} {value:?} is not an externalClusters name"));
            }
        }
        if self.self_name() == self.peer_cluster {
            return bad(format!("peer_cluster {:?} names this cluster itself", self.peer_cluster));
        }
        if self.postgres.host.is_empty() || self.postgres.port == 0 {
            return bad("postgres.host must be set and postgres.port must not be 0".into());
        }
        if let Some(path) = &self.kube.kubeconfig
            && !path.is_file()
        {
            return bad(format!("kube.kubeconfig {} is not a file", path.display()));
        }
        let t = &self.timeouts;
        if t.poll_interval.is_zero() || t.token_stable > t.demotion {
            return bad("timeouts: poll_interval must be > 0 and token_stable below demotion".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn valid() -> CnpgConfig {
        CnpgConfig {
            name: "a".into(),
            cluster: "pg-a".into(),
            namespace: "db".into(),
            self_name: None,
            peer_cluster: "pg-b".into(),
            postgres: PgEndpoint {
                host: "pg-a-rw".into(),
                port: 5432,
                user: "postgres".into(),
                dbname: "postgres".into(),
            },
            kube: KubeAccess::default(),
            timeouts: CnpgTimeouts::default(),
        }
    }

    #[test]
    fn bad_config_is_rejected_with_a_reason() {
        type Case = (&'static str, fn(&mut CnpgConfig));
        let cases: Vec<Case> = vec![
            ("name", |c| c.name = "a b".into()),
            ("cluster", |c| c.cluster = "PG_A".into()),
            ("namespace", |c| c.namespace = String::new()),
            ("peer_cluster", |c| c.peer_cluster = "-x".into()),
            ("itself", |c| c.peer_cluster = "pg-a".into()),
            ("itself", |c| c.self_name = Some("pg-b".into())),
            ("postgres.host", |c| c.postgres.host = String::new()),
            ("kubeconfig", |c| c.kube.kubeconfig = Some("/nonexistent/kubeconfig".into())),
            ("poll_interval", |c| c.timeouts.poll_interval = Duration::ZERO),
        ];
        for (expected, mutate) in cases {
            let mut config = valid();
            mutate(&mut config);
            match config.validate() {
                Err(Error::InvalidInput(why)) => assert!(why.contains(expected), "{expected}: {why}"),
                other => panic!("{expected}: expected InvalidInput, got {other:?}"),
            }
        }
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn parses_from_toml_with_defaults() {
        let config: CnpgConfig = toml_like(
            r#"{"name":"a","cluster":"pg-a","namespace":"db","peer_cluster":"pg-b","postgres":{"host":"pg-a-rw"},
                "timeouts":{"demotion":"30s"}}"#,
        );
        assert_eq!(config.postgres.port, 5432);
        assert_eq!(config.self_name(), "pg-a");
        assert_eq!(config.timeouts.demotion, Duration::from_secs(30));
        assert_eq!(config.timeouts.promotion, CnpgTimeouts::default().promotion);
    }

    fn toml_like(json: &str) -> CnpgConfig {
        serde_json::from_str(json).expect("parses")
    }
}
