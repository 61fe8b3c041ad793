//! A PowerDNS API call that times out has an unknown outcome: PDM re-reads before answering.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Harness, Options};
use pdm::{CommitRequest, PdmError, RecordSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a PATCH.
#[derive(Clone, Copy)]
enum PatchFault {
    /// Forward it, but hold PowerDNS' answer back: applied, yet the caller times out.
    DelayAnswer(Duration),
    /// Never forward it: not applied, and the caller times out.
    Swallow,
}

/// A TCP proxy in front of PowerDNS' API that interferes with PATCH requests only.
fn start_proxy(upstream: SocketAddr, fault: PatchFault, armed: Arc<AtomicBool>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let armed = armed.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let patch_seen = Arc::new(AtomicBool::new(false));
                let seen = patch_seen.clone();
                let upstream_task = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if buf.starts_with(b"PATCH") && armed.load(Ordering::SeqCst) {
                            seen.store(true, Ordering::SeqCst);
                        }
                        // Swallow the PATCH and whatever follows it on this connection (its body
                        // may come in a later read).
                        if seen.load(Ordering::SeqCst) && matches!(fault, PatchFault::Swallow) {
                            continue;
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let (true, PatchFault::DelayAnswer(delay)) = (patch_seen.load(Ordering::SeqCst), fault) {
                        tokio::time::sleep(delay).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                upstream_task.abort();
            });
        }
    });
    Ok(addr)
}

async fn harness_behind(fault: PatchFault, armed: Arc<AtomicBool>) -> anyhow::Result<Harness> {
    Harness::start_with(Options {
        api_url: Some(Box::new(move |pdns| {
            let upstream: SocketAddr = pdns.api_url.trim_start_matches("http://").parse().expect("API address");
            let proxy = start_proxy(upstream, fault, armed).expect("proxy");
            format!("http://{proxy}")
        })),
        api_timeout: "1s",
        ..Options::default()
    })
    .await
}

fn request(epoch: u64, address: &str) -> CommitRequest {
    CommitRequest {
        zone: "unknown.test".into(),
        epoch,
        records: vec![RecordSpec {
            name: "app.unknown.test".into(),
            rtype: "A".into(),
            ttl: 30,
            content: Some(address.into()),
            lua: None,
        }],
    }
}

#[tokio::test]
async fn a_timed_out_patch_that_was_applied_is_reported_applied() -> anyhow::Result<()> {
    let armed = Arc::new(AtomicBool::new(false));
    let h = harness_behind(PatchFault::DelayAnswer(Duration::from_secs(3)), armed.clone()).await?;
    h.create_zone("unknown.test").await?;
    armed.store(true, Ordering::SeqCst);
    let response = h.client.commit(&request(1, "192.0.2.1")).await?;
    assert_eq!(response.answers[0].records, ["192.0.2.1"]);
    assert_eq!(h.dns.a("app.unknown.test").await?, ["192.0.2.1"]);
    Ok(())
}

#[tokio::test]
async fn a_timed_out_patch_that_was_not_applied_is_unknown_not_failed() -> anyhow::Result<()> {
    let armed = Arc::new(AtomicBool::new(false));
    let h = harness_behind(PatchFault::Swallow, armed.clone()).await?;
    h.create_zone("unknown.test").await?;
    h.client.commit(&request(1, "192.0.2.1")).await?;
    armed.store(true, Ordering::SeqCst);
    let outcome = h.client.commit(&request(2, "192.0.2.2")).await;
    assert!(
        matches!(&outcome, Err(PdmError::Remote { status: 504, code, .. }) if code == "outcome_unknown"),
        "{outcome:?}"
    );
    assert_eq!(h.dns.a("app.unknown.test").await?, ["192.0.2.1"]);
    // Retrying the same epoch once PowerDNS is reachable again completes the commit.
    armed.store(false, Ordering::SeqCst);
    let response = h.client.commit(&request(2, "192.0.2.2")).await?;
    assert_eq!(response.answers[0].records, ["192.0.2.2"]);
    Ok(())
}
