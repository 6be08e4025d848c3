//! Webhook load over loopback: `WEBHOOK_REQUESTS` signed requests (default
//! 20,000) on `WEBHOOK_CONNECTIONS` keep-alive connections (default 32)
//! against the running service and librdkafka's in-process mock cluster.
//! Checks that every request was answered 200 and that the topic holds
//! exactly that many records (nothing lost), and reports requests/s and
//! latency quantiles. The baseline, measured in the same run on a fresh
//! cluster, is the same number of records produced directly with the same
//! concurrency and producer settings (the broker's acknowledgement
//! ceiling): the ratio is what verifying, sanitizing and HTTP cost.
//! `cargo bench --bench webhooks`.

#[path = "../tests/common/http.rs"]
mod http;
#[path = "../tests/common/kafka.rs"]
mod kafka;

use event_sanitizer::metrics::Telemetry;
use event_sanitizer::pipeline::Pipeline;
use event_sanitizer::webhooks::signature::sign;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOPIC: &str = "cio.reporting";
const PARTITIONS: i32 = 8;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = kafka::cluster(1);
    m.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    m
}

fn records_on(bs: &str, topic: &str) -> i64 {
    kafka::high_watermarks(bs, topic, PARTITIONS).iter().sum()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Produces `n` records directly, `conns` at a time: the baseline.
async fn produce_directly(n: usize, conns: usize) -> f64 {
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(conns) {
                let b = http::reporting_webhook(i);
                let key = format!("user-{i}");
                p.send(
                    FutureRecord::to(TOPIC).payload(&b).key(&key),
                    Duration::from_secs(10),
                )
                .await
                .expect("delivered");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(records_on(&bs, TOPIC), n as i64);
    n as f64 / secs
}

async fn through_the_service(n: usize, conns: usize) -> (f64, Vec<f64>) {
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "bench-key").unwrap();
    let signing = dir.path().join("signing");
    std::fs::write(&signing, "signing-key").unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/customerio.yaml");
    let mut cfg = kafka::config(&bs, &rules, &key, "bench");
    cfg.webhooks = Some(kafka::webhooks(TOPIC, &key, &signing, 256 * 1024));
    let p = Pipeline::new(cfg, Arc::new(Telemetry::new()))
        .await
        .unwrap();
    let addr = p.webhook_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    // Bodies and signatures are made before the clock starts.
    let ts = http::now();
    let requests: Arc<Vec<(Vec<u8>, String)>> = Arc::new(
        (0..n)
            .map(|i| {
                let b = http::reporting_webhook(i);
                let s = sign(b"signing-key", &ts, &b);
                (b, s)
            })
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (requests, ts) = (requests.clone(), ts.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = http::Client::connect(addr).await.unwrap();
            let mut lat = Vec::new();
            for i in (c..n).step_by(conns) {
                let (b, s) = &requests[i];
                let t = Instant::now();
                let r = client
                    .post(
                        "/webhooks/customerio",
                        &[("X-CIO-Signature", s), ("X-CIO-Timestamp", &ts)],
                        b,
                    )
                    .await
                    .unwrap();
                lat.push(t.elapsed().as_secs_f64());
                assert_eq!(r.status, 200, "{}", r.body);
            }
            lat
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    let on_topic = records_on(&bs, TOPIC);
    assert_eq!(on_topic, n as i64, "every accepted request is on the topic");
    let _ = tx.send(());
    let _ = service.await;
    latencies.sort_by(f64::total_cmp);
    (n as f64 / secs, latencies)
}

fn main() {
    let n = env("WEBHOOK_REQUESTS", 20_000);
    let conns = env("WEBHOOK_CONNECTIONS", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = rt.block_on(produce_directly(n, conns));
    let (rate, lat) = rt.block_on(through_the_service(n, conns));
    println!("{n} signed webhook requests, {conns} concurrent keep-alive connections, loopback");
    println!("baseline: direct produce with acks=all:  {base:>9.0} records/s");
    println!("webhooks: verify+sanitize+produce+HTTP:  {rate:>9.0} requests/s");
    println!("ratio webhooks/baseline: {:.2}", rate / base);
    println!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; lost: 0 (topic holds {n})",
        quantile(&lat, 0.5) * 1e3,
        quantile(&lat, 0.99) * 1e3,
        lat.last().copied().unwrap_or(0.0) * 1e3
    );
}
