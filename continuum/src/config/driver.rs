//! Which driver runs a pair's PostgreSQL (`pairs[].driver`) and the CloudNativePG driver's keys
//! (`pairs[].cnpg`). The plain driver's keys are `pairs[].postgres`.

use std::path::PathBuf;

use cnpg_pair::cnpg::{CnpgConfig, CnpgTimeouts, KubeAccess, PgEndpoint};
use serde::{Deserialize, Serialize};

use super::{PairConfig, invalid};
use crate::Error;

/// How this region's PostgreSQL of a pair is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// The daemon runs the server from `postgres.data_dir` with `pg_ctl`.
    #[default]
    Plain,
    /// CloudNativePG runs it; the daemon patches this region's `Cluster` (`pairs[].cnpg`).
    Cnpg,
}

/// `pairs[].cnpg`: this region's CNPG `Cluster`. PostgreSQL is observed at `postgres.host` /
/// `postgres.port` as `postgres.superuser` (the Cluster's `-rw` service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnpgPairConfig {
    /// The `Cluster`'s `metadata.name` in this region.
    pub cluster: String,
    pub namespace: String,
    /// `spec.replica.self`, if the topology names this cluster otherwise. Unset: `cluster`.
    #[serde(default)]
    pub self_name: Option<String>,
    /// The peer region's name in `externalClusters` (what `spec.replica.primary` names).
    pub peer_cluster: String,
    /// Kubeconfig file. Unset: in-cluster service account, then `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub timeouts: CnpgTimeouts,
}

impl PairConfig {
    /// The CNPG driver's configuration for this region (`None` for a plain pair).
    pub fn cnpg_driver_config(&self, region: &str) -> Option<CnpgConfig> {
        let cnpg = self.cnpg.as_ref().filter(|_| self.driver == DriverKind::Cnpg)?;
        let mut timeouts = cnpg.timeouts.clone();
        timeouts.sync_wait = self.sync_wait_timeout;
        Some(CnpgConfig {
            name: region.to_string(),
            cluster: cnpg.cluster.clone(),
            namespace: cnpg.namespace.clone(),
            self_name: cnpg.self_name.clone(),
            peer_cluster: cnpg.peer_cluster.clone(),
            postgres: PgEndpoint {
                host: self.postgres.host.clone(),
                port: self.postgres.port,
                user: self.postgres.superuser.clone(),
                dbname: "postgres".into(),
            },
            kube: KubeAccess { kubeconfig: cnpg.kubeconfig.clone() },
            timeouts,
        })
    }
}

/// `driver` and its section agree, and the CNPG section is usable.
pub(super) fn validate_driver(i: usize, pair: &PairConfig, region: &str) -> Result<(), Error> {
    let key = |field: &str| format!("pairs[{i}].{field}");
    match (pair.driver, &pair.cnpg) {
        (DriverKind::Plain, None) => {
            if !pair.postgres.data_dir.is_absolute() {
                return Err(invalid(key("postgres.data_dir"), "must be an absolute path"));
            }
            Ok(())
        }
        (DriverKind::Plain, Some(_)) => Err(invalid(key("cnpg"), "only with driver = \"cnpg\"")),
        (DriverKind::Cnpg, None) => Err(invalid(
            key("cnpg"),
            "driver = \"cnpg\" needs the Cluster: cluster, namespace, peer_cluster (and kubeconfig outside Kubernetes)",
        )),
        (DriverKind::Cnpg, Some(_)) => {
            let config = pair.cnpg_driver_config(region).expect("cnpg section present");
            config.validate().map_err(|e| invalid(key("cnpg"), e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn region_a(driver: Option<&str>, cnpg: Option<&str>) -> Result<Config, Error> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/region-a.toml");
        let mut doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        if let Some(driver) = driver {
            pair.insert("driver".into(), driver.into());
        }
        if let Some(cnpg) = cnpg {
            pair.insert("cnpg".into(), toml::Value::Table(cnpg.parse().unwrap()));
        }
        Config::parse(&toml::to_string(&doc).unwrap())
    }

    fn key_of(result: Result<Config, Error>) -> String {
        match result {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn plain_is_the_default_and_cnpg_needs_its_section() {
        let config = region_a(None, None).unwrap();
        assert_eq!(config.pairs[0].driver, DriverKind::Plain);
        assert!(config.pairs[0].cnpg_driver_config("a").is_none());
        assert_eq!(key_of(region_a(Some("cnpg"), None)), "pairs[0].cnpg");
        let section = "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\n";
        assert_eq!(key_of(region_a(None, Some(section))), "pairs[0].cnpg", "a cnpg section on a plain pair");
        assert!(region_a(Some("operator"), None).is_err());
    }

    #[test]
    fn a_cnpg_pair_maps_onto_the_driver_config() {
        let section =
            "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\n[timeouts]\ndemotion = \"40s\"\n";
        let config = region_a(Some("cnpg"), Some(section)).unwrap();
        let pair = &config.pairs[0];
        let driver = pair.cnpg_driver_config("a").unwrap();
        assert_eq!((driver.name.as_str(), driver.cluster.as_str(), driver.self_name()), ("a", "pg-a", "pg-a"));
        assert_eq!(driver.postgres.port, pair.postgres.port);
        assert_eq!(driver.timeouts.demotion, std::time::Duration::from_secs(40));
        assert_eq!(driver.timeouts.sync_wait, pair.sync_wait_timeout);
    }

    #[test]
    fn bad_cnpg_values_are_refused_by_name() {
        for section in [
            "cluster = \"PG_A\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\n",
            "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-a\"\n",
            "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\nkubeconfig = \"/nonexistent\"\n",
        ] {
            assert_eq!(key_of(region_a(Some("cnpg"), Some(section))), "pairs[0].cnpg", "{section}");
        }
        let unknown = "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\nprimary = \"x\"\n";
        assert!(region_a(Some("cnpg"), Some(unknown)).is_err());
    }
}
