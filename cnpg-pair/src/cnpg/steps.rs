//! The switchover, failover and rejoin steps: one patch of this region's `Cluster` each, then a
//! wait until CNPG made it so (read back from the `Cluster` status and from PostgreSQL).

use std::time::Instant;

use serde_json::json;

use super::CnpgDriver;
use super::cluster::ClusterView;
use super::token::{self, DemotionToken};
use crate::driver::{FenceMethod, FenceOutcome, PromoteRequest, Promotion, RejoinMethod, Rejoined, Upstream};
use crate::error::{Error, Result};
use crate::observe::Observed;

impl CnpgDriver {
    /// Fence: make the peer the topology's primary on this Cluster and wait for CNPG's token.
    pub(super) async fn demote(&self) -> Result<FenceOutcome> {
        let peer = self.config.peer_cluster.clone();
        if let Observed::Primary(p) = self.observer.observe().await {
            // Floor for the token: it must describe a shutdown after this position.
            *self.demoted_from.lock().expect("poisoned") = Some(p.position);
        }
        let view = self.cluster.get().await?;
        if view.unrecoverable() {
            return Err(self.cluster.cluster_error(&view));
        }
        let mut stale = None;
        if view.leads(self.config.self_name()) || view.replica.source.as_deref() != Some(peer.as_str()) {
            // A token already published belongs to an earlier demotion.
            stale = view.demotion_token().map(str::to_string);
            // promotionToken is allowed only while this cluster leads (CNPG webhook): drop it.
            self.cluster
                .patch_spec(json!({ "replica": { "primary": peer, "source": peer, "promotionToken": null } }))
                .await?;
        }
        let token = self.wait_demotion_token(stale.as_deref()).await?;
        let decoded = DemotionToken::decode(&self.config.name, &token)?;
        tracing::info!(node = %self.config.name, token = %token::prefix(&token), redo = %decoded.redo,
            timeline = decoded.timeline, "demoted: CNPG published the demotion token");
        Ok(FenceOutcome {
            // CNPG demotes with a fast shutdown and publishes a token only for a clean one
            // ("shut down" / "shut down in recovery" in pg_controldata).
            method: FenceMethod::Fast,
            clean: true,
            final_position: Some(decoded.must_replay()),
            handover_token: Some(token),
        })
    }

    /// Whether a published token can be this demotion's.
    fn fits_demotion(&self, token: &str, stale: Option<&str>) -> bool {
        if Some(token) == stale {
            return false;
        }
        let Ok(decoded) = DemotionToken::decode(&self.config.name, token) else { return false };
        match *self.demoted_from.lock().expect("poisoned") {
            Some(floor) => {
                decoded.system_id == floor.system_id && decoded.timeline == floor.timeline && decoded.redo >= floor.lsn
            }
            None => true,
        }
    }

    /// Re-reads `status.demotionToken` until it is non-empty, fits, and stayed the same for
    /// `token_stable` (CNPG #11075 lost and rewrote a token on a requeued reconcile). API errors
    /// while waiting are retried until the deadline.
    async fn wait_demotion_token(&self, stale: Option<&str>) -> Result<String> {
        let t = &self.config.timeouts;
        let started = Instant::now();
        let mut seen: Option<(String, Instant)> = None;
        let mut last_error = None;
        loop {
            match self.cluster.get().await {
                Ok(view) if view.unrecoverable() => return Err(self.cluster.cluster_error(&view)),
                Ok(view) => {
                    let in_progress = view.status.switch_replica_cluster_status.as_ref().is_some_and(|s| s.in_progress);
                    match view.demotion_token().filter(|tok| !in_progress && self.fits_demotion(tok, stale)) {
                        Some(tok) => match &seen {
                            Some((prev, since)) if prev == tok => {
                                if since.elapsed() >= t.token_stable {
                                    return Ok(tok.to_string());
                                }
                            }
                            _ => seen = Some((tok.to_string(), Instant::now())),
                        },
                        None => seen = None,
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %self.config.name, "reading the demotion token: {e}");
                    last_error = Some(e);
                }
            }
            if started.elapsed() >= t.demotion {
                return Err(last_error.unwrap_or(Error::Timeout {
                    node: self.node(),
                    what: "CNPG publishing the demotion token",
                    after: t.demotion,
                }));
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    /// A token may be sent once: not if this process sent it, CNPG consumed it
    /// (`status.lastPromotionToken`), or it is the spec's token of an earlier promotion.
    fn check_unused(&self, token: &str, view: &ClusterView) -> Result<()> {
        let used = self.sent_tokens.lock().expect("poisoned").contains(token)
            || view.status.last_promotion_token.as_deref() == Some(token)
            || view.replica.promotion_token.as_deref() == Some(token);
        if used {
            return Err(Error::TokenReused { node: self.node(), token_prefix: token::prefix(token) });
        }
        Ok(())
    }

    /// The token must describe the history this standby replayed, up to and including the old
    /// primary's shutdown checkpoint, and no further: CNPG's own check, made before sending.
    async fn check_token_matches_local(&self, token: &DemotionToken) -> Result<()> {
        let stale = |detail: String| Error::StaleToken { node: self.node(), detail };
        match self.caught_up(&token.must_replay(), self.config.timeouts.query).await {
            Ok(_) => {}
            Err(Error::SystemIdMismatch { expected, found, .. }) => {
                return Err(stale(format!("token system {expected}, local system {found}")));
            }
            Err(Error::TimelineMismatch { expected, found, .. }) => {
                return Err(stale(format!("token timeline {expected}, local timeline {found} is newer")));
            }
            Err(e) => return Err(e),
        }
        let (redo, timeline) = self.restartpoint_redo().await?;
        if redo != token.redo || timeline != token.timeline {
            return Err(stale(format!(
                "restartpoint REDO {redo} (timeline {timeline}), token REDO {} (timeline {})",
                token.redo, token.timeline
            )));
        }
        Ok(())
    }

    pub(super) async fn promote_cluster(&self, request: &PromoteRequest) -> Result<Promotion> {
        let me = self.config.self_name().to_string();
        let view = self.cluster.get().await?;
        if view.unrecoverable() {
            return Err(self.cluster.cluster_error(&view));
        }
        let local_primary = self.local_is_primary().await == Some(true);
        let already = view.leads(&me) && local_primary;
        let mut consumed_wait = None;
        match &request.handover_token {
            _ if already => {}
            Some(token) => {
                let in_flight = view.leads(&me) && view.replica.promotion_token.as_deref() == Some(token.as_str());
                consumed_wait = Some(token.as_str());
                if !in_flight {
                    self.check_unused(token, &view)?;
                    let decoded = DemotionToken::decode(&self.config.name, token)?;
                    self.check_token_matches_local(&decoded).await?;
                    self.sent_tokens.lock().expect("poisoned").insert(token.clone());
                    // One update: CNPG promotes without a token (and the old primary then needs a
                    // rebuild) if it sees `primary = self` first.
                    self.cluster.patch_spec(json!({ "replica": { "primary": me, "promotionToken": token } })).await?;
                }
            }
            None if view.leads(&me) && view.replica.promotion_token.is_none() => {}
            None => {
                tracing::warn!(node = %self.config.name, "promoting without a token (failover)");
                self.cluster.patch_spec(json!({ "replica": { "primary": me, "promotionToken": null } })).await?;
            }
        }
        self.wait_primary().await?;
        if let Some(token) = consumed_wait {
            self.wait_token_consumed(token).await?;
        }
        let mut promotion = self.record_epoch(request.epoch).await?;
        promotion.already_promoted = already && promotion.already_promoted;
        tracing::info!(node = %self.config.name, epoch = request.epoch, position = %promotion.position, "promoted");
        Ok(promotion)
    }

    /// Until the local PostgreSQL takes writes. The Cluster is read too, to stop at once when CNPG
    /// refuses (unrecoverable); while the API server is unreachable the wait goes on, on
    /// PostgreSQL's word alone.
    async fn wait_primary(&self) -> Result<()> {
        let deadline = self.config.timeouts.promotion;
        let started = Instant::now();
        loop {
            if self.local_is_primary().await == Some(true) {
                return Ok(());
            }
            match self.cluster.get().await {
                Ok(view) if view.unrecoverable() => return Err(self.cluster.cluster_error(&view)),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %self.config.name, "reading the Cluster while promoting: {e}"),
            }
            if started.elapsed() >= deadline {
                return Err(Error::Timeout { node: self.node(), what: "CNPG promoting", after: deadline });
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    /// Until CNPG recorded the token as consumed (`status.lastPromotionToken`): that record is
    /// what keeps a restarted driver from sending it again, so the step is not done before it.
    async fn wait_token_consumed(&self, token: &str) -> Result<()> {
        let deadline = self.config.timeouts.promotion;
        let started = Instant::now();
        loop {
            match self.cluster.get().await {
                Ok(view) if view.status.last_promotion_token.as_deref() == Some(token) => return Ok(()),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %self.config.name, "reading lastPromotionToken: {e}"),
            }
            if started.elapsed() >= deadline {
                return Err(Error::Timeout { node: self.node(), what: "CNPG recording the token", after: deadline });
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    /// Rejoin: this Cluster becomes a replica of the peer again; CNPG restarts the designated
    /// primary following it (after a failover CNPG has to rewind or re-clone it).
    pub(super) async fn follow_peer(&self, upstream: &Upstream) -> Result<Rejoined> {
        let peer = self.config.peer_cluster.clone();
        let view = self.cluster.get().await?;
        if view.unrecoverable() {
            return Err(self.cluster.cluster_error(&view));
        }
        let mut target = None;
        let in_place = !view.leads(self.config.self_name())
            && view.replica.source.as_deref() == Some(peer.as_str())
            && view.replica.promotion_token.is_none();
        if in_place && self.following(upstream, &mut target).await.unwrap_or(false) {
            return Ok(Rejoined { method: RejoinMethod::AlreadyFollowing, attempts: 0 });
        }
        if !in_place {
            self.cluster
                .patch_spec(json!({ "replica": { "primary": peer, "source": peer, "promotionToken": null } }))
                .await?;
        }
        let deadline = self.config.timeouts.follow;
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.following(upstream, &mut target).await {
                Ok(true) => {
                    tracing::info!(node = %self.config.name, upstream = %upstream.name, "following again");
                    return Ok(Rejoined { method: RejoinMethod::Follow, attempts });
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(node = %self.config.name, "not following yet: {e}"),
            }
            if started.elapsed() >= deadline {
                return Err(Error::Timeout { node: self.node(), what: "CNPG following the peer", after: deadline });
            }
            tokio::time::sleep(self.poll()).await;
        }
    }
}
