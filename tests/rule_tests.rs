//! Golden tests: every case in rules/tests/ passes, through the library
//! and through the `test` command; and a failing case is reported as one.

mod common;
use event_sanitizer::testing::{discover, TestFile};
use std::process::Command;

#[test]
fn every_shipped_rule_test_passes() {
    let files = discover(&[common::root().join("rules")]).unwrap();
    assert!(!files.is_empty());
    let mut cases = 0;
    for f in files {
        let report = TestFile::load(&f).unwrap().run().unwrap();
        for r in &report.results {
            assert!(
                r.failure.is_none(),
                "{}: {}: {}",
                report.file,
                r.name,
                r.failure.as_deref().unwrap_or("")
            );
            cases += 1;
        }
    }
    assert!(cases >= 10);
}

#[test]
fn the_default_rules_are_each_covered_by_a_case() {
    // Every rule of the default set changes the output of some case.
    let tf = TestFile::load(&common::root().join("rules/tests/customerio.yaml")).unwrap();
    let (file, _) =
        event_sanitizer::rules::RuleFile::load(&common::root().join("rules/customerio.yaml"))
            .unwrap();
    let key = event_sanitizer::secret::Secret::new("k");
    let s = event_sanitizer::engine::Sanitizer::compile(
        &file,
        event_sanitizer::engine::KeySupply::Fixed(&key),
        Default::default(),
    )
    .unwrap();
    for rule in &file.rules {
        let used = tf.cases.iter().any(|c| {
            s.explain(&c.input)
                .decisions
                .iter()
                .any(|d| d.rule == rule.id && d.action != event_sanitizer::engine::NOT_SCANNED)
        });
        assert!(used, "no case exercises rule {}", rule.id);
    }
}

#[test]
fn test_command_passes_and_fails_as_it_should() {
    let ok = Command::new(common::bin())
        .args(["test", "rules/"])
        .current_dir(common::root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().ends_with("passed, 0 failed"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let rules = common::root().join("rules/customerio.yaml");
    std::fs::write(
        dir.path().join("t.yaml"),
        format!(
            "rules: {}\nhash_key: k\ncases:\n  - name: wrong on purpose\n    input: {{ type: identify, userId: u1, traits: {{ ssn: x, plan: pro }} }}\n    expect: {{ type: identify, userId: u1, traits: {{ ssn: x, plan: pro }} }}\n",
            rules.display()
        ),
    )
    .unwrap();
    let bad = Command::new(common::bin())
        .args(["test"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("test wrong on purpose ... failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("t.yaml:4: the output differs from `expect`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-    \"ssn\": \"x\""),
        "diff shows the dropped field: {stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");

    // For CI: the same outcome as JSON and as JUnit XML, exit code alike.
    let as_format = |format: &str| {
        let o = Command::new(common::bin())
            .args(["test", "--format", format])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{format}");
        String::from_utf8(o.stdout).unwrap()
    };
    let j: serde_json::Value = serde_json::from_str(&as_format("json")).unwrap();
    assert_eq!(
        (j["passed"].as_u64(), j["failed"].as_u64()),
        (Some(0), Some(1))
    );
    let case = &j["files"][0]["cases"][0];
    assert_eq!(case["name"], "wrong on purpose");
    assert_eq!(case["status"], "failed");
    assert_eq!(case["line"], 4);
    assert!(case["failure"]
        .as_str()
        .unwrap()
        .contains("the output differs from `expect`"));
    let x = as_format("junit");
    assert!(x.starts_with("<?xml"), "{x}");
    assert!(
        x.contains("<testsuites name=\"event-sanitizer rule tests\" tests=\"1\" failures=\"1\">"),
        "{x}"
    );
    assert!(
        x.contains("<testcase name=\"wrong on purpose\"") && x.contains("line=\"4\""),
        "{x}"
    );
    assert!(
        x.contains("<failure message=\"the output differs from `expect`"),
        "{x}"
    );
    // The quoted input is escaped: the XML stays well formed.
    assert!(!x.contains("<ssn"), "{x}");
    assert_eq!(
        x.matches("<testcase").count(),
        x.matches("</testcase>").count()
    );
}

#[test]
fn cases_can_expect_the_records_of_a_split_batch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "version: 1\nname: small\ndestination: { profile: customerio, max_batch_bytes: 80, max_call_bytes: 40 }\nrules: []\n",
    )
    .unwrap();
    let case = |expect: &str| {
        format!(
            "rules: rules.yaml\ncases:\n  - name: split\n    input: {{ batch: [ {{ type: page, userId: a }}, {{ type: page, userId: b }}, {{ type: page, userId: c }} ] }}\n{expect}"
        )
    };
    let run = |text: String| {
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, text).unwrap();
        let report = TestFile::load(&path).unwrap().run().unwrap();
        report.results[0].failure.clone()
    };
    let two = "    expect_records:\n      - { batch: [ { type: page, userId: a }, { type: page, userId: b } ] }\n      - { batch: [ { type: page, userId: c } ] }\n";
    assert_eq!(run(case(two)), None);
    let wrong = "    expect_records:\n      - { batch: [ { type: page, userId: a } ] }\n      - { batch: [ { type: page, userId: b }, { type: page, userId: c } ] }\n";
    let failure = run(case(wrong)).expect("a wrong split fails");
    assert!(
        failure.contains("differs from `expect_records`"),
        "{failure}"
    );
    let single = "    expect: { batch: [ { type: page, userId: a }, { type: page, userId: b }, { type: page, userId: c } ] }\n";
    let failure = run(case(single)).expect("a split output is not one record");
    assert!(failure.contains("split into 2 records"), "{failure}");
    let dead = "    expect_dead_letter: contract.batch_too_large\n";
    assert!(run(case(dead)).unwrap().contains("expected a dead letter"));
}

/// `test --update`: after the diffs, each failing `expect` is replaced by
/// the actual output (block or flow style), the rest of the file (comments
/// included) untouched, and the file then passes.
#[test]
fn test_update_writes_the_actual_outputs_and_keeps_the_rest_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::root().join("rules/customerio.yaml"),
        dir.path().join("customerio.yaml"),
    )
    .unwrap();
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let original =
        std::fs::read_to_string(common::root().join("rules/tests/customerio.yaml")).unwrap();
    // One flow `expect` made wrong, and a block one added wrong.
    let broken = original.replacen(
        "expect:   { type: identify, userId: u1, traits: { plan: pro } }",
        "expect:   { type: identify, userId: u1, traits: { plan: free } }",
        1,
    ) + "  - name: a block expectation\n    input: { type: identify, userId: u2, traits: { ssn: \"123-45-6789\", plan: x } }\n    expect:\n      type: identify\n      # a comment inside the value goes with it\n      userId: u2\n      traits: { ssn: kept }\n";
    assert_ne!(broken, original);
    let file = tests.join("customerio.yaml");
    std::fs::write(&file, &broken).unwrap();
    let run = |update: bool| {
        let mut c = std::process::Command::new(common::bin());
        c.arg("test").arg(&tests);
        if update {
            c.arg("--update");
        }
        c.output().unwrap()
    };
    let o = run(true);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the run that updates still reports the failures"
    );
    let out = common::output_text(&o);
    assert!(out.contains("updated 2 case(s)"), "{out}");
    let updated = std::fs::read_to_string(&file).unwrap();
    assert!(
        updated.contains(r#"expect: {"traits":{"plan":"pro"},"type":"identify","userId":"u1"}"#),
        "{updated}"
    );
    assert!(
        updated.contains(r#"expect: {"traits":{"plan":"x"},"type":"identify","userId":"u2"}"#),
        "{updated}"
    );
    assert!(!updated.contains("a comment inside the value"), "{updated}");
    for line in original.lines().filter(|l| l.starts_with('#')) {
        assert!(updated.contains(line), "comment kept: {line}");
    }
    assert_eq!(
        updated.lines().count(),
        original.lines().count() + 3,
        "{updated}"
    );
    let o = run(false);
    assert!(o.status.success(), "{}", common::output_text(&o));
}
