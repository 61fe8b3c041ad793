//! Table tests of the switchover step deadlines ([`crate::daemon::deadline`]) and of the retry
//! backoff, through [`decide`].

use std::time::Duration;

use super::*;
use crate::daemon::deadline::Resolve;

const STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// Timers `past` after the record's current step became current.
fn at(sw: &SwitchoverRecord, past: Duration, change: impl FnOnce(&mut Timers)) -> Timers {
    timers_with(|t| {
        t.limits.step_timeout = STEP_TIMEOUT;
        t.now = sw.current_since() + past;
        change(t);
    })
}

fn late(sw: &SwitchoverRecord) -> Timers {
    at(sw, STEP_TIMEOUT, |_| {})
}

fn deadline(step: Step, resolve: Resolve) -> Action {
    Action::Switchover(SwitchoverMove::Deadline { step, waited: STEP_TIMEOUT, resolve })
}

fn mv(m: SwitchoverMove) -> Action {
    Action::Switchover(m)
}

fn silent(t: &mut Timers) {
    t.record_silent_for = Duration::from_millis(LEASE_MS);
}

#[test]
fn before_the_lease_moved_the_old_holder_rolls_back_at_the_deadline() {
    // The target died after the fence: its catch-up never comes.
    let fenced = switchover(&[Step::Intent, Step::Drain, Step::Fence], None);
    let a = || with_switchover(obs("a", record(Some("a"), Some("b")), Some(down()), down()), &fenced);
    let b = || with_switchover(healthy_standby(), &fenced);
    let failed = switchover(&[Step::Intent, Step::Drain], Some((Step::Fence, StepOutcome::Failed("boom".into()))));
    let no_failover = |t: &mut Timers| {
        silent(t);
        t.limits.auto_failover = false;
    };
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        (
            "old holder, before the deadline: waits",
            a(),
            at(&fenced, STEP_TIMEOUT / 2, |_| {}),
            mv(SwitchoverMove::Wait),
        ),
        ("old holder, at the deadline: rolls back", a(), late(&fenced), deadline(Step::CatchUp, Resolve::RollBack)),
        (
            "target alive but late: does its step (the old holder's roll-back wins the record)",
            b(),
            late(&fenced),
            mv(SwitchoverMove::Perform(Step::CatchUp)),
        ),
        (
            "target, old holder silent, no automatic failover: gives up",
            b(),
            at(&fenced, STEP_TIMEOUT, no_failover),
            deadline(Step::CatchUp, Resolve::Abandon),
        ),
        (
            "a failed step rolls back with its own reason, deadline or not",
            with_switchover(healthy_holder(), &failed),
            late(&failed),
            mv(SwitchoverMove::RollBack),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
}

#[test]
fn a_released_lease_nobody_recorded_or_took_is_resolved_by_the_survivor() {
    // The old holder released and died before recording `move_lease`.
    let caught_up = switchover(&BEFORE_MOVE, None);
    let unheld = |me: &str, local: Observed| obs(me, record(None, None), Some(local), down());
    // The target died after `move_lease`: it never took the lease.
    let mut moved = BEFORE_MOVE.to_vec();
    moved.push(Step::MoveLease);
    let released = switchover(&moved, None);
    let mut taken_back = record(Some("a"), None);
    taken_back.epoch = 52;
    // A release that failed may still commit: the lease is moving, no roll-back.
    let release_failed = switchover(&BEFORE_MOVE, Some((Step::MoveLease, StepOutcome::Failed("unknown".into()))));
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        (
            "target standby, release not recorded, before the deadline: waits",
            with_switchover(unheld("b", standby()), &caught_up),
            at(&caught_up, STEP_TIMEOUT / 2, |_| {}),
            mv(SwitchoverMove::Wait),
        ),
        (
            "target standby, release not recorded: takes over",
            with_switchover(unheld("b", standby()), &caught_up),
            late(&caught_up),
            deadline(Step::MoveLease, Resolve::TakeOver),
        ),
        (
            "target down: cannot take over",
            with_switchover(unheld("b", down()), &caught_up),
            late(&caught_up),
            mv(SwitchoverMove::Wait),
        ),
        (
            "old holder back: records its own release",
            with_switchover(unheld("a", down()), &caught_up),
            late(&caught_up),
            mv(SwitchoverMove::Perform(Step::MoveLease)),
        ),
        (
            "old holder, target never took the lease: takes it back",
            with_switchover(unheld("a", down()), &released),
            late(&released),
            deadline(Step::Promote, Resolve::Resume),
        ),
        (
            "old holder, lease taken back, record not stored yet: again",
            with_switchover(obs("a", taken_back, Some(primary(None)), down()), &released),
            late(&released),
            deadline(Step::Promote, Resolve::Resume),
        ),
        (
            "target back before anyone acted: promotes",
            with_switchover(unheld("b", standby()), &released),
            late(&released),
            mv(SwitchoverMove::Perform(Step::Promote)),
        ),
        (
            "old holder whose release failed: retries it, no roll-back",
            with_switchover(obs("a", record(Some("a"), Some("b")), Some(down()), standby()), &release_failed),
            late(&release_failed),
            mv(SwitchoverMove::Perform(Step::MoveLease)),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
}

#[test]
fn after_the_move_the_live_holder_retries_with_backoff_and_a_dead_one_is_given_up() {
    let mut moved = BEFORE_MOVE.to_vec();
    moved.extend([Step::MoveLease, Step::Promote]);
    let dns_failing = switchover(&moved, Some((Step::Dns, StepOutcome::Failed("PDM down".into()))));
    let b_holds = || with_switchover(obs("b", record(Some("b"), None), Some(primary(None)), down()), &dns_failing);
    let a_waits = || with_switchover(obs("a", record(Some("b"), None), Some(down()), primary(None)), &dns_failing);
    let id = dns_failing.id;
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        ("holder, retry due: tries again", b_holds(), late(&dns_failing), mv(SwitchoverMove::Perform(Step::Dns))),
        (
            "holder, retry not due: backs off",
            b_holds(),
            at(&dns_failing, STEP_TIMEOUT, |t| t.retry_in = Some((id, Step::Dns, Duration::from_secs(3)))),
            mv(SwitchoverMove::Backoff(Step::Dns)),
        ),
        (
            "holder, pause of another step: tries",
            b_holds(),
            at(&dns_failing, Duration::ZERO, |t| t.retry_in = Some((id, Step::Promote, Duration::from_secs(3)))),
            mv(SwitchoverMove::Perform(Step::Dns)),
        ),
        (
            "holder, pause over: tries",
            b_holds(),
            at(&dns_failing, Duration::ZERO, |t| t.retry_in = Some((id, Step::Dns, Duration::ZERO))),
            mv(SwitchoverMove::Perform(Step::Dns)),
        ),
        ("old region, holder alive: waits", a_waits(), late(&dns_failing), mv(SwitchoverMove::Wait)),
        (
            "old region, holder silent past the deadline: gives up",
            a_waits(),
            at(&dns_failing, STEP_TIMEOUT, silent),
            deadline(Step::Dns, Resolve::Abandon),
        ),
        (
            "old region, holder silent before the deadline: waits",
            a_waits(),
            at(&dns_failing, STEP_TIMEOUT / 2, silent),
            mv(SwitchoverMove::Wait),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
}

#[test]
fn the_new_holder_waits_step_timeout_for_an_unrecorded_release_and_the_rejoin_timeout_for_a_rejoin() {
    let caught_up = switchover(&BEFORE_MOVE, None);
    let b_holds = || with_switchover(obs("b", record(Some("b"), None), Some(primary(None)), down()), &caught_up);
    let waited =
        |d: Duration| at(&caught_up, Duration::ZERO, |t| t.waiting_on_old = Some((caught_up.id, Step::MoveLease, d)));
    assert_eq!(
        decide(&b_holds(), &waited(STEP_TIMEOUT / 2)),
        mv(SwitchoverMove::WaitOnOld { step: Step::MoveLease, timed_out: false })
    );
    assert_eq!(
        decide(&b_holds(), &waited(STEP_TIMEOUT)),
        mv(SwitchoverMove::WaitOnOld { step: Step::MoveLease, timed_out: true })
    );
}
