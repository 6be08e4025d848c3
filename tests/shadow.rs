//! Trying a rule change before it takes effect: `diff` over a file, and
//! shadow rules on live events in the service (mock cluster), whose output
//! is never produced.

mod common;

use common::kafka::{cluster, high_watermarks, produce, CLEAN, DLQ, RAW};
use serde_json::Value;

const CORPUS: &str = include_str!("data/corpus.jsonl");

/// The default rules plus one rule that drops `last_name`.
fn candidate(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::root().join("rules/customerio.yaml")).unwrap()
        + "\n  - id: never-send-last-name\n    action: drop\n    fields: [last_name]\n";
    let p = dir.join("candidate.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// (records with a last_name, last_name occurrences) in the first `n` lines.
fn last_names(n: usize) -> (u64, u64) {
    let (mut records, mut all) = (0, 0);
    for l in CORPUS.lines().take(n) {
        let v: Value = serde_json::from_str(l).unwrap();
        let calls = v
            .get("batch")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| vec![v.clone()]);
        let k = calls
            .iter()
            .filter(|c| c.pointer("/traits/last_name").is_some())
            .count() as u64;
        records += (k > 0) as u64;
        all += k;
    }
    (records, all)
}

fn es(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .current_dir(common::root())
        .output()
        .unwrap()
}

#[test]
fn diff_shows_exactly_what_a_candidate_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cand = candidate(dir.path());
    let o = es(&[
        "diff",
        "-r",
        "rules/customerio.yaml",
        "--candidate",
        cand.to_str().unwrap(),
        "-i",
        "tests/data/corpus.jsonl",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", common::output_text(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (records, all) = last_names(2000);
    assert_eq!(doc["events"], 2000);
    assert_eq!(doc["differing"], records);
    assert_eq!(
        doc["counts"],
        serde_json::json!([{"kind": "field_removed", "rule": "never-send-last-name (drop)", "differences": all}])
    );
    let first = &doc["events_differing"][0]["differences"][0];
    assert!(
        first["path"]
            .as_str()
            .unwrap()
            .ends_with("traits.last_name"),
        "{first}"
    );
    // For CI: a change that is meant to be a no-op fails when it is not.
    let o = es(&[
        "diff",
        "-r",
        "rules/customerio.yaml",
        "--candidate",
        cand.to_str().unwrap(),
        "-i",
        "tests/data/corpus.jsonl",
        "--fail-on-difference",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("2000 events, {records} differ")),
        "{text}"
    );
    let o = es(&[
        "diff",
        "-r",
        "rules/customerio.yaml",
        "--candidate",
        "rules/customerio.yaml",
        "-i",
        "tests/data/corpus.jsonl",
        "--fail-on-difference",
    ]);
    assert!(o.status.success(), "{}", common::output_text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_rules_count_their_differences_on_live_events_and_produce_nothing() {
    let mock = cluster(4);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let cand = candidate(dir.path());
    let port = common::http::free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-shadow\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000' }}\nrules: {{ file: {}, hash_key_file: {}, shadow_file: {} }}\nhttp: {{ listen: '127.0.0.1:{port}' }}\nlog: {{ format: json }}\ndead_letters: {{ encrypt: false }}\n",
            rules.display(),
            key.display(),
            cand.display()
        ),
    )
    .unwrap();
    let records: Vec<(Option<String>, Vec<u8>)> = CORPUS
        .lines()
        .take(300)
        .map(|l| (None, l.as_bytes().to_vec()))
        .collect();
    produce(&bs, &records).await;
    let _service = common::start_service(&cfg, &dir.path().join("service.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let doc = loop {
        let doc = common::http::get(port, "/shadow")
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok());
        if let Some(d) = doc.clone().filter(|d| d["compared"].as_u64() == Some(300)) {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow did not compare 300 events: {doc:?} {:?}",
            common::http::get(port, "/metrics").map(|(_, m)| m
                .lines()
                .filter(|l| l.contains("shadow") || l.contains("messages_in"))
                .map(str::to_string)
                .collect::<Vec<_>>())
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let (records_differing, all) = last_names(300);
    assert_eq!(doc["different"], records_differing);
    assert_eq!(doc["rule_set"], "customerio-default");
    let (_, metrics) = common::http::get(port, "/metrics").unwrap();
    let by_rule = common::metric_in(
        &metrics,
        "event_sanitizer_shadow_differences_total",
        &[
            ("kind", "field_removed"),
            ("rule", "never-send-last-name (drop)"),
        ],
    );
    assert_eq!(by_rule, Some(all as f64));
    assert_eq!(
        common::metric_in(&metrics, "event_sanitizer_shadow_differences_total", &[]),
        Some(all as f64)
    );
    assert_eq!(
        common::metric_in(
            &metrics,
            "event_sanitizer_shadow_events_total",
            &[("result", "skipped")]
        ),
        Some(0.0)
    );
    // The candidate produces nothing: the clean topic holds one record per
    // input, each still with its last name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while high_watermarks(&bs, CLEAN, 4).iter().sum::<i64>() < 300 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(high_watermarks(&bs, CLEAN, 4).iter().sum::<i64>(), 300);
    let out = common::kafka::read_outputs(&bs, 300, std::time::Duration::from_secs(30)).await;
    let kept = out
        .iter()
        .filter(|o| o.json().to_string().contains("\"last_name\""))
        .count() as u64;
    assert_eq!(kept, records_differing);
}
