//! Mutual TLS with rustls + ring: the cluster CA is the only trust anchor, on both sides.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::error::LeaseError;

/// Loaded PEM material of one node.
#[derive(Debug)]
pub(crate) struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsMaterial {
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, LeaseError> {
        let certs = |path: &std::path::Path, key: &str| -> Result<Vec<CertificateDer<'static>>, LeaseError> {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| LeaseError::config(key, format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(LeaseError::config(key, format!("{}: no certificate found", path.display())));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs(&files.ca, "tls.ca")? {
            roots.add(ca).map_err(|e| LeaseError::config("tls.ca", e.to_string()))?;
        }
        let chain = certs(&files.cert, "tls.cert")?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| LeaseError::config("tls.key", format!("{}: {e}", files.key.display())))?;
        Ok(TlsMaterial { roots: Arc::new(roots), chain, key })
    }

    /// Subject common names of this node's own certificate (its identity towards peers).
    pub(crate) fn own_names(&self) -> Vec<String> {
        self.chain.first().map(|der| common_names(der)).unwrap_or_default()
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server side: a client certificate signed by the cluster CA is mandatory.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, LeaseError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider())
            .build()
            .map_err(|e| LeaseError::Tls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| LeaseError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| LeaseError::config("tls.key", e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Client side: presents this node's certificate, trusts only the cluster CA.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, LeaseError> {
        rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| LeaseError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| LeaseError::config("tls.key", e.to_string()))
    }

    /// One HTTP/2 client; every peer gets its own (see `network`).
    pub(crate) fn http_client(&self) -> Result<reqwest::Client, LeaseError> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.client_config()?)
            .http2_prior_knowledge()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .http2_keep_alive_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| LeaseError::Tls(e.to_string()))
    }
}

/// Subject common names of a DER certificate (empty if it cannot be parsed). A member's
/// certificate carries its region as common name.
pub(crate) fn common_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_string)).collect()
}
