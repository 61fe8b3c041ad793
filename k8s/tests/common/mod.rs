//! Shared by the Kubernetes tests.

use serde_json::json;

/// A `Continuum` the schema accepts, with daemons on loopback ports nothing listens on.
pub fn valid_continuum(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "dr.openova.io/v1",
        "kind": "Continuum",
        "metadata": { "name": name },
        "spec": {
            "application": "orders",
            "regions": [
                { "name": "a", "nodeId": 1, "apiEndpoint": "http://127.0.0.1:1", "raftAddress": "a.example:7100",
                  "tlsSecret": "tls-a", "dnsAddress": "192.0.2.1",
                  "postgres": { "host": "pg-a.example", "dataDir": "/var/lib/postgresql/15/main", "cnpgCluster": "pg" } },
                { "name": "b", "nodeId": 2, "apiEndpoint": "http://127.0.0.1:2", "raftAddress": "b.example:7100",
                  "tlsSecret": "tls-b", "dnsAddress": "192.0.2.2",
                  "postgres": { "host": "pg-b.example", "dataDir": "/var/lib/postgresql/15/main" } }
            ],
            "witness": { "name": "w", "nodeId": 3, "raftAddress": "w.example:7100", "tlsSecret": "tls-w" },
            "durability": "required",
            "dns": { "record": "db", "lua": { "function": "ifportup", "port": 5432, "addresses": ["192.0.2.1", "192.0.2.2"] } },
            "pdm": { "url": "http://pdm.example:8081", "zone": "example.org", "tokenSecret": { "name": "pdm", "key": "token" } },
            "objectives": { "rtoSeconds": 30 },
            "apiTokens": {
                "tokensFile": { "name": "continuum-tokens", "key": "tokens.toml" },
                "viewer": { "name": "continuum-api", "key": "viewer" },
                "owner": { "name": "continuum-api", "key": "owner" }
            }
        }
    })
}
