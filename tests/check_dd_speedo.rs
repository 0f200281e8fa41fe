//! check_dd_speedo against the real broker and a real dd_speedo (in a throw-away vhost), and
//! every way it can fail: no dd_speedo, no broker, a refused login, a broker that accepts TCP
//! and never answers, a usage error. Output is checked exactly and its perfdata parsed by a
//! strict parser.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn check(url: &str, args: &[&str]) -> (i32, String, Duration) {
    let started = Instant::now();
    let out: Output = Command::new(env!("CARGO_BIN_EXE_check_dd_speedo"))
        .env("DD_BROKER", url)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        took,
    )
}

/// The Monitoring Plugins perfdata syntax, strictly: `'label'=value[UOM];[warn];[crit];[min];[max]`.
fn parse_perfdata(text: &str) -> Vec<(String, f64, String)> {
    let item = regex::Regex::new(
        r"^('(?:[^']|'')+'|[^' =]+)=(-?[0-9]+(?:\.[0-9]+)?|U)([a-zA-Z%]*)((?:;[^; ]*){0,4})$",
    )
    .unwrap();
    let mut out = Vec::new();
    // items are separated by single spaces; a quoted label may hold spaces
    let mut rest = text;
    while !rest.is_empty() {
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            let close = quoted.find("'=").unwrap() + 1;
            rest[close..]
                .find(' ')
                .map(|i| close + i)
                .unwrap_or(rest.len())
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        let one = &rest[..end];
        let c = item
            .captures(one)
            .unwrap_or_else(|| panic!("bad perfdata item {one:?}"));
        let label = c[1].trim_matches('\'').replace("''", "'");
        out.push((label, c[2].parse().unwrap_or(f64::NAN), c[3].to_string()));
        rest = rest[end..].strip_prefix(' ').unwrap_or(&rest[end..]);
    }
    out
}

#[tokio::test]
async fn ok_then_critical_against_a_real_dd_speedo() {
    let sb = Sandbox::new(&unique("test.check"), Vec::new()).await;
    let url = url("guest", "guest", &sb.vhost);
    let conn = {
        let cfg = ddmon::config::BrokerConfig {
            url: url.clone(),
            ..Default::default()
        };
        ddmon::broker::raw::connect(&cfg, "ddmon-test")
            .await
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("speedo.toml");
    std::fs::write(
        &config,
        "[thresholds.defaults]\ntd = 0\n[[thresholds.override]]\nname = \"lazy\"\nkind = \"client\"\ntd = 2\n",
    )
    .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_speedo"));
    c.env("DD_BROKER", &url).env_remove("RUST_LOG").args([
        "--interval",
        "1",
        "--instance",
        "chk",
        "--config",
        config.to_str().unwrap(),
    ]);
    let speedo = Running::spawn(c);
    wait_for_consumers(&conn, "q_guest.dd_speedo.log", 1).await;
    let mut records = sim_records(40, 4);
    for (i, r) in records.iter_mut().enumerate() {
        r.client = if i % 2 == 0 { "alice" } else { "lazy" }.into();
        r.source = Some("ec".into());
        r.status = 200;
        r.time = chrono::Utc::now();
    }
    publish_on(&url, "log", v02_messages(&records)).await;
    // wait for the first interval to close (data), then check alice: OK
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, out, _) = loop {
        let r = check(&url, &["--client", "alice"]);
        if !r.1.contains("no speedo data yet") || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(code, 0, "{out}");
    let (head, perf) = out.trim_end().split_once(" | ").unwrap();
    assert_eq!(
        head,
        "DD_SPEEDO OK - 0 of 1 clients and 0 of 0 sources out of bounds"
    );
    let perf = parse_perfdata(perf);
    let labels: Vec<&str> = perf.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(labels, ["clients_out", "sources_out", "client.alice"]);
    assert_eq!(out.lines().count(), 1);

    // lazy goes late 2 s after its last good delivery: CRITICAL, listed
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (code, out, took) = check(&url, &[]);
    assert_eq!(code, 2, "{out}");
    let lines: Vec<&str> = out.trim_end().lines().collect();
    let (head, perf) = lines[0].split_once(" | ").unwrap();
    assert_eq!(
        head,
        "DD_SPEEDO CRITICAL - 1 of 2 clients and 0 of 1 sources out of bounds"
    );
    let perf = parse_perfdata(perf);
    assert_eq!(perf[0], ("clients_out".to_string(), 1.0, String::new()));
    assert_eq!(perf.len(), 2 + 3);
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with("client lazy CRITICAL: late: no good delivery for "),
        "{}",
        lines[1]
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // more names than --max-perfdata: judged from dd_speedo's exact counts and the offenders
    // it lists (the query path of a big pump), the same verdict and offender line
    let (code, big, _) = check(&url, &["--max-perfdata", "1"]);
    assert_eq!(code, 2, "{big}");
    let big_lines: Vec<&str> = big.trim_end().lines().collect();
    assert!(
        big_lines[0].starts_with(
            "DD_SPEEDO CRITICAL - 1 of 2 clients and 0 of 1 sources out of bounds | clients_out=1;;;0;2 sources_out=0;;;0;1 client.lazy="
        ),
        "{big}"
    );
    assert_eq!(big_lines.len(), 2, "{big}");
    assert!(
        big_lines[1].starts_with("client lazy CRITICAL: late: "),
        "{big}"
    );
    // every state but late asked as an offender state: 3 offenders, 1 listed, the rest said
    let (code, capped, _) = check(
        &url,
        &[
            "--max-perfdata",
            "1",
            "--max-offenders",
            "1",
            "--warning-states",
            "ok",
        ],
    );
    assert_eq!(code, 2, "{capped}");
    let capped: Vec<&str> = capped.trim_end().lines().collect();
    assert!(
        capped[0]
            .starts_with("DD_SPEEDO CRITICAL - 2 of 2 clients and 1 of 1 sources out of bounds"),
        "{capped:?}"
    );
    assert!(
        capped[1].starts_with("client lazy CRITICAL: late: "),
        "{capped:?}"
    );
    assert_eq!(
        capped[2],
        "... and 2 more out of bounds (--max-offenders 1)"
    );
    assert_eq!(capped.len(), 3);
    // a range on a metric alone, which no name has yet (files per minute need a whole
    // minute): UNKNOWN, not an OK that nobody knows (issue 17)
    let (code, out, _) = check(&url, &["--no-states", "--source", "ec", "-w", "1000:"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(
        out.trim_end(),
        "DD_SPEEDO UNKNOWN - no files_per_min yet for any of the 1 names checked (dd_speedo \
         gives it after a whole minute of a name): nothing to judge -w/-c on | clients_out=U;;;0 sources_out=U;;;0"
    );
    // with the states judged too, a state alert still says what it knows
    let (code, out, _) = check(&url, &["-w", "1000:"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("DD_SPEEDO CRITICAL - 1 of 2 clients"),
        "{out}"
    );
    let (code, out, _) = check(
        &url,
        &[
            "--no-states",
            "--source",
            "ec",
            "--metric",
            "lag",
            "-w",
            "@0:",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("DD_SPEEDO WARNING - 0 of 0 clients and 1 of 1 sources out of bounds | "),
        "{out}"
    );
    // the instance by name, and one that does not exist
    let (code, _, _) = check(&url, &["--instance", "chk", "--client", "alice"]);
    assert_eq!(code, 0);
    let (code, out, _) = check(&url, &["--instance", "nope", "-t", "1"]);
    assert_eq!(code, 3);
    assert_eq!(
        out.trim_end(),
        "DD_SPEEDO UNKNOWN - no dd_speedo answered within 1 s on exchange \"log\" (instance nope) | clients_out=U;;;0 sources_out=U;;;0"
    );
    speedo.terminate();
    assert_eq!(speedo.finish(15).0, 0);
}

#[tokio::test]
async fn no_dd_speedo_is_unknown_within_the_timeout() {
    let sb = Sandbox::new(&unique("test.check"), Vec::new()).await;
    let url = url("guest", "guest", &sb.vhost);
    let (code, out, _) = check(&url, &[]);
    assert_eq!(code, 3);
    assert_eq!(
        out.trim_end(),
        "DD_SPEEDO UNKNOWN - no dd_speedo answers on exchange \"log\": it does not exist on this broker | clients_out=U;;;0 sources_out=U;;;0"
    );
    // the exchange exists, nobody answers
    let cfg = ddmon::config::BrokerConfig {
        url: url.clone(),
        ..Default::default()
    };
    let conn = ddmon::broker::raw::connect(&cfg, "ddmon-test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ddmon::broker::raw::declare_topic_exchange(&ch, "log")
        .await
        .unwrap();
    let (code, out, took) = check(&url, &["-t", "2"]);
    assert_eq!(code, 3);
    assert_eq!(
        out.trim_end(),
        "DD_SPEEDO UNKNOWN - no dd_speedo answered within 2 s on exchange \"log\" | clients_out=U;;;0 sources_out=U;;;0"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    let (code, _, _) = check(&url, &["-t", "1:CRITICAL"]);
    assert_eq!(code, 2);
}

#[test]
fn unreachable_broker_and_refused_login() {
    let (code, out, took) = check("amqp://guest:guest@127.0.0.1:1/%2f", &[]);
    assert_eq!(code, 3);
    assert!(
        out.starts_with("DD_SPEEDO UNKNOWN - cannot reach the broker: "),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    assert!(took < Duration::from_secs(3), "{took:?}");
    let (code, out, _) = check("amqp://guest:WRONG@127.0.0.1:5672/%2f", &[]);
    assert_eq!(code, 3);
    assert!(
        out.starts_with("DD_SPEEDO UNKNOWN - the broker refused: "),
        "{out}"
    );
    assert!(!out.contains("WRONG"), "no password: {out}");
}

#[test]
fn a_broker_that_never_answers_times_out() {
    // accepts TCP, says nothing
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let (code, out, took) = check(&url, &["-t", "1"]);
    assert_eq!(code, 3);
    assert_eq!(
        out.trim_end(),
        format!(
            "DD_SPEEDO UNKNOWN - timed out after 1 s connecting to amqp://guest:****@127.0.0.1:{port}/%2f | clients_out=U;;;0 sources_out=U;;;0"
        )
    );
    assert!(took < Duration::from_millis(1800), "{took:?}");
    let (code, out, _) = check(&url, &["-t", "1:WARNING"]);
    assert_eq!(code, 1, "{out}");
}

#[test]
fn usage_help_and_version() {
    let (code, out, _) = check("amqp://x", &["-w", "20:10"]);
    assert_eq!(code, 3);
    assert!(out.starts_with("DD_SPEEDO UNKNOWN - usage: "), "{out}");
    assert!(out.contains("start is above end"), "{out}");
    let (code, out, _) = check("amqp://x", &["--bogus"]);
    assert_eq!(code, 3, "{out}");
    let (code, out, _) = check("amqp://x", &["--version"]);
    assert_eq!((code, out.trim_end()), (0, "check_dd_speedo 0.1.0"));
    let (code, out, _) = check("amqp://x", &["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("-t, --timeout <SECONDS[:STATE]>") && out.contains("-w, --warning <RANGE>"),
        "{out}"
    );
}
