//! The PowerDNS API client against a real server: every call it offers, and error text kept.

use std::time::Duration;

use pdm::PdmError;
use pdm::client::{NewZone, PowerDnsClient, RRSetChange, Record};
use testkit::PowerDns;

#[tokio::test]
async fn client_round_trip_keeps_powerdns_error_text() -> anyhow::Result<()> {
    testkit::install_crypto_provider();
    let pdns = PowerDns::start().await?;
    let client = PowerDnsClient::new(&pdns.api_url, &pdns.api_key, Duration::from_secs(5))?;
    let zone = "client.test.";
    client
        .create_zone(&NewZone {
            name: zone.into(),
            kind: "Native".into(),
            nameservers: vec!["ns1.example.net.".into()],
            rrsets: vec![],
            soa_edit_api: "DEFAULT".into(),
        })
        .await?;
    assert!(client.list_zones().await?.iter().any(|z| z.name == zone));
    let again = client
        .create_zone(&NewZone {
            name: zone.into(),
            kind: "Native".into(),
            nameservers: vec!["ns1.example.net.".into()],
            rrsets: vec![],
            soa_edit_api: "DEFAULT".into(),
        })
        .await;
    assert!(matches!(again, Err(PdmError::ZoneExists(_))), "{again:?}");

    let replace = |name: &str, content: &str| RRSetChange::Replace {
        name: name.into(),
        rtype: "A".into(),
        ttl: 60,
        records: vec![Record { content: content.into(), disabled: false }],
        comments: vec![],
    };
    client.patch_rrsets(zone, &[replace("www.client.test.", "192.0.2.1")]).await?;
    let live = client.zone(zone).await?;
    assert!(live.rrsets.iter().any(|r| r.name == "www.client.test." && r.records[0].content == "192.0.2.1"));

    // PowerDNS' own reason comes through.
    let out_of_zone = client.patch_rrsets(zone, &[replace("www.elsewhere.test.", "192.0.2.1")]).await;
    match out_of_zone {
        Err(PdmError::PowerDnsRejected { status: 422, message }) => {
            assert!(message.contains("out of zone"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    client.patch_rrsets(zone, &[RRSetChange::Delete { name: "www.client.test.".into(), rtype: "A".into() }]).await?;
    assert!(!client.zone(zone).await?.rrsets.iter().any(|r| r.name == "www.client.test."));

    assert!(client.get_metadata(zone, "X-PDM-TEST").await?.is_empty());
    client.put_metadata(zone, "X-PDM-TEST", &["one".into(), "two".into()]).await?;
    assert_eq!(client.get_metadata(zone, "X-PDM-TEST").await?, ["one", "two"]);
    let not_x = client.put_metadata(zone, "PDM-TEST", &["x".into()]).await;
    assert!(
        matches!(&not_x, Err(PdmError::PowerDnsRejected { message, .. }) if message.contains("Unsupported metadata kind")),
        "{not_x:?}"
    );
    client.flush_cache(zone).await?;

    let wrong_key = PowerDnsClient::new(&pdns.api_url, "wrong", Duration::from_secs(5))?;
    assert!(matches!(wrong_key.list_zones().await, Err(PdmError::PowerDnsRejected { status: 401, .. })));

    client.delete_zone(zone).await?;
    assert!(client.get_zone(zone).await?.is_none());
    assert!(matches!(client.delete_zone(zone).await, Err(PdmError::ZoneNotFound(_))));
    let nowhere =
        PowerDnsClient::new(&format!("http://127.0.0.1:{}", testkit::free_port()), "k", Duration::from_secs(2))?;
    assert!(matches!(nowhere.list_zones().await, Err(PdmError::PowerDnsUnavailable(_))));
    Ok(())
}
