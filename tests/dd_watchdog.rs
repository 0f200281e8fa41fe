//! dd_watchdog against the real broker, each test in a throw-away vhost: dd_sim kills a node
//! and writes its truth, and the down report lists exactly those transfers; a kill -9 and
//! restart keeps the table (journal); --query prints it; malformed input is never fatal.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn watchdog(vhost: &str, args: &[&str]) -> Running {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"));
    c.env("DD_BROKER", url("guest", "guest", vhost))
        .env_remove("RUST_LOG")
        .env_remove("DD_WATCHDOG_JOURNAL")
        .args(args);
    Running::spawn(c)
}

async fn connect_to(vhost: &str) -> lapin::Connection {
    connect_url(&url("guest", "guest", vhost)).await
}

/// The `inflight` answer (JSON) through `dd_watchdog --query --json`; `Null` when none came.
fn query(vhost: &str, extra: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
        .env("DD_BROKER", url("guest", "guest", vhost))
        .args(["--query", "--json"])
        .args(extra)
        .output()
        .unwrap();
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn query_until(vhost: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = query(vhost, &[]);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never got there: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn the_down_report_lists_exactly_what_the_dead_node_left_in_flight() {
    let sb = Sandbox::new(&unique("test.watchdog.down"), Vec::new()).await;
    let conn = connect_to(&sb.vhost).await;
    let mut reports = listen(&conn, "log", &["v01.watchdog.#"]).await;
    let run = watchdog(
        &sb.vhost,
        &[
            "--instance",
            "wd",
            "--node-timeout",
            "2",
            "--max-report-bytes",
            "1000",
        ],
    );
    wait_for_consumers(&conn, "q_guest.dd_watchdog.log", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let truth_file = dir.path().join("truth.jsonl");
    let sim = Command::new(env!("CARGO_BIN_EXE_dd_sim"))
        .env("DD_BROKER", url("guest", "guest", &sb.vhost))
        .args([
            "--seed",
            "5",
            "--rate",
            "400",
            "--nodes",
            "3",
            "--duration",
            "4",
            "--kill-node",
            "node01",
            "--at",
            "1.5",
            "--truth",
            truth_file.to_str().unwrap(),
            "-q",
        ])
        .status()
        .unwrap();
    assert!(sim.success());
    let truth: BTreeSet<(String, String)> = std::fs::read_to_string(&truth_file)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["client"].as_str().unwrap().into(),
                v["url"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        truth.len() > 5,
        "the node had transfers in flight: {}",
        truth.len()
    );
    // every part of node01's report
    let mut got = BTreeSet::new();
    let mut parts = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no complete down report");
        let (key, body) = next_json(&mut reports, 20).await;
        if key != "v01.watchdog.down.node01" {
            continue;
        }
        assert_eq!(body["node"], "node01");
        assert!(body.to_string().len() <= 1000);
        for t in body["transfers"].as_array().unwrap() {
            got.insert((
                t["client"].as_str().unwrap().to_string(),
                t["url"].as_str().unwrap().to_string(),
            ));
        }
        parts += 1;
        if parts == body["parts"].as_u64().unwrap() {
            assert_eq!(body["in_flight"].as_u64(), Some(truth.len() as u64));
            break;
        }
    }
    assert!(parts > 1, "split in parts under the size limit");
    assert_eq!(got, truth);
    // the other nodes went quiet when the sim stopped: down too, with nothing in flight
    let q = query(&sb.vhost, &["--node", "node01"]);
    assert_eq!(q["total"].as_u64(), Some(truth.len() as u64));
    assert_eq!(q["nodes"][0]["state"], "down");
    run.terminate();
    let (code, out, err) = run.finish(15);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
}

#[tokio::test]
async fn kill_9_and_restart_keep_the_table() {
    let sb = Sandbox::new(&unique("test.watchdog.journal"), Vec::new()).await;
    let conn = connect_to(&sb.vhost).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("wd.journal");
    let args = [
        "--instance",
        "wdj",
        "--journal",
        journal.to_str().unwrap(),
        "--node-timeout",
        "600",
    ];
    let run = watchdog(&sb.vhost, &args);
    wait_for_consumers(&conn, "q_guest.dd_watchdog.log", 1).await;
    // 300 starts, 100 of them finished, and a malformed message in the middle
    let records = sim_records(2000, 3);
    let starts: Vec<_> = records
        .iter()
        .filter(|r| r.status == 102)
        .take(300)
        .cloned()
        .collect();
    let mut finals: Vec<_> = starts.iter().take(100).cloned().collect();
    for f in &mut finals {
        f.status = 201;
    }
    let url = url("guest", "guest", &sb.vhost);
    let mut msgs = v02_messages(&starts);
    msgs.push((
        "v02.log.x".into(),
        Default::default(),
        b"not a record".to_vec(),
    ));
    msgs.extend(v02_messages(&finals));
    publish_on(&url, "log", msgs).await;
    let before = query_until(&sb.vhost, 20, |v| v["total"].as_u64() == Some(200)).await;
    assert_eq!(before["counts"]["closed"].as_u64(), Some(100));
    // kill -9: no goodbye, no final flush
    let mut child = run;
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    let run = watchdog(&sb.vhost, &args);
    let after = query_until(&sb.vhost, 20, |v| v["total"].as_u64() == Some(200)).await;
    let without_age = |v: &Value| -> Vec<Value> {
        v["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.as_object_mut().unwrap().remove("age_s");
                t
            })
            .collect()
    };
    assert_eq!(without_age(&after), without_age(&before), "the same table");
    // paged with --limit and the cursors (issue 18): the same 200, once each, in order
    let mut paged = Vec::new();
    let mut extra = vec!["--limit".to_string(), "64".to_string()];
    loop {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let page = query(&sb.vhost, &args);
        assert_eq!(page["total"], 200, "{page}");
        paged.extend(page["transfers"].as_array().unwrap().iter().cloned());
        match page["page"]["next_cursor"].as_str() {
            Some(c) => extra = vec!["--limit".into(), "64".into(), "--cursor".into(), c.into()],
            None => break,
        }
    }
    let urls = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|t| format!("{} {}", t["node"], t["url"]))
            .collect()
    };
    assert_eq!(urls(&paged), urls(before["transfers"].as_array().unwrap()));
    // the nodes' summaries alone
    let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
        .env("DD_BROKER", &url)
        .args(["--query", "--summary"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("NODE ") && text.ends_with("200 in flight in all\n"),
        "{text}"
    );
    assert!(!text.contains("STARTED"), "{text}");
    // the rest finish: the table empties
    let mut rest: Vec<_> = starts.iter().skip(100).cloned().collect();
    for f in &mut rest {
        f.status = 201;
    }
    publish_on(&url, "log", v02_messages(&rest)).await;
    query_until(&sb.vhost, 20, |v| v["total"].as_u64() == Some(0)).await;
    // the table as an operator reads it
    let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
        .env("DD_BROKER", &url)
        .args(["--query"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("NODE "), "{text}");
    assert!(text.contains("node0"), "{text}");
    run.terminate();
    let (code, _, err) = run.finish(15);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn what_dead_nodes_left_is_forgotten_after_forget_after_and_stays_forgotten() {
    let sb = Sandbox::new(&unique("test.watchdog.forget"), Vec::new()).await;
    let conn = connect_to(&sb.vhost).await;
    let mut reports = listen(&conn, "log", &["v01.watchdog.down.#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("wd.journal");
    let args = [
        "--instance",
        "wdf",
        "--journal",
        journal.to_str().unwrap(),
        "--node-timeout",
        "1",
        "--forget-after",
        "2",
    ];
    let run = watchdog(&sb.vhost, &args);
    wait_for_consumers(&conn, "q_guest.dd_watchdog.log", 1).await;
    // 40 transfers start on their nodes, which then fall silent
    let starts: Vec<_> = sim_records(2000, 11)
        .into_iter()
        .filter(|r| r.status == 102)
        .take(40)
        .collect();
    let nodes: BTreeSet<&str> = starts.iter().map(|r| r.node.as_str()).collect();
    publish_on(
        &url("guest", "guest", &sb.vhost),
        "log",
        v02_messages(&starts),
    )
    .await;
    // each node is reported down with what it left (a node reported twice lists them again)
    let mut reported = BTreeSet::new();
    while reported.len() < starts.len() {
        let (_, body) = next_json(&mut reports, 20).await;
        for t in body["transfers"].as_array().unwrap() {
            reported.insert((t["client"].to_string(), t["url"].to_string()));
        }
    }
    // then forgotten: nothing in flight, the nodes kept (down), the counts say why
    let all_down_and_empty = |v: &Value| {
        v["total"] == 0
            && v["nodes"].as_array().is_some_and(|n| {
                n.len() == nodes.len()
                    && n.iter()
                        .all(|n| n["state"] == "down" && n["in_flight"] == 0)
            })
    };
    let v = query_until(&sb.vhost, 20, all_down_and_empty).await;
    assert_eq!(v["counts"]["forgotten"], starts.len());
    run.terminate();
    let (code, _, err) = run.finish(15);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("forgotten"), "{err}");
    // a restart with the journal does not bring them back, nor report them again
    let run = watchdog(&sb.vhost, &args);
    wait_for_consumers(&conn, "q_guest.dd_watchdog.log", 1).await;
    let v = query_until(&sb.vhost, 20, |v| !v.is_null()).await;
    assert!(all_down_and_empty(&v), "{v:#}");
    assert!(
        drain(&mut reports, 3000).await.is_empty(),
        "no second down report"
    );
    run.terminate();
    assert_eq!(run.finish(15).0, 0);
}

#[tokio::test]
async fn with_no_journal_flag_the_table_still_survives_a_restart() {
    let sb = Sandbox::new(&unique("test.watchdog.default"), Vec::new()).await;
    let conn = connect_to(&sb.vhost).await;
    let state = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"));
        c.env("DD_BROKER", url("guest", "guest", &sb.vhost))
            .env("XDG_STATE_HOME", state.path())
            .env_remove("RUST_LOG")
            .env_remove("DD_WATCHDOG_JOURNAL")
            .args(["--node-timeout", "600"])
            .args(extra);
        Running::spawn(c)
    };
    let run = start(&[]);
    wait_for_consumers(&conn, "q_guest.dd_watchdog.log", 1).await;
    let starts: Vec<_> = sim_records(500, 7)
        .into_iter()
        .filter(|r| r.status == 102)
        .take(25)
        .collect();
    publish_on(
        &url("guest", "guest", &sb.vhost),
        "log",
        v02_messages(&starts),
    )
    .await;
    let before = query_until(&sb.vhost, 20, |v| v["total"] == starts.len()).await;
    run.terminate();
    assert_eq!(run.finish(15).0, 0);
    // the default place: the state directory, one file per broker, vhost and queue
    let file = state.path().join(format!(
        "ddmon/dd_watchdog.127.0.0.1_5672.{}.q_guest.dd_watchdog.log.journal",
        sb.vhost
    ));
    assert!(file.is_file(), "{}", file.display());
    let run = start(&[]);
    let after = query_until(&sb.vhost, 20, |v| !v.is_null()).await;
    assert_eq!(after["total"], starts.len());
    assert_eq!(after["nodes"], before["nodes"]);
    run.terminate();
    assert_eq!(run.finish(15).0, 0);
    // --no-journal: a table of its own, empty at every start
    let run = start(&["--no-journal"]);
    let v = query_until(&sb.vhost, 20, |v| !v.is_null()).await;
    assert_eq!(v["total"], 0);
    run.terminate();
    assert_eq!(run.finish(15).0, 0);
    // the input queue deleted while it was stopped: the journal was that queue's; set aside
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(
        "q_guest.dd_watchdog.log".into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .unwrap();
    let run = start(&[]);
    let v = query_until(&sb.vhost, 20, |v| !v.is_null()).await;
    assert_eq!(v["total"], 0, "a new queue, an empty table");
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    let aside: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name) && n.ends_with(".old"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    run.terminate();
    let (code, _, err) = run.finish(15);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the input queue does not exist"), "{err}");
}

#[test]
fn query_without_a_watchdog_fails_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
        .env("DD_BROKER", "amqp://guest:guest@127.0.0.1:1/%2f")
        .args(["--query"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}
