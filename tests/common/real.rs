//! A real Apache Kafka broker for the tests that the mock cluster cannot
//! answer (transactions, TLS, SASL, ACLs): started once per test run by
//! `scripts/kafka start` (which reuses a running one). A broker that does
//! not start fails the test with the script's reason; nothing is skipped.
#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The broker's listeners and the files a client needs.
pub struct Broker {
    /// `KAFKA_VERSION`.
    pub version: String,
    /// PLAINTEXT listener (principal ANONYMOUS, a super user).
    pub plaintext: String,
    /// SSL listener, client certificate required.
    pub ssl: String,
    /// SASL_SSL listener, SCRAM-SHA-512.
    pub sasl_ssl: String,
    /// The test CA (PEM).
    pub ca: String,
    /// A client certificate signed by it (CN=es-client) and its key.
    pub client_cert: String,
    /// .
    pub client_key: String,
}

/// The broker, started on first use.
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let script = super::root().join("scripts/kafka");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .output()
            .expect("run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka start failed (the real-broker tests need it):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let v = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("scripts/kafka printed no {k}"))
        };
        let b = Broker {
            version: v("KAFKA_VERSION"),
            plaintext: v("KAFKA_PLAINTEXT"),
            ssl: v("KAFKA_SSL"),
            sasl_ssl: v("KAFKA_SASL_SSL"),
            ca: v("KAFKA_CA"),
            client_cert: v("KAFKA_CLIENT_CERT"),
            client_key: v("KAFKA_CLIENT_KEY"),
        };
        eprintln!("real broker: Apache Kafka {} at {}", b.version, b.plaintext);
        b
    })
}

/// A name no earlier test run used on this broker.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Creates `topics` (name, partitions, compacted) through the PLAINTEXT
/// listener and waits until they are usable.
pub async fn create_topics(topics: &[(&str, i32, bool)]) {
    create_topics_on(&broker().plaintext, topics).await
}

/// [`create_topics`] on the broker at `bootstrap`.
pub async fn create_topics_on(bootstrap: &str, topics: &[(&str, i32, bool)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p, compact)| {
            let t = NewTopic::new(n, *p, TopicReplication::Fixed(1));
            if *compact {
                t.set("cleanup.policy", "compact")
                    .set("segment.ms", "100")
                    .set("min.cleanable.dirty.ratio", "0.01")
                    .set("delete.retention.ms", "100")
            } else {
                t
            }
        })
        .collect();
    let res = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (n, p, _) in topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        while (0..*p).any(|i| c.fetch_watermarks(n, i, Duration::from_secs(5)).is_err()) {
            assert!(Instant::now() < deadline, "topic {n} not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client for watermarks and offsets.
pub fn probe() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", &broker().plaintext)
        .create()
        .unwrap()
}

/// One record as a `read_committed` (or `read_uncommitted`) reader sees it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// Reads every partition of `topics` from the beginning to its end, with
/// `isolation` (`read_committed` or `read_uncommitted`).
pub fn read_all(topics: &[&str], isolation: &str) -> Vec<Record> {
    topics
        .iter()
        .flat_map(|t| read_topic(t, isolation))
        .collect()
}

fn read_topic(topic: &str, isolation: &str) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker().plaintext)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut eof = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while eof.len() < partitions.len() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach its end"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: super::kafka::header_pairs(&m),
            }),
        }
    }
    out
}

/// The sum of the high watermarks of `topic` (records, transaction markers
/// included: a measure of progress, not a count).
pub fn progress(c: &BaseConsumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |w| w.1)
        })
        .sum()
}

/// The group's committed offsets on `topic`.
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker().plaintext)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // A fresh broker answers `NotCoordinator` (or `CoordinatorLoadInProgress`)
    // while `__consumer_offsets` is still being placed: ask again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(list) => {
                return list
                    .elements()
                    .iter()
                    .map(|e| e.offset().to_raw().unwrap_or(-1))
                    .collect()
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("committed offsets of {group}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    }
}

/// The high watermarks of `topic`.
pub fn ends(topic: &str, partitions: i32) -> Vec<i64> {
    let c = probe();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// Runs one of Kafka's own command-line tools (`scripts/kafka tool`)
/// against the PLAINTEXT listener (a super user); returns its output.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(super::root().join("scripts/kafka"))
        .args(["tool", class, "--bootstrap-server", &broker().plaintext])
        .args(args)
        .output()
        .expect("run scripts/kafka tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{class} {args:?} failed:\n{text}");
    text
}

/// Creates SCRAM-SHA-512 user `name`, or gives it a new password.
pub fn scram_password(name: &str, password: &str) {
    let config = format!("SCRAM-SHA-512=[iterations=4096,password={password}]");
    kafka_tool(
        "kafka.admin.ConfigCommand",
        &[
            "--alter",
            "--add-config",
            &config,
            "--entity-type",
            "users",
            "--entity-name",
            name,
        ],
    );
}

/// Adds (or removes) ACLs allowing `User:user` each of `operations` on
/// every resource in `resources` (`--topic x`, `--group g`, ...).
pub fn acl(add: bool, user: &str, operations: &[&str], resources: &[&str]) {
    let principal = format!("User:{user}");
    let mut args = vec![if add { "--add" } else { "--remove" }, "--force"];
    args.extend(["--allow-principal", &principal]);
    for op in operations {
        args.extend(["--operation", op]);
    }
    args.extend(resources);
    kafka_tool("org.apache.kafka.tools.AclCommand", &args);
}

/// Whether `user` with `password` can authenticate on the SASL_SSL
/// listener now (a fresh client asking for metadata).
pub fn scram_accepts(user: &str, password: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker().sasl_ssl)
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("ssl.ca.location", &broker().ca)
        .create()
        .unwrap();
    c.fetch_metadata(None, Duration::from_secs(8)).is_ok()
}

/// A broker of one test's own (its own ports and storage), for what the
/// shared one cannot do: be stopped and started again mid-test. Stopped
/// and removed when dropped.
pub struct PrivateBroker {
    base: u16,
    state: std::path::PathBuf,
    /// Its PLAINTEXT listener.
    pub plaintext: String,
}

impl PrivateBroker {
    fn script(&self, command: &str) {
        let out = std::process::Command::new("bash")
            .arg(super::root().join("scripts/kafka"))
            .arg(command)
            .env("KAFKA_PORT_BASE", self.base.to_string())
            .env("KAFKA_STATE", &self.state)
            .output()
            .expect("run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka {command} (port base {}) failed:\n{}",
            self.base,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a fresh broker on ports `base`..`base + 3`.
    pub fn start(base: u16) -> PrivateBroker {
        let b = PrivateBroker {
            base,
            state: std::env::temp_dir().join(format!(
                "event-sanitizer-kafka-{base}-{}",
                std::process::id()
            )),
            plaintext: format!("127.0.0.1:{base}"),
        };
        b.script("start");
        b
    }

    /// An outage: the broker stops.
    pub fn stop(&self) {
        self.script("stop");
    }

    /// The outage ends: the broker starts on the data it left.
    pub fn resume(&self) {
        self.script("resume");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(super::root().join("scripts/kafka"))
            .arg("stop")
            .env("KAFKA_PORT_BASE", self.base.to_string())
            .env("KAFKA_STATE", &self.state)
            .output();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
