//! The chaos suite (`scripts/chaos`; `cargo test --features chaos --test chaos`): dd_sim at a
//! fixed rate through dd_log2source, dd_speedo and dd_watchdog, on a RabbitMQ node of the
//! suite's own, while one fault at a time strikes: the broker's app stops and starts, the
//! whole broker stops and starts, each daemon is killed (SIGKILL) and restarted, a TCP proxy
//! between dd_log2source and the broker drops its connections or stalls them for 30 s, and a
//! flood of malformed messages makes up 10% of the traffic.
//!
//! For each: the records published (what the broker accepted on `log`, deduplicated), routed
//! (found in the sources' exchanges), counted (dd_speedo's totals against the good and error
//! records published), the watchdog's open transfers against what the stream leaves open, the
//! records lost (must be 0), the duplicates (allowed, counted) and the time to recover (until
//! every daemon consumes again). One markdown table is printed at the end.

#![cfg(feature = "chaos")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::RabbitNode;
use common::proxy::Proxy;
use common::*;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::Value;

const RATE: u32 = 200;
const SECONDS: u32 = 24;
const SOURCES: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    AppRestart,
    FullRestart,
    Kill(&'static str),
    ProxyDrop,
    ProxyStall,
    Malformed,
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::None => "none (baseline)".into(),
            Fault::AppRestart => "broker stop_app / start_app (5 s)".into(),
            Fault::FullRestart => "broker stop / start (whole node)".into(),
            Fault::Kill(t) => format!("SIGKILL {t}, restarted after 2 s"),
            Fault::ProxyDrop => "proxy drops dd_log2source's connection".into(),
            Fault::ProxyStall => "proxy stalls dd_log2source's connection 30 s".into(),
            Fault::Malformed => "malformed flood, 10% of traffic".into(),
        }
    }
}

fn daemon(tool: &str, url: &str, args: &[&str]) -> Running {
    let path = match tool {
        "dd_log2source" => env!("CARGO_BIN_EXE_dd_log2source"),
        "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
        "dd_watchdog" => env!("CARGO_BIN_EXE_dd_watchdog"),
        other => panic!("{other}"),
    };
    let mut c = Command::new(path);
    daemon_log(&mut c)
        .env("DD_BROKER", url)
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_WATCHDOG_JOURNAL")
        .args(args);
    Running::spawn(c)
}

async fn connect_retry(url: &str) -> lapin::Connection {
    let cfg = ddmon::config::BrokerConfig {
        url: url.to_string(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ddmon::broker::raw::connect(&cfg, "chaos").await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every message waiting in `queue`: (routing key, headers, body), in order.
async fn drain_queue(conn: &lapin::Connection, queue: &str) -> Vec<RawMessage> {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, Default::default()).await.unwrap();
    let mut c = ch
        .basic_consume(
            queue.into(),
            "chaos-drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(1500), c.next()).await {
        let headers = ddmon::broker::raw::headers_of(&d.properties);
        out.push((d.routing_key.to_string(), headers, d.data.clone()));
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = ch.close(200, "drained".into()).await;
    out
}

/// Every daemon's input queue has its consumer and nothing waiting.
async fn all_caught_up(conn: &lapin::Connection) -> bool {
    every_input(conn, |messages, consumers| messages == 0 && consumers >= 1).await
}

/// Every daemon's input queue has its consumer.
async fn all_consuming(conn: &lapin::Connection) -> bool {
    every_input(conn, |_, consumers| consumers >= 1).await
}

/// `ok(messages, consumers)` holds for every daemon's input queue.
async fn every_input(conn: &lapin::Connection, ok: impl Fn(u32, u32) -> bool) -> bool {
    for q in [
        "q_guest.dd_log2source.chaos",
        "q_guest.dd_speedo.chaos",
        "q_guest.dd_watchdog.chaos",
    ] {
        match queue_counts(conn, q).await {
            Some((messages, consumers)) if ok(messages, consumers) => {}
            _ => return false,
        }
    }
    true
}

async fn stats(conn: &lapin::Connection, tool: &str) -> Value {
    let r = ddmon::broker::raw::request(
        conn,
        "log",
        &format!("v01.rpc.{tool}.all.stats"),
        b"{}",
        Duration::from_secs(3),
        Some(1),
    )
    .await
    .unwrap();
    r.first()
        .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .map(|v| v["result"].clone())
        .unwrap_or(Value::Null)
}

/// Malformed messages, one of each kind the parser names (`Malformed::kind`): empty, too
/// large, not UTF-8, field count, bad date, bad status, bad duration, bad header, JSON,
/// missing field. (An unknown topic is not bound by the daemons' queues, so it never reaches
/// them.) Every 50th of the flood is the too-large one, 1 MiB and a byte.
fn malformed(i: usize) -> RawMessage {
    let v02 = "v02.log.chaos.bad";
    let mut h = ddmon::record::Headers::new();
    h.insert(
        "source".into(),
        ddmon::record::HeaderValue::Str("source00".into()),
    );
    let (key, body): (&str, Vec<u8>) = match i % 50 {
        0 => (v02, vec![b'x'; ddmon::record::MAX_BODY_BYTES + 1]),
        n => match n % 9 {
            0 => (v02, b"".to_vec()),
            1 => (v02, b"\xff\xfe not utf-8".to_vec()),
            2 => (v02, b"20261122120000 http://h/ a 201".to_vec()),
            3 => (v02, b"not-a-date http://h/ a 201 n c 0.1".to_vec()),
            4 => (v02, b"20261122120000 http://h/ a 999 n c 0.1".to_vec()),
            5 => (v02, b"20261122120000 http://h/ a 201 n c soon".to_vec()),
            6 => {
                h.insert(
                    "parts".into(),
                    ddmon::record::HeaderValue::Str("1,nonsense".into()),
                );
                (v02, b"20261122120000 http://h/ a 201 n c 0.1".to_vec())
            }
            7 => ("v03.chaos.bad", b"{\"report\": {\"code\": ".to_vec()),
            _ => (
                "v03.chaos.bad",
                b"{\"relPath\": \"a\", \"report\": {\"code\": 201, \"timeCompleted\": \"20261122T120000\"}}"
                    .to_vec(),
            ),
        },
    };
    (key.into(), h, body)
}

struct Row {
    fault: String,
    counted_n: (u64, u64),
    published: usize,
    routed: usize,
    lost: usize,
    duplicates: usize,
    counted: String,
    watchdog: String,
    malformed: String,
    recovery: String,
}

async fn scenario(node: &mut RabbitNode, fault: Fault, n: usize) -> Row {
    let vhost = format!("chaos{n}");
    node.ctl_ok(&["add_vhost", &vhost]);
    node.ctl_ok(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let url = node.url(&vhost);
    let conn = connect_retry(&url).await;
    durable_tap(&conn, "truth", "log", "v02.#").await;
    for s in 0..SOURCES {
        durable_tap(
            &conn,
            &format!("routed{s}"),
            &format!("log_source{s:02}"),
            "v02.#",
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(node.port).await;
    let route_url = if matches!(fault, Fault::ProxyDrop | Fault::ProxyStall) {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", proxy.port)
    } else {
        url.clone()
    };
    let state = dir.path().join("speedo.state");
    let journal = dir.path().join("watchdog.journal");
    let route_args: Vec<String> = vec!["--queue".into(), "chaos".into()];
    let speedo_args: Vec<String> = vec![
        "--queue".into(),
        "chaos".into(),
        "--interval".into(),
        "1".into(),
        "--state-interval".into(),
        "1".into(),
        "--state-file".into(),
        state.display().to_string(),
    ];
    let watchdog_args: Vec<String> = vec![
        "--queue".into(),
        "chaos".into(),
        "--journal".into(),
        journal.display().to_string(),
    ];
    let args_of = |tool: &str| -> Vec<String> {
        match tool {
            "dd_log2source" => route_args.clone(),
            "dd_speedo" => speedo_args.clone(),
            _ => watchdog_args.clone(),
        }
    };
    let mut daemons: BTreeMap<&str, Running> = BTreeMap::new();
    for tool in ["dd_log2source", "dd_speedo", "dd_watchdog"] {
        let u = if tool == "dd_log2source" {
            &route_url
        } else {
            &url
        };
        let a = args_of(tool);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        daemons.insert(tool, daemon(tool, u, &a));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_consuming(&conn).await {
        assert!(Instant::now() < deadline, "daemons did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut sim = Command::new(env!("CARGO_BIN_EXE_dd_sim"));
    sim.env("DD_BROKER", &url).args([
        "--rate",
        &RATE.to_string(),
        "--duration",
        &SECONDS.to_string(),
        "--sources",
        &SOURCES.to_string(),
        "--clients",
        "5",
        "--nodes",
        "3",
        "--error-rate",
        "0.05",
        "-q",
    ]);
    let sim = Running::spawn(sim);
    tokio::time::sleep(Duration::from_secs(u64::from(SECONDS) / 3)).await;
    let mut injected = 0usize;
    let fault_end = match fault {
        Fault::None => Instant::now(),
        Fault::AppRestart => {
            node.ctl_ok(&["stop_app"]);
            tokio::time::sleep(Duration::from_secs(5)).await;
            node.ctl_ok(&["start_app"]);
            Instant::now()
        }
        Fault::FullRestart => {
            node.stop();
            node.spawn();
            node.wait_up(120).await;
            Instant::now()
        }
        Fault::Kill(tool) => {
            let r = daemons.remove(tool).unwrap();
            let _ = Command::new("kill")
                .args(["-KILL", &r.child.id().to_string()])
                .status();
            let _ = r.finish(10);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let a = args_of(tool);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            daemons.insert(tool, daemon(tool, &url, &a));
            Instant::now()
        }
        Fault::ProxyDrop => {
            proxy.cut();
            Instant::now()
        }
        Fault::ProxyStall => {
            proxy.stall(true);
            tokio::time::sleep(Duration::from_secs(30)).await;
            proxy.stall(false);
            Instant::now()
        }
        Fault::Malformed => {
            // 10% of the traffic for the rest of the run
            let per_batch = (RATE / 10) as usize;
            for _ in 0..(SECONDS * 2 / 3) {
                let batch: Vec<RawMessage> =
                    (0..per_batch).map(|i| malformed(injected + i)).collect();
                injected += batch.len();
                publish_on(&url, "log", batch).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Instant::now()
        }
    };
    // recovered: every daemon consumes again (asked on a new connection: a broker restart
    // closed the old one)
    let recovery = loop {
        let conn = connect_retry(&url).await;
        let up = all_consuming(&conn).await;
        let _ = conn.close(200, "checked".into()).await;
        if up {
            break fault_end.elapsed();
        }
        if fault_end.elapsed() > Duration::from_secs(120) {
            let mut why = String::new();
            for (tool, r) in &mut daemons {
                if let Ok(Some(st)) = r.child.try_wait() {
                    std::thread::sleep(Duration::from_millis(300));
                    why += &format!("{tool} exited ({st}): {}; ", r.stderr.lock().unwrap());
                }
            }
            panic!("not recovered after 120 s: {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (code, _, err) = sim.finish(300);
    assert_eq!(code, 0, "dd_sim: {err}");
    let conn = connect_retry(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_caught_up(&conn).await {
        assert!(Instant::now() < deadline, "daemons never caught up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // the truth: what the broker accepted on log (the malformed ones apart)
    let truth = drain_queue(&conn, "truth").await;
    let mut published: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut ordered = Vec::new();
    for (k, h, b) in truth {
        if k.ends_with("chaos.bad") {
            continue;
        }
        if published.insert(b.clone()) {
            ordered.push((k, h, b));
        }
    }
    let mut routed_total = 0usize;
    let mut routed: BTreeSet<Vec<u8>> = BTreeSet::new();
    for s in 0..SOURCES {
        for (k, _, b) in drain_queue(&conn, &format!("routed{s}")).await {
            if k.ends_with("chaos.bad") {
                continue;
            }
            routed_total += 1;
            routed.insert(b);
        }
    }
    let lost = published.difference(&routed).count();
    // what dd_speedo should have counted, and what the stream leaves open
    let (mut good_err, mut open) = (0u64, BTreeMap::<(String, String, String), i64>::new());
    for (k, h, b) in &ordered {
        if let Ok(ddmon::record::Parsed::Log(r)) = ddmon::record::parse(k, h, b) {
            let key = (r.node.clone(), r.client.clone(), r.url());
            if r.status == 102 {
                *open.entry(key).or_default() += 1;
            } else {
                if !(300..400).contains(&r.status) && r.status >= 200 {
                    good_err += 1;
                }
                if let Some(v) = open.get_mut(&key) {
                    *v = (*v - 1).max(0);
                }
            }
        }
    }
    let expected_open: i64 = open.values().sum();
    let sp = stats(&conn, "dd_speedo").await;
    let totals = &sp["totals"]["client.all"];
    let counted = totals["good"].as_u64().unwrap_or(0) + totals["errors"].as_u64().unwrap_or(0);
    let wd = stats(&conn, "dd_watchdog").await;
    let wd_open = wd["in_flight"].as_u64().unwrap_or(u64::MAX);
    let malformed_seen = sp["counters"]["malformed"].as_u64().unwrap_or(0);
    for (_, r) in daemons {
        r.terminate();
        let (code, _, err) = r.finish(30);
        assert_eq!(code, 0, "{err}");
    }
    drop(conn);
    node.ctl_ok(&["delete_vhost", &vhost]);
    Row {
        fault: fault.name(),
        counted_n: (counted, good_err),
        published: published.len(),
        routed: routed_total,
        lost,
        duplicates: routed_total - routed.len(),
        counted: format!("{counted} / {good_err}"),
        watchdog: format!("{wd_open} / {expected_open}"),
        malformed: if fault == Fault::Malformed {
            format!("{malformed_seen} / {injected}")
        } else {
            "-".into()
        },
        recovery: format!("{:.1} s", recovery.as_secs_f64()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = RabbitNode::start(
        dir.path(),
        &format!("ddmon-chaos-{}@localhost", free_port()),
    )
    .await;
    let only = std::env::var("CHAOS_ONLY").ok();
    let faults = [
        Fault::None,
        Fault::AppRestart,
        Fault::FullRestart,
        Fault::Kill("dd_log2source"),
        Fault::Kill("dd_speedo"),
        Fault::Kill("dd_watchdog"),
        Fault::ProxyDrop,
        Fault::ProxyStall,
        Fault::Malformed,
    ];
    let mut rows = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        if only.as_deref().is_some_and(|o| !f.name().contains(o)) {
            continue;
        }
        let row = scenario(&mut node, *f, i).await;
        eprintln!(
            "chaos: {}: published {}, routed {}, lost {}, duplicates {}, counted {}, watchdog {}, malformed {}, recovered in {}",
            row.fault,
            row.published,
            row.routed,
            row.lost,
            row.duplicates,
            row.counted,
            row.watchdog,
            row.malformed,
            row.recovery
        );
        rows.push(row);
    }
    println!(
        "\n| fault | published | routed | lost | duplicates | counted / expected | watchdog open / expected | malformed counted / injected | recovered in |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fault,
            r.published,
            r.routed,
            r.lost,
            r.duplicates,
            r.counted,
            r.watchdog,
            r.malformed,
            r.recovery
        );
    }
    for r in &rows {
        assert_eq!(r.lost, 0, "{}: records lost", r.fault);
        // a redelivered record may be counted twice; none may go uncounted
        assert!(r.counted_n.0 >= r.counted_n.1, "{}: counts lost", r.fault);
    }
}
