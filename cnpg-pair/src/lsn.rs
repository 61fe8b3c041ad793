//! WAL positions. An LSN means something only together with the system identifier and timeline
//! it was read on, so comparisons go through [`WalPosition`].

use std::fmt;
use std::str::FromStr;

/// A WAL location (`X/Y` in PostgreSQL's text form, `(X << 32) | Y`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self`; 0 when `earlier` is ahead.
    pub fn bytes_after(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Text that is not an `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an LSN: {0:?}")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// An LSN with the history it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalPosition {
    pub system_id: u64,
    pub timeline: u32,
    pub lsn: Lsn,
}

impl WalPosition {
    /// Whether `self` is at or past `target` on the same system and timeline; `None` when the two
    /// are not comparable.
    pub fn reached(&self, target: &WalPosition) -> Option<bool> {
        (self.system_id == target.system_id && self.timeline == target.timeline).then_some(self.lsn >= target.lsn)
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (timeline {}, system {})", self.lsn, self.timeline, self.system_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_pg_text_form() {
        let lsn: Lsn = "0/21B8B2E8".parse().unwrap();
        assert_eq!(lsn, Lsn(0x21B8_B2E8));
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert_eq!(Lsn(0x1_0000_00A0).to_string(), "1/A0");
        for bad in ["", "0", "0/", "/1", "g/1", "0/1/2", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn positions_compare_only_within_one_history() {
        let at = |system_id, timeline, lsn| WalPosition { system_id, timeline, lsn: Lsn(lsn) };
        assert_eq!(at(1, 1, 10).reached(&at(1, 1, 10)), Some(true));
        assert_eq!(at(1, 1, 9).reached(&at(1, 1, 10)), Some(false));
        assert_eq!(at(1, 2, 99).reached(&at(1, 1, 10)), None);
        assert_eq!(at(2, 1, 99).reached(&at(1, 1, 10)), None);
    }
}
