//! The client API the daemon uses: [`LeaseApi`], implemented in-process by [`crate::LeaseNode`]
//! and over mutual TLS by [`RemoteLease`].

use std::sync::Arc;
use std::time::Duration;

use crate::config::TlsFiles;
use crate::error::LeaseError;
use crate::network::{Peers, route};
use crate::tls::TlsMaterial;
use crate::types::{LeaseRecord, LeaseRequest, NodeInfo};

/// Lease operations against the store. Every call has a deadline; a call that runs out returns
/// [`LeaseError::Unknown`], never a success.
#[async_trait::async_trait]
pub trait LeaseApi: Send + Sync {
    /// Submits one request; `Err(Refused)` means the store said no and nothing changed.
    async fn submit(&self, req: LeaseRequest) -> Result<LeaseRecord, LeaseError>;

    /// Linearizable read of one pair's record (`None`: never used).
    async fn read(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError>;

    /// Takes the lease for `region`. Refused with `HeldByOther` while another region's lease may
    /// still be valid as seen by the serving node. Returns the record with the new epoch.
    async fn acquire(&self, pair: &str, region: &str, duration: Duration) -> Result<LeaseRecord, LeaseError> {
        let duration_ms = duration.as_millis() as u64;
        self.submit(LeaseRequest::Acquire { pair: pair.into(), region: region.into(), duration_ms }).await
    }

    async fn renew(&self, pair: &str, region: &str, epoch: u64) -> Result<LeaseRecord, LeaseError> {
        self.submit(LeaseRequest::Renew { pair: pair.into(), region: region.into(), epoch }).await
    }

    /// Gives the lease up. Fence first: after this returns another region may be granted at once.
    async fn release(&self, pair: &str, region: &str, epoch: u64) -> Result<LeaseRecord, LeaseError> {
        self.submit(LeaseRequest::Release { pair: pair.into(), region: region.into(), epoch }).await
    }

    async fn set_sync_standby(
        &self,
        pair: &str,
        region: &str,
        epoch: u64,
        standby: Option<&str>,
    ) -> Result<LeaseRecord, LeaseError> {
        let standby = standby.map(str::to_string);
        self.submit(LeaseRequest::SetSyncStandby { pair: pair.into(), region: region.into(), epoch, standby }).await
    }

    async fn cas_switchover(
        &self,
        pair: &str,
        epoch: u64,
        expected_version: u64,
        record: Option<serde_json::Value>,
    ) -> Result<LeaseRecord, LeaseError> {
        self.submit(LeaseRequest::CasSwitchover { pair: pair.into(), epoch, expected_version, record }).await
    }
}

/// [`LeaseApi`] over HTTP/2 + mutual TLS against one node's endpoint (the node forwards to the
/// raft leader).
#[derive(Clone)]
pub struct RemoteLease {
    peers: Peers,
    node: NodeInfo,
    timeout: Duration,
}

impl RemoteLease {
    /// `addr` is the node's `host:port`; `timeout` bounds every call (use more than the node's
    /// `lease.call_timeout`, so the node's own "unknown" answer arrives first).
    pub fn new(addr: &str, tls: &TlsFiles, timeout: Duration) -> Result<Self, LeaseError> {
        let peers = Peers::new(Arc::new(TlsMaterial::load(tls)?), Default::default())?;
        let node = NodeInfo { region: String::new(), addr: addr.to_string(), witness: false };
        Ok(RemoteLease { peers, node, timeout })
    }

    /// The node's raft status.
    pub async fn status(&self) -> Result<crate::NodeStatus, LeaseError> {
        let url = self.peers.url(0, &self.node, route::STATUS);
        let resp = self.peers.client(0).get(url).timeout(self.timeout).send().await;
        let resp = resp.map_err(|e| LeaseError::Unreachable(format!("{e:#}")))?;
        resp.json().await.map_err(|e| LeaseError::Transport(e.to_string()))
    }

    /// Adds a node (learner, then voter) through this node.
    pub async fn add_node(&self, id: u64, node: NodeInfo) -> Result<crate::NodeStatus, LeaseError> {
        let body = serde_json::json!({ "id": id, "node": node });
        self.call(route::ADD_NODE, &body, "add_node").await?
    }

    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        op: &str,
    ) -> Result<Resp, LeaseError> {
        self.peers.post(0, &self.node, path, body, self.timeout).await.map_err(|e| e.into_lease_error(op, self.timeout))
    }
}

/// How many leader redirects one remote submit follows (a leader change mid-call adds one).
const MAX_REDIRECTS: usize = 3;

#[async_trait::async_trait]
impl LeaseApi for RemoteLease {
    /// A node that does not lead answers [`LeaseError::NotLeader`] with the leader's address
    /// (writes are authorized by the caller's own certificate, so only the leader can take
    /// them); this follows up to [`MAX_REDIRECTS`] redirects.
    async fn submit(&self, req: LeaseRequest) -> Result<LeaseRecord, LeaseError> {
        let mut target = self.node.clone();
        for _ in 0..MAX_REDIRECTS {
            let answer: Result<Result<LeaseRecord, LeaseError>, _> =
                self.peers.post(0, &target, route::SUBMIT, &req, self.timeout).await;
            match answer.map_err(|e| e.into_lease_error(req.op_name(), self.timeout))? {
                Err(LeaseError::NotLeader { leader: Some(addr) }) => target.addr = addr,
                other => return other,
            }
        }
        Err(LeaseError::NoLeader)
    }

    async fn read(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
        self.call(route::READ, &serde_json::json!({ "pair": pair }), "read").await?
    }
}
