//! Table tests of [`decide`]: one row per branch.

use std::time::{Duration, SystemTime};

use cnpg_pair::{
    EligibilityPolicy, Lsn, Observed, PrimaryObservation, ReplicaStatus, StandbyObservation, SyncState, WalPosition,
};
use lease::LeaseRecord;

use super::*;
use crate::config::{Durability, Takeover};
use crate::record::{Step, SwitchoverRecord};
use crate::switchover::{StepOutcome, begin, finish, new_record};

const MB: u64 = 1024 * 1024;
const LEASE_MS: u64 = 2000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn position() -> WalPosition {
    WalPosition { system_id: 7, timeline: 3, lsn: Lsn(100 * MB) }
}

/// A primary; `replica`: the standby it lists (name, state, sync state).
fn primary(replica: Option<(&str, &str, SyncState)>) -> Observed {
    let lsn = Some(position().lsn);
    Observed::Primary(PrimaryObservation {
        observed_at: now(),
        position: position(),
        replicas: replica
            .into_iter()
            .map(|(name, state, sync)| ReplicaStatus {
                application_name: name.into(),
                state: state.into(),
                sync_state: Some(sync),
                sent_lsn: lsn,
                write_lsn: lsn,
                flush_lsn: lsn,
                replay_lsn: lsn,
                write_lag: None,
                flush_lag: None,
                replay_lag: None,
                reply_age: Some(Duration::from_millis(100)),
            })
            .collect(),
    })
}

fn standby() -> Observed {
    Observed::Standby(StandbyObservation {
        observed_at: now(),
        system_id: 7,
        timeline: 3,
        receive_lsn: Some(position().lsn),
        replay_lsn: Some(position().lsn),
        replay_paused: false,
        streaming: true,
        last_message_age: Some(Duration::from_millis(100)),
    })
}

fn down() -> Observed {
    Observed::Unreachable { observed_at: now(), error: "connection refused".into() }
}

fn record(holder: Option<&str>, sync_standby: Option<&str>) -> LeaseRecord {
    LeaseRecord {
        pair: "app".into(),
        holder: holder.map(str::to_string),
        epoch: 40,
        duration_ms: LEASE_MS,
        sync_standby: sync_standby.map(str::to_string),
        ..Default::default()
    }
}

/// Region `me` sees `local` and `peer`; the peer is the other of a and b.
fn obs(me: &str, record: LeaseRecord, local: Option<Observed>, peer: Observed) -> Observation {
    let other = if me == "a" { "b" } else { "a" };
    let peer_as_primary = matches!(peer, Observed::Primary(_)).then(|| peer.clone());
    Observation {
        region: me.into(),
        peer: other.into(),
        record,
        switchover: Ok(None),
        local,
        peer_server: Some(peer),
        peer_as_primary,
    }
}

fn with_switchover(mut o: Observation, sw: &SwitchoverRecord) -> Observation {
    o.record.switchover = Some(serde_json::to_value(sw).unwrap());
    o.switchover = Ok(Some(sw.clone()));
    o
}

fn timers() -> Timers {
    Timers {
        now: now(),
        record_silent_for: Duration::ZERO,
        local_down_for: Duration::ZERO,
        standby_streaming_for: Duration::ZERO,
        standby_missing_for: Duration::ZERO,
        since_last_failover: None,
        waiting_on_old: None,
        retry_in: None,
        gave_up_epoch: None,
        have_handle: true,
        limits: Limits {
            lease_duration: Duration::from_millis(LEASE_MS),
            durability: Durability::Preferred,
            auto_failover: true,
            failover_debounce: Duration::from_secs(60),
            primary_down_timeout: Duration::from_secs(15),
            switchover_rejoin_timeout: Duration::from_secs(60),
            step_timeout: Duration::from_secs(90),
            eligibility: EligibilityPolicy::default(),
            takeover: Takeover::LeaseExpiry,
            suspect_window: Duration::from_millis(600),
            wal_stream_timeout: Duration::from_secs(1),
        },
    }
}

fn timers_with(change: impl FnOnce(&mut Timers)) -> Timers {
    let mut t = timers();
    change(&mut t);
    t
}

fn hold(duty: Duty) -> Action {
    Action::Hold(Hold { resumed: false, reacquire: false, duty })
}

fn stay(stay: Stay) -> Action {
    Action::Follow(Follow::Standby(FailoverCheck { eligible: Ok(()), verdict: Err(stay) }))
}

/// A switchover a → b with `done` performed and the next step ending `last` (if given).
fn switchover(done: &[Step], last: Option<(Step, StepOutcome)>) -> SwitchoverRecord {
    let mut sw = new_record("app", "a", "b", "drill", "olivia", 40);
    for &step in done {
        begin(&mut sw, step).unwrap();
        finish(&mut sw, step, StepOutcome::Done, 1);
    }
    if let Some((step, outcome)) = last {
        begin(&mut sw, step).unwrap();
        finish(&mut sw, step, outcome, 1);
    }
    sw
}

const BEFORE_MOVE: [Step; 4] = [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp];
const THROUGH_DNS: [Step; 7] =
    [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease, Step::Promote, Step::Dns];

/// a holds the lease with b streaming synchronously and recorded.
fn healthy_holder() -> Observation {
    obs("a", record(Some("a"), Some("b")), Some(primary(Some(("b", "streaming", SyncState::Sync)))), standby())
}

/// b, the recorded synchronous standby of a.
fn healthy_standby() -> Observation {
    obs("b", record(Some("a"), Some("b")), Some(standby()), primary(Some(("b", "streaming", SyncState::Sync))))
}

#[test]
fn unobserved_unreadable_and_unheld() {
    let mut unreadable = healthy_holder();
    unreadable.switchover = Err("the stored switchover record does not decode: bad".into());
    let rows: Vec<(&str, Observation, Action)> = vec![
        ("local not observed yet", obs("a", record(Some("a"), None), None, standby()), Action::Unobserved),
        (
            "undecodable switchover record",
            unreadable,
            Action::RecordUnreadable("the stored switchover record does not decode: bad".into()),
        ),
        ("unheld, local primary", obs("a", record(None, None), Some(primary(None)), standby()), Action::Bootstrap),
        ("unheld, local standby", obs("b", record(None, None), Some(standby()), primary(None)), Action::Idle),
        ("unheld, local down", obs("a", record(None, None), Some(down()), down()), Action::Idle),
    ];
    for (name, o, expected) in rows {
        assert_eq!(decide(&o, &timers()), expected, "{name}");
    }
}

#[test]
fn holder_branches() {
    let not_recorded =
        || obs("a", record(Some("a"), None), Some(primary(Some(("b", "streaming", SyncState::Async)))), standby());
    let standby_gone = || obs("a", record(Some("a"), Some("b")), Some(primary(None)), down());
    let half = Duration::from_millis(LEASE_MS / 2);
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        ("healthy: keep", healthy_holder(), timers(), hold(Duty::Sync(SyncChange::Keep))),
        (
            "no handle: renew first",
            healthy_holder(),
            timers_with(|t| t.have_handle = false),
            Action::Hold(Hold { resumed: false, reacquire: true, duty: Duty::Sync(SyncChange::Keep) }),
        ),
        ("standby back, not settled", not_recorded(), timers(), hold(Duty::Sync(SyncChange::Keep))),
        (
            "standby settled: enable",
            not_recorded(),
            timers_with(|t| t.standby_streaming_for = half),
            hold(Duty::Sync(SyncChange::Enable)),
        ),
        (
            "recorded but async: repair",
            obs(
                "a",
                record(Some("a"), Some("b")),
                Some(primary(Some(("b", "streaming", SyncState::Async)))),
                standby(),
            ),
            timers(),
            hold(Duty::Sync(SyncChange::Enable)),
        ),
        (
            "replica listed but not streaming counts as gone",
            obs("a", record(Some("a"), Some("b")), Some(primary(Some(("b", "catchup", SyncState::Async)))), standby()),
            timers_with(|t| t.standby_missing_for = half),
            hold(Duty::Sync(SyncChange::Drop)),
        ),
        (
            "standby gone for half a lease: drop",
            standby_gone(),
            timers_with(|t| t.standby_missing_for = half),
            hold(Duty::Sync(SyncChange::Drop)),
        ),
        ("standby gone briefly: keep", standby_gone(), timers(), hold(Duty::Sync(SyncChange::Keep))),
        (
            "durability required never drops",
            standby_gone(),
            timers_with(|t| {
                t.standby_missing_for = half;
                t.limits.durability = Durability::Required;
            }),
            hold(Duty::Sync(SyncChange::Keep)),
        ),
        (
            "nothing recorded to drop",
            obs("a", record(Some("a"), None), Some(primary(None)), down()),
            timers_with(|t| t.standby_missing_for = half),
            hold(Duty::Sync(SyncChange::Keep)),
        ),
        (
            "holder with a standby server: finish promotion",
            obs("a", record(Some("a"), None), Some(standby()), down()),
            timers(),
            hold(Duty::FinishPromotion),
        ),
        (
            "server down: restart",
            obs("a", record(Some("a"), Some("b")), Some(down()), standby()),
            timers(),
            hold(Duty::Restart),
        ),
        (
            "server down too long: give up",
            obs("a", record(Some("a"), Some("b")), Some(down()), standby()),
            timers_with(|t| t.local_down_for = Duration::from_secs(15)),
            hold(Duty::GiveUp { down_for: Duration::from_secs(15) }),
        ),
        (
            "given up, still down: let it expire",
            obs("a", record(Some("a"), Some("b")), Some(down()), standby()),
            timers_with(|t| t.gave_up_epoch = Some(40)),
            Action::Hold(Hold { resumed: false, reacquire: false, duty: Duty::LetExpire }),
        ),
        (
            "given up, server back: resume",
            healthy_holder(),
            timers_with(|t| {
                t.gave_up_epoch = Some(40);
                t.have_handle = false;
            }),
            Action::Hold(Hold { resumed: true, reacquire: true, duty: Duty::Sync(SyncChange::Keep) }),
        ),
        (
            "an older epoch given up does not count",
            obs("a", record(Some("a"), Some("b")), Some(down()), standby()),
            timers_with(|t| t.gave_up_epoch = Some(39)),
            hold(Duty::Restart),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
}

#[test]
fn standby_and_failover_branches() {
    let silent = Duration::from_millis(LEASE_MS);
    let go = |t: &mut Timers| t.record_silent_for = silent;
    let mut peer_gone_after_primary = healthy_standby();
    peer_gone_after_primary.peer_server = Some(down());
    let not_recorded =
        obs("b", record(Some("a"), None), Some(standby()), primary(Some(("b", "streaming", SyncState::Sync))));
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        (
            "primary without the lease: fence",
            obs("b", record(Some("a"), Some("b")), Some(primary(None)), primary(None)),
            timers(),
            Action::Follow(Follow::FenceRoguePrimary),
        ),
        (
            "down, peer primary: rejoin",
            obs("b", record(Some("a"), None), Some(down()), primary(None)),
            timers(),
            Action::Follow(Follow::Rejoin),
        ),
        (
            "down, no primary: wait",
            obs("b", record(Some("a"), None), Some(down()), down()),
            timers(),
            Action::Follow(Follow::WaitForPrimary),
        ),
        ("holder still renewing: stay", healthy_standby(), timers(), stay(Stay::HolderNotSilent)),
        (
            "holder silent a whole lease: fail over",
            healthy_standby(),
            timers_with(go),
            Action::Follow(Follow::Standby(FailoverCheck { eligible: Ok(()), verdict: Ok(silent) })),
        ),
        (
            "peer unreachable now: eligibility uses its last primary observation",
            peer_gone_after_primary,
            timers_with(go),
            Action::Follow(Follow::Standby(FailoverCheck { eligible: Ok(()), verdict: Ok(silent) })),
        ),
        (
            "automatic failover off",
            healthy_standby(),
            timers_with(|t| {
                go(t);
                t.limits.auto_failover = false;
            }),
            stay(Stay::AutoFailoverOff),
        ),
        (
            "debounced",
            healthy_standby(),
            timers_with(|t| {
                go(t);
                t.since_last_failover = Some(Duration::from_secs(10));
            }),
            stay(Stay::Debounced),
        ),
        (
            "debounce over",
            healthy_standby(),
            timers_with(|t| {
                go(t);
                t.since_last_failover = Some(Duration::from_secs(61));
            }),
            Action::Follow(Follow::Standby(FailoverCheck { eligible: Ok(()), verdict: Ok(silent) })),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
    // Not the recorded synchronous standby: never promotable.
    match decide(&not_recorded, &timers_with(go)) {
        Action::Follow(Follow::Standby(FailoverCheck { eligible: Err(why), verdict: Err(Stay::NotEligible) })) => {
            assert!(why.contains("sync"), "{why}");
        }
        other => panic!("not recorded: {other:?}"),
    }
}

/// A standby of b whose WAL receiver is `streaming` (last message `age` ago), having received
/// `received` and replayed `replayed` (MB).
fn standby_with(streaming: bool, age: Option<u64>, received: u64, replayed: u64) -> Observed {
    Observed::Standby(StandbyObservation {
        observed_at: now(),
        system_id: 7,
        timeline: 3,
        receive_lsn: Some(Lsn(received * MB)),
        replay_lsn: Some(Lsn(replayed * MB)),
        replay_paused: false,
        streaming,
        last_message_age: age.map(Duration::from_millis),
    })
}

#[test]
fn sync_fenced_claim_branches() {
    let sync_fenced = |silent_ms: u64| {
        timers_with(move |t| {
            t.limits.takeover = Takeover::SyncFenced;
            t.record_silent_for = Duration::from_millis(silent_ms);
        })
    };
    let peer = || primary(Some(("b", "streaming", SyncState::Sync)));
    let seen = |local: Observed, sync: Option<&str>| {
        let mut o = obs("b", record(Some("a"), sync), Some(local), peer());
        o.record.seq = 17;
        o
    };
    let gone = || standby_with(false, None, 100, 100);
    // b received everything but replays 1 MB behind (the primary measured the replay lag).
    let mut lagging = seen(standby_with(false, None, 100, 99), Some("b"));
    for p in [&mut lagging.peer_server, &mut lagging.peer_as_primary] {
        if let Some(Observed::Primary(p)) = p {
            p.replicas[0].replay_lag = Some(Duration::from_millis(20));
        }
    }
    let claim = |ms: u64| Action::Follow(Follow::Claim { silent_for: Duration::from_millis(ms), seq: 17 });
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        (
            "silent past the suspect window, stream gone, replayed: claim",
            seen(gone(), Some("b")),
            sync_fenced(700),
            claim(700),
        ),
        (
            "stream still up (a message 100 ms ago): stay",
            seen(standby_with(true, Some(100), 100, 100), Some("b")),
            sync_fenced(700),
            stay(Stay::HolderNotSilent),
        ),
        (
            "streaming but silent past the WAL stream timeout: claim",
            seen(standby_with(true, Some(1500), 100, 100), Some("b")),
            sync_fenced(700),
            claim(700),
        ),
        (
            "holder silent less than the suspect window: stay",
            seen(gone(), Some("b")),
            sync_fenced(500),
            stay(Stay::HolderNotSilent),
        ),
        ("replay behind what was received: stay", lagging, sync_fenced(700), stay(Stay::HolderNotSilent)),
        (
            "lease-expiry pairs never claim",
            seen(gone(), Some("b")),
            timers_with(|t| t.record_silent_for = Duration::from_millis(700)),
            stay(Stay::HolderNotSilent),
        ),
        (
            "silent a whole lease: the ordinary failover, not a claim",
            seen(gone(), Some("b")),
            sync_fenced(LEASE_MS),
            Action::Follow(Follow::Standby(FailoverCheck {
                eligible: Ok(()),
                verdict: Ok(Duration::from_millis(LEASE_MS)),
            })),
        ),
        (
            "automatic failover off: no claim either",
            seen(gone(), Some("b")),
            timers_with(|t| {
                t.limits.takeover = Takeover::SyncFenced;
                t.limits.auto_failover = false;
                t.record_silent_for = Duration::from_millis(700);
            }),
            stay(Stay::AutoFailoverOff),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
    // Not the recorded synchronous standby: not eligible, never a claim.
    match decide(&seen(gone(), None), &sync_fenced(700)) {
        Action::Follow(Follow::Standby(FailoverCheck { eligible: Err(_), verdict: Err(Stay::NotEligible) })) => {}
        other => panic!("not recorded: {other:?}"),
    }
    // Another region recorded: the same.
    match decide(&seen(gone(), Some("c")), &sync_fenced(700)) {
        Action::Follow(Follow::Standby(FailoverCheck { eligible: Err(_), verdict: Err(Stay::NotEligible) })) => {}
        other => panic!("other region recorded: {other:?}"),
    }
}

#[test]
fn switchover_branches() {
    let fresh = switchover(&[], None);
    let failed_fence =
        switchover(&[Step::Intent, Step::Drain], Some((Step::Fence, StepOutcome::Failed("boom".into()))));
    let mut after_move = BEFORE_MOVE.to_vec();
    after_move.push(Step::MoveLease);
    let failed_promote = switchover(&after_move, Some((Step::Promote, StepOutcome::Failed("timeout".into()))));
    let waiting_for_rejoin = switchover(&THROUGH_DNS, None);
    let mut all_done = switchover(&THROUGH_DNS, None);
    for step in [Step::Rejoin, Step::RestoreSync] {
        all_done.step_mut(step).state = crate::record::StepState::Done;
    }
    let holder_a =
        || obs("a", record(Some("a"), Some("b")), Some(primary(Some(("b", "streaming", SyncState::Sync)))), standby());
    let b_holds = || obs("b", record(Some("b"), None), Some(primary(None)), down());
    let rows: Vec<(&str, Observation, Timers, Action)> = vec![
        (
            "old holder performs the intent",
            with_switchover(holder_a(), &fresh),
            timers(),
            Action::Switchover(SwitchoverMove::Perform(Step::Intent)),
        ),
        (
            "target waits",
            with_switchover(healthy_standby(), &fresh),
            timers(),
            Action::Switchover(SwitchoverMove::Wait),
        ),
        (
            "failure before the move: old holder rolls back",
            with_switchover(holder_a(), &failed_fence),
            timers(),
            Action::Switchover(SwitchoverMove::RollBack),
        ),
        (
            "failure before the move: target waits",
            with_switchover(healthy_standby(), &failed_fence),
            timers(),
            Action::Switchover(SwitchoverMove::Wait),
        ),
        (
            "failure after the move: target retries",
            with_switchover(b_holds(), &failed_promote),
            timers(),
            Action::Switchover(SwitchoverMove::Perform(Step::Promote)),
        ),
        (
            "new holder waits for the old region's rejoin",
            with_switchover(b_holds(), &waiting_for_rejoin),
            timers(),
            Action::Switchover(SwitchoverMove::WaitOnOld { step: Step::Rejoin, timed_out: false }),
        ),
        (
            "rejoin timeout passed: complete without it",
            with_switchover(b_holds(), &waiting_for_rejoin),
            timers_with(|t| t.waiting_on_old = Some((waiting_for_rejoin.id, Step::Rejoin, Duration::from_secs(60)))),
            Action::Switchover(SwitchoverMove::WaitOnOld { step: Step::Rejoin, timed_out: true }),
        ),
        (
            "waited on another step: the wait starts over",
            with_switchover(b_holds(), &waiting_for_rejoin),
            timers_with(|t| {
                t.waiting_on_old = Some((waiting_for_rejoin.id, Step::MoveLease, Duration::from_secs(600)))
            }),
            Action::Switchover(SwitchoverMove::WaitOnOld { step: Step::Rejoin, timed_out: false }),
        ),
        (
            "old region performs its rejoin",
            with_switchover(obs("a", record(Some("b"), None), Some(down()), primary(None)), &waiting_for_rejoin),
            timers(),
            Action::Switchover(SwitchoverMove::Perform(Step::Rejoin)),
        ),
        (
            "every step done: finished",
            with_switchover(b_holds(), &all_done),
            timers(),
            Action::Switchover(SwitchoverMove::Finished),
        ),
    ];
    for (name, o, t, expected) in rows {
        assert_eq!(decide(&o, &t), expected, "{name}");
    }
}

#[test]
fn a_silent_old_holder_is_superseded_by_failover_only_before_the_lease_moved() {
    let fenced = switchover(&[Step::Intent, Step::Drain], None);
    let silent = |t: &mut Timers| t.record_silent_for = Duration::from_millis(LEASE_MS);
    let check = FailoverCheck { eligible: Ok(()), verdict: Ok(Duration::from_millis(LEASE_MS)) };
    assert_eq!(
        decide(&with_switchover(healthy_standby(), &fenced), &timers_with(silent)),
        Action::Switchover(SwitchoverMove::Supersede { id: fenced.id, check: Some(check) })
    );
    let mut b_down = healthy_standby();
    b_down.local = Some(down());
    assert_eq!(
        decide(&with_switchover(b_down, &fenced), &timers_with(silent)),
        Action::Switchover(SwitchoverMove::Supersede { id: fenced.id, check: None }),
        "not a standby: nothing to promote"
    );
    let off = timers_with(|t| {
        silent(t);
        t.limits.auto_failover = false;
    });
    assert_eq!(decide(&with_switchover(healthy_standby(), &fenced), &off), Action::Switchover(SwitchoverMove::Wait));
    assert_eq!(
        decide(&with_switchover(healthy_standby(), &fenced), &timers()),
        Action::Switchover(SwitchoverMove::Wait),
        "holder not silent"
    );
    let mut moved_steps = BEFORE_MOVE.to_vec();
    moved_steps.push(Step::MoveLease);
    let moved = switchover(&moved_steps, None);
    let unheld = obs("b", record(None, Some("b")), Some(standby()), primary(None));
    assert_eq!(
        decide(&with_switchover(unheld, &moved), &timers_with(silent)),
        Action::Switchover(SwitchoverMove::Perform(Step::Promote)),
        "after the move the switchover goes on"
    );
}

#[test]
fn a_finished_switchover_leaves_the_roles_to_act() {
    let mut done = switchover(&[Step::Intent, Step::Drain], Some((Step::Fence, StepOutcome::Failed("boom".into()))));
    crate::switchover::rolled_back(&mut done);
    assert_eq!(decide(&with_switchover(healthy_holder(), &done), &timers()), hold(Duty::Sync(SyncChange::Keep)));
}

#[path = "decide_deadline_tests.rs"]
mod deadline;
