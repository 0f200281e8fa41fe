//! A group's state through the broker (the hot-standby issue, SPEC §7): the chaos cases of a
//! group, on the real broker. Two members of dd_speedo (or dd_watchdog), each through a TCP
//! proxy of its own (heartbeat 2 s), and a plain reference instance on a queue of its own that
//! no fault touches: its counts are the truth. Records flow while one fault strikes: the
//! active killed (SIGKILL), its connections cut, stalled for 30 s, the standby killed, both
//! killed in turn (a third member started between). For each: published, counted against the
//! reference (0 lost, 0 counted twice), the speedo records per name and interval (none
//! doubled, none missing), and the takeover time. One line per case on stderr.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use serde_json::Value;

const RECORDS: usize = 6000;
const CHUNK: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillActive,
    CutActive,
    StallActive,
    KillStandby,
    KillBoth,
}

fn broker_port() -> u16 {
    let url = broker_url();
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .unwrap_or(5672)
}

fn proxied(p: &Proxy) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2", p.port)
}

/// Who a daemon is: its queue, instance and output exchange, in the group or not.
struct Who<'a> {
    queue: &'a str,
    instance: &'a str,
    output: &'a str,
    group: bool,
}

/// One member (or, with `group` false, the reference) of `tool`.
fn daemon(tool: &str, s: &Scratch, url: &str, who: &Who<'_>, dir: &std::path::Path) -> Running {
    let Who {
        queue,
        instance,
        output,
        group,
    } = *who;
    let path = match tool {
        "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
        _ => env!("CARGO_BIN_EXE_dd_watchdog"),
    };
    let mut c = Command::new(path);
    daemon_log(&mut c)
        .env("DD_BROKER", url)
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_WATCHDOG_JOURNAL")
        .args(["--exchange", &s.exchange, "--output-exchange", output])
        .args(["--daemon-exchange", &s.exchange, "--queue", queue])
        .args(["--instance", instance, "--alive-interval", "1"]);
    let file = dir.join(format!("{}.{}", unique("m"), tool));
    let file = file.to_str().unwrap();
    if tool == "dd_speedo" {
        // late 2 s after a name's last good delivery: alerts within the test
        let config = dir.join("late.toml");
        std::fs::write(&config, "[thresholds.defaults]\ntd = 2\n").unwrap();
        c.args(["--no-source-copies", "--interval", "1"])
            .args(["--state-interval", "1", "--state-file", file])
            .args(["--config", config.to_str().unwrap()]);
    } else {
        c.args(["--journal", file]);
    }
    if group {
        c.arg("--group");
    }
    Running::spawn(c)
}

async fn ask(s: &Scratch, key: String) -> Option<Value> {
    let link = ddmon::broker::Link::open(&broker_config(), "test-group-state")
        .await
        .unwrap();
    let a = ask_first(&link, &s.exchange, key).await;
    link.close("OK").await;
    a
}

fn own_key(tool: &str, instance: &str, pid: u32, cmd: &str) -> String {
    let short = ddmon::daemon::host_name()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let own = ddmon::rpc::member_instance(instance, &format!("{short}-{pid}"));
    ddmon::rpc::request_key(tool, Some(&own), cmd)
}

/// Wait until `pid` answers the group's `health` as its active.
async fn until_active(s: &Scratch, tool: &str, instance: &str, pid: u32, secs: u64) {
    let key = ddmon::rpc::request_key(tool, Some(instance), "health");
    let t0 = Instant::now();
    loop {
        if let Some(r) = ask(s, key.clone()).await
            && r["result"]["pid"] == pid
            && r["result"]["role"] == "active"
        {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{pid} not active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `pid` stands by, in step with the group's state.
async fn until_in_step(s: &Scratch, tool: &str, instance: &str, pid: u32) {
    let t0 = Instant::now();
    loop {
        if let Some(r) = ask(s, own_key(tool, instance, pid, "health")).await
            && r["result"]["role"] == "standby"
            && r["result"]["counters"]["state_stream"]["synced"] == true
        {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{pid} not in step");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill(r: &Running) {
    let _ = Command::new("kill")
        .args(["-KILL", &r.child.id().to_string()])
        .status();
}

/// The records, published in chunks over about three seconds.
fn stream_records(exchange: &str, seed: u64) -> tokio::task::JoinHandle<()> {
    let msgs = v02_messages(&sim_records(RECORDS, seed));
    let exchange = exchange.to_string();
    tokio::spawn(async move {
        for chunk in msgs.chunks(CHUNK) {
            publish(&exchange, chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The first status of `tool`/`instance` with role active after `since` (from any member).
async fn next_active(status: &mut lapin::Consumer, since: Instant, secs: u64) -> Duration {
    loop {
        let (_, body) = next_json(status, secs).await;
        if body["role"] == "active" {
            return since.elapsed();
        }
    }
}

async fn drained(conn: &lapin::Connection, queue: &str) {
    let t0 = Instant::now();
    loop {
        if queue_counts(conn, queue)
            .await
            .is_some_and(|(waiting, consumers)| waiting == 0 && consumers >= 1)
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{queue} not drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The speedo records seen: (topic, interval end) to their bodies.
fn intervals(deliveries: &[lapin::message::Delivery]) -> BTreeMap<(String, String), Vec<String>> {
    let mut seen: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| !is_alert(d)) {
        let body = String::from_utf8_lossy(&d.data).to_string();
        let end = body.split(' ').next().unwrap_or("").to_string();
        seen.entry((d.routing_key.to_string(), end))
            .or_default()
            .push(body);
    }
    seen
}

fn is_alert(d: &lapin::message::Delivery) -> bool {
    d.routing_key.as_str().starts_with("v01.speedo.alert.")
}

/// Each name's states, in the order its alerts said them.
fn alerts(deliveries: &[lapin::message::Delivery]) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in deliveries.iter().filter(|d| is_alert(d)) {
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        let name = format!(
            "{} {}",
            v["kind"].as_str().unwrap(),
            v["name"].as_str().unwrap()
        );
        let states = by_name.entry(name).or_default();
        // each alert is a change from the state the last one said
        if let Some(last) = states.last() {
            assert_eq!(v["old"].as_str(), Some(last.as_str()), "{v}");
        }
        states.push(v["new"].as_str().unwrap().to_string());
    }
    by_name
}

/// A good record of a client seen once: late 2 s later.
fn lonely() -> Vec<RawMessage> {
    let mut r = sim_records(40, 99)
        .into_iter()
        .find(|r| (200..300).contains(&r.status))
        .unwrap();
    r.client = "lonely".into();
    r.source = Some("lonelysrc".into());
    v02_messages(&[r])
}

/// Records published twice (each an identical copy, all of one interval: the window an
/// active was publishing when its connection broke, published again by the next), and
/// intervals missing between a name's first and last record.
fn doubled_and_missing(seen: &BTreeMap<(String, String), Vec<String>>) -> (usize, usize) {
    let mut doubled = 0;
    let mut doubled_ends = std::collections::BTreeSet::new();
    for ((_, end), bodies) in seen {
        if bodies.len() > 1 {
            assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
            doubled += bodies.len() - 1;
            doubled_ends.insert(end.clone());
        }
    }
    assert!(
        doubled_ends.len() <= 1,
        "doubled in several intervals: {doubled_ends:?}"
    );
    let mut by_name: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (topic, end) in seen.keys() {
        let t = chrono::NaiveDateTime::parse_from_str(end, "%Y%m%d%H%M%S")
            .unwrap()
            .and_utc()
            .timestamp();
        by_name.entry(topic.as_str()).or_default().push(t);
    }
    let mut missing = 0;
    for ends in by_name.values() {
        let (first, last) = (ends[0], ends[ends.len() - 1]);
        missing += (last - first + 1) as usize - ends.len();
    }
    (doubled, missing)
}

struct Members {
    a: Running,
    b: Running,
    c: Option<Running>,
    pa: Proxy,
    pb: Proxy,
}

async fn case(tool: &'static str, fault: Fault) {
    let conn = connect().await;
    let s = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("gs");
    // (no dot: the instance is a topic word, and the stream's name holds it as it is)
    let instance = unique("gs").replace('.', "-");
    let input = format!("q_guest.{tool}.{queue}");
    let reference_queue = unique("ref");
    s.track_queue(&input);
    s.track_queue(&format!("q_guest.{tool}.{reference_queue}"));
    s.track_queue(&format!("ddmon.state.{tool}.{instance}"));
    let mut status = listen(&conn, &s.exchange, &[&format!("v01.status.{tool}.#")]).await;
    let mut speedos = listen(&conn, &s.exchange, &["v01.speedo.#"]).await;
    let reference_out = format!("{}.ref", s.exchange);
    s.track_exchange(&reference_out);
    declare_topic(&conn, &reference_out).await;
    let mut reference_speedos = listen(&conn, &reference_out, &["v01.speedo.alert.#"]).await;
    let reference_instance = unique("r");
    let reference = daemon(
        tool,
        &s,
        &broker_url(),
        &Who {
            queue: &reference_queue,
            instance: &reference_instance,
            output: &reference_out,
            group: false,
        },
        dir.path(),
    );
    let who = Who {
        queue: &queue,
        instance: &instance,
        output: &s.exchange,
        group: true,
    };
    let member = |p: &Proxy| daemon(tool, &s, &proxied(p), &who, dir.path());
    let (pa, pb) = (
        Proxy::start(broker_port()).await,
        Proxy::start(broker_port()).await,
    );
    let a = member(&pa);
    until_active(&s, tool, &instance, a.child.id(), 30).await;
    let b = member(&pb);
    until_in_step(&s, tool, &instance, b.child.id()).await;
    wait_for_consumers(&conn, &format!("q_guest.{tool}.{reference_queue}"), 1).await;
    let mut m = Members {
        a,
        b,
        c: None,
        pa,
        pb,
    };
    drain(&mut status, 300).await;
    if tool == "dd_speedo" {
        // a client that goes late on the active, before the fault
        publish(&s.exchange, lonely()).await;
        tokio::time::sleep(Duration::from_millis(3500)).await;
    }
    let publisher = stream_records(&s.exchange, 41);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let struck = Instant::now();
    let takeover = match fault {
        Fault::KillActive => {
            kill(&m.a);
            Some(next_active(&mut status, struck, 20).await)
        }
        Fault::CutActive => {
            m.pa.cut();
            Some(next_active(&mut status, struck, 20).await)
        }
        Fault::StallActive => {
            m.pa.stall(true);
            let took = next_active(&mut status, struck, 40).await;
            tokio::time::sleep(Duration::from_secs(30).saturating_sub(struck.elapsed())).await;
            m.pa.stall(false);
            Some(took)
        }
        Fault::KillStandby => {
            kill(&m.b);
            None
        }
        Fault::KillBoth => {
            kill(&m.a);
            let took = next_active(&mut status, struck, 20).await;
            let c = member(&m.pa);
            until_in_step(&s, tool, &instance, c.child.id()).await;
            kill(&m.b);
            let again = Instant::now();
            let took2 = next_active(&mut status, again, 20).await;
            eprintln!("{tool} group, second takeover (the third member): {took2:?}");
            m.c = Some(c);
            Some(took.max(took2))
        }
    };
    publisher.await.unwrap();
    drained(&conn, &input).await;
    drained(&conn, &format!("q_guest.{tool}.{reference_queue}")).await;
    // the last interval closes, and every name goes late
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let of = |instance: &str, cmd: &str| ddmon::rpc::request_key(tool, Some(instance), cmd);
    let group = ask(&s, of(&instance, "stats"))
        .await
        .expect("the group answers")["result"]
        .clone();
    let health = ask(&s, of(&instance, "health"))
        .await
        .expect("the group answers")["result"]
        .clone();
    let truth = ask(&s, of(&reference_instance, "stats"))
        .await
        .expect("the reference answers")["result"]
        .clone();
    let speedo_records = drain(&mut speedos, 500).await;
    let reference_alerts = drain(&mut reference_speedos, 500).await;
    let line = match tool {
        "dd_speedo" => {
            let of = |v: &Value, k: &str| v["totals"]["client.all"][k].as_u64().unwrap_or(0);
            let counted = of(&group, "good") + of(&group, "errors");
            let expected = of(&truth, "good") + of(&truth, "errors");
            let (doubled_iv, missing_iv) = doubled_and_missing(&intervals(&speedo_records));
            for k in ["good", "errors", "good_bytes", "bad_bytes"] {
                assert_eq!(of(&group, k), of(&truth, k), "{fault:?}: client.all {k}");
                let src = |v: &Value| v["totals"]["sources.all"][k].as_u64().unwrap_or(0);
                assert_eq!(src(&group), src(&truth), "{fault:?}: sources.all {k}");
            }
            // an active that dies or is cut while it publishes an interval's window: what
            // the broker took of it comes again from the new active (identical, one interval:
            // checked above); a stall or a standby's death doubles nothing
            if matches!(fault, Fault::StallActive | Fault::KillStandby) {
                assert_eq!(doubled_iv, 0, "{fault:?}: speedo records doubled");
            }
            assert_eq!(missing_iv, 0, "{fault:?}: speedo records missing");
            // the states went through the takeover: the same alerts as the reference's, none
            // said twice (a new active starting afresh would not know `lonely` is late)
            // (the reference, on a loaded machine, may see a gap of its own: the group may say
            // less than it, never more, and ends where it ends)
            let (ours, theirs) = (alerts(&speedo_records), alerts(&reference_alerts));
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{fault:?}: the alerts"
            );
            for (name, states) in &ours {
                let other = &theirs[name];
                assert!(
                    states.len() <= other.len(),
                    "{fault:?}: {name}: {states:?} / {other:?}"
                );
                assert_eq!(states.last(), other.last(), "{fault:?}: {name}");
            }
            assert_eq!(ours["client lonely"], vec!["late".to_string()]);
            let lonely_state = group["clients"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "lonely")
                .map(|c| c["state"].clone());
            assert_eq!(lonely_state, Some(Value::from("late")), "{fault:?}");
            assert!(expected > 0);
            format!(
                "counted {counted} / {expected} (lost {}, twice {}), speedo records doubled {doubled_iv}, missing {missing_iv}, alerts {} (the reference's {})",
                expected.saturating_sub(counted),
                counted.saturating_sub(expected),
                ours.values().map(Vec::len).sum::<usize>(),
                theirs.values().map(Vec::len).sum::<usize>()
            )
        }
        _ => {
            let open = |v: &Value| v["in_flight"].as_u64().unwrap_or(u64::MAX);
            let rows = |v: &Value| {
                let mut t: Vec<String> = v["inflight"]["transfers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| format!("{} {} {}", t["node"], t["client"], t["url"]))
                            .collect()
                    })
                    .unwrap_or_default();
                t.sort();
                t
            };
            assert_eq!(open(&group), open(&truth), "{fault:?}: in flight");
            assert_eq!(rows(&group), rows(&truth), "{fault:?}: the table");
            assert_eq!(
                group["counts"], truth["counts"],
                "{fault:?}: opened, closed..."
            );
            format!("in flight {} / {}", open(&group), open(&truth))
        }
    };
    let dups = health["counters"]["state_stream"]["duplicates"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{tool} group, {fault:?}: published {RECORDS}, {line}, redelivered and not counted again {dups}, takeover {}",
        takeover.map_or("-".to_string(), |t| format!(
            "{:.0} ms",
            t.as_secs_f64() * 1000.0
        ))
    );
    if let Some(t) = takeover {
        // 2x the alive interval (1 s) for a death the broker sees at once; a stall is seen
        // by the heartbeat (2 s, two missed)
        let bar = if fault == Fault::StallActive { 15 } else { 2 };
        assert!(t < Duration::from_secs(bar), "{fault:?}: takeover {t:?}");
    }
    for r in [Some(m.a), Some(m.b), m.c, Some(reference)]
        .into_iter()
        .flatten()
    {
        r.terminate();
        let _ = r.finish(15);
    }
    drop((m.pa, m.pb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedo_group_active_killed() {
    case("dd_speedo", Fault::KillActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedo_group_active_connection_cut() {
    case("dd_speedo", Fault::CutActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedo_group_active_stalled_30_s() {
    case("dd_speedo", Fault::StallActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedo_group_standby_killed() {
    case("dd_speedo", Fault::KillStandby).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedo_group_both_killed_in_turn() {
    case("dd_speedo", Fault::KillBoth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_group_active_killed() {
    case("dd_watchdog", Fault::KillActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_group_both_killed_in_turn() {
    case("dd_watchdog", Fault::KillBoth).await;
}
