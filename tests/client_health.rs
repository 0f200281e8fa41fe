//! A client judged from both sides (the client-health issue): dd_speedo reads the pump
//! broker's management API (`--management-url`) and judges each client's queues over a window,
//! on a RabbitMQ node of the test's own (management on a free port, statistics every 500 ms).
//! Five clients: a healthy consumer, one that stops acknowledging (`stalled`), one that
//! disconnects while messages keep coming (`stopped`), one that acknowledges at half the
//! inflow (`slow`), and a queue with nothing waiting and no consumer (no alarm). The
//! consumers that acknowledge report each delivery on `log`, as subscribers do: the report
//! side tells the slow one (its backlog grows, its reports go on) from the stalled one. Then the
//! management API down: said once, the report side still judged, the stats say what could
//! not be seen.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::node::RabbitNode;
use common::*;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;

const CLIENTS: [&str; 5] = ["healthy", "stall", "stop", "slow", "quiet"];

fn queue(client: &str) -> String {
    format!("q_{client}.sr_subscribe.x")
}

async fn declare(conn: &lapin::Connection) {
    for x in ["log", "feed"] {
        declare_topic(conn, x).await;
    }
    let ch = conn.create_channel().await.unwrap();
    for c in CLIENTS {
        let q = queue(c);
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        if c != "quiet" {
            ch.queue_bind(
                q.as_str().into(),
                "feed".into(),
                format!("{c}.#").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
    }
}

/// A consumer of `client`'s queue: acks every message after `ack_after` (`None`: never),
/// and reports each one (a good delivery of its own on `log`), as a subscriber does.
fn consume(
    url: String,
    client: &'static str,
    prefetch: u16,
    ack_after: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let conn = connect_url(&url).await;
        let reports = conn.create_channel().await.unwrap();
        let mut record = sim_records(40, 7)
            .into_iter()
            .find(|r| (200..300).contains(&r.status))
            .unwrap();
        record.client = client.into();
        let (key, headers, body) = v02_messages(&[record]).remove(0);
        let props = lapin::BasicProperties::default()
            .with_headers(ddmon::broker::raw::table_from_headers(&headers));
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .unwrap();
        let mut c = ch
            .basic_consume(
                queue(client).as_str().into(),
                format!("test-{client}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        while let Some(Ok(d)) = c.next().await {
            if let Some(wait) = ack_after {
                tokio::time::sleep(wait).await;
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
                let _ = reports
                    .basic_publish(
                        "log".into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props.clone(),
                    )
                    .await;
            }
        }
        drop(conn);
    })
}

async fn stats(url: &str, instance: &str) -> Value {
    let cfg = ddmon::config::BrokerConfig {
        url: url.to_string(),
        ..Default::default()
    };
    let link = ddmon::broker::Link::open(&cfg, "test-client-health")
        .await
        .unwrap();
    let r = ask_first(
        &link,
        "log",
        ddmon::rpc::request_key("dd_speedo", Some(instance), "stats"),
    )
    .await;
    link.close("OK").await;
    r.map(|r| r["result"].clone()).unwrap_or_default()
}

fn speedo(url: &str, instance: &str, management: &str) -> Running {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dd_speedo"));
    daemon_log(&mut c)
        .env("DD_BROKER", url)
        .env_remove("DD_SPEEDO_STATE")
        .args([
            "--instance",
            instance,
            "--interval",
            "1",
            "--no-source-copies",
        ])
        .args(["--management-url", management])
        .args(["--queue-window", "6", "--queue-poll", "1"]);
    Running::spawn(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_stalled_slow_and_healthy_from_the_broker_side() {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = free_port();
    let mut node = RabbitNode::new(
        dir.path(),
        &dir.path().join("home"),
        &format!("ddmon-health-{}@localhost", free_port()),
        &format!("management.tcp.port = {mgmt}\ncollect_statistics_interval = 500\n"),
    );
    node.enable_plugins(&["rabbitmq_management"]);
    node.spawn();
    node.wait_up(120).await;
    let url = node.url("%2f");
    let api = format!("http://127.0.0.1:{mgmt}/api");
    let conn = connect_url(&url).await;
    declare(&conn).await;
    let consumers = vec![
        consume(url.clone(), "healthy", 50, Some(Duration::ZERO)),
        consume(url.clone(), "stall", 10, None),
        consume(url.clone(), "slow", 1, Some(Duration::from_millis(100))),
    ];
    let stopping = consume(url.clone(), "stop", 50, Some(Duration::ZERO));
    // 20 messages a second to each bound queue (the slow one acknowledges 10)
    let feeder = {
        let url = url.clone();
        tokio::spawn(async move {
            let conn = connect_url(&url).await;
            let ch = conn.create_channel().await.unwrap();
            loop {
                for c in ["healthy", "stall", "stop", "slow"] {
                    let _ = ch
                        .basic_publish(
                            "feed".into(),
                            format!("{c}.x").as_str().into(),
                            BasicPublishOptions::default(),
                            b"x",
                            Default::default(),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let instance = "health";
    let sp = speedo(&url, instance, &api);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // the stop client disconnects
    stopping.abort();
    let want = [
        ("healthy", None),
        ("stall", Some("stalled")),
        ("stop", Some("stopped")),
        ("slow", Some("slow")),
        ("quiet", None),
    ];
    let t0 = Instant::now();
    let seen = loop {
        let s = stats(&url, instance).await;
        let state = |c: &str| -> Option<(String, Value)> {
            s["clients"]
                .as_array()?
                .iter()
                .find(|x| x["name"] == c)
                .map(|x| {
                    (
                        x["state"].as_str().unwrap_or("").to_string(),
                        x["queue"].clone(),
                    )
                })
        };
        let got: Vec<(String, Option<(String, Value)>)> =
            CLIENTS.iter().map(|c| (c.to_string(), state(c))).collect();
        let right = want.iter().all(|(c, w)| {
            got.iter().any(|(n, g)| {
                n == c
                    && g.as_ref().is_some_and(|(st, q)| match w {
                        Some(w) => st == w,
                        None => st == "ok" && q["state"].is_null(),
                    })
            })
        });
        if right {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(40), "{got:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client = |c: &str| {
        seen["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == c)
            .unwrap()
            .clone()
    };
    // the speedo record of the client carries its queue's figures
    let mut records = listen(&conn, "log", &["v01.speedo.client.stop"]).await;
    let d = tokio::time::timeout(Duration::from_secs(10), records.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let h = ddmon::broker::raw::headers_of(&d.properties);
    assert!(
        matches!(h.get("backlog"), Some(ddmon::record::HeaderValue::Int(n)) if *n > 0),
        "{h:?}"
    );
    assert_eq!(
        h.get("consumers"),
        Some(&ddmon::record::HeaderValue::Int(0))
    );
    let stop = client("stop");
    let evidence = stop["queue"]["evidence"].as_str().unwrap().to_string();
    assert!(
        evidence.starts_with("q_stop.sr_subscribe.x has ")
            && evidence.contains(" ready, 0 consumers since "),
        "{evidence}"
    );
    assert!(
        stop["reason"].as_str().unwrap().contains(&evidence),
        "{stop}"
    );
    assert_eq!(stop["queue"]["consumers"], 0);
    assert!(stop["queue"]["backlog"].as_u64().unwrap() > 0);
    let stall = client("stall");
    assert_eq!(stall["queue"]["unacked"], 10, "{stall}");
    assert!(
        stall["queue"]["evidence"]
            .as_str()
            .unwrap()
            .contains("nothing acknowledged for 6 s"),
        "{stall}"
    );
    eprintln!(
        "client health: {}",
        CLIENTS
            .iter()
            .map(|c| {
                let x = client(c);
                format!("{c} {} ({})", x["state"], x["queue"]["evidence"])
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    // check_dd_speedo says it: CRITICAL for stopped and stalled
    let out = Command::new(env!("CARGO_BIN_EXE_check_dd_speedo"))
        .env("DD_BROKER", &url)
        .args(["--instance", instance, "--client", "stop"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(
        text.contains("'client.stop.backlog'=") || text.contains("client.stop.backlog="),
        "{text}"
    );
    assert!(
        text.contains(" backlog=") && text.contains(" consumers=0"),
        "{text}"
    );
    sp.terminate();
    assert_eq!(sp.finish(20).0, 0);

    // the management API down: said once, the reports still judged
    let down = format!("http://127.0.0.1:{}/api", free_port());
    let sp = speedo(&url, "health2", &down);
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish_on(&url, "log", v02_messages(&sim_records(50, 5))).await;
    let t0 = Instant::now();
    let s = loop {
        let s = stats(&url, "health2").await;
        if s["counters"]["counted"].as_u64().unwrap_or(0) > 0
            && s["counters"]["queues"]["unseen"][&down].is_string()
        {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(s["counters"]["queues"]["polls"], 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sp.terminate();
    let (code, _, err) = sp.finish(20);
    assert_eq!(code, 0);
    assert_eq!(
        err.matches("cannot read the clients' queues").count(),
        1,
        "said once: {err}"
    );
    for c in consumers {
        c.abort();
    }
    feeder.abort();
    drop(node);
}
