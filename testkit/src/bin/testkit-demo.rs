//! Starts the test kit's two-region data plane on loopback (a synchronous PostgreSQL pair and a
//! PowerDNS server), prints how to reach it, and stops everything on Ctrl-C.
//!
//! A stand-in until `continuum demo` runs the daemons on top of the same parts.

use testkit::{PgPair, PowerDns};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    testkit::install_crypto_provider();
    let pair = PgPair::start().await?;
    let pdns = PowerDns::start().await?;
    println!("region a (primary): {}", pair.primary.conninfo());
    println!("region b (standby): {}", pair.standby.conninfo());
    println!("writable primary:   {}", pair.multi_host_conninfo());
    println!("PowerDNS API:       {} (X-API-Key: {})", pdns.api_url, pdns.api_key);
    println!("PowerDNS DNS:       {} (dig @{} -p {} ...)", pdns.dns_addr, pdns.dns_addr.ip(), pdns.dns_addr.port());
    println!("data and logs:      {} and {}", pair.dir().display(), pdns.dir().display());
    println!("Ctrl-C stops everything and removes the files.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
