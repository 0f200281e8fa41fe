//! End-to-end routing: how fast records published to the input exchange land in their
//! sources' exchanges, for a tuned lapin relay (the baseline, as a careful engineer writes
//! it: prefetch 1000, republish pipelined with a window of confirms, one `multiple` ack per
//! 100 deliveries once their confirms are in), dd_log2source in copy mode, and in bind mode,
//! all in the same run. The publisher runs flat out with confirms; the clock stops when
//! the last record is counted in the destination queues.
//!
//! `cargo bench --bench e2e_route` (or `scripts/bench`); `ROUTE_RECORDS` (default 200000) and
//! `ROUTE_RUNS` (default 3) tune it. Needs the broker.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{env_num, median};
use ddmon::broker::{Outgoing, Publisher};
use ddmon::config::BrokerConfig;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

const SOURCES: [&str; 3] = ["source00", "source01", "source02"];

/// Destination queues, one per source exchange; returns their names.
async fn destinations(conn: &lapin::Connection, prefix: &str) -> Vec<String> {
    let ch = conn.create_channel().await.unwrap();
    let mut names = Vec::new();
    for s in SOURCES {
        let x = format!("{prefix}.src_{s}");
        ddmon::broker::raw::declare_topic_exchange(&ch, &x)
            .await
            .unwrap();
        let q = format!("{prefix}.dest.{s}");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        names.push(q);
    }
    names
}

async fn landed(conn: &lapin::Connection, queues: &[String]) -> usize {
    let ch = conn.create_channel().await.unwrap();
    let mut n = 0;
    for q in queues {
        let d = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        n += d.message_count() as usize;
    }
    let _ = ch.close(200, "OK".into()).await;
    n
}

/// The baseline relay: consume, republish pipelined, and once the confirms of 100 deliveries
/// are in, ack them with one `multiple` ack (the confirm window is the prefetch).
async fn relay(cfg: BrokerConfig, input: String, prefix: String, queue: String) {
    let conn = ddmon::broker::raw::connect(&cfg, "bench-relay")
        .await
        .unwrap();
    let inch = conn.create_channel().await.unwrap();
    inch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for t in ["v02.#", "v03.#"] {
        inch.queue_bind(
            queue.as_str().into(),
            input.as_str().into(),
            t.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    inch.basic_qos(common::baseline_prefetch(), BasicQosOptions::default())
        .await
        .unwrap();
    let out = conn.create_channel().await.unwrap();
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = inch
        .basic_consume(
            queue.as_str().into(),
            "relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let every = common::ack_every();
    let mut window = Vec::with_capacity(every);
    while let Some(Ok(d)) = consumer.next().await {
        let source = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("source").cloned())
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "unknown".into());
        let confirm = out
            .basic_publish(
                format!("{prefix}.src_{source}").as_str().into(),
                d.routing_key.clone(),
                BasicPublishOptions::default(),
                &d.data,
                d.properties.clone(),
            )
            .await
            .unwrap();
        window.push(confirm);
        if window.len() == every {
            // ack only what the broker confirmed: every earlier delivery, in one frame
            for c in window.drain(..) {
                assert!(c.await.unwrap().is_ack(), "the broker refused a message");
            }
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
}

fn router(prefix: &str, queue: &str, mode: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dd_log2source"))
        .args(["--exchange", prefix, "--queue", queue, "--mode", mode, "-q"])
        .args([
            "--source-exchange-template",
            &format!("{prefix}.src_{{source}}"),
        ])
        .args(["--unknown-exchange", &format!("{prefix}.unknown")])
        .args(["--daemon-exchange", prefix])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// One run of one mode: records per second from first publish to last landed.
fn run_once(rt: &tokio::runtime::Runtime, mode: &str, n: usize) -> f64 {
    let cfg = BrokerConfig::default();
    let prefix = format!("bench.route.{:08x}", ddmon::broker::random_u64() as u32);
    let queue = format!("b{:08x}", ddmon::broker::random_u64() as u32);
    let conn = rt
        .block_on(ddmon::broker::raw::connect(&cfg, "bench-route"))
        .unwrap();
    let dest = rt.block_on(destinations(&conn, &prefix));
    rt.block_on(async {
        let ch = conn.create_channel().await.unwrap();
        ddmon::broker::raw::declare_topic_exchange(&ch, &prefix)
            .await
            .unwrap();
    });
    let mut child = None;
    let relay_task = if mode == "baseline" {
        Some(rt.spawn(relay(
            cfg.clone(),
            prefix.clone(),
            prefix.clone(),
            format!("{prefix}.relay"),
        )))
    } else {
        child = Some(router(&prefix, &queue, mode));
        None
    };
    std::thread::sleep(Duration::from_millis(1500)); // subscribed and set up
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            sources: 3,
            ..Default::default()
        },
        start,
    );
    let msgs: Vec<Outgoing> = (0..n)
        .map_while(|_| pump.next_record())
        .map(|r| ddmon::sim::outgoing(&r, ddmon::sim::WireFormat::V02, &prefix))
        .collect();
    let began = Instant::now();
    rt.block_on(async {
        let (_tx, shutdown) = ddmon::daemon::Shutdown::manual();
        let mut p = Publisher::connect(&cfg, "bench-route-pub", shutdown)
            .await
            .unwrap();
        for chunk in msgs.chunks(2000) {
            p.publish_all(chunk).await.unwrap();
        }
        p.close().await;
        while landed(&conn, &dest).await < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let rate = n as f64 / began.elapsed().as_secs_f64();
    if let Some(mut c) = child {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let _ = c.wait();
    }
    if let Some(t) = relay_task {
        t.abort();
    }
    // clean up: queues, exchanges
    rt.block_on(async {
        let ch = conn.create_channel().await.unwrap();
        for q in dest.iter().cloned().chain([
            format!("{prefix}.relay"),
            format!("q_guest.dd_log2source.{queue}"),
        ]) {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let ch = conn.create_channel().await.unwrap();
        for x in SOURCES.iter().map(|s| format!("{prefix}.src_{s}")).chain(
            ["", ".unknown", ".by_source", ".unrouted"]
                .iter()
                .map(|sfx| format!("{prefix}{sfx}")),
        ) {
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "OK".into()).await;
    });
    rate
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it
    // (and `--list` asks what is in it): only measure when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("ROUTE_RECORDS", 200_000);
    let runs = env_num("ROUTE_RUNS", 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rates: Vec<(&str, Vec<f64>)> =
        vec![("baseline", vec![]), ("copy", vec![]), ("bind", vec![])];
    for run in 1..=runs {
        for (mode, v) in rates.iter_mut() {
            let r = run_once(&rt, mode, n);
            println!("run {run}: {mode:<8} {r:>8.0} records/s");
            v.push(r);
        }
    }
    let m: Vec<f64> = rates.iter().map(|(_, v)| median(v.clone())).collect();
    println!(
        "route {n} records: baseline relay {:.0}/s, copy {:.0}/s, bind {:.0}/s; copy/baseline {:.3} (bar >= 0.9), bind/copy {:.3} (bar >= 1.5)",
        m[0],
        m[1],
        m[2],
        m[1] / m[0],
        m[2] / m[1]
    );
}
