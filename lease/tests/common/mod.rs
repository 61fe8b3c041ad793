//! Shared fixtures: test certificates, in-process clusters on real sockets (optionally with a
//! fault-injecting proxy on every directed link), and `lease-node` child processes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lease::{GrantRules, HandleConfig, LeaseApi, LeaseNode, Member, NodeConfig, NodeId, RaftTimings, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use testkit::proxy::{Mode, Proxy};

/// A CA that signs node certificates into `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, format!("{name} test ca"));
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem())?;
        Ok(TestCa { dir: dir.to_path_buf(), name: name.to_string(), issuer: Issuer::new(params, key) })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A node certificate valid for 127.0.0.1 and localhost, usable as server and client.
    pub fn node_files(&self, node: &str) -> anyhow::Result<TlsFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = self.dir.join(format!("{}-{node}.pem", self.name));
        let key_path = self.dir.join(format!("{}-{node}.key", self.name));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(TlsFiles { ca: self.ca_path(), cert: cert_path, key: key_path })
    }
}

/// Region of node `id` in test clusters: 1 → a, 2 → b, 3 → witness w, 4 → c, 5 → d.
pub fn region(id: NodeId) -> &'static str {
    ["", "a", "b", "w", "c", "d"][id as usize]
}

pub fn fast_rules() -> GrantRules {
    GrantRules { grant_margin: Duration::from_millis(300), call_timeout: Duration::from_secs(1) }
}

/// Holder timings for tests: duration 2 s, renew every 250 ms, fence 500 ms before the deadline.
pub fn fast_handle() -> HandleConfig {
    HandleConfig {
        duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(250),
        drift_margin: Duration::from_millis(200),
        fence_lead: Duration::from_millis(500),
        call_timeout: Duration::from_millis(400),
    }
}

pub struct ClusterOpts {
    pub voters: u64,
    pub proxies: bool,
    pub raft: RaftTimings,
    pub rules: GrantRules,
    /// Pairs every node may create (`NodeConfig::pairs`).
    pub pairs: Vec<String>,
}

/// The pair the tests protect.
pub const PAIR: &str = "orders";

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            voters: 3,
            proxies: false,
            raft: RaftTimings::fast(),
            rules: fast_rules(),
            pairs: vec![PAIR.to_string()],
        }
    }
}

/// A loopback port below the kernel's ephemeral range (32768+), free right now and not handed out
/// before in this process. Nodes restart on the same port; a port from the ephemeral range can
/// meanwhile be taken as the local end of some outgoing connection (our own proxies' included),
/// and the restart would fail with "address in use".
pub fn node_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = rand::rng().random_range(20_000..32_000);
        let mut handed_out = HANDED_OUT.lock().expect("port registry poisoned");
        if handed_out.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.push(port);
        return port;
    }
}

pub fn listen_addrs(ids: &[NodeId]) -> BTreeMap<NodeId, SocketAddr> {
    ids.iter().map(|&id| (id, SocketAddr::from(([127, 0, 0, 1], node_port())))).collect()
}

/// Node configs for a cluster whose members listen on `listen`; node 3 is the witness.
pub fn make_configs(
    dir: &Path,
    ca: &TestCa,
    opts: &ClusterOpts,
    listen: &BTreeMap<NodeId, SocketAddr>,
    dial_overrides: impl Fn(NodeId) -> BTreeMap<NodeId, String>,
) -> anyhow::Result<BTreeMap<NodeId, NodeConfig>> {
    testkit::install_crypto_provider();
    testkit::init_tracing();
    let members: Vec<Member> = listen
        .iter()
        .map(|(&id, addr)| Member { id, region: region(id).into(), addr: addr.to_string(), witness: id == 3 })
        .collect();
    let mut configs = BTreeMap::new();
    for &id in listen.keys() {
        let cfg = NodeConfig {
            id,
            listen: listen[&id],
            data_dir: dir.join(format!("node{id}")),
            tls: ca.node_files(region(id))?,
            raft: opts.raft.clone(),
            lease: opts.rules.clone(),
            members: members.clone(),
            dial_overrides: dial_overrides(id),
            pairs: opts.pairs.clone(),
        };
        configs.insert(id, cfg);
    }
    Ok(configs)
}

/// An in-process cluster. Node 3 is the witness.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub configs: BTreeMap<NodeId, NodeConfig>,
    pub nodes: BTreeMap<NodeId, LeaseNode>,
    /// `(from, to)` → proxy that `from` dials to reach `to`.
    pub links: BTreeMap<(NodeId, NodeId), Proxy>,
}

impl Cluster {
    pub async fn start(opts: ClusterOpts) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new(dir.path(), "cluster")?;
        let ids: Vec<NodeId> = (1..=opts.voters).collect();
        let listen = listen_addrs(&ids);
        let mut links = BTreeMap::new();
        if opts.proxies {
            for &from in &ids {
                for &to in &ids {
                    if from != to {
                        links.insert((from, to), Proxy::start(listen[&to]).await?);
                    }
                }
            }
        }
        let overrides = |id: NodeId| -> BTreeMap<NodeId, String> {
            links.iter().filter(|((f, _), _)| *f == id).map(|((_, t), p)| (*t, p.addr().to_string())).collect()
        };
        let configs = make_configs(dir.path(), &ca, &opts, &listen, overrides)?;
        let mut cluster = Cluster { dir, ca, configs, nodes: BTreeMap::new(), links };
        for id in ids {
            cluster.restart(id).await?;
        }
        cluster.leader().await?;
        Ok(cluster)
    }

    pub fn node(&self, id: NodeId) -> &LeaseNode {
        &self.nodes[&id]
    }

    pub fn api(&self, id: NodeId) -> Arc<dyn LeaseApi> {
        Arc::new(self.nodes[&id].clone())
    }

    /// Stops a node (its storage stays), like a crash of the process.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    /// Starts (or restarts) a node from its data directory.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.stop(id).await;
        let node = LeaseNode::start(self.configs[&id].clone()).await.with_context(|| format!("start node {id}"))?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Waits until every running node knows the same leader, and returns it.
    pub async fn leader(&self) -> anyhow::Result<NodeId> {
        testkit::wait_for("a leader known to all running nodes", Duration::from_secs(15), || async {
            let leaders: Vec<_> = self.nodes.values().map(|n| n.status().leader).collect();
            Ok(match leaders.first() {
                Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) && self.nodes.contains_key(l) => Some(*l),
                _ => None,
            })
        })
        .await
    }

    /// Stops every node before the data directory goes away.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId, mode: Mode) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.set_mode(mode);
            }
        }
    }

    pub fn heal(&self) {
        for p in self.links.values() {
            p.set_mode(Mode::Pass);
        }
    }
}

/// A `lease-node` child process, killed on drop.
pub struct NodeProcess {
    pub child: Child,
    pub config_path: PathBuf,
}

impl NodeProcess {
    pub fn spawn(config: &NodeConfig, dir: &Path) -> anyhow::Result<Self> {
        let config_path = dir.join(format!("node{}.toml", config.id));
        std::fs::write(&config_path, toml::to_string(config)?)?;
        let log = std::fs::File::create(dir.join(format!("node{}.log", config.id)))?;
        let child = Command::new(env!("CARGO_BIN_EXE_lease-node"))
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(NodeProcess { child, config_path })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP/2 client presenting `tls`'s certificate, as the lease nodes' own clients do.
pub fn raw_client(tls: &lease::TlsFiles) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca)? {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_file_iter(&tls.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config).http2_prior_knowledge().no_proxy().build()?)
}
