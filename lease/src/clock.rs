//! Holder-side time: `CLOCK_BOOTTIME`, which keeps counting while the machine is suspended
//! (`std::time::Instant` uses `CLOCK_MONOTONIC`, which stops, so a resumed holder would believe its
//! lease still runs). Behind a trait so tests can inject skewed clocks.

use std::sync::Arc;
use std::time::Duration;

/// A point on a boot-time clock, as time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(pub Duration);

impl BootInstant {
    pub fn saturating_duration_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
    pub fn checked_sub(self, d: Duration) -> Option<BootInstant> {
        self.0.checked_sub(d).map(BootInstant)
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0 + d)
    }
}

/// Source of [`BootInstant`]s.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> BootInstant;
}

/// The real `CLOCK_BOOTTIME`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BootClock;

impl Clock for BootClock {
    fn now(&self) -> BootInstant {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux since 2.6.39.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
        BootInstant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}

/// The default clock, shared.
pub fn boot_clock() -> Arc<dyn Clock> {
    Arc::new(BootClock)
}

/// A clock that runs `rate` times as fast as `CLOCK_BOOTTIME` from its creation on, plus a fixed
/// offset: for tests that check what clock drift does to the safety margins.
#[derive(Debug)]
pub struct SkewedClock {
    origin: BootInstant,
    rate: f64,
    offset: Duration,
}

impl SkewedClock {
    pub fn new(rate: f64, offset: Duration) -> Self {
        SkewedClock { origin: BootClock.now(), rate, offset }
    }
}

impl SkewedClock {
    /// The real `CLOCK_BOOTTIME` instant at which this clock shows `reading`.
    pub fn to_real(&self, reading: BootInstant) -> BootInstant {
        let skewed = reading.0.saturating_sub(self.origin.0 + self.offset);
        BootInstant(self.origin.0 + skewed.div_f64(self.rate))
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> BootInstant {
        let real = BootClock.now().saturating_duration_since(self.origin);
        BootInstant(self.origin.0 + self.offset + real.mul_f64(self.rate))
    }
}
