//! Leadership confirmations shared between overlapping linearizable reads.
//!
//! In openraft 0.9 every linearizable read is a ReadIndex round: the leader records a read
//! index and sends one heartbeat to every voter to confirm it still leads. Reads that overlap
//! share one round here, under one rule: **a read is served only by a round that started after
//! the read arrived.** Reads that arrive while a round is in flight wait for the next one; at
//! most one round runs at a time (single flight), numbered by a generation counter.
//!
//! Why the rule is needed (Raft §6.4). Leader L of term t may answer a read arriving at T0 once
//! (1) it holds a read index covering every entry committed before T0 and (2) a quorum has
//! acknowledged term t *after* T0. Suppose a newer leader L' committed a write w before T0: a
//! quorum stored a term t' > t before T0. A quorum acknowledging t after T0 shares a node with
//! it, which would have gone back from t' to t: Raft forbids that, so no such w exists and L's
//! state at the read index is current. A round that started before T0 proves neither: its
//! heartbeats may have been acknowledged before L' was elected (a stale, cut-off L then serves
//! the state from before w), and its read index may miss an entry L committed between the
//! round's start and T0. Reusing an earlier round's answer ("nothing applied since the last
//! confirmation") has the same flaw, so every read waits for a round of its own generation or
//! later.
//!
//! Why the generation counter implements the rule: `started` counts rounds begun, under one
//! lock. A read that finds `started == g` needs round `g + 1`: round `g`, running or done, began
//! before it looked. Round `g + 1` is begun (by this read or another) only after that, so it
//! started after the read arrived; any later round did too. A round's outcome, error or not,
//! serves every read waiting for its generation or an earlier one.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// Single-flight leadership confirmations; `T` is a round's outcome.
pub(crate) struct ReadRounds<T> {
    state: Arc<Mutex<Rounds>>,
    /// The latest finished round: its generation and outcome.
    done: watch::Sender<Option<(u64, T)>>,
}

#[derive(Default)]
struct Rounds {
    /// Rounds begun so far; the running one, if any, is number `started`.
    started: u64,
    running: bool,
}

fn lock(state: &Mutex<Rounds>) -> MutexGuard<'_, Rounds> {
    // The guarded data is two plain fields, always consistent: a panic elsewhere cannot tear it.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: Clone + Send + Sync + 'static> ReadRounds<T> {
    pub(crate) fn new() -> Self {
        ReadRounds { state: Default::default(), done: watch::channel(None).0 }
    }

    /// The outcome of a round that started after this call: joins the next round or, if none is
    /// running, starts one with `round`. The round runs in its own task, so a caller that gives
    /// up (its deadline) does not leave the round marked as running.
    pub(crate) async fn confirm<F, Fut>(&self, round: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut finished = self.done.subscribe();
        let needed = lock(&self.state).started + 1;
        let mut round = Some(round);
        loop {
            if let Some((generation, outcome)) = finished.borrow_and_update().as_ref()
                && *generation >= needed
            {
                return outcome.clone();
            }
            let begun = {
                let mut s = lock(&self.state);
                (!s.running).then(|| {
                    s.running = true;
                    s.started += 1;
                    s.started
                })
            };
            let Some(generation) = begun else {
                // A round is running; it or a later one ends with a notification. The sender
                // lives in `self`, so the channel cannot close while we wait.
                let _ = finished.changed().await;
                continue;
            };
            // `generation >= needed`: this read only starts a round once, then returns its outcome.
            let fut = round.take().expect("a read starts at most one round")();
            let mut end = RoundEnd { state: self.state.clone(), done: self.done.clone(), finished: false };
            let task = tokio::spawn(async move {
                let outcome = fut.await;
                end.finish(generation, outcome.clone());
                outcome
            });
            return match task.await {
                Ok(outcome) => outcome,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
        }
    }
}

/// Marks the running round finished: on completion with its outcome, and if the round's task
/// panics, without one (waiters then start the next round).
struct RoundEnd<T> {
    state: Arc<Mutex<Rounds>>,
    done: watch::Sender<Option<(u64, T)>>,
    finished: bool,
}

impl<T> RoundEnd<T> {
    fn finish(&mut self, generation: u64, outcome: T) {
        let mut s = lock(&self.state);
        // Cleared and published under the lock: a waiter that still sees `running` is sure
        // to be notified afterwards.
        s.running = false;
        self.done.send_replace(Some((generation, outcome)));
        self.finished = true;
    }
}

impl<T> Drop for RoundEnd<T> {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.state).running = false;
            self.done.send_modify(|_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures::poll;

    use super::*;

    /// Rounds whose outcome is their own number; round n finishes once `open(n)` was called.
    struct Gates {
        started: Arc<AtomicU64>,
        opened: watch::Sender<u64>,
    }

    impl Gates {
        fn new() -> Self {
            Gates { started: Default::default(), opened: watch::channel(0).0 }
        }

        fn round(&self) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = u64> + Send>> + use<> {
            let (started, mut opened) = (self.started.clone(), self.opened.subscribe());
            move || {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                Box::pin(async move {
                    let _ = opened.wait_for(|o| *o >= n).await;
                    n
                })
            }
        }

        fn open(&self, n: u64) {
            self.opened.send_replace(n);
        }

        fn started(&self) -> u64 {
            self.started.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_read_is_not_served_by_a_round_that_started_before_it_arrived() {
        let (rounds, gates) = (ReadRounds::<u64>::new(), Gates::new());
        let mut first = Box::pin(rounds.confirm(gates.round()));
        assert!(poll!(&mut first).is_pending(), "round 1 runs");
        let mut second = Box::pin(rounds.confirm(gates.round()));
        assert!(poll!(&mut second).is_pending(), "arrives while round 1 runs");
        gates.open(1);
        assert_eq!(first.await, 1);
        // Round 1 began before the second read arrived: its answer must not serve it.
        gates.open(2);
        assert_eq!(second.await, 2);
        assert_eq!(gates.started(), 2);
    }

    #[tokio::test]
    async fn reads_that_arrive_during_a_round_share_the_next_one() {
        let (rounds, gates) = (ReadRounds::<u64>::new(), Gates::new());
        let mut first = Box::pin(rounds.confirm(gates.round()));
        assert!(poll!(&mut first).is_pending());
        let mut waiting: Vec<_> = (0..5).map(|_| Box::pin(rounds.confirm(gates.round()))).collect();
        for w in &mut waiting {
            assert!(poll!(w).is_pending());
        }
        gates.open(2);
        assert_eq!(first.await, 1);
        for w in waiting {
            assert_eq!(w.await, 2);
        }
        assert_eq!(gates.started(), 2, "six reads, two rounds");
    }

    #[tokio::test]
    async fn a_finished_round_is_never_reused() {
        let (rounds, gates) = (ReadRounds::<u64>::new(), Gates::new());
        gates.open(u64::MAX);
        assert_eq!(rounds.confirm(gates.round()).await, 1);
        assert_eq!(rounds.confirm(gates.round()).await, 2);
        assert_eq!(gates.started(), 2);
    }

    #[tokio::test]
    async fn a_reader_that_gives_up_does_not_stall_the_next() {
        let (rounds, gates) = (ReadRounds::<u64>::new(), Gates::new());
        let mut first = Box::pin(rounds.confirm(gates.round()));
        assert!(poll!(&mut first).is_pending());
        let mut second = Box::pin(rounds.confirm(gates.round()));
        assert!(poll!(&mut second).is_pending());
        drop(first);
        gates.open(2);
        assert_eq!(second.await, 2);
    }
}
