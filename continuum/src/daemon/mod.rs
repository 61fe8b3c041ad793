//! The data region's daemon: the real [`crate::api::Orchestrator`].
//!
//! Each daemon embeds a lease node, drives its own region's PostgreSQL server with the plain
//! driver and commits DNS through PDM. One control loop per pair, each round:
//! observe ([`observe`]: one [`Observation`]) → decide ([`decide()`], pure: one [`Action`]) →
//! perform the action in the file that owns it.
//!
//! One planned switchover, through the files in reading order:
//! 1. [`requests`]: `POST /v1/switchover` checks the blockers and stores a new
//!    [`crate::record::SwitchoverRecord`] in the lease record (compare-and-set);
//! 2. [`pair`]: both regions' loops read it on their next round ([`observe`]);
//! 3. [`decide()`]: names the step this region performs now ([`crate::switchover::next_for`]);
//! 4. [`steps`]: one function per step, each a driver call (fence, catch-up, promote, rejoin,
//!    restore sync) or a lease call (move the lease); the result is stored with compare-and-set,
//!    so either daemon may crash between steps and the other resumes (or the old holder rolls
//!    back);
//! 5. [`dns`]: the `dns` step commits the pair's record through PDM with the new epoch.
//!
//! A switchover that does not move on ends at its step deadline ([`deadline`], pure; carried out
//! by [`resolve`], which also takes an operator's abort and backs off failed steps' retries).
//!
//! Outside switchovers: [`holder`] (renew through the lease handle, fence before the deadline,
//! keep the peer synchronous, give up a dead server's lease) and [`standby`] (stay a standby of
//! the holder, fail over when the holder's lease ran out). [`status`] projects what the loop saw
//! for the API; [`process`] starts and stops the local server; [`build`] makes a pair from the
//! configuration; [`watchdog`] feeds the fence watchdog ([`crate::watchdog`]) every lease
//! deadline, so the server is stopped in time even when this process is gone; [`shutdown`]
//! hands the lease over or fences on a graceful stop (`pairs[].on_shutdown`).

mod build;
mod claim;
mod deadline;
pub mod decide;
mod dns;
mod dns_reconcile;
mod holder;
mod observe;
mod pair;
mod process;
mod requests;
mod resolve;
mod shutdown;
mod standby;
mod status;
mod steps;
mod traffic;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lease::LeaseNode;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::decide::{Action, Observation, Timers, decide};
use self::pair::PairCtl;
use crate::Error;
use crate::api::{Event, Readiness};
use crate::audit::Audit;
use crate::config::{Config, Role};
use crate::metrics::Metrics;

/// How often readiness is re-evaluated.
const READINESS_TICK: Duration = Duration::from_millis(200);
/// The fence watchdog's state directory, inside `raft.data_dir`.
const WATCHDOG_DIR: &str = "fence-watchdog";

/// The daemon of a data region.
pub struct Daemon {
    region: String,
    node: LeaseNode,
    pairs: BTreeMap<String, Arc<PairCtl>>,
    events: broadcast::Sender<Event>,
    /// The control loops and the readiness loop.
    loops: TaskTracker,
    /// Tasks the loops spawn (fence watchers, renewal recorders); joined on shutdown.
    detached: TaskTracker,
    /// Each pair's control loop: its own stop (a child of the daemon's) and its task, so that a
    /// graceful stop can end one loop before it fences that pair's server.
    pair_loops: std::sync::Mutex<BTreeMap<String, (CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl Daemon {
    /// Starts the lease node and one control loop per pair (stopped by `stop`).
    pub async fn start(
        config: &Config,
        audit: Audit,
        metrics: Metrics,
        events: broadcast::Sender<Event>,
        readiness: watch::Sender<Readiness>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        debug_assert_eq!(config.role, Role::Data);
        let pdm = build::pdm_client(config)?;
        let mut parts = Vec::new();
        for (i, pair) in config.pairs.iter().enumerate() {
            parts.push(build::pair_parts(config, i, pair)?);
        }
        // Before the lease node: the watchdog takes over the guards a previous daemon left.
        let watchdog = watchdog::Watchdog::start(config.raft.data_dir.join(WATCHDOG_DIR)).await?;
        let node = LeaseNode::start(config.lease_node_config()).await.map_err(crate::config::lease_start_error)?;
        let detached = TaskTracker::new();
        let shared =
            build::Shared { lease: Arc::new(node.clone()), watchdog, pdm, audit, metrics, events: events.clone() };
        let pairs = parts
            .into_iter()
            .map(|parts| {
                let ctl = Arc::new(PairCtl::new(config, parts, &shared, detached.clone()));
                (ctl.name().to_string(), ctl)
            })
            .collect();
        let daemon = Arc::new(Self {
            region: config.region.clone(),
            node,
            pairs,
            events,
            loops: TaskTracker::new(),
            detached,
            pair_loops: Default::default(),
        });
        for (name, ctl) in &daemon.pairs {
            let pair_stop = stop.child_token();
            let task = daemon.loops.spawn(ctl.clone().run(pair_stop.clone()));
            daemon.loops.spawn(ctl.clone().dns_reconcile_loop(pair_stop.clone()));
            daemon.pair_loops.lock().expect("pair loops poisoned").insert(name.clone(), (pair_stop, task));
        }
        daemon.loops.spawn(daemon.clone().readiness_loop(readiness, stop.clone()));
        daemon.loops.close();
        Ok(daemon)
    }

    /// Waits for the loops (cancel their token first; [`Daemon::prepare_shutdown`] before that
    /// for a graceful stop), lets every held lease run out, waits for the tasks they spawned,
    /// then stops the lease node.
    pub async fn shutdown(&self) {
        self.loops.wait().await;
        for ctl in self.pairs.values() {
            // Stop renewing without releasing: the lease runs out, as after a crash (the fence
            // watchdog keeps its deadline). A planned handover goes through a switchover.
            ctl.abandon_lease().await;
        }
        // With the handles gone their watches close: fence watchers and renewal recorders end
        // (a fence already under way finishes first).
        self.detached.close();
        self.detached.wait().await;
        self.node.shutdown().await;
    }

    async fn readiness_loop(self: Arc<Self>, readiness: watch::Sender<Readiness>, stop: CancellationToken) {
        loop {
            let mut reasons = Vec::new();
            if self.node.status().leader.is_none() {
                reasons.push("lease store: no raft leader known".to_string());
            }
            for ctl in self.pairs.values() {
                reasons.extend(ctl.not_ready());
            }
            let state = if reasons.is_empty() { Readiness::Ready } else { Readiness::NotReady(reasons.join("; ")) };
            readiness.send_if_modified(|current| {
                if *current != state {
                    *current = state.clone();
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(READINESS_TICK) => {}
            }
        }
    }

    fn pair(&self, name: Option<&str>) -> Result<&Arc<PairCtl>, Error> {
        crate::api::validate::pair(&self.pairs, name)
    }
}
