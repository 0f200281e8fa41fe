//! End-to-end: how fast `dd_watchdog` drains a queue of records with its journal on (parse,
//! open/close transfers, write the journal before each ack), against a tuned lapin consumer
//! (prefetch 1000, one `multiple` ack per 100 deliveries, no parsing) in the same run on the
//! same queue; and the same with `--fsync`. Also prints dd_watchdog's peak resident memory.
//!
//! `cargo bench --bench e2e_watchdog` (or `scripts/bench`); `WATCHDOG_RECORDS` (default
//! 200000) and `WATCHDOG_RUNS` (default 3) tune it. Needs the broker (`scripts/broker-up`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ddmon::broker::Outgoing;
use ddmon::config::BrokerConfig;

/// dd_watchdog (journal on, `fsync` or not) on the queue until it handled `n`; its time and
/// peak RSS.
async fn watchdog(
    cfg: &BrokerConfig,
    exchange: &str,
    name: &str,
    n: usize,
    fsync: bool,
) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("wd.journal");
    let instance = format!("bench{:06x}", ddmon::broker::random_u64() as u32 & 0xffffff);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"));
    cmd.args([
        "--exchange",
        exchange,
        "--output-exchange",
        exchange,
        "--queue",
        name,
        "--journal",
        journal.to_str().unwrap(),
        "--node-timeout",
        "3600",
    ]);
    if fsync {
        cmd.arg("--fsync");
    }
    run_until_handled(cfg, cmd, "dd_watchdog", exchange, &instance, n, |r| {
        let c = &r["counts"];
        let kinds = [
            "opened",
            "closed",
            "restarted",
            "unmatched_finals",
            "reordered",
            "informational",
        ];
        let n: u64 = kinds.iter().map(|k| c[*k].as_u64().unwrap_or(0)).sum();
        Some(n + r["skipped"].as_u64()?)
    })
    .await
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("WATCHDOG_RECORDS", 200_000);
    let runs = env_num("WATCHDOG_RUNS", 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = BrokerConfig::default();
    let exchange = format!("bench.watchdog.{:08x}", ddmon::broker::random_u64() as u32);
    let name = format!("bench{:08x}", ddmon::broker::random_u64() as u32);
    let queue = format!("q_guest.dd_watchdog.{name}");
    rt.block_on(declare(&cfg, &exchange, &queue));
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(ddmon::sim::PumpModel::default(), start);
    let msgs: Vec<Outgoing> = (0..n)
        .map_while(|_| pump.next_record())
        .map(|r| ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, &exchange))
        .collect();
    let (mut base, mut ours, mut synced, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        rt.block_on(fill(&cfg, &msgs));
        let b = rt.block_on(baseline(&cfg, &queue, n)).as_secs_f64();
        rt.block_on(fill(&cfg, &msgs));
        let (d, kib) = rt.block_on(watchdog(&cfg, &exchange, &name, n, false));
        let d = d.as_secs_f64();
        rt.block_on(fill(&cfg, &msgs));
        let (f, _) = rt.block_on(watchdog(&cfg, &exchange, &name, n, true));
        let f = f.as_secs_f64();
        println!(
            "run {run}: baseline {:.0} msg/s, dd_watchdog with journal {:.0} msg/s, with --fsync {:.0} msg/s, peak RSS {:.1} MiB",
            n as f64 / b,
            n as f64 / d,
            n as f64 / f,
            kib as f64 / 1024.0
        );
        base.push(n as f64 / b);
        ours.push(n as f64 / d);
        synced.push(n as f64 / f);
        rss.push(kib as f64 / 1024.0);
    }
    let (mb, mo, ms) = (median(base), median(ours), median(synced));
    println!(
        "dd_watchdog drain {n} records: baseline median {mb:.0} msg/s, with journal {mo:.0} msg/s (ratio {:.3}, bar >= 0.9), with --fsync {ms:.0} msg/s (ratio {:.3}); peak RSS median {:.1} MiB",
        mo / mb,
        ms / mb,
        median(rss)
    );
    rt.block_on(clean_up(&cfg, &queue, &exchange));
}
