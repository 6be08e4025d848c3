//! A delivery lane: one thread with its own consumer (a member of the
//! group), which polls its partitions, routes each message where it was
//! consumed (no hand-off, no copy of the input) and hands the records to
//! its [`Delivery`] (at least once: the producer every lane shares;
//! exactly once: a transactional producer of its own). Per-partition order
//! holds because a partition belongs to one lane and a lane produces in
//! consumption order.
//!
//! Backpressure: when the shared [`Budget`] of messages or bytes in flight
//! is spent, the lane pauses its partitions and keeps polling (so group
//! membership and rebalances are served) until acknowledgements free it.

use super::deliver::{Consumed, Delivery, DeliveryError, Plan};
use super::route::{DeletionAudit, Input, Outcome, RequestRecord, Router};
use super::tracker::{Budget, Track, Tracks};
use super::{Health, PipelineError};
use crate::config::{ClientRole, Config, DeliveryMode};
use crate::deadletter::Sealer;
use crate::engine::{Id, Sanitizer, Scratch};
use crate::kafka::native::{Batch, PartitionFeed};
use crate::metrics::{DeliveryMetrics, Finished, Telemetry};
use crate::privacy::reader::Privacy;
use crate::reload::RuleSource;
use crate::secret::Secret;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What every lane shares: configuration, rules, metrics, the budget, and
/// the flags that stop them.
pub struct Common {
    /// The service configuration.
    pub cfg: Config,
    /// Metrics and the audit stream.
    pub telemetry: Arc<Telemetry>,
    /// The delivery path's metrics, resolved once.
    pub metrics: DeliveryMetrics,
    /// The rules in use.
    pub rules: Arc<RuleSource>,
    /// The suppression set and its reader, when `privacy` is configured.
    pub privacy: Option<Arc<Privacy>>,
    /// The dead-letter key ring (`None`: `dead_letters.encrypt: false`).
    pub sealer: Option<Arc<Sealer>>,
    /// Messages and bytes in flight, over every lane.
    pub budget: Budget,
    /// Outcome counts for the summary.
    pub counts: Counts,
    /// Wall-clock time from a monotonic reading (one clock read per
    /// acknowledgement instead of two).
    pub wall: WallClock,
    /// Readiness.
    pub health: Arc<Health>,
    /// The SASL password the clients start with.
    pub password: Option<Secret>,
    /// The topics the lanes read: the inputs, and the privacy requests
    /// topic when configured (for its deletion commands).
    pub reads: Vec<String>,
    /// Set by shutdown: lanes stop consuming.
    stop: AtomicBool,
    /// The first fatal error (of a lane, the privacy reader or the webhook
    /// listener); every lane stops.
    pub fatal: Arc<crate::kafka::Fatal>,
    /// When shutdown must be over (set with `stop`).
    deadline: Mutex<Option<Instant>>,
    /// The field inventory's sample feed (`inventory.sample_every`).
    pub inventory: Option<super::inventory::Feed>,
    /// The shadow rules' feed (`rules.shadow_file`).
    pub shadow: Option<super::shadow::Feed>,
}

/// How long a spent budget waits for acknowledgements before the lane
/// pauses its partitions (and polls again, so the group is served).
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// How long a revoke waits for the revoked partitions' messages in flight.
const REVOKE_DRAIN: Duration = Duration::from_secs(10);

/// What the service starts before its lanes, which they share.
pub struct Started {
    /// The rules in use.
    pub rules: Arc<RuleSource>,
    /// The suppression set and its reader, when `privacy` is configured.
    pub privacy: Option<Arc<Privacy>>,
    /// The dead-letter key ring (`None`: `dead_letters.encrypt: false`).
    pub sealer: Option<Arc<Sealer>>,
    /// Readiness.
    pub health: Arc<Health>,
    /// The SASL password the clients start with.
    pub password: Option<Secret>,
    /// Where any part records the error that stops the service.
    pub fatal: Arc<crate::kafka::Fatal>,
    /// The candidate rules (`rules.shadow_file`).
    pub shadow: Option<Arc<crate::reload::ShadowSource>>,
}

impl Common {
    /// Everything lanes share.
    pub fn new(cfg: Config, telemetry: Arc<Telemetry>, started: Started) -> Common {
        let Started {
            rules,
            privacy,
            sealer,
            health,
            password,
            fatal,
            shadow,
        } = started;
        let k = &cfg.kafka;
        let mut inputs = k.input_topics.clone();
        if let Some(p) = &cfg.privacy {
            inputs.push(p.requests_topic.clone());
        }
        let metrics = telemetry.delivery(&inputs, &k.clean_topic, &k.dead_letter_topic);
        telemetry.in_flight_limits(cfg.limits.max_in_flight, cfg.limits.max_in_flight_bytes);
        let inventory = super::inventory::Feed::start(
            cfg.inventory.sample_every,
            cfg.inventory.max_paths,
            rules.clone(),
            telemetry.clone(),
        );
        let shadow =
            shadow.map(|s| super::shadow::Feed::start(s, rules.clone(), telemetry.clone()));
        Common {
            inventory,
            shadow,
            reads: inputs,
            budget: Budget::new(cfg.limits.max_in_flight, cfg.limits.max_in_flight_bytes),
            cfg,
            telemetry,
            metrics,
            rules,
            privacy,
            sealer,
            counts: Counts::default(),
            wall: WallClock::new(),
            health,
            password,
            stop: AtomicBool::new(false),
            fatal,
            deadline: Mutex::new(None),
        }
    }

    /// Stops every lane with `error` (the first one is kept).
    pub fn fail(&self, error: String) {
        self.fatal.fail(error);
    }

    /// Stops the service when `e` is the broker refusing `client` for lack
    /// of an ACL (a permanent misconfiguration: nothing would get through
    /// until an operator grants it), naming the permission. Whether it was.
    pub fn refused(&self, client: &str, e: &KafkaError, topic: Option<&str>) -> bool {
        match crate::kafka::missing_permission(&self.cfg.kafka, client, e, topic) {
            Some(why) => {
                self.fail(why);
                true
            }
            None => false,
        }
    }

    /// The fatal error that stopped the lanes, if any.
    pub fn failure(&self) -> Option<String> {
        self.fatal.error()
    }

    /// Asks every lane to stop consuming and finish by `deadline`.
    pub fn shut_down(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.stop.store(true, Ordering::Release);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.fatal.is_set()
    }

    /// When shutdown must be over, if it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tracks of the partitions `consumer` holds now.
    pub fn tracks_of(&self, consumer: &LaneConsumer) -> Vec<Arc<Track>> {
        consumer.context().tracks().all().cloned().collect()
    }
}

/// Wall-clock milliseconds derived from `Instant`s: re-based from the
/// system clock at every batch, so it follows clock adjustments within a
/// batch's time.
pub struct WallClock {
    base: Instant,
    /// Wall-clock milliseconds at `base`, as of the last re-base.
    offset_ms: std::sync::atomic::AtomicI64,
}

impl WallClock {
    fn new() -> WallClock {
        let c = WallClock {
            base: Instant::now(),
            offset_ms: std::sync::atomic::AtomicI64::new(0),
        };
        c.rebase(c.base);
        c
    }

    /// Reads the system clock once; `now` is the monotonic reading taken
    /// with it.
    pub fn rebase(&self, now: Instant) {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let since = now.saturating_duration_since(self.base).as_millis() as i64;
        self.offset_ms.store(wall - since, Ordering::Relaxed);
    }

    /// Wall-clock milliseconds at `at`.
    pub fn millis_at(&self, at: Instant) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
            + at.saturating_duration_since(self.base).as_millis() as i64
    }
}

/// An atomic counter on a cache line of its own: the lane thread and the
/// acknowledgement thread update different counters, and sharing a line
/// would bounce it between them on every message.
#[derive(Default)]
#[repr(align(64))]
pub struct Padded(pub AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// Outcome counts for [`super::Summary`].
#[derive(Default)]
pub struct Counts {
    /// Messages consumed.
    pub consumed: Padded,
    /// Messages whose clean records (or commands) were acknowledged.
    pub clean: Padded,
    /// Dead letters acknowledged.
    pub dead: Padded,
    /// Messages not produced (suppressed people).
    pub suppressed: Padded,
}

impl Counts {
    /// Counts one finished message.
    pub fn add(&self, how: Finished) {
        let c = match how {
            Finished::Clean => &self.clean,
            Finished::DeadLetter => &self.dead,
            Finished::Suppressed => &self.suppressed,
            Finished::NoOutput => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A lane's consumer callbacks: log lines, errors, lag statistics, and
/// rebalances (which let the lane's delivery finish revoked partitions).
pub struct LaneContext {
    common: Arc<Common>,
    tracks: Mutex<Tracks>,
    delivery: OnceLock<Arc<dyn Delivery>>,
    /// Where the lane reads its partitions' messages (taken in
    /// `pre_rebalance`, before they are assigned); `None` once the lane
    /// is closing.
    feed: Mutex<Option<Arc<PartitionFeed>>>,
    /// The lane has finished and committed what it consumed (`close`);
    /// what follows is its consumer leaving the group.
    closed: AtomicBool,
}

impl LaneContext {
    fn tracks(&self) -> std::sync::MutexGuard<'_, Tracks> {
        self.tracks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A lane's consumer.
pub type LaneConsumer = BaseConsumer<LaneContext>;

impl ClientContext for LaneContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        crate::kafka::log("consumer", level, fac, msg);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.common
            .telemetry
            .kafka_error("consumer", &crate::kafka::error_kind(&error), reason);
        self.common.refused("consumer", &error, None);
    }
    fn stats(&self, stats: Statistics) {
        let view = crate::kafka::broker_view(&stats);
        self.common.telemetry.brokers("consumer", &stats.name, view);
        let inputs = &self.common.cfg.kafka.input_topics;
        for (topic, t) in &stats.topics {
            if !inputs.contains(topic) {
                continue;
            }
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.consumer_lag >= 0 {
                    self.common.telemetry.lag(topic, *p, ps.consumer_lag);
                }
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerContext for LaneContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Before the assignment starts fetching: every message of these
            // partitions goes to the lane's feed, none to the consumer's
            // own queue first.
            let feed = self.feed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(feed) = feed.as_ref() {
                for e in tpl.elements() {
                    feed.take(consumer.client(), e.topic(), e.partition());
                }
            }
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<Arc<Track>> = {
                let mut tracks = self.tracks();
                tpl.elements()
                    .iter()
                    .filter_map(|e| tracks.remove(e.topic(), e.partition()))
                    .collect()
            };
            let mut deadline = Instant::now() + REVOKE_DRAIN;
            if let Some(d) = self.common.deadline() {
                deadline = deadline.min(d);
            }
            if let Some(d) = self.delivery.get() {
                d.revoking(&self.common, consumer, &revoked, deadline);
            }
            self.common.telemetry.clear_lag();
            self.common
                .telemetry
                .rebalance("revoke", &describe(tpl), tpl.count());
        }
    }
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // librdkafka keeps a partition's pause across a revoke and a
                // new assignment. Partitions paused for backpressure before
                // a rebalance (a session timeout during an outage) would stay
                // paused for good if the lane resumed while it held none:
                // resume what is assigned; a lane whose budget is still spent
                // pauses them again within 100 ms.
                if let Err(e) = consumer.resume(tpl) {
                    crate::kafka::report(&self.common.telemetry, "consumer", &e);
                }
                self.common.health.joined.store(true, Ordering::Relaxed);
                self.common
                    .telemetry
                    .rebalance("assign", &describe(tpl), tpl.count());
            }
            Rebalance::Error(e) => {
                self.common
                    .telemetry
                    .kafka_error("consumer", "rebalance", &e.to_string())
            }
            Rebalance::Revoke(_) => {}
        }
    }
    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // Leaving the group after `close` committed everything: the
            // revoke's commit repeats those offsets, and a group that
            // another lane's leaving is rebalancing refuses it. Nothing is
            // lost, and there is no next interval to retry in.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress))
                if self.closed.load(Ordering::Acquire) =>
            {
                tracing::debug!("the group refused the leaving lane's repeated commit (rebalancing); its offsets were committed at close");
            }
            Err(e) => self.common.telemetry.committed(false, &e.to_string()),
            Ok(()) => self.common.telemetry.committed(true, ""),
        }
    }
}

/// The consumer settings this service needs; `kafka.consumer` adds to
/// them (and cannot change the offset handling).
const CONSUMER_BASE: &[(&str, &str)] = &[
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("statistics.interval.ms", "5000"),
    // librdkafka backs a fetch off for `fetch.queue.backoff.ms` (1 s by
    // default) while the prefetch queue is over `queued.max.messages.kbytes`;
    // with a queue smaller than one fetch (`fetch.max.bytes`, 50 MiB by
    // default) that stalled consumption at a tenth of the broker's pace.
    // Measured: 30k -> 106k msg/s in the pipeline bench.
    ("queued.max.messages.kbytes", "32768"),
    ("fetch.max.bytes", "8388608"),
    ("fetch.queue.backoff.ms", "20"),
];

/// One lane, created and subscribed, not yet running.
pub struct Lane {
    /// Dropped before `consumer` (see `Drop`): librdkafka requires a
    /// consumer's queues destroyed before it is closed.
    feed: Option<Arc<PartitionFeed>>,
    consumer: LaneConsumer,
    delivery: Arc<dyn Delivery>,
    common: Arc<Common>,
}

impl Lane {
    /// Creates lane `index`'s consumer and its delivery from `plan` (with
    /// exactly-once, its producer, transactions initialized).
    pub fn new(common: &Arc<Common>, plan: &Plan, index: usize) -> Result<Lane, PipelineError> {
        let cfg = &common.cfg;
        let mut base = CONSUMER_BASE.to_vec();
        base.push(("group.id", &cfg.kafka.group_id));
        if cfg.kafka.delivery == DeliveryMode::ExactlyOnce {
            // Read only committed input; offsets are committed by the
            // transactions, never by the consumer itself.
            base.retain(|(k, _)| *k != "enable.auto.commit");
            base.push(("enable.auto.commit", "false"));
            base.push(("isolation.level", "read_committed"));
        }
        let cc = crate::kafka::client_config(
            cfg,
            ClientRole::Consumer,
            &base,
            common.password.as_ref(),
        )?;
        let consumer: LaneConsumer = cc.create_with_context(LaneContext {
            common: common.clone(),
            tracks: Mutex::default(),
            delivery: OnceLock::new(),
            feed: Mutex::new(None),
            closed: AtomicBool::new(false),
        })?;
        let delivery = plan.lane(common, index)?;
        let _ = consumer.context().delivery.set(delivery.clone());
        // Last, after every step that can fail, so the `Lane` (whose `Drop`
        // keeps the order) owns it from its creation on.
        // SAFETY: the feed is dropped before the consumer: `Lane`'s `Drop`
        // takes the context's reference and its own before its fields
        // (the consumer among them) are dropped, and no other reference
        // is made (the context's is only borrowed, in `pre_rebalance`).
        let feed = Arc::new(unsafe { PartitionFeed::new(consumer.client()) });
        *consumer
            .context()
            .feed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(feed.clone());
        Ok(Lane {
            feed: Some(feed),
            consumer,
            delivery,
            common: common.clone(),
        })
    }

    /// SASL credential updates for this lane's two clients.
    pub fn credential_targets(self: &Arc<Self>) -> Vec<crate::kafka::sasl::Target> {
        let (a, b) = (self.clone(), self.clone());
        vec![
            Box::new(move |u, p| crate::kafka::sasl::set_credentials(a.consumer.client(), u, p)),
            Box::new(move |u, p| crate::kafka::sasl::set_credentials(b.delivery.client(), u, p)),
        ]
    }

    /// Whether this lane's producer gets metadata for `topic` (readiness).
    pub fn reaches_broker(&self, topic: &str) -> bool {
        self.delivery
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(3))
            .is_ok()
    }

    /// Joins the group for `topics`.
    pub fn subscribe(&self, topics: &[&str]) -> KafkaResult<()> {
        self.consumer.subscribe(topics)
    }

    /// The lane's loop, on its own thread, until shutdown or a fatal
    /// error; then it finishes what is in flight and commits. Returns the
    /// messages left unfinished.
    ///
    /// Messages come from the lane's feed a batch at a time; the group's
    /// events (rebalances, commits, errors) are served between batches,
    /// never while a batch is half handled. Every message of a batch is
    /// handled in order, or, when the output stays blocked, given back
    /// (its partition is sought to it): a partition never goes on past a
    /// message that was not handled.
    pub fn run(&self) -> usize {
        let c = &*self.common;
        let client = self.consumer.client();
        let Some(feed) = self.feed.as_deref() else {
            return 0;
        };
        let mut work = Work::new(c.rules.current(), c.sealer.clone());
        let mut batch = Batch::new(client, BATCH);
        // The next message of `batch` to handle.
        let mut next = 0;
        let mut consumed_at = Instant::now();
        // Since when the budget is spent, and whether the lane paused its
        // partitions for it.
        let mut full_since: Option<Instant> = None;
        let mut paused_at: Option<Instant> = None;
        let poll_wait = match c.cfg.kafka.delivery {
            DeliveryMode::AtLeastOnce => Duration::from_millis(50),
            DeliveryMode::ExactlyOnce => (c.cfg.kafka.transaction.interval / 4)
                .clamp(Duration::from_millis(1), Duration::from_millis(50)),
        };
        // Whether the last poll waited and found nothing.
        let mut caught_up = false;
        while !c.stopping() {
            if let Err(e) = self.delivery.tick(c, &self.consumer, caught_up) {
                c.fail(e.to_string());
                break;
            }
            c.metrics.in_flight(c.budget.messages(), c.budget.bytes());
            if c.budget.full() {
                let since = *full_since.get_or_insert_with(Instant::now);
                if since.elapsed() < PAUSE_AFTER {
                    // A spent budget is most often freed within
                    // milliseconds by acknowledgements: wait without
                    // polling. (Pausing and resuming partitions drops
                    // librdkafka's prefetched messages and restarts their
                    // fetches, which stalled the lane for about a second.)
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                // The output is slow or gone: give back what the batch
                // still holds, pause (again every 100 ms: a rebalance may
                // have assigned partitions that are not paused) and keep
                // serving the group.
                if next < batch.len() {
                    self.give_back(&batch, next);
                    batch.clear();
                    next = 0;
                }
                if paused_at.is_none_or(|t| t.elapsed() > Duration::from_millis(100)) {
                    if let Ok(a) = self.consumer.assignment() {
                        let _ = self.consumer.pause(&a);
                    }
                    paused_at = Some(Instant::now());
                }
                self.serve_group(&mut work, Duration::from_millis(5));
                continue;
            }
            full_since = None;
            if paused_at.take().is_some() {
                if let Ok(a) = self.consumer.assignment() {
                    let _ = self.consumer.resume(&a);
                }
            }
            if next < batch.len() {
                // Handle until the batch is done, the budget spent or the
                // lane stopping.
                for m in batch.iter().skip(next) {
                    if c.stopping() || c.budget.full() {
                        break;
                    }
                    next += 1;
                    match m.error() {
                        Some(e) => self.consumer_error(&e),
                        None => {
                            if let Err(e) = self.handle(&mut work, &m, consumed_at) {
                                c.fail(e.to_string());
                            }
                        }
                    }
                }
                work.count_consumed(c);
                continue;
            }
            // The batch is done: the group's events, then the next batch.
            self.serve_group(&mut work, Duration::ZERO);
            feed.consume(client, poll_wait, &mut batch);
            next = 0;
            caught_up = batch.is_empty();
            if batch.is_empty() {
                work.idle(c);
            } else {
                consumed_at = Instant::now();
                c.wall.rebase(consumed_at);
            }
        }
        drop(batch);
        work.idle(c);
        let deadline = c
            .deadline()
            .unwrap_or_else(|| Instant::now() + c.cfg.shutdown.timeout);
        let unfinished = self.delivery.close(c, &self.consumer, deadline);
        self.consumer
            .context()
            .closed
            .store(true, Ordering::Release);
        unfinished
    }

    /// Serves the consumer's own queue: rebalances, commit results,
    /// errors, and any message that reached it instead of the feed
    /// (handled like the others, in order).
    fn serve_group(&self, work: &mut Work, wait: Duration) {
        let c = &*self.common;
        let mut wait = wait;
        loop {
            match self.consumer.poll(wait) {
                None => return,
                Some(Err(e)) => self.consumer_error(&e),
                Some(Ok(m)) => {
                    if let Err(e) = self.handle(work, &m, Instant::now()) {
                        c.fail(e.to_string());
                    }
                    work.count_consumed(c);
                }
            }
            if c.stopping() {
                return;
            }
            wait = Duration::ZERO;
        }
    }

    fn consumer_error(&self, e: &KafkaError) {
        let c = &*self.common;
        crate::kafka::report(&c.telemetry, "consumer", e);
        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            c.fail(e.to_string());
        }
        // Which topic: the error does not say; the broker does.
        let topic = (e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed))
            .then(|| crate::kafka::refused_topic(self.consumer.client(), &c.reads))
            .flatten();
        c.refused("consumer", e, topic.as_deref());
    }

    /// The output stayed blocked with messages of `batch` from `from` on
    /// not handled: each of their partitions is sought back to its first
    /// one, so they are fetched again (librdkafka's position is already
    /// past the whole batch).
    fn give_back(&self, batch: &Batch<'_>, from: usize) {
        let mut first: Vec<(String, i32, i64)> = Vec::new();
        for m in batch.iter().skip(from) {
            if m.error().is_none()
                && !first
                    .iter()
                    .any(|(t, p, _)| t == m.topic() && *p == m.partition())
            {
                first.push((m.topic().to_string(), m.partition(), m.offset()));
            }
        }
        for (topic, partition, offset) in first {
            if let Err(e) = self.consumer.seek(
                &topic,
                partition,
                rdkafka::Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                crate::kafka::report(&self.common.telemetry, "consumer", &e);
                // Not sought: the lane must not go on past the gap.
                self.common.fail(format!(
                    "could not rewind {topic}/{partition} to {offset} after the output stayed blocked: {e}"
                ));
            }
        }
    }

    fn handle(
        &self,
        work: &mut Work,
        m: &impl Message<Headers = rdkafka::message::BorrowedHeaders>,
        consumed_at: Instant,
    ) -> Result<(), DeliveryError> {
        let c = &*self.common;
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        if let Some(p) = c.privacy.as_ref().filter(|p| p.topic != topic) {
            // Every request acknowledged before this event was produced is
            // applied before it is judged.
            if !work.released(topic, partition, offset) {
                match p.wait_released(topic, partition, offset, || c.stopping()) {
                    Some(mark) => work.release(topic, partition, mark),
                    // Stopping: not handled, so consumed again later.
                    None => return Ok(()),
                }
            }
        }
        work.tally(c, topic);
        work.follow(c);
        let track = self.consumer.context().tracks().get(topic, partition);
        let input = Input {
            topic,
            partition,
            offset,
            key: m.key(),
            payload: m.payload(),
            headers: m.headers(),
        };
        let Work {
            router,
            scratch,
            out,
            since_flush,
            timed,
            ..
        } = work;
        let routed = match &c.privacy {
            Some(p) if p.topic == topic => match router.request(&input) {
                RequestRecord::Instead(routed) => routed,
                RequestRecord::Apply(r) => {
                    // This replica's own set holds the request before its
                    // commands (or the person's next events) go out.
                    p.wait_applied(partition, offset, || c.stopping());
                    let (person_digest, key_id) = p.suppressions.audit_digest(&r);
                    let audit = DeletionAudit {
                        request_id: r.request_id.clone(),
                        person_digest,
                        key_id,
                    };
                    router.request_applied(&input, &r, audit, scratch, out)
                }
            },
            privacy => {
                // An empty set suppresses no one: no identity scan.
                let set = privacy
                    .as_ref()
                    .map(|p| &p.suppressions)
                    .filter(|s| !s.is_empty());
                let suppressed = |id: Id<'_>| set.is_some_and(|s| s.holds(id));
                let suppressed: Option<&dyn Fn(Id<'_>) -> bool> = set.map(|_| &suppressed as _);
                // One message in 16 is timed (two clock reads each).
                *timed = timed.wrapping_add(1);
                let start = (*timed % 16 == 0).then(Instant::now);
                let routed = router.event(&input, suppressed, scratch, out);
                if let Some(start) = start {
                    c.metrics.sanitized(start.elapsed().as_secs_f64());
                }
                // A suppressed person's event goes nowhere, the inventory
                // included.
                if let (Some(p), None) = (m.payload(), routed.suppressed_by) {
                    if let Some(feed) = &c.inventory {
                        feed.offer(p);
                    }
                    if let Some(feed) = &c.shadow {
                        use super::shadow::Made;
                        let made = match (&routed.outcome, &routed.dead_letter) {
                            (_, Some(d)) => Made::DeadLetter(d.code.to_string()),
                            (Outcome::Clean, None)
                                if routed.payloads.len() == 1
                                    && routed.dead_calls.is_empty()
                                    && routed.suppressed_calls == 0 =>
                            {
                                Made::Output(routed.payloads[0].to_vec())
                            }
                            _ => Made::Other,
                        };
                        feed.offer(topic, partition, offset, p, made);
                    }
                }
                routed
            }
        };
        if let Some(d) = &routed.dead_letter {
            c.telemetry
                .dead_letter(topic, partition, offset, d.code, &d.detail);
        }
        for d in &routed.dead_calls {
            let d = &d.dead_letter;
            c.telemetry
                .dead_letter(topic, partition, offset, d.code, &d.detail);
        }
        if let Some(by) = routed.suppressed_by {
            c.telemetry.suppressed(topic, partition, offset, by.name());
        }
        if routed.suppressed_calls > 0 {
            c.telemetry.batch_calls_suppressed(routed.suppressed_calls);
        }
        *since_flush += 1;
        if *since_flush >= 256 {
            flush_counts(scratch, router.sanitizer(), &c.telemetry);
            *since_flush = 0;
        }
        let consumed = Consumed {
            track,
            offset,
            timestamp: m.timestamp().to_millis(),
            consumed_at,
        };
        self.delivery.send(c, consumed, routed)
    }
}

/// Messages taken from the feed at a time. Each waits for those before it
/// in its batch (at default rules about 10 us each), so batches stay
/// small: 64 took the lane's share of consume-to-acknowledge at half rate
/// from up to 9 ms to under 1 ms, at no cost in throughput.
const BATCH: usize = 64;

impl Drop for Lane {
    fn drop(&mut self) {
        // The feed goes before the consumer closes (librdkafka requires
        // it): the context's reference first, then the lane's own.
        self.consumer
            .context()
            .feed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.feed.take();
    }
}

/// A lane's reusable buffers and the rules it routes with.
struct Work {
    router: Router,
    scratch: Scratch,
    out: Vec<u8>,
    since_flush: u32,
    /// Messages routed (one in 16 is timed).
    timed: u32,
    /// Messages consumed per topic of `Common::reads` since the last
    /// count (counted a batch at a time).
    consumed: Vec<u64>,
    /// The privacy gate's released marks, as last read.
    released: HashMap<String, HashMap<i32, i64>>,
}

impl Work {
    fn new(s: Arc<Sanitizer>, seal: Option<Arc<Sealer>>) -> Work {
        Work {
            router: Router::new(s, seal),
            scratch: Scratch::default(),
            out: Vec::with_capacity(64 * 1024),
            since_flush: 0,
            timed: 0,
            consumed: Vec::new(),
            released: HashMap::new(),
        }
    }

    /// Whether the event at `offset` is below the last released mark read.
    fn released(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.released
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|&mark| offset < mark)
    }

    fn release(&mut self, topic: &str, partition: i32, mark: i64) {
        match self.released.get_mut(topic) {
            Some(p) => {
                p.insert(partition, mark);
            }
            None => {
                self.released
                    .insert(topic.to_string(), HashMap::from([(partition, mark)]));
            }
        }
    }

    /// Counts a message of `topic` consumed (reported by
    /// [`Work::count_consumed`]).
    fn tally(&mut self, c: &Common, topic: &str) {
        if self.consumed.len() != c.reads.len() {
            self.consumed.resize(c.reads.len(), 0);
        }
        if let Some(i) = c.reads.iter().position(|t| t == topic) {
            self.consumed[i] += 1;
        }
    }

    /// Reports the messages consumed since the last report.
    fn count_consumed(&mut self, c: &Common) {
        let mut all = 0;
        for (i, n) in self.consumed.iter_mut().enumerate() {
            if *n > 0 {
                c.metrics.consumed(&c.reads[i], *n);
                all += *n;
                *n = 0;
            }
        }
        if all > 0 {
            c.counts.consumed.fetch_add(all, Ordering::Relaxed);
        }
    }

    /// Switches to the rules in use if they were reloaded.
    fn follow(&mut self, c: &Common) {
        if !c.rules.is_current(self.router.sanitizer()) {
            flush_counts(&mut self.scratch, self.router.sanitizer(), &c.telemetry);
            self.router = Router::new(c.rules.current(), c.sealer.clone());
        }
    }

    /// Nothing arrived: report the rule counts so a quiet service shows them.
    fn idle(&mut self, c: &Common) {
        self.count_consumed(c);
        if self.since_flush > 0 {
            flush_counts(&mut self.scratch, self.router.sanitizer(), &c.telemetry);
            self.since_flush = 0;
        }
    }
}

fn flush_counts(scratch: &mut Scratch, s: &Sanitizer, t: &Telemetry) {
    scratch.drain_rule_counts(|i, n| t.rule_actions(s.rule_id(i), s.rule_action(i), n));
}
