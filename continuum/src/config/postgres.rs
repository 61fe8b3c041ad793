//! A pair's PostgreSQL sections: this region's server (`pairs[].postgres`, including how the
//! daemon authenticates to it and to the peer) and the peer's (`pairs[].peers[]`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cnpg_pair::{PgAuth, SslMode};
use serde::{Deserialize, Serialize};

use super::defaults;

/// Another region's PostgreSQL server of the pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgPeerConfig {
    pub region: String,
    #[serde(default = "defaults::pg_host")]
    pub host: String,
    #[serde(default = "defaults::pg_port")]
    pub port: u16,
}

/// This region's PostgreSQL server of the pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Required by the plain driver; unused with `driver = "cnpg"`.
    #[serde(default)]
    pub data_dir: PathBuf,
    #[serde(default = "defaults::pg_bin_dir")]
    pub bin_dir: PathBuf,
    #[serde(default = "defaults::pg_host")]
    pub host: String,
    #[serde(default = "defaults::pg_port")]
    pub port: u16,
    /// This server's `listen_addresses`, kept in its `node.conf` (a rewind or clone copies the
    /// peer's `postgresql.conf`). Unset: whatever `postgresql.conf` says.
    #[serde(default)]
    pub listen_addresses: Option<String>,
    #[serde(default = "defaults::pg_superuser")]
    pub superuser: String,
    /// OS account the PostgreSQL binaries run as (PostgreSQL refuses root). Unset: the daemon's own.
    pub run_as: Option<String>,
    /// Server log (`pg_ctl -l`). Unset: `<data_dir>.log`.
    pub log_file: Option<PathBuf>,
    /// Unix socket directory. Unset: the data directory's parent.
    pub socket_dir: Option<PathBuf>,
    /// Deadline of the daemon's `pg_ctl stop -m immediate` outside the lease fence (a primary
    /// without the lease, a server given up); then the postmaster is killed.
    #[serde(with = "humantime_serde", default = "defaults::pg_stop_timeout")]
    pub stop_timeout: Duration,
    /// Deadline of the daemon's `pg_ctl start` (a restart of the holder's crashed server, a
    /// roll-back).
    #[serde(with = "humantime_serde", default = "defaults::pg_start_timeout")]
    pub start_timeout: Duration,
    /// libpq's `sslmode` of every session the daemon opens (own server, peer, the standby's
    /// `primary_conninfo`, `pg_rewind`, `pg_basebackup`).
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM CA the servers' certificates must chain to (`verify-ca`, `verify-full`).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate and key (certificate authentication); both or neither.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    /// File holding `superuser`'s password (first line). Unset: none is sent.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Role of the observation sessions (own server and peer); needs `pg_monitor` only.
    /// Unset: `superuser`.
    #[serde(default)]
    pub observer_user: Option<String>,
    #[serde(default)]
    pub observer_password_file: Option<PathBuf>,
}

impl PostgresConfig {
    /// The TLS and credential keys as the driver takes them.
    pub fn auth(&self) -> PgAuth {
        PgAuth {
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            sslcert: self.sslcert.clone(),
            sslkey: self.sslkey.clone(),
            password_file: self.password_file.clone(),
            observer_user: self.observer_user.clone(),
            observer_password_file: self.observer_password_file.clone(),
        }
    }

    /// The secret files among them (checked like every other secret file).
    pub(super) fn secret_files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("sslkey", &self.sslkey),
            ("password_file", &self.password_file),
            ("observer_password_file", &self.observer_password_file),
        ]
        .into_iter()
        .filter_map(|(key, path)| path.as_deref().map(|p| (key, p)))
    }
}
