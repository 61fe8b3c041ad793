//! DNS always converges to the holder: while this region holds the lease with a running primary
//! and no switchover is in flight (its `dns` step owns the record then), a task reads the pair's
//! record back from PDM every `pdm.reconcile_interval` and commits it with the lease epoch when
//! it differs — after a failover or bootstrap whose commit failed (PDM down with the lost
//! region), or an edit behind PDM's back. A failing PDM is retried with capped exponential
//! backoff; state changes (not each attempt) go to the audit log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cnpg_pair::Observed;
use tokio_util::sync::CancellationToken;

use super::dns::record_spec;
use super::pair::PairCtl;
use crate::api::DnsStatus;
use crate::backoff::Backoff;
use crate::{Error, error_chain, record};

/// Whether PDM's copy of the record is what this holder commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Comparison {
    InSync,
    /// Differs: what is wrong, for the log and the audit line.
    Differs(String),
}

/// Pure: PDM's record for the name against the spec this holder commits with `epoch`.
pub(super) fn compare(spec: &pdm::RecordSpec, epoch: u64, found: &pdm::RecordsResponse) -> Comparison {
    if found.epoch != Some(epoch) {
        return Comparison::Differs(format!("PDM's epoch is {:?}, the lease's {epoch}", found.epoch));
    }
    let content_ok = match (&spec.lua, &spec.content) {
        (Some(lua), _) => found.lua.iter().any(|r| r.rtype == spec.rtype && &r.lua == lua),
        (None, Some(content)) => found.rrsets.get(&spec.rtype).is_some_and(|set| set.records == [content.clone()]),
        (None, None) => false,
    };
    if content_ok { Comparison::InSync } else { Comparison::Differs("the record's content differs".to_string()) }
}

/// What PDM holds for the name: the addresses of a plain record, the body of a LUA one.
fn answer_of(spec: &pdm::RecordSpec, found: &pdm::RecordsResponse) -> Vec<String> {
    let rtype = if spec.lua.is_some() { "LUA" } else { spec.rtype.as_str() };
    found.rrsets.get(rtype).map(|set| set.records.clone()).unwrap_or_default()
}

fn now_ms() -> Option<u64> {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

impl PairCtl {
    /// The epoch to reconcile DNS under, if this region should own the record right now.
    fn dns_owner_epoch(&self) -> Option<u64> {
        let seen = self.seen.lock().expect("seen poisoned");
        let record = seen.record.as_ref()?;
        let in_flight = record::stored(record).ok().flatten().is_some_and(|s| !s.state.is_finished());
        let primary = matches!(seen.local, Some(Observed::Primary(_)));
        (record.holder.as_deref() == Some(self.region.as_str()) && primary && !in_flight && seen.halted.is_none())
            .then_some(record.epoch)
    }

    /// Runs until `stop`: checks when due, commits when the record differs.
    pub(super) async fn dns_reconcile_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.pdm.retry_pause, self.pdm.reconcile_max_backoff);
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            let Some(epoch) = self.dns_owner_epoch() else {
                if self.dns_status.lock().expect("dns status poisoned").take().is_some() {
                    self.metrics.clear_dns_in_sync(self.name());
                }
                // Not the owner: look again soon, so a new holder reconciles without delay.
                pause = self.tick.max(Duration::from_millis(200));
                continue;
            };
            pause = match self.reconcile_dns_once(epoch).await {
                Ok(()) => {
                    backoff.reset();
                    self.pdm.reconcile_interval
                }
                Err(error) => {
                    let message = error_chain(&error);
                    tracing::warn!(pair = %self.name(), epoch, error = %message, "DNS reconcile");
                    let first = backoff.failures() == 0;
                    {
                        let mut status = self.dns_status.lock().expect("dns status poisoned");
                        let status = status.get_or_insert_with(|| DnsStatus {
                            answer: Vec::new(),
                            epoch: None,
                            in_sync: false,
                            checked_at_ms: None,
                            error: None,
                        });
                        status.error = Some(message.clone());
                        status.in_sync = false;
                    }
                    self.metrics.set_dns_in_sync(self.name(), false);
                    if first {
                        self.audit("dns.reconcile_failing", Some(epoch), serde_json::json!({ "error": message })).await;
                    }
                    backoff.failed()
                }
            };
        }
    }

    /// One read-back, and a commit when PDM's record differs.
    async fn reconcile_dns_once(&self, epoch: u64) -> Result<(), Error> {
        let spec = record_spec(&self.cfg.dns, &self.pdm.zone, &self.region, self.name())?;
        let read_error = |source| Error::PdmRead { name: spec.name.clone(), source };
        let found = self.pdm.client.records(&self.pdm.zone, &spec.name).await.map_err(read_error)?;
        let comparison = compare(&spec, epoch, &found);
        let mut answer = answer_of(&spec, &found);
        if let Comparison::Differs(why) = &comparison {
            tracing::warn!(pair = %self.name(), epoch, why, "DNS record differs from the holder's: committing");
            let was_failing =
                self.dns_status.lock().expect("dns status poisoned").as_ref().is_some_and(|s| s.error.is_some());
            self.commit_dns(epoch).await?;
            self.metrics.count_dns_reconcile_commit(self.name());
            self.audit("dns.reconciled", Some(epoch), serde_json::json!({ "why": why, "after_errors": was_failing }))
                .await;
            let after = self.pdm.client.records(&self.pdm.zone, &spec.name).await.ok();
            answer = after.as_ref().map(|f| answer_of(&spec, f)).unwrap_or_default();
        }
        *self.dns_status.lock().expect("dns status poisoned") =
            Some(DnsStatus { answer, epoch: Some(epoch), in_sync: true, checked_at_ms: now_ms(), error: None });
        self.metrics.set_dns_in_sync(self.name(), true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn plain(address: &str) -> pdm::RecordSpec {
        pdm::RecordSpec {
            name: "db.example.org".into(),
            rtype: "A".into(),
            ttl: 5,
            content: Some(address.into()),
            lua: None,
        }
    }

    fn found(epoch: Option<u64>, records: &[&str]) -> pdm::RecordsResponse {
        let set = pdm::RRSetView { ttl: 5, records: records.iter().map(|r| r.to_string()).collect() };
        pdm::RecordsResponse {
            zone: "example.org".into(),
            name: "db.example.org".into(),
            epoch,
            rrsets: BTreeMap::from([("A".to_string(), set)]),
            lua: Vec::new(),
        }
    }

    #[test]
    fn in_sync_needs_this_epoch_and_this_content() {
        let spec = plain("10.0.0.2");
        assert_eq!(compare(&spec, 7, &found(Some(7), &["10.0.0.2"])), Comparison::InSync);
        for (what, f) in [
            ("older epoch (the failover's commit failed)", found(Some(3), &["10.0.0.1"])),
            ("never committed", found(None, &[])),
            ("same epoch, other content", found(Some(7), &["10.0.0.1"])),
            ("extra address", found(Some(7), &["10.0.0.1", "10.0.0.2"])),
        ] {
            assert!(matches!(compare(&spec, 7, &f), Comparison::Differs(_)), "{what}");
        }
    }
}
