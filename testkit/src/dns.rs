//! Asking one authoritative server directly, with no cache, what it answers now.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Resolver, TokioResolver};

/// What a server answered for one name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The record data, as presentation text (e.g. `127.0.0.1`), sorted.
    Records(Vec<String>),
    /// NOERROR without records of that type, or NXDOMAIN.
    Empty,
}

/// A resolver bound to a single server, with caching off, so each query reaches the server.
pub struct DnsProbe {
    resolver: TokioResolver,
}

impl DnsProbe {
    pub fn new(server: SocketAddr) -> anyhow::Result<Self> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut builder =
            Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.recursion_desired = false;
        opts.attempts = 1;
        opts.timeout = Duration::from_secs(2);
        Ok(Self { resolver: builder.build().context("build resolver")? })
    }

    /// Queries `name` (absolute, with or without the trailing dot) for `record_type`. A server
    /// failure (SERVFAIL, REFUSED, timeout) is an error.
    pub async fn query(&self, name: &str, record_type: RecordType) -> anyhow::Result<DnsAnswer> {
        let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
        match self.resolver.lookup(fqdn.as_str(), record_type).await {
            Ok(lookup) => {
                let mut records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .map(|r| r.data.to_string())
                    .collect();
                records.sort();
                Ok(if records.is_empty() { DnsAnswer::Empty } else { DnsAnswer::Records(records) })
            }
            Err(e) if e.is_no_records_found() => Ok(DnsAnswer::Empty),
            Err(e) => Err(anyhow::Error::new(e).context(format!("query {fqdn} {record_type}"))),
        }
    }

    /// The A records of `name`, sorted; empty for NXDOMAIN or no data.
    pub async fn a(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self.query(name, RecordType::A).await? {
            DnsAnswer::Records(records) => records,
            DnsAnswer::Empty => Vec::new(),
        })
    }
}
