//! One check_dd_speedo run against a local broker and a running dd_speedo (20 clients, 5
//! sources): wall time per run and CPU per run (user + system of the children, from bash's
//! `times`). The bar (issue 6): under 50 ms of CPU and under 200 ms wall, so that Nagios can run
//! it every minute for hundreds of services.
//!
//! `cargo bench --bench check_run` (or `scripts/bench`); `CHECK_RUNS` (default 50).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("CHECK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let tag = format!("{:08x}", ddmon::broker::random_u64() as u32);
    let exchange = format!("bench.check.{tag}");
    let instance = format!("bench{tag}");
    let mut speedo = Command::new(env!("CARGO_BIN_EXE_dd_speedo"))
        .args([
            "--exchange",
            &exchange,
            "--output-exchange",
            &exchange,
            "--daemon-exchange",
            &exchange,
            "--no-source-copies",
            "--queue",
            &instance,
            "--interval",
            "1",
            "--instance",
            &instance,
            "-q",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 20 clients and 5 sources
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let start = chrono::Utc::now();
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            clients: 20,
            sources: 5,
            ..Default::default()
        },
        start,
    );
    let msgs: Vec<_> = (0..2000)
        .map_while(|_| pump.next_record())
        .map(|r| ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, &exchange))
        .collect();
    rt.block_on(async {
        let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
        let cfg = ddmon::config::BrokerConfig::default();
        let mut p = ddmon::broker::Publisher::connect(&cfg, "bench", shutdown)
            .await
            .unwrap();
        p.publish_all(&msgs).await.unwrap();
        p.close().await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let check = env!("CARGO_BIN_EXE_check_dd_speedo");
    let args = format!("--exchange {exchange} --instance {instance}");
    // one run to see it works
    let out = Command::new(check).args(args.split(' ')).output().unwrap();
    let first = String::from_utf8_lossy(&out.stdout);
    println!(
        "{}",
        first
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect::<String>()
    );
    assert!(out.status.code().unwrap() <= 2, "{first}");
    let (wall, cpu) = common::runs_of(check, &args, runs);
    println!(
        "check_dd_speedo, {runs} runs: {:.1} ms wall and {:.1} ms CPU (user+sys) per run (bars: < 200 ms wall, < 50 ms CPU)",
        wall * 1000.0,
        cpu * 1000.0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &speedo.id().to_string()])
        .status();
    let _ = speedo.wait();
    rt.block_on(async {
        let cfg = ddmon::config::BrokerConfig::default();
        let conn = ddmon::broker::raw::connect(&cfg, "bench-cleanup")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(
                format!("q_guest.dd_speedo.{instance}").as_str().into(),
                Default::default(),
            )
            .await;
        let _ = ch
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
        let _ = conn.close(200, "OK".into()).await;
    });
}
