//! End-to-end: how fast `dd_speedo` drains a queue of records (parse, count, publish speedos
//! every second, ack), against a tuned lapin consumer (prefetch 1000, one `multiple` ack per
//! 100 deliveries, no parsing) measured in the same run on the same queue. Also prints
//! dd_speedo's peak resident memory.
//!
//! `cargo bench --bench e2e_speedo` (or `scripts/bench`); `SPEEDO_RECORDS` (default 200000)
//! and `SPEEDO_RUNS` (default 3) tune it. Needs the broker (`scripts/broker-up`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ddmon::broker::Outgoing;
use ddmon::config::BrokerConfig;

/// dd_speedo on the queue until it counted `n`; its time and peak RSS. `group`: as the active
/// of a group (`--group`), writing every delivery to the group's state stream (removed after).
async fn speedo(
    cfg: &BrokerConfig,
    exchange: &str,
    name: &str,
    n: usize,
    group: bool,
) -> (Duration, u64) {
    let instance = format!("bench{:06x}", ddmon::broker::random_u64() as u32 & 0xffffff);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dd_speedo"));
    if group {
        cmd.env("DD_ROSTER_STREAM", "none").arg("--group");
    }
    cmd.args([
        "--exchange",
        exchange,
        "--output-exchange",
        exchange,
        "--no-source-copies",
        "--queue",
        name,
        "--interval",
        "1",
    ]);
    let took = run_until_handled(cfg, cmd, "dd_speedo", exchange, &instance, n, |r| {
        let c = &r["counters"];
        Some(c["counted"].as_u64()? + c["neutral"].as_u64()? + c["skipped"].as_u64()?)
    })
    .await;
    if group {
        let stream = ddmon::daemon::replica::stream_name("dd_speedo", &instance);
        clean_up(cfg, &stream, "").await;
    }
    took
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("SPEEDO_RECORDS", 200_000);
    let runs = env_num("SPEEDO_RUNS", 3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = BrokerConfig::default();
    let exchange = format!("bench.speedo.{:08x}", ddmon::broker::random_u64() as u32);
    let name = format!("bench{:08x}", ddmon::broker::random_u64() as u32);
    let queue = format!("q_guest.dd_speedo.{name}");
    rt.block_on(declare(&cfg, &exchange, &queue));
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(ddmon::sim::PumpModel::default(), start);
    let msgs: Vec<Outgoing> = (0..n)
        .map_while(|_| pump.next_record())
        .map(|r| ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, &exchange))
        .collect();
    // the same records through a group's active (`SPEEDO_GROUP=0`: not measured)
    let grouped = std::env::var("SPEEDO_GROUP").map_or(true, |v| v != "0");
    let exchange_g = format!("{exchange}.group");
    let name_g = format!("{name}g");
    let queue_g = format!("q_guest.dd_speedo.{name_g}");
    let mut msgs_g = msgs.clone();
    if grouped {
        rt.block_on(declare_for_group(&cfg, &exchange_g, &queue_g));
        for m in &mut msgs_g {
            m.exchange = exchange_g.clone();
        }
    }
    let mut group_rates = Vec::new();
    let (mut base, mut ours, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        rt.block_on(fill(&cfg, &msgs));
        let b = rt.block_on(baseline(&cfg, &queue, n)).as_secs_f64();
        rt.block_on(fill(&cfg, &msgs));
        let (d, kib) = rt.block_on(speedo(&cfg, &exchange, &name, n, false));
        let d = d.as_secs_f64();
        if grouped {
            rt.block_on(fill(&cfg, &msgs_g));
            let (g, gkib) = rt.block_on(speedo(&cfg, &exchange_g, &name_g, n, true));
            let g = g.as_secs_f64();
            println!(
                "run {run}: dd_speedo as a group's active (its state stream written) {:.0} msg/s ({g:.2}s), peak RSS {:.1} MiB",
                n as f64 / g,
                gkib as f64 / 1024.0
            );
            group_rates.push(n as f64 / g);
        }
        println!(
            "run {run}: baseline {:.0} msg/s ({b:.2}s), dd_speedo {:.0} msg/s ({d:.2}s), peak RSS {:.1} MiB",
            n as f64 / b,
            n as f64 / d,
            kib as f64 / 1024.0
        );
        base.push(n as f64 / b);
        ours.push(n as f64 / d);
        rss.push(kib as f64 / 1024.0);
    }
    let (mb, mo) = (median(base), median(ours));
    println!(
        "dd_speedo drain {n} records: baseline median {mb:.0} msg/s, dd_speedo median {mo:.0} msg/s, ratio {:.3} (bar: >= 0.9); peak RSS median {:.1} MiB",
        mo / mb,
        median(rss)
    );
    if grouped {
        let mg = median(group_rates);
        println!(
            "dd_speedo as a group's active: median {mg:.0} msg/s, {:.3} of the plain dd_speedo, {:.3} of the baseline",
            mg / mo,
            mg / mb
        );
        rt.block_on(clean_up(&cfg, &queue_g, &exchange_g));
    }
    rt.block_on(clean_up(&cfg, &queue, &exchange));
}
