//! Raft RPCs over HTTP/2 + mutual TLS. One reqwest client per peer, built once; every call carries
//! openraft's soft deadline as its timeout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::LeaseError;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Routes of the node endpoint.
pub(crate) mod route {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const SUBMIT: &str = "/api/submit";
    pub const READ: &str = "/api/read";
    pub const FORWARD_WRITE: &str = "/internal/write";
    pub const FORWARD_READ: &str = "/internal/read";
    pub const ADD_NODE: &str = "/admin/add-node";
    pub const REMOVE_NODE: &str = "/admin/remove-node";
    pub const STATUS: &str = "/admin/status";
}

/// Per-peer HTTP clients sharing this node's TLS identity.
#[derive(Clone)]
pub(crate) struct Peers {
    tls: Arc<crate::tls::TlsMaterial>,
    template: reqwest::Client,
    dial_overrides: Arc<BTreeMap<NodeId, String>>,
    clients: Arc<Mutex<HashMap<NodeId, reqwest::Client>>>,
    /// Peers with a connection warm-up in flight (at most one each).
    warming: Arc<Mutex<HashSet<NodeId>>>,
}

/// How long a background connection attempt may take (see [`Peers::warm_up`]).
const WARM_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Peers {
    pub(crate) fn new(
        tls: Arc<crate::tls::TlsMaterial>,
        dial_overrides: BTreeMap<NodeId, String>,
    ) -> Result<Self, LeaseError> {
        let template = tls.http_client()?;
        Ok(Peers {
            tls,
            template,
            dial_overrides: Arc::new(dial_overrides),
            clients: Default::default(),
            warming: Default::default(),
        })
    }

    /// The base URL to reach `id`, honouring dial overrides.
    pub(crate) fn url(&self, id: NodeId, node: &NodeInfo, path: &str) -> String {
        let addr = self.dial_overrides.get(&id).unwrap_or(&node.addr);
        format!("https://{addr}{path}")
    }

    /// The peer's own client: its own connection pool, so one slow peer cannot stall another.
    pub(crate) fn client(&self, id: NodeId) -> reqwest::Client {
        let mut clients = self.clients.lock().expect("peers lock poisoned");
        // A clone of one client would share its connection pool; each peer gets its own, built
        // once. Building cannot fail once the template was built from the same material.
        clients.entry(id).or_insert_with(|| self.tls.http_client().unwrap_or_else(|_| self.template.clone())).clone()
    }

    /// Opens a pooled connection to `id` in the background, without an RPC deadline.
    ///
    /// openraft gives every append/heartbeat RPC the heartbeat interval as its deadline, and a
    /// new connection costs about three round trips (TCP, TLS 1.3, the request). On a link whose
    /// round trip exceeds a third of the heartbeat interval no RPC could ever reconnect by
    /// itself: each attempt would be cancelled mid-handshake. RPCs reuse the warmed connection.
    fn warm_up(&self, id: NodeId, node: &NodeInfo) {
        if !self.warming.lock().expect("warming lock poisoned").insert(id) {
            return;
        }
        let (client, url, warming) = (self.client(id), self.url(id, node, route::STATUS), self.warming.clone());
        tokio::spawn(async move {
            // Any answer will do (even an error status): the connection is what we want.
            let outcome = client.get(url).timeout(WARM_UP_TIMEOUT).send().await;
            tracing::debug!(peer = id, ok = outcome.is_ok(), "connection warm-up finished");
            warming.lock().expect("warming lock poisoned").remove(&id);
        });
    }

    /// POSTs JSON and decodes a JSON answer, classifying transport failures.
    pub(crate) async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        id: NodeId,
        node: &NodeInfo,
        path: &str,
        body: &Req,
        timeout: std::time::Duration,
    ) -> Result<Resp, TransportError> {
        let resp =
            self.client(id).post(self.url(id, node, path)).timeout(timeout).json(body).send().await.map_err(|e| {
                if e.is_timeout() {
                    self.warm_up(id, node);
                }
                TransportError::from_reqwest(e)
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            // A refusal (403) carries the node's typed answer; anything else is a transport fault.
            if status == reqwest::StatusCode::FORBIDDEN
                && let Ok(answer) = serde_json::from_str(&text)
            {
                return Ok(answer);
            }
            return Err(TransportError::Failed(format!("HTTP {status}: {text}")));
        }
        resp.json().await.map_err(TransportError::from_reqwest)
    }
}

/// How an HTTP call failed, from the caller's point of view.
#[derive(Debug)]
pub(crate) enum TransportError {
    /// Not delivered (connect refused, TLS rejected): certainly not processed.
    NotDelivered(String),
    /// Ran out of time after sending: the peer may have processed it.
    TimedOut(String),
    /// Any other failure after sending.
    Failed(String),
}

impl TransportError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        let msg = format!("{e:#}");
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        let mut chain = String::new();
        while let Some(s) = source {
            chain.push_str(&s.to_string());
            chain.push_str(": ");
            source = s.source();
        }
        if e.is_connect() {
            TransportError::NotDelivered(chain)
        } else if e.is_timeout() {
            TransportError::TimedOut(msg)
        } else {
            TransportError::Failed(chain)
        }
    }

    pub(crate) fn into_lease_error(self, op: &str, timeout: std::time::Duration) -> LeaseError {
        match self {
            TransportError::NotDelivered(m) => LeaseError::Unreachable(m),
            TransportError::TimedOut(_) => {
                LeaseError::Unknown { op: op.to_string(), timeout_ms: timeout.as_millis() as u64 }
            }
            TransportError::Failed(m) => LeaseError::Transport(m),
        }
    }

    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, NodeInfo, E> {
        match self {
            TransportError::NotDelivered(m) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m))),
            TransportError::TimedOut(m) | TransportError::Failed(m) => {
                RPCError::Network(NetworkError::new(&std::io::Error::other(m)))
            }
        }
    }
}

/// openraft's network factory.
pub(crate) struct NetworkFactory {
    pub(crate) peers: Peers,
}

pub(crate) struct PeerConnection {
    peers: Peers,
    target: NodeId,
    node: NodeInfo,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerConnection {
        PeerConnection { peers: self.peers.clone(), target, node: node.clone() }
    }
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .peers
            .post(self.target, &self.node, path, req, option.soft_ttl())
            .await
            .map_err(TransportError::into_rpc)?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(route::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(route::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call(route::VOTE, &rpc, &option).await
    }
}
