//! dd_log against the real broker: exact output, filters, formats, the durable queue, daily
//! files, a closed pipe, bad input, refusals and a lost connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use ddmon::record::{HeaderValue, Headers};

fn spec_message() -> (String, Headers, Vec<u8>) {
    let headers: Headers = [
        ("source", "ec_cmc"),
        ("from_cluster", "ddsr.cmc"),
        ("flow", "exp13"),
        ("parts", "1,457,1,0,0"),
        ("message", "Downloaded"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), HeaderValue::Str(v.to_string())))
    .collect();
    (
        "v02.log.NRDPS.GIF.NRDPS_HiRes_000.gif".to_string(),
        headers,
        b"20150601135800.345 sftp://afsiext@cmcdataserver/data/NRPDS/outputs/ NRDPS/GIF/NRDPS_HiRes_000.gif 201 ddsr1.cmc.ec.gc.ca ssc_ddsr 0.1".to_vec(),
    )
}

/// Run dd_log to completion on the durable queue `name` bound to `exchange`.
fn read_queue(exchange: &str, name: &str, args: &[&str]) -> std::process::Output {
    dd_log()
        .args(["--exchange", exchange, "--queue", name])
        .args(args)
        .output()
        .unwrap()
}

/// Run dd_log on a fresh durable queue bound to the scratch exchange, `-n 0` so that it only
/// declares the queue and exits: messages published afterwards wait there.
fn prepare_queue(s: &Scratch, extra: &[&str]) -> (String, String) {
    let (name, full) = s.dd_log_queue();
    let out = read_queue(&s.exchange, &name, &[&["-n", "0"], extra].concat());
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (name, full)
}

#[tokio::test]
async fn prints_exact_lines_topic_first() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = prepare_queue(&s, &[]);
    let spec = spec_message();
    let speedo = (
        "v01.speedo.client.all".to_string(),
        Headers::new(),
        b"20261122051300 10 1 2048 10 512 3 60".to_vec(),
    );
    publish(&s.exchange, vec![spec.clone(), speedo]).await;
    let out = read_queue(&s.exchange, &name, &["-n", "2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "v02.log.NRDPS.GIF.NRDPS_HiRes_000.gif 2015-06-01T13:58:00.345Z 201 ec_cmc ssc_ddsr \
         ddsr1.cmc.ec.gc.ca exp13 \
         sftp://afsiext@cmcdataserver/data/NRPDS/outputs/NRDPS/GIF/NRDPS_HiRes_000.gif 457 0.1 \
         Downloaded\n\
         v01.speedo.client.all 20261122051300 10 1 2048 10 512 3 60\n"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(queue_counts(&conn, &full).await, Some((0, 0)));
}

#[tokio::test]
async fn patterns_exclude_topics_and_json() {
    let s = Scratch::new();
    let records = sim_records(200, 7);
    let msgs = v02_messages(&records);
    let lines: Vec<String> = msgs
        .iter()
        .map(|(k, h, b)| expected_line(k, h, b))
        .collect();
    // any of two patterns, minus an exclusion
    let want: Vec<&String> = lines
        .iter()
        .filter(|l| (l.contains(" client01 ") || l.contains(" 404 ")) && !l.contains(" 102 "))
        .collect();
    assert!(want.len() > 5);
    let (name, _) = prepare_queue(&s, &[]);
    publish(&s.exchange, msgs.clone()).await;
    let n = want.len().to_string();
    let filters = ["-n", &n, " client01 ", " 404 ", "--exclude", " 102 "];
    let out = read_queue(&s.exchange, &name, &filters);
    assert_eq!(out.status.code(), Some(0));
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), want);

    // --topic narrows the binding; --format json gives one object per line
    let s2 = Scratch::new();
    let topics = [
        "--topic",
        "v02.log.source01.#",
        "--topic",
        "v02.log.source02.radar.#",
    ];
    let (name2, _) = prepare_queue(&s2, &topics);
    let want_keys: Vec<&String> = msgs
        .iter()
        .map(|(k, _, _)| k)
        .filter(|k| k.starts_with("v02.log.source01.") || k.starts_with("v02.log.source02.radar."))
        .collect();
    publish(&s2.exchange, msgs.clone()).await;
    let out = dd_log()
        .args([
            "--exchange",
            &s2.exchange,
            "--queue",
            &name2,
            "--format",
            "json",
        ])
        .args(["-n", &want_keys.len().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let got: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want_keys.len());
    for (v, k) in got.iter().zip(&want_keys) {
        assert_eq!(&v["topic"], *k);
        assert!(v["status"].is_u64() && v["url"].as_str().unwrap().starts_with("https://"));
    }
}

#[tokio::test]
async fn durable_queue_loses_nothing_while_down() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = prepare_queue(&s, &[]);
    // dd_log is not running: publish 1,000 records
    let records = sim_records(1000, 11);
    publish(&s.exchange, v02_messages(&records)).await;
    assert_eq!(queue_counts(&conn, &full).await, Some((1000, 0)));
    let out = read_queue(&s.exchange, &name, &["-n", "1000"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = text.lines().collect();
    let want: Vec<String> = v02_messages(&records)
        .iter()
        .map(|(k, h, b)| expected_line(k, h, b))
        .collect();
    // all 1,000, once each, in order
    assert_eq!(got, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(queue_counts(&conn, &full).await, Some((0, 0)));
}

#[tokio::test]
async fn daily_files_are_appended() {
    let s = Scratch::new();
    let dir = tempfile::tempdir().unwrap();
    let (name, _) = prepare_queue(&s, &[]);
    let msgs = v02_messages(&sim_records(20, 3));
    publish(&s.exchange, msgs.clone()).await;
    for _ in 0..2 {
        let out = dd_log()
            .args([
                "--exchange",
                &s.exchange,
                "--queue",
                &name,
                "-n",
                "10",
                "--output",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty(), "--output writes nothing on stdout");
    }
    let today = chrono::Utc::now().format("%Y%m%d").to_string();
    let text = std::fs::read_to_string(dir.path().join(format!("{today}.log"))).unwrap();
    let want: String = msgs
        .iter()
        .map(|(k, h, b)| expected_line(k, h, b) + "\n")
        .collect();
    assert_eq!(text, want);
}

/// `set -o pipefail; dd_log --exchange X --queue NAME | head -1` under bash, waited for at
/// most 15 s (a hang check, not a timing: it exits at once or never did); its output.
async fn dd_log_into_head(exchange: &str, name: &str) -> std::process::Output {
    let script = format!(
        "set -o pipefail; {} --exchange {exchange} --queue {name} | head -1",
        env!("CARGO_BIN_EXE_dd_log"),
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .env("DD_BROKER", broker_url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dd_log | head -1 did not exit after head closed the pipe");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn closed_pipe_exits_zero_quietly_and_loses_nothing() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = prepare_queue(&s, &[]);
    publish(&s.exchange, v02_messages(&sim_records(3000, 5))).await;
    let out = dd_log_into_head(&s.exchange, &name).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
    // Acknowledged: only what the pipe accepted before head closed it (at most its 64 KiB
    // buffer, about 300 lines, and a last batch); everything else is still in the queue.
    let (left, _) = queue_counts(&conn, &full).await.unwrap();
    assert!((2600..3000).contains(&left), "{left} left in the queue");
}

/// The case exactly: a queue holding 20 records, then `dd_log --queue Q | head -1`
/// and silence. Every line fits in the pipe, so no write ever fails: dd_log must notice the
/// closed stdout while idle (it waited forever before), exit 0, and leave unprinted records
/// to the queue.
#[tokio::test]
async fn closed_pipe_while_idle_exits_zero() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = prepare_queue(&s, &[]);
    publish(&s.exchange, v02_messages(&sim_records(20, 9))).await;
    let out = dd_log_into_head(&s.exchange, &name).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
    // what dd_log printed into the pipe was acknowledged; nothing more was lost
    let (left, unacked) = queue_counts(&conn, &full).await.unwrap();
    assert_eq!(unacked, 0);
    assert!(left < 20, "{left} left in the queue");
}

#[tokio::test]
async fn bad_input_is_counted_rejected_and_skipped() {
    let conn = connect().await;
    let s = Scratch::new();
    // malformed messages are dead-lettered to an exchange whose queue we count
    let dlx = unique("test.dlx");
    s.track_exchange(&dlx);
    let (dead_name, dead_full) = s.dd_log_queue();
    let out = read_queue(&dlx, &dead_name, &["-n", "0"]);
    assert!(out.status.success());
    let (name, _) = prepare_queue(&s, &["--dead-letter-exchange", &dlx]);

    let (key, headers, body) = spec_message();
    let text = String::from_utf8(body.clone()).unwrap();
    let mut bad_parts = headers.clone();
    bad_parts.insert("parts".into(), HeaderValue::Str("1,nonsense".into()));
    let bad: Vec<(String, Headers, Vec<u8>)> = vec![
        (key.clone(), headers.clone(), Vec::new()), // empty
        (
            key.clone(),
            headers.clone(),
            vec![0, 159, 146, 150, 0xff, 0x01],
        ), // binary
        (
            key.clone(),
            headers.clone(),
            b"20150601135800 caf\xc3\x28 x".to_vec(),
        ), // bad UTF-8
        (key.clone(), headers.clone(), vec![b'x'; 10 << 20]), // 10 MiB
        (key.clone(), bad_parts, body.clone()),     // bad header
        (
            key.clone(),
            headers.clone(),
            b"20150601135800.345 a b 201".to_vec(),
        ), // field count
        (
            key.clone(),
            headers.clone(),
            text.replace(" 201 ", " abc ").into_bytes(),
        ), // code
        (
            key.clone(),
            headers.clone(),
            text.replace("20150601135800.345", "yesterday").into_bytes(),
        ), // date
        (
            "v03.post.x".to_string(),
            Headers::new(),
            b"{\"report\": {\"code\": 201,".to_vec(),
        ), // v03 JSON
    ];
    let mut msgs = Vec::new();
    for b in &bad {
        msgs.push(b.clone());
        msgs.push((key.clone(), headers.clone(), body.clone()));
    }
    publish(&s.exchange, msgs).await;
    let out = dd_log()
        .args([
            "--exchange",
            &s.exchange,
            "--queue",
            &name,
            "-n",
            &bad.len().to_string(),
        ])
        .args(["--dead-letter-exchange", &dlx])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = expected_line(&key, &headers, &body) + "\n";
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        good.repeat(bad.len())
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    for kind in [
        "kind=\"empty\"",
        "kind=\"not_utf8\"",
        "kind=\"too_large\"",
        "kind=\"bad_header\"",
        "kind=\"field_count\"",
        "kind=\"bad_status\"",
        "kind=\"bad_date\"",
        "kind=\"json\"",
    ] {
        assert!(stderr.contains(kind), "no warning for {kind}: {stderr}");
    }
    assert!(stderr.lines().all(|l| l.contains("WARN")), "{stderr}");
    // not_utf8 happened twice within a second: logged once
    assert_eq!(stderr.matches("kind=\"not_utf8\"").count(), 1, "{stderr}");
    // every malformed message reached the dead-letter exchange
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (n, _) = queue_counts(&conn, &dead_full).await.unwrap();
        if n == bad.len() as u32 || std::time::Instant::now() > deadline {
            assert_eq!(n, bad.len() as u32);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_login_fails_fast_without_the_password() {
    let _ = connect().await;
    let url = broker_url().replace("guest:guest@", "guest:wrong-Secret-123@");
    let out = dd_log().env("DD_BROKER", &url).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    assert!(!err.contains("wrong-Secret-123"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn print_config_masks_the_password_and_unknown_keys_are_named() {
    let out = dd_log()
        .args([
            "--print-config",
            "--broker",
            "amqp://admin:Sup3rSecret@h:5672/%2f",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("Sup3rSecret") && text.contains("admin:****@h"),
        "{text}"
    );
    assert!(text.contains("format = \"json\""), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "exchange = \"log\"\nexchnage = \"typo\"\n").unwrap();
    let out = dd_log().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("exchnage") && err.contains("bad.toml"),
        "{err}"
    );
}

#[tokio::test]
async fn tail_survives_a_lost_connection() {
    let conn = connect().await;
    let s = Scratch::new();
    let (name, full) = prepare_queue(&s, &[]);
    let run = Running::spawn({
        let mut c = dd_log();
        c.args(["--exchange", &s.exchange, "--queue", &name]);
        c
    });
    wait_for_consumers(&conn, &full, 1).await;
    let msgs = v02_messages(&sim_records(20, 9));
    publish(&s.exchange, msgs[..10].to_vec()).await;
    run.wait_lines(10, 10).await;
    // cut dd_log's connection from the broker side
    close_connections_named(&full);
    publish(&s.exchange, msgs[10..].to_vec()).await;
    run.wait_lines(20, 20).await;
    run.terminate();
    let (code, lines, err) = run.finish(10);
    assert_eq!(code, 0, "{err}");
    let want: Vec<String> = msgs
        .iter()
        .map(|(k, h, b)| expected_line(k, h, b))
        .collect();
    assert_eq!(lines, want);
    assert!(err.contains("reconnecting"), "{err}");
}

/// Close, from the broker side, every connection whose name contains `needle`.
fn close_connections_named(needle: &str) {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!pids.is_empty(), "no connection named {needle}: {text}");
    for pid in pids {
        let st = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: cut"])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}
