//! Shared by the integration tests: the real broker, throw-away exchange and queue names that
//! are removed afterwards, publishing, and running the real binaries.
//!
//! The broker is `DD_TEST_BROKER` or the local RabbitMQ (guest). A test that cannot reach it
//! fails with a message saying so; it never passes silently.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod node;
pub mod proxy;

use ddmon::broker::{Outgoing, Publisher};
use ddmon::config::BrokerConfig;
use ddmon::record::Headers;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;

/// The broker the tests use.
pub fn broker_url() -> String {
    std::env::var("DD_TEST_BROKER")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

pub fn broker_config() -> BrokerConfig {
    BrokerConfig {
        url: broker_url(),
        ..BrokerConfig::default()
    }
}

/// A connection, or a loud failure naming the broker and how to start one.
pub async fn connect() -> lapin::Connection {
    match ddmon::broker::raw::connect(&broker_config(), "ddmon-test").await {
        Ok(c) => c,
        Err(e) => panic!(
            "NO BROKER: these tests need RabbitMQ at {} ({e}); run scripts/test, which starts one",
            ddmon::config::mask_url(&broker_url())
        ),
    }
}

/// A connection to the broker at `url` (a sandbox vhost's, a node of a test's own).
pub async fn connect_url(url: &str) -> lapin::Connection {
    let cfg = BrokerConfig {
        url: url.to_string(),
        ..BrokerConfig::default()
    };
    ddmon::broker::raw::connect(&cfg, "ddmon-test")
        .await
        .unwrap()
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}.{:012x}",
        ddmon::broker::random_u64() & 0xffff_ffff_ffff
    )
}

/// Run clean-up to completion on a thread and runtime of its own (a `Drop` may be called
/// inside the test's runtime, where it cannot block).
fn run_detached(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(fut);
    })
    .join();
}

/// Names created by a test, removed when it ends (even when it fails).
pub struct Scratch {
    pub exchange: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Scratch {
    pub fn new() -> Arc<Scratch> {
        let exchange = unique("test.log");
        Arc::new(Scratch {
            exchanges: Mutex::new(vec![exchange.clone()]),
            // the roster stream a daemon on this exchange declares (SPEC §6)
            queues: Mutex::new(vec![
                format!("ddmon.roster.{exchange}"),
                format!("ddmon.roster.{exchange}.alive"),
            ]),
            exchange,
        })
    }

    /// A queue name to remove at the end (dd_log's `--queue NAME` becomes
    /// `q_guest.dd_log.NAME`).
    pub fn dd_log_queue(&self) -> (String, String) {
        let name = unique("t");
        let full = format!("q_guest.dd_log.{name}");
        self.queues.lock().unwrap().push(full.clone());
        (name, full)
    }

    pub fn track_queue(&self, full: &str) {
        self.queues.lock().unwrap().push(full.to_string());
    }

    pub fn track_exchange(&self, name: &str) {
        self.exchanges.lock().unwrap().push(name.to_string());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let queues = self.queues.lock().unwrap().clone();
        let exchanges = self.exchanges.lock().unwrap().clone();
        // Drop may run inside a tokio runtime: clean up on one of its own.
        run_detached(async move {
            let Ok(conn) =
                ddmon::broker::raw::connect(&broker_config(), "ddmon-test-cleanup").await
            else {
                return;
            };
            for q in queues {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for x in exchanges {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch
                        .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "OK".into()).await;
        });
    }
}

/// Messages in a queue and its consumers, from a passive declare; `None` if it does not exist.
pub async fn queue_counts(conn: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.ok()?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, "OK".into()).await;
    Some((q.message_count(), q.consumer_count()))
}

/// Wait until `queue` has `consumers` consumers (a dd_log is subscribed), or panic.
pub async fn wait_for_consumers(conn: &lapin::Connection, queue: &str, consumers: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if queue_counts(conn, queue)
            .await
            .is_some_and(|(_, c)| c == consumers)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} never got {consumers} consumer(s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw message: routing key, headers, body.
pub type RawMessage = (String, Headers, Vec<u8>);

/// Publish raw messages with confirms to the test broker.
pub async fn publish(exchange: &str, msgs: Vec<RawMessage>) {
    publish_on(&broker_url(), exchange, msgs).await
}

/// Publish raw messages with confirms to the broker at `url`.
pub async fn publish_on(url: &str, exchange: &str, msgs: Vec<RawMessage>) {
    let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
    let cfg = BrokerConfig {
        url: url.to_string(),
        ..BrokerConfig::default()
    };
    let mut p = Publisher::connect(&cfg, "ddmon-test-publisher", shutdown)
        .await
        .expect("publisher");
    let out: Vec<Outgoing> = msgs
        .into_iter()
        .map(|(routing_key, headers, body)| Outgoing {
            exchange: exchange.to_string(),
            routing_key,
            headers,
            body,
            ..Outgoing::default()
        })
        .collect();
    p.publish_all(&out).await.expect("publish");
    p.close().await;
}

/// `n` simulated records (seeded, fixed start), as v02 messages.
pub fn sim_records(n: usize, seed: u64) -> Vec<ddmon::record::LogRecord> {
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            seed,
            ..Default::default()
        },
        start,
    );
    (0..n).map_while(|_| pump.next_record()).collect()
}

pub fn v02_messages(records: &[ddmon::record::LogRecord]) -> Vec<(String, Headers, Vec<u8>)> {
    records
        .iter()
        .map(|r| {
            let (k, h, b) = ddmon::record::encode_v02(r);
            (k, h, b.into_bytes())
        })
        .collect()
}

/// The line dd_log prints for a v02 message.
pub fn expected_line(key: &str, headers: &Headers, body: &[u8]) -> String {
    let parsed = ddmon::record::parse(key, headers, body).expect("valid");
    ddmon::record::render_line(key, &parsed).expect("printable")
}

pub fn dd_log() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_log"));
    c.env("DD_BROKER", broker_url()).env_remove("RUST_LOG");
    c
}

/// A running binary whose stdout and stderr are collected by threads.
pub struct Running {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        // dd_watchdog's default journal goes under the test state directory, never $HOME
        if !cmd.get_envs().any(|(k, _)| k == "XDG_STATE_HOME") {
            cmd.env("XDG_STATE_HOME", test_state_dir());
        }
        cmd.env_remove("STATE_DIRECTORY");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (o, e) = (stdout.clone(), stderr.clone());
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let threads = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    match line {
                        Ok(l) => o.lock().unwrap().push(l),
                        Err(_) => break,
                    }
                }
            }),
            // line by line, so that a test failing while the tool still runs shows its log
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    match line {
                        Ok(l) => {
                            let mut s = e.lock().unwrap();
                            s.push_str(&l);
                            s.push('\n');
                        }
                        Err(_) => break,
                    }
                }
            }),
        ];
        Running {
            child,
            stdout,
            stderr,
            threads,
        }
    }

    pub fn lines(&self) -> usize {
        self.stdout.lock().unwrap().len()
    }

    /// Wait until `n` lines were printed, or panic after `secs`.
    pub async fn wait_lines(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.lines() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} lines after {secs}s; stderr: {}",
                self.lines(),
                self.stderr.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for the process to exit (or kill it after `secs` and panic); its exit code, stdout
    /// lines and stderr.
    pub fn finish(mut self, secs: u64) -> (i32, Vec<String>, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {secs}s; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), out, err)
    }

    /// Send SIGTERM.
    /// (A `Running` dropped without `finish`, as when a test fails, kills its process.)
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

/// A private queue on `exchange` bound to `keys`, consumed by the test.
pub async fn listen(conn: &lapin::Connection, exchange: &str, keys: &[&str]) -> lapin::Consumer {
    let ch = conn.create_channel().await.unwrap();
    ddmon::broker::raw::declare_topic_exchange(&ch, exchange)
        .await
        .unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for k in keys {
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            (*k).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.basic_consume(
        q.name().clone(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap()
}

/// The next message on a test listener as (routing key, JSON body), or panic after `secs`.
pub async fn next_json(c: &mut lapin::Consumer, secs: u64) -> (String, Value) {
    let d = tokio::time::timeout(Duration::from_secs(secs), c.next())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap();
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    (
        d.routing_key.to_string(),
        serde_json::from_slice(&d.data).unwrap(),
    )
}

/// Collect every message a test listener receives until it has been quiet for `quiet_ms`.
pub async fn drain(c: &mut lapin::Consumer, quiet_ms: u64) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(quiet_ms), c.next()).await
    {
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        out.push(d);
    }
    out
}

pub fn dd_log2source() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_log2source"));
    c.env("DD_BROKER", broker_url()).env_remove("RUST_LOG");
    c
}

pub const API: &str = "http://127.0.0.1:15672/api";

/// A vhost and users removed at the end, even when the test fails.
pub struct Sandbox {
    pub vhost: String,
    pub users: Vec<String>,
}

impl Sandbox {
    /// A new vhost where guest may do everything; `users` are deleted at the end.
    pub async fn new(vhost: &str, users: Vec<String>) -> Sandbox {
        let api = rabbitmq_http_client::api::Client::new(API, "guest", "guest");
        let sandbox = Sandbox {
            vhost: vhost.to_string(),
            users,
        };
        let params = rabbitmq_http_client::requests::VirtualHostParams::named(&sandbox.vhost);
        if let Err(e) = api.create_vhost(&params).await {
            panic!("NO MANAGEMENT API at {API} ({e}); run scripts/test, which enables it");
        }
        let full =
            rabbitmq_http_client::requests::Permissions::full_access("guest", &sandbox.vhost);
        api.declare_permissions(&full).await.unwrap();
        sandbox
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let (vhost, users) = (self.vhost.clone(), self.users.clone());
        run_detached(async move {
            let api = rabbitmq_http_client::api::Client::new(API, "guest", "guest");
            let _ = api.delete_vhost(&vhost, true).await;
            for u in users {
                let _ = api.delete_user(&u, true).await;
            }
        });
    }
}

pub fn url(user: &str, password: &str, vhost: &str) -> String {
    format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}")
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The tests' Python virtual environments (`scripts/python-venvs`: Sarracenia 2 and 3, the
/// OpenMetrics parser), installed once per target dir; fails loudly without them.
pub fn python_venvs() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/python");
        let st = Command::new(root.join("scripts/python-venvs"))
            .arg(&dir)
            .status()
            .expect("run scripts/python-venvs");
        assert!(
            st.success(),
            "PYTHON TOOLS NOT INSTALLED: scripts/python-venvs failed (python3 with venv and \
             pip, and PyPI, are needed)"
        );
        dir
    })
    .clone()
}

/// Declare sources with `dd_log2source --declare-source` (user with its password, exchange,
/// permissions), as the administrator at `admin`; the password files go in `dir`.
pub fn declare_sources(admin: &str, users: &[(&str, &str)], dir: &std::path::Path) {
    for (user, pw) in users {
        let file = dir.join(user);
        std::fs::write(&file, format!("{pw}\n")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let out = dd_log2source()
            .env("DD_BROKER", admin)
            .args(["--declare-source", user, "--source-password-file"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
}

/// Run `cmd` with `input` on its stdin; its output.
pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Stop a child started in a process group of its own (`process_group(0)`): SIGTERM to the
/// group, SIGKILL after `secs`.
pub fn stop_group(child: &mut Child, secs: u64) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A durable queue `name` bound to `exchange` (declared a durable topic exchange when missing)
/// for `key`: a test's own tap on what an exchange receives.
pub async fn durable_tap(conn: &lapin::Connection, name: &str, exchange: &str, key: &str) {
    let sub = ddmon::broker::Subscription {
        exchange: exchange.into(),
        bindings: vec![key.into()],
        queue: ddmon::broker::QueueSpec {
            name: name.into(),
            durable: true,
            exclusive: false,
            quorum: false,
            dead_letter_exchange: None,
        },
        active_lock: None,
    };
    let ch = ddmon::broker::raw::declare_queue(conn, &sub).await.unwrap();
    let _ = ch.close(200, "tapped".into()).await;
}

/// The daemons a test starts log at their default level, unless `DD_TEST_RUST_LOG` asks for
/// more (e.g. `ddmon=debug,lapin=debug` to follow a reconnection): set as their `RUST_LOG`.
pub fn daemon_log(c: &mut Command) -> &mut Command {
    match std::env::var("DD_TEST_RUST_LOG") {
        Ok(level) => c.env("RUST_LOG", level),
        Err(_) => c.env_remove("RUST_LOG"),
    }
}

/// Where the daemons a test process starts keep their default state
/// (target/test-state/<pid>: never the home directory, nothing from an earlier run).
pub fn test_state_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-state")
        .join(std::process::id().to_string())
}

/// A dd_log daemon (`--service`) on the scratch exchange, with a durable queue of its own,
/// saying alive every `alive` seconds, its roster history kept (the roster tests).
pub fn dd_log_daemon(s: &Scratch, instance: &str, alive: &str) -> Running {
    let (queue, _) = s.dd_log_queue();
    let mut c = dd_log();
    c.env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", &s.exchange, "--queue", &queue, "--service"])
        .args(["--topic", "v02.#", "--daemon-exchange", &s.exchange])
        .args(["--instance", instance, "--alive-interval", alive]);
    Running::spawn(c)
}

/// `dd_status --json` on `exchange`, its roster history read: the rows, or why not.
pub fn roster_rows(exchange: &str) -> Result<Vec<Value>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_dd_status"))
        .env("DD_BROKER", broker_url())
        .env_remove("DD_ROSTER_STREAM")
        .args(["--exchange", exchange, "--wait", "0.5", "--json"])
        .output()
        .unwrap();
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(rows)) => Ok(rows),
        other => Err(format!(
            "{other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// The first answer to the request `key` on `exchange`, within 2 s.
pub async fn ask_first(link: &ddmon::broker::Link, exchange: &str, key: String) -> Option<Value> {
    let q = ddmon::rpc::Question::new(exchange, key, Duration::from_secs(2)).at_most(1);
    ddmon::rpc::ask_raw(link, &q)
        .await
        .ok()
        .and_then(|a| a.into_iter().next())
}

/// dd_log2source's destinations for `sources`: exchanges `<x>.src_<source>` (and
/// `unknown_exchange` for `unknown`), each with a durable queue `<x>.dest.<source>`, removed
/// with the scratch. Returns the queues, `unknown`'s last.
pub async fn route_destinations(
    conn: &lapin::Connection,
    s: &Scratch,
    sources: &[&str],
    unknown_exchange: &str,
) -> Vec<String> {
    let ch = conn.create_channel().await.unwrap();
    let mut dest = Vec::new();
    for src in sources.iter().copied().chain(["unknown"]) {
        let x = if src == "unknown" {
            unknown_exchange.to_string()
        } else {
            format!("{}.src_{src}", s.exchange)
        };
        s.track_exchange(&x);
        ddmon::broker::raw::declare_topic_exchange(&ch, &x)
            .await
            .unwrap();
        let q = format!("{}.dest.{src}", s.exchange);
        durable_tap(conn, &q, &x, "#").await;
        s.track_queue(&q);
        dest.push(q);
    }
    dest
}

/// What the destination queues hold (read to a 2 s pause each): the distinct bodies, the
/// deliveries, and the deliveries to the `unknown` one.
pub async fn read_routed(
    conn: &lapin::Connection,
    dest: &[String],
) -> (std::collections::HashSet<Vec<u8>>, usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let (mut deliveries, mut unknown) = (0, 0);
    for q in dest {
        let ch = conn.create_channel().await.unwrap();
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            deliveries += 1;
            if q.ends_with(".unknown") {
                unknown += 1;
            }
            seen.insert(d.data);
        }
    }
    (seen, deliveries, unknown)
}

/// Declare a durable topic exchange (one the test publishes to or listens on before the
/// daemon that would declare it runs).
pub async fn declare_topic(conn: &lapin::Connection, name: &str) {
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = ch.close(200, "OK".into()).await;
}
