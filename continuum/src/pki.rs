//! Throwaway certificates for loopback setups (`continuum demo`, tests): one CA and node
//! certificates valid for `127.0.0.1` and `localhost`, usable as TLS server and client.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use crate::Error;

/// PEM files of one node.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA whose certificate and node files are written into a directory.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

fn pki_err(e: impl std::fmt::Display) -> Error {
    Error::Internal { message: format!("certificate generation: {e}") }
}

impl LocalCa {
    /// Creates the CA and writes `ca.pem` into `dir`.
    pub fn new(dir: &Path) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, "continuum throwaway CA");
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.self_signed(&key).map_err(pki_err)?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).map_err(pki_err)?;
        Ok(Self { dir: dir.to_path_buf(), issuer: Issuer::new(params, key) })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>.key`, a certificate for 127.0.0.1 and localhost.
    pub fn node(&self, name: &str) -> Result<NodeFiles, Error> {
        self.node_with_addresses(name, &[])
    }

    /// Like [`LocalCa::node`], also valid for `addresses` (nodes on other hosts or namespaces).
    pub fn node_with_addresses(&self, name: &str, addresses: &[IpAddr]) -> Result<NodeFiles, Error> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(pki_err)?;
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_err)?;
        let files = NodeFiles {
            ca: self.ca_path(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).map_err(pki_err)?;
        crate::topology::write_secret(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}
