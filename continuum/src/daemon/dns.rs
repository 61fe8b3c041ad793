//! DNS commits: the pair's record as PDM should serve it with this region holding the lease,
//! committed with the lease epoch as the fencing token (PDM refuses an older epoch).

use std::time::Instant;

use super::pair::PairCtl;
use crate::Error;
use crate::config::DnsConfig;

/// Whether PDM refused the epoch as older than one it already committed: retrying cannot help.
fn is_stale_epoch(error: &pdm::PdmError) -> bool {
    match error {
        pdm::PdmError::Remote { code, .. } => code == "stale_epoch",
        pdm::PdmError::StaleEpoch { .. } => true,
        _ => false,
    }
}

/// The record for `region` as holder: a plain A/AAAA record of its address, or the configured
/// LUA record with the tier holding its address moved first (a flip).
pub(super) fn record_spec(dns: &DnsConfig, zone: &str, region: &str, pair: &str) -> Result<pdm::RecordSpec, Error> {
    let name = if dns.record.ends_with('.') {
        dns.record.clone()
    } else {
        format!("{}.{}", dns.record, zone.trim_end_matches('.'))
    };
    let my_address = dns.addresses.get(region).cloned();
    if dns.lua.is_empty() {
        let Some(address) = my_address else {
            return Err(Error::Config {
                key: format!("pairs.{pair}.dns.addresses"),
                message: format!("no address for region {region}"),
            });
        };
        let rtype = if address.contains(':') { "AAAA" } else { "A" };
        return Ok(pdm::RecordSpec { name, rtype: rtype.into(), ttl: dns.ttl, content: Some(address), lua: None });
    }
    let value = serde_json::to_value(&dns.lua).map_err(|e| Error::Internal { message: e.to_string() })?;
    let mut spec: pdm::LuaSpec =
        serde_json::from_value(value).map_err(|e| Error::Internal { message: e.to_string() })?;
    if let Some(address) = &my_address {
        match &mut spec {
            pdm::LuaSpec::Ifurlup { tiers, .. } => {
                if let Some(i) = tiers.iter().position(|t| t.contains(address)) {
                    let tier = tiers.remove(i);
                    tiers.insert(0, tier);
                }
            }
            pdm::LuaSpec::Ifurlextup { tiers, .. } => {
                if let Some(i) = tiers.iter().position(|t| t.iter().any(|u| &u.address == address)) {
                    let tier = tiers.remove(i);
                    tiers.insert(0, tier);
                }
            }
            _ => {}
        }
    }
    Ok(pdm::RecordSpec { name, rtype: "A".into(), ttl: dns.ttl, content: None, lua: Some(spec) })
}

impl PairCtl {
    /// Commits the pair's DNS record with `epoch`, `pdm.commit_attempts` times at most; an
    /// unknown outcome is retried with the same epoch, a stale epoch is not retried.
    pub(super) async fn commit_dns(&self, epoch: u64) -> Result<(), Error> {
        let record = record_spec(&self.cfg.dns, &self.pdm.zone, &self.region, self.name())?;
        let request = pdm::CommitRequest { zone: self.pdm.zone.clone(), epoch, records: vec![record] };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let error = match self.pdm.client.commit(&request).await {
                Ok(response) => {
                    self.metrics.observe_pdm_commit("ok", started.elapsed());
                    tracing::info!(pair = %self.name(), epoch, answers = ?response.answers, "DNS committed");
                    return Ok(());
                }
                Err(error) => error,
            };
            self.metrics.observe_pdm_commit("error", started.elapsed());
            tracing::warn!(pair = %self.name(), epoch, attempt, "PDM commit: {error}");
            if is_stale_epoch(&error) || attempt >= self.pdm.attempts {
                return Err(Error::Pdm { epoch, source: error });
            }
            tokio::time::sleep(self.pdm.retry_pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_epoch_is_known_by_its_code_not_its_text() {
        let remote =
            |code: &str| pdm::PdmError::Remote { status: 409, code: code.into(), message: "stale_epoch".into() };
        assert!(is_stale_epoch(&remote("stale_epoch")));
        assert!(!is_stale_epoch(&remote("name_not_owned")));
        assert!(!is_stale_epoch(&pdm::PdmError::Transport("stale_epoch in a proxy page".into())));
    }

    #[test]
    fn a_plain_record_is_the_holders_address() {
        let dns = DnsConfig {
            record: "db".into(),
            lua: toml::Table::new(),
            addresses: [("a".to_string(), "10.0.0.1".to_string()), ("b".to_string(), "fd00::2".to_string())].into(),
            ttl: 5,
        };
        let a = record_spec(&dns, "example.org.", "a", "app").unwrap();
        assert_eq!(
            (a.name.as_str(), a.rtype.as_str(), a.content.as_deref()),
            ("db.example.org", "A", Some("10.0.0.1"))
        );
        assert_eq!(record_spec(&dns, "example.org", "b", "app").unwrap().rtype, "AAAA");
        assert!(matches!(record_spec(&dns, "example.org", "c", "app"), Err(Error::Config { .. })));
    }
}
