//! A real PowerDNS Authoritative server (Debian's 4.7) with the sqlite3 backend, the HTTP API
//! and LUA records enabled, listening on free loopback ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::wait::wait_for;
use crate::{Error, Result, io};

const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";

/// Options for a [`PowerDns`]. Unset options keep PowerDNS' own defaults, so tests see the
/// behaviour production sees.
#[derive(Debug, Clone, Default)]
pub struct PowerDnsBuilder {
    settings: Vec<(String, String)>,
    parent: Option<PathBuf>,
}

impl PowerDnsBuilder {
    /// Any `pdns.conf` setting, e.g. `("lua-health-checks-interval", "1")`.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Seconds between LUA health checks (`lua-health-checks-interval`, PowerDNS default 5).
    pub fn health_check_interval(self, seconds: u32) -> Self {
        self.setting("lua-health-checks-interval", &seconds.to_string())
    }

    /// Where the server's own temporary directory is created; default the system's.
    pub fn parent(mut self, dir: &Path) -> Self {
        self.parent = Some(dir.to_path_buf());
        self
    }

    /// Starts the server and waits until both its API and its DNS port answer.
    pub async fn start(self) -> Result<PowerDns> {
        crate::install_crypto_provider();
        let binary = std::env::var_os("CONTINUUM_PDNS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/pdns_server"));
        if !binary.exists() {
            return Err(Error::Missing {
                what: format!("{} not found (install pdns-server and pdns-backend-sqlite3)", binary.display()),
            });
        }
        let api_key = crate::random_hex(16);
        let mut attempt = 0;
        loop {
            let dir = crate::temp_dir(self.parent.as_deref(), "continuum-pdns-")?;
            create_database(dir.path())?;
            let (dns_port, api_port) = (free_port()?, free_port()?);
            write_config(dir.path(), dns_port, api_port, &api_key, &self.settings)?;
            let log_file = dir.path().join("pdns.log");
            let log = std::fs::File::create(&log_file).map_err(io("create pdns.log"))?;
            let child = Command::new(&binary)
                .arg(format!("--config-dir={}", dir.path().display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io("pdns.log"))?)
                .stderr(log)
                .spawn()
                .map_err(io(format!("spawn {}", binary.display())))?;
            let mut server = PowerDns {
                api_url: format!("http://127.0.0.1:{api_port}"),
                api_key: api_key.clone(),
                dns_addr: SocketAddr::from(([127, 0, 0, 1], dns_port)),
                log_file,
                child: Some(child),
                dir,
            };
            match server.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < 5 && server.log().contains("Unable to bind") => {
                    tracing::warn!("PowerDNS port taken, retrying: {e}");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::Start {
                        what: "start PowerDNS".into(),
                        log: crate::os::log_tail(&server.log_file, 20),
                        source: Box::new(e),
                    });
                }
            }
        }
    }
}

/// A running PowerDNS Authoritative server. Dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct PowerDns {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:41234` (the API is under `/api/v1`).
    pub api_url: String,
    /// Value for the `X-API-Key` header.
    pub api_key: String,
    /// Where it answers DNS, over UDP and TCP.
    pub dns_addr: SocketAddr,
    pub log_file: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl PowerDns {
    pub fn builder() -> PowerDnsBuilder {
        PowerDnsBuilder::default()
    }

    /// A server with PowerDNS' default settings.
    pub async fn start() -> Result<PowerDns> {
        Self::builder().start().await
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(Error::Http)?;
        let url = format!("{}/api/v1/servers/localhost", self.api_url);
        let dns_addr = self.dns_addr;
        let key = self.api_key.clone();
        let child = self.child.as_mut().expect("child present until drop");
        wait_for("PowerDNS API and DNS port", timeout, || {
            let exited = child.try_wait().ok().flatten();
            let request = http.get(&url).header("X-API-Key", &key).send();
            async move {
                if let Some(status) = exited {
                    return Err(format!("pdns_server exited with {status}"));
                }
                let api_up = matches!(request.await, Ok(r) if r.status().is_success());
                let dns_up = tokio::net::TcpStream::connect(dns_addr).await.is_ok();
                Ok((api_up && dns_up).then_some(()))
            }
        })
        .await
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn create_database(dir: &Path) -> Result<()> {
    let schema = std::fs::read_to_string(SCHEMA)
        .map_err(|source| Error::Io { what: format!("read {SCHEMA} (install pdns-backend-sqlite3)"), source })?;
    let mut cmd = Command::new("sqlite3");
    cmd.arg(dir.join("pdns.sqlite3")).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io("spawn sqlite3 (install sqlite3)"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(schema.as_bytes()).map_err(io("feed the schema to sqlite3"))?;
    }
    let out = child.wait_with_output().map_err(io("wait for sqlite3"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: "sqlite3 < schema.sqlite3.sql".into(),
            status: out.status,
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn write_config(dir: &Path, dns_port: u16, api_port: u16, api_key: &str, extra: &[(String, String)]) -> Result<()> {
    let mut settings: Vec<(String, String)> = [
        ("launch", "gsqlite3".to_string()),
        ("gsqlite3-database", dir.join("pdns.sqlite3").display().to_string()),
        ("gsqlite3-dnssec", "yes".into()),
        ("local-address", "127.0.0.1".into()),
        ("local-port", dns_port.to_string()),
        ("api", "yes".into()),
        ("api-key", api_key.into()),
        ("webserver", "yes".into()),
        ("webserver-address", "127.0.0.1".into()),
        ("webserver-port", api_port.to_string()),
        ("webserver-allow-from", "127.0.0.1/32".into()),
        ("enable-lua-records", "yes".into()),
        // The default would do an outbound lookup of secpoll.powerdns.com at start.
        ("security-poll-suffix", String::new()),
        ("daemon", "no".into()),
        ("guardian", "no".into()),
        ("disable-syslog", "yes".into()),
        ("loglevel", "6".into()),
        ("socket-dir", dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in extra {
        settings.retain(|(k, _)| k != key);
        settings.push((key.clone(), value.clone()));
    }
    let text: String = settings.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(dir.join("pdns.conf"), text).map_err(io("write pdns.conf"))
}
