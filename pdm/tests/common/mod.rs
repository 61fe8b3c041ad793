//! Shared fixtures: a real PowerDNS from the test kit, PDM served in-process on a free port,
//! loopback health targets, and raw views of the zone for before/after comparisons.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use pdm::{Config, PdmClient};
use testkit::{DnsProbe, PowerDns};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The `admin` token [`Harness::client`] uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// A `commit` token (token name `daemon`), what the daemons hold.
pub const COMMIT_TOKEN: &str = "commit-token-0123456789abcdef";
/// The test servers' `lua-health-checks-interval` unless [`Options::check_interval_secs`] says.
pub const CHECK_INTERVAL_SECS: u32 = 1;

/// Maps the PowerDNS under test to the API URL PDM should use.
pub type ApiUrl = Box<dyn FnOnce(&PowerDns) -> String>;

/// How a [`Harness`] differs from the defaults.
pub struct Options {
    /// Maps the PowerDNS under test to the API URL PDM uses (e.g. a fault proxy in front).
    pub api_url: Option<ApiUrl>,
    pub api_timeout: &'static str,
    pub keep_warm_interval: &'static str,
    /// Extra `pdns.conf` settings.
    pub pdns_settings: Vec<(&'static str, &'static str)>,
    /// PowerDNS' `lua-health-checks-interval` (and PDM's `health_check_interval`).
    pub check_interval_secs: u32,
    /// Extra top-level PDM config (e.g. a `[commit]` section).
    pub extra_config: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            api_url: None,
            api_timeout: "5s",
            keep_warm_interval: "60s",
            pdns_settings: Vec::new(),
            check_interval_secs: CHECK_INTERVAL_SECS,
            extra_config: "",
        }
    }
}

/// PDM serving in-process against its own PowerDNS. Dropping it stops both.
pub struct Harness {
    pub pdns: PowerDns,
    pub client: PdmClient,
    pub url: String,
    pub dns: DnsProbe,
    config: Config,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        testkit::init_tracing();
        testkit::install_crypto_provider();
        let interval = options.check_interval_secs;
        let mut builder = PowerDns::builder().health_check_interval(interval);
        for (key, value) in &options.pdns_settings {
            builder = builder.setting(key, value);
        }
        let pdns = builder.start().await?;
        let api_url = match options.api_url {
            Some(via) => via(&pdns),
            None => pdns.api_url.clone(),
        };
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("tokens.toml");
        std::fs::write(
            &token_file,
            format!(
                "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n\
                 [[tokens]]\nname = \"daemon\"\nrole = \"commit\"\ntoken = \"{COMMIT_TOKEN}\"\n"
            ),
        )?;
        std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let config = Config::from_toml(&format!(
            r#"
listen = "127.0.0.1:0"
tokens_file = "{token}"
{extra}
[powerdns]
api_url = "{api}"
api_key = "{key}"
dns_addr = "{dns}"
health_check_interval = "{interval}s"
api_timeout = "{api_timeout}"
keep_warm_interval = "{keep_warm}"
dns_timeout = "2s"
[zones]
default_nameservers = ["ns1.pdm-test.invalid.", "ns2.pdm-test.invalid."]
"#,
            token = token_file.display(),
            extra = options.extra_config,
            api = api_url,
            api_timeout = options.api_timeout,
            keep_warm = options.keep_warm_interval,
            key = pdns.api_key,
            dns = pdns.dns_addr,
        ))?;
        let dns = DnsProbe::new(pdns.dns_addr)?;
        let mut harness = Self {
            pdns,
            client: PdmClient::new("http://unused", TOKEN, Duration::from_secs(30))?,
            url: String::new(),
            dns,
            config,
            dir,
            stop: None,
            task: None,
        };
        harness.start_pdm().await?;
        Ok(harness)
    }

    async fn start_pdm(&mut self) -> anyhow::Result<()> {
        let server = pdm::Server::bind(&self.config).await?;
        self.url = format!("http://{}", server.local_addr());
        self.client = PdmClient::new(&self.url, TOKEN, Duration::from_secs(30))?;
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("PDM serve");
        }));
        Ok(())
    }

    /// Stops PDM (its in-memory state goes with it) and starts a fresh one on a new port.
    pub async fn restart_pdm(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("PDM task")?;
        }
        self.start_pdm().await
    }

    /// A client holding the `commit` token, with the daemon's default `pdm.timeout` (5 s).
    pub fn commit_client(&self) -> PdmClient {
        PdmClient::new(&self.url, COMMIT_TOKEN, Duration::from_secs(5)).expect("PDM client")
    }

    /// Creates `zone` through PDM with the configured default nameservers.
    pub async fn create_zone(&self, zone: &str) -> anyhow::Result<()> {
        self.client.create_zone(&pdm::CreateZoneRequest { name: zone.into(), nameservers: vec![] }).await?;
        Ok(())
    }

    /// Everything PowerDNS holds for `zone` (rrsets with comments, and metadata), straight
    /// from its API, sorted so two snapshots compare equal iff nothing changed.
    pub async fn snapshot(&self, zone: &str) -> anyhow::Result<serde_json::Value> {
        let http = reqwest::Client::new();
        let base = format!("{}/api/v1/servers/localhost/zones/{zone}", self.pdns.api_url);
        let mut zone_json: serde_json::Value =
            http.get(&base).header("X-API-Key", &self.pdns.api_key).send().await?.error_for_status()?.json().await?;
        let mut rrsets = zone_json["rrsets"].as_array().cloned().unwrap_or_default();
        rrsets.sort_by_key(|r| format!("{}|{}", r["name"], r["type"]));
        let mut metadata: serde_json::Value = http
            .get(format!("{base}/metadata"))
            .header("X-API-Key", &self.pdns.api_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(items) = metadata.as_array_mut() {
            items.sort_by_key(|m| m["kind"].to_string());
        }
        zone_json["rrsets"] = serde_json::Value::Array(rrsets);
        Ok(serde_json::json!({ "rrsets": zone_json["rrsets"], "serial": zone_json["serial"], "metadata": metadata }))
    }

    /// Writes an rrset straight into PowerDNS, as another tool would.
    pub async fn write_behind_pdm(&self, zone: &str, name: &str, rtype: &str, content: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"rrsets": [{"name": name, "type": rtype, "ttl": 60, "changetype": "REPLACE",
            "records": [{"content": content, "disabled": false}]}]});
        reqwest::Client::new()
            .patch(format!("{}/api/v1/servers/localhost/zones/{zone}", self.pdns.api_url))
            .header("X-API-Key", &self.pdns.api_key)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Harness {
    /// Overwrites one metadata kind straight in PowerDNS.
    pub async fn put_metadata_behind_pdm(&self, zone: &str, kind: &str, values: &[&str]) -> anyhow::Result<()> {
        reqwest::Client::new()
            .put(format!("{}/api/v1/servers/localhost/zones/{zone}/metadata/{kind}", self.pdns.api_url))
            .header("X-API-Key", &self.pdns.api_key)
            .json(&serde_json::json!({ "kind": kind, "metadata": values }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A TCP listener that accepts and answers HTTP 200 "OK" until dropped.
pub struct HealthTarget {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthTarget {
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ =
                        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK").await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }
}

impl Drop for HealthTarget {
    fn drop(&mut self) {
        // Aborting drops the listener: new connections are refused from here on.
        self.task.abort();
    }
}

/// Two loopback addresses listening on one port (ifportup checks one port on every address).
pub async fn port_pair() -> anyhow::Result<(HealthTarget, HealthTarget)> {
    for _ in 0..20 {
        let a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
        let b_addr = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), a.addr.port());
        if let Ok(b) = HealthTarget::start(b_addr).await {
            return Ok((a, b));
        }
    }
    anyhow::bail!("no port free on both 127.0.0.1 and 127.0.0.2")
}

/// A raw POST to PDM, for requests the typed client cannot express.
pub async fn raw(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
}
