//! `continuum demo --json`: comes up, a switchover through its API moves the DNS answer, and
//! SIGTERM stops and removes everything it started.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_continuum");

/// SIGTERM on drop, so the demo cleans up even when the test panics.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn alive(pid: i64) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_comes_up_switches_over_and_cleans_up_on_sigterm() {
    testkit::install_crypto_provider();
    let mut demo = Demo(
        Command::new(BIN)
            .args(["demo", "--json"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line =
        tokio::time::timeout(Duration::from_secs(120), line).await.expect("no JSON line in 120 s").unwrap().unwrap();
    let facts: serde_json::Value = serde_json::from_str(&line).unwrap();
    let token = facts["owner_token"].as_str().unwrap().to_string();
    let api_a = facts["regions"][0]["api_url"].as_str().unwrap().to_string();
    assert!(facts["conninfo"].as_str().unwrap().contains("target_session_attrs=read-write"));
    let console = facts["regions"][0]["console_url"].as_str().unwrap();
    assert_eq!(console, format!("{api_a}/#token={token}"), "the console URL logs in as the owner");
    let dns = testkit::DnsProbe::new(format!("127.0.0.1:{}", facts["dns_port"]).parse().unwrap()).unwrap();
    let name = facts["dns_name"].as_str().unwrap().to_string();
    assert_eq!(dns.a(&name).await.unwrap(), ["127.0.0.1"]);

    let http = reqwest::Client::new();
    // The real daemon's answer to a target outside the pair, which the API tests' fake shares
    // (`api::validate`): 400, not 404.
    let refused = http
        .post(format!("{api_a}/v1/switchover"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "to": "zz", "reason": "demo test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "{}", refused.text().await.unwrap_or_default());
    let accepted: serde_json::Value = http
        .post(format!("{api_a}/v1/switchover"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "to": "b", "reason": "demo test" }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_string();
    testkit::wait_until("switchover succeeded", Duration::from_secs(30), || {
        let request = http.get(format!("{api_a}/v1/switchovers/{id}")).bearer_auth(&token).send();
        async move {
            let record: serde_json::Value = request.await?.json().await?;
            Ok(record["state"] == "succeeded")
        }
    })
    .await
    .unwrap();
    testkit::wait_until("DNS answers region b", Duration::from_secs(10), || async {
        Ok(dns.a(&name).await.map(|a| a == ["127.0.0.2"]).unwrap_or(false))
    })
    .await
    .unwrap();

    let mut pids: Vec<i64> = vec![facts["witness_pid"].as_i64().unwrap()];
    for region in facts["regions"].as_array().unwrap() {
        pids.push(region["daemon_pid"].as_i64().unwrap());
    }
    // The postmasters as they are now (a restarted as a standby during the switchover).
    let dir = std::path::PathBuf::from(facts["dir"].as_str().unwrap());
    for region in facts["regions"].as_array().unwrap() {
        let data_dir = std::path::Path::new(region["postgres_data_dir"].as_str().unwrap());
        assert!(data_dir.starts_with(&dir), "{data_dir:?} inside the demo's directory");
        if let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) {
            pids.push(text.lines().next().unwrap().trim().parse().unwrap());
        }
    }
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    // SAFETY: as above.
    unsafe { libc::kill(demo.0.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        let status = demo.0.wait();
        std::mem::forget(demo);
        status
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "{status:?}");
    testkit::wait_until("every process of the demo gone", Duration::from_secs(10), || {
        let pids = pids.clone();
        async move { Ok(pids.iter().all(|&p| !alive(p))) }
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}
