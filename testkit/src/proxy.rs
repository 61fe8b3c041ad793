//! A userspace fault-injecting TCP proxy (this kernel has no `tc netem`).
//!
//! `Proxy::start(upstream)` listens on a free loopback port and forwards every connection to
//! `upstream`. The mode can be switched at any time, and a switch applies to connections that are
//! already established as well as to new ones:
//! - [`Mode::Pass`]: forward both ways.
//! - [`Mode::Blackhole`]: accept and hold connections, forward nothing (peers see timeouts).
//! - [`Mode::Refuse`]: reset connections (peers see errors at once).
//! - [`Mode::Delay`]: forward, each chunk held back for the given time (one-way latency; chunks
//!   in flight overlap, so throughput is not capped). A new connection also pays the round
//!   trip of the TCP handshake before its first byte moves.
//!
//! Dropping the proxy stops it and closes every connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Refuse,
    Delay(Duration),
}

impl Mode {
    fn cuts(self) -> bool {
        matches!(self, Mode::Blackhole | Mode::Refuse)
    }
}

pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy in [`Mode::Pass`] on 127.0.0.1 with an OS-assigned port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(Proxy { addr, mode, task })
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Connection tasks watch the mode channel; closing it makes them exit.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let mode = mode.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            serve(client, upstream, mode).await;
        });
    }
}

fn reset(stream: TcpStream) {
    // Linger 0 turns the close into a RST, like a refused or reset connection.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds a connection open, forwarding nothing, until the mode leaves Blackhole.
async fn hold(held: impl Send, mode: &mut watch::Receiver<Mode>) {
    while *mode.borrow_and_update() == Mode::Blackhole {
        if mode.changed().await.is_err() {
            break;
        }
    }
    drop(held);
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return reset(client),
        Mode::Blackhole => return hold(client, &mut mode).await,
        _ => {}
    }
    // The kernel completed the client's handshake at once; on a slow link it would have taken a
    // round trip. Holding the upstream connect that long delays the first answer the same way.
    if let Mode::Delay(d) = current {
        tokio::time::sleep(2 * d).await;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return reset(client) };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, mode.clone()));
    let down = tokio::spawn(pump(sr, cw, mode.clone()));
    let (up, down) = (up.await, down.await);
    let Ok(Some((cr, sw))) = up else { return };
    let Ok(Some((sr, cw))) = down else { return };
    let current = *mode.borrow_and_update();
    match current {
        Mode::Blackhole => {
            drop((sr, sw));
            hold((cr, cw), &mut mode).await;
        }
        _ => {
            let client = cr.reunite(cw).expect("same stream");
            drop((sr, sw));
            reset(client);
        }
    }
}

/// Copies one direction. Returns the halves if the copy stopped because the mode cut the link
/// (the caller then decides what the client sees), `None` if a side closed.
///
/// Delay works like a delay line, not a throttle: every chunk is stamped when it is read and
/// written once its delay has passed, so chunks in flight overlap as on a long link.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
    // Bounds memory per direction; a full line stops reading, so TCP backpressure takes over.
    const MAX_IN_FLIGHT: usize = 1024;
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut eof = false;
    loop {
        if mode.borrow_and_update().cuts() {
            return Some((from, to));
        }
        if eof && line.is_empty() {
            let _ = to.shutdown().await;
            return None;
        }
        let due = line.front().map(|(at, _)| *at);
        tokio::select! {
            r = from.read(&mut buf), if !eof && line.len() < MAX_IN_FLIGHT => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let delay = match *mode.borrow() {
                        Mode::Delay(d) => d,
                        _ => Duration::ZERO,
                    };
                    line.push_back((Instant::now() + delay, buf[..n].to_vec()));
                }
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let (_, chunk) = line.pop_front().expect("due implies a chunk");
                if mode.borrow().cuts() {
                    return Some((from, to));
                }
                if to.write_all(&chunk).await.is_err() {
                    return None;
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn modes_apply_to_established_and_new_connections() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut conn, Duration::from_secs(5)).await.as_deref(), Some(&b"ping"[..]));

        proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
        let t = std::time::Instant::now();
        assert!(roundtrip(&mut conn, Duration::from_secs(5)).await.is_some());
        assert!(t.elapsed() >= Duration::from_millis(400), "delay applies in both directions");

        // Blackhole: the established connection goes silent (no error, no data).
        proxy.set_mode(Mode::Blackhole);
        assert_eq!(roundtrip(&mut conn, Duration::from_millis(300)).await, None);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut fresh, Duration::from_millis(300)).await, None);

        // Refuse: new connections are reset.
        proxy.set_mode(Mode::Refuse);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut refused, Duration::from_secs(2)).await, None);

        proxy.set_mode(Mode::Pass);
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut healed, Duration::from_secs(5)).await.as_deref(), Some(&b"ping"[..]));
    }

    /// Latency, not a throttle: a burst of messages sent 20 ms apart through a 200 ms link all
    /// come back after about one round trip each, not one after another.
    #[tokio::test]
    async fn delay_overlaps_messages_in_flight() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
        let conn = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut read, mut write) = conn.into_split();
        let started = std::time::Instant::now();
        let sender = tokio::spawn(async move {
            for i in 0..10u8 {
                write.write_all(&[i]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            write
        });
        let mut echoed = Vec::new();
        let mut buf = [0u8; 16];
        while echoed.len() < 10 {
            let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "echo closed early");
            echoed.extend_from_slice(&buf[..n]);
        }
        let elapsed = started.elapsed();
        let _write = sender.await.unwrap();
        assert_eq!(echoed, (0..10).collect::<Vec<u8>>(), "order kept");
        assert!(elapsed >= Duration::from_millis(580), "last byte sent at ~180 ms plus a 400 ms round trip");
        assert!(elapsed < Duration::from_millis(1500), "a throttle would take ≥ 4 s, took {elapsed:?}");
    }
}
