//! The configuration as the lease crate's types: the holder's handle timing and the embedded
//! lease node. Depends on `lease` only, so every user of the file (daemon, witness, validation)
//! derives the same values.

use std::time::Duration;

use super::{Config, LeaseConfig};
use crate::Error;

/// Longest deadline of one renewal call, whatever the renew interval.
const MAX_RENEW_CALL: Duration = Duration::from_millis(1500);

impl LeaseConfig {
    /// How long before its deadline the holder fences: a fifth of the duration.
    pub fn fence_lead(&self) -> Duration {
        self.duration / 5
    }

    /// How long the holder's fence may take before the postmaster is killed: `fence_timeout`,
    /// else half the fence lead, so the server is down before the lease can be granted again.
    pub fn effective_fence_timeout(&self) -> Duration {
        self.fence_timeout.unwrap_or(self.fence_lead() / 2)
    }

    /// The holder-side timing of a lease: the renew call gets at most the renew interval (and
    /// 1.5 s), and `FenceNow` fires [`LeaseConfig::fence_lead`] before the deadline.
    pub fn handle_config(&self) -> lease::HandleConfig {
        lease::HandleConfig {
            duration: self.duration,
            renew_interval: self.renew_interval,
            drift_margin: self.drift_margin,
            fence_lead: self.fence_lead(),
            call_timeout: self.renew_interval.min(MAX_RENEW_CALL),
        }
    }
}

impl Config {
    /// The lease node configuration of this daemon (data region or witness).
    pub fn lease_node_config(&self) -> lease::NodeConfig {
        let raft = &self.raft;
        let mut timings = lease::RaftTimings::wan();
        timings.heartbeat_interval = raft.heartbeat_interval;
        timings.election_timeout_min = raft.election_timeout_min;
        timings.election_timeout_max = raft.election_timeout_max;
        lease::NodeConfig {
            id: raft.node_id,
            listen: raft.listen,
            data_dir: raft.data_dir.clone(),
            tls: lease::TlsFiles { ca: self.tls.ca.clone(), cert: self.tls.cert.clone(), key: self.tls.key.clone() },
            raft: timings,
            lease: lease::GrantRules { grant_margin: self.lease.grant_margin, call_timeout: self.lease.call_timeout },
            members: raft
                .peers
                .iter()
                .map(|p| lease::Member {
                    id: p.id,
                    region: p.region.clone(),
                    addr: p.address.clone(),
                    witness: p.witness,
                })
                .collect(),
            dial_overrides: raft.peers.iter().filter_map(|p| Some((p.id, p.dial.clone()?))).collect(),
            pairs: self.pairs.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

/// A lease node that cannot start: its configuration errors name the file's keys.
pub fn lease_start_error(error: lease::LeaseError) -> Error {
    match error {
        lease::LeaseError::Config { key, message } => Error::Config { key: format!("raft/tls: {key}"), message },
        lease::LeaseError::Tls(message) => Error::Config { key: "tls".into(), message },
        source => Error::Lease { op: "start", source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_test_lease_timings_make_a_valid_handle() {
        assert!(LeaseConfig::default().handle_config().validate().is_ok());
        let fast = LeaseConfig {
            renew_interval: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            drift_margin: Duration::from_millis(200),
            ..LeaseConfig::default()
        };
        assert!(fast.handle_config().validate().is_ok());
        assert!(fast.effective_fence_timeout() < fast.fence_lead());
    }
}
