//! A pair's parts made from the configuration: the local driver, the peer's observer and
//! upstream, the account PostgreSQL runs as; and the PDM client every pair shares. Everything
//! here checks the file and touches nothing, so a bad file fails before the lease node starts.

use std::path::PathBuf;
use std::sync::Arc;

use cnpg_pair::{CnpgDriver, PlainDriver, PlainNodeConfig, PlainTimeouts, RejoinPolicy, RunAs, Upstream};
use lease::LeaseApi;
use tokio::sync::broadcast;

use crate::Error;
use crate::api::Event;
use crate::audit::Audit;
use crate::config::{Config, DriverKind, PairConfig};
use crate::metrics::Metrics;

/// What every pair of the daemon shares.
pub(super) struct Shared {
    pub lease: Arc<dyn LeaseApi>,
    pub watchdog: Arc<super::watchdog::Watchdog>,
    pub pdm: Pdm,
    pub audit: Audit,
    pub metrics: Metrics,
    pub events: broadcast::Sender<Event>,
}

/// The PDM client with the zone and retry policy of `pdm.*`.
#[derive(Clone)]
pub(super) struct Pdm {
    pub client: pdm::PdmClient,
    pub zone: String,
    pub attempts: u32,
    pub retry_pause: std::time::Duration,
    pub reconcile_interval: std::time::Duration,
    pub reconcile_max_backoff: std::time::Duration,
}

/// One pair's own parts.
pub(super) struct PairParts {
    pub cfg: PairConfig,
    pub peer: String,
    pub peer_observer: Arc<cnpg_pair::Observer>,
    pub peer_upstream: Upstream,
    pub driver: PlainDriver,
}

pub(super) fn pdm_client(config: &Config) -> Result<Pdm, Error> {
    let pdm_config = config
        .pdm
        .as_ref()
        .ok_or_else(|| Error::Config { key: "pdm".into(), message: "required for role data".into() })?;
    let token = std::fs::read_to_string(&pdm_config.token_file).map_err(|e| Error::Config {
        key: "pdm.token_file".into(),
        message: format!("{}: {e}", pdm_config.token_file.display()),
    })?;
    let client = pdm::PdmClient::new(&pdm_config.url, token.trim(), pdm_config.timeout)
        .map_err(|e| Error::Config { key: "pdm.url".into(), message: e.to_string() })?;
    Ok(Pdm {
        client,
        zone: pdm_config.zone.clone(),
        attempts: pdm_config.commit_attempts,
        retry_pause: pdm_config.commit_retry_pause,
        reconcile_interval: pdm_config.reconcile_interval,
        reconcile_max_backoff: pdm_config.reconcile_max_backoff,
    })
}

/// The CloudNativePG driver of `config.pairs[i]` (`driver = "cnpg"`): checked, not connected
/// (the Kubernetes client is built on first use).
pub(super) fn cnpg_driver(config: &Config, i: usize, pair: &PairConfig) -> Result<CnpgDriver, Error> {
    let key = format!("pairs[{i}].cnpg");
    let driver_config = pair
        .cnpg_driver_config(&config.region)
        .ok_or_else(|| Error::Config { key: key.clone(), message: "required with driver = \"cnpg\"".into() })?;
    CnpgDriver::new(driver_config).map_err(|e| Error::Config { key, message: e.to_string() })
}

/// The parts of `config.pairs[i]`.
pub(super) fn pair_parts(config: &Config, i: usize, pair: &PairConfig) -> Result<PairParts, Error> {
    if pair.driver == DriverKind::Cnpg {
        // The driver is complete (cnpg-pair, tested against a real API server), but this control
        // loop still restarts, fences and watches the local server with pg_ctl (holder, steps,
        // watchdog) and does not carry the demotion token through the switchover record yet.
        let driver = cnpg_driver(config, i, pair)?;
        let cnpg = driver.config();
        return Err(Error::Config {
            key: format!("pairs[{i}].driver"),
            message: format!(
                "driver \"cnpg\" (Cluster {}/{}) is valid, but this daemon's control loop cannot run a CNPG pair yet: \
                 it manages PostgreSQL with pg_ctl; use the CNPG driver through the cnpg-pair crate, or driver = \"plain\"",
                cnpg.namespace, cnpg.cluster
            ),
        });
    }
    let key = |k: &str| format!("pairs[{i}].{k}");
    let peer_cfg = pair.peers.iter().find(|p| p.region != config.region).ok_or_else(|| Error::Config {
        key: key("peers"),
        message: "name the other data region's PostgreSQL server (region, host, port)".into(),
    })?;
    let run_as: Option<RunAs> = match &pair.postgres.run_as {
        Some(user) => Some(
            cnpg_pair::process::lookup_user(user)
                .map_err(|e| Error::Config { key: key("postgres.run_as"), message: e.to_string() })?,
        ),
        None => None,
    };
    let data_dir = pair.postgres.data_dir.clone();
    let log_file = pair.postgres.log_file.clone().unwrap_or_else(|| {
        let mut name = data_dir.clone().into_os_string();
        name.push(".log");
        PathBuf::from(name)
    });
    let socket_dir = pair
        .postgres
        .socket_dir
        .clone()
        .unwrap_or_else(|| data_dir.parent().map_or_else(|| PathBuf::from("/tmp"), PathBuf::from));
    let timeouts = PlainTimeouts {
        sync_wait: pair.sync_wait_timeout,
        wal_receiver_timeout: pair.effective_wal_stream_timeout(&config.lease),
        ..PlainTimeouts::default()
    };
    let driver = PlainDriver::new(PlainNodeConfig {
        name: config.region.clone(),
        data_dir,
        bin_dir: pair.postgres.bin_dir.clone(),
        log_file,
        host: pair.postgres.host.clone(),
        port: pair.postgres.port,
        listen_addresses: pair.postgres.listen_addresses.clone(),
        socket_dir,
        superuser: pair.postgres.superuser.clone(),
        dbname: "postgres".into(),
        run_as,
        synchronous_standby: Some(peer_cfg.region.clone()),
        timeouts,
        rejoin: RejoinPolicy::default(),
        auth: pair.postgres.auth(),
    })
    .map_err(|e| Error::Config { key: key("postgres"), message: e.to_string() })?;
    let mut peer_pg = tokio_postgres::Config::new();
    peer_pg
        .host(&peer_cfg.host)
        .port(peer_cfg.port)
        .user(&pair.postgres.superuser)
        .dbname("postgres")
        .application_name("continuum")
        .connect_timeout(pair.peer_connect_timeout);
    // The peer is observed as the observer role; roles are replicated, so the same credentials
    // and TLS settings reach it.
    let peer_connector = cnpg_pair::Connector::from_auth(peer_pg, &pair.postgres.auth(), true)
        .map_err(|message| Error::Config { key: key("postgres"), message })?;
    let peer_upstream = Upstream {
        name: peer_cfg.region.clone(),
        host: peer_cfg.host.clone(),
        port: peer_cfg.port,
        user: pair.postgres.superuser.clone(),
        dbname: "postgres".into(),
    };
    let peer_observer =
        Arc::new(cnpg_pair::Observer::new(peer_cfg.region.clone(), peer_connector, pair.peer_observe_timeout));
    Ok(PairParts { cfg: pair.clone(), peer: peer_cfg.region.clone(), peer_observer, peer_upstream, driver })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cnpg_pair_is_built_and_checked_but_refused_by_the_pg_ctl_loop() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/region-a.toml");
        let mut doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        pair.insert("driver".into(), "cnpg".into());
        let section = "cluster = \"pg-a\"\nnamespace = \"db\"\npeer_cluster = \"pg-b\"\n";
        pair.insert("cnpg".into(), toml::Value::Table(section.parse().unwrap()));
        let config = Config::parse(&toml::to_string(&doc).unwrap()).unwrap();
        let driver = cnpg_driver(&config, 0, &config.pairs[0]).unwrap();
        assert_eq!(driver.config().cluster, "pg-a");
        match pair_parts(&config, 0, &config.pairs[0]) {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "pairs[0].driver");
                assert!(message.contains("db/pg-a"), "{message}");
            }
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
}
