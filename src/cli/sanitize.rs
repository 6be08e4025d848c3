//! `sanitize`: apply the rules to a file of events (JSON Lines), on every
//! core: the input is read in chunks of lines, each chunk is sanitized by
//! one worker, and the chunks are written back in input order, so the
//! output is the same bytes whatever the number of threads.

use super::{Failure, RulesArgs};
use crate::engine::{DeadLetterReason, Sanitizer, Scratch};
use base64::Engine as _;
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Mutex};
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

/// The input read per chunk: a chunk is every whole line in about this
/// much input (a longer line makes a chunk of its own, however long).
const CHUNK_BYTES: usize = 1 << 20;

/// Consecutive input lines: `data` holds them with their line ends,
/// `lines` the span of each without its `\n` (or `\r\n`).
#[derive(Default)]
struct Chunk {
    /// The 1-based number of its first line.
    first: u64,
    data: Vec<u8>,
    lines: Vec<(usize, usize)>,
}

/// Reads the input in chunks of whole lines, straight from the file into
/// each chunk's buffer (no line-by-line copy): the part of a line a read
/// cuts off is carried into the next chunk.
struct Lines {
    input: Box<dyn Read + Send>,
    carry: Vec<u8>,
    next_line: u64,
    done: bool,
}

impl Lines {
    fn new(input: Box<dyn Read + Send>) -> Lines {
        Lines {
            input,
            carry: Vec::new(),
            next_line: 1,
            done: false,
        }
    }

    /// The next chunk, in `data` (a recycled buffer); `None` at the end
    /// of the input.
    fn next(&mut self, mut data: Vec<u8>) -> Result<Option<Chunk>, Failure> {
        data.clear();
        data.append(&mut self.carry);
        // Input before `scanned` has no line end (a line longer than a
        // chunk is read until it ends).
        let mut scanned = 0;
        let whole = loop {
            if data.len() >= CHUNK_BYTES || self.done {
                match memchr::memrchr(b'\n', &data[scanned..]) {
                    Some(nl) => break scanned + nl + 1,
                    None if self.done => break data.len(),
                    None => scanned = data.len(),
                }
            }
            let want = CHUNK_BYTES.saturating_sub(data.len()).max(1 << 16) as u64;
            let n = (&mut self.input)
                .take(want)
                .read_to_end(&mut data)
                .map_err(|e| Failure::usage(format!("cannot read the input: {e}")))?;
            self.done = n == 0;
        };
        self.carry.extend_from_slice(&data[whole..]);
        data.truncate(whole);
        let mut lines = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let nl = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |i| start + i);
            let mut end = nl;
            if end > start && data[end - 1] == b'\r' {
                end -= 1;
            }
            lines.push((start, end));
            start = nl + 1;
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let first = self.next_line;
        self.next_line += lines.len() as u64;
        Ok(Some(Chunk { first, data, lines }))
    }
}

/// Buffers handed back once their chunk is written, so that each holds
/// its pages from one chunk to the next instead of being allocated,
/// grown and freed per chunk.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut b: Vec<u8>) {
        b.clear();
        self.0.lock().expect("not poisoned").push(b);
    }
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

/// Sanitizes one chunk, into a buffer from `buffers`, and hands the
/// chunk's buffer back. The one function every thread count runs, so the
/// bytes cannot depend on it.
fn sanitize_chunk(
    s: &Sanitizer,
    chunk: Chunk,
    dead_records: bool,
    scratch: &mut Scratch,
    buf: &mut Vec<u8>,
    buffers: &Buffers,
) -> Done {
    let mut d = Done {
        clean: buffers.take(),
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
    buffers.give(chunk.data);
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
    /// Writes a sanitized chunk and hands its clean buffer back.
    fn write(&mut self, d: Done, buffers: &Buffers) -> Result<(), Failure> {
        self.out.write_all(&d.clean).map_err(write_failed)?;
        buffers.give(d.clean);
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
    let mut lines = Lines::new(match &args.input {
        Some(p) => Box::new(
            std::fs::File::open(p)
                .map_err(|e| Failure::usage(format!("cannot open {}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stdin()),
    });
    let buffers = Buffers::default();
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
        while let Some(chunk) = lines.next(buffers.take())? {
            let done = sanitize_chunk(
                &sanitizer,
                chunk,
                dead_records,
                &mut scratch,
                &mut buf,
                &buffers,
            );
            sink.write(done, &buffers)?;
        }
        scratch.drain_rule_counts(|i, n| counts[i] += n);
    } else {
        in_parallel(
            &sanitizer,
            threads,
            lines,
            &buffers,
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
    mut lines: Lines,
    buffers: &Buffers,
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
                    let done = sanitize_chunk(
                        sanitizer,
                        chunk,
                        dead_records,
                        &mut scratch,
                        &mut buf,
                        buffers,
                    );
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
            for turn in 0.. {
                let Some(chunk) = lines.next(buffers.take())? else {
                    return Ok(());
                };
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
                    if let Err(e) = sink.write(done, buffers) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its input a few bytes per read, so reads end anywhere
    /// in a line, a line end or a `\r\n`.
    struct Trickle(std::io::Cursor<Vec<u8>>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 13 + 1;
            let n = buf.len().min(self.1);
            self.0.read(&mut buf[..n])
        }
    }

    /// Every line, numbered from 1, as [`Lines`] reads them.
    fn read_all(input: Box<dyn Read + Send>) -> Vec<(u64, Vec<u8>)> {
        let mut lines = Lines::new(input);
        let mut all = Vec::new();
        let mut recycled = Vec::new();
        let next = |l: &mut Lines, b| l.next(b).unwrap_or_else(|f| panic!("{}", f.message));
        while let Some(chunk) = next(&mut lines, std::mem::take(&mut recycled)) {
            assert_eq!(chunk.first, all.len() as u64 + 1);
            for &(start, end) in &chunk.lines {
                all.push((all.len() as u64 + 1, chunk.data[start..end].to_vec()));
            }
            recycled = chunk.data;
        }
        all
    }

    #[test]
    fn lines_are_read_whole_across_chunks_and_reads() {
        let mut input = b"first\r\n\n\r\n".to_vec();
        input.extend(vec![b'x'; CHUNK_BYTES * 2 + 17]); // longer than a chunk
        input.push(b'\n');
        for i in 0..200_000 {
            input.extend(format!("line {i}{}", if i % 3 == 0 { "\r\n" } else { "\n" }).bytes());
        }
        input.extend(b"no line end at the end");
        let expected: Vec<(u64, Vec<u8>)> = input
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l))
            .collect();
        assert_eq!(expected.len(), 200_005);
        let whole = read_all(Box::new(std::io::Cursor::new(input.clone())));
        assert!(whole == expected, "read whole");
        let trickled = read_all(Box::new(Trickle(std::io::Cursor::new(input), 0)));
        assert!(trickled == expected, "read a few bytes at a time");
        assert!(read_all(Box::new(std::io::empty())).is_empty());
        let one = read_all(Box::new(&b"only\n"[..]));
        assert_eq!(one, vec![(1, b"only".to_vec())]);
    }
}
