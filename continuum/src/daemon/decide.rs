//! The control loop's decision, as one pure function: [`decide`] maps what a round observed
//! ([`Observation`]) and how long things have been so ([`Timers`]) to the one [`Action`] this
//! region takes. No I/O here: the caller performs the action ([`super::holder`],
//! [`super::standby`], [`super::steps`]) and keeps the clocks.

use std::time::{Duration, SystemTime};

use cnpg_pair::{Eligibility, EligibilityPolicy, Observed, PairSnapshot, SyncState};
use lease::LeaseRecord;
use uuid::Uuid;

pub use super::deadline::Resolve;
use crate::config::{Durability, Takeover};
use crate::record::{Step, StepState, SwitchoverRecord};
use crate::switchover::{self, Next};

/// What one round saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// This region and the pair's other data region.
    pub region: String,
    pub peer: String,
    pub record: LeaseRecord,
    /// The switchover record stored with the lease record; an error when it does not decode.
    pub switchover: Result<Option<SwitchoverRecord>, String>,
    /// The local server (`None` until first observed).
    pub local: Option<Observed>,
    /// The peer's server, last time it was observed.
    pub peer_server: Option<Observed>,
    /// The peer's last observation as a primary (eligibility needs the primary's position).
    pub peer_as_primary: Option<Observed>,
}

impl Observation {
    /// The decoded switchover record, if one is stored and not finished.
    pub fn switchover_in_flight(&self) -> Option<&SwitchoverRecord> {
        self.switchover.as_ref().ok().and_then(Option::as_ref).filter(|sw| !sw.state.is_finished())
    }
}

/// How long conditions have held (zero when they just started), and the limits they are
/// compared with.
#[derive(Debug, Clone)]
pub struct Timers {
    /// Wall clock, for the eligibility's replay-lag check.
    pub now: SystemTime,
    /// Since the lease record last changed (`seq`): how long the holder has been silent.
    pub record_silent_for: Duration,
    /// As the holder: since when the local server is unreachable without a break.
    pub local_down_for: Duration,
    /// As the holder: since when the peer streams to the local server without a break.
    pub standby_streaming_for: Duration,
    /// As the holder: since when the peer does not stream.
    pub standby_missing_for: Duration,
    /// Since this region's last automatic failover of the pair.
    pub since_last_failover: Option<Duration>,
    /// As a switchover's new holder: the step of the old region waited for, and for how long.
    pub waiting_on_old: Option<(Uuid, Step, Duration)>,
    /// A switchover step of this region that failed: how long until it may be tried again.
    pub retry_in: Option<(Uuid, Step, Duration)>,
    /// The epoch whose lease this region gave up (its server stayed down).
    pub gave_up_epoch: Option<u64>,
    /// Whether this daemon holds a lease handle (renewing).
    pub have_handle: bool,
    pub limits: Limits,
}

/// The pair's configured limits that decisions compare against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The lease duration this daemon requests.
    pub lease_duration: Duration,
    pub durability: Durability,
    pub auto_failover: bool,
    pub failover_debounce: Duration,
    pub primary_down_timeout: Duration,
    pub switchover_rejoin_timeout: Duration,
    /// How long a switchover step may stay current (`pairs[].step_timeout`).
    pub step_timeout: Duration,
    pub eligibility: EligibilityPolicy,
    pub takeover: Takeover,
    /// `sync-fenced`: the holder's silence that makes it a suspect.
    pub suspect_window: Duration,
    /// `sync-fenced`: a WAL stream that brought nothing for this long is gone.
    pub wal_stream_timeout: Duration,
}

/// What this region does this round.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The local server was not observed yet: look again soon.
    Unobserved,
    /// A stored switchover record does not decode: act on nothing, report it.
    RecordUnreadable(String),
    /// Nobody holds the lease and the local server is not a primary: nothing to do.
    Idle,
    /// Nobody holds the lease and the local server is the primary (first start of a pair, or a
    /// release not followed by a grant): take the lease, record the epoch, commit DNS.
    Bootstrap,
    /// This region holds the lease.
    Hold(Hold),
    /// Another region holds the lease.
    Follow(Follow),
    /// A switchover is in flight.
    Switchover(SwitchoverMove),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// The server came back after this region gave its lease up, before anyone took over:
    /// serve again under a lease renewed now.
    pub resumed: bool,
    /// No handle (a restart, or the lease was fenced): renew as the holder first.
    pub reacquire: bool,
    pub duty: Duty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The lease was given up and the server is still down: let the lease run out.
    LetExpire,
    /// The local server is the primary: keep the peer synchronous, or relax.
    Sync(SyncChange),
    /// The local server is a standby under this region's lease: a failover or promote step
    /// interrupted by a crash. Promote it and commit DNS.
    FinishPromotion,
    /// The local server is unreachable: start it if it is stopped.
    Restart,
    /// Unreachable for `primary_down_timeout`: stop it for good and let the lease run out.
    GiveUp { down_for: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncChange {
    Keep,
    /// Make the peer synchronous (it streamed for half a lease) or repair a recorded standby
    /// that is not `sync`.
    Enable,
    /// Durability `preferred` and the standby gone for half a lease: record no sync standby, relax.
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Follow {
    /// The local server is a primary without the lease: stop it now.
    FenceRoguePrimary,
    /// The local server is down and the peer is the primary: rejoin as its standby.
    Rejoin,
    /// The local server is down and no primary is seen: wait.
    WaitForPrimary,
    /// A standby: fail over, or stay and say why.
    Standby(FailoverCheck),
    /// Sync-fenced takeover: the holder has been silent for the suspect window, its WAL stream
    /// to this server is gone and everything received is replayed; claim the lease (compare-
    /// and-swap on the record's `seq` as observed), stop the WAL receiver, promote.
    Claim { silent_for: Duration, seq: u64 },
}

/// Whether this region's standby may take over now.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverCheck {
    /// Whether it may be promoted without loss (exported as a metric either way).
    pub eligible: Result<(), String>,
    /// Take the lease (the holder has been silent this long), or why not.
    pub verdict: Result<Duration, Stay>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stay {
    AutoFailoverOff,
    NotEligible,
    /// The last automatic failover is more recent than `failover_debounce`.
    Debounced,
    /// The holder wrote to the store less than a lease duration ago.
    HolderNotSilent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SwitchoverMove {
    /// The old holder went silent for a whole lease before the lease moved: the ordinary
    /// automatic failover supersedes the switchover (confirmed on a fresh observation).
    /// `check` is `None` when the local server is not a standby.
    Supersede {
        id: Uuid,
        check: Option<FailoverCheck>,
    },
    /// Perform this step (first attempt, or a roll-forward retry).
    Perform(Step),
    /// This region's step failed and its next try is not due yet (capped exponential backoff).
    Backoff(Step),
    /// The current step has been current past `step_timeout`: resolve it as named.
    Deadline {
        step: Step,
        waited: Duration,
        resolve: Resolve,
    },
    /// A step before the lease moved failed: undo this region's steps.
    RollBack,
    /// The other region has the next move.
    Wait,
    /// As the new holder, waiting for the old region's `step`; past the rejoin timeout the
    /// record is completed without it.
    WaitOnOld {
        step: Step,
        timed_out: bool,
    },
    Finished,
}

/// The one decision of a round.
pub fn decide(obs: &Observation, timers: &Timers) -> Action {
    let Some(local) = &obs.local else { return Action::Unobserved };
    if let Err(reason) = &obs.switchover {
        return Action::RecordUnreadable(reason.clone());
    }
    if let Some(sw) = obs.switchover_in_flight() {
        return Action::Switchover(switchover_move(obs, timers, local, sw));
    }
    match obs.record.holder.as_deref() {
        Some(holder) if holder == obs.region => Action::Hold(hold(obs, timers, local)),
        Some(_) => Action::Follow(follow(obs, timers, local)),
        None if matches!(local, Observed::Primary(_)) => Action::Bootstrap,
        None => Action::Idle,
    }
}

fn hold(obs: &Observation, timers: &Timers, local: &Observed) -> Hold {
    let local_down = matches!(local, Observed::Unreachable { .. });
    let gave_up = timers.gave_up_epoch == Some(obs.record.epoch);
    if gave_up && local_down {
        return Hold { resumed: false, reacquire: false, duty: Duty::LetExpire };
    }
    let duty = match local {
        Observed::Primary(primary) => Duty::Sync(sync_change(obs, timers, primary)),
        Observed::Standby(_) => Duty::FinishPromotion,
        Observed::Unreachable { .. } if timers.local_down_for >= timers.limits.primary_down_timeout => {
            Duty::GiveUp { down_for: timers.local_down_for }
        }
        Observed::Unreachable { .. } => Duty::Restart,
    };
    Hold { resumed: gave_up, reacquire: !timers.have_handle, duty }
}

fn sync_change(obs: &Observation, timers: &Timers, primary: &cnpg_pair::PrimaryObservation) -> SyncChange {
    let half_lease = timers.limits.lease_duration / 2;
    let row = primary.replica(&obs.peer).filter(|r| r.state == "streaming");
    let recorded = obs.record.sync_standby.as_deref() == Some(obs.peer.as_str());
    match row {
        Some(row) => {
            // A standby that just came back (a rejoin may still restart it) is made synchronous
            // only once it streamed for half a lease: otherwise commits would block on its next
            // restart.
            let settled = timers.standby_streaming_for >= half_lease;
            let repair = recorded && row.sync_state != Some(SyncState::Sync);
            if (!recorded && settled) || repair { SyncChange::Enable } else { SyncChange::Keep }
        }
        None if timers.limits.durability != Durability::Preferred => SyncChange::Keep,
        None if timers.standby_missing_for >= half_lease && obs.record.sync_standby.is_some() => SyncChange::Drop,
        None => SyncChange::Keep,
    }
}

fn follow(obs: &Observation, timers: &Timers, local: &Observed) -> Follow {
    match local {
        Observed::Primary(_) => Follow::FenceRoguePrimary,
        Observed::Unreachable { .. } if matches!(obs.peer_server, Some(Observed::Primary(_))) => Follow::Rejoin,
        Observed::Unreachable { .. } => Follow::WaitForPrimary,
        Observed::Standby(standby) => {
            let check = failover_check(obs, timers, local);
            if check.verdict == Err(Stay::HolderNotSilent) && claim_ready(obs, timers, standby) {
                Follow::Claim { silent_for: timers.record_silent_for, seq: obs.record.seq }
            } else {
                Follow::Standby(check)
            }
        }
    }
}

/// Sync-fenced takeover before the holder's lease ran out (ARCHITECTURE §5), on top of the
/// ordinary checks (switch on, eligible, not debounced; the caller's `HolderNotSilent` says they
/// passed): configured, recorded as the synchronous standby, the holder silent for the suspect
/// window, its WAL stream to this server gone (not streaming, or nothing heard within the WAL
/// stream timeout), and replay caught up with what was received (nothing received is left
/// for the promotion to apply, so what the old primary could have acknowledged is visible).
fn claim_ready(obs: &Observation, timers: &Timers, standby: &cnpg_pair::StandbyObservation) -> bool {
    let limits = &timers.limits;
    let stream_gone = !standby.streaming || standby.last_message_age.is_none_or(|age| age >= limits.wal_stream_timeout);
    let replayed = match (standby.receive_lsn, standby.replay_lsn) {
        (Some(received), Some(replayed)) => received.bytes_after(replayed) == 0,
        _ => false,
    };
    limits.takeover == Takeover::SyncFenced
        && obs.record.sync_standby.as_deref() == Some(obs.region.as_str())
        && timers.record_silent_for >= limits.suspect_window
        && stream_gone
        && replayed
}

/// Eligibility (ARCHITECTURE §5: the recorded, caught-up synchronous standby), the switch,
/// the debounce and the holder's silence, in that order.
fn failover_check(obs: &Observation, timers: &Timers, local: &Observed) -> FailoverCheck {
    let eligible = eligibility(obs, timers, local);
    let limits = &timers.limits;
    let verdict = if !limits.auto_failover {
        Err(Stay::AutoFailoverOff)
    } else if eligible.is_err() {
        Err(Stay::NotEligible)
    } else if timers.since_last_failover.is_some_and(|d| d < limits.failover_debounce) {
        Err(Stay::Debounced)
    } else if timers.record_silent_for < obs.record.duration() {
        Err(Stay::HolderNotSilent)
    } else {
        Ok(timers.record_silent_for)
    };
    FailoverCheck { eligible, verdict }
}

fn eligibility(obs: &Observation, timers: &Timers, local: &Observed) -> Result<(), String> {
    let primary = match &obs.peer_server {
        Some(p @ Observed::Primary(_)) => p.clone(),
        _ => obs.peer_as_primary.clone().unwrap_or_else(|| Observed::Unreachable {
            observed_at: SystemTime::UNIX_EPOCH,
            error: "never observed".into(),
        }),
    };
    let snapshot = PairSnapshot { standby_name: obs.region.clone(), primary, standby: local.clone() };
    match cnpg_pair::evaluate(&snapshot, obs.record.sync_standby.as_deref(), &timers.limits.eligibility, timers.now) {
        Eligibility::Promotable => Ok(()),
        Eligibility::NotPromotable(reason) => Err(reason.to_string()),
    }
}

fn switchover_move(obs: &Observation, timers: &Timers, local: &Observed, sw: &SwitchoverRecord) -> SwitchoverMove {
    if old_holder_gone(obs, timers, sw) {
        let check = matches!(local, Observed::Standby(_)).then(|| failover_check(obs, timers, local));
        return SwitchoverMove::Supersede { id: sw.id, check };
    }
    if let Some(deadline) = super::deadline::past_deadline(obs, timers, sw) {
        return deadline;
    }
    match switchover::next_for(sw, &obs.region) {
        Next::Finished => SwitchoverMove::Finished,
        Next::RollBack => SwitchoverMove::RollBack,
        Next::Perform(step) => match timers.retry_in {
            Some((id, failed, left)) if id == sw.id && failed == step && !left.is_zero() => {
                SwitchoverMove::Backoff(step)
            }
            _ => SwitchoverMove::Perform(step),
        },
        Next::Wait => wait_on_old(obs, timers, sw),
    }
}

/// A planned switchover to this region whose old holder still holds the lease but has been
/// silent (no lease write) for a whole lease duration, before the lease moved.
fn old_holder_gone(obs: &Observation, timers: &Timers, sw: &SwitchoverRecord) -> bool {
    let before_move =
        sw.step(Step::MoveLease).is_some_and(|s| !matches!(s.state, StepState::Done | StepState::Skipped));
    timers.limits.auto_failover
        && sw.to == obs.region
        && obs.record.holder.as_deref() == Some(sw.from.as_str())
        && before_move
        && timers.record_silent_for >= obs.record.duration()
}

/// As the switchover's new lease holder, waiting for the old region's step (its `rejoin`, or
/// recording its `move_lease`): past `switchover_rejoin_timeout` (the rejoin) or `step_timeout`
/// (anything else) the old region counts as gone.
fn wait_on_old(obs: &Observation, timers: &Timers, sw: &SwitchoverRecord) -> SwitchoverMove {
    let Some(current) = sw.current_step() else { return SwitchoverMove::Wait };
    let me = obs.region.as_str();
    if sw.to != me
        || obs.record.holder.as_deref() != Some(me)
        || switchover::performer(current.step, &sw.from, &sw.to) != sw.from
        || (current.state == StepState::Failed && current.step.rolls_back())
    {
        return SwitchoverMove::Wait;
    }
    let waited = match timers.waiting_on_old {
        Some((id, step, waited)) if id == sw.id && step == current.step => waited,
        _ => Duration::ZERO,
    };
    let limit = match current.step {
        Step::Rejoin => timers.limits.switchover_rejoin_timeout,
        _ => timers.limits.step_timeout,
    };
    SwitchoverMove::WaitOnOld { step: current.step, timed_out: waited >= limit }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
