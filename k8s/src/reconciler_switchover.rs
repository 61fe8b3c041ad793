//! The `ContinuumSwitchover` controller: one request, executed once through the daemon's API.
//!
//! The daemon's switchover id is written to the status before anything else happens, so a
//! reconciler restarted mid-way follows the same switchover instead of starting another one
//! (the daemon would refuse a second one anyway: one switchover per pair at a time).

use std::sync::Arc;
use std::time::Duration;

use continuum::api::{SwitchoverRecord, SwitchoverRequest};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::Error;
use crate::crd::Continuum;
use crate::reconciler::{Context, apply_status};
use crate::status::json_name;
use crate::switchover::{ContinuumSwitchover, RequestPhase, StepStatus, SwitchoverStatus};

/// How often a running switchover is polled.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

pub async fn reconcile(req: Arc<ContinuumSwitchover>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = req.namespace().unwrap_or_default();
    let name = req.name_any();
    let current = req.status.clone().unwrap_or_default();
    if current.phase.is_some_and(RequestPhase::is_final) {
        return Ok(Action::await_change());
    }
    let continuums: Api<Continuum> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(ctm) = continuums
        .get_opt(&req.spec.continuum)
        .await
        .map_err(Error::kube(format!("get continuum {namespace}/{}", req.spec.continuum)))?
    else {
        return reject(&ctx, &req, format!("no Continuum named {} in {namespace}", req.spec.continuum)).await;
    };
    // Ask the holder first (it runs the switchover), then the others (they forward or know it).
    let mut regions: Vec<_> = ctm.spec.regions.iter().collect();
    let holder = ctm.status.as_ref().and_then(|s| s.holder.clone());
    regions.sort_by_key(|r| Some(&r.name) != holder.as_ref());

    let Some(id) = current.id.clone() else {
        let Some(owner) = &ctm.spec.api_tokens.owner else {
            return reject(&ctx, &req, "the Continuum names no owner token (spec.apiTokens.owner)".into()).await;
        };
        let token = ctx.secret(&namespace, owner).await?;
        let request = SwitchoverRequest {
            to: req.spec.to.clone(),
            reason: format!("ContinuumSwitchover {namespace}/{name}: {}", req.spec.reason),
            pair: Some(ctm.spec.pair.clone()),
        };
        let mut last = None;
        for r in &regions {
            match ctx.daemons.start_switchover(&r.name, &r.api_endpoint, &token, &request).await {
                Ok(accepted) => {
                    let status = SwitchoverStatus {
                        phase: Some(RequestPhase::Pending),
                        id: Some(accepted.id.to_string()),
                        ..Default::default()
                    };
                    apply_status::<ContinuumSwitchover>(&ctx.client, &namespace, &name, &status).await?;
                    let note = format!("switchover {} to {} accepted by {}", accepted.id, req.spec.to, r.name);
                    ctx.event(req.as_ref(), EventType::Normal, "Accepted", note).await;
                    return Ok(Action::requeue(FOLLOW_INTERVAL));
                }
                Err(Error::Refused { message }) => return reject(&ctx, &req, message).await,
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or(Error::NoDaemon { name: ctm.name_any() }));
    };

    let token = ctx.secret(&namespace, &ctm.spec.api_tokens.viewer).await?;
    let mut last = None;
    let mut record = None;
    for r in &regions {
        match ctx.daemons.switchover(&r.name, &r.api_endpoint, &id, &token).await {
            Ok(found) => {
                record = Some(found);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(record) = record else {
        return Err(last.unwrap_or(Error::NoDaemon { name: ctm.name_any() }));
    };
    let status = from_record(&record, id);
    for step in &status.steps {
        let before = current.steps.iter().find(|s| s.step == step.step);
        if before.map(|b| &b.state) != Some(&step.state) && step.state != "pending" {
            let kind = if step.state == "failed" { EventType::Warning } else { EventType::Normal };
            let mut note = format!("step {}: {}", step.step, step.state);
            if let Some(d) = step.detail.as_deref().filter(|d| !d.is_empty()) {
                note.push_str(&format!(" ({d})"));
            }
            ctx.event(req.as_ref(), kind, "Step", note).await;
        }
    }
    apply_status::<ContinuumSwitchover>(&ctx.client, &namespace, &name, &status).await?;
    let phase = status.phase.unwrap_or(RequestPhase::Pending);
    if phase.is_final() {
        let kind = if phase == RequestPhase::Succeeded { EventType::Normal } else { EventType::Warning };
        let note = format!("{:?}{}", phase, record.error.map(|e| format!(": {e}")).unwrap_or_default());
        ctx.event(req.as_ref(), kind, "Finished", note).await;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(FOLLOW_INTERVAL))
}

fn from_record(r: &SwitchoverRecord, id: String) -> SwitchoverStatus {
    SwitchoverStatus {
        phase: Some(RequestPhase::from_daemon(r.state)),
        id: Some(id),
        message: r.error.clone(),
        epoch_before: Some(r.epoch_before),
        epoch_after: r.epoch_after,
        steps: r
            .steps
            .iter()
            .map(|s| StepStatus {
                step: json_name(&s.step),
                state: json_name(&s.state),
                duration_ms: s.duration_ms,
                detail: s.detail.clone(),
            })
            .collect(),
        write_gap_ms: r.write_gap_ms,
    }
}

async fn reject(ctx: &Context, req: &ContinuumSwitchover, message: String) -> Result<Action, Error> {
    let status =
        SwitchoverStatus { phase: Some(RequestPhase::Rejected), message: Some(message.clone()), ..Default::default() };
    apply_status::<ContinuumSwitchover>(&ctx.client, &req.namespace().unwrap_or_default(), &req.name_any(), &status)
        .await?;
    ctx.event(req, EventType::Warning, "Rejected", message).await;
    Ok(Action::await_change())
}
