//! PDM's HTTP surface: authentication, bad input, zone lifecycle and delegation.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Harness, TOKEN, raw};
use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use pdm::{CommitRequest, CreateZoneRequest, DelegationRequest, Nameserver, PdmError, RecordSpec};
use reqwest::Method;

/// (what, method, URL, bearer token, body, expected status)
type Case<'a> = (&'a str, Method, String, Option<&'a str>, Option<String>, u16);

#[tokio::test]
async fn every_malformed_request_gets_a_4xx_and_changes_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    h.create_zone("bad.test").await?;
    let good = CommitRequest {
        zone: "bad.test".into(),
        epoch: 3,
        records: vec![RecordSpec {
            name: "app.bad.test".into(),
            rtype: "A".into(),
            ttl: 30,
            content: Some("192.0.2.3".into()),
            lua: None,
        }],
    };
    h.client.commit(&good).await?;
    let before = h.snapshot("bad.test.").await?;
    let zones_before = h.client.zones().await?;

    let commit = format!("{}/v1/commit", h.url);
    let rec = |fields: &str| format!(r#"{{"zone":"bad.test","epoch":4,"records":[{fields}]}}"#);
    let good_record = r#"{"name":"app.bad.test","type":"A","ttl":30,"content":"192.0.2.4"}"#;
    let cases: Vec<Case> = vec![
        ("no token", Method::POST, commit.clone(), None, Some(rec(good_record)), 401),
        ("wrong token", Method::POST, commit.clone(), Some("wrong-token-0123456789"), Some(rec(good_record)), 401),
        ("token prefix", Method::POST, commit.clone(), Some(&TOKEN[..10]), Some(rec(good_record)), 401),
        ("not JSON", Method::POST, commit.clone(), Some(TOKEN), Some("{zone".into()), 400),
        ("missing epoch", Method::POST, commit.clone(), Some(TOKEN), Some(r#"{"zone":"bad.test","records":[]}"#.into()), 400),
        ("negative epoch", Method::POST, commit.clone(), Some(TOKEN), Some(r#"{"zone":"bad.test","epoch":-1,"records":[]}"#.into()), 400),
        ("unknown field", Method::POST, commit.clone(), Some(TOKEN), Some(r#"{"zone":"bad.test","epoch":4,"records":[],"force":true}"#.into()), 400),
        ("no records", Method::POST, commit.clone(), Some(TOKEN), Some(rec("")), 400),
        ("unknown zone", Method::POST, commit.clone(), Some(TOKEN), Some(good_record_in("nope.test")), 404),
        ("malformed zone", Method::POST, commit.clone(), Some(TOKEN), Some(good_record_in("bad..test")), 400),
        ("name outside zone", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.other.test","type":"A","ttl":30,"content":"192.0.2.4"}"#)), 400),
        ("malformed name", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"a pp.bad.test","type":"A","ttl":30,"content":"192.0.2.4"}"#)), 400),
        ("bad address", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"content":"192.0.2.400"}"#)), 400),
        ("unsupported type", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"MX","ttl":30,"content":"10 mx.bad.test."}"#)), 400),
        ("ttl 0", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":0,"content":"192.0.2.4"}"#)), 400),
        ("content and lua", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"content":"192.0.2.4","lua":{"function":"all","addresses":["192.0.2.4"]}}"#)), 400),
        ("empty LUA address list", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"pickrandom","addresses":[]}}"#)), 422),
        ("LUA address of the wrong family", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"all","addresses":["2001:db8::1"]}}"#)), 422),
        ("LUA tiers for ifportup", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"ifportup","port":80,"tiers":[["192.0.2.1"]]}}"#)), 400),
        ("LUA injection in a URL", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"ifurlup","url":"http://h/') os.exit() --","tiers":[["192.0.2.1"]]}}"#)), 422),
        ("LUA 5.0-only option", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"ifportup","port":80,"addresses":["192.0.2.1"],"options":{"minimumFailures":2}}}"#)), 400),
        ("LUA for a TXT record", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"TXT","ttl":30,"lua":{"function":"all","addresses":["192.0.2.1"]}}"#)), 422),
        ("unknown LUA function", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"app.bad.test","type":"A","ttl":30,"lua":{"function":"os.execute","addresses":["192.0.2.1"]}}"#)), 400),
        ("one good record, one bad", Method::POST, commit.clone(), Some(TOKEN), Some(rec(&format!(r#"{good_record},{{"name":"x.bad.test","type":"A","ttl":30,"content":"nope"}}"#))), 400),
        ("stale epoch", Method::POST, commit.clone(), Some(TOKEN), Some(r#"{"zone":"bad.test","epoch":2,"records":[{"name":"app.bad.test","type":"A","ttl":30,"content":"192.0.2.2"}]}"#.into()), 409),
        ("CNAME beside A", Method::POST, commit.clone(), Some(TOKEN), Some(rec(&format!(r#"{good_record},{{"name":"app.bad.test","type":"CNAME","ttl":30,"content":"x.bad.test"}}"#))), 400),
        ("scratch name", Method::POST, commit.clone(), Some(TOKEN), Some(rec(r#"{"name":"_pdm-warm-1.bad.test","type":"A","ttl":30,"content":"192.0.2.4"}"#)), 400),
        ("zone create without token", Method::POST, format!("{}/v1/zones", h.url), None, Some(r#"{"name":"new.test"}"#.into()), 401),
        ("zone create, bad name", Method::POST, format!("{}/v1/zones", h.url), Some(TOKEN), Some(r#"{"name":"new..test"}"#.into()), 400),
        ("zone create, in-zone NS without glue", Method::POST, format!("{}/v1/zones", h.url), Some(TOKEN), Some(r#"{"name":"new.test","nameservers":[{"name":"ns1.new.test"}]}"#.into()), 400),
        ("zone create, existing zone", Method::POST, format!("{}/v1/zones", h.url), Some(TOKEN), Some(r#"{"name":"bad.test"}"#.into()), 409),
        ("zone delete without token", Method::DELETE, format!("{}/v1/zones/bad.test.", h.url), None, None, 401),
        ("zone delete, force without reason", Method::DELETE, format!("{}/v1/zones/bad.test.?force=true", h.url), Some(TOKEN), None, 400),
        ("zone delete, bad parameter", Method::DELETE, format!("{}/v1/zones/bad.test.?force=maybe", h.url), Some(TOKEN), None, 400),
        ("zone delete, unknown zone", Method::DELETE, format!("{}/v1/zones/nope.test.", h.url), Some(TOKEN), None, 404),
        ("zone list without token", Method::GET, format!("{}/v1/zones", h.url), None, None, 401),
        ("delegation outside the parent", Method::PUT, format!("{}/v1/zones/bad.test/delegations/child.other.test", h.url), Some(TOKEN), Some(r#"{"nameservers":[{"name":"ns.example.net"}]}"#.into()), 400),
        ("delegation without nameservers", Method::PUT, format!("{}/v1/zones/bad.test/delegations/child.bad.test", h.url), Some(TOKEN), Some(r#"{"nameservers":[]}"#.into()), 400),
        ("delegation over a committed name", Method::PUT, format!("{}/v1/zones/bad.test/delegations/app.bad.test", h.url), Some(TOKEN), Some(r#"{"nameservers":[{"name":"ns.example.net"}]}"#.into()), 409),
        ("delegation without token", Method::PUT, format!("{}/v1/zones/bad.test/delegations/child.bad.test", h.url), None, Some(r#"{"nameservers":[{"name":"ns.example.net"}]}"#.into()), 401),
        ("records outside the zone", Method::GET, format!("{}/v1/records/bad.test/app.other.test", h.url), Some(TOKEN), None, 400),
        ("records without token", Method::GET, format!("{}/v1/records/bad.test/app.bad.test", h.url), None, None, 401),
        ("unknown route", Method::GET, format!("{}/v1/nothing", h.url), Some(TOKEN), None, 404),
    ];
    for (what, method, url, token, body, expected) in cases {
        let (status, answer) = raw(method, &url, token, body.as_deref()).await?;
        assert_eq!(status, expected, "{what}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty() && answer["code"].is_string(), "{what}: no JSON error: {answer}");
    }
    assert_eq!(h.snapshot("bad.test.").await?, before, "a refused request changed the zone");
    assert_eq!(h.client.zones().await?, zones_before);
    assert_eq!(h.dns.a("app.bad.test").await?, ["192.0.2.3"]);
    assert_eq!(h.dns.a("x.bad.test").await?, Vec::<String>::new());
    Ok(())
}

fn good_record_in(zone: &str) -> String {
    format!(
        r#"{{"zone":"{zone}","epoch":4,"records":[{{"name":"app.{zone}","type":"A","ttl":30,"content":"192.0.2.4"}}]}}"#
    )
}

#[tokio::test]
async fn health_route_needs_no_token_and_reports_powerdns() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (status, body) = raw(Method::GET, &format!("{}/healthz", h.url), None, None).await?;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    Ok(())
}

#[tokio::test]
async fn zone_lifecycle_guards_records_pdm_does_not_own() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let created = h.client.create_zone(&CreateZoneRequest { name: "Life.Test".into(), nameservers: vec![] }).await?;
    assert_eq!(created.name, "life.test.");
    let names: Vec<String> = h.client.zones().await?.zones.into_iter().map(|z| z.name).collect();
    assert!(names.contains(&"life.test.".to_string()), "{names:?}");
    let probe = testkit::DnsProbe::new(h.pdns.dns_addr)?;
    assert_eq!(
        probe.query("life.test", RecordType::NS).await?,
        testkit::DnsAnswer::Records(vec!["ns1.pdm-test.invalid.".into(), "ns2.pdm-test.invalid.".into()])
    );

    // Records PDM committed are its own: a zone holding only those deletes without force.
    let commit = CommitRequest {
        zone: "life.test".into(),
        epoch: 1,
        records: vec![RecordSpec {
            name: "app.life.test".into(),
            rtype: "A".into(),
            ttl: 30,
            content: Some("192.0.2.1".into()),
            lua: None,
        }],
    };
    h.client.commit(&commit).await?;
    h.write_behind_pdm("life.test.", "hand-made.life.test.", "TXT", "\"keep me\"").await?;
    let refused = h.client.delete_zone("life.test", None).await;
    assert!(
        matches!(&refused, Err(PdmError::Remote { status: 409, message, .. }) if message.contains("hand-made.life.test.")),
        "{refused:?}"
    );
    assert_eq!(h.dns.a("app.life.test").await?, ["192.0.2.1"]);
    h.client.delete_zone("life.test", Some("decommissioning the test region")).await?;
    let names: Vec<String> = h.client.zones().await?.zones.into_iter().map(|z| z.name).collect();
    assert!(!names.contains(&"life.test.".to_string()), "{names:?}");

    h.create_zone("clean.test").await?;
    let commit = CommitRequest {
        zone: "clean.test".into(),
        epoch: 1,
        records: vec![RecordSpec {
            name: "app.clean.test".into(),
            rtype: "A".into(),
            ttl: 30,
            content: Some("192.0.2.1".into()),
            lua: None,
        }],
    };
    h.client.commit(&commit).await?;
    h.client.delete_zone("clean.test.", None).await?;
    let gone = h.client.records("clean.test", "app.clean.test").await;
    assert!(matches!(&gone, Err(PdmError::Remote { status: 404, .. })), "{gone:?}");
    Ok(())
}

/// Asks `server` without recursion, returning the whole response.
async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> anyhow::Result<Message> {
    let mut query = Message::query();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(Name::from_ascii(name)?, rtype));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&query.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await??;
    Ok(Message::from_vec(&buf[..len])?)
}

#[tokio::test]
async fn delegated_child_answers_through_the_parents_ns_records() -> anyhow::Result<()> {
    // The parent and the child live on separate PowerDNS servers, so an answer for the child
    // can only be found by following the parent's referral.
    let parent = Harness::start().await?;
    let child = Harness::start().await?;
    parent
        .client
        .create_zone(&CreateZoneRequest {
            name: "parent.test".into(),
            nameservers: vec![Nameserver { name: "ns1.parent.test".into(), addresses: vec!["127.0.0.1".parse()?] }],
        })
        .await?;
    let child_ns = vec![Nameserver { name: "ns1.app.parent.test".into(), addresses: vec!["127.0.0.1".parse()?] }];
    child
        .client
        .create_zone(&CreateZoneRequest { name: "app.parent.test".into(), nameservers: child_ns.clone() })
        .await?;
    child
        .client
        .commit(&CommitRequest {
            zone: "app.parent.test".into(),
            epoch: 1,
            records: vec![RecordSpec {
                name: "www.app.parent.test".into(),
                rtype: "A".into(),
                ttl: 30,
                content: Some("192.0.2.80".into()),
                lua: None,
            }],
        })
        .await?;
    let delegation = parent
        .client
        .delegate("parent.test", "app.parent.test", &DelegationRequest { nameservers: child_ns, ttl: 300 })
        .await?;
    assert_eq!(delegation.nameservers, ["ns1.app.parent.test."]);

    // 1. The parent refers: no answer, NS in authority, glue in additional.
    let referral = ask(parent.pdns.dns_addr, "www.app.parent.test.", RecordType::A).await?;
    assert!(referral.answers.is_empty(), "{referral:?}");
    let ns: Vec<String> = referral
        .authorities
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(ns) => Some(ns.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ns, ["ns1.app.parent.test."]);
    let glue: Vec<String> = referral
        .additionals
        .iter()
        .filter(|r| r.name.to_string() == "ns1.app.parent.test.")
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(glue, ["127.0.0.1"]);

    // 2. Following the glue (the test servers share 127.0.0.1, so the port tells them apart)
    // reaches the child, which answers authoritatively.
    let child_server = SocketAddr::new(glue[0].parse()?, child.pdns.dns_addr.port());
    let answer = ask(child_server, "www.app.parent.test.", RecordType::A).await?;
    assert!(answer.metadata.authoritative, "{answer:?}");
    let addresses: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(addresses, ["192.0.2.80"]);

    // The delegation is PDM's own: the parent zone deletes without force.
    let records = parent.client.records("parent.test", "app.parent.test").await?;
    assert_eq!(records.rrsets["NS"].records, ["ns1.app.parent.test."]);
    parent.client.delete_zone("parent.test", None).await?;
    Ok(())
}
