//! `sanitize`: apply the rules to a file of events (JSON Lines), on every
//! core: the input is read in chunks of lines, each chunk is sanitized by
//! one worker, and the chunks are written back in input order, so the
//! output is the same bytes whatever the number of threads.

use super::{Failure, RulesArgs};
use crate::engine::{DeadLetterReason, Sanitizer, Scratch};
use base64::Engine as _;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
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
    /// Worker threads (default: one per core). The output is in input
    /// order and the same bytes for any number.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

fn open_out(path: &Option<PathBuf>) -> Result<Box<dyn Write>, Failure> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(std::fs::File::create(p).map_err(|e| {
            Failure::usage(format!("cannot create {}: {e}", p.display()))
        })?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// Lines per chunk, and the size after which a chunk is closed early.
const CHUNK_LINES: usize = 2048;
const CHUNK_BYTES: usize = 4 << 20;

/// Consecutive input lines: `data` holds them with their line ends,
/// `lines` the span of each without its `\n` (or `\r\n`).
#[derive(Default)]
struct Chunk {
    /// The 1-based number of its first line.
    first: u64,
    data: Vec<u8>,
    lines: Vec<(usize, usize)>,
}

/// Reads the next chunk; `None` at the end of the input.
fn read_chunk(r: &mut dyn BufRead, first: u64) -> Result<Option<Chunk>, Failure> {
    let mut c = Chunk {
        first,
        ..Chunk::default()
    };
    while c.lines.len() < CHUNK_LINES && c.data.len() < CHUNK_BYTES {
        let start = c.data.len();
        let n = r
            .read_until(b'\n', &mut c.data)
            .map_err(|e| Failure::usage(format!("cannot read the input: {e}")))?;
        if n == 0 {
            break;
        }
        let mut end = c.data.len();
        if c.data[end - 1] == b'\n' {
            end -= 1;
        }
        if end > start && c.data[end - 1] == b'\r' {
            end -= 1;
        }
        c.lines.push((start, end));
    }
    Ok((!c.lines.is_empty()).then_some(c))
}

/// Counts for the summary, added up over chunks.
#[derive(Default)]
struct Tally {
    lines: u64,
    ok: u64,
    blank: u64,
    bytes: u64,
    split: u64,
    reasons: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.lines += o.lines;
        self.ok += o.ok;
        self.blank += o.blank;
        self.bytes += o.bytes;
        self.split += o.split;
        for (code, n) in &o.reasons {
            *self.reasons.entry(code).or_default() += n;
        }
    }
}

/// A sanitized chunk: its clean lines, its dead letters (records for the
/// dead-letter file, or notes for standard error) and its counts.
#[derive(Default)]
struct Done {
    clean: Vec<u8>,
    dead: Vec<u8>,
    tally: Tally,
}

/// Sanitizes one chunk. The one function every thread count runs, so the
/// bytes cannot depend on it.
fn sanitize_chunk(
    s: &Sanitizer,
    chunk: &Chunk,
    dead_records: bool,
    scratch: &mut Scratch,
    buf: &mut Vec<u8>,
) -> Done {
    let mut d = Done {
        clean: Vec::with_capacity(chunk.data.len()),
        ..Done::default()
    };
    for (n, &(start, end)) in chunk.lines.iter().enumerate() {
        let line = &chunk.data[start..end];
        let number = chunk.first + n as u64;
        d.tally.lines += 1;
        d.tally.bytes += line.len() as u64;
        if line.trim_ascii().is_empty() {
            d.tally.blank += 1;
            continue;
        }
        match s.sanitize(line, scratch, buf) {
            Ok(records) => {
                d.tally.ok += 1;
                if records.len() > 1 {
                    d.tally.split += 1;
                }
                for rec in records.iter(buf) {
                    d.clean.extend_from_slice(rec);
                    d.clean.push(b'\n');
                }
            }
            Err(reason) => {
                *d.tally.reasons.entry(reason.code()).or_default() += 1;
                if dead_records {
                    d.dead
                        .extend_from_slice(dead_letter_record(number, &reason, line).as_bytes());
                } else {
                    d.dead.extend_from_slice(
                        format!("line {number}: dead letter: {} ({reason})", reason.code())
                            .as_bytes(),
                    );
                }
                d.dead.push(b'\n');
            }
        }
    }
    d
}

/// Where sanitized chunks go, in input order.
struct Sink {
    out: Box<dyn Write>,
    dead: Option<Box<dyn Write>>,
    tally: Tally,
    progress: bool,
    started: Instant,
}

impl Sink {
    fn write(&mut self, d: Done) -> Result<(), Failure> {
        self.out.write_all(&d.clean).map_err(write_failed)?;
        match &mut self.dead {
            Some(w) => w.write_all(&d.dead).map_err(write_failed)?,
            None => std::io::stderr().write_all(&d.dead).map_err(write_failed)?,
        }
        let before = self.tally.lines / 100_000;
        self.tally.add(&d.tally);
        if self.progress && self.tally.lines / 100_000 > before {
            eprint!(
                "\r{} lines, {:.0} lines/s",
                self.tally.lines,
                self.tally.lines as f64 / self.started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

fn write_failed(e: std::io::Error) -> Failure {
    Failure {
        message: format!("write failed: {e}"),
        code: 2,
    }
}

pub(crate) fn run(args: SanitizeArgs) -> Result<ExitCode, Failure> {
    let sanitizer = args.rules.sanitizer()?;
    let mut reader: Box<dyn BufRead + Send> = match &args.input {
        Some(p) => Box::new(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(p)
                .map_err(|e| Failure::usage(format!("cannot open {}: {e}", p.display())))?,
        )),
        None => Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
    };
    let mut sink = Sink {
        out: open_out(&args.output)?,
        dead: match &args.dead_letters {
            Some(_) => Some(open_out(&args.dead_letters)?),
            None => None,
        },
        tally: Tally::default(),
        progress: std::io::stderr().is_terminal(),
        started: Instant::now(),
    };
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let dead_records = sink.dead.is_some();
    let mut counts = vec![0u64; sanitizer.rule_count()];
    if threads == 1 {
        let (mut scratch, mut buf) = (Scratch::default(), Vec::new());
        let mut first = 1;
        while let Some(chunk) = read_chunk(&mut reader, first)? {
            first += chunk.lines.len() as u64;
            sink.write(sanitize_chunk(
                &sanitizer,
                &chunk,
                dead_records,
                &mut scratch,
                &mut buf,
            ))?;
        }
        scratch.drain_rule_counts(|i, n| counts[i] += n);
    } else {
        in_parallel(
            &sanitizer,
            threads,
            reader,
            dead_records,
            &mut sink,
            &mut counts,
        )?;
    }
    summarize(&sanitizer, &args, sink, &counts)
}

/// Chunk `k` goes to worker `k % threads` and its result is taken back
/// from that worker in the same turn: input order with no reordering
/// buffer, and at most two chunks waiting on each side of each worker.
fn in_parallel(
    sanitizer: &Sanitizer,
    threads: usize,
    mut reader: Box<dyn BufRead + Send>,
    dead_records: bool,
    sink: &mut Sink,
    counts: &mut [u64],
) -> Result<(), Failure> {
    std::thread::scope(|scope| {
        let mut results = Vec::with_capacity(threads);
        let mut inputs = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (in_tx, in_rx) = mpsc::sync_channel::<Chunk>(2);
            let (out_tx, out_rx) = mpsc::sync_channel::<Done>(2);
            inputs.push(in_tx);
            results.push(out_rx);
            workers.push(scope.spawn(move || {
                let (mut scratch, mut buf) = (Scratch::default(), Vec::new());
                for chunk in in_rx {
                    let done =
                        sanitize_chunk(sanitizer, &chunk, dead_records, &mut scratch, &mut buf);
                    if out_tx.send(done).is_err() {
                        break;
                    }
                }
                let mut counts = Vec::new();
                scratch.drain_rule_counts(|i, n| counts.push((i, n)));
                counts
            }));
        }
        let read = scope.spawn(move || -> Result<(), Failure> {
            let mut first = 1;
            for turn in 0.. {
                let Some(chunk) = read_chunk(&mut reader, first)? else {
                    return Ok(());
                };
                first += chunk.lines.len() as u64;
                if inputs[turn % threads].send(chunk).is_err() {
                    return Ok(()); // the writer stopped on an error
                }
            }
            Ok(())
        });
        let mut written = Ok(());
        'turns: for turn in 0.. {
            match results[turn % threads].recv() {
                Ok(done) => {
                    if let Err(e) = sink.write(done) {
                        written = Err(e);
                        break 'turns;
                    }
                }
                Err(_) => break 'turns, // that worker's input ended: every chunk is in
            }
        }
        drop(results);
        let read = read.join().expect("the reader does not panic");
        for w in workers {
            for (i, n) in w.join().expect("a worker does not panic") {
                counts[i] += n;
            }
        }
        written.and(read)
    })
}

fn summarize(
    sanitizer: &Sanitizer,
    args: &SanitizeArgs,
    mut sink: Sink,
    counts: &[u64],
) -> Result<ExitCode, Failure> {
    sink.out.flush().map_err(write_failed)?;
    if let Some(d) = &mut sink.dead {
        d.flush().map_err(write_failed)?;
    }
    let t = &sink.tally;
    if sink.progress && t.lines >= 100_000 {
        eprintln!();
    }
    let secs = sink.started.elapsed().as_secs_f64().max(1e-9);
    let dead_total: u64 = t.reasons.values().sum();
    eprintln!(
        "sanitized {} lines ({:.1} MB) in {secs:.2}s ({:.0} lines/s): {} clean, {dead_total} dead letters, {} blank lines skipped",
        t.lines,
        t.bytes as f64 / 1e6,
        t.lines as f64 / secs,
        t.ok,
        t.blank
    );
    if t.split > 0 {
        eprintln!(
            "  batches split to fit the destination's batch limit: {}",
            t.split
        );
    }
    for (code, n) in &t.reasons {
        eprintln!("  dead letter {code}: {n}");
    }
    // Every rule, in file order: one that never acted is listed too (a
    // misspelled field or a `when` that never holds shows up here).
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
