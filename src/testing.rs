//! Rule tests written by the data governance team, run by
//! `event-sanitizer test`: each case gives an input event and the output
//! (or dead letter) it must produce. Output reads like
//! `test <name> ... passed`, ends with `N passed, M failed`, and failing
//! cases show a line diff of expected against actual.

use crate::engine::{DeadLetterReason, KeySupply, Limits, Sanitizer};
use crate::rules::yaml::{self, entries, items, kind, scalar_str, Reporter};
use crate::rules::{Diagnostic, Diagnostics, RuleFile, Severity};
use crate::secret::Secret;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One test file.
#[derive(Debug)]
pub struct TestFile {
    /// The file as named.
    pub file: String,
    /// The rule file it tests (resolved against the test file's folder).
    pub rules: PathBuf,
    /// The HMAC key digests are computed with (a test-only key).
    pub hash_key: Option<Secret>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `name`.
    pub name: String,
    /// Line of the case in its file.
    pub line: usize,
    /// The message value to sanitize.
    pub input: Vec<u8>,
    /// What must come out.
    pub expect: Expect,
    /// Line and column of the `expect` key, when the expectation is one.
    pub expect_at: Option<(usize, usize)>,
}

/// What a case expects.
#[derive(Debug, Clone)]
pub enum Expect {
    /// This JSON (compared as JSON: key order and spacing do not matter).
    Output(serde_json::Value),
    /// These records, in order (a batch split to fit the destination).
    Records(Vec<serde_json::Value>),
    /// A dead letter; with a code, that reason.
    DeadLetter(Option<String>),
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// Where the case is.
    pub line: usize,
    /// `None` when it passed; otherwise what went wrong, ready to print.
    pub failure: Option<String>,
    /// When an `expect` case failed with one clean record: that record,
    /// for `test --update`.
    pub actual: Option<serde_json::Value>,
}

/// The results of one file.
#[derive(Debug)]
pub struct FileReport {
    /// The test file.
    pub file: String,
    /// Per case.
    pub results: Vec<CaseResult>,
    /// Warnings: rule-file warnings, and `allow` scopes no case reaches.
    pub warnings: Vec<String>,
}

/// The keys of a test file.
pub const TEST_KEYS: &[&str] = &["rules", "hash_key", "cases"];
/// The keys of a case.
pub const CASE_KEYS: &[&str] = &[
    "name",
    "input",
    "input_raw",
    "expect",
    "expect_records",
    "expect_dead_letter",
];

/// Finds test files: the files named, and below each folder every `.yaml`
/// or `.yml` file whose top level has `cases` (rule files are skipped).
pub fn discover(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    yaml_files(paths, is_test_file)
}

/// The rule files among `paths`: files as given, and in folders (searched
/// recursively) every `.yaml`/`.yml` file that is not a test file.
pub fn discover_rule_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    yaml_files(paths, |p| !is_test_file(p))
}

/// Files as given, and the YAML files of folders that `keep` accepts.
fn yaml_files(paths: &[PathBuf], keep: impl Fn(&Path) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
                entries.sort_by_key(|e| e.path());
                for e in entries {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if matches!(
                        path.extension().and_then(|x| x.to_str()),
                        Some("yaml" | "yml")
                    ) && keep(&path)
                    {
                        out.push(path);
                    }
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    Ok(out)
}

fn is_test_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines().any(|l| l.starts_with("cases:"))
}

impl TestFile {
    /// Reads and parses a test file.
    pub fn load(path: &Path) -> Result<TestFile, Diagnostics> {
        let (shown, text) = crate::rules::diagnostic::read_source(path, "test file")?;
        let root = yaml::load(&shown, &text).map_err(|d| Diagnostics(vec![d]))?;
        let mut r = Reporter::new(&shown);
        let Some(top) = entries(&root) else {
            r.error(
                &root,
                None,
                "a test file is a mapping with `rules`, `hash_key` and `cases`",
            );
            return Err(Diagnostics(r.diags));
        };
        for (k, node, _) in &top {
            if !TEST_KEYS.contains(k) {
                r.error(node, None, format!("unknown key `{k}` in a test file{}; the keys are `rules`, `hash_key`, `cases`", yaml::suggest(k, TEST_KEYS)));
            }
        }
        let get = |name: &str| top.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
        let base = path.parent().unwrap_or(Path::new("."));
        let rules = match get("rules").and_then(scalar_str) {
            Some(p) => base.join(p),
            None => {
                r.error(&root, None, "`rules` is missing: name the rule file under test, relative to this file (`rules: ../customerio.yaml`)");
                PathBuf::new()
            }
        };
        let hash_key = get("hash_key").and_then(|v| match yaml::scalar_text(v) {
            Some(s) => Some(Secret::new(s)),
            None => {
                r.error(
                    v,
                    None,
                    "`hash_key` must be text (a test-only key, never the production one)",
                );
                None
            }
        });
        let mut cases = Vec::new();
        match get("cases").map(|v| (v, items(v))) {
            None => r.error(&root, None, "`cases` is missing"),
            Some((v, None)) => r.error(v, None, format!("`cases` must be a list, not {}", kind(v))),
            Some((_, Some(list))) => {
                for node in list {
                    if let Some(c) = parse_case(&mut r, node) {
                        cases.push(c);
                    }
                }
            }
        }
        if r.has_errors() {
            return Err(Diagnostics(r.diags));
        }
        Ok(TestFile {
            file: shown,
            rules,
            hash_key,
            cases,
        })
    }

    /// The rule file under test, compiled with `supply`, and its warnings.
    fn compile(
        &self,
        supply: KeySupply<'_>,
    ) -> Result<(RuleFile, Sanitizer, Diagnostics), Diagnostics> {
        let (rule_file, warnings) = RuleFile::load(&self.rules)?;
        let sanitizer = Sanitizer::compile(&rule_file, supply, Limits::default()).map_err(|e| {
            Diagnostics(vec![Diagnostic {
                severity: Severity::Error,
                file: rule_file.file.clone(),
                line: 1,
                column: 1,
                rule: None,
                message: e.to_string(),
            }])
        })?;
        Ok((rule_file, sanitizer, warnings))
    }

    /// The ids of the rules some case of this file exercises: a rule that
    /// decided somewhere in a case's output, or an `allow` whose scope a
    /// case reached with its `when` holding.
    pub fn exercised(&self) -> Result<BTreeSet<String>, Diagnostics> {
        let (_, sanitizer, _) = self.compile(KeySupply::Placeholder)?;
        let mut ids = BTreeSet::new();
        for case in &self.cases {
            let exp = sanitizer.explain(&case.input);
            ids.extend(
                exp.decisions
                    .into_iter()
                    .filter(|d| d.action != crate::engine::NOT_SCANNED)
                    .map(|d| d.rule),
            );
            ids.extend(exp.reached);
        }
        Ok(ids)
    }

    /// Compiles the rules under test and runs every case.
    pub fn run(&self) -> Result<FileReport, Diagnostics> {
        let supply = match &self.hash_key {
            Some(k) => KeySupply::Fixed(k),
            None => KeySupply::Placeholder,
        };
        let (rule_file, sanitizer, warnings) = self.compile(supply)?;
        let mut results = Vec::new();
        let mut reached = BTreeSet::new();
        for case in &self.cases {
            let exp = sanitizer.explain(&case.input);
            reached.extend(exp.reached.iter().cloned());
            let output = exp.output.map(|out| {
                exp.records
                    .iter(&out)
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            });
            // The one clean record an `expect` case would be updated to.
            let single = match (&case.expect, &output) {
                (Expect::Output(_), Ok(records)) if records.len() == 1 => {
                    serde_json::from_slice(&records[0]).ok()
                }
                _ => None,
            };
            let failure = check(case, output);
            let actual = failure.as_ref().and(single);
            results.push(CaseResult {
                name: case.name.clone(),
                line: case.line,
                failure,
                actual,
            });
        }
        let mut warns: Vec<String> = warnings.0.iter().map(ToString::to_string).collect();
        for rule in &rule_file.rules {
            if matches!(rule.action, crate::rules::Action::Allow) && !reached.contains(&rule.id) {
                warns.push(format!(
                    "{}:{}:{}: warning: rule {}: no case in {} reaches this `allow` rule's scope with its `when` holding, so nothing tests what it lets through",
                    rule_file.file, rule.line, rule.column, rule.id, self.file
                ));
            }
        }
        Ok(FileReport {
            file: self.file.clone(),
            results,
            warnings: warns,
        })
    }
}

/// `text` (a test file) with the `expect` of each case in `updates`
/// ((line, column) of its `expect` key, the new expectation) replaced by
/// that value, written as one line of flow YAML (JSON). The value is what
/// follows the key on its line and every following line indented deeper
/// than the key (blank lines and comments inside it included). Returns the
/// new text and the keys it could not update: one written inside a flow
/// mapping with other keys on its line.
pub fn update_expectations(
    text: &str,
    updates: &[((usize, usize), serde_json::Value)],
) -> (String, Vec<(usize, usize)>) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut refused = Vec::new();
    // From the bottom up, so earlier line numbers stay right.
    let mut order: Vec<&((usize, usize), serde_json::Value)> = updates.iter().collect();
    order.sort_by_key(|u| std::cmp::Reverse(u.0));
    for ((line, col), value) in order {
        let i = line - 1;
        let Some(l) = lines.get(i) else {
            refused.push((*line, *col));
            continue;
        };
        let key_at = col - 1;
        let before = l.get(..key_at).unwrap_or("");
        let rest = l.get(key_at..).unwrap_or("");
        if !rest.starts_with("expect:") || !before.trim_start_matches([' ', '-']).is_empty() {
            refused.push((*line, *col));
            continue;
        }
        let mut end = i + 1;
        while end < lines.len() {
            let next = &lines[end];
            let indent = next.len() - next.trim_start().len();
            if next.trim().is_empty() || indent > key_at {
                end += 1;
            } else {
                break;
            }
        }
        // Trailing blank lines belong to what follows.
        while end > i + 1 && lines[end - 1].trim().is_empty() {
            end -= 1;
        }
        let new = format!("{before}expect: {value}");
        lines.splice(i..end, std::iter::once(new));
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    (out, refused)
}

fn parse_case(r: &mut Reporter, node: &yaml::Node) -> Option<Case> {
    let Some(e) = entries(node) else {
        r.error(
            node,
            None,
            "each case is a mapping with `name`, an input and an expectation",
        );
        return None;
    };
    let (line, _) = yaml::pos(node);
    for (k, key_node, _) in &e {
        if !CASE_KEYS.contains(k) {
            r.error(key_node, None, format!("unknown key `{k}` in a case{}; the keys are `name`, `input` or `input_raw`, `expect`, `expect_records` or `expect_dead_letter`", yaml::suggest(k, CASE_KEYS)));
        }
    }
    let get = |name: &str| e.iter().find(|(k, _, _)| *k == name).map(|(_, _, v)| *v);
    let name = get("name")
        .and_then(scalar_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("case on line {line}"));
    let input = match (get("input"), get("input_raw")) {
        (Some(v), None) => json_of(r, v, &name, "input")?.into_bytes(),
        (None, Some(v)) => {
            match scalar_str(v) {
                Some(s) => s.as_bytes().to_vec(),
                None => {
                    r.error(v, None, format!("case `{name}`: `input_raw` must be text (the message bytes as written)"));
                    return None;
                }
            }
        }
        _ => {
            r.error(node, None, format!("case `{name}` needs exactly one of `input` (an event) or `input_raw` (message text)"));
            return None;
        }
    };
    let expect = match (
        get("expect"),
        get("expect_records"),
        get("expect_dead_letter"),
    ) {
        (Some(v), None, None) => {
            let s = json_of(r, v, &name, "expect")?;
            Expect::Output(serde_json::from_str(&s).ok()?)
        }
        (None, Some(v), None) => {
            let s = json_of(r, v, &name, "expect_records")?;
            match serde_json::from_str(&s).ok()? {
                serde_json::Value::Array(list) if !list.is_empty() => Expect::Records(list),
                _ => {
                    r.error(v, None, format!("case `{name}`: `expect_records` is a list of the clean records, in order"));
                    return None;
                }
            }
        }
        (None, None, Some(v)) => match &v.data {
            saphyr::YamlData::Value(saphyr::Scalar::Boolean(true)) => Expect::DeadLetter(None),
            _ => match scalar_str(v) {
                Some(code) if DeadLetterReason::CODES.contains(&code) => {
                    Expect::DeadLetter(Some(code.to_string()))
                }
                _ => {
                    r.error(
                        v,
                        None,
                        format!(
                            "case `{name}`: `expect_dead_letter` is `true` or a reason: {}",
                            DeadLetterReason::CODES.join(", ")
                        ),
                    );
                    return None;
                }
            },
        },
        _ => {
            r.error(node, None, format!("case `{name}` needs exactly one of `expect` (the clean event), `expect_records` (the clean records of a split batch) or `expect_dead_letter`"));
            return None;
        }
    };
    // Where `expect` is written, for `test --update`.
    let expect_at = e
        .iter()
        .find(|(k, _, _)| *k == "expect")
        .map(|(_, key, _)| yaml::pos(key));
    Some(Case {
        name,
        line,
        input,
        expect,
        expect_at,
    })
}

/// A case's YAML value as JSON text, or a diagnostic at the value.
fn json_of(r: &mut Reporter, v: &yaml::Node, name: &str, what: &str) -> Option<String> {
    let mut s = String::new();
    match yaml::to_json(v, &mut s) {
        Ok(()) => Some(s),
        Err((l, c, msg)) => {
            r.at_pos(
                l,
                c,
                None,
                Severity::Error,
                format!("case `{name}`: `{what}` cannot be JSON: {msg}"),
            );
            None
        }
    }
}

fn check(case: &Case, output: Result<Vec<Vec<u8>>, DeadLetterReason>) -> Option<String> {
    let parse = |records: &[Vec<u8>]| -> Result<Vec<serde_json::Value>, String> {
        records
            .iter()
            .map(|b| {
                serde_json::from_slice(b).map_err(|e| {
                    format!(
                        "the output is not JSON ({e}): {}",
                        String::from_utf8_lossy(b)
                    )
                })
            })
            .collect()
    };
    let show = |records: &[Vec<u8>]| {
        records
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    match (&case.expect, output) {
        (Expect::Output(_) | Expect::Records(_), Ok(records)) => {
            let got = match parse(&records) {
                Ok(v) => v,
                Err(e) => return Some(e),
            };
            let (want, what) = match &case.expect {
                Expect::Output(_) if got.len() > 1 => {
                    return Some(format!(
                        "the batch was split into {} records to fit the destination; write them under `expect_records`:\n{}",
                        got.len(),
                        show(&records)
                    ))
                }
                Expect::Output(w) => (std::slice::from_ref(w), "expect"),
                Expect::Records(w) => (&w[..], "expect_records"),
                Expect::DeadLetter(_) => (&[][..], ""),
            };
            if got == want {
                return None;
            }
            // `expect` shows as the event itself, `expect_records` as a list.
            let pretty = |v: &[serde_json::Value]| match v {
                [one] if what == "expect" => serde_json::to_string_pretty(one),
                _ => serde_json::to_string_pretty(v),
            };
            let w = pretty(want).unwrap_or_default();
            let g = pretty(&got).unwrap_or_default();
            let diff = similar::TextDiff::from_lines(&w, &g);
            let body = diff
                .unified_diff()
                .context_radius(3)
                .header("expected", "actual")
                .to_string();
            Some(format!("the output differs from `{what}`:\n{body}"))
        }
        (Expect::Output(_) | Expect::Records(_), Err(reason)) => Some(format!(
            "expected a clean event, but it is a dead letter: {} ({reason})",
            reason.code()
        )),
        (Expect::DeadLetter(_), Ok(records)) => Some(format!(
            "expected a dead letter, but it came out clean: {}",
            show(&records)
        )),
        (Expect::DeadLetter(Some(code)), Err(reason)) if reason.code() != code => Some(format!(
            "expected dead letter `{code}`, got `{}` ({reason})",
            reason.code()
        )),
        (Expect::DeadLetter(_), Err(_)) => None,
    }
}
