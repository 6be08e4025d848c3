//! Engine throughput on the shared corpus with the default rules, against
//! a baseline measured in the same run: parsing each event into a
//! `serde_json::Value` and serializing it again (what a naive sanitizer
//! would do before applying a single rule). `scripts/bench-engine` prints
//! the ratio from criterion's estimates.
//!
//! Corpus: tests/data/corpus.jsonl (2,000 events from
//! ../shared/corpus/gen_events.py --seed 7), or the file named by
//! `BENCH_CORPUS`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use std::hint::black_box;

fn corpus() -> Vec<Vec<u8>> {
    let path = std::env::var("BENCH_CORPUS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/corpus.jsonl").to_string()
    });
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

fn default_rules() -> Sanitizer {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/customerio.yaml");
    let (file, _) = RuleFile::load(std::path::Path::new(path)).expect("default rules parse");
    let key = Secret::new("bench-key");
    Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()).expect("compiles")
}

fn bench(c: &mut Criterion) {
    let events = corpus();
    let bytes: usize = events.iter().map(Vec::len).sum();
    let sanitizer = default_rules();
    for (unit, throughput) in [
        ("events", Throughput::Elements(events.len() as u64)),
        ("bytes", Throughput::Bytes(bytes as u64)),
    ] {
        let mut g = c.benchmark_group(format!("corpus-{unit}"));
        g.throughput(throughput);
        g.bench_function("baseline_serde_value_roundtrip", |b| {
            b.iter(|| {
                for e in &events {
                    let v: serde_json::Value = serde_json::from_slice(e).expect("corpus is JSON");
                    black_box(serde_json::to_vec(&v).expect("serializes"));
                }
            })
        });
        g.bench_function("engine_default_rules", |b| {
            let mut scratch = Scratch::default();
            let mut out = Vec::with_capacity(8192);
            b.iter(|| {
                for e in &events {
                    sanitizer
                        .sanitize(e, &mut scratch, &mut out)
                        .expect("corpus is clean");
                    black_box(&out);
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
