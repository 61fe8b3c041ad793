//! The region-local daemon: ties the lease store, the PostgreSQL driver and PDM into planned
//! switchover and automatic failover, with an HTTP API, CLI, metrics and audit log.
