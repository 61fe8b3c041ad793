//! How the daemon authenticates to and encrypts with PostgreSQL: libpq's `sslmode` meanings on
//! rustls with the ring provider, a password read from a file, and the conninfo a standby
//! (`primary_conninfo`), `pg_rewind` and `pg_basebackup` get for the same settings.
//!
//! `sslmode` as libpq: `disable` plain TCP; `prefer` TLS when the server offers it, without
//! verification; `require` TLS, without verification; `verify-ca` TLS with the server's chain
//! checked against `sslrootcert`; `verify-full` also the host name (or IP) the daemon dialled.
//! Unverified modes still check the handshake signature, so they stop passive listeners only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as the daemon applies it to its own sessions and writes it into the
/// conninfo of the server's WAL receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// libpq's default: a server without TLS still works, so old configurations keep working.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// tokio-postgres knows only whether TLS is off, tried or required; the verification is the
    /// rustls configuration's.
    pub(crate) fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// Credentials and TLS of a node's PostgreSQL sessions. The admin role (`superuser`) fences,
/// promotes, checkpoints and replicates; the observer role only reads (`pg_monitor`). Physical
/// replication copies roles, so the same settings reach both servers of a pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgAuth {
    pub sslmode: SslMode,
    /// PEM CA certificates the server's chain must lead to (`verify-ca`, `verify-full`).
    pub sslrootcert: Option<PathBuf>,
    /// PEM client certificate chain and key (certificate authentication); both or neither.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// File holding the admin role's password (first line). Unset: no password is sent.
    pub password_file: Option<PathBuf>,
    /// Role of the observation sessions (needs `pg_monitor` only). Unset: the admin role.
    pub observer_user: Option<String>,
    /// File holding `observer_user`'s password.
    pub observer_password_file: Option<PathBuf>,
}

impl PgAuth {
    /// Checks what can be checked without reading a file; on error, the offending key and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.sslmode.verifies() && self.sslrootcert.is_none() {
            let why = format!("sslmode {} needs sslrootcert (the CA of the servers)", self.sslmode.as_str());
            return Err(("sslrootcert", why));
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            return Err(("sslkey", "sslcert and sslkey go together".into()));
        }
        if self.sslmode == SslMode::Disable && self.sslcert.is_some() {
            return Err(("sslmode", "sslcert needs TLS: sslmode must not be disable".into()));
        }
        if self.observer_password_file.is_some() && self.observer_user.is_none() {
            return Err(("observer_user", "observer_password_file without observer_user".into()));
        }
        if self.observer_user.as_deref().is_some_and(|u| u.is_empty()) {
            return Err(("observer_user", "observer_user must not be empty".into()));
        }
        Ok(())
    }

    /// [`PgAuth::check`] as one message.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|(_, why)| why)
    }

    /// The rustls client for `sslmode` (read once; certificates are loaded here).
    pub fn tls_client(&self) -> Result<MakeRustlsConnect, String> {
        self.validate()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.sslmode.verifies() {
            let path = self.sslrootcert.as_deref().expect("validated");
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            Arc::new(Verifier { mode: self.sslmode, webpki: Some(webpki), algorithms: algorithms(&provider) })
        } else {
            Arc::new(Verifier { mode: self.sslmode, webpki: None, algorithms: algorithms(&provider) })
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let config = match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// The admin role's password, if a file is configured.
    pub fn password(&self) -> Result<Option<String>, String> {
        self.password_file.as_deref().map(|p| read_password("password_file", p)).transpose()
    }

    /// The observer role and its password; the admin role's when no observer is configured.
    pub fn observer(&self, admin: &str) -> Result<(String, Option<String>), String> {
        match &self.observer_user {
            Some(user) => Ok((
                user.clone(),
                self.observer_password_file
                    .as_deref()
                    .map(|p| read_password("observer_password_file", p))
                    .transpose()?,
            )),
            None => Ok((admin.to_string(), self.password()?)),
        }
    }

    /// The libpq conninfo keys for these settings (`sslmode=… sslrootcert=…`), plus
    /// `passfile` when given: what the server's WAL receiver, `pg_rewind` and `pg_basebackup`
    /// need. Never a password.
    pub fn conninfo_params(&self, passfile: Option<&Path>) -> String {
        let mut out = format!("sslmode={}", self.sslmode.as_str());
        for (key, path) in [
            ("sslrootcert", self.sslrootcert.as_deref()),
            ("sslcert", self.sslcert.as_deref()),
            ("sslkey", self.sslkey.as_deref()),
            ("passfile", passfile),
        ] {
            if let Some(path) = path {
                out += &format!(" {key}={}", conninfo_value(&path.to_string_lossy()));
            }
        }
        out
    }
}

/// A conninfo value, quoted when it has to be (libpq: single quotes, `\` escapes).
pub(crate) fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '\t', '\n']) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// One `.pgpass` line matching every host, port and database for `user`.
pub(crate) fn pgpass_line(user: &str, password: &str) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", escape(user), escape(password))
}

fn read_password(key: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(format!("{key} {}: empty", path.display()));
    }
    Ok(password)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    provider.signature_verification_algorithms
}

/// `sslmode` as a rustls verifier: the chain by webpki for `verify-*`, a name mismatch
/// forgiven for `verify-ca`, nothing for `prefer`/`require`; handshake signatures always.
#[derive(Debug)]
struct Verifier {
    mode: SslMode,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.mode == SslMode::VerifyCa => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_key() {
        let verify = |mode| PgAuth { sslmode: mode, ..PgAuth::default() };
        let cases: Vec<(PgAuth, &str)> = vec![
            (verify(SslMode::VerifyFull), "sslrootcert"),
            (verify(SslMode::VerifyCa), "sslrootcert"),
            (PgAuth { sslcert: Some("/c.pem".into()), ..PgAuth::default() }, "sslkey"),
            (
                PgAuth {
                    sslmode: SslMode::Disable,
                    sslcert: Some("/c".into()),
                    sslkey: Some("/k".into()),
                    ..PgAuth::default()
                },
                "disable",
            ),
            (PgAuth { observer_password_file: Some("/p".into()), ..PgAuth::default() }, "observer_user"),
            (PgAuth { observer_user: Some(String::new()), ..PgAuth::default() }, "observer_user"),
        ];
        for (auth, expected) in cases {
            let why = auth.validate().expect_err(expected);
            assert!(why.contains(expected), "{expected}: {why}");
        }
        assert!(PgAuth::default().validate().is_ok());
        assert!(PgAuth::default().tls_client().is_ok(), "the default (prefer) needs no file");
    }

    #[test]
    fn conninfo_names_files_and_never_a_password() {
        let auth = PgAuth {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some("/etc/pg/it's ca.pem".into()),
            password_file: Some("/etc/pg/password".into()),
            ..PgAuth::default()
        };
        let params = auth.conninfo_params(Some(Path::new("/d/a.pgpass")));
        assert_eq!(params, r"sslmode=verify-full sslrootcert='/etc/pg/it\'s ca.pem' passfile=/d/a.pgpass");
        assert_eq!(pgpass_line("admin", r"p:w\d"), "*:*:*:admin:p\\:w\\\\d\n");
        let sslmodes: Vec<&str> = ["disable", "prefer", "require", "verify-ca", "verify-full"]
            .into_iter()
            .map(|m| {
                let parsed: SslMode = serde_json::from_value(serde_json::json!(m)).unwrap();
                parsed.as_str()
            })
            .collect();
        assert_eq!(sslmodes, ["disable", "prefer", "require", "verify-ca", "verify-full"]);
    }

    #[test]
    fn a_password_file_gives_its_first_line_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let auth = PgAuth { password_file: Some(path.clone()), ..PgAuth::default() };
        assert_eq!(auth.password().unwrap().as_deref(), Some("s3cret"));
        assert_eq!(auth.observer("postgres").unwrap(), ("postgres".to_string(), Some("s3cret".to_string())));
        std::fs::write(&path, "\n").unwrap();
        assert!(auth.password().unwrap_err().contains("empty"));
    }
}
