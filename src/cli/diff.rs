//! `diff`: what a candidate rule file would change on a sample of events,
//! field by field, before it takes effect (the service does the same on
//! live events with `rules.shadow_file`).

use super::Failure;
use crate::engine::Scratch;
use crate::shadow::{compare, Attribution, Current, Difference};
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// For people: each differing event, then counts.
    Text,
    /// One JSON document: `events`, `differing`, `counts`, `events_differing`.
    Json,
}

#[derive(Args, Debug)]
pub(crate) struct DiffArgs {
    /// The rule file in use.
    #[arg(long, short = 'r', value_name = "FILE")]
    rules: PathBuf,
    /// The candidate rule file.
    #[arg(long, value_name = "FILE")]
    candidate: PathBuf,
    /// Events, one JSON per line; `-` (the default) reads standard input.
    #[arg(long, short = 'i', value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Exit 1 when any event differs (for CI: "this change is a no-op").
    #[arg(long)]
    fail_on_difference: bool,
}

pub(crate) fn run(args: DiffArgs) -> Result<ExitCode, Failure> {
    // Both sides hash with the same placeholder key: digests compare
    // equal where the rules agree, and none is shown.
    let (current, candidate) = (
        super::placeholder_rules(&args.rules)?,
        super::placeholder_rules(&args.candidate)?,
    );
    let reader = super::input(&args.input)?;
    let mut scratch = Scratch::default();
    let mut attributed = Attribution::default();
    let (mut events, mut differing) = (0u64, Vec::<(usize, Vec<Difference>)>::new());
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("cannot read the input: {e}")))?;
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        events += 1;
        let d = compare(
            Current::Run(&current),
            &candidate,
            line,
            &mut scratch,
            &mut attributed,
        );
        for x in &d {
            *counts
                .entry((
                    x.kind.name().to_string(),
                    x.rule.clone().unwrap_or_default(),
                ))
                .or_default() += 1;
        }
        if !d.is_empty() {
            differing.push((i + 1, d));
        }
    }
    match args.format {
        Format::Json => {
            let doc = serde_json::json!({
                "events": events,
                "differing": differing.len(),
                "counts": counts.iter().map(|((k, r), n)| serde_json::json!({"kind": k, "rule": r, "differences": n})).collect::<Vec<_>>(),
                "events_differing": differing.iter().map(|(line, d)| serde_json::json!({"line": line, "differences": d})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Format::Text => {
            for (line, d) in &differing {
                for x in d {
                    let at = x.path.as_deref().unwrap_or("(the event)");
                    let by = x
                        .rule
                        .as_deref()
                        .map(|r| format!(" by {r}"))
                        .unwrap_or_default();
                    let was = x
                        .current
                        .as_deref()
                        .map(|v| format!(" (now {v})"))
                        .unwrap_or_default();
                    let why = match &x.reasons {
                        Some((a, b)) => format!(
                            " (now {}, candidate {})",
                            a.as_deref().unwrap_or("clean"),
                            b.as_deref().unwrap_or("clean")
                        ),
                        None => String::new(),
                    };
                    println!("line {line}: {at}: {}{by}{was}{why}", x.kind.name());
                }
            }
            println!("{events} events, {} differ", differing.len());
            for ((k, r), n) in &counts {
                let r = if r.is_empty() {
                    String::new()
                } else {
                    format!(" by {r}")
                };
                println!("  {n:>8}  {k}{r}");
            }
        }
    }
    Ok(if args.fail_on_difference && !differing.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
