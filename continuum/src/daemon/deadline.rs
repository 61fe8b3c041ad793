//! Switchover step deadlines (`pairs[].step_timeout`), as a pure function: what this region does
//! once the current step has been current for too long. The clock is the replicated record's
//! ([`crate::record::SwitchoverRecord::current_since`]), so a restarted daemon or the other
//! region sees the same deadline. Every resolution is safe whoever else acts at the same time:
//! the lease store grants the lease to one region, and the record is compare-and-set.

use std::time::Duration;

use cnpg_pair::Observed;

use super::decide::{Observation, SwitchoverMove, Timers};
use crate::record::{Step, StepRecord, StepState, SwitchoverRecord};

/// How a switchover past its step deadline is resolved by this region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Old holder, the lease has not moved: roll back (unfence, serve under the same epoch).
    RollBack,
    /// Target: the store shows the lease released but the old holder never recorded
    /// `move_lease` (it died in between): record it and go on; `promote` acquires the lease.
    TakeOver,
    /// Old holder: it released the lease but the target never took it (never promoted): take
    /// it back, serve again, and finish the record as failed.
    Resume,
    /// The other region has been silent for a lease and nothing safe is left to do here:
    /// finish the record as failed; the ordinary holder and failover rules act from then on.
    Abandon,
}

/// `Some` once the current step is past its deadline and this region has a move to make.
pub(super) fn past_deadline(obs: &Observation, timers: &Timers, sw: &SwitchoverRecord) -> Option<SwitchoverMove> {
    let current = sw.current_step()?;
    if current.state == StepState::Failed && current.step.rolls_back() {
        // Failed before the lease moved: the ordinary roll-back, with the failure as reason.
        return None;
    }
    let waited = timers.now.duration_since(sw.current_since()).unwrap_or(Duration::ZERO);
    if waited < timers.limits.step_timeout {
        return None;
    }
    let resolve = resolution(obs, timers, sw, current)?;
    Some(SwitchoverMove::Deadline { step: current.step, waited, resolve })
}

fn resolution(obs: &Observation, timers: &Timers, sw: &SwitchoverRecord, current: &StepRecord) -> Option<Resolve> {
    let me = obs.region.as_str();
    let (from, to) = (sw.from.as_str(), sw.to.as_str());
    let holder = obs.record.holder.as_deref();
    // Of the other region: this daemon's reads saw no lease write for a whole lease.
    let other_silent = timers.record_silent_for >= obs.record.duration();
    // A release that was tried and failed may still commit: the lease is moving.
    let moving = current.step == Step::MoveLease && current.attempts > 0;
    if holder == Some(from) && obs.record.epoch == sw.epoch_before && !moving {
        // The lease has not moved. The old holder rolls back; the target only gives up on an
        // old holder that is gone (with `auto_failover` the ordinary failover supersedes first).
        return if me == from {
            Some(Resolve::RollBack)
        } else {
            (me == to && other_silent).then_some(Resolve::Abandon)
        };
    }
    match holder {
        // Released by the old holder, which died before recording it. Only a standby that
        // replayed the old primary's final position (the `catch_up` step) may take over.
        None if current.step == Step::MoveLease => {
            (me == to && matches!(obs.local, Some(Observed::Standby(_)))).then_some(Resolve::TakeOver)
        }
        // Released, and the target never took the lease: it cannot have promoted.
        None => (me == from).then_some(Resolve::Resume),
        // Taken back by an earlier resume whose record was not stored yet.
        Some(h) if h == from && me == from && current.step == Step::Promote => Some(Resolve::Resume),
        // The holder retries its own steps (backed off); waits on the old region: `WaitOnOld`.
        Some(h) if h == me => None,
        Some(_) => other_silent.then_some(Resolve::Abandon),
    }
}
