//! Asking the authoritative server what it answers now: no cache, no recursion, one server.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Resolver, TokioResolver};

use crate::PdmError;

pub struct DnsChecker {
    resolver: TokioResolver,
}

impl DnsChecker {
    pub fn new(server: SocketAddr, timeout: Duration) -> Result<Self, PdmError> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut builder =
            Resolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        // A cached answer would hide exactly the change a commit must confirm.
        opts.cache_size = 0;
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.recursion_desired = false;
        opts.attempts = 1;
        opts.timeout = timeout;
        let resolver = builder.build().map_err(|e| PdmError::Config(format!("DNS resolver: {e}")))?;
        Ok(Self { resolver })
    }

    /// The records `name` answers for `record_type`, sorted (empty for NODATA/NXDOMAIN).
    /// SERVFAIL, REFUSED and timeouts are errors.
    pub async fn query(&self, name: &str, record_type: &str) -> Result<Vec<String>, PdmError> {
        let rtype: RecordType =
            record_type.parse().map_err(|_| PdmError::InvalidRequest(format!("unknown record type {record_type}")))?;
        match self.resolver.lookup(name, rtype).await {
            Ok(lookup) => {
                let mut records: Vec<String> =
                    lookup.answers().iter().filter(|r| r.record_type() == rtype).map(|r| r.data.to_string()).collect();
                records.sort();
                Ok(records)
            }
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(PdmError::DnsVerify(format!("{name} {record_type}: {e}"))),
        }
    }
}
