//! Level-triggered waits with deadlines: poll for a state instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is re-checked. Short enough that waits add little latency, long enough
/// not to hammer a server that is starting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `probe` until it yields `Some(value)`; once `timeout` has passed, the error is the last
/// probe error (`None` if every probe said "not yet"). Callers attach what they waited for.
pub async fn poll<T, E, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if started.elapsed() >= timeout {
            return Err(last_error);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`poll`] with this crate's error: a timeout names `what` and the last probe error.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, probe: F) -> crate::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    poll(timeout, probe).await.map_err(|last| crate::Error::Timeout {
        what: what.into(),
        timeout,
        last: last.map(|e| e.to_string()),
    })
}
