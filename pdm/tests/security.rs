//! Scoped tokens, plausible epochs with an audited reset, and pre-warm commits at PowerDNS'
//! default health-check interval, against a real PowerDNS.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{COMMIT_TOKEN, Harness, HealthTarget, Options, TOKEN, raw};
use pdm::{
    CommitRequest, DelegationRequest, EpochResetRequest, LuaSpec, Nameserver, PdmClient, PdmError, RecordSpec,
    UrlTarget,
};
use reqwest::Method;

fn static_a(name: &str, address: &str) -> RecordSpec {
    RecordSpec { name: name.into(), rtype: "A".into(), ttl: 60, content: Some(address.into()), lua: None }
}

fn commit(zone: &str, epoch: u64, records: Vec<RecordSpec>) -> CommitRequest {
    CommitRequest { zone: zone.into(), epoch, records }
}

fn remote_code(err: &PdmError) -> Option<(u16, &str)> {
    match err {
        PdmError::Remote { status, code, .. } => Some((*status, code.as_str())),
        _ => None,
    }
}

/// Log lines written on this thread while the guard lives (the `#[tokio::test]` runtime is
/// single-threaded, so PDM's request handlers and its commit tasks run here too).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_commit_token_cannot_delete_zones_delegate_or_reset_epochs() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let logs = Captured::default();
    let _capture = logs.start();
    h.create_zone("scope.test").await?;
    let daemon = h.commit_client();
    // The commit role does what a daemon needs: commit and read.
    daemon.commit(&commit("scope.test", 7, vec![static_a("app.scope.test", "192.0.2.7")])).await?;
    assert_eq!(daemon.records("scope.test", "app.scope.test").await?.epoch, Some(7));
    assert!(daemon.zones().await?.zones.iter().any(|z| z.name == "scope.test."));
    // A record PDM does not own, so only a forced delete would remove the zone.
    h.write_behind_pdm("scope.test.", "foreign.scope.test.", "A", "192.0.2.9").await?;
    let before = h.snapshot("scope.test.").await?;

    let delegation = DelegationRequest {
        nameservers: vec![Nameserver { name: "ns1.child.scope.test".into(), addresses: vec!["192.0.2.53".parse()?] }],
        ttl: 300,
    };
    let reset = EpochResetRequest { epoch: 1, reason: "drill".into() };
    let refusals = [
        ("delete", daemon.delete_zone("scope.test", None).await.err()),
        ("forced delete", daemon.delete_zone("scope.test", Some("decommission")).await.err()),
        ("delegation", daemon.delegate("scope.test", "child.scope.test", &delegation).await.map(drop).err()),
        ("epoch reset", daemon.reset_epoch("scope.test", "app.scope.test", &reset).await.map(drop).err()),
        (
            "zone create",
            daemon
                .create_zone(&pdm::CreateZoneRequest { name: "new.test".into(), nameservers: vec![] })
                .await
                .map(drop)
                .err(),
        ),
    ];
    for (what, err) in &refusals {
        let err = err.as_ref().unwrap_or_else(|| panic!("{what} with a commit token was accepted"));
        assert_eq!(remote_code(err), Some((403, "forbidden")), "{what}: {err}");
        assert!(err.to_string().contains("role admin required; daemon has role commit"), "{what}: {err}");
    }
    assert_eq!(h.snapshot("scope.test.").await?, before, "a refused request changed the zone");
    assert!(!h.client.zones().await?.zones.iter().any(|z| z.name == "new.test."));
    // Raw, with the token as a daemon would send it: the body is never looked at.
    let url = format!("{}/v1/zones/scope.test?force=true&reason=x", h.url);
    let (status, body) = raw(Method::DELETE, &url, Some(COMMIT_TOKEN), None).await?;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert!(logs.text().contains("forbidden") && logs.text().contains("caller=daemon"), "{}", logs.text());

    // The admin token does all of it, and the log names who.
    h.client.delegate("scope.test", "child.scope.test", &delegation).await?;
    h.client.delete_zone("scope.test", Some("decommission")).await?;
    assert!(!h.client.zones().await?.zones.iter().any(|z| z.name == "scope.test."));
    let text = logs.text();
    assert!(text.contains("delegation written") && text.contains("caller=ops"), "{text}");
    assert!(text.contains("zone deleted") && text.contains("reason=\"decommission\""), "{text}");
    Ok(())
}

#[tokio::test]
async fn implausible_epochs_are_refused_and_an_admin_reset_is_the_way_back() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let logs = Captured::default();
    let _capture = logs.start();
    h.create_zone("epoch.test").await?;
    let daemon = h.commit_client();
    let max_step: u64 = 1 << 40; // the default commit.max_epoch_step
    daemon.commit(&commit("epoch.test", 100, vec![static_a("app.epoch.test", "192.0.2.1")])).await?;
    let before = h.snapshot("epoch.test.").await?;

    // The case (2^63), one past the step, and a name never committed measured from the
    // zone's highest epoch: refused with their own code, nothing written.
    for (name, epoch) in [("app", 1u64 << 63), ("app", 100 + max_step + 1), ("other", 100 + max_step + 1)] {
        let request = commit("epoch.test", epoch, vec![static_a(&format!("{name}.epoch.test"), "192.0.2.66")]);
        let err = daemon.commit(&request).await.expect_err("implausible epoch accepted");
        assert_eq!(remote_code(&err), Some((422, "implausible_epoch")), "{err}");
        assert!(err.to_string().contains("commit.max_epoch_step"), "{err}");
    }
    assert_eq!(h.snapshot("epoch.test.").await?, before, "an implausible epoch changed the zone");

    // A legal but wild jump (a bug upstream, a leaked commit token) fences the real epochs out...
    daemon.commit(&commit("epoch.test", 100 + max_step, vec![static_a("app.epoch.test", "192.0.2.66")])).await?;
    let err = daemon.commit(&commit("epoch.test", 120, vec![static_a("app.epoch.test", "192.0.2.2")])).await;
    assert_eq!(remote_code(&err.expect_err("stale accepted")), Some((409, "stale_epoch")));

    // ...until an admin resets the name; that needs a reason and a name PDM holds an epoch for.
    let bad = EpochResetRequest { epoch: 110, reason: " ".into() };
    let err = h.client.reset_epoch("epoch.test", "app.epoch.test", &bad).await.expect_err("reset without reason");
    assert_eq!(remote_code(&err), Some((400, "invalid_request")));
    let unknown = EpochResetRequest { epoch: 110, reason: "x".into() };
    let err = h.client.reset_epoch("epoch.test", "none.epoch.test", &unknown).await.expect_err("reset of nothing");
    assert_eq!(remote_code(&err), Some((404, "no_epoch")));

    let reset = EpochResetRequest { epoch: 110, reason: "epoch pushed out of range by bad commit".into() };
    let answer = h.client.reset_epoch("epoch.test", "app.epoch.test", &reset).await?;
    assert_eq!((answer.old_epoch, answer.new_epoch, answer.by.as_str()), (100 + max_step, 110, "ops"));
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("pdm::audit") && l.contains("epoch reset"))
        .unwrap_or_else(|| panic!("no reset line in {text}"));
    for part in ["caller=ops", "name=app.epoch.test.", &format!("old_epoch={}", 100 + max_step), "new_epoch=110"] {
        assert!(line.contains(part), "{part} missing from {line}");
    }

    // Below the reset value stays stale; the daemon's real epoch commits again.
    let err = daemon.commit(&commit("epoch.test", 105, vec![static_a("app.epoch.test", "192.0.2.2")])).await;
    assert_eq!(remote_code(&err.expect_err("below the reset accepted")), Some((409, "stale_epoch")));
    daemon.commit(&commit("epoch.test", 120, vec![static_a("app.epoch.test", "192.0.2.2")])).await?;
    assert_eq!(h.dns.a("app.epoch.test").await?, ["192.0.2.2"]);
    assert_eq!(daemon.records("epoch.test", "app.epoch.test").await?.epoch, Some(120));
    Ok(())
}

/// PowerDNS' default `lua-health-checks-interval`.
const PDNS_DEFAULT_CHECK_INTERVAL_SECS: u32 = 5;

#[tokio::test]
async fn prewarm_commit_succeeds_at_powerdns_default_interval_within_the_daemons_timeout() -> anyhow::Result<()> {
    let h =
        Harness::start_with(Options { check_interval_secs: PDNS_DEFAULT_CHECK_INTERVAL_SECS, ..Default::default() })
            .await?;
    let logs = Captured::default();
    let _capture = logs.start();
    h.create_zone("warm.test").await?;
    let (a, b) =
        (HealthTarget::start("127.0.0.1:0".parse()?).await?, HealthTarget::start("127.0.0.1:0".parse()?).await?);
    let spec = |first: &HealthTarget, second: &HealthTarget, addresses: [&str; 2]| LuaSpec::Ifurlextup {
        tiers: vec![
            vec![UrlTarget { address: addresses[0].into(), url: first.url() }],
            vec![UrlTarget { address: addresses[1].into(), url: second.url() }],
        ],
        options: Default::default(),
    };
    let record =
        |lua| RecordSpec { name: "db.warm.test".into(), rtype: "A".into(), ttl: 5, content: None, lua: Some(lua) };
    // `pdm.timeout`'s default, as the daemon builds its client.
    let daemon = h.commit_client();

    let started = Instant::now();
    let request = commit("warm.test", 1, vec![record(spec(&a, &b, ["192.0.2.1", "192.0.2.2"]))]);
    let response = daemon.commit(&request).await?;
    let took = started.elapsed();
    assert_eq!(response.prewarmed, vec!["db.warm.test.".to_string()]);
    assert_eq!(response.answers[0].records, ["192.0.2.1"], "answered before the checks were warm");
    // The pre-warm alone (interval + 2 s check timeout) outlasts one 5 s HTTP exchange.
    assert!(took > Duration::from_secs(5), "pre-warm took only {took:?}");
    eprintln!("pre-warm commit at a {PDNS_DEFAULT_CHECK_INTERVAL_SECS} s check interval took {took:?}");

    // A caller whose call times out gets "unknown"; its retry with the same epoch joins the
    // commit still running in PDM instead of failing or starting over.
    let (c, d) =
        (HealthTarget::start("127.0.0.1:0".parse()?).await?, HealthTarget::start("127.0.0.1:0".parse()?).await?);
    let request = commit("warm.test", 2, vec![record(spec(&c, &d, ["192.0.2.3", "192.0.2.4"]))]);
    let impatient = PdmClient::new(&h.url, COMMIT_TOKEN, Duration::from_millis(300))?;
    let err = impatient.commit(&request).await.expect_err("a 300 ms call cannot see a pre-warm through");
    assert!(matches!(err, PdmError::OutcomeUnknown(_)), "{err}");
    let response = daemon.commit(&request).await?;
    assert_eq!(response.prewarmed, vec!["db.warm.test.".to_string()]);
    assert_eq!(response.answers[0].records, ["192.0.2.3"]);
    // Joined, not restarted: one commit at epoch 2 ran.
    let text = logs.text();
    assert!(text.contains("identical commit joins the pending operation"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("committed") && l.contains("epoch=2")).count(), 1, "{text}");

    // Another token cannot poll someone else's operation (nor learn it exists).
    let (status, body) =
        raw(Method::GET, &format!("{}/v1/operations/{}", h.url, "0".repeat(32)), Some(TOKEN), None).await?;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown_operation")));
    Ok(())
}
