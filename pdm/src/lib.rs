//! PowerDNS manager: owns zones on a PowerDNS Authoritative server and commits LUA records
//! through its HTTP API, refusing commits from stale lease epochs.
