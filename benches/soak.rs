//! The soak run (`scripts/soak [SECONDS]`): the real binary against a mock
//! cluster hosted here, for SECONDS (default 600), with events produced at
//! a steady rate while they are consumed. In the middle the output broker
//! goes down (a tenth of the run) and then answers slowly (500 ms per
//! request, another tenth). The child's RSS is sampled every second. The
//! clean and dead-letter topics are read all along (the mock cluster keeps
//! only ~5 MB per partition, so they are read as they fill). At the end
//! every event must be on one of them: the run fails with the count lost.
//!
//! Prints the peak RSS, the events produced, lost and seen twice.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RAW: &str = "soak.raw";
const CLEAN: &str = "soak.clean";
const DLQ: &str = "soak.dead-letter";
const PARTITIONS: i32 = 24;
const RATE: u64 = 1_000;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn event(n: u64) -> (String, Vec<u8>) {
    let user = format!("user-{}", n % 500);
    if n % 97 == 0 {
        return (user, format!("not json soak-{n}").into_bytes());
    }
    let v = serde_json::json!({
        "type": "identify", "messageId": format!("soak-{n}"), "userId": user,
        "traits": {"n": n, "phone": format!("+1-555-{:07}", n % 10_000_000), "ssn": "123-45-6789", "plan": "pro"}
    });
    (user, serde_json::to_vec(&v).unwrap())
}

fn id_of(payload: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(payload);
    let at = text.find("soak-")? + 5;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(600);
    let run = Duration::from_secs(seconds);
    let mock = MockCluster::new(2).unwrap();
    for (t, n) in [(RAW, PARTITIONS), (CLEAN, PARTITIONS), (DLQ, 4)] {
        mock.create_topic(t, n, 1).unwrap();
        for p in 0..n {
            let leader = if t == RAW { 1 } else { 2 };
            mock.partition_leader(t, p, Some(leader)).unwrap();
        }
    }
    mock.coordinator(MockCoordinator::Group("soak".into()), 1)
        .unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = dir.path().join("key");
    std::fs::write(&key, "soak-key\n").unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: soak\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000' }}\n  producer: {{ linger.ms: '50' }}\nrules: {{ file: {}, hash_key_file: {} }}\nhttp: {{ listen: '127.0.0.1:0' }}\nlog: {{ format: json, level: warn }}\nshutdown: {{ timeout: 20s }}\ndead_letters: {{ encrypt: false }}\n",
            root.join("rules/customerio.yaml").display(),
            key.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("service.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_event-sanitizer"))
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();

    // The reader: every id seen on the clean or dead-letter topic, counted.
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (seen, reading, bs) = (seen.clone(), reading.clone(), bs.clone());
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .set("group.id", "soak-reader")
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            c.subscribe(&[CLEAN, DLQ]).unwrap();
            while reading.load(Ordering::Acquire) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    if let Some(id) = m.payload().and_then(id_of) {
                        *seen.lock().unwrap().entry(id).or_insert(0) += 1;
                    }
                }
            }
        })
    };

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        // Few large message sets: the mock cluster finds an offset by
        // walking a partition's sets, so many tiny ones make it, not the
        // service, the bottleneck of a long run.
        .set("linger.ms", "100")
        .set("message.timeout.ms", "0")
        .create()
        .unwrap();
    let produced = AtomicU64::new(0);
    let started = Instant::now();
    let (outage, slow) = ((run * 4 / 10, run * 5 / 10), (run * 5 / 10, run * 6 / 10));
    let mut phase = "normal";
    let mut peak = 0u64;
    let mut next_sample = Instant::now();
    while started.elapsed() < run {
        let t = started.elapsed();
        let want = if t >= outage.0 && t < outage.1 {
            "outage"
        } else if t >= slow.0 && t < slow.1 {
            "slow"
        } else {
            "normal"
        };
        if want != phase {
            match want {
                "outage" => mock.broker_down(2).unwrap(),
                "slow" => {
                    mock.broker_up(2).unwrap();
                    mock.broker_round_trip_time(2, Duration::from_millis(500))
                        .unwrap();
                }
                _ => mock.broker_round_trip_time(2, Duration::ZERO).unwrap(),
            }
            eprintln!("{:>5.0}s: {want}", t.as_secs_f64());
            phase = want;
        }
        // Keep to RATE events per second.
        let due = (t.as_secs_f64() * RATE as f64) as u64;
        while produced.load(Ordering::Relaxed) < due {
            let n = produced.fetch_add(1, Ordering::Relaxed);
            let (k, v) = event(n);
            let mut rec = BaseRecord::to(RAW).key(&k).payload(&v);
            while let Err((_, r)) = producer.send(rec) {
                producer.poll(Duration::from_millis(5));
                rec = r;
            }
        }
        producer.poll(Duration::ZERO);
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let rss = rss_kib(pid).unwrap_or(0);
            peak = peak.max(rss);
            if t.as_secs() % 30 == 0 {
                let n = seen.lock().unwrap().len();
                eprintln!(
                    "{:>5.0}s: produced {}, out {n}, RSS {} MiB",
                    t.as_secs_f64(),
                    produced.load(Ordering::Relaxed),
                    rss / 1024
                );
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Err(e) = producer.flush(Duration::from_secs(120)) {
        eprintln!("the soak's own producer could not deliver its events to {RAW}: {e}");
        std::process::exit(2);
    }
    let total = produced.load(Ordering::Relaxed);
    // Every event out, or a bounded wait for the rest.
    let deadline = Instant::now() + Duration::from_secs(180);
    while (seen.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();
    reading.store(false, Ordering::Release);
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let lost = (0..total).filter(|n| !seen.contains_key(n)).count();
    let twice = seen.values().filter(|&&c| c > 1).count();
    println!(
        "soak {seconds} s at {RATE}/s (output broker down {:.0} s, slow {:.0} s): produced {total}, lost {lost}, seen twice {twice}, peak RSS {} MiB, service exit {status}",
        (outage.1 - outage.0).as_secs_f64(),
        (slow.1 - slow.0).as_secs_f64(),
        peak / 1024
    );
    if lost > 0 || !status.success() {
        eprintln!(
            "service log (tail):\n{}",
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::process::exit(1);
    }
}
