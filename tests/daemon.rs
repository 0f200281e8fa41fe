//! The daemon runtime against the real broker (through `dd_log --service`, the capture
//! daemon): alive and status messages, health/stats requests (direct and broadcast), a clean
//! SIGTERM, dd_status finding daemons, and dd_sim's exact, repeatable streams.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A capture daemon reading only records (not the daemons' own v01 messages).
fn service(s: &Scratch, queue: &str, instance: &str) -> Running {
    let mut c = dd_log();
    c.args([
        "--exchange",
        &s.exchange,
        "--queue",
        queue,
        "--service",
        "--topic",
        "v02.#",
    ])
    .args([
        "--daemon-exchange",
        &s.exchange,
        "--instance",
        instance,
        "--alive-interval",
        "1",
    ]);
    Running::spawn(c)
}

#[tokio::test]
async fn alive_status_and_requests() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = s.dd_log_queue();
    let mut events = listen(&conn, &s.exchange, &["v01.alive.#", "v01.status.#"]).await;
    let run = service(&s, &name, "t1.a");
    wait_for_consumers(&conn, &full, 1).await;

    // starting, then running, then alive messages about once a second
    let mut statuses = Vec::new();
    let mut alive_at = Vec::new();
    while alive_at.len() < 3 {
        let (key, body) = next_json(&mut events, 5).await;
        assert_eq!(body["tool"], "dd_log");
        assert_eq!(body["instance"], "t1.a");
        if key.starts_with("v01.status.") {
            assert_eq!(key, "v01.status.dd_log.t1%2Ea");
            statuses.push(body["state"].as_str().unwrap().to_string());
        } else {
            assert_eq!(key, "v01.alive.dd_log.t1%2Ea");
            assert!(body["counters"]["printed"].is_u64());
            alive_at.push(Instant::now());
        }
    }
    assert_eq!(statuses, ["starting", "running"]);
    let gap = alive_at[2] - alive_at[1];
    assert!(
        gap > Duration::from_millis(700) && gap < Duration::from_millis(2500),
        "{gap:?}"
    );

    // health and stats answer within a second, directly and through the broadcast
    let health = ddmon::broker::raw::request(
        &conn,
        &s.exchange,
        "v01.rpc.dd_log.t1%2Ea.health",
        b"{}",
        Duration::from_secs(1),
        Some(1),
    )
    .await
    .unwrap();
    assert_eq!(health.len(), 1);
    let h: Value = serde_json::from_slice(&health[0].body).unwrap();
    assert_eq!(
        (h["ok"].as_bool(), h["result"]["state"].as_str()),
        (Some(true), Some("running"))
    );
    let stats = ddmon::broker::raw::request(
        &conn,
        &s.exchange,
        "v01.rpc.all.stats",
        b"{}",
        Duration::from_secs(1),
        Some(1),
    )
    .await
    .unwrap();
    assert_eq!(stats.len(), 1);
    let st: Value = serde_json::from_slice(&stats[0].body).unwrap();
    assert_eq!(st["instance"], "t1.a");
    assert!(st["result"]["printed"].is_u64(), "{st}");

    // SIGTERM: stopping is published, exit 0
    run.terminate();
    let (code, _, err) = run.finish(10);
    assert_eq!(code, 0, "{err}");
    loop {
        let (key, body) = next_json(&mut events, 5).await;
        if key.starts_with("v01.status.") {
            assert_eq!(body["state"], "stopping");
            break;
        }
    }
}

#[tokio::test]
async fn sigterm_mid_stream_loses_and_repeats_nothing() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = s.dd_log_queue();
    let run = service(&s, &name, "t2");
    wait_for_consumers(&conn, &full, 1).await;
    let msgs = v02_messages(&sim_records(3000, 21));
    let want: Vec<String> = msgs
        .iter()
        .map(|(k, h, b)| expected_line(k, h, b))
        .collect();
    publish(&s.exchange, msgs).await;
    run.wait_lines(100, 20).await;
    run.terminate();
    let (code, first, err) = run.finish(10);
    assert_eq!(code, 0, "{err}");
    // what was printed was acknowledged; the rest is still in the queue, ready
    let (ready, consumers) = queue_counts(&conn, &full).await.unwrap();
    assert_eq!(consumers, 0);
    assert_eq!(
        first.len() + ready as usize,
        3000,
        "printed {} + ready {ready}",
        first.len()
    );
    let out = dd_log()
        .args([
            "--exchange",
            &s.exchange,
            "--queue",
            &name,
            "--topic",
            "v02.#",
        ])
        .args(["-n", &ready.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let rest: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!([first, rest].concat(), want);
}

#[tokio::test]
async fn dd_status_finds_two_daemons() {
    let conn = connect().await;
    let s = Scratch::new();
    let (n1, f1) = s.dd_log_queue();
    let (n2, f2) = s.dd_log_queue();
    let a = service(&s, &n1, "status-a");
    let b = service(&s, &n2, "status-b");
    wait_for_consumers(&conn, &f1, 1).await;
    wait_for_consumers(&conn, &f2, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // their request queues too
    let status = |extra: &[&str]| {
        // the live answers alone (the roster's history: tests/roster.rs)
        Command::new(env!("CARGO_BIN_EXE_dd_status"))
            .args(["--exchange", &s.exchange, "--wait", "1.5"])
            .args(["--roster-stream", "none"])
            .args(extra)
            .env("DD_BROKER", broker_url())
            .output()
            .unwrap()
    };
    let out = status(&["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut instances: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["instance"].as_str().unwrap())
        .collect();
    instances.sort();
    assert_eq!(instances, ["status-a", "status-b"]);
    let out = status(&[]);
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("TOOL") && lines[0].contains("LAST ALIVE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("dd_log")
            && lines[1].contains("status-a")
            && lines[1].contains("running")
    );
    assert!(
        lines[2].contains("status-b") && lines[2].contains("printed=0"),
        "{table}"
    );
    for r in [a, b] {
        r.terminate();
        assert_eq!(r.finish(10).0, 0);
    }
    // nobody left: exit 1, said on stderr with the exchange asked, nothing on stdout
    let out = status(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ddmon daemon answered within 1.5s on exchange")
            && err.contains(&s.exchange),
        "{err}"
    );
    // --json says it with an empty array
    let out = status(&["--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[]\n");
}

#[tokio::test]
async fn dd_status_lists_dd_web() {
    let conn = connect().await;
    let s = Scratch::new();
    let mut web = Command::new(env!("CARGO_BIN_EXE_dd_web"));
    web.args(["--listen", "127.0.0.1:0", "--exchange", &s.exchange])
        .args(["--daemon-exchange", &s.exchange, "--instance", "web-a"])
        .args(["--alive-interval", "1"])
        .env("DD_BROKER", broker_url());
    let web = Running::spawn(web);
    // its request queue is consumed once it answers
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_status"))
            .args(["--exchange", &s.exchange, "--wait", "1", "--json"])
            .env("DD_BROKER", broker_url())
            .output()
            .unwrap();
        if out.status.code() == Some(0) || std::time::Instant::now() > deadline {
            break out;
        }
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["result"]["tool"], "dd_web");
    assert_eq!(rows[0]["result"]["instance"], "web-a");
    assert!(rows[0]["result"]["counters"]["polls"].is_u64(), "{v}");
    web.terminate();
    assert_eq!(web.finish(10).0, 0);
    drop(conn);
}

#[tokio::test]
async fn dd_sim_counts_exactly_and_repeats_with_a_seed() {
    let conn = connect().await;
    let s = Scratch::new();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let (name, full) = s.dd_log_queue();
        let out = dd_log()
            .args(["--exchange", &s.exchange, "--queue", &name, "-n", "0"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let st = Command::new(env!("CARGO_BIN_EXE_dd_sim"))
            .args([
                "--exchange",
                &s.exchange,
                "--count",
                "777",
                "--rate",
                "0",
                "--seed",
                "42",
            ])
            .args(["--start", "2026-11-22T00:00:00Z", "-q"])
            .env("DD_BROKER", broker_url())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(queue_counts(&conn, &full).await, Some((777, 0)));
        let out = dd_log()
            .args(["--exchange", &s.exchange, "--queue", &name, "-n", "777"])
            .output()
            .unwrap();
        bodies.push(String::from_utf8(out.stdout).unwrap());
        // the next round's queue must not see this round's messages
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(full.as_str().into(), Default::default())
            .await
            .unwrap();
    }
    assert_eq!(bodies[0].lines().count(), 777);
    assert_eq!(bodies[0], bodies[1]);
}
