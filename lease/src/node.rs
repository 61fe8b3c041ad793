//! A lease node: raft + storage + the mutual-TLS endpoint + the client API. Data-region daemons
//! embed it; the witness runs it alone (`lease-node`, later `continuum witness`).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{ChangeMembers, Raft};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{GrantRules, NodeConfig};
use crate::error::LeaseError;
use crate::network::{NetworkFactory, Peers, TransportError, route};
use crate::readindex::ReadRounds;
use crate::storage::StateView;
use crate::tls::TlsMaterial;
use crate::types::{Command, CommandResult, LeaseRecord, LeaseRequest, NodeId, NodeInfo, RefusalReason, TypeConfig};

/// Largest request body the endpoint reads (raft RPCs included); larger is 413. Entries and
/// snapshot chunks stay well below it by construction (see `config::MAX_ENTRIES_PER_APPEND`).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Pause between attempts while no leader is known.
const LEADER_RETRY: Duration = Duration::from_millis(50);

/// Deadline of one attempt of a forwarded read: the raft election timeout minimum, at most
/// `call_timeout`. A leader that cannot answer within an election timeout is frozen or cut off,
/// and by then the followers have started replacing it; the read then asks again whoever leads
/// (reads have no side effect, so retrying is safe). A healthy leader answers within a heartbeat
/// round trip plus the forward, well below it (`validate` keeps it above two heartbeats).
fn forward_attempt_timeout(config: &NodeConfig) -> Duration {
    config.raft.election_timeout_min.min(config.lease.call_timeout)
}

/// Runs a node until `shutdown` resolves. What `lease-node` and `continuum witness` call.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), LeaseError> {
    let node = LeaseNode::start(config).await?;
    tracing::info!(id = node.id(), addr = %node.local_addr(), "lease node running");
    shutdown.await;
    node.shutdown().await;
    Ok(())
}

/// A summary of a node's raft state, for status pages and tests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// On the leader: milliseconds since a quorum last acknowledged it. openraft 0.9 keeps a
    /// leader that lost its quorum in office, so "leader known" alone does not mean healthy.
    #[serde(default)]
    pub millis_since_quorum_ack: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReadRequest {
    pair: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AddNodeRequest {
    id: NodeId,
    node: NodeInfo,
}

#[derive(Debug, Serialize, Deserialize)]
struct RemoveNodeRequest {
    id: NodeId,
}

struct Shared {
    id: NodeId,
    raft: Raft<TypeConfig>,
    view: StateView,
    peers: Peers,
    rules: GrantRules,
    /// When this node (re)started: until a full duration + margin has passed it has not watched
    /// any holder long enough to call a lease expired.
    started: Instant,
    /// Regions of the configured members (the bootstrap list), for [`members_only`].
    configured_regions: BTreeSet<String>,
    /// Subject common names of this node's own certificate: the identity its in-process
    /// callers (the daemon embedding it) act with, and the one its forwarded writes carry.
    own_names: Vec<String>,
    /// Pairs this node may create a record for (`NodeConfig::pairs`).
    pairs: BTreeSet<String>,
    /// Deadline of one forwarded read attempt (see [`forward_attempt_timeout`]).
    forward_attempt: Duration,
    /// Shares leadership confirmations between overlapping reads (see `readindex`).
    read_rounds: ReadRounds<ReadIndex>,
}

/// A ReadIndex round's outcome: the log id the state machine must reach.
type ReadIndex = Result<Option<openraft::LogId<NodeId>>, CheckIsLeaderFailure>;
type CheckIsLeaderFailure = RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>;

impl Shared {
    /// Whether `name` (a certificate's common name) is the region of a configured member or of
    /// a node in the current membership.
    fn is_member_region(&self, name: &str) -> bool {
        self.configured_regions.contains(name)
            || self.raft.metrics().borrow().membership_config.nodes().any(|(_, info)| info.region == name)
    }

    /// A node that never joined a cluster has no membership and no state to protect: it must
    /// accept the leader that is adding it, whose region it cannot know yet.
    fn uninitialised(&self) -> bool {
        self.raft.metrics().borrow().membership_config.nodes().next().is_none()
    }
}

/// A running lease node. Cheap to clone.
#[derive(Clone)]
pub struct LeaseNode {
    shared: Arc<Shared>,
    server: axum_server::Handle<SocketAddr>,
    server_task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    local_addr: SocketAddr,
}

impl LeaseNode {
    /// Opens storage, starts raft and the endpoint, and bootstraps the cluster from
    /// `config.members` if this node is one of them and has never been initialised.
    pub async fn start(config: NodeConfig) -> Result<Self, LeaseError> {
        config.validate()?;
        let tls = Arc::new(TlsMaterial::load(&config.tls)?);
        let own_names = tls.own_names();
        if let Some(me) = config.members.iter().find(|m| m.id == config.id)
            && !own_names.contains(&me.region)
        {
            return Err(LeaseError::config(
                "tls.cert",
                format!(
                    "the certificate's common name {own_names:?} must be this node's region `{}`: peers \
                     authorize every write by it",
                    me.region
                ),
            ));
        }
        let server_tls = tls.server_config()?;
        let peers = Peers::new(tls, config.dial_overrides.clone())?;
        let (log, sm) = crate::storage::open(&config.data_dir)?;
        let view = sm.view();
        let raft_config = Arc::new(config.raft.to_openraft("continuum-lease")?);
        let raft = Raft::new(config.id, raft_config, NetworkFactory { peers: peers.clone() }, log, sm)
            .await
            .map_err(|e| LeaseError::Raft(e.to_string()))?;
        let configured_regions = config.members.iter().map(|m| m.region.clone()).collect();
        let shared = Arc::new(Shared {
            id: config.id,
            raft,
            view,
            peers,
            rules: config.lease.clone(),
            started: Instant::now(),
            configured_regions,
            own_names,
            pairs: config.pairs.iter().cloned().collect(),
            forward_attempt: forward_attempt_timeout(&config),
            read_rounds: ReadRounds::new(),
        });

        let listener = std::net::TcpListener::bind(config.listen)
            .map_err(|e| LeaseError::config("listen", format!("cannot bind {}: {e}", config.listen)))?;
        listener.set_nonblocking(true).map_err(|e| LeaseError::config("listen", e.to_string()))?;
        let local_addr = listener.local_addr().map_err(|e| LeaseError::config("listen", e.to_string()))?;
        let server = axum_server::Handle::new();
        let app = router(shared.clone());
        let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server_tls));
        let srv = axum_server::from_tcp_rustls(listener, rustls)
            .map_err(|e| LeaseError::config("listen", e.to_string()))?
            .handle(server.clone());
        let server_task = tokio::spawn(async move {
            if let Err(e) = srv.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "lease endpoint stopped");
            }
        });

        let server_task = Arc::new(tokio::sync::Mutex::new(Some(server_task)));
        let node = LeaseNode { shared, server, server_task, local_addr };
        node.bootstrap(&config).await?;
        Ok(node)
    }

    async fn bootstrap(&self, config: &NodeConfig) -> Result<(), LeaseError> {
        if !config.members.iter().any(|m| m.id == config.id) {
            return Ok(());
        }
        let raft = &self.shared.raft;
        if raft.is_initialized().await.map_err(|e| LeaseError::Raft(e.to_string()))? {
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeInfo> = config.members.iter().map(|m| (m.id, m.node_info())).collect();
        // Every member does this with the same list; whoever is second gets NotAllowed, which is fine.
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "initialize skipped");
        }
        Ok(())
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The bound endpoint address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The raft handle, for metrics and advanced use.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.shared.raft
    }

    /// Stops the endpoint and raft. Storage stays as it is on disk.
    pub async fn shutdown(&self) {
        self.server.shutdown();
        // Wait until the listener is closed, so a restart can bind the same address at once.
        if let Some(task) = self.server_task.lock().await.take() {
            let _ = task.await;
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// This node's view of the cluster (not linearizable).
    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// The lease record as applied on this node; may be stale. Use [`crate::LeaseApi::read`] for decisions.
    pub fn local_record(&self, pair: &str) -> Option<LeaseRecord> {
        self.shared.view.record(pair)
    }

    /// Adds a node: as a learner (waits until it caught up), then as a voter via joint consensus.
    pub async fn add_node(&self, id: NodeId, node: NodeInfo, timeout: Duration) -> Result<NodeStatus, LeaseError> {
        self.shared.add_node(id, node, timeout).await
    }

    /// Removes a voter. Do this before wiping its data.
    pub async fn remove_node(&self, id: NodeId, timeout: Duration) -> Result<NodeStatus, LeaseError> {
        self.shared.remove_node(id, timeout).await
    }
}

#[async_trait::async_trait]
impl crate::client::LeaseApi for LeaseNode {
    async fn submit(&self, req: LeaseRequest) -> Result<LeaseRecord, LeaseError> {
        // In process, the embedding daemon acts with this node's own certificate identity.
        self.shared.submit(req, &self.shared.own_names, Route::Forward).await
    }

    async fn read(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        self.shared.read(pair).await
    }
}

fn quorum_not_reached(e: &CheckIsLeaderFailure) -> bool {
    matches!(e, RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
}

fn refused((reason, current): (RefusalReason, LeaseRecord)) -> LeaseError {
    LeaseError::Refused { reason, current: Box::new(current) }
}

impl Shared {
    fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        NodeStatus {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    fn data_regions(&self) -> BTreeSet<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().nodes().filter(|(_, n)| !n.witness).map(|(_, n)| n.region.clone()).collect()
    }

    /// Validates, authorizes (`caller`: the certificate names the request comes with) and
    /// commits one request.
    async fn submit(&self, req: LeaseRequest, caller: &[String], route: Route) -> Result<LeaseRecord, LeaseError> {
        req.validate()?;
        crate::authz::authorize_request(&req, caller, || self.data_regions())?;
        self.check_pair_known(req.pair(), self.pairs.contains(req.pair()))?;
        match &req {
            LeaseRequest::Acquire { pair, region, duration_ms } => {
                self.check_data_region(region)?;
                let cmd = self.grant_gate(pair, region, *duration_ms)?;
                self.write(cmd, req.op_name(), route).await
            }
            LeaseRequest::Claim { region, .. } => {
                self.check_data_region(region)?;
                self.write(Command::Request(req.clone()), req.op_name(), route).await
            }
            _ => self.write(Command::Request(req.clone()), req.op_name(), route).await,
        }
    }

    /// A request may create a pair's record only if the pair is configured (`may_create`);
    /// otherwise the record must exist already. Records are never deleted, so a stale local
    /// view can only err towards refusing.
    fn check_pair_known(&self, pair: &str, may_create: bool) -> Result<(), LeaseError> {
        if may_create || self.view.record(pair).is_some() {
            return Ok(());
        }
        Err(LeaseError::UnknownPair(pair.to_string()))
    }

    /// Leader side of a forwarded command: the forwarding member may send only what its own
    /// certificate allows, and a grant must also pass this node's observed-time rule, so a
    /// member cannot skip the gate by forwarding a hand-made acquire.
    fn check_forwarded(&self, cmd: &Command, caller: &[String]) -> Result<(), LeaseError> {
        let data_regions = self.data_regions();
        crate::authz::authorize_command(cmd, caller, || data_regions.clone())?;
        let pair = match cmd {
            Command::Acquire { pair, .. } => pair,
            Command::Request(r) => r.pair(),
        };
        self.check_pair_known(pair, caller.iter().any(|n| data_regions.contains(n)))?;
        if let Command::Acquire { pair, candidate, duration_ms, .. } = cmd {
            self.grant_gate(pair, candidate, *duration_ms)?;
        }
        Ok(())
    }

    fn check_data_region(&self, region: &str) -> Result<(), LeaseError> {
        let regions = self.data_regions();
        if !regions.contains(region) {
            return Err(LeaseError::InvalidInput(format!(
                "region `{region}` is not a data region of this cluster (known: {regions:?})"
            )));
        }
        Ok(())
    }

    /// The observed-time rule (client-go): another region's lease is taken over only after this
    /// node has seen no change of the record for the holder's full duration plus the grant margin,
    /// counted from when it applied the latest change, and has itself been up that long. The
    /// resulting entry is a compare-and-swap on what was observed, so a renewal that commits in
    /// between defeats it.
    fn grant_gate(&self, pair: &str, region: &str, duration_ms: u64) -> Result<Command, LeaseError> {
        let rec =
            self.view.record(pair).unwrap_or_else(|| LeaseRecord { pair: pair.to_string(), ..Default::default() });
        if let Some(holder) = rec.holder.as_deref().filter(|h| *h != region) {
            let now = Instant::now();
            let seen_at = self.view.observation(pair).filter(|o| o.seq == rec.seq).map_or(now, |o| o.at);
            let allowed_at =
                crate::gate::takeover_allowed_at(rec.duration(), self.rules.grant_margin, seen_at, self.started);
            if now < allowed_at {
                let wait_ms = (allowed_at - now).as_millis() as u64;
                tracing::debug!(pair, holder, wait_ms, "acquire refused: holder may still be valid");
                return Err(refused((RefusalReason::HeldByOther, rec)));
            }
        }
        Ok(Command::Acquire {
            pair: pair.to_string(),
            candidate: region.to_string(),
            duration_ms,
            expected_epoch: rec.epoch,
            expected_seq: rec.seq,
        })
    }

    /// Commits `cmd` through the raft leader within `call_timeout`: here, or on another node
    /// (forwarded with this node's identity, or for a remote caller answered with
    /// [`LeaseError::NotLeader`]). A timeout after submission is [`LeaseError::Unknown`].
    async fn write(&self, cmd: Command, op: &str, route: Route) -> Result<LeaseRecord, LeaseError> {
        let timeout = self.rules.call_timeout;
        let deadline = Instant::now() + timeout;
        let submitted = AtomicBool::new(false);
        let attempt = async {
            loop {
                submitted.store(true, Ordering::SeqCst);
                let err = match self.raft.client_write(cmd.clone()).await {
                    Ok(resp) => return resp.data.into_result(),
                    Err(e) => e,
                };
                let Some(fwd) = err.forward_to_leader::<NodeInfo>() else {
                    return Err(LeaseError::Raft(err.to_string()));
                };
                match (fwd.leader_id, fwd.leader_node.clone()) {
                    (Some(leader), Some(node)) if leader != self.id && route == Route::Redirect => {
                        return Err(LeaseError::NotLeader { leader: Some(node.addr.clone()) });
                    }
                    (Some(leader), Some(node)) if leader != self.id => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        let reply: Result<CommandResult, LeaseError> =
                            match self.peers.post(leader, &node, route::FORWARD_WRITE, &cmd, remaining).await {
                                Ok(r) => r,
                                Err(TransportError::NotDelivered(m)) => {
                                    tracing::debug!(leader, error = %m, "leader unreachable, retrying");
                                    submitted.store(false, Ordering::SeqCst);
                                    tokio::time::sleep(LEADER_RETRY).await;
                                    continue;
                                }
                                Err(e) => return Err(e.into_lease_error(op, timeout)),
                            };
                        match reply {
                            Ok(r) => return r.into_result(),
                            // The forwardee lost leadership before appending: try again.
                            Err(LeaseError::NoLeader) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    _ => {}
                }
                submitted.store(false, Ordering::SeqCst);
                tokio::time::sleep(LEADER_RETRY).await;
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) if !submitted.load(Ordering::SeqCst) => Err(LeaseError::NoLeader),
            Err(_) => Err(LeaseError::Unknown { op: op.to_string(), timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// Leader side of a forwarded write. Never forwards again (no loops).
    async fn write_as_leader(&self, cmd: Command, caller: &[String]) -> Result<CommandResult, LeaseError> {
        self.check_forwarded(&cmd, caller)?;
        let timeout = self.rules.call_timeout;
        match tokio::time::timeout(timeout, self.raft.client_write(cmd)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) if e.forward_to_leader::<NodeInfo>().is_some() => Err(LeaseError::NoLeader),
            Ok(Err(e)) => Err(LeaseError::Raft(e.to_string())),
            Err(_) => Err(LeaseError::Unknown { op: "forwarded write".into(), timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    /// What openraft's `ensure_linearizable` does, with the leadership confirmation shared
    /// between overlapping reads (see `readindex` for why that is safe): once it returns `Ok`,
    /// this node's state machine reflects every write that completed before the call.
    async fn linearizable(&self) -> Result<(), CheckIsLeaderFailure> {
        let raft = self.raft.clone();
        let read_log_id =
            self.read_rounds.confirm(move || async move { raft.get_read_log_id().await.map(|(id, _)| id) }).await?;
        if let Some(id) = read_log_id {
            self.raft
                .wait(None)
                .applied_index_at_least(Some(id.index), "linearizable read")
                .await
                .map_err(|_| RaftError::Fatal(openraft::error::Fatal::Stopped))?;
        }
        Ok(())
    }

    /// Linearizable read: ReadIndex on the leader (this node or, forwarded, another one).
    async fn read(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        let timeout = self.rules.call_timeout;
        let deadline = Instant::now() + timeout;
        let attempt = async {
            loop {
                let err = match self.linearizable().await {
                    Ok(_) => return Ok(self.view.record(pair)),
                    Err(e) => e,
                };
                if quorum_not_reached(&err) {
                    // A new leader whose heartbeat round missed a quorum: transient, try again.
                    tokio::time::sleep(LEADER_RETRY).await;
                    continue;
                }
                let Some(fwd) = err.forward_to_leader::<NodeInfo>() else {
                    return Err(LeaseError::Raft(err.to_string()));
                };
                if let (Some(leader), Some(node)) = (fwd.leader_id, fwd.leader_node.clone())
                    && leader != self.id
                {
                    // Capped per attempt, unlike a write: a timed-out read changed nothing, so
                    // it is asked again (of the new leader once one is known), not "unknown".
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let body = ReadRequest { pair: pair.to_string() };
                    let cap = remaining.min(self.forward_attempt);
                    match self.peers.post(leader, &node, route::FORWARD_READ, &body, cap).await {
                        Ok(Err(LeaseError::NoLeader)) | Err(TransportError::NotDelivered(_)) => {}
                        Err(TransportError::TimedOut(m)) => {
                            tracing::debug!(leader, error = %m, "forwarded read timed out, asking again");
                            continue;
                        }
                        Ok(r) => return r,
                        Err(e) => return Err(e.into_lease_error("read", timeout)),
                    }
                }
                tokio::time::sleep(LEADER_RETRY).await;
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(LeaseError::Unknown { op: "read".into(), timeout_ms: timeout.as_millis() as u64 }))
    }

    async fn read_as_leader(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        let timeout = self.rules.call_timeout;
        match tokio::time::timeout(timeout, self.linearizable()).await {
            Ok(Ok(_)) => Ok(self.view.record(pair)),
            // The forwarder retries on NoLeader: nothing was read.
            Ok(Err(e)) if e.forward_to_leader::<NodeInfo>().is_some() || quorum_not_reached(&e) => {
                Err(LeaseError::NoLeader)
            }
            Ok(Err(e)) => Err(LeaseError::Raft(e.to_string())),
            Err(_) => Err(LeaseError::Unknown { op: "read".into(), timeout_ms: timeout.as_millis() as u64 }),
        }
    }

    async fn apply_change(
        &self,
        change: &MembershipChange,
    ) -> Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>> {
        match change {
            MembershipChange::Add(id, node) => {
                self.raft.add_learner(*id, node.clone(), true).await?;
                self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false).await?;
            }
            MembershipChange::Remove(id) => {
                self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false).await?;
            }
        }
        Ok(())
    }

    /// Runs a membership change here if this node leads, else on the leader.
    async fn membership_change<Req: Serialize>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
        change: MembershipChange,
    ) -> Result<NodeStatus, LeaseError> {
        let run = async {
            let mut result = self.apply_change(&change).await;
            // The previous change's final (uniform) config is not committed yet: wait for it.
            while let Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) = &result
            {
                tokio::time::sleep(LEADER_RETRY).await;
                result = self.apply_change(&change).await;
            }
            match result {
                Ok(()) => Ok(self.status()),
                Err(e) => match e.forward_to_leader::<NodeInfo>() {
                    Some(fwd) => match (fwd.leader_id, fwd.leader_node.clone()) {
                        (Some(id), Some(node)) if id != self.id => {
                            let r: Result<NodeStatus, LeaseError> = self
                                .peers
                                .post(id, &node, path, body, timeout)
                                .await
                                .map_err(|e| e.into_lease_error("membership change", timeout))?;
                            r
                        }
                        _ => Err(LeaseError::NoLeader),
                    },
                    None => Err(LeaseError::Raft(e.to_string())),
                },
            }
        };
        tokio::time::timeout(timeout, run).await.unwrap_or(Err(LeaseError::Unknown {
            op: "membership change".into(),
            timeout_ms: timeout.as_millis() as u64,
        }))
    }

    async fn add_node(&self, id: NodeId, node: NodeInfo, timeout: Duration) -> Result<NodeStatus, LeaseError> {
        let body = AddNodeRequest { id, node: node.clone() };
        self.membership_change(route::ADD_NODE, &body, timeout, MembershipChange::Add(id, node)).await
    }

    async fn remove_node(&self, id: NodeId, timeout: Duration) -> Result<NodeStatus, LeaseError> {
        let body = RemoveNodeRequest { id };
        self.membership_change(route::REMOVE_NODE, &body, timeout, MembershipChange::Remove(id)).await
    }
}

/// Where a write that reaches a follower goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To the leader, forwarded by this node with its own identity (in-process callers).
    Forward,
    /// Back to the remote caller as [`LeaseError::NotLeader`], so the leader authorizes the
    /// caller's own certificate.
    Redirect,
}

enum MembershipChange {
    /// Learner first (waits until caught up), then voter via joint consensus.
    Add(NodeId, NodeInfo),
    Remove(NodeId),
}

type S = State<Arc<Shared>>;

fn router(shared: Arc<Shared>) -> Router {
    // The whole endpoint sits behind mutual TLS: a peer or client without a certificate from the
    // cluster CA never gets past the handshake, so every route here is authenticated. Raft and
    // forwarded calls are further limited to members: a forwarded write skips the grant timing
    // rules (the forwarding member applied them), so a mere client must not reach it.
    let members = Router::new()
        .route(route::APPEND, post(append))
        .route(route::VOTE, post(vote))
        .route(route::SNAPSHOT, post(snapshot))
        .route(route::FORWARD_WRITE, post(forward_write))
        .route(route::FORWARD_READ, post(forward_read))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), members_only));
    Router::new()
        .route(route::SUBMIT, post(submit))
        .route(route::READ, post(read))
        .route(route::ADD_NODE, post(add_node))
        .route(route::REMOVE_NODE, post(remove_node))
        .route(route::STATUS, get(status))
        .merge(members)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// The subject common names of the caller's client certificate (mutual TLS made it present one).
struct Caller(Vec<String>);

impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &St) -> Result<Self, Self::Rejection> {
        Ok(Caller(caller_names(&parts.extensions)))
    }
}

fn caller_names(extensions: &axum::http::Extensions) -> Vec<String> {
    extensions
        .get::<Arc<axum_server::tls::TlsInfo>>()
        .and_then(|tls| tls.peer_certificates.first())
        .map(|der| crate::tls::common_names(der))
        .unwrap_or_default()
}

/// A refusal as the routes answer it: HTTP 403 with the same JSON body as any other answer.
fn forbidden<T: Serialize>(e: LeaseError) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::warn!(error = %e, "request refused");
    (axum::http::StatusCode::FORBIDDEN, Json(Err::<T, LeaseError>(e))).into_response()
}

/// Lets a request through only if the client certificate's subject common name is a member's
/// region (see [`Shared::is_member_region`]). A node that never joined a cluster accepts raft
/// traffic from its configured members only; one configured with no members (to be added
/// later) must accept the leader adding it, whose region it cannot know yet, but only on the
/// raft routes: nothing forwarded, since it has no state and no leader to protect.
async fn members_only(
    State(s): S,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let names = caller_names(request.extensions());
    let path = request.uri().path();
    let raft_route = [route::APPEND, route::VOTE, route::SNAPSHOT].contains(&path);
    let joining = s.uninitialised() && s.configured_regions.is_empty() && raft_route;
    if joining || names.iter().any(|name| s.is_member_region(name)) {
        return next.run(request).await;
    }
    forbidden::<()>(LeaseError::Forbidden(format!("{path} needs a member's certificate; this one names {names:?}")))
}

async fn append(
    State(s): S,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(s.raft.append_entries(req).await)
}

async fn vote(
    State(s): S,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(s.raft.vote(req).await)
}

async fn snapshot(
    State(s): S,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(s.raft.install_snapshot(req).await)
}

async fn submit(State(s): S, Caller(names): Caller, Json(req): Json<LeaseRequest>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.submit(req, &names, Route::Redirect).await {
        Err(e @ LeaseError::Forbidden(_)) => forbidden::<LeaseRecord>(e),
        r => Json(r).into_response(),
    }
}

async fn read(State(s): S, Json(req): Json<ReadRequest>) -> Json<Result<Option<LeaseRecord>, LeaseError>> {
    Json(s.read(&req.pair).await)
}

async fn forward_write(State(s): S, Caller(names): Caller, Json(cmd): Json<Command>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.write_as_leader(cmd, &names).await {
        Err(e @ LeaseError::Forbidden(_)) => forbidden::<CommandResult>(e),
        r => Json(r).into_response(),
    }
}

async fn forward_read(State(s): S, Json(req): Json<ReadRequest>) -> Json<Result<Option<LeaseRecord>, LeaseError>> {
    Json(s.read_as_leader(&req.pair).await)
}

async fn add_node(State(s): S, Caller(names): Caller, Json(req): Json<AddNodeRequest>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = crate::authz::authorize_admin(&names, |n| s.is_member_region(n)) {
        return forbidden::<NodeStatus>(e);
    }
    let timeout = s.rules.call_timeout * 10;
    Json(s.add_node(req.id, req.node, timeout).await).into_response()
}

async fn remove_node(
    State(s): S,
    Caller(names): Caller,
    Json(req): Json<RemoveNodeRequest>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(e) = crate::authz::authorize_admin(&names, |n| s.is_member_region(n)) {
        return forbidden::<NodeStatus>(e);
    }
    let timeout = s.rules.call_timeout * 10;
    Json(s.remove_node(req.id, timeout).await).into_response()
}

async fn status(State(s): S) -> Json<NodeStatus> {
    Json(s.status())
}
