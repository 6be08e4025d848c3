//! `inventory` as the governance team runs it, on the shared corpus with a
//! field no rule knows planted in it.

mod common;

use common::kafka::{cluster, produce, CLEAN, DLQ, RAW};
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

/// The service keeps the inventory on live events: `GET /inventory` on the
/// metrics port classifies what the rules touch, lists a planted unknown
/// field as unclassified with a suggestion, and the first sighting of it is
/// counted (exposition format) and audited by path, never by value.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_serves_its_inventory_and_counts_a_new_unclassified_field() {
    let mock = cluster(4);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let port = common::http::free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-inventory\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000' }}\nrules: {{ file: {}, hash_key_file: {} }}\nhttp: {{ listen: '127.0.0.1:{port}' }}\nlog: {{ format: json, audit_file: {} }}\ndead_letters: {{ encrypt: false }}\ninventory: {{ sample_every: 1 }}\n",
            rules.display(),
            key.display(),
            audit.display()
        ),
    )
    .unwrap();
    let mut records = Vec::new();
    let mut passports = Vec::new();
    for line in CORPUS.lines().take(200) {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v.get_mut("traits").and_then(Value::as_object_mut) {
            if t.contains_key("email") && passports.len() < 10 {
                let p = format!("P{:08}", 90_000_000 + passports.len());
                t.insert("passport_no".into(), p.clone().into());
                passports.push(p);
            }
        }
        records.push((None, v.to_string().into_bytes()));
    }
    assert_eq!(passports.len(), 10);
    let log = dir.path().join("service.log");
    let _service = common::start_service(&cfg, &log);
    // The inventory takes a sample when it can (a burst beyond its queue is
    // skipped): produced in small waves, every event is looked at.
    let ready = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::http::get(port, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(
            std::time::Instant::now() < ready,
            "the service is not ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for wave in records.chunks(10) {
        produce(&bs, wave).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let doc = loop {
        let doc = common::http::get(port, "/inventory")
            .and_then(|(status, body)| (status == 200).then_some(body))
            .and_then(|b| serde_json::from_str::<Value>(&b).ok());
        if let Some(d) = doc.filter(|d| d["events"].as_u64() == Some(200)) {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no inventory of 200 events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let field = |p: &str| {
        doc["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        field("traits.phone")["classified"],
        field("traits.phone")["count"]
    );
    assert_eq!(field("traits.passport_no")["count"], 10);
    assert_eq!(field("traits.passport_no")["suggestion"]["action"], "drop");
    assert!(doc["unclassified"]
        .as_array()
        .unwrap()
        .contains(&Value::from("traits.passport_no")));
    let counted = common::scraped(port, "event_sanitizer_unclassified_fields_total").unwrap();
    assert!(counted >= 1.0, "{counted}");
    let stream = std::fs::read_to_string(&audit).unwrap();
    let sightings = stream
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"unclassified_field\"")
                && l.contains("\"path\":\"traits.passport_no\"")
        })
        .count();
    assert_eq!(sightings, 1, "audited once, on its first sighting");
    let text = stream + &std::fs::read_to_string(&log).unwrap() + &doc.to_string();
    for p in &passports {
        assert!(
            !text.contains(p.as_str()),
            "a passport number in the audit stream, log or inventory"
        );
    }
}
