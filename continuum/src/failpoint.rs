//! Failpoints: named edges of the daemon's state machine at which an armed process dies at once,
//! or steps that fail once.
//!
//! Chaos tests arm them through the config list `failpoints` or the environment variable
//! `CONTINUUM_FAILPOINTS=name[,name..]`. A `before_<step>` / `after_<step>` / `startup` hit calls
//! `_exit`: no destructors, no flushes, no graceful shutdown, exactly like a crash between two
//! steps (except that the audit log, which is fsynced per record, keeps what was written before).
//! `fail_<step>` makes the step report a failure instead of running, the first time only, so the
//! switchover's roll-back (before the lease moved) or roll-forward retry (after) is exercised.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use crate::record::Step;

/// Environment variable naming the failpoints to arm.
pub const ENV: &str = "CONTINUUM_FAILPOINTS";

/// Exit status of a process killed by a failpoint; distinct from every status the daemon uses.
pub const EXIT_CODE: i32 = 86;

/// One place the process can be told to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failpoint {
    /// The daemon has opened its audit log and bound its API, and is about to serve.
    Startup,
    Before(Step),
    After(Step),
    /// The step fails (once) without being performed.
    Fail(Step),
}

impl fmt::Display for Failpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failpoint::Startup => f.write_str("startup"),
            Failpoint::Before(step) => write!(f, "before_{step}"),
            Failpoint::After(step) => write!(f, "after_{step}"),
            Failpoint::Fail(step) => write!(f, "fail_{step}"),
        }
    }
}

impl FromStr for Failpoint {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if name == "startup" {
            return Ok(Failpoint::Startup);
        }
        let step_named = |s: &str| Step::ALL.into_iter().find(|step| step.as_str() == s);
        let parsed = if let Some(rest) = name.strip_prefix("before_") {
            step_named(rest).map(Failpoint::Before)
        } else if let Some(rest) = name.strip_prefix("after_") {
            step_named(rest).map(Failpoint::After)
        } else if let Some(rest) = name.strip_prefix("fail_") {
            step_named(rest).map(Failpoint::Fail)
        } else {
            None
        };
        parsed.ok_or_else(|| {
            format!("unknown failpoint {name:?}; known: startup, before_<step>, after_<step>, fail_<step> with step one of {}", {
                let steps: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
                steps.join(", ")
            })
        })
    }
}

static ARMED: OnceLock<HashSet<Failpoint>> = OnceLock::new();
/// `fail_<step>` failpoints that already fired (they fire once per process).
static FIRED: std::sync::Mutex<Vec<Step>> = std::sync::Mutex::new(Vec::new());

/// Arms the failpoints named in `configured` and in [`ENV`]. Call once at start; later calls are
/// ignored (the set is fixed for the life of the process, so a hit needs no lock).
pub fn arm(configured: &[String]) -> Result<(), String> {
    let from_env = std::env::var(ENV).unwrap_or_default();
    let mut armed = HashSet::new();
    for name in configured.iter().map(String::as_str).chain(from_env.split(',')).filter(|n| !n.trim().is_empty()) {
        armed.insert(name.parse::<Failpoint>()?);
    }
    if !armed.is_empty() {
        let names: Vec<String> = armed.iter().map(ToString::to_string).collect();
        tracing::warn!(failpoints = %names.join(","), "failpoints armed: this process will exit abruptly at them");
    }
    let _ = ARMED.set(armed);
    Ok(())
}

/// Whether `step` must fail now: its `fail_<step>` failpoint is armed and has not fired yet.
pub fn fails(step: Step) -> bool {
    if !ARMED.get().is_some_and(|armed| armed.contains(&Failpoint::Fail(step))) {
        return false;
    }
    let mut fired = FIRED.lock().expect("failpoint lock poisoned");
    if fired.contains(&step) {
        return false;
    }
    fired.push(step);
    tracing::warn!(%step, "failpoint fail_{step} hit: the step reports a failure");
    true
}

/// Dies on the spot if `point` is armed.
pub fn hit(point: Failpoint) {
    if ARMED.get().is_some_and(|armed| armed.contains(&point)) {
        // A raw write: stderr's buffer must not matter, and nothing else may run.
        let message = format!("failpoint {point} hit: exiting with status {EXIT_CODE}\n");
        // SAFETY: write(2) on fd 2 with a valid buffer, then _exit(2), which never returns and
        // skips destructors and atexit handlers on purpose.
        unsafe {
            libc::write(2, message.as_ptr().cast(), message.len());
            libc::_exit(EXIT_CODE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for step in Step::ALL {
            for point in [Failpoint::Before(step), Failpoint::After(step), Failpoint::Fail(step)] {
                assert_eq!(point.to_string().parse::<Failpoint>(), Ok(point));
            }
        }
        assert_eq!("startup".parse::<Failpoint>(), Ok(Failpoint::Startup));
        assert!("before_lunch".parse::<Failpoint>().unwrap_err().contains("catch_up"));
    }

    #[test]
    fn only_steps_before_the_lease_moves_roll_back() {
        let back: Vec<Step> = Step::ALL.into_iter().filter(|s| s.rolls_back()).collect();
        assert_eq!(back, [Step::Intent, Step::Drain, Step::Fence, Step::CatchUp]);
    }
}
