//! Who may write what (README "Security model"). Identity is the subject common name of the
//! caller's client certificate, never a field of the request: a member's certificate names its
//! region. A command acting for a region (acquire, renew, release, sync standby, demotion token,
//! claim) is accepted only from that region's certificate; the switchover record and pair
//! registration only from a data region's certificate. Everything else may at most read.

use std::collections::BTreeSet;

use crate::error::LeaseError;
use crate::types::{Command, LeaseRequest};

/// The region a request acts for, if it acts for one.
fn acting_region(req: &LeaseRequest) -> Option<&str> {
    match req {
        LeaseRequest::Acquire { region, .. }
        | LeaseRequest::Renew { region, .. }
        | LeaseRequest::Release { region, .. }
        | LeaseRequest::SetSyncStandby { region, .. }
        | LeaseRequest::SetDemotionToken { region, .. }
        | LeaseRequest::Claim { region, .. } => Some(region),
        LeaseRequest::CasSwitchover { .. } => None,
    }
}

/// Checks a client request against the caller's certificate names. `data_regions` is asked only
/// for requests that name no region (a renewal, the hot path, never needs the membership).
pub(crate) fn authorize_request(
    req: &LeaseRequest,
    caller: &[String],
    data_regions: impl FnOnce() -> BTreeSet<String>,
) -> Result<(), LeaseError> {
    match acting_region(req) {
        Some(region) => require_name(caller, region, req.op_name()),
        None => require_data_region(caller, &data_regions(), req.op_name()),
    }
}

/// Checks a command forwarded by another member against that member's certificate names: a
/// member may forward only what it could have submitted itself.
pub(crate) fn authorize_command(
    cmd: &Command,
    caller: &[String],
    data_regions: impl FnOnce() -> BTreeSet<String>,
) -> Result<(), LeaseError> {
    match cmd {
        Command::Acquire { candidate, .. } => require_name(caller, candidate, "acquire"),
        Command::Request(req) => authorize_request(req, caller, data_regions),
    }
}

/// Membership changes: only a member's certificate.
pub(crate) fn authorize_admin(caller: &[String], is_member: impl Fn(&str) -> bool) -> Result<(), LeaseError> {
    if caller.iter().any(|n| is_member(n)) {
        return Ok(());
    }
    Err(LeaseError::Forbidden(format!("membership changes need a member's certificate; this one names {caller:?}")))
}

fn require_name(caller: &[String], region: &str, op: &str) -> Result<(), LeaseError> {
    if caller.iter().any(|n| n == region) {
        return Ok(());
    }
    Err(LeaseError::Forbidden(format!(
        "{op} for region `{region}` needs that region's certificate; this one names {caller:?}"
    )))
}

fn require_data_region(caller: &[String], data_regions: &BTreeSet<String>, op: &str) -> Result<(), LeaseError> {
    if caller.iter().any(|n| data_regions.contains(n)) {
        return Ok(());
    }
    Err(LeaseError::Forbidden(format!(
        "{op} needs a data region's certificate (data regions: {data_regions:?}); this one names {caller:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_region_acts_only_for_itself() {
        let regions: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let renew_a = LeaseRequest::Renew { pair: "p".into(), region: "a".into(), epoch: 1 };
        assert!(authorize_request(&renew_a, &names(&["a"]), || regions.clone()).is_ok());
        for caller in [names(&["b"]), names(&["client"]), names(&["w"]), vec![]] {
            let err = authorize_request(&renew_a, &caller, || regions.clone()).unwrap_err();
            assert_eq!(err.metric_label(), "forbidden", "{caller:?}");
        }
        let cas = LeaseRequest::CasSwitchover { pair: "p".into(), epoch: 1, expected_version: 0, record: None };
        assert!(authorize_request(&cas, &names(&["b"]), || regions.clone()).is_ok());
        assert!(
            authorize_request(&cas, &names(&["w"]), || regions.clone()).is_err(),
            "the witness holds no switchover"
        );
        let forged = Command::Acquire {
            pair: "p".into(),
            candidate: "a".into(),
            duration_ms: 1,
            expected_epoch: 0,
            expected_seq: 0,
        };
        assert!(authorize_command(&forged, &names(&["b"]), || regions.clone()).is_err());
        assert!(authorize_admin(&names(&["client"]), |n| regions.contains(n)).is_err());
    }
}
