//! The engine-to-baseline ratio, robust to a noisy machine: baseline and
//! engine passes over the whole corpus alternate, and the median of the
//! per-round ratios is reported (a slow spell hits both sides of a round).
//! Run by `scripts/bench-engine`; `ROUNDS` sets the number of rounds.

use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::RuleFile;
use event_sanitizer::secret::Secret;
use std::hint::black_box;
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = std::env::var("BENCH_CORPUS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/corpus.jsonl").to_string()
    });
    let events: Vec<Vec<u8>> = std::fs::read_to_string(&path)
        .expect("corpus")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let bytes: usize = events.iter().map(Vec::len).sum();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/customerio.yaml");
    let (file, _) = RuleFile::load(std::path::Path::new(rules)).expect("rules");
    let key = Secret::new("bench-key");
    let s = Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()).expect("compiles");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(8192);
    let (mut base, mut eng, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds + 10 {
        let t = Instant::now();
        for e in &events {
            let v: serde_json::Value = serde_json::from_slice(e).expect("JSON");
            black_box(serde_json::to_vec(&v).expect("serializes"));
        }
        let b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for e in &events {
            s.sanitize(e, &mut scratch, &mut out).expect("clean");
            black_box(&out);
        }
        let e = t.elapsed().as_secs_f64();
        if round >= 10 {
            base.push(b);
            eng.push(e);
            ratio.push(b / e);
        }
    }
    let n = events.len() as f64;
    let (b, e, r) = (median(&mut base), median(&mut eng), median(&mut ratio));
    println!(
        "corpus: {} events, {:.2} MB; {rounds} interleaved rounds (medians)",
        events.len(),
        bytes as f64 / 1e6
    );
    println!(
        "baseline serde_json::Value parse+serialize: {:>9.0} events/s {:>6.0} MB/s",
        n / b,
        bytes as f64 / b / 1e6
    );
    println!(
        "engine, default rules:                      {:>9.0} events/s {:>6.0} MB/s",
        n / e,
        bytes as f64 / e / 1e6
    );
    println!("ratio engine/baseline (median of rounds): {r:.2}x");
}
