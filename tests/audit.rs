//! The clean-topic audit's inspector on the shared corpus: nothing found on
//! what the default rules produce (a false positive is a failure), and
//! exactly the gap of a rule set with one field left out.

mod common;

use common::kafka::{cluster, high_watermarks, produce, CLEAN, DLQ, RAW};
use event_sanitizer::audit::{Inspector, Tally, NEVER_SEND_KEY};
use event_sanitizer::engine::{KeySupply, Limits, Sanitizer, Scratch};
use event_sanitizer::rules::{RuleFile, DEFAULT_RULES};
use event_sanitizer::secret::Secret;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const CORPUS: &str = include_str!("data/corpus.jsonl");

fn compile(text: &str) -> (Arc<Sanitizer>, RuleFile) {
    let (file, _) = RuleFile::parse("rules.yaml", text).unwrap();
    let key = Secret::new(b"audit-test-key".to_vec());
    let s = Sanitizer::compile(&file, KeySupply::Fixed(&key), Limits::default()).unwrap();
    (Arc::new(s), file)
}

/// Sanitizes the corpus with `rules` and audits every clean line.
fn audit(rules: &str) -> Tally {
    let (s, file) = compile(rules);
    let inspector = Inspector::new(Some(s.clone()), Some(&file));
    let mut tally = Tally::default();
    let (mut scratch, mut out) = (Scratch::default(), Vec::new());
    for line in CORPUS.lines() {
        out.clear();
        s.sanitize(line.as_bytes(), &mut scratch, &mut out)
            .expect("the corpus is valid");
        let found = inspector.inspect(&out).unwrap();
        tally.add(&found);
    }
    tally
}

#[test]
fn nothing_is_found_on_what_the_default_rules_produce() {
    let t = audit(DEFAULT_RULES);
    assert_eq!(t.records, 2000);
    assert_eq!(t.by_shape, Default::default(), "false positives");
}

/// Per record of the corpus, what `planted` says is in its events (batch
/// elements one by one, under `batch[*].`), counted once per record per
/// (shape, detector): the way the audit counts.
fn expected(
    planted: impl Fn(&str, &Value, &mut BTreeSet<(String, &'static str)>),
) -> BTreeMap<(String, &'static str), u64> {
    let mut want = BTreeMap::new();
    for line in CORPUS.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let mut seen = BTreeSet::new();
        match v.get("batch").and_then(Value::as_array) {
            Some(b) => b.iter().for_each(|e| planted("batch[*].", e, &mut seen)),
            None => planted("", &v, &mut seen),
        }
        for k in seen {
            *want.entry(k).or_default() += 1;
        }
    }
    want
}

#[test]
fn a_field_left_out_of_never_send_is_found_at_its_paths_with_exact_counts() {
    let rules = DEFAULT_RULES.replacen("fields: [ssn, ", "fields: [", 1);
    assert_ne!(rules, DEFAULT_RULES);
    let t = audit(&rules);
    let want = expected(|prefix, e, seen| {
        for k in e
            .get("traits")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|t| t.keys())
        {
            if k.eq_ignore_ascii_case("ssn") {
                seen.insert((format!("{prefix}traits.{k}"), NEVER_SEND_KEY));
            }
        }
    });
    assert!(want.values().sum::<u64>() > 50, "the corpus plants SSNs");
    assert_eq!(t.by_shape, want);
}

#[test]
fn free_text_left_unscanned_is_found_by_the_value_detectors() {
    let start = DEFAULT_RULES.find("  - id: free-text-scan").unwrap();
    let t = audit(&DEFAULT_RULES[..start]);
    let want = expected(|prefix, e, seen| {
        if let Some(notes) = e.pointer("/properties/notes").and_then(Value::as_str) {
            let detector = if notes.contains("SSN") {
                "us_ssn"
            } else {
                "credit_card"
            };
            seen.insert((format!("{prefix}properties.notes"), detector));
        }
    });
    assert!(want.len() >= 2, "{want:?}");
    assert_eq!(t.by_shape, want);
}

const PARTITIONS: i32 = 4;

/// A service configuration on the mock cluster with canaries each second
/// and `http.listen` on `port` (0: any).
fn write_config(
    dir: &std::path::Path,
    bs: &str,
    rules: &std::path::Path,
    key: &std::path::Path,
    audit_file: &std::path::Path,
    port: u16,
) -> std::path::PathBuf {
    let cfg = dir.join(format!("config-{port}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-audit-test\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000' }}\nrules: {{ file: {}, hash_key_file: {}, reload_interval: 200ms }}\nhttp: {{ listen: '127.0.0.1:{port}' }}\nlog: {{ format: json, level: info, audit_file: {} }}\ndead_letters: {{ encrypt: false }}\ncanary: {{ interval: 1s }}\n",
            rules.display(),
            key.display(),
            audit_file.display()
        ),
    )
    .unwrap();
    cfg
}

fn cli(args: &[&str], cfg: &std::path::Path) -> (i32, String, String) {
    let o = std::process::Command::new(common::bin())
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Through the real binary and the mock cluster: a rule set that forgets
/// to hash `phone` runs with canaries on; `audit --once` reports exactly
/// that path and a leaked canary; `incident` counts the people, writes
/// nothing without `--apply` and one repair per person with it; no raw
/// phone number is in a report, a log or the audit stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_gap_in_the_rules_is_audited_alerted_by_canaries_and_repaired() {
    let mock = cluster(PARTITIONS);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let gap = DEFAULT_RULES.replacen("fields: [phone, ", "fields: [", 1);
    std::fs::write(&rules, &gap).unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let cfg = write_config(dir.path(), &bs, &rules, &key, &audit_file, 0);
    let lines: Vec<&str> = CORPUS.lines().take(300).collect();
    let records: Vec<(Option<String>, Vec<u8>)> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["userId"].as_str().map(str::to_string),
                l.as_bytes().to_vec(),
            )
        })
        .collect();
    produce(&bs, &records).await;
    // What leaks: identify events with a `phone` key in traits, alone or
    // in a batch.
    let mut people = BTreeSet::new();
    let mut leaked_phones = Vec::new();
    let (mut phone_records, mut phone_events) = (0u64, 0u64);
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let batch = v.get("batch").and_then(Value::as_array).cloned();
        for e in batch.clone().unwrap_or_else(|| vec![v.clone()]) {
            if let Some(p) = e.pointer("/traits/phone").and_then(Value::as_str) {
                phone_events += 1;
                phone_records += batch.is_none() as u64;
                people.insert(e["userId"].as_str().unwrap().to_string());
                leaked_phones.push(p.to_string());
            }
        }
    }
    assert!(phone_records > 10);
    let log = dir.path().join("service.log");
    let service = common::start_service(&cfg, &log);
    // The service drains the input and sends canaries each second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let summary = loop {
        let (code, out, err) = cli(&["audit", "--once", "--format", "json"], &cfg);
        let doc: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        if doc["records"].as_u64().unwrap_or(0) >= 300 && doc["canaries"].as_u64().unwrap_or(0) >= 2
        {
            assert_eq!(code, 1, "findings exit 1: {err}");
            break doc;
        }
        assert!(std::time::Instant::now() < deadline, "{out} {err}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    drop(service);
    let findings: Vec<(String, String, u64)> = summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().into(),
                f["detector"].as_str().unwrap().into(),
                f["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        findings.contains(&("traits.phone".into(), "unhashed_key".into(), phone_records)),
        "{findings:?}"
    );
    assert!(
        findings
            .iter()
            .all(|(p, _, _)| p.ends_with(".phone") || p.ends_with(".phone_number")),
        "only the gap is reported: {findings:?}"
    );
    assert!(
        summary["canary_leaks"].as_u64().unwrap() >= 2,
        "every canary leaks its phone"
    );

    // The incident: a dry run writes nothing.
    let before: i64 = high_watermarks(&bs, CLEAN, PARTITIONS).iter().sum();
    let repairs = dir.path().join("repairs.jsonl");
    let (code, out, err) = cli(
        &[
            "incident",
            "--path",
            "traits.phone",
            "--repairs",
            repairs.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["people_affected"].as_u64(),
        Some(people.len() as u64),
        "{report}"
    );
    assert_eq!(report["events_affected"].as_u64(), Some(phone_events));
    assert_eq!(
        report["repair"]["records"].as_u64(),
        Some(people.len() as u64)
    );
    assert!(report["produced_by"][0]["rules_hash"]
        .as_str()
        .is_some_and(|h| h.len() == 12));
    assert_eq!(
        high_watermarks(&bs, CLEAN, PARTITIONS).iter().sum::<i64>(),
        before
    );
    let review = std::fs::read_to_string(&repairs).unwrap();
    assert_eq!(review.lines().count(), people.len());
    for line in review.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["value"]["type"], "identify");
        assert_eq!(r["value"]["traits"], serde_json::json!({"phone": ""}));
        assert!(people.contains(r["value"]["userId"].as_str().unwrap()));
    }
    // Applied: one repair per person on the clean topic.
    let (code, _, err) = cli(&["incident", "--path", "traits.phone", "--apply"], &cfg);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        high_watermarks(&bs, CLEAN, PARTITIONS).iter().sum::<i64>(),
        before + people.len() as i64
    );
    // The rule that closes the leak, and its test case: the rule file with
    // the rule added passes `check`, and the case passes `test`.
    let report_file = dir.path().join("report.json");
    let (code, suggestion, err) = cli(
        &[
            "incident",
            "--path",
            "traits.phone",
            "--suggest-rule",
            "--report",
            report_file.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, 0, "{err}");
    let (rule, case) = suggestion
        .split_once("# A rule test case")
        .expect("a rule and a case");
    let rule: String = rule
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let case: String = case.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        rule.contains("action: drop") && rule.contains("fields: [phone]"),
        "{rule}"
    );
    // A later scan does not count the repairs as leaks.
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(again["events_affected"].as_u64(), Some(phone_events));
    let fixed = dir.path().join("fixed.yaml");
    std::fs::write(&fixed, format!("{gap}\n{rule}\n")).unwrap();
    let tests = dir.path().join("fixed-tests.yaml");
    std::fs::write(
        &tests,
        format!("rules: fixed.yaml\nhash_key: test-only-key\ncases:\n{case}\n"),
    )
    .unwrap();
    let o = std::process::Command::new(common::bin())
        .arg("check")
        .arg(&fixed)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    let o = std::process::Command::new(common::bin())
        .arg("test")
        .arg(&tests)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{case}", common::output_text(&o));
    assert!(
        !case.contains(leaked_phones[0].as_str())
            && !suggestion.contains(leaked_phones[0].as_str())
    );

    // A path outside traits is in Customer.io's activity, which only a
    // deletion removes: refused without --delete, and --delete needs the
    // privacy section.
    let (code, _, err) = cli(&["incident", "--path", "context.page.url"], &cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--delete"), "{err}");
    let (code, _, err) = cli(&["incident", "--path", "traits.phone", "--delete"], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("`privacy` section"), "{err}");
    // With it: one deletion request per person, in the requests format.
    mock.create_topic("privacy.requests", 1, 1).unwrap();
    let with_privacy = dir.path().join("privacy.yaml");
    std::fs::write(
        &with_privacy,
        std::fs::read_to_string(&cfg).unwrap() + "privacy: { requests_topic: privacy.requests }\n",
    )
    .unwrap();
    let deletions = dir.path().join("deletions.jsonl");
    let (code, _, err) = cli(
        &[
            "incident",
            "--path",
            "traits.phone",
            "--delete",
            "--apply",
            "--report",
            report_file.to_str().unwrap(),
            "--repairs",
            deletions.to_str().unwrap(),
        ],
        &with_privacy,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        high_watermarks(&bs, "privacy.requests", 1),
        vec![people.len() as i64]
    );
    let mut named = BTreeSet::new();
    for line in std::fs::read_to_string(&deletions).unwrap().lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["topic"], "privacy.requests");
        let req = event_sanitizer::privacy::parse(r["value"].to_string().as_bytes())
            .expect("a valid privacy request");
        assert_eq!(req.action, event_sanitizer::privacy::Action::Delete);
        named.insert(req.user_id.unwrap());
    }
    assert_eq!(named, people);

    // No raw phone number in the reports, the logs or the audit stream.
    let audit_text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(audit_text.contains("\"event\":\"audit_finding\""));
    assert!(audit_text.contains("\"event\":\"incident\""));
    let service_log = std::fs::read_to_string(&log).unwrap();
    for p in &leaked_phones {
        for (what, text) in [
            ("report", &out),
            ("audit stream", &audit_text),
            ("log", &service_log),
            ("repairs", &review),
        ] {
            assert!(
                !text.contains(p.as_str()),
                "a raw phone number in the {what}"
            );
        }
    }
}

/// The audit as a service, scraped in the exposition format: with the
/// default rules every canary arrives and none leaks, and the corpus gives
/// no finding; when the rule file loses the phone hash (hot reload), the
/// leak metric rises with the first canary sent under the new rules.
#[tokio::test(flavor = "multi_thread")]
async fn canaries_arrive_clean_until_a_rule_is_removed_then_the_leak_metric_rises() {
    let mock = cluster(PARTITIONS);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let audit_file = dir.path().join("audit.jsonl");
    let (service_port, audit_port) = (common::http::free_port(), common::http::free_port());
    let service_cfg = write_config(dir.path(), &bs, &rules, &key, &audit_file, service_port);
    let audit_cfg = write_config(dir.path(), &bs, &rules, &key, &audit_file, audit_port);
    let records: Vec<(Option<String>, Vec<u8>)> = CORPUS
        .lines()
        .take(200)
        .map(|l| (None, l.as_bytes().to_vec()))
        .collect();
    produce(&bs, &records).await;
    let _service = common::start_service(&service_cfg, &dir.path().join("service.log"));
    let _audit: common::Service = std::process::Command::new(common::bin())
        .args(["audit", "-c"])
        .arg(&audit_cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("audit.log")).unwrap())
        .spawn()
        .unwrap()
        .into();
    let scrape = |name: &str, labels: &[(&str, &str)]| {
        common::http::get(audit_port, "/metrics")
            .and_then(|(_, text)| common::metric_in(&text, name, labels))
            .unwrap_or(0.0)
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait("the audit reads the corpus and three canaries", &|| {
        scrape("event_sanitizer_audit_records_total", &[]) >= 203.0
            && scrape("event_sanitizer_audit_canaries_arrived_total", &[]) >= 3.0
    });
    assert_eq!(scrape("event_sanitizer_audit_canary_leaks_total", &[]), 0.0);
    assert_eq!(
        scrape("event_sanitizer_audit_findings_total", &[]),
        0.0,
        "no false positive"
    );
    // Every series is there at zero for the alert to see the first one.
    let (_, text) = common::http::get(audit_port, "/metrics").unwrap();
    assert_eq!(
        common::metric_in(
            &text,
            "event_sanitizer_audit_canary_leaks_total",
            &[("kind", "phone")]
        ),
        Some(0.0)
    );
    let sent = common::scraped(service_port, "event_sanitizer_canaries_sent_total").unwrap();
    assert!(sent >= 3.0);

    // The phone hash removed from the running rules.
    std::fs::write(
        &rules,
        DEFAULT_RULES.replacen("fields: [phone, ", "fields: [", 1),
    )
    .unwrap();
    let arrived_before = scrape("event_sanitizer_audit_canaries_arrived_total", &[]);
    wait("a canary leaks its phone", &|| {
        scrape(
            "event_sanitizer_audit_canary_leaks_total",
            &[("kind", "phone")],
        ) >= 1.0
    });
    // The first canary sent under the new rules leaks: before it, at most
    // the canary in flight at the change and one sent before the reload
    // (every 200 ms) took effect can arrive clean.
    let arrived = scrape("event_sanitizer_audit_canaries_arrived_total", &[]);
    assert!(
        arrived - arrived_before <= 3.0,
        "{arrived_before} -> {arrived}"
    );
    // Nothing else leaks from a canary.
    assert_eq!(
        scrape("event_sanitizer_audit_canary_leaks_total", &[]),
        scrape(
            "event_sanitizer_audit_canary_leaks_total",
            &[("kind", "phone")]
        )
    );
    let stream = std::fs::read_to_string(&audit_file).unwrap();
    assert!(stream.contains("\"event\":\"canary_leaked\""), "{stream}");
}
