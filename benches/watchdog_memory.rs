//! Memory of the in-flight table with 1,000,000 open transfers (`common::million_in_flight`:
//! 100 nodes, 10,000 clients, 50 sources, URLs of about 90 bytes), then a down report of one
//! node built and split. The bar (issue 7): under 400 MiB resident.
//!
//! `cargo bench --bench watchdog_memory` (or `scripts/bench`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use chrono::Utc;
use common::*;
use ddmon::watchdog::WatchdogConfig;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let now = Utc::now();
    let started = std::time::Instant::now();
    let (mut t, _) = million_in_flight(now);
    let fill = started.elapsed();
    println!(
        "1,000,000 open transfers in {} nodes: {:.1} MiB resident (peak {:.1} MiB), filled in {:.2} s (bar: < 400 MiB)",
        t.node_count(),
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:"),
        fill.as_secs_f64()
    );
    // questions at this size (issue 18): each answer's time and size, median of 5
    let none = ddmon::watchdog::InflightFilter::default();
    for (what, body) in [
        ("empty body {} (nodes, the 1,000 oldest)", r#"{}"#),
        ("summary (the nodes alone)", r#"{"summary": true}"#),
        (
            "one node's, 100",
            r#"{"kind": "node", "name": "node42.pump.example", "limit": 100}"#,
        ),
        (
            "one client's",
            r#"{"kind": "client", "name": "client00777"}"#,
        ),
        (
            "a regex on sources, 100",
            r#"{"kind": "source", "regex": "^source0[1-3]$", "limit": 100}"#,
        ),
    ] {
        let q = ddmon::rpc::Query::from_body(body.as_bytes());
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut cursor = None;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let a = t.answer(&q, &none, now).unwrap();
            let json = serde_json::to_vec(&a).unwrap();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            bytes = json.len();
            cursor = a.page.and_then(|p| p.next_cursor);
        }
        println!(
            "query {what}: {:.0} ms (answer and JSON), {bytes} bytes{} (bar: < 200 ms, bounded)",
            median(times),
            if cursor.is_some() {
                ", cut with a cursor"
            } else {
                ""
            }
        );
    }
    // node07 goes silent: its 10,000 transfers in one report, split in parts
    let started = std::time::Instant::now();
    // the other nodes keep speaking, every minute for an hour (an hour of silence everywhere
    // would put the input in doubt, not the nodes)
    let t1 = now + chrono::Duration::hours(2);
    let t2 = t1 + chrono::Duration::seconds(3660);
    for minute in 0..=61 {
        let at = t1 + chrono::Duration::minutes(minute);
        for n in 0..100 {
            if n != 7 {
                t.heartbeat(&format!("node{n:02}.pump.example"), at);
            }
        }
    }
    let events = t.tick(t2);
    let cfg = WatchdogConfig::default();
    let msgs = cfg.outgoing(&events);
    println!(
        "down report of {} node(s), {} messages (largest {} bytes, limit {}), built in {:.0} ms; peak {:.1} MiB",
        events.len(),
        msgs.len(),
        msgs.iter().map(|m| m.body.len()).max().unwrap_or(0),
        cfg.max_report_bytes,
        started.elapsed().as_secs_f64() * 1000.0,
        rss_mib("VmHWM:")
    );
}
