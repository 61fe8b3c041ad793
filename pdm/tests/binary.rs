//! The `pdm` binary: config errors, TLS serving and clean shutdown on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pdm::{CreateZoneRequest, PdmClient};
use testkit::{PowerDns, free_port, wait_for};

const TOKEN: &str = "binary-test-token-0123456789";

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn pdm_command(config: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdm"));
    command.arg("--config").arg(config).env("RUST_LOG", "warn");
    command
}

#[test]
fn malformed_config_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("listen = \"127.0.0.1:0\"\n", "missing field"),
        (
            "listen = \"127.0.0.1:0\"\ntokens_file = \"/t\"\ncolour = \"blue\"\n[powerdns]\napi_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\ndns_addr = \"127.0.0.1:53\"\n",
            "unknown field",
        ),
        (
            "listen = \"127.0.0.1:0\"\ntokens_file = \"/nonexistent/tokens\"\n[powerdns]\napi_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\ndns_addr = \"127.0.0.1:53\"\n",
            "tokens_file /nonexistent/tokens",
        ),
        (
            "listen = \"127.0.0.1:0\"\ntoken_file = \"/t\"\n[powerdns]\napi_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\ndns_addr = \"127.0.0.1:53\"\n",
            "unknown field `token_file`",
        ),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("pdm.toml");
        std::fs::write(&path, text)?;
        let out = pdm_command(&path).stdout(Stdio::null()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
    }
    let out = pdm_command(&dir.path().join("missing.toml")).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    Ok(())
}

#[tokio::test]
async fn binary_serves_https_and_stops_on_sigterm() -> anyhow::Result<()> {
    testkit::install_crypto_provider();
    let pdns = PowerDns::start().await?;
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    std::fs::write(dir.path().join("tls.crt"), cert.cert.pem())?;
    std::fs::write(dir.path().join("tls.key"), cert.signing_key.serialize_pem())?;
    std::fs::write(
        dir.path().join("tokens.toml"),
        format!("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n"),
    )?;
    std::fs::write(dir.path().join("pdns-key"), format!("{}\n", pdns.api_key))?;
    for secret in ["tokens.toml", "pdns-key"] {
        std::fs::set_permissions(dir.path().join(secret), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    let port = free_port();
    let config = dir.path().join("pdm.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ntokens_file = \"{d}/tokens.toml\"\n[powerdns]\napi_url = \"{api}\"\napi_key_file = \"{d}/pdns-key\"\n\
             dns_addr = \"{dns}\"\n[zones]\ndefault_nameservers = [\"ns1.example.net.\"]\n[tls]\ncert = \"{d}/tls.crt\"\nkey = \"{d}/tls.key\"\n",
            d = dir.path().display(),
            api = pdns.api_url,
            dns = pdns.dns_addr,
        ),
    )?;
    let mut guard = Guard(Some(pdm_command(&config).spawn()?));

    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.cert.pem().as_bytes())?])
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = format!("https://127.0.0.1:{port}");
    wait_for("PDM over HTTPS", Duration::from_secs(20), || {
        let request = http.get(format!("{base}/healthz")).send();
        async move { Ok(request.await.ok().filter(|r| r.status().is_success())) }
    })
    .await?;
    let client = PdmClient::with_http(http, &base, TOKEN);
    client.create_zone(&CreateZoneRequest { name: "tls.test".into(), nameservers: vec![] }).await?;
    assert!(client.zones().await?.zones.iter().any(|z| z.name == "tls.test."));
    // Plain HTTP to the TLS port gets no API answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    let child = guard.0.as_mut().expect("running");
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    assert!(status.success());
    let exited = wait_for("pdm to exit after SIGTERM", Duration::from_secs(15), || {
        let state = child.try_wait();
        async move { Ok(state?) }
    })
    .await?;
    assert!(exited.success(), "pdm exited with {exited}");
    Ok(())
}
