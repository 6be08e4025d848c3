//! `sanitize`: apply the rules to a file of events (JSON Lines).

use super::{Failure, RulesArgs};
use crate::engine::{DeadLetterReason, Scratch};
use base64::Engine as _;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
pub(crate) struct SanitizeArgs {
    #[command(flatten)]
    rules: RulesArgs,
    /// Events to read, one JSON message per line (default: standard input).
    #[arg(long, short = 'i', value_name = "FILE")]
    input: Option<PathBuf>,
    /// Where clean events go (default: standard output).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Where dead letters go, one JSON object per line with the line
    /// number, the reason and the original message. Without it, dead letters
    /// are listed on standard error by line number and reason only.
    #[arg(long, value_name = "FILE")]
    dead_letters: Option<PathBuf>,
    /// Exit 1 when any line is a dead letter.
    #[arg(long)]
    fail_on_dead_letter: bool,
}

fn open_out(path: &Option<PathBuf>) -> Result<Box<dyn Write>, Failure> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            Failure::usage(format!("cannot create {}: {e}", p.display()))
        })?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

pub(crate) fn run(args: SanitizeArgs) -> Result<ExitCode, Failure> {
    let sanitizer = args.rules.sanitizer()?;
    let reader: Box<dyn BufRead> = match &args.input {
        Some(p) => {
            Box::new(BufReader::new(std::fs::File::open(p).map_err(|e| {
                Failure::usage(format!("cannot open {}: {e}", p.display()))
            })?))
        }
        None => Box::new(BufReader::new(std::io::stdin().lock())),
    };
    let mut out = open_out(&args.output)?;
    let mut dead = match &args.dead_letters {
        Some(_) => Some(open_out(&args.dead_letters)?),
        None => None,
    };
    let io_err = |e: std::io::Error| Failure {
        message: format!("write failed: {e}"),
        code: 2,
    };
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut scratch = Scratch::default();
    let mut clean = Vec::new();
    let (mut lines, mut ok, mut blank, mut bytes, mut split) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    for line in reader.split(b'\n') {
        let mut line = line.map_err(|e| Failure::usage(format!("cannot read the input: {e}")))?;
        lines += 1;
        if line.ends_with(b"\r") {
            line.pop();
        }
        bytes += line.len() as u64;
        if line.trim_ascii().is_empty() {
            blank += 1;
            continue;
        }
        match sanitizer.sanitize(&line, &mut scratch, &mut clean) {
            Ok(records) => {
                ok += 1;
                if records.len() > 1 {
                    split += 1;
                }
                for rec in records.iter(&clean) {
                    out.write_all(rec).map_err(io_err)?;
                    out.write_all(b"\n").map_err(io_err)?;
                }
            }
            Err(reason) => {
                *reasons.entry(reason.code()).or_default() += 1;
                match &mut dead {
                    Some(d) => {
                        let rec = dead_letter_record(lines, &reason, &line);
                        d.write_all(rec.as_bytes()).map_err(io_err)?;
                        d.write_all(b"\n").map_err(io_err)?;
                    }
                    None => eprintln!("line {lines}: dead letter: {} ({reason})", reason.code()),
                }
            }
        }
        if progress && lines % 100_000 == 0 {
            eprint!(
                "\r{lines} lines, {:.0} lines/s",
                lines as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    out.flush().map_err(io_err)?;
    if let Some(d) = &mut dead {
        d.flush().map_err(io_err)?;
    }
    if progress && lines >= 100_000 {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let dead_total: u64 = reasons.values().sum();
    eprintln!(
        "sanitized {lines} lines ({:.1} MB) in {secs:.2}s ({:.0} lines/s): {ok} clean, {dead_total} dead letters, {blank} blank lines skipped",
        bytes as f64 / 1e6,
        lines as f64 / secs
    );
    if split > 0 {
        eprintln!("  batches split to fit the destination's batch limit: {split}");
    }
    for (code, n) in &reasons {
        eprintln!("  dead letter {code}: {n}");
    }
    // Every rule, in file order: one that never acted is listed too (a
    // misspelled field or a `when` that never holds shows up here).
    let mut counts = vec![0u64; sanitizer.rule_count()];
    scratch.drain_rule_counts(|i, n| counts[i] += n);
    for (i, n) in counts.iter().enumerate() {
        let rule = format!("{} ({})", sanitizer.rule_id(i), sanitizer.rule_action(i));
        if *n == 0 {
            eprintln!("  rule {rule}: 0 times (never applied: check its fields, paths and `when`)");
        } else {
            eprintln!("  rule {rule}: {n} times");
        }
    }
    Ok(if args.fail_on_dead_letter && dead_total > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A dead letter as one JSON line: where it was, why, and the original
/// bytes (as text when they are UTF-8, base64 otherwise).
fn dead_letter_record(line: u64, reason: &DeadLetterReason, raw: &[u8]) -> String {
    let mut rec =
        serde_json::json!({"line": line, "reason": reason.code(), "detail": reason.to_string()});
    match std::str::from_utf8(raw) {
        Ok(s) => rec["raw"] = s.into(),
        Err(_) => rec["raw_base64"] = base64::engine::general_purpose::STANDARD.encode(raw).into(),
    }
    rec.to_string()
}
