//! The PowerDNS fixture serves records created through its HTTP API, and only to callers with
//! the key.

use serde_json::json;
use testkit::PowerDns;

#[tokio::test]
async fn powerdns_answers_a_record_created_through_its_api() -> anyhow::Result<()> {
    let pdns = PowerDns::start().await?;
    let http = reqwest::Client::new();
    let zones = format!("{}/api/v1/servers/localhost/zones", pdns.api_url);

    let created = http
        .post(&zones)
        .header("X-API-Key", &pdns.api_key)
        .json(&json!({
            "name": "kit.test.", "kind": "Native", "nameservers": ["ns1.kit.test."],
            "rrsets": [
                {"name": "ns1.kit.test.", "type": "A", "ttl": 60, "records": [{"content": "127.0.0.1", "disabled": false}]},
                {"name": "www.kit.test.", "type": "A", "ttl": 60, "records": [{"content": "192.0.2.7", "disabled": false}]},
            ]
        }))
        .send()
        .await?;
    assert_eq!(created.status(), 201, "{}", created.text().await?);

    let probe = testkit::DnsProbe::new(pdns.dns_addr)?;
    assert_eq!(probe.a("www.kit.test").await?, vec!["192.0.2.7"]);

    let patched = http
        .patch(format!("{zones}/kit.test."))
        .header("X-API-Key", &pdns.api_key)
        .json(&json!({"rrsets": [{"name": "lua.kit.test.", "type": "LUA", "ttl": 5, "changetype": "REPLACE",
            "records": [{"content": "A \"'192.0.2.9'\"", "disabled": false}]}]}))
        .send()
        .await?;
    assert_eq!(patched.status(), 204, "{}", patched.text().await?);
    assert_eq!(probe.a("lua.kit.test").await?, vec!["192.0.2.9"], "LUA records are enabled");

    let refused = http.get(&zones).header("X-API-Key", "wrong").send().await?;
    assert_eq!(refused.status(), 401);
    Ok(())
}
