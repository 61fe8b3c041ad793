//! Status projection: what the control loop last saw, as the API's [`PairStatus`].

use cnpg_pair::{Observed, SyncState};
use lease::LeaseHandle;

use super::pair::PairCtl;
use crate::api::{LeaseHealth, LeaseState, PairStatus, PgRole, RegionStatus};
use crate::config::Durability;
use crate::record;

pub(super) fn role_of(observed: Option<&Observed>) -> PgRole {
    match observed {
        Some(Observed::Primary(_)) => PgRole::Primary,
        Some(Observed::Standby(_)) => PgRole::Standby,
        Some(Observed::Unreachable { .. }) => PgRole::Down,
        None => PgRole::Unknown,
    }
}

pub(super) fn sync_name(state: SyncState) -> String {
    format!("{state:?}").to_lowercase()
}

impl PairCtl {
    pub(super) async fn status(&self) -> PairStatus {
        let handle_remaining = self
            .holder
            .lock()
            .await
            .as_ref()
            .and_then(LeaseHandle::deadline)
            .map(|d| d.saturating_duration_since(lease::boot_clock().now()));
        let seen = self.seen.lock().expect("seen poisoned");
        let record = seen.record.clone().unwrap_or_default();
        let lease_state = if seen.record_error.is_some() || seen.record.is_none() {
            LeaseState::Unknown
        } else if record.holder.is_some() && seen.seq_changed.is_some_and(|(_, at)| at.elapsed() < record.duration()) {
            LeaseState::Held
        } else {
            LeaseState::Expired
        };
        let primary_obs =
            [seen.local.as_ref(), seen.peer.as_ref()].into_iter().flatten().find_map(|o| o.as_primary()).cloned();
        let region_status = |region: &str, observed: Option<&Observed>| {
            let row = primary_obs.as_ref().and_then(|p| p.replica(region));
            let role = role_of(observed);
            let lag_bytes = match (row, &primary_obs) {
                (Some(r), Some(p)) => r.replay_lsn.map(|l| p.position.lsn.bytes_after(l)),
                _ => None,
            };
            let lag_seconds = row.and_then(|r| r.replay_lag.map(|d| d.as_secs_f64())).or(match lag_bytes {
                Some(0) => Some(0.0),
                _ => None,
            });
            let blockers = if record.holder.as_deref() == Some(region) {
                vec![format!("{region} holds the lease")]
            } else {
                region_blockers(region, observed, primary_obs.as_ref())
            };
            RegionStatus {
                region: region.to_string(),
                role,
                lag_bytes,
                lag_seconds,
                sync_state: row.and_then(|r| r.sync_state).map(sync_name),
                eligible: blockers.is_empty(),
                ineligible_reason: (!blockers.is_empty()).then(|| blockers.join("; ")),
            }
        };
        let regions =
            vec![region_status(&self.region, seen.local.as_ref()), region_status(&self.peer, seen.peer.as_ref())];
        let writes_blocked = match &primary_obs {
            None => Some("no primary is running".to_string()),
            Some(p)
                if self.cfg.durability == Durability::Required
                    && p.replica(if record.holder.as_deref() == Some(&self.region) {
                        &self.peer
                    } else {
                        &self.region
                    })
                    .is_none_or(|r| r.sync_state != Some(SyncState::Sync)) =>
            {
                Some("durability required: commits wait until the synchronous standby is back".to_string())
            }
            _ => None,
        };
        let in_flight = record::stored(&record).ok().flatten().filter(|s| !s.state.is_finished()).map(|s| s.id);
        let attention =
            seen.halted.clone().map(|e| format!("control loop stopped: {e}")).or(seen.switchover_error.clone());
        let last_switchover = seen.history.iter().max_by_key(|r| r.requested_at).cloned();
        PairStatus {
            name: self.name().to_string(),
            holder: record.holder.clone(),
            epoch: record.epoch,
            lease: LeaseHealth {
                state: lease_state,
                remaining_ms: handle_remaining.map(|d| d.as_millis() as u64),
                duration_ms: if record.duration_ms > 0 {
                    record.duration_ms
                } else {
                    self.handle_cfg.duration.as_millis() as u64
                },
            },
            durability: self.cfg.durability,
            takeover: self.cfg.takeover,
            auto_failover: self.cfg.auto_failover,
            sync_standby: record.sync_standby.clone(),
            regions,
            writes_blocked,
            in_flight,
            attention,
            last_switchover,
            dns: self.dns_status.lock().expect("dns status poisoned").clone(),
        }
    }
}

/// Why a planned switchover may not target `region` now (empty: it may).
fn region_blockers(
    region: &str,
    observed: Option<&Observed>,
    primary: Option<&cnpg_pair::PrimaryObservation>,
) -> Vec<String> {
    let mut out = Vec::new();
    match observed {
        Some(Observed::Standby(s)) if s.streaming => {}
        Some(Observed::Standby(_)) => out.push("not streaming".to_string()),
        Some(Observed::Primary(_)) => out.push("is a primary".to_string()),
        Some(Observed::Unreachable { error, .. }) => out.push(format!("unreachable: {error}")),
        None => out.push("not observed yet".to_string()),
    }
    match primary.and_then(|p| p.replica(region)) {
        Some(row) if row.sync_state == Some(SyncState::Sync) => {}
        Some(_) => out.push("not synchronous".to_string()),
        None if out.is_empty() => out.push("not listed by the primary".to_string()),
        None => {}
    }
    out
}
