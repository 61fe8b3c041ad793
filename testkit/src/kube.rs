//! A real Kubernetes API server for tests, like controller-runtime's envtest: `etcd` and
//! `kube-apiserver` (built once by `scripts/build-kube` into a cache directory) on loopback
//! ports, with client-certificate and service-account token authentication and RBAC
//! authorization. No kubelet, no controller manager: nothing schedules pods or collects garbage.
//!
//! The binaries are looked up in `CONTINUUM_KUBE_BIN` (default
//! `${CONTINUUM_CACHE:-/var/cache/continuum}/kube-<KUBE_VERSION>`), upstream CRDs in
//! `CONTINUUM_KUBE_CRDS` (default `.../crds`). When they are missing, [`KubeApiServer::available`]
//! says why; under `CI=true` it panics instead, since CI must not skip these tests.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

use crate::free_port;
use crate::wait::wait_until;

/// The release `scripts/build-kube` builds by default; keep the two in step.
pub const KUBE_VERSION: &str = "v1.37.2";

pub fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("CONTINUUM_CACHE").unwrap_or_else(|_| "/var/cache/continuum".into()))
}

pub fn bin_dir() -> PathBuf {
    std::env::var_os("CONTINUUM_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join(format!("kube-{KUBE_VERSION}")))
}

/// Where `scripts/build-kube` put the upstream CRDs (`gateway-api-standard.yaml`,
/// `cnpg-cluster.yaml`).
pub fn crds_dir() -> PathBuf {
    std::env::var_os("CONTINUUM_KUBE_CRDS").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("crds"))
}

/// Reads one upstream CRD file from [`crds_dir`].
pub fn upstream_crds(file: &str) -> anyhow::Result<String> {
    let path = crds_dir().join(file);
    std::fs::read_to_string(&path).with_context(|| format!("{} (run scripts/build-kube)", path.display()))
}

pub struct KubeApiServer {
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Option<Child>,
    args: Vec<String>,
    pub port: u16,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    admin: kube::Client,
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        self.stop();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

fn pki(e: rcgen::Error) -> anyhow::Error {
    anyhow::anyhow!("certificate generation: {e}")
}

impl KubeApiServer {
    /// Whether the binaries exist. Missing: prints why the test cannot run and returns false,
    /// or panics under `CI=true` (CI may not skip). Use as `if !KubeApiServer::available() { return }`.
    pub fn available() -> bool {
        let bins = bin_dir();
        let missing: Vec<_> = ["etcd", "kube-apiserver"].into_iter().filter(|b| !bins.join(b).is_file()).collect();
        if missing.is_empty() {
            return true;
        }
        let why = format!(
            "cannot run: {} missing in {} (build them with scripts/build-kube, which needs Go >= 1.26 and the Go module proxy; or set CONTINUUM_KUBE_BIN)",
            missing.join(" and "),
            bins.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why}");
        }
        eprintln!("SKIPPED (Kubernetes API server) {why}");
        false
    }

    /// Starts etcd and kube-apiserver and waits until `/readyz` answers.
    pub async fn start() -> anyhow::Result<KubeApiServer> {
        crate::install_crypto_provider();
        let bins = bin_dir();
        let dir = tempfile::Builder::new().prefix("continuum-kube-").tempdir()?;
        let d = dir.path();

        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_log = std::fs::File::create(d.join("etcd.log"))?;
        let etcd = Command::new(bins.join("etcd"))
            .args(["--name", "test", "--data-dir"])
            .arg(d.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer_port}"))
            // A throwaway store: durability buys nothing here and fsync costs seconds on CI.
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone()?)
            .stderr(etcd_log)
            .spawn()
            .context("spawn etcd")?;

        // One CA signs the serving certificate and every client certificate.
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, "continuum test kube CA");
        let ca_key = KeyPair::generate().map_err(pki)?;
        let ca_pem = ca.self_signed(&ca_key).map_err(pki)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        std::fs::write(d.join("ca.crt"), &ca_pem)?;
        let mut serving = CertificateParams::new(vec!["localhost".to_string()]).map_err(pki)?;
        serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let serving_key = KeyPair::generate().map_err(pki)?;
        std::fs::write(d.join("serving.crt"), serving.signed_by(&serving_key, &issuer).map_err(pki)?.pem())?;
        std::fs::write(d.join("serving.key"), serving_key.serialize_pem())?;
        // Service-account tokens are signed with their own key (ES256).
        let sa_key = KeyPair::generate().map_err(pki)?;
        std::fs::write(d.join("sa.key"), sa_key.serialize_pem())?;
        std::fs::write(d.join("sa.pub"), sa_key.public_key_pem())?;

        let port = free_port();
        let p = |f: &str| d.join(f).display().to_string();
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--authorization-mode=RBAC".into(),
            "--anonymous-auth=false".into(),
            // Loopback cannot be a Service endpoint; nothing here needs the kubernetes Service.
            "--endpoint-reconciler-type=none".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--cert-dir={}", p("certs")),
        ];
        let admin = Self::make_client(port, &ca_pem, &issuer, "continuum-test-admin", &["system:masters"])?;
        let mut server = KubeApiServer { dir, etcd, apiserver: None, args, port, ca_pem, issuer, admin };
        server.start_apiserver().await?;
        Ok(server)
    }

    /// The API server's log (and etcd's), for failure messages.
    pub fn logs(&self) -> String {
        let tail = |f: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!("--- kube-apiserver.log\n{}\n--- etcd.log\n{}", tail("kube-apiserver.log"), tail("etcd.log"))
    }

    async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("kube-apiserver.log"))?;
        let child = Command::new(bin_dir().join("kube-apiserver"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn kube-apiserver")?;
        self.apiserver = Some(child);
        let admin = self.admin.clone();
        let ready = wait_until("kube-apiserver /readyz", Duration::from_secs(90), || {
            let admin = admin.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok(admin.request_text(req).await.is_ok_and(|t| t.trim() == "ok"))
            }
        })
        .await;
        ready.with_context(|| self.logs())
    }

    /// Kills the API server (etcd keeps the data): Kubernetes is "down".
    pub fn stop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the API server again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.start_apiserver().await
    }

    /// A client authenticated as `system:masters` (allowed everything).
    pub fn client(&self) -> kube::Client {
        self.admin.clone()
    }

    /// A client authenticated by a client certificate for `user` in `groups` (RBAC applies).
    pub fn user_client(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        Self::make_client(self.port, &self.ca_pem, &self.issuer, user, groups)
    }

    fn make_client(
        port: u16,
        ca_pem: &str,
        issuer: &Issuer<'static, KeyPair>,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<kube::Client> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        let key = KeyPair::generate().map_err(pki)?;
        let cert = params.signed_by(&key, issuer).map_err(pki)?;
        let auth = kube::config::AuthInfo {
            client_certificate_data: Some(base64(cert.pem().as_bytes())),
            client_key_data: Some(base64(key.serialize_pem().as_bytes()).into()),
            ..Default::default()
        };
        Self::client_with(port, ca_pem, auth)
    }

    fn client_with(port: u16, ca_pem: &str, auth_info: kube::config::AuthInfo) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(format!("https://127.0.0.1:{port}").parse()?);
        config.root_cert = Some(vec![pem_to_der(ca_pem)?]);
        config.auth_info = auth_info;
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(30));
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates namespace `ns` (if missing).
    pub async fn namespace(&self, ns: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client());
        let obj =
            Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() }, ..Default::default() };
        api.patch(ns, &PatchParams::apply("testkit").force(), &Patch::Apply(&obj)).await?;
        Ok(())
    }

    /// Service account `ns/name`, bound to a Role with exactly `rules` in `ns`, and a client
    /// authenticated with a token the API server issued for it (TokenRequest).
    pub async fn service_account_client(
        &self,
        ns: &str,
        name: &str,
        rules: Vec<PolicyRule>,
    ) -> anyhow::Result<kube::Client> {
        let token = self.service_account_token(ns, name, rules).await?;
        let auth = kube::config::AuthInfo { token: Some(token.into()), ..Default::default() };
        Self::client_with(self.port, &self.ca_pem, auth)
    }

    /// As [`KubeApiServer::service_account_client`], written as a kubeconfig file at `path` for
    /// another process (a daemon) to use.
    pub async fn service_account_kubeconfig(
        &self,
        ns: &str,
        name: &str,
        rules: Vec<PolicyRule>,
        path: &Path,
    ) -> anyhow::Result<()> {
        let token = self.service_account_token(ns, name, rules).await?;
        // JSON is YAML: kube's kubeconfig reader takes it as is.
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{ "name": "test", "cluster": {
                "server": format!("https://127.0.0.1:{}", self.port),
                "certificate-authority-data": base64(self.ca_pem.as_bytes()),
            } }],
            "users": [{ "name": name, "user": { "token": token } }],
            "contexts": [{ "name": "test", "context": { "cluster": "test", "user": name, "namespace": ns } }],
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    async fn service_account_token(&self, ns: &str, name: &str, rules: Vec<PolicyRule>) -> anyhow::Result<String> {
        self.namespace(ns).await?;
        let apply = PatchParams::apply("testkit").force();
        let meta = || ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() };
        let sa = ServiceAccount { metadata: meta(), ..Default::default() };
        Api::<ServiceAccount>::namespaced(self.client(), ns).patch(name, &apply, &Patch::Apply(&sa)).await?;
        let role = Role { metadata: meta(), rules: Some(rules) };
        Api::<Role>::namespaced(self.client(), ns).patch(name, &apply, &Patch::Apply(&role)).await?;
        let binding = RoleBinding {
            metadata: meta(),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(self.client(), ns).patch(name, &apply, &Patch::Apply(&binding)).await?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
            ..Default::default()
        };
        let token: TokenRequest = Api::<ServiceAccount>::namespaced(self.client(), ns)
            .create_subresource("token", name, &PostParams::default(), &request)
            .await?;
        token.status.and_then(|s| s.token).context("TokenRequest without a token")
    }

    /// Creates (or updates) every CustomResourceDefinition in the multi-document `yaml` and waits
    /// until each is Established.
    pub async fn install_crds(&self, yaml: &str) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let mut names = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value)?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            api.patch(&name, &PatchParams::apply("testkit").force(), &Patch::Apply(&crd)).await?;
            names.push(name);
        }
        for name in names {
            let api = api.clone();
            wait_until(&format!("CRD {name} established"), Duration::from_secs(30), || {
                let (api, name) = (api.clone(), name.clone());
                async move {
                    let crd = api.get(&name).await?;
                    Ok(crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True"))
                }
            })
            .await?;
        }
        Ok(())
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}
