//! The data-plane driver: observes a synchronous PostgreSQL pair, decides whether the standby is
//! eligible for a lossless promotion, and fences, promotes and rejoins nodes. Despite the crate's
//! name it holds two drivers behind the same [`PairDriver`] trait: the plain-PostgreSQL driver
//! ([`PlainDriver`], the daemon runs the server) and the CloudNativePG driver ([`CnpgDriver`],
//! the daemon patches its region's `Cluster`); [`process`] is the one place that starts and
//! stops a server with `pg_ctl`.
//!
//! A planned switchover A → B at this level (the daemon adds the lease and DNS steps between):
//! 1. `a.fence()` → [`FenceOutcome`] with the end of A's shutdown checkpoint;
//! 2. `b.wait_caught_up(&final_position, deadline)`: B received and replayed it (same system and
//!    timeline), so nothing A acknowledged is missing;
//! 3. (durability `preferred` only) `b.drop_sync(Durability::Preferred, store)`, so B accepts
//!    writes before A is back; under `required` B waits for A;
//! 4. `b.promote(&PromoteRequest { epoch, .. })`: records the epoch in `continuum.fencing`;
//! 5. `a.rejoin_as_standby(&upstream_b)`: follow, else `pg_rewind`, else re-clone;
//! 6. `b.enable_sync("a", store)`: B waits for A again, then the store records it.
//!
//! Every step is idempotent; after a crash the daemon repeats the step it was in.
//! [`evaluate`] decides whether an automatic failover may promote the standby.
//! Database roles: the driver's steps connect as the admin role (a superuser: fence, promote,
//! checkpoint, rewind, replicate); observation sessions may use a role with `pg_monitor` only
//! (for `pg_ls_waldir()` and `pg_stat_replication` details), [`PgAuth::observer_user`]. Every
//! session's TLS and password come from [`PgAuth`] (`tls`).

pub mod cnpg;
mod driver;
pub mod eligibility;
mod error;
mod lsn;
pub mod observe;
pub mod plain;
pub mod process;
mod query;
mod sync;
mod tls;

pub use cnpg::{CnpgConfig, CnpgDriver};
pub use driver::{
    CaughtUp, FenceMethod, FenceOutcome, PairDriver, PromoteRequest, Promotion, RejoinMethod, Rejoined, Upstream,
};
pub use eligibility::{Eligibility, EligibilityPolicy, NotPromotable, evaluate};
pub use error::{Error, ErrorClass, Result};
pub use lsn::{Lsn, LsnParseError, WalPosition};
pub use observe::{
    Lag, Observed, Observer, PairSnapshot, PrimaryObservation, ReplicaStatus, StandbyObservation, SyncState,
};
pub use plain::{ControlData, PlainDriver, PlainNodeConfig, PlainTimeouts, RejoinPolicy};
pub use process::RunAs;
pub use query::Connector;
pub use sync::{Durability, StoreWriteError, SyncRecordStore};
pub use tls::{PgAuth, SslMode};
