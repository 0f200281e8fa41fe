//! dd_web against the real broker and a real browser (Debian's chromium, headless, driven
//! through chromedriver's WebDriver API), each test in a throw-away vhost: the demo pump
//! (dd_sim) and test publishers feed dd_speedo; the page's dials move and a client that stops
//! turns red; the live tail shows what a pattern selects, as the signed-in broker user, and a
//! source cannot open another source's tail; a tail whose browser went away is closed with
//! its queue; /metrics passes a strict OpenMetrics parser (prometheus_client's).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn tool(bin: &str, broker: &str, args: &[&str]) -> Running {
    let path = match bin {
        "dd_web" => env!("CARGO_BIN_EXE_dd_web"),
        "dd_speedo" => env!("CARGO_BIN_EXE_dd_speedo"),
        "dd_log2source" => env!("CARGO_BIN_EXE_dd_log2source"),
        "dd_sim" => env!("CARGO_BIN_EXE_dd_sim"),
        other => panic!("no such tool {other}"),
    };
    let mut c = Command::new(path);
    c.env("DD_BROKER", broker)
        .env_remove("RUST_LOG")
        .env_remove("DD_SPEEDO_STATE")
        .args(args);
    if !broker.ends_with("/%2f") {
        // in a sandbox vhost the roster's history goes with the vhost: keep it
        c.env_remove("DD_ROSTER_STREAM");
    }
    Running::spawn(c)
}

/// Wait until dd_web answers on `base`.
async fn wait_http(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/api/speedos")).await.is_err() {
        assert!(Instant::now() < deadline, "dd_web never answered on {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records for `client` from `source`, timed now.
fn records(n: usize, seed: u64, client: &str, source: &str) -> Vec<RawMessage> {
    let mut rs = sim_records(n, seed);
    for r in &mut rs {
        r.client = client.to_string();
        r.source = Some(source.to_string());
        r.status = 201;
        r.time = chrono::Utc::now();
    }
    v02_messages(&rs)
}

/// Publish `client`'s records every 200 ms until the returned sender is dropped.
fn publisher(
    url: String,
    client: &'static str,
    source: String,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut seed = 1;
        loop {
            publish_on(&url, "log", records(3, seed, client, &source)).await;
            seed += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut rx => return,
            }
        }
    });
    tx
}

/// A headless chromium driven through chromedriver (W3C WebDriver).
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
}

impl Browser {
    async fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "NO CHROMEDRIVER: the browser test needs Debian's chromium and chromium-driver \
                 (scripts/test installs them)",
            );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1100,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            http,
            base,
            session,
            driver,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r: Value = self
            .http
            .post(format!("{}/session/{}{path}", self.base, self.session))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            r["value"]["error"].is_null(),
            "WebDriver {path}: {}",
            r["value"]
        );
        r["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Run `script` until it returns something truthy (not null/false/empty).
    async fn until(&self, what: &str, secs: u64, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(script).await;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "page: no {what} within {secs}s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sign in through the page's form and wait for the tail form.
    async fn sign_in(&self, user: &str, password: &str) {
        self.js(&format!(
            r#"document.getElementById("login-user").value = {user:?};
               document.getElementById("login-password").value = {password:?};
               document.getElementById("login-button").click(); return true;"#
        ))
        .await;
        self.until(
            "the tail form after sign-in",
            15,
            r#"return !document.getElementById("tail-form").hidden;"#,
        )
        .await;
    }

    /// Start a tail from the page's form.
    async fn start_tail(&self, pattern: &str, source: &str) {
        self.js(&format!(
            r#"document.getElementById("tail-pattern").value = {pattern:?};
               document.getElementById("tail-source").value = {source:?};
               document.getElementById("tail-start").click(); return true;"#
        ))
        .await;
    }

    /// Wait for at least `n` lines in the page's tail; them.
    async fn tail_lines(&self, n: usize) -> Vec<String> {
        let v = self
            .until(
                &format!("{n} tail lines"),
                30,
                &format!(
                    r#"const t = document.getElementById("tail-lines").textContent.trim();
                       const l = t ? t.split("\n") : []; return l.length >= {n} ? l : null;"#
                ),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    }

    async fn screenshot(&self) -> Vec<u8> {
        let r: Value = self
            .http
            .get(format!("{}/session/{}/screenshot", self.base, self.session))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        base64_decode(r["value"].as_str().unwrap())
    }

    /// Close the browser (its connections go with it).
    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Queues in `vhost` whose names start with `prefix` (management API).
async fn queues_like(vhost: &str, prefix: &str) -> Vec<String> {
    let api = rabbitmq_http_client::api::Client::new(API, "guest", "guest");
    api.list_queues_in(vhost)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Parse `/metrics` with prometheus_client's strict OpenMetrics parser; `{family: [samples]}`.
fn openmetrics_parse(text: &str) -> Value {
    let py = python_venvs().join("om/bin/python");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = [[s.name, s.labels, s.value] for s in fam.samples]
print(json.dumps(out))
"#;
    let mut cmd = Command::new(py);
    cmd.args(["-c", script]);
    let out = run_with_stdin(cmd, text.as_bytes());
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample<'a>(m: &'a Value, family: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    m[family]
        .as_array()?
        .iter()
        .find_map(|s| labels.iter().all(|(k, v)| s[1][*k] == *v).then_some(&s[2]))
}

fn artefact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_dials_states_tails_and_metrics() {
    let _ = connect().await;
    let id = unique("web").replace('.', "-");
    let (src_a, src_b) = (format!("{id}-a"), format!("{id}-b"));
    let sb = Sandbox::new(&id, vec![src_a.clone(), src_b.clone()]).await;
    let admin = url("guest", "guest", &sb.vhost);
    let tmp = tempfile::tempdir().unwrap();
    declare_sources(
        &admin,
        &[(src_a.as_str(), "pw-A-1"), (src_b.as_str(), "pw-B-2")],
        tmp.path(),
    );

    // the pump: dd_sim, plus a steady client of source a and one that will stop
    let speedo_cfg = tmp.path().join("speedo.toml");
    std::fs::write(&speedo_cfg, "[thresholds.defaults]\ntd = 4\n").unwrap();
    let speedo = tool(
        "dd_speedo",
        &admin,
        &["--interval", "1", "--config", speedo_cfg.to_str().unwrap()],
    );
    let route = tool("dd_log2source", &admin, &[]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let web = tool("dd_web", &admin, &["--listen", &listen, "--poll", "1"]);
    let base = format!("http://{listen}");
    wait_http(&base).await;
    let conn = connect_url(&admin).await;
    wait_for_consumers(&conn, "q_guest.dd_speedo.log", 1).await;
    wait_for_consumers(&conn, "q_guest.dd_log2source.route", 1).await;
    let sim = tool(
        "dd_sim",
        &admin,
        &[
            "--rate",
            "40",
            "--duration",
            "120",
            "--clients",
            "3",
            "--sources",
            "2",
        ],
    );
    let steady = publisher(admin.clone(), "steady", src_a.clone());
    let quitter = publisher(admin.clone(), "quitter", src_b.clone());

    let browser = Browser::start(&tmp.path().join("chromium")).await;
    browser.goto(&format!("{base}/")).await;
    // every client has a card, with a rate
    browser
        .until(
            "cards with rates for client00, steady and quitter",
            30,
            r#"const c = n => document.querySelector(`.card[data-kind="client"][data-name="${n}"]`);
               return ["client00", "steady", "quitter"].every(n => c(n) && Number(c(n).dataset.rate) > 0);"#,
        )
        .await;
    // the daemons panel: the pump's daemons and dd_web itself, from the roster
    browser
        .until(
            "the daemons panel lists dd_speedo, dd_log2source and dd_web running",
            30,
            r#"const rows = [...document.querySelectorAll('#daemons-rows tr.daemon')];
               const st = t => rows.filter(r => r.dataset.tool === t).map(r => r.dataset.state);
               return ["dd_speedo", "dd_log2source", "dd_web"].every(t => st(t).includes("running"));"#,
        )
        .await;
    // the dials move: client00's needle takes several positions
    let mut positions = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let x = browser
            .js(r#"return document.querySelector('.card[data-name="client00"] .needle').getAttribute("x2");"#)
            .await;
        positions.insert(x.as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(positions.len() >= 3, "the dial did not move: {positions:?}");
    // a client that stops turns red
    drop(quitter);
    let colour = browser
        .until(
            "quitter late and red",
            30,
            r#"const c = document.querySelector('.card[data-name="quitter"]');
               return c.dataset.state === "late" ? c.querySelector(".fill").getAttribute("stroke") : null;"#,
        )
        .await;
    assert_eq!(colour, "#c62828");
    let steady_state = browser
        .js(r#"return document.querySelector('.card[data-name="steady"]').dataset.state;"#)
        .await;
    assert_eq!(steady_state, "ok");

    // the live tail as the admin: only the lines the pattern selects
    browser.sign_in("guest", "guest").await;
    browser.start_tail(" client01 ", "").await;
    for l in browser.tail_lines(10).await {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f[4], "client01", "a line the pattern does not select: {l}");
        assert!(f[0].starts_with("v02.log."), "{l}");
    }
    let shot = browser.screenshot().await;
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(artefact("dd_web.png"), &shot).unwrap();

    // a source: its own tail works, another source's is refused by the broker
    browser
        .js(r#"document.getElementById("tail-stop").click();
               document.getElementById("logout").click(); return true;"#)
        .await;
    browser
        .until(
            "the sign-in form again",
            15,
            r#"return !document.getElementById("login-form").hidden;"#,
        )
        .await;
    browser.sign_in(&src_a, "pw-A-1").await;
    browser.start_tail("", &src_b).await;
    let refused = browser
        .until(
            "the refusal",
            15,
            r#"return document.getElementById("tail-error").textContent;"#,
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(
        refused.contains("refused") && refused.contains("ACCESS_REFUSED"),
        "{refused}"
    );
    assert!(!refused.contains("pw-A-1"));
    browser.start_tail("", &src_a).await;
    let own = browser.tail_lines(3).await;
    // its records, and its speedos (dd_speedo copies them to the source's exchange)
    for l in &own {
        let f: Vec<&str> = l.split(' ').collect();
        if f[0].starts_with("v01.speedo.") {
            assert_eq!(f[0], format!("v01.speedo.source.{src_a}"), "{l}");
        } else {
            assert_eq!(f[3], src_a, "{l}");
        }
    }
    let prefix = format!("q_{src_a}.dd_web.tail.");
    assert_eq!(queues_like(&sb.vhost, &prefix).await.len(), 1);

    // the browser goes away: its tail and queue are gone within 30 s
    let gone = Instant::now();
    browser.quit().await;
    while !queues_like(&sb.vhost, &prefix).await.is_empty() {
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "the tail's queue outlived its browser by 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("tail closed {:?} after the browser went", gone.elapsed());

    // /metrics: strict OpenMetrics, with the states and the daemons
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = openmetrics_parse(&r.text().await.unwrap());
    let late = [("kind", "client"), ("name", "quitter"), ("state", "late")];
    assert_eq!(sample(&m, "ddmon_speedo_state", &late), Some(&json!(1.0)));
    let ok = [("kind", "client"), ("name", "steady"), ("state", "ok")];
    assert_eq!(sample(&m, "ddmon_speedo_state", &ok), Some(&json!(1.0)));
    let good = [("kind", "client"), ("name", "steady"), ("result", "good")];
    assert!(
        sample(&m, "ddmon_speedo_files", &good)
            .unwrap()
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(sample(&m, "ddmon_daemon_healthy", &[("tool", "dd_speedo")]).is_some());
    assert!(sample(&m, "ddmon_daemon_healthy", &[("tool", "dd_log2source")]).is_some());
    let on = [("tool", "dd_speedo"), ("state", "running")];
    assert_eq!(sample(&m, "ddmon_daemon_state", &on), Some(&json!(1.0)));
    let off = [("tool", "dd_speedo"), ("state", "dead")];
    assert_eq!(sample(&m, "ddmon_daemon_state", &off), Some(&json!(0.0)));
    let age = sample(
        &m,
        "ddmon_daemon_alive_age_seconds",
        &[("tool", "dd_log2source")],
    );
    assert!(age.unwrap().as_f64().unwrap() < 60.0, "{age:?}");
    let expired = sample(&m, "ddmon_web_tails", &[("event", "expired")]).unwrap();
    assert!(expired.as_f64().unwrap() >= 1.0, "{expired}");
    let logins = sample(&m, "ddmon_web_logins", &[("result", "accepted")]).unwrap();
    assert_eq!(logins.as_f64(), Some(2.0));

    drop(steady);
    for r in [&sim, &speedo, &route, &web] {
        r.terminate();
    }
    let (code, out, err) = web.finish(20);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "nothing on stdout: {out:?}");
    assert!(
        !err.contains("pw-A-1") && !err.contains("guest:guest"),
        "{err}"
    );
    for r in [sim, speedo, route] {
        let _ = r.finish(20);
    }
}

/// An HTTP client that keeps cookies (one browser's worth).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_are_signed_in_bounded_and_closed_when_the_page_falls_silent() {
    let _ = connect().await;
    let id = unique("webtail").replace('.', "-");
    let sb = Sandbox::new(&id, vec![]).await;
    let admin = url("guest", "guest", &sb.vhost);
    let conn = connect_url(&admin).await;
    let ch = conn.create_channel().await.unwrap();
    ddmon::broker::raw::declare_topic_exchange(&ch, "log")
        .await
        .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let web = tool(
        "dd_web",
        &admin,
        &[
            "--listen",
            &listen,
            "--poll",
            "1",
            "--tail-timeout",
            "6",
            "--max-tails-per-user",
            "2",
            "--tail-buffer",
            "10",
        ],
    );
    let base = format!("http://{listen}");
    wait_http(&base).await;

    // no session, no tail; a wrong password is the broker's refusal, not echoed
    let anon = client();
    let r = anon.get(format!("{base}/tail")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .post(format!("{base}/api/login"))
        .json(&json!({"user": "guest", "password": "not-the-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("refused") && !body.contains("not-the-password"),
        "{body}"
    );

    let c = client();
    let r = c
        .post(format!("{base}/api/login"))
        .json(&json!({"user": "guest", "password": "guest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let me: Value = c
        .get(format!("{base}/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"], "guest");
    let r = c
        .get(format!("{base}/tail?pattern=("))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // two tails at most: the third is refused
    let mut t1 = c.get(format!("{base}/tail")).send().await.unwrap();
    assert_eq!(t1.status(), 200);
    let first = String::from_utf8_lossy(&t1.chunk().await.unwrap().unwrap()).to_string();
    assert!(first.starts_with("event: tail"), "{first}");
    let tail_id: Value =
        serde_json::from_str(first.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    let tail_id = tail_id["id"].as_str().unwrap().to_string();
    // t1's page says it is alive every second; t2's never does
    let pinger = {
        let (c, url) = (c.clone(), format!("{base}/api/tails/{tail_id}/alive"));
        tokio::spawn(async move {
            loop {
                let r = c.post(&url).send().await.unwrap();
                assert_eq!(r.status(), 204, "t1 is alive");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let t2 = c.get(format!("{base}/tail")).send().await.unwrap();
    assert_eq!(t2.status(), 200);
    let t3 = c.get(format!("{base}/tail")).send().await.unwrap();
    assert_eq!(t3.status(), 429);
    assert_eq!(
        queues_like(&sb.vhost, "q_guest.dd_web.tail.").await.len(),
        2
    );

    // a slow reader: t2 is never read while 20,000 records go by; lines are dropped and
    // counted, memory stays bounded by --tail-buffer
    let msgs = v02_messages(&sim_records(20_000, 9));
    publish_on(&admin, "log", msgs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let m = openmetrics_parse(&text);
        let dropped = sample(&m, "ddmon_web_tail_lines", &[("result", "dropped")])
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dropped for the slow reader"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // t2 is closed after --tail-timeout; t1 stays
    let started = Instant::now();
    loop {
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_millis(50), t1.chunk()).await
        {}
        assert!(!pinger.is_finished(), "t1 was closed");
        let left = queues_like(&sb.vhost, "q_guest.dd_web.tail.").await.len();
        if left == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the silent tail was not closed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(t2);
    // someone else cannot keep t1 alive
    let r = anon
        .post(format!("{base}/api/tails/{tail_id}/alive"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // signing out closes the rest
    pinger.abort();
    let r = c.post(format!("{base}/api/logout")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queues_like(&sb.vhost, "q_guest.dd_web.tail.")
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "tails outlived the session");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(t1);
    web.terminate();
    let (code, out, err) = web.finish(20);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty());
    assert!(!err.contains("not-the-password"));
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_web"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("listen"), "{err}");
}

/// At a big pump's size dd_web asks for the worst names alone (issue 18): `--cards` bounds
/// the cards, the summary counts every name, `/api/search` finds any name a page at a time,
/// and `/metrics` has per-name series only for the cards and `--metrics-names`.
#[tokio::test]
async fn cards_are_the_worst_names_search_finds_any_and_metrics_are_bounded() {
    let _ = connect().await;
    let id = unique("webscale").replace('.', "-");
    let sb = Sandbox::new(&id, vec![]).await;
    let admin = url("guest", "guest", &sb.vhost);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("speedo.toml");
    // names late after 3 s without a good delivery
    std::fs::write(&config, "[thresholds.defaults]\ntd = 3\n").unwrap();
    let speedo = tool(
        "dd_speedo",
        &admin,
        &[
            "--interval",
            "1",
            "--instance",
            "sp",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let conn = connect_url(&admin).await;
    wait_for_consumers(&conn, "q_guest.dd_speedo.log", 1).await;
    // 12 clients of source s1 deliver once; 3 of them go on delivering
    let mut msgs = Vec::new();
    for i in 3..12 {
        msgs.extend(records(1, i, &format!("c{i:02}"), "s1"));
    }
    publish_on(&admin, "log", msgs).await;
    let _going_on: Vec<_> = ["c00", "c01", "c02"]
        .into_iter()
        .map(|c| publisher(admin.clone(), c, "s1".to_string()))
        .collect();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let web = tool(
        "dd_web",
        &admin,
        &[
            "--listen",
            &listen,
            "--poll",
            "1",
            "--cards",
            "4",
            "--metrics-names",
            "^c0[01]$",
        ],
    );
    let base = format!("http://{listen}");
    wait_http(&base).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let snap: Value = loop {
        let s: Value = reqwest::get(format!("{base}/api/speedos"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // dd_speedo judges again at its next interval: c00-c02 back to ok
        if s["by_state"]["client"]["ok"] == 3 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 4 cards, all late (9 clients are): the worst first, by name among equals
    let cards: Vec<&str> = snap["clients"]
        .as_array()
        .unwrap()
        .iter()
        .chain(snap["sources"].as_array().unwrap())
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(cards, ["c03", "c04", "c05", "c06"], "{snap}");
    assert_eq!(snap["by_state"]["client"]["late"], 9, "{snap}");
    assert_eq!(snap["by_state"]["client"]["ok"], 3, "{snap}");
    // the search: any name, a page of 50 by name
    let r: Value = reqwest::get(format!("{base}/api/search?q=^c0[0-2]$&kind=client"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let found: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["c00", "c01", "c02"], "{r}");
    assert_eq!(r["items"][0]["state"], "ok");
    let bad = reqwest::get(format!("{base}/api/search?q=("))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // /metrics: the cards' names and the allow-list's, no other
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut named: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("ddmon_speedo_state{"))
        .filter_map(|l| l.split("name=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .map(str::to_string)
        .collect();
    named.sort();
    named.dedup();
    assert_eq!(named, ["c00", "c01", "c03", "c04", "c05", "c06"], "{text}");
    for r in [web, speedo] {
        r.terminate();
        assert_eq!(r.finish(15).0, 0);
    }
}
