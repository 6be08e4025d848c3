//! Detector accuracy: every value of tests/data/detector-accuracy.jsonl
//! that must be found is found, exactly (the replacement covers the match
//! and nothing else), by the engine with a one-detector rule; every value
//! that must not be touched comes out unchanged with every built-in
//! detector on; and the planted PII of the shared corpus that a detector
//! is for (IPs, phones, SSNs, cards in fields and in free text) is found.
//! Misses and false positives are counted per detector and all listed.

mod common;
use event_sanitizer::engine::Scratch;
use event_sanitizer::rules::Builtin;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    detector: Option<String>,
    #[serde(rename = "match")]
    matched: Option<String>,
    untouched: Option<String>,
}

fn redactor(detectors: &[&str]) -> event_sanitizer::engine::Sanitizer {
    common::compile(&format!(
        "version: 1\nname: accuracy\nrules:\n  - id: find\n    action: redact\n    values: [{}]\n    replacement: \"<<{{detector}}>>\"\n",
        detectors.join(", ")
    ))
}

/// The string `text` comes out as, under `properties.v`.
fn through(s: &event_sanitizer::engine::Sanitizer, text: &str) -> String {
    let event = serde_json::json!({"type": "track", "event": "e", "userId": "u", "properties": {"v": text}});
    let mut out = Vec::new();
    s.sanitize(
        event.to_string().as_bytes(),
        &mut Scratch::default(),
        &mut out,
    )
    .expect("clean");
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    v["properties"]["v"].as_str().expect("a string").to_string()
}

#[derive(Default)]
struct Count {
    found: usize,
    missed: usize,
    untouched: usize,
    false_positives: usize,
}

/// Each planted value of the shared corpus that a detector is for, with
/// that detector, from the key it was planted under.
fn planted() -> Vec<(String, &'static str)> {
    fn leaves(v: &Value, key: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, k, out)),
            Value::Array(a) => a.iter().for_each(|x| leaves(x, key, out)),
            Value::String(s) => out.push((key.to_string(), s.clone())),
            _ => {}
        }
    }
    let ssn_shape = regex::Regex::new(r"^\d{3}[- ]\d{2}[- ]\d{4}$").unwrap();
    let events = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let pii =
        std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl.pii.jsonl")).unwrap();
    let mut out = Vec::new();
    for (line, pii) in events.lines().zip(pii.lines()) {
        let (event, pii): (Value, Value) = (
            serde_json::from_str(line).unwrap(),
            serde_json::from_str(pii).unwrap(),
        );
        let mut strings = Vec::new();
        leaves(&event, "", &mut strings);
        let values = pii["never"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pii["hashed"].as_array().unwrap());
        for value in values.filter_map(Value::as_str) {
            for (key, s) in strings.iter().filter(|(_, s)| s.contains(value)) {
                let key: String = key
                    .to_ascii_lowercase()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect();
                // A field holds the value whole; free text holds it among words.
                if s != value && key != "notes" {
                    continue;
                }
                let detector = match key.as_str() {
                    "ip" => "ipv4",
                    k if k.contains("phone") => "phone",
                    "ssn" => "us_ssn",
                    "cardnumber" => "credit_card",
                    "notes" if ssn_shape.is_match(value) => "us_ssn",
                    "notes" => "credit_card",
                    _ => continue, // a password, an address: found by key name, not by a detector
                };
                out.push((value.to_string(), detector));
            }
        }
    }
    out
}

#[test]
fn detectors_find_every_value_they_must_and_touch_none_they_must_not() {
    let text =
        std::fs::read_to_string(common::root().join("tests/data/detector-accuracy.jsonl")).unwrap();
    let cases: Vec<Case> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
    let one: BTreeMap<&str, _> = names.iter().map(|n| (*n, redactor(&[n]))).collect();
    let all = redactor(&names);
    let mut counts: BTreeMap<String, Count> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut must_find: Vec<(String, String, String)> = Vec::new();
    for c in &cases {
        match (&c.detector, &c.untouched) {
            (Some(d), None) => must_find.push((
                d.clone(),
                c.text.clone(),
                c.matched.clone().unwrap_or_else(|| c.text.clone()),
            )),
            (None, Some(kind)) => {
                let got = through(&all, &c.text);
                let n = counts.entry(format!("(untouched) {kind}")).or_default();
                if got == c.text {
                    n.untouched += 1;
                } else {
                    n.false_positives += 1;
                    problems.push(format!("false positive on {kind} {:?}: {got:?}", c.text));
                }
            }
            _ => panic!("a case has `detector` or `untouched`: {:?}", c.text),
        }
    }
    let planted = planted();
    assert!(
        planted.len() > 2_000,
        "the corpus plants detector-shaped PII: {}",
        planted.len()
    );
    must_find.extend(
        planted
            .into_iter()
            .map(|(v, d)| (d.to_string(), v.clone(), v)),
    );
    for (d, text, matched) in &must_find {
        let s = one
            .get(d.as_str())
            .unwrap_or_else(|| panic!("no detector {d}"));
        let want = text.replacen(matched.as_str(), &format!("<<{d}>>"), 1);
        let got = through(s, text);
        let n = counts.entry(d.clone()).or_default();
        if got == want {
            n.found += 1;
        } else {
            n.missed += 1;
            problems.push(format!("{d} missed {text:?}: {got:?}, wanted {want:?}"));
        }
    }
    println!(
        "{:<34} {:>6} {:>7} {:>10} {:>16}",
        "detector / kind", "found", "missed", "untouched", "false positives"
    );
    for (k, n) in &counts {
        println!(
            "{k:<34} {:>6} {:>7} {:>10} {:>16}",
            n.found, n.missed, n.untouched, n.false_positives
        );
    }
    for name in &names {
        assert!(
            counts.get(*name).is_some_and(|n| n.found > 0),
            "no case for {name}"
        );
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
