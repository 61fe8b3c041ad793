//! Commits run as detached operations, so a slow one (a pre-warm waits a health-check round)
//! neither keeps an HTTP exchange open past the caller's deadline nor dies with a dropped
//! connection. `POST /v1/commit` waits up to `commit.answer_within`, then answers 202 with the
//! operation's id; `GET /v1/operations/{id}` long-polls the same way and finally answers exactly
//! what the commit would have. An identical request from the same caller while one is pending
//! (a retry after a timeout, with the same epoch) joins it instead of starting another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::PdmError;
use crate::model::{CommitResponse, ErrorBody};

/// How long a finished operation's outcome stays available to a poll.
const RETENTION: Duration = Duration::from_secs(300);
/// At most this many finished operations are kept (oldest dropped first).
const MAX_FINISHED: usize = 1024;

/// A finished commit: the answer, or the error's HTTP status and body.
pub(crate) type Outcome = Result<CommitResponse, (u16, ErrorBody)>;

struct Op {
    owner: String,
    key: String,
    started: Instant,
    budget: Duration,
    outcome: watch::Receiver<Option<Outcome>>,
}

/// What a wait on an operation gave.
pub(crate) enum Progress {
    Done(Outcome),
    /// Still running: the id to poll and how much longer it should take at most.
    Pending {
        id: String,
        remaining: Duration,
    },
}

#[derive(Default)]
pub(crate) struct Operations {
    ops: Mutex<HashMap<String, Op>>,
}

impl Operations {
    /// Starts `work` for `owner` (or joins the pending operation with the same `key`) and waits
    /// up to `wait` for it.
    pub async fn run<F>(&self, owner: &str, key: String, budget: Duration, wait: Duration, work: F) -> Progress
    where
        F: std::future::Future<Output = Result<CommitResponse, PdmError>> + Send + 'static,
    {
        let id = {
            let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            expire(&mut ops);
            let pending = ops
                .iter()
                .find(|(_, op)| op.owner == owner && op.key == key && op.outcome.borrow().is_none())
                .map(|(id, _)| id.clone());
            match pending {
                Some(id) => {
                    tracing::info!(caller = owner, operation = %id, "identical commit joins the pending operation");
                    id
                }
                None => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    let (tx, rx) = watch::channel(None);
                    tokio::spawn(async move {
                        let outcome = work.await.map_err(|e| {
                            let body = ErrorBody { error: e.to_string(), code: e.metric_label().into() };
                            (e.http_status(), body)
                        });
                        let _ = tx.send(Some(outcome));
                    });
                    let op = Op { owner: owner.into(), key, started: Instant::now(), budget, outcome: rx };
                    ops.insert(id.clone(), op);
                    id
                }
            }
        };
        self.wait(owner, &id, wait).await.unwrap_or(Progress::Pending { id, remaining: budget })
    }

    /// Waits up to `wait` for operation `id`; `None` if `owner` has no such operation.
    pub async fn wait(&self, owner: &str, id: &str, wait: Duration) -> Option<Progress> {
        let (mut rx, started, budget) = {
            let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            let op = ops.get(id).filter(|op| op.owner == owner)?;
            (op.outcome.clone(), op.started, op.budget)
        };
        let done = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        if let Ok(Ok(outcome)) = done {
            return Some(Progress::Done(outcome.clone().expect("waited for Some")));
        }
        Some(Progress::Pending { id: id.to_string(), remaining: budget.saturating_sub(started.elapsed()) })
    }
}

fn expire(ops: &mut HashMap<String, Op>) {
    ops.retain(|_, op| op.outcome.borrow().is_none() || op.started.elapsed() < RETENTION + op.budget);
    let mut finished: Vec<(Instant, String)> =
        ops.iter().filter(|(_, op)| op.outcome.borrow().is_some()).map(|(id, op)| (op.started, id.clone())).collect();
    if finished.len() > MAX_FINISHED {
        finished.sort();
        for (_, id) in &finished[..finished.len() - MAX_FINISHED] {
            ops.remove(id);
        }
    }
}
