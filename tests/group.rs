//! Groups (SPEC §7, the hot-standby issue): processes of dd_speedo started with the same
//! `--instance`, `--queue` and `--group` are one group, one `active` (it consumes, publishes
//! and answers the group's requests), the others `standby`; a standby takes over when the
//! active dies. (The state carried over, counts exact through every fault, is
//! `tests/group_state.rs`'s.)

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn member(s: &Scratch, queue: &str) -> Running {
    member_on(s, queue, &broker_url())
}

/// The group's instance: the queue's name (unique to the test), its stream removed after.
fn member_on(s: &Scratch, queue: &str, url: &str) -> Running {
    s.track_queue(&ddmon::daemon::replica::stream_name("dd_speedo", queue));
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_speedo"));
    c.env("DD_BROKER", url)
        .env_remove("RUST_LOG")
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange, "--output-exchange", &s.exchange])
        .args(["--daemon-exchange", &s.exchange, "--no-source-copies"])
        .args(["--queue", queue, "--group", "--instance", queue])
        .args(["--interval", "1", "--alive-interval", "1"]);
    Running::spawn(c)
}

/// The first reply to the request `key`, on a connection of its own.
async fn ask(s: &Scratch, key: String) -> Option<Value> {
    let link = ddmon::broker::Link::open(&broker_config(), "test-group")
        .await
        .unwrap();
    let a = ask_first(&link, &s.exchange, key).await;
    link.close("OK").await;
    a
}

#[tokio::test]
async fn one_active_one_standby_and_the_standby_takes_over() {
    let conn = connect().await;
    let s = Scratch::new();
    let queue = unique("g").replace('.', "-");
    s.track_queue(&format!("q_guest.dd_speedo.{queue}"));
    let mut status = listen(&conn, &s.exchange, &["v01.status.dd_speedo.#"]).await;
    let first = member(&s, &queue);
    // the first is active
    let health = ddmon::rpc::request_key("dd_speedo", Some(&queue), "health");
    let t0 = Instant::now();
    let active = loop {
        if let Some(r) = ask(&s, health.clone()).await
            && r["result"]["role"] == "active"
        {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
    };
    assert_eq!(active["result"]["pid"], first.child.id());
    let second = member(&s, &queue);
    // the second stands by: it answers health on its own key, not the group's stats
    let short = ddmon::daemon::host_name()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let own = ddmon::rpc::member_instance(&queue, &format!("{short}-{}", second.child.id()));
    let t0 = Instant::now();
    loop {
        if let Some(r) = ask(
            &s,
            ddmon::rpc::request_key("dd_speedo", Some(&own), "health"),
        )
        .await
        {
            assert_eq!(r["result"]["role"], "standby", "{r}");
            assert_eq!(r["result"]["member"], own.split_once('@').unwrap().1);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
    let r = ask(
        &s,
        ddmon::rpc::request_key("dd_speedo", Some(&own), "stats"),
    )
    .await
    .unwrap();
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("standby of group {queue:?}")),
        "{r}"
    );
    // the group's own key: the active alone answers
    for _ in 0..5 {
        let r = ask(&s, health.clone()).await.unwrap();
        assert_eq!(r["result"]["pid"], first.child.id(), "{r}");
    }
    // records go to the active only
    publish(&s.exchange, v02_messages(&sim_records(200, 7))).await;
    // the active dies: the standby takes over, said in a status with role active
    drain(&mut status, 300).await;
    let killed = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", &first.child.id().to_string()])
        .status();
    let took = loop {
        let (key, body) = next_json(&mut status, 10).await;
        if body["role"] == "active" && body["pid"] == second.child.id() {
            assert_eq!(key, format!("v01.status.dd_speedo.{queue}"));
            break killed.elapsed();
        }
    };
    eprintln!("takeover after SIGKILL: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "2x the alive interval: {took:?}"
    );
    // requests follow the active: the group's key is now answered by the second
    let t0 = Instant::now();
    loop {
        let r = ask(&s, health.clone()).await;
        if r.as_ref()
            .is_some_and(|r| r["result"]["pid"] == second.child.id())
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{r:?}");
    }
    second.terminate();
    assert_eq!(second.finish(10).0, 0);
    let _ = first.finish(5);
}

#[test]
fn a_group_needs_an_instance() {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_speedo"))
        .args(["--group", "--queue", "x"])
        .env_remove("DD_INSTANCE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a group is named by its --instance"), "{err}");
}

/// dd_log2source instances share one queue as competing consumers (no group needed): three
/// of them, two killed with SIGKILL in the middle of the stream, and every record is routed,
/// the copies of deliveries whose acks died with their router counted as duplicates.
#[tokio::test]
async fn three_routers_two_killed_mid_stream_lose_nothing() {
    let n = 6000;
    let conn = connect().await;
    let s = Scratch::new();
    let sources = ["source00", "source01", "source02"];
    let dest =
        route_destinations(&conn, &s, &sources, &format!("{}.src_unknown", s.exchange)).await;
    let queue = unique("three");
    let input = format!("q_guest.dd_log2source.{queue}");
    s.track_queue(&input);
    let router = |i: usize| {
        let mut c = dd_log2source();
        c.env_remove("DD_ROSTER_STREAM")
            .args(["--exchange", &s.exchange, "--queue", &queue])
            .args([
                "--instance",
                &format!("r{i}"),
                "--daemon-exchange",
                &s.exchange,
            ])
            .args([
                "--source-exchange-template",
                &format!("{}.src_{{source}}", s.exchange),
            ])
            .args(["--unknown-exchange", &format!("{}.src_unknown", s.exchange)]);
        Running::spawn(c)
    };
    let routers: Vec<Running> = (0..3).map(router).collect();
    wait_for_consumers(&conn, &input, 3).await;
    let msgs = v02_messages(&sim_records(n, 31));
    let publisher = {
        let exchange = s.exchange.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move { publish(&exchange, msgs).await })
    };
    // two of them die while the stream flows
    let t0 = Instant::now();
    loop {
        let left = queue_counts(&conn, &input).await.map_or(0, |c| c.0);
        let routed: u32 = {
            let mut t = 0;
            for q in &dest {
                t += queue_counts(&conn, q).await.map_or(0, |c| c.0);
            }
            t
        };
        if routed > (n / 5) as u32 || t0.elapsed() > Duration::from_secs(30) {
            eprintln!("killing two routers with {routed} routed, {left} waiting");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in &routers[..2] {
        let _ = Command::new("kill")
            .args(["-KILL", &r.child.id().to_string()])
            .status();
    }
    publisher.await.unwrap();
    // the third drains the rest
    let t0 = Instant::now();
    loop {
        if queue_counts(&conn, &input)
            .await
            .is_some_and(|(waiting, consumers)| waiting == 0 && consumers == 1)
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (seen, deliveries, unknown) = read_routed(&conn, &dest).await;
    let lost = msgs.iter().filter(|m| !seen.contains(&m.2)).count();
    eprintln!(
        "three routers, two killed: {n} published, {} distinct routed, {} duplicates, {lost} lost, {unknown} unrouted",
        seen.len(),
        deliveries - seen.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(unknown, 0);
    let mut routers = routers;
    let last = routers.pop().unwrap();
    last.terminate();
    assert_eq!(last.finish(20).0, 0);
}

/// The active stalls (SIGSTOP): with a heartbeat of 2 s on the members' connections, the broker
/// closes the stalled one and the standby takes over; the old active, resumed, finds its
/// connection gone and stands by. Killing the standby changes nothing for the active.
#[tokio::test]
async fn a_stalled_active_is_replaced_and_stands_by_when_it_resumes() {
    let conn = connect().await;
    let s = Scratch::new();
    let queue = unique("g").replace('.', "-");
    s.track_queue(&format!("q_guest.dd_speedo.{queue}"));
    let url = format!("{}?heartbeat=2", broker_url());
    let mut status = listen(&conn, &s.exchange, &["v01.status.dd_speedo.#"]).await;
    let first = member_on(&s, &queue, &url);
    let health = ddmon::rpc::request_key("dd_speedo", Some(&queue), "health");
    let t0 = Instant::now();
    while !ask(&s, health.clone())
        .await
        .is_some_and(|r| r["result"]["pid"] == first.child.id())
    {
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
    let second = member_on(&s, &queue, &url);
    let third = member_on(&s, &queue, &url);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // a standby killed: the active goes on
    let _ = Command::new("kill")
        .args(["-KILL", &third.child.id().to_string()])
        .status();
    let _ = third.finish(5);
    let r = ask(&s, health.clone()).await.unwrap();
    assert_eq!(r["result"]["pid"], first.child.id());
    drain(&mut status, 300).await;
    // the active stalls
    let stalled = Instant::now();
    let _ = Command::new("kill")
        .args(["-STOP", &first.child.id().to_string()])
        .status();
    let took = loop {
        let (_, body) = next_json(&mut status, 30).await;
        if body["role"] == "active" && body["pid"] == second.child.id() {
            break stalled.elapsed();
        }
    };
    eprintln!("takeover after SIGSTOP with a 2 s heartbeat: {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // resumed, the old active stands by
    let _ = Command::new("kill")
        .args(["-CONT", &first.child.id().to_string()])
        .status();
    let t0 = Instant::now();
    loop {
        let (_, body) = next_json(&mut status, 30).await;
        if body["role"] == "standby" && body["pid"] == first.child.id() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{body}");
    }
    let r = ask(&s, health.clone()).await.unwrap();
    assert_eq!(r["result"]["pid"], second.child.id(), "{r}");
    for m in [first, second] {
        m.terminate();
        assert_eq!(m.finish(10).0, 0);
    }
}

/// dd_watchdog's members too: one active, one standby, on the roster with their roles.
#[tokio::test]
async fn dd_watchdog_members_show_their_roles_on_the_roster() {
    let s = Scratch::new();
    let queue = unique("gw").replace('.', "-");
    s.track_queue(&ddmon::daemon::replica::stream_name("dd_watchdog", &queue));
    s.track_queue(&format!("q_guest.dd_watchdog.{queue}"));
    let dir = tempfile::tempdir().unwrap();
    let member = |i: usize| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"));
        c.env("DD_BROKER", broker_url())
            .env_remove("RUST_LOG")
            .env_remove("DD_WATCHDOG_JOURNAL")
            .env_remove("DD_ROSTER_STREAM")
            .args(["--exchange", &s.exchange, "--output-exchange", &s.exchange])
            .args(["--daemon-exchange", &s.exchange, "--queue", &queue])
            .args(["--group", "--instance", &queue, "--alive-interval", "1"])
            .args([
                "--journal",
                dir.path().join(format!("j{i}")).to_str().unwrap(),
            ]);
        Running::spawn(c)
    };
    let a = member(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = member(1);
    let t0 = Instant::now();
    loop {
        let rows = roster_rows(&s.exchange).unwrap_or_default();
        let mut roles: Vec<(u64, String)> = rows
            .iter()
            .filter(|r| r["state"] == "running")
            .map(|r| {
                (
                    r["pid"].as_u64().unwrap(),
                    r["role"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        roles.sort();
        let mut want = vec![
            (u64::from(a.child.id()), "active".to_string()),
            (u64::from(b.child.id()), "standby".to_string()),
        ];
        want.sort();
        if roles == want {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for m in [a, b] {
        m.terminate();
        assert_eq!(m.finish(10).0, 0);
    }
}
