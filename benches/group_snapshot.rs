//! A group's snapshot at the sizes (the hot-standby issue): dd_speedo with 100,000
//! clients and 200 sources, dd_watchdog with 1,000,000 transfers in flight. For each: the
//! time to take the snapshot (what the active does when it becomes active and every 300 s),
//! its size and parts (4 MiB each, as written to the state stream), and the time a standby
//! takes to restore it. The baseline is the tool's own state write of the same state (the
//! state file, the journal's compaction), measured in the same run.
//!
//! `cargo bench --bench group_snapshot` (or `scripts/bench`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Instant;

use chrono::Utc;
use common::*;
use ddmon::speedo::{Settings, Speedo, Thresholds, ThresholdsConfig};
use ddmon::watchdog::Table;

fn parts(bytes: usize) -> usize {
    bytes.div_ceil(ddmon::daemon::replica::PART_BYTES)
}

fn speedo_side() {
    let settings = || Settings {
        interval: 60,
        top_capacity: 1000,
        thresholds: Thresholds::new(&ThresholdsConfig::default()).unwrap(),
    };
    let now = Utc::now();
    let mut s = Speedo::new(settings(), now);
    let mut r = good_record(now);
    for i in 0..400_000u64 {
        r.client = format!("client{:06}", i % 100_000);
        r.source = Some(format!("source{:03}", i % 200));
        r.status = if i % 50 == 0 { 503 } else { 200 };
        s.observe(&r, now);
    }
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let file = ddmon::speedo::state::save(&dir.path().join("s.json"), &s, now, 0).unwrap();
    let file_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let snap = ddmon::speedo::state::to_vec(&s, now);
    let take_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let saved: ddmon::speedo::state::Saved = serde_json::from_slice(&snap).unwrap();
    let mut back = Speedo::new(settings(), now);
    back.restore_exact(saved);
    let restore_s = t0.elapsed().as_secs_f64();
    assert_eq!(back.names(), s.names());
    println!(
        "dd_speedo, 100,000 clients and 200 sources: snapshot {:.1} MiB in {} parts, taken in {:.0} ms (the state file, baseline: {:.1} MiB in {:.0} ms, ratio {:.2}), restored in {:.0} ms",
        snap.len() as f64 / 1048576.0,
        parts(snap.len()),
        take_s * 1000.0,
        file as f64 / 1048576.0,
        file_s * 1000.0,
        take_s / file_s,
        restore_s * 1000.0
    );
}

fn watchdog_side() {
    let now = Utc::now();
    let (mut t, limits) = million_in_flight(now);
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let (mut j, _) =
        ddmon::watchdog::journal::Journal::open(&dir.path().join("j"), &mut t, false).unwrap();
    j.compact(&t).unwrap();
    let file_s = t0.elapsed().as_secs_f64() / 2.0;
    let t0 = Instant::now();
    let mut snap = Vec::new();
    t.snapshot(&mut snap);
    let take_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut back = Table::new(limits, now, false);
    let loaded = ddmon::watchdog::journal::apply_lines(&mut back, &snap);
    let restore_s = t0.elapsed().as_secs_f64();
    assert_eq!(loaded.bad, 0);
    assert_eq!(back.len(), t.len());
    println!(
        "dd_watchdog, 1,000,000 in flight: snapshot {:.1} MiB in {} parts, taken in {:.0} ms (a journal compaction, baseline: {:.0} ms, ratio {:.2}), restored in {:.0} ms; peak RSS {:.0} MiB",
        snap.len() as f64 / 1048576.0,
        parts(snap.len()),
        take_s * 1000.0,
        file_s * 1000.0,
        take_s / file_s,
        restore_s * 1000.0,
        rss_mib("VmHWM:")
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    speedo_side();
    watchdog_side();
}
