//! A three-node RabbitMQ cluster of the test's own on this machine (distinct node names and
//! ports, formed by classic peer discovery): the capture daemon, given the three nodes' URLs,
//! declares its queue as a quorum queue (`--quorum`); one node is stopped mid-stream; the
//! daemon reconnects to a live node and nothing is lost (duplicates are allowed, counted).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::RabbitNode;
use common::*;

/// Three nodes of one cluster (one cookie, classic peer discovery).
struct Cluster {
    nodes: Vec<RabbitNode>,
}

impl Cluster {
    async fn start(dir: &Path) -> Cluster {
        let tag = free_port();
        let names: Vec<String> = (1..=3)
            .map(|i| format!("ddmon-c{i}-{tag}@localhost"))
            .collect();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("DDMONCLUSTER{tag}")).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        let peers: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("cluster_formation.classic_config.nodes.{} = {n}\n", i + 1))
            .collect();
        let conf = format!("cluster_formation.peer_discovery_backend = classic_config\n{peers}");
        let mut nodes: Vec<RabbitNode> = names
            .iter()
            .map(|n| RabbitNode::new(dir, &home, n, &conf))
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        let cluster = Cluster { nodes };
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
        // and every node listens (a node may say it runs before its AMQP listener is up)
        for n in &cluster.nodes {
            while tokio::net::TcpStream::connect(("127.0.0.1", n.port))
                .await
                .is_err()
            {
                assert!(Instant::now() < deadline, "node {} does not listen", n.name);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        cluster
    }

    fn ctl(&self, node: usize, args: &[&str]) -> std::process::Output {
        self.nodes[node].ctl(args)
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
        self.nodes[node].url("%2f")
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
    let conn = ddmon::broker::raw::connect(&cfg, "ddmon-test")
        .await
        .unwrap();
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

/// Groups across the cluster (the hot-standby issue): the active dd_speedo and dd_watchdog on
/// node 1, their standbys on node 2, the groups' queues quorum queues; node 1 stops while the
/// records flow (published through node 3): one member is active again at once, the other
/// stands by, and the counts and the in-flight table are exactly the records'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_active_node_stops_and_the_standby_on_another_node_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let first_on = |i: usize| {
        (0..3)
            .map(|k| format!("{}?heartbeat=2", cluster.url((i + k) % 3)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let member_of = |tool: &str, i: usize| {
        let (bin, queue, instance) = match tool {
            "dd_speedo" => (env!("CARGO_BIN_EXE_dd_speedo"), "grp", "g1"),
            _ => (env!("CARGO_BIN_EXE_dd_watchdog"), "grpw", "w1"),
        };
        let mut c = Command::new(bin);
        // no roster streams here: with them, stopping the node of a stream's leader once held
        // the confirms of the alive and status messages for over 30 s (RabbitMQ 3.10; see the
        // README's "Known")
        c.env("DD_BROKER", first_on(i))
            .env_remove("RUST_LOG")
            .env_remove("DD_SPEEDO_STATE")
            .env_remove("DD_WATCHDOG_JOURNAL")
            .env("DD_ROSTER_STREAM", "none")
            .args(["--queue", queue, "--quorum", "--instance", instance])
            .args(["--alive-interval", "1", "--group"]);
        if tool == "dd_speedo" {
            c.args(["--interval", "1", "--no-source-copies"]);
        }
        Running::spawn(c)
    };
    let member = |i: usize| member_of("dd_speedo", i);
    let active = member(0);
    let cfg = ddmon::config::BrokerConfig {
        url: cluster.url(2),
        ..Default::default()
    };
    // (a node of a cluster just formed may not listen yet)
    let mut backoff = ddmon::broker::Backoff::new(&cfg);
    let (_tx, mut stop) = ddmon::daemon::Shutdown::manual();
    let link = ddmon::broker::Link::open_with_retry(&cfg, "ddmon-test", &mut backoff, &mut stop)
        .await
        .unwrap()
        .unwrap();
    let health = ddmon::rpc::request_key("dd_speedo", Some("g1"), "health");
    let ask = |key: String| ask_first(&link, "log", key);
    let t0 = Instant::now();
    while !ask(health.clone())
        .await
        .is_some_and(|r| r["result"]["pid"] == active.child.id())
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "no active");
    }
    let standby = member(1);
    let watchdog_active = member_of("dd_watchdog", 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watchdog_standby = member_of("dd_watchdog", 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (instance, pid) in [
        ("g1", active.child.id()),
        ("w1", watchdog_active.child.id()),
    ] {
        let tool = if instance == "g1" {
            "dd_speedo"
        } else {
            "dd_watchdog"
        };
        let key = ddmon::rpc::request_key(tool, Some(instance), "health");
        let r = ask(key).await.unwrap();
        assert_eq!(r["result"]["pid"], pid, "{r}");
    }
    // the records flow through node 3 while node 1 stops
    let url3 = cluster.url(2);
    let flow = tokio::spawn(async move {
        let msgs = v02_messages(&sim_records(3000, 3));
        for chunk in msgs.chunks(100) {
            publish_on(&url3, "log", chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    // the whole node stops (its host going down), not only its RabbitMQ application
    let mut cluster = cluster;
    cluster.nodes[0].stop();
    let stopped = Instant::now();
    // Only the node stopped, not the active's process: whichever member takes the lock first
    // is the active (the standby, or the old active reconnecting through another node), the
    // other stands by. An answer on the group's key now comes from a live node.
    let (took, now_active) = loop {
        let pid = ask(health.clone())
            .await
            .and_then(|r| r["result"]["pid"].as_u64());
        if let Some(pid) = pid {
            break (stopped.elapsed(), pid);
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "no active; standby: {}",
            standby.stderr.lock().unwrap()
        );
    };
    let who = if now_active == u64::from(standby.child.id()) {
        "the standby on node 2"
    } else {
        "the old active, through another node"
    };
    eprintln!("cluster: node 1 stopped, {who} active after {took:?}");
    let other = [active.child.id(), standby.child.id()]
        .into_iter()
        .find(|p| u64::from(*p) != now_active)
        .unwrap();
    let short = ddmon::daemon::host_name()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let own = ddmon::rpc::member_instance("g1", &format!("{short}-{other}"));
    let t0 = Instant::now();
    loop {
        let r = ask(ddmon::rpc::request_key("dd_speedo", Some(&own), "health")).await;
        if r.as_ref().is_some_and(|r| r["result"]["role"] == "standby") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{r:?}");
    }
    flow.await.unwrap();
    // The truth, from the records themselves (a plain instance is no reference here: its
    // quorum queue's leader may be on the stopped node, and what it had not acknowledged
    // comes again and is counted again, at-least-once)
    let records = sim_records(3000, 3);
    let mut want = BTreeMap::<&str, u64>::new();
    for r in &records {
        let bytes = r.bytes.unwrap_or(0);
        match r.class() {
            ddmon::topic::StatusClass::Good => {
                *want.entry("good").or_default() += 1;
                *want.entry("good_bytes").or_default() += bytes;
            }
            ddmon::topic::StatusClass::Error => {
                *want.entry("errors").or_default() += 1;
                *want.entry("bad_bytes").or_default() += bytes;
            }
            _ => {}
        }
    }
    let now = chrono::Utc::now();
    let mut table = ddmon::watchdog::Table::new(
        ddmon::watchdog::WatchdogConfig::default().limits(),
        now,
        false,
    );
    for r in &records {
        table.observe(r, now);
    }
    let want_counts = serde_json::to_value(&table.counts).unwrap();
    let stats_of =
        |tool: &str, instance: &str| ddmon::rpc::request_key(tool, Some(instance), "stats");
    let result = |r: Option<serde_json::Value>| r.map(|r| r["result"].clone()).unwrap_or_default();
    let t0 = Instant::now();
    let (g, gw) = loop {
        let g = result(ask(stats_of("dd_speedo", "g1")).await);
        let gw = result(ask(stats_of("dd_watchdog", "w1")).await);
        let counted = |k: &str| g["totals"]["client.all"][k].as_u64().unwrap_or(0);
        let settled = counted("good") + counted("errors") >= want["good"] + want["errors"]
            && gw["counts"]["opened"].as_u64().unwrap_or(0)
                >= want_counts["opened"].as_u64().unwrap_or(0);
        if settled || t0.elapsed() > Duration::from_secs(60) {
            break (g, gw);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (k, v) in &want {
        assert_eq!(g["totals"]["client.all"][*k], *v, "client.all {k}");
    }
    assert_eq!(gw["counts"], want_counts);
    assert_eq!(gw["in_flight"], table.len());
    assert_eq!(
        gw["inflight"]["transfers"].as_array().map(Vec::len),
        Some(table.len())
    );
    eprintln!(
        "cluster: node 1 stopped mid-stream: dd_speedo counted {} / {} (the records), dd_watchdog in flight {} / {}, opened {} / {}",
        g["totals"]["client.all"]["good"].as_u64().unwrap_or(0)
            + g["totals"]["client.all"]["errors"].as_u64().unwrap_or(0),
        want["good"] + want["errors"],
        gw["in_flight"],
        table.len(),
        gw["counts"]["opened"],
        want_counts["opened"]
    );
    link.close("OK").await;
    for m in [active, standby, watchdog_active, watchdog_standby] {
        m.terminate();
        let _ = m.finish(20);
    }
    drop(cluster);
}
