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
    // The API's names (as the console shows them), not Rust's.
    assert!(stdout.contains("durability preferred, takeover lease-expiry"), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().take(2).eq(["a", "primary"])), "{stdout}");

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

/// Reads `child`'s stdout until `marker` was seen `times` times (or 20 s passed), then kills it.
async fn read_until(mut child: tokio::process::Child, marker: &str, times: usize) -> String {
    use tokio::io::AsyncReadExt;
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while text(&seen).matches(marker).count() < times {
            let n = stdout.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(20), read).await;
    let _ = child.kill().await;
    assert!(finished.is_ok(), "{marker:?} not seen {times} times in 20 s:\n{}", text(&seen));
    text(&seen)
}

/// `status --watch`: into a pipe a plain re-print per refresh (no escape codes); on a terminal
/// (a real pseudo-terminal through script(1)) each refresh is drawn over the last one.
#[tokio::test]
async fn status_watch_reprints_into_a_pipe_and_refreshes_in_place_on_a_terminal() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let piped = Command::new(BIN)
        .args(["status", "--watch", "--interval", "100ms", "--api", &server.url])
        .env("CONTINUUM_TOKEN", VIEWER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = read_until(piped, "daemon region: a", 3).await;
    assert!(!seen.contains('\u{1b}'), "no escape codes into a pipe:\n{seen}");
    assert!(seen.contains("every 100ms"), "{seen}");
    assert!(orchestrator.calls().iter().filter(|c| *c == "status").count() >= 3);

    let json = Command::new(BIN)
        .args(["status", "--watch", "--json", "--interval", "100ms", "--api", &server.url])
        .env("CONTINUUM_TOKEN", VIEWER)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = read_until(json, "\n", 2).await;
    for line in seen.lines().take(2) {
        let status: Status = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(status.pairs[0].holder.as_deref(), Some("a"));
    }

    let command = format!("{BIN} status --watch --interval 100ms --api {}", server.url);
    let terminal = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("CONTINUUM_TOKEN", VIEWER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let seen = read_until(terminal, "daemon region: a", 3).await;
    // Every frame starts at the top left corner and clears what the last one left.
    assert!(seen.matches("\u{1b}[H").count() >= 2 && seen.contains("\u{1b}[J"), "{seen:?}");

    // A refused token ends the watch with the API's reason instead of retrying forever.
    let out = Command::new(BIN)
        .args(["status", "--watch", "--interval", "100ms", "--api", &server.url])
        .env("CONTINUUM_TOKEN", "not-a-known-token-at-all")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}

/// Completion scripts and the manual page come from the parser itself: bash completes a
/// subcommand and a flag through the generated function; zsh and fish scripts name the command;
/// the manual renders with nroff and lists the subcommands; `man --dir` writes one page each.
#[tokio::test]
async fn completions_and_manual_pages_are_generated_from_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["completions", "bash"]).output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = dir.path().join("continuum.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let complete = |words: &str| {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; _continuum continuum \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[*]}}\"",
            script.display()
        );
        Command::new("bash").args(["-c", &program]).output()
    };
    let out = complete("continuum sta").await.unwrap();
    assert_eq!(text(&out.stdout).trim(), "status", "{}", text(&out.stderr));
    let out = complete("continuum status --wat").await.unwrap();
    assert_eq!(text(&out.stdout).trim(), "--watch", "{}", text(&out.stderr));

    let zsh = Command::new(BIN).args(["completions", "zsh"]).output().await.unwrap();
    assert!(text(&zsh.stdout).starts_with("#compdef continuum"), "{}", text(&zsh.stdout));
    let fish = Command::new(BIN).args(["completions", "fish"]).output().await.unwrap();
    assert!(text(&fish.stdout).lines().any(|l| l.starts_with("complete -c continuum") && l.contains("switchover")));

    let man = Command::new(BIN).arg("man").output().await.unwrap();
    assert!(man.status.success() && text(&man.stdout).contains(".TH continuum 1"), "{}", text(&man.stdout));
    let page = dir.path().join("continuum.1");
    std::fs::write(&page, &man.stdout).unwrap();
    // Plain ASCII, no overstriking: what `man` shows, as text to search.
    let rendered = Command::new("groff").args(["-man", "-Tascii", "-P", "-cbou"]).arg(&page).output().await.unwrap();
    let rendered = text(&rendered.stdout);
    for word in ["continuum", "SUBCOMMANDS", "switchover", "completions"] {
        assert!(rendered.contains(word), "{word} in the rendered page:\n{rendered}");
    }

    let pages = dir.path().join("man1");
    let out = Command::new(BIN).args(["man", "--dir"]).arg(&pages).output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status_page = std::fs::read_to_string(pages.join("continuum-status.1")).unwrap();
    assert!(status_page.contains("watch") && status_page.contains("interval"), "{status_page}");
}
