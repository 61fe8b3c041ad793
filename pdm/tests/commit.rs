//! Commits against a real PowerDNS, checked with real DNS queries.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{CHECK_INTERVAL_SECS, Harness, HealthTarget, port_pair};
use pdm::{CheckOptions, CommitRequest, LuaSpec, PdmError, RecordSpec, UrlTarget};
use testkit::{wait_for, wait_until};

fn lua_record(name: &str, lua: LuaSpec) -> RecordSpec {
    RecordSpec { name: name.into(), rtype: "A".into(), ttl: 5, content: None, lua: Some(lua) }
}

fn static_a(name: &str, address: &str) -> RecordSpec {
    RecordSpec { name: name.into(), rtype: "A".into(), ttl: 60, content: Some(address.into()), lua: None }
}

fn commit(zone: &str, epoch: u64, records: Vec<RecordSpec>) -> CommitRequest {
    CommitRequest { zone: zone.into(), epoch, records }
}

/// One check round plus the 1 s check timeout, plus scheduling slack for a loaded machine.
fn failover_deadline() -> Duration {
    Duration::from_secs(u64::from(CHECK_INTERVAL_SECS) + 1 + 3)
}

#[tokio::test]
async fn ifportup_answer_follows_which_target_is_up() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.create_zone("port.test").await?;
    let (a, b) = port_pair().await?;
    let port = a.addr.port();
    let spec = LuaSpec::Ifportup {
        port,
        addresses: vec!["127.0.0.1".into(), "127.0.0.2".into()],
        options: CheckOptions { timeout: Some(1), ..Default::default() },
    };
    let response = h.client.commit(&commit("port.test", 1, vec![lua_record("db.port.test", spec)])).await?;
    assert_eq!(response.prewarmed, vec!["db.port.test.".to_string()]);
    let first = &response.answers[0].records;
    assert!(first == &["127.0.0.1"] || first == &["127.0.0.2"], "answer {first:?}");

    // Only B up: within one check round every answer is B.
    // With both up PowerDNS picks randomly, so one answer proves nothing: wait for a run of
    // 20 identical answers (2^-20 by chance), then check it holds.
    drop(a);
    wait_until("answer moves to 127.0.0.2", failover_deadline(), || answers_only(&h, "127.0.0.2")).await?;
    for _ in 0..20 {
        assert_eq!(h.dns.a("db.port.test").await?, ["127.0.0.2"]);
    }

    // A back, B gone: the answer follows to A.
    let a = HealthTarget::start(format!("127.0.0.1:{port}").parse()?).await?;
    drop(b);
    wait_until("answer moves to 127.0.0.1", failover_deadline(), || answers_only(&h, "127.0.0.1")).await?;
    for _ in 0..20 {
        assert_eq!(h.dns.a("db.port.test").await?, ["127.0.0.1"]);
    }
    drop(a);
    Ok(())
}

async fn answers_only(h: &Harness, address: &str) -> anyhow::Result<bool> {
    for _ in 0..20 {
        if h.dns.a("db.port.test").await? != [address] {
            return Ok(false);
        }
    }
    Ok(true)
}

fn two_region_spec(first: (&str, &HealthTarget), second: (&str, &HealthTarget)) -> LuaSpec {
    LuaSpec::Ifurlextup {
        tiers: vec![
            vec![UrlTarget { address: first.0.into(), url: first.1.url() }],
            vec![UrlTarget { address: second.0.into(), url: second.1.url() }],
        ],
        options: CheckOptions { timeout: Some(1), ..Default::default() },
    }
}

#[tokio::test]
async fn flip_by_reordering_tiers_answers_on_the_next_query_and_never_the_wrong_region() -> anyhow::Result<()> {
    const REGION_A: &str = "192.0.2.1";
    const REGION_B: &str = "192.0.2.2";
    let h = Arc::new(Harness::start().await?);
    h.create_zone("flip.test").await?;
    let health_a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let health_b = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let name = "db.flip.test.";
    let first = h
        .client
        .commit(&commit(
            "flip.test",
            1,
            vec![lua_record(name, two_region_spec((REGION_A, &health_a), (REGION_B, &health_b)))],
        ))
        .await?;
    assert_eq!(first.prewarmed, vec![name.to_string()], "a new body is pre-warmed");
    assert_eq!(first.answers[0].records, [REGION_A]);

    // A tight query loop for the whole flip sequence, recording when each query was sent and
    // answered.
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = h.dns.a(name).await.map_err(|e| e.to_string());
                seen.push((sent, Instant::now(), answer));
            }
            seen
        })
    };
    // (request sent, response received, region it commits)
    let mut flips = Vec::new();
    for epoch in 2..=7u64 {
        let (region, spec) = if epoch % 2 == 0 {
            (REGION_B, two_region_spec((REGION_B, &health_b), (REGION_A, &health_a)))
        } else {
            (REGION_A, two_region_spec((REGION_A, &health_a), (REGION_B, &health_b)))
        };
        let started = Instant::now();
        let response = h.client.commit(&commit("flip.test", epoch, vec![lua_record(name, spec)])).await?;
        let returned = Instant::now();
        assert_eq!(response.flipped, vec![name.to_string()], "epoch {epoch}: reordering tiers is a flip");
        assert!(response.prewarmed.is_empty(), "epoch {epoch}: a flip needs no pre-warm");
        assert_eq!(response.answers[0].records, [region], "epoch {epoch}: PDM's own check");
        // The very next query after the commit returns answers the new region.
        assert_eq!(h.dns.a(name).await?, [region], "epoch {epoch}: next query");
        flips.push((started, returned, region));
        // Let the loop observe the steady state between flips.
        let target = h.dns.a(name).await?;
        assert_eq!(target, [region]);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = looper.await?;
    assert!(seen.len() > 50, "the query loop ran only {} queries", seen.len());

    for (sent, answered, answer) in &seen {
        let answer = answer.as_ref().map_err(|e| anyhow::anyhow!("query failed during the flips: {e}"))?;
        // The region committed last before this query was sent, and whether a commit was in
        // flight while it ran (then the previous region is also acceptable).
        let settled = flips.iter().rev().find(|(_, returned, _)| returned <= sent).map(|f| f.2).unwrap_or(REGION_A);
        let in_flight: Vec<&str> = flips
            .iter()
            .filter(|(started, returned, _)| started <= answered && returned >= sent)
            .map(|f| f.2)
            .collect();
        let acceptable: Vec<&str> = std::iter::once(settled).chain(in_flight).collect();
        assert!(
            answer.len() == 1 && acceptable.contains(&answer[0].as_str()),
            "answer {answer:?} while {acceptable:?} was acceptable"
        );
    }
    Ok(())
}

#[tokio::test]
async fn stale_epoch_is_refused_and_the_refusal_survives_a_pdm_restart() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    h.create_zone("fence.test").await?;
    let name = "app.fence.test.";
    h.client.commit(&commit("fence.test", 5, vec![static_a(name, "192.0.2.5")])).await?;
    assert_eq!(h.dns.a(name).await?, ["192.0.2.5"]);
    let before = h.snapshot("fence.test.").await?;

    let refused = h.client.commit(&commit("fence.test", 4, vec![static_a(name, "192.0.2.4")])).await;
    assert!(
        matches!(&refused, Err(PdmError::Remote { status: 409, code, .. }) if code == "stale_epoch"),
        "{refused:?}"
    );
    assert_eq!(h.dns.a(name).await?, ["192.0.2.5"]);
    assert_eq!(h.snapshot("fence.test.").await?, before);

    h.restart_pdm().await?;
    let refused = h.client.commit(&commit("fence.test", 4, vec![static_a(name, "192.0.2.4")])).await;
    assert!(matches!(&refused, Err(PdmError::Remote { status: 409, .. })), "{refused:?}");
    assert_eq!(h.dns.a(name).await?, ["192.0.2.5"]);
    assert_eq!(h.snapshot("fence.test.").await?, before);
    let record = h.client.records("fence.test", name).await?;
    assert_eq!(record.epoch, Some(5));

    // Fencing is per name: a stale epoch that also touches a fresh name is refused as a whole.
    let mixed = h
        .client
        .commit(&commit("fence.test", 4, vec![static_a("new.fence.test", "192.0.2.9"), static_a(name, "192.0.2.4")]))
        .await;
    assert!(matches!(&mixed, Err(PdmError::Remote { status: 409, .. })), "{mixed:?}");
    assert_eq!(h.dns.a("new.fence.test").await?, Vec::<String>::new());

    // The same epoch may retry (an unknown outcome), a higher one moves on.
    h.client.commit(&commit("fence.test", 5, vec![static_a(name, "192.0.2.5")])).await?;
    let response = h.client.commit(&commit("fence.test", 6, vec![static_a(name, "192.0.2.6")])).await?;
    assert_eq!(response.answers[0].records, ["192.0.2.6"]);
    assert_eq!(h.dns.a(name).await?, ["192.0.2.6"]);
    Ok(())
}

#[tokio::test]
async fn concurrent_commits_leave_the_highest_epoch_in_place() -> anyhow::Result<()> {
    let h = Arc::new(Harness::start().await?);
    h.create_zone("race.test").await?;
    let name = "app.race.test.";
    let mut tasks = Vec::new();
    for epoch in 1..=12u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let address = format!("192.0.2.{epoch}");
            h.client.commit(&commit("race.test", epoch, vec![static_a(name, &address)])).await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => accepted += 1,
            Err(PdmError::Remote { status: 409, .. }) => {}
            Err(e) => anyhow::bail!("unexpected error: {e}"),
        }
    }
    assert!(accepted >= 1);
    // Whatever the interleaving, a lower epoch never overwrites a higher one.
    assert_eq!(h.dns.a(name).await?, ["192.0.2.12"]);
    assert_eq!(h.client.records("race.test", name).await?.epoch, Some(12));
    Ok(())
}

#[tokio::test]
async fn commit_replaces_the_whole_name_and_refuses_names_it_does_not_own() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.create_zone("own.test").await?;
    h.write_behind_pdm("own.test.", "legacy.own.test.", "A", "198.51.100.1").await?;
    let before = h.snapshot("own.test.").await?;
    let refused = h.client.commit(&commit("own.test", 1, vec![static_a("legacy.own.test", "192.0.2.1")])).await;
    assert!(
        matches!(&refused, Err(PdmError::Remote { status: 409, code, .. }) if code == "name_not_owned"),
        "{refused:?}"
    );
    assert_eq!(h.snapshot("own.test.").await?, before);

    // A static A replaced by a LUA body: the old rrset must go, or PowerDNS would merge both.
    h.client.commit(&commit("own.test", 1, vec![static_a("app.own.test", "198.51.100.7")])).await?;
    let lua = LuaSpec::All { addresses: vec!["192.0.2.7".into(), "192.0.2.8".into()] };
    let response = h.client.commit(&commit("own.test", 2, vec![lua_record("app.own.test", lua.clone())])).await?;
    assert!(response.prewarmed.is_empty() && response.flipped.is_empty(), "all() has no health checks");
    assert_eq!(response.answers[0].records, ["192.0.2.7", "192.0.2.8"]);
    wait_for("DNS answers the LUA body only", Duration::from_secs(2), || async {
        Ok((h.dns.a("app.own.test").await? == ["192.0.2.7", "192.0.2.8"]).then_some(()))
    })
    .await?;
    let record = h.client.records("own.test", "app.own.test").await?;
    assert_eq!(record.rrsets.keys().collect::<Vec<_>>(), ["LUA"]);
    assert_eq!(record.lua.len(), 1);
    assert_eq!(record.lua[0].lua, lua);
    Ok(())
}

#[tokio::test]
async fn every_supported_function_evaluates_on_powerdns_without_servfail() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.create_zone("fn.test").await?;
    let (a, _b) = port_pair().await?;
    let health = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let pair = vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()];
    // 40 addresses: longer than one 255-byte character-string, so this one is chunked.
    let many: Vec<String> = (1..=40).map(|i| format!("198.51.100.{i}")).collect();
    let fast = CheckOptions { timeout: Some(1), ..Default::default() };
    let specs = vec![
        ("pickclosest", LuaSpec::Pickclosest { addresses: pair.clone() }, pair.clone()),
        ("pickrandom", LuaSpec::Pickrandom { addresses: pair.clone() }, pair.clone()),
        ("chunked", LuaSpec::Pickrandom { addresses: many.clone() }, many.clone()),
        (
            "pickwhashed",
            LuaSpec::Pickwhashed {
                addresses: vec![
                    pdm::WeightedAddress { weight: 1, address: "192.0.2.1".into() },
                    pdm::WeightedAddress { weight: 3, address: "192.0.2.2".into() },
                ],
            },
            pair.clone(),
        ),
        ("all", LuaSpec::All { addresses: pair.clone() }, pair.clone()),
        (
            "ifportup",
            LuaSpec::Ifportup { port: a.addr.port(), addresses: vec!["127.0.0.1".into()], options: fast.clone() },
            vec!["127.0.0.1".into()],
        ),
        (
            "ifurlup",
            LuaSpec::Ifurlup {
                url: health.url(),
                tiers: vec![vec!["127.0.0.1".into()], vec!["127.0.0.2".into()]],
                options: CheckOptions {
                    stringmatch: Some("OK".into()),
                    useragent: Some("pdm-test".into()),
                    ..fast.clone()
                },
            },
            vec!["127.0.0.1".into()],
        ),
        (
            "ifurlextup",
            LuaSpec::Ifurlextup {
                tiers: vec![vec![UrlTarget { address: "192.0.2.1".into(), url: health.url() }]],
                options: CheckOptions { backup_selector: Some(pdm::Selector::All), ..fast },
            },
            vec!["192.0.2.1".into()],
        ),
    ];
    let records = specs.iter().map(|(label, spec, _)| lua_record(&format!("{label}.fn.test"), spec.clone())).collect();
    let response = h.client.commit(&commit("fn.test", 1, records)).await?;
    for (label, _, allowed) in &specs {
        let name = format!("{label}.fn.test.");
        let answer = response.answers.iter().find(|a| a.name == name).expect("an answer per record");
        assert_eq!(answer.error, None, "{label}");
        assert!(!answer.records.is_empty(), "{label}: empty answer");
        for record in &answer.records {
            assert!(allowed.contains(record), "{label}: {record} is not one of {allowed:?}");
        }
        let live = h.dns.a(&name).await?;
        assert!(!live.is_empty() && live.iter().all(|r| allowed.contains(r)), "{label}: {live:?}");
    }
    let all = response.answers.iter().find(|a| a.name == "all.fn.test.").expect("all");
    assert_eq!(all.records, pair);
    Ok(())
}

#[tokio::test]
async fn new_targets_are_prewarmed_so_the_answer_never_strays_to_the_backup() -> anyhow::Result<()> {
    const PRIMARY: &str = "192.0.2.1";
    let h = Arc::new(Harness::start().await?);
    h.create_zone("warm.test").await?;
    let old_a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let old_b = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let name = "db.warm.test.";
    h.client
        .commit(&commit(
            "warm.test",
            1,
            vec![lua_record(name, two_region_spec((PRIMARY, &old_a), ("192.0.2.2", &old_b)))],
        ))
        .await?;
    assert_eq!(h.dns.a(name).await?, [PRIMARY]);

    // New health URLs mean new checks, which PowerDNS 4.7 treats as down until its next round
    // and answers with a random pick meanwhile. PDM must warm them before they go live.
    let new_a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let new_b = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(h.dns.a(name).await.map_err(|e| e.to_string()));
            }
            seen
        })
    };
    let response = h
        .client
        .commit(&commit(
            "warm.test",
            2,
            vec![lua_record(name, two_region_spec((PRIMARY, &new_a), ("192.0.2.2", &new_b)))],
        ))
        .await?;
    assert_eq!(response.prewarmed, vec![name.to_string()]);
    for _ in 0..50 {
        assert_eq!(h.dns.a(name).await?, [PRIMARY]);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = looper.await?;
    assert!(seen.len() > 20, "only {} queries ran", seen.len());
    for answer in seen {
        assert_eq!(answer.map_err(|e| anyhow::anyhow!(e))?, [PRIMARY]);
    }
    // The scratch name is gone once the body is live.
    let zone = h.snapshot("warm.test.").await?;
    assert!(!zone.to_string().contains("_pdm-warm"), "scratch name left behind");
    Ok(())
}

#[tokio::test]
async fn idle_lua_names_are_kept_warm_so_health_checks_never_expire() -> anyhow::Result<()> {
    const PRIMARY: &str = "192.0.2.1";
    // PowerDNS forgets checks nobody asked about for 2 s; PDM asks every 300 ms.
    let h = Harness::start_with(common::Options {
        keep_warm_interval: "300ms",
        pdns_settings: vec![("lua-health-checks-expire-delay", "2")],
        ..Default::default()
    })
    .await?;
    h.create_zone("idle.test").await?;
    let a = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let b = HealthTarget::start("127.0.0.1:0".parse()?).await?;
    let name = "db.idle.test.";
    h.client
        .commit(&commit("idle.test", 1, vec![lua_record(name, two_region_spec((PRIMARY, &a), ("192.0.2.2", &b)))]))
        .await?;
    // The scenario is time passing without client queries: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Expired checks would start cold: random answers until the next round.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut queries = 0;
    while Instant::now() < deadline {
        assert_eq!(h.dns.a(name).await?, [PRIMARY], "after {queries} queries");
        queries += 1;
    }
    Ok(())
}

#[tokio::test]
async fn a_damaged_epoch_record_blocks_commits_instead_of_dropping_the_fence() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.create_zone("damaged.test").await?;
    h.client.commit(&commit("damaged.test", 9, vec![static_a("app.damaged.test", "192.0.2.9")])).await?;
    h.put_metadata_behind_pdm("damaged.test.", pdm::fence::EPOCH_KIND, &["nine app.damaged.test."]).await?;
    let before = h.snapshot("damaged.test.").await?;
    let refused = h.client.commit(&commit("damaged.test", 1, vec![static_a("app.damaged.test", "192.0.2.1")])).await;
    assert!(
        matches!(&refused, Err(PdmError::Remote { status: 502, code, .. }) if code == "powerdns_data"),
        "{refused:?}"
    );
    assert_eq!(h.snapshot("damaged.test.").await?, before);
    assert_eq!(h.dns.a("app.damaged.test").await?, ["192.0.2.9"]);
    Ok(())
}
