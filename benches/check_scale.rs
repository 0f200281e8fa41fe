//! The query path at a national pump's size (issue 18): a real dd_speedo fed 100,000 clients,
//! 200 sources and 1,000,000 distinct subjects through the broker, then check_dd_speedo run
//! against it. Prints, per check run (median of `CHECK_RUNS`, default 20): wall time, CPU
//! (user + system) and peak resident memory (GNU time's `%M`); the check's verdict line; the
//! sizes of the replies (the empty-body answer within its cap, a summary, the check's pages);
//! and dd_speedo's resident memory before and after the checks. Bars: < 200 ms wall,
//! < 50 ms CPU, < 30 MiB resident per check; dd_speedo < 300 MiB.
//!
//! The baseline is the same question answered the old way, measured before this change on
//! the same kind of host (issue 18's own figures: a 36.7 MB reply, 1.0-5.7 s wall, 0.4-1.4 s
//! CPU, 359 MB resident per check), since the whole-world reply cannot be asked any more.
//!
//! `cargo bench --bench check_scale` (or `scripts/bench`); `CHECK_SCALE_CLIENTS`,
//! `CHECK_SCALE_RECORDS` tune it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ddmon::broker::Outgoing;
use ddmon::record::LogRecord;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let clients = env_num("CHECK_SCALE_CLIENTS", 100_000);
    let records = env_num("CHECK_SCALE_RECORDS", 1_000_000);
    let runs = env_num("CHECK_RUNS", 20);
    let tag = format!("{:08x}", ddmon::broker::random_u64() as u32);
    let exchange = format!("bench.scale.{tag}");
    let instance = format!("scale{tag}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("speedo.toml");
    // late after 20 s without a good delivery: once fed, every name becomes an offender
    std::fs::write(&config, "[thresholds.defaults]\ntd = 20\n").unwrap();
    let mut speedo = Command::new(env!("CARGO_BIN_EXE_dd_speedo"))
        .args(["--exchange", &exchange, "--output-exchange", &exchange])
        .args(["--daemon-exchange", &exchange, "--no-source-copies"])
        .args([
            "--queue",
            &instance,
            "--interval",
            "10",
            "--instance",
            &instance,
        ])
        .args(["-q", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = speedo.id().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = ddmon::config::BrokerConfig::default();
    std::thread::sleep(Duration::from_secs(2));
    let fed = Instant::now();
    rt.block_on(fill(&cfg, &messages(&exchange, clients, records)));
    // consumed: dd_speedo counted every record
    let conn = rt.block_on(ddmon::broker::raw::connect(&cfg, "bench-scale"));
    let conn = conn.unwrap();
    loop {
        let counted = rt
            .block_on(stats(&conn, &exchange, "dd_speedo", &instance))
            .and_then(|s| s["counted"].as_u64())
            .unwrap_or(0);
        if counted >= records as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "fed and counted {records} records ({clients} clients, 200 sources, {records} subjects) in {:.1} s",
        fed.elapsed().as_secs_f64()
    );
    // every name late
    std::thread::sleep(Duration::from_secs(22));
    let before = proc_kib(&pid, "VmRSS:") as f64 / 1024.0;
    for (what, body) in [
        (
            "empty body {} (each list within the 1,000 cap)",
            "{}".to_string(),
        ),
        ("summary", r#"{"summary": true}"#.to_string()),
        (
            "dd_web's poll (the 48 worst, with the counts)",
            r#"{"sort": "worst", "limit": 48}"#.to_string(),
        ),
        (
            "dd_web's search page (50 by name)",
            r#"{"regex": "^client0421", "sort": "name", "limit": 50}"#.to_string(),
        ),
        (
            "the check's offenders page (100, worst first)",
            r#"{"states": ["late","failing","slow","abnormal"], "sort": "worst", "limit": 100}"#
                .to_string(),
        ),
    ] {
        let (bytes, took) = rt.block_on(ask(&conn, &exchange, &instance, &body));
        println!(
            "reply, {what}: {bytes} bytes in {:.1} ms",
            took.as_secs_f64() * 1000.0
        );
    }
    let check = env!("CARGO_BIN_EXE_check_dd_speedo");
    let args = ["--exchange", &exchange, "--instance", &instance];
    let out = Command::new(check).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first: String = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(110)
        .collect();
    println!(
        "check: exit {} with {} lines: {first}...",
        out.status.code().unwrap_or(-1),
        text.lines().count()
    );
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%e %U %S %M", check])
            .args(args)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let v: Vec<f64> = err
            .lines()
            .last()
            .unwrap_or("")
            .split(' ')
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 4 {
            wall.push(v[0] * 1000.0);
            cpu.push((v[1] + v[2]) * 1000.0);
            rss.push(v[3] / 1024.0);
        }
    }
    // CPU to the millisecond: the children's times of a shell loop over the runs
    let mean_cpu = runs_of(check, &args.join(" "), runs).1 * 1000.0;
    // dd_speedo under a check every 10 s and a dd_web poll every 5 s, for a while
    let soak = env_num("CHECK_SCALE_SECS", 600) as u64;
    let soaked = Instant::now();
    let mut next_check = Duration::ZERO;
    let mut next_report = Duration::ZERO;
    let mut most: f64 = 0.0;
    while soaked.elapsed() < Duration::from_secs(soak) {
        let at = soaked.elapsed();
        if at >= next_check {
            let _ = Command::new(check).args(args).output();
            next_check += Duration::from_secs(10);
        }
        let _ = rt.block_on(ask(
            &conn,
            &exchange,
            &instance,
            r#"{"sort": "worst", "limit": 48}"#,
        ));
        let rss = proc_kib(&pid, "VmRSS:") as f64 / 1024.0;
        most = most.max(rss);
        if at >= next_report {
            println!(
                "  soak {:>4} s: dd_speedo resident {rss:.0} MiB",
                at.as_secs()
            );
            next_report += Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    println!(
        "dd_speedo under a check every 10 s and a dd_web poll every 5 s for {soak} s: at most {most:.0} MiB resident (sampled every 5 s)"
    );
    let after = proc_kib(&pid, "VmRSS:") as f64 / 1024.0;
    let peak = proc_kib(&pid, "VmHWM:") as f64 / 1024.0;
    println!(
        "check_dd_speedo, median of {} runs: {:.0} ms wall, {:.1} MiB resident; CPU {mean_cpu:.1} ms a run (user+sys, mean of {runs}; median of GNU time's 10 ms ticks {:.0} ms) (bars: < 200 ms, < 30 MiB, < 50 ms)",
        wall.len(),
        median(wall),
        median(rss),
        median(cpu)
    );
    println!(
        "dd_speedo resident: {before:.0} MiB before the checks, {after:.0} MiB after, peak {peak:.0} MiB over the whole run, the feed included (bar: < 300 MiB)"
    );
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = speedo.wait();
    rt.block_on(async {
        let _ = conn.close(200, "OK".into()).await;
        clean_up(&cfg, &format!("q_guest.dd_speedo.{instance}"), &exchange).await;
    });
}

/// `records` good deliveries: client `i % clients`, source `i % 200`, each in a directory of
/// its own (a subject).
fn messages(exchange: &str, clients: usize, records: usize) -> Vec<Outgoing> {
    let now = chrono::Utc::now();
    (0..records)
        .map(|i| {
            let r = LogRecord {
                relpath: format!("/tree{:03}/d{i:07}/file.grib2", i % 200),
                client: format!("client{:06}", i % clients),
                source: Some(format!("source{:03}", i % 200)),
                ..good_record(now)
            };
            ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, exchange)
        })
        .collect()
}

/// One stats request with `body`: the reply's size and the time to it.
async fn ask(
    conn: &lapin::Connection,
    exchange: &str,
    instance: &str,
    body: &str,
) -> (usize, Duration) {
    let key = ddmon::rpc::request_key("dd_speedo", Some(instance), "stats");
    let started = Instant::now();
    let r = ddmon::broker::raw::request(
        conn,
        exchange,
        &key,
        body.as_bytes(),
        Duration::from_secs(10),
        Some(1),
    )
    .await
    .unwrap();
    (r.first().map_or(0, |m| m.body.len()), started.elapsed())
}
