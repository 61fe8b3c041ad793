//! `continuum switchover --abort ID`: the abort request, then the roll-back followed to its end.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{ApiClient, follow, print_json, state_name};
use crate::Error;
use crate::api::{SwitchoverRecord, SwitchoverState};

/// How long the abort request is retried while the daemon answers 503 or cannot be reached
/// (a lease-store leader change, a daemon restart).
const RETRY_FOR: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub(super) async fn run(api: &ApiClient, id: Uuid, json: bool) -> Result<(), Error> {
    let started = Instant::now();
    let mut retried = false;
    loop {
        match api.post::<_, SwitchoverRecord>(&format!("/v1/switchovers/{id}/abort"), &serde_json::json!({})).await {
            Ok(aborted) => {
                if !json {
                    println!("switchover {} aborted: {} rolls back", aborted.id, aborted.from);
                }
                break;
            }
            // An earlier try whose answer was lost may have aborted it already: follow it.
            Err(Error::Api { status: 409, .. }) if retried => break,
            Err(e @ (Error::Http { .. } | Error::Api { status: 503, .. })) if started.elapsed() < RETRY_FOR => {
                tracing::debug!("abort not taken yet: {e}");
                retried = true;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    }
    let record = follow(api, id, !json).await?;
    if json {
        print_json(&record);
    }
    match record.state {
        SwitchoverState::RolledBack => Ok(()),
        state => Err(Error::Conflict {
            reason: format!(
                "switchover {id} ended {} after the abort: {}",
                state_name(state),
                record.error.as_deref().unwrap_or("no reason given")
            ),
        }),
    }
}
