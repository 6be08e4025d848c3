//! The Kafka service: consume raw events, sanitize, produce to the clean
//! topic (or the dead-letter topic with a reason), at least once.
//!
//! Guarantee: an input offset is stored for commit only after the broker
//! has acknowledged that message's output *and* every earlier message of
//! the same partition is acknowledged too ([`tracker::Tracker`]). A crash
//! therefore replays, never loses. Per-partition order is kept: a
//! partition always goes to the same worker, which enqueues into the
//! idempotent producer in order. At most `limits.max_in_flight` messages
//! are between consume and acknowledgement; at the bound the consumer stops
//! polling, so a slow or unavailable broker pauses consumption instead of
//! growing memory.
//!
//! Shutdown is passed in: when it resolves, consumption stops, in-flight
//! messages finish, the producer flushes and offsets are committed, within
//! `shutdown.timeout`.

mod http;
pub mod reload;
pub(crate) mod sasl;
pub mod tracker;

use crate::config::Config;
use crate::engine::{DeadLetterReason, Identity, Limits, Sanitized, Sanitizer, Scratch};
use crate::metrics::Telemetry;
use crate::privacy::reader::Privacy;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use reload::RuleSource;
use smallvec::SmallVec;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracker::Tracker;

/// Why the service stopped with an error (the binary exits non-zero, and
/// Kubernetes restarts the pod).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Rules could not be loaded at startup.
    #[error("cannot load the rules: {0}")]
    Rules(#[from] reload::LoadError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// librdkafka reported a fatal error.
    #[error("fatal kafka error: {0}")]
    Fatal(String),
    /// The metrics endpoint could not listen.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        error: std::io::Error,
    },
    /// The privacy-requests reader cannot start, or the privacy section
    /// cannot be used with these rules.
    #[error("privacy: {0}")]
    Privacy(String),
    /// The webhook listener cannot start (signing keys).
    #[error("webhooks: {0}")]
    Webhooks(String),
    /// Shutdown did not finish in time; unfinished messages will be
    /// consumed again.
    #[error("shutdown timed out with {0} messages unacknowledged; they will be consumed again after restart")]
    ShutdownTimeout(usize),
}

/// What readiness needs: rules loaded, group joined, producer reaching a broker.
#[derive(Default)]
pub struct Health {
    /// Rules compiled.
    pub rules: AtomicBool,
    /// The consumer received an assignment (possibly empty).
    pub joined: AtomicBool,
    /// The producer fetched metadata recently.
    pub producer: AtomicBool,
    /// The privacy-requests topic was read to its end (or is not configured).
    pub privacy: AtomicBool,
}

/// Counts for the caller when the service stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Messages consumed.
    pub consumed: u64,
    /// Clean records acknowledged.
    pub clean: u64,
    /// Dead letters acknowledged.
    pub dead_letters: u64,
    /// Messages not produced: about suppressed people.
    pub suppressed: u64,
}

/// How long a revoke waits for the revoked partitions' in-flight messages.
const REVOKE_DRAIN: Duration = Duration::from_secs(10);

struct ConsumerCtx {
    telemetry: Arc<Telemetry>,
    tracker: Arc<Tracker>,
    health: Arc<Health>,
    inputs: Vec<String>,
}

pub(crate) fn log_kafka(client: &str, level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", client, fac, "{msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client, fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, fac, "{msg}"),
    }
}

pub(crate) fn error_kind(e: &KafkaError) -> String {
    e.rdkafka_error_code()
        .map_or_else(|| "client".to_string(), |c| format!("{c:?}").to_lowercase())
}

/// Counts and logs an error a Kafka call returned.
pub(crate) fn report_kafka(telemetry: &Telemetry, client: &str, e: &KafkaError) {
    telemetry.kafka_error(client, &error_kind(e), &e.to_string());
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_kafka("consumer", level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.telemetry
            .kafka_error("consumer", &error_kind(&error), reason);
    }
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            if !self.inputs.contains(topic) {
                continue;
            }
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.consumer_lag >= 0 {
                    self.telemetry.lag(topic, *p, ps.consumer_lag);
                }
            }
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn describe(parts: &[(String, i32)]) -> String {
    parts
        .iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions(tpl);
            // Let in-flight messages of these partitions finish (bounded),
            // so their offsets are stored before the revoke commit and the
            // next owner replays as little as possible. Deliveries complete
            // on other threads; this only pauses consumption.
            let deadline = Instant::now() + REVOKE_DRAIN;
            while self.tracker.pending_in(&parts) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.tracker.revoke(&parts);
            self.telemetry.clear_lag();
            self.telemetry.rebalance("revoke", &describe(&parts));
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.health.joined.store(true, Ordering::Relaxed);
                self.telemetry
                    .rebalance("assign", &describe(&partitions(tpl)));
            }
            Rebalance::Error(e) => {
                self.telemetry
                    .kafka_error("consumer", "rebalance", &e.to_string())
            }
            Rebalance::Revoke(_) => {}
        }
    }
    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => self.telemetry.committed(false, &e.to_string()),
            Ok(()) => self.telemetry.committed(true, ""),
        }
    }
}

/// Finishes messages: marks them done, stores what may be committed, and
/// counts, whether their output was acknowledged or they needed none.
struct Finisher {
    telemetry: Arc<Telemetry>,
    tracker: Arc<Tracker>,
    consumer: Arc<Consumer0>,
    counts: Arc<Counts>,
    /// Output topic names, for the metrics.
    outputs: [String; 2],
}

/// What the delivery callback needs to finish a message.
struct ProducerCtx {
    finisher: Arc<Finisher>,
    telemetry: Arc<Telemetry>,
    retry: mpsc::UnboundedSender<(OwnedMessage, Box<Part>)>,
    fatal: Arc<Notify>,
    fatal_msg: Arc<std::sync::Mutex<Option<String>>>,
}

#[derive(Default)]
struct Counts {
    clean: AtomicU64,
    dead: AtomicU64,
    suppressed: AtomicU64,
}

/// What became of a consumed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Clean record(s) on the clean topic.
    Clean,
    /// The original on the dead-letter topic.
    DeadLetter,
    /// Nothing produced: every call is about a suppressed person.
    Suppressed,
    /// Deletion commands on the clean topic (a `delete` request).
    Commands,
    /// Nothing to produce (a request that only changes the set, a tombstone).
    NoOutput,
}

/// A message between consume and acknowledgement: travels with its output
/// record through librdkafka as the delivery opaque.
struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    epoch: u64,
    outcome: Outcome,
    /// For deletion commands: the request id and the person's digest,
    /// audited when the commands are acknowledged.
    audit: Option<Box<(String, String, String)>>,
    consumed_at: Instant,
    /// Held, not read: dropping it frees the in-flight slot.
    _permit: OwnedSemaphorePermit,
}

/// The delivery opaque of one output record: the whole message's output,
/// or one of several records of a batch split to fit the destination (the
/// message is finished when the last of them is acknowledged).
enum Part {
    Whole(Pending),
    Split(Arc<(AtomicUsize, Pending)>),
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_kafka("producer", level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.telemetry
            .kafka_error("producer", &error_kind(&error), reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            *self.fatal_msg.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{error}: {reason}"));
            self.fatal.notify_one();
        }
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Part>;

    /// Runs on librdkafka's polling thread: no task wake-up per message.
    fn delivery(&self, result: &DeliveryResult<'_>, p: Box<Part>) {
        match result {
            Ok(_) => match &*p {
                Part::Whole(p) => self.finisher.finish(p),
                Part::Split(s) => {
                    if s.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                        self.finisher.finish(&s.1)
                    }
                }
            },
            Err((e, msg)) => {
                self.telemetry.produce_retry(msg.topic(), &e.to_string());
                let _ = self.retry.send((msg.detach(), p));
            }
        }
    }
}

impl Finisher {
    /// The output is acknowledged (or none was needed): mark the input
    /// done, store what may be committed, and count. The in-flight slot is
    /// freed when `p` is dropped.
    fn finish(&self, p: &Pending) {
        if let Some(offset) = self
            .tracker
            .finish(&p.topic, p.partition, p.epoch, p.offset)
        {
            if let Err(e) = self.consumer.store_offset(&p.topic, p.partition, offset) {
                // The partition was revoked meanwhile: its next owner replays it.
                tracing::debug!(topic = %p.topic, partition = p.partition, error = %e, "offset not stored");
            }
        }
        let delay = p.timestamp.map(|ts| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            (now - ts) as f64 / 1000.0
        });
        let added = p.consumed_at.elapsed().as_secs_f64();
        let t = &self.telemetry;
        match p.outcome {
            Outcome::Clean | Outcome::Commands => {
                t.delivered(&self.outputs[0], true, added, delay);
                self.counts.clean.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = &p.audit {
                    t.deletion_commands(&a.0, &a.1, &a.2, 2);
                }
            }
            Outcome::DeadLetter => {
                t.delivered(&self.outputs[1], false, added, delay);
                self.counts.dead.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Suppressed => {
                t.suppressed(&p.topic, added);
                self.counts.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::NoOutput => t.finished_without_output(added),
        }
    }
}

type Consumer0 = StreamConsumer<ConsumerCtx>;
type Producer0 = ThreadedProducer<ProducerCtx>;

/// State shared by the consumer loop, the workers and the delivery tasks.
struct Shared {
    cfg: Config,
    telemetry: Arc<Telemetry>,
    rules: Arc<RuleSource>,
    consumer: Arc<Consumer0>,
    producer: Producer0,
    counts: Arc<Counts>,
    finisher: Arc<Finisher>,
    privacy: Option<Arc<Privacy>>,
}

/// One consumed message on its way through a worker.
struct Job {
    msg: OwnedMessage,
    epoch: u64,
    permit: OwnedSemaphorePermit,
    consumed_at: Instant,
}

/// The output of one message: one record, or several when a batch was
/// split (or a request became deletion commands), or none.
struct OutRecord {
    topic: String,
    payloads: SmallVec<[Vec<u8>; 1]>,
    key: Option<Vec<u8>>,
    headers: OwnedHeaders,
    outcome: Outcome,
    audit: Option<Box<(String, String, String)>>,
    /// For a dead letter: the reason code and detail.
    dead: Option<(&'static str, String)>,
}

impl OutRecord {
    fn nothing(outcome: Outcome) -> OutRecord {
        OutRecord {
            topic: String::new(),
            payloads: SmallVec::new(),
            key: None,
            headers: OwnedHeaders::new(),
            outcome,
            audit: None,
            dead: None,
        }
    }
}

/// A running service: clients created, rules loaded, metrics endpoint bound.
pub struct Pipeline {
    shared: Arc<Shared>,
    retry: mpsc::UnboundedReceiver<(OwnedMessage, Box<Part>)>,
    tracker: Arc<Tracker>,
    health: Arc<Health>,
    http: tokio::net::TcpListener,
    webhooks: Option<crate::webhooks::Listener>,
    fatal: Arc<Notify>,
    fatal_msg: Arc<std::sync::Mutex<Option<String>>>,
}

/// Client properties from the configuration: brokers, `kafka.common`,
/// the client's own section, and the SASL password.
pub(crate) fn client_config(
    cfg: &Config,
    extra: &std::collections::BTreeMap<String, String>,
    password: Option<&crate::secret::Secret>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    for (k, v) in cfg.kafka.common.iter().chain(extra) {
        c.set(k, v);
    }
    if let Some(p) = password {
        c.set("sasl.password", String::from_utf8_lossy(p.expose()));
    }
    c
}

impl Pipeline {
    /// Loads rules, creates the Kafka clients and binds the HTTP endpoint.
    pub async fn new(cfg: Config, telemetry: Arc<Telemetry>) -> Result<Pipeline, PipelineError> {
        let limits = Limits {
            max_bytes: cfg.limits.max_message_bytes,
            max_depth: cfg.limits.max_depth,
        };
        let rules = Arc::new(RuleSource::load(
            &cfg.rules.file,
            cfg.rules.key_file(),
            limits,
            &telemetry,
        )?);
        let health = Arc::new(Health::default());
        health.rules.store(true, Ordering::Relaxed);
        health
            .privacy
            .store(cfg.privacy.is_none(), Ordering::Relaxed);
        let tracker = Arc::new(Tracker::default());
        let password = cfg
            .sasl_password()
            .map_err(|e| PipelineError::Fatal(e.to_string()))?;
        let mut cc = ClientConfig::new();
        cc.set("group.id", &cfg.kafka.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000")
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in client_config(&cfg, &cfg.kafka.consumer, password.as_ref()).config_map() {
            cc.set(k, v);
        }
        let consumer: Consumer0 = cc.create_with_context(ConsumerCtx {
            telemetry: telemetry.clone(),
            tracker: tracker.clone(),
            health: health.clone(),
            inputs: cfg.kafka.input_topics.clone(),
        })?;
        let fatal = Arc::new(Notify::new());
        let fatal_msg = Arc::new(std::sync::Mutex::new(None));
        let mut pc = ClientConfig::new();
        pc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "0");
        for (k, v) in client_config(&cfg, &cfg.kafka.producer, password.as_ref()).config_map() {
            pc.set(k, v);
        }
        let consumer = Arc::new(consumer);
        let counts = Arc::new(Counts::default());
        let (retry_tx, retry) = mpsc::unbounded_channel();
        let finisher = Arc::new(Finisher {
            telemetry: telemetry.clone(),
            tracker: tracker.clone(),
            consumer: consumer.clone(),
            counts: counts.clone(),
            outputs: [
                cfg.kafka.clean_topic.clone(),
                cfg.kafka.dead_letter_topic.clone(),
            ],
        });
        let producer: Producer0 = pc.create_with_context(ProducerCtx {
            finisher: finisher.clone(),
            telemetry: telemetry.clone(),
            retry: retry_tx,
            fatal: fatal.clone(),
            fatal_msg: fatal_msg.clone(),
        })?;
        let privacy = match &cfg.privacy {
            None => None,
            Some(pc) => {
                let key = rules.active_key().ok_or_else(|| PipelineError::Privacy(
                    "the suppression set holds keyed digests, and the rules have no hash key: set `rules.hash_keys_file`, `rules.hash_key_file` or `hash.key` in the rule file".into(),
                ))?;
                let mut rc = ClientConfig::new();
                for (k, v) in
                    client_config(&cfg, &cfg.kafka.consumer, password.as_ref()).config_map()
                {
                    rc.set(k, v);
                }
                rc.set("group.id", format!("{}-privacy-reader", cfg.kafka.group_id))
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "true")
                    .set("auto.offset.reset", "earliest");
                let p = Privacy::start(rc, &pc.requests_topic, &key, telemetry.clone())
                    .map_err(|e| PipelineError::Privacy(e.to_string()))?;
                Some(Arc::new(p))
            }
        };
        let http = tokio::net::TcpListener::bind(&cfg.http.listen)
            .await
            .map_err(|error| PipelineError::Listen {
                addr: cfg.http.listen.clone(),
                error,
            })?;
        let webhooks = match &cfg.webhooks {
            Some(w) => Some(
                crate::webhooks::Listener::bind(&cfg, w, password.as_ref(), telemetry.clone())
                    .await?,
            ),
            None => None,
        };
        tracing::info!(
            security_protocol = %cfg.security_protocol(),
            group = %cfg.kafka.group_id,
            inputs = ?cfg.kafka.input_topics,
            clean = %cfg.kafka.clean_topic,
            dead_letters = %cfg.kafka.dead_letter_topic,
            "starting"
        );
        let shared = Arc::new(Shared {
            cfg,
            telemetry,
            rules,
            consumer,
            producer,
            counts,
            finisher,
            privacy,
        });
        Ok(Pipeline {
            shared,
            retry,
            tracker,
            health,
            http,
            webhooks,
            fatal,
            fatal_msg,
        })
    }

    /// Where the webhook listener answers, when `webhooks` is configured.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhooks.as_ref().map(|w| w.local_addr())
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Runs until `shutdown` resolves (then drains, flushes, commits) or a
    /// fatal error.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Summary, PipelineError> {
        let Pipeline {
            shared,
            mut retry,
            tracker,
            health,
            http,
            webhooks,
            fatal,
            fatal_msg,
        } = self;
        let cfg = &shared.cfg;
        let (stop_side, stop_side_rx) = tokio::sync::watch::channel(false);
        let (stop_webhooks, stop_webhooks_rx) = tokio::sync::watch::channel(false);
        // Every client whose SASL credentials follow the password file.
        let mut targets: Vec<sasl::Target> = Vec::new();
        {
            let c = shared.consumer.clone();
            targets.push(Box::new(move |u, p| {
                sasl::set_credentials(c.client(), u, p)
            }));
            let s = shared.clone();
            targets.push(Box::new(move |u, p| {
                sasl::set_credentials(s.producer.client(), u, p)
            }));
            if let Some(pr) = shared.privacy.clone() {
                targets.push(Box::new(move |u, p| {
                    sasl::set_credentials(pr.client().client(), u, p)
                }));
            }
            if let Some(w) = &webhooks {
                targets.push(w.credentials_target());
            }
        }
        let sasl = sasl::Watch::new(cfg, targets);
        let webhook_task =
            webhooks.map(|w| tokio::spawn(w.serve(cfg.rules.reload_interval, stop_webhooks_rx)));
        // Side tasks: HTTP, rule reload, producer health.
        let http_task = tokio::spawn(http::serve(
            http,
            shared.telemetry.clone(),
            health.clone(),
            stop_side_rx.clone(),
        ));
        let reload_task = {
            let (rules, telemetry) = (shared.rules.clone(), shared.telemetry.clone());
            let privacy = shared.privacy.clone();
            reload::every(cfg.rules.reload_interval, stop_side_rx.clone(), move || {
                if rules.check(&telemetry) {
                    // A new active key: the suppression set is rebuilt with
                    // it; the old set (and its key) serves until then.
                    if let (Some(p), Some(k)) = (&privacy, rules.active_key()) {
                        if k.id != p.suppressions.key_id() {
                            p.rebuild_with(k);
                        }
                    }
                }
                if let Some(s) = &sasl {
                    s.check(&telemetry);
                }
            })
        };
        let health_task = {
            let (shared, health, mut stop) = (shared.clone(), health.clone(), stop_side_rx.clone());
            tokio::spawn(async move {
                loop {
                    let s = shared.clone();
                    let ok = tokio::task::spawn_blocking(move || {
                        s.producer
                            .client()
                            .fetch_metadata(Some(&s.cfg.kafka.clean_topic), Duration::from_secs(3))
                            .is_ok()
                    })
                    .await
                    .unwrap_or(false);
                    health.producer.store(ok, Ordering::Relaxed);
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}, _ = stop.changed() => break }
                }
            })
        };

        // Failed deliveries (rare: librdkafka retries until delivered unless
        // the error is permanent) are produced again after a pause.
        let retry_task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some((msg, p)) = retry.recv().await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let headers = msg
                        .headers()
                        .map(|h| h.as_borrowed().detach())
                        .unwrap_or_default();
                    enqueue(
                        &shared,
                        msg.topic(),
                        msg.payload().unwrap_or_default(),
                        msg.key(),
                        headers,
                        p,
                    )
                    .await;
                }
            })
        };
        let max = cfg.limits.max_in_flight;
        let permits = Arc::new(Semaphore::new(max));
        let workers = if cfg.limits.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.limits.workers
        };
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::channel::<Job>(1024);
            senders.push(tx);
            handles.push(tokio::spawn(worker(rx, shared.clone())));
        }
        let mut consumed = 0u64;
        tokio::pin!(shutdown);
        let mut failure = None;
        // No event is consumed before the suppression set is complete.
        let mut stopped_early = false;
        if let Some(p) = &shared.privacy {
            tracing::info!(topic = %p.topic, "reading the privacy requests topic to its end before consuming events");
            tokio::select! {
                _ = &mut shutdown => stopped_early = true,
                _ = p.wait_ready() => health.privacy.store(true, Ordering::Relaxed),
            }
        }
        let mut topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
        if let Some(p) = &cfg.privacy {
            topics.push(&p.requests_topic);
        }
        if let Err(e) = shared.consumer.subscribe(&topics) {
            failure = Some(format!("cannot subscribe to {topics:?}: {e}"));
            stopped_early = true;
        }
        let fatal_text = || {
            fatal_msg
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default()
        };
        loop {
            if stopped_early {
                break;
            }
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                _ = fatal.notified() => { failure = Some(fatal_text()); break }
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let msg = tokio::select! {
                _ = &mut shutdown => break,
                _ = fatal.notified() => { failure = Some(fatal_text()); break }
                m = shared.consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m.detach(),
                Err(e) => {
                    report_kafka(&shared.telemetry, "consumer", &e);
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                        failure = Some(e.to_string());
                        break;
                    }
                    continue;
                }
            };
            consumed += 1;
            shared.telemetry.consumed(msg.topic());
            let epoch = tracker.begin(msg.topic(), msg.partition(), msg.offset());
            let w = (msg.partition().unsigned_abs() as usize + msg.topic().len()) % workers;
            if senders[w]
                .send(Job {
                    msg,
                    epoch,
                    permit,
                    consumed_at: Instant::now(),
                })
                .await
                .is_err()
            {
                break;
            }
        }
        // Drain: no more input; workers finish their queues; deliveries finish.
        tracing::info!(consumed, "stopping: finishing in-flight messages");
        let deadline = tokio::time::Instant::now() + cfg.shutdown.timeout;
        // The webhook listener stops accepting and answers what it holds.
        let _ = stop_webhooks.send(true);
        if let Some(t) = webhook_task {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        drop(senders);
        for h in handles {
            let _ = tokio::time::timeout_at(deadline, h).await;
        }
        let drained = tokio::time::timeout_at(deadline, permits.acquire_many(max as u32))
            .await
            .is_ok();
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _ = s.producer.flush(remaining);
                match s.consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => s.telemetry.committed(false, &e.to_string()),
                }
            })
            .await;
        }
        let _ = stop_side.send(true);
        let _ = tokio::join!(reload_task, health_task);
        if let Some(p) = shared.privacy.clone() {
            let _ = tokio::task::spawn_blocking(move || p.stop()).await;
        }
        http_task.abort();
        retry_task.abort();
        let summary = Summary {
            consumed,
            clean: shared.counts.clean.load(Ordering::Relaxed),
            dead_letters: shared.counts.dead.load(Ordering::Relaxed),
            suppressed: shared.counts.suppressed.load(Ordering::Relaxed),
        };
        tracing::info!(
            consumed = summary.consumed,
            clean = summary.clean,
            dead_letters = summary.dead_letters,
            suppressed = summary.suppressed,
            "stopped"
        );
        if let Some(f) = failure {
            return Err(PipelineError::Fatal(f));
        }
        if !drained {
            return Err(PipelineError::ShutdownTimeout(tracker.pending()));
        }
        Ok(summary)
    }
}

/// Lineage and dead-letter headers this service writes; incoming headers
/// with these names are dropped so they cannot be spoofed.
const OWN_PREFIX: &str = "sanitizer-";

/// `headers` with `add` appended.
pub(crate) fn with_headers(mut headers: OwnedHeaders, add: &[(&str, &str)]) -> OwnedHeaders {
    for (key, value) in add {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    headers
}

/// The dead-letter record for `m`: its original value, key and headers,
/// with the reason and where it came from.
fn dead_letter_record(
    s: &Sanitizer,
    cfg: &Config,
    m: &OwnedMessage,
    code: &'static str,
    detail: String,
) -> OutRecord {
    let mut headers = OwnedHeaders::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let (p, o) = (m.partition().to_string(), m.offset().to_string());
    headers = with_headers(
        headers,
        &[
            ("sanitizer-error", code),
            ("sanitizer-error-detail", &detail),
            ("sanitizer-source-topic", m.topic()),
            ("sanitizer-source-partition", &p),
            ("sanitizer-source-offset", &o),
            ("sanitizer-rules", s.name()),
            ("sanitizer-rules-hash", s.content_hash()),
        ],
    );
    OutRecord {
        topic: cfg.kafka.dead_letter_topic.clone(),
        payloads: smallvec::smallvec![m.payload().unwrap_or_default().to_vec()],
        key: m.key().map(<[u8]>::to_vec),
        headers,
        outcome: Outcome::DeadLetter,
        audit: None,
        dead: Some((code, detail)),
    }
}

/// Lineage headers of every clean record.
fn lineage(s: &Sanitizer, headers: OwnedHeaders) -> OwnedHeaders {
    with_headers(
        headers,
        &[
            ("sanitizer-rules", s.name()),
            ("sanitizer-rules-hash", s.content_hash()),
            ("sanitizer-version", env!("CARGO_PKG_VERSION")),
            ("sanitizer-key-id", s.key_id()),
        ],
    )
}

fn build(
    s: &Sanitizer,
    shared: &Shared,
    m: &OwnedMessage,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> OutRecord {
    let cfg = &shared.cfg;
    let result = match (m.payload(), &shared.privacy) {
        (None, _) => Err(DeadLetterReason::Empty),
        (Some(p), Some(privacy)) => {
            let set = &privacy.suppressions;
            s.sanitize_unless(p, scratch, out, &mut |id: &Identity| {
                set.contains(id.user_id.as_deref(), id.anonymous_id.as_deref())
            })
        }
        (Some(p), None) => s.sanitize(p, scratch, out).map(|records| Sanitized::Clean {
            records,
            suppressed_calls: 0,
        }),
    };
    match result {
        Ok(Sanitized::Suppressed) => OutRecord::nothing(Outcome::Suppressed),
        Ok(Sanitized::Clean {
            records,
            suppressed_calls,
        }) => {
            if suppressed_calls > 0 {
                shared.telemetry.batch_calls_suppressed(suppressed_calls);
            }
            let mut headers = OwnedHeaders::new();
            if let Some(hs) = m.headers() {
                for h in hs.iter() {
                    if !h.key.to_ascii_lowercase().starts_with(OWN_PREFIX) && s.keep_header(h.key) {
                        headers = headers.insert(Header {
                            key: h.key,
                            value: h.value,
                        });
                    }
                }
            }
            let key = s.message_key(m.key()).map(|k| k.into_owned());
            OutRecord {
                topic: cfg.kafka.clean_topic.clone(),
                payloads: records.iter(out).map(<[u8]>::to_vec).collect(),
                key,
                headers: lineage(s, headers),
                outcome: Outcome::Clean,
                audit: None,
                dead: None,
            }
        }
        Err(reason) => dead_letter_record(s, cfg, m, reason.code(), reason.to_string()),
    }
}

/// A record of the privacy-requests topic, as the group member that owns
/// its partition handles it: a bad request is a dead letter; a `delete`
/// becomes its deletion commands, produced once this replica suppresses
/// the person; anything else needs no output (every replica's reader
/// applies it to its set).
async fn privacy_request(
    s: &Sanitizer,
    shared: &Shared,
    privacy: &Privacy,
    m: &OwnedMessage,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> OutRecord {
    let cfg = &shared.cfg;
    let Some(payload) = m.payload() else {
        return OutRecord::nothing(Outcome::NoOutput);
    };
    let r = match crate::privacy::parse(payload) {
        Ok(r) => r,
        Err(e) => return dead_letter_record(s, cfg, m, e.code(), e.to_string()),
    };
    privacy.wait_applied(m.partition(), m.offset()).await;
    if r.action != crate::privacy::Action::Delete {
        return OutRecord::nothing(Outcome::NoOutput);
    }
    let mut payloads = SmallVec::new();
    for command in crate::privacy::commands(&r) {
        match s.sanitize(&command, scratch, out) {
            Ok(records) => payloads.extend(records.iter(out).map(<[u8]>::to_vec)),
            Err(reason) => {
                return dead_letter_record(
                    s,
                    cfg,
                    m,
                    reason.code(),
                    format!("the deletion command cannot be produced: {reason}"),
                )
            }
        }
    }
    // Keyed like the person's events: the request's key (the topic is
    // keyed by person), else the person's id, through `message.key`.
    let raw_key = m.key().map(<[u8]>::to_vec).or_else(|| {
        r.user_id
            .as_ref()
            .or(r.anonymous_id.as_ref())
            .map(|i| i.as_bytes().to_vec())
    });
    let key = s.message_key(raw_key.as_deref()).map(|k| k.into_owned());
    let headers = with_headers(
        OwnedHeaders::new(),
        &[
            ("sanitizer-privacy-request", &r.request_id),
            ("sanitizer-privacy-action", r.action.name()),
        ],
    );
    let (digest, key_id) = privacy.suppressions.audit_digest(&r);
    OutRecord {
        topic: cfg.kafka.clean_topic.clone(),
        payloads,
        key,
        headers: lineage(s, headers),
        outcome: Outcome::Commands,
        audit: Some(Box::new((r.request_id.clone(), digest, key_id))),
        dead: None,
    }
}

fn flush_counts(scratch: &mut Scratch, s: &Sanitizer, t: &Telemetry) {
    scratch.drain_rule_counts(|i, n| t.rule_actions(s.rule_id(i), s.rule_action(i), n));
}

async fn worker(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut scratch = Scratch::default();
    let mut out = Vec::with_capacity(4096);
    let mut last: Option<Arc<Sanitizer>> = None;
    let mut since_flush = 0u32;
    while let Some(job) = rx.recv().await {
        let s = shared.rules.current();
        if let Some(prev) = &last {
            if !Arc::ptr_eq(prev, &s) {
                flush_counts(&mut scratch, prev, &shared.telemetry);
            }
        }
        let t0 = Instant::now();
        let mut rec = match &shared.privacy {
            Some(p) if p.topic == job.msg.topic() => {
                privacy_request(&s, &shared, p, &job.msg, &mut scratch, &mut out).await
            }
            _ => {
                let rec = build(&s, &shared, &job.msg, &mut scratch, &mut out);
                shared.telemetry.sanitized(t0.elapsed().as_secs_f64());
                rec
            }
        };
        if let Some((code, detail)) = &rec.dead {
            shared.telemetry.dead_letter(
                job.msg.topic(),
                job.msg.partition(),
                job.msg.offset(),
                code,
                detail,
            );
        }
        since_flush += 1;
        // Counts go to the metrics every 256 messages, and whenever the
        // queue runs dry so that a quiet service still reports them.
        if since_flush >= 256 || rx.is_empty() {
            flush_counts(&mut scratch, &s, &shared.telemetry);
            since_flush = 0;
        }
        last = Some(s);
        let m = &job.msg;
        let pending = Pending {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            epoch: job.epoch,
            outcome: rec.outcome,
            audit: rec.audit.take(),
            consumed_at: job.consumed_at,
            _permit: job.permit,
        };
        if rec.payloads.is_empty() {
            // Nothing to produce: done now, in order with the partition's
            // other messages (the tracker stores only contiguous offsets).
            shared.finisher.finish(&pending);
        } else if let [payload] = &rec.payloads[..] {
            let part = Box::new(Part::Whole(pending));
            enqueue(
                &shared,
                &rec.topic,
                payload,
                rec.key.as_deref(),
                rec.headers,
                part,
            )
            .await;
        } else {
            // In order, with the same key: the parts land on one partition
            // in sequence, like the batch they came from.
            let split = Arc::new((AtomicUsize::new(rec.payloads.len()), pending));
            for payload in &rec.payloads {
                let part = Box::new(Part::Split(split.clone()));
                let headers = rec.headers.clone();
                enqueue(
                    &shared,
                    &rec.topic,
                    payload,
                    rec.key.as_deref(),
                    headers,
                    part,
                )
                .await;
            }
        }
    }
    if let Some(s) = &last {
        flush_counts(&mut scratch, s, &shared.telemetry);
    }
}

/// Hands a record to the producer, waiting while its queue is full. The
/// delivery callback finishes the message.
async fn enqueue(
    shared: &Shared,
    topic: &str,
    payload: &[u8],
    key: Option<&[u8]>,
    headers: OwnedHeaders,
    pending: Box<Part>,
) {
    let mut backoff = Duration::from_millis(1);
    let mut rec = BaseRecord::with_opaque_to(topic, pending)
        .payload(payload)
        .headers(headers);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    loop {
        match shared.producer.send(rec) {
            Ok(()) => return,
            Err((e, back)) => {
                if !matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) {
                    report_kafka(&shared.telemetry, "producer", &e);
                }
                rec = back;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}
