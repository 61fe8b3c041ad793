//! PowerDNS manager: owns zones on a PowerDNS Authoritative server and commits LUA records
//! through its HTTP API, refusing commits from stale lease epochs.
//!
//! - [`lua`]: typed LUA specs → canonical PowerDNS 4.7 bodies, validated before any write.
//! - [`client`]: the PowerDNS API client.
//! - [`fence`]: per-name epochs in zone metadata, per-zone commit lock.
//! - [`api`]: the HTTP API (routes, roles and JSON bodies are listed there), served by [`run`].
//! - [`auth`]: the tokens file and its roles (`commit`, `admin`).
//! - [`PdmClient`] and [`model`]: what a caller (the daemon) uses to talk to PDM.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
mod dns;
mod error;
pub mod fence;
pub mod lua;
mod manager;
pub mod model;
pub mod names;
mod ops;
mod pdm_client;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use error::PdmError;
pub use lua::{CheckOptions, InnerType, LuaSpec, Selector, UrlTarget, WeightedAddress};
pub use model::*;
pub use pdm_client::PdmClient;

/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A bound, not yet serving PDM. Binding first lets a caller (a test) learn the port of
/// `listen = "127.0.0.1:0"` before serving.
pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
    manager: Arc<manager::Manager>,
    keep_warm_interval: Duration,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl Server {
    /// Reads secrets, loads TLS material and binds the listen address. Installs rustls' ring
    /// provider as the process default if none is installed (reqwest needs one).
    pub async fn bind(config: &Config) -> Result<Self, PdmError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tokens = Arc::new(config.tokens()?);
        let manager = Arc::new(manager::Manager::new(config)?);
        let tls = match &config.tls {
            Some(tls) => Some(load_tls(tls)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| PdmError::Config(format!("bind {}: {e}", config.listen)))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let router = api::router(api::AppState {
            manager: manager.clone(),
            tokens,
            ops: Default::default(),
            answer_within: config.commit.answer_within,
        });
        let keep_warm_interval = config.powerdns.keep_warm_interval;
        Ok(Self { listener, local_addr, router, manager, keep_warm_interval, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PdmError> {
        tracing::info!(addr = %self.local_addr, tls = self.tls.is_some(), "PDM listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let keep_warm = tokio::spawn(keep_warm_loop(self.manager.clone(), self.keep_warm_interval, stop_rx.clone()));
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        match self.tls {
            None => {
                let listener = tokio::net::TcpListener::from_std(self.listener)?;
                axum::serve(listener, self.router).with_graceful_shutdown(stopped(stop_rx)).await?;
            }
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let on_shutdown = handle.clone();
                tokio::spawn(async move {
                    stopped(stop_rx).await;
                    on_shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
                });
                axum_server::from_tcp_rustls(self.listener, tls)?
                    .handle(handle)
                    .serve(self.router.into_make_service())
                    .await?;
            }
        }
        keep_warm.abort();
        tracing::info!("PDM stopped");
        Ok(())
    }
}

async fn keep_warm_loop(manager: Arc<manager::Manager>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match manager.keep_warm().await {
            Ok(queried) => tracing::debug!(queried, "kept LUA health checks warm"),
            Err(e) => tracing::warn!(error = %e, "keep-warm round failed"),
        }
    }
}

/// Binds and serves PDM until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PdmError> {
    Server::bind(&config).await?.serve(shutdown).await
}

fn load_tls(tls: &config::TlsConfig) -> Result<axum_server::tls_rustls::RustlsConfig, PdmError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PdmError::Config(format!("tls.cert {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(PdmError::Config(format!("tls.cert {} holds no certificate", tls.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| PdmError::Config(format!("tls.key {}: {e}", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| PdmError::Config(format!("TLS: {e}")))?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_config)))
}
