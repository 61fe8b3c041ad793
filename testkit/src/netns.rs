//! Separate hosts on one machine: one network namespace per host, joined by veth pairs to a
//! bridge in the test's own namespace (which gets the `.254` address, so the test reaches every
//! host and hosts reach services the test runs there). Partitions are `iptables` DROP rules
//! inside a host's namespace: packets vanish, so peers see timeouts, not errors.
//!
//! Needs root (CI runs as root), `ip` (iproute2) and `iptables`. Everything is removed on drop.
//! Processes started in a namespace keep it alive until they exit; dropping the fixture only
//! removes names, links and rules.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, bail};

/// A handle on one network namespace: commands and threads can be started inside it.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
    file: Arc<File>,
}

impl NetNs {
    fn open(name: &str) -> anyhow::Result<NetNs> {
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        Ok(NetNs { name: name.to_string(), file: Arc::new(file) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes `cmd` start inside this namespace (its children inherit it).
    pub fn apply(&self, cmd: &mut Command) {
        self.apply_as(cmd, None);
    }

    /// Like [`NetNs::apply`], then drops to `(uid, gid)`. Use this instead of `Command::uid`:
    /// std switches users before `pre_exec` runs, and joining a namespace needs root.
    pub fn apply_as(&self, cmd: &mut Command, user: Option<(u32, u32)>) {
        let file = self.file.clone();
        // SAFETY: the closure only makes async-signal-safe system calls; the fd stays open
        // because the closure owns a reference to the file.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET))?;
                if let Some((uid, gid)) = user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                Ok(())
            });
        }
    }

    /// A PostgreSQL [`devstack::Launcher`] that starts the server's commands in this namespace
    /// as the PostgreSQL account (see [`devstack::PgPairBuilder::place`]).
    pub fn launcher(&self) -> devstack::Launcher {
        let netns = self.clone();
        devstack::Launcher::new(move |cmd, run_as| netns.apply_as(cmd, run_as.map(|u| (u.uid, u.gid))))
    }

    /// Runs `work` on a new thread inside this namespace, on its own current-thread runtime:
    /// every socket it opens belongs to the namespace (a client "in that region").
    pub fn spawn<T, F, Fut>(&self, work: F) -> std::thread::JoinHandle<anyhow::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let file = self.file.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            // SAFETY: setns on the calling thread only; the fd is open for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns into {name}: {}", std::io::Error::last_os_error());
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(work())
        })
    }
}

/// One host: its namespace and address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub addr: Ipv4Addr,
    pub netns: NetNs,
    /// The host's end of its veth pair (inside the namespace).
    link: String,
    /// The bridge's end of it (in the caller's namespace).
    outside: String,
}

/// Hosts joined by a bridge. See the module docs.
pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    hosts: Vec<Host>,
    forward_rule: Option<Vec<String>>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("spawn {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A /24 in 10.0.0.0/8 that no interface of this machine uses.
fn free_subnet() -> anyhow::Result<[u8; 2]> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output().context("ip addr show")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    for _ in 0..100 {
        let net = [rand::random_range(100..250u8), rand::random::<u8>()];
        if !used.contains(&format!(" 10.{}.{}.", net[0], net[1])) {
            return Ok(net);
        }
    }
    bail!("no free 10.x.y.0/24 subnet found")
}

impl Network {
    /// Creates one namespace per name (names: up to 4 ASCII letters/digits), addresses
    /// `10.x.y.1`, `.2`, ... in order, and the bridge with `10.x.y.254` in the caller's namespace.
    pub fn create(names: &[&str]) -> anyhow::Result<Network> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces need root");
        }
        for name in names {
            if name.is_empty() || name.len() > 4 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("host name {name:?}: use 1-4 ASCII letters or digits (it becomes part of link names)");
            }
        }
        let tag = format!("{:05x}", rand::random_range(0..0xfffffu32));
        let net = free_subnet()?;
        let mut network = Network {
            bridge: format!("ctb{tag}"),
            gateway: Ipv4Addr::new(10, net[0], net[1], 254),
            hosts: Vec::new(),
            forward_rule: None,
        };
        // From here on, Drop removes whatever was created.
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", network.gateway), "dev", &network.bridge])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        // With br_netfilter loaded, bridged frames traverse the FORWARD chain; a DROP policy
        // there (Docker sets one) would silently partition every host.
        let rule: Vec<String> =
            ["FORWARD", "-i", &network.bridge, "-o", &network.bridge, "-j", "ACCEPT"].map(String::from).into();
        let mut insert = vec!["-w".to_string(), "-I".to_string()];
        insert.extend(rule.iter().cloned());
        if run("iptables", &insert.iter().map(String::as_str).collect::<Vec<_>>()).is_ok() {
            network.forward_rule = Some(rule);
        }
        for (i, name) in names.iter().enumerate() {
            let ns = format!("ct{tag}{name}");
            let outside = format!("ctv{tag}{name}");
            let inside = format!("ctp{tag}{name}");
            ip(&["netns", "add", &ns])?;
            let netns = NetNs::open(&ns)?;
            let addr = Ipv4Addr::new(10, net[0], net[1], i as u8 + 1);
            network.hosts.push(Host {
                name: name.to_string(),
                addr,
                netns,
                link: inside.clone(),
                outside: outside.clone(),
            });
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &network.bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The caller's address on the bridge: bind services here that hosts must reach.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Cuts `name` off the network: every packet in or out of its link is dropped.
    pub fn isolate(&self, name: &str) -> anyhow::Result<()> {
        let host = self.host(name);
        let ns = host.netns.name();
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-i", &host.link, "-j", "DROP"])?;
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-A", "OUTPUT", "-o", &host.link, "-j", "DROP"])
    }

    /// Cuts the link between hosts `from` and `to` only (both directions); each keeps reaching
    /// every other host. [`Network::heal`] of `from` undoes it.
    pub fn cut(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let host = self.host(from);
        let peer = self.host(to).addr.to_string();
        let ns = host.netns.name();
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"])
    }

    /// Undoes [`Network::isolate`] and [`Network::cut`] from `name`.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        let ns = self.host(name).netns.name();
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-F", "INPUT"])?;
        run("ip", &["netns", "exec", ns, "iptables", "-w", "-F", "OUTPUT"])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting the namespace's name frees its veth end once no process holds it; delete
            // the outside end explicitly so the link goes now.
            let _ = ip(&["link", "del", &host.outside]);
            let _ = ip(&["netns", "del", host.netns.name()]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if let Some(rule) = &self.forward_rule {
            let mut args = vec!["-w", "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = run("iptables", &args);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn reaches(addr: std::net::SocketAddr) -> bool {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        else {
            return false;
        };
        let mut buf = [0u8; 2];
        s.write_all(b"hi").await.is_ok()
            && matches!(tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await, Ok(Ok(_)))
    }

    /// Hosts reach each other and the test; an isolated host reaches nobody and nobody reaches
    /// it, until healed; dropping the fixture removes the namespaces and the bridge.
    #[test]
    fn hosts_talk_until_isolated() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let network = Network::create(&["x", "y"]).unwrap();
        let (x, y) = (network.host("x").clone(), network.host("y").clone());
        // An echo server inside x on its own address.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let _server = x.netns.spawn(move || async move {
            let listener = tokio::net::TcpListener::bind((x.addr, 0)).await?;
            ready_tx.send(listener.local_addr()?)?;
            loop {
                let (mut s, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
            #[allow(unreachable_code)]
            Ok(())
        });
        let echo = ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let from_y = |network_addr| {
            y.netns.spawn(move || async move { Ok(reaches(network_addr).await) }).join().unwrap().unwrap()
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        assert!(runtime.block_on(reaches(echo)), "the test reaches x");
        assert!(from_y(echo), "y reaches x");
        network.isolate("x").unwrap();
        assert!(!runtime.block_on(reaches(echo)), "the test cannot reach isolated x");
        assert!(!from_y(echo), "y cannot reach isolated x");
        network.heal("x").unwrap();
        assert!(from_y(echo), "y reaches x again");
        let names: Vec<String> = network.hosts.iter().map(|h| h.netns.name().to_string()).collect();
        let bridge = network.bridge.clone();
        drop(network);
        let listed = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
        assert!(names.iter().all(|n| !listed.contains(n.as_str())), "namespaces removed: {listed}");
        assert!(!Command::new("ip").args(["link", "show", &bridge]).output().unwrap().status.success());
    }
}
