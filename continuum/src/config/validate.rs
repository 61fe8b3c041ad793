//! Cross-field validation of [`Config`]: the rules no single key can state. The first
//! violation wins; its key is dotted (`lease.renew_interval`, `pairs[0].observe_interval`).

use std::collections::HashSet;
use std::time::Duration;

use super::{Config, LeaseConfig, PairConfig, Role, Takeover, invalid};
use crate::Error;
use crate::failpoint::Failpoint;

impl Config {
    /// Cross-field rules. The first violation wins; its key is dotted (`lease.renew_interval`).
    pub fn validate(&self) -> Result<(), Error> {
        let lease = &self.lease;
        if self.region.trim().is_empty() {
            return Err(invalid("region", "must not be empty"));
        }
        if lease.duration.is_zero() {
            return Err(invalid("lease.duration", "must be greater than zero"));
        }
        if lease.drift_margin >= lease.duration {
            return Err(invalid("lease.drift_margin", "must be shorter than lease.duration"));
        }
        if lease.renew_interval.is_zero() || lease.renew_interval >= lease.duration - lease.drift_margin {
            return Err(invalid(
                "lease.renew_interval",
                format!(
                    "must be greater than zero and shorter than lease.duration minus lease.drift_margin ({})",
                    humantime::format_duration(lease.duration - lease.drift_margin)
                ),
            ));
        }
        if lease.call_timeout.is_zero() {
            return Err(invalid("lease.call_timeout", "must be greater than zero"));
        }
        if let Some(timeout) = lease.fence_timeout
            && (timeout.is_zero() || timeout >= lease.fence_lead())
        {
            return Err(invalid(
                "lease.fence_timeout",
                format!(
                    "must be greater than zero and below the fence lead, lease.duration / 5 ({}): the fence must \
                     be over before another region may be granted the lease",
                    humantime::format_duration(lease.fence_lead())
                ),
            ));
        }
        let handle = lease.handle_config();
        if handle.validate().is_err() {
            return Err(invalid(
                "lease.duration",
                format!(
                    "must exceed drift_margin + renew_interval + duration/5 (fence lead) + {} (renew call deadline)",
                    humantime::format_duration(handle.call_timeout)
                ),
            ));
        }
        self.validate_raft()?;
        self.validate_role_sections()?;
        for (i, pair) in self.pairs.iter().enumerate() {
            validate_pair(i, pair, lease, &self.region)?;
        }
        if let Some(duplicate) = first_duplicate(self.pairs.iter().map(|p| p.name.as_str())) {
            return Err(invalid("pairs", format!("pair name {duplicate:?} appears twice")));
        }
        for (i, name) in self.failpoints.iter().enumerate() {
            name.parse::<Failpoint>().map_err(|message| invalid(format!("failpoints[{i}]"), message))?;
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), Error> {
        let raft = &self.raft;
        if raft.heartbeat_interval.is_zero() || raft.heartbeat_interval >= raft.election_timeout_min {
            return Err(invalid(
                "raft.heartbeat_interval",
                "must be greater than zero and below raft.election_timeout_min",
            ));
        }
        if raft.election_timeout_min > raft.election_timeout_max {
            return Err(invalid("raft.election_timeout_max", "must not be below raft.election_timeout_min"));
        }
        // A leader change must fit inside one lease, or the holder fences across an election:
        // it can take twice `election_timeout_max` (openraft's voters refuse votes for
        // `election_timeout_max` after the last heartbeat, then a candidate's timer must fire).
        let lease = &self.lease;
        let across = raft.election_timeout_max * 2 + lease.renew_interval + lease.fence_lead() + lease.drift_margin;
        if across >= lease.duration {
            return Err(invalid(
                "raft.election_timeout_max",
                format!(
                    "2 × election_timeout_max + lease.renew_interval + fence lead (duration/5) + drift_margin = {} \
                     must be shorter than lease.duration ({}): the holder could not renew across a leader change",
                    humantime::format_duration(across),
                    humantime::format_duration(lease.duration)
                ),
            ));
        }
        for (i, peer) in raft.peers.iter().enumerate() {
            if peer.region.trim().is_empty() {
                return Err(invalid(format!("raft.peers[{i}].region"), "must not be empty"));
            }
            if peer.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(invalid(format!("raft.peers[{i}].address"), "must be host:port"));
            }
            if let Some(dial) = &peer.dial
                && dial.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none()
            {
                return Err(invalid(format!("raft.peers[{i}].dial"), "must be host:port"));
            }
        }
        if let Some(id) = first_duplicate(raft.peers.iter().map(|p| p.id)) {
            return Err(invalid("raft.peers", format!("id {id} appears twice")));
        }
        if let Some(region) = first_duplicate(raft.peers.iter().map(|p| p.region.as_str())) {
            return Err(invalid("raft.peers", format!("region {region:?} appears twice")));
        }
        if raft.peers.len() < 3 {
            return Err(invalid("raft.peers", "needs at least 3 voters (two data regions and a witness)"));
        }
        if raft.peers.len().is_multiple_of(2) {
            return Err(invalid("raft.peers", "needs an odd number of voters: an even one adds no fault tolerance"));
        }
        if raft.peers.iter().filter(|p| !p.witness).count() < 2 {
            return Err(invalid("raft.peers", "needs at least two data regions (witness = false)"));
        }
        let Some(me) = raft.peers.iter().find(|p| p.id == raft.node_id) else {
            return Err(invalid("raft.node_id", format!("no entry with id {} in raft.peers", raft.node_id)));
        };
        if me.region != self.region {
            return Err(invalid(
                "raft.node_id",
                format!("its raft.peers entry has region {:?}, but region is {:?}", me.region, self.region),
            ));
        }
        if me.witness != (self.role == Role::Witness) {
            return Err(invalid("raft.node_id", "its raft.peers entry's witness flag must match role"));
        }
        Ok(())
    }

    fn validate_role_sections(&self) -> Result<(), Error> {
        match self.role {
            Role::Witness => {
                if !self.pairs.is_empty() {
                    return Err(invalid("pairs", "a witness runs no PostgreSQL: remove its pairs"));
                }
                if self.pdm.is_some() {
                    return Err(invalid("pdm", "a witness commits no DNS: remove the pdm section"));
                }
            }
            Role::Data => {
                if self.pairs.is_empty() {
                    return Err(invalid("pairs", "a data daemon protects at least one pair"));
                }
                let Some(pdm) = &self.pdm else { return Err(invalid("pdm", "required for role data")) };
                if !(pdm.url.starts_with("http://") || pdm.url.starts_with("https://")) {
                    return Err(invalid("pdm.url", "must start with http:// or https://"));
                }
                if pdm.zone.trim().is_empty() {
                    return Err(invalid("pdm.zone", "must not be empty"));
                }
                if pdm.timeout.is_zero() {
                    return Err(invalid("pdm.timeout", "must be greater than zero"));
                }
                if pdm.commit_attempts == 0 {
                    return Err(invalid("pdm.commit_attempts", "must be at least 1"));
                }
                if self.api.is_none() {
                    return Err(invalid("api", "required for role data"));
                }
                if self.audit.is_none() {
                    return Err(invalid("audit", "required for role data"));
                }
            }
        }
        if let Some(api) = &self.api
            && api.tls_cert.is_some() != api.tls_key.is_some()
        {
            let missing = if api.tls_cert.is_none() { "api.tls_cert" } else { "api.tls_key" };
            return Err(invalid(missing, "api.tls_cert and api.tls_key go together"));
        }
        if let Some(audit) = &self.audit {
            if let Some(url) = &audit.nats_url
                && !(url.starts_with("nats://") || url.starts_with("tls://"))
            {
                return Err(invalid("audit.nats_url", "must start with nats:// or tls://"));
            }
            if audit.nats_subject.trim().is_empty() {
                return Err(invalid("audit.nats_subject", "must not be empty"));
            }
            if audit.nats_timeout.is_zero() {
                return Err(invalid("audit.nats_timeout", "must be greater than zero"));
            }
        }
        Ok(())
    }
}

fn validate_pair(i: usize, pair: &PairConfig, lease: &LeaseConfig, region: &str) -> Result<(), Error> {
    let key = |field: &str| format!("pairs[{i}].{field}");
    if pair.name.trim().is_empty() {
        return Err(invalid(key("name"), "must not be empty"));
    }
    if let Some(interval) = pair.observe_interval {
        // Longer than a renew interval and a failover waits rounds on top of the lease expiry.
        if interval < MIN_OBSERVE_INTERVAL || interval > lease.renew_interval {
            return Err(invalid(
                key("observe_interval"),
                format!(
                    "must be between {} and lease.renew_interval ({})",
                    humantime::format_duration(MIN_OBSERVE_INTERVAL),
                    humantime::format_duration(lease.renew_interval)
                ),
            ));
        }
    }
    let suspect = pair.effective_suspect_window(lease);
    let checked = pair.takeover == Takeover::SyncFenced || pair.suspect_window.is_some();
    if checked && (suspect <= lease.renew_interval || suspect >= lease.duration) {
        // Within one renew interval a healthy holder is silent anyway; a lease duration or more
        // is no faster than lease expiry.
        return Err(invalid(
            key("suspect_window"),
            format!(
                "must be above lease.renew_interval ({}) and below lease.duration ({})",
                humantime::format_duration(lease.renew_interval),
                humantime::format_duration(lease.duration)
            ),
        ));
    }
    let wal_timeout = pair.effective_wal_stream_timeout(lease);
    if wal_timeout < MIN_WAL_STREAM_TIMEOUT {
        return Err(invalid(
            key("wal_stream_timeout"),
            format!("must be at least {}", humantime::format_duration(MIN_WAL_STREAM_TIMEOUT)),
        ));
    }
    if pair.max_lag_seconds.is_zero() {
        return Err(invalid(key("max_lag_seconds"), "must be greater than zero"));
    }
    if pair.primary_down_timeout < Duration::from_secs(1) {
        return Err(invalid(
            key("primary_down_timeout"),
            "must be at least 1s: a crashed server needs a moment to restart before the region gives up",
        ));
    }
    if pair.effective_step_timeout(lease) < lease.duration * 2 {
        // A region counts as gone after a lease of silence; a shorter deadline would act on a
        // live region's routine pause.
        return Err(invalid(
            key("step_timeout"),
            format!("must be at least twice lease.duration ({})", humantime::format_duration(lease.duration * 2)),
        ));
    }
    if pair.step_retry_max < pair.step_retry_initial {
        return Err(invalid(key("step_retry_max"), "must be at least step_retry_initial"));
    }
    let positive = [
        ("step_retry_initial", pair.step_retry_initial),
        ("shutdown_timeout", pair.shutdown_timeout),
        ("catch_up_timeout", pair.catch_up_timeout),
        ("sync_wait_timeout", pair.sync_wait_timeout),
        ("peer_connect_timeout", pair.peer_connect_timeout),
        ("peer_observe_timeout", pair.peer_observe_timeout),
        ("postgres.stop_timeout", pair.postgres.stop_timeout),
        ("postgres.start_timeout", pair.postgres.start_timeout),
    ];
    if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
        return Err(invalid(key(name), "must be greater than zero"));
    }
    if pair.dns.record.trim().is_empty() {
        return Err(invalid(key("dns.record"), "must not be empty"));
    }
    if pair.postgres.port == 0 {
        return Err(invalid(key("postgres.port"), "must not be 0"));
    }
    if pair.postgres.superuser.trim().is_empty() {
        return Err(invalid(key("postgres.superuser"), "must not be empty"));
    }
    if let Err((field, why)) = pair.postgres.auth().check() {
        return Err(invalid(key(&format!("postgres.{field}")), why));
    }
    super::driver::validate_driver(i, pair, region)?;
    for (j, peer) in pair.peers.iter().enumerate() {
        if peer.port == 0 || peer.region.trim().is_empty() {
            return Err(invalid(key(&format!("peers[{j}]")), "needs a region and a non-zero port"));
        }
    }
    if !pair.dns.lua.is_empty() {
        let value = serde_json::to_value(&pair.dns.lua).map_err(|e| invalid(key("dns.lua"), e.to_string()))?;
        serde_json::from_value::<pdm::LuaSpec>(value).map_err(|e| invalid(key("dns.lua"), e.to_string()))?;
    }
    if let Some(traffic) = &pair.traffic {
        if traffic.namespace.trim().is_empty() || traffic.http_route.trim().is_empty() {
            return Err(invalid(key("traffic"), "needs a namespace and an http_route"));
        }
        // Both ends of every switchover need a backend: the drained one and the restored one.
        let mut regions: Vec<&str> = pair.peers.iter().map(|p| p.region.as_str()).collect();
        regions.push(region);
        if let Some(missing) = regions.iter().find(|r| !traffic.backends.contains_key(**r)) {
            return Err(invalid(key("traffic.backends"), format!("has no backendRef for region {missing}")));
        }
    }
    Ok(())
}

/// Below this a round's own work (two observations, a linearizable read) dominates.
const MIN_OBSERVE_INTERVAL: Duration = Duration::from_millis(50);
/// PostgreSQL's WAL receiver pings at half its timeout: below this the pings are the traffic.
const MIN_WAL_STREAM_TIMEOUT: Duration = Duration::from_millis(200);

fn first_duplicate<T: std::hash::Hash + Eq + Copy>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut seen = HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

/// The dotted key of the line holding byte `offset` of a TOML document: the last table header
/// before it plus the line's own key. Good enough to point at the culprit in an error message.
pub(super) fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let own = line.split_once('=').map(|(k, _)| k.trim().to_string());
    match (table, own) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(file)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_at_points_at_table_and_key() {
        let text = "region = \"a\"\n[lease]\nrenew_interval = \"2x\"\n";
        let offset = text.find("\"2x\"").unwrap();
        assert_eq!(key_at(text, offset), "lease.renew_interval");
        assert_eq!(key_at(text, 2), "region");
    }

    fn region_a(observe_interval: Option<&str>) -> Result<Config, Error> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/region-a.toml");
        let mut doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
        let pair = doc["pairs"].as_array_mut().unwrap()[0].as_table_mut().unwrap();
        pair.remove("observe_interval");
        if let Some(value) = observe_interval {
            pair.insert("observe_interval".into(), value.into());
        }
        Config::parse(&toml::to_string(&doc).unwrap())
    }

    #[test]
    fn observe_interval_defaults_to_half_the_renew_interval_within_bounds() {
        let config = region_a(None).unwrap();
        let interval = |renew_ms: u64| {
            let lease = LeaseConfig { renew_interval: Duration::from_millis(renew_ms), ..LeaseConfig::default() };
            config.pairs[0].effective_observe_interval(&lease)
        };
        assert_eq!(interval(2000), Duration::from_secs(1));
        assert_eq!(interval(300), Duration::from_millis(150));
        assert_eq!(interval(100), Duration::from_millis(100));
        assert_eq!(interval(5000), Duration::from_secs(1));
        let set = region_a(Some("700ms")).unwrap();
        assert_eq!(set.pairs[0].effective_observe_interval(&set.lease), Duration::from_millis(700));
    }

    #[test]
    fn observe_interval_out_of_range_names_the_key() {
        for bad in ["10ms", "1h", "0s"] {
            match region_a(Some(bad)) {
                Err(Error::Config { key, .. }) => assert_eq!(key, "pairs[0].observe_interval", "{bad}"),
                other => panic!("{bad}: {:?}", other.map(|_| ())),
            }
        }
        assert!(region_a(Some("1x")).is_err());
    }

    #[test]
    fn the_fence_timeout_defaults_below_the_fence_lead_and_a_longer_one_is_refused() {
        let mut config = region_a(None).unwrap();
        config.lease = LeaseConfig {
            renew_interval: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            drift_margin: Duration::from_millis(200),
            ..LeaseConfig::default()
        };
        config.raft.heartbeat_interval = Duration::from_millis(100);
        config.raft.election_timeout_min = Duration::from_millis(300);
        config.raft.election_timeout_max = Duration::from_millis(500);
        config.validate().unwrap();
        assert_eq!(config.lease.fence_lead(), Duration::from_millis(400));
        assert_eq!(config.lease.effective_fence_timeout(), Duration::from_millis(200));
        for bad in [Duration::from_millis(400), Duration::from_secs(6), Duration::ZERO] {
            config.lease.fence_timeout = Some(bad);
            match config.validate() {
                Err(Error::Config { key, .. }) => assert_eq!(key, "lease.fence_timeout", "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        config.lease.fence_timeout = Some(Duration::from_millis(300));
        config.validate().unwrap();
    }

    #[test]
    fn the_holder_must_be_able_to_renew_across_a_leader_change() {
        let mut config = region_a(None).unwrap();
        // The shipped defaults pass: 2 × 1.6 s + 1 s + 2 s + 0.5 s < 10 s.
        config.validate().unwrap();
        // Elections of up to 2 × 4 s do not fit between a renewal and the fence lead of a 10 s lease.
        config.raft.election_timeout_min = Duration::from_secs(2);
        config.raft.election_timeout_max = Duration::from_secs(4);
        match config.validate() {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "raft.election_timeout_max");
                assert!(message.contains("leader change"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_deadlines_are_refused_by_name() {
        let mut config = region_a(None).unwrap();
        config.pairs[0].catch_up_timeout = Duration::ZERO;
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pairs[0].catch_up_timeout"));
        let mut config = region_a(None).unwrap();
        config.pairs[0].postgres.stop_timeout = Duration::ZERO;
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pairs[0].postgres.stop_timeout"));
        let mut config = region_a(None).unwrap();
        config.pdm.as_mut().unwrap().commit_attempts = 0;
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pdm.commit_attempts"));
    }

    #[test]
    fn step_deadline_and_retry_pauses_are_checked() {
        let mut config = region_a(None).unwrap();
        let lease = config.lease.duration;
        assert_eq!(config.pairs[0].effective_step_timeout(&config.lease), config.pairs[0].catch_up_timeout + lease * 3);
        config.pairs[0].step_timeout = Some(lease);
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pairs[0].step_timeout"));
        config.pairs[0].step_timeout = Some(lease * 2);
        config.validate().unwrap();
        config.pairs[0].step_retry_max = config.pairs[0].step_retry_initial / 2;
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pairs[0].step_retry_max"));
        config.pairs[0].step_retry_initial = Duration::ZERO;
        config.pairs[0].step_retry_max = Duration::from_secs(1);
        assert!(matches!(config.validate(), Err(Error::Config { key, .. }) if key == "pairs[0].step_retry_initial"));
    }
}
