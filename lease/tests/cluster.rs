//! Lease store behaviour on real clusters over real mutual-TLS sockets.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOpts, TestCa, fast_handle, fast_rules, raw_client};
use std::sync::Arc;

use lease::{BootClock, Clock, LeaseApi, LeaseError, LeaseHandle, LeaseStatus, RefusalReason, SkewedClock, boot_clock};
use testkit::proxy::Mode;

use common::PAIR;

fn refusal(r: Result<lease::LeaseRecord, LeaseError>) -> RefusalReason {
    match r {
        Err(LeaseError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Acquire, renew, release; a second region is refused while the lease is valid; after the holder
/// stops renewing the other region gets a higher epoch, but not before duration + margin after
/// the last renewal it could have seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_acquire_renew_release_refuse_and_regrant() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let (a, b) = (cluster.api(1), cluster.api(2));
    let duration = Duration::from_secs(2);

    let first = a.acquire(PAIR, "a", duration).await?;
    assert_eq!(first.holder.as_deref(), Some("a"));
    assert!(first.epoch > 0);
    let renewed = a.renew(PAIR, "a", first.epoch).await?;
    assert_eq!(renewed.epoch, first.epoch, "a renewal keeps the epoch");
    let released = a.release(PAIR, "a", first.epoch).await?;
    assert_eq!(released.holder, None);
    // A released lease can be taken at once, with a new, higher epoch.
    let second = a.acquire(PAIR, "a", duration).await?;
    assert!(second.epoch > first.epoch);

    // b is refused while a renews; so is a stale epoch and the witness region.
    for _ in 0..3 {
        a.renew(PAIR, "a", second.epoch).await?;
        // b's node may not have applied the latest change yet: then its compare-and-swap fails.
        let reason = refusal(b.acquire(PAIR, "b", duration).await);
        assert!(matches!(reason, RefusalReason::HeldByOther | RefusalReason::ChangedSinceObserved), "{reason:?}");
    }
    assert_eq!(refusal(a.renew(PAIR, "a", first.epoch).await), RefusalReason::NotHolder);
    // b cannot act for the witness, and the witness itself can never hold a lease.
    assert!(matches!(b.acquire(PAIR, "w", duration).await, Err(LeaseError::Forbidden(_))));
    assert!(matches!(cluster.api(3).acquire(PAIR, "w", duration).await, Err(LeaseError::InvalidInput(_))));
    let linearizable = b.read(PAIR).await?.expect("record exists");
    assert_eq!((linearizable.holder.as_deref(), linearizable.epoch), (Some("a"), second.epoch));

    // a stops renewing. t_last_send is the latest moment b's node could have seen a's renewal from.
    let t_last_send = BootClock.now();
    a.renew(PAIR, "a", second.epoch).await?;
    let mut attempts = 0;
    let (granted, t_granted) = loop {
        attempts += 1;
        match b.acquire(PAIR, "b", duration).await {
            Ok(rec) => break (rec, BootClock.now()),
            Err(LeaseError::Refused { reason: RefusalReason::HeldByOther, .. }) => {}
            Err(e) => anyhow::bail!("unexpected error while waiting for the lease: {e}"),
        }
        anyhow::ensure!(attempts < 400, "b never got the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waited = t_granted.saturating_duration_since(t_last_send);
    let minimum = duration + fast_rules().grant_margin;
    assert!(waited >= minimum, "b granted {waited:?} after a's last renewal, minimum {minimum:?}");
    assert!(waited < minimum + Duration::from_secs(2), "b waited {waited:?}, far more than {minimum:?}");
    assert_eq!(granted.holder.as_deref(), Some("b"));
    assert!(granted.epoch > second.epoch, "epochs strictly increase");
    // a's next renewal learns it lost.
    assert_eq!(refusal(a.renew(PAIR, "a", second.epoch).await), RefusalReason::NotHolder);
    Ok(())
}

/// A certificate from the cluster CA that does not name a member (an operator's or a client's)
/// may use the API, whose writes go through the grant rules, but not the member routes: a
/// forwarded write skips those rules, so a client could otherwise take a lease still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_routes_refuse_certificates_that_name_no_member() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts::default()).await?;
    let held = cluster.api(1).acquire(PAIR, "a", Duration::from_secs(30)).await?;
    let forged = lease::Command::Acquire {
        pair: PAIR.into(),
        candidate: "b".into(),
        duration_ms: 30_000,
        expected_epoch: held.epoch,
        expected_seq: held.seq,
    };
    let client = raw_client(&cluster.ca.node_files("client")?)?;
    for (id, cfg) in &cluster.configs {
        let base = format!("https://{}", cfg.listen);
        let response = client.post(format!("{base}/internal/write")).json(&forged).send().await?;
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN, "node {id}: forwarded write by a client");
        let body = response.text().await?;
        assert!(body.contains("client"), "node {id}: the refusal names the certificate: {body}");
        let response = client.post(format!("{base}/raft/vote")).body("{}").send().await?;
        assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN, "node {id}: raft route by a client");
        // The API stays open to it.
        let response = client.get(format!("{base}/admin/status")).send().await?;
        assert!(response.status().is_success(), "node {id}: status for a client: {}", response.status());
    }
    let after = cluster.api(2).read(PAIR).await?.expect("record");
    assert_eq!((after.holder.as_deref(), after.epoch, after.seq), (Some("a"), held.epoch, held.seq), "nothing changed");

    // A member's certificate passes the same check (the route then does its own work).
    let member = raw_client(&cluster.ca.node_files("b")?)?;
    let leader = cluster.leader().await?;
    let base = format!("https://{}", cluster.configs[&leader].listen);
    let response =
        member.post(format!("{base}/internal/read")).json(&serde_json::json!({ "pair": PAIR })).send().await?;
    assert!(response.status().is_success(), "member forwarded read: {}", response.status());
    Ok(())
}

/// A node whose certificate comes from another CA can neither call the API nor take part in
/// raft: it never learns a leader or any entry, and the real cluster is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_wrong_certificate_is_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default()).await?;
    // Replace the witness by an impostor with the same id and address but a foreign certificate.
    cluster.stop(3).await;
    let rogue_ca = TestCa::new(cluster.dir.path(), "rogue")?;
    let mut rogue_cfg = cluster.configs[&3].clone();
    rogue_cfg.tls = rogue_ca.node_files("w")?;
    rogue_cfg.data_dir = cluster.dir.path().join("rogue");
    let rogue = lease::LeaseNode::start(rogue_cfg.clone()).await?;
    cluster.leader().await?;

    // Nodes 1 and 2 still form a quorum.
    let held = cluster.api(1).acquire(PAIR, "a", Duration::from_secs(2)).await?;
    cluster.api(1).renew(PAIR, "a", held.epoch).await?;

    // A client holding the foreign certificate is refused at the handshake; nothing changes.
    let addr = cluster.configs[&1].listen.to_string();
    let foreign = lease::RemoteLease::new(&addr, &rogue_cfg.tls, Duration::from_secs(2))?;
    let err = foreign.release(PAIR, "a", held.epoch).await.expect_err("foreign client must be refused");
    assert!(matches!(err, LeaseError::Unreachable(_) | LeaseError::Transport(_)), "{err:?}");
    // The same call with a valid certificate works, so the refusal was the certificate.
    let good = lease::RemoteLease::new(&addr, &cluster.ca.node_files("client")?, Duration::from_secs(2))?;
    assert_eq!(good.read(PAIR).await?.expect("record").holder.as_deref(), Some("a"));

    // Give the impostor several election rounds: it must not get votes or entries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = rogue.status();
    assert_ne!(status.leader, Some(1));
    assert_ne!(status.leader, Some(2));
    assert!(rogue.local_record(PAIR).is_none(), "impostor received replicated state");
    let leader = cluster.leader().await?;
    assert!(leader == 1 || leader == 2);
    assert_eq!(cluster.node(1).local_record(PAIR).expect("record").epoch, held.epoch);
    rogue.shutdown().await;
    Ok(())
}

/// All three nodes stop and come back from disk; a torn record at the end of one node's log is cut
/// off; holder and epoch are intact, and the restarted nodes honour the restart rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_all_from_disk_recovers_state_and_torn_tail() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default()).await?;
    let a = cluster.api(1);
    let held = a.acquire(PAIR, "a", Duration::from_secs(2)).await?;
    a.set_sync_standby(PAIR, "a", held.epoch, Some("b")).await?;
    let before = a.renew(PAIR, "a", held.epoch).await?;
    // Let the followers apply it too.
    testkit::wait_until("all nodes applied the renewal", Duration::from_secs(5), || async {
        Ok((1..=3).all(|id| cluster.node(id).local_record(PAIR).is_some_and(|r| r.seq == before.seq)))
    })
    .await?;
    for id in 1..=3 {
        cluster.stop(id).await;
    }

    // A crash in the middle of an append: a header and half a payload, never acknowledged.
    let log_path = cluster.configs[&1].data_dir.join("log").join("log");
    let intact_len = std::fs::metadata(&log_path)?.len();
    let payload = br#"{"Entry":{"log_id":{"leader_id":{"term":99,"node_id":1},"index":99999},"payload":"Blank"}}"#;
    let mut torn = Vec::new();
    torn.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    torn.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    torn.extend_from_slice(&payload[..payload.len() / 2]);
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&log_path)?.write_all(&torn)?;

    for id in 1..=3 {
        cluster.restart(id).await?;
    }
    assert_eq!(std::fs::metadata(&log_path)?.len(), intact_len, "torn tail truncated");
    cluster.leader().await?;
    let after = cluster.api(2).read(PAIR).await?.expect("record survived");
    assert_eq!(after.holder.as_deref(), Some("a"));
    assert_eq!(after.epoch, held.epoch);
    assert_eq!(after.sync_standby.as_deref(), Some("b"));
    // Restarted nodes have not watched the holder: b is refused although a stopped renewing.
    assert_eq!(refusal(cluster.api(2).acquire(PAIR, "b", Duration::from_secs(2)).await), RefusalReason::HeldByOther);
    // The holder's epoch is still good.
    assert_eq!(cluster.api(1).renew(PAIR, "a", held.epoch).await?.epoch, held.epoch);
    Ok(())
}

/// The holder's node is cut off from both peers. The holder's handle says "fence now" before its
/// deadline; the other side is granted epoch+1 only after that deadline: the two validity windows,
/// from recorded boot-clock timestamps, do not overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holder_fences_before_the_other_side_is_granted() -> anyhow::Result<()> {
    partitioned_holder(1.0).await
}

/// The same with the holder's clock running 5 % slow (its deadline comes later in real time);
/// the drift margin (10 % of the duration here) absorbs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holder_with_a_slow_clock_still_fences_in_time() -> anyhow::Result<()> {
    partitioned_holder(0.95).await
}

async fn partitioned_holder(clock_rate: f64) -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOpts { proxies: true, ..Default::default() }).await?;
    let cfg = fast_handle();
    let holder_clock = Arc::new(SkewedClock::new(clock_rate, Duration::ZERO));
    let handle = LeaseHandle::acquire(cluster.api(1), PAIR, "a", cfg.clone(), holder_clock.clone()).await?;
    let epoch = handle.epoch();
    let mut watch = handle.watch();
    // Some renewals go through first.
    testkit::wait_for("three renewals", Duration::from_secs(5), || {
        let seq = cluster.node(2).local_record(PAIR).map(|r| r.seq).unwrap_or(0);
        async move { Ok((seq >= 4).then_some(())) }
    })
    .await?;
    assert!(handle.is_valid());

    cluster.isolate(1, Mode::Blackhole);
    let t_cut = BootClock.now();
    // Record when the holder is told to fence, and its final deadline (in real boot time).
    let to_real = holder_clock.clone();
    let fence = tokio::spawn(async move {
        loop {
            if let LeaseStatus::FenceNow { deadline, .. } = *watch.borrow_and_update() {
                return Some((BootClock.now(), to_real.to_real(deadline)));
            }
            if watch.changed().await.is_err() {
                return None;
            }
        }
    });

    // b tries all along; record when it is granted.
    let b = cluster.api(2);
    let (granted, t_granted) = loop {
        match b.acquire(PAIR, "b", cfg.duration).await {
            Ok(rec) => break (rec, BootClock.now()),
            Err(LeaseError::Refused { .. } | LeaseError::Unknown { .. } | LeaseError::NoLeader) => {}
            Err(e) => anyhow::bail!("unexpected: {e}"),
        }
        anyhow::ensure!(BootClock.now().saturating_duration_since(t_cut) < Duration::from_secs(15), "b never granted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (t_fence, a_deadline) = tokio::time::timeout(Duration::from_secs(5), fence).await??.expect("fence signal");
    assert!(t_fence < a_deadline, "fence now ({t_fence:?}) must come before the deadline ({a_deadline:?})");
    assert!(a_deadline < t_granted, "windows overlap: a valid until {a_deadline:?}, b granted at {t_granted:?}");
    assert!(granted.epoch > epoch);
    assert!(!handle.is_valid());

    // After healing, the old holder learns that it lost.
    cluster.heal();
    let mut watch = handle.watch();
    tokio::time::timeout(Duration::from_secs(10), watch.wait_for(|s| matches!(s, LeaseStatus::Lost { .. }))).await??;
    Ok(())
}

/// Three `lease-node` processes; the raft leader is killed with SIGKILL while a lease is held and
/// renewed through another node. The lease survives with the same epoch and renewals continue
/// after the re-election; the killed node comes back from disk and agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_raft_leader_keeps_the_lease() -> anyhow::Result<()> {
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir()?;
    let ca = TestCa::new(dir.path(), "cluster")?;
    let opts = ClusterOpts::default();
    let listen = common::listen_addrs(&[1, 2, 3]);
    let configs = common::make_configs(dir.path(), &ca, &opts, &listen, |_| BTreeMap::new())?;
    let mut procs: BTreeMap<u64, common::NodeProcess> = BTreeMap::new();
    for (id, cfg) in &configs {
        procs.insert(*id, common::NodeProcess::spawn(cfg, dir.path())?);
    }
    // Region a's daemon, talking to a node that redirects its writes to the leader.
    let client_tls = ca.node_files("a")?;
    let remote = |id: u64| lease::RemoteLease::new(&listen[&id].to_string(), &client_tls, Duration::from_secs(3));
    let clients: BTreeMap<u64, lease::RemoteLease> =
        (1..=3).map(|id| Ok((id, remote(id)?))).collect::<anyhow::Result<_>>()?;
    let agreed_leader = |among: Vec<u64>| {
        let clients = &clients;
        async move {
            let mut leaders = Vec::new();
            for id in &among {
                leaders.push(clients[id].status().await.ok().and_then(|s| s.leader));
            }
            Ok(match leaders.first() {
                Some(Some(l)) if leaders.iter().all(|x| *x == Some(*l)) && among.contains(l) => Some(*l),
                _ => None,
            })
        }
    };
    let leader = testkit::wait_for("leader", Duration::from_secs(20), || agreed_leader(vec![1, 2, 3])).await?;
    let via = (1..=3).find(|id| *id != leader).expect("another node");

    let mut cfg = fast_handle();
    cfg.duration = Duration::from_secs(3);
    let handle = LeaseHandle::acquire(Arc::new(clients[&via].clone()), PAIR, "a", cfg, boot_clock()).await?;
    let epoch = handle.epoch();
    let mut watch = handle.watch();
    let statuses = tokio::spawn(async move {
        let mut seen = Vec::new();
        while watch.changed().await.is_ok() {
            seen.push(*watch.borrow_and_update());
        }
        seen
    });
    // A few renewals before the kill.
    let first_deadline = handle.deadline().expect("deadline");
    testkit::wait_until("renewals before the kill", Duration::from_secs(5), || async {
        Ok(handle.deadline().is_some_and(|d| d.saturating_duration_since(first_deadline) > Duration::from_millis(600)))
    })
    .await?;

    procs.get_mut(&leader).expect("leader process").kill9();
    let t_kill = BootClock.now();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader =
        testkit::wait_for("re-election", Duration::from_secs(20), || agreed_leader(survivors.clone())).await?;
    assert_ne!(new_leader, leader);
    // A renewal sent after the kill succeeded: the deadline moved past t_kill + duration − drift.
    testkit::wait_until("renewal after re-election", Duration::from_secs(10), || async {
        Ok(handle.deadline().is_some_and(|d| d > t_kill + Duration::from_millis(2800)))
    })
    .await?;
    assert_eq!(handle.epoch(), epoch);
    assert!(matches!(handle.status(), LeaseStatus::Valid { epoch: e, .. } if e == epoch));
    let rec = clients[&via].read(PAIR).await?.expect("record");
    assert_eq!((rec.holder.as_deref(), rec.epoch), (Some("a"), epoch));

    // The killed node restarts from its files and serves the same record.
    procs.insert(leader, common::NodeProcess::spawn(&configs[&leader], dir.path())?);
    let back = testkit::wait_for("killed node back", Duration::from_secs(20), || async {
        Ok(clients[&leader].read(PAIR).await.ok().flatten())
    })
    .await?;
    assert_eq!((back.holder.as_deref(), back.epoch), (Some("a"), epoch));
    handle.release().await?;
    let seen = statuses.await?;
    assert!(!seen.iter().any(|s| matches!(s, LeaseStatus::Lost { .. })), "lease lost: {seen:?}");
    Ok(())
}

mod randomized {
    //! Seeded schedules of acquires, renewals, daemon crashes, node crashes and partitions on a
    //! real cluster. The schedule comes from the seed; timing is real, so a failing seed is a
    //! hint, not an exact replay. `LEASE_RANDOM_SEEDS=N` runs more seeds.

    use std::sync::{Arc, Mutex, RwLock};
    use std::time::Duration;

    use lease::{
        BootClock, BootInstant, Clock, HandleConfig, HistoryKind, LeaseApi, LeaseError, LeaseHandle, LeaseNode,
    };
    use lease::{LeaseRecord, LeaseRequest, LeaseStatus, boot_clock};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use testkit::proxy::Mode;

    use super::PAIR;
    use crate::common::{Cluster, ClusterOpts};

    /// The node a daemon talks to; swapped when the node restarts, empty while it is down.
    #[derive(Default)]
    struct Slot(RwLock<Option<LeaseNode>>);

    impl Slot {
        fn get(&self) -> Result<LeaseNode, LeaseError> {
            self.0.read().unwrap().clone().ok_or_else(|| LeaseError::Unreachable("node down".into()))
        }
    }

    #[async_trait::async_trait]
    impl LeaseApi for Slot {
        async fn submit(&self, req: LeaseRequest) -> Result<LeaseRecord, LeaseError> {
            self.get()?.submit(req).await
        }
        async fn read(&self, pair: &str) -> Result<Option<LeaseRecord>, LeaseError> {
            self.get()?.read(pair).await
        }
    }

    /// One holder's time as holder: from when its grant returned to the last deadline it had.
    #[derive(Debug, Clone)]
    struct Tenure {
        region: &'static str,
        epoch: u64,
        start: BootInstant,
        end: BootInstant,
    }

    fn handle_config() -> HandleConfig {
        HandleConfig {
            duration: Duration::from_millis(1200),
            renew_interval: Duration::from_millis(150),
            drift_margin: Duration::from_millis(100),
            fence_lead: Duration::from_millis(300),
            call_timeout: Duration::from_millis(250),
        }
    }

    /// A daemon: acquires when it can, holds for a random time, then releases, "crashes" (stops
    /// renewing) or is fenced by its handle.
    async fn daemon(
        api: Arc<Slot>,
        region: &'static str,
        seed: u64,
        stop: Arc<tokio::sync::Notify>,
        log: Arc<Mutex<Vec<Tenure>>>,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        loop {
            let attempt = LeaseHandle::acquire(api.clone(), PAIR, region, handle_config(), boot_clock());
            let handle = tokio::select! {
                _ = stop.notified() => return,
                h = attempt => h,
            };
            let Ok(handle) = handle else {
                let pause = Duration::from_millis(rng.random_range(30..120));
                tokio::select! { _ = stop.notified() => return, _ = tokio::time::sleep(pause) => continue }
            };
            let start = BootClock.now();
            let mut end = handle.deadline().expect("fresh grant");
            let mut watch = handle.watch();
            let hold = tokio::time::sleep(Duration::from_millis(rng.random_range(200..2500)));
            tokio::pin!(hold);
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = stop.notified() => { stopping = true; break }
                    _ = &mut hold => break,
                    changed = watch.changed() => {
                        if changed.is_err() { break }
                        match *watch.borrow_and_update() {
                            LeaseStatus::Valid { deadline, .. } => end = end.max(deadline),
                            // The daemon fences here and drops the lease.
                            LeaseStatus::FenceNow { deadline, .. } => { end = end.max(deadline); break }
                            LeaseStatus::Lost { .. } => break,
                        }
                    }
                }
            }
            let epoch = handle.epoch();
            if !stopping && rng.random_bool(0.5) {
                // Fenced, then released: it stopped acting before the release was sent.
                end = end.min(BootClock.now());
                log.lock().unwrap().push(Tenure { region, epoch, start, end });
                let _ = handle.release().await;
            } else {
                // A crash: the lease runs out at its deadline.
                log.lock().unwrap().push(Tenure { region, epoch, start, end });
                handle.abandon().await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn run_seed(seed: u64) -> anyhow::Result<usize> {
        let mut cluster = Cluster::start(ClusterOpts { proxies: true, ..Default::default() }).await?;
        let slots: Vec<Arc<Slot>> = (0..=3).map(|_| Arc::new(Slot::default())).collect();
        for id in 1..=3u64 {
            *slots[id as usize].0.write().unwrap() = Some(cluster.node(id).clone());
        }
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let daemons = [(1, "a"), (2, "b")].map(|(id, region)| {
            tokio::spawn(daemon(slots[id].clone(), region, seed * 10 + id as u64, stop.clone(), log.clone()))
        });

        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..24 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
            let victim = rng.random_range(1..=3u64);
            match rng.random_range(0..7) {
                0 => cluster.isolate(victim, Mode::Blackhole),
                1 => cluster.isolate(victim, Mode::Refuse),
                2 | 3 => cluster.heal(),
                4 => {
                    *slots[victim as usize].0.write().unwrap() = None;
                    cluster.stop(victim).await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
                    cluster.restart(victim).await?;
                    *slots[victim as usize].0.write().unwrap() = Some(cluster.node(victim).clone());
                }
                5 => {
                    let to = (victim % 3) + 1;
                    cluster.links[&(victim, to)]
                        .set_mode(Mode::Delay(Duration::from_millis(rng.random_range(10..150))));
                }
                _ => {}
            }
        }
        cluster.heal();
        stop.notify_waiters();
        for d in daemons {
            // notify_waiters only reaches tasks already waiting; keep nudging until both exit.
            while !d.is_finished() {
                stop.notify_waiters();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let mut tenures = log.lock().unwrap().clone();
        tenures.sort_by_key(|t| t.start);
        for w in tenures.windows(2) {
            let (prev, next) = (&w[0], &w[1]);
            assert!(next.epoch >= prev.epoch, "seed {seed}: epochs went backwards: {prev:?} then {next:?}");
            if next.epoch != prev.epoch {
                assert!(prev.end < next.start, "seed {seed}: overlapping holders: {prev:?} and {next:?}");
            } else {
                assert_eq!(prev.region, next.region, "seed {seed}: one epoch, two holders");
            }
        }

        // Every granted epoch is durable: in the record's history, also after all nodes restart.
        let granted: std::collections::BTreeSet<u64> = tenures.iter().map(|t| t.epoch).collect();
        for id in 1..=3 {
            cluster.stop(id).await;
        }
        for id in 1..=3 {
            cluster.restart(id).await?;
        }
        let rec = testkit::wait_for("record after restart", Duration::from_secs(15), || async {
            Ok(cluster.api(2).read(PAIR).await.ok().flatten())
        })
        .await?;
        let recorded: std::collections::BTreeSet<u64> =
            rec.history.iter().filter(|e| e.kind == HistoryKind::Granted).map(|e| e.epoch).collect();
        let oldest_kept = rec.history.front().map_or(0, |e| e.index);
        for epoch in &granted {
            assert!(*epoch <= rec.epoch, "seed {seed}: granted epoch {epoch} above the store's {}", rec.epoch);
            if *epoch >= oldest_kept {
                assert!(recorded.contains(epoch), "seed {seed}: granted epoch {epoch} missing from {recorded:?}");
            }
        }
        cluster.shutdown().await;
        Ok(granted.len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_faults_never_overlap_holders() -> anyhow::Result<()> {
        let seeds: u64 = std::env::var("LEASE_RANDOM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
        let mut epochs = 0;
        // Two clusters at a time: mostly idle, and the extra scheduling noise is welcome.
        for pair in (1..=seeds).collect::<Vec<_>>().chunks(2) {
            let runs = futures::future::join_all(pair.iter().map(|&seed| run_seed(seed))).await;
            for (seed, n) in pair.iter().zip(runs) {
                let n = n?;
                eprintln!("seed {seed}: {n} epochs granted");
                epochs += n;
            }
        }
        // Faults and crashes must actually have moved the lease around, or the test proves nothing.
        assert!(epochs as u64 >= seeds * 3 / 2, "only {epochs} grants over {seeds} seeds");
        Ok(())
    }
}

/// Membership by API: two data-region nodes join (learner, then voter) to make five voters; the
/// cluster then survives two voters down; one node is removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_voters_by_api() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default()).await?;
    for id in 4..=5u64 {
        let mut cfg = cluster.configs[&1].clone();
        cfg.id = id;
        cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], common::node_port()));
        cfg.data_dir = cluster.dir.path().join(format!("node{id}"));
        cfg.tls = cluster.ca.node_files(common::region(id))?;
        // Joining nodes are not in the bootstrap list, so they wait to be added.
        cfg.members = Vec::new();
        cluster.configs.insert(id, cfg);
        cluster.restart(id).await?;
    }
    let info = |id: u64| lease::NodeInfo {
        region: common::region(id).into(),
        addr: cluster.configs[&id].listen.to_string(),
        witness: false,
    };
    // One addition through the in-process API of a node that may be a follower, one over HTTP.
    cluster.node(2).add_node(4, info(4), Duration::from_secs(20)).await?;
    let remote = lease::RemoteLease::new(
        &cluster.configs[&1].listen.to_string(),
        &cluster.ca.node_files("b")?,
        Duration::from_secs(20),
    )?;
    let status = remote.add_node(5, info(5)).await?;
    assert_eq!(status.voters, (1..=5).collect());

    // Region c (node 4) is now a data region and can hold the lease.
    let c = cluster.api(4);
    let held = c.acquire(PAIR, "c", Duration::from_secs(3)).await?;
    // Two of five voters down: three still decide.
    cluster.stop(1).await;
    cluster.stop(2).await;
    cluster.leader().await?;
    assert_eq!(c.renew(PAIR, "c", held.epoch).await?.epoch, held.epoch);
    cluster.restart(1).await?;
    cluster.restart(2).await?;
    cluster.leader().await?;

    let status = cluster.node(4).remove_node(5, Duration::from_secs(20)).await?;
    assert_eq!(status.voters, (1..=4).collect());
    cluster.stop(5).await;
    assert_eq!(c.renew(PAIR, "c", held.epoch).await?.epoch, held.epoch);
    Ok(())
}

/// A node that was down while the others wrote past a snapshot and purged their logs catches up
/// through a snapshot sent over the network, and then follows the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default()).await?;
    let a = cluster.api(1);
    let held = a.acquire(PAIR, "a", Duration::from_secs(5)).await?;
    let node2_last = cluster.node(2).raft().metrics().borrow().last_log_index.unwrap_or(0);
    cluster.stop(2).await;
    let leader = cluster.leader().await?;
    // More renewals than `snapshot_every` (500 in the fast profile) + `keep_after_snapshot`.
    let mut last = held.clone();
    for _ in 0..700 {
        last = a.renew(PAIR, "a", held.epoch).await?;
    }
    // The leader's log no longer holds what node 2 is missing: only a snapshot can help it.
    testkit::wait_until("leader purged its log", Duration::from_secs(10), || async {
        let purged = cluster.node(leader).raft().metrics().borrow().purged.map_or(0, |l| l.index);
        Ok(purged > node2_last + 1)
    })
    .await?;
    let snapshot = cluster.configs[&2].data_dir.join("sm").join("snapshot.json");
    assert!(!snapshot.exists());
    cluster.restart(2).await?;
    testkit::wait_until("node 2 caught up", Duration::from_secs(20), || async {
        Ok(cluster.node(2).local_record(PAIR).is_some_and(|r| r.seq >= last.seq))
    })
    .await?;
    assert!(snapshot.exists(), "node 2 caught up without installing a snapshot");
    // And it keeps following the log afterwards.
    let after = a.renew(PAIR, "a", held.epoch).await?;
    testkit::wait_until("node 2 follows the log", Duration::from_secs(5), || async {
        Ok(cluster.node(2).local_record(PAIR).is_some_and(|r| r.seq == after.seq))
    })
    .await?;
    Ok(())
}

/// A flipped byte in the middle of a follower's log (acknowledged entries after it): the node
/// refuses to start and names the file and offset, instead of cutting the log there and coming
/// back without entries (and epochs) it acknowledged. The documented recovery — wipe its
/// data_dir, wait out an election timeout, start it — brings it back as a working voter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_refuses_to_start_and_wipe_and_rejoin_recovers() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOpts::default()).await?;
    cluster.leader().await?;
    let a = cluster.api(1);
    let held = a.acquire(PAIR, "a", Duration::from_secs(3)).await?;
    let mut last = held.clone();
    for _ in 0..10 {
        last = a.renew(PAIR, "a", held.epoch).await?;
    }
    testkit::wait_until("node 2 applied the renewals", Duration::from_secs(5), || async {
        Ok(cluster.node(2).local_record(PAIR).is_some_and(|r| r.seq == last.seq))
    })
    .await?;
    cluster.stop(2).await;

    let data_dir = cluster.configs[&2].data_dir.clone();
    let log_path = data_dir.join("log").join("log");
    let mut bytes = std::fs::read(&log_path)?;
    let offset = bytes.len() / 3;
    bytes[offset] ^= 0x20;
    std::fs::write(&log_path, &bytes)?;
    let err = cluster.restart(2).await.expect_err("a corrupt middle record must stop the node");
    let message = format!("{err:#}");
    assert!(message.contains(&log_path.display().to_string()), "names the file: {message}");
    assert!(message.contains("byte offset"), "names the offset: {message}");
    assert_eq!(std::fs::read(&log_path)?, bytes, "the log was left as it was");

    // The recovery procedure (README "Recovering a lease node").
    std::fs::remove_dir_all(&data_dir)?;
    tokio::time::sleep(cluster.configs[&2].raft.election_timeout_max).await;
    cluster.restart(2).await?;
    testkit::wait_until("node 2 rebuilt from its peers", Duration::from_secs(15), || async {
        Ok(cluster.node(2).local_record(PAIR).is_some_and(|r| r.epoch == held.epoch && r.seq >= last.seq))
    })
    .await?;
    // It is a voter again: with the witness down, nodes 1 and 2 alone still decide.
    cluster.stop(3).await;
    cluster.leader().await?;
    assert_eq!(a.renew(PAIR, "a", held.epoch).await?.epoch, held.epoch);
    Ok(())
}
