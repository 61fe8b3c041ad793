//! The fence watchdog (`continuum fence-watchdog`, started by the daemon): a minimal process
//! that holds each pair's lease deadline and stops the local PostgreSQL server when it passes,
//! so that the server never outlives its daemon's right to write (ARCHITECTURE §3).
//!
//! Why a separate process, and not the postmaster as the daemon's child with
//! `PR_SET_PDEATHSIG`: the daemon adopts servers that run already (started by an init system,
//! an operator, a previous daemon or a test), and a parent-death signal cannot be attached to a
//! process one did not fork; it would also stop the server at once on every daemon restart,
//! turning an upgrade into an outage, and it fires on the death of the forking *thread*. Nor
//! PostgreSQL-side enforcement (an extension checking the lease): that needs code loaded into
//! the server and still depends on a clock fed from outside. The watchdog needs neither: the
//! daemon tells it, after every renewal, the `CLOCK_BOOTTIME` instant at which the holder must be
//! fencing (deadline minus the fence lead, the same instant the daemon itself fences at); the
//! clock is system-wide, so the watchdog compares it with its own reading. When the instant
//! passes without a newer one, whether the daemon is alive, hung or dead, the watchdog stops the
//! server ([`cnpg_pair::process::fence_stop`]: immediate shutdown, then SIGKILL of the
//! postmaster's process group) and retries until it is stopped.
//!
//! It runs in its own process group, ignores SIGTERM, SIGINT and SIGHUP (only the lease governs
//! it) and exits once its daemon is gone (stdin at EOF) and nothing is armed. Its armed guards
//! are mirrored to `watchdog-<pid>.json` in its state directory, so a watchdog started by a
//! restarted daemon inherits the guards of its predecessors (killing any that still run):
//! deadlines already promised are kept, and a restart within the lease neither loses the fence
//! nor stops a server that the new daemon goes on renewing.
//!
//! Protocol: one JSON [`Request`] per line on stdin, one [`Reply`] per line on stdout, in order;
//! the first line on stdout is [`Ready`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cnpg_pair::process::{ProcessId, Server};
use lease::Clock as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::{AbortHandle, JoinSet};

use crate::Error;
use crate::backoff::Backoff;

/// What the watchdog enforces for one pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    pub epoch: u64,
    /// `CLOCK_BOOTTIME`, in nanoseconds, at which the server is stopped unless re-armed later.
    pub fence_at_ns: u64,
    pub server: Server,
    /// Deadline of the immediate stop before the postmaster's process group is killed.
    pub stop_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Set (replace) the pair's guard.
    Arm { pair: String, guard: Guard },
    /// Forget the pair's guard: its server is stopped or a standby, and the lease is not ours.
    Disarm { pair: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// The first line a watchdog writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: i32,
    /// Pairs whose guards it took over from earlier watchdogs.
    pub inherited: Vec<String>,
}

/// The mirror of a watchdog's guards, read by its successor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    /// Guards of another boot mean nothing: `CLOCK_BOOTTIME` restarted.
    boot_id: String,
    owner: ProcessId,
    guards: BTreeMap<String, Guard>,
}

/// Pause between two attempts of a failing fence, doubled up to [`FENCE_RETRY_MAX`].
const FENCE_RETRY_FIRST: Duration = Duration::from_millis(100);
const FENCE_RETRY_MAX: Duration = Duration::from_secs(2);
/// tokio's timers run on `CLOCK_MONOTONIC`, which stops during suspend: look at the boot clock
/// at least this often.
const TICK: Duration = Duration::from_millis(50);

pub fn now_ns() -> u64 {
    lease::BootClock.now().0.as_nanos() as u64
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Watchdog { message: format!("{what} {}: {e}", path.display()) }
}

/// Runs the watchdog until its daemon is gone and nothing is armed.
pub async fn run(state_dir: &Path) -> Result<(), Error> {
    ignore_stop_signals();
    std::fs::create_dir_all(state_dir).map_err(|e| io_error("create", state_dir, e))?;
    let me = ProcessId::of(std::process::id() as i32)
        .ok_or_else(|| Error::Watchdog { message: "cannot read this process's /proc entry".into() })?;
    let mut dog = Dog {
        file: state_dir.join(format!("watchdog-{}.json", me.pid)),
        state: StateFile { boot_id: boot_id(), owner: me, guards: inherit(state_dir, me) },
        fences: BTreeMap::new(),
    };
    dog.save();
    let inherited: Vec<String> = dog.state.guards.keys().cloned().collect();
    if !inherited.is_empty() {
        tracing::warn!(pairs = ?inherited, "fence watchdog: took over the guards of an earlier watchdog");
    }
    let mut out = tokio::io::stdout();
    let ready = serde_json::to_string(&Ready { pid: me.pid, inherited }).expect("serializes");
    let mut open = out.write_all(format!("{ready}\n").as_bytes()).await.is_ok() && out.flush().await.is_ok();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut running: JoinSet<(String, u64)> = JoinSet::new();
    loop {
        dog.start_due_fences(&mut running);
        if !open && dog.state.guards.is_empty() && running.is_empty() {
            break;
        }
        let pause = dog.next_due().map_or(TICK, |at| Duration::from_nanos(at.saturating_sub(now_ns())).min(TICK));
        tokio::select! {
            line = lines.next_line(), if open => match line {
                Ok(Some(line)) => {
                    let reply = dog.handle(&line, &mut running);
                    let text = serde_json::to_string(&reply).expect("serializes");
                    if out.write_all(format!("{text}\n").as_bytes()).await.is_err() || out.flush().await.is_err() {
                        open = false;
                    }
                }
                Ok(None) | Err(_) => {
                    open = false;
                    if !dog.state.guards.is_empty() {
                        tracing::warn!(pairs = ?dog.state.guards.keys().collect::<Vec<_>>(),
                            "fence watchdog: the daemon is gone; keeping its lease deadlines");
                    }
                }
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((pair, fence_at_ns)) = done {
                    dog.fenced(&pair, fence_at_ns);
                }
            }
            () = tokio::time::sleep(pause.max(Duration::from_millis(1))) => {}
        }
    }
    let _ = std::fs::remove_file(&dog.file);
    Ok(())
}

struct Dog {
    file: PathBuf,
    state: StateFile,
    /// Running fences: pair → (the guard's `fence_at_ns`, the task).
    fences: BTreeMap<String, (u64, AbortHandle)>,
}

impl Dog {
    fn handle(&mut self, line: &str, running: &mut JoinSet<(String, u64)>) -> Reply {
        let request: Request = match serde_json::from_str(line) {
            Ok(request) => request,
            Err(e) => return Reply { ok: false, error: Some(format!("bad request: {e}")) },
        };
        let pair = match request {
            Request::Arm { pair, guard } => {
                self.state.guards.insert(pair.clone(), guard);
                pair
            }
            Request::Disarm { pair } => {
                self.state.guards.remove(&pair);
                pair
            }
        };
        // A re-armed (or disarmed) guard supersedes a fence under way for an older deadline:
        // the daemon renewed (or released after stopping the server itself).
        let superseded = match (self.fences.get(&pair), self.state.guards.get(&pair)) {
            (Some((at, _)), Some(guard)) => guard.fence_at_ns > *at && guard.fence_at_ns > now_ns(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if superseded && let Some((_, task)) = self.fences.remove(&pair) {
            task.abort();
        }
        self.save();
        self.start_due_fences(running);
        Reply { ok: true, error: None }
    }

    fn next_due(&self) -> Option<u64> {
        self.state.guards.iter().filter(|(p, _)| !self.fences.contains_key(*p)).map(|(_, g)| g.fence_at_ns).min()
    }

    fn start_due_fences(&mut self, running: &mut JoinSet<(String, u64)>) {
        let now = now_ns();
        for (pair, guard) in &self.state.guards {
            if guard.fence_at_ns <= now && !self.fences.contains_key(pair) {
                tracing::error!(pair, epoch = guard.epoch, node = %guard.server.node,
                    "fence watchdog: lease deadline reached without renewal: stopping PostgreSQL");
                let task = running.spawn(fence(pair.clone(), guard.clone()));
                self.fences.insert(pair.clone(), (guard.fence_at_ns, task));
            }
        }
    }

    /// A fence finished: the guard is done unless it was re-armed meanwhile.
    fn fenced(&mut self, pair: &str, fence_at_ns: u64) {
        if self.fences.get(pair).is_some_and(|(at, _)| *at == fence_at_ns) {
            self.fences.remove(pair);
        }
        if self.state.guards.get(pair).is_some_and(|g| g.fence_at_ns == fence_at_ns) {
            self.state.guards.remove(pair);
            self.save();
        }
    }

    /// Mirrors the guards (write and rename; no fsync: it only has to outlive this process,
    /// not the machine, whose reboot voids every guard anyway).
    fn save(&self) {
        let tmp = self.file.with_extension("json.tmp");
        let text = serde_json::to_vec(&self.state).expect("serializes");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.file)) {
            tracing::warn!(file = %self.file.display(), "fence watchdog: state not mirrored: {e}");
        }
    }
}

/// Stops the pair's server, retried until it is confirmed stopped (a fence is never given up).
async fn fence(pair: String, guard: Guard) -> (String, u64) {
    let timeout = Duration::from_millis(guard.stop_timeout_ms.max(1));
    let mut backoff = Backoff::new(FENCE_RETRY_FIRST, FENCE_RETRY_MAX);
    loop {
        match cnpg_pair::process::fence_stop(&guard.server, timeout).await {
            Ok(()) => {
                tracing::warn!(pair, epoch = guard.epoch, "fence watchdog: PostgreSQL stopped");
                return (pair, guard.fence_at_ns);
            }
            Err(e) => {
                let pause = backoff.failed();
                tracing::error!(pair, epoch = guard.epoch, ?pause, "fence watchdog: stop failed, retrying: {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The guards of earlier watchdogs in `dir` (of this boot), the latest deadline per pair; each
/// earlier watchdog still running is killed first, so that exactly one enforces them.
fn inherit(dir: &Path, me: ProcessId) -> BTreeMap<String, Guard> {
    let mut guards: BTreeMap<String, Guard> = BTreeMap::new();
    let boot = boot_id();
    let Ok(entries) = std::fs::read_dir(dir) else { return guards };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("watchdog-") || !name.ends_with(".json") {
            continue;
        }
        let read = |path: &Path| -> Option<StateFile> { serde_json::from_slice(&std::fs::read(path).ok()?).ok() };
        let Some(state) = read(&path) else { continue };
        if state.owner == me {
            continue;
        }
        if state.boot_id == boot {
            if state.owner.is_alive() {
                tracing::warn!(pid = state.owner.pid, "fence watchdog: replacing an earlier watchdog");
                // SAFETY: kill has no memory-safety preconditions; the pid and start time match.
                unsafe { libc::kill(state.owner.pid, libc::SIGKILL) };
                let gone = std::time::Instant::now() + Duration::from_secs(2);
                while state.owner.is_alive() && std::time::Instant::now() < gone {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            // Its last word, now that it cannot change any more.
            let last = read(&path).unwrap_or(state);
            for (pair, guard) in last.guards {
                let later = guards.get(&pair).is_none_or(|g| guard.fence_at_ns > g.fence_at_ns);
                if later {
                    guards.insert(pair, guard);
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    guards
}

/// Only the lease stops this process; a stop signal meant for the daemon's service (or a
/// terminal's Ctrl-C) must not take the fence away.
fn ignore_stop_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(fence_at_ns: u64) -> Guard {
        Guard {
            epoch: 3,
            fence_at_ns,
            server: Server {
                node: "a".into(),
                bin_dir: "/nonexistent".into(),
                data_dir: "/nonexistent/data".into(),
                log_file: "/nonexistent/log".into(),
                run_as: None,
            },
            stop_timeout_ms: 100,
        }
    }

    #[test]
    fn requests_are_one_json_object_per_line() {
        let arm = Request::Arm { pair: "app".into(), guard: guard(7) };
        let text = serde_json::to_string(&arm).unwrap();
        assert!(text.starts_with("{\"op\":\"arm\""), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), arm);
        assert!(serde_json::from_str::<Request>("{\"op\":\"arm\",\"pair\":\"app\"}").is_err());
    }

    #[test]
    fn a_successor_inherits_the_latest_deadline_per_pair_of_this_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let dead = |pid: i32| ProcessId { pid, start_time: 1 };
        let write = |name: &str, boot: &str, owner: ProcessId, guards: &[(&str, u64)]| {
            let state = StateFile {
                boot_id: boot.into(),
                owner,
                guards: guards.iter().map(|(p, at)| (p.to_string(), guard(*at))).collect(),
            };
            std::fs::write(dir.path().join(name), serde_json::to_vec(&state).unwrap()).unwrap();
        };
        write("watchdog-1.json", &boot_id(), dead(1), &[("app", 100), ("other", 5)]);
        write("watchdog-2.json", &boot_id(), dead(2), &[("app", 300)]);
        write("watchdog-3.json", "another-boot", dead(3), &[("app", 900)]);
        std::fs::write(dir.path().join("unrelated.json"), "{}").unwrap();
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        let guards = inherit(dir.path(), me);
        let deadlines: Vec<(&str, u64)> = guards.iter().map(|(p, g)| (p.as_str(), g.fence_at_ns)).collect();
        assert_eq!(deadlines, [("app", 300), ("other", 5)]);
        let left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(left, ["unrelated.json"], "predecessors' files are consumed");
    }
}
