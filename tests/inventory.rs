//! `inventory` as the governance team runs it, on the shared corpus with a
//! field no rule knows planted in it.

mod common;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const CORPUS: &str = include_str!("data/corpus.jsonl");
const PII: &str = include_str!("data/corpus.jsonl.pii.jsonl");

/// Shapes (batch folded, `[*]`) of the string values in `v` that are in `planted`.
fn planted_paths(v: &Value, path: &str, planted: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                planted_paths(c, &p, planted, out);
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|c| planted_paths(c, &format!("{path}[*]"), planted, out)),
        Value::String(s) if planted.contains(s) => {
            out.insert(path.strip_prefix("batch[*].").unwrap_or(path).to_string());
        }
        _ => {}
    }
}

#[test]
fn every_planted_pii_path_is_classified_and_an_unknown_field_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    let mut pii_paths = BTreeSet::new();
    let mut passports = 0;
    for (line, pii) in CORPUS.lines().zip(PII.lines()) {
        let mut v: Value = serde_json::from_str(line).unwrap();
        let p: Value = serde_json::from_str(pii).unwrap();
        let planted: BTreeSet<String> = ["never", "hashed"]
            .iter()
            .flat_map(|k| p[k].as_array().unwrap().iter())
            .filter_map(|s| s.as_str().map(str::to_string))
            .filter(|s| s.len() >= 5)
            .collect();
        planted_paths(&v, "", &planted, &mut pii_paths);
        if let Some(t) = v.get_mut("traits").and_then(Value::as_object_mut) {
            if t.contains_key("email") {
                t.insert("passport_no".into(), format!("P{:08}", passports).into());
                passports += 1;
            }
        }
        input.push_str(&v.to_string());
        input.push('\n');
    }
    assert!(pii_paths.len() > 15 && passports > 100, "{pii_paths:?}");
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, input).unwrap();
    let o = std::process::Command::new(common::bin())
        .args([
            "inventory",
            "-r",
            "rules/customerio.yaml",
            "--format",
            "json",
            "-i",
        ])
        .arg(&file)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["events"], 2000);
    let fields: BTreeMap<String, Value> = doc["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f.clone()))
        .collect();
    for p in &pii_paths {
        let f = &fields[p];
        assert_eq!(
            f["classified"], f["count"],
            "{p} is not always classified: {f}"
        );
        assert!(f["suggestion"].is_null());
    }
    let passport = &fields["traits.passport_no"];
    assert_eq!(passport["count"], passports);
    assert_eq!(passport["classified"], 0);
    assert_eq!(passport["suggestion"]["action"], "drop", "{passport}");
    let unclassified: Vec<&str> = doc["unclassified"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(unclassified.contains(&"traits.passport_no"));
    assert!(
        !unclassified.contains(&"messageId"),
        "spec fields need no rule"
    );
    // The text form says the same to a person.
    let o = std::process::Command::new(common::bin())
        .args(["inventory", "-r", "rules/customerio.yaml", "-i"])
        .arg(&file)
        .current_dir(common::root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("traits.passport_no: suggest drop (the key name `passport_no` looks like a passport number)"), "{text}");
}
