//! Delivery: how the records of a consumed message reach the broker and
//! when its input offset counts as done. One interface ([`Delivery`]),
//! two modes (`kafka.delivery`):
//!
//! - [`AtLeastOnce`]: one idempotent producer that every lane shares
//!   ([`Plan`]); an input offset is stored
//!   for librdkafka's auto-commit only after the broker acknowledged that
//!   message's records and every earlier message of its partition is done.
//!   A crash replays the uncommitted tail: nothing lost, some duplicates.
//! - [`ExactlyOnce`]: a transactional producer; records of many messages
//!   and their input offsets (`send_offsets_to_transaction` with the
//!   group's metadata, KIP-447) are committed together every
//!   `kafka.transaction.interval` or `max_messages`. A failed transaction
//!   is aborted and its input consumed again from the last commit; a
//!   fenced producer stops the service. A `read_committed` reader sees
//!   each input's output exactly once.
//!
//! Both run on their lane's thread (sends, ticks, rebalance callbacks);
//! only acknowledgements arrive on librdkafka's producer thread.

use super::lane::{Common, LaneConsumer};
use super::route::{DeletionAudit, Routed, Topic};
use super::tracker::Track;
use crate::config::{DeliveryMode, TransactionConfig};
use crate::metrics::Finished;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why delivery cannot go on: the service stops with this error.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// librdkafka reported a fatal error (for example: this producer was
    /// fenced by a newer instance with the same transactional id).
    #[error("fatal producer error: {0}")]
    Fatal(String),
    /// A transaction call failed in a way that cannot be retried.
    #[error("transaction: {0}")]
    Transaction(String),
}

/// One consumed message between routing and done: the delivery opaque of
/// its records (the last record's acknowledgement finishes it).
pub struct InFlight {
    track: Arc<Track>,
    offset: i64,
    how: Finished,
    consumed_at: Instant,
    /// The input's timestamp (ms), for the end-to-end delay.
    timestamp: Option<i64>,
    bytes: usize,
    /// Records not yet acknowledged.
    remaining: AtomicUsize,
    deletion: Option<DeletionAudit>,
}

/// What [`Delivery::send`] needs of the input message besides its output.
pub struct Consumed {
    /// Its partition's track.
    pub track: Arc<Track>,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms).
    pub timestamp: Option<i64>,
    /// When it was consumed.
    pub consumed_at: Instant,
}

/// The delivery interface of a lane.
pub trait Delivery: Send + Sync {
    /// Hands the records of one consumed message to the producer (or
    /// finishes it at once when there are none).
    fn send(
        &self,
        common: &Common,
        input: Consumed,
        routed: Routed<'_>,
    ) -> Result<(), DeliveryError>;
    /// Between polls: store offsets, retry failed records, commit a
    /// transaction that is due. `caught_up`: the last poll waited and
    /// found nothing new (the input paused).
    fn tick(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        caught_up: bool,
    ) -> Result<(), DeliveryError>;
    /// Partitions are about to be revoked: finish what can be finished
    /// for them before `deadline`, so the next owner replays little.
    fn revoking(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        tracks: &[Arc<Track>],
        deadline: Instant,
    );
    /// Shutdown: finish what is in flight before `deadline` and commit.
    /// Returns how many consumed messages were left unfinished.
    fn close(&self, common: &Common, consumer: &LaneConsumer, deadline: Instant) -> usize;
    /// The producer's client, for SASL credential updates.
    fn client(&self) -> &rdkafka::client::Client<ProducerCallbacks>;
}

/// The producer's callbacks: log lines, errors (a fatal one stops the
/// service), and acknowledgements.
pub struct ProducerCallbacks {
    common: Arc<Common>,
    mode: Mode,
    /// At-least-once: records whose delivery failed, produced again.
    retries: Mutex<Vec<(OwnedMessage, Arc<InFlight>)>>,
    /// Exactly-once: a record of the open transaction failed.
    failed: AtomicBool,
    /// The broker refused a record for lack of an ACL: nothing in flight
    /// will be delivered, so shutdown does not wait for it.
    refused: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    AtLeastOnce,
    ExactlyOnce,
}

impl ProducerCallbacks {
    /// Whether `e`, for a record to `topic`, is the broker refusing it for
    /// lack of an ACL; then the service stops, naming it. The record is not
    /// retried (nothing reaches the topic until an operator grants the
    /// ACL) and its input offset is never stored: it is consumed again
    /// after the restart.
    fn refuse(&self, e: &KafkaError, topic: &str) -> bool {
        if !self.common.refused("producer", e, Some(topic)) {
            return false;
        }
        self.refused.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        true
    }
}

impl ClientContext for ProducerCallbacks {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::kafka::log("producer", level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.common
            .telemetry
            .kafka_error("producer", &crate::kafka::error_kind(&error), reason);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            self.common.fail(format!("{error}: {reason}"));
        }
        self.common.refused("producer", &error, None);
    }
    fn stats(&self, stats: rdkafka::statistics::Statistics) {
        let view = crate::kafka::broker_view(&stats);
        let all = self.common.telemetry.brokers("producer", &stats.name, view);
        let unreachable = all.down + all.partitions_unreachable;
        self.common
            .health
            .producer_unreachable
            .store(unreachable, Ordering::Relaxed);
    }
}

impl ProducerContext for ProducerCallbacks {
    type DeliveryOpaque = Arc<InFlight>;

    /// Runs on librdkafka's producer thread: no task wake-up per message.
    fn delivery(&self, result: &DeliveryResult<'_>, f: Arc<InFlight>) {
        match result {
            Ok(_) => {
                if self.mode == Mode::AtLeastOnce && f.remaining.fetch_sub(1, Ordering::AcqRel) == 1
                {
                    finish(&self.common, &f);
                }
            }
            // Purged at shutdown, unacknowledged: left for replay (counted
            // once in the shutdown summary, not logged per record).
            Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => {}
            Err((e, msg)) if self.refuse(e, msg.topic()) => {}
            Err((e, msg)) => match self.mode {
                Mode::AtLeastOnce => {
                    self.common
                        .telemetry
                        .produce_retry(msg.topic(), &e.to_string());
                    self.retries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((msg.detach(), f));
                }
                Mode::ExactlyOnce => {
                    self.common.telemetry.kafka_error(
                        "producer",
                        &crate::kafka::error_kind(e),
                        &e.to_string(),
                    );
                    self.failed.store(true, Ordering::Release);
                }
            },
        }
    }
}

/// The message is done: its offset may be committed; count it.
fn finish(common: &Common, f: &InFlight) {
    f.track.finish(f.offset);
    common.budget.give(1, f.bytes);
    // One clock read: the wall-clock time is derived from it.
    let now = Instant::now();
    let delay = f
        .timestamp
        .map(|ts| (common.wall.millis_at(now) - ts) as f64 / 1000.0);
    common.metrics.finished(
        &f.track.topic,
        f.how,
        now.saturating_duration_since(f.consumed_at).as_secs_f64(),
        delay,
    );
    common.counts.add(f.how);
    if let Some(a) = &f.deletion {
        common
            .telemetry
            .deletion_commands(&a.request_id, &a.person_digest, &a.key_id, 2);
    }
}

fn finished_as(routed: &Routed<'_>) -> Finished {
    use super::route::Outcome;
    match routed.outcome {
        Outcome::Clean | Outcome::Commands => Finished::Clean,
        Outcome::DeadLetter => Finished::DeadLetter,
        Outcome::Suppressed => Finished::Suppressed,
        Outcome::NoOutput => Finished::NoOutput,
    }
}

type LaneProducer = ThreadedProducer<ProducerCallbacks>;

/// The producer settings this service needs; `kafka.producer` adds to them
/// (and cannot change `enable.idempotence`, `acks`, `transactional.id`).
const PRODUCER_BASE: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    ("message.timeout.ms", "0"),
    // For `event_sanitizer_brokers_up` and `_down`.
    ("statistics.interval.ms", "5000"),
];

fn producer(
    common: &Arc<Common>,
    mode: Mode,
    transactional_id: Option<&str>,
    txn: &TransactionConfig,
) -> Result<LaneProducer, super::PipelineError> {
    let mut base: Vec<(&str, &str)> = PRODUCER_BASE.to_vec();
    let timeout = txn.timeout.as_millis().to_string();
    if let Some(id) = transactional_id {
        base.push(("transactional.id", id));
        base.push(("transaction.timeout.ms", &timeout));
        // A transaction's records must be acknowledged before it can
        // commit; an infinite timeout would hold it open forever.
        base.retain(|(k, _)| *k != "message.timeout.ms");
        base.push(("message.timeout.ms", &timeout));
    }
    let password = common.password.as_ref();
    let cc = crate::kafka::client_config(
        &common.cfg,
        crate::config::ClientRole::Producer,
        &base,
        password,
    )?;
    Ok(cc.create_with_context(ProducerCallbacks {
        common: common.clone(),
        mode,
        retries: Mutex::default(),
        failed: AtomicBool::new(false),
        refused: AtomicBool::new(false),
    })?)
}

/// Hands `routed`'s records to the producer, waiting while its queue is
/// full. Returns the message's opaque, and whether any record was sent.
fn enqueue(
    common: &Common,
    producer: &LaneProducer,
    input: Consumed,
    routed: Routed<'_>,
    count_remaining: bool,
) -> (Arc<InFlight>, bool) {
    let bytes = routed.bytes();
    let records = routed.records();
    common.budget.take(bytes);
    input.track.begin(input.offset);
    let f = Arc::new(InFlight {
        track: input.track,
        offset: input.offset,
        how: finished_as(&routed),
        consumed_at: input.consumed_at,
        timestamp: input.timestamp,
        bytes,
        remaining: AtomicUsize::new(if count_remaining { records } else { 0 }),
        deletion: routed.deletion,
    });
    if records == 0 {
        return (f, false);
    }
    for d in routed.dead_calls {
        let mut rec = BaseRecord::with_opaque_to(&common.cfg.kafka.dead_letter_topic, f.clone())
            .payload(&d.payload[..])
            .headers(d.headers);
        if let Some(k) = &d.key {
            rec = rec.key(&k[..]);
        }
        send_record(common, producer, rec);
    }
    let topic = match routed.topic {
        Topic::Clean => &common.cfg.kafka.clean_topic,
        Topic::DeadLetter => &common.cfg.kafka.dead_letter_topic,
    };
    let last = routed.payloads.len() - 1;
    let mut headers = routed.headers;
    for (i, payload) in routed.payloads.iter().enumerate() {
        // In order, with the same key: the parts of a split batch land on
        // one partition in sequence, like the batch they came from.
        let h = if i == last {
            headers.take()
        } else {
            headers.clone()
        };
        let mut rec = BaseRecord::with_opaque_to(topic, f.clone()).payload(&payload[..]);
        if let Some(h) = h {
            rec = rec.headers(h);
        }
        if let Some(k) = &routed.key {
            rec = rec.key(&k[..]);
        }
        send_record(common, producer, rec);
    }
    (f, true)
}

fn send_record(
    common: &Common,
    producer: &LaneProducer,
    mut rec: BaseRecord<'_, [u8], [u8], Arc<InFlight>>,
) {
    let mut backoff = Duration::from_micros(200);
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((e, back)) => {
                if !matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) {
                    crate::kafka::report(&common.telemetry, "producer", &e);
                }
                if producer.context().refuse(&e, back.topic) {
                    return;
                }
                // A fatal error (this producer was fenced, say) never
                // clears: the service stops, and the record is not sent
                // (its input is consumed again after the restart). Nor is
                // one sent past the shutdown deadline.
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
                    common.fail(format!("fatal producer error: {e}"));
                    return;
                }
                if common.fatal.is_set() || common.deadline().is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                rec = back;
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// How the lanes deliver, decided once for the replica: at least once,
/// every lane handing its records to one idempotent producer; or exactly
/// once, each lane with a transactional producer of its own (its
/// transactions commit its own consumer's offsets).
pub enum Plan {
    /// `kafka.delivery: at_least_once`, with the producer the lanes share.
    AtLeastOnce(Arc<LaneProducer>),
    /// `kafka.delivery: exactly_once`; lane `n`'s `transactional.id` is
    /// this followed by `-n`.
    ExactlyOnce {
        /// [`transactional_id`] of the configuration.
        transactional_id: String,
    },
}

impl Plan {
    /// Creates what the lanes share (the at-least-once producer).
    ///
    /// One producer for every lane, rather than one each: the records of
    /// all lanes fill the same batches and requests, and one set of broker
    /// threads serves them. Measured in the pipeline bench (empty rule set,
    /// two lanes): 0.63 -> 0.72-0.79 of the naive loop, 4.5 -> 3.9-4.2 CPU seconds
    /// per million events. Order per partition is kept: a partition
    /// belongs to one lane, which hands its records over in order, and the
    /// idempotent producer keeps each output partition's order.
    pub fn new(common: &Arc<Common>) -> Result<Plan, super::PipelineError> {
        Ok(match common.cfg.kafka.delivery {
            DeliveryMode::AtLeastOnce => Plan::AtLeastOnce(Arc::new(producer(
                common,
                Mode::AtLeastOnce,
                None,
                &common.cfg.kafka.transaction,
            )?)),
            DeliveryMode::ExactlyOnce => Plan::ExactlyOnce {
                transactional_id: transactional_id(&common.cfg),
            },
        })
    }

    /// Lane `index`'s delivery (with exactly-once, its producer, its
    /// transactions initialized).
    pub fn lane(
        &self,
        common: &Arc<Common>,
        index: usize,
    ) -> Result<Arc<dyn Delivery>, super::PipelineError> {
        Ok(match self {
            Plan::AtLeastOnce(producer) => Arc::new(AtLeastOnce {
                producer: producer.clone(),
                stored: Mutex::default(),
                last_store: Mutex::new(Instant::now()),
            }),
            Plan::ExactlyOnce { transactional_id } => Arc::new(ExactlyOnce::new(
                common,
                &format!("{transactional_id}-{index}"),
            )?),
        })
    }
}

/// `kafka.transactional_id`, else `<group_id>-<HOSTNAME>` (the pod name in
/// Kubernetes), else `<group_id>`.
pub fn transactional_id(cfg: &crate::config::Config) -> String {
    cfg.kafka.transactional_id.clone().unwrap_or_else(|| {
        match std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()) {
            Some(h) => format!("{}-{h}", cfg.kafka.group_id),
            None => cfg.kafka.group_id.clone(),
        }
    })
}

/// At-least-once delivery ([module docs](self)): a lane's view of the
/// shared producer, and the offsets it stored.
pub struct AtLeastOnce {
    producer: Arc<LaneProducer>,
    /// The offset last stored for each partition.
    stored: Mutex<HashMap<(String, i32), i64>>,
    last_store: Mutex<Instant>,
}

/// How often acknowledged offsets are handed to librdkafka's auto-commit.
const STORE_EVERY: Duration = Duration::from_millis(20);

impl AtLeastOnce {
    /// Stores the committable offset of each of `tracks` that advanced.
    fn store(&self, consumer: &LaneConsumer, tracks: &[Arc<Track>]) {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        let mut tpl = TopicPartitionList::new();
        for t in tracks {
            let Some(c) = t.committable() else { continue };
            let key = (t.topic.clone(), t.partition);
            if stored.get(&key) == Some(&c) {
                continue;
            }
            if tpl
                .add_partition_offset(&t.topic, t.partition, Offset::Offset(c))
                .is_ok()
            {
                stored.insert(key, c);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition was revoked meanwhile: its next owner replays it.
            tracing::debug!(error = %e, "offsets not stored");
        }
    }

    /// Waits (retrying failed records) until `tracks` have nothing in
    /// flight or `deadline` passes.
    fn drain(&self, common: &Common, tracks: &[Arc<Track>], deadline: Instant) {
        let refused = || self.producer.context().refused.load(Ordering::Acquire);
        while tracks.iter().any(|t| t.pending() > 0) && Instant::now() < deadline && !refused() {
            self.retry(common);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn retry(&self, common: &Common) {
        let due: Vec<(OwnedMessage, Arc<InFlight>)> = std::mem::take(
            &mut *self
                .producer
                .context()
                .retries
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if due.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
        for (msg, f) in due {
            let mut rec = BaseRecord::with_opaque_to(msg.topic(), f)
                .payload(msg.payload().unwrap_or_default());
            if let Some(h) = msg.headers() {
                rec = rec.headers(h.as_borrowed().detach());
            }
            if let Some(k) = msg.key() {
                rec = rec.key(k);
            }
            send_record(common, &self.producer, rec);
        }
    }
}

impl Delivery for AtLeastOnce {
    fn send(
        &self,
        common: &Common,
        input: Consumed,
        routed: Routed<'_>,
    ) -> Result<(), DeliveryError> {
        let (f, sent) = enqueue(common, &self.producer, input, routed, true);
        if !sent {
            // Nothing to produce: done now, in order with the partition's
            // other messages (only contiguous offsets are stored).
            finish(common, &f);
        }
        Ok(())
    }

    fn tick(&self, common: &Common, consumer: &LaneConsumer, _: bool) -> Result<(), DeliveryError> {
        self.retry(common);
        let mut last = self.last_store.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= STORE_EVERY {
            *last = Instant::now();
            drop(last);
            let tracks: Vec<Arc<Track>> = common.tracks_of(consumer);
            self.store(consumer, &tracks);
        }
        Ok(())
    }

    fn revoking(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        tracks: &[Arc<Track>],
        deadline: Instant,
    ) {
        // Let in-flight messages of these partitions finish (bounded), so
        // their offsets are stored before the revoke commit and the next
        // owner replays as little as possible.
        self.drain(common, tracks, deadline);
        self.store(consumer, tracks);
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        for t in tracks {
            stored.remove(&(t.topic.clone(), t.partition));
        }
    }

    fn close(&self, common: &Common, consumer: &LaneConsumer, deadline: Instant) -> usize {
        let tracks = common.tracks_of(consumer);
        self.drain(common, &tracks, deadline);
        let _ = crate::kafka::native::flush(
            self.producer.client(),
            deadline.saturating_duration_since(Instant::now()),
        );
        // What the broker has not acknowledged by the deadline is given
        // up (its offset is not stored: consumed again after the restart),
        // so closing the producer does not wait on a slow broker.
        if tracks.iter().any(|t| t.pending() > 0) {
            self.producer
                .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
        self.store(consumer, &tracks);
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => common.telemetry.committed(false, &e.to_string()),
        }
        tracks.iter().map(|t| t.pending()).sum()
    }

    fn client(&self) -> &rdkafka::client::Client<ProducerCallbacks> {
        self.producer.client()
    }
}

/// Exactly-once delivery ([module docs](self)).
pub struct ExactlyOnce {
    producer: LaneProducer,
    txn: Mutex<Txn>,
    cfg: TransactionConfig,
}

/// The open transaction.
#[derive(Default)]
struct Txn {
    /// Whether `begin_transaction` was called and not yet ended.
    open: bool,
    opened_at: Option<Instant>,
    /// The messages in it, in consumption order.
    messages: Vec<Arc<InFlight>>,
}

/// How old an open transaction must be to commit because its lane's
/// input paused: a quarter of `interval`, at most a second.
fn paused_commit_age(interval: Duration) -> Duration {
    (interval / 4).min(Duration::from_secs(1))
}

/// How long one transaction call may take before it is given up on.
const TXN_CALL: Duration = Duration::from_secs(30);

/// How long a transaction call may take to end by `deadline` (at least a
/// moment, so a call at the deadline can still report how it ended).
fn until(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), TXN_CALL)
}

impl ExactlyOnce {
    /// Creates the lane's transactional producer and fences any earlier
    /// instance with the same transactional id (`init_transactions`).
    pub fn new(
        common: &Arc<Common>,
        transactional_id: &str,
    ) -> Result<ExactlyOnce, super::PipelineError> {
        let cfg = common.cfg.kafka.transaction.clone();
        let producer = producer(common, Mode::ExactlyOnce, Some(transactional_id), &cfg)?;
        producer.init_transactions(TXN_CALL).map_err(|e| {
            let why = crate::kafka::missing_permission(&common.cfg.kafka, "producer", &e, None)
                .unwrap_or_else(|| e.to_string());
            super::PipelineError::Fatal(format!(
                "cannot initialize transactions for `{transactional_id}`: {why}"
            ))
        })?;
        tracing::info!(
            transactional_id,
            "exactly-once delivery: transactions initialized"
        );
        Ok(ExactlyOnce {
            producer,
            txn: Mutex::new(Txn::default()),
            cfg,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Txn> {
        self.txn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a failed commit means: its text, and whether the producer can
    /// never go on. A failed send may stand for a fatal state of the
    /// producer (fenced by a newer instance): that is reported, not an
    /// abort that cannot succeed.
    fn failure(&self, e: &KafkaError) -> (String, bool) {
        if let Some((_, why)) = self.producer.client().fatal_error() {
            return (why, true);
        }
        let fatal = match e {
            KafkaError::Transaction(t) => t.is_fatal(),
            other => other.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal),
        };
        (e.to_string(), fatal)
    }

    /// Commits the open transaction with the input offsets of its
    /// messages; on failure aborts it and rewinds the consumer to where it
    /// began, so its input is consumed again. Whether it was committed
    /// (`false`: aborted, or nothing was open).
    fn commit(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        txn: &mut Txn,
        within: Duration,
    ) -> Result<bool, DeliveryError> {
        if !txn.open {
            return Ok(false);
        }
        let messages = std::mem::take(&mut txn.messages);
        txn.open = false;
        txn.opened_at = None;
        let started = Instant::now();
        let ended = |result: &str, error: Option<&str>| {
            let seconds = started.elapsed().as_secs_f64();
            common
                .telemetry
                .transaction(result, messages.len(), seconds, error);
        };
        let result = self.commit_messages(consumer, &messages, within);
        match result {
            Ok(()) => {
                ended("committed", None);
                for f in &messages {
                    finish(common, f);
                }
                Ok(true)
            }
            Err(e) => {
                let (text, fatal) = self.failure(&e);
                if fatal {
                    ended("aborted", Some(&text));
                    return Err(DeliveryError::Fatal(text));
                }
                let aborted = self.producer.abort_transaction(within);
                ended("aborted", Some(&text));
                if let Err(a) = aborted {
                    return Err(DeliveryError::Transaction(format!(
                        "abort after `{text}` failed: {a}"
                    )));
                }
                self.rewind(common, consumer, &messages);
                Ok(false)
            }
        }
    }

    fn commit_messages(
        &self,
        consumer: &LaneConsumer,
        messages: &[Arc<InFlight>],
        within: Duration,
    ) -> Result<(), KafkaError> {
        crate::kafka::native::flush(self.producer.client(), within)?;
        if self.producer.context().failed.swap(false, Ordering::AcqRel) {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail));
        }
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for f in messages {
            let e = next.entry((&f.track.topic, f.track.partition)).or_insert(0);
            *e = (*e).max(f.offset + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        let group = consumer
            .group_metadata()
            .ok_or(KafkaError::Global(RDKafkaErrorCode::State))?;
        if tpl.count() > 0 {
            self.producer
                .send_offsets_to_transaction(&tpl, &group, within)?;
        }
        self.producer.commit_transaction(within)
    }

    /// After an abort: consume each partition again from the first offset
    /// the aborted transaction held (the last committed position).
    fn rewind(&self, common: &Common, consumer: &LaneConsumer, messages: &[Arc<InFlight>]) {
        let mut first: HashMap<(&str, i32), (i64, &Arc<Track>)> = HashMap::new();
        for f in messages {
            first
                .entry((&f.track.topic, f.track.partition))
                .or_insert((f.offset, &f.track));
        }
        let n = messages.len();
        let bytes: usize = messages.iter().map(|f| f.bytes).sum();
        common.budget.give(n, bytes);
        for ((topic, partition), (offset, track)) in first {
            track.reset();
            if let Err(e) = consumer.seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                crate::kafka::report(&common.telemetry, "consumer", &e);
            }
        }
    }
}

impl Delivery for ExactlyOnce {
    fn send(
        &self,
        common: &Common,
        input: Consumed,
        routed: Routed<'_>,
    ) -> Result<(), DeliveryError> {
        let mut txn = self.lock();
        if !txn.open {
            self.producer
                .begin_transaction()
                .map_err(|e| DeliveryError::Fatal(format!("begin_transaction: {e}")))?;
            txn.open = true;
            txn.opened_at = Some(Instant::now());
        }
        // Every message, with records or without, commits with the
        // transaction (its offset is in it).
        let (f, _) = enqueue(common, &self.producer, input, routed, false);
        txn.messages.push(f);
        Ok(())
    }

    fn tick(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        caught_up: bool,
    ) -> Result<(), DeliveryError> {
        let mut txn = self.lock();
        // The open transaction holds its messages' budget until it
        // commits: a spent budget is a reason to commit now. So is a
        // paused input, once the transaction is a quarter of the interval
        // old (at most a second): its last records become visible then,
        // not at the interval, and a lane still commits at most four times
        // per interval (once a second for intervals over four seconds).
        let age = txn.opened_at.map_or(Duration::ZERO, |t| t.elapsed());
        let due = txn.open
            && ((caught_up && age >= paused_commit_age(self.cfg.interval))
                || txn.messages.len() >= self.cfg.max_messages
                || common.budget.full()
                || age >= self.cfg.interval);
        if due {
            let within = common.deadline().map_or(TXN_CALL, until);
            self.commit(common, consumer, &mut txn, within)?;
        }
        Ok(())
    }

    fn revoking(
        &self,
        common: &Common,
        consumer: &LaneConsumer,
        _: &[Arc<Track>],
        deadline: Instant,
    ) {
        // Commit what was done for the partitions before they go; if that
        // fails the transaction is aborted and their next owner consumes
        // them from the last commit.
        let mut txn = self.lock();
        if let Err(e) = self.commit(common, consumer, &mut txn, until(deadline)) {
            common.fail(e.to_string());
        }
    }

    /// The last commit, within what is left of the shutdown bound. One
    /// that does not finish in time is left open: the broker aborts it
    /// (or the successor's `init_transactions` fences it) and its input is
    /// consumed again; it is counted as unfinished, not as a failure.
    fn close(&self, common: &Common, consumer: &LaneConsumer, deadline: Instant) -> usize {
        let mut txn = self.lock();
        let (open, n) = (txn.open, txn.messages.len());
        match self.commit(common, consumer, &mut txn, until(deadline)) {
            Ok(committed) if committed || !open => 0,
            Ok(_) => n,
            Err(_) if Instant::now() >= deadline => n,
            Err(e) => {
                common.fail(e.to_string());
                n
            }
        }
    }

    fn client(&self) -> &rdkafka::client::Client<ProducerCallbacks> {
        self.producer.client()
    }
}

#[cfg(test)]
mod tests {
    use super::paused_commit_age;
    use std::time::Duration;

    #[test]
    fn a_paused_input_commits_at_a_quarter_of_the_interval_at_most_a_second() {
        let ms = Duration::from_millis;
        assert_eq!(paused_commit_age(ms(100)), ms(25));
        assert_eq!(paused_commit_age(ms(4_000)), ms(1_000));
        assert_eq!(paused_commit_age(Duration::from_secs(600)), ms(1_000));
    }
}
