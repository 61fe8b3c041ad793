//! Process control of one PostgreSQL server, identified by its data directory: `pg_ctl start`,
//! fast and immediate stops (SIGKILL of the postmaster as the last resort), and the OS account
//! the binaries run as. The plain driver's steps, the daemon's own fencing and restarts, and the
//! test fixtures all use these functions, so there is one way to start and stop a server.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who PostgreSQL binaries run as. PostgreSQL refuses to run as root, so a root daemon runs them
/// as the `postgres` account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Looks up an OS account's uid and gid.
pub fn lookup_user(name: &str) -> Result<RunAs> {
    let cname = std::ffi::CString::new(name).map_err(|e| Error::InvalidInput(format!("user {name:?}: {e}")))?;
    // SAFETY: zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` outlives `pwd`'s use.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(Error::InvalidInput(format!("no such user: {name}")));
    }
    Ok(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid })
}

/// The account's home directory. A binary run as another account gets it as `HOME` (as `su`
/// would): libpq looks for `~/.postgresql/postgresql.crt` and fails when the caller's home
/// (root's) is not readable, which breaks TLS replication and tools.
pub(crate) fn home_of(uid: u32) -> PathBuf {
    // SAFETY: zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` outlives `pwd`'s use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
        return PathBuf::from("/nonexistent");
    }
    // SAFETY: getpwuid_r succeeded, so pw_dir points at a NUL-terminated string inside `buf`.
    let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
    PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(dir.to_bytes()))
}

/// One server as `pg_ctl` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Names the server in errors and logs.
    pub node: String,
    /// Directory of `pg_ctl` and the other PostgreSQL binaries.
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Server log (`pg_ctl -l`).
    pub log_file: PathBuf,
    /// `None`: run binaries as the caller's own user.
    pub run_as: Option<RunAs>,
}

/// Runs a PostgreSQL binary of `server` as its account; killed at the deadline.
pub(crate) async fn run_tool(
    server: &Server,
    program: &str,
    args: Vec<OsString>,
    deadline: Duration,
) -> Result<Output> {
    let shown = format!("{program} {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let mut cmd = tokio::process::Command::new(server.bin_dir.join(program));
    cmd.args(&args).current_dir("/").kill_on_drop(true);
    cmd.env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST").env("LC_ALL", "C");
    cmd.stdin(std::process::Stdio::null());
    if let Some(user) = server.run_as {
        cmd.uid(user.uid).gid(user.gid).env("HOME", home_of(user.uid));
    }
    match tokio::time::timeout(deadline, cmd.output()).await {
        Err(_) => Err(Error::Timeout { node: server.node.clone(), what: "external command", after: deadline }),
        Ok(Err(e)) => {
            Err(Error::Command { node: server.node.clone(), command: shown, detail: format!("cannot run: {e}") })
        }
        Ok(Ok(output)) => Ok(output),
    }
}

/// [`run_tool`], and a non-zero exit is an error carrying the tool's output.
pub(crate) async fn run_tool_ok(
    server: &Server,
    program: &str,
    args: Vec<OsString>,
    deadline: Duration,
) -> Result<Output> {
    let shown = format!("{program} {}", args.first().map(|a| a.to_string_lossy()).unwrap_or_default());
    let output = run_tool(server, program, args, deadline).await?;
    if !output.status.success() {
        let detail = format!(
            "{}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
        return Err(Error::Command { node: server.node.clone(), command: shown, detail });
    }
    Ok(output)
}

fn data_dir_arg(server: &Server) -> Vec<OsString> {
    vec!["-D".into(), server.data_dir.clone().into()]
}

/// `pg_ctl -t`: a second less than the hard deadline (at least one), so pg_ctl reports its own
/// timeout before the command is killed.
fn pg_ctl_wait(deadline: Duration) -> OsString {
    deadline.saturating_sub(Duration::from_secs(1)).as_secs().max(1).to_string().into()
}

/// Whether a postmaster runs on the data directory (`pg_ctl status`).
pub async fn is_running(server: &Server, deadline: Duration) -> Result<bool> {
    let mut args: Vec<OsString> = vec!["status".into()];
    args.extend(data_dir_arg(server));
    let output = run_tool(server, "pg_ctl", args, deadline).await?;
    // 0: running; 3: not running; 4: no accessible data directory.
    match output.status.code() {
        Some(0) => Ok(true),
        Some(3) => Ok(false),
        _ => Err(Error::Command {
            node: server.node.clone(),
            command: "pg_ctl status".into(),
            detail: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
        }),
    }
}

/// `pg_ctl start -w` as the server is configured (a primary unless `standby.signal` exists),
/// within `deadline`.
pub async fn start(server: &Server, deadline: Duration) -> Result<()> {
    let mut args: Vec<OsString> = vec!["start".into()];
    args.extend(data_dir_arg(server));
    args.extend(["-l".into(), server.log_file.clone().into(), "-w".into()]);
    args.extend(["-t".into(), pg_ctl_wait(deadline)]);
    run_tool_ok(server, "pg_ctl", args, deadline).await.map(|_| ())
}

async fn stop(server: &Server, mode: &str, deadline: Duration) -> Result<()> {
    let mut args: Vec<OsString> = vec!["stop".into()];
    args.extend(data_dir_arg(server));
    args.extend(["-m".into(), mode.into(), "-w".into(), "-t".into(), pg_ctl_wait(deadline)]);
    run_tool_ok(server, "pg_ctl", args, deadline).await.map(|_| ())
}

/// `pg_ctl stop -m fast`: sessions are terminated and the shutdown checkpoint goes to connected
/// standbys. An error when the server does not stop within `deadline`.
pub async fn stop_fast(server: &Server, deadline: Duration) -> Result<()> {
    stop(server, "fast", deadline).await
}

/// `pg_ctl stop -m immediate`; when that fails or runs out of `deadline`, SIGKILL of the
/// postmaster: the fastest way to stop writes. A server that is not running counts as stopped.
pub async fn stop_immediately(server: &Server, deadline: Duration) -> Result<()> {
    // Read before the stop: a stop that times out may leave no way to find the postmaster.
    let pid = postmaster_pid(server);
    let error = match stop(server, "immediate", deadline).await {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if let Error::Command { detail, .. } = &error
        && (detail.contains("not running") || detail.contains("does not exist"))
    {
        return Ok(());
    }
    let Some(pid) = pid else { return Err(error) };
    tracing::error!(node = %server.node, pid, "immediate shutdown failed, killing the postmaster: {error}");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

/// The postmaster's pid from `postmaster.pid`, if the file exists.
pub fn postmaster_pid(server: &Server) -> Option<i32> {
    let text = std::fs::read_to_string(server.data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// One process, told apart from a later one that reuses its pid by its start time (clock ticks
/// after boot, `/proc/<pid>/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// The live process `pid` (a zombie counts as gone).
    pub fn of(pid: i32) -> Option<Self> {
        let stat = read_stat(pid)?;
        (!stat.zombie).then_some(ProcessId { pid, start_time: stat.start_time })
    }

    /// Whether this very process still runs (same pid, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        ProcessId::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }

    /// Whether it leads its own process group (the postmaster does: `pg_ctl` starts it with
    /// `setsid`), so that a signal to the group reaches its backends too.
    fn leads_group(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.pgrp == self.pid && s.start_time == self.start_time)
    }
}

struct Stat {
    zombie: bool,
    pgrp: i32,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses, so split after
    // the last `)`; field 3 (state) is then index 0.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        zombie: matches!(*fields.first()?, "Z" | "X" | "x"),
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The running postmaster of `server`, if `postmaster.pid` names a live process.
pub fn postmaster(server: &Server) -> Option<ProcessId> {
    ProcessId::of(postmaster_pid(server)?)
}

/// How long a killed postmaster may take to be gone before the stop counts as failed.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Stops the server so that it takes no more writes, and confirms it: `pg_ctl stop -m
/// immediate` within `deadline`; if that fails or the postmaster is still there, SIGKILL of the
/// postmaster's process group (its backends with it). `Ok` only once the postmaster that ran
/// when the call began is gone; a server that was not running counts as stopped.
pub async fn fence_stop(server: &Server, deadline: Duration) -> Result<()> {
    // Identified before the stop: a stop that times out may leave no way to find it.
    let Some(target) = postmaster(server) else { return Ok(()) };
    let stopped = stop(server, "immediate", deadline).await;
    if !target.is_alive() {
        return Ok(());
    }
    tracing::error!(node = %server.node, pid = target.pid, ?stopped, "postmaster still running after the immediate stop: killing its process group");
    kill(target);
    let gone = tokio::time::Instant::now() + KILL_GRACE;
    while target.is_alive() {
        if tokio::time::Instant::now() >= gone {
            return Err(Error::Timeout {
                node: server.node.clone(),
                what: "postmaster exit after SIGKILL",
                after: KILL_GRACE,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// SIGKILL of `target`'s process group when it leads one, else of the process alone.
fn kill(target: ProcessId) {
    if !target.is_alive() {
        return;
    }
    let pid = if target.leads_group() { -target.pid } else { target.pid };
    // SAFETY: kill has no memory-safety preconditions; the target was checked just before.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_ctl_waits_a_second_less_than_the_deadline_and_at_least_one() {
        assert_eq!(pg_ctl_wait(Duration::from_secs(6)), OsString::from("5"));
        assert_eq!(pg_ctl_wait(Duration::from_millis(200)), OsString::from("1"));
        assert_eq!(pg_ctl_wait(Duration::from_secs(65)), OsString::from("64"));
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcessId::of(std::process::id() as i32).expect("this process runs");
        assert!(me.is_alive());
        assert!(!ProcessId { start_time: me.start_time + 1, ..me }.is_alive(), "a reused pid is another process");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let sleeper = ProcessId::of(child.id() as i32).unwrap();
        child.kill().unwrap();
        // Killed but not reaped: a zombie counts as gone.
        let gone = std::time::Instant::now() + Duration::from_secs(5);
        while sleeper.is_alive() && std::time::Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!sleeper.is_alive());
        child.wait().unwrap();
    }

    #[test]
    fn unknown_users_are_an_error() {
        assert!(matches!(lookup_user("no-such-user-continuum"), Err(Error::InvalidInput(_))));
        assert!(lookup_user("root").is_ok());
    }
}
