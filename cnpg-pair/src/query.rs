//! What both drivers' direct PostgreSQL steps share: how they connect (TLS and credentials from
//! [`PgAuth`]) and how a query runs under a deadline with errors that name the node.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::tls::PgAuth;

/// Connection settings for the daemon's own sessions (observation and driver steps alike).
pub(crate) fn connect_config(host: &str, port: u16, user: &str, dbname: &str, connect: Duration) -> Config {
    let mut config = Config::new();
    config.host(host).port(port).user(user).dbname(dbname).application_name("continuum").connect_timeout(connect);
    config
}

/// One kind of session to one server: libpq-style settings (host, role, password, `sslmode`)
/// and the rustls client that carries out the `sslmode`.
#[derive(Clone)]
pub struct Connector {
    config: Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config's Debug redacts the password.
        f.debug_struct("Connector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Connector {
    /// `config` with `password` (if any) and `auth`'s `sslmode`, over `tls`
    /// ([`PgAuth::tls_client`], built once and shared).
    pub fn new(mut config: Config, auth: &PgAuth, tls: MakeRustlsConnect, password: Option<&str>) -> Connector {
        config.ssl_mode(auth.sslmode.wire());
        if let Some(password) = password {
            config.password(password);
        }
        Connector { config, tls }
    }

    /// Settings from `auth` alone (reads its files): the admin role when `observer` is false.
    pub fn from_auth(config: Config, auth: &PgAuth, observer: bool) -> std::result::Result<Connector, String> {
        let tls = auth.tls_client()?;
        let admin = config.get_user().unwrap_or("postgres").to_string();
        let (user, password) = if observer { auth.observer(&admin)? } else { (admin, auth.password()?) };
        let mut config = config;
        config.user(&user);
        Ok(Connector::new(config, auth, tls, password.as_deref()))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The same credentials and TLS for another server (the upstream of a rejoin: roles are
    /// replicated, so the admin role is the same there).
    pub fn to(&self, host: &str, port: u16, user: &str, dbname: &str) -> Connector {
        let timeout = self.config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(3));
        let mut config = connect_config(host, port, user, dbname, timeout);
        config.ssl_mode(self.config.get_ssl_mode());
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        Connector { config, tls: self.tls.clone() }
    }

    /// Opens a session within `after`; the connection task is spawned. Errors name `node` and
    /// tell a refused credential ([`Error::Auth`]) and a failed TLS handshake ([`Error::Tls`])
    /// from an unreachable server.
    pub async fn connect(&self, node: &str, after: Duration) -> Result<Client> {
        let (client, connection) = tokio::time::timeout(after, self.config.connect(self.tls.clone()))
            .await
            .map_err(|_| Error::Timeout { node: node.to_string(), what: "connect", after })?
            .map_err(|source| connect_error(node, source))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A connection failure, classified.
pub(crate) fn connect_error(node: &str, source: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    let node = node.to_string();
    let refused = [SqlState::INVALID_PASSWORD, SqlState::INVALID_AUTHORIZATION_SPECIFICATION];
    if source.code().is_some_and(|code| refused.contains(code)) {
        return Error::Auth { node, source };
    }
    // tokio-postgres reports every handshake failure (a certificate refused, TLS required but
    // not offered) under this message, with the cause appended.
    if source.to_string().starts_with("error performing TLS handshake") {
        return Error::Tls { node, source };
    }
    Error::Connect { node, source }
}

/// Runs a query on `node` under a deadline; errors name that node.
pub(crate) async fn timed_on<T>(
    node: &str,
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Query { node: node.to_string(), what, source }),
        Err(_) => Err(Error::Timeout { node: node.to_string(), what, after }),
    }
}
