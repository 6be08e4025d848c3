//! End-to-end throughput through librdkafka's in-process mock cluster, in
//! one process, on fresh clusters holding the same input:
//!
//! - (a) a naive consume-then-produce loop written here: `BaseConsumer`
//!   poll, `BaseProducer` send with the service's durability settings
//!   (idempotent, `acks=all`), the offset stored when its record is
//!   acknowledged; no sanitizing, no headers;
//! - (b) the service with an empty rule set, one lane per core
//!   (`limits.workers: 0`; `BENCH_WORKERS` sets another count);
//! - (c) the service with the default rules;
//! - (d) (c) with `kafka.delivery: exactly_once`.
//! - (e) (c) with shadow rules (`rules.shadow_file`: the default rules and
//!   one more) and the field inventory at its default (1 event in 100);
//!   (b) to (d) run with both off. Reported as a ratio to (c).
//!
//! A run of (b) to (e) counts only if the group stayed in one generation
//! through the drain (every lane assigned once, nothing revoked); else it
//! is reported and run again, up to three times. On the mock cluster a
//! lane whose join reaches the coordinator after the first election
//! stalls the group for `session.timeout.ms` minus a second (44 s by
//! default; `rdkafka_mock_cgrp.c` waits that long for members to rejoin),
//! which once measured (c) at 2,267 msg/s: the group's start, not the
//! delivery core's pace.
//!
//! Rounds interleave the four; the medians of msg/s and of the per-round
//! ratios to (a) are reported, with CPU seconds (user + sys, the whole
//! process, mock cluster included) per million events for (a) and (c).
//! Then the consume-to-acknowledge p99 of (c) at half its rate, produced
//! while it runs, and of the naive loop of (a) fed the same way (the
//! latency the broker and librdkafka allow here). On the mock cluster
//! twice: with the service's settings, and with a 10 ms
//! `fetch.wait.max.ms`, since the mock holds an empty fetch for the whole
//! wait where a broker answers when data arrives.
//!
//! `cargo bench --bench pipeline`; `BENCH_EVENTS`, `ROUNDS`.
//! For experiments: `BENCH_ONLY=ab` (runs only those), `BENCH_TRACE=1`
//! (progress every 10 ms and librdkafka logs per `RUST_LOG`),
//! `BENCH_CONSUMER` / `BENCH_PRODUCER` (`k=v,k=v` librdkafka properties),
//! `BENCH_IN_FLIGHT`, `BENCH_WORKERS`, `BENCH_TXN_MS`, `BENCH_TXN_MAX`,
//! `BENCH_PRIVACY=1` (privacy requests on, one person suppressed: the gate
//! and the identity scan on every event).
//!
//! `BENCH_BROKER=kafka`: the same runs against a real Apache Kafka broker
//! (`scripts/kafka start`, fresh topics per run): no 5 MB-per-partition
//! ceiling, real transactions. Its CPU figures are this process only (the
//! broker is another process).

use event_sanitizer::config::*;
use event_sanitizer::metrics::Telemetry;
use event_sanitizer::pipeline::Pipeline;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PARTITIONS: i32 = 32;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Where one run's topics live: a fresh in-process mock cluster, or fresh
/// topics on a real Apache Kafka broker (`BENCH_BROKER=kafka`, started by
/// `scripts/kafka start`, reused when running).
struct Cluster {
    bootstrap: String,
    raw: String,
    clean: String,
    dlq: String,
    /// A privacy-requests topic holding one `suppress` (used with
    /// `BENCH_PRIVACY=1`).
    requests: String,
    group: String,
    _mock: Option<Mock>,
}

fn real_kafka() -> bool {
    std::env::var("BENCH_BROKER").is_ok_and(|v| v == "kafka")
}

/// The real broker's PLAINTEXT address, started once.
fn kafka_bootstrap() -> &'static str {
    static BS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BS.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .arg("start")
            .output()
            .expect("run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("scripts/kafka printed no {k}"))
        };
        eprintln!("real broker: Apache Kafka {}", var("KAFKA_VERSION"));
        var("KAFKA_PLAINTEXT")
    })
}

fn cluster(events: &[Vec<u8>]) -> Cluster {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = format!(
        "{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let c = if real_kafka() {
        let c = Cluster {
            bootstrap: kafka_bootstrap().to_string(),
            raw: format!("bench-raw-{run}"),
            clean: format!("bench-clean-{run}"),
            dlq: format!("bench-dlq-{run}"),
            requests: format!("bench-requests-{run}"),
            group: format!("bench-{run}"),
            _mock: None,
        };
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &c.bootstrap)
                .create()
                .unwrap();
        let topics: Vec<rdkafka::admin::NewTopic> = [&c.raw, &c.clean, &c.dlq, &c.requests]
            .iter()
            .map(|t| {
                let n = if *t == &c.requests { 1 } else { PARTITIONS };
                rdkafka::admin::NewTopic::new(t, n, rdkafka::admin::TopicReplication::Fixed(1))
            })
            .collect();
        let opts =
            rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let created = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(admin.create_topics(&topics, &opts))
            .unwrap();
        for r in created {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        c
    } else {
        let mock = MockCluster::new(1).unwrap();
        for t in ["raw", "clean", "dlq"] {
            mock.create_topic(t, PARTITIONS, 1).unwrap();
        }
        mock.create_topic("requests", 1, 1).unwrap();
        Cluster {
            bootstrap: mock.bootstrap_servers(),
            raw: "raw".into(),
            clean: "clean".into(),
            dlq: "dlq".into(),
            requests: "requests".into(),
            group: format!("bench-{run}"),
            _mock: Some(mock),
        }
    };
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &c.bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        let key = format!("user-{}", i % 5000);
        while let Err((_, _)) = p.send(BaseRecord::to(&c.raw).payload(e).key(&key)) {
            p.poll(Duration::from_millis(5));
        }
    }
    let request = br#"{"requestId":"bench-1","userId":"not-in-the-corpus","action":"suppress"}"#;
    while let Err((_, _)) = p.send(
        BaseRecord::to(&c.requests)
            .payload(&request[..])
            .key("not-in-the-corpus"),
    ) {
        p.poll(Duration::from_millis(5));
    }
    p.flush(Duration::from_secs(60)).unwrap();
    c
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 (utime, stime), counted after the ")" as 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU ticks of each thread of this process, by thread id: (name, ticks).
fn thread_ticks() -> std::collections::HashMap<String, (String, u64)> {
    let mut all = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        all.insert(
            e.file_name().to_string_lossy().into_owned(),
            (name, t(11) + t(12)),
        );
    }
    all
}

/// With `BENCH_TRACE`: the CPU each thread took since `before`, busiest first.
fn print_thread_cpu(before: &std::collections::HashMap<String, (String, u64)>, secs: f64) {
    let mut rows: Vec<(u64, String)> = thread_ticks()
        .into_iter()
        .map(|(tid, (name, t))| {
            (
                t - before.get(&tid).map_or(0, |b| b.1),
                format!("{name} [{tid}]"),
            )
        })
        .filter(|r| r.0 > 0)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (t, name) in rows {
        eprintln!(
            "  {:>5.1}% of a core  {name}",
            t as f64 / 100.0 / secs * 100.0
        );
    }
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_per_million: f64,
}

struct StoreOnAck {
    consumer: Arc<BaseConsumer>,
    input: String,
    acked: AtomicU64,
    /// Consume-to-acknowledge seconds of the messages that carry their
    /// consume time (the paced run only: the throughput run reads no
    /// clock).
    latencies: std::sync::Mutex<Vec<f64>>,
}

/// What the naive loop's delivery callback gets: the input position, and
/// when it was consumed (paced run only).
type Consumed = Box<(i32, i64, Option<Instant>)>;

impl ClientContext for StoreOnAck {}

impl ProducerContext for StoreOnAck {
    type DeliveryOpaque = Consumed;
    fn delivery(&self, r: &DeliveryResult<'_>, at: Consumed) {
        if r.is_ok() {
            let _ = self.consumer.store_offset(&self.input, at.0, at.1);
            if let Some(t) = at.2 {
                let secs = t.elapsed().as_secs_f64();
                self.latencies.lock().unwrap().push(secs);
            }
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The naive loop's clients on `c`: a consumer of the input topic (plus
/// `consumer` properties) and an idempotent, `acks=all` producer that
/// stores each offset when its record is acknowledged.
fn naive_clients(
    c: &Cluster,
    consumer: &[(&str, String)],
) -> (Arc<BaseConsumer>, BaseProducer<StoreOnAck>) {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &c.bootstrap)
        .set("group.id", format!("naive-{}", c.group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false");
    for (k, v) in consumer {
        cc.set(*k, v);
    }
    let consumer: Arc<BaseConsumer> = Arc::new(cc.create().unwrap());
    consumer.subscribe(&[&c.raw]).unwrap();
    let producer: BaseProducer<StoreOnAck> = ClientConfig::new()
        .set("bootstrap.servers", &c.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(StoreOnAck {
            consumer: consumer.clone(),
            input: c.raw.clone(),
            acked: AtomicU64::new(0),
            latencies: Default::default(),
        })
        .unwrap();
    (consumer, producer)
}

/// The naive loop's step: sends `m` on to the clean topic (`consumed_at`:
/// when it was consumed, for the paced run).
fn naive_forward(
    producer: &BaseProducer<StoreOnAck>,
    clean: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
    consumed_at: Option<Instant>,
) {
    let mut rec =
        BaseRecord::with_opaque_to(clean, Box::new((m.partition(), m.offset(), consumed_at)))
            .payload(m.payload().unwrap_or_default());
    if let Some(k) = m.key() {
        rec = rec.key(k);
    }
    while let Err((_, back)) = producer.send(rec) {
        rec = back;
        producer.poll(Duration::from_millis(1));
    }
}

/// (a): the simplest program that moves the same messages.
fn naive(events: &[Vec<u8>]) -> Run {
    let c = cluster(events);
    let (consumer, producer) = naive_clients(&c, &[]);
    let n = events.len() as u64;
    let mut start = None;
    let mut cpu0 = 0.0;
    while producer.context().acked.load(Ordering::Relaxed) < n {
        producer.poll(Duration::ZERO);
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(1)) else {
            continue;
        };
        if start.is_none() {
            start = Some(Instant::now());
            cpu0 = cpu_seconds();
            perf_control("enable");
        }
        naive_forward(&producer, &c.clean, &m, None);
    }
    let secs = start.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    perf_control("disable");
    Run {
        rate: n as f64 / secs,
        cpu_per_million: (cpu_seconds() - cpu0) / n as f64 * 1e6,
    }
}

fn config(
    c: &Cluster,
    rules: &std::path::Path,
    key: &std::path::Path,
    delivery: DeliveryMode,
) -> Config {
    Config {
        kafka: KafkaConfig {
            bootstrap_servers: c.bootstrap.clone(),
            group_id: c.group.clone(),
            input_topics: vec![c.raw.clone()],
            clean_topic: c.clean.clone(),
            dead_letter_topic: c.dlq.clone(),
            allow_plaintext: true,
            sasl_password_file: None,
            common: Default::default(),
            consumer: props("BENCH_CONSUMER"),
            producer: props("BENCH_PRODUCER"),
            delivery,
            transactional_id: Some(c.group.clone()),
            transaction: TransactionConfig {
                interval: std::env::var("BENCH_TXN_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(TransactionConfig::default().interval, Duration::from_millis),
                max_messages: std::env::var("BENCH_TXN_MAX")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(TransactionConfig::default().max_messages),
                ..TransactionConfig::default()
            },
        },
        rules: RulesConfig {
            file: rules.into(),
            hash_key_file: Some(key.into()),
            hash_keys_file: None,
            reload_interval: Duration::from_secs(60),
            shadow_file: None,
        },
        limits: LimitsConfig {
            max_in_flight: std::env::var("BENCH_IN_FLIGHT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(LimitsConfig::default().max_in_flight),
            workers: workers(),
            ..LimitsConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".into(),
        },
        log: LogConfig::default(),
        shutdown: ShutdownConfig::default(),
        webhooks: None,
        // `BENCH_PRIVACY=1`: every event passes the privacy gate and the
        // identity scan (the set is not empty).
        privacy: std::env::var("BENCH_PRIVACY")
            .is_ok()
            .then(|| PrivacyConfig {
                requests_topic: c.requests.clone(),
            }),
        // Sealed, as in production: a ring next to the hash key.
        dead_letters: DeadLettersConfig {
            encrypt: true,
            keys_file: Some({
                let ring = key.with_file_name("dead-letter-keys.yaml");
                std::fs::write(
                    &ring,
                    "active: bench\nkeys: { bench: bench-dead-letter-key-0123456789abcdef }\n",
                )
                .expect("write the dead-letter key ring");
                ring
            }),
        },
        audit: Default::default(),
        canary: Default::default(),
        inventory: Default::default(),
    }
}

/// The lanes of (b) to (e): `BENCH_WORKERS`, else 0 (one per core, as a
/// replica on this many cores is configured; the default of
/// `limits.workers`, 1, leaves a core of two to librdkafka).
fn workers() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// With `BENCH_PERF_CTL=<fifo>` (perf record's `--control fifo:<fifo>`
/// with `-D -1`): profiles only the measured window of (b) to (e).
fn perf_control(command: &str) {
    if let Ok(path) = std::env::var("BENCH_PERF_CTL") {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            use std::io::Write;
            let _ = writeln!(f, "{command}");
        }
    }
}

fn read(t: &Telemetry, name: &str) -> f64 {
    t.render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (b) to (e): the service on its own fresh cluster; whether the group
/// stayed settled through the drain (see [`group_settled`]).
fn service(
    events: &[Vec<u8>],
    rules_text: &str,
    delivery: DeliveryMode,
    governance: bool,
    rt: &tokio::runtime::Runtime,
) -> (Run, Arc<Telemetry>, Result<(), String>) {
    let c = cluster(events);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, rules_text).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "bench").unwrap();
    let mut cfg = config(&c, &rules, &key, delivery);
    if governance {
        let shadow = dir.path().join("candidate.yaml");
        std::fs::write(
            &shadow,
            format!("{rules_text}\n  - id: never-send-last-name\n    action: drop\n    fields: [last_name]\n"),
        )
        .unwrap();
        cfg.rules.shadow_file = Some(shadow);
    } else {
        cfg.inventory.sample_every = 0;
    }
    let telemetry = Arc::new(Telemetry::new());
    let n = events.len() as f64;
    let trace = std::env::var("BENCH_TRACE").is_ok();
    let mut settled = Err(String::new());
    let (secs, cpu) = rt.block_on(async {
        let pipeline = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(pipeline.run(async move {
            let _ = rx.await;
        }));
        // From the first message consumed to the last acknowledged (the
        // group join is not the pipeline's speed).
        let mut start = None;
        let mut cpu0 = 0.0;
        let mut threads0 = Default::default();
        loop {
            // Read without rendering every metric: a render every 10 ms
            // would take CPU from the service it measures.
            let (consumed, out) = telemetry.messages_through();
            if start.is_none() && consumed > 0 {
                start = Some(Instant::now());
                cpu0 = cpu_seconds();
                threads0 = thread_ticks();
                perf_control("enable");
            }
            let out = out as f64;
            if out >= n {
                break;
            }
            if let (true, Some(s)) = (trace, start) {
                eprintln!(
                    "{:>6.3}s in {:>7} out {:>7} in flight {:>6}",
                    s.elapsed().as_secs_f64(),
                    read(&telemetry, "event_sanitizer_messages_in_total"),
                    out,
                    read(&telemetry, "event_sanitizer_in_flight_messages"),
                );
            }
            tokio::time::sleep(Duration::from_millis(if start.is_some() { 10 } else { 1 })).await;
        }
        let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let cpu = cpu_seconds() - cpu0;
        perf_control("disable");
        settled = group_settled(&telemetry);
        if trace || std::env::var("BENCH_THREADS").is_ok() {
            print_thread_cpu(&threads0, secs);
        }
        tx.send(()).unwrap();
        service.await.unwrap().unwrap();
        (secs, cpu)
    });
    let run = Run {
        rate: n / secs,
        cpu_per_million: cpu / n * 1e6,
    };
    (run, telemetry, settled)
}

/// The lanes of (b) to (e) on this machine.
fn lanes() -> usize {
    match workers() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Whether the drain ran in one generation of the group: every lane
/// assigned once, all partitions held, nothing revoked. A lane that joins
/// late rebalances the group mid-drain (on the mock cluster: its
/// assignment seconds after the first lane's; consumption stops for the
/// rebalance and offsets whose commit it refused are consumed again), or
/// never gets partitions before the drain ends (on the test broker, whose
/// `group.initial.rebalance.delay.ms` is 0: one lane drains alone). That
/// is the group's start, not the delivery core's pace (as the join itself
/// is not): such a run is reported and run again.
fn group_settled(t: &Telemetry) -> Result<(), String> {
    // `+ 0.0`: an empty sum is -0.0, printed "-0".
    let assigns = read(t, "event_sanitizer_rebalances_total{kind=\"assign\"}") + 0.0;
    let revokes = read(t, "event_sanitizer_rebalances_total{kind=\"revoke\"}") + 0.0;
    let held = read(t, "event_sanitizer_assigned_partitions") + 0.0;
    if assigns == lanes() as f64 && revokes == 0.0 && held == PARTITIONS as f64 {
        Ok(())
    } else {
        Err(format!(
            "{assigns} assignments, {revokes} revocations, {held} of {PARTITIONS} partitions held at the end"
        ))
    }
}

/// A histogram's buckets: (upper bound, cumulative count), ascending, the
/// last one `+Inf`.
struct Buckets(Vec<(f64, f64)>);

/// What (d)'s transactions cost in its last round (`secs`: its drain):
/// from the service's own exactly-once metrics.
fn transactions(t: &Telemetry, secs: f64, lanes: usize) {
    let committed = read(
        t,
        "event_sanitizer_transaction_seconds_count{result=\"committed\"}",
    );
    let spent = read(t, "event_sanitizer_transaction_seconds_sum");
    let carried = read(t, "event_sanitizer_transaction_messages_sum");
    let ended = read(t, "event_sanitizer_transaction_messages_count");
    let p99 = Buckets::read(t, "event_sanitizer_transaction_seconds", "committed").quantile(0.99);
    println!(
        "(d), last round: {committed:.0} transactions committed, {:.0} messages each on average; ending one took {:.1} ms on average (p99 <= {:.0} ms), {:.0}% of the lanes' time in the drain",
        carried / ended,
        spent / ended * 1e3,
        p99 * 1e3,
        spent / (secs * lanes as f64) * 100.0,
    );
}

impl Buckets {
    /// Histogram `name` as the exposition format shows it, the series
    /// matching `filter` added up.
    fn read(t: &Telemetry, name: &str, filter: &str) -> Buckets {
        let mut by_bound: Vec<(f64, f64)> = Vec::new();
        for l in t.render().lines() {
            if !(l.starts_with(&format!("{name}_bucket")) && l.contains(filter)) {
                continue;
            }
            let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let count: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match by_bound.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, c)) => *c += count,
                None => by_bound.push((bound, count)),
            }
        }
        by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(by_bound)
    }

    /// `samples` counted into the same bounds as `like`.
    fn count(like: &Buckets, samples: &[f64]) -> Buckets {
        Buckets(
            like.0
                .iter()
                .map(|&(bound, _)| {
                    (
                        bound,
                        samples.iter().filter(|&&s| s <= bound).count() as f64,
                    )
                })
                .collect(),
        )
    }

    /// Upper bound of the bucket holding the q-quantile.
    fn quantile(&self, q: f64) -> f64 {
        let total = self.0.last().map_or(0.0, |b| b.1);
        self.0
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or(f64::NAN, |b| b.0)
    }

    /// The share of observations at or under the bucket bound `le`.
    fn within(&self, le: f64) -> f64 {
        let total = self.0.last().map_or(0.0, |b| b.1);
        self.0
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(f64::NAN, |b| b.1 / total)
    }

    /// `p50 <= .. ms, p99 <= .. ms (bucket bounds); ..% within 10 ms`.
    fn latency(&self) -> String {
        format!(
            "p50 <= {:.0} ms, p99 <= {:.0} ms (bucket bounds); {:.1}% within 10 ms",
            self.quantile(0.5) * 1e3,
            self.quantile(0.99) * 1e3,
            self.within(0.01) * 100.0
        )
    }
}

/// Produces `events` to `topic` at `rate` events/s, until all are
/// acknowledged, with librdkafka's default `linger.ms` of 5, as an upstream
/// service would (the latency measured starts when the service consumes a
/// record, so this wait is not in it). With 1 ms the records went to the
/// broker two or three at a time, and the mock cluster finds the record
/// set a fetch asks for by walking every set of the partition from the
/// first (`rd_kafka_mock_msgset_find`, "FIXME: Maintain an index"): that
/// walk took 20-40% of the process's samples while a caught-up consumer
/// fetched, on the two cores the service and the naive loop are timed on.
fn feed(bootstrap: &str, topic: &str, events: &[Vec<u8>], rate: f64) {
    let p: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let start = Instant::now();
    for (i, e) in events.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let key = format!("user-{}", i % 5000);
        let mut rec = BaseRecord::to(topic).payload(e).key(&key);
        while let Err((_, back)) = p.send(rec) {
            rec = back;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// (c) at `rate` events/s: produced while the service runs; the service's
/// own consume-to-acknowledge histogram.
fn paced(
    events: &[Vec<u8>],
    rules_text: &str,
    rate: f64,
    fetch_wait_ms: Option<u32>,
    rt: &tokio::runtime::Runtime,
) -> Buckets {
    let c = cluster(&[]);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, rules_text).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "bench").unwrap();
    let mut cfg = config(&c, &rules, &key, DeliveryMode::AtLeastOnce);
    if let Some(ms) = fetch_wait_ms {
        cfg.kafka
            .consumer
            .insert("fetch.wait.max.ms".into(), ms.to_string());
    }
    let telemetry = Arc::new(Telemetry::new());
    rt.block_on(async {
        let pipeline = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(pipeline.run(async move {
            let _ = rx.await;
        }));
        // Fed once every lane holds its partitions (a lane joining late
        // would rebalance the group while it is timed).
        let joined = Instant::now();
        while group_settled(&telemetry).is_err() && joined.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = events.to_vec();
        let n = events.len();
        let (bs, raw) = (c.bootstrap.clone(), c.raw.clone());
        tokio::task::spawn_blocking(move || feed(&bs, &raw, &events, rate))
            .await
            .unwrap();
        while read(&telemetry, "event_sanitizer_messages_out_total") < n as f64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(()).unwrap();
        service.await.unwrap().unwrap();
    });
    let l = "event_sanitizer_added_latency_seconds";
    if std::env::var("BENCH_TRACE").is_ok() {
        for line in telemetry.render().lines() {
            if line.starts_with(l) && line.contains("clean") {
                eprintln!("{line}");
            }
        }
    }
    Buckets::read(&telemetry, l, "outcome=\"clean\"")
}

/// The naive loop of (a) at `rate` events/s, produced while it runs: its
/// consume-to-acknowledge times, counted into the bounds of `like`.
fn naive_paced(
    events: &[Vec<u8>],
    rate: f64,
    fetch_wait_ms: Option<u32>,
    like: &Buckets,
) -> Buckets {
    let c = cluster(&[]);
    let extra: Vec<(&str, String)> = fetch_wait_ms
        .map(|ms| ("fetch.wait.max.ms", ms.to_string()))
        .into_iter()
        .collect();
    let (consumer, producer) = naive_clients(&c, &extra);
    // Joined and assigned before the input starts, as the service is.
    let joined = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().map_or(true, |a| a.count() == 0) && Instant::now() < joined {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let n = events.len() as u64;
    std::thread::scope(|s| {
        s.spawn(|| feed(&c.bootstrap, &c.raw, events, rate));
        while producer.context().acked.load(Ordering::Relaxed) < n {
            producer.poll(Duration::ZERO);
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(1)) {
                naive_forward(&producer, &c.clean, &m, Some(Instant::now()));
            }
        }
    });
    let samples = std::mem::take(&mut *producer.context().latencies.lock().unwrap());
    Buckets::count(like, &samples)
}

/// Extra librdkafka properties from the environment: `k=v,k=v`.
fn props(var: &str) -> std::collections::BTreeMap<String, String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let corpus: Vec<Vec<u8>> = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/corpus.jsonl"
    ))
    .unwrap()
    .lines()
    .map(|l| l.as_bytes().to_vec())
    .collect();
    let events: Vec<Vec<u8>> = corpus.iter().cycle().take(n).cloned().collect();
    let default_rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rules/customerio.yaml"
    ))
    .unwrap();
    let empty = "version: 1\nname: empty\nrules: []\n";
    if std::env::var("BENCH_TRACE").is_ok() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runs: [Vec<Run>; 5] = Default::default();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut governance: Vec<f64> = Vec::new();
    // `BENCH_ONLY=ab` runs (a) and (b) alone (for experiments; the others
    // report NaN).
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "abcde".into());
    let skipped = Run {
        rate: f64::NAN,
        cpu_per_million: f64::NAN,
    };
    let mut last = None;
    let mut last_txn = None;
    for round in 0..rounds {
        let a = if only.contains('a') {
            naive(&events)
        } else {
            skipped
        };
        let run = |which: char, rules: &str, mode| {
            if !only.contains(which) {
                return (skipped, None);
            }
            for attempt in 1.. {
                let (r, t, settled) = service(&events, rules, mode, which == 'e', &rt);
                match settled {
                    Ok(()) => return (r, Some(t)),
                    Err(why) if attempt < 3 => {
                        println!("round {round}: ({which}) at {:.0} msg/s while the group rebalanced ({why}): run again", r.rate);
                    }
                    Err(why) => {
                        println!("round {round}: ({which}) rebalanced in three runs; the last is kept ({why})");
                        return (r, Some(t));
                    }
                }
            }
            unreachable!()
        };
        let (b, _) = run('b', empty, DeliveryMode::AtLeastOnce);
        let (c, t) = run('c', &default_rules, DeliveryMode::AtLeastOnce);
        let (d, td) = run('d', &default_rules, DeliveryMode::ExactlyOnce);
        if let Some(t) = td {
            last_txn = Some((t, n as f64 / d.rate));
        }
        let (e, _) = run('e', &default_rules, DeliveryMode::AtLeastOnce);
        println!(
            "round {round}: (a) {:.0}  (b) {:.0}  (c) {:.0}  (d) {:.0}  (e) {:.0} msg/s",
            a.rate, b.rate, c.rate, d.rate, e.rate
        );
        for (i, r) in [a, b, c, d, e].into_iter().enumerate() {
            runs[i].push(r);
        }
        governance.push(e.rate / c.rate);
        for (i, r) in [b, c, d].into_iter().enumerate() {
            ratios[i].push(r.rate / a.rate);
        }
        last = t.or(last);
    }
    let rate = |i: usize| median(runs[i].iter().map(|r| r.rate).collect());
    let cpu = |i: usize| median(runs[i].iter().map(|r| r.cpu_per_million).collect());
    let ratio = |i: usize| median(ratios[i].clone());
    // The rounds' lowest and highest ratio: how far the machine's hour
    // moved the median.
    let spread = |i: usize| {
        let (lo, hi) = ratios[i]
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        if lo.is_finite() {
            format!("(rounds {lo:.2}-{hi:.2})")
        } else {
            String::new()
        }
    };
    let through = if real_kafka() {
        "a real Apache Kafka broker (scripts/kafka)"
    } else {
        "the in-process mock cluster"
    };
    let lanes = lanes();
    println!("\npipeline through {through}, {n} corpus events, {PARTITIONS} partitions, {rounds} rounds (medians), the service with {lanes} lane(s)");
    println!(
        "(a) naive consume-then-produce loop: {:>9.0} msg/s   {:.1} CPU s per million events",
        rate(0),
        cpu(0)
    );
    println!(
        "(b) service, empty rule set:         {:>9.0} msg/s   ratio to (a) {:.2} {}   {:.1} CPU s per million events",
        rate(1),
        ratio(0),
        spread(0),
        cpu(1)
    );
    println!(
        "(c) service, default rules:          {:>9.0} msg/s   ratio to (a) {:.2} {}   {:.1} CPU s per million events",
        rate(2),
        ratio(1),
        spread(1),
        cpu(2)
    );
    println!(
        "(d) (c) with exactly-once delivery:  {:>9.0} msg/s   ratio to (a) {:.2} {}   {:.1} CPU s per million events",
        rate(3),
        ratio(2),
        spread(2),
        cpu(3)
    );
    println!(
        "(e) (c) with shadow rules and the inventory: {:>9.0} msg/s   ratio to (c) {:.2}   {:.1} CPU s per million events",
        rate(4),
        median(governance.clone()),
        cpu(4)
    );
    if let Some((t, secs)) = &last_txn {
        transactions(t, *secs, lanes);
    }
    let Some(t) = last else { return };
    println!(
        "(c), last round: sanitize p50 <= {:.1} us, p99 <= {:.1} us (bucket bounds)",
        Buckets::read(&t, "event_sanitizer_processing_seconds", "").quantile(0.5) * 1e6,
        Buckets::read(&t, "event_sanitizer_processing_seconds", "").quantile(0.99) * 1e6,
    );
    if !only.contains('c') {
        return;
    }
    let half = rate(2) / 2.0;
    let paced_n = ((half * 3.0) as usize).clamp(1_000, n);
    // librdkafka's mock cluster holds a fetch that finds no data for the
    // whole `fetch.wait.max.ms` (500 ms by default), even when records
    // arrive meanwhile (`rdkafka_mock_handlers.c`: "we should cut the
    // wait short ... too much of a hassle"); a broker answers as soon as
    // data arrives. A consumer that has caught up then gets its
    // partitions' records in bursts, and the bursts queue in the producer.
    // So the latency is measured twice: with the service's settings, and
    // with a 10 ms fetch wait, which on the mock behaves like a broker's
    // early answer. The bench's other runs do not catch up (the input is
    // there before they start), so this does not touch them.
    let (on_mock, short_wait) = if real_kafka() {
        ("", [None].as_slice())
    } else {
        (" (service settings)", [None, Some(10)].as_slice())
    };
    for &wait in short_wait {
        let service = paced(&events[..paced_n], &default_rules, half, wait, &rt);
        let naive = naive_paced(&events[..paced_n], half, wait, &service);
        let how = match wait {
            None => on_mock.to_string(),
            Some(ms) => format!(" (fetch.wait.max.ms={ms}, as a broker answers)"),
        };
        println!(
            "(c) at half its rate{how} ({half:.0} msg/s, {paced_n} events): consume-to-ack {}",
            service.latency()
        );
        println!(
            "    the naive loop (a) at the same rate and settings:          consume-to-ack {}",
            naive.latency()
        );
    }
    println!(
        "peak RSS of the whole process (a mock cluster included): {:.0} MB",
        peak_rss_mb()
    );
}
