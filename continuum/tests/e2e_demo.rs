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

/// The facts `./scripts/demo` prints for a person (not `--json`), read back from its text.
struct Printed {
    lines: Vec<String>,
}

impl Printed {
    /// The rest of the first line that starts (after indentation) with `prefix`.
    fn after(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{}", self.lines.join("\n")))
            .trim()
    }

    /// The value after `label ` inside a `region ...:` line, e.g. `daemon pid`.
    fn region_field(&self, region: &str, label: &str) -> String {
        let line = self.after(&format!("region {region}:"));
        let rest = &line[line.find(label).unwrap_or_else(|| panic!("{label} in {line:?}")) + label.len()..];
        rest.split_whitespace().next().unwrap().to_string()
    }
}

/// Runs one printed command line through `sh`, as a person pasting it would, with nothing of
/// the test's own environment that could stand in for what the line says.
async fn run_printed(line: &str, stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", line])
        .env_remove("CONTINUUM_TOKEN")
        .env_remove("CONTINUUM_API")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output()).await;
    output.unwrap_or_else(|_| panic!("{line:?} did not finish in 90 s")).unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// As a new user would: `./scripts/demo`, then the commands it printed, pasted as printed (the
/// CLI by the absolute path it names, `psql`, `dig`); start-up says nothing alarming and has no
/// colour codes in a pipe; SIGTERM to the script leaves no process and no directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_commands_work_and_sigterm_to_the_script_cleans_up() {
    testkit::install_crypto_provider();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo");
    let mut demo = Demo(
        Command::new(script)
            .env("CONTINUUM_BIN", BIN)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // stderr collected for the whole run; stdout read until the last printed command.
    let stderr = demo.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut all);
        all
    });
    let stdout = demo.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let last = line.contains("switchover --to b");
            lines.push(line);
            if last {
                break;
            }
        }
        lines
    });
    let printed = Printed {
        lines: tokio::time::timeout(Duration::from_secs(180), lines).await.expect("demo ready in 180 s").unwrap(),
    };
    let try_status = printed.after("try:").to_string();
    let try_switchover = printed.lines.last().unwrap().trim().to_string();
    assert!(try_status.contains(" status --api http://127.0.0.1:"), "{try_status}");
    let cli = try_status.split_whitespace().nth(1).unwrap();
    assert!(cli.starts_with('/') && std::path::Path::new(cli).is_file(), "the CLI by its absolute path: {cli}");

    // `status` as printed: the API's lower-case names, not Rust's.
    let out = run_printed(&try_status, "").await;
    let status = text(&out.stdout);
    assert!(out.status.success(), "{try_status}: {}", text(&out.stderr));
    assert!(status.contains("holder a,") && status.contains("sync standby: b"), "{status}");
    assert!(status.contains("durability preferred, takeover sync-fenced"), "{status}");

    // psql and dig as printed.
    let psql = printed.after("connect:").to_string();
    let out = run_printed(&psql, "select 'writable=' || (not pg_is_in_recovery())::text;\n").await;
    assert!(text(&out.stdout).contains("writable=true"), "{psql}: {}{}", text(&out.stdout), text(&out.stderr));
    let dig = format!("{} +short", printed.after("DNS:"));
    assert_eq!(text(&run_printed(&dig, "").await.stdout).trim(), "127.0.0.1", "{dig}");

    // The daemons' own logs (in the demo's directory) say nothing alarming about a normal start.
    let data_a = std::path::PathBuf::from(printed.lines.iter().find_map(|l| l.trim().strip_prefix("data ")).unwrap());
    let dir = data_a
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("continuum-demo-")))
        .unwrap_or_else(|| panic!("{} is not inside a continuum-demo- directory", data_a.display()))
        .to_path_buf();
    for region in ["a", "b", "w"] {
        let log = std::fs::read_to_string(dir.join(format!("daemon-{region}.log"))).unwrap();
        let alarming: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(alarming.is_empty(), "daemon {region} warned during a normal start:\n{}", alarming.join("\n"));
        assert!(!log.contains('\u{1b}') && log.contains("INFO"), "plain lines in daemon-{region}.log:\n{log}");
    }

    // The switchover as printed moves the primary, and DNS follows.
    let out = run_printed(&try_switchover, "").await;
    let switched = text(&out.stdout);
    assert!(out.status.success(), "{try_switchover}: {switched}{}", text(&out.stderr));
    assert!(switched.contains("succeeded: a -> b"), "{switched}");
    testkit::wait_until("DNS answers region b", Duration::from_secs(15), || {
        let dig = dig.clone();
        async move { Ok(text(&run_printed(&dig, "").await.stdout).trim() == "127.0.0.2") }
    })
    .await
    .unwrap();
    let out = run_printed(&psql, "select 'writable=' || (not pg_is_in_recovery())::text;\n").await;
    assert!(text(&out.stdout).contains("writable=true"), "the multi-host string finds b: {}", text(&out.stderr));

    let mut pids: Vec<i64> = vec![printed.after("witness pid").parse().unwrap()];
    for region in ["a", "b"] {
        pids.push(printed.region_field(region, "daemon pid").parse().unwrap());
    }
    for data_dir in printed.lines.iter().filter_map(|l| l.trim().strip_prefix("data ")) {
        if let Ok(text) = std::fs::read_to_string(std::path::Path::new(data_dir).join("postmaster.pid")) {
            pids.push(text.lines().next().unwrap().trim().parse().unwrap());
        }
    }
    assert_eq!(pids.len(), 5, "witness, two daemons, two postmasters: {pids:?}");
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    // SAFETY: kill has no memory preconditions; the pid is our child's (the script exec'd the demo).
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

    let stderr = stderr.join().unwrap();
    assert!(!stderr.contains('\u{1b}'), "no colour codes when stderr is a pipe:\n{stderr}");
    let start_up = &stderr[..stderr.find("stopping the demo").unwrap_or(stderr.len())];
    let alarming: Vec<&str> = start_up.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(alarming.is_empty(), "a normal start and switchover log no warnings:\n{}", alarming.join("\n"));
}
