//! The in-flight table in virtual time, its journal, and the down report's parts.

use super::*;
use crate::record::{Encoding, LogRecord};
use chrono::{DateTime, Utc};
use chrono::{Duration, TimeZone};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
}

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

fn limits() -> Limits {
    Limits {
        node_timeout_ms: 10_000,
        stuck_after_ms: 60_000,
        reorder_window_ms: 5_000,
        forget_after_ms: 0,
    }
}

fn rec(node: &str, client: &str, file: &str, status: u16, at: DateTime<Utc>) -> LogRecord {
    LogRecord {
        encoding: Encoding::V02,
        time: at,
        srcpath: "https://src.example/".into(),
        relpath: format!("data/{file}"),
        status,
        node: node.into(),
        client: client.into(),
        duration: Some(0.0),
        source: Some("ec".into()),
        from_cluster: None,
        to_clusters: None,
        flow: Some("f".into()),
        message: None,
        sum: None,
        bytes: Some(100),
    }
}

/// The `inflight` answer as the wire has it, for a filter written as the request body.
fn inflight_json(t: &Table, filter: &Value, limit: usize, now: DateTime<Utc>) -> Value {
    let filter: InflightFilter = serde_json::from_value(filter.clone()).unwrap_or_default();
    serde_json::to_value(t.inflight(&filter, limit, now)).unwrap()
}

#[test]
fn open_close_restart_and_unmatched() {
    let mut t = Table::new(limits(), t0(), false);
    t.observe(&rec("n1", "a", "x", 102, t0()), t0());
    t.observe(&rec("n1", "b", "x", 102, t0()), t0());
    t.observe(&rec("n2", "a", "x", 102, t0()), t0());
    assert_eq!(t.len(), 3, "keyed by node, client and URL");
    t.observe(&rec("n1", "a", "x", 102, t0() + ms(5)), t0() + ms(5));
    assert_eq!((t.len(), t.counts.restarted), (3, 1));
    t.observe(&rec("n1", "a", "x", 201, t0() + ms(9)), t0() + ms(9));
    t.observe(&rec("n1", "b", "x", 499, t0() + ms(9)), t0() + ms(9));
    t.observe(&rec("n1", "c", "y", 201, t0() + ms(9)), t0() + ms(9));
    t.observe(&rec("n1", "c", "y", 100, t0() + ms(9)), t0() + ms(9));
    assert_eq!(t.len(), 1);
    assert_eq!(t.counts.closed, 2);
    assert_eq!(t.counts.unmatched_finals, 1);
    assert_eq!(t.counts.informational, 1);
    let v = inflight_json(&t, &Value::Null, 10, t0() + ms(10));
    assert_eq!(v["total"], 1);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["node"], "n1");
    assert_eq!(nodes[0]["in_flight"], 0);
    assert_eq!(nodes[1]["in_flight"], 1);
    assert_eq!(nodes[1]["bytes"], 100);
    assert_eq!(v["transfers"][0]["url"], "https://src.example/data/x");
    let only = inflight_json(&t, &json!({"client": "b"}), 10, t0());
    assert_eq!(only["total"], 0);
    let none = inflight_json(&t, &json!({"node": "nowhere"}), 10, t0());
    assert_eq!(
        (
            none["total"].as_u64(),
            none["nodes"].as_array().unwrap().len()
        ),
        (Some(0), 0)
    );
}

#[test]
fn final_before_start_within_the_window() {
    let mut t = Table::new(limits(), t0(), false);
    // (only a node that sends 102s at all has its early finals remembered)
    t.observe(&rec("n1", "z", "z", 102, t0()), t0());
    t.observe(&rec("n1", "a", "x", 201, t0()), t0());
    t.observe(&rec("n1", "a", "x", 102, t0()), t0() + ms(4000));
    assert_eq!((t.len(), t.counts.reordered), (1, 1));
    // outside the window, the 102 opens
    t.observe(&rec("n1", "a", "y", 201, t0()), t0());
    t.tick(t0() + ms(6000));
    t.observe(&rec("n1", "a", "y", 102, t0()), t0() + ms(6000));
    assert_eq!(t.len(), 2);
}

/// The sim's pump with a node killed: the down report lists exactly what it left in flight.
#[test]
fn down_report_is_the_truth_of_a_killed_node() {
    let start = t0();
    let mut pump = crate::sim::Pump::new(
        crate::sim::PumpModel {
            nodes: 3,
            seed: 7,
            transfers_per_second: 50.0,
            ..Default::default()
        },
        start,
    );
    let mut t = Table::new(limits(), start, false);
    let mut now = start;
    let mut truth = Vec::new();
    let mut events = Vec::new();
    for i in 0..20_000 {
        if i == 5_000 {
            truth = pump.kill_node_lost("node01");
        }
        let Some(r) = pump.next_record() else { break };
        now = now.max(r.time);
        events.extend(t.observe(&r, now));
        events.extend(t.tick(now));
    }
    assert!(!truth.is_empty());
    let downs: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Down { .. }))
        .collect();
    assert_eq!(downs.len(), 1, "only node01 went silent");
    let Event::Down {
        node, transfers, ..
    } = downs[0]
    else {
        unreachable!()
    };
    assert_eq!(node, "node01");
    let got: BTreeSet<(String, String)> = transfers
        .iter()
        .map(|v| (v.client.clone(), v.url.clone()))
        .collect();
    let want: BTreeSet<(String, String)> =
        truth.iter().map(|r| (r.client.clone(), r.url())).collect();
    assert_eq!(got, want);
    // no repeated report; it speaks again: up
    assert!(
        t.tick(now + ms(60_000))
            .iter()
            .all(|e| !matches!(e, Event::Down { node, .. } if node == "node01"))
    );
    let up = t.heartbeat("node01", now + ms(61_000));
    assert!(
        matches!(&up[0], Event::Up { node, in_flight, .. } if node == "node01" && *in_flight == truth.len() as u64)
    );
}

#[test]
fn stuck_once() {
    let mut t = Table::new(
        Limits {
            node_timeout_ms: 120_000,
            ..limits()
        },
        t0(),
        false,
    );
    t.observe(&rec("n1", "a", "x", 102, t0()), t0());
    assert!(t.tick(t0() + ms(59_000)).is_empty());
    t.observe(&rec("n1", "b", "z", 102, t0()), t0() + ms(59_500));
    let e = t.tick(t0() + ms(61_000));
    assert_eq!(e.len(), 1);
    let Event::Stuck { node, transfer } = &e[0] else {
        panic!("{e:?}")
    };
    assert_eq!(node, "n1");
    assert_eq!(transfer.client, "a");
    t.observe(&rec("n1", "b", "z", 201, t0()), t0() + ms(62_000));
    assert!(t.tick(t0() + ms(70_000)).is_empty(), "reported once");
    assert_eq!(t.counts.stuck, 1);
}

#[test]
fn a_node_gets_the_timeout_from_the_start_too() {
    let mut t = Table::new(limits(), t0(), false);
    let at = t0().timestamp_millis();
    t.restore_open(["n1", "a", "https://x/y", "ec", "f"], at, at, 5);
    assert!(
        t.tick(t0() + ms(9_000)).is_empty(),
        "not down at once after a restart"
    );
    assert_eq!(t.tick(t0() + ms(11_000)).len(), 1);
}

#[test]
fn journal_rebuilds_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wd.journal");
    let mut t = Table::new(limits(), t0(), true);
    let (mut j, loaded) = journal::Journal::open(&path, &mut t, false).unwrap();
    assert_eq!(loaded, journal::Loaded::default());
    for i in 0..50 {
        let client = if i % 2 == 0 { "a\tb" } else { "c\\d" };
        t.observe(&rec("n1", client, &format!("f{i}"), 102, t0()), t0());
    }
    for i in 0..20 {
        let client = if i % 2 == 0 { "a\tb" } else { "c\\d" };
        t.observe(&rec("n1", client, &format!("f{i}"), 201, t0()), t0());
    }
    t.observe(&rec("n2", "x", "g", 102, t0()), t0());
    t.tick(t0() + ms(20_000)); // both nodes down
    j.write(&t.take_journal(), &t).unwrap();
    // a line cut by a crash at the end
    j.write(b"o\tn9\tcut", &t).unwrap();
    drop(j);
    let now = t0() + ms(20_000);
    let mut r = Table::new(limits(), now, true);
    let (_j2, loaded) = journal::Journal::open(&path, &mut r, false).unwrap();
    assert_eq!(loaded.bad, 0);
    assert_eq!(r.len(), 31);
    let (a, b) = (
        inflight_json(&t, &Value::Null, 100, now),
        inflight_json(&r, &Value::Null, 100, now),
    );
    assert_eq!(a["transfers"], b["transfers"]);
    assert_eq!(a["total"], b["total"]);
    let states = |v: &Value| -> Vec<(String, String, u64)> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().into(),
                    n["state"].as_str().unwrap().into(),
                    n["in_flight"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(states(&a), states(&b), "down states kept: no second report");
    assert!(
        r.tick(now + ms(60_000))
            .iter()
            .all(|e| !matches!(e, Event::Down { .. }))
    );
    // compacted at open: only what is open
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().filter(|l| l.starts_with("o\t")).count(), 31);
    assert!(!text.lines().any(|l| l.starts_with("c\t")));
}

#[test]
fn a_big_down_report_is_split_under_the_size_limit() {
    let cfg = WatchdogConfig {
        max_report_bytes: 100_000,
        ..WatchdogConfig::default()
    };
    let transfers: Vec<TransferRow> = (0..100_000)
        .map(|i| {
            serde_json::from_value(json!({"node": "n1", "client": "c", "url": format!("https://x/{i}"), "started": "2026-11-22T10:00:00Z", "bytes": i}))
                .unwrap()
        })
        .collect();
    let msgs = cfg.outgoing(&[Event::Down {
        node: "n1.example".into(),
        last_seen_ms: 0,
        at_ms: 1000,
        transfers,
    }]);
    assert!(msgs.len() > 10);
    let mut urls = BTreeSet::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.body.len() <= 100_000, "{}", m.body.len());
        assert_eq!(m.routing_key, "v01.watchdog.down.n1%2Eexample");
        let v: Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(v["part"], i + 1);
        assert_eq!(v["parts"], msgs.len());
        assert_eq!(v["in_flight"], 100_000);
        for t in v["transfers"].as_array().unwrap() {
            urls.insert(t["url"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(urls.len(), 100_000);
}

#[test]
fn no_node_is_declared_down_while_nothing_at_all_arrives() {
    let lim = Limits {
        stuck_after_ms: 0,
        ..limits()
    };
    let mut t = Table::new(lim, t0(), false);
    t.input(t0());
    t.observe(&rec("n1", "a", "x", 102, t0()), t0());
    // the broker path is silent (an outage): after the input silence, no down report
    let later = t0() + ms(table::INPUT_SILENCE_MS + 1000);
    assert!(t.tick(later).is_empty());
    // input comes back (any message): the node gets its timeout afresh, then is down
    t.input(later);
    assert!(t.tick(later + ms(9_000)).is_empty());
    t.input(later + ms(10_500));
    let e = t.tick(later + ms(10_500));
    assert!(
        matches!(&e[..], [Event::Down { node, .. }] if node == "n1"),
        "{e:?}"
    );
}

#[test]
fn a_down_nodes_transfers_are_not_also_stuck_and_stuck_marks_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wd.journal");
    let lim = Limits {
        node_timeout_ms: 120_000,
        stuck_after_ms: 60_000,
        reorder_window_ms: 0,
        forget_after_ms: 0,
    };
    let mut t = Table::new(lim.clone(), t0(), true);
    let (mut j, _) = journal::Journal::open(&path, &mut t, false).unwrap();
    t.observe(&rec("n1", "a", "x", 102, t0()), t0());
    t.observe(&rec("n2", "a", "y", 102, t0()), t0());
    t.input(t0() + ms(61_000));
    t.heartbeat("n2", t0() + ms(61_000));
    let stuck = t.tick(t0() + ms(61_000));
    assert_eq!(stuck.len(), 2);
    j.write(&t.take_journal(), &t).unwrap();
    // restart: both were reported stuck, neither again
    let mut r = Table::new(lim, t0() + ms(62_000), true);
    let _ = journal::Journal::open(&path, &mut r, false).unwrap();
    r.input(t0() + ms(64_000));
    assert!(r.tick(t0() + ms(64_000)).is_empty());
    // an up node with nothing in flight is kept by the snapshot
    let mut buf = Vec::new();
    r.snapshot(&mut buf);
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.contains("u\tn1\t") && text.contains("u\tn2\t"),
        "{text}"
    );
}

#[test]
fn a_separator_inside_a_name_cannot_mix_up_keys() {
    let mut t = Table::new(limits(), t0(), false);
    t.observe(&rec("n\u{1f}1", "a", "x", 102, t0()), t0());
    t.observe(&rec("n", "1\u{1f}a", "x", 102, t0()), t0());
    assert_eq!(t.len(), 2);
    t.observe(&rec("n", "1\u{1f}a", "x", 201, t0()), t0());
    assert_eq!(t.len(), 1);
    let v = inflight_json(&t, &Value::Null, 10, t0());
    let counts: Vec<u64> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["in_flight"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 1);
}

#[test]
fn what_never_closes_is_forgotten_counted_from_a_later_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wd.journal");
    let lim = Limits {
        node_timeout_ms: 10_000,
        stuck_after_ms: 0,
        reorder_window_ms: 0,
        forget_after_ms: 100_000,
    };
    let mut t = Table::new(lim.clone(), t0(), true);
    let (mut j, _) = journal::Journal::open(&path, &mut t, false).unwrap();
    // n1 keeps talking (its transfer never closes); n2 dies at once with two in flight
    t.observe(&rec("n1", "a", "x", 102, t0()), t0());
    t.observe(&rec("n2", "a", "y", 102, t0()), t0());
    t.observe(&rec("n2", "b", "z", 102, t0()), t0());
    let beat = |t: &mut Table, at: i64| {
        t.heartbeat("n1", t0() + ms(at));
        t.tick(t0() + ms(at))
    };
    let mut down_at = None;
    for s in 1..=100 {
        let e = beat(&mut t, s * 1000);
        if e.iter()
            .any(|e| matches!(e, Event::Down { node, .. } if node == "n2"))
        {
            down_at = Some(s * 1000);
        }
        assert!(
            !e.iter().any(|e| matches!(e, Event::Forgotten { .. })),
            "{e:?}"
        );
    }
    let down_at = down_at.expect("n2 went down");
    // n1's transfer is 101 s old: forgotten; n2's are kept 100 s from n2's down
    let e = beat(&mut t, 101_000);
    assert_eq!(e, vec![Event::Forgotten { transfers: 1 }]);
    assert_eq!(t.len(), 2);
    assert!(t.knows_node("n1"), "an up node is kept");
    j.write(&t.take_journal(), &t).unwrap();
    let mut e = Vec::new();
    for s in 102..=(down_at / 1000 + 101) {
        e.extend(beat(&mut t, s * 1000));
    }
    assert_eq!(e, vec![Event::Forgotten { transfers: 2 }]);
    assert!(t.is_empty());
    assert!(t.knows_node("n2"), "the node is kept, down");
    assert_eq!(t.counts.forgotten, 3);
    // the journal says so: a restart does not bring them back, nor report n2 again
    j.write(&t.take_journal(), &t).unwrap();
    drop(j);
    let now = t0() + ms(down_at + 102_000);
    let mut r = Table::new(lim, now, true);
    let (_j, loaded) = journal::Journal::open(&path, &mut r, false).unwrap();
    assert_eq!(loaded.bad, 0);
    assert!(r.is_empty());
    assert_eq!(r.node_count(), 2);
    r.heartbeat("n1", now + ms(1000));
    assert!(r.tick(now + ms(1000)).is_empty());
    // n2 comes back, however long after: reported up
    let e = r.observe(&rec("n2", "a", "w", 102, now), now + ms(2000));
    assert!(
        matches!(&e[..], [Event::Up { node, in_flight: 0, .. }] if node == "n2"),
        "{e:?}"
    );
}

#[test]
fn after_an_outage_the_queued_finals_come_before_forgetting() {
    let lim = Limits {
        node_timeout_ms: 3_600_000,
        stuck_after_ms: 0,
        reorder_window_ms: 0,
        forget_after_ms: 100_000,
    };
    // a transfer opened long before this table started (restored from the journal)
    let start = t0() + ms(500_000);
    let mut t = Table::new(lim, start, false);
    let at = t0().timestamp_millis();
    t.restore_open(
        ["n1", "a", "https://src.example/data/x", "ec", "f"],
        at,
        at,
        100,
    );
    // its final waits in the queue behind others: the first ticks do not forget it
    t.input(start + ms(1000));
    assert!(t.tick(start + ms(1000)).is_empty());
    t.observe(&rec("n1", "a", "x", 201, t0()), start + ms(2000));
    assert_eq!((t.len(), t.counts.closed, t.counts.forgotten), (0, 1, 0));
}

/// One step of a random pump.
#[derive(Debug, Clone)]
enum Step {
    Start(u8, u8, u8),
    Final(u8, u8, u8),
    Beat(u8),
    Wait(u16),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..4u8, 0..3u8, 0..20u8).prop_map(|(n, c, f)| Step::Start(n, c, f)),
        3 => (0..4u8, 0..3u8, 0..20u8).prop_map(|(n, c, f)| Step::Final(n, c, f)),
        1 => (0..4u8).prop_map(Step::Beat),
        2 => (0..30_000u16).prop_map(Step::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever the pump does: the nodes' counts add up to the table, every opened transfer
    /// is still open, closed, or forgotten, and the journal rebuilds the same table.
    #[test]
    fn the_table_adds_up_and_its_journal_rebuilds_it(
        steps in proptest::collection::vec(step(), 1..300)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd.journal");
        let lim = Limits {
            node_timeout_ms: 20_000,
            stuck_after_ms: 40_000,
            reorder_window_ms: 3_000,
            forget_after_ms: 60_000,
        };
        let mut t = Table::new(lim.clone(), t0(), true);
        let (mut j, _) = journal::Journal::open(&path, &mut t, false).unwrap();
        let mut now = t0();
        let (mut downs, mut ups) = (0u64, 0u64);
        for s in &steps {
            let e = match s {
                Step::Start(n, c, f) | Step::Final(n, c, f) => {
                    let code = if matches!(s, Step::Start(..)) { 102 } else { 201 };
                    let (n, c, f) = (format!("n{n}"), format!("c{c}"), format!("f{f}"));
                    t.observe(&rec(&n, &c, &f, code, now), now)
                }
                Step::Beat(n) => t.heartbeat(&format!("n{n}"), now),
                Step::Wait(w) => {
                    now += ms(i64::from(*w));
                    t.input(now);
                    t.tick(now)
                }
            };
            downs += e.iter().filter(|e| matches!(e, Event::Down { .. })).count() as u64;
            ups += e.iter().filter(|e| matches!(e, Event::Up { .. })).count() as u64;
            j.write(&t.take_journal(), &t).unwrap();
            let v = inflight_json(&t, &Value::Null, 0, now);
            let per_node: u64 = v["nodes"].as_array().unwrap().iter()
                .map(|n| n["in_flight"].as_u64().unwrap()).sum();
            proptest::prop_assert_eq!(per_node, t.len() as u64);
            let c = &t.counts;
            proptest::prop_assert_eq!(c.opened, c.closed + c.forgotten + t.len() as u64);
            proptest::prop_assert_eq!(c.downs, downs);
            proptest::prop_assert!(ups <= downs);
        }
        drop(j);
        let mut r = Table::new(lim, now, true);
        let (_j, loaded) = journal::Journal::open(&path, &mut r, false).unwrap();
        proptest::prop_assert_eq!(loaded.bad, 0);
        let (a, b) = (inflight_json(&t, &Value::Null, 10_000, now), inflight_json(&r, &Value::Null, 10_000, now));
        proptest::prop_assert_eq!(&a["transfers"], &b["transfers"]);
        // an up node with nothing in flight is journaled only by a compaction (nothing was
        // lost there if it dies while dd_watchdog restarts)
        let states = |v: &Value| -> Vec<(Value, Value, Value)> {
            v["nodes"].as_array().unwrap().iter()
                .filter(|n| n["state"] == "down" || n["in_flight"] != 0)
                .map(|n| (n["node"].clone(), n["state"].clone(), n["in_flight"].clone()))
                .collect()
        };
        proptest::prop_assert_eq!(states(&a), states(&b));
    }
}

proptest::proptest! {
    /// A journal line reads back as it was written, whatever its fields hold (tabs,
    /// newlines, backslashes): the one type encodes and decodes it.
    #[test]
    fn journal_lines_read_back_as_written(
        node in "\\PC{0,12}", client in "[a-z\t\\\\\n]{0,8}", url in "\\PC{0,20}",
        source in "\\PC{0,6}", started in proptest::num::i64::ANY, bytes in proptest::num::u64::ANY,
    ) {
        use journal::Line;
        use std::borrow::Cow;
        let key = format!("{node}\u{1f}{client}\u{1f}{url}");
        let lines = [
            Line::Open {
                node: Cow::from(node.as_str()),
                client: client.as_str().into(),
                url: url.as_str().into(),
                source: source.as_str().into(),
                flow: "".into(),
                started_ms: started,
                opened_ms: started / 2,
                bytes,
            },
            Line::Close(key.as_str().into()),
            Line::Stuck(key.as_str().into()),
            Line::Forget(key.as_str().into()),
            Line::Down(node.as_str().into(), started),
            Line::Up(node.as_str().into(), started),
        ];
        for line in lines {
            let mut buf = Vec::new();
            line.encode(&mut buf);
            let text = std::str::from_utf8(&buf).unwrap();
            proptest::prop_assert_eq!(text.matches('\n').count(), 1);
            let back = Line::decode(text.strip_suffix('\n').unwrap());
            proptest::prop_assert_eq!(back, Some(line));
        }
    }
}

/// A table of 30 transfers: clients c00..c29 on n1 (even) and n2 (odd), one a millisecond.
fn table_of_30() -> Table {
    let mut t = Table::new(limits(), t0(), false);
    for i in 0..30 {
        let at = t0() + ms(i);
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        t.observe(&rec(node, &format!("c{i:02}"), "x", 102, at), at);
    }
    t
}

fn query(body: &str) -> crate::rpc::Query {
    crate::rpc::Query::from_body(body.as_bytes())
}

#[test]
fn queries_page_the_transfers_oldest_first() {
    let t = table_of_30();
    let none = InflightFilter::default();
    let now = t0() + ms(100);
    // pages of 7, with the cursors: every transfer once, oldest first, exact counts
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query(r#"{"limit": 7}"#);
        q.cursor = cursor.clone();
        let r = t.answer(&q, &none, now).unwrap();
        assert_eq!(r.total, 30);
        assert_eq!(r.nodes.len(), 2);
        seen.extend(r.transfers.iter().map(|x| x.client.clone()));
        match r.page.and_then(|p| p.next_cursor) {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    assert_eq!(seen, want);
    // one client's, a regex on clients, the transfers of a node by kind
    let r = t
        .answer(&query(r#"{"kind":"client","name":"c07"}"#), &none, now)
        .unwrap();
    assert_eq!(r.transfers.len(), 1);
    assert_eq!(r.transfers[0].node, "n2");
    let r = t
        .answer(&query(r#"{"kind":"client","regex":"^c1"}"#), &none, now)
        .unwrap();
    assert_eq!(r.total, 10);
    let r = t
        .answer(&query(r#"{"kind":"node","name":"n1"}"#), &none, now)
        .unwrap();
    assert_eq!(r.total, 15);
    assert_eq!(r.nodes.len(), 1, "the node asked for");
    // the summary: the nodes, no transfer, the exact count
    let r = t
        .answer(&query(r#"{"summary": true}"#), &none, now)
        .unwrap();
    assert!(r.transfers.is_empty());
    assert_eq!((r.total, r.nodes.len()), (30, 2));
    assert_eq!(r.nodes[0].in_flight + r.nodes[1].in_flight, 30);
    // states of nodes: none is down yet
    let r = t
        .answer(&query(r#"{"states":["down"]}"#), &none, now)
        .unwrap();
    assert_eq!((r.total, r.nodes.len()), (0, 0));
    // the old filter still works beside it
    let old = InflightFilter {
        node: Some("n2".into()),
        ..InflightFilter::default()
    };
    assert_eq!(t.answer(&query("{}"), &old, now).unwrap().total, 15);
    for bad in [
        r#"{"sort":"rate"}"#,
        r#"{"kind":"flow"}"#,
        r#"{"states":["sad"]}"#,
    ] {
        assert!(t.answer(&query(bad), &none, now).is_err(), "{bad}");
    }
}
