//! `explain`: the output for one event, and every decision behind it.

use super::{Failure, RulesArgs};
use clap::{Args, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// The event: a JSON file, or `-` (the default) to read standard input.
    /// A JSON Lines file (one event per line) explains every line.
    #[arg(value_name = "EVENT", default_value = "-")]
    event: PathBuf,
    /// With JSON Lines: explain only line N (counted from 1).
    #[arg(long, value_name = "N")]
    line: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// For people.
    Text,
    /// One JSON object: output (or dead_letter), decisions, skipped rules.
    Json,
}

pub(crate) fn run(args: ExplainArgs) -> Result<ExitCode, Failure> {
    let sanitizer = args.rules.sanitizer()?;
    let mut input = Vec::new();
    if args.event.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| Failure::usage(format!("cannot read standard input: {e}")))?;
    } else {
        input = std::fs::read(&args.event)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.event.display())))?;
    }
    // One JSON value (compact, or pretty-printed over many lines), or JSON
    // Lines: every non-blank line is an event, explained with its number.
    let whole = input.trim_ascii();
    let events: Vec<(Option<usize>, &[u8])> = if serde_json::from_slice::<serde::de::IgnoredAny>(
        whole,
    )
    .is_ok()
        || !whole.contains(&b'\n')
    {
        vec![(None, whole)]
    } else {
        input
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.trim_ascii().is_empty())
            .map(|(i, l)| (Some(i + 1), l.trim_ascii()))
            .collect()
    };
    let events: Vec<(Option<usize>, &[u8])> = match args.line {
        None => events,
        Some(n) => {
            let one: Vec<_> = events.into_iter().filter(|(l, _)| *l == Some(n)).collect();
            if one.is_empty() {
                return Err(Failure::usage(format!(
                    "--line {n}: the input has no JSON Lines event on line {n}"
                )));
            }
            one
        }
    };
    let mut all_clean = true;
    for (i, (line, event)) in events.iter().enumerate() {
        if i > 0 && matches!(args.format, Format::Text) {
            println!();
        }
        all_clean &= explain_one(&sanitizer, *line, event, args.format);
    }
    Ok(if all_clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the explanation of one event (`line`: its line in a JSON Lines
/// input); whether it came out clean.
fn explain_one(
    sanitizer: &crate::engine::Sanitizer,
    line: Option<usize>,
    event: &[u8],
    format: Format,
) -> bool {
    let exp = sanitizer.explain(event);
    match format {
        Format::Json => {
            let decisions: Vec<serde_json::Value> = exp
                .decisions
                .iter()
                .map(|d| serde_json::json!({"location": d.location, "output": d.output, "action": d.action, "rule": d.rule, "note": d.note}))
                .collect();
            let mut doc = serde_json::json!({
                "line": line,
                "rules": sanitizer.name(),
                "rules_hash": sanitizer.content_hash(),
                "decisions": decisions,
                "skipped": exp.skipped.iter().map(|(at, r)| serde_json::json!({"event": at, "rule": r})).collect::<Vec<_>>(),
            });
            match &exp.output {
                Ok(out) if exp.records.len() > 1 => {
                    doc["records"] = exp
                        .records
                        .iter(out)
                        .map(|r| serde_json::from_slice(r).unwrap_or(serde_json::Value::Null))
                        .collect()
                }
                Ok(out) => {
                    doc["output"] = serde_json::from_slice(out).unwrap_or(serde_json::Value::Null)
                }
                Err(r) => {
                    doc["dead_letter"] =
                        serde_json::json!({"reason": r.code(), "detail": r.to_string()})
                }
            }
            if line.is_some() {
                // JSON Lines in, JSON Lines out.
                println!("{doc}");
            } else {
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
        }
        Format::Text => {
            if let Some(n) = line {
                println!("line {n}:");
            }
            println!(
                "rules: {} ({}, {})",
                sanitizer.name(),
                sanitizer.file(),
                sanitizer.content_hash()
            );
            match &exp.output {
                Ok(out) if exp.records.len() > 1 => {
                    let n = exp.records.len();
                    println!("output: the batch is split into {n} records to fit the destination's batch limit");
                    for (i, r) in exp.records.iter(out).enumerate() {
                        println!("  record {} of {n}:", i + 1);
                        println!("{}", indent(&pretty(r), "    "));
                    }
                }
                Ok(out) => {
                    println!("output:");
                    println!("{}", indent(&pretty(out), "  "));
                }
                Err(r) => println!("dead letter: {} ({r})", r.code()),
            }
            println!("decisions:");
            if exp.decisions.is_empty() {
                println!("  (none: every field passes unchanged)");
            }
            for d in &exp.decisions {
                println!("  {d}");
            }
            for (at, rule) in &exp.skipped {
                println!("  rule {rule} not applied to {at}: its `when` does not hold");
            }
        }
    }
    exp.output.is_ok()
}

fn indent(s: &str, by: &str) -> String {
    s.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Pretty-prints compact JSON, keeping key order (unlike a round trip
/// through `serde_json::Value`, which sorts keys).
pub(crate) fn pretty(json: &[u8]) -> String {
    let s = String::from_utf8_lossy(json);
    let mut out = String::with_capacity(s.len() * 2);
    let mut depth = 0usize;
    let (mut in_str, mut esc) = (false, false);
    let chars: Vec<char> = s.chars().collect();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    for (i, &c) in chars.iter().enumerate() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                if chars.get(i + 1) == Some(&close) {
                    continue;
                }
                depth += 1;
                newline(&mut out, depth);
            }
            '}' | ']' => {
                let open = if c == '}' { '{' } else { '[' };
                if i > 0 && chars[i - 1] == open {
                    out.push(c);
                    continue;
                }
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pretty_keeps_order_and_strings() {
        let p = super::pretty(br#"{"b":1,"a":{"s":"x,{y}:\"z"},"e":[],"o":{}}"#);
        assert_eq!(p, "{\n  \"b\": 1,\n  \"a\": {\n    \"s\": \"x,{y}:\\\"z\"\n  },\n  \"e\": [],\n  \"o\": {}\n}");
    }
}
