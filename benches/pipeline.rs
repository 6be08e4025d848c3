//! End-to-end throughput through librdkafka's in-process mock cluster: the
//! real pipeline with the default rules against the same pipeline with an
//! empty rule set (pass-through), in the same run, on fresh clusters with
//! the same input. Reports messages/s, the ratio, consume-to-acknowledge
//! and sanitize-time quantiles (from the service's own histograms), and
//! peak RSS. `cargo bench --bench pipeline`; `BENCH_EVENTS` sets the count.

use event_sanitizer::config::*;
use event_sanitizer::metrics::Telemetry;
use event_sanitizer::pipeline::Pipeline;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 24;

fn quantile(t: &Telemetry, name: &str, q: f64) -> f64 {
    // Upper bound of the bucket holding the q-quantile.
    let text = t.render();
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                v,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

fn run_once(
    events: &[Vec<u8>],
    rules_text: &str,
    rt: &tokio::runtime::Runtime,
) -> (f64, Arc<Telemetry>) {
    let mock = MockCluster::new(1).unwrap();
    for t in ["raw", "clean", "dlq"] {
        mock.create_topic(t, PARTITIONS, 1).unwrap();
    }
    let bs = mock.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        let key = format!("user-{}", i % 5000);
        while let Err((_, _)) = p.send(BaseRecord::to("raw").payload(e).key(&key)) {
            p.poll(Duration::from_millis(5));
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, rules_text).unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "bench").unwrap();
    let cfg = Config {
        kafka: KafkaConfig {
            bootstrap_servers: bs,
            group_id: "bench".into(),
            input_topics: vec!["raw".into()],
            clean_topic: "clean".into(),
            dead_letter_topic: "dlq".into(),
            allow_plaintext: true,
            sasl_password_file: None,
            common: Default::default(),
            consumer: props("BENCH_CONSUMER"),
            producer: props("BENCH_PRODUCER"),
        },
        rules: RulesConfig {
            file: rules,
            hash_key_file: Some(key),
            hash_keys_file: None,
            reload_interval: Duration::from_secs(60),
        },
        limits: LimitsConfig::default(),
        http: HttpConfig {
            listen: "127.0.0.1:0".into(),
        },
        log: LogConfig::default(),
        shutdown: ShutdownConfig::default(),
        webhooks: None,
        privacy: None,
    };
    let telemetry = Arc::new(Telemetry::new());
    let n = events.len() as f64;
    let secs = rt.block_on(async {
        let pipeline = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(pipeline.run(async move {
            let _ = rx.await;
        }));
        // Time from the first message consumed to the last acknowledged
        // (the group join is not the pipeline's speed).
        let mut start = None;
        loop {
            let text = telemetry.render();
            let read = |name: &str| {
                text.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            };
            if start.is_none() && read("event_sanitizer_messages_in_total") > 0.0 {
                start = Some(Instant::now());
            }
            if read("event_sanitizer_messages_out_total") >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        tx.send(()).unwrap();
        service.await.unwrap().unwrap();
        secs
    });
    (n / secs, telemetry)
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

fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
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
    let passthrough = "version: 1\nname: pass-through\nrules: []\n";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut pass, mut rules, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..rounds {
        let (p, _) = run_once(&events, passthrough, &rt);
        let (r, t) = run_once(&events, &default_rules, &rt);
        pass.push(p);
        rules.push(r);
        ratios.push(r / p);
        last = Some(t);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let t = last.expect("one round");
    println!("pipeline through the mock cluster, {n} events, {PARTITIONS} partitions, {rounds} rounds (medians)");
    println!(
        "pass-through (empty rule set): {:>9.0} msg/s",
        med(&mut pass)
    );
    println!(
        "default rules:                 {:>9.0} msg/s",
        med(&mut rules)
    );
    println!("ratio default/pass-through:    {:.2}", med(&mut ratios));
    println!(
        "default rules, last round: sanitize p50 <= {:.1} us, p99 <= {:.1} us; consume-to-ack p50 <= {:.0} ms, p99 <= {:.0} ms (bucket bounds)",
        quantile(&t, "event_sanitizer_processing_seconds", 0.5) * 1e6,
        quantile(&t, "event_sanitizer_processing_seconds", 0.99) * 1e6,
        quantile(&t, "event_sanitizer_added_latency_seconds", 0.5) * 1e3,
        quantile(&t, "event_sanitizer_added_latency_seconds", 0.99) * 1e3,
    );
    println!(
        "peak RSS of the whole process (mock cluster included): {:.0} MB",
        peak_rss_mb()
    );
}
