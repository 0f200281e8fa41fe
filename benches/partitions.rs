//! One queue's ceiling for the log traffic, and 2-4 partitions through RabbitMQ's own
//! consistent-hash exchange (the hot-standby issue, item 7: how ddmon scales past one queue).
//!
//! For each layout: N v02 records (dd_sim's, each with a `client` header, as a router would
//! add it for partitioning by client) published with a confirm window into the log exchange,
//! routed to 1 queue (a plain binding) or to k queues (an `x-consistent-hash` exchange bound
//! to the log exchange, hashing the `client` header); then drained by one tuned consumer per
//! queue at once (prefetch 1000, one `multiple` ack per 100: the baseline of every drain
//! bench). Printed: publish and drain rates, and how evenly the clients spread.
//!
//! `cargo bench --bench partitions` (`PARTITION_RECORDS`, default 200,000). Enables the
//! `rabbitmq_consistent_hash_exchange` plugin (shipped with RabbitMQ).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;
use ddmon::broker::Outgoing;
use ddmon::headers::HeaderValue;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("PARTITION_RECORDS", 200_000);
    let out = Command::new("rabbitmq-plugins")
        .args(["enable", "--quiet", "rabbitmq_consistent_hash_exchange"])
        .output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "cannot enable the consistent-hash exchange: {out:?}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = ddmon::config::BrokerConfig::default();
    let now = chrono::Utc::now();
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            clients: 1000,
            sources: 50,
            ..Default::default()
        },
        now,
    );
    let records: Vec<_> = (0..n).map_while(|_| pump.next_record()).collect();
    for k in [1usize, 2, 3, 4] {
        let tag = format!("{:08x}", ddmon::broker::random_u64() as u32);
        let exchange = format!("bench.part.{tag}");
        let queues: Vec<String> = (0..k).map(|i| format!("bench.part.{tag}.q{i}")).collect();
        let msgs: Vec<Outgoing> = records
            .iter()
            .map(|r| {
                let mut o = ddmon::sim::outgoing(r, ddmon::sim::WireFormat::V02, &exchange);
                o.headers
                    .insert("client".into(), HeaderValue::Str(r.client.clone()));
                o
            })
            .collect();
        rt.block_on(async {
            let conn = ddmon::broker::raw::connect(&cfg, "bench-part").await.unwrap();
            let ch = conn.create_channel().await.unwrap();
            ddmon::broker::raw::declare_topic_exchange(&ch, &exchange)
                .await
                .unwrap();
            let hash = format!("{exchange}.hash");
            if k > 1 {
                let mut args = FieldTable::default();
                args.insert("hash-header".into(), AMQPValue::LongString("client".into()));
                ch.exchange_declare(
                    hash.as_str().into(),
                    lapin::ExchangeKind::Custom("x-consistent-hash".into()),
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .unwrap();
                ch.exchange_bind(
                    hash.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
            for q in &queues {
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
                let (source, key) = if k > 1 { (hash.as_str(), "1") } else { (exchange.as_str(), "#") };
                ch.queue_bind(
                    q.as_str().into(),
                    source.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            }
            let started = Instant::now();
            fill(&cfg, &msgs).await;
            let publish = started.elapsed();
            let mut sizes = Vec::new();
            for q in &queues {
                let d = ch
                    .queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                sizes.push(d.message_count() as usize);
            }
            let started = Instant::now();
            let mut tasks = Vec::new();
            for (q, size) in queues.iter().zip(&sizes) {
                let (cfg, q, size) = (cfg.clone(), q.clone(), *size);
                tasks.push(tokio::spawn(async move { baseline(&cfg, &q, size).await }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let drain = started.elapsed();
            let total: usize = sizes.iter().sum();
            println!(
                "{k} queue{}: {total} records, published at {:.0}/s, drained at {:.0}/s ({} per queue: {:?})",
                if k == 1 { "" } else { "s (consistent hash on the client header)" },
                total as f64 / publish.as_secs_f64(),
                total as f64 / drain.as_secs_f64(),
                if k == 1 { "all" } else { "records" },
                sizes
            );
            for q in &queues {
                let _ = ddmon::broker::raw::delete_queue(&conn, q).await;
            }
            let _ = ch.exchange_delete(hash.as_str().into(), Default::default()).await;
            let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
            let _ = conn.close(200, "OK".into()).await;
        });
    }
}
