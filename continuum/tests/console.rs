//! The web console: served by the daemon's API with a strict content policy, and driven in a real
//! headless Chromium (Debian `chromium`, installed by `scripts/setup`) against the real router.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ApiServer, INELIGIBLE_REASON, MemoryOrchestrator, OWNER, VIEWER};
use continuum::api::CONSOLE_CSP;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium_args(profile: &std::path::Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// The page as Chromium renders it after its scripts ran against the API.
async fn rendered_dom(url: &str) -> String {
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} missing: run scripts/setup (Debian package chromium)");
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(CHROMIUM)
        .args(chromium_args(profile.path()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("chromium finished").unwrap();
    assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn console_files_are_served_with_a_strict_policy_and_no_data() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let response = http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["content-security-policy"], CONSOLE_CSP, "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let body = response.text().await.unwrap();
        for secret in [OWNER, VIEWER] {
            assert!(!body.contains(secret), "{path} carries no token");
        }
    }
    assert!(CONSOLE_CSP.contains("frame-ancestors 'none'") && !CONSOLE_CSP.contains("unsafe"));
}

/// With a viewer token (given in the fragment, as `continuum demo` prints it) the console shows
/// the pair: holder, epoch, each region's role, and which regions a switchover may target.
#[tokio::test]
async fn console_shows_the_pair_in_a_real_browser() {
    let server = ApiServer::start(MemoryOrchestrator::new()).await;
    let dom = rendered_dom(&format!("{}/#token={VIEWER}", server.url)).await;
    assert!(dom.contains(r#"data-pair="app" data-holder="a""#), "pair card with holder a:\n{dom}");
    assert!(dom.contains(r#"<strong class="epoch">7</strong>"#), "epoch 7:\n{dom}");
    for region in ["a", "b", "c"] {
        assert!(dom.contains(&format!(r#"<tr data-region="{region}">"#)), "row for {region}:\n{dom}");
    }
    assert!(dom.contains(r#"class="switch" data-to="b" title="plan a switchover to b">"#), "b can be chosen:\n{dom}");
    assert!(
        dom.contains(&format!(r#"data-to="c" disabled="" title="{INELIGIBLE_REASON}">"#)),
        "c cannot be chosen, and says why:\n{dom}"
    );
    assert!(!dom.contains(r#"data-to="a""#), "no switchover to the holder itself:\n{dom}");
}

/// Just enough of the W3C WebDriver protocol (chromedriver, Debian `chromium-driver`) to click
/// through the console like a user.
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let driver_bin = "/usr/bin/chromedriver";
        assert!(std::path::Path::new(driver_bin).exists(), "{driver_bin} missing: run scripts/setup (chromium-driver)");
        let port = testkit::free_port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        testkit::wait_until("chromedriver ready", Duration::from_secs(20), || {
            let (http, base) = (http.clone(), base.clone());
            async move { Ok(http.get(format!("{base}/status")).send().await.is_ok_and(|r| r.status().is_success())) }
        })
        .await
        .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": chromium_args(profile.path()) }
        }}});
        let created: serde_json::Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}"));
        Browser { session: format!("{base}/session/{session}"), http, driver, _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: serde_json::Value) -> serde_json::Value {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() { request } else { request.json(&body) };
        let answer: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", serde_json::json!({ "url": url })).await;
    }

    /// The element matching `css`, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        testkit::wait_for(&format!("element {css}"), Duration::from_secs(15), || async move {
            let found = self.call(
                reqwest::Method::POST,
                "/element",
                serde_json::json!({ "using": "css selector", "value": css }),
            );
            Ok(found.await[ELEMENT].as_str().map(str::to_string))
        })
        .await
        .unwrap()
    }

    async fn click(&self, element: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), serde_json::json!({})).await;
    }

    async fn type_into(&self, element: &str, text: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), serde_json::json!({ "text": text }))
            .await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self.call(reqwest::Method::GET, &format!("/element/{element}/text"), serde_json::Value::Null).await;
        text.as_str().unwrap_or_default().to_string()
    }

    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let check = &check;
        testkit::wait_for(what, Duration::from_secs(15), || async move {
            let text = self.text(css).await;
            Ok(check(&text).then_some(text))
        })
        .await
        .unwrap()
    }

    async fn enabled(&self, css: &str) -> bool {
        let element = self.find(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{element}/enabled"), serde_json::Value::Null).await
            == serde_json::Value::Bool(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

/// An owner plans and confirms a switchover with the console's buttons: the plan is shown
/// first, the request carries the typed reason under the owner's name, and the progress shows
/// the switchover finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_switches_over_with_the_console_buttons() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/#token={OWNER}", server.url)).await;

    let to_b = browser.find(r#"button.switch[data-to="b"]"#).await;
    browser.click(&to_b).await;
    browser.wait_text("#plan-steps", "the plan's steps", |t| t.contains("promote")).await;
    testkit::wait_until("confirm enabled", Duration::from_secs(15), || async { Ok(browser.enabled("#confirm").await) })
        .await
        .unwrap();
    assert!(orchestrator.calls().iter().all(|c| !c.starts_with("switchover:")), "nothing happens before confirming");
    let reason = browser.find("#reason").await;
    browser.type_into(&reason, "console drill").await;
    let confirm = browser.find("#confirm").await;
    browser.click(&confirm).await;

    browser.wait_text("#progress-state", "switchover succeeded", |t| t == "succeeded").await;
    let steps = browser.text("#progress-steps").await;
    assert!(steps.contains("promote: done") && steps.contains("drain: skipped"), "step progress:\n{steps}");
    let history = orchestrator.history_snapshot();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].to.as_str(), history[0].reason.as_str()), ("b", "console drill"));
    assert_eq!(history[0].requested_by, "olivia", "the owner token's name");
    // The page follows the new holder.
    browser.find(r#"article[data-holder="b"]"#).await;
}

/// A viewer sees the plan but the switchover is refused (403) and changes nothing; the page
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_switch_over_from_the_console() {
    let orchestrator = MemoryOrchestrator::new();
    let server = ApiServer::start(orchestrator.clone()).await;
    let browser = Browser::start().await;
    browser.open(&format!("{}/#token={VIEWER}", server.url)).await;
    let to_b = browser.find(r#"button.switch[data-to="b"]"#).await;
    browser.click(&to_b).await;
    // Planning needs an operator: the viewer's plan request is refused as well.
    browser.wait_text("#plan-blockers", "plan refused", |t| t.contains("403")).await;
    assert!(!browser.enabled("#confirm").await, "no confirming a plan that could not be made");
    assert!(orchestrator.calls().iter().all(|c| !c.starts_with("switchover:") && !c.starts_with("plan:")));
    assert!(orchestrator.history_snapshot().is_empty());
}
