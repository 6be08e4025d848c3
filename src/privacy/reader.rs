//! The requests topic read as a table: every partition assigned to this
//! replica (no consumer group), read from the beginning, applied to the
//! [`Suppressions`] set, and followed from then on.

use super::{parse, Suppressions, Table};
use crate::metrics::Telemetry;
use crate::reload::ActiveKey;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the reader cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The client could not be created or the topic not described.
    #[error("privacy requests topic `{topic}`: {error}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What failed.
        error: String,
    },
    /// The set holds keyed digests, and the rules have no key.
    #[error("the suppression set holds keyed digests, and the rules have no hash key: set `rules.hash_keys_file`, `rules.hash_key_file` or `hash.key` in the rule file")]
    NoHashKey,
    /// The reader would not be created as configured.
    #[error("{0}")]
    Client(#[from] crate::kafka::ClientError),
}

pub(crate) struct ReaderCtx {
    telemetry: Arc<Telemetry>,
}

impl ClientContext for ReaderCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::kafka::log("privacy-reader", level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is news the run loop reads, not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.telemetry
            .kafka_error("privacy-reader", &crate::kafka::error_kind(&error), reason);
    }
}

impl ConsumerContext for ReaderCtx {}

/// The reader's client.
pub(crate) type ReaderConsumer = BaseConsumer<ReaderCtx>;

/// The reader's client settings: `kafka.common` and `kafka.consumer`, no
/// commits. Partitions are assigned: it never joins a group, and commits
/// nothing. librdkafka still wants a group id to assign and looks up its
/// coordinator, so it carries the service's own `kafka.group_id`, which
/// the principal may already describe (a group of its own would need an
/// ACL of its own, refused and logged on every lookup).
fn client_config(
    cfg: &crate::config::Config,
    password: Option<&crate::secret::Secret>,
) -> Result<ClientConfig, crate::kafka::ClientError> {
    let base = [
        ("group.id", cfg.kafka.group_id.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "true"),
        ("auto.offset.reset", "earliest"),
        // A new request is fetched within milliseconds (the events wait
        // for it: docs/privacy.md).
        ("fetch.wait.max.ms", "10"),
    ];
    crate::kafka::client_config(
        cfg,
        crate::config::ClientRole::PrivacyReader,
        &base,
        password,
    )
}

/// How far the reader has applied each partition (the next offset), so the
/// group member handling a request can wait until this replica suppresses.
#[derive(Default)]
struct Progress {
    next: Mutex<HashMap<i32, i64>>,
    changed: std::sync::Condvar,
}

/// The gate between the requests topic and the events: an event at
/// `offset` of an input partition is handled only once `offset` is below
/// that partition's released mark. A round ([`Run::round`]) reads the
/// input partitions' end offsets, *then* the requests topic's, and
/// releases the first ones once every request below the second has been
/// applied. A request acknowledged before an event was produced is below
/// the requests' end, because the event (already consumed, so below the
/// input's end) was appended after it: the set holds the request before
/// the event is judged, on every replica.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    /// Per input partition, the offset below which events may be handled
    /// (`i64::MIN` until a round has read it).
    released: HashMap<(String, i32), i64>,
    /// A lane waits: run a round.
    wanted: bool,
}

/// A round in progress: what it will release, once the requests below
/// `requests` are applied.
struct Round {
    events: Vec<((String, i32), i64)>,
    requests: HashMap<i32, i64>,
}

/// The privacy side of a running service: the suppression set and the
/// thread that keeps it current.
pub struct Privacy {
    /// The set every worker consults.
    pub suppressions: Arc<Suppressions>,
    /// The requests topic.
    pub topic: String,
    progress: Arc<Progress>,
    gate: Arc<Gate>,
    ready: Arc<AtomicBool>,
    rebuild: Arc<Mutex<Option<ActiveKey>>>,
    stop: Arc<AtomicBool>,
    consumer: Arc<ReaderConsumer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where the reader records the refusal that stops it.
    fatal: Arc<crate::kafka::Fatal>,
}

impl Privacy {
    /// The reader `cfg.privacy` asks for (`None` without it), its set keyed
    /// with the rules' active key.
    pub fn from_config(
        cfg: &crate::config::Config,
        rules: &crate::reload::RuleSource,
        password: Option<&crate::secret::Secret>,
        telemetry: Arc<Telemetry>,
        fatal: Arc<crate::kafka::Fatal>,
    ) -> Result<Option<Privacy>, ReaderError> {
        let Some(pc) = &cfg.privacy else {
            return Ok(None);
        };
        let key = rules.active_key().ok_or(ReaderError::NoHashKey)?;
        let client = client_config(cfg, password)?;
        Privacy::start(client, &pc.requests_topic, &key, telemetry, fatal).map(Some)
    }

    /// Creates the reader's client, finds the topic's partitions and starts
    /// reading from the beginning, with digests made with `key`. A refusal
    /// it meets later (its ACL removed) is recorded in `fatal`: the service
    /// stops rather than wait for requests it can no longer read.
    pub fn start(
        client: ClientConfig,
        topic: &str,
        key: &ActiveKey,
        telemetry: Arc<Telemetry>,
        fatal: Arc<crate::kafka::Fatal>,
    ) -> Result<Privacy, ReaderError> {
        let fail = |error: String| ReaderError::Kafka {
            topic: topic.to_string(),
            error,
        };
        let consumer: ReaderConsumer = client
            .create_with_context(ReaderCtx {
                telemetry: telemetry.clone(),
            })
            .map_err(|e| fail(e.to_string()))?;
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| fail(format!("cannot describe it: {e}")))?;
        let refused = rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
        if md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error() == Some(refused))
        {
            return Err(fail(crate::kafka::refusal(
                "privacy reader",
                "Topic authorization failed",
                &format!("Read on Topic:{topic}"),
            )));
        }
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(fail(
                "it does not exist (create it with cleanup.policy=compact, keyed by person)".into(),
            ));
        }
        let consumer = Arc::new(consumer);
        let p = Privacy {
            suppressions: Arc::new(Suppressions::new(&key.id, &key.key)),
            topic: topic.to_string(),
            progress: Arc::default(),
            gate: Arc::default(),
            ready: Arc::default(),
            rebuild: Arc::default(),
            stop: Arc::default(),
            consumer: consumer.clone(),
            thread: Mutex::new(None),
            fatal: fatal.clone(),
        };
        let mut run = Run {
            consumer,
            topic: topic.to_string(),
            partitions,
            partition_counts: HashMap::new(),
            suppressions: p.suppressions.clone(),
            progress: p.progress.clone(),
            gate: p.gate.clone(),
            ready: p.ready.clone(),
            rebuild: p.rebuild.clone(),
            stop: p.stop.clone(),
            telemetry,
            fatal,
        };
        run.assign_from_start().map_err(fail)?;
        let handle = std::thread::Builder::new()
            .name("privacy-reader".into())
            .spawn(move || run.run())
            .map_err(|e| fail(e.to_string()))?;
        *p.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(p)
    }

    /// Whether the topic has been read to its end since startup.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Resolves once [`Privacy::ready`], or with the error that stopped
    /// the reader (its ACL refused).
    pub async fn wait_ready(&self) -> Result<(), String> {
        while !self.ready() {
            if let Some(e) = self.fatal.error() {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Blocks until this replica has applied the request at `offset` of
    /// `partition` (so its own events are suppressed before a command for
    /// it is produced), or `stop` says to give up.
    pub fn wait_applied(&self, partition: i32, offset: i64, stop: impl Fn() -> bool) {
        let mut waited = 0u32;
        let mut next = self.progress.next.lock().unwrap_or_else(|e| e.into_inner());
        while next.get(&partition).copied().unwrap_or(-1) <= offset && !stop() {
            let (n, timeout) = self
                .progress
                .changed
                .wait_timeout(next, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            next = n;
            if timeout.timed_out() {
                waited += 1;
                if waited % 100 == 0 {
                    tracing::warn!(partition, offset, "waiting for the privacy reader to apply a request before producing its commands");
                }
            }
        }
    }

    /// Blocks until the event at `offset` of `topic`/`partition` may be
    /// judged: every privacy request acknowledged before it was produced
    /// is applied here ([`Gate`]). Returns the partition's released mark
    /// (offsets below it need no wait), or `None` when `stop` says to give
    /// up (the event is then not handled: it is consumed again later).
    pub fn wait_released(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        stop: impl Fn() -> bool,
    ) -> Option<i64> {
        let since = std::time::Instant::now();
        let mut warned = 0u64;
        let key = (topic.to_string(), partition);
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let released = *st.released.entry(key.clone()).or_insert(i64::MIN);
            if offset < released {
                return Some(released);
            }
            if stop() {
                return None;
            }
            st.wanted = true;
            st = self
                .gate
                .changed
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let secs = since.elapsed().as_secs();
            if secs >= 10 * (warned + 1) {
                warned = secs / 10;
                tracing::warn!(topic, partition, offset, waited_s = secs, "events wait for the privacy reader: it cannot read the end offsets of the requests topic (broker unreachable?)");
            }
        }
    }

    /// Rebuilds the set from the topic with `key`; the current set stays
    /// in use (with its own key) until the new one has caught up.
    pub fn rebuild_with(&self, key: ActiveKey) {
        *self.rebuild.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// The reader's Kafka client (for credential updates).
    pub(crate) fn client(&self) -> &ReaderConsumer {
        &self.consumer
    }

    /// Stops the reader thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Privacy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pass over the topic up to the end marks: at startup, and for a rebuild.
struct Pass {
    /// High watermarks when the pass began.
    ends: HashMap<i32, i64>,
    /// Next offset read, per partition.
    next: HashMap<i32, i64>,
    /// Partitions that reported their end.
    eof: Vec<i32>,
    requests: u64,
}

impl Pass {
    fn done(&self) -> bool {
        self.ends
            .iter()
            .all(|(p, end)| self.eof.contains(p) || self.next.get(p).copied().unwrap_or(0) >= *end)
    }
}

struct Run {
    consumer: Arc<ReaderConsumer>,
    topic: String,
    partitions: Vec<i32>,
    /// Partition counts of the input topics the gate was asked about.
    partition_counts: HashMap<String, i32>,
    suppressions: Arc<Suppressions>,
    progress: Arc<Progress>,
    gate: Arc<Gate>,
    ready: Arc<AtomicBool>,
    rebuild: Arc<Mutex<Option<ActiveKey>>>,
    stop: Arc<AtomicBool>,
    telemetry: Arc<Telemetry>,
    fatal: Arc<crate::kafka::Fatal>,
}

impl Run {
    /// Counts and logs `e`, met on `topic` (the requests topic unless
    /// said); when it is the broker refusing the reader for lack of its
    /// ACL, the service stops, naming it. Whether it did.
    fn report(&self, e: &KafkaError) -> bool {
        self.report_on(e, &self.topic)
    }

    fn report_on(&self, e: &KafkaError, topic: &str) -> bool {
        crate::kafka::report(&self.telemetry, "privacy-reader", e);
        let needs = format!("Read on Topic:{topic}");
        self.fatal.refused_for("privacy reader", e, &needs)
    }

    fn assign_from_start(&self) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        self.consumer.assign(&tpl).map_err(|e| e.to_string())
    }

    fn pass(&self) -> Pass {
        let (mut ends, mut next) = (HashMap::new(), HashMap::new());
        for &p in &self.partitions {
            let end = loop {
                match self
                    .consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                {
                    Ok(w) => break w,
                    Err(e) => {
                        if self.report(&e) || self.stop.load(Ordering::Acquire) {
                            break (0, 0);
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            };
            ends.insert(p, end.1);
            next.insert(p, end.0);
        }
        Pass {
            ends,
            next,
            eof: Vec::new(),
            requests: 0,
        }
    }

    /// Starts a round when a lane waits: the input partitions' end
    /// offsets first, then the requests topic's (in that order: see
    /// [`Gate`]).
    fn round(&mut self) -> Option<Round> {
        let asked: Vec<(String, i32)> = {
            let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut st.wanted) {
                return None;
            }
            st.released.keys().cloned().collect()
        };
        // Every partition of the topics asked about, so one round releases
        // a lane's other partitions too (their counts described once, and
        // again when a partition beyond them is asked about).
        let mut parts: Vec<(String, i32)> = Vec::new();
        {
            let counts = &mut self.partition_counts;
            for (t, p) in &asked {
                if counts.get(t).is_none_or(|n| *p >= *n) {
                    if let Ok(md) = self
                        .consumer
                        .fetch_metadata(Some(t), Duration::from_secs(10))
                    {
                        let n = md
                            .topics()
                            .iter()
                            .filter(|x| x.name() == t && x.error().is_none())
                            .map(|x| x.partitions().len() as i32)
                            .next()
                            .unwrap_or(0);
                        counts.insert(t.clone(), n.max(*p + 1));
                    }
                }
            }
            for (t, n) in counts.iter() {
                parts.extend((0..*n).map(|p| (t.clone(), p)));
            }
            for a in asked {
                if !parts.contains(&a) {
                    parts.push(a);
                }
            }
        }
        let ends = |parts: &[(&str, i32)]| -> Option<Vec<((String, i32), i64)>> {
            let mut tpl = TopicPartitionList::new();
            for &(t, p) in parts {
                tpl.add_partition_offset(t, p, Offset::End).ok()?;
            }
            match self
                .consumer
                .offsets_for_times(tpl, Duration::from_secs(10))
            {
                Ok(tpl) => Some(
                    tpl.elements()
                        .iter()
                        .filter(|e| match e.error() {
                            Ok(()) => true,
                            Err(err) => {
                                self.report_on(&err, e.topic());
                                false
                            }
                        })
                        .filter_map(|e| {
                            Some(((e.topic().to_string(), e.partition()), e.offset().to_raw()?))
                        })
                        .filter(|(_, o)| *o >= 0)
                        .collect(),
                ),
                Err(e) => {
                    self.report(&e);
                    None
                }
            }
        };
        let retry = || {
            self.gate
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .wanted = true;
        };
        let inputs: Vec<(&str, i32)> = parts.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        let Some(events) = ends(&inputs) else {
            retry();
            return None;
        };
        let own: Vec<(&str, i32)> = self
            .partitions
            .iter()
            .map(|&p| (self.topic.as_str(), p))
            .collect();
        // Every partition of the requests topic, or no round: a round
        // without one would release events before its requests are read.
        let Some(requests) = ends(&own).filter(|r| r.len() == own.len()) else {
            retry();
            return None;
        };
        Some(Round {
            events,
            requests: requests.into_iter().map(|((_, p), o)| (p, o)).collect(),
        })
    }

    /// Whether every request below the round's ends is applied.
    fn applied(&self, round: &Round, next: &HashMap<i32, i64>) -> bool {
        let position = self.consumer.position().ok();
        round.requests.iter().all(|(p, end)| {
            next.get(p).is_some_and(|n| n >= end)
                || position.as_ref().is_some_and(|tpl| {
                    tpl.find_partition(&self.topic, *p)
                        .and_then(|e| e.offset().to_raw())
                        .is_some_and(|o| o >= *end)
                })
        })
    }

    fn release(&self, round: Round) {
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        for (k, end) in round.events {
            let r = st.released.entry(k).or_insert(i64::MIN);
            *r = (*r).max(end);
        }
        drop(st);
        self.gate.changed.notify_all();
    }

    fn run(&mut self) {
        let mut startup = Some(self.pass());
        let mut round: Option<Round> = None;
        // A rebuild: the new table and its pass.
        let mut rebuild: Option<(Table, Pass)> = None;
        // Where reading starts: an empty partition is applied to its end.
        let mut live_next: HashMap<i32, i64> =
            startup.as_ref().map(|p| p.next.clone()).unwrap_or_default();
        while !self.stop.load(Ordering::Acquire) && !self.fatal.is_set() {
            if round.is_none() && startup.is_none() {
                round = self.round();
            }
            if round.as_ref().is_some_and(|r| self.applied(r, &live_next)) {
                self.release(round.take().expect("checked"));
                continue;
            }
            if rebuild.is_none() {
                if let Some(key) = self
                    .rebuild
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                {
                    let pass = self.pass();
                    if let Err(e) = self.assign_from_start() {
                        self.telemetry.kafka_error("privacy-reader", "assign", &e);
                    }
                    rebuild = Some((Table::new(&key.id, &key.key), pass));
                }
            }
            // Short: a lane waiting for a round is noticed within 2 ms.
            let wait = if round.is_some() { 1 } else { 2 };
            match self.consumer.poll(Duration::from_millis(wait)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    for pass in startup.iter_mut().chain(rebuild.as_mut().map(|r| &mut r.1)) {
                        if !pass.eof.contains(&p) {
                            pass.eof.push(p);
                        }
                    }
                }
                Some(Err(e)) => {
                    self.report(&e);
                }
                Some(Ok(m)) => {
                    let (p, off) = (m.partition(), m.offset());
                    let request = match m.payload() {
                        None => {
                            self.telemetry.privacy_tombstone();
                            None
                        }
                        Some(bytes) => match parse(bytes) {
                            Ok(r) => Some(r),
                            Err(e) => {
                                self.telemetry.privacy_request_invalid(e.code());
                                None
                            }
                        },
                    };
                    if let Some((table, pass)) = &mut rebuild {
                        if let Some(r) = &request {
                            table.apply(r);
                            pass.requests += 1;
                        }
                        pass.next.insert(p, off + 1);
                    }
                    if off >= live_next.get(&p).copied().unwrap_or(0) {
                        if let Some(r) = &request {
                            let (digest, key_id, size) = self.suppressions.apply(r);
                            self.telemetry.privacy_request_applied(
                                &r.request_id,
                                r.action.name(),
                                &digest,
                                &key_id,
                                r.requested_at.as_deref(),
                                (p, off),
                                startup.is_none(),
                                size,
                            );
                        }
                        live_next.insert(p, off + 1);
                        if let Some(pass) = &mut startup {
                            pass.next.insert(p, off + 1);
                            pass.requests += u64::from(request.is_some());
                        }
                        self.progress
                            .next
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p, off + 1);
                        self.progress.changed.notify_all();
                    }
                }
            }
            if startup.as_ref().is_some_and(Pass::done) {
                let pass = startup.take().expect("checked");
                self.telemetry.privacy_caught_up(
                    pass.requests,
                    self.suppressions.len(),
                    &self.suppressions.key_id(),
                    false,
                );
                self.ready.store(true, Ordering::Release);
            }
            if rebuild.as_ref().is_some_and(|(_, pass)| pass.done()) {
                let (table, pass) = rebuild.take().expect("checked");
                let (size, key_id) = (table.len(), table.key_id().to_string());
                self.suppressions.replace(table);
                self.telemetry
                    .privacy_caught_up(pass.requests, size, &key_id, true);
            }
        }
    }
}
