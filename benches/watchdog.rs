//! Throughput of the in-flight table (parsing excluded), in memory and with its journal lines
//! made (the formatting a journaled run adds; the file writes are measured live, in
//! `benches/e2e_watchdog.rs`). The bar (issue 7): at least 500,000 records/s on one core.

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ddmon::record::LogRecord;
use ddmon::watchdog::{Limits, Table};
use std::hint::black_box;

fn records(n: usize) -> Vec<LogRecord> {
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(
        ddmon::sim::PumpModel {
            nodes: 10,
            clients: 100,
            ..Default::default()
        },
        start,
    );
    (0..n).map_while(|_| pump.next_record()).collect()
}

fn run(records: &[LogRecord], journal: bool) -> usize {
    let limits = Limits {
        node_timeout_ms: 120_000,
        stuck_after_ms: 3_600_000,
        reorder_window_ms: 10_000,
        forget_after_ms: 0,
    };
    let mut t = Table::new(limits, records[0].time, journal);
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate() {
        black_box(t.observe(r, r.time));
        if i % 64 == 0 {
            black_box(t.tick(r.time));
            bytes += t.take_journal().len();
        }
    }
    bytes + t.len()
}

fn bench(c: &mut Criterion) {
    let recs = records(200_000);
    let mut g = c.benchmark_group("watchdog");
    g.sample_size(10);
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("table_in_memory", |b| {
        b.iter(|| black_box(run(&recs, false)))
    });
    g.bench_function("table_with_journal_lines", |b| {
        b.iter(|| black_box(run(&recs, true)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
