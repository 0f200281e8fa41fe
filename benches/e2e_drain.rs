//! End-to-end: how fast `dd_log` drains a queue of records into a pipe, against a tuned lapin
//! consumer (prefetch 1000, one `multiple` ack per 100 deliveries, no parsing, no output)
//! measured in the same run on the same queue. Prints each run, the medians and the ratio.
//!
//! `cargo bench --bench e2e_drain` (or `scripts/bench`); `DRAIN_RECORDS` (default 200000) and
//! `DRAIN_RUNS` (default 3) tune it. Needs the broker (`scripts/broker-up`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ddmon::broker::Outgoing;
use ddmon::config::BrokerConfig;
use lapin::options::QueueDeleteOptions;

/// dd_log into a pipe that this process reads and counts.
fn dd_log(exchange: &str, name: &str, n: usize) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dd_log"))
        .args([
            "--exchange",
            exchange,
            "--queue",
            name,
            "-n",
            &n.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Count newlines in raw chunks, as `wc -l` would: the reader should cost little.
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count();
    }
    assert!(child.wait().unwrap().success());
    let took = started.elapsed();
    assert_eq!(lines, n);
    took
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it
    // (and `--list` asks what is in it): only measure when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("DRAIN_RECORDS", 200_000);
    let runs = env_num("DRAIN_RUNS", 3);
    // The same runtime flavour as dd_log (one thread): the comparison is of the work done
    // per message, not of schedulers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = BrokerConfig::default();
    let exchange = format!("bench.log.{:08x}", ddmon::broker::random_u64() as u32);
    let name = format!("bench{:08x}", ddmon::broker::random_u64() as u32);
    let queue = format!("q_guest.dd_log.{name}");
    // declare the queue and its binding as dd_log does
    let st = Command::new(env!("CARGO_BIN_EXE_dd_log"))
        .args(["--exchange", &exchange, "--queue", &name, "-n", "0"])
        .status()
        .unwrap();
    assert!(st.success());
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(ddmon::sim::PumpModel::default(), start);
    let msgs: Vec<Outgoing> = (0..n)
        .map_while(|_| pump.next_record())
        .map(|r| ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, &exchange))
        .collect();

    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        rt.block_on(fill(&cfg, &msgs));
        let b = rt.block_on(baseline(&cfg, &queue, n)).as_secs_f64();
        rt.block_on(fill(&cfg, &msgs));
        let d = dd_log(&exchange, &name, n).as_secs_f64();
        println!(
            "run {run}: baseline {:.0} msg/s ({b:.2}s), dd_log {:.0} msg/s ({d:.2}s)",
            n as f64 / b,
            n as f64 / d
        );
        base.push(n as f64 / b);
        ours.push(n as f64 / d);
    }
    let (mb, mo) = (median(base), median(ours));
    println!(
        "drain {n} records: baseline median {mb:.0} msg/s, dd_log median {mo:.0} msg/s, ratio {:.3} (bar: >= 0.9)",
        mo / mb
    );
    rt.block_on(async {
        let conn = ddmon::broker::raw::connect(&cfg, "bench-cleanup")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .unwrap();
        conn.close(200, "OK".into()).await.unwrap();
    });
}
