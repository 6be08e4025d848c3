//! `inventory`: which field paths arrive in a file of events, how often,
//! what the rules do to each, which detectors fire on their values, and
//! which paths no rule classifies, with a suggested rule.

use super::Failure;
use crate::inventory::Inventory;
use clap::{Args, ValueEnum};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// For people: every path, then the unclassified ones with suggestions.
    Text,
    /// One JSON document: `events`, `fields` (each with `suggestion`), `unclassified`.
    Json,
}

#[derive(Args, Debug)]
pub(crate) struct InventoryArgs {
    /// The rule file (compiled with the placeholder key: no digest is shown).
    #[arg(long, short = 'r', value_name = "FILE")]
    rules: PathBuf,
    /// Events, one JSON per line; `-` (the default) reads standard input.
    #[arg(long, short = 'i', value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Distinct paths kept at most.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_paths: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub(crate) fn run(args: InventoryArgs) -> Result<ExitCode, Failure> {
    let sanitizer = super::placeholder_rules(&args.rules)?;
    let reader = super::input(&args.input)?;
    let mut inv = Inventory::new(args.max_paths);
    for line in reader.split(b'\n') {
        let line = line.map_err(|e| Failure::usage(format!("cannot read the input: {e}")))?;
        if !line.trim_ascii().is_empty() {
            inv.observe(&sanitizer, line.trim_ascii());
        }
    }
    let lines = inv.lines();
    match args.format {
        Format::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&inv.to_json()).unwrap_or_default()
            );
        }
        Format::Text => {
            println!(
                "{} events, {} field paths; {} not classified by any rule",
                inv.events(),
                lines.len(),
                inv.unclassified().len()
            );
            for l in &lines {
                let rules: Vec<String> = l.field.rules.keys().cloned().collect();
                let detectors: Vec<String> = l
                    .field
                    .detectors
                    .iter()
                    .map(|(d, n)| format!("{d} x{n}"))
                    .collect();
                println!(
                    "  {:>8}  {}{}{}",
                    l.field.count,
                    l.path,
                    if rules.is_empty() {
                        String::new()
                    } else {
                        format!("  [{}]", rules.join(", "))
                    },
                    if detectors.is_empty() {
                        String::new()
                    } else {
                        format!("  detectors: {}", detectors.join(", "))
                    },
                );
            }
            let unclassified: Vec<_> = lines.iter().filter(|l| l.suggestion.is_some()).collect();
            if !unclassified.is_empty() {
                println!("\nnot classified, with a suggestion:");
                for l in unclassified {
                    let s = l.suggestion.as_ref().expect("filtered");
                    println!("  {}: suggest {} ({})", l.path, s.action, s.why);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
