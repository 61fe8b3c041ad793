//! Replicated data: the raft type configuration, node metadata, commands and the lease records.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Cursor;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LeaseError;

openraft::declare_raft_types!(
    /// openraft type configuration of the lease store.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
);

/// Raft node id.
pub type NodeId = u64;

/// What the cluster knows about a member. Carried in the raft membership, so every node can dial
/// every other node and tell data regions from the witness.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Region name, e.g. `hz-fsn-rtz-prod`; the witness has its own site name.
    pub region: String,
    /// `host:port` of the node's mutual-TLS endpoint.
    pub addr: String,
    /// A witness votes but can never hold a lease.
    #[serde(default)]
    pub witness: bool,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}{}", self.region, self.addr, if self.witness { " (witness)" } else { "" })
    }
}

/// Largest switchover record, serialized, in bytes. With [`MAX_TOKEN_BYTES`] and 253-byte names
/// it bounds every log entry to ~17 KiB, so an AppendEntries request of at most
/// `RaftTimings::max_entries_per_append` entries stays far below the endpoint's body limit.
pub const MAX_SWITCHOVER_RECORD_BYTES: usize = 16 * 1024;
/// Largest demotion token, in bytes (a CNPG token is a few hundred).
pub const MAX_TOKEN_BYTES: usize = 4 * 1024;

/// How many grant/release events a record keeps.
pub const HISTORY_LEN: usize = 16;

/// One protected pair's replicated lease state (ARCHITECTURE §3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub pair: String,
    /// Region holding the lease, if any.
    pub holder: Option<String>,
    /// Fencing token: the raft log index of the entry that granted the current (or last) lease.
    pub epoch: u64,
    /// Lease duration the holder asked for, in milliseconds.
    pub duration_ms: u64,
    /// Bumped by every holder-side change (grant, renew, release, sync standby). An acquire is a
    /// compare-and-swap on `(epoch, seq)`, so any renewal applied after the candidate looked makes
    /// the acquire fail.
    pub seq: u64,
    /// The standby region that may be promoted by automatic failover (eligibility record, §4).
    pub sync_standby: Option<String>,
    /// Opaque switchover state owned by the daemon, compare-and-set by `switchover_version`.
    pub switchover: Option<serde_json::Value>,
    pub switchover_version: u64,
    /// CNPG demotion token of the current holder's cluster.
    pub demotion_token: Option<String>,
    /// Last grants/releases, oldest first, at most `HISTORY_LEN` (16).
    pub history: VecDeque<HistoryEvent>,
}

impl LeaseRecord {
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }

    fn empty(pair: &str) -> Self {
        LeaseRecord { pair: pair.to_string(), ..Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Log index of the entry that caused the event.
    pub index: u64,
    pub kind: HistoryKind,
    pub region: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Granted,
    Claimed,
    Released,
}

/// Why the store said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Another region holds a lease that may still be valid.
    HeldByOther,
    /// The record changed (renewal, grant or release) since the candidate observed it.
    ChangedSinceObserved,
    /// The caller is not the holder, or its epoch is not the current one.
    NotHolder,
    /// A sync-fenced claim by a region that is not the recorded synchronous standby.
    NotSyncStandby,
    /// Switchover compare-and-set with a stale version or epoch.
    VersionMismatch,
}

/// What a client asks the store for. Handled by the local node, which turns it into a [`Command`]
/// (acquire only after the observed-time rule allows it) and forwards it to the raft leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LeaseRequest {
    Acquire {
        pair: String,
        region: String,
        duration_ms: u64,
    },
    Renew {
        pair: String,
        region: String,
        epoch: u64,
    },
    Release {
        pair: String,
        region: String,
        epoch: u64,
    },
    SetSyncStandby {
        pair: String,
        region: String,
        epoch: u64,
        standby: Option<String>,
    },
    SetDemotionToken {
        pair: String,
        region: String,
        epoch: u64,
        token: Option<String>,
    },
    /// Compare-and-set of the switchover record; any region that knows the current epoch may write.
    CasSwitchover {
        pair: String,
        epoch: u64,
        expected_version: u64,
        record: Option<serde_json::Value>,
    },
    /// Sync-fenced takeover (ARCHITECTURE §5): `region` takes the lease from the holder of `epoch`
    /// without waiting for expiry, only if it is the recorded `sync_standby`. The caller is
    /// responsible for the suspect window and for checking that the WAL stream is gone.
    Claim {
        pair: String,
        region: String,
        epoch: u64,
        /// The record's `seq` the claimant saw when it judged the holder silent: any write of
        /// the holder since (a renewal) refuses the claim. `None`: not checked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

impl LeaseRequest {
    pub fn pair(&self) -> &str {
        match self {
            LeaseRequest::Acquire { pair, .. }
            | LeaseRequest::Renew { pair, .. }
            | LeaseRequest::Release { pair, .. }
            | LeaseRequest::SetSyncStandby { pair, .. }
            | LeaseRequest::SetDemotionToken { pair, .. }
            | LeaseRequest::CasSwitchover { pair, .. }
            | LeaseRequest::Claim { pair, .. } => pair,
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self {
            LeaseRequest::Acquire { .. } => "acquire",
            LeaseRequest::Renew { .. } => "renew",
            LeaseRequest::Release { .. } => "release",
            LeaseRequest::SetSyncStandby { .. } => "set_sync_standby",
            LeaseRequest::SetDemotionToken { .. } => "set_demotion_token",
            LeaseRequest::CasSwitchover { .. } => "cas_switchover",
            LeaseRequest::Claim { .. } => "claim",
        }
    }

    /// Rejects malformed requests before they reach the log.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let bad = |m: &str| Err(LeaseError::InvalidInput(m.to_string()));
        let name_ok = |s: &str| !s.is_empty() && s.len() <= 253 && !s.chars().any(char::is_control);
        if !name_ok(self.pair()) {
            return bad("pair must be a non-empty name of at most 253 printable characters");
        }
        match self {
            LeaseRequest::Acquire { region, duration_ms, .. } => {
                if !name_ok(region) {
                    return bad("region must be a non-empty printable name");
                }
                if *duration_ms == 0 || *duration_ms > 3_600_000 {
                    return bad("duration must be between 1 ms and 1 h");
                }
            }
            LeaseRequest::Renew { region, epoch, .. }
            | LeaseRequest::Release { region, epoch, .. }
            | LeaseRequest::SetSyncStandby { region, epoch, .. }
            | LeaseRequest::SetDemotionToken { region, epoch, .. }
            | LeaseRequest::Claim { region, epoch, .. } => {
                if !name_ok(region) {
                    return bad("region must be a non-empty printable name");
                }
                if *epoch == 0 {
                    return bad("epoch 0 is never granted");
                }
            }
            LeaseRequest::CasSwitchover { .. } => {}
        }
        match self {
            LeaseRequest::SetSyncStandby { standby: Some(standby), .. } if !name_ok(standby) => {
                return bad("standby must be a non-empty printable name");
            }
            LeaseRequest::SetDemotionToken { token: Some(token), .. } if token.len() > MAX_TOKEN_BYTES => {
                return Err(LeaseError::InvalidInput(format!(
                    "demotion token is {} bytes; at most {MAX_TOKEN_BYTES}",
                    token.len()
                )));
            }
            LeaseRequest::CasSwitchover { record: Some(record), .. } => {
                let size = serde_json::to_vec(record).map(|v| v.len()).unwrap_or(usize::MAX);
                if size > MAX_SWITCHOVER_RECORD_BYTES {
                    return Err(LeaseError::InvalidInput(format!(
                        "switchover record is {size} bytes; at most {MAX_SWITCHOVER_RECORD_BYTES}"
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A raft log entry's payload. Applying it is deterministic: no clocks, no I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Compare-and-swap grant: succeeds only if `(epoch, seq)` still equal what the proposer saw
    /// when it decided (on its own clock) that the holder's lease had run out.
    Acquire { pair: String, candidate: String, duration_ms: u64, expected_epoch: u64, expected_seq: u64 },
    /// Every other request, applied as is.
    Request(LeaseRequest),
}

/// The answer to one applied command: the record after it, and why it was refused, if it was
/// (a refused command changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub refused: Option<RefusalReason>,
    pub record: LeaseRecord,
}

impl CommandResult {
    pub fn into_result(self) -> Result<LeaseRecord, LeaseError> {
        match self.refused {
            None => Ok(self.record),
            Some(reason) => Err(LeaseError::Refused { reason, current: Box::new(self.record) }),
        }
    }
}

/// All pairs' lease records. This is the whole replicated state (besides membership).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseTable {
    pub pairs: BTreeMap<String, LeaseRecord>,
}

impl LeaseTable {
    /// Applies one committed command found at log `index`. Deterministic: the same log gives the
    /// same table and answers on every node.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        let pair = match cmd {
            Command::Acquire { pair, .. } => pair,
            Command::Request(r) => r.pair(),
        };
        let existed = self.pairs.contains_key(pair);
        let rec = self.pairs.entry(pair.to_string()).or_insert_with(|| LeaseRecord::empty(pair));
        let refused = apply_to(rec, index, cmd).err();
        let record = rec.clone();
        // A refused command changes nothing, not even by creating an empty record.
        if refused.is_some() && !existed {
            self.pairs.remove(pair);
        }
        CommandResult { refused, record }
    }
}

fn apply_to(rec: &mut LeaseRecord, index: u64, cmd: &Command) -> Result<(), RefusalReason> {
    {
        let is_holder =
            |rec: &LeaseRecord, region: &str, epoch: u64| rec.holder.as_deref() == Some(region) && rec.epoch == epoch;
        match cmd {
            Command::Acquire { candidate, duration_ms, expected_epoch, expected_seq, .. } => {
                if rec.holder.as_deref() == Some(candidate.as_str()) {
                    // Already ours (e.g. a retried acquire whose first answer was lost): a renewal.
                    rec.seq += 1;
                    return Ok(());
                }
                // A free lease (never held, or released by a holder that fenced first) protects
                // no one's validity: grant it whatever the candidate saw. Otherwise the holder
                // must not have changed anything since the candidate decided it had expired.
                if rec.holder.is_some() && (rec.epoch != *expected_epoch || rec.seq != *expected_seq) {
                    return Err(RefusalReason::ChangedSinceObserved);
                }
                grant(rec, index, candidate, *duration_ms, HistoryKind::Granted);
                Ok(())
            }
            Command::Request(req) => match req {
                LeaseRequest::Acquire { .. } => Err(RefusalReason::ChangedSinceObserved),
                LeaseRequest::Renew { region, epoch, .. } => {
                    if !is_holder(rec, region, *epoch) {
                        return Err(RefusalReason::NotHolder);
                    }
                    rec.seq += 1;
                    Ok(())
                }
                LeaseRequest::Release { region, epoch, .. } => {
                    if !is_holder(rec, region, *epoch) {
                        return Err(RefusalReason::NotHolder);
                    }
                    rec.holder = None;
                    rec.sync_standby = None;
                    rec.seq += 1;
                    push_history(rec, index, HistoryKind::Released, region);
                    Ok(())
                }
                LeaseRequest::SetSyncStandby { region, epoch, standby, .. } => {
                    if !is_holder(rec, region, *epoch) {
                        return Err(RefusalReason::NotHolder);
                    }
                    rec.sync_standby = standby.clone();
                    rec.seq += 1;
                    Ok(())
                }
                LeaseRequest::SetDemotionToken { region, epoch, token, .. } => {
                    if !is_holder(rec, region, *epoch) {
                        return Err(RefusalReason::NotHolder);
                    }
                    rec.demotion_token = token.clone();
                    Ok(())
                }
                LeaseRequest::CasSwitchover { epoch, expected_version, record, .. } => {
                    if rec.epoch != *epoch || rec.switchover_version != *expected_version {
                        return Err(RefusalReason::VersionMismatch);
                    }
                    rec.switchover = record.clone();
                    rec.switchover_version += 1;
                    Ok(())
                }
                LeaseRequest::Claim { region, epoch, seq, .. } => {
                    if rec.epoch != *epoch || rec.holder.is_none() || rec.holder.as_deref() == Some(region.as_str()) {
                        return Err(RefusalReason::NotHolder);
                    }
                    if seq.is_some_and(|seq| seq != rec.seq) {
                        return Err(RefusalReason::ChangedSinceObserved);
                    }
                    if rec.sync_standby.as_deref() != Some(region.as_str()) {
                        return Err(RefusalReason::NotSyncStandby);
                    }
                    let duration_ms = rec.duration_ms;
                    grant(rec, index, region, duration_ms, HistoryKind::Claimed);
                    Ok(())
                }
            },
        }
    }
}

fn grant(rec: &mut LeaseRecord, index: u64, region: &str, duration_ms: u64, kind: HistoryKind) {
    rec.holder = Some(region.to_string());
    // The log index is unique and grows with every entry, so epochs never repeat.
    rec.epoch = index;
    rec.duration_ms = duration_ms;
    // The new holder must publish its own eligible standby; the old one was the new holder.
    rec.sync_standby = None;
    rec.demotion_token = None;
    rec.seq += 1;
    push_history(rec, index, kind, region);
}

fn push_history(rec: &mut LeaseRecord, index: u64, kind: HistoryKind, region: &str) {
    if rec.history.len() == HISTORY_LEN {
        rec.history.pop_front();
    }
    rec.history.push_back(HistoryEvent { index, kind, region: region.to_string(), epoch: rec.epoch });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(r: CommandResult) -> LeaseRecord {
        assert_eq!(r.refused, None, "unexpected refusal of {:?}", r.record);
        r.record
    }

    fn acquire(t: &LeaseTable, pair: &str, region: &str) -> Command {
        let rec = t.pairs.get(pair).cloned().unwrap_or_default();
        Command::Acquire {
            pair: pair.into(),
            candidate: region.into(),
            duration_ms: 1000,
            expected_epoch: rec.epoch,
            expected_seq: rec.seq,
        }
    }

    #[test]
    fn grant_is_a_cas_on_epoch_and_seq() {
        let mut t = LeaseTable::default();
        let stale = acquire(&t, "p", "b");
        let a = ok(t.apply(3, &acquire(&t, "p", "a")));
        assert_eq!((a.holder.as_deref(), a.epoch), (Some("a"), 3));
        // b's acquire was decided before a's grant: refused, nothing changes.
        let before = t.clone();
        assert_eq!(t.apply(4, &stale).refused.unwrap(), RefusalReason::ChangedSinceObserved);
        assert_eq!(t.pairs["p"].holder, before.pairs["p"].holder);
        // A renewal between b's observation and b's acquire also defeats it.
        let observed = acquire(&t, "p", "b");
        ok(t.apply(5, &Command::Request(LeaseRequest::Renew { pair: "p".into(), region: "a".into(), epoch: 3 })));
        assert!(t.apply(6, &observed).refused.is_some());
        let b = ok(t.apply(7, &acquire(&t, "p", "b")));
        assert_eq!((b.holder.as_deref(), b.epoch), (Some("b"), 7));
        // The old holder's renewal with the old epoch is refused.
        let renew = LeaseRequest::Renew { pair: "p".into(), region: "a".into(), epoch: 3 };
        assert_eq!(t.apply(8, &Command::Request(renew)).refused.unwrap(), RefusalReason::NotHolder);
    }

    #[test]
    fn a_free_lease_is_granted_whatever_the_candidate_saw() {
        let mut t = LeaseTable::default();
        let stale = acquire(&t, "p", "a");
        ok(t.apply(1, &acquire(&t, "p", "b")));
        ok(t.apply(2, &Command::Request(LeaseRequest::Release { pair: "p".into(), region: "b".into(), epoch: 1 })));
        let rec = ok(t.apply(3, &stale));
        assert_eq!((rec.holder.as_deref(), rec.epoch), (Some("a"), 3));
    }

    #[test]
    fn claim_requires_sync_standby() {
        let mut t = LeaseTable::default();
        ok(t.apply(1, &acquire(&t, "p", "a")));
        let claim = Command::Request(LeaseRequest::Claim { pair: "p".into(), region: "b".into(), epoch: 1, seq: None });
        assert_eq!(t.apply(2, &claim).refused.unwrap(), RefusalReason::NotSyncStandby);
        let set =
            LeaseRequest::SetSyncStandby { pair: "p".into(), region: "a".into(), epoch: 1, standby: Some("b".into()) };
        ok(t.apply(3, &Command::Request(set)));
        let rec = ok(t.apply(4, &claim));
        assert_eq!((rec.holder.as_deref(), rec.epoch, rec.sync_standby), (Some("b"), 4, None));
        // The cut-off old primary can no longer drop synchronous replication.
        let drop = LeaseRequest::SetSyncStandby { pair: "p".into(), region: "a".into(), epoch: 1, standby: None };
        assert!(t.apply(5, &Command::Request(drop)).refused.is_some());
    }

    #[test]
    fn claim_after_a_renewal_it_did_not_see_is_refused_and_changes_nothing() {
        let mut t = LeaseTable::default();
        ok(t.apply(1, &acquire(&t, "p", "a")));
        let set =
            LeaseRequest::SetSyncStandby { pair: "p".into(), region: "a".into(), epoch: 1, standby: Some("b".into()) };
        let seen = ok(t.apply(2, &Command::Request(set)));
        ok(t.apply(3, &Command::Request(LeaseRequest::Renew { pair: "p".into(), region: "a".into(), epoch: 1 })));
        let before = t.pairs["p"].clone();
        let claim = LeaseRequest::Claim { pair: "p".into(), region: "b".into(), epoch: 1, seq: Some(seen.seq) };
        let result = t.apply(4, &Command::Request(claim));
        assert_eq!(result.refused, Some(RefusalReason::ChangedSinceObserved));
        assert_eq!(t.pairs["p"], before);
        let claim = LeaseRequest::Claim { pair: "p".into(), region: "b".into(), epoch: 1, seq: Some(before.seq) };
        let rec = ok(t.apply(5, &Command::Request(claim)));
        assert_eq!((rec.holder.as_deref(), rec.epoch), (Some("b"), 5));
    }

    #[test]
    fn switchover_cas_by_version() {
        let mut t = LeaseTable::default();
        ok(t.apply(1, &acquire(&t, "p", "a")));
        let cas = |v| {
            Command::Request(LeaseRequest::CasSwitchover {
                pair: "p".into(),
                epoch: 1,
                expected_version: v,
                record: Some(serde_json::json!({"step": v})),
            })
        };
        assert_eq!(ok(t.apply(2, &cas(0))).switchover_version, 1);
        assert_eq!(t.apply(3, &cas(0)).refused.unwrap(), RefusalReason::VersionMismatch);
        assert_eq!(ok(t.apply(4, &cas(1))).switchover, Some(serde_json::json!({"step": 1})));
    }

    #[test]
    fn a_refused_command_creates_no_record() {
        let mut t = LeaseTable::default();
        let renew = LeaseRequest::Renew { pair: "ghost".into(), region: "a".into(), epoch: 1 };
        assert_eq!(t.apply(1, &Command::Request(renew)).refused, Some(RefusalReason::NotHolder));
        assert!(t.pairs.is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        let r = LeaseRequest::Acquire { pair: "".into(), region: "a".into(), duration_ms: 10 };
        assert!(r.validate().unwrap_err().to_string().contains("pair"));
        let r = LeaseRequest::Acquire { pair: "p".into(), region: "a".into(), duration_ms: 0 };
        assert!(r.validate().unwrap_err().to_string().contains("duration"));
    }
}
