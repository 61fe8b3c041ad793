//! The switchover's Gateway API traffic steps: the old holder drains its region's `HTTPRoute`
//! backend before the fence (and gives it back on a roll-back); the new holder moves the weight
//! to its own backend after the DNS step. Only planned switchovers touch the route: an automatic
//! failover never waits on Kubernetes.

use continuum_traffic::Outcome;
use kube::Client;
use tokio::sync::OnceCell;

use super::pair::PairCtl;
use crate::Error;
use crate::config::TrafficConfig;
use crate::switchover::{Acted, StepOutcome};

/// The pair's route and a client made on first use (a daemon whose route is never drained never
/// needs the API server to start).
pub(super) struct Traffic {
    pub cfg: TrafficConfig,
    client: OnceCell<Client>,
}

impl Traffic {
    pub fn new(cfg: TrafficConfig) -> Self {
        Traffic { cfg, client: OnceCell::new() }
    }

    async fn client(&self) -> Result<&Client, Error> {
        self.client
            .get_or_try_init(|| continuum_traffic::client(self.cfg.kubeconfig.as_deref()))
            .await
            .map_err(|source| Error::Traffic { op: "client", source })
    }
}

fn acted(outcome: Outcome) -> Acted {
    match outcome {
        Outcome::Skipped(reason) => StepOutcome::Skipped(reason).into(),
        Outcome::Done(weights) => Acted {
            detail: Some(weights.iter().map(|(b, w)| format!("{b}={w}")).collect::<Vec<_>>().join(",")),
            ..StepOutcome::Done.into()
        },
    }
}

impl PairCtl {
    /// Old holder, before the fence: its backend's weight to 0 over the drain window, tagged with
    /// the epoch it holds.
    pub(super) async fn step_drain(&self, epoch: u64) -> Result<Acted, Error> {
        let Some(traffic) = &self.traffic else {
            return Ok(StepOutcome::Skipped("no HTTPRoute configured (pairs[].traffic)".into()).into());
        };
        let client = traffic.client().await?;
        let target = traffic.cfg.route_target();
        let outcome = continuum_traffic::drain(
            client,
            &target,
            &self.region,
            traffic.cfg.drain_window,
            epoch,
            |w| tracing::info!(pair = %self.name(), route = %traffic.cfg.http_route, weight = w, "draining"),
        )
        .await
        .map_err(|source| Error::Traffic { op: "drain", source })?;
        Ok(acted(outcome))
    }

    /// The route's weight to this region's backend (the new holder after DNS, or the old one
    /// rolling back a drain). A newer epoch's tag means a later holder owns the route now: that
    /// is not this switchover's to undo.
    pub(super) async fn restore_traffic(&self, epoch: u64) -> Result<Acted, Error> {
        let Some(traffic) = &self.traffic else {
            return Ok(StepOutcome::Skipped("no HTTPRoute configured (pairs[].traffic)".into()).into());
        };
        let client = traffic.client().await?;
        match continuum_traffic::restore(client, &traffic.cfg.route_target(), &self.region, epoch).await {
            Ok(outcome) => Ok(acted(outcome)),
            Err(continuum_traffic::Error::StaleEpoch { current, .. }) => {
                Ok(StepOutcome::Skipped(format!("the route is managed by epoch {current} already")).into())
            }
            Err(source) => Err(Error::Traffic { op: "restore", source }),
        }
    }
}
