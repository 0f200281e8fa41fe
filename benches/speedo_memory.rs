//! Memory of the speedo with many names: 100,000 clients, 200 sources and 1,000,000 distinct
//! subjects, fed at a steady rate for 10 minutes of wall time (the real clock: intervals of
//! 60 s and whole minutes close as they would live, learned expectations are allocated, the
//! state file is written every minute). Prints resident memory every 30 s, its peak, and the
//! state file's size and write time. The bar (issue 5): under 300 MiB, and flat.
//!
//! `cargo bench --bench speedo_memory` (or `scripts/bench`); `SPEEDO_MEMORY_SECS` (default
//! 600) and `SPEEDO_MEMORY_RATE` (records/s, default 50000) tune it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use ddmon::speedo::{Settings, Speedo, Thresholds, ThresholdsConfig};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = env_num("SPEEDO_MEMORY_SECS", 600) as u64;
    let rate = env_num("SPEEDO_MEMORY_RATE", 50_000) as u64;
    const CLIENTS: u64 = 100_000;
    const SOURCES: u64 = 200;
    const SUBJECTS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut s = Speedo::new(
        Settings {
            interval: 60,
            top_capacity: 1000,
            thresholds: Thresholds::new(&ThresholdsConfig::default()).unwrap(),
        },
        Utc::now(),
    );
    let clients: Vec<String> = (0..CLIENTS).map(|i| format!("client{i:06}")).collect();
    let sources: Vec<String> = (0..SOURCES).map(|i| format!("source{i:03}")).collect();
    let mut r = good_record(Utc::now());
    let started = Instant::now();
    let mut next_report = Duration::ZERO;
    let mut next_save = Duration::from_secs(60);
    let (mut fed, mut outputs) = (0u64, 0u64);
    let mut samples: Vec<f64> = Vec::new();
    let mut save_ms: Vec<u128> = Vec::new();
    let mut save_bytes = 0u64;
    println!("t_s records rss_mib");
    while started.elapsed() < Duration::from_secs(secs) {
        // one batch per millisecond-ish slot: `rate` records a second
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if fed >= due {
            std::thread::sleep(Duration::from_millis(1));
        }
        let now = Utc::now();
        while fed < due {
            let i = fed;
            r.client.clone_from(&clients[(i % CLIENTS) as usize]);
            r.source = Some(sources[(i % SOURCES) as usize].clone());
            r.relpath = format!("/data/s{}/file.grib2", (i * 7919) % SUBJECTS);
            r.status = if i % 50 == 0 { 503 } else { 200 };
            r.time = now;
            outputs += s.advance(now).len() as u64;
            s.observe(&r, now);
            fed += 1;
        }
        let t = started.elapsed();
        if t >= next_save {
            let t0 = Instant::now();
            save_bytes = ddmon::speedo::state::save(&state, &s, Utc::now(), 0).unwrap();
            save_ms.push(t0.elapsed().as_millis());
            next_save += Duration::from_secs(60);
        }
        if t >= next_report {
            let rss = rss_mib("VmRSS:");
            samples.push(rss);
            println!("{:.0} {fed} {rss:.1}", t.as_secs_f64());
            next_report += Duration::from_secs(30);
        }
    }
    let (clients_seen, sources_seen) = s.names();
    println!(
        "fed {fed} records ({rate}/s) to {clients_seen} clients and {sources_seen} sources, 1,000,000 subjects; {outputs} speedo records and alerts out"
    );
    let after_warmup: Vec<f64> = samples.iter().copied().skip(samples.len() / 3).collect();
    let (lo, hi) = after_warmup
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    println!(
        "rss: start {:.1} MiB, end {:.1} MiB, peak (VmHWM) {:.1} MiB; last two thirds between {lo:.1} and {hi:.1} MiB (bar: < 300 MiB, flat)",
        samples.first().copied().unwrap_or(0.0),
        samples.last().copied().unwrap_or(0.0),
        rss_mib("VmHWM:")
    );
    println!(
        "state file: {:.1} MiB, written in {:?} ms",
        save_bytes as f64 / 1048576.0,
        save_ms
    );
}
