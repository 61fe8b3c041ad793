//! Tests of the switchover state machine and its step runner.
use super::*;

/// Drives a record to the end, each step performed by whichever region `next_for` names.
fn drive(record: &mut SwitchoverRecord, fail_at: Option<Step>) {
    for _ in 0..50 {
        let (a, b) = (next_for(record, "a"), next_for(record, "b"));
        match (a, b) {
            (Next::Finished, Next::Finished) => return,
            (Next::RollBack, Next::Wait) => rolled_back(record),
            (Next::Perform(step), Next::Wait) | (Next::Wait, Next::Perform(step)) => {
                begin(record, step).unwrap();
                let outcome =
                    if fail_at == Some(step) { StepOutcome::Failed("boom".into()) } else { StepOutcome::Done };
                finish(record, step, outcome, 1);
            }
            other => panic!("both or neither region acting: {other:?}"),
        }
    }
    panic!("switchover did not finish");
}

#[test]
fn each_step_is_performed_by_one_region_in_order() {
    let mut record = new_record("app", "a", "b", "drill", "olivia", 7);
    assert_eq!(next_for(&record, "a"), Next::Perform(Step::Intent));
    assert_eq!(next_for(&record, "b"), Next::Wait);
    drive(&mut record, None);
    assert_eq!(record.state, SwitchoverState::Succeeded);
    // Only the target's real grant sets it (see the step runner test).
    assert_eq!(record.epoch_after, None);
    assert!(record.steps.iter().all(|s| s.state == StepState::Done));
}

#[test]
fn failure_before_the_lease_moves_rolls_back() {
    for step in [Step::Drain, Step::Fence, Step::CatchUp] {
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        drive(&mut record, Some(step));
        assert_eq!(record.state, SwitchoverState::RolledBack, "{step}");
        assert_eq!(record.epoch_after, None, "{step}: the lease must not have moved");
        assert!(record.error.as_deref().unwrap().starts_with(step.as_str()));
    }
}

#[test]
fn failure_after_the_lease_moves_is_retried_forward() {
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    begin(&mut record, Step::Promote).unwrap();
    finish(&mut record, Step::Promote, StepOutcome::Failed("timeout".into()), 1);
    assert_eq!(next_for(&record, "b"), Next::Perform(Step::Promote));
    assert_eq!(next_for(&record, "a"), Next::Wait);
    drive(&mut record, None);
    assert_eq!((record.state, record.error.as_deref()), (SwitchoverState::Succeeded, None));
}

#[test]
fn a_crash_mid_step_resumes_that_step_and_stale_copies_cannot_skip_ahead() {
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    begin(&mut record, Step::Intent).unwrap();
    // The performer died while running: the step is offered again to the same region.
    assert_eq!(next_for(&record, "a"), Next::Perform(Step::Intent));
    assert!(matches!(begin(&mut record, Step::Fence), Err(Error::Conflict { .. })));
}

#[tokio::test]
async fn step_runner_records_metrics_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let metrics = Metrics::new();
    let (audit, tasks) = Audit::open(&crate::config::AuditConfig::local(&log), "a", metrics.clone()).unwrap();
    let runner = StepRunner { metrics: metrics.clone(), audit };
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    runner.run(&mut record, Step::Intent, || async { StepOutcome::Done }).await.unwrap();
    let skipped = StepOutcome::Skipped("no HTTPRoute configured".into());
    runner.run(&mut record, Step::Drain, || async { skipped }).await.unwrap();
    runner.run(&mut record, Step::Fence, || async { StepOutcome::Done }).await.unwrap();
    // Out of order: refused before the action runs.
    let refused = runner
        .run(&mut record, Step::Promote, || async {
            panic!("must not run");
            #[allow(unreachable_code)]
            StepOutcome::Done
        })
        .await;
    assert!(matches!(refused, Err(Error::Conflict { .. })));
    drop(runner);
    tasks.shutdown().await;

    let steps: Vec<(String, String)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["detail"]["step"].as_str().unwrap().to_string(), v["detail"]["outcome"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = [("intent", "done"), ("drain", "skipped"), ("fence", "done")];
    assert_eq!(steps, expected.map(|(a, b)| (a.to_string(), b.to_string())));
    let text = metrics.encode().unwrap();
    assert!(text.contains("continuum_switchover_step_duration_seconds_count{step=\"drain\",outcome=\"skipped\"} 1"));
}

#[tokio::test]
async fn the_targets_real_epoch_becomes_epoch_after_and_tags_its_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let metrics = Metrics::new();
    let (audit, tasks) = Audit::open(&crate::config::AuditConfig::local(&log), "a", metrics.clone()).unwrap();
    let runner = StepRunner { metrics, audit };
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp] {
        runner.run(&mut record, step, || async { StepOutcome::Done }).await.unwrap();
    }
    let released = Acted { epoch: Some(7), ..StepOutcome::Done.into() };
    runner.run(&mut record, Step::MoveLease, || async { released }).await.unwrap();
    assert_eq!(record.epoch_after, None, "released, not granted yet");
    // Epochs are raft log indexes: the grant is whatever index it got, not 7 + 1.
    let promoted = Acted { epoch: Some(23), ..StepOutcome::Done.into() };
    runner.run(&mut record, Step::Promote, || async { promoted }).await.unwrap();
    assert_eq!(record.epoch_after, Some(23));
    drop(runner);
    tasks.shutdown().await;
    let epochs: Vec<(String, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["detail"]["step"].as_str().unwrap().to_string(), v["epoch"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(epochs[4], ("move_lease".to_string(), 7));
    assert_eq!(epochs[5], ("promote".to_string(), 23));
}

#[test]
fn an_unsafe_failure_after_the_move_fails_the_switchover_instead_of_retrying() {
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    begin(&mut record, Step::Promote).unwrap();
    finish(&mut record, Step::Promote, StepOutcome::Unsafe("epoch went backwards".into()), 1);
    assert_eq!(record.state, SwitchoverState::Failed);
    assert_eq!(next_for(&record, "b"), Next::Finished);
    // Before the move, unsafe rolls back like any failure.
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    begin(&mut record, Step::Fence).unwrap();
    finish(&mut record, Step::Fence, StepOutcome::Unsafe("timeline".into()), 1);
    assert_eq!(next_for(&record, "a"), Next::RollBack);
}

/// Set in the child process of the failpoint test: where its audit log goes.
const CHILD_LOG_ENV: &str = "CONTINUUM_TEST_FAILPOINT_CHILD_LOG";

#[tokio::test]
async fn armed_failpoint_kills_the_process_between_a_step_and_its_audit_record() {
    if let Some(log) = std::env::var_os(CHILD_LOG_ENV) {
        // Child: arm from the environment and walk the steps until the process dies.
        failpoint::arm(&[]).unwrap();
        let metrics = Metrics::new();
        let (audit, _tasks) = Audit::open(&crate::config::AuditConfig::local(log), "a", metrics.clone()).unwrap();
        let runner = StepRunner { metrics, audit };
        let mut record = new_record("app", "a", "b", "", "olivia", 7);
        for step in Step::ALL {
            runner.run(&mut record, step, || async { StepOutcome::Done }).await.unwrap();
        }
        unreachable!("the failpoint should have ended the process");
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "switchover::tests::armed_failpoint_kills_the_process_between_a_step_and_its_audit_record"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_LOG_ENV, &log)
        .env(failpoint::ENV, "after_fence")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(failpoint::EXIT_CODE), "{stderr}");
    assert!(stderr.contains("failpoint after_fence hit"), "{stderr}");
    // The intent and the drain were recorded; the fence ran but died before its record was written.
    let kinds: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["detail"]["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["intent", "drain"]);
}

#[test]
fn an_abort_fails_the_current_step_so_the_old_holder_rolls_back_and_is_refused_once_the_lease_moves() {
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    assert_eq!(abort(&mut record, "olivia").unwrap(), Step::CatchUp);
    assert_eq!(next_for(&record, "a"), Next::RollBack);
    assert_eq!(next_for(&record, "b"), Next::Wait);
    assert_eq!(record.error.as_deref(), Some("catch_up: aborted by olivia"));
    rolled_back(&mut record);
    let refused = abort(&mut record, "olivia").unwrap_err().to_string();
    assert!(refused.contains("already finished (rolled_back)"), "{refused}");

    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    let before = record.clone();
    let refused = abort(&mut record, "olivia").unwrap_err().to_string();
    assert!(refused.contains("at move_lease") && refused.contains("no longer safe"), "{refused}");
    assert_eq!(record, before, "a refused abort changes nothing");
}

#[test]
fn a_timed_out_step_says_so_in_the_record() {
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    time_out(&mut record, Step::Intent, "b did not answer");
    assert_eq!(record.step(Step::Intent).unwrap().state, StepState::Failed);
    assert_eq!(record.error.as_deref(), Some("step_timeout:intent: b did not answer"));
    give_up(&mut record);
    assert_eq!(record.state, SwitchoverState::Failed);
    assert!(record.finished_at.is_some());
}

#[tokio::test]
async fn retries_that_fail_again_count_attempts_in_the_record_but_write_no_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let metrics = Metrics::new();
    let (audit, tasks) = Audit::open(&crate::config::AuditConfig::local(&log), "b", metrics.clone()).unwrap();
    let runner = StepRunner { metrics, audit };
    let mut record = new_record("app", "a", "b", "", "olivia", 7);
    for step in [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp, Step::MoveLease, Step::Promote] {
        begin(&mut record, step).unwrap();
        finish(&mut record, step, StepOutcome::Done, 1);
    }
    for _ in 0..5 {
        runner.run(&mut record, Step::Dns, || async { StepOutcome::Failed("PDM down".into()) }).await.unwrap();
    }
    runner.run(&mut record, Step::Dns, || async { StepOutcome::Done }).await.unwrap();
    let dns = record.step(Step::Dns).unwrap();
    assert_eq!((dns.state, dns.attempts), (StepState::Done, 6));
    assert!(dns.ended_at.is_some());
    drop(runner);
    tasks.shutdown().await;
    let lines: Vec<(String, u64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["detail"]["outcome"].as_str().unwrap().to_string(), v["detail"]["attempts"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(lines, [("failed".to_string(), 1), ("done".to_string(), 6)], "the first failure and the success");
}
