//! The `continuum` binary as an API client, against the real router served in-process.

mod common;

use std::process::{Output, Stdio};

use common::{ApiServer, MemoryOrchestrator, OPERATOR, OWNER, VIEWER};
use continuum::api::{Status, SwitchoverRecord, SwitchoverState};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_continuum");

async fn cli(server: &ApiServer, args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).arg("--api").arg(&server.url).env_remove("CONTINUUM_TOKEN").stdin(Stdio::null());
    if let Some(token) = token {
        command.env("CONTINUUM_TOKEN", token);
    }
    command.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn status_in_text_and_json() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let out = cli(&server, &["status"], Some(VIEWER)).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("pair app: holder a, epoch 7"), "{stdout}");
    assert!(stdout.contains("sync standby: b"), "{stdout}");
    assert!(stdout.contains(common::INELIGIBLE_REASON), "{stdout}");

    let out = cli(&server, &["status", "--json"], Some(VIEWER)).await;
    let status: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status.pairs[0].holder.as_deref(), status.pairs[0].epoch), (Some("a"), 7));
}

#[tokio::test]
async fn plan_shows_steps_and_blockers() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let out = cli(&server, &["plan", "--to", "b"], Some(OPERATOR)).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("a -> b (epoch 7 -> a higher one)")
            && stdout.contains("move_lease")
            && stdout.contains("no blockers"),
        "{stdout}"
    );

    let out = cli(&server, &["plan", "--to", "c"], Some(OPERATOR)).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("blockers:") && stdout.contains(common::INELIGIBLE_REASON), "{stdout}");
}

#[tokio::test]
async fn switchover_with_yes_prints_each_step_and_the_outcome() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{OWNER}\n")).unwrap();
    let token_file = token_file.display().to_string();
    let out =
        cli(&server, &["switchover", "--to", "b", "--reason", "drill", "--yes", "--token-file", &token_file], None)
            .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    for step in ["intent", "fence", "catch_up", "move_lease", "promote", "dns", "rejoin", "restore_sync"] {
        assert!(stdout.lines().any(|l| l.contains("done") && l.contains(step)), "step {step} missing:\n{stdout}");
    }
    assert!(stdout.lines().any(|l| l.contains("skipped") && l.contains("drain")), "{stdout}");
    assert!(stdout.contains("succeeded: a -> b, epoch 7 -> 8"), "{stdout}");

    let out = cli(&server, &["history", "--json"], Some(VIEWER)).await;
    let history: Vec<SwitchoverRecord> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].state, history[0].reason.as_str()), (SwitchoverState::Succeeded, "drill"));
    let out = cli(&server, &["history"], Some(VIEWER)).await;
    assert!(text(&out.stdout).contains(&history[0].id.to_string()));
    let out = cli(&server, &["history", &history[0].id.to_string()], Some(VIEWER)).await;
    assert!(text(&out.stdout).contains("requested by olivia"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn switchover_without_yes_and_without_a_terminal_is_refused() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let out = cli(&server, &["switchover", "--to", "b"], Some(OWNER)).await;
    assert_eq!(out.status.code(), Some(continuum::EXIT_USAGE));
    assert!(text(&out.stderr).contains("--yes"), "{}", text(&out.stderr));
    assert_eq!(orchestrator.calls(), Vec::<String>::new());
}

#[tokio::test]
async fn rejections_are_reported_with_their_reason() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let out = cli(&server, &["switchover", "--to", "b", "--yes"], Some(VIEWER)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403: forbidden"), "{}", text(&out.stderr));

    let out = cli(&server, &["switchover", "--to", "c", "--yes"], Some(OWNER)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(common::INELIGIBLE_REASON), "{}", text(&out.stderr));

    let out = cli(&server, &["status"], None).await;
    assert!(text(&out.stderr).contains("401: unauthenticated"), "{}", text(&out.stderr));

    // A daemon that is not there: a clear error and EX_UNAVAILABLE.
    let out = Command::new(BIN)
        .args(["status", "--api", &format!("http://127.0.0.1:{}", testkit::free_port())])
        .env("CONTINUUM_TOKEN", VIEWER)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(continuum::EXIT_UNAVAILABLE), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach"));
}
