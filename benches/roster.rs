//! The roster (the "Watch the watchers" issue): its memory and update cost for 10,000
//! daemons (pure), the time a monitor takes to read a day of history at start, and
//! check_dd_alive's wall and CPU per run, against a local broker, for `ROSTER_DAEMONS`
//! daemons (default: 100, then 10,000).
//!
//! A day of history for D daemons, as the streams would hold it: in `ddmon.roster.<x>`, for
//! each daemon a start, `starting`, `running`, and one restart in ten (a stop, a start,
//! `starting`, `running`), one `degraded`/`running` pair in five, spread over the past day;
//! in `ddmon.roster.<x>.alive`, the last 3 minutes of alive messages (one per daemon per
//! 30 s: 6 each), which is what a monitor reads of it (6x the longest alive interval). (A stream's own timestamps are the
//! broker's: older alive messages cannot be faked, and a monitor would skip them anyway.)
//!
//! `cargo bench --bench roster` (or `scripts/bench`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use ddmon::broker::Outgoing;
use ddmon::daemon::{DaemonConfig, Runtime, State};
use ddmon::roster::{Observation, Roster, Seen};
use serde_json::json;

fn counters() -> serde_json::Value {
    json!({"received": 123_456_789u64, "published": 123_456_000u64, "malformed": 3,
           "unknown_source": 0, "declared": 12, "confirm_wait_ms": 1, "by_kind": {"v02": 1, "v03": 2}})
}

fn runtime(i: usize, exchange: &str, started: DateTime<Utc>) -> Runtime {
    let tools = ["dd_log2source", "dd_speedo", "dd_watchdog", "dd_log", "sr3"];
    let cfg = DaemonConfig {
        instance: Some(format!("inst{i:05}")),
        alive_interval: 30.0,
        exchange: exchange.to_string(),
        ..DaemonConfig::default()
    };
    Runtime::new(tools[i % tools.len()], &cfg, started)
}

/// The day of registry and status messages, then the last 10 minutes of alive messages.
fn history(daemons: usize, exchange: &str, now: DateTime<Utc>) -> (Vec<Outgoing>, Vec<Outgoing>) {
    let mut reg = Vec::new();
    let mut alive = Vec::new();
    for i in 0..daemons {
        let (r, a) = history_of(i, exchange, now);
        reg.extend(r);
        alive.extend(a);
    }
    (reg, alive)
}

/// One daemon's day.
fn history_of(i: usize, exchange: &str, now: DateTime<Utc>) -> (Vec<Outgoing>, Vec<Outgoing>) {
    let day = chrono::Duration::seconds(86_400);
    let mut reg = Vec::new();
    let mut alive = Vec::new();
    {
        let at = |f: f64| now - day + chrono::Duration::milliseconds((f * 86_400_000.0) as i64);
        let t0 = at((i as f64 * 0.37) % 0.5);
        let mut rt = runtime(i, exchange, t0);
        reg.extend(rt.set_state(State::Starting, t0, &counters()));
        reg.push(rt.registration("start", t0, None));
        reg.extend(rt.set_state(State::Running, t0, &counters()));
        if i % 5 == 0 {
            reg.extend(rt.set_state(State::Degraded, at(0.6), &counters()));
            reg.extend(rt.set_state(State::Running, at(0.61), &counters()));
        }
        if i % 10 == 0 {
            reg.extend(rt.set_state(State::Stopping, at(0.7), &counters()));
            reg.push(rt.registration("stop", at(0.7), None));
            let t1 = at(0.7001);
            rt = runtime(i, exchange, t1);
            reg.extend(rt.set_state(State::Starting, t1, &counters()));
            reg.push(rt.registration("start", t1, None));
            reg.extend(rt.set_state(State::Running, t1, &counters()));
        }
        for k in 0..6 {
            let t = now - chrono::Duration::seconds(180 - 30 * k - (i % 30) as i64);
            alive.push(rt.alive(t, &counters()));
        }
    }
    (reg, alive)
}

fn pure() {
    let now = Utc::now();
    // first in the process, each daemon's messages made, read and dropped in turn: what stays
    // resident is the roster's
    let before = rss_mib("VmRSS:");
    let mut roster = Roster::new(300.0);
    for i in 0..10_000 {
        let (reg, alive) = history_of(i, "log", now);
        for m in reg.iter().chain(&alive) {
            if let Some(o) = Observation::from_message(&m.routing_key, &m.body) {
                roster.observe(&o);
            }
        }
    }
    let after = rss_mib("VmRSS:");
    let (reg, alive) = history(10_000, "log", now);
    let obs: Vec<Observation> = reg
        .iter()
        .chain(&alive)
        .filter_map(|m| Observation::from_message(&m.routing_key, &m.body))
        .collect();
    // update cost: 1,000,000 alive observations, 100 per daemon
    let alives: Vec<Observation> = obs
        .iter()
        .filter(|o| o.kind == Seen::Alive)
        .cloned()
        .collect();
    let started = Instant::now();
    let mut n = 0usize;
    while n < 1_000_000 {
        for o in &alives {
            roster.observe(o);
            n += 1;
        }
    }
    let per = started.elapsed().as_secs_f64() / n as f64;
    let parse_started = Instant::now();
    let m = alive.len().min(100_000);
    for a in &alive[..m] {
        std::hint::black_box(Observation::from_message(&a.routing_key, &a.body));
    }
    let parse = parse_started.elapsed().as_secs_f64() / m as f64;
    let started = Instant::now();
    let rows = roster.rows(now);
    let rows_t = started.elapsed();
    let started = Instant::now();
    let counts = roster.counts(now);
    let counts_t = started.elapsed();
    println!(
        "roster of {} daemons: {:.1} MiB resident for it ({:.0} bytes per daemon); update {:.0} ns per alive observed, {:.1} us per alive message parsed; all rows in {:.1} ms, counts in {:.1} ms ({} running)",
        rows.len(),
        after - before,
        (after - before) * 1_048_576.0 / rows.len() as f64,
        per * 1e9,
        parse * 1e6,
        rows_t.as_secs_f64() * 1000.0,
        counts_t.as_secs_f64() * 1000.0,
        counts[0]
    );
}

fn on_broker(rt: &tokio::runtime::Runtime, daemons: usize, runs: usize) {
    let tag = format!("{:08x}", ddmon::broker::random_u64() as u32);
    let exchange = format!("bench.roster.{tag}");
    let now = Utc::now();
    let (reg, alive) = history(daemons, &exchange, now);
    let cfg = ddmon::config::BrokerConfig::default();
    let specs = ddmon::daemon::RosterStream::default()
        .specs(&exchange)
        .unwrap();
    let bytes: usize = reg.iter().chain(&alive).map(|m| m.body.len()).sum();
    rt.block_on(async {
        let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
        let mut p = ddmon::broker::Publisher::connect(&cfg, "bench-roster", shutdown)
            .await
            .unwrap();
        p.declare_exchange(&exchange).await.unwrap();
        for s in &specs {
            p.declare_stream(s).await.unwrap();
        }
        for w in reg.chunks(4096).chain(alive.chunks(4096)) {
            p.publish_all(w).await.unwrap();
        }
        p.close().await;
    });
    // a monitor's start: the whole registry/status history and 10 minutes of alive messages
    let src = ddmon::roster::follow::Source {
        broker: cfg.clone(),
        exchange: exchange.clone(),
        stream: ddmon::daemon::RosterStream::default(),
    };
    let (history, took, known) = rt.block_on(async {
        let link = ddmon::broker::Link::open(&cfg, "bench-roster")
            .await
            .unwrap();
        let mut roster = Roster::new(300.0);
        let started = Instant::now();
        let (h, readers) =
            ddmon::roster::follow::load(&link, &src, &mut roster, Duration::from_secs(300), false)
                .await;
        let took = started.elapsed();
        if let Some(r) = readers {
            r.close().await;
        }
        link.close("OK").await;
        (h, took, roster.len())
    });
    assert!(history.problem.is_none(), "{:?}", history.problem);
    assert_eq!(known, daemons);
    println!(
        "{daemons} daemons, a day of history ({} registry/status + {} alive messages, {:.1} MB of bodies): read at a monitor's start in {:.0} ms ({:.0} messages/s), {} daemons known",
        reg.len(),
        alive.len(),
        bytes as f64 / 1e6,
        took.as_secs_f64() * 1000.0,
        history.read as f64 / took.as_secs_f64(),
        known
    );
    let check = env!("CARGO_BIN_EXE_check_dd_alive");
    let args = format!("--exchange {exchange}");
    let out = Command::new(check).args(args.split(' ')).output().unwrap();
    let first = String::from_utf8_lossy(&out.stdout);
    println!(
        "  {}",
        first
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(140)
            .collect::<String>()
    );
    let (wall, cpu) = runs_of(check, &args, runs);
    println!(
        "  check_dd_alive, {runs} runs: {:.1} ms wall and {:.1} ms CPU (user+sys) per run (bars: < 200 ms wall, < 50 ms CPU)",
        wall * 1000.0,
        cpu * 1000.0
    );
    // the same check asking a monitor that follows the streams (dd_web's `roster`)
    let mut web = Command::new(env!("CARGO_BIN_EXE_dd_web"))
        .args(["--listen", "127.0.0.1:0", "--exchange", &exchange])
        .args([
            "--daemon-exchange",
            &exchange,
            "--instance",
            &format!("web{tag}"),
        ])
        .args(["-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let args = format!("--exchange {exchange} --from-monitor web{tag}");
    let started = Instant::now();
    let first = loop {
        let out = Command::new(check).args(args.split(' ')).output().unwrap();
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if out.status.code() != Some(3) || started.elapsed() > Duration::from_secs(60) {
            break first;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("  {}", first.chars().take(140).collect::<String>());
    let (wall, cpu) = runs_of(check, &args, runs.max(10));
    println!(
        "  check_dd_alive --from-monitor (dd_web), {} runs: {:.1} ms wall and {:.1} ms CPU per run",
        runs.max(10),
        wall * 1000.0,
        cpu * 1000.0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &web.id().to_string()])
        .status();
    let _ = web.wait();
    for s in &specs {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &s.name])
            .output();
    }
    rt.block_on(async {
        let link = ddmon::broker::Link::open(&cfg, "bench-roster")
            .await
            .unwrap();
        let _ = link.delete_queue("none").await;
        link.close("OK").await;
    });
    let _ = Command::new("curl")
        .args(["-s", "-u", "guest:guest", "-X", "DELETE"])
        .arg(format!(
            "http://127.0.0.1:15672/api/exchanges/%2f/{exchange}"
        ))
        .output();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    pure();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes: Vec<usize> = match std::env::var("ROSTER_DAEMONS") {
        Ok(v) => v.split(',').filter_map(|x| x.parse().ok()).collect(),
        Err(_) => vec![100, 10_000],
    };
    for d in sizes {
        on_broker(&rt, d, if d > 1000 { 5 } else { 30 });
    }
}
