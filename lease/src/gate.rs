//! The timing rules, as pure functions, shared by the node, the handle and the simulation test.

use std::ops::Add;
use std::time::Duration;

/// Earliest local time at which a node may propose granting a lease held by another region: a
/// full `duration + grant_margin` after the later of "last change of the record applied here" and
/// "this node (re)started" (client-go's observed-time rule plus the restart rule). Because the
/// change was applied after the holder sent it, this is after the holder's own deadline as long as
/// the clocks' rate difference over one duration stays within `grant_margin + drift_margin`.
pub fn takeover_allowed_at<T: Ord + Add<Duration, Output = T>>(
    duration: Duration,
    grant_margin: Duration,
    last_change_seen: T,
    up_since: T,
) -> T {
    last_change_seen.max(up_since) + duration + grant_margin
}

/// The holder's deadline after a successful renewal (or grant) whose request left at `t_send`.
pub fn holder_deadline<T: Add<Duration, Output = T>>(t_send: T, duration: Duration, drift_margin: Duration) -> T {
    t_send + duration.saturating_sub(drift_margin)
}

#[cfg(test)]
mod simulation {
    //! Deterministic discrete-event simulation of the lease protocol (openraft's deterministic-test
    //! style): the real [`LeaseTable`] and the real timing rules, two daemons with drifting clocks,
    //! one raft log, random latencies, lost messages, partitions, daemon crashes and node restarts.
    //! Checks over thousands of seeds: epochs strictly increase; no two holders of different
    //! epochs have overlapping validity windows (holder window = grant received → the true time
    //! its own clock reaches its last deadline).

    use std::cmp::Reverse;
    use std::collections::{BTreeMap, BinaryHeap};
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{holder_deadline, takeover_allowed_at};
    use crate::types::{Command, LeaseRecord, LeaseRequest, LeaseTable};

    const PAIR: &str = "p";
    const REGIONS: [&str; 2] = ["a", "b"];

    #[derive(Clone, Copy)]
    struct Params {
        duration: Duration,
        renew: Duration,
        call_timeout: Duration,
        drift_margin: Duration,
        grant_margin: Duration,
        /// Maximum clock-rate error of any clock (0.005 = 0.5 %).
        rho: f64,
    }

    const SAFE: Params = Params {
        duration: Duration::from_millis(2000),
        renew: Duration::from_millis(250),
        call_timeout: Duration::from_millis(400),
        drift_margin: Duration::from_millis(200),
        grant_margin: Duration::from_millis(300),
        rho: 0.01,
    };

    /// A clock: `offset + true_time × rate`, in microseconds.
    #[derive(Clone, Copy)]
    struct SimClock {
        offset: f64,
        rate: f64,
    }

    impl SimClock {
        fn read(&self, t: u64) -> Duration {
            Duration::from_micros((self.offset + t as f64 * self.rate) as u64)
        }
        /// The true time at which this clock shows `reading`.
        fn true_time(&self, reading: Duration) -> u64 {
            ((reading.as_micros() as f64 - self.offset) / self.rate).ceil() as u64
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        Tick(usize),
        Commit(usize),
        Respond(usize),
        Timeout(usize),
        Apply(usize),
        Fault,
    }

    struct Msg {
        from: usize,
        cmd: Command,
        t_send: Duration,
        result: Option<crate::types::CommandResult>,
        done: bool,
    }

    struct Node {
        clock: SimClock,
        table: LeaseTable,
        applied: usize,
        observed: Option<(u64, Duration)>,
        up_since: Duration,
        next_apply_at: u64,
    }

    struct Daemon {
        clock: SimClock,
        holding: Option<(u64, Duration)>,
        inflight: Option<usize>,
        last_renew: u64,
        crashed_until: u64,
        next_acquire: u64,
    }

    struct Sim {
        p: Params,
        rng: StdRng,
        now: u64,
        queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
        seq: u64,
        log: Vec<(u64, Command)>,
        leader: LeaseTable,
        msgs: Vec<Msg>,
        nodes: Vec<Node>,
        daemons: Vec<Daemon>,
        partitioned: [u64; 2],
        /// epoch → (region, window start, window end) in true time.
        tenures: BTreeMap<u64, (usize, u64, u64)>,
    }

    impl Sim {
        fn new(seed: u64, p: Params) -> Self {
            let mut rng = StdRng::seed_from_u64(seed);
            let clock = |rng: &mut StdRng| SimClock {
                offset: rng.random_range(0.0..1e9),
                rate: 1.0 + rng.random_range(-p.rho..=p.rho),
            };
            let nodes = (0..2)
                .map(|_| {
                    let c = clock(&mut rng);
                    Node {
                        clock: c,
                        table: LeaseTable::default(),
                        applied: 0,
                        observed: None,
                        up_since: c.read(0),
                        next_apply_at: 0,
                    }
                })
                .collect();
            let daemons = (0..2)
                .map(|_| Daemon {
                    clock: clock(&mut rng),
                    holding: None,
                    inflight: None,
                    last_renew: 0,
                    crashed_until: 0,
                    next_acquire: 0,
                })
                .collect();
            let mut sim = Sim {
                p,
                rng,
                now: 0,
                queue: BinaryHeap::new(),
                seq: 0,
                log: Vec::new(),
                leader: LeaseTable::default(),
                msgs: Vec::new(),
                nodes,
                daemons,
                partitioned: [0, 0],
                tenures: BTreeMap::new(),
            };
            for d in 0..2 {
                sim.at(d as u64 * 3_000, Event::Tick(d));
            }
            sim.at(500_000, Event::Fault);
            sim
        }

        fn at(&mut self, t: u64, e: Event) {
            self.seq += 1;
            self.queue.push(Reverse((t, self.seq, e)));
        }

        fn latency(&mut self) -> u64 {
            self.rng.random_range(500..30_000)
        }

        fn cut(&self, d: usize) -> bool {
            self.now < self.partitioned[d]
        }

        fn send(&mut self, from: usize, cmd: Command) {
            let t_send = self.daemons[from].clock.read(self.now);
            let id = self.msgs.len();
            self.msgs.push(Msg { from, cmd, t_send, result: None, done: false });
            self.daemons[from].inflight = Some(id);
            let timeout = self.now + self.p.call_timeout.as_micros() as u64;
            self.at(timeout, Event::Timeout(id));
            if !self.cut(from) && !self.rng.random_bool(0.03) {
                let t = self.now + self.latency();
                self.at(t, Event::Commit(id));
            }
        }

        fn run(&mut self, until: u64) {
            while let Some(Reverse((t, _, e))) = self.queue.pop() {
                if t > until {
                    break;
                }
                self.now = t;
                match e {
                    Event::Tick(d) => self.tick(d),
                    Event::Commit(id) => self.commit(id),
                    Event::Respond(id) => self.respond(id),
                    Event::Timeout(id) => self.timeout(id),
                    Event::Apply(n) => self.apply(n),
                    Event::Fault => self.fault(),
                }
            }
        }

        fn tick(&mut self, d: usize) {
            self.at(self.now + 10_000, Event::Tick(d));
            let now = self.now;
            let p = self.p;
            if now < self.daemons[d].crashed_until || self.daemons[d].inflight.is_some() {
                return;
            }
            if let Some((epoch, deadline)) = self.daemons[d].holding {
                if self.daemons[d].clock.read(now) >= deadline {
                    // Fenced: the deadline passed without a renewal.
                    self.daemons[d].holding = None;
                } else if now - self.daemons[d].last_renew >= p.renew.as_micros() as u64 {
                    self.daemons[d].last_renew = now;
                    let req = LeaseRequest::Renew { pair: PAIR.into(), region: REGIONS[d].into(), epoch };
                    self.send(d, Command::Request(req));
                }
                return;
            }
            if now < self.daemons[d].next_acquire {
                return;
            }
            self.daemons[d].next_acquire = now + 50_000;
            // The region's own node decides with its own view and clock (the grant gate).
            let node = &self.nodes[d];
            let rec = node.table.pairs.get(PAIR).cloned().unwrap_or_default();
            if rec.holder.as_deref().is_some_and(|h| h != REGIONS[d]) {
                let node_now = node.clock.read(now);
                let seen = node.observed.filter(|(s, _)| *s == rec.seq).map_or(node_now, |(_, at)| at);
                if node_now < takeover_allowed_at(rec.duration(), p.grant_margin, seen, node.up_since) {
                    return;
                }
            }
            let cmd = Command::Acquire {
                pair: PAIR.into(),
                candidate: REGIONS[d].into(),
                duration_ms: p.duration.as_millis() as u64,
                expected_epoch: rec.epoch,
                expected_seq: rec.seq,
            };
            self.send(d, cmd);
        }

        fn commit(&mut self, id: usize) {
            let index = self.log.len() as u64 + 1;
            let cmd = self.msgs[id].cmd.clone();
            let result = self.leader.apply(index, &cmd);
            self.log.push((index, cmd));
            self.msgs[id].result = Some(result);
            if !self.rng.random_bool(0.03) {
                let t = self.now + self.latency();
                self.at(t, Event::Respond(id));
            }
            for n in 0..2 {
                let t = self.nodes[n].next_apply_at.max(self.now + self.rng.random_range(0..100_000));
                self.nodes[n].next_apply_at = t;
                self.at(t, Event::Apply(n));
            }
        }

        fn apply(&mut self, n: usize) {
            if self.cut(n) {
                let t = self.partitioned[n];
                self.at(t, Event::Apply(n));
                return;
            }
            let now = self.now;
            let node = &mut self.nodes[n];
            let Some((index, cmd)) = self.log.get(node.applied).cloned() else { return };
            node.applied += 1;
            let rec = node.table.apply(index, &cmd).record;
            if node.observed.is_none_or(|(s, _)| s != rec.seq) {
                node.observed = Some((rec.seq, node.clock.read(now)));
            }
        }

        fn timeout(&mut self, id: usize) {
            let m = &mut self.msgs[id];
            if !m.done {
                // Unknown outcome: not a success; the deadline stays where it was.
                m.done = true;
                self.daemons[m.from].inflight = None;
            }
        }

        fn respond(&mut self, id: usize) {
            let (from, done) = (self.msgs[id].from, self.msgs[id].done);
            if done || self.cut(from) {
                return;
            }
            self.msgs[id].done = true;
            self.daemons[from].inflight = None;
            if self.now < self.daemons[from].crashed_until {
                return;
            }
            let result = self.msgs[id].result.clone().expect("committed");
            let t_send = self.msgs[id].t_send;
            let is_acquire = matches!(self.msgs[id].cmd, Command::Acquire { .. });
            let p = self.p;
            let daemon = &mut self.daemons[from];
            match (result.refused, is_acquire) {
                (None, true) => {
                    let deadline = holder_deadline(t_send, result.record.duration(), p.drift_margin);
                    daemon.holding = Some((result.record.epoch, deadline));
                    daemon.last_renew = self.now;
                    let end = daemon.clock.true_time(deadline);
                    let t = self.tenures.entry(result.record.epoch).or_insert((from, self.now, end));
                    assert_eq!(t.0, from, "one epoch granted to two regions");
                    t.2 = t.2.max(end);
                }
                (None, false) => {
                    if let Some((epoch, deadline)) = daemon.holding.filter(|(e, _)| *e == result.record.epoch) {
                        let renewed = deadline.max(holder_deadline(t_send, result.record.duration(), p.drift_margin));
                        daemon.holding = Some((epoch, renewed));
                        let end = daemon.clock.true_time(renewed);
                        let t = self.tenures.get_mut(&epoch).expect("tenure");
                        t.2 = t.2.max(end);
                    }
                }
                (Some(_), false) => daemon.holding = None,
                (Some(_), true) => {}
            }
        }

        fn fault(&mut self) {
            let next = self.now + self.rng.random_range(200_000..1_500_000);
            self.at(next, Event::Fault);
            let who = self.rng.random_range(0..2);
            match self.rng.random_range(0..4) {
                0 => self.partitioned[who] = self.now + self.rng.random_range(100_000..4_000_000),
                1 => {
                    // Daemon crash: forgets its lease, comes back later.
                    let d = &mut self.daemons[who];
                    d.holding = None;
                    d.crashed_until = self.now + self.rng.random_range(100_000..3_000_000);
                }
                2 => {
                    // Node restart: storage kept; it has not watched anyone since now.
                    let node = &mut self.nodes[who];
                    node.up_since = node.clock.read(self.now);
                    node.observed = node.observed.map(|(s, _)| (s, node.up_since));
                }
                _ => {}
            }
        }

        /// Returns the first violation, if any.
        fn check(&self) -> Result<usize, String> {
            let tenures: Vec<_> = self.tenures.iter().collect();
            for w in tenures.windows(2) {
                let ((e1, (r1, s1, end1)), (e2, (r2, s2, _))) = (w[0], w[1]);
                if s2 < s1 {
                    return Err(format!("epoch {e2} granted before epoch {e1}"));
                }
                if end1 >= s2 {
                    return Err(format!(
                        "epoch {e1} ({}) valid until {end1} µs, epoch {e2} ({}) granted at {s2} µs",
                        REGIONS[*r1], REGIONS[*r2]
                    ));
                }
            }
            Ok(tenures.len())
        }
    }

    fn run(seed: u64, p: Params) -> Result<usize, String> {
        let mut sim = Sim::new(seed, p);
        sim.run(60_000_000);
        // Durable and agreed: every node's applied table is a prefix of the leader's.
        for n in &sim.nodes {
            let leader: Option<&LeaseRecord> = sim.leader.pairs.get(PAIR);
            if n.applied == sim.log.len() {
                assert_eq!(n.table.pairs.get(PAIR), leader);
            }
        }
        sim.check()
    }

    #[test]
    fn thousand_seeds_never_overlap() {
        let mut grants = 0;
        for seed in 0..1000 {
            grants += run(seed, SAFE).unwrap_or_else(|v| panic!("seed {seed}: {v}"));
        }
        // The faults must move the lease around, or the check proves nothing.
        assert!(grants > 2 * 1000, "only {grants} grants");
    }

    /// Negative control: without margins, with clocks drifting 5 %, the checker does find overlaps.
    /// Shows the simulation can fail, so the test above means something.
    #[test]
    fn without_margins_overlaps_are_found() {
        let unsafe_params = Params { drift_margin: Duration::ZERO, grant_margin: Duration::ZERO, rho: 0.05, ..SAFE };
        let violations = (0..300).filter(|&seed| run(seed, unsafe_params).is_err()).count();
        assert!(violations > 0, "no overlap found with margins removed");
    }
}
