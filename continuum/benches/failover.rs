//! Failover as a client sees it, on loopback with real processes (the e2e harness): for each
//! timing profile (the short test timings and the daemon's shipped defaults) and each takeover
//! mode, `RUNS` times each fault — `kill -9` of the holder's daemon and postmaster, and a freeze
//! (SIGSTOP of both process trees, SIGCONT once the other region writes) — the time from the
//! fault until writes resume on the other region; plus each daemon's idle CPU. Prints a table
//! of medians and worsts; run with `cargo bench -p continuum --bench failover`
//! (`FAILOVER_RUNS=N` changes the run count; `FAILOVER_PROFILES=test` or `=default` runs one).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use common::freeze::Frozen;
use support::{healthy, idle, median};
use testkit::writer::{Writer, WriterHandle};

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Freeze,
}

struct Row {
    profile: &'static str,
    takeover: &'static str,
    kill: Vec<Duration>,
    freeze: Vec<Duration>,
    lost: usize,
    idle_cpu: Vec<(String, f64)>,
}

/// When writes resumed: the end of the longest gap between acknowledgements after `fault`.
fn resumed_after(acked_at: &[Instant], fault: Instant, by: Instant) -> Duration {
    let mut times: Vec<Instant> = acked_at.iter().copied().filter(|t| *t >= fault && *t <= by).collect();
    times.sort();
    let (mut last, mut end, mut worst) = (fault, fault, Duration::ZERO);
    for t in times {
        if t - last > worst {
            worst = t - last;
            end = t;
        }
        last = t;
    }
    end - fault
}

async fn one_fault(c: &mut Cluster, writer: &mut WriterHandle, victim: &str, fault: Fault) -> (Instant, Instant) {
    let survivor = if victim == "a" { "b" } else { "a" };
    let daemon = c.daemons[victim].pid().expect("daemon pid");
    let postmaster = u32::try_from(c.node(victim).postmaster_pid().expect("postmaster pid")).expect("pid");
    let at = Instant::now();
    let frozen = match fault {
        Fault::Kill => {
            c.daemon(victim).kill9();
            c.node(victim).kill9().expect("kill postmaster");
            None
        }
        Fault::Freeze => Some(Frozen::roots(&[daemon, postmaster])),
    };
    c.wait_pair_on(&[survivor], "the survivor holds the lease", Duration::from_secs(60), |p| {
        p.holder.as_deref() == Some(survivor)
    })
    .await
    .expect("takeover");
    let acked = writer.acked_count();
    writer.wait_acked(acked + 5, Duration::from_secs(30)).await.expect("writes resume");
    let by = Instant::now();
    match frozen {
        Some(frozen) => frozen.thaw(),
        None => c.daemon(victim).start().expect("restart"),
    }
    healthy(c, survivor).await;
    (at, by)
}

async fn profile(profile: &'static str, takeover: &'static str, runs: usize) -> Row {
    let options =
        Options { takeover, default_timings: profile == "default", failover_debounce: "1s", ..Options::default() };
    let mut c = Cluster::start(options).await.expect("cluster");
    let mut writer =
        Writer::start_abandoning(&c.conninfo(), "bench", Some(Duration::from_millis(500))).await.expect("writer");
    writer.wait_acked(50, Duration::from_secs(30)).await.expect("writes");
    let idle = idle(&c).await;
    let mut holder = "a".to_string();
    let mut faults = Vec::new();
    for run in 0..runs * 2 {
        let fault = if run % 2 == 0 { Fault::Kill } else { Fault::Freeze };
        let (at, by) = one_fault(&mut c, &mut writer, &holder, fault).await;
        faults.push((fault, at, by));
        holder = if holder == "a" { "b".into() } else { "a".into() };
    }
    let report = writer.stop().await;
    let lost = Cluster::missing_on(c.node(&holder), "bench", &report.acked).await.expect("check").len();
    let acked_at: Vec<Instant> = report.acked_at.iter().map(|(_, t)| *t).collect();
    let times = |which: Fault| -> Vec<Duration> {
        faults.iter().filter(|(f, _, _)| *f == which).map(|(_, at, by)| resumed_after(&acked_at, *at, *by)).collect()
    };
    Row {
        profile,
        takeover,
        kill: times(Fault::Kill),
        freeze: times(Fault::Freeze),
        lost,
        idle_cpu: idle.daemons.iter().map(|(r, _, cpu)| (r.clone(), *cpu)).collect(),
    }
}

fn cell(values: &[Duration]) -> String {
    let worst = values.iter().max().copied().unwrap_or_default();
    format!("{:.2} s / {:.2} s", median(values.to_vec()).as_secs_f64(), worst.as_secs_f64())
}

#[tokio::main]
async fn main() {
    let runs = std::env::var("FAILOVER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let only = std::env::var("FAILOVER_PROFILES").ok();
    let mut rows = Vec::new();
    for name in ["test", "default"] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        for takeover in ["lease-expiry", "sync-fenced"] {
            let row = profile(name, takeover, runs).await;
            eprintln!("{name} {takeover}: kill {:?} freeze {:?}", row.kill, row.freeze);
            rows.push(row);
        }
    }
    println!(
        "\n| timings | takeover | kill -9 → writes resume (median / worst of {runs}) | freeze → writes resume | lost | idle CPU per daemon (% of a core) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let cpu: Vec<String> = r.idle_cpu.iter().map(|(region, cpu)| format!("{region} {cpu:.2}")).collect();
        let timings = if r.profile == "test" { "test (lease 2 s)" } else { "shipped defaults" };
        println!(
            "| {timings} | {} | {} | {} | {} | {} |",
            r.takeover,
            cell(&r.kill),
            cell(&r.freeze),
            r.lost,
            cpu.join(", ")
        );
    }
}
