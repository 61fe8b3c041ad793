//! The daemon's side of the fence watchdog ([`crate::watchdog`]): starts it in its own process
//! group (so it outlives this process and a terminal's Ctrl-C), arms a pair's guard on every
//! new lease deadline, disarms it once the server is stopped and the lease given back, and
//! replaces a watchdog that stopped answering (the replacement inherits its guards).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease::{BootInstant, LeaseHandle, LeaseStatus};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::pair::PairCtl;
use crate::Error;
use crate::metrics::Metrics;
use crate::watchdog::{Guard, Ready, Reply, Request};

/// How long a new watchdog may take to say it is ready, and one request to be confirmed.
const START_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The running watchdog, shared by the daemon's pairs.
pub(super) struct Watchdog {
    exe: PathBuf,
    state_dir: PathBuf,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Every guard this daemon armed, and whether the watchdog confirmed it; a replacement
    /// watchdog is sent them all.
    armed: Mutex<BTreeMap<String, (Guard, bool)>>,
    /// Per pair, the epoch disarmed last: a late arm of it (a renewal reported just before
    /// its handle ended) is dropped.
    retired: Mutex<BTreeMap<String, u64>>,
}

struct Conn {
    /// Never killed by this side: a watchdog ends when its successor takes over or when it
    /// has nothing left to guard.
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

fn failed(message: impl std::fmt::Display) -> Error {
    Error::Watchdog { message: message.to_string() }
}

impl Watchdog {
    /// Starts a watchdog keeping its guards in `state_dir` (it takes over those of an earlier
    /// daemon's watchdog still enforcing them).
    pub(super) async fn start(state_dir: PathBuf) -> Result<Arc<Self>, Error> {
        let exe = std::env::current_exe().map_err(|e| failed(format!("own executable: {e}")))?;
        let dog = Arc::new(Self {
            exe,
            state_dir,
            conn: tokio::sync::Mutex::new(None),
            armed: Mutex::default(),
            retired: Mutex::default(),
        });
        let conn = dog.spawn().await?;
        *dog.conn.lock().await = Some(conn);
        Ok(dog)
    }

    async fn spawn(&self) -> Result<Conn, Error> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("fence-watchdog").arg("--state-dir").arg(&self.state_dir);
        cmd.env_remove(crate::failpoint::ENV).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        cmd.process_group(0).kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| failed(format!("spawn {}: {e}", self.exe.display())))?;
        let stdin = child.stdin.take().ok_or_else(|| failed("no stdin"))?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or_else(|| failed("no stdout"))?).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => return Err(failed("exited before it was ready")),
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => return Err(failed(format!("not ready within {START_TIMEOUT:?}"))),
        };
        let ready: Ready = serde_json::from_str(&line).map_err(|e| failed(format!("{line:?}: {e}")))?;
        tracing::info!(pid = ready.pid, inherited = ?ready.inherited, "fence watchdog running");
        Ok(Conn { _child: child, stdin, stdout })
    }

    async fn exchange(conn: &mut Conn, request: &Request) -> Result<Reply, Error> {
        let mut text = serde_json::to_string(request).map_err(failed)?;
        text.push('\n');
        let io = async {
            conn.stdin.write_all(text.as_bytes()).await?;
            conn.stdin.flush().await?;
            conn.stdout.next_line().await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, io).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).map_err(|e| failed(format!("{line:?}: {e}"))),
            Ok(Ok(None)) => Err(failed("exited")),
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(failed(format!("no answer within {REPLY_TIMEOUT:?}"))),
        }
    }

    /// Sends `request`; a watchdog that does not answer is replaced once (the new one is sent
    /// every armed guard first).
    async fn call(&self, request: &Request) -> Result<(), Error> {
        let mut conn = self.conn.lock().await;
        let mut last = None;
        for _ in 0..2 {
            if conn.is_none() {
                let mut fresh = self.spawn().await?;
                let guards: Vec<(String, Guard)> = self
                    .armed
                    .lock()
                    .expect("armed poisoned")
                    .iter()
                    .map(|(p, (g, _))| (p.clone(), g.clone()))
                    .collect();
                for (pair, guard) in guards {
                    let reply = Self::exchange(&mut fresh, &Request::Arm { pair, guard }).await?;
                    if !reply.ok {
                        return Err(failed(reply.error.unwrap_or_default()));
                    }
                }
                *conn = Some(fresh);
            }
            match Self::exchange(conn.as_mut().expect("set"), request).await {
                Ok(reply) if reply.ok => return Ok(()),
                Ok(reply) => return Err(failed(reply.error.unwrap_or_default())),
                Err(e) => {
                    tracing::warn!("fence watchdog: {e}; starting another");
                    // Dropping our end leaves it running with its guards until the successor
                    // takes them over.
                    *conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| failed("unreachable")))
    }

    pub(super) async fn arm(&self, pair: &str, guard: Guard) -> Result<(), Error> {
        if self.retired.lock().expect("retired poisoned").get(pair) == Some(&guard.epoch) {
            return Ok(());
        }
        self.armed.lock().expect("armed poisoned").insert(pair.to_string(), (guard.clone(), false));
        let epoch = guard.epoch;
        self.call(&Request::Arm { pair: pair.to_string(), guard }).await?;
        if let Some((g, confirmed)) = self.armed.lock().expect("armed poisoned").get_mut(pair)
            && g.epoch == epoch
        {
            *confirmed = true;
        }
        Ok(())
    }

    /// Forgets the pair's guard; `epoch`, when given, is never armed again.
    pub(super) async fn disarm(&self, pair: &str, epoch: Option<u64>) -> Result<(), Error> {
        if let Some(epoch) = epoch {
            self.retired.lock().expect("retired poisoned").insert(pair.to_string(), epoch);
        }
        self.armed.lock().expect("armed poisoned").remove(pair);
        self.call(&Request::Disarm { pair: pair.to_string() }).await
    }

    /// Whether the watchdog confirmed a guard of `epoch` for `pair`.
    pub(super) fn guards(&self, pair: &str, epoch: u64) -> bool {
        self.armed
            .lock()
            .expect("armed poisoned")
            .get(pair)
            .is_some_and(|(g, confirmed)| *confirmed && g.epoch == epoch)
    }
}

/// What a pair's feed task needs to arm the watchdog.
#[derive(Clone)]
struct Feed {
    dog: Arc<Watchdog>,
    pair: String,
    server: cnpg_pair::process::Server,
    fence_lead: Duration,
    stop_timeout: Duration,
    metrics: Metrics,
}

impl Feed {
    /// The guard for a lease status: fence at the deadline minus the fence lead (when the
    /// daemon itself fences), or at once when the lease is lost.
    fn guard(&self, status: LeaseStatus) -> Guard {
        let (epoch, fence_at) = match status {
            LeaseStatus::Valid { epoch, deadline } | LeaseStatus::FenceNow { epoch, deadline } => {
                (epoch, deadline.checked_sub(self.fence_lead).unwrap_or(BootInstant(Duration::ZERO)))
            }
            LeaseStatus::Lost { epoch } => (epoch, BootInstant(Duration::ZERO)),
        };
        Guard {
            epoch,
            fence_at_ns: fence_at.0.as_nanos() as u64,
            server: self.server.clone(),
            stop_timeout_ms: self.stop_timeout.as_millis() as u64,
        }
    }

    async fn arm(&self, status: LeaseStatus) -> Result<(), Error> {
        let result = self.dog.arm(&self.pair, self.guard(status)).await;
        self.metrics.set_watchdog_armed(&self.pair, result.is_ok());
        if let Err(e) = &result {
            tracing::error!(pair = %self.pair, "fence watchdog not armed: {e}");
        }
        result
    }
}

impl PairCtl {
    fn feed(&self) -> Feed {
        Feed {
            dog: self.watchdog.clone(),
            pair: self.name().to_string(),
            server: self.server.clone(),
            fence_lead: self.handle_cfg.fence_lead,
            stop_timeout: self.fence_timeout,
            metrics: self.metrics.clone(),
        }
    }

    /// Arms the watchdog with the handle's deadline now, then after every change of it (each
    /// renewal), until the handle ends. An ended handle leaves its last guard armed: abandoned,
    /// its lease runs out and the server must be stopped by then; released, the step that
    /// released it disarms the guard after stopping the server itself.
    pub(super) async fn feed_watchdog(&self, handle: &LeaseHandle) {
        let feed = self.feed();
        let mut status = handle.watch();
        let first = *status.borrow_and_update();
        let _ = feed.arm(first).await;
        self.detached.spawn(async move {
            while status.changed().await.is_ok() {
                let current = *status.borrow_and_update();
                let _ = feed.arm(current).await;
            }
        });
    }

    /// Before the local server may accept writes under the held lease (promotion, start as
    /// holder): the watchdog guards this epoch, so that the server cannot outlive the daemon's
    /// right to write. Armed now if it was not.
    pub(super) async fn require_watchdog(&self) -> Result<(), Error> {
        let status = self.holder.lock().await.as_ref().map(LeaseHandle::status);
        let Some(status) = status else {
            return Err(Error::Conflict { reason: "no lease handle: the server may not take writes".into() });
        };
        let epoch = match status {
            LeaseStatus::Valid { epoch, .. } | LeaseStatus::FenceNow { epoch, .. } | LeaseStatus::Lost { epoch } => {
                epoch
            }
        };
        if self.watchdog.guards(self.name(), epoch) {
            return Ok(());
        }
        self.feed().arm(status).await
    }

    /// The server is stopped (or a standby) and the lease of `epoch` given back or abandoned:
    /// nothing left to guard.
    pub(super) async fn disarm_watchdog(&self, epoch: Option<u64>) {
        if let Err(e) = self.watchdog.disarm(self.name(), epoch).await {
            tracing::warn!(pair = %self.name(), "fence watchdog not disarmed (it fences a stopped server later): {e}");
        }
        self.metrics.set_watchdog_armed(self.name(), false);
    }
}
