//! Raft-replicated lease store: the single source of truth for which region may run the writable
//! primary of each protected pair, and the fencing epoch every side effect carries.
//!
//! - [`LeaseNode`] / [`run`]: one member of the openraft cluster (data region or witness) with its
//!   durable file storage and a mutual-TLS HTTP/2 endpoint.
//! - [`LeaseApi`]: acquire / renew / release / set_sync_standby / cas_switchover / read, in process
//!   ([`LeaseNode`]) or remote ([`RemoteLease`]).
//! - [`LeaseHandle`]: keeps a granted lease renewed and tells the holder to fence *before* its
//!   deadline (measured on `CLOCK_BOOTTIME` from the send time of the last successful renewal).
//!
//! Safety rules (ARCHITECTURE §3): grants are compare-and-swap log entries applied
//! deterministically; the epoch is the granting entry's log index; a grant to another region needs
//! `duration + grant_margin` without an observed change on the granting node's clock, and a
//! (re)started node waits that long too; a timed-out call is "unknown".
//!
//! Layout:
//! - `types`: raft type config, [`LeaseRecord`], [`LeaseRequest`], [`Command`] and the
//!   deterministic [`LeaseTable::apply`].
//! - `gate`: the two timing rules ([`takeover_allowed_at`], [`holder_deadline`]) and a
//!   deterministic simulation test of them over thousands of seeds.
//! - `storage`: CRC-checked append-only log + atomically replaced vote / state / snapshot files.
//! - `network`, `tls`: HTTP/2 over mutual TLS (rustls + ring), one client per peer.
//! - `node`: [`LeaseNode`], the grant gate, forwarding to the leader, membership, HTTP routes.
//! - `readindex`: leadership confirmations shared between overlapping linearizable reads.
//! - `handle`, `clock`: [`LeaseHandle`] on `CLOCK_BOOTTIME` ([`Clock`] for injected skew).
//! - `config`: [`NodeConfig`] (TOML) with WAN defaults and a fast profile.

mod authz;
mod client;
mod clock;
mod config;
mod error;
mod gate;
mod handle;
mod network;
mod node;
mod readindex;
mod storage;
mod tls;
mod types;

pub use client::{LeaseApi, RemoteLease};
pub use clock::{BootClock, BootInstant, Clock, SkewedClock, boot_clock};
pub use config::{GrantRules, Member, NodeConfig, RaftTimings, TlsFiles};
pub use config::{MAX_ENTRIES_PER_APPEND, SNAPSHOT_CHUNK_BYTES};
pub use error::LeaseError;
pub use gate::{holder_deadline, takeover_allowed_at};
pub use handle::{HandleConfig, LeaseHandle, LeaseStatus, Renewal};
pub use node::MAX_BODY_BYTES;
pub use node::{LeaseNode, NodeStatus, run};
pub use types::{
    Command, CommandResult, HistoryEvent, HistoryKind, LeaseRecord, LeaseRequest, LeaseTable, NodeId, NodeInfo,
    RefusalReason, TypeConfig,
};
pub use types::{MAX_SWITCHOVER_RECORD_BYTES, MAX_TOKEN_BYTES};
