//! Everything that happens in the service, each in one place that logs it
//! and counts it. Metric names follow `event_sanitizer_<noun>_<unit>`;
//! labels are bounded (topics, partitions, rule ids, reason codes), never a
//! payload value or a user id. `docs/operations.md` lists every metric.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// How often a repeated log line of one kind is written.
pub const THROTTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// Lets a log line of each key through once per [`THROTTLE_WINDOW`] and
/// counts the ones held back.
#[derive(Default)]
pub struct Throttle {
    keys: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

impl Throttle {
    /// `Some(held back since the last one)` when a line for `key` is due.
    pub fn admit(&self, key: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match keys.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < THROTTLE_WINDOW => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                keys.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// What a Kafka client's statistics say of its brokers.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerView {
    /// Brokers it is connected to.
    pub up: usize,
    /// Brokers it needs and cannot reach.
    pub down: usize,
    /// Partitions it uses whose leader it cannot reach.
    pub partitions_unreachable: usize,
}

impl BrokerView {
    fn add(self, o: BrokerView) -> BrokerView {
        BrokerView {
            up: self.up + o.up,
            down: self.down + o.down,
            partitions_unreachable: self.partitions_unreachable + o.partitions_unreachable,
        }
    }

    /// Whether it reaches everything it uses.
    pub fn reachable(&self) -> bool {
        self.up > 0 && self.down == 0 && self.partitions_unreachable == 0
    }
}

/// What each Kafka client last said of its brokers.
#[derive(Default)]
struct BrokerViews {
    /// (kind of client, instance) -> its view.
    views: std::collections::HashMap<(String, String), BrokerView>,
    /// Per kind of client: whether it reached its brokers at the last report.
    reachable: std::collections::HashMap<String, bool>,
}

/// The service's metrics, registered once and shared (`Arc`).
pub struct Telemetry {
    /// The clean-topic audit and the canaries.
    pub audit: AuditMetrics,
    /// Shadow rules.
    pub shadow: ShadowMetrics,
    registry: Registry,
    messages_in: IntCounterVec,
    messages_out: IntCounterVec,
    dead_letters: IntCounterVec,
    rule_actions: IntCounterVec,
    processing: Histogram,
    delay: Histogram,
    lag: IntGaugeVec,
    in_flight: IntGauge,
    in_flight_bytes: IntGauge,
    in_flight_limit: IntGaugeVec,
    transactions: IntCounterVec,
    transaction_seconds: HistogramVec,
    transaction_messages: Histogram,
    rule_set: GaugeVec,
    rule_set_loaded: Gauge,
    /// 1 while a rule file on disk is rejected (the previous rules serve).
    rule_file_rejected: IntGaugeVec,
    /// 1 while the SASL password file on disk could not be applied.
    sasl_rejected: IntGauge,
    reloads: IntCounterVec,
    kafka_errors: IntCounterVec,
    /// Kafka client errors are logged at most once per kind per window.
    kafka_error_logs: Throttle,
    brokers_up: IntGaugeVec,
    brokers_down: IntGaugeVec,
    partitions_unreachable: IntGaugeVec,
    broker_state: std::sync::Mutex<BrokerViews>,
    produce_retries: IntCounter,
    commits: IntCounterVec,
    rebalances: IntCounterVec,
    assigned: IntGauge,
    _build: IntGaugeVec,
    added_latency: HistogramVec,
    /// The (name, hash) shown by `rule_set` for each rule file.
    rule_sets: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
    webhooks_received: IntCounter,
    webhooks_verified: IntCounter,
    webhooks_rejected: IntCounterVec,
    webhooks_produced: IntCounterVec,
    webhooks_unavailable: IntCounter,
    webhook_connections_refused: IntCounter,
    /// Rejections since the last summary line (the audit stream gets one
    /// line per window, never one per request).
    webhook_window: std::sync::Mutex<RejectionWindow>,
    webhook_seconds: HistogramVec,
    key_rotations: IntCounter,
    privacy: PrivacyMetrics,
}

/// The delivery path's metrics, resolved for its topics
/// ([`Telemetry::delivery`]): each call is a few atomic operations.
#[derive(Clone)]
pub struct DeliveryMetrics {
    consumed: Vec<(String, IntCounter)>,
    suppressed: Vec<(String, IntCounter)>,
    clean: IntCounter,
    dead_letters: IntCounter,
    /// Consume to acknowledgement: clean, dead_letter, suppressed, no_output.
    latency: [Histogram; 4],
    delay: Histogram,
    processing: Histogram,
    in_flight: IntGauge,
    in_flight_bytes: IntGauge,
}

/// How a consumed message finished, for [`DeliveryMetrics::finished`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Clean records (or deletion commands) acknowledged.
    Clean,
    /// Its dead letter acknowledged.
    DeadLetter,
    /// Not produced: about a suppressed person.
    Suppressed,
    /// Nothing to produce.
    NoOutput,
}

impl DeliveryMetrics {
    fn of<'a>(v: &'a [(String, IntCounter)], topic: &str) -> Option<&'a IntCounter> {
        v.iter().find(|(t, _)| t == topic).map(|(_, c)| c)
    }

    /// `n` messages were consumed from `topic`.
    pub fn consumed(&self, topic: &str, n: u64) {
        if let Some(c) = Self::of(&self.consumed, topic) {
            c.inc_by(n);
        }
    }

    /// A message of `topic` finished `how`, `added` seconds after it was
    /// consumed; `delay` is acknowledgement time minus its timestamp.
    pub fn finished(&self, topic: &str, how: Finished, added: f64, delay: Option<f64>) {
        let i = match how {
            Finished::Clean => {
                self.clean.inc();
                0
            }
            Finished::DeadLetter => {
                self.dead_letters.inc();
                1
            }
            Finished::Suppressed => {
                if let Some(c) = Self::of(&self.suppressed, topic) {
                    c.inc();
                }
                2
            }
            Finished::NoOutput => 3,
        };
        self.latency[i].observe(added);
        if let (Some(d), Finished::Clean | Finished::DeadLetter) = (delay, how) {
            self.delay.observe(d.max(0.0));
        }
    }

    /// A message was sanitized in `seconds`.
    pub fn sanitized(&self, seconds: f64) {
        self.processing.observe(seconds);
    }

    /// Work in flight now.
    pub fn in_flight(&self, messages: usize, bytes: usize) {
        self.in_flight.set(messages as i64);
        self.in_flight_bytes.set(bytes as i64);
    }
}

/// How long webhook rejections are summed before one audit line.
pub const REJECTION_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// Webhook rejections not yet written to the audit stream.
#[derive(Default)]
struct RejectionWindow {
    since: Option<std::time::Instant>,
    counts: std::collections::BTreeMap<&'static str, u64>,
    peers: Vec<std::net::IpAddr>,
    path: String,
}

/// Privacy requests, suppression and credentials.
struct PrivacyMetrics {
    requests: IntCounterVec,
    suppressed_messages: IntCounterVec,
    suppressed_calls: IntCounter,
    commands: IntCounter,
    set_size: IntGauge,
    caught_up: IntGauge,
    rebuilds: IntCounter,
    sasl_reloads: IntCounterVec,
}

impl PrivacyMetrics {
    fn register(r: &Registry) -> PrivacyMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let requests = counter(r, "event_sanitizer_privacy_requests_total", "Privacy requests read from the requests topic by this replica, by action and result (applied, invalid, ignored).", &["action", "result"]);
        for action in ["delete", "suppress", "unsuppress"] {
            requests.with_label_values(&[action, "applied"]).inc_by(0);
        }
        requests
            .with_label_values(&["unknown", "invalid"])
            .inc_by(0);
        let sasl_reloads = counter(
            r,
            "event_sanitizer_sasl_credential_reloads_total",
            "SASL password file changes applied to the Kafka clients, by result.",
            &["result"],
        );
        for result in ["success", "failure"] {
            sasl_reloads.with_label_values(&[result]).inc_by(0);
        }
        PrivacyMetrics {
            requests,
            suppressed_messages: counter(r, "event_sanitizer_messages_suppressed_total", "Input messages not produced because every call in them is about a suppressed person (offsets committed), by input topic.", &["topic"]),
            suppressed_calls: counter1(r, "event_sanitizer_batch_calls_suppressed_total", "Calls left out of batches because they are about a suppressed person."),
            commands: counter1(r, "event_sanitizer_deletion_commands_total", "Deletion commands (User Suppressed, User Deleted) acknowledged on the clean topic."),
            set_size: gauge("event_sanitizer_suppression_set_size", "Identifiers (keyed digests) in this replica's suppression set."),
            caught_up: gauge("event_sanitizer_privacy_requests_caught_up", "1 once this replica has read the privacy-requests topic to its end at startup."),
            rebuilds: counter1(r, "event_sanitizer_suppression_set_rebuilds_total", "Suppression sets rebuilt from the requests topic (after the active hash key changed)."),
            sasl_reloads,
        }
    }
}

/// Shadow rules (`rules.shadow_file`): what the candidate would change.
pub struct ShadowMetrics {
    compared: IntCounterVec,
    differences: IntCounterVec,
}

impl ShadowMetrics {
    fn register(r: &Registry) -> ShadowMetrics {
        let compared = counter(r, "event_sanitizer_shadow_events_total", "Live events the shadow rules were run on, by result (same, different, skipped: the shadow thread was behind).", &["result"]);
        for result in ["same", "different", "skipped"] {
            compared.with_label_values(&[result]).inc_by(0);
        }
        ShadowMetrics {
            compared,
            differences: counter(r, "event_sanitizer_shadow_differences_total", "Differences between the candidate's output and the output produced, by kind (field_removed, field_added, field_changed, dead_letter_only_current, dead_letter_only_candidate, dead_letter_reason_differs) and the candidate's rule that decided.", &["kind", "rule"]),
        }
    }

    /// One event compared; `differences` are (kind, rule) pairs.
    pub fn compared(&self, differences: &[(&str, &str)]) {
        let result = if differences.is_empty() {
            "same"
        } else {
            "different"
        };
        self.compared.with_label_values(&[result]).inc();
        for (kind, rule) in differences {
            self.differences.with_label_values(&[kind, rule]).inc();
        }
    }

    /// An event the shadow thread could not take.
    pub fn skipped(&self) {
        self.compared.with_label_values(&["skipped"]).inc();
    }
}

/// The clean-topic audit and the canaries (`event-sanitizer audit`,
/// `canary.interval`): what they count and what they write to the audit
/// stream, in one place. Labels carry a detector or a kind, never a path
/// or a value.
pub struct AuditMetrics {
    records: IntCounter,
    not_json: IntCounter,
    findings: IntCounterVec,
    canaries_sent: IntCounter,
    canary_last_sent: IntGauge,
    canaries_arrived: IntCounter,
    canary_last_arrival: IntGauge,
    canary_leaks: IntCounterVec,
    unclassified: IntCounter,
}

impl AuditMetrics {
    fn register(r: &Registry) -> AuditMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        AuditMetrics {
            records: counter1(r, "event_sanitizer_audit_records_total", "Clean records the audit examined."),
            not_json: counter1(r, "event_sanitizer_audit_records_not_json_total", "Clean records the audit found not to be JSON."),
            findings: counter(r, "event_sanitizer_audit_findings_total", "What the audit found on the clean topic, by detector (a value detector, never_send_key, unhashed_key).", &["detector"]),
            canaries_sent: counter1(r, "event_sanitizer_canaries_sent_total", "Canary events this replica produced to its input topic."),
            canary_last_sent: gauge("event_sanitizer_canary_last_sent_timestamp_seconds", "When this replica last produced a canary (Unix seconds)."),
            canaries_arrived: counter1(r, "event_sanitizer_audit_canaries_arrived_total", "Canary events the audit read on the clean topic."),
            canary_last_arrival: gauge("event_sanitizer_audit_canary_last_sent_timestamp_seconds", "When the newest canary the audit has read was sent (Unix seconds): far behind time() means canaries stopped arriving."),
            canary_leaks: counter(r, "event_sanitizer_audit_canary_leaks_total", "Planted canary values found raw on the clean topic, by kind: any increase is a leak.", &["kind"]),
            unclassified: counter1(r, "event_sanitizer_unclassified_fields_total", "Field paths the inventory saw for the first time that no rule classifies (GET /inventory lists them)."),
        }
    }

    /// A field path no rule classifies, seen by the inventory for the
    /// first time: counted, and audited with the detectors that fired on
    /// its values (never a value).
    pub fn unclassified_field(&self, path: &str, detectors: &[&str]) {
        self.unclassified.inc();
        tracing::warn!(target: "event_sanitizer::audit", event = "unclassified_field", path, detectors = %detectors.join(","), "a field no rule classifies arrives");
    }

    /// Series at zero for every detector and canary kind, so an alert on
    /// `increase()` sees the first one.
    pub fn declare(&self, detectors: &[&str], kinds: &[&str]) {
        for d in detectors {
            self.findings.with_label_values(&[d]).inc_by(0);
        }
        for k in kinds {
            self.canary_leaks.with_label_values(&[k]).inc_by(0);
        }
    }

    /// Canaries read, canary values found raw, records not JSON: for the
    /// summary of `audit --once`.
    pub fn totals(&self) -> (u64, u64, u64) {
        use prometheus::core::Collector;
        let leaks = self
            .canary_leaks
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        (self.canaries_arrived.get(), leaks, self.not_json.get())
    }

    /// One clean record examined.
    pub fn record(&self) {
        self.records.inc();
    }

    /// A clean record that is not JSON.
    pub fn not_json(&self, topic: &str, partition: i32, offset: i64) {
        self.not_json.inc();
        tracing::error!(target: "event_sanitizer::audit", event = "audit_not_json", topic, partition, offset, "a clean record is not JSON");
    }

    /// A finding: counted, and written to the audit stream without value.
    pub fn finding(&self, topic: &str, partition: i32, offset: i64, path: &str, detector: &str) {
        self.findings.with_label_values(&[detector]).inc();
        tracing::warn!(target: "event_sanitizer::audit", event = "audit_finding", topic, partition, offset, path, detector, "the clean topic holds what should not be there");
    }

    /// A canary produced.
    pub fn canary_sent(&self, id: &str, sent_s: i64) {
        self.canaries_sent.inc();
        self.canary_last_sent.set(sent_s);
        tracing::debug!(canary = id, "canary produced");
    }

    /// A canary read back; `leaked` are the kinds found raw.
    pub fn canary_arrived(
        &self,
        id: &str,
        sent_s: i64,
        partition: i32,
        offset: i64,
        leaked: &[&str],
    ) {
        self.canaries_arrived.inc();
        if sent_s > self.canary_last_arrival.get() {
            self.canary_last_arrival.set(sent_s);
        }
        for kind in leaked {
            self.canary_leaks.with_label_values(&[kind]).inc();
        }
        if leaked.is_empty() {
            tracing::debug!(canary = id, "canary arrived clean");
        } else {
            tracing::error!(target: "event_sanitizer::audit", event = "canary_leaked", canary = id, partition, offset, kinds = %leaked.join(","), "a canary's planted values reached the clean topic raw: a rule no longer holds");
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter1(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
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
                "Time to sanitize one message (one message in 16 is timed).",
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
        let in_flight_bytes = IntGauge::new(
            "event_sanitizer_in_flight_bytes",
            "Output bytes handed to the producer and not yet acknowledged (bounded by limits.max_in_flight_bytes).",
        )
        .expect("valid");
        r.register(Box::new(in_flight_bytes.clone())).expect("once");
        let in_flight_limit = IntGaugeVec::new(
            Opts::new(
                "event_sanitizer_in_flight_limit",
                "The in-flight bounds (limits.max_in_flight, limits.max_in_flight_bytes), by unit (messages, bytes).",
            ),
            &["unit"],
        )
        .expect("valid metric");
        r.register(Box::new(in_flight_limit.clone())).expect("once");
        let transactions = counter(
            &r,
            "event_sanitizer_transactions_total",
            "Transactions ended with exactly-once delivery, by result (committed, aborted).",
            &["result"],
        );
        for result in ["committed", "aborted"] {
            transactions.with_label_values(&[result]).inc_by(0);
        }
        // What exactly-once costs, for its tuning (`kafka.transaction`) and
        // for a coordinator that answers slowly: how long ending a
        // transaction holds its lane, and how much each one carries.
        let transaction_seconds = HistogramVec::new(
            HistogramOpts::new(
                "event_sanitizer_transaction_seconds",
                "Time to end a transaction (exactly-once delivery: its records acknowledged, its offsets sent, the commit, or the abort after a failure), by result (committed, aborted). The lane consumes nothing meanwhile.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["result"],
        )
        .expect("valid");
        r.register(Box::new(transaction_seconds.clone()))
            .expect("once");
        let transaction_messages = Histogram::with_opts(
            HistogramOpts::new(
                "event_sanitizer_transaction_messages",
                "Input messages per ended transaction (exactly-once delivery; kafka.transaction.max_messages bounds it).",
            )
            .buckets(vec![
                1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0,
            ]),
        )
        .expect("valid");
        r.register(Box::new(transaction_messages.clone()))
            .expect("once");
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
        let rule_file_rejected = IntGaugeVec::new(
            Opts::new(
                "event_sanitizer_rule_file_rejected",
                "1 while the rule file on disk does not load (the previous rules are in use), by file.",
            ),
            &["file"],
        )
        .expect("valid metric");
        r.register(Box::new(rule_file_rejected.clone()))
            .expect("once");
        let sasl_rejected = IntGauge::new(
            "event_sanitizer_sasl_credentials_rejected",
            "1 while the SASL password file on disk could not be applied (the clients keep the old one).",
        )
        .expect("valid metric");
        r.register(Box::new(sasl_rejected.clone())).expect("once");
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
        let brokers = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["client"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let brokers_up = brokers(
            "event_sanitizer_brokers_up",
            "Brokers a Kafka client is connected to, by client (consumer, producer), from librdkafka's statistics.",
        );
        let brokers_down = brokers(
            "event_sanitizer_brokers_down",
            "Brokers a Kafka client needs and cannot reach (down or connecting), by client.",
        );
        let partitions_unreachable = brokers(
            "event_sanitizer_partitions_unreachable",
            "Partitions a Kafka client uses whose leader it cannot reach, by client.",
        );
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
        let produce_retries = counter1(
            &r,
            "event_sanitizer_produce_retries_total",
            "Records produced again after a delivery failure.",
        );
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
        let assigned = IntGauge::new(
            "event_sanitizer_assigned_partitions",
            "Input partitions this replica's lanes hold now (an uneven spread across replicas, or 0, shows here).",
        )
        .expect("valid");
        r.register(Box::new(assigned.clone())).expect("once");
        let build = IntGaugeVec::new(
            Opts::new("event_sanitizer_build_info", "Build information (value 1)."),
            &["version", "commit"],
        )
        .expect("valid");
        r.register(Box::new(build.clone())).expect("once");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("EVENT_SANITIZER_COMMIT")])
            .set(1);
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "event_sanitizer_added_latency_seconds",
                "Consume to broker acknowledgement (with exactly-once: to the transaction's commit), by outcome.",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["outcome"],
        )
        .expect("valid");
        r.register(Box::new(latency.clone())).expect("once");
        let webhooks_received = counter1(
            &r,
            "event_sanitizer_webhooks_received_total",
            "Webhook requests received.",
        );
        let webhooks_verified = counter1(
            &r,
            "event_sanitizer_webhooks_verified_total",
            "Webhook requests whose signature verified.",
        );
        let webhooks_rejected = counter(
            &r,
            "event_sanitizer_webhooks_rejected_total",
            "Webhook requests refused before anything was produced, by reason.",
            &["reason"],
        );
        let webhooks_produced = counter(
            &r,
            "event_sanitizer_webhooks_produced_total",
            "Verified webhooks acknowledged by the broker, by outcome (clean, dead_letter).",
            &["outcome"],
        );
        let webhooks_unavailable = counter1(
            &r,
            "event_sanitizer_webhooks_unavailable_total",
            "Verified webhooks answered 503 because the broker did not acknowledge them in time (the record may still have been written: deduplicate on sanitizer-webhook-body-sha256).",
        );
        let webhook_connections_refused = counter1(
            &r,
            "event_sanitizer_webhook_connections_refused_total",
            "Webhook connections closed at once because webhooks.max_connections were open.",
        );
        let webhook_seconds = HistogramVec::new(
            HistogramOpts::new(
                "event_sanitizer_webhook_request_seconds",
                "Webhook request to answer, by HTTP status.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0,
            ]),
            &["status"],
        )
        .expect("valid");
        r.register(Box::new(webhook_seconds.clone())).expect("once");
        for reason in crate::engine::DeadLetterReason::CODES {
            dead_letters.with_label_values(&[reason]).inc_by(0);
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]).inc_by(0);
            commits.with_label_values(&[result]).inc_by(0);
        }
        let key_rotations = counter1(
            &r,
            "event_sanitizer_hash_key_rotations_total",
            "Changes of the active hash key.",
        );
        let privacy = PrivacyMetrics::register(&r);
        let audit = AuditMetrics::register(&r);
        let shadow = ShadowMetrics::register(&r);
        Telemetry {
            audit,
            shadow,
            registry: r,
            messages_in,
            messages_out,
            dead_letters,
            rule_actions,
            processing,
            delay,
            lag,
            in_flight,
            in_flight_bytes,
            in_flight_limit,
            transactions,
            transaction_seconds,
            transaction_messages,
            rule_set,
            rule_set_loaded,
            rule_file_rejected,
            sasl_rejected,
            reloads,
            kafka_errors,
            kafka_error_logs: Throttle::default(),
            brokers_up,
            brokers_down,
            partitions_unreachable,
            broker_state: Default::default(),
            produce_retries,
            commits,
            rebalances,
            assigned,
            _build: build,
            added_latency: latency,
            rule_sets: Default::default(),
            webhooks_received,
            webhooks_verified,
            webhooks_rejected,
            webhooks_produced,
            webhooks_unavailable,
            webhook_connections_refused,
            webhook_window: Default::default(),
            webhook_seconds,
            key_rotations,
            privacy,
        }
    }

    /// Messages consumed and acknowledged so far (the sums of
    /// `event_sanitizer_messages_in_total` and `_messages_out_total`),
    /// without rendering every metric.
    pub fn messages_through(&self) -> (u64, u64) {
        use prometheus::core::Collector;
        let sum = |v: &IntCounterVec| -> u64 {
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        };
        (sum(&self.messages_in), sum(&self.messages_out))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// A message became a dead letter. Logged with where it came from and
    /// why; never with its content.
    pub fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        code: &str,
        detail: &dyn std::fmt::Display,
    ) {
        self.dead_letters.with_label_values(&[code]).inc();
        tracing::warn!(target: "event_sanitizer::audit", event = "dead_letter", topic, partition, offset, reason = code, detail = %detail, "message sent to the dead-letter topic");
    }

    /// Per-rule action counts from a worker's scratch.
    pub fn rule_actions(&self, rule: &str, action: &str, n: u64) {
        self.rule_actions
            .with_label_values(&[rule, action])
            .inc_by(n);
    }

    /// The in-flight bounds, for a saturation alert.
    pub fn in_flight_limits(&self, messages: usize, bytes: usize) {
        let set = |unit, n: usize| {
            self.in_flight_limit
                .with_label_values(&[unit])
                .set(i64::try_from(n).unwrap_or(i64::MAX))
        };
        set("messages", messages);
        set("bytes", bytes);
    }

    /// A rule set was loaded (at start or by a reload).
    pub fn rule_set_loaded(&self, name: &str, hash: &str, file: &str, key_id: &str, reload: bool) {
        // One series per rule file (events, webhooks): replace this file's.
        let previous = self
            .rule_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file.to_string(), (name.to_string(), hash.to_string()));
        if let Some((n, h)) = previous {
            let _ = self.rule_set.remove_label_values(&[&n, &h]);
        }
        self.rule_set.with_label_values(&[name, hash]).set(1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.rule_set_loaded.set(now);
        self.rule_file_rejected.with_label_values(&[file]).set(0);
        if reload {
            self.reloads.with_label_values(&["success"]).inc();
        }
        tracing::info!(target: "event_sanitizer::audit", event = "rule_set_loaded", rule_set = name, hash, source = file, key_id, reload, result = "loaded", "rule set loaded");
    }

    /// The active hash key changed: new digests (and the `sanitizer-key-id`
    /// header) use `to`. Audited with the ids, never the keys.
    pub fn hash_key_rotated(&self, from: &str, to: &str, ids: &[&str]) {
        self.key_rotations.inc();
        tracing::info!(target: "event_sanitizer::audit", event = "hash_key_rotated", from, to, key_ids = ?ids, "active hash key changed");
    }

    /// A shadow rule file compiled (at startup or on a change).
    pub fn shadow_loaded(&self, name: &str, hash: &str, file: &str) {
        tracing::info!(target: "event_sanitizer::audit", event = "shadow_rule_set_loaded", rule_set = name, hash, source = file, "shadow rules loaded: run beside the rules in use, never produced");
    }

    /// A changed shadow rule file that does not compile (the candidate in
    /// use stays).
    pub fn shadow_rejected(&self, file: &str, errors: &str) {
        tracing::error!(target: "event_sanitizer::audit", event = "shadow_rule_set_rejected", source = file, errors, "the changed shadow rule file was rejected; the candidate in use stays");
    }

    /// A changed rule file was rejected; the running rules stay.
    pub fn reload_failed(&self, file: &str, errors: &str) {
        self.reloads.with_label_values(&["failure"]).inc();
        self.rule_file_rejected.with_label_values(&[file]).set(1);
        tracing::error!(target: "event_sanitizer::audit", event = "rule_set_rejected", source = file, errors, result = "rejected", "the changed rule file was rejected; the running rules are kept");
    }

    /// A Kafka client reported an error: counted each time; logged the first time of a kind and then at most
    /// once per [`THROTTLE_WINDOW`], with how many were not logged (a broker
    /// down makes each client report every reconnect).
    pub fn kafka_error(&self, client: &str, kind: &str, error: &str) {
        self.kafka_errors.with_label_values(&[client, kind]).inc();
        if let Some(not_logged) = self.kafka_error_logs.admit(&format!("{client}/{kind}")) {
            tracing::warn!(client, kind, error, not_logged, "kafka client error");
        }
    }

    /// One client's view of its brokers (librdkafka statistics).
    /// `instance` tells the lanes' clients of one kind apart; the gauges
    /// sum them. Logged once when a kind of client loses what it uses and
    /// once when it is back. Returns that kind's view, summed.
    pub fn brokers(&self, client: &str, instance: &str, view: BrokerView) -> BrokerView {
        let mut st = self.broker_state.lock().unwrap_or_else(|e| e.into_inner());
        st.views
            .insert((client.to_string(), instance.to_string()), view);
        let all = st
            .views
            .iter()
            .filter(|((c, _), _)| c == client)
            .fold(BrokerView::default(), |a, (_, v)| a.add(*v));
        self.brokers_up
            .with_label_values(&[client])
            .set(all.up as i64);
        self.brokers_down
            .with_label_values(&[client])
            .set(all.down as i64);
        self.partitions_unreachable
            .with_label_values(&[client])
            .set(all.partitions_unreachable as i64);
        let reachable = all.reachable();
        match (st.reachable.insert(client.to_string(), reachable), reachable) {
            (Some(true) | None, false) => tracing::error!(
                client,
                brokers_up = all.up,
                brokers_down = all.down,
                partitions_unreachable = all.partitions_unreachable,
                "Kafka unreachable: its records wait (nothing is lost); see event_sanitizer_brokers_down, event_sanitizer_partitions_unreachable and /readyz"
            ),
            (Some(false), true) => tracing::info!(client, brokers_up = all.up, "Kafka reachable again"),
            _ => {}
        }
        all
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

    /// `count` partitions were assigned (`kind` "assign") or revoked.
    pub fn rebalance(&self, kind: &str, partitions: &str, count: usize) {
        self.rebalances.with_label_values(&[kind]).inc();
        let count = count as i64;
        match kind {
            "assign" => self.assigned.add(count),
            _ => self.assigned.sub(count),
        }
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

    /// Shows every webhook rejection reason at 0 before the first one.
    pub fn webhook_rejections(&self, reasons: &[&str]) {
        for r in reasons {
            self.webhooks_rejected.with_label_values(&[r]).inc_by(0);
        }
    }

    /// The counters and histograms of the delivery path, resolved once
    /// for these topics so the per-message path looks up no label.
    pub fn delivery(&self, inputs: &[String], clean: &str, dead_letters: &str) -> DeliveryMetrics {
        let by_input = |v: &IntCounterVec| {
            inputs
                .iter()
                .map(|t| (t.clone(), v.with_label_values(&[t])))
                .collect()
        };
        let latency = |o: &str| self.added_latency.with_label_values(&[o]);
        DeliveryMetrics {
            consumed: by_input(&self.messages_in),
            suppressed: by_input(&self.privacy.suppressed_messages),
            clean: self.messages_out.with_label_values(&[clean, "clean"]),
            dead_letters: self
                .messages_out
                .with_label_values(&[dead_letters, "dead_letter"]),
            latency: [
                latency("clean"),
                latency("dead_letter"),
                latency("suppressed"),
                latency("no_output"),
            ],
            delay: self.delay.clone(),
            processing: self.processing.clone(),
            in_flight: self.in_flight.clone(),
            in_flight_bytes: self.in_flight_bytes.clone(),
        }
    }

    /// A transaction of `messages` input messages ended (exactly-once
    /// delivery), `committed` or `aborted`, after `seconds` spent ending it.
    pub fn transaction(&self, result: &str, messages: usize, seconds: f64, error: Option<&str>) {
        self.transactions.with_label_values(&[result]).inc();
        self.transaction_seconds
            .with_label_values(&[result])
            .observe(seconds);
        self.transaction_messages.observe(messages as f64);
        match error {
            None => tracing::debug!(result, messages, seconds, "transaction ended"),
            Some(error) => tracing::warn!(
                result,
                messages,
                seconds,
                error,
                "transaction aborted; its input is consumed again from the last committed offsets"
            ),
        }
    }

    /// Work in flight was left unfinished at shutdown: logged once, with
    /// the count (it is consumed again after a restart).
    pub fn unfinished_at_shutdown(&self, messages: usize) {
        tracing::warn!(
            messages,
            "shutdown deadline reached: unacknowledged messages are left for replay"
        );
    }

    /// A webhook request arrived.
    pub fn webhook_received(&self) {
        self.webhooks_received.inc();
    }

    /// A webhook request was refused (401/413). Audited with the reason and
    /// the peer address; never the body or the signature.
    pub fn webhook_rejected(&self, reason: &'static str, path: &str, peer: std::net::SocketAddr) {
        self.webhooks_rejected.with_label_values(&[reason]).inc();
        let mut w = self
            .webhook_window
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if w.counts.is_empty() {
            w.since = Some(std::time::Instant::now());
            w.path = path.to_string();
        }
        *w.counts.entry(reason).or_default() += 1;
        if w.peers.len() < 5 && !w.peers.contains(&peer.ip()) {
            w.peers.push(peer.ip());
        }
    }

    /// One audit line for the rejections of the last window (at least
    /// [`REJECTION_WINDOW`], or all that remain when `last`).
    pub fn webhook_rejections_summary(&self, last: bool) {
        let mut w = self
            .webhook_window
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(since) = w.since else { return };
        if !last && since.elapsed() < REJECTION_WINDOW {
            return;
        }
        let w = std::mem::take(&mut *w);
        let counts: Vec<String> = w.counts.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let peers: Vec<String> = w.peers.iter().map(|p| p.to_string()).collect();
        let total: u64 = w.counts.values().sum();
        tracing::warn!(target: "event_sanitizer::audit", event = "webhook_rejections", total, reasons = %counts.join(","), sample_peers = %peers.join(","), path = %w.path, window_s = since.elapsed().as_secs(), "webhook requests rejected");
    }

    /// A webhook connection was closed at once: too many open.
    pub fn webhook_connection_refused(&self) {
        self.webhook_connections_refused.inc();
    }

    /// A webhook's signature verified.
    pub fn webhook_verified(&self) {
        self.webhooks_verified.inc();
    }

    /// A verified webhook was acknowledged by the broker.
    pub fn webhook_produced(&self, clean: bool) {
        let outcome = if clean { "clean" } else { "dead_letter" };
        self.webhooks_produced.with_label_values(&[outcome]).inc();
    }

    /// A verified webhook body could not be sanitized: its original went
    /// to the dead-letter topic.
    pub fn webhook_dead_letter(&self, path: &str, reason: &crate::engine::DeadLetterReason) {
        self.dead_letters.with_label_values(&[reason.code()]).inc();
        tracing::warn!(target: "event_sanitizer::audit", event = "dead_letter", source = "webhook", path, reason = reason.code(), detail = %reason, "webhook body sent to the dead-letter topic");
    }

    /// A verified webhook was answered 503: the broker did not acknowledge.
    pub fn webhook_unavailable(&self, topic: &str, error: &str) {
        self.webhooks_unavailable.inc();
        tracing::warn!(
            topic,
            error,
            "webhook not acknowledged by the broker; answered 503 so Customer.io retries"
        );
    }

    /// A webhook request was answered.
    pub fn webhook_answered(&self, status: u16, seconds: f64) {
        self.webhook_seconds
            .with_label_values(&[&status.to_string()])
            .observe(seconds);
    }

    /// Webhook signing keys were loaded (at start or after their files changed).
    pub fn webhook_keys_loaded(&self, count: usize, reload: bool) {
        tracing::info!(target: "event_sanitizer::audit", event = "webhook_signing_keys_loaded", keys = count, reload, "webhook signing keys loaded");
    }

    /// Dead letters are sealed with a new active key.
    pub fn dead_letter_key_rotated(&self, key_id: &str) {
        tracing::info!(target: "event_sanitizer::audit", event = "dead_letter_key_rotated", key_id, "dead letters are sealed with a new key");
    }

    /// A changed dead-letter key ring file could not be used; the ring in
    /// use stays. The message names the file and key ids, never a key.
    pub fn dead_letter_keys_rejected(&self, error: &str) {
        tracing::error!(target: "event_sanitizer::audit", event = "dead_letter_keys_rejected", error, "the dead-letter key ring file was not applied; the ring in use stays");
    }

    /// Changed webhook key files could not be used; the keys in use stay.
    pub fn webhook_keys_failed(&self, error: &str) {
        tracing::error!(target: "event_sanitizer::audit", event = "webhook_signing_keys_rejected", error, "webhook signing keys not reloaded; the keys in use stay");
    }

    /// A message about a suppressed person is produced nowhere. Audited
    /// with where it came from and where the person was found (`by`:
    /// message_key, call, envelope, batch_calls), never with the id.
    pub fn suppressed(&self, topic: &str, partition: i32, offset: i64, by: &str) {
        tracing::info!(target: "event_sanitizer::audit", event = "message_suppressed", topic, partition, offset, by, "message about a suppressed person not produced");
    }

    /// Calls of a batch were left out (suppressed people).
    pub fn batch_calls_suppressed(&self, n: usize) {
        self.privacy.suppressed_calls.inc_by(n as u64);
    }

    /// A privacy request was applied to this replica's suppression set.
    /// Audited live (after startup) with the request id, the action and
    /// the keyed digest of the person's id, never the id.
    #[allow(clippy::too_many_arguments)]
    pub fn privacy_request_applied(
        &self,
        request_id: &str,
        action: &str,
        digest: &str,
        key_id: &str,
        requested_at: Option<&str>,
        source: (i32, i64),
        live: bool,
        set_size: usize,
    ) {
        self.privacy
            .requests
            .with_label_values(&[action, "applied"])
            .inc();
        self.privacy.set_size.set(set_size as i64);
        if live {
            tracing::info!(target: "event_sanitizer::audit", event = "privacy_request_applied", request_id, action, user_digest = digest, key_id, requested_at, partition = source.0, offset = source.1, "privacy request applied");
        }
    }

    /// A record of the requests topic is not a valid request (the replica
    /// that owns its partition in the group dead-letters it).
    pub fn privacy_request_invalid(&self, code: &str) {
        self.privacy
            .requests
            .with_label_values(&["unknown", "invalid"])
            .inc();
        tracing::debug!(reason = code, "privacy request not applied");
    }

    /// A tombstone on the requests topic: nothing to apply.
    pub fn privacy_tombstone(&self) {
        self.privacy
            .requests
            .with_label_values(&["tombstone", "ignored"])
            .inc();
    }

    /// The requests topic was read to its end (at startup, or after a
    /// rebuild with a new key).
    pub fn privacy_caught_up(&self, requests: u64, set_size: usize, key_id: &str, rebuild: bool) {
        self.privacy.caught_up.set(1);
        self.privacy.set_size.set(set_size as i64);
        if rebuild {
            self.privacy.rebuilds.inc();
        }
        tracing::info!(target: "event_sanitizer::audit", event = if rebuild { "suppression_set_rebuilt" } else { "suppression_set_loaded" }, requests, identifiers = set_size, key_id, "suppression set ready");
    }

    /// Deletion commands for a request were acknowledged on the clean topic.
    pub fn deletion_commands(&self, request_id: &str, digest: &str, key_id: &str, n: usize) {
        self.privacy.commands.inc_by(n as u64);
        tracing::info!(target: "event_sanitizer::audit", event = "deletion_commands_produced", request_id, user_digest = digest, key_id, commands = n, "deletion commands produced");
    }

    /// The SASL password file changed and was (or was not) applied.
    pub fn sasl_reloaded(&self, error: Option<&str>) {
        match error {
            None => {
                self.sasl_rejected.set(0);
                self.privacy
                    .sasl_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(target: "event_sanitizer::audit", event = "sasl_credentials_reloaded", "SASL password re-read and applied to every Kafka client");
            }
            Some(e) => {
                self.sasl_rejected.set(1);
                self.privacy
                    .sasl_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(target: "event_sanitizer::audit", event = "sasl_credentials_rejected", error = e, "SASL password file changed but could not be applied; the clients keep the credentials they have");
            }
        }
    }
}
