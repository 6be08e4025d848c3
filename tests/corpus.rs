//! The shared corpus (tests/data/corpus.jsonl, made by
//! ../shared/corpus/gen_events.py --count 2000 --seed 7) through the
//! default rules: no planted PII survives verbatim, every line is clean
//! JSON, and output is deterministic.

mod common;
use event_sanitizer::engine::Scratch;

#[derive(serde::Deserialize)]
struct Planted {
    line: usize,
    never: Vec<String>,
    hashed: Vec<String>,
}

/// Whether `value` occurs in `out` as the corpus README defines a leak:
/// verbatim, except values under 5 characters, which only count as a whole
/// JSON string.
fn leaks(out: &str, value: &str) -> bool {
    if value.chars().count() < 5 {
        out.contains(&serde_json::to_string(value).unwrap())
    } else {
        out.contains(value)
    }
}

#[test]
fn no_planted_pii_survives_the_default_rules() {
    let s = common::default_rules();
    let events = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let planted =
        std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl.pii.jsonl")).unwrap();
    let planted: Vec<Planted> = planted
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let (mut checked, mut lines) = (0, 0);
    for (i, (line, pii)) in events.lines().zip(&planted).enumerate() {
        assert_eq!(pii.line, i + 1);
        s.sanitize(line.as_bytes(), &mut scratch, &mut out)
            .unwrap_or_else(|r| panic!("line {}: dead letter {r}", i + 1));
        let text = std::str::from_utf8(&out).unwrap();
        serde_json::from_str::<serde_json::Value>(text)
            .unwrap_or_else(|e| panic!("line {}: not JSON: {e}", i + 1));
        for v in pii.never.iter().chain(&pii.hashed) {
            assert!(
                !leaks(text, v),
                "line {}: planted value {v:?} leaked: {text}",
                i + 1
            );
            checked += 1;
        }
        // The input really carried them (the check can fail).
        for v in pii.never.iter().chain(&pii.hashed) {
            assert!(
                leaks(line, v) || line.contains(&v.replace('"', "\\\"")),
                "line {}: {v:?} not in input",
                i + 1
            );
        }
        lines += 1;
    }
    assert_eq!(lines, 2000);
    assert!(checked > 3000, "only {checked} planted values checked");
}

#[test]
fn hashed_fields_come_out_renamed_and_kept_fields_raw() {
    let s = common::default_rules();
    let events = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let (mut with_ip, mut with_email) = (0, 0);
    for line in events.lines().take(500) {
        s.sanitize(line.as_bytes(), &mut scratch, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let input: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(ip) = input.pointer("/context/ip").and_then(|v| v.as_str()) {
            assert_eq!(
                v.pointer("/context/ip_hash").and_then(|v| v.as_str()),
                Some(common::hmac_hex(ip).as_str())
            );
            assert!(v.pointer("/context/ip").is_none());
            with_ip += 1;
        }
        if let Some(email) = input.pointer("/traits/email") {
            assert_eq!(v.pointer("/traits/email"), Some(email), "email is kept raw");
            with_email += 1;
        }
    }
    assert!(with_ip > 100 && with_email > 50, "{with_ip} {with_email}");
}

#[test]
fn same_input_same_bytes_across_scratches_and_instances() {
    let a = common::default_rules();
    let b = common::default_rules();
    let events = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let mut sa = Scratch::default();
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    for line in events.lines().take(300) {
        a.sanitize(line.as_bytes(), &mut sa, &mut oa).unwrap();
        // A fresh scratch and another compiled instance: byte-identical.
        b.sanitize(line.as_bytes(), &mut Scratch::default(), &mut ob)
            .unwrap();
        assert_eq!(oa, ob);
    }
}

#[test]
fn ids_and_timestamps_come_out_unchanged() {
    let s = common::default_rules();
    let events = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut checked = 0;
    for line in events.lines() {
        let input: serde_json::Value = serde_json::from_str(line).unwrap();
        s.sanitize(line.as_bytes(), &mut scratch, &mut out).unwrap();
        let clean: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let calls = |v: &serde_json::Value| -> Vec<serde_json::Value> {
            match v.get("batch").and_then(|b| b.as_array()) {
                Some(b) => b.clone(),
                None => vec![v.clone()],
            }
        };
        for (a, b) in calls(&input).iter().zip(calls(&clean).iter()) {
            for key in ["messageId", "userId", "anonymousId", "timestamp", "sentAt"] {
                if let Some(v) = a.get(key) {
                    assert_eq!(Some(v), b.get(key), "{key} changed in {line}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 4_000, "{checked}");
}
