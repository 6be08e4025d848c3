//! `test`: run the governance team's rule tests, for people (text) or for
//! CI (`--format json`, `--format junit` for test-report viewers).

use super::Failure;
use crate::testing::{discover, FileReport, TestFile};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct TestArgs {
    /// Test files, or folders to search for them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// After showing the diffs, write each failing `expect` case's actual
    /// output into its test file as the new expectation (review the change
    /// in git before committing it).
    #[arg(long)]
    update: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people: a line per case, a diff for each failure.
    Text,
    /// One JSON object: files, their cases (name, line, status, failure)
    /// and warnings, and the counts.
    Json,
    /// JUnit XML: a test suite per file, a test case per case.
    Junit,
}

/// One test file's outcome: its report, or why it could not run.
struct Ran {
    path: PathBuf,
    report: Result<FileReport, String>,
    /// The parsed file (for `--update`).
    file: Option<TestFile>,
}

impl Ran {
    fn counts(&self) -> (usize, usize) {
        match &self.report {
            Err(_) => (0, 1),
            Ok(r) => {
                let failed = r.results.iter().filter(|c| c.failure.is_some()).count();
                (r.results.len() - failed, failed)
            }
        }
    }
}

pub(crate) fn run(args: TestArgs) -> Result<ExitCode, Failure> {
    let files = discover(&args.paths)
        .map_err(|e| Failure::usage(format!("cannot read the test folder: {e}")))?;
    if files.is_empty() {
        return Err(Failure::usage(
            "no test files found (a test file is a .yaml file with `cases:`)",
        ));
    }
    let ran: Vec<Ran> = files
        .into_iter()
        .map(|path| match TestFile::load(&path) {
            Ok(tf) => Ran {
                report: tf.run().map_err(|d| d.to_string()),
                path,
                file: Some(tf),
            },
            Err(d) => Ran {
                path,
                report: Err(d.to_string()),
                file: None,
            },
        })
        .collect();
    let (passed, failed) = ran
        .iter()
        .map(Ran::counts)
        .fold((0, 0), |(p, f), (p1, f1)| (p + p1, f + f1));
    match args.format {
        Format::Text => print!("{}", text(&ran, passed, failed)),
        Format::Json => println!("{}", json(&ran, passed, failed)),
        Format::Junit => print!("{}", junit(&ran)),
    }
    if args.update {
        for r in &ran {
            update(r)?;
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes the actual outputs of a file's failing `expect` cases as their
/// expectations; says what it did on stderr.
fn update(r: &Ran) -> Result<(), Failure> {
    let (Ok(report), Some(file)) = (&r.report, &r.file) else {
        return Ok(());
    };
    let mut updates = Vec::new();
    let mut not_updatable = Vec::new();
    for (case, result) in file.cases.iter().zip(&report.results) {
        if result.failure.is_none() {
            continue;
        }
        match (&result.actual, case.expect_at) {
            (Some(v), Some(at)) => updates.push((at, v.clone())),
            _ => not_updatable.push(case.name.as_str()),
        }
    }
    if updates.is_empty() && not_updatable.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&r.path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", r.path.display())))?;
    let (new, refused) = crate::testing::update_expectations(&text, &updates);
    if new != text {
        std::fs::write(&r.path, new)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", r.path.display())))?;
    }
    eprintln!(
        "{}: updated {} case(s)",
        r.path.display(),
        updates.len() - refused.len()
    );
    for (line, _) in refused {
        eprintln!("  line {line}: `expect` is written inline with other keys; update it by hand");
    }
    for name in not_updatable {
        eprintln!("  case `{name}`: not updated (it expects records or a dead letter, or its output is one): update it by hand");
    }
    Ok(())
}

fn text(ran: &[Ran], passed: usize, failed: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for r in ran {
        let _ = writeln!(s, "{}", r.path.display());
        match &r.report {
            Err(diags) => {
                s.push_str(diags);
                s.push_str("  cannot run this file\n");
            }
            Ok(report) => {
                for w in &report.warnings {
                    let _ = writeln!(s, "  {w}");
                }
                for c in &report.results {
                    match &c.failure {
                        None => {
                            let _ = writeln!(s, "  test {} ... passed", c.name);
                        }
                        Some(why) => {
                            let _ = writeln!(s, "  test {} ... failed", c.name);
                            let _ = writeln!(
                                s,
                                "    {}:{}: {}",
                                report.file,
                                c.line,
                                why.trim_end().replace('\n', "\n    ")
                            );
                        }
                    }
                }
            }
        }
    }
    let _ = writeln!(s, "{passed} passed, {failed} failed");
    s
}

fn json(ran: &[Ran], passed: usize, failed: usize) -> serde_json::Value {
    let files: Vec<serde_json::Value> = ran
        .iter()
        .map(|r| match &r.report {
            Err(diags) => serde_json::json!({
                "file": r.path.display().to_string(),
                "error": diags.trim_end(),
                "cases": [],
                "warnings": [],
            }),
            Ok(report) => serde_json::json!({
                "file": report.file,
                "cases": report.results.iter().map(|c| serde_json::json!({
                    "name": c.name,
                    "line": c.line,
                    "status": if c.failure.is_some() { "failed" } else { "passed" },
                    "failure": c.failure.as_deref().map(str::trim_end),
                })).collect::<Vec<_>>(),
                "warnings": report.warnings,
            }),
        })
        .collect();
    serde_json::json!({"files": files, "passed": passed, "failed": failed})
}

/// XML text with the five special characters escaped, and the control
/// characters XML 1.0 cannot hold (a diff may quote any input) replaced.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn junit(ran: &[Ran]) -> String {
    use std::fmt::Write;
    let (mut tests, mut failures) = (0, 0);
    let mut suites = String::new();
    for r in ran {
        let (p, f) = r.counts();
        tests += p + f;
        failures += f;
        let name = xml(&r.path.display().to_string());
        let _ = writeln!(
            suites,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{f}\" errors=\"0\">",
            p + f
        );
        match &r.report {
            Err(diags) => {
                let _ = writeln!(
                    suites,
                    "    <testcase name=\"(the file)\" classname=\"{name}\" file=\"{name}\">\n      <failure message=\"cannot run this file\">{}</failure>\n    </testcase>",
                    xml(diags.trim_end())
                );
            }
            Ok(report) => {
                for c in &report.results {
                    let _ = write!(
                        suites,
                        "    <testcase name=\"{}\" classname=\"{name}\" file=\"{name}\" line=\"{}\"",
                        xml(&c.name),
                        c.line
                    );
                    match &c.failure {
                        None => suites.push_str("/>\n"),
                        Some(why) => {
                            let first = why.lines().next().unwrap_or("failed");
                            let _ = writeln!(
                                suites,
                                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                                xml(first),
                                xml(why.trim_end())
                            );
                        }
                    }
                }
                if !report.warnings.is_empty() {
                    let _ = writeln!(
                        suites,
                        "    <system-out>{}</system-out>",
                        xml(&report.warnings.join("\n"))
                    );
                }
            }
        }
        suites.push_str("  </testsuite>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"event-sanitizer rule tests\" tests=\"{tests}\" failures=\"{failures}\">\n{suites}</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::xml;

    #[test]
    fn xml_text_escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            xml("a<b>&\"c\" 'd'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;\u{fffd}\n"
        );
    }
}
