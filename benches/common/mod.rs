//! Shared by the end-to-end benches: a queue filled with confirms, the baseline consumer
//! (tuned as a careful engineer writes it: prefetch 1000, one `multiple` ack per 100
//! deliveries, nothing else), medians, memory readings, requests and clean-up.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ddmon::broker::{Outgoing, Publisher};
use ddmon::config::BrokerConfig;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

/// A number from the environment, or the default.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of the runs.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Publish `msgs` (their own exchange) with confirms, in chunks.
pub async fn fill(cfg: &BrokerConfig, msgs: &[Outgoing]) {
    let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
    let mut p = Publisher::connect(cfg, "bench-fill", shutdown)
        .await
        .unwrap();
    for chunk in msgs.chunks(5000) {
        p.publish_all(chunk).await.unwrap();
    }
    p.close().await;
}

/// A durable queue bound to `exchange` on v02.# and v03.# (as the daemons declare theirs).
pub async fn declare(cfg: &BrokerConfig, exchange: &str, queue: &str) {
    declare_input(cfg, exchange, queue, None).await;
}

/// As [`declare`], for a group's input (single active consumer).
pub async fn declare_for_group(cfg: &BrokerConfig, exchange: &str, queue: &str) {
    declare_input(cfg, exchange, queue, Some(format!("{queue}.active"))).await;
}

async fn declare_input(
    cfg: &BrokerConfig,
    exchange: &str,
    queue: &str,
    active_lock: Option<String>,
) {
    let conn = ddmon::broker::raw::connect(cfg, "bench-declare")
        .await
        .unwrap();
    let sub = ddmon::broker::Subscription {
        exchange: exchange.into(),
        bindings: vec!["v02.#".into(), "v03.#".into()],
        queue: ddmon::broker::QueueSpec {
            name: queue.into(),
            durable: true,
            exclusive: false,
            quorum: false,
            dead_letter_exchange: None,
        },
        active_lock,
    };
    ddmon::broker::raw::declare_queue(&conn, &sub)
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
}

/// The baseline's prefetch (`BENCH_BASELINE_PREFETCH`, default 1000).
pub fn baseline_prefetch() -> u16 {
    env_num("BENCH_BASELINE_PREFETCH", 1000).min(usize::from(u16::MAX)) as u16
}

/// The baseline acknowledges once per this many deliveries, `multiple` (`BENCH_ACK_EVERY`,
/// default 100).
pub fn ack_every() -> usize {
    env_num("BENCH_ACK_EVERY", 100).max(1)
}

/// The baseline: consume `n` messages from `queue` with a prefetch of 1000, one `multiple`
/// ack per 100 deliveries (and one for the rest), nothing else: the consumer a careful
/// engineer writes for the same job, not one that waits for an ack per message.
pub async fn baseline(cfg: &BrokerConfig, queue: &str, n: usize) -> Duration {
    let started = Instant::now();
    let conn = ddmon::broker::raw::connect(cfg, "bench-baseline")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(baseline_prefetch(), BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "baseline".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let every = ack_every();
    for i in 1..=n {
        let d = consumer.next().await.unwrap().unwrap();
        if i % every == 0 || i == n {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    let took = started.elapsed();
    conn.close(200, "OK".into()).await.unwrap();
    took
}

/// A daemon's `stats` result (`None` when none answered within 500 ms).
pub async fn stats(
    conn: &lapin::Connection,
    exchange: &str,
    tool: &str,
    instance: &str,
) -> Option<serde_json::Value> {
    let key = ddmon::rpc::request_key(tool, Some(instance), "stats");
    let r = ddmon::broker::raw::request(
        conn,
        exchange,
        &key,
        b"{}",
        Duration::from_millis(500),
        Some(1),
    )
    .await
    .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&r.first()?.body).ok()?;
    Some(v["result"].clone())
}

/// A field of /proc/<pid>/status in KiB (`VmHWM:` the peak resident memory).
pub fn proc_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's `VmRSS:` or `VmHWM:` in MiB.
pub fn rss_mib(field: &str) -> f64 {
    proc_kib("self", field) as f64 / 1024.0
}

/// Remove the bench's queue and exchange.
pub async fn clean_up(cfg: &BrokerConfig, queue: &str, exchange: &str) {
    let conn = ddmon::broker::raw::connect(cfg, "bench-cleanup")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.into(), Default::default())
        .await;
    let _ = conn.close(200, "OK".into()).await;
}

/// Run a daemon (`cmd`, told `--instance instance` and `--daemon-exchange exchange`) until
/// `handled` of its `stats` says it handled `n` records; its time from start and its peak
/// resident memory (KiB). Polled lightly: one small request every 100 ms (at most 0.5% of a
/// 20 s run late; a poll every 20 ms cost dd_speedo 20%).
pub async fn run_until_handled(
    cfg: &BrokerConfig,
    mut cmd: std::process::Command,
    tool: &str,
    exchange: &str,
    instance: &str,
    n: usize,
    handled: impl Fn(&serde_json::Value) -> Option<u64>,
) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = cmd
        .args(["--daemon-exchange", exchange, "--instance", instance, "-q"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let conn = ddmon::broker::raw::connect(cfg, "bench-poll")
        .await
        .unwrap();
    let took = loop {
        let done = stats(&conn, exchange, tool, instance).await;
        if done.as_ref().and_then(&handled) == Some(n as u64) {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid = child.id().to_string();
    let rss = proc_kib(&pid, "VmHWM:");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(child.wait().unwrap().success());
    conn.close(200, "OK".into()).await.unwrap();
    (took, rss)
}

/// A good delivery (200) of the memory benches' pump at `time`: node01, 123,456 bytes; the
/// bench fills in client, source and relpath.
pub fn good_record(time: chrono::DateTime<chrono::Utc>) -> ddmon::record::LogRecord {
    ddmon::record::LogRecord {
        encoding: ddmon::record::Encoding::V02,
        time,
        srcpath: "https://pump.example/".into(),
        relpath: String::new(),
        status: 200,
        node: "node01".into(),
        client: String::new(),
        duration: Some(0.2),
        source: None,
        from_cluster: None,
        to_clusters: None,
        flow: None,
        message: None,
        sum: None,
        bytes: Some(123_456),
    }
}

/// Wall and CPU per run of `check args`, run `runs` times in a row by bash (CPU: user + system
/// of the children, from bash's `times`), in seconds.
pub fn runs_of(check: &str, args: &str, runs: usize) -> (f64, f64) {
    let script = format!("for i in $(seq {runs}); do {check} {args} > /dev/null; done; times");
    let started = Instant::now();
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let wall = started.elapsed().as_secs_f64() / runs as f64;
    let text = String::from_utf8(out.stdout).unwrap();
    let secs = |s: &str| -> f64 {
        let (m, rest) = s.split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + rest.trim_end_matches('s').parse::<f64>().unwrap()
    };
    let children: Vec<f64> = text.lines().nth(1).unwrap().split(' ').map(secs).collect();
    (wall, (children[0] + children[1]) / runs as f64)
}

/// The memory benches' in-flight table: 1,000,000 open transfers (100 nodes, 10,000 clients,
/// 50 sources, URLs of about 90 bytes), with the limits it was made with.
pub fn million_in_flight(
    now: chrono::DateTime<chrono::Utc>,
) -> (ddmon::watchdog::Table, ddmon::watchdog::Limits) {
    let limits = ddmon::watchdog::Limits {
        node_timeout_ms: 3_600_000,
        stuck_after_ms: 0,
        reorder_window_ms: 10_000,
        forget_after_ms: 0,
    };
    let mut t = ddmon::watchdog::Table::new(limits.clone(), now, false);
    let mut r = ddmon::record::LogRecord {
        encoding: ddmon::record::Encoding::V02,
        time: now,
        srcpath: "https://dd.weather.example/".into(),
        relpath: String::new(),
        status: 102,
        node: String::new(),
        client: String::new(),
        duration: Some(0.0),
        source: None,
        from_cluster: None,
        to_clusters: None,
        flow: Some("flow_model_gem".into()),
        message: None,
        sum: None,
        bytes: Some(123_456),
    };
    for i in 0..1_000_000u64 {
        r.node = format!("node{:02}.pump.example", i % 100);
        r.client = format!("client{:05}", (i * 7) % 10_000);
        r.source = Some(format!("source{:02}", i % 50));
        r.relpath = format!("model_gem/20261122/12/product_{i:010}.grib2");
        t.observe(&r, now);
    }
    (t, limits)
}
