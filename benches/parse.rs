//! Parse throughput: v02 and v03 records, and the line rendering dd_log does for each.
//! The bar (issue 2): at least 1,000,000 v02 records per second on one core.

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ddmon::record::{Headers, encode_v02, encode_v03, parse, render_line};
use std::hint::black_box;

type V02Message = (String, Headers, String);

fn messages() -> (Vec<V02Message>, Vec<(String, String)>) {
    let start = chrono::DateTime::from_timestamp(1_763_790_000, 0).unwrap();
    let mut pump = ddmon::sim::Pump::new(ddmon::sim::PumpModel::default(), start);
    let records: Vec<_> = (0..1000).map_while(|_| pump.next_record()).collect();
    (
        records.iter().map(encode_v02).collect(),
        records.iter().map(encode_v03).collect(),
    )
}

fn bench(c: &mut Criterion) {
    let (v02, v03) = messages();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(v02.len() as u64));
    g.bench_function("v02", |b| {
        b.iter(|| {
            for (k, h, body) in &v02 {
                black_box(parse(k, h, body.as_bytes()).unwrap());
            }
        })
    });
    let empty = Headers::new();
    g.bench_function("v03", |b| {
        b.iter(|| {
            for (k, body) in &v03 {
                black_box(parse(k, &empty, body.as_bytes()).unwrap());
            }
        })
    });
    g.bench_function("v02+render_line", |b| {
        b.iter(|| {
            for (k, h, body) in &v02 {
                let p = parse(k, h, body.as_bytes()).unwrap();
                black_box(render_line(k, &p));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
