//! The live suite with the real Sarracenia programs (pinned, pip-installed into virtual
//! environments by `scripts/python-venvs`): a local HTTP server serves files, the real
//! `sr_post` / `sr3_post` announce them, the real `sr_subscribe` (2.24) and `sr3 subscribe`
//! (3.3.1) download them, some failing (announced, then absent from what the server serves),
//! and ddmon consumes what they emit. Each program's own log is the truth: dd_log prints one
//! line per report, dd_speedo counts what the program logged, dd_log2source routes by source
//! to `xr_{source}`, and with ddmon's sr3 plugin dd_speedo and dd_watchdog see every transfer
//! (failures, retries and transfers in flight included).
//!
//! Each test runs in a throw-away vhost (removed at the end) with its own HOME, so the
//! programs' configuration, state and queues never outlive it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_lite::StreamExt;
use lapin::options::BasicAckOptions;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python program of the suite, in a process group of its own (sr3 forks), its stdout and
/// stderr in a log file; killed with its group when dropped.
struct Program {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Program {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Program {
        let out = fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Program {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    async fn wait_for(&self, what: &str, secs: u64, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if done(&text) {
                return;
            }
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {secs}s; its log ends:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM to the group, then SIGKILL after 20 s.
    fn stop(&mut self) {
        stop_group(&mut self.child, 20);
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.child.wait();
        }
    }
}

/// The suite's HTTP server on `dir` (files named `*slow*` answer after `slow` seconds).
fn http_server(dir: &Path, slow: f64, log: &Path) -> (Program, u16) {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/sarracenia/http_server.py"))
        .arg(dir)
        .args(["--slow", &slow.to_string()]);
    let server = Program::spawn("http server", cmd, log);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(port) = server.text().lines().find_map(|l| {
            l.strip_prefix("PORT ")
                .map(|p| p.trim().parse::<u16>().unwrap())
        }) {
            return (server, port);
        }
        assert!(
            Instant::now() < deadline,
            "http server did not start: {}",
            server.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run a driver of ddmon's sr3 plugin (`tests/sarracenia/<script>`, on the local broker and
/// `exchange`) with the sr3 venv's python: its stdout and stderr, once it exited 0.
fn plugin_driver(venv: &Path, script: &str, exchange: &str) -> (String, String) {
    let out = Command::new(venv.join("bin/python"))
        .arg(root().join("tests/sarracenia").join(script))
        .arg(root().join("contrib/sarracenia"))
        .arg("5672")
        .arg(exchange)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{script}: {err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// A ddmon binary on the sandbox vhost.
fn ddmon(bin: &str, broker: &str, args: &[&str]) -> Running {
    let path = match bin {
        "dd_log" => env!("CARGO_BIN_EXE_dd_log"),
        "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
        "dd_log2source" => env!("CARGO_BIN_EXE_dd_log2source"),
        "dd_watchdog" => env!("CARGO_BIN_EXE_dd_watchdog"),
        other => panic!("no such tool {other}"),
    };
    let mut c = Command::new(path);
    c.env("DD_BROKER", broker)
        .env_remove("RUST_LOG")
        .env_remove("DD_SPEEDO_STATE")
        .env_remove("DD_WATCHDOG_JOURNAL")
        // the roster's history goes with the sandbox vhost
        .env_remove("DD_ROSTER_STREAM")
        .args(args);
    Running::spawn(c)
}

/// The product files: `name -> bytes`, each of its own size.
fn write_products(dir: &Path, names: &[&str]) -> BTreeMap<String, u64> {
    fs::create_dir_all(dir).unwrap();
    let mut sizes = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let body = format!("{name} {}\n", "x".repeat(37 * (i + 1)));
        fs::write(dir.join(name), &body).unwrap();
        sizes.insert(name.to_string(), body.len() as u64);
    }
    sizes
}

/// The source tree (`<tmp>/src/data`, every product) and the HTTP server on `<tmp>/www`,
/// which serves all but `missing` (announced, then gone): the server, its base URL and the
/// products' sizes.
fn products_and_server(
    tmp: &Path,
    names: &[&str],
    missing: &[&str],
    slow: f64,
) -> (Program, String, BTreeMap<String, u64>) {
    let sizes = write_products(&tmp.join("src/data"), names);
    let www = tmp.join("www/data");
    fs::create_dir_all(&www).unwrap();
    for n in names.iter().filter(|n| !missing.contains(n)) {
        fs::copy(tmp.join("src/data").join(n), www.join(n)).unwrap();
    }
    let (server, port) = http_server(&tmp.join("www"), slow, &tmp.join("http.log"));
    (server, format!("http://127.0.0.1:{port}/"), sizes)
}

/// One dd_log line split into its fields (see src/record/render.rs).
struct Line {
    topic: String,
    status: u16,
    source: String,
    client: String,
    node: String,
    url: String,
    bytes: String,
}

fn split_line(l: &str) -> Line {
    let f: Vec<&str> = l.splitn(11, ' ').collect();
    assert!(f.len() >= 10, "not a dd_log line: {l}");
    Line {
        topic: f[0].to_string(),
        status: f[2].parse().unwrap_or_else(|_| panic!("status in {l}")),
        source: f[3].to_string(),
        client: f[4].to_string(),
        node: f[5].to_string(),
        url: f[7].to_string(),
        bytes: f[8].to_string(),
    }
}

/// Speedo records (body fields) by routing key, until `done` holds or `secs` pass.
async fn speedos_until(
    c: &mut lapin::Consumer,
    secs: u64,
    done: impl Fn(&BTreeMap<String, Vec<u64>>) -> bool,
) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = BTreeMap::new();
    while !done(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "speedos never got there; last: {last:?}");
        if let Ok(Some(Ok(d))) = tokio::time::timeout(left, c.next()).await {
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            let body = String::from_utf8_lossy(&d.data).to_string();
            let nums: Vec<u64> = body
                .split(' ')
                .skip(1)
                .take(4)
                .map(|n| n.parse().unwrap())
                .collect();
            last.insert(d.routing_key.to_string(), nums);
        }
    }
    last
}

fn good_err(s: &BTreeMap<String, Vec<u64>>, key: &str) -> Option<(u64, u64, u64)> {
    s.get(key).map(|v| (v[0], v[1], v[2]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sarracenia2_reports_are_printed_counted_and_routed_as_sr_subscribe_logged_them() {
    let venv = python_venvs().join("sr2");
    // Sarracenia 2 takes the URL's whole path as the vhost: "/ddmon-sr2..." is the vhost
    // named with its leading slash.
    let name = unique("ddmon-sr2");
    let sb = Sandbox::new(&format!("/{name}"), vec![]).await;
    let broker = format!("amqp://guest:guest@127.0.0.1:5672/%2F{name}");
    let sr_broker = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();

    // 10 products announced; file03 and file07 are not served (removed after announcement)
    let names: Vec<String> = (1..=10).map(|i| format!("file{i:02}.txt")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let missing = ["file03.txt", "file07.txt"];
    let (_http, base, sizes) = products_and_server(tmp.path(), &names, &missing, 0.0);

    // ddmon reads the reports where sr_subscribe sends them: xs_guest, v02.report.#
    let conn = connect_url(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ddmon::broker::raw::declare_topic_exchange(&ch, "xs_guest")
        .await
        .unwrap();
    let mut routed = listen(&conn, "xr_guest", &["#"]).await;
    let mut reports = listen(&conn, "xs_guest", &["v02.report.#"]).await;
    let mut speedos = listen(&conn, "log", &["v01.speedo.#"]).await;
    let topic = ["--exchange", "xs_guest", "--topic", "v02.report.#"];
    let log = ddmon(
        "dd_log",
        &broker,
        &[&topic[..], &["--queue", "sr2"]].concat(),
    );
    let speedo = ddmon(
        "dd_speedo",
        &broker,
        &[&topic[..], &["--interval", "1", "--queue", "sr2"]].concat(),
    );
    let route = ddmon(
        "dd_log2source",
        &broker,
        &[
            &topic[..],
            &[
                "--source-exchange-template",
                "xr_{source}",
                "--queue",
                "sr2",
            ],
        ]
        .concat(),
    );
    for q in [
        "q_guest.dd_log.sr2",
        "q_guest.dd_speedo.sr2",
        "q_guest.dd_log2source.sr2",
    ] {
        wait_for_consumers(&conn, q, 1).await;
    }

    // the real subscriber, reports on
    let dl = tmp.path().join("dl");
    fs::create_dir_all(&dl).unwrap();
    let sub_conf = tmp.path().join("sub.conf");
    fs::write(
        &sub_conf,
        format!(
            "broker {sr_broker}\nexchange xs_guest\nsubtopic #\nreport_back True\n\
             directory {}\naccept .*\n",
            dl.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(venv.join("bin/sr_subscribe"));
    cmd.env("HOME", &home).arg("foreground").arg(&sub_conf);
    let mut sub = Program::spawn("sr_subscribe", cmd, &tmp.path().join("sub.log"));
    sub.wait_for("binding to xs_guest", 60, |t| {
        t.contains("reading from to guest@127.0.0.1, exchange: xs_guest")
    })
    .await;

    // the real poster
    let post_conf = tmp.path().join("post.conf");
    fs::write(
        &post_conf,
        format!(
            "post_broker {sr_broker}\npost_exchange xs_guest\npost_base_url {base}\n\
             post_base_dir {}\n",
            tmp.path().join("src").display()
        ),
    )
    .unwrap();
    let out = Command::new(venv.join("bin/sr_post"))
        .env("HOME", &home)
        .arg("-c")
        .arg(&post_conf)
        .arg("-p")
        .args(names.iter().map(|n| tmp.path().join("src/data").join(n)))
        .output()
        .unwrap();
    let post_log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sr_post failed: {post_log}");
    assert_eq!(
        post_log.matches("post_log notice=").count(),
        10,
        "{post_log}"
    );

    // every product downloaded or given up on (3 attempts each, then its retry list)
    sub.wait_for("8 downloads and 2 retry-list entries", 60, |t| {
        t.matches("file_log downloaded to:").count() == 8
            && t.matches("appended to retry list").count() == 2
    })
    .await;
    sub.stop();

    // sr_subscribe's own counts: a 201 per download, a 499 per failed attempt
    let good = sub.count("file_log downloaded to:") as u64;
    let failed_attempts = sub.count("Download failed 3 ") as u64;
    let attempts_of = |f: &str| {
        sub.text()
            .lines()
            .filter(|l| l.contains("Download failed 3 ") && l.contains(f))
            .count()
    };
    assert_eq!(good, 8);
    assert!(failed_attempts >= 6, "3 attempts per missing file");
    let reports_total = (good + failed_attempts) as usize;
    eprintln!(
        "sr_subscribe 2.24.8.post2 logged: {good} downloads, {failed_attempts} failed attempts"
    );

    // the reports as sent
    let sent = drain(&mut reports, 2000).await;
    assert_eq!(
        sent.len(),
        reports_total,
        "one report per download and per failed attempt"
    );

    // dd_log: one line per report, with the right code, URL, size and source
    log.wait_lines(reports_total, 30).await;
    let lines: Vec<String> = log.stdout.lock().unwrap().clone();
    assert_eq!(lines.len(), reports_total);
    let mut per_url: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for l in &lines {
        let f = split_line(l);
        assert_eq!(f.topic, "v02.report.data");
        assert_eq!(
            (f.source.as_str(), f.client.as_str()),
            ("guest", "guest"),
            "{l}"
        );
        assert_eq!(f.node, "localhost", "{l}");
        let file = f
            .url
            .strip_prefix(&format!("{base}data/"))
            .unwrap_or_else(|| panic!("{l}"));
        assert_eq!(f.bytes, sizes[file].to_string(), "{l}");
        per_url.entry(file.to_string()).or_default().push(f.status);
    }
    for n in &names {
        let codes = &per_url[*n];
        if missing.contains(n) {
            assert_eq!(codes.len(), attempts_of(n), "{n}: {codes:?}");
            assert!(codes.iter().all(|&c| c == 499), "{n}: {codes:?}");
        } else {
            assert_eq!(codes, &vec![201], "{n}");
        }
    }

    // dd_speedo: exactly what sr_subscribe logged
    let good_bytes: u64 = names
        .iter()
        .filter(|n| !missing.contains(n))
        .map(|n| sizes[*n])
        .sum();
    let want = (good, failed_attempts, good_bytes);
    let s = speedos_until(&mut speedos, 30, |s| {
        good_err(s, "v01.speedo.client.guest") == Some(want)
            && good_err(s, "v01.speedo.source.guest") == Some(want)
    })
    .await;
    eprintln!(
        "dd_speedo counted: client.guest {:?}, source.guest {:?}",
        s["v01.speedo.client.guest"], s["v01.speedo.source.guest"]
    );

    // dd_log2source: every report, unchanged, in xr_guest
    let got = drain(&mut routed, 2000).await;
    assert_eq!(got.len(), reports_total);
    let mut a: Vec<(String, Vec<u8>)> = sent
        .iter()
        .map(|d| (d.routing_key.to_string(), d.data.clone()))
        .collect();
    let mut b: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|d| (d.routing_key.to_string(), d.data.clone()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);

    for r in [&log, &speedo, &route] {
        r.terminate();
    }
    for r in [log, speedo, route] {
        let (code, _, err) = r.finish(20);
        assert_eq!(code, 0, "{err}");
    }
    drop(sb);
}

/// sr3 3.3.1 with its own `callback report` and ddmon's plugin in the same flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sr3_reports_and_ddmon_plugin_records_match_what_sr3_logged() {
    let venv = python_venvs().join("sr3");
    // sr3 strips the URL path's slashes to get the vhost
    let name = unique("ddmon-sr3");
    let sb = Sandbox::new(&name, vec![]).await;
    let broker = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let cfg = home.join(".config/sr3");
    for d in ["subscribe", "post", "plugins"] {
        fs::create_dir_all(cfg.join(d)).unwrap();
    }
    fs::copy(
        root().join("contrib/sarracenia/ddmon_report.py"),
        cfg.join("plugins/ddmon_report.py"),
    )
    .unwrap();

    // 8 products; g03 and g06 not served; slow01 held back 4 s by the server (in flight)
    let names = [
        "g01.txt",
        "g02.txt",
        "g03.txt",
        "g04.txt",
        "g05.txt",
        "g06.txt",
        "slow01.txt",
    ];
    let missing = ["g03.txt", "g06.txt"];
    let (_http, base, sizes) = products_and_server(tmp.path(), &names, &missing, 4.0);

    let conn = connect_url(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    for x in ["xs_guest", "xs_out", "log"] {
        ddmon::broker::raw::declare_topic_exchange(&ch, x)
            .await
            .unwrap();
    }
    let mut speedos_native = listen(&conn, "speedo_native", &["v01.speedo.#"]).await;
    let mut speedos = listen(&conn, "log", &["v01.speedo.#"]).await;
    // sr3's own reports: on its post exchange, among its posts
    let native_log = ddmon(
        "dd_log",
        &broker,
        &[
            "--exchange",
            "xs_out",
            "--topic",
            "v03.#",
            "--queue",
            "native",
        ],
    );
    let native_speedo = ddmon(
        "dd_speedo",
        &broker,
        &[
            "--exchange",
            "xs_out",
            "--topic",
            "v03.#",
            "--output-exchange",
            "speedo_native",
            "--no-source-copies",
            "--interval",
            "1",
            "--queue",
            "native",
        ],
    );
    // ddmon's plugin: records on log
    let plugin_log = ddmon(
        "dd_log",
        &broker,
        &["--topic", "v03.#", "--queue", "plugin"],
    );
    let speedo = ddmon(
        "dd_speedo",
        &broker,
        &["--interval", "1", "--no-source-copies", "--queue", "plugin"],
    );
    let journal = tmp.path().join("watchdog.journal");
    let watchdog = ddmon(
        "dd_watchdog",
        &broker,
        &["--journal", journal.to_str().unwrap(), "--queue", "plugin"],
    );
    for q in [
        "q_guest.dd_log.native",
        "q_guest.dd_speedo.native",
        "q_guest.dd_log.plugin",
        "q_guest.dd_speedo.plugin",
        "q_guest.dd_watchdog.plugin",
    ] {
        wait_for_consumers(&conn, q, 1).await;
    }

    let dl = tmp.path().join("dl");
    fs::create_dir_all(&dl).unwrap();
    fs::write(
        cfg.join("subscribe/ddmon.conf"),
        format!(
            "broker {broker}\nexchange xs_guest\ntopicPrefix v03\nsubtopic #\n\
             directory {dl}\naccept .*\npost_broker {broker}\npost_exchange xs_out\n\
             post_baseUrl file:{dl}\ncallback report\nhousekeeping 3\n\
             flowCallbackPrepend ddmon_report.Final\nflowCallback ddmon_report.Start\n",
            dl = dl.display()
        ),
    )
    .unwrap();
    fs::write(
        cfg.join("post/ddmon.conf"),
        format!(
            "post_broker {broker}\npost_exchange xs_guest\npost_baseUrl {base}\n\
             post_baseDir {}\npost_topicPrefix v03\n",
            tmp.path().join("src").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(venv.join("bin/sr3"));
    cmd.env("HOME", &home)
        .args(["foreground", "subscribe/ddmon"]);
    let mut sub = Program::spawn("sr3 subscribe", cmd, &tmp.path().join("sub.log"));
    sub.wait_for("its queue bound", 60, |t| {
        t.contains("getSetup binding") && !t.contains("failed connection")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let out = Command::new(venv.join("bin/sr3_post"))
        .env("HOME", &home)
        .args(["-c", "ddmon"])
        .args(names.iter().map(|n| tmp.path().join("src/data").join(n)))
        .output()
        .unwrap();
    let post_log =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sr3_post failed: {post_log}");

    // while slow01 is being downloaded, dd_watchdog has the batch in flight on this host
    let host = Command::new("python3")
        .args(["-c", "import socket; print(socket.getfqdn())"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let slow_url = format!("{base}data/slow01.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let inflight = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
            .env("DD_BROKER", &broker)
            .args(["--query", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let has_slow = v["transfers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["url"] == slow_url.as_str());
            if has_slow {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "slow01 never seen in flight");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let t = inflight["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == slow_url.as_str())
        .unwrap();
    assert_eq!(t["client"], "guest", "{inflight:#}");
    assert_eq!(inflight["nodes"][0]["node"], host.as_str(), "{inflight:#}");

    // everything done, and each missing file failed, was retried and failed again
    sub.wait_for("5 downloads and 2 retries of each missing file", 90, |t| {
        t.matches("downloaded ok:").count() == 5
            && t.matches("gave up downloading for now").count() >= 4
    })
    .await;
    sub.stop();
    // the flow on ddmon's roster (its plugin's registry, status and alive), stopped; its
    // instance starts with the short name of the host the plugin names (the fqdn)
    let short = host.split('.').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_status"))
            .env("DD_BROKER", &broker)
            .env_remove("DD_ROSTER_STREAM")
            .args(["--json", "--wait", "0.5"])
            .output()
            .unwrap();
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let flow = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["tool"] == "sr3");
        if let Some(f) = flow
            && f["state"] == "stopped"
        {
            let inst = f["instance"].as_str().unwrap();
            assert!(
                inst.starts_with(&format!("{short}-subscribe_ddmon_")),
                "{f}"
            );
            assert_eq!(f["host"], host.as_str(), "{f}");
            assert!(
                f["version"].as_str().unwrap().starts_with("ddmon_report/"),
                "{f}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sr3 flow on the roster: {rows:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = sub.text();
    let accepted = text.matches("after_accept accepted:").count() as u64;
    let downloaded = text.matches("downloaded ok:").count() as u64;
    let gave_up = text.matches("gave up downloading for now").count() as u64;
    assert_eq!(
        accepted,
        downloaded + gave_up,
        "every accepted message was worked"
    );
    eprintln!(
        "sr3 3.3.1 logged: {accepted} accepted, {downloaded} downloaded ok, {gave_up} gave up \
         (then retried)"
    );
    let good_bytes: u64 = names
        .iter()
        .filter(|n| !missing.contains(n))
        .map(|n| sizes[*n])
        .sum();

    // sr3's own reports: the downloads only (sr3 3.3.1 never reports a failed download)
    let want = (downloaded, 0, good_bytes);
    let s = speedos_until(&mut speedos_native, 30, |s| {
        good_err(s, "v01.speedo.client.unknown") == Some(want)
    })
    .await;
    eprintln!(
        "dd_speedo on sr3's reports: client.unknown {:?}",
        s["v01.speedo.client.unknown"]
    );
    native_log.wait_lines(downloaded as usize, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = native_log.stdout.lock().unwrap().clone();
    assert_eq!(
        lines.len() as u64,
        downloaded,
        "one line per report, posts skipped"
    );
    for l in &lines {
        let f = split_line(l);
        assert_eq!((f.status, f.source.as_str()), (201, "guest"), "{l}");
        // sr3 reports the downloaded copy's URL
        let file = f
            .url
            .strip_prefix(&format!("file:{}/", dl.display()))
            .unwrap_or_else(|| panic!("{l}"));
        assert_eq!(f.bytes, sizes[file].to_string(), "{l}");
    }

    // the plugin's records: a 102 per accepted message, a final per outcome
    let want = (downloaded, gave_up, good_bytes);
    let s = speedos_until(&mut speedos, 30, |s| {
        good_err(s, "v01.speedo.client.guest") == Some(want)
            && good_err(s, "v01.speedo.source.guest") == Some(want)
    })
    .await;
    eprintln!(
        "dd_speedo on the plugin's records: client.guest {:?}",
        s["v01.speedo.client.guest"]
    );
    let total = (accepted + downloaded + gave_up) as usize;
    plugin_log.wait_lines(total, 30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = plugin_log.stdout.lock().unwrap().clone();
    assert_eq!(lines.len(), total);
    let mut codes: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for l in &lines {
        let f = split_line(l);
        assert_eq!(
            (f.source.as_str(), f.client.as_str(), f.node.as_str()),
            ("guest", "guest", host.as_str()),
            "{l}"
        );
        let file = f
            .url
            .strip_prefix(&format!("{base}data/"))
            .unwrap_or_else(|| panic!("{l}"));
        assert_eq!(f.bytes, sizes[file].to_string(), "{l}");
        codes.entry(file.to_string()).or_default().push(f.status);
    }
    for n in names {
        let c = &codes[n];
        if missing.contains(&n) {
            let tries = c.len() / 2;
            assert!(tries >= 2, "{n}: failed, retried, failed again: {c:?}");
            assert_eq!(c, &[102, 499].repeat(tries), "{n}");
        } else {
            assert_eq!(c, &vec![102, 201], "{n}");
        }
    }

    // dd_watchdog: every transfer that started has ended
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_dd_watchdog"))
            .env("DD_BROKER", &broker)
            .args(["--query", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v["total"].as_u64() == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "still in flight: {v:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    for r in [&native_log, &native_speedo, &plugin_log, &speedo, &watchdog] {
        r.terminate();
    }
    for r in [native_log, native_speedo, plugin_log, speedo, watchdog] {
        let (code, _, err) = r.finish(20);
        assert_eq!(code, 0, "{err}");
    }
    drop(sb);
}

/// ddmon's sr3 plugin while its broker is away (tests/sarracenia/plugin_backlog.py drives the
/// plugin's publisher through a forwarder it refuses, cuts and restarts): what it kept is sent
/// once and in order when the broker answers again, a full backlog drops the oldest and says
/// so, and a dead broker never stalls a flush.
#[tokio::test]
async fn sr3_plugin_keeps_records_while_its_broker_is_away_and_sends_them_in_order() {
    let venv = python_venvs().join("sr3");
    let conn = connect().await;
    let s = Scratch::new();
    let mut rx = listen(&conn, &s.exchange, &["v03.report.#"]).await;
    let (out, err) = plugin_driver(&venv, "plugin_backlog.py", &s.exchange);
    assert_eq!(out, "{\"sent\": 160, \"dropped\": 15}\n");
    // each outage said once, with what is kept; the end of each said too; the drops counted
    assert_eq!(err.matches("cannot publish to").count(), 3, "{err}");
    assert_eq!(err.matches("answers again").count(), 3, "{err}");
    assert!(
        err.contains("broker unreachable and backlog full (10): 1 records dropped"),
        "{err}"
    );
    let got: Vec<String> = drain(&mut rx, 2000)
        .await
        .iter()
        .map(|d| d.routing_key.to_string())
        .collect();
    let want: Vec<String> = (0..100)
        .map(|i| format!("v03.report.a.{i}"))
        .chain((0..50).map(|i| format!("v03.report.b.{i}")))
        .chain((15..25).map(|i| format!("v03.report.c.{i}")))
        .collect();
    assert_eq!(got, want, "every record kept arrives once, in order");
}

/// ddmon's sr3 plugin on ddmon's roster (tests/sarracenia/plugin_roster.py calls its two
/// halves' hooks as sr3 3.3.1's flow loop does, alive interval 1 s): registry start, status
/// running, an alive a second, status stopping, registry stop, and ddmon's roster reads them
/// as one sr3 daemon that stopped.
#[tokio::test]
async fn sr3_plugin_puts_its_flow_on_the_roster_with_start_alive_status_and_stop() {
    let venv = python_venvs().join("sr3");
    let conn = connect().await;
    let s = Scratch::new();
    let mut rx = listen(
        &conn,
        &s.exchange,
        &["v01.alive.#", "v01.status.#", "v01.registry.#"],
    )
    .await;
    let (out, err) = plugin_driver(&venv, "plugin_roster.py", &s.exchange);
    assert_eq!(
        out,
        "{\"instance\": \"node01-subscribe_ddmon.roster#t*_07\", \"alive_interval\": 1.0, \"messages\": \
         [\"registry.start\", \"status.running\", \"alive.running\", \"alive.running\", \
         \"alive.running\", \"status.stopping\", \"registry.stop\"]}\n"
    );
    // the interval said is never less than what sr3's idle loop keeps, and the log says why
    assert!(
        err.contains(
            "alive every 10s, not ddmon_alive_interval 1s: its idle loop passes every 10s"
        ),
        "{err}"
    );
    let got = drain(&mut rx, 2000).await;
    let w = "node01-subscribe_ddmon%2Eroster%23t%2A_07";
    let keys: Vec<String> = got.iter().map(|d| d.routing_key.to_string()).collect();
    let mut want = vec![
        format!("v01.registry.sr3.{w}.start"),
        format!("v01.status.sr3.{w}"),
    ];
    want.extend(std::iter::repeat_n(format!("v01.alive.sr3.{w}"), 3));
    want.extend([
        format!("v01.status.sr3.{w}"),
        format!("v01.registry.sr3.{w}.stop"),
    ]);
    assert_eq!(keys, want);
    let mut roster = ddmon::roster::Roster::new(600.0);
    let mut changes = Vec::new();
    for d in &got {
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let o = ddmon::roster::Observation::from_message(d.routing_key.as_str(), &d.data)
            .unwrap_or_else(|| panic!("{}: {}", d.routing_key, String::from_utf8_lossy(&d.data)));
        assert_eq!(
            (
                o.tool.as_str(),
                o.instance.as_str(),
                o.host.as_str(),
                o.alive_interval
            ),
            (
                "sr3",
                "node01-subscribe_ddmon.roster#t*_07",
                "node01.roster.example",
                1.0
            )
        );
        assert!(o.version.starts_with("ddmon_report/"), "{}", o.version);
        changes.push(roster.observe(&o));
    }
    // one process: new once, then heard (same started and pid: no restart)
    use ddmon::roster::Change;
    assert_eq!(changes[0], Change::New);
    assert!(
        changes[1..].iter().all(|c| *c == Change::Heard),
        "{changes:?}"
    );
    let rows = roster.rows(chrono::Utc::now());
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].restarts, rows[0].alive_interval), (0, 1.0));
    assert_eq!(rows[0].state, ddmon::roster::RosterState::Stopped);
}
