//! A three-node RabbitMQ cluster of the test's own on this machine (distinct node names and
//! ports, formed by classic peer discovery): the capture daemon, given the three nodes' URLs,
//! declares its queue as a quorum queue (`--quorum`); one node is stopped mid-stream; the
//! daemon reconnects to a live node and nothing is lost (duplicates are allowed, counted).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

struct Node {
    name: String,
    port: u16,
    child: Child,
}

struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(dir: &Path) -> Cluster {
        assert!(
            Path::new(SERVER).exists(),
            "NO RABBITMQ SERVER at {SERVER}: scripts/broker-up installs it"
        );
        let tag = free_port();
        let names: Vec<String> = (1..=3)
            .map(|i| format!("ddmon-c{i}-{tag}@localhost"))
            .collect();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        // one cookie for the three nodes and rabbitmqctl
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("DDMONCLUSTER{tag}")).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let peers: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for name in &names {
            let (port, dist) = (free_port(), free_port());
            let nd = dir.join(name.split('@').next().unwrap());
            for sub in ["mnesia", "log"] {
                std::fs::create_dir_all(nd.join(sub)).unwrap();
            }
            std::fs::write(
                nd.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = {port}\n\
                     cluster_formation.peer_discovery_backend = classic_config\n{peers}"
                ),
            )
            .unwrap();
            std::fs::write(nd.join("enabled_plugins"), "[].\n").unwrap();
            let child = Command::new(SERVER)
                .current_dir(&nd)
                .env("HOME", &home)
                .env("RABBITMQ_NODENAME", name)
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("RABBITMQ_CONFIG_FILE", nd.join("rabbitmq.conf"))
                .env("RABBITMQ_MNESIA_BASE", nd.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", nd.join("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", nd.join("enabled_plugins"))
                .env("RABBITMQ_PID_FILE", nd.join("pid"))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(nd.join("out")).unwrap())
                .stderr(std::fs::File::create(nd.join("err")).unwrap())
                .process_group(0)
                .spawn()
                .unwrap();
            nodes.push(Node {
                name: name.clone(),
                port,
                child,
            });
        }
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            nodes,
        };
        // every node answers, and sees the three running
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let running = cluster.running_nodes(0);
            if running == 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form ({running} running); see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        cluster
    }

    fn ctl(&self, node: usize, args: &[&str]) -> std::process::Output {
        Command::new(CTL)
            .env("HOME", self.dir.join("home"))
            .args(["-n", &self.nodes[node].name])
            .args(args)
            .output()
            .unwrap()
    }

    /// How many nodes `node` sees running (0 when it does not answer).
    fn running_nodes(&self, node: usize) -> usize {
        let out = self.ctl(node, &["cluster_status", "--formatter", "json"]);
        if !out.status.success() {
            return 0;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["running_nodes"].as_array().map_or(0, Vec::len)
    }

    fn url(&self, node: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[node].port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            stop_group(&mut n.child, 30);
        }
    }
}

fn captured(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_mid_stream_and_the_quorum_capture_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let all = (0..3).map(|i| cluster.url(i)).collect::<Vec<_>>().join(",");

    // the capture daemon, on node 1 first, its queue a quorum queue
    let out_dir = dir.path().join("capture");
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_log"));
    c.env("DD_BROKER", &all).env_remove("RUST_LOG").args([
        "--service",
        "--queue",
        "cap",
        "--quorum",
        "--topic",
        "v02.#",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    let capture = Running::spawn(c);
    let cfg = ddmon::config::BrokerConfig {
        url: cluster.url(1),
        ..Default::default()
    };
    let conn = ddmon::broker::connect(&cfg, "ddmon-test").await.unwrap();
    wait_for_consumers(&conn, "q_guest.dd_log.cap", 1).await;
    let types = cluster.ctl(1, &["list_queues", "name", "type", "--formatter", "json"]);
    let types: serde_json::Value = serde_json::from_slice(&types.stdout).unwrap();
    let cap = types
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "q_guest.dd_log.cap")
        .unwrap();
    assert_eq!(cap["type"], "quorum", "{types}");

    // 3,000 records through node 2, in 30 batches; node 1 stops after the 8th
    let records = sim_records(3_000, 17);
    let msgs = v02_messages(&records);
    let want: BTreeMap<String, usize> = msgs
        .iter()
        .map(|(k, h, b)| (expected_line(k, h, b), 1))
        .collect();
    let mut batches = msgs.chunks(100);
    for _ in 0..8 {
        publish_on(&cluster.url(1), "log", batches.next().unwrap().to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cluster.ctl(0, &["stop_app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped_at = Instant::now();
    for b in batches {
        publish_on(&cluster.url(1), "log", b.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // everything arrives, once or more
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = captured(&out_dir);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for l in &got {
            // a captured line is dd_log's line format: the same text as expected_line
            *seen.entry(l.clone()).or_default() += 1;
        }
        if want.keys().all(|k| seen.contains_key(k)) {
            let duplicates = got.len() - want.len();
            eprintln!(
                "cluster: node 1 stopped mid-stream; {} records published, {} captured, 0 lost, \
                 {duplicates} duplicates; all in {:?} after the stop",
                want.len(),
                got.len(),
                stopped_at.elapsed()
            );
            assert!(
                seen.keys().all(|k| want.contains_key(k)),
                "a line never published"
            );
            break;
        }
        let lost = want.keys().filter(|k| !seen.contains_key(*k)).count();
        assert!(
            Instant::now() < deadline,
            "{lost} of {} records never captured; dd_log: {}",
            want.len(),
            capture.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    capture.terminate();
    let (code, _, err) = capture.finish(30);
    assert_eq!(code, 0, "{err}");
    drop(cluster);
}
