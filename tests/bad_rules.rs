//! Broken rule files, each with the exact diagnostics it must produce
//! (`tests/bad_rules/NAME.yaml` -> `NAME.expected`), all reported at once.

mod common;
use event_sanitizer::rules::RuleFile;

#[test]
fn each_broken_rule_file_gives_its_exact_errors() {
    let dir = common::root().join("tests/bad_rules");
    let mut checked = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let name = path.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let diags = match RuleFile::parse(name, &text) {
            Ok((_, d)) => panic!("{name}: accepted (warnings: {d})"),
            Err(d) => d,
        };
        let got: Vec<String> = diags.0.iter().map(ToString::to_string).collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(got, want, "{name}");
        checked += 1;
    }
    assert!(checked >= 10, "{checked}");
}

#[test]
fn secrets_written_into_a_rule_file_are_not_echoed() {
    let text =
        std::fs::read_to_string(common::root().join("tests/bad_rules/wrong_types.yaml")).unwrap();
    assert!(text.contains("literal-secret"));
    let diags = RuleFile::parse("x.yaml", &text).unwrap_err();
    assert!(!diags.to_string().contains("literal-secret"));
}

#[test]
fn warnings_for_shadowed_rules_and_unkeyed_sha256() {
    let text = "version: 1\nname: w\nhash: { algorithm: sha256 }\nrules:\n  - { id: d, action: drop, fields: [ssn, cvv] }\n  - { id: h, action: hash, fields: [ssn] }\n";
    let (_, warnings) = RuleFile::parse("w.yaml", text).unwrap();
    let lines: Vec<String> = warnings.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "w.yaml:3:7: warning: `algorithm: sha256` is unkeyed: anyone can recover a phone number, IP address or zip code from its digest by hashing every candidate; prefer `hmac-sha256` with a key",
            "w.yaml:6:5: warning: rule h: this rule never takes effect: rule `d` (drop on line 5) already applies to every field it names",
        ]
    );
}
