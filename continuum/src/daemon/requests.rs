//! API request handling: the [`api::Orchestrator`] the HTTP API calls. A planned switchover
//! starts here: `POST /v1/switchover` checks the blockers and stores a new switchover record
//! with compare-and-set; both regions' control loops then act on it ([`super::pair`]).

use async_trait::async_trait;
use cnpg_pair::{Observed, SyncState};
use lease::{LeaseError, LeaseRecord};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::Daemon;
use super::pair::PairCtl;
use super::status::sync_name;
use crate::api::{self, Event, Plan, PlannedStep, Precondition, SwitchoverRecord};
use crate::auth::Caller;
use crate::config::Durability;
use crate::record::{self, Step};
use crate::{Error, switchover};

#[async_trait]
impl api::Orchestrator for Daemon {
    async fn status(&self) -> Result<api::Status, Error> {
        let mut pairs = Vec::new();
        for ctl in self.pairs.values() {
            pairs.push(ctl.status().await);
        }
        Ok(api::Status { region: self.region.clone(), pairs })
    }

    async fn plan(&self, request: &api::PlanRequest) -> Result<Plan, Error> {
        let ctl = self.pair(request.pair.as_deref())?;
        ctl.plan(&request.to).await
    }

    async fn start_switchover(&self, request: &api::SwitchoverRequest, caller: &Caller) -> Result<Uuid, Error> {
        let ctl = self.pair(request.pair.as_deref())?;
        ctl.start_switchover(&request.to, &request.reason, &caller.name).await
    }

    async fn history(&self) -> Result<Vec<SwitchoverRecord>, Error> {
        let mut all: Vec<SwitchoverRecord> = Vec::new();
        for ctl in self.pairs.values() {
            all.extend(ctl.seen.lock().expect("seen poisoned").history.iter().cloned());
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.requested_at));
        Ok(all)
    }

    async fn switchover(&self, id: Uuid) -> Result<SwitchoverRecord, Error> {
        for ctl in self.pairs.values() {
            if let Some(record) = ctl.seen.lock().expect("seen poisoned").history.iter().find(|r| r.id == id) {
                return Ok(record.clone());
            }
        }
        Err(Error::NotFound { what: format!("switchover {id}") })
    }

    async fn abort_switchover(&self, id: Uuid, caller: &Caller) -> Result<SwitchoverRecord, Error> {
        for ctl in self.pairs.values() {
            if let Some(record) = ctl.abort(id, &caller.name).await? {
                return Ok(record);
            }
        }
        // Not in flight anywhere: finished (409) or unknown (404).
        let known = self.switchover(id).await?;
        Err(Error::Conflict { reason: format!("switchover {id} already finished ({})", known.state.as_str()) })
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl PairCtl {
    pub(super) async fn start_switchover(&self, to: &str, reason: &str, caller: &str) -> Result<Uuid, Error> {
        let record = self
            .lease
            .read(self.name())
            .await
            .map_err(|source| Error::Lease { op: "read", source })?
            .unwrap_or_default();
        let blockers = self.blockers(&record, to);
        if let Some(refused) = refusal(&record, to, to == self.region || to == self.peer, &blockers) {
            return Err(refused);
        }
        let from = record.holder.clone().expect("blockers checked a holder");
        let sw = switchover::new_record(self.name(), &from, to, reason, caller, record.epoch);
        let id = sw.id;
        let value = serde_json::to_value(&sw).map_err(|e| Error::Internal { message: e.to_string() })?;
        self.lease.cas_switchover(self.name(), record.epoch, record.switchover_version, Some(value)).await.map_err(
            |e| match e {
                LeaseError::Refused { .. } => Error::Conflict { reason: "the lease record changed; try again".into() },
                source => Error::Lease { op: "store switchover intent", source },
            },
        )?;
        self.audit(
            "switchover.requested",
            Some(record.epoch),
            serde_json::json!({ "switchover": id, "from": from, "to": to, "reason": reason, "by": caller }),
        )
        .await;
        let mut seen = self.seen.lock().expect("seen poisoned");
        self.note_switchover(&mut seen, &sw);
        Ok(id)
    }

    /// Why a planned switchover to `to` cannot start now (empty: it may).
    fn blockers(&self, record: &LeaseRecord, to: &str) -> Vec<String> {
        let mut out = Vec::new();
        if to != self.region && to != self.peer {
            out.push(format!("unknown region {to:?} (data regions: {}, {})", self.region, self.peer));
            return out;
        }
        match record::stored(record) {
            Ok(Some(sw)) if !sw.state.is_finished() => {
                out.push(format!("a switchover is in flight: {} ({} → {})", sw.id, sw.from, sw.to));
            }
            Ok(_) => {}
            Err(reason) => out.push(reason),
        }
        match record.holder.as_deref() {
            None => out.push("nobody holds the lease".into()),
            Some(h) if h == to => out.push(format!("{to} already holds the lease")),
            Some(_) => {}
        }
        let seen = self.seen.lock().expect("seen poisoned");
        let (target, primary) = if to == self.region {
            (seen.local.clone(), seen.peer.clone())
        } else {
            (seen.peer.clone(), seen.local.clone())
        };
        match target {
            Some(Observed::Standby(s)) if s.streaming => {}
            Some(Observed::Standby(_)) => out.push(format!("{to} is a standby but not streaming")),
            Some(Observed::Primary(_)) => out.push(format!("{to} is a primary, not a standby")),
            Some(Observed::Unreachable { error, .. }) => out.push(format!("{to} is unreachable: {error}")),
            None => out.push(format!("{to} not observed yet")),
        }
        match primary.as_ref().and_then(Observed::as_primary) {
            Some(p) => match p.replica(to) {
                Some(row) if row.sync_state == Some(SyncState::Sync) => {}
                Some(row) => out.push(format!(
                    "{to} is not a synchronous standby (sync_state {})",
                    row.sync_state.map_or("unknown".to_string(), sync_name)
                )),
                None => out.push(format!("the primary does not list {to} in pg_stat_replication")),
            },
            None => out.push("the primary could not be observed".into()),
        }
        out
    }

    pub(super) async fn plan(&self, to: &str) -> Result<Plan, Error> {
        let record = self
            .lease
            .read(self.name())
            .await
            .map_err(|source| Error::Lease { op: "read", source })?
            .unwrap_or_default();
        let blockers = self.blockers(&record, to);
        if to != self.region && to != self.peer {
            return Err(Error::BadRequest { message: blockers.join("; ") });
        }
        let from = record.holder.clone().unwrap_or_default();
        let pre = |check: &str, met: bool, detail: Option<String>| Precondition { check: check.into(), met, detail };
        let target_ok = !blockers.iter().any(|b| b.starts_with(to));
        let steps = Step::ALL
            .into_iter()
            .map(|step| {
                let region = switchover::performer(step, &from, to).to_string();
                let (action, preconditions, skipped) = match step {
                    Step::Intent => (
                        "write the switchover intent to the lease store (compare-and-set)",
                        vec![
                            pre(
                                "no switchover in flight",
                                !blockers.iter().any(|b| b.starts_with("a switchover")),
                                None,
                            ),
                            pre(&format!("{from} holds the lease"), !from.is_empty() && from != to, None),
                        ],
                        None,
                    ),
                    Step::Fence => ("CHECKPOINT and fast shutdown of the old primary", vec![], None),
                    Step::Drain => match &self.cfg.traffic {
                        Some(_) => (
                            "drain HTTP traffic: the HTTPRoute's weight for the old region to 0 over the drain window",
                            vec![],
                            None,
                        ),
                        None => (
                            "drain HTTP traffic",
                            vec![],
                            Some("no HTTPRoute configured (pairs[].traffic)".to_string()),
                        ),
                    },
                    Step::CatchUp => (
                        "wait until the target replayed the shutdown checkpoint",
                        vec![pre(&format!("{to} streams as synchronous standby"), target_ok, None)],
                        None,
                    ),
                    Step::MoveLease => {
                        ("release the lease (after the fence); the target is granted a new, higher epoch", vec![], None)
                    }
                    Step::Promote => (
                        if self.cfg.durability == Durability::Preferred {
                            "drop synchronous replication (store first), then promote with the new epoch"
                        } else {
                            "promote with the new epoch (durability required: writes wait for the old primary)"
                        },
                        vec![],
                        None,
                    ),
                    Step::Dns => ("commit the DNS record through PDM with the new epoch", vec![], None),
                    Step::Rejoin => {
                        ("the old primary rejoins as standby (follow, else pg_rewind, else re-clone)", vec![], None)
                    }
                    Step::RestoreSync => (
                        "make the old primary the synchronous standby again (the lease store records it)",
                        vec![],
                        None,
                    ),
                };
                PlannedStep { step, region, action: action.to_string(), preconditions, skipped }
            })
            .collect();
        Ok(Plan { pair: self.name().to_string(), from, to: to.to_string(), epoch: record.epoch, steps, blockers })
    }
}

/// How `POST /v1/switchover` refuses, given the blockers (none: it may start). An unreadable
/// stored record is a conflict like a switchover in flight: it may be one.
fn refusal(record: &LeaseRecord, to: &str, known_region: bool, blockers: &[String]) -> Option<Error> {
    let first = blockers.first()?.clone();
    if !known_region {
        return Some(Error::BadRequest { message: first });
    }
    if let Err(reason) = record::stored(record) {
        return Some(Error::Conflict { reason });
    }
    if blockers.iter().any(|b| b.starts_with("a switchover is in flight")) {
        return Some(Error::Conflict { reason: first });
    }
    Some(Error::Ineligible { region: to.to_string(), reason: blockers.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_stored_record_refuses_a_new_switchover_as_a_conflict() {
        let mut record = LeaseRecord { pair: "app".into(), holder: Some("a".into()), epoch: 9, ..Default::default() };
        assert!(refusal(&record, "b", true, &[]).is_none(), "no blockers: it may start");
        record.switchover = Some(serde_json::json!({ "id": 12, "state": "from a newer version" }));
        let blockers = vec![record::stored(&record).unwrap_err()];
        match refusal(&record, "b", true, &blockers) {
            Some(Error::Conflict { reason }) => assert!(reason.contains("does not decode"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(refusal(&record, "x", false, &["unknown region".into()]), Some(Error::BadRequest { .. })));
    }
}
