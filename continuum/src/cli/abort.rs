//! `continuum switchover --abort ID`: the abort request, then the roll-back followed to its end.

use uuid::Uuid;

use super::{ApiClient, follow, print_json, state_name};
use crate::Error;
use crate::api::{SwitchoverRecord, SwitchoverState};

pub(super) async fn run(api: &ApiClient, id: Uuid, json: bool) -> Result<(), Error> {
    let aborted: SwitchoverRecord = api.post(&format!("/v1/switchovers/{id}/abort"), &serde_json::json!({})).await?;
    if !json {
        println!("switchover {} aborted: {} rolls back", aborted.id, aborted.from);
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
