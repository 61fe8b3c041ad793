//! DNS name checks. PowerDNS wants canonical names (lowercase is not required, the trailing dot
//! is); PDM normalises to lowercase with a trailing dot so names compare as strings.

use crate::PdmError;

/// Normalises `name` (trailing dot optional, any case) to lowercase with a trailing dot, or
/// explains what is wrong with it. Underscores are allowed (service labels, PDM's scratch names).
pub fn normalize(name: &str) -> Result<String, PdmError> {
    let bad = |why: &str| PdmError::InvalidRequest(format!("name {name:?} {why}"));
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("is empty (the root zone is not managed by PDM)"));
    }
    if trimmed.len() > 253 {
        return Err(bad("is longer than 253 characters"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad("may only contain letters, digits, '-' and '_'"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label starting or ending with '-'"));
        }
    }
    Ok(format!("{}.", trimmed.to_ascii_lowercase()))
}

/// Whether normalised `name` is `zone` itself or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// Normalises `name` and checks it lies inside normalised `zone`.
pub fn normalize_in_zone(name: &str, zone: &str) -> Result<String, PdmError> {
    let name = normalize(name)?;
    if !in_zone(&name, zone) {
        return Err(PdmError::InvalidRequest(format!("name {name} is not inside zone {zone}")));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_rejects() {
        assert_eq!(normalize("App.Example.TEST").unwrap(), "app.example.test.");
        assert_eq!(normalize("app.example.test.").unwrap(), "app.example.test.");
        for bad in ["", ".", "a..b", "a b.test", "-a.test", &format!("{}.test", "x".repeat(64)), "a\".test"] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
        assert!(in_zone("a.b.test.", "b.test."));
        assert!(in_zone("b.test.", "b.test."));
        assert!(!in_zone("ab.test.", "b.test."));
    }
}
