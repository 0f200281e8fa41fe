//! The cost of a management poll at a national pump's size (the client-health issue): 10,000
//! client queues (`q_client<N>.sr_subscribe.x`, exclusive to the bench's connection, gone when
//! it closes) on the local broker, listed through the management API as dd_speedo does
//! (`rabbitmq_http_client`'s `list_queues`) and judged (`ClientQueues::update`, then a view
//! per client). The baseline is the same listing fetched as raw JSON by the management API's
//! own HTTP endpoint through the same client crate's HTTP stack (reqwest), undecoded: what any
//! poller pays the broker.
//!
//! `cargo bench --bench queue_poll` (`QUEUE_POLL_QUEUES`, default 10,000; `QUEUE_POLL_RUNS`, 5).
//! Needs the management plugin on 15672.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Instant;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_num("QUEUE_POLL_QUEUES", 10_000);
    let runs = env_num("QUEUE_POLL_RUNS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = ddmon::config::BrokerConfig::default();
    rt.block_on(async {
        let conn = ddmon::broker::raw::connect(&cfg, "bench-queue-poll").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let t0 = Instant::now();
        for i in 0..n {
            ch.queue_declare(
                format!("q_client{i:05}.sr_subscribe.bench").as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        println!("{n} queues declared in {:.1} s", t0.elapsed().as_secs_f64());
        // the management API's view catches up
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        let url = "http://127.0.0.1:15672/api";
        let api = ddmon::route::permissions::client(url, &cfg).unwrap();
        let http = reqwest::Client::new();
        let (mut raw, mut ours, mut judge) = (Vec::new(), Vec::new(), Vec::new());
        let mut cq = ddmon::speedo::queues::ClientQueues::new(
            regex::Regex::new(ddmon::speedo::queues::DEFAULT_PATTERN).unwrap(),
            120.0,
        );
        for run in 1..=runs {
            let t0 = Instant::now();
            let body = http
                .get(format!("{url}/queues"))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let r = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let listed = api.list_queues().await.unwrap();
            let o = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            let samples = ddmon::speedo::samples_of(url, listed);
            let now = chrono::Utc::now();
            cq.update(url, samples, now);
            let clients = cq.clients();
            for c in &clients {
                let _ = cq.view(c, 0, now);
            }
            let j = t0.elapsed().as_secs_f64();
            println!(
                "run {run}: raw listing {:.0} ms ({:.1} MiB), dd_speedo's poll {:.0} ms (ratio {:.2}), judging {} clients {:.0} ms",
                r * 1000.0,
                body.len() as f64 / 1048576.0,
                o * 1000.0,
                o / r,
                clients.len(),
                j * 1000.0
            );
            raw.push(r);
            ours.push(o);
            judge.push(j);
        }
        let (mr, mo, mj) = (median(raw), median(ours), median(judge));
        println!(
            "management poll of {n} queues: raw listing median {:.0} ms, dd_speedo's poll median {:.0} ms (ratio {:.2}), judging median {:.0} ms; peak RSS {:.0} MiB",
            mr * 1000.0,
            mo * 1000.0,
            mo / mr,
            mj * 1000.0,
            rss_mib("VmHWM:")
        );
        let _ = conn.close(200, "OK".into()).await;
    });
}
