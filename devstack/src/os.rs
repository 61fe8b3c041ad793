//! Running PostgreSQL tools as the `postgres` user, and finding them.
//!
//! PostgreSQL refuses to start as root. The demo and the tests (and CI) run as root, so every
//! PostgreSQL binary is started with the uid/gid of the `postgres` account and the files it
//! writes are handed to that account. Run as any other user, the tools simply run as that user.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{Error, Result, io};

/// The account PostgreSQL runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Who PostgreSQL processes run as: `postgres` when we are root, else ourselves.
pub fn postgres_user() -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    lookup_user("postgres").map(Some).map_err(|e| Error::Missing {
        what: format!("running as root, PostgreSQL must run as the `postgres` account ({e}); install postgresql-15"),
    })
}

/// The uid and gid of account `name`.
pub fn lookup_user(name: &str) -> Result<RunAs> {
    let missing = || Error::Missing { what: format!("no such user: {name}") };
    let cname = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: a zeroed passwd is a valid out-parameter for getpwnam_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` outlives `pwd`'s use.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(missing());
    }
    Ok(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid })
}

/// Gives `path` (one file or directory, not recursive) to the PostgreSQL account.
pub fn hand_over(path: &Path, run_as: Option<RunAs>) -> Result<()> {
    if let Some(user) = run_as {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(io(format!("chown {} to postgres", path.display())))?;
    }
    Ok(())
}

/// A command for a PostgreSQL binary, set up to run as the PostgreSQL account.
pub fn pg_command(bin_dir: &Path, program: &str, run_as: Option<RunAs>) -> Command {
    let mut cmd = Command::new(bin_dir.join(program));
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    set_home(&mut cmd, run_as);
    // Keep the caller's locale and PG* variables from leaking into the servers.
    cmd.env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST").env("LC_ALL", "C");
    cmd
}

/// `HOME` of the account a command runs as (as `su` would): libpq looks for
/// `~/.postgresql/postgresql.crt` and fails on a home it may not read (root's), which breaks
/// TLS replication and `pg_basebackup`.
pub fn set_home(cmd: &mut Command, run_as: Option<RunAs>) {
    let Some(user) = run_as else { return };
    // SAFETY: zeroed passwd is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` outlives `pwd`'s use.
    let rc = unsafe { libc::getpwuid_r(user.uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    let home = if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
        PathBuf::from("/nonexistent")
    } else {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: getpwuid_r succeeded, so pw_dir points at a NUL-terminated string in `buf`.
        PathBuf::from(std::ffi::OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) }.to_bytes()))
    };
    cmd.env("HOME", home);
}

/// Runs `cmd` to completion; a non-zero exit becomes an error carrying its output.
pub fn run(mut cmd: Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("spawn {shown}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: shown,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// The directory holding PostgreSQL 15's server binaries: `$CONTINUUM_PG_BIN`, else Debian's
/// `/usr/lib/postgresql/15/bin`.
pub fn pg_bin_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CONTINUUM_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    if !dir.join("postgres").exists() {
        return Err(Error::Missing {
            what: format!(
                "no PostgreSQL server binaries in {} (install postgresql-15 or set CONTINUUM_PG_BIN)",
                dir.display()
            ),
        });
    }
    Ok(dir)
}

/// Sends `signal` to `pid`; false if the process no longer exists.
pub fn signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Whether a process with this pid exists (zombies included).
pub fn process_exists(pid: i32) -> bool {
    signal(pid, 0)
}

/// The last `n` lines of a log file (empty when it does not exist yet), for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
