//! `check`: validate rule files.

use super::Failure;
use crate::engine::{CompileError, KeySupply, Limits, Sanitizer};
use crate::rules::{Diagnostic, Diagnostics, RuleFile, Severity};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Rule files to check, or folders: every .yaml file in them that is
    /// not a rule test file (`cases:`).
    #[arg(required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Rule test files or folders: every rule that no case of the test
    /// files naming the checked file exercises is a warning.
    #[arg(long, value_name = "TESTS")]
    coverage: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people: `file:line:column: severity: message`, then a summary
    /// line per file.
    Text,
    /// One JSON object: per file, whether it is usable, its rule count and
    /// every problem (severity, line, column, rule, message).
    Json,
}

/// What checking one rule file found.
struct Checked {
    path: PathBuf,
    /// Rules in the file, when it parsed.
    rules: Option<usize>,
    problems: Diagnostics,
    ok: bool,
    /// ` (`option`)`: the config option that names the file, if any.
    by: String,
}

/// Checks one rule file: parses it (every problem at once), then compiles
/// it with a placeholder key, which catches what only the compiler knows
/// (such as too many globs). `named_by`, the option that names it, is added
/// to compile errors.
fn check(path: &Path, named_by: Option<&str>) -> Checked {
    let by = named_by.map_or(String::new(), |o| format!(" (`{o}`)"));
    let error = |message: String| Diagnostic {
        severity: Severity::Error,
        file: path.display().to_string(),
        line: 1,
        column: 1,
        rule: None,
        message,
    };
    match RuleFile::load(path) {
        Ok((file, mut problems)) => {
            let compiled = Sanitizer::compile(&file, KeySupply::Placeholder, Limits::default());
            match &compiled {
                // At the rule it is in, like a parse error.
                Err(CompileError::Regex { rule, message }) => {
                    let at = file.rules.iter().find(|r| &r.id == rule);
                    problems.0.push(Diagnostic {
                        line: at.map_or(1, |r| r.line),
                        column: at.map_or(1, |r| r.column),
                        rule: Some(rule.clone()),
                        ..error(format!("{message}{by}"))
                    });
                }
                Err(e) => problems.0.push(error(format!("{e}{by}"))),
                Ok(_) => {}
            }
            Checked {
                path: path.to_path_buf(),
                rules: Some(file.rules.len()),
                ok: compiled.is_ok(),
                problems,
                by,
            }
        }
        Err(problems) => Checked {
            path: path.to_path_buf(),
            rules: None,
            problems,
            ok: false,
            by,
        },
    }
}

pub(crate) fn run(args: CheckArgs) -> Result<ExitCode, Failure> {
    let files = crate::testing::discover_rule_files(&args.files)
        .map_err(|e| Failure::usage(format!("cannot read the rules folder: {e}")))?;
    if files.is_empty() {
        return Err(Failure::usage(
            "no rule files found (.yaml files without `cases:`)",
        ));
    }
    let mut checked: Vec<Checked> = files.iter().map(|p| check(p, None)).collect();
    if !args.coverage.is_empty() {
        coverage(&args.coverage, &mut checked)?;
    }
    match args.format {
        Format::Text => checked.iter().for_each(print_text),
        Format::Json => println!("{}", json(&checked)),
    }
    Ok(if checked.iter().any(|c| !c.ok) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Adds a warning for each rule of a usable checked file that no case of
/// the test files naming it exercises.
fn coverage(tests: &[PathBuf], checked: &mut [Checked]) -> Result<(), Failure> {
    let found = crate::testing::discover(tests)
        .map_err(|e| Failure::usage(format!("cannot read the tests folder: {e}")))?;
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut by_rules: Vec<(PathBuf, String, std::collections::BTreeSet<String>)> = Vec::new();
    for t in &found {
        let file = crate::testing::TestFile::load(t).map_err(|d| Failure {
            message: d.to_string(),
            code: 1,
        })?;
        // A test file whose rules do not compile is `check`'s error on
        // them, already reported; it exercises nothing.
        let ids = file.exercised().unwrap_or_default();
        by_rules.push((canonical(&file.rules), file.file.clone(), ids));
    }
    for c in checked.iter_mut().filter(|c| c.ok) {
        let me = canonical(&c.path);
        let mine: Vec<_> = by_rules.iter().filter(|(r, _, _)| *r == me).collect();
        let Ok((file, _)) = RuleFile::load(&c.path) else {
            continue;
        };
        let shown: Vec<&str> = mine.iter().map(|(_, f, _)| f.as_str()).collect();
        for rule in &file.rules {
            if !mine.iter().any(|(_, _, ids)| ids.contains(&rule.id)) {
                let message = if shown.is_empty() {
                    "no rule test file tests this file, so no case exercises this rule".to_string()
                } else {
                    format!("no case in {} exercises this rule", shown.join(", "))
                };
                c.problems.0.push(Diagnostic {
                    severity: Severity::Warning,
                    file: c.path.display().to_string(),
                    line: rule.line,
                    column: rule.column,
                    rule: Some(rule.id.clone()),
                    message,
                });
            }
        }
    }
    Ok(())
}

fn print_text(c: &Checked) {
    print!("{}", c.problems);
    match (c.ok, c.rules) {
        (true, Some(n)) => println!(
            "{}: ok ({n} rules, {} warnings)",
            c.path.display(),
            c.problems.warnings().count()
        ),
        (false, None) => println!(
            "{}: {} errors{}",
            c.path.display(),
            c.problems.errors().count(),
            c.by
        ),
        _ => {}
    }
}

fn json(checked: &[Checked]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = checked
        .iter()
        .map(|c| {
            let problems: Vec<serde_json::Value> = c
                .problems
                .0
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
                        "line": d.line,
                        "column": d.column,
                        "rule": d.rule,
                        "message": d.message,
                    })
                })
                .collect();
            serde_json::json!({
                "file": c.path.display().to_string(),
                "ok": c.ok,
                "rules": c.rules,
                "problems": problems,
            })
        })
        .collect();
    serde_json::json!({
        "files": files,
        "ok": checked.iter().all(|c| c.ok),
    })
}

/// Checks one rule file and prints what it found, for `config check`;
/// whether it is usable.
pub(crate) fn check_rule_file(path: &Path, named_by: Option<&str>) -> bool {
    let c = check(path, named_by);
    print_text(&c);
    c.ok
}
