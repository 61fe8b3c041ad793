//! Request checks that do not need the lease store: which pair a request names and whether its
//! target is one of the pair's data regions. The daemon and the API tests' in-memory
//! orchestrator call the same functions, so both answer a bad request with the same status.

use std::collections::BTreeMap;

use crate::Error;

/// The pair a plan or switchover request names: by name (404 if there is none), or the only one
/// (400 if the daemon protects several and the request names none).
pub fn pair<'a, T>(pairs: &'a BTreeMap<String, T>, name: Option<&str>) -> Result<&'a T, Error> {
    match name {
        Some(name) => pairs.get(name).ok_or_else(|| Error::NotFound { what: format!("pair {name:?}") }),
        None if pairs.len() == 1 => Ok(pairs.values().next().expect("one pair")),
        None => Err(Error::BadRequest { message: "this daemon protects several pairs: name `pair`".into() }),
    }
}

/// A plan's or switchover's target must be one of the pair's data regions. Anything else is a
/// malformed request (400), not a missing resource: the set of regions is fixed by config.
pub fn target(to: &str, regions: &[&str]) -> Result<(), Error> {
    if to.trim().is_empty() {
        return Err(Error::BadRequest { message: "`to` must name a region".into() });
    }
    if !regions.contains(&to) {
        return Err(Error::BadRequest {
            message: format!("unknown region {to:?} (data regions: {})", regions.join(", ")),
        });
    }
    Ok(())
}

/// Longest switchover `reason`, in bytes: it is copied into the replicated switchover record
/// and the audit log.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest region or pair name, in bytes (a DNS name).
pub const MAX_NAME_BYTES: usize = 253;
/// Largest request body the API reads, in bytes; a longer one is answered 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Lengths of what a switchover or plan request carries into replicated state and logs.
pub fn request_sizes(to: &str, pair: Option<&str>, reason: &str) -> Result<(), Error> {
    for (field, value) in [("to", to), ("pair", pair.unwrap_or(""))] {
        if value.len() > MAX_NAME_BYTES {
            return Err(Error::BadRequest {
                message: format!("`{field}` is {} bytes long; at most {MAX_NAME_BYTES}", value.len()),
            });
        }
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(Error::BadRequest {
            message: format!("`reason` is {} bytes long; at most {MAX_REASON_BYTES}", reason.len()),
        });
    }
    if reason.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::BadRequest { message: "`reason` holds control characters".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_targets_are_bad_requests_and_unknown_pairs_not_found() {
        assert!(target("b", &["a", "b"]).is_ok());
        for bad in ["", " ", "c"] {
            assert!(matches!(target(bad, &["a", "b"]), Err(Error::BadRequest { .. })), "{bad:?}");
        }
        let message = target("zz", &["a", "b"]).unwrap_err().to_string();
        assert!(message.contains(r#"unknown region "zz" (data regions: a, b)"#), "{message}");

        let one = BTreeMap::from([("app".to_string(), 1)]);
        assert_eq!(pair(&one, None).unwrap(), &1);
        assert_eq!(pair(&one, Some("app")).unwrap(), &1);
        assert!(matches!(pair(&one, Some("other")), Err(Error::NotFound { .. })));
        let two = BTreeMap::from([("app".to_string(), 1), ("billing".to_string(), 2)]);
        assert!(matches!(pair(&two, None), Err(Error::BadRequest { .. })));
    }
}
