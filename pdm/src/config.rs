//! The `pdm` configuration file (TOML). Every knob has a documented default.
//!
//! ```toml
//! listen = "127.0.0.1:8053"          # where the commit API listens
//! tokens_file = "/etc/pdm/tokens.toml" # bearer tokens with roles (see `crate::auth`), mode 600
//!
//! [powerdns]
//! api_url = "http://127.0.0.1:8081"  # PowerDNS webserver root (API under /api/v1)
//! api_key_file = "/etc/pdm/pdns-key" # or api_key = "..."
//! dns_addr = "127.0.0.1:53"          # where the authoritative server answers DNS
//! health_check_interval = "5s"       # must equal PowerDNS' lua-health-checks-interval
//! api_timeout = "5s"                 # per PowerDNS API call
//! dns_timeout = "2s"                 # per verification query
//! keep_warm_interval = "60s"         # query every committed LUA name this often
//!
//! [commit]
//! max_epoch_step = 1099511627776     # 2^40: refuse an epoch this far above the last one
//! answer_within = "1s"               # longer commits answer 202 + an operation to poll
//!
//! [zones]
//! default_nameservers = ["ns1.example.net."]  # NS of new zones when the request names none
//! soa_edit_api = "DEFAULT"
//!
//! [tls]                              # optional: serve HTTPS (rustls, ring)
//! cert = "/etc/pdm/tls.crt"
//! key = "/etc/pdm/tls.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::PdmError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the commit API; port 0 picks a free port (see [`crate::Server::local_addr`]).
    pub listen: SocketAddr,
    /// Tokens file (TOML, roles `commit` and `admin`, see [`crate::auth`]); every API route but
    /// `/healthz` requires one of its tokens. Refused if group or others may access it.
    pub tokens_file: PathBuf,
    pub powerdns: PowerDnsConfig,
    #[serde(default)]
    pub commit: CommitConfig,
    #[serde(default)]
    pub zones: ZonesConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerDnsConfig {
    pub api_url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    pub dns_addr: SocketAddr,
    /// PowerDNS' `lua-health-checks-interval`: how long a pre-warmed body waits for its first
    /// health-check round.
    #[serde(default = "default_health_check_interval", with = "humantime_serde")]
    pub health_check_interval: Duration,
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    pub api_timeout: Duration,
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    pub dns_timeout: Duration,
    /// How often PDM queries every LUA name it committed. PowerDNS drops a health check that
    /// nobody queried for `lua-health-checks-expire-delay` (default 1 h) and answers randomly
    /// until it is re-checked, so this must stay well below that setting.
    #[serde(default = "default_keep_warm_interval", with = "humantime_serde")]
    pub keep_warm_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Largest step a commit's epoch may make over the epoch last accepted for the name (for a
    /// name never committed: over the highest epoch in its zone, or 0). Epochs are raft log
    /// indexes and every lease write (a renewal every `lease.renew_interval` per pair) takes
    /// one, so a holder that keeps its lease for years legitimately jumps by millions at the
    /// next failover; 2^40 covers centuries of that while still refusing garbage such as 2^63,
    /// `u64::MAX` or a millisecond timestamp, which would fence the name for good.
    #[serde(default = "default_max_epoch_step")]
    pub max_epoch_step: u64,
    /// How long `POST /v1/commit` waits for the commit before answering 202 with an operation
    /// to poll (`GET /v1/operations/{id}`); [`crate::PdmClient`] polls transparently. Keeps
    /// every HTTP exchange short although a pre-warm takes `health_check_interval` + check
    /// timeout (7 s at PowerDNS' defaults).
    #[serde(default = "default_answer_within", with = "humantime_serde")]
    pub answer_within: Duration,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self { max_epoch_step: default_max_epoch_step(), answer_within: default_answer_within() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonesConfig {
    #[serde(default)]
    pub default_nameservers: Vec<String>,
    #[serde(default = "default_soa_edit_api")]
    pub soa_edit_api: String,
}

impl Default for ZonesConfig {
    fn default() -> Self {
        Self { default_nameservers: Vec::new(), soa_edit_api: default_soa_edit_api() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_health_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_dns_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_keep_warm_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_epoch_step() -> u64 {
    1 << 40
}
fn default_answer_within() -> Duration {
    Duration::from_secs(1)
}
fn default_soa_edit_api() -> String {
    "DEFAULT".into()
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, PdmError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PdmError::Config(format!("read config {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| PdmError::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Self, PdmError> {
        let config: Config = toml::from_str(text).map_err(|e| PdmError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), PdmError> {
        let p = &self.powerdns;
        if !(p.api_url.starts_with("http://") || p.api_url.starts_with("https://")) {
            return Err(PdmError::Config(format!("powerdns.api_url {:?} must be an http(s) URL", p.api_url)));
        }
        if p.api_key.is_some() == p.api_key_file.is_some() {
            return Err(PdmError::Config("set exactly one of powerdns.api_key and powerdns.api_key_file".into()));
        }
        for (name, value) in [
            ("health_check_interval", p.health_check_interval),
            ("api_timeout", p.api_timeout),
            ("dns_timeout", p.dns_timeout),
        ] {
            if value.is_zero() {
                return Err(PdmError::Config(format!("powerdns.{name} must be above zero")));
            }
        }
        if self.commit.max_epoch_step == 0 {
            return Err(PdmError::Config("commit.max_epoch_step must be above zero".into()));
        }
        if self.commit.answer_within.is_zero() {
            return Err(PdmError::Config("commit.answer_within must be above zero".into()));
        }
        for ns in &self.zones.default_nameservers {
            crate::names::normalize(ns).map_err(|e| PdmError::Config(format!("zones.default_nameservers: {e}")))?;
        }
        Ok(())
    }

    /// The PowerDNS API key, read from `api_key_file` if set.
    pub fn api_key(&self) -> Result<String, PdmError> {
        match (&self.powerdns.api_key, &self.powerdns.api_key_file) {
            (Some(key), _) => Ok(key.clone()),
            (None, Some(path)) => {
                crate::auth::check_private(path, "powerdns.api_key_file")?;
                read_secret(path, "powerdns.api_key_file")
            }
            (None, None) => Err(PdmError::Config("no PowerDNS API key configured".into())),
        }
    }

    /// The tokens callers may present.
    pub fn tokens(&self) -> Result<crate::auth::TokenStore, PdmError> {
        crate::auth::TokenStore::load(&self.tokens_file)
    }
}

fn read_secret(path: &Path, what: &str) -> Result<String, PdmError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| PdmError::Config(format!("{what} {}: {e}", path.display())))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(PdmError::Config(format!("{what} {} is empty", path.display())));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:0"
tokens_file = "/nonexistent"
[powerdns]
api_url = "http://127.0.0.1:8081"
api_key = "k"
dns_addr = "127.0.0.1:53"
"#;

    #[test]
    fn defaults_apply() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.powerdns.health_check_interval, Duration::from_secs(5));
        assert_eq!(config.powerdns.api_timeout, Duration::from_secs(5));
        assert_eq!(config.zones.soa_edit_api, "DEFAULT");
        assert!(config.tls.is_none());
        assert_eq!(config.commit.max_epoch_step, 1 << 40);
        assert_eq!(config.commit.answer_within, Duration::from_secs(1));
    }

    #[test]
    fn malformed_configs_say_what_is_wrong() {
        let cases = [
            (MINIMAL.replace("api_key = \"k\"", ""), "exactly one of"),
            (MINIMAL.replace("http://127.0.0.1:8081", "127.0.0.1:8081"), "api_url"),
            (format!("{MINIMAL}health_check_interval = \"0s\"\n"), "health_check_interval"),
            (format!("{MINIMAL}bogus = 1\n"), "unknown field"),
            (format!("{MINIMAL}[commit]\nmax_epoch_step = 0\n"), "max_epoch_step"),
            (MINIMAL.replace("tokens_file", "token_file"), "token_file"),
            (MINIMAL.replace("127.0.0.1:53", "nowhere"), "dns_addr"),
        ];
        for (text, expected) in cases {
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} does not mention {expected:?}");
        }
    }
}
