//! Broker restart in the middle of a stream: nothing lost. These tests stop and start the
//! broker's application, which would disturb every other test, so they are `#[ignore]`d in
//! the parallel run and `scripts/test` runs them afterwards, one at a time:
//! `cargo test --test restart -- --ignored --test-threads=1`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection, retried while the broker comes back.
async fn reconnect() -> lapin::Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = ddmon::broker::raw::connect(&broker_config(), "test-restart").await {
            return c;
        }
        assert!(Instant::now() < deadline, "the broker did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "restarts the broker: run alone (scripts/test does)"]
async fn dd_log2source_loses_nothing_across_a_broker_restart() {
    // scripts/test runs 30,000 (debug build); scripts/bench the 200,000 of the bar (release)
    let n: usize = std::env::var("RESTART_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let s = Scratch::new();
    let sources = ["source00", "source01", "source02"];
    let conn = connect().await;
    // durable destination queues, so that they outlive the restart
    let dest = route_destinations(&conn, &s, &sources, &format!("{}.unknown", s.exchange)).await;
    let queue = unique("rst");
    let input = format!("q_guest.dd_log2source.{queue}");
    s.track_queue(&input);
    let mut c = dd_log2source();
    c.args([
        "--exchange",
        &s.exchange,
        "--queue",
        &queue,
        "--instance",
        "restart",
    ])
    .args([
        "--source-exchange-template",
        &format!("{}.src_{{source}}", s.exchange),
    ])
    .args(["--unknown-exchange", &format!("{}.unknown", s.exchange)])
    .args(["--daemon-exchange", &s.exchange]);
    let router = Running::spawn(c);
    wait_for_consumers(&conn, &input, 1).await;
    let _ = conn.close(200, "OK".into()).await;

    // publish the records; restart the broker a few seconds in
    let msgs = v02_messages(&sim_records(n, 99));
    let publisher = {
        let exchange = s.exchange.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move {
            let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
            let mut p =
                ddmon::broker::Publisher::connect(&broker_config(), "test-restart-pub", shutdown)
                    .await
                    .unwrap();
            for chunk in msgs.chunks(1000) {
                let out: Vec<_> = chunk
                    .iter()
                    .map(|(k, h, b)| ddmon::broker::Outgoing {
                        exchange: exchange.clone(),
                        routing_key: k.clone(),
                        headers: h.clone(),
                        body: b.clone(),
                        ..Default::default()
                    })
                    .collect();
                p.publish_all(&out).await.unwrap();
            }
            p.close().await;
        })
    };
    tokio::time::sleep(Duration::from_secs(if n > 50_000 { 4 } else { 1 })).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    publisher.await.unwrap();

    // wait until the router drained its input, then read every destination
    let conn = reconnect().await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = queue_counts(&conn, &input).await;
        if counts.is_some_and(|(n, c)| n == 0 && c == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router did not drain its queue: {counts:?}; stderr: {}",
            router.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // last confirms and acks
    let (seen, deliveries, unknown) = read_routed(&conn, &dest).await;
    let _ = conn.close(200, "OK".into()).await;
    router.terminate();
    let (code, _, err) = router.finish(20);
    assert_eq!(code, 0, "{err}");
    // the router's own account of the restart, for whoever reads --nocapture output
    for line in err.lines().filter(|l| !l.contains("DEBUG")) {
        println!("router: {line}");
    }
    let published: HashSet<&Vec<u8>> = msgs.iter().map(|m| &m.2).collect();
    let missing = published.iter().filter(|b| !seen.contains(**b)).count();
    println!(
        "{n} published, {} distinct routed, {} duplicates, {missing} lost, {unknown} unrouted",
        seen.len(),
        deliveries - seen.len()
    );
    assert_eq!(missing, 0, "records lost across the restart");
    assert_eq!(unknown, 0, "records sent to the unknown exchange");
    assert!(
        err.contains("reconnecting") || err.contains("retrying"),
        "no restart seen: {err}"
    );
}

/// dd_speedo and dd_watchdog through a broker restart: both come back on their own (new
/// consumers, requests answered), nothing is lost (counts at least what was published;
/// redelivered records may count twice, at-least-once), and the watchdog's table is exactly
/// the transfers the stream leaves open (a redelivered 102 restarts its transfer, a redelivered
/// final is an unmatched final).
#[tokio::test]
#[ignore = "restarts the broker: run alone (scripts/test does)"]
async fn dd_speedo_and_dd_watchdog_survive_a_broker_restart() {
    let n = 6_000;
    let s = Scratch::new();
    let exchange = s.exchange.clone();
    let tag = format!("{:08x}", ddmon::broker::random_u64() as u32);
    let (speedo_q, watchdog_q) = (
        format!("q_guest.dd_speedo.r{tag}"),
        format!("q_guest.dd_watchdog.r{tag}"),
    );
    s.track_queue(&speedo_q);
    s.track_queue(&watchdog_q);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("wd.journal");
    let common = |tool: &str| {
        let mut c = Command::new(match tool {
            "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
            _ => env!("CARGO_BIN_EXE_dd_watchdog"),
        });
        daemon_log(&mut c).env("DD_BROKER", broker_url()).args([
            "--exchange",
            &exchange,
            "--output-exchange",
            &exchange,
            "--daemon-exchange",
            &exchange,
            "--queue",
            &format!("r{tag}"),
            "--instance",
            &format!("r{tag}"),
        ]);
        c
    };
    let mut c = common("dd_speedo");
    c.args(["--interval", "1", "--no-source-copies"]);
    let speedo = Running::spawn(c);
    let mut c = common("dd_watchdog");
    c.args([
        "--journal",
        journal.to_str().unwrap(),
        "--node-timeout",
        "600",
    ]);
    let watchdog = Running::spawn(c);
    let conn = connect().await;
    wait_for_consumers(&conn, &speedo_q, 1).await;
    wait_for_consumers(&conn, &watchdog_q, 1).await;
    let _ = conn.close(200, "OK".into()).await;

    // the stream dd_sim will publish, to know what to expect
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let rate = 300.0;
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            transfers_per_second: rate / 2.0,
            seed: 21,
            ..Default::default()
        },
        start,
    );
    let records: Vec<_> = (0..n).map_while(|_| pump.next_record()).collect();
    let mut open: HashSet<(String, String, String)> = HashSet::new();
    for r in &records {
        let key = (r.node.clone(), r.client.clone(), r.url());
        if r.status == 102 {
            open.insert(key);
        } else {
            open.remove(&key);
        }
    }
    let counted_records = records
        .iter()
        .filter(|r| r.status >= 200 && !(300..400).contains(&r.status))
        .count() as u64;
    let sim = std::thread::spawn({
        let exchange = exchange.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_dd_sim"))
                .env("DD_BROKER", broker_url())
                .args([
                    "--exchange",
                    &exchange,
                    "--seed",
                    "21",
                    "--rate",
                    "300",
                    "--count",
                    "6000",
                    "--start",
                    "2025-11-22T05:40:00Z",
                    "-q",
                ])
                .status()
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    assert!(sim.join().unwrap().success());

    // both drain their queues again, and answer requests
    let conn = reconnect().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for q in [&speedo_q, &watchdog_q] {
        loop {
            let counts = queue_counts(&conn, q).await;
            if counts.is_some_and(|(m, c)| m == 0 && c == 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{q} not drained: {counts:?}; speedo: {}; watchdog: {}",
                speedo.stderr.lock().unwrap(),
                watchdog.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ask = |tool: &'static str| {
        let key = format!("v01.rpc.{tool}.r{tag}.stats");
        let exchange = exchange.clone();
        let conn = &conn;
        async move {
            for _ in 0..20 {
                let r = ddmon::broker::raw::request(
                    conn,
                    &exchange,
                    &key,
                    b"{}",
                    Duration::from_secs(2),
                    Some(1),
                )
                .await
                .unwrap();
                if let Some(r) = r.first() {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    return v["result"].clone();
                }
            }
            panic!("{tool} does not answer after the restart");
        }
    };
    let sp = ask("dd_speedo").await;
    let counted = sp["counted"].as_u64().unwrap();
    assert!(
        counted >= counted_records,
        "speedo lost records: {counted} < {counted_records}"
    );
    let wd = ask("dd_watchdog").await;
    let c = &wd["counts"];
    println!(
        "speedo counted {counted} of {counted_records} (duplicates {}); watchdog opened {} closed {} restarted {} unmatched {}",
        counted - counted_records,
        c["opened"],
        c["closed"],
        c["restarted"],
        c["unmatched_finals"]
    );
    let table = ddmon::broker::raw::request(
        &conn,
        &exchange,
        &format!("v01.rpc.dd_watchdog.r{tag}.inflight"),
        b"{\"limit\": 100000}",
        Duration::from_secs(5),
        Some(1),
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&table[0].body).unwrap();
    let got: HashSet<(String, String, String)> = v["result"]["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["node"].as_str().unwrap().into(),
                t["client"].as_str().unwrap().into(),
                t["url"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got, open,
        "the watchdog's table is exactly what the stream left open"
    );
    let _ = conn.close(200, "OK".into()).await;
    for run in [speedo, watchdog] {
        run.terminate();
        let (code, _, err) = run.finish(20);
        assert_eq!(code, 0, "{err}");
        // how each came back, for whoever reads --nocapture output
        for what in [
            "reconnecting",
            "not sent within",
            "no longer open",
            "consuming",
        ] {
            let n = err.lines().filter(|l| l.contains(what)).count();
            println!("daemon log lines with {what:?}: {n}");
        }
    }
}

/// The roster stream survives a broker restart: a daemon stopped and one killed before it are
/// still known after it, from the history alone (SPEC §6).
#[tokio::test]
#[ignore = "restarts the broker: run alone (scripts/test does)"]
async fn the_roster_stream_survives_a_broker_restart() {
    let s = Scratch::new();
    let stopped = dd_log_daemon(&s, "before-stopped", "1");
    let killed = dd_log_daemon(&s, "before-killed", "1");
    // (no answer while the broker restarts: no rows)
    let roster = || {
        roster_rows(&s.exchange)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["instance"].as_str().unwrap_or("").to_string(),
                    r["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while roster().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", roster());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stopped.terminate();
    assert_eq!(stopped.finish(10).0, 0);
    let _ = Command::new("kill")
        .args(["-KILL", &killed.child.id().to_string()])
        .status();
    let _ = killed.finish(5);
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    drop(reconnect().await);
    let want = vec![
        ("before-killed".to_string(), "dead".to_string()),
        ("before-stopped".to_string(), "stopped".to_string()),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = roster();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "after the restart: {got:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
