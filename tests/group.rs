//! Groups (SPEC §7, the hot-standby issue, first part): processes of dd_speedo started with
//! the same `--instance`, `--queue` and `--group` are one group, one `active` (it consumes,
//! publishes and answers the group's requests), the others `standby`; a standby takes over
//! when the active dies. (Carrying the active's state over is the next part: here the
//! new active starts from its own.)

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn member(s: &Scratch, queue: &str) -> Running {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_speedo"));
    c.env("DD_BROKER", broker_url())
        .env_remove("RUST_LOG")
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange, "--output-exchange", &s.exchange])
        .args(["--daemon-exchange", &s.exchange, "--no-source-copies"])
        .args(["--queue", queue, "--group", "--instance", "g1"])
        .args(["--interval", "1", "--alive-interval", "1"]);
    Running::spawn(c)
}

/// Ask `command` on `key`; the first reply.
async fn ask(s: &Scratch, key: String) -> Option<Value> {
    let link = ddmon::broker::Link::open(&broker_config(), "test-group")
        .await
        .unwrap();
    let q = ddmon::rpc::Question::new(&s.exchange, key, Duration::from_secs(2)).at_most(1);
    let a = ddmon::rpc::ask_raw(&link, &q).await.unwrap();
    link.close("OK").await;
    a.into_iter().next()
}

#[tokio::test]
async fn one_active_one_standby_and_the_standby_takes_over() {
    let conn = connect().await;
    let s = Scratch::new();
    let queue = unique("g");
    s.track_queue(&format!("q_guest.dd_speedo.{queue}"));
    let mut status = listen(&conn, &s.exchange, &["v01.status.dd_speedo.#"]).await;
    let first = member(&s, &queue);
    // the first is active
    let health = ddmon::rpc::request_key("dd_speedo", Some("g1"), "health");
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
    let own = ddmon::rpc::member_instance("g1", &format!("{short}-{}", second.child.id()));
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
            .starts_with("standby of group \"g1\""),
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
    while tokio::time::timeout(Duration::from_millis(300), next_json(&mut status, 1))
        .await
        .is_ok()
    {}
    let killed = Instant::now();
    let _ = Command::new("kill")
        .args(["-KILL", &first.child.id().to_string()])
        .status();
    let took = loop {
        let (key, body) = next_json(&mut status, 10).await;
        if body["role"] == "active" && body["pid"] == second.child.id() {
            assert_eq!(key, "v01.status.dd_speedo.g1");
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
