//! What the clean-topic audit costs, next to the engine that produced the
//! records: engine passes (default rules, raw corpus) and audit passes
//! (every detector over the clean output, `Value` parse included)
//! alternate over the same events, and the median of per-round ratios is
//! reported. `ROUNDS` sets the rounds; `BENCH_CORPUS` another corpus.

use event_sanitizer::audit::Inspector;
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::{RuleFile, DEFAULT_RULES};
use event_sanitizer::secret::Secret;
use std::hint::black_box;
use std::sync::Arc;
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
    let (file, _) = RuleFile::parse("customerio.yaml", DEFAULT_RULES).expect("rules");
    let key = Secret::new("bench-key");
    let s = Arc::new(
        Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()).expect("compiles"),
    );
    let inspector = Inspector::new(Some(s.clone()), Some(&file));
    let mut scratch = Scratch::default();
    let clean: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            s.sanitize(e, &mut scratch, &mut out)
                .expect("the corpus is valid");
            out
        })
        .collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let mut out = Vec::with_capacity(8192);
    let (mut eng, mut aud, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut findings = 0;
    for round in 0..rounds + 2 {
        let t = Instant::now();
        for e in &events {
            out.clear();
            black_box(s.sanitize(black_box(e), &mut scratch, &mut out).is_ok());
        }
        let e_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for c in &clean {
            findings += black_box(inspector.inspect(black_box(c)).map_or(1, |f| f.len()));
        }
        let a_s = t.elapsed().as_secs_f64();
        if round >= 2 {
            let n = events.len() as f64;
            eng.push(n / e_s);
            aud.push(n / a_s);
            ratio.push(e_s / a_s);
        }
    }
    assert_eq!(findings, 0, "the default rules' output has no finding");
    println!(
        "{} events, {rounds} rounds (medians):\n  engine (default rules)       {:>10.0} events/s\n  audit (inspector, all detectors) {:>6.0} events/s\n  audit / engine throughput    {:>10.2}",
        events.len(),
        median(&mut eng),
        median(&mut aud),
        median(&mut ratio)
    );
}
