//! A whole deployment on loopback for end-to-end tests: a real PostgreSQL 15 sync pair (`a`
//! primary, `b` standby), PowerDNS + PDM, and three `continuum` processes (data daemons `a` and
//! `b`, witness `w`) with short lease timings. Dropping it kills every process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use continuum::api::{PairStatus, PgRole, Status, SwitchoverRecord};
use continuum::config::{Durability, OnShutdown, PairConfig, PgPeerConfig, Takeover};
use continuum::topology::{self, DataNode, Node, Timings, Topology};
use testkit::netns::{NetNs, Network};
use testkit::pg::NodeSettings;
use testkit::proxy::{Mode, Proxy};
use testkit::{DnsProbe, PgNode, PgPair, PowerDns};
use tokio::sync::oneshot;

use super::{OWNER, VIEWER, tokens_toml};

pub const BIN: &str = env!("CARGO_BIN_EXE_continuum");

/// How many lines of each daemon's log a failing test prints: `CONTINUUM_TEST_LOG_LINES`, 40.
fn log_tail_lines() -> usize {
    std::env::var("CONTINUUM_TEST_LOG_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(40)
}
pub const ZONE: &str = "continuum.test";
pub const RECORD: &str = "db.continuum.test";
pub const PDM_TOKEN: &str = "pdm-test-token-0123456789abcdef";
pub const PDM_ADMIN_TOKEN: &str = "pdm-admin-token-0123456789abcdef";

/// The DNS answer when `region` holds the lease.
pub fn address_of(region: &str) -> &'static str {
    match region {
        "a" => "192.0.2.1",
        _ => "192.0.2.2",
    }
}

/// `region` holds the lease at an epoch above `above` and its server is the primary.
pub fn serves(p: &PairStatus, region: &str, above: u64) -> bool {
    p.holder.as_deref() == Some(region)
        && p.epoch > above
        && p.regions.iter().any(|r| r.region == region && r.role == PgRole::Primary)
}

/// `holder` holds the lease, `standby` is recorded as its synchronous standby and streams as one.
pub fn sync_standby_of(p: &PairStatus, holder: &str, standby: &str) -> bool {
    p.holder.as_deref() == Some(holder)
        && p.sync_standby.as_deref() == Some(standby)
        && p.regions
            .iter()
            .any(|r| r.region == standby && r.role == PgRole::Standby && r.sync_state.as_deref() == Some("sync"))
}

/// Samples both servers every 20 ms and counts the moments when both accepted writes. A sample
/// in which a server did not answer in time (a loaded machine, a partition) decides nothing:
/// it is counted as undecided, never as "not writable", and [`SplitBrainReport::assert_safe`]
/// demands enough decisive samples for "no split brain" to mean something.
pub struct SplitBrainSampler {
    counts: Arc<Counts>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    samples: AtomicUsize,
    both_writable: AtomicUsize,
    undecided: AtomicUsize,
}

/// What a [`SplitBrainSampler`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitBrainReport {
    pub samples: usize,
    /// Samples in which both servers answered as writable primaries.
    pub both_writable: usize,
    /// Samples in which no server answered "not writable" and at least one did not answer.
    pub undecided: usize,
}

impl SplitBrainReport {
    pub fn decisive(&self) -> usize {
        self.samples - self.undecided
    }

    /// No decisive sample saw two writable servers, and at least `min_decisive` samples (and
    /// half of all) were decisive.
    pub fn assert_safe(&self, min_decisive: usize) {
        assert_eq!(self.both_writable, 0, "both servers were writable at the same time: {self:?}");
        assert!(
            self.decisive() >= min_decisive && self.decisive() * 2 >= self.samples,
            "too few decisive split-brain samples to conclude anything: {self:?} (need {min_decisive} and half)"
        );
    }
}

/// One server's answer to "do you accept writes?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable {
    Yes,
    /// In recovery, or refusing connections: it cannot take a write now.
    No,
    /// No answer within the deadline: it may or may not be taking writes.
    Unknown,
}

impl SplitBrainSampler {
    pub fn start(c: &Cluster) -> SplitBrainSampler {
        let counts = Arc::new(Counts::default());
        let stop = tokio_util::sync::CancellationToken::new();
        // Over the Unix socket (trust): a sample every 20 ms over TCP would pay TLS and scram's
        // 4096 HMAC rounds per connection, and a loaded machine then yields too few samples.
        let (a, b) = (c.node("a").local_conninfo(), c.node("b").local_conninfo());
        let task = {
            let (counts, stop) = (counts.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let (wa, wb) = tokio::join!(writable(a.clone()), writable(b.clone()));
                    counts.samples.fetch_add(1, Ordering::SeqCst);
                    match (wa, wb) {
                        (Writable::Yes, Writable::Yes) => _ = counts.both_writable.fetch_add(1, Ordering::SeqCst),
                        (Writable::No, _) | (_, Writable::No) => {}
                        _ => _ = counts.undecided.fetch_add(1, Ordering::SeqCst),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        SplitBrainSampler { counts, stop, task }
    }

    /// Stops sampling; what the samples saw.
    pub async fn stop(self) -> SplitBrainReport {
        self.stop.cancel();
        let _ = self.task.await;
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        SplitBrainReport {
            samples: load(&self.counts.samples),
            both_writable: load(&self.counts.both_writable),
            undecided: load(&self.counts.undecided),
        }
    }
}

/// Nothing listens on the port (or no socket file: the server removed it on shutdown), or the
/// server says it is starting up or shutting down.
fn refuses_writes(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return *code == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound))
}

/// Whether the server behind `conninfo` accepts writes, asked with a 500 ms deadline per step.
pub async fn writable(conninfo: String) -> Writable {
    const DEADLINE: Duration = Duration::from_millis(500);
    let client = match tokio::time::timeout(DEADLINE, tokio_postgres::connect(&conninfo, testkit::tls::client())).await
    {
        Ok(Err(e)) if refuses_writes(&e) => return Writable::No,
        Err(_) | Ok(Err(_)) => return Writable::Unknown,
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            client
        }
    };
    match tokio::time::timeout(DEADLINE, client.query_one("SELECT pg_is_in_recovery()", &[])).await {
        Ok(Ok(row)) if row.get::<_, bool>(0) => Writable::No,
        Ok(Ok(_)) => Writable::Yes,
        _ => Writable::Unknown,
    }
}

pub struct Options {
    pub durability: &'static str,
    /// `pairs[].takeover`: `lease-expiry` or `sync-fenced`.
    pub takeover: &'static str,
    pub failover_debounce: &'static str,
    pub auto_failover: bool,
    pub switchover_rejoin_timeout: &'static str,
    /// `pairs[].step_timeout`; unset: the daemon's default.
    pub step_timeout: Option<&'static str>,
    pub primary_down_timeout: &'static str,
    /// `pairs[].on_shutdown`: what a SIGTERM of a holder's daemon does.
    pub on_shutdown: &'static str,
    /// Leave every raft and lease timing at the daemon's defaults (the WAN profile: 10 s lease)
    /// instead of the short test timings.
    pub default_timings: bool,
    /// Each region (`a`, `b`, witness `w`) on its own host: a network namespace on a bridge
    /// (see `testkit::netns`), PostgreSQL and daemon inside it; PowerDNS, PDM and the test stay
    /// in the test's namespace. Needs root.
    pub namespaces: bool,
    /// Route every inter-region connection (raft between all three, PostgreSQL between `a` and
    /// `b`) through a `testkit::proxy` per direction, so tests can add latency or cut links
    /// with [`Cluster::set_links`]. Loopback only.
    pub link_proxies: bool,
    /// The pair's Gateway API route (switchover drain step); unset: the step is skipped.
    pub traffic: Option<continuum::config::TrafficConfig>,
}

impl Options {
    /// This test's pair policy on top of the topology's config.
    fn apply(&self, pair: &mut PairConfig) -> anyhow::Result<()> {
        let duration = |s: &str| humantime::parse_duration(s).with_context(|| format!("duration {s:?}"));
        pair.durability = match self.durability {
            "required" => Durability::Required,
            "preferred" => Durability::Preferred,
            other => anyhow::bail!("durability {other:?}"),
        };
        pair.takeover = match self.takeover {
            "lease-expiry" => Takeover::LeaseExpiry,
            "sync-fenced" => Takeover::SyncFenced,
            other => anyhow::bail!("takeover {other:?}"),
        };
        pair.failover_debounce = duration(self.failover_debounce)?;
        pair.auto_failover = self.auto_failover;
        pair.switchover_rejoin_timeout = duration(self.switchover_rejoin_timeout)?;
        pair.step_timeout = self.step_timeout.map(duration).transpose()?;
        pair.primary_down_timeout = duration(self.primary_down_timeout)?;
        pair.traffic = self.traffic.clone();
        pair.on_shutdown = match self.on_shutdown {
            "switchover" => OnShutdown::Switchover,
            "fence" => OnShutdown::Fence,
            other => anyhow::bail!("on_shutdown {other:?}"),
        };
        Ok(())
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: "preferred",
            takeover: "lease-expiry",
            failover_debounce: "5s",
            auto_failover: true,
            switchover_rejoin_timeout: "1m",
            step_timeout: None,
            primary_down_timeout: "15s",
            on_shutdown: "switchover",
            default_timings: false,
            namespaces: false,
            link_proxies: false,
            traffic: None,
        }
    }
}

pub struct Daemon {
    pub region: String,
    pub config: PathBuf,
    pub api: String,
    pub log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    netns: Option<NetNs>,
}

impl Daemon {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts (or restarts) the process with extra environment variables.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let command = if self.region == "w" { "witness" } else { "run" };
        let mut cmd = Command::new(BIN);
        cmd.arg(command).arg("--config").arg(&self.config);
        cmd.env_remove(continuum::failpoint::ENV).env("RUST_LOG", "info,openraft=warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if let Some(netns) = &self.netns {
            netns.apply(&mut cmd);
        }
        self.child = Some(cmd.spawn().context("spawn continuum")?);
        Ok(())
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// `kill -9`, then starts again with `failpoint` armed.
    pub fn restart_armed(&mut self, failpoint: continuum::failpoint::Failpoint) -> anyhow::Result<()> {
        self.kill9();
        self.set_env(continuum::failpoint::ENV, &failpoint.to_string());
        self.start()
    }

    /// SIGTERM: a graceful stop (`on_shutdown`); [`Daemon::wait_exit`] waits for its end.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }

    /// `kill -9` of the daemon alone (its fence watchdog and PostgreSQL go on).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself (e.g. a failpoint); its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let child = self.child.as_mut().context("not running")?;
        let code = testkit::wait_for("daemon exit", timeout, || {
            let status = child.try_wait();
            async move { Ok(status?.map(|s| s.code())) }
        })
        .await?;
        self.child = None;
        Ok(code)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub pg: PgPair,
    pub pdns: PowerDns,
    pub dns: DnsProbe,
    pub daemons: BTreeMap<String, Daemon>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pdm_stop: Option<oneshot::Sender<()>>,
    pdm_link: Option<Proxy>,
    links: Vec<Proxy>,
    /// Last: links and namespaces go after every process in them.
    pub network: Option<Network>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(stop) = self.pdm_stop.take() {
            let _ = stop.send(());
        }
        for daemon in self.daemons.values_mut() {
            daemon.kill9();
        }
    }
}

impl Cluster {
    pub async fn start(options: Options) -> anyhow::Result<Cluster> {
        testkit::install_crypto_provider();
        let network = if options.namespaces { Some(Network::create(&["a", "b", "w"])?) } else { None };
        let host_of = |region: &str| -> IpAddr {
            network.as_ref().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |n| IpAddr::V4(n.host(region).addr))
        };
        let dir = tempfile::Builder::new().prefix("continuum-e2e-").tempdir()?;
        let d = dir.path();
        // One CA for the daemons' mutual TLS and the PostgreSQL servers' certificates; between
        // regions PostgreSQL takes TLS with scram-sha-256 only (trust on the Unix socket).
        let ca = continuum::pki::LocalCa::new(d)?;
        let (security, pg_auth) = topology::secure_postgres(d, &ca, &[host_of("a"), host_of("b")])?;
        let mut pg = PgPair::builder().names("a", "b").secure(security);
        if let Some(network) = &network {
            for region in ["a", "b"] {
                let host = network.host(region);
                pg = pg.place(region, host.addr.into(), host.netns.launcher());
            }
        }
        let pg = pg.start().await?;
        assert!(!(options.namespaces && options.link_proxies), "link proxies run on loopback only");
        let mut links = Vec::new();
        // The port `from` dials to reach `to`'s PostgreSQL.
        let mut pg_port: BTreeMap<(&str, &str), u16> =
            [(("a", "b"), pg.standby.port), (("b", "a"), pg.primary.port)].into();
        if options.link_proxies {
            for (from, to, upstream) in [("a", "b", pg.standby.port), ("b", "a", pg.primary.port)] {
                let proxy = Proxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, upstream))).await?;
                pg_port.insert((from, to), proxy.addr().port());
                links.push(proxy);
            }
            // The standby streams from a through its link as well.
            pg.standby.write_node_conf(&NodeSettings {
                primary_conninfo: Some(pg.primary.replication_conninfo_at("127.0.0.1", pg_port[&("b", "a")], "b")),
                synchronous_standby_names: vec!["a".into()],
            })?;
            pg.standby.reload()?;
            pg.wait_streaming(true, Duration::from_secs(30)).await?;
        }
        let gateway = network.as_ref().map_or(Ipv4Addr::LOCALHOST, Network::gateway);
        let pdns = PowerDns::builder().health_check_interval(topology::HEALTH_CHECK_SECS).start().await?;
        topology::write_secret(&d.join("pdm.token"), &format!("{PDM_TOKEN}\n"))?;
        // The daemons hold a `commit` token; this harness creates the zone with an `admin` one.
        topology::write_pdm_tokens(&d.join("pdm-tokens.toml"), PDM_TOKEN, PDM_ADMIN_TOKEN)?;
        topology::write_secret(&d.join("tokens.toml"), &tokens_toml())?;
        let pdm_config = topology::pdm_config(SocketAddr::from((gateway, 0)), &d.join("pdm-tokens.toml"), &pdns)?;
        let server = pdm::Server::bind(&pdm_config).await?;
        // On loopback PDM sits behind a proxy, so a test can take it away (`set_pdm`).
        let pdm_link = match network {
            None => Some(Proxy::start(server.local_addr()).await?),
            Some(_) => None,
        };
        let pdm_url = format!("http://{}", pdm_link.as_ref().map_or(server.local_addr(), Proxy::addr));
        let (pdm_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = server
                .serve(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let pdm = pdm::PdmClient::new(&pdm_url, PDM_ADMIN_TOKEN, Duration::from_secs(10))?;
        pdm.create_zone(&pdm::CreateZoneRequest { name: ZONE.into(), nameservers: vec![] }).await?;

        let mut nodes = Vec::new();
        for region in ["a", "b", "w"] {
            let data = match region {
                "w" => None,
                _ => {
                    let (node, peer) =
                        if region == "a" { (&pg.primary, &pg.standby) } else { (&pg.standby, &pg.primary) };
                    let port = pg_port[&(node.name.as_str(), peer.name.as_str())];
                    let peer = PgPeerConfig { region: peer.name.clone(), host: peer.host.clone(), port };
                    Some(DataNode { server: node.clone(), peer })
                }
            };
            let tls = ca.node_with_addresses(region, &[host_of(region)])?;
            let (raft_port, api_port) = (testkit::free_port(), Some(testkit::free_port()));
            nodes.push(Node {
                region: region.into(),
                host: host_of(region),
                raft_port,
                api_port,
                tls,
                data,
                dial: BTreeMap::new(),
            });
        }
        if options.link_proxies {
            for i in 0..nodes.len() {
                for j in 0..nodes.len() {
                    if i != j {
                        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, nodes[j].raft_port));
                        let proxy = Proxy::start(target).await?;
                        let to = nodes[j].region.clone();
                        nodes[i].dial.insert(to, proxy.addr().to_string());
                        links.push(proxy);
                    }
                }
            }
        }
        let topology = Topology {
            dir: d.to_path_buf(),
            nodes,
            timings: (!options.default_timings).then(Timings::fast),
            addresses: ["a", "b"].map(|r| (r.to_string(), address_of(r).to_string())).into(),
            pdm_url,
            pdm_token_file: d.join("pdm.token"),
            zone: ZONE.into(),
            tokens_file: d.join("tokens.toml"),
            pg_auth,
        };
        let mut daemons = BTreeMap::new();
        for (node, mut config) in topology.nodes.iter().zip(topology.configs()?) {
            for pair in &mut config.pairs {
                options.apply(pair)?;
            }
            let region = node.region.as_str();
            let path = d.join(format!("{region}.toml"));
            topology::write(&config, &path)?;
            let mut daemon = Daemon {
                region: region.into(),
                config: path,
                api: format!("http://{}:{}", node.host, node.api_port.expect("every node serves an API")),
                log: d.join(format!("{region}.log")),
                child: None,
                env: Vec::new(),
                netns: network.as_ref().map(|n| n.host(region).netns.clone()),
            };
            daemon.start()?;
            daemons.insert(region.to_string(), daemon);
        }
        let dns = DnsProbe::new(pdns.dns_addr)?;
        let cluster = Cluster {
            pg,
            pdns,
            dns,
            daemons,
            dir,
            http: reqwest::Client::new(),
            pdm_stop: Some(pdm_stop),
            pdm_link,
            links,
            network,
        };
        // Ready: a holds the lease, b is recorded as synchronous standby, DNS points at a.
        cluster
            .wait_pair("a holds the lease with b as recorded sync standby", Duration::from_secs(60), |p| {
                p.holder.as_deref() == Some("a") && p.sync_standby.as_deref() == Some("b")
            })
            .await?;
        cluster.wait_dns("a").await?;
        Ok(cluster)
    }

    /// Sets the daemons' link to PDM to `mode` (e.g. `Refuse`: PDM is down). Loopback only.
    pub fn set_pdm(&self, mode: Mode) {
        self.pdm_link.as_ref().expect("PDM has no proxy in namespace mode").set_mode(mode);
    }

    /// Sets every inter-region link (see [`Options::link_proxies`]) to `mode`.
    pub fn set_links(&self, mode: Mode) {
        assert!(!self.links.is_empty(), "the cluster was started without link proxies");
        for link in &self.links {
            link.set_mode(mode);
        }
    }

    pub fn daemon(&mut self, region: &str) -> &mut Daemon {
        self.daemons.get_mut(region).expect("known region")
    }

    pub fn logs(&self) -> String {
        self.daemons
            .values()
            .map(|d| format!("--- {} ---\n{}", d.region, d.log_tail(log_tail_lines())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `region`'s daemon answers `/readyz` with 200.
    pub async fn wait_ready(&self, region: &str) -> anyhow::Result<()> {
        let api = &self.daemons[region].api;
        testkit::wait_until(&format!("{region} ready"), Duration::from_secs(30), || async move {
            Ok(self.http.get(format!("{api}/readyz")).send().await.is_ok_and(|r| r.status().is_success()))
        })
        .await
        .with_context(|| self.logs())
    }

    /// `GET /v1/status` of `region`'s daemon (the witness' too), as a viewer.
    async fn status_of<T: serde::de::DeserializeOwned>(&self, region: &str) -> anyhow::Result<T> {
        let api = &self.daemons[region].api;
        let request = self.http.get(format!("{api}/v1/status")).bearer_auth(VIEWER);
        Ok(request.send().await?.error_for_status()?.json().await?)
    }

    pub async fn status(&self, region: &str) -> anyhow::Result<PairStatus> {
        let status: Status = self.status_of(region).await?;
        status.pairs.into_iter().next().context("no pair")
    }

    pub async fn witness_status(&self) -> anyhow::Result<continuum::witness::WitnessStatus> {
        self.status_of("w").await
    }

    /// Waits until `region`'s server takes no writes: asked over its Unix socket, which works
    /// whatever the network does; refusing connections or being in recovery both count.
    pub async fn wait_stops_taking_writes(&self, region: &str, timeout: Duration) -> anyhow::Result<()> {
        let node = self.node(region).clone();
        testkit::wait_until(&format!("{region} stops taking writes"), timeout, || {
            let node = node.clone();
            async move {
                Ok(match node.connect_local().await {
                    Err(_) => true,
                    Ok(client) => client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_or(true, |r| r.get(0)),
                })
            }
        })
        .await
        .with_context(|| self.logs())
    }

    /// Waits until some data daemon's status satisfies `check`.
    pub async fn wait_pair(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&PairStatus) -> bool,
    ) -> anyhow::Result<PairStatus> {
        self.wait_pair_on(&["a", "b"], what, timeout, check).await
    }

    /// Waits until the status of one of `regions`' daemons satisfies `check`.
    pub async fn wait_pair_on(
        &self,
        regions: &[&str],
        what: &str,
        timeout: Duration,
        check: impl Fn(&PairStatus) -> bool,
    ) -> anyhow::Result<PairStatus> {
        let check = &check;
        testkit::wait_for(what, timeout, || async move {
            for region in regions {
                if let Ok(status) = self.status(region).await
                    && check(&status)
                {
                    return Ok(Some(status));
                }
            }
            Ok(None)
        })
        .await
        .with_context(|| self.logs())
    }

    pub async fn wait_dns(&self, region: &str) -> anyhow::Result<()> {
        let want = address_of(region);
        testkit::wait_until(&format!("DNS answers {want}"), Duration::from_secs(20), || async move {
            Ok(self.dns.a(RECORD).await.map(|a| a == [want]).unwrap_or(false))
        })
        .await
    }

    /// `POST /v1/switchover` to `via`'s daemon as the owner; asserts 202 and returns the id.
    pub async fn request_switchover(&self, via: &str, to: &str, reason: &str) -> String {
        let api = &self.daemons[via].api;
        let response = self
            .http
            .post(format!("{api}/v1/switchover"))
            .bearer_auth(OWNER)
            .json(&serde_json::json!({ "to": to, "reason": reason }))
            .send()
            .await
            .expect("switchover request sent");
        assert_eq!(response.status(), 202, "switchover to {to}: {}", response.text().await.unwrap_or_default());
        let accepted: serde_json::Value = response.json().await.expect("202 body");
        accepted["id"].as_str().expect("switchover id").to_string()
    }

    /// `GET /v1/switchovers/{id}` from `via`'s daemon.
    pub async fn switchover_record(&self, via: &str, id: &str) -> anyhow::Result<SwitchoverRecord> {
        let api = &self.daemons[via].api;
        Ok(self.http.get(format!("{api}/v1/switchovers/{id}")).bearer_auth(VIEWER).send().await?.json().await?)
    }

    /// Waits until switchover `id` (read from `via`) has finished, whatever its outcome.
    pub async fn wait_switchover_finished(&self, via: &str, id: &str, timeout: Duration) -> SwitchoverRecord {
        testkit::wait_for(&format!("switchover {id} finished"), timeout, || async move {
            let record = self.switchover_record(via, id).await?;
            Ok(record.state.is_finished().then_some(record))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// Multi-host connection string that follows the writable node.
    pub fn conninfo(&self) -> String {
        format!("{} connect_timeout=2", self.pg.multi_host_conninfo())
    }

    pub fn node(&self, region: &str) -> &PgNode {
        if region == "a" { &self.pg.primary } else { &self.pg.standby }
    }

    /// The `continuum` CLI against `region`'s daemon as the owner.
    pub fn cli(&self, region: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env("CONTINUUM_TOKEN", OWNER).env("CONTINUUM_API", &self.daemons[region].api);
        cmd.env_remove("CONTINUUM_CA");
        cmd
    }

    /// The `acked` ids that `node` does not have in `table`: acknowledged commits lost.
    pub async fn missing_on(node: &PgNode, table: &str, acked: &[i64]) -> anyhow::Result<Vec<i64>> {
        let present = Self::ids_on(node, table).await?;
        Ok(acked.iter().copied().filter(|id| !present.contains(id)).collect())
    }

    /// Ids present on `node` in `table`.
    pub async fn ids_on(node: &PgNode, table: &str) -> anyhow::Result<std::collections::BTreeSet<i64>> {
        let client = node.connect().await?;
        let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `region`'s audit log lines that name switchover `id`.
    pub fn audit_lines_of(&self, region: &str, id: &str) -> Vec<serde_json::Value> {
        super::lines(&self.dir().join(format!("audit-{region}.log")))
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["detail"]["switchover"].as_str() == Some(id))
            .collect()
    }

    /// The index of the last raft entry applied on the witness: every lease-store write
    /// (renewals, switchover records) is one entry.
    pub async fn raft_applied(&self) -> anyhow::Result<u64> {
        self.witness_status().await?.last_applied.context("the witness applied nothing yet")
    }
}
