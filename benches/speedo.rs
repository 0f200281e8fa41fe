//! Aggregation throughput of the speedo state machine (parsing excluded: the records are
//! parsed before the clock starts). The bar (issue 5): at least 2,000,000 records/s on one
//! core. Two shapes: the sim's pump (5 clients, 3 sources) and a wide one (1,000 clients,
//! 50 sources, every record in a new subject directory).

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ddmon::record::LogRecord;
use ddmon::speedo::{Settings, Speedo, Thresholds, ThresholdsConfig};
use std::hint::black_box;

fn records(model: ddmon::sim::PumpModel, n: usize) -> Vec<LogRecord> {
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(model, start);
    (0..n).map_while(|_| pump.next_record()).collect()
}

fn run(records: &[LogRecord]) -> u64 {
    let mut s = Speedo::new(
        Settings {
            interval: 1,
            top_capacity: 1000,
            thresholds: Thresholds::new(&ThresholdsConfig::default()).unwrap(),
        },
        records[0].time,
    );
    let mut out = 0;
    for r in records {
        out += s.advance(r.time).len() as u64;
        s.observe(r, r.time);
    }
    out
}

fn bench(c: &mut Criterion) {
    let n = 200_000;
    let narrow = records(ddmon::sim::PumpModel::default(), n);
    let mut wide = records(
        ddmon::sim::PumpModel {
            clients: 1000,
            sources: 50,
            transfers_per_second: 2000.0,
            ..Default::default()
        },
        n,
    );
    for (i, r) in wide.iter_mut().enumerate() {
        r.relpath = format!("/dir{}/file", i % 100_000);
    }
    let mut g = c.benchmark_group("speedo");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("aggregate_sim_5_clients", |b| {
        b.iter(|| black_box(run(&narrow)))
    });
    g.bench_function("aggregate_1000_clients_100k_subjects", |b| {
        b.iter(|| black_box(run(&wide)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
