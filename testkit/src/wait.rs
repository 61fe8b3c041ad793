//! Level-triggered waits with deadlines for tests (anyhow errors naming what was awaited); the
//! polling itself is devstack's.

use std::future::Future;
use std::time::Duration;

pub use devstack::wait::POLL_INTERVAL;

/// Polls `probe` until it yields `Some(value)`, or fails once `timeout` has passed. The error
/// names `what` and carries the last probe error, so a failed wait says what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    devstack::wait::poll(timeout, probe).await.map_err(|last| match last {
        Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
        None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
    })
}

/// Like [`wait_for`] for a boolean condition.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    wait_for(what, timeout, || {
        let fut = condition();
        async move { Ok(fut.await?.then_some(())) }
    })
    .await
}
