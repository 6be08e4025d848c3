//! The `sanitize` command, whole process, against the baseline program over
//! the same file in the same run: read each line, parse it into a
//! `serde_json::Value`, write it back, through the same buffered line I/O
//! (this bench binary, re-executed in baseline mode). Rounds alternate the
//! baseline, `sanitize --threads 1` and `sanitize --threads N` (N: the
//! cores), and the medians of the per-round ratios are reported.
//!
//! Corpus: `BENCH_CORPUS`, else 100,000 events from
//! `../shared/corpus/gen_events.py --seed 7` when it is there, else
//! tests/data/corpus.jsonl repeated to 100,000 lines. `ROUNDS` (default 5).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BASELINE: &str = "EVENT_SANITIZER_BENCH_BASELINE";

/// The baseline program: what any sanitizer must at least do to a line.
fn round_trip(input: &str, output: &str) {
    let r = BufReader::with_capacity(1 << 20, std::fs::File::open(input).expect("input"));
    let mut w = BufWriter::new(std::fs::File::create(output).expect("output"));
    for line in r.split(b'\n') {
        let line = line.expect("read");
        let v: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        serde_json::to_writer(&mut w, &v).expect("write");
        w.write_all(b"\n").expect("write");
    }
    w.flush().expect("flush");
}

fn corpus(dir: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("BENCH_CORPUS") {
        return p.into();
    }
    let path = dir.join("corpus.jsonl");
    let generator = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/gen_events.py"
    );
    if Path::new(generator).exists() {
        let ok = Command::new("python3")
            .args([generator, "--count", "100000", "--seed", "7", "--out"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return path;
        }
    }
    let small = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/corpus.jsonl"
    ))
    .expect("tests/data/corpus.jsonl");
    let lines = small.iter().filter(|&&b| b == b'\n').count().max(1);
    let mut all = Vec::with_capacity(small.len() * (100_000 / lines));
    for _ in 0..100_000 / lines {
        all.extend_from_slice(&small);
    }
    std::fs::write(&path, all).expect("write the corpus");
    path
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `c`, which writes `output`, and times it. The last round's
/// `output` is removed first, outside the timing: overwriting it would
/// charge the run for truncating a file of the bench's own making, and on
/// ext4 for the writeback that closing a truncated and rewritten file
/// starts (`auto_da_alloc`), which a command writing a new file never
/// pays.
fn timed(mut c: Command, output: &Path) -> f64 {
    match std::fs::remove_file(output) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove {}: {e}", output.display()),
    }
    let t = Instant::now();
    let out = c.output().expect("runs");
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

fn main() {
    if let Ok(spec) = std::env::var(BASELINE) {
        let (input, output) = spec.split_once('\n').expect("input\\noutput");
        round_trip(input, output);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let input = corpus(dir.path());
    let text = std::fs::read(&input).expect("corpus");
    let events = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as f64;
    let mb = text.len() as f64 / 1e6;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/customerio.yaml");
    let out = |name: &str| dir.path().join(name);
    let baseline = || {
        let output = out("baseline.jsonl");
        let mut c = Command::new(std::env::current_exe().expect("this bench"));
        c.env(
            BASELINE,
            format!("{}\n{}", input.display(), output.display()),
        );
        timed(c, &output)
    };
    let sanitize = |threads: usize| {
        let output = out(&format!("clean-{threads}.jsonl"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_event-sanitizer"));
        c.args(["sanitize", "-r", rules, "--placeholder-key", "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .arg("--threads")
            .arg(threads.to_string());
        timed(c, &output)
    };
    let (mut base, mut one, mut all) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r1, mut rn) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let b = baseline();
        let s1 = sanitize(1);
        let sn = sanitize(cores);
        base.push(b);
        one.push(s1);
        all.push(sn);
        r1.push(b / s1);
        rn.push(b / sn);
    }
    let same = std::fs::read(out("clean-1.jsonl")).expect("output")
        == std::fs::read(out(&format!("clean-{cores}.jsonl"))).expect("output");
    assert!(same, "--threads {cores} wrote other bytes than --threads 1");
    println!("corpus: {events} events, {mb:.1} MB; {rounds} interleaved rounds (medians), whole processes");
    let line = |name: &str, secs: f64| {
        println!(
            "{name:<46} {:>9.0} events/s {:>6.0} MB/s",
            events / secs,
            mb / secs
        )
    };
    line(
        "baseline: read, Value parse + serialize, write",
        median(&mut base),
    );
    line("sanitize --threads 1, default rules", median(&mut one));
    line(&format!("sanitize --threads {cores}"), median(&mut all));
    println!(
        "ratio sanitize --threads 1 / baseline: {:.2}x",
        median(&mut r1)
    );
    println!(
        "ratio sanitize --threads {cores} / baseline: {:.2}x (same bytes as 1 thread)",
        median(&mut rn)
    );
}
