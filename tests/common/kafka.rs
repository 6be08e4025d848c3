//! Kafka helpers: a mock cluster (librdkafka's, speaking the real
//! protocol), producing inputs, and reading the outputs back.
#![allow(dead_code)]

use event_sanitizer::config::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::path::Path;
use std::time::Duration;

pub const RAW: &str = "events.raw";
pub const CLEAN: &str = "events.clean";
pub const DLQ: &str = "events.dead-letter";

pub fn cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = MockCluster::new(1).expect("mock cluster");
    m.create_topic(RAW, partitions, 1).unwrap();
    m.create_topic(CLEAN, partitions, 1).unwrap();
    m.create_topic(DLQ, 1, 1).unwrap();
    m
}

/// Two brokers: the raw topic and `group`'s coordinator on broker 1, the
/// clean and dead-letter topics on broker 2, so the output broker can go
/// down or slow on its own.
pub fn outputs_on_broker_2(
    partitions: i32,
    group: &str,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = MockCluster::new(2).expect("mock cluster");
    for (t, n) in [(RAW, partitions), (CLEAN, partitions), (DLQ, 1)] {
        m.create_topic(t, n, 1).unwrap();
        for p in 0..n {
            let leader = if t == RAW { 1 } else { 2 };
            m.partition_leader(t, p, Some(leader)).unwrap();
        }
    }
    m.coordinator(rdkafka::mocking::MockCoordinator::Group(group.into()), 1)
        .unwrap();
    m
}

pub fn config(bootstrap: &str, rules: &Path, key: &Path, group: &str) -> Config {
    let mut consumer = std::collections::BTreeMap::new();
    consumer.insert("session.timeout.ms".to_string(), "6000".to_string());
    consumer.insert("auto.commit.interval.ms".to_string(), "500".to_string());
    Config {
        kafka: KafkaConfig {
            bootstrap_servers: bootstrap.into(),
            group_id: group.into(),
            input_topics: vec![RAW.into()],
            clean_topic: CLEAN.into(),
            dead_letter_topic: DLQ.into(),
            allow_plaintext: true,
            sasl_password_file: None,
            common: Default::default(),
            consumer,
            producer: Default::default(),
            delivery: Default::default(),
            transactional_id: None,
            transaction: Default::default(),
        },
        rules: RulesConfig {
            file: rules.into(),
            hash_key_file: Some(key.into()),
            hash_keys_file: None,
            reload_interval: Duration::from_millis(200),
            shadow_file: None,
        },
        limits: LimitsConfig {
            max_in_flight: 500,
            ..LimitsConfig::default()
        },
        http: HttpConfig {
            listen: "127.0.0.1:0".into(),
        },
        log: LogConfig::default(),
        shutdown: ShutdownConfig {
            timeout: Duration::from_secs(20),
        },
        webhooks: None,
        privacy: None,
        // These tests read dead letters back: in the clear, said so.
        dead_letters: DeadLettersConfig {
            encrypt: false,
            keys_file: None,
        },
        audit: Default::default(),
        canary: Default::default(),
        inventory: Default::default(),
    }
}

/// A webhook listener on loopback at the default path, producing to
/// `topic`, with the shipped webhook rules and the signing keys in `signing`.
pub fn webhooks(topic: &str, key: &Path, signing: &Path, max_body_bytes: usize) -> WebhooksConfig {
    WebhooksConfig {
        listen: "127.0.0.1:0".into(),
        path: "/webhooks/customerio".into(),
        topic: topic.into(),
        rules: Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/customerio-webhooks.yaml"),
        hash_key_file: Some(key.to_path_buf()),
        signing_key_files: vec![signing.to_path_buf()],
        signing_key_env: vec![],
        max_body_bytes,
        max_age: None,
        ack_timeout: Duration::from_secs(10),
        max_connections: 256,
        max_buffered_bytes: 32 << 20,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
    }
}

pub async fn produce(bootstrap: &str, records: &[(Option<String>, Vec<u8>)]) {
    produce_to(bootstrap, RAW, records).await
}

/// Produces `records` to `topic` and waits for every acknowledgement.
pub async fn produce_to(bootstrap: &str, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut futs = Vec::new();
    for (k, v) in records {
        let mut r = FutureRecord::to(topic).payload(v).headers(
            rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header {
                    key: "x-user-email",
                    value: Some("leak@example.com"),
                })
                .insert(rdkafka::message::Header {
                    key: "trace-id",
                    value: Some("t-1"),
                }),
        );
        if let Some(k) = k {
            r = r.key(k);
        }
        loop {
            match p.send_result(r) {
                Ok(f) => {
                    futs.push(f);
                    break;
                }
                Err((_, back)) => {
                    r = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for f in futs {
        f.await.unwrap().unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// A message's headers as (name, value) text pairs.
pub fn header_pairs(m: &impl Message) -> Vec<(String, String)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One output record.
#[derive(Debug, Clone)]
pub struct Out {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Out {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// Reads clean and dead-letter outputs from the beginning until `want`
/// records arrived or `timeout` passed.
pub async fn read_outputs(bootstrap: &str, want: usize, timeout: Duration) -> Vec<Out> {
    read_topics(bootstrap, &[CLEAN, DLQ], want, timeout).await
}

/// Reads `topics` from the beginning until `want` records arrived or
/// `timeout` passed.
pub async fn read_topics(
    bootstrap: &str,
    topics: &[&str],
    want: usize,
    timeout: Duration,
) -> Vec<Out> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", rand_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(topics).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < want {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => out.push(Out::of(&m)),
            Ok(Err(e)) => panic!("reading outputs: {e}"),
            Err(_) => break,
        }
    }
    out
}

impl Out {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Out {
        Out {
            topic: m.topic().into(),
            partition: m.partition(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers: header_pairs(m),
        }
    }
}

/// The `messageId`s of `input` (as `sequenced` makes it) that are not in
/// `ids`, for a failure to name what is missing.
pub fn missing(
    input: &[(Option<String>, Vec<u8>)],
    ids: &std::collections::HashSet<String>,
) -> Vec<String> {
    input
        .iter()
        .filter_map(|(_, v)| message_id(v))
        .filter(|id| !ids.contains(id))
        .collect()
}

/// The `messageId` of a JSON payload, if it has one.
fn message_id(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["messageId"].as_str().map(str::to_string))
}

/// The distinct `messageId`s of `out`.
pub fn message_ids(out: &[Out]) -> std::collections::HashSet<String> {
    out.iter()
        .map(|o| o.json()["messageId"].as_str().unwrap().to_string())
        .collect()
}

/// Reads outputs until `want` distinct message ids arrived (at-least-once
/// may deliver some twice), or `timeout` passed; returns the first copy
/// of each. Every partition of the clean and dead-letter topics is read
/// from its start by assignment, as records arrive: no consumer group to
/// join, whose rebalances on the mock cluster can stall a reader for most
/// of a session timeout.
pub async fn read_unique(bootstrap: &str, want: usize, timeout: Duration) -> Vec<Out> {
    use rdkafka::{Offset, TopicPartitionList};
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", rand_suffix()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for topic in [CLEAN, DLQ] {
        for p in 0..partitions_of(bootstrap, topic) {
            all.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&all).unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while ids.len() < want {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => {
                let o = Out::of(&m);
                if message_id(&o.payload).is_none_or(|id| ids.insert(id)) {
                    out.push(o);
                }
            }
            Ok(Err(e)) => panic!("reading outputs: {e}"),
            Err(_) => break,
        }
    }
    out
}

fn partitions_of(bootstrap: &str, topic: &str) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len() as i32
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The group's committed offset for each partition of the raw topic.
pub fn committed(bootstrap: &str, group: &str, partitions: i32) -> Vec<i64> {
    committed_on(bootstrap, group, RAW, partitions)
}

/// The group's committed offset for each partition of `topic`.
pub fn committed_on(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1))
        .collect()
}

/// High watermarks of the raw topic's partitions.
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// Sequenced events: `per_key` events for each of `keys` users, interleaved.
pub fn sequenced(keys: usize, per_key: usize, tag: &str) -> Vec<(Option<String>, Vec<u8>)> {
    let mut v = Vec::new();
    for n in 0..per_key {
        for k in 0..keys {
            let user = format!("user-{k}");
            let ev = serde_json::json!({
                "type": "identify", "messageId": format!("{tag}-{k}-{n}"), "userId": user,
                "traits": {"seq": n, "phone": format!("+1-555-{k:03}-{n:04}"), "ssn": "123-45-6789", "plan": "pro"}
            });
            v.push((Some(user), serde_json::to_vec(&ev).unwrap()));
        }
    }
    v
}
