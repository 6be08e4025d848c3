//! Everything that happens in the service, each in one place that logs it
//! and counts it. Metric names follow `event_sanitizer_<noun>_<unit>`;
//! labels are bounded (topics, partitions, rule ids, reason codes), never a
//! payload value or a user id. `docs/operations.md` lists every metric.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The service's metrics, registered once and shared (`Arc`).
pub struct Telemetry {
    registry: Registry,
    messages_in: IntCounterVec,
    messages_out: IntCounterVec,
    dead_letters: IntCounterVec,
    rule_actions: IntCounterVec,
    processing: Histogram,
    delay: Histogram,
    lag: IntGaugeVec,
    in_flight: IntGauge,
    rule_set: GaugeVec,
    rule_set_loaded: Gauge,
    reloads: IntCounterVec,
    kafka_errors: IntCounterVec,
    produce_retries: IntCounter,
    commits: IntCounterVec,
    rebalances: IntCounterVec,
    _build: IntGaugeVec,
    added_latency: HistogramVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let messages_in = counter(
            &r,
            "event_sanitizer_messages_in_total",
            "Messages consumed, by input topic.",
            &["topic"],
        );
        let messages_out = counter(&r, "event_sanitizer_messages_out_total", "Messages acknowledged by the broker, by output topic and outcome (clean, dead_letter).", &["topic", "outcome"]);
        let dead_letters = counter(
            &r,
            "event_sanitizer_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            &["reason"],
        );
        let rule_actions = counter(
            &r,
            "event_sanitizer_rule_actions_total",
            "Actions applied, by rule id and action.",
            &["rule", "action"],
        );
        let processing = Histogram::with_opts(
            HistogramOpts::new(
                "event_sanitizer_processing_seconds",
                "Time to sanitize one message.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2,
            ]),
        )
        .expect("valid");
        r.register(Box::new(processing.clone())).expect("once");
        let delay = Histogram::with_opts(
            HistogramOpts::new(
                "event_sanitizer_end_to_end_delay_seconds",
                "Broker acknowledgement time minus the input message's timestamp.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
        )
        .expect("valid");
        r.register(Box::new(delay.clone())).expect("once");
        let lag = IntGaugeVec::new(
            Opts::new(
                "event_sanitizer_consumer_lag_messages",
                "Consumer lag per assigned partition (librdkafka statistics).",
            ),
            &["topic", "partition"],
        )
        .expect("valid");
        r.register(Box::new(lag.clone())).expect("once");
        let in_flight = IntGauge::new(
            "event_sanitizer_in_flight_messages",
            "Messages consumed and not yet acknowledged by the broker.",
        )
        .expect("valid");
        r.register(Box::new(in_flight.clone())).expect("once");
        let rule_set = GaugeVec::new(
            Opts::new(
                "event_sanitizer_rule_set_info",
                "The rule set in use (value 1).",
            ),
            &["name", "hash"],
        )
        .expect("valid");
        r.register(Box::new(rule_set.clone())).expect("once");
        let rule_set_loaded = Gauge::new(
            "event_sanitizer_rule_set_loaded_timestamp_seconds",
            "When the rule set in use was loaded (Unix time).",
        )
        .expect("valid");
        r.register(Box::new(rule_set_loaded.clone())).expect("once");
        let reloads = counter(
            &r,
            "event_sanitizer_rule_reloads_total",
            "Rule file reloads, by result (success, failure).",
            &["result"],
        );
        let kafka_errors = counter(
            &r,
            "event_sanitizer_kafka_errors_total",
            "Errors reported by the Kafka clients, by client and kind.",
            &["client", "kind"],
        );
        let produce_retries = IntCounter::new(
            "event_sanitizer_produce_retries_total",
            "Records produced again after a delivery failure.",
        )
        .expect("valid");
        r.register(Box::new(produce_retries.clone())).expect("once");
        let commits = counter(
            &r,
            "event_sanitizer_offset_commits_total",
            "Offset commits, by result.",
            &["result"],
        );
        let rebalances = counter(
            &r,
            "event_sanitizer_rebalances_total",
            "Partition assignments and revocations.",
            &["kind"],
        );
        let build = IntGaugeVec::new(
            Opts::new("event_sanitizer_build_info", "Build information (value 1)."),
            &["version"],
        )
        .expect("valid");
        r.register(Box::new(build.clone())).expect("once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "event_sanitizer_added_latency_seconds",
                "Consume to broker acknowledgement, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid");
        r.register(Box::new(latency.clone())).expect("once");
        for reason in crate::engine::DeadLetterReason::CODES {
            dead_letters.with_label_values(&[reason]).inc_by(0);
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]).inc_by(0);
            commits.with_label_values(&[result]).inc_by(0);
        }
        Telemetry {
            registry: r,
            messages_in,
            messages_out,
            dead_letters,
            rule_actions,
            processing,
            delay,
            lag,
            in_flight,
            rule_set,
            rule_set_loaded,
            reloads,
            kafka_errors,
            produce_retries,
            commits,
            rebalances,
            _build: build,
            added_latency: latency,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A message was consumed.
    pub fn consumed(&self, topic: &str) {
        self.messages_in.with_label_values(&[topic]).inc();
        self.in_flight.inc();
    }

    /// A message was sanitized in `seconds`.
    pub fn sanitized(&self, seconds: f64) {
        self.processing.observe(seconds);
    }

    /// The broker acknowledged a message's output.
    pub fn delivered(&self, topic: &str, clean: bool, added: f64, delay: Option<f64>) {
        let outcome = if clean { "clean" } else { "dead_letter" };
        self.messages_out.with_label_values(&[topic, outcome]).inc();
        self.added_latency
            .with_label_values(&[outcome])
            .observe(added);
        if let Some(d) = delay {
            self.delay.observe(d.max(0.0));
        }
        self.in_flight.dec();
    }

    /// A message became a dead letter. Logged with where it came from and
    /// why; never with its content.
    pub fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &crate::engine::DeadLetterReason,
    ) {
        self.dead_letters.with_label_values(&[reason.code()]).inc();
        tracing::warn!(target: "event_sanitizer::dead_letter", topic, partition, offset, reason = reason.code(), detail = %reason, "message sent to the dead-letter topic");
    }

    /// Per-rule action counts from a worker's scratch.
    pub fn rule_actions(&self, rule: &str, action: &str, n: u64) {
        self.rule_actions
            .with_label_values(&[rule, action])
            .inc_by(n);
    }

    /// A rule set was loaded (at start or by a reload).
    pub fn rule_set_loaded(&self, name: &str, hash: &str, file: &str, reload: bool) {
        self.rule_set.reset();
        self.rule_set.with_label_values(&[name, hash]).set(1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.rule_set_loaded.set(now);
        if reload {
            self.reloads.with_label_values(&["success"]).inc();
        }
        tracing::info!(target: "event_sanitizer::audit", event = "rule_set_loaded", rule_set = name, hash, source = file, reload, "rule set loaded");
    }

    /// A changed rule file was rejected; the running rules stay.
    pub fn reload_failed(&self, file: &str, errors: &str) {
        self.reloads.with_label_values(&["failure"]).inc();
        tracing::error!(target: "event_sanitizer::audit", event = "rule_set_rejected", source = file, errors, "the changed rule file was rejected; the running rules are kept");
    }

    /// A Kafka client reported an error.
    pub fn kafka_error(&self, client: &str, kind: &str, error: &str) {
        self.kafka_errors.with_label_values(&[client, kind]).inc();
        tracing::warn!(client, kind, error, "kafka client error");
    }

    /// A record is produced again after a failed delivery.
    pub fn produce_retry(&self, topic: &str, error: &str) {
        self.produce_retries.inc();
        tracing::warn!(topic, error, "delivery failed; producing the record again");
    }

    /// An offset commit finished.
    pub fn committed(&self, ok: bool, detail: &str) {
        self.commits
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            tracing::debug!("offsets committed");
        } else {
            tracing::warn!(
                error = detail,
                "offset commit failed; it is retried on the next interval"
            );
        }
    }

    /// Partitions were assigned or revoked.
    pub fn rebalance(&self, kind: &str, partitions: &str) {
        self.rebalances.with_label_values(&[kind]).inc();
        tracing::info!(kind, partitions, "rebalance");
    }

    /// Consumer lag for one partition.
    pub fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// Forget lag gauges (after a revoke).
    pub fn clear_lag(&self) {
        self.lag.reset();
    }
}
