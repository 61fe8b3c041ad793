//! Free loopback ports.
//!
//! The kernel hands out a free port when binding port 0; the listener is then dropped so the
//! fixture's server can bind it. Another process may grab the port in between, so fixtures that
//! start servers on these ports retry with a fresh port when the bind fails.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free for both TCP and UDP right now and has not been returned before
/// in this process.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("local addr").port();
        // DNS servers need the same number on UDP as well.
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut guard = HANDED_OUT.lock().expect("port registry poisoned");
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}
