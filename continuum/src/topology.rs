//! Typed configs for a whole deployment on one machine: two data regions and a witness, on
//! loopback or on hosts of a test bridge. `continuum demo`, the end-to-end harness and the
//! benchmarks build their daemon and PDM configs here and write TOML that the real loaders read
//! back with validation, so a path with a quote in it or a key the loader refuses fails here,
//! not in a daemon's log.
//!
//! Every struct starts from its serde defaults, the single source of default values (a key added
//! with a default needs no change here); only what the topology decides is set, as typed values.
//! Callers adjust the returned [`Config`] values (e.g. a pair's `durability`) before writing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::config::{
    ApiConfig, AuditConfig, Config, DnsConfig, LeaseConfig, PairConfig, PeerConfig, PgPeerConfig, PostgresConfig,
    RaftConfig, TlsConfig,
};
use crate::pki::NodeFiles;

/// The protected pair's name.
pub const PAIR: &str = "app";
/// The pair's record inside the zone.
pub const RECORD: &str = "db";
/// PowerDNS' `lua-health-checks-interval` and PDM's `powerdns.health_check_interval`, which must
/// agree; short so that DNS follows a switchover quickly.
pub const HEALTH_CHECK_SECS: u32 = 1;

/// Raft and lease timings.
#[derive(Debug, Clone)]
pub struct Timings {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub lease: LeaseConfig,
}

impl Timings {
    /// Short timings that pass validation (README: "Test timings").
    pub fn fast() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(500),
            lease: LeaseConfig {
                renew_interval: Duration::from_millis(300),
                duration: Duration::from_secs(2),
                drift_margin: Duration::from_millis(200),
                grant_margin: Duration::from_millis(300),
                call_timeout: Duration::from_secs(1),
                fence_timeout: None,
            },
        }
    }
}

/// One daemon of the topology. Raft ids are positions in [`Topology::nodes`] plus one.
#[derive(Debug, Clone)]
pub struct Node {
    pub region: String,
    /// Address its raft and API listeners bind and the other nodes dial.
    pub host: IpAddr,
    pub raft_port: u16,
    /// Its API port; a witness serves one only when set.
    pub api_port: Option<u16>,
    pub tls: NodeFiles,
    /// A data region's PostgreSQL; `None` makes the node the witness.
    pub data: Option<DataNode>,
    /// Peer region → where this node dials it instead of its address (e.g. a link proxy).
    pub dial: BTreeMap<String, String>,
}

/// A data region's PostgreSQL server and how its daemon reaches the pair's other server.
#[derive(Debug, Clone)]
pub struct DataNode {
    pub server: devstack::PgNode,
    pub peer: PgPeerConfig,
}

/// Everything the nodes share.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Raft data directories (`raft-<region>`) and audit logs (`audit-<region>.log`) go here.
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    /// `None`: the daemon's defaults (the WAN profile).
    pub timings: Option<Timings>,
    /// Region → the address the pair's record answers while that region holds the lease.
    pub addresses: BTreeMap<String, String>,
    pub pdm_url: String,
    pub pdm_token_file: PathBuf,
    pub zone: String,
    pub tokens_file: PathBuf,
    /// How the daemons authenticate to and encrypt with both PostgreSQL servers
    /// ([`secure_postgres`]); the default is the config's (no password, TLS when offered).
    pub pg_auth: cnpg_pair::PgAuth,
}

/// The PostgreSQL security of a loopback deployment: one server certificate for the pair
/// (valid for 127.0.0.1, localhost and `hosts`: each data directory is a copy of the other's)
/// from `ca`, passwords for the admin role (`postgres`) and the observer role (`pg_monitor`)
/// in owner-only files in `dir`; the daemons verify the servers (`verify-full`).
pub fn secure_postgres(
    dir: &Path,
    ca: &crate::pki::LocalCa,
    hosts: &[IpAddr],
) -> Result<(devstack::PgSecurity, cnpg_pair::PgAuth), Error> {
    let server = ca.node_with_addresses("postgres", hosts)?;
    let (admin_password, observer_password) = (devstack::random_hex(16), devstack::random_hex(16));
    let (admin_file, observer_file) = (dir.join("pg-admin.password"), dir.join("pg-observer.password"));
    write_secret(&admin_file, &format!("{admin_password}\n"))?;
    write_secret(&observer_file, &format!("{observer_password}\n"))?;
    let security = devstack::PgSecurity {
        server_cert: server.cert,
        server_key: server.key,
        admin_password,
        observer_user: OBSERVER_ROLE.into(),
        observer_password,
    };
    let auth = cnpg_pair::PgAuth {
        sslmode: cnpg_pair::SslMode::VerifyFull,
        sslrootcert: Some(ca.ca_path()),
        password_file: Some(admin_file),
        observer_user: Some(OBSERVER_ROLE.into()),
        observer_password_file: Some(observer_file),
        ..cnpg_pair::PgAuth::default()
    };
    Ok((security, auth))
}

/// The observation role [`secure_postgres`] creates (`pg_monitor` only).
pub const OBSERVER_ROLE: &str = "continuum_observer";

impl Topology {
    /// The config of every node, in [`Topology::nodes`] order.
    pub fn configs(&self) -> Result<Vec<Config>, Error> {
        (0..self.nodes.len()).map(|i| self.config(i)).collect()
    }

    /// The config of node `index`.
    pub fn config(&self, index: usize) -> Result<Config, Error> {
        let node = &self.nodes[index];
        let peers: Vec<PeerConfig> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, peer)| PeerConfig {
                id: i as u64 + 1,
                region: peer.region.clone(),
                address: SocketAddr::new(peer.host, peer.raft_port).to_string(),
                witness: peer.data.is_none(),
                dial: node.dial.get(&peer.region).cloned(),
            })
            .collect();
        let mut raft: RaftConfig = defaulted([
            ("node_id", value(index as u64 + 1)?),
            ("listen", value(SocketAddr::new(node.host, node.raft_port))?),
            ("data_dir", value(self.dir.join(format!("raft-{}", node.region)))?),
            ("peers", value(&peers)?),
        ])?;
        let tls = TlsConfig { cert: node.tls.cert.clone(), key: node.tls.key.clone(), ca: node.tls.ca.clone() };
        let role = if node.data.is_some() { "data" } else { "witness" };
        let mut config: Config = defaulted([
            ("region", value(&node.region)?),
            ("role", value(role)?),
            ("raft", value(&raft)?),
            ("tls", value(&tls)?),
        ])?;
        if let Some(timings) = &self.timings {
            raft.heartbeat_interval = timings.heartbeat;
            raft.election_timeout_min = timings.election_min;
            raft.election_timeout_max = timings.election_max;
            config.raft = raft;
            config.lease = timings.lease.clone();
        }
        if let Some(port) = node.api_port {
            let mut api: ApiConfig = defaulted([("tokens_file", value(&self.tokens_file)?)])?;
            api.listen = SocketAddr::new(node.host, port);
            config.api = Some(api);
        }
        if let Some(data) = &node.data {
            config.pairs = vec![self.pair(data)?];
            config.pdm = Some(defaulted([
                ("url", value(&self.pdm_url)?),
                ("token_file", value(&self.pdm_token_file)?),
                ("zone", value(&self.zone)?),
            ])?);
            config.audit = Some(AuditConfig::local(self.dir.join(format!("audit-{}.log", node.region))));
        }
        Ok(config)
    }

    fn pair(&self, data: &DataNode) -> Result<PairConfig, Error> {
        let server = &data.server;
        let mut postgres: PostgresConfig = defaulted([("data_dir", value(&server.data_dir)?)])?;
        postgres.bin_dir = server.bin_dir.clone();
        postgres.host = server.host.clone();
        postgres.port = server.port;
        postgres.log_file = Some(server.log_file.clone());
        postgres.socket_dir = Some(server.socket_dir.clone());
        postgres.run_as = server.run_as.is_some().then(|| "postgres".to_string());
        let auth = &self.pg_auth;
        postgres.sslmode = auth.sslmode;
        postgres.sslrootcert = auth.sslrootcert.clone();
        postgres.sslcert = auth.sslcert.clone();
        postgres.sslkey = auth.sslkey.clone();
        postgres.password_file = auth.password_file.clone();
        postgres.observer_user = auth.observer_user.clone();
        postgres.observer_password_file = auth.observer_password_file.clone();
        let mut dns: DnsConfig = defaulted([("record", value(RECORD)?)])?;
        dns.ttl = 1;
        dns.addresses = self.addresses.clone();
        let mut pair: PairConfig =
            defaulted([("name", value(PAIR)?), ("postgres", value(&postgres)?), ("dns", value(&dns)?)])?;
        pair.peers = vec![data.peer.clone()];
        Ok(pair)
    }
}

/// Serializes `config`, checks that the daemon's loader accepts the text (with validation) and
/// writes it to `path`.
pub fn write(config: &Config, path: &Path) -> Result<(), Error> {
    let text = toml::to_string(config).map_err(internal)?;
    Config::parse(&text)?;
    std::fs::write(path, text)
        .map_err(|e| Error::Config { key: "--config".into(), message: format!("write {}: {e}", path.display()) })
}

/// PDM's config for an in-process server on `listen` in front of PowerDNS, read back through
/// its loader (with validation).
pub fn pdm_config(listen: SocketAddr, tokens_file: &Path, pdns: &devstack::PowerDns) -> Result<pdm::Config, Error> {
    pdm_config_for(listen, tokens_file, &pdns.api_url, &pdns.api_key, pdns.dns_addr)
}

/// PDM's tokens file (mode 600, as PDM requires): `commit` for the daemons, `admin` for the zone
/// set-up of the demo or the harness.
pub fn write_pdm_tokens(path: &Path, commit: &str, admin: &str) -> Result<(), Error> {
    let token = |name: &str, role: &str, token: &str| {
        toml::Table::from_iter(
            [("name", name), ("role", role), ("token", token)].map(|(k, v)| (k.to_string(), v.into())),
        )
    };
    let doc = toml::Table::from_iter([(
        "tokens".to_string(),
        toml::Value::Array(vec![token("daemons", "commit", commit).into(), token("setup", "admin", admin).into()]),
    )]);
    let text = toml::to_string(&doc).map_err(internal)?;
    write_secret(path, &text)
}

/// Writes a secret (key, token) readable by its owner only, as the daemons require.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |e: std::io::Error| internal(format!("{}: {e}", path.display()));
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    // An existing file keeps its mode through open: tighten it too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

fn pdm_config_for(
    listen: SocketAddr,
    token_file: &Path,
    api_url: &str,
    api_key: &str,
    dns_addr: SocketAddr,
) -> Result<pdm::Config, Error> {
    let mut powerdns: pdm::config::PowerDnsConfig =
        defaulted([("api_url", value(api_url)?), ("dns_addr", value(dns_addr)?)])?;
    powerdns.api_key = Some(api_key.to_string());
    powerdns.health_check_interval = Duration::from_secs(HEALTH_CHECK_SECS.into());
    let mut config: pdm::Config =
        defaulted([("listen", value(listen)?), ("tokens_file", value(token_file)?), ("powerdns", value(&powerdns)?)])?;
    config.zones.default_nameservers = vec!["ns1.continuum.invalid.".into()];
    let text = toml::to_string(&config).map_err(internal)?;
    pdm::Config::from_toml(&text).map_err(|e| Error::Config { key: "pdm".into(), message: e.to_string() })
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal { message: format!("topology config: {e}") }
}

fn value(v: impl Serialize) -> Result<toml::Value, Error> {
    toml::Value::try_from(v).map_err(internal)
}

/// `T` from its required keys, every other field at its serde default.
fn defaulted<T: DeserializeOwned, const N: usize>(required: [(&str, toml::Value); N]) -> Result<T, Error> {
    let table: toml::Table = required.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    toml::Value::Table(table).try_into().map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-region topology whose every path has characters TOML and PostgreSQL quote.
    fn awkward(dir: &Path) -> Topology {
        let files = |region: &str| NodeFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{region}.pem")),
            key: dir.join(format!("{region}.key")),
        };
        let server = |name: &str, port: u16| devstack::PgNode {
            name: name.into(),
            host: "127.0.0.1".into(),
            port,
            data_dir: dir.join(name),
            socket_dir: dir.to_path_buf(),
            log_file: dir.join(format!("{name}.log")),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            run_as: Some(devstack::os::RunAs { uid: 1, gid: 1 }),
            launcher: None,
            password: None,
        };
        let node = |region: &str, port: u16, data: Option<DataNode>| Node {
            region: region.into(),
            host: IpAddr::from([127, 0, 0, 1]),
            raft_port: port,
            api_port: Some(port + 100),
            tls: files(region),
            data,
            dial: BTreeMap::from([("w".to_string(), "127.0.0.1:9".to_string())]),
        };
        let peer = |region: &str, port: u16| PgPeerConfig { region: region.into(), host: "127.0.0.1".into(), port };
        Topology {
            dir: dir.to_path_buf(),
            nodes: vec![
                node("a", 7001, Some(DataNode { server: server("a", 5501), peer: peer("b", 5502) })),
                node("b", 7002, Some(DataNode { server: server("b", 5502), peer: peer("a", 5501) })),
                node("w", 7003, None),
            ],
            timings: Some(Timings::fast()),
            addresses: BTreeMap::from([("a".into(), "192.0.2.1".into()), ("b".into(), "192.0.2.2".into())]),
            pdm_url: "http://127.0.0.1:8053".into(),
            pdm_token_file: dir.join("pdm.token"),
            zone: "continuum.test".into(),
            tokens_file: dir.join("tokens.toml"),
            pg_auth: cnpg_pair::PgAuth {
                sslmode: cnpg_pair::SslMode::VerifyFull,
                sslrootcert: Some(dir.join("ca.pem")),
                password_file: Some(dir.join("pg password")),
                observer_user: Some(OBSERVER_ROLE.into()),
                ..cnpg_pair::PgAuth::default()
            },
        }
    }

    #[test]
    fn written_configs_load_back_unchanged_through_the_validating_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(r#"it's a "dir" \ with [brackets]"#);
        std::fs::create_dir(&dir).unwrap();
        let topology = awkward(&dir);
        let configs = topology.configs().unwrap();
        assert_eq!(configs.len(), 3);
        for config in &configs {
            let path = dir.join(format!("{}.toml", config.region));
            write(config, &path).unwrap();
            let loaded = Config::load(&path).unwrap();
            assert_eq!(toml::to_string(&loaded).unwrap(), toml::to_string(config).unwrap(), "{}", config.region);
        }
        let a = Config::load(&dir.join("a.toml")).unwrap();
        let pg = &a.pairs[0].postgres;
        assert_eq!(
            (pg.data_dir.as_path(), pg.port, pg.run_as.as_deref()),
            (dir.join("a").as_path(), 5501, Some("postgres"))
        );
        assert_eq!(
            a.raft.peers.iter().map(|p| (p.id, p.witness)).collect::<Vec<_>>(),
            [(1, false), (2, false), (3, true)]
        );
        assert_eq!(a.raft.peers[2].dial.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(a.lease.duration, Duration::from_secs(2));
        assert_eq!(a.pairs[0].peers[0].port, 5502);
        let w = Config::load(&dir.join("w.toml")).unwrap();
        assert!(w.pairs.is_empty() && w.pdm.is_none() && w.audit.is_none() && w.api.is_some());
    }

    #[test]
    fn defaults_stay_the_loaders_and_a_config_the_loader_refuses_is_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut topology = awkward(tmp.path());
        topology.timings = None;
        let mut a = topology.config(0).unwrap();
        assert_eq!(a.lease.duration, Duration::from_secs(10), "the daemon's default lease");
        assert_eq!(a.pairs[0].max_lag_bytes, 16 * 1024 * 1024);
        a.lease.renew_interval = a.lease.duration;
        let path = tmp.path().join("a.toml");
        match write(&a, &path) {
            Err(Error::Config { key, .. }) => assert_eq!(key, "lease.renew_interval"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(!path.exists());
    }

    #[test]
    fn pdm_config_loads_back_through_pdms_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join(r#"a "quoted" token"#);
        let config = pdm_config_for(
            "127.0.0.1:0".parse().unwrap(),
            &token,
            "http://127.0.0.1:8081",
            "k\"ey",
            "127.0.0.1:53".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(config.tokens_file, token);
        assert_eq!(config.powerdns.api_key.as_deref(), Some("k\"ey"));
        assert_eq!(config.powerdns.health_check_interval, Duration::from_secs(1));
        assert_eq!(config.powerdns.api_timeout, Duration::from_secs(5), "PDM's default");
        assert!(
            pdm_config_for("127.0.0.1:0".parse().unwrap(), &token, "ftp://x", "k", "127.0.0.1:53".parse().unwrap())
                .is_err()
        );
    }
}
