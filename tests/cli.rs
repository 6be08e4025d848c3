//! The binary as a newcomer uses it: exit codes, messages, and that the
//! hash key never shows in anything it prints.

mod common;
use std::process::{Command, Output};

fn es(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .current_dir(common::root())
        .env_remove("SANITIZER_HASH_KEY")
        .output()
        .unwrap()
}

use common::output_text as text;

#[test]
fn check_passes_good_files_and_fails_bad_ones() {
    let ok = es(&["check", "rules/customerio.yaml"]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("rules/customerio.yaml: ok (5 rules, 0 warnings)"));
    let bad = es(&[
        "check",
        "rules/customerio.yaml",
        "tests/bad_rules/duplicate_id.yaml",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).contains("tests/bad_rules/duplicate_id.yaml:7:5: error: rule same:"),
        "{}",
        text(&bad)
    );
    let missing = es(&["check", "no/such.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("no/such.yaml:1:1: error: cannot read the rule file"));

    // For CI: the same as JSON, same exit code.
    let j = es(&[
        "check",
        "--format",
        "json",
        "rules/customerio.yaml",
        "tests/bad_rules/duplicate_id.yaml",
    ]);
    assert_eq!(j.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["files"][0]["ok"], true);
    assert_eq!(v["files"][0]["rules"], 5);
    let bad = &v["files"][1];
    assert_eq!(bad["ok"], false);
    let p = &bad["problems"][0];
    assert_eq!(
        (&p["severity"], &p["line"], &p["column"], &p["rule"]),
        (&"error".into(), &7.into(), &5.into(), &"same".into())
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(es(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(es(&["explain"]).status.code(), Some(2));
}

#[test]
fn explain_shows_output_and_decisions() {
    let o = es(&[
        "explain",
        "--rules",
        "rules/customerio.yaml",
        "--placeholder-key",
        "tests/data/one_event.json",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("traits.phone -> traits.phone_hash: hash by rule hash-contact"),
        "{t}"
    );
    assert!(t.contains("traits.ssn: drop by rule never-send"), "{t}");
    let j = es(&[
        "explain",
        "--rules",
        "rules/customerio.yaml",
        "--placeholder-key",
        "--format",
        "json",
        "tests/data/one_event.json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["output"]["traits"]["email"], "jane@example.com");
    assert!(v["output"]["traits"].get("ssn").is_none());
}

#[test]
fn missing_key_is_a_clear_configuration_error() {
    let o = es(&[
        "explain",
        "--rules",
        "rules/customerio.yaml",
        "tests/data/one_event.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains(
            "cannot read the hash key from environment variable SANITIZER_HASH_KEY: it is not set"
        ),
        "{t}"
    );
    assert!(t.contains("--hash-key-file"), "{t}");
}

#[test]
fn the_key_never_appears_in_output_logs_or_errors() {
    let secret = "correct-horse-battery-staple-42";
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    let runs = [
        Command::new(common::bin())
            .args([
                "explain",
                "-r",
                "rules/customerio.yaml",
                "tests/data/one_event.json",
            ])
            .env("SANITIZER_HASH_KEY", secret)
            .current_dir(common::root())
            .output()
            .unwrap(),
        Command::new(common::bin())
            .args([
                "sanitize",
                "-r",
                "rules/customerio.yaml",
                "-i",
                "rules/examples/events.jsonl",
            ])
            .env("SANITIZER_HASH_KEY", secret)
            .current_dir(common::root())
            .output()
            .unwrap(),
        Command::new(common::bin())
            .args(["sanitize", "-r", "rules/customerio.yaml", "--hash-key-file"])
            .arg(&key)
            .args(["-i", "tests/data/bad_lines.jsonl"])
            .current_dir(common::root())
            .output()
            .unwrap(),
    ];
    for o in runs {
        assert!(o.status.success(), "{}", text(&o));
        assert!(!text(&o).contains(secret));
    }
}

#[test]
fn sanitize_writes_clean_lines_and_dead_letters_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clean.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let o = Command::new(common::bin())
        .args([
            "sanitize",
            "-r",
            "rules/customerio.yaml",
            "--placeholder-key",
            "-i",
            "tests/data/bad_lines.jsonl",
            "-o",
        ])
        .arg(&out)
        .arg("--dead-letters")
        .arg(&dead)
        .current_dir(common::root())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("sanitized 6 lines"), "{t}");
    assert!(
        t.contains("2 clean, 3 dead letters, 1 blank lines skipped"),
        "{t}"
    );
    assert!(
        t.contains("dead letter invalid_json: 1")
            && t.contains("dead letter not_an_object: 1")
            && t.contains("dead letter duplicate_key: 1"),
        "{t}"
    );
    let clean = std::fs::read_to_string(&out).unwrap();
    assert_eq!(clean.lines().count(), 2);
    assert!(!clean.contains("123-45-6789"));
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 3);
    assert_eq!(dead[0]["line"], 2);
    assert_eq!(dead[0]["reason"], "invalid_json");
    assert_eq!(dead[0]["raw"], "{not json");
    // --fail-on-dead-letter turns them into a failing exit code.
    let f = es(&[
        "sanitize",
        "-r",
        "rules/customerio.yaml",
        "--placeholder-key",
        "-i",
        "tests/data/bad_lines.jsonl",
        "--fail-on-dead-letter",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(f.status.code(), Some(1));
}

#[test]
fn schema_is_json_schema_and_knows_every_key() {
    let o = es(&["schema"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    for (section, keys) in event_sanitizer::rules::KNOWN_KEYS {
        let props = match *section {
            "" => &v["properties"],
            "rules" => &v["definitions"]["rule"]["properties"],
            s => &v["properties"][s]["properties"],
        };
        let mut in_schema: Vec<&str> = props
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        in_schema.sort();
        let mut known: Vec<&str> = keys.to_vec();
        known.sort();
        assert_eq!(in_schema, known, "section `{section}`");
    }
}

#[test]
fn run_refuses_bad_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let rules = common::root().join("rules/customerio.yaml");
    let cases = [
        ("kafka: { bootstrap_servers: 'b:9092', clean_topic: c, dead_letter_topic: d, allow_plaintext: true }\nrules: { file: RULES }\n", "`kafka.input_topics` is missing"),
        ("kafka: { bootstrap_servers: 'broker-without-port', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }\nrules: { file: RULES }\n", "`broker-without-port` is not host:port"),
        ("kafka: { bootstrap_servers: 'b:9092', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true, sasl_password_file: /nonexistent/pw }\nrules: { file: RULES }\n", "`kafka.sasl_password_file` /nonexistent/pw cannot be read"),
        ("kafka: { bootstrap_servers: 'b:9092', input_topics: [r], clean_topic: c, dead_letter_topic: d }\nrules: { file: RULES }\n", "unencrypted"),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&cfg, body.replace("RULES", &rules.display().to_string())).unwrap();
        let o = es(&["run", "-c", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(want), "{want}: {}", text(&o));
    }
    // Rules that do not compile stop startup too (no key).
    let cfg = dir.path().join("nokey.yaml");
    std::fs::write(&cfg, format!("kafka: {{ bootstrap_servers: 'b:9092', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }}\nrules: {{ file: {} }}\nhttp: {{ listen: '127.0.0.1:0' }}\ndead_letters: {{ encrypt: false }}\n", rules.display())).unwrap();
    let o = es(&["run", "-c", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("SANITIZER_HASH_KEY"), "{}", text(&o));
}

#[test]
fn explain_over_json_lines_explains_every_line_or_the_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("events.jsonl");
    std::fs::write(
        &lines,
        "{\"type\":\"identify\",\"userId\":\"u1\",\"traits\":{\"ssn\":\"1\"}}\n\n{\"type\":\"identify\",\"userId\":\"u2\",\"traits\":{\"phone\":\"2\"}}\nnot json\n",
    )
    .unwrap();
    let file = lines.to_str().unwrap();
    let base = [
        "explain",
        "--rules",
        "rules/customerio.yaml",
        "--placeholder-key",
    ];
    let all = es(&[&base[..], &[file]].concat());
    let t = text(&all);
    assert_eq!(all.status.code(), Some(1), "line 4 is a dead letter: {t}");
    for want in [
        "line 1:",
        "traits.ssn: drop by rule never-send",
        "line 3:",
        "traits.phone -> traits.phone_hash: hash by rule hash-contact",
        "line 4:",
        "dead letter: invalid_json",
    ] {
        assert!(t.contains(want), "{want:?} in {t}");
    }
    assert!(!t.contains("line 2:"), "blank lines are skipped: {t}");
    // JSON Lines out, one object per input line, with its number.
    let j = es(&[&base[..], &["--format", "json", file]].concat());
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&j.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = docs.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 3, 4]);
    assert_eq!(docs[2]["dead_letter"]["reason"], "invalid_json");
    // One line only.
    let one = es(&[&base[..], &["--line", "3", file]].concat());
    let t = text(&one);
    assert!(one.status.success(), "{t}");
    assert!(t.contains("line 3:") && !t.contains("line 1:"), "{t}");
    let none = es(&[&base[..], &["--line", "2", file]].concat());
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}

#[test]
fn the_sanitize_summary_lists_rules_that_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("events.jsonl");
    std::fs::write(
        &lines,
        "{\"type\":\"identify\",\"userId\":\"u1\",\"traits\":{\"ssn\":\"1\"}}\n",
    )
    .unwrap();
    let o = es(&[
        "sanitize",
        "--rules",
        "rules/customerio.yaml",
        "--placeholder-key",
        "-i",
        lines.to_str().unwrap(),
        "-o",
        dir.path().join("out.jsonl").to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("rule never-send (drop): 1 times"), "{t}");
    assert!(
        t.contains("rule order-completed-minimum (allow): 0 times (never applied"),
        "{t}"
    );
}

#[test]
fn config_check_validates_a_service_config_offline_with_every_problem() {
    let ok = es(&["config", "check", "config/example.yaml"]);
    let t = text(&ok);
    assert!(ok.status.success(), "{t}");
    assert!(
        t.contains("config/example.yaml: ok (delivery at_least_once"),
        "{t}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kafka:\n  bootstrap_servers: \"\"\n  group_id: g\n  input_topics: [a]\n  clean_topic: a\n  dead_letter_topic: a\nrules: { file: /nonexistent/rules.yaml }\n",
    )
    .unwrap();
    let o = es(&["config", "check", bad.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for want in [
        "`kafka.bootstrap_servers` is empty",
        "an output topic is also an input topic",
        "`rules.file` /nonexistent/rules.yaml is not a readable file",
        "unencrypted",
        "`dead_letters.keys_file` is missing",
        "7 problems",
    ] {
        assert!(t.contains(want), "{want:?} in {t}");
    }
    // A valid config whose rule file does not compile.
    let rules = common::root().join("tests/bad_rules/duplicate_id.yaml");
    let cfg = dir.path().join("rules-bad.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"b:9092\"\n  group_id: g\n  input_topics: [raw]\n  clean_topic: clean\n  dead_letter_topic: dlq\n  allow_plaintext: true\nrules: {{ file: {} }}\ndead_letters: {{ encrypt: false }}\n",
            rules.display()
        ),
    )
    .unwrap();
    let o = es(&["config", "check", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("rule same:") && t.contains("(`rules.file`)"),
        "{t}"
    );
    // A required key missing: named with its path, and where to look.
    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "kafka:
  input_topics: [raw]
  clean_topic: clean
  dead_letter_topic: dlq
rules: { file: rules/customerio.yaml }
",
    )
    .unwrap();
    let o = es(&["config", "check", missing.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("kafka.bootstrap_servers")
            && t.contains("(every option is described in config/example.yaml)"),
        "{t}"
    );
}

#[test]
fn version_names_the_release_the_commit_and_the_rule_language() {
    let o = es(&["--version"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.starts_with(&format!(
            "event-sanitizer {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{t}"
    );
    assert!(t.trim_end().ends_with(", rule language version 1)"), "{t}");
    // The commit of this checkout, when it is one.
    if let Ok(git) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(common::root())
        .output()
    {
        let head = String::from_utf8_lossy(&git.stdout).trim().to_string();
        if git.status.success() && !head.is_empty() {
            assert!(
                t.contains(&format!("(commit {head},")),
                "{t} vs HEAD {head}"
            );
        }
    }
}

#[test]
fn check_takes_folders_and_skips_the_test_files_in_them() {
    let o = es(&["check", "rules/"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("rules/customerio.yaml: ok"), "{t}");
    assert!(t.contains("rules/customerio-webhooks.yaml: ok"), "{t}");
    assert!(
        !t.contains("rules/tests/"),
        "test files are not rule files: {t}"
    );
    let bad = es(&["check", "tests/bad_rules"]);
    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{t}");
    let files = std::fs::read_dir(common::root().join("tests/bad_rules"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(
        t.matches(" errors\n").count(),
        files,
        "every file reported: {t}"
    );
}

#[test]
fn shell_completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let o = es(&["completions", shell]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{shell}: {}", text(&o));
        for command in [
            "check", "test", "explain", "sanitize", "config", "run", "demo",
        ] {
            assert!(t.contains(command), "{shell}: no `{command}` in\n{t}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("event-sanitizer.bash");
    std::fs::write(&script, es(&["completions", "bash"]).stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax));
    assert_eq!(es(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn check_coverage_lists_the_rules_no_test_case_exercises() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        std::fs::read_to_string(common::root().join("rules/customerio.yaml")).unwrap()
            + "\n  - id: drop-fax\n    action: drop\n    fields: [fax]\n",
    )
    .unwrap();
    let tests = dir.path().join("tests");
    std::fs::create_dir(&tests).unwrap();
    let suite = std::fs::read_to_string(common::root().join("rules/tests/customerio.yaml"))
        .unwrap()
        .replace("rules: ../customerio.yaml", "rules: ../rules.yaml");
    std::fs::write(tests.join("t.yaml"), &suite).unwrap();
    let (r, t) = (rules.to_str().unwrap(), tests.to_str().unwrap());
    let o = es(&["check", r, "--coverage", t]);
    assert!(
        o.status.success(),
        "a coverage gap is a warning: {}",
        text(&o)
    );
    let out = text(&o);
    assert!(out.contains("warning: rule drop-fax: no case in"), "{out}");
    assert_eq!(
        out.matches("exercises this rule").count(),
        1,
        "only the untested rule: {out}"
    );
    // A case for it closes the gap.
    let covered = suite
        + "  - name: fax is dropped\n    input:  { type: identify, userId: u1, traits: { fax: \"555\" } }\n    expect: { type: identify, userId: u1, traits: {} }\n";
    std::fs::write(tests.join("t.yaml"), covered).unwrap();
    let o = es(&["check", r, "--coverage", t, "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["files"][0]["problems"], serde_json::json!([]), "{doc}");
}

#[test]
fn the_test_file_schema_knows_every_key_and_the_shipped_tests_use_only_those() {
    let o = es(&["schema", "--tests"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys = |x: &serde_json::Value| {
        let mut k: Vec<String> = x.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let sorted = |k: &[&str]| {
        let mut k: Vec<String> = k.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v["properties"]),
        sorted(event_sanitizer::testing::TEST_KEYS)
    );
    assert_eq!(
        keys(&v["definitions"]["case"]["properties"]),
        sorted(event_sanitizer::testing::CASE_KEYS)
    );
    assert_eq!(
        std::fs::read_to_string(common::root().join("docs/rule-tests.schema.json")).unwrap(),
        String::from_utf8(o.stdout).unwrap()
    );
}

/// `sanitize --threads N` writes the same clean bytes, the same dead
/// letters with the same line numbers, and the same summary as one
/// thread, over an input of many chunks with dead letters and blank and
/// CRLF lines spread through it.
#[test]
fn sanitize_on_several_threads_writes_the_same_bytes_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = std::fs::read_to_string(common::root().join("tests/data/corpus.jsonl")).unwrap();
    let bad = std::fs::read_to_string(common::root().join("tests/data/bad_lines.jsonl")).unwrap();
    let mut input = String::new();
    for round in 0..5 {
        for (i, line) in corpus.lines().enumerate() {
            input.push_str(line);
            input.push_str(if (i + round) % 7 == 0 { "\r\n" } else { "\n" });
            if i % 500 == round {
                input.push_str(&bad);
            }
        }
    }
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &input).unwrap();
    let run = |threads: &str| {
        let (out, dead) = (
            dir.path().join(format!("clean-{threads}")),
            dir.path().join(format!("dead-{threads}")),
        );
        let o = Command::new(common::bin())
            .args([
                "sanitize",
                "-r",
                "rules/customerio.yaml",
                "--placeholder-key",
                "--threads",
                threads,
                "-i",
            ])
            .arg(&path)
            .arg("-o")
            .arg(&out)
            .arg("--dead-letters")
            .arg(&dead)
            .current_dir(common::root())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let summary: Vec<String> = text(&o)
            .lines()
            .map(|l| l.split(" in ").next().unwrap().to_string()) // the time differs
            .collect();
        (
            std::fs::read(out).unwrap(),
            std::fs::read_to_string(dead).unwrap(),
            summary,
        )
    };
    let one = run("1");
    // 10,000 corpus lines and 2 clean lines in each of 20 copies of bad_lines.
    assert_eq!(one.0.iter().filter(|&&b| b == b'\n').count(), 10_040);
    let dead_lines: Vec<u64> = one
        .1
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(dead_lines.len(), 5 * 4 * 3, "{dead_lines:?}");
    assert!(dead_lines.windows(2).all(|w| w[0] < w[1]), "in input order");
    for threads in ["2", "3"] {
        assert!(
            run(threads) == one,
            "--threads {threads} differs from --threads 1"
        );
    }
}
