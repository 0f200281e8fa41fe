//! The verdict in virtual time: states, ranges, staleness, selection, output lines exactly.

use super::*;
use chrono::{DateTime, Utc};
use clap::Parser;
use config::replace_host;
use serde_json::json;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:01:10Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn stats() -> Value {
    json!({
        "time": "2026-11-22T10:01:09Z",
        "interval": 60,
        "data_time": "2026-11-22T10:01:00Z",
        "clients": [
            {"name": "alice", "state": "ok", "reason": "within thresholds", "files_per_min": 12.0,
             "bytes_per_sec": 2048.5, "error_ratio": 0.0, "lag_max": 1.25, "last_good": "2026-11-22T10:01:05Z"},
            {"name": "bob", "state": "late", "reason": "no good delivery for 3700 s (td 3600 s)",
             "files_per_min": 0.0, "bytes_per_sec": 0.0, "error_ratio": null, "lag_max": null,
             "last_good": "2026-11-22T09:00:00Z"},
            {"name": "wx o", "state": "slow", "reason": "2 good files in the last minute (tminr 10)",
             "files_per_min": 2.0, "bytes_per_sec": 10.0, "error_ratio": 0.5, "lag_max": 3.0,
             "last_good": "2026-11-22T10:00:50Z"}
        ],
        "sources": [
            {"name": "ec", "state": "ok", "reason": "within thresholds", "files_per_min": 14.0,
             "bytes_per_sec": 2058.5, "error_ratio": 0.1, "lag_max": 3.0, "last_good": "2026-11-22T10:01:05Z"}
        ]
    })
}

/// The fixture as the typed reply every reader takes.
fn typed(v: &Value) -> StatsReply {
    serde_json::from_value(v.clone()).unwrap()
}

fn check(argv: &[&str]) -> Check {
    let mut full = vec!["check_dd_speedo"];
    full.extend_from_slice(argv);
    check_of(&Args::try_parse_from(full).unwrap()).unwrap()
}

#[test]
fn states_give_the_verdict_and_the_lines() {
    let o = evaluate(&typed(&stats()), &check(&[]), now());
    assert_eq!(o.status, Status::Critical);
    assert_eq!(
        o.text,
        "DD_SPEEDO CRITICAL - 2 of 3 clients and 0 of 1 sources out of bounds | clients_out=2;;;0;3 sources_out=0;;;0;1 client.alice=12;;;0 client.bob=0;;;0 'client.wx o'=2;;;0 source.ec=14;;;0\n\
         client bob CRITICAL: late: no good delivery for 3700 s (td 3600 s); files_per_min=0 bytes_per_sec=0 error_ratio=- lag_max=- last_good=2026-11-22T09:00:00Z\n\
         client wx o WARNING: slow: 2 good files in the last minute (tminr 10); files_per_min=2 bytes_per_sec=10 error_ratio=0.5 lag_max=3 last_good=2026-11-22T10:00:50Z"
    );
}

#[test]
fn one_client_by_name() {
    let o = evaluate(&typed(&stats()), &check(&["--client", "alice"]), now());
    assert_eq!(o.status, Status::Ok);
    assert_eq!(
        o.text,
        "DD_SPEEDO OK - 0 of 1 clients and 0 of 0 sources out of bounds | clients_out=0;;;0;1 sources_out=0;;;0;0 client.alice=12;;;0"
    );
    let o = evaluate(&typed(&stats()), &check(&["--client", "carol"]), now());
    assert_eq!(o.status, Status::Unknown);
    assert_eq!(
        o.text,
        "DD_SPEEDO UNKNOWN - dd_speedo has not seen client carol | clients_out=U;;;0 sources_out=U;;;0"
    );
}

#[test]
fn ranges_on_a_metric() {
    let o = evaluate(
        &typed(&stats()),
        &check(&[
            "--no-states",
            "--source",
            "ec",
            "--metric",
            "bytes_per_sec",
            "-w",
            "3000:",
            "-c",
            "1000:",
        ]),
        now(),
    );
    assert_eq!(o.status, Status::Warning);
    assert!(o.text.starts_with("DD_SPEEDO WARNING - 0 of 0 clients and 1 of 1 sources out of bounds | clients_out=0;;;0;0 sources_out=1;;;0;1 source.ec=2058.5;3000:;1000:;0\n"), "{}", o.text);
    assert!(o.text.ends_with("source ec WARNING: bytes_per_sec=2058.5 outside -w 3000:; files_per_min=14 bytes_per_sec=2058.5 error_ratio=0.1 lag_max=3 last_good=2026-11-22T10:01:05Z"), "{}", o.text);
    let o = evaluate(
        &typed(&stats()),
        &check(&[
            "--no-states",
            "--regex",
            "^(alice|ec)$",
            "--metric",
            "lag",
            "-c",
            "@2:",
        ]),
        now(),
    );
    assert_eq!(o.status, Status::Critical);
    assert!(
        o.text
            .starts_with("DD_SPEEDO CRITICAL - 0 of 1 clients and 1 of 1 sources"),
        "{}",
        o.text
    );
    let o = evaluate(
        &typed(&stats()),
        &check(&["--kind", "source", "--metric", "error_ratio", "-w", "0.05"]),
        now(),
    );
    assert!(o.text.contains("source.ec=0.1;0.05;;0;1"), "{}", o.text);
    assert_eq!(o.status, Status::Warning);
}

#[test]
fn stale_or_missing_data_is_unknown() {
    let mut s = stats();
    s["data_time"] = json!("2026-11-22T09:58:00Z");
    let o = evaluate(&typed(&s), &check(&[]), now());
    assert_eq!(o.status, Status::Unknown);
    assert_eq!(
        o.text,
        "DD_SPEEDO UNKNOWN - dd_speedo's data is stale: last interval ended 190 s ago (limit 150 s) | clients_out=U;;;0 sources_out=U;;;0"
    );
    let o = evaluate(&typed(&s), &check(&["--stale", "600"]), now());
    assert_eq!(o.status, Status::Critical);
    s["data_time"] = Value::Null;
    let o = evaluate(&typed(&s), &check(&[]), now());
    assert_eq!(
        o.text,
        "DD_SPEEDO UNKNOWN - dd_speedo has no speedo data yet (interval 60 s) | clients_out=U;;;0 sources_out=U;;;0"
    );
    s["data_time"] = json!("2026-11-22T10:01:00Z");
    s["clients"] = json!([]);
    s["sources"] = json!([]);
    assert_eq!(
        evaluate(&typed(&s), &check(&[]), now()).status,
        Status::Unknown
    );
}

#[test]
fn state_mapping_is_configurable() {
    let o = evaluate(
        &typed(&stats()),
        &check(&["--critical-states", "late,slow", "--warning-states", ""]),
        now(),
    );
    assert!(o.text.contains("client wx o CRITICAL: slow"), "{}", o.text);
    let mut a = Args::try_parse_from(["check_dd_speedo", "--warning-states", "sluggish"]).unwrap();
    assert!(check_of(&a).is_err());
    a.warning_states.clear();
    assert!(check_of(&a).is_ok());
}

#[test]
fn perfdata_labels_and_numbers() {
    assert_eq!(perf_label("client.alice"), "client.alice");
    assert_eq!(perf_label("client.wx o"), "'client.wx o'");
    assert_eq!(perf_label("it's"), "'it''s'");
    assert_eq!(perf_label("a=b"), "'a%3Db'");
    assert_eq!(perf_number(2.0), "2");
    assert_eq!(perf_number(0.1234), "0.123");
    assert_eq!(perf_number(1e12), "1000000000000");
    assert_eq!(perf_number(-0.0001), "0");
}

#[test]
fn timeout_option() {
    let t: Timeout = "5".parse().unwrap();
    assert_eq!(
        (t.duration, t.state),
        (Duration::from_secs(5), Status::Unknown)
    );
    let t: Timeout = "2.5:critical".parse().unwrap();
    assert_eq!(
        (t.duration, t.state),
        (Duration::from_millis(2500), Status::Critical)
    );
    assert!("0".parse::<Timeout>().is_err());
    assert!("5:PURPLE".parse::<Timeout>().is_err());
}

#[test]
fn host_replacement() {
    assert_eq!(
        replace_host("amqp://u:p@old:5672/%2f", "new"),
        "amqp://u:p@new:5672/%2f"
    );
    assert_eq!(
        replace_host("amqps://old/v", "n.example"),
        "amqps://n.example/v"
    );
}

#[test]
fn command_line_is_consistent() {
    use clap::CommandFactory;
    Args::command().debug_assert();
}

#[test]
fn many_names_keep_only_the_offenders_perfdata() {
    let o = evaluate(&typed(&stats()), &check(&["--max-perfdata", "2"]), now());
    let perf = o
        .text
        .lines()
        .next()
        .unwrap()
        .split(" | ")
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        perf,
        "clients_out=2;;;0;3 sources_out=0;;;0;1 client.bob=0;;;0 'client.wx o'=2;;;0"
    );
}
