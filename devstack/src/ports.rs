//! Free loopback ports.
//!
//! The kernel hands out a free port when binding port 0; the listener is then dropped so the
//! server can bind it. Another process may grab the port in between, so whoever starts a server
//! on such a port retries with a fresh one when the bind fails ([`crate::pg`], [`crate::pdns`]).

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

use crate::{Result, io};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free for both TCP and UDP right now and has not been returned before
/// in this process.
pub fn free_port() -> Result<u16> {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0 for a free port"))?;
        let port = tcp.local_addr().map_err(io("local address of a bound port"))?.port();
        // DNS servers need the same number on UDP as well.
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| super::free_port().unwrap()).collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
