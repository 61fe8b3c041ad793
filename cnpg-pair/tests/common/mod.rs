//! Driver settings for a test-kit node, shared by the integration tests and the benchmark (which
//! includes this file by path), so both follow `PlainNodeConfig` from one place.

use cnpg_pair::{PlainNodeConfig, RunAs, Upstream};
use testkit::PgNode;

/// The driver configuration for `node`, whose synchronous standby is `peer`.
pub fn node_config(node: &PgNode, peer: &PgNode) -> PlainNodeConfig {
    PlainNodeConfig {
        name: node.name.clone(),
        data_dir: node.data_dir.clone(),
        bin_dir: node.bin_dir.clone(),
        log_file: node.log_file.clone(),
        host: "127.0.0.1".into(),
        port: node.port,
        listen_addresses: None,
        socket_dir: node.socket_dir.clone(),
        superuser: "postgres".into(),
        dbname: "postgres".into(),
        run_as: node.run_as().map(|r| RunAs { uid: r.uid, gid: r.gid }),
        synchronous_standby: Some(peer.name.clone()),
        timeouts: Default::default(),
        rejoin: Default::default(),
        auth: Default::default(),
    }
}

/// `node` as the upstream a rejoining standby streams from.
pub fn upstream(node: &PgNode) -> Upstream {
    Upstream {
        name: node.name.clone(),
        host: "127.0.0.1".into(),
        port: node.port,
        user: "postgres".into(),
        dbname: "postgres".into(),
    }
}
