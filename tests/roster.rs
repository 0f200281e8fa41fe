//! The roster on the real broker (SPEC §6, the "Watch the watchers" issue): daemons killed,
//! stopped, frozen and restarted, a declared one never started, and monitors started after
//! the fact, each read through `check_dd_alive` (exit code and first line exactly) and
//! `dd_status --json`. Each test runs on an exchange of its own, with its own roster stream
//! (`ddmon.roster.<exchange>`, removed at the end).
//!
//! The documented times, with `--alive-interval 1`: `silent` once no alive came for 2 s,
//! `dead` once silent for 5 s and asked directly with no answer.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn check(s: &Scratch, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_check_dd_alive"))
        .env("DD_BROKER", broker_url())
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange, "--wait", "0.5", "-t", "8"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap_or("").to_string();
    (out.status.code().unwrap(), first)
}

fn status_json(s: &Scratch) -> Vec<Value> {
    roster_rows(&s.exchange).unwrap_or_else(|e| panic!("{e}"))
}

fn perf(n: [usize; 7]) -> String {
    let names = [
        "running", "degraded", "stopping", "stopped", "silent", "dead", "missing",
    ];
    names
        .iter()
        .zip(n)
        .map(|(k, v)| format!("{k}={v};;;0"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run the check until it gives `code`, at most `secs`; the first line then.
async fn check_until(s: &Scratch, code: i32, secs: u64, extra: &[&str]) -> (String, Duration) {
    let t0 = Instant::now();
    loop {
        let (c, first) = check(s, extra);
        if c == code {
            return (first, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no exit {code} within {secs}s; last: {c} {first}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn running(s: &Scratch, host: &str, inst: &str) {
    let want = format!(
        "DD_ALIVE OK - 1 daemons: 1 running | {}",
        perf([1, 0, 0, 0, 0, 0, 0])
    );
    let (first, _) = check_until(s, 0, 20, &[]).await;
    assert_eq!(first, want, "{host} {inst}");
}

fn kill(r: &Running, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &r.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn sigkill_goes_silent_then_dead_and_a_later_monitor_still_says_dead() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let d = dd_log_daemon(&s, "k1", "1");
    running(&s, &host, "k1").await;
    kill(&d, "-KILL");
    let killed = Instant::now();
    let (first, _) = check_until(&s, 1, 6, &[]).await;
    assert_eq!(
        first,
        format!(
            "DD_ALIVE WARNING - 1 silent of 1 daemons: dd_log/k1 on {host} | {}",
            perf([0, 0, 0, 0, 1, 0, 0])
        )
    );
    let silent_after = killed.elapsed();
    let (first, _) = check_until(&s, 2, 12, &[]).await;
    let dead_after = killed.elapsed();
    assert_eq!(
        first,
        format!(
            "DD_ALIVE CRITICAL - 1 dead of 1 daemons: dd_log/k1 on {host} | {}",
            perf([0, 0, 0, 0, 0, 1, 0])
        )
    );
    // documented: silent after 2x the interval (plus up to one interval since its last alive
    // and one check's run), dead after 5x once asked
    assert!(silent_after < Duration::from_secs(5), "{silent_after:?}");
    assert!(dead_after < Duration::from_secs(9), "{dead_after:?}");
    eprintln!("SIGKILL: silent seen after {silent_after:?}, dead after {dead_after:?}");
    // a monitor started now, after the death, knows it from the stream alone
    let rows = status_json(&s);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "dead");
    assert_eq!(rows[0]["instance"], "k1");
    assert_eq!(rows[0]["result"], Value::Null);
    assert!(
        rows[0]["evidence"]
            .as_str()
            .unwrap()
            .contains("its alive interval of 1s); asked at"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn sigstop_is_silent_and_sigcont_running_again() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    // an alive every 2 s: silent from 4 s to 10 s
    let d = dd_log_daemon(&s, "z1", "2");
    running(&s, &host, "z1").await;
    kill(&d, "-STOP");
    let (first, _) = check_until(&s, 1, 8, &[]).await;
    assert_eq!(
        first,
        format!(
            "DD_ALIVE WARNING - 1 silent of 1 daemons: dd_log/z1 on {host} | {}",
            perf([0, 0, 0, 0, 1, 0, 0])
        )
    );
    kill(&d, "-CONT");
    running(&s, &host, "z1").await;
    let rows = status_json(&s);
    assert_eq!(rows[0]["state"], "running");
    assert_eq!(rows[0]["restarts"], 0, "the same process: no restart");
    d.terminate();
    assert_eq!(d.finish(10).0, 0);
}

#[tokio::test]
async fn sigterm_is_stopped_never_dead() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let d = dd_log_daemon(&s, "t1", "1");
    running(&s, &host, "t1").await;
    d.terminate();
    assert_eq!(d.finish(10).0, 0);
    let want = format!(
        "DD_ALIVE OK - 1 daemons: 1 stopped | {}",
        perf([0, 0, 0, 1, 0, 0, 0])
    );
    // well past 5x its alive interval: still stopped
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(7) {
        assert_eq!(check(&s, &[]), (0, want.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rows = status_json(&s);
    assert_eq!(rows[0]["state"], "stopped");
    assert!(
        rows[0]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("stopped at ")
    );
}

#[tokio::test]
async fn a_declared_daemon_never_started_is_missing() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let dir = tempfile::tempdir().unwrap();
    let declared = dir.path().join("declared.toml");
    std::fs::write(
        &declared,
        "[[daemon]]\ntool = \"dd_log\"\ninstance = \"m1\"\n\n\
         [[daemon]]\ntool = \"dd_speedo\"\ninstance = \"never\"\nhost = \"pump9\"\n",
    )
    .unwrap();
    let d = dd_log_daemon(&s, "m1", "1");
    // without the declared file nothing is amiss
    running(&s, &host, "m1").await;
    let arg = declared.to_str().unwrap();
    let (first, _) = check_until(&s, 2, 20, &["--declared", arg]).await;
    assert_eq!(
        first,
        format!(
            "DD_ALIVE CRITICAL - 1 missing of 2 daemons: dd_speedo/never on pump9 | {}",
            perf([1, 0, 0, 0, 0, 0, 1])
        )
    );
    d.terminate();
    assert_eq!(d.finish(10).0, 0);
}

#[tokio::test]
async fn a_restart_is_seen_as_one_and_the_registry_says_start_and_stop() {
    let conn = connect().await;
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let mut rx = listen(&conn, &s.exchange, &["v01.registry.#"]).await;
    let first = dd_log_daemon(&s, "r1", "1");
    running(&s, &host, "r1").await;
    first.terminate();
    assert_eq!(first.finish(10).0, 0);
    let second = dd_log_daemon(&s, "r1", "1");
    let t0 = Instant::now();
    let rows = loop {
        let rows = status_json(&s);
        if rows.len() == 1 && rows[0]["state"] == "running" && rows[0]["restarts"] == 1 {
            break rows;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rows[0]["pid"], second.child.id());
    second.terminate();
    assert_eq!(second.finish(10).0, 0);
    // start, stop, start, stop: each with the SPEC's fields
    let mut events = Vec::new();
    while events.len() < 4 {
        let (key, body) = next_json(&mut rx, 10).await;
        for k in [
            "tool",
            "instance",
            "host",
            "pid",
            "version",
            "alive_interval",
            "started",
        ] {
            assert!(body.get(k).is_some(), "{key}: no {k} in {body}");
        }
        assert_eq!(body["alive_interval"], 1.0);
        events.push((key, body["pid"].as_u64().unwrap()));
    }
    let keys: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "v01.registry.dd_log.r1.start",
            "v01.registry.dd_log.r1.stop",
            "v01.registry.dd_log.r1.start",
            "v01.registry.dd_log.r1.stop"
        ]
    );
    assert_eq!(events[0].1, events[1].1);
    assert_ne!(events[1].1, events[2].1);
}

/// A check that asks the roster of a monitor that follows it (dd_web) instead of reading the
/// streams: the same verdicts, with the monitor's declared daemons.
#[tokio::test]
async fn the_check_can_ask_dd_webs_roster() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let dir = tempfile::tempdir().unwrap();
    let declared = dir.path().join("declared.toml");
    std::fs::write(
        &declared,
        "[[daemon]]\ntool = \"dd_watchdog\"\ninstance = \"wd\"\n",
    )
    .unwrap();
    let mut web = Command::new(env!("CARGO_BIN_EXE_dd_web"));
    web.env("DD_BROKER", broker_url())
        .env_remove("DD_ROSTER_STREAM")
        .env_remove("RUST_LOG")
        .args(["--listen", "127.0.0.1:0", "--exchange", &s.exchange])
        .args(["--daemon-exchange", &s.exchange, "--instance", "web1"])
        .args([
            "--alive-interval",
            "1",
            "--declared",
            declared.to_str().unwrap(),
        ]);
    let web = Running::spawn(web);
    let d = dd_log_daemon(&s, "f1", "1");
    let ask = ["--from-monitor", "web1"];
    let (first, _) = check_until(&s, 2, 20, &ask).await;
    assert_eq!(
        first,
        format!(
            "DD_ALIVE CRITICAL - 1 missing of 3 daemons: dd_watchdog/wd | {}",
            perf([2, 0, 0, 0, 0, 0, 1])
        ),
        "{host}"
    );
    kill(&d, "-KILL");
    let t0 = Instant::now();
    let want = format!(
        "DD_ALIVE CRITICAL - 1 dead, 1 missing of 3 daemons: dd_log/f1 on {host}, dd_watchdog/wd | {}",
        perf([1, 0, 0, 0, 0, 1, 1])
    );
    loop {
        let (code, first) = check(&s, &ask);
        if first == want {
            assert_eq!(code, 2);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(12), "{code} {first}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // --declared belongs to the monitor then
    let (code, first) = check(&s, &["--from-monitor", "--declared", "x.toml"]);
    assert_eq!(code, 3);
    assert!(
        first.starts_with("DD_ALIVE UNKNOWN - --declared goes with the monitor"),
        "{first}"
    );
    // no such monitor: UNKNOWN within -t
    let out = Command::new(env!("CARGO_BIN_EXE_check_dd_alive"))
        .env("DD_BROKER", broker_url())
        .args([
            "--exchange",
            &s.exchange,
            "--from-monitor",
            "nobody",
            "-t",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!(
            "DD_ALIVE UNKNOWN - no dd_web (nobody) answered within 1 s on exchange \"{}\"",
            s.exchange
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    web.terminate();
    assert_eq!(web.finish(10).0, 0);
}

fn status(s: &Scratch, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dd_status"))
        .env("DD_BROKER", broker_url())
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange])
        .args(extra)
        .output()
        .unwrap()
}

/// Its host's last word (`dd_status --died`, as systemd's ExecStopPost in config/systemd says
/// it) makes a killed daemon dead at once; `--forget` takes it off the roster.
#[tokio::test]
async fn a_hosts_last_word_is_dead_at_once_and_forget_removes_it() {
    let s = Scratch::new();
    let host = ddmon::daemon::host_name();
    let d = dd_log_daemon(&s, "w1", "30");
    running(&s, &host, "w1").await;
    kill(&d, "-KILL");
    let out = status(
        &s,
        &["--died", "dd_log/w1", "--because", "systemd: signal (KILL)"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    // an alive every 30 s: silence alone would take a minute; the word is at once
    let (first, took) = check_until(&s, 2, 5, &[]).await;
    assert_eq!(
        first,
        format!(
            "DD_ALIVE CRITICAL - 1 dead of 1 daemons: dd_log/w1 on {host} | {}",
            perf([0, 0, 0, 0, 0, 1, 0])
        )
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    let rows = status_json(&s);
    assert!(
        rows[0]["evidence"]
            .as_str()
            .unwrap()
            .ends_with(": systemd: signal (KILL)"),
        "{rows:?}"
    );
    let out = status(&s, &["--forget", "dd_log/w1"]);
    assert_eq!(out.status.code(), Some(0));
    let (code, first) = check(&s, &[]);
    assert_eq!(code, 3, "{first}");
    assert!(status_json(&s).is_empty());
    // a word about no TOOL/INSTANCE is a usage error
    let out = status(&s, &["--forget", "nothing"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `dd_status --watch` redraws the roster until interrupted, then exits 0.
#[tokio::test]
async fn dd_status_watch_redraws_until_interrupted() {
    let s = Scratch::new();
    let d = dd_log_daemon(&s, "v1", "1");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_status"));
    c.env("DD_BROKER", broker_url())
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange, "--watch", "0.5"]);
    let w = Running::spawn(c);
    let t0 = Instant::now();
    loop {
        let tables = w
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("dd_log ") && l.contains(" v1 ") && l.contains("running"))
            .count();
        if tables >= 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{:?}",
            w.stdout.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &w.child.id().to_string()])
        .status();
    let (code, out, err) = w.finish(10);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.iter()
            .any(|l| l.ends_with("daemons at ") || l.contains(" daemons at "))
    );
    d.terminate();
    assert_eq!(d.finish(10).0, 0);
}

/// A daemon that fails at start (its queue exists with other arguments) says so on its way
/// out: dead on the roster, with its reason, at once.
#[tokio::test]
async fn a_daemon_failing_at_start_says_its_last_word() {
    let s = Scratch::new();
    let (name, _) = s.dd_log_queue();
    let out = dd_log()
        .args(["--exchange", &s.exchange, "--queue", &name, "-n", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = dd_log()
        .env_remove("DD_ROSTER_STREAM")
        .args([
            "--exchange",
            &s.exchange,
            "--queue",
            &name,
            "--quorum",
            "--service",
        ])
        .args(["--daemon-exchange", &s.exchange, "--instance", "bad1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rows = status_json(&s);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "dead");
    let why = rows[0]["evidence"].as_str().unwrap();
    assert!(
        why.contains(": cannot read exchange") && why.contains("PRECONDITION_FAILED"),
        "{why}"
    );
}
