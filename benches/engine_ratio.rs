//! The engine-to-baseline ratio, robust to a noisy machine: baseline and
//! engine passes over the whole corpus alternate, and the median of the
//! per-round ratios is reported (a slow spell hits both sides of a round).
//! Run by `scripts/bench-engine`; `ROUNDS` sets the number of rounds.
//!
//! Besides the default rules, three variants show what each part costs:
//! the default rules without the value detectors (`free-text-scan`),
//! without hashing (`hash-contact`), and without the delivery contract
//! (`destination`). Each is reported as a ratio to the same rounds'
//! baseline.

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
    let compile = |f: &RuleFile| {
        Sanitizer::compile(f, KeySupply::Fixed(&key), Limits::default()).expect("compiles")
    };
    let without_rule = |id: &str| {
        let mut f = file.clone();
        let before = f.rules.len();
        f.rules.retain(|r| r.id != id);
        assert_eq!(f.rules.len() + 1, before, "the default rules have `{id}`");
        f
    };
    let mut no_contract = file.clone();
    no_contract.destination = None;
    // What every rule set pays: UTF-8, syntax, depth and duplicate keys
    // checked, the event copied out (the pipeline bench's (b)).
    let mut empty = no_contract.clone();
    empty.rules.clear();
    let variants: Vec<(&str, Sanitizer)> = vec![
        ("engine, default rules", compile(&file)),
        (
            "  without detectors (free-text-scan)",
            compile(&without_rule("free-text-scan")),
        ),
        (
            "  without hashing (hash-contact)",
            compile(&without_rule("hash-contact")),
        ),
        ("  without the delivery contract", compile(&no_contract)),
        ("empty rule set (validation and copy)", compile(&empty)),
    ];
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(8192);
    let mut base = Vec::new();
    let mut times = vec![Vec::new(); variants.len()];
    let mut ratios = vec![Vec::new(); variants.len()];
    for round in 0..rounds + 10 {
        let t = Instant::now();
        for e in &events {
            let v: serde_json::Value = serde_json::from_slice(e).expect("JSON");
            black_box(serde_json::to_vec(&v).expect("serializes"));
        }
        let b = t.elapsed().as_secs_f64();
        for (k, (_, s)) in variants.iter().enumerate() {
            let t = Instant::now();
            for e in &events {
                s.sanitize(e, &mut scratch, &mut out).expect("clean");
                black_box(&out);
            }
            let e = t.elapsed().as_secs_f64();
            if round >= 10 {
                times[k].push(e);
                ratios[k].push(b / e);
            }
        }
        if round >= 10 {
            base.push(b);
        }
    }
    let n = events.len() as f64;
    let b = median(&mut base);
    println!(
        "corpus: {} events, {:.2} MB; {rounds} interleaved rounds (medians)",
        events.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<40} {:>9.0} events/s {:>6.0} MB/s",
        "baseline serde_json::Value parse+serialize",
        n / b,
        bytes as f64 / b / 1e6
    );
    for (k, (name, _)) in variants.iter().enumerate() {
        let e = median(&mut times[k]);
        println!(
            "{name:<40} {:>9.0} events/s {:>6.0} MB/s  ratio to baseline {:.2}x",
            n / e,
            bytes as f64 / e / 1e6,
            median(&mut ratios[k])
        );
    }
}
