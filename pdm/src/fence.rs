//! Epoch fencing: the last lease epoch committed per name, kept in zone metadata so it survives
//! a PDM restart, and a per-zone lock so two commits in one PDM process cannot both pass the
//! check before either records its epoch.
//!
//! Caveat: the lock is per process. Two PDM processes writing the same PowerDNS database could
//! interleave read-check-write on the metadata; run one PDM per PowerDNS backend (the design's
//! region-local PDM does).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::PdmError;
use crate::client::PowerDnsClient;

/// Zone metadata kind holding `"<epoch> <name>"` entries (custom kinds must start with `X-`).
pub const EPOCH_KIND: &str = "X-PDM-EPOCH";

/// One async lock per zone, created on first use.
#[derive(Debug, Default)]
pub struct ZoneLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ZoneLocks {
    pub async fn lock(&self, zone: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(zone.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The committed epoch of every name in one zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epochs(BTreeMap<String, u64>);

impl Epochs {
    pub async fn load(client: &PowerDnsClient, zone: &str) -> Result<Self, PdmError> {
        let mut map = BTreeMap::new();
        for entry in client.get_metadata(zone, EPOCH_KIND).await? {
            let parsed = entry.split_once(' ').and_then(|(epoch, name)| Some((epoch.parse::<u64>().ok()?, name)));
            let Some((epoch, name)) = parsed else {
                // Ignoring a damaged entry would silently drop a fence: refuse instead.
                return Err(PdmError::PowerDnsData(format!(
                    "zone {zone} has a malformed {EPOCH_KIND} entry {entry:?}"
                )));
            };
            map.insert(name.to_string(), epoch);
        }
        Ok(Self(map))
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.get(name).copied()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Refuses `epoch` if any of `names` already saw a higher one. An equal epoch passes, so a
    /// commit whose outcome was unknown can be retried.
    pub fn check<'a>(&self, names: impl IntoIterator<Item = &'a str>, epoch: u64) -> Result<(), PdmError> {
        for name in names {
            if let Some(committed) = self.get(name)
                && committed > epoch
            {
                return Err(PdmError::StaleEpoch { name: name.to_string(), epoch, committed });
            }
        }
        Ok(())
    }

    /// Refuses `epoch` if it lies more than `max_step` above what any of `names` last accepted
    /// (a name never committed is measured against the zone's highest epoch, or 0): such an
    /// epoch cannot come from the lease store, and once recorded it would refuse every real one.
    pub fn check_plausible<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
        epoch: u64,
        max_step: u64,
    ) -> Result<(), PdmError> {
        let zone_high = self.0.values().copied().max().unwrap_or(0);
        for name in names {
            let reference = self.get(name).unwrap_or(zone_high);
            if epoch > reference.saturating_add(max_step) {
                return Err(PdmError::ImplausibleEpoch { name: name.to_string(), epoch, reference, max_step });
            }
        }
        Ok(())
    }

    /// These epochs with `name` set to `epoch`, lower or higher (an admin's reset).
    pub fn reset(&self, name: &str, epoch: u64) -> Self {
        let mut map = self.0.clone();
        map.insert(name.to_string(), epoch);
        Self(map)
    }

    /// These epochs with `names` raised to `epoch`.
    pub fn raised<'a>(&self, names: impl IntoIterator<Item = &'a str>, epoch: u64) -> Self {
        let mut map = self.0.clone();
        for name in names {
            let entry = map.entry(name.to_string()).or_insert(epoch);
            *entry = (*entry).max(epoch);
        }
        Self(map)
    }

    pub async fn store(&self, client: &PowerDnsClient, zone: &str) -> Result<(), PdmError> {
        let values: Vec<String> = self.0.iter().map(|(name, epoch)| format!("{epoch} {name}")).collect();
        client.put_metadata(zone, EPOCH_KIND, &values).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_only_lower_epochs() {
        let epochs = Epochs::default().raised(["a.z.", "b.z."], 5);
        assert!(epochs.check(["a.z."], 5).is_ok());
        assert!(epochs.check(["a.z.", "c.z."], 6).is_ok());
        let err = epochs.check(["c.z.", "b.z."], 4).unwrap_err();
        assert!(matches!(err, PdmError::StaleEpoch { ref name, epoch: 4, committed: 5 } if name == "b.z."));
        assert_eq!(epochs.raised(["a.z."], 3).get("a.z."), Some(5));
    }

    #[test]
    fn plausibility_bounds_the_step_over_the_name_or_the_zone() {
        let epochs = Epochs::default().raised(["a.z."], 100).raised(["b.z."], 10);
        assert!(epochs.check_plausible(["a.z."], 110, 10).is_ok());
        let err = epochs.check_plausible(["a.z."], 111, 10).unwrap_err();
        assert!(matches!(err, PdmError::ImplausibleEpoch { epoch: 111, reference: 100, max_step: 10, .. }));
        assert_eq!(err.metric_label(), "implausible_epoch");
        assert!(epochs.check_plausible(["b.z."], 21, 10).is_err());
        // A new name is measured against the zone's highest epoch; an empty zone against 0.
        assert!(epochs.check_plausible(["c.z."], 110, 10).is_ok());
        assert!(epochs.check_plausible(["c.z."], 111, 10).is_err());
        assert!(Epochs::default().check_plausible(["c.z."], u64::MAX, 1 << 40).is_err());
        assert!(epochs.reset("a.z.", u64::MAX).check_plausible(["a.z."], u64::MAX, 1).is_ok());
        assert_eq!(epochs.reset("a.z.", 3).get("a.z."), Some(3));
    }
}
