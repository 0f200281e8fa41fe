//! dd_log2source against the real broker: every record lands, unchanged, on its source's
//! exchange; what has no (known) source or is malformed lands on the unknown exchange; the
//! input is acknowledged only once copied; the counts are in `stats`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ddmon::record::{HeaderValue, Headers};
use serde_json::Value;

struct Router {
    run: Running,
    input_queue: String,
    instance: String,
}

impl Router {
    /// Its `stats` answer.
    async fn stats(&self, conn: &lapin::Connection, exchange: &str) -> Value {
        let key = format!("v01.rpc.dd_log2source.{}.stats", self.instance);
        let replies = ddmon::broker::raw::request(
            conn,
            exchange,
            &key,
            b"{}",
            Duration::from_secs(2),
            Some(1),
        )
        .await
        .unwrap();
        assert_eq!(replies.len(), 1, "no stats answer on {key}");
        serde_json::from_slice(&replies[0].body).unwrap()
    }
}

/// Start dd_log2source on the scratch exchange; source exchanges are `<scratch>.src_<source>`.
async fn start(conn: &lapin::Connection, s: &Scratch, extra: &[&str]) -> Router {
    start_on(conn, s, &unique("r"), extra).await
}

/// The same on the input queue NAME (`q_guest.dd_log2source.<queue>`).
async fn start_on(conn: &lapin::Connection, s: &Scratch, queue: &str, extra: &[&str]) -> Router {
    let instance = format!(
        "{}-{:04x}",
        queue.replace('.', "-"),
        ddmon::broker::random_u64() as u16
    );
    let full = format!("q_guest.dd_log2source.{queue}");
    s.track_queue(&full);
    let mut c = dd_log2source();
    c.args(["--exchange", &s.exchange, "--queue", queue])
        .args([
            "--source-exchange-template",
            &format!("{}.src_{{source}}", s.exchange),
        ])
        .args(["--unknown-exchange", &format!("{}.unknown", s.exchange)])
        .args(["--daemon-exchange", &s.exchange, "--instance", &instance])
        .args(extra);
    let run = Running::spawn(c);
    wait_for_consumers(conn, &full, 1).await;
    Router {
        run,
        input_queue: full,
        instance,
    }
}

#[tokio::test]
async fn copy_mode_routes_every_record_unchanged() {
    let conn = connect().await;
    let s = Scratch::new();
    for x in ["src_source00", "src_source01", "src_source02", "unknown"] {
        s.track_exchange(&format!("{}.{x}", s.exchange));
    }
    // listeners on each source's exchange and on the unknown exchange
    let mut per_source = BTreeMap::new();
    for src in ["source00", "source01", "source02"] {
        let x = format!("{}.src_{src}", s.exchange);
        per_source.insert(src.to_string(), listen(&conn, &x, &["#"]).await);
    }
    let mut unknown = listen(&conn, &format!("{}.unknown", s.exchange), &["#"]).await;
    let router = start(&conn, &s, &["--sources", "source00,source01,source02"]).await;

    let records = sim_records(600, 17);
    let mut msgs = v02_messages(&records);
    // no source: a v03 report without one; an unknown source; a malformed body; an ordinary post
    let mut r = records[0].clone();
    r.source = None;
    let (k, body) = ddmon::record::encode_v03(&r);
    msgs.push((k, Headers::new(), body.into_bytes()));
    let mut stranger = msgs[1].clone();
    stranger
        .1
        .insert("source".into(), HeaderValue::Str("stranger".into()));
    msgs.push(stranger);
    msgs.push((
        "v02.log.x".into(),
        msgs[2].1.clone(),
        b"not a log line".to_vec(),
    ));
    msgs.push((
        "v02.post.x".into(),
        Headers::new(),
        b"20261122051509.7 file:/d a".to_vec(),
    ));
    publish(&s.exchange, msgs.clone()).await;

    let mut want: BTreeMap<String, Vec<&RawMessage>> = BTreeMap::new();
    for (m, r) in msgs.iter().zip(&records) {
        want.entry(r.source.clone().unwrap()).or_default().push(m);
    }
    for (src, listener) in per_source.iter_mut() {
        let got = drain(listener, 1500).await;
        let expected = &want[src];
        assert_eq!(got.len(), expected.len(), "{src}");
        for (d, (key, headers, body)) in got.iter().zip(expected) {
            // unchanged: routing key, body, headers, properties
            assert_eq!(d.routing_key.as_str(), key);
            assert_eq!(&d.data, body);
            let h =
                ddmon::broker::raw::headers_from_table(d.properties.headers().as_ref().unwrap());
            assert_eq!(&h, headers);
            assert_eq!(d.properties.delivery_mode(), &Some(2));
        }
    }
    let odd = drain(&mut unknown, 1000).await;
    let why: Vec<String> = odd
        .iter()
        .map(|d| {
            let h =
                ddmon::broker::raw::headers_from_table(d.properties.headers().as_ref().unwrap());
            h["ddmon_unrouted"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        why,
        ["no source", "unknown source", "malformed: field_count"]
    );

    // everything was acknowledged once copied
    assert_eq!(queue_counts(&conn, &router.input_queue).await, Some((0, 1)));
    let v = router.stats(&conn, &s.exchange).await;
    let result = &v["result"];
    for (src, list) in &want {
        assert_eq!(result["sources"][src]["routed"], list.len(), "{v}");
        assert_eq!(result["sources"][src]["unheard"], 0, "{v}");
    }
    assert_eq!(
        (
            &result["no_source"],
            &result["unknown_source"],
            &result["malformed"],
            &result["skipped"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        )
    );
    router.run.terminate();
    let (code, _, err) = router.run.finish(10);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn a_source_nobody_listens_to_is_counted_as_unheard() {
    let conn = connect().await;
    let s = Scratch::new();
    s.track_exchange(&format!("{}.src_source00", s.exchange));
    s.track_exchange(&format!("{}.unknown", s.exchange));
    let router = start(&conn, &s, &[]).await;
    let records: Vec<_> = sim_records(200, 3)
        .into_iter()
        .filter(|r| r.source.as_deref() == Some("source00"))
        .collect();
    publish(&s.exchange, v02_messages(&records)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = router.stats(&conn, &s.exchange).await;
        let c = &v["result"]["sources"]["source00"];
        if c["routed"] == records.len() {
            assert_eq!(c["unheard"], records.len());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    router.run.terminate();
    assert_eq!(router.run.finish(10).0, 0);
}

#[tokio::test]
async fn bind_mode_learns_sources_and_lets_the_broker_route() {
    let conn = connect().await;
    let s = Scratch::new();
    for x in [
        "src_source00",
        "src_source01",
        "src_source02",
        "unknown",
        "by_source",
        "unrouted",
    ] {
        s.track_exchange(&format!("{}.{x}", s.exchange));
    }
    let router = start(&conn, &s, &["--mode", "bind"]).await;
    let mut per_source = BTreeMap::new();
    for src in ["source00", "source01", "source02"] {
        let x = format!("{}.src_{src}", s.exchange);
        per_source.insert(src.to_string(), listen(&conn, &x, &["#"]).await);
    }
    let records = sim_records(1200, 23);
    let msgs = v02_messages(&records);
    // first half: sources are learned from what falls to the alternate exchange
    publish(&s.exchange, msgs[..600].to_vec()).await;
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for (src, l) in per_source.iter_mut() {
        got.insert(src.clone(), drain(l, 1500).await.len());
    }
    let want = |range: std::ops::Range<usize>| {
        let mut w: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records[range] {
            *w.entry(r.source.clone().unwrap()).or_default() += 1;
        }
        w
    };
    assert_eq!(got, want(0..600));
    let first = router.stats(&conn, &s.exchange).await;
    assert_eq!(
        first["result"]["bound"],
        serde_json::json!(["source00", "source01", "source02"])
    );
    let routed = |v: &Value| -> u64 {
        v["result"]["sources"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["routed"].as_u64().unwrap())
            .sum()
    };
    let copied_first = routed(&first);
    assert!((3..=600).contains(&copied_first), "{first}");

    // second half: the broker routes it all; dd_log2source copies nothing more
    publish(&s.exchange, msgs[600..].to_vec()).await;
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for (src, l) in per_source.iter_mut() {
        let ds = drain(l, 1500).await;
        for d in &ds {
            assert!(d.routing_key.as_str().starts_with("v02.log.source"));
        }
        got.insert(src.clone(), ds.len());
    }
    assert_eq!(got, want(600..1200));
    assert_eq!(
        routed(&router.stats(&conn, &s.exchange).await),
        copied_first
    );

    // v03 records carry their source in the body: still copied by the process
    let (k, body) = ddmon::record::encode_v03(&records[0]);
    publish(&s.exchange, vec![(k, Headers::new(), body.into_bytes())]).await;
    let src = records[0].source.clone().unwrap();
    let l = per_source.get_mut(&src).unwrap();
    assert_eq!(drain(l, 1500).await.len(), 1);
    assert_eq!(
        routed(&router.stats(&conn, &s.exchange).await),
        copied_first + 1
    );
    router.run.terminate();
    let (code, _, err) = router.run.finish(10);
    assert_eq!(code, 0, "{err}");
}

/// The issue's case: copy mode, stopped, then bind mode on the same queue (the README's
/// order), then copy mode again. Each mode makes the routing its own at start, so every
/// record reaches its source's exchange once (it reached it twice when the other mode's
/// bindings stayed).
#[tokio::test]
async fn switching_modes_leaves_one_route_per_record() {
    let conn = connect().await;
    let s = Scratch::new();
    for x in [
        "src_source00",
        "src_source01",
        "src_source02",
        "unknown",
        "by_source",
        "unrouted",
    ] {
        s.track_exchange(&format!("{}.{x}", s.exchange));
    }
    let queue = unique("switch");
    s.track_queue(&format!("q_guest.dd_log2source.{queue}"));
    let mut per_source = BTreeMap::new();
    for src in ["source00", "source01", "source02"] {
        let x = format!("{}.src_{src}", s.exchange);
        per_source.insert(src.to_string(), listen(&conn, &x, &["#"]).await);
    }
    let records = sim_records(180, 29);
    let msgs = v02_messages(&records);
    let want = |range: std::ops::Range<usize>| {
        let mut w: BTreeMap<String, usize> = BTreeMap::new();
        for r in &records[range] {
            *w.entry(r.source.clone().unwrap()).or_default() += 1;
        }
        w
    };
    for (i, mode) in ["copy", "bind", "copy"].iter().enumerate() {
        let router = start_on(&conn, &s, &queue, &["--mode", mode]).await;
        let part = i * 60..(i + 1) * 60;
        publish(&s.exchange, msgs[part.clone()].to_vec()).await;
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for (src, l) in per_source.iter_mut() {
            got.insert(src.clone(), drain(l, 1500).await.len());
        }
        assert_eq!(got, want(part), "run {} in {mode} mode", i + 1);
        router.run.terminate();
        let (code, _, err) = router.run.finish(10);
        assert_eq!(code, 0, "{err}");
        // the next run finds the queue without a consumer
        wait_for_consumers(&conn, &format!("q_guest.dd_log2source.{queue}"), 0).await;
    }
}

#[tokio::test]
async fn records_from_another_cluster_go_back_to_its_broker() {
    // two vhosts stand in for two clusters' brokers
    let id = unique("clu").replace('.', "-");
    let here = Sandbox::new(&format!("{id}-a"), vec![]).await;
    let there = Sandbox::new(&format!("{id}-b"), vec![]).await;
    let here_url = url("guest", "guest", &here.vhost);
    let there_url = url("guest", "guest", &there.vhost);
    let cfg = |u: &str| ddmon::config::BrokerConfig {
        url: u.to_string(),
        ..Default::default()
    };
    let here_conn = ddmon::broker::raw::connect(&cfg(&here_url), "test-here")
        .await
        .unwrap();
    let there_conn = ddmon::broker::raw::connect(&cfg(&there_url), "test-there")
        .await
        .unwrap();
    let mut there_log = listen(&there_conn, "log", &["#"]).await;
    let mut here_src = listen(&here_conn, "log_source00", &["#"]).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dd_log2source.toml");
    std::fs::write(
        &file,
        format!("cluster = \"a\"\n[clusters]\nb = \"{there_url}\"\n"),
    )
    .unwrap();
    let mut c = dd_log2source();
    c.env("DD_BROKER", &here_url)
        .arg("--config")
        .arg(&file)
        .args(["--instance", "clu"]);
    let run = Running::spawn(c);
    wait_for_consumers(&here_conn, "q_guest.dd_log2source.route", 1).await;

    let records: Vec<_> = sim_records(300, 8)
        .into_iter()
        .filter(|r| r.source.as_deref() == Some("source00"))
        .take(30)
        .collect();
    let mut msgs = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut r = r.clone();
        r.from_cluster = Some(["a", "b", "elsewhere"][i % 3].to_string());
        msgs.extend(v02_messages(&[r]));
    }
    publish_on(&here_url, "log", msgs.clone()).await;
    let forwarded = drain(&mut there_log, 1500).await;
    let want_there: Vec<&Vec<u8>> = msgs.iter().skip(1).step_by(3).map(|m| &m.2).collect();
    assert_eq!(
        forwarded.iter().map(|d| &d.data).collect::<Vec<_>>(),
        want_there
    );
    let local = drain(&mut here_src, 1000).await;
    assert_eq!(
        local.len(),
        20,
        "from this cluster and from unlisted ones stay here"
    );
    run.terminate();
    let (code, _, err) = run.finish(10);
    assert_eq!(code, 0, "{err}");
    let _ = (
        here_conn.close(200, "OK".into()).await,
        there_conn.close(200, "OK".into()).await,
    );
}

/// With a dead-letter exchange, malformed records are rejected there, one by one, while the
/// good ones around them are copied and acknowledged (several at a time once their confirms
/// are in): a bad record first, in the middle and last of a stream; none lost, none left.
#[tokio::test]
async fn malformed_records_between_copies_are_dead_lettered_and_the_rest_acknowledged() {
    let conn = connect().await;
    let s = Scratch::new();
    let dlx = format!("{}.dlx", s.exchange);
    for x in [
        "src_source00",
        "src_source01",
        "src_source02",
        "unknown",
        "dlx",
    ] {
        s.track_exchange(&format!("{}.{x}", s.exchange));
    }
    let mut copies = Vec::new();
    for src in ["source00", "source01", "source02"] {
        let x = format!("{}.src_{src}", s.exchange);
        copies.push(listen(&conn, &x, &["#"]).await);
    }
    let mut dead = listen(&conn, &dlx, &["#"]).await;
    let router = start(
        &conn,
        &s,
        &[
            "--sources",
            "source00,source01,source02",
            "--dead-letter-exchange",
            &dlx,
        ],
    )
    .await;
    let records = sim_records(600, 5);
    let good = v02_messages(&records);
    let bad = |body: &[u8]| ("v02.log.x".to_string(), good[0].1.clone(), body.to_vec());
    let mut msgs = vec![bad(b"first")];
    msgs.extend(good[..300].iter().cloned());
    msgs.push(bad(b"middle"));
    msgs.extend(good[300..].iter().cloned());
    msgs.push(bad(b"last"));
    publish(&s.exchange, msgs).await;

    let mut copied = 0;
    for c in copies.iter_mut() {
        copied += drain(c, 1500).await.len();
    }
    assert_eq!(copied, good.len(), "every good record copied once");
    let rejected: Vec<Vec<u8>> = drain(&mut dead, 1000)
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    assert_eq!(rejected, [&b"first"[..], b"middle", b"last"]);
    router.run.terminate();
    let (code, _, err) = router.run.finish(10);
    assert_eq!(code, 0, "{err}");
    // nothing came back to the queue when it stopped: every good one was acknowledged
    assert_eq!(queue_counts(&conn, &router.input_queue).await, Some((0, 0)));
}
