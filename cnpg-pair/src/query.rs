//! What both drivers' direct PostgreSQL steps share: how they connect and how a query runs
//! under a deadline with errors that name the node.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Config;

use crate::error::{Error, Result};

/// Connection settings for the daemon's own sessions (observation and driver steps alike).
pub(crate) fn connect_config(host: &str, port: u16, user: &str, dbname: &str, connect: Duration) -> Config {
    let mut config = Config::new();
    config.host(host).port(port).user(user).dbname(dbname).application_name("continuum").connect_timeout(connect);
    config
}

/// Runs a query on `node` under a deadline; errors name that node.
pub(crate) async fn timed_on<T>(
    node: &str,
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Query { node: node.to_string(), what, source }),
        Err(_) => Err(Error::Timeout { node: node.to_string(), what, after }),
    }
}
