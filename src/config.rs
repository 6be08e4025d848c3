//! The service configuration: a YAML file overridden by environment
//! variables (`EVENT_SANITIZER__KAFKA__BOOTSTRAP_SERVERS=...`), parsed into
//! typed structs and validated once at startup, every problem reported at
//! once. `config/example.yaml` documents every option.
//!
//! Secrets (the SASL password, the hash key) are never in this file: they
//! come from files (`*_file`) or the environment, and [`Secret`] keeps them
//! out of `Debug` output.

use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `event-sanitizer run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Brokers and topics.
    pub kafka: KafkaConfig,
    /// The rule file and how it is reloaded.
    pub rules: RulesConfig,
    /// Limits on messages and work in flight.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The metrics and health endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Customer.io reporting webhooks: an HTTP listener, off unless set.
    #[serde(default)]
    pub webhooks: Option<WebhooksConfig>,
    /// Privacy requests (deletion, suppression): off unless set.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// How the dead-letter topic keeps the raw messages it holds.
    #[serde(default)]
    pub dead_letters: DeadLettersConfig,
    /// The clean-topic audit (`event-sanitizer audit`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Canary events that prove the whole path: off unless set.
    #[serde(default)]
    pub canary: CanaryConfig,
    /// The field inventory kept on a sample of live events (`/inventory`).
    #[serde(default)]
    pub inventory: InventoryConfig,
}

/// `inventory`: which fields arrive, kept on a sample of live events in
/// bounded memory, served at `GET /inventory`; a path no rule classifies,
/// seen for the first time, is counted and audited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// One event in this many is looked at (0: no inventory).
    #[serde(default = "default_sample_every")]
    pub sample_every: u64,
    /// Distinct paths kept at most.
    #[serde(default = "default_max_paths")]
    pub max_paths: usize,
}

fn default_sample_every() -> u64 {
    100
}
fn default_max_paths() -> usize {
    5000
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            sample_every: default_sample_every(),
            max_paths: default_max_paths(),
        }
    }
}

/// `audit`: how `event-sanitizer audit` reads the clean topic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Its consumer group (default `<kafka.group_id>-audit`): never the
    /// service's own.
    #[serde(default)]
    pub group_id: Option<String>,
}

impl AuditConfig {
    /// The audit's consumer group.
    pub fn group(&self, k: &KafkaConfig) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}-audit", k.group_id))
    }
}

/// `canary`: synthetic events injected into an input topic so the audit
/// can prove, every interval, that the whole path (rules included) still
/// removes what it must.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// How often one canary is produced (`5m`); 0 or absent: never.
    #[serde(default, with = "humantime_secs")]
    pub interval: Duration,
    /// The input topic canaries go to (default: the first input topic).
    #[serde(default)]
    pub topic: Option<String>,
}

impl CanaryConfig {
    /// The topic canaries are produced to.
    pub fn topic<'a>(&'a self, k: &'a KafkaConfig) -> &'a str {
        self.topic
            .as_deref()
            .or(k.input_topics.first().map(String::as_str))
            .unwrap_or_default()
    }
}

/// `dead_letters`: dead letters are sealed at rest (`docs/privacy.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersConfig {
    /// Seal payloads, keys and header values. On unless turned off here,
    /// explicitly.
    #[serde(default = "default_true")]
    pub encrypt: bool,
    /// The dead-letter key ring (the hash key ring's format: `active` and
    /// `keys`), a mounted Secret; re-read every `rules.reload_interval`.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            encrypt: true,
            keys_file: None,
        }
    }
}

/// `privacy`: the requests topic every replica reads as a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The compacted topic of privacy requests, keyed by person
    /// (`docs/privacy.md`).
    pub requests_topic: String,
}

/// `webhooks`: verify, sanitize and land Customer.io's reporting webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Listen address, its own port (not the metrics port).
    pub listen: String,
    /// The path Customer.io posts to.
    #[serde(default = "default_webhook_path")]
    pub path: String,
    /// Where sanitized webhooks go.
    pub topic: String,
    /// The rule file for webhook bodies (`rules/customerio-webhooks.yaml`);
    /// watched and reloaded like `rules.file`.
    pub rules: PathBuf,
    /// Read the webhook rules' HMAC key from this file instead of the
    /// source the rule file names.
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// Signing keys: files (one or more keys, one per line) and environment
    /// variables. Every key is tried, so old and new work during rotation.
    /// Files are re-read on change.
    #[serde(default)]
    pub signing_key_files: Vec<PathBuf>,
    /// Environment variables holding signing keys.
    #[serde(default)]
    pub signing_key_env: Vec<String>,
    /// Larger bodies are refused with 413.
    #[serde(default = "default_webhook_body")]
    pub max_body_bytes: usize,
    /// Refuse (401) a request whose `X-CIO-Timestamp` is further than this
    /// from now. Off by default: Customer.io retries a failed webhook for
    /// up to 7 days, with the original timestamp.
    #[serde(default, with = "humantime_opt")]
    pub max_age: Option<Duration>,
    /// How long a request waits for the broker's acknowledgement before it
    /// is answered 503 (so Customer.io retries).
    #[serde(default = "default_webhook_ack", with = "humantime_secs")]
    pub ack_timeout: Duration,
    /// Open connections at most; more are closed at once (counted).
    #[serde(default = "default_webhook_connections")]
    pub max_connections: usize,
    /// Request bodies held in memory at once, over all requests, at most;
    /// a request that does not fit is answered 503 before its body is read.
    #[serde(default = "default_webhook_buffered")]
    pub max_buffered_bytes: usize,
    /// A request's headers must arrive within this; it is also how long an
    /// idle connection stays open.
    #[serde(default = "default_webhook_read", with = "humantime_secs")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this (answered 408 otherwise).
    #[serde(default = "default_webhook_read", with = "humantime_secs")]
    pub body_timeout: Duration,
}

fn default_webhook_connections() -> usize {
    256
}
fn default_webhook_buffered() -> usize {
    32 << 20
}
fn default_webhook_read() -> Duration {
    Duration::from_secs(10)
}

fn default_webhook_path() -> String {
    "/webhooks/customerio".into()
}
fn default_webhook_body() -> usize {
    256 * 1024
}
fn default_webhook_ack() -> Duration {
    Duration::from_secs(10)
}

/// An optional duration; `off` (or absent) is none. Up to 30 days.
mod humantime_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        use super::humantime_secs::Raw;
        let secs = match Raw::deserialize(d)? {
            Raw::S(s) if s == "off" => return Ok(None),
            Raw::N(n) => n,
            Raw::S(s) => super::humantime_secs::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration (use off, 300, 5m, 12h or 7d)"
                ))
            })?,
        };
        if !(1.0..=30.0 * 86_400.0).contains(&secs) {
            return Err(serde::de::Error::custom(
                "`max_age` must be between 1 second and 30 days, or off",
            ));
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }
}

/// `kafka`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` list, comma-separated.
    pub bootstrap_servers: String,
    /// Consumer group; replicas of one deployment share it.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Raw event topics to read.
    #[serde(default)]
    pub input_topics: Vec<String>,
    /// Where sanitized events go (read by the Customer.io forwarder).
    #[serde(default)]
    pub clean_topic: String,
    /// Where messages that cannot be sanitized go, with their reason.
    #[serde(default)]
    pub dead_letter_topic: String,
    /// Permit an unencrypted connection to the brokers (demo and tests).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// A file holding the SASL password (`sasl.password`).
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// Extra librdkafka properties for both clients (security.protocol,
    /// sasl.*, ssl.*...).
    #[serde(default)]
    pub common: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer (compression.type,
    /// linger.ms...).
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// How outputs relate to inputs: `at_least_once` (the default) or
    /// `exactly_once` (transactions; readers must use
    /// `isolation.level=read_committed`).
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// With `exactly_once`: the transactional id of this replica, stable
    /// across its restarts (the chart sets the pod name). Each delivery
    /// lane appends `-<lane>`. Default: `<group_id>-<HOSTNAME>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// With `exactly_once`: when a transaction is committed.
    #[serde(default)]
    pub transaction: TransactionConfig,
}

/// `kafka.delivery`: what a crash or a rebalance can do to the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// An input offset is committed only after its outputs are
    /// acknowledged: nothing is lost; after a crash the uncommitted tail is
    /// processed again, so a reader can see a record twice.
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets are committed together in one Kafka
    /// transaction (KIP-447): a `read_committed` reader sees every input's
    /// output exactly once, across crashes, restarts and rebalances.
    /// Adds up to `kafka.transaction.interval` of latency while input
    /// keeps coming, about a quarter of it (at most 1 s) once the input
    /// pauses.
    ExactlyOnce,
}

/// `kafka.transaction`: how long a transaction stays open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionConfig {
    /// Commit the open transaction at least this often (the latency a
    /// `read_committed` reader sees); a lane also commits when its input
    /// pauses, once the transaction is a quarter of this old (at most 1 s).
    #[serde(default = "default_txn_interval", with = "humantime_secs")]
    pub interval: Duration,
    /// ... or once this many input messages are in it.
    #[serde(default = "default_txn_messages")]
    pub max_messages: usize,
    /// The broker aborts a transaction left open longer than this
    /// (`transaction.timeout.ms`), e.g. by a replica that was killed.
    #[serde(default = "default_txn_timeout", with = "humantime_secs")]
    pub timeout: Duration,
}

fn default_txn_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_txn_messages() -> usize {
    50_000
}
fn default_txn_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            interval: default_txn_interval(),
            max_messages: default_txn_messages(),
            timeout: default_txn_timeout(),
        }
    }
}

fn default_group() -> String {
    "event-sanitizer".into()
}

/// `rules`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// The rule file. Watched: a change is compiled and swapped in; a bad
    /// change is rejected and the running rules kept.
    pub file: PathBuf,
    /// Read the HMAC key from this file instead of the rule file's source.
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// A key ring (`active` and `keys` by id) instead of one key: rotate by
    /// adding a key and changing `active`; the active id goes out in the
    /// `sanitizer-key-id` header.
    #[serde(default)]
    pub hash_keys_file: Option<PathBuf>,
    /// How often the rule file (and key file) are checked for changes.
    #[serde(default = "default_reload", with = "humantime_secs")]
    pub reload_interval: Duration,
    /// A candidate rule file run on every live event beside these rules,
    /// its output never produced; what it would change is counted and
    /// sampled at `GET /shadow`. Promote it by moving it to `file`.
    #[serde(default)]
    pub shadow_file: Option<PathBuf>,
}

fn default_reload() -> Duration {
    Duration::from_secs(5)
}

/// `limits`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message value accepted; larger ones are dead letters.
    #[serde(default = "default_max_bytes")]
    pub max_message_bytes: usize,
    /// Deepest nesting accepted.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Messages consumed but not yet acknowledged by the broker, at most.
    /// When reached, consumption pauses: memory stays flat when the output
    /// is slow.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Bytes of output (values and keys) handed to the producer and not
    /// yet acknowledged, at most; consumption pauses above it. With the
    /// consumer's prefetch (`queued.max.messages.kbytes`, 32 MiB per lane)
    /// this bounds the memory that work in flight can take.
    #[serde(default = "default_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// Delivery lanes: each is one thread with its own consumer (a member
    /// of the group), which consumes, sanitizes and produces its
    /// partitions in order (at least once through one producer the lanes
    /// share; exactly once through a transactional producer per lane).
    /// 0: one per core.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_max_bytes() -> usize {
    1 << 20
}
fn default_max_depth() -> usize {
    64
}
fn default_in_flight() -> usize {
    50_000
}
fn default_in_flight_bytes() -> usize {
    64 << 20
}
fn default_workers() -> usize {
    1
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: default_max_bytes(),
            max_depth: default_max_depth(),
            max_in_flight: default_in_flight(),
            max_in_flight_bytes: default_in_flight_bytes(),
            workers: default_workers(),
        }
    }
}

/// `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address for `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "0.0.0.0:9090".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

/// `log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json`, `text`, or `auto` (text on a terminal, JSON otherwise).
    #[serde(default = "default_format")]
    pub format: String,
    /// A tracing filter: `info`, `event_sanitizer=debug,rdkafka=warn`...
    #[serde(default = "default_level")]
    pub level: String,
    /// Write the audit stream (target `event_sanitizer::audit`: rule and
    /// key loads, privacy requests, dead letters) to this file as JSON
    /// lines, whatever the level, instead of mixing it into the main log.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
}

fn default_format() -> String {
    "auto".into()
}
fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_format(),
            level: default_level(),
            audit_file: None,
        }
    }
}

/// `shutdown`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Time to finish in-flight messages, flush and commit after SIGTERM.
    /// Keep it under Kubernetes' terminationGracePeriodSeconds.
    #[serde(default = "default_grace", with = "humantime_secs")]
    pub timeout: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(25)
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: default_grace(),
        }
    }
}

/// Durations written as seconds (`5`, `0.5`) or with a unit (`500ms`, `5s`, `2m`).
mod humantime_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// A number of seconds, or text with a unit.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        N(f64),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::S(s) => parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{s}` is not a duration (use 5, 500ms, 5s or 2m)"
                ))
            })?,
        };
        if !(0.0..=86_400.0).contains(&secs) {
            return Err(serde::de::Error::custom(
                "a duration must be between 0 and 1 day",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// Seconds in `500ms`, `5s`, `2m`, `12h`, `7d` or a bare number.
    pub(super) fn parse(s: &str) -> Option<f64> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3_600.0)
        } else if let Some(n) = s.strip_suffix('d') {
            (n, 86_400.0)
        } else {
            (s, 1.0)
        };
        num.trim().parse::<f64>().ok().map(|n| n * mult)
    }
}

impl WebhooksConfig {
    fn validate(&self, k: &KafkaConfig, p: &mut Vec<String>) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "`webhooks.listen` `{}` is not an address such as 0.0.0.0:9466",
                self.listen
            ));
        }
        if !self.path.starts_with('/') {
            p.push(format!("`webhooks.path` `{}` must start with /", self.path));
        }
        if self.topic.trim().is_empty() {
            p.push("`webhooks.topic` is missing: name the topic verified webhooks go to".into());
        } else if k.input_topics.contains(&self.topic)
            || self.topic == k.clean_topic
            || self.topic == k.dead_letter_topic
        {
            p.push(
                "`webhooks.topic` must be its own topic, not an input, clean or dead-letter topic"
                    .into(),
            );
        }
        if !self.rules.is_file() {
            p.push(format!(
                "`webhooks.rules` {} is not a readable file",
                self.rules.display()
            ));
        }
        if self.max_connections == 0 {
            p.push("`webhooks.max_connections` must be above 0".into());
        }
        if self.max_buffered_bytes < self.max_body_bytes
            || self.max_buffered_bytes > u32::MAX as usize
        {
            p.push("`webhooks.max_buffered_bytes` must be at least `webhooks.max_body_bytes` (one largest body must fit) and at most 4 GiB".into());
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            p.push("`webhooks.header_timeout` and `webhooks.body_timeout` must be above 0".into());
        }
        if self.signing_key_files.is_empty() && self.signing_key_env.is_empty() {
            p.push("`webhooks` needs a signing key: `signing_key_files` (a mounted Secret) or `signing_key_env`; an unverified webhook listener would accept anyone's data".into());
        } else if let Err(e) = Config::webhook_signing_keys(self) {
            p.push(format!("`webhooks`: {e}"));
        }
        if self.max_body_bytes == 0 {
            p.push("`webhooks.max_body_bytes` must be at least 1".into());
        }
        if self.ack_timeout.is_zero() {
            p.push("`webhooks.ack_timeout` must be above 0".into());
        }
    }
}

/// Why the configuration cannot be used: every problem, each a sentence.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The problems.
    pub problems: Vec<String>,
}

/// librdkafka properties this service sets itself; overriding them would
/// break at-least-once delivery or the topic layout.
const RESERVED: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "offsets are stored only after the broker acknowledges the output",
    ),
    ("enable.auto.commit", "commits are driven by the service"),
    ("group.id", "set `kafka.group_id` instead"),
    ("bootstrap.servers", "set `kafka.bootstrap_servers` instead"),
    (
        "enable.idempotence",
        "the producer must be idempotent to keep order on retries",
    ),
    ("acks", "the producer waits for all in-sync replicas"),
    (
        "sasl.password",
        "put the password in a file and set `kafka.sasl_password_file`",
    ),
    (
        "transactional.id",
        "set `kafka.transactional_id` with `kafka.delivery: exactly_once`",
    ),
];

impl Config {
    /// Loads `path` (YAML) with environment overrides and validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError {
                    problems: vec![format!(
                        "the configuration file {} does not exist",
                        p.display()
                    )],
                });
            }
            b = b.add_source(config::File::from(p).format(config::FileFormat::Yaml));
        }
        let vars: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("EVENT_SANITIZER__"))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("EVENT_SANITIZER")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("kafka.input_topics")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let raw = b.build().map_err(|e| ConfigError {
            problems: vec![e.to_string()],
        })?;
        let cfg: Config = match raw.clone().try_deserialize() {
            Ok(c) => c,
            Err(_) => {
                let text = path.and_then(|p| std::fs::read_to_string(p).ok());
                let (mut problems, pruned, removed) = type_problems(raw, text.as_deref());
                // What else is wrong with the rest, leaving out what is
                // about the keys already reported.
                if let Some(Err(v)) = pruned.map(|c| c.validate()) {
                    problems.extend(
                        v.problems
                            .into_iter()
                            .filter(|p| !removed.iter().any(|k| p.contains(&format!("`{k}")))),
                    );
                }
                return Err(ConfigError { problems });
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            p.push("`kafka.bootstrap_servers` is empty: list the brokers as host:port, comma-separated".to_string());
        }
        for server in k
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let addr = server.rsplit_once("://").map_or(server, |(_, a)| a);
            match addr.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => p.push(format!(
                    "`kafka.bootstrap_servers`: `{server}` is not host:port"
                )),
            }
        }
        if k.group_id.trim().is_empty() {
            p.push("`kafka.group_id` is empty".into());
        }
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            p.push("`kafka.input_topics` is missing: name the raw event topic(s) to read".into());
        }
        if k.clean_topic.trim().is_empty() {
            p.push(
                "`kafka.clean_topic` is missing: name the topic the Customer.io forwarder reads"
                    .into(),
            );
        }
        if k.dead_letter_topic.trim().is_empty() {
            p.push("`kafka.dead_letter_topic` is missing: messages that cannot be sanitized must go somewhere".into());
        }
        if k.input_topics.contains(&k.clean_topic) || k.input_topics.contains(&k.dead_letter_topic)
        {
            p.push(
                "an output topic is also an input topic: the service would read its own output"
                    .into(),
            );
        }
        if !k.clean_topic.is_empty() && k.clean_topic == k.dead_letter_topic {
            p.push("`kafka.clean_topic` and `kafka.dead_letter_topic` are the same: raw dead letters would reach the forwarder".into());
        }
        for (section, props) in [
            ("common", &k.common),
            ("consumer", &k.consumer),
            ("producer", &k.producer),
        ] {
            for key in props.keys() {
                if let Some((_, why)) = RESERVED.iter().find(|(r, _)| r == key) {
                    p.push(format!("`kafka.{section}.{key}` cannot be set here: {why}"));
                }
            }
        }
        if let Some(f) = &k.sasl_password_file {
            if let Err(e) = std::fs::metadata(f) {
                p.push(format!(
                    "`kafka.sasl_password_file` {} cannot be read: {}",
                    f.display(),
                    e.kind()
                ));
            }
        }
        if !self.rules.file.is_file() {
            p.push(format!(
                "`rules.file` {} is not a readable file",
                self.rules.file.display()
            ));
        }
        if let Some(f) = &self.rules.hash_key_file {
            if let Err(e) = std::fs::read(f) {
                p.push(format!(
                    "`rules.hash_key_file` {} cannot be read: {}",
                    f.display(),
                    e.kind()
                ));
            }
        }
        if let Some(f) = &self.rules.hash_keys_file {
            if self.rules.hash_key_file.is_some() {
                p.push("`rules.hash_key_file` and `rules.hash_keys_file` are both set: use one (the key ring for rotation)".into());
            }
            if let Err(e) = crate::secret::HashKeys::from_file(f) {
                p.push(format!("`rules.hash_keys_file`: {e}"));
            }
        }
        match (&self.dead_letters.keys_file, self.dead_letters.encrypt) {
            (None, true) => p.push("`dead_letters.keys_file` is missing: dead letters hold raw messages and are sealed at rest; give a key ring (docs/privacy.md, Dead letters), or set `dead_letters.encrypt: false` to keep them in the clear".into()),
            (Some(_), true) => {
                if let Err(e) = crate::deadletter::Sealer::from_config(&self.dead_letters) {
                    p.push(e);
                }
            }
            (Some(_), false) => p.push("`dead_letters.keys_file` is set but `dead_letters.encrypt` is false: remove one".into()),
            (None, false) => {}
        }
        if let Some(pc) = &self.privacy {
            let t = &pc.requests_topic;
            if t.trim().is_empty() {
                p.push("`privacy.requests_topic` is empty: name the compacted topic of privacy requests".into());
            } else if k.input_topics.contains(t)
                || *t == k.clean_topic
                || *t == k.dead_letter_topic
                || self.webhooks.as_ref().is_some_and(|w| w.topic == *t)
            {
                p.push("`privacy.requests_topic` must be its own topic, not an input, clean, dead-letter or webhook topic".into());
            }
        }
        if let Some(f) = &self.log.audit_file {
            if f.parent()
                .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                p.push(format!(
                    "`log.audit_file` {}: its directory does not exist",
                    f.display()
                ));
            }
        }
        if self.limits.max_in_flight == 0 {
            p.push("`limits.max_in_flight` must be at least 1".into());
        }
        if self.limits.max_message_bytes == 0 || self.limits.max_depth == 0 {
            p.push("`limits.max_message_bytes` and `limits.max_depth` must be at least 1".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "`http.listen` `{}` is not an address such as 0.0.0.0:9090",
                self.http.listen
            ));
        }
        if !["auto", "json", "text"].contains(&self.log.format.as_str()) {
            p.push(format!(
                "`log.format` `{}` must be auto, json or text",
                self.log.format
            ));
        }
        if let Some(f) = &self.rules.shadow_file {
            if !f.is_file() {
                p.push(format!(
                    "`rules.shadow_file` {} is not a readable file",
                    f.display()
                ));
            } else if *f == self.rules.file {
                p.push("`rules.shadow_file` is `rules.file`: a shadow compares a candidate with the rules in use".into());
            }
        }
        if self.inventory.max_paths == 0 || self.inventory.max_paths > 1_000_000 {
            p.push("`inventory.max_paths` must be between 1 and 1000000".into());
        }
        if self.audit.group(k) == k.group_id {
            p.push("`audit.group_id` must not be `kafka.group_id`: the audit would take the service's partitions".into());
        }
        if !self.canary.interval.is_zero() {
            if self.canary.interval < Duration::from_secs(1) {
                p.push("`canary.interval` must be at least 1s".into());
            }
            if !k.input_topics.iter().any(|t| t == self.canary.topic(k)) {
                p.push(format!(
                    "`canary.topic` `{}` is not one of `kafka.input_topics`: a canary must take the path events take",
                    self.canary.topic(k)
                ));
            }
        }
        if let Some(w) = &self.webhooks {
            w.validate(k, &mut p);
        }
        if self.rules.reload_interval.is_zero() {
            p.push("`rules.reload_interval` must be above 0".into());
        }
        if !k.allow_plaintext {
            for (client, protocol) in self.client_protocols() {
                if is_plaintext(protocol) {
                    p.push(format!(
                        "the {client}'s broker connection would be unencrypted (security.protocol {}): set `kafka.common.security.protocol: ssl` (or sasl_ssl), and no plaintext override in `kafka.consumer` or `kafka.producer`, or `kafka.allow_plaintext: true` to accept it knowingly",
                        protocol.unwrap_or("plaintext, the default")
                    ));
                }
            }
        }
        if self.limits.max_in_flight_bytes < 1 << 20 {
            p.push("`limits.max_in_flight_bytes` must be at least 1 MiB (1048576)".into());
        }
        if self.limits.max_in_flight_bytes < self.limits.max_message_bytes {
            p.push("`limits.max_in_flight_bytes` is below `limits.max_message_bytes`: one largest message would not fit".into());
        }
        if k.delivery == DeliveryMode::ExactlyOnce {
            let t = &k.transaction;
            if t.interval.is_zero() || t.max_messages == 0 {
                p.push("`kafka.transaction.interval` and `kafka.transaction.max_messages` must be above 0".into());
            }
            if t.timeout < t.interval + Duration::from_secs(1) {
                p.push("`kafka.transaction.timeout` must exceed `kafka.transaction.interval` by at least 1s".into());
            }
            if k.transactional_id
                .as_deref()
                .is_some_and(|i| i.trim().is_empty())
            {
                p.push("`kafka.transactional_id` is empty".into());
            }
        } else if k.transactional_id.is_some() {
            p.push(
                "`kafka.transactional_id` is set but `kafka.delivery` is not `exactly_once`".into(),
            );
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    /// The signing keys of the webhook listener, from their files and
    /// variables; an error names the source that failed, never a key.
    pub fn webhook_signing_keys(w: &WebhooksConfig) -> Result<Vec<Secret>, String> {
        let mut keys = Vec::new();
        for f in &w.signing_key_files {
            let text = Secret::from_file(f).map_err(|e| {
                format!(
                    "webhook signing key file {} cannot be read: {}",
                    f.display(),
                    e.kind()
                )
            })?;
            for line in text.expose().split(|&b| b == b'\n') {
                let line = line.trim_ascii();
                if !line.is_empty() {
                    keys.push(Secret::new(line));
                }
            }
        }
        for name in &w.signing_key_env {
            match std::env::var_os(name) {
                Some(v) if !v.is_empty() => keys.push(Secret::new(v.into_encoded_bytes())),
                _ => return Err(format!("webhook signing key variable {name} is not set")),
            }
        }
        if keys.is_empty() {
            return Err(
                "no webhook signing key: the files named in `webhooks.signing_key_files` are empty"
                    .into(),
            );
        }
        Ok(keys)
    }
}

/// Where the rules' HMAC key comes from, besides the rule file itself.
#[derive(Clone, Debug)]
pub enum KeyFile {
    /// The source the rule file names (`hash.key`).
    FromRules,
    /// One key in a file (`rules.hash_key_file`); its id is `default`.
    Single(PathBuf),
    /// A key ring (`rules.hash_keys_file`): keys with ids, one active.
    Ring(PathBuf),
}

impl KeyFile {
    /// The file the key is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeyFile::FromRules => None,
            KeyFile::Single(p) | KeyFile::Ring(p) => Some(p),
        }
    }
}

impl RulesConfig {
    /// Where the rules' key comes from besides the rule file.
    pub fn key_file(&self) -> KeyFile {
        match (&self.hash_keys_file, &self.hash_key_file) {
            (Some(f), _) => KeyFile::Ring(f.clone()),
            (None, Some(f)) => KeyFile::Single(f.clone()),
            (None, None) => KeyFile::FromRules,
        }
    }
}

/// Whether a `security.protocol` value (absent: librdkafka's default)
/// sends data unencrypted.
pub fn is_plaintext(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| {
        p.eq_ignore_ascii_case("plaintext") || p.eq_ignore_ascii_case("sasl_plaintext")
    })
}

/// Which librdkafka property section a client of the service is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// The group member reading the raw topics (`kafka.consumer`).
    Consumer,
    /// The producer of clean records and dead letters (`kafka.producer`).
    Producer,
    /// The reader of the privacy-requests topic (`kafka.consumer`).
    PrivacyReader,
    /// The producer of verified webhooks (`kafka.producer`).
    WebhookProducer,
}

impl ClientRole {
    /// Every client the service can create.
    pub const ALL: [ClientRole; 4] = [
        ClientRole::Consumer,
        ClientRole::Producer,
        ClientRole::PrivacyReader,
        ClientRole::WebhookProducer,
    ];

    /// The name used in logs, metrics and errors.
    pub fn name(self) -> &'static str {
        match self {
            ClientRole::Consumer => "consumer",
            ClientRole::Producer => "producer",
            ClientRole::PrivacyReader => "privacy-reader",
            ClientRole::WebhookProducer => "webhook-producer",
        }
    }
}

impl KafkaConfig {
    /// The librdkafka properties a client of `role` gets from this file:
    /// `common`, then its own section (which wins).
    pub fn properties(&self, role: ClientRole) -> impl Iterator<Item = (&String, &String)> {
        let own = match role {
            ClientRole::Consumer | ClientRole::PrivacyReader => &self.consumer,
            ClientRole::Producer | ClientRole::WebhookProducer => &self.producer,
        };
        self.common.iter().chain(own)
    }

    /// The `security.protocol` a client of `role` ends up with.
    pub fn protocol(&self, role: ClientRole) -> Option<&str> {
        self.properties(role)
            .filter(|(k, _)| *k == "security.protocol")
            .last()
            .map(|(_, v)| v.as_str())
    }
}

impl Config {
    /// The effective `security.protocol` of each client the service would
    /// create with this configuration.
    pub fn client_protocols(&self) -> Vec<(&'static str, Option<&str>)> {
        ClientRole::ALL
            .iter()
            .filter(|r| match r {
                ClientRole::PrivacyReader => self.privacy.is_some(),
                ClientRole::WebhookProducer => self.webhooks.is_some(),
                _ => true,
            })
            .map(|&r| (r.name(), self.kafka.protocol(r)))
            .collect()
    }

    /// The security protocol in use, for the startup log.
    pub fn security_protocol(&self) -> String {
        self.kafka
            .protocol(ClientRole::Consumer)
            .unwrap_or("plaintext")
            .to_string()
    }

    /// The SASL password, when a file is configured.
    pub fn sasl_password(&self) -> Result<Option<Secret>, ConfigError> {
        match &self.kafka.sasl_password_file {
            None => Ok(None),
            Some(f) => Secret::from_file(f).map(Some).map_err(|e| ConfigError {
                problems: vec![format!(
                    "`kafka.sasl_password_file` {} cannot be read: {}",
                    f.display(),
                    e.kind()
                )],
            }),
        }
    }
}

/// A configuration tree as a source, to deserialize again after the key of
/// a problem is taken out.
#[derive(Debug, Clone)]
struct Tree(config::Map<String, config::Value>);

impl config::Source for Tree {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The key a deserialization problem is about, and the problem without it.
fn key_of(e: &config::ConfigError) -> (Option<String>, String) {
    match e {
        config::ConfigError::Type { key, .. } => (key.clone(), e.to_string()),
        config::ConfigError::At { error, key, .. } => {
            let (inner, msg) = key_of(error);
            let msg = match key {
                Some(k) if !msg.contains(&format!("`{k}")) => format!("{msg} (in `{k}`)"),
                _ => msg,
            };
            (inner.or(key.clone()), msg)
        }
        other => (None, other.to_string()),
    }
}

/// Removes a dotted key from a tree; whether it was there.
fn remove(tree: &mut config::Map<String, config::Value>, key: &str) -> bool {
    match key.split_once('.') {
        None => tree.remove(key).is_some(),
        Some((head, rest)) => match tree.get_mut(head).map(|v| &mut v.kind) {
            Some(config::ValueKind::Table(t)) => remove(t, rest),
            _ => false,
        },
    }
}

/// The 1-based line of a dotted key in the YAML text, if it is there.
fn line_of(text: &str, key: &str) -> Option<usize> {
    use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
    let docs = MarkedYaml::load_from_str(text).ok()?;
    let mut node = docs.first()?;
    let mut line = None;
    for seg in key.split('.') {
        let YamlData::Mapping(m) = &node.data else {
            return line;
        };
        let (k, v) = m.iter().find(|(k, _)| {
            matches!(&k.data, YamlData::Value(Scalar::String(s)) if s.eq_ignore_ascii_case(seg))
        })?;
        line = Some(k.span.start.line().max(1));
        node = v;
    }
    line
}

/// Every problem of deserializing `raw`, each with its YAML line: after
/// each one the key it is about is taken out and the rest is tried again,
/// so one wrong type does not hide the next. Also returns what the rest
/// deserializes to, if it does, and the keys taken out.
fn type_problems(
    raw: config::Config,
    text: Option<&str>,
) -> (Vec<String>, Option<Config>, Vec<String>) {
    let mut tree: config::Map<String, config::Value> =
        config::Source::collect(&raw).unwrap_or_default();
    let mut problems = Vec::new();
    let mut removed = Vec::new();
    let mut pruned = None;
    for _ in 0..64 {
        let attempt = config::Config::builder()
            .add_source(Tree(tree.clone()))
            .build()
            .and_then(|c| c.try_deserialize::<Config>());
        let e = match attempt {
            Ok(c) => {
                pruned = Some(c);
                break;
            }
            Err(e) => e,
        };
        let (key, msg) = key_of(&e);
        // An unknown field is named in the message, under the key given.
        let unknown = msg
            .split("unknown field `")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .map(|f| match &key {
                Some(k) => format!("{k}.{f}"),
                None => f.to_string(),
            });
        let at = unknown.clone().or(key.clone());
        let line = at.as_deref().and_then(|k| text.and_then(|t| line_of(t, k)));
        let shown = line.map_or(String::new(), |l| format!("line {l}: "));
        problems.push((line.unwrap_or(0), format!("{shown}{}", explain_serde(&msg))));
        match at {
            Some(k) if remove(&mut tree, &k) => removed.push(k),
            _ => break,
        }
    }
    // In file order; the ones without a line last.
    problems.sort_by_key(|(l, _)| if *l == 0 { usize::MAX } else { *l });
    let mut out: Vec<String> = problems.into_iter().map(|(_, p)| p).collect();
    if out.is_empty() {
        out.push("the configuration cannot be read".into());
    }
    (out, pruned, removed)
}

fn explain_serde(msg: &str) -> String {
    // serde says "missing field `x`"; the config crate, which reports the
    // whole path, "missing configuration field \"kafka.x\"".
    if msg.contains("missing field") || msg.contains("missing configuration field") {
        format!("{msg} (every option is described in config/example.yaml)")
    } else {
        msg.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let rules = dir.join("rules.yaml");
        std::fs::write(&rules, "version: 1\nname: t\nrules: []\n").unwrap();
        let p = dir.join("c.yaml");
        let mut text = text.replace("RULES", &rules.display().to_string());
        if !text.contains("dead_letters") {
            // Not what these tests are about: said explicitly.
            text.push_str("dead_letters: { encrypt: false }\n");
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn every_wrong_type_and_unknown_key_is_reported_with_its_line_and_the_rest_validated() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "kafka:\n  bootstrap_servers: 'b:1'\n  input_topics: [r]\n  allow_plaintext: maybe\n  colour: blue\nrules: { file: RULES }\nlimits:\n  max_in_flight: lots\nshutdown: { timeout: forever }\n",
        );
        let e = Config::load_with_env(Some(&p), Vec::new()).unwrap_err();
        let all = e.problems.join("\n");
        assert!(
            e.problems[0].starts_with("line 4: ") && all.contains("expected a boolean"),
            "{all}"
        );
        assert!(
            e.problems[1].starts_with("line 5: unknown field `colour`"),
            "{all}"
        );
        assert!(
            e.problems[2].starts_with("line 8: ") && e.problems[2].contains("max_in_flight"),
            "{all}"
        );
        assert!(
            e.problems[3].starts_with("line 9: ") && e.problems[3].contains("not a duration"),
            "{all}"
        );
        // The rest is validated too, once the wrong keys are out.
        assert!(all.contains("`kafka.clean_topic` is missing"), "{all}");
        assert!(
            !all.contains("unencrypted"),
            "nothing about the key already reported: {all}"
        );
    }

    #[test]
    fn a_missing_required_option_points_to_the_example() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "kafka: { input_topics: [raw], clean_topic: c, dead_letter_topic: d }\nrules: { file: RULES }\n");
        let e = Config::load_with_env(Some(&p), vec![]).unwrap_err();
        let text = e.problems.join("\n");
        assert!(text.contains("bootstrap_servers"), "{text}");
        assert!(text.contains("config/example.yaml"), "{text}");
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'a:1', input_topics: [raw], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }\nrules: { file: RULES }\n");
        let env = vec![
            (
                "EVENT_SANITIZER__KAFKA__BOOTSTRAP_SERVERS".to_string(),
                "b:2,c:3".to_string(),
            ),
            (
                "EVENT_SANITIZER__KAFKA__INPUT_TOPICS".to_string(),
                "x,y".to_string(),
            ),
            (
                "EVENT_SANITIZER__LIMITS__MAX_IN_FLIGHT".to_string(),
                "7".to_string(),
            ),
        ];
        let c = Config::load_with_env(Some(&p), env).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "b:2,c:3");
        assert_eq!(c.kafka.input_topics, vec!["x", "y"]);
        assert_eq!(c.limits.max_in_flight, 7);
        assert_eq!(c.rules.reload_interval, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'nohost', clean_topic: c, dead_letter_topic: c, consumer: { enable.auto.commit: 'true' } }\nrules: { file: /nonexistent.yaml }\nhttp: { listen: nowhere }\n");
        let e = Config::load_with_env(Some(&p), vec![]).unwrap_err();
        let text = e.to_string();
        for needle in [
            "`nohost` is not host:port",
            "`kafka.input_topics` is missing",
            "are the same",
            "`kafka.consumer.enable.auto.commit` cannot be set",
            "`rules.file` /nonexistent.yaml",
            "`http.listen`",
            "unencrypted",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn dead_letters_are_sealed_unless_turned_off_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let base = "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }\nrules: { file: RULES }\n";
        let err = |extra: &str| {
            let p = write(dir.path(), &format!("{base}{extra}"));
            Config::load_with_env(Some(&p), vec![])
                .err()
                .map(|e| e.to_string())
        };
        let e = err("dead_letters: {}\n").unwrap();
        assert!(
            e.contains("`dead_letters.keys_file` is missing")
                && e.contains("`dead_letters.encrypt: false`"),
            "{e}"
        );
        let short = dir.path().join("short.yaml");
        std::fs::write(&short, "active: a\nkeys: { a: too-short-secret }\n").unwrap();
        let e = err(&format!(
            "dead_letters: {{ keys_file: {} }}\n",
            short.display()
        ))
        .unwrap();
        assert!(
            e.contains("shorter than 32 bytes") && !e.contains("too-short-secret"),
            "{e}"
        );
        let e = err(&format!(
            "dead_letters: {{ encrypt: false, keys_file: {} }}\n",
            short.display()
        ))
        .unwrap();
        assert!(e.contains("remove one"), "{e}");
        let ring = dir.path().join("ring.yaml");
        std::fs::write(
            &ring,
            "active: a\nkeys: { a: 0123456789abcdef0123456789abcdef }\n",
        )
        .unwrap();
        assert_eq!(
            err(&format!(
                "dead_letters: {{ keys_file: {} }}\n",
                ring.display()
            )),
            None
        );
        assert_eq!(err("dead_letters: { encrypt: false }\n"), None);
    }

    #[test]
    fn privacy_and_key_ring_problems() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("ring.yaml");
        std::fs::write(&ring, "active: k9\nkeys: { k1: secret-value }\n").unwrap();
        let p = write(dir.path(), &format!("kafka: {{ bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }}\nrules: {{ file: RULES, hash_key_file: {0}, hash_keys_file: {0} }}\nprivacy: {{ requests_topic: c }}\nlog: {{ audit_file: /nonexistent/dir/audit.jsonl }}\n", ring.display()));
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        for needle in [
            "are both set",
            "`active` names `k9`, which is not in `keys`",
            "`privacy.requests_topic` must be its own topic",
            "`log.audit_file` /nonexistent/dir/audit.jsonl: its directory does not exist",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(!text.contains("secret-value"), "{text}");
    }

    #[test]
    fn every_clients_own_transport_and_the_delivery_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, transactional_id: t, common: { security.protocol: ssl }, producer: { security.protocol: PLAINTEXT } }\nrules: { file: RULES }\nlimits: { max_in_flight_bytes: 1000 }\n");
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        for needle in [
            "the producer's broker connection would be unencrypted (security.protocol PLAINTEXT)",
            "`limits.max_in_flight_bytes` must be at least 1 MiB",
            "`kafka.transactional_id` is set but `kafka.delivery` is not `exactly_once`",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert!(
            !text.contains("consumer's"),
            "the consumer uses ssl: {text}"
        );
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, delivery: exactly_once, transaction: { interval: 5s, timeout: 5s }, common: { security.protocol: ssl }, consumer: { security.protocol: sasl_plaintext } }\nrules: { file: RULES }\n");
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(text.contains("the consumer's broker connection"), "{text}");
        assert!(
            text.contains("`kafka.transaction.timeout` must exceed"),
            "{text}"
        );
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, delivery: exactly_once, common: { security.protocol: ssl } }\nrules: { file: RULES }\n");
        let c = Config::load_with_env(Some(&p), vec![]).unwrap();
        assert_eq!(c.kafka.delivery, DeliveryMode::ExactlyOnce);
        assert_eq!(c.kafka.transaction.interval, Duration::from_millis(100));
        assert_eq!(c.limits.max_in_flight_bytes, 64 << 20);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true, clean_topc: x }\nrules: { file: RULES }\n");
        let e = Config::load_with_env(Some(&p), vec![]).unwrap_err();
        assert!(e.to_string().contains("clean_topc"), "{e}");
    }

    #[test]
    fn a_webhook_listener_needs_keys_and_its_own_topic() {
        let dir = tempfile::tempdir().unwrap();
        let base = "kafka: { bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }\nrules: { file: RULES }\n";
        let p = write(dir.path(), &format!("{base}webhooks: {{ listen: '127.0.0.1:0', topic: c, rules: RULES, max_age: soon }}\n"));
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(text.contains("`soon` is not a duration"), "{text}");
        let p = write(dir.path(), &format!("{base}webhooks: {{ listen: '127.0.0.1:0', topic: c, rules: RULES, max_age: 7d, signing_key_env: [NO_SUCH_VAR_FOR_TEST] }}\n"));
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("`webhooks.topic` must be its own topic"),
            "{text}"
        );
        assert!(text.contains("NO_SUCH_VAR_FOR_TEST is not set"), "{text}");
        let p = write(
            dir.path(),
            &format!("{base}webhooks: {{ listen: '127.0.0.1:0', topic: w, rules: RULES }}\n"),
        );
        let text = Config::load_with_env(Some(&p), vec![])
            .unwrap_err()
            .to_string();
        assert!(text.contains("needs a signing key"), "{text}");
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_shipped_example_loads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let c =
            super::Config::load_with_env(Some(&root.join("config/example.yaml")), vec![]).unwrap();
        assert_eq!(
            c.kafka.common.get("security.protocol").map(String::as_str),
            Some("ssl")
        );
        assert_eq!(
            c.kafka.producer.get("compression.type").map(String::as_str),
            Some("lz4")
        );
        assert_eq!(c.shutdown.timeout, std::time::Duration::from_secs(25));
    }
}

#[cfg(test)]
mod chart {
    use crate::rules::yaml;

    /// The Helm chart renders `values.config` plus the mounted file paths
    /// into config.yaml (`_helpers.tpl`, `es.config`): the same document,
    /// built here from values.yaml, must load with the real loader, so the
    /// chart and the binary cannot drift apart.
    #[test]
    fn the_charts_config_loads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("helm/event-sanitizer/values.yaml")).unwrap();
        let node = yaml::load("values.yaml", &text).unwrap();
        let mut json = String::new();
        yaml::to_json(&node, &mut json).unwrap();
        let values: serde_json::Value = serde_json::from_str(&json).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hash-key");
        std::fs::write(&key, "k").unwrap();
        let mut cfg = values["config"].clone();
        cfg["rules"] = serde_json::json!({
            "file": root.join("helm/event-sanitizer/files").join(values["rules"]["fileName"].as_str().unwrap()),
            "hash_key_file": key,
            "reload_interval": values["rules"]["reloadInterval"],
        });
        // With a key ring and privacy requests, as `es.config` sets them.
        let ring = dir.path().join("hash-keys");
        std::fs::write(&ring, "active: k2\nkeys: { k1: a, k2: b }\n").unwrap();
        cfg["rules"] = serde_json::json!({
            "file": cfg["rules"]["file"],
            "hash_keys_file": ring,
            "reload_interval": values["rules"]["reloadInterval"],
        });
        cfg["privacy"] =
            serde_json::json!({ "requests_topic": values["privacy"]["requestsTopic"] });
        // Dead letters sealed (the default), as `es.config` sets it.
        assert_eq!(values["deadLetters"]["encrypt"], true);
        let dl = dir.path().join("dead-letter-keys");
        std::fs::write(
            &dl,
            "active: d1\nkeys: { d1: 0123456789abcdef0123456789abcdef }\n",
        )
        .unwrap();
        cfg["dead_letters"] = serde_json::json!({ "keys_file": dl });
        // With webhooks enabled, as `es.config` adds them.
        let w = &values["webhooks"];
        let signing = dir.path().join("signing-keys");
        std::fs::write(&signing, "s1\ns2\n").unwrap();
        cfg["webhooks"] = serde_json::json!({
            "listen": format!("0.0.0.0:{}", w["port"]),
            "path": w["path"],
            "topic": w["topic"],
            "rules": root.join("helm/event-sanitizer/files").join(w["rulesFileName"].as_str().unwrap()),
            "hash_key_file": key,
            "signing_key_files": [signing],
            "max_body_bytes": w["maxBodyBytes"],
            "max_age": w["maxAge"],
            "ack_timeout": w["ackTimeout"],
        });
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
        let c = super::Config::load_with_env(Some(&path), vec![]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.kafka.input_topics, vec!["events.raw"]);
        assert_eq!(
            c.privacy.as_ref().unwrap().requests_topic,
            "privacy.requests"
        );
        assert!(c.rules.hash_keys_file.is_some());
        assert!(c.dead_letters.encrypt && c.dead_letters.keys_file.is_some());
        let wc = c.webhooks.as_ref().expect("webhooks section loads");
        assert_eq!(wc.max_age, None, "maxAge off by default");
        assert_eq!(super::Config::webhook_signing_keys(wc).unwrap().len(), 2);
        assert_eq!(c.shutdown.timeout.as_secs(), 25);
        let grace = values["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > c.shutdown.timeout.as_secs(),
            "terminationGracePeriodSeconds must exceed the shutdown bound"
        );
    }

    #[test]
    fn the_chart_ships_the_default_rules_unchanged() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            std::fs::read(root.join("helm/event-sanitizer/files/customerio.yaml")).unwrap(),
            std::fs::read(root.join("rules/customerio.yaml")).unwrap(),
            "copy rules/customerio.yaml to helm/event-sanitizer/files/"
        );
        assert_eq!(
            std::fs::read(root.join("helm/event-sanitizer/files/customerio-webhooks.yaml"))
                .unwrap(),
            std::fs::read(root.join("rules/customerio-webhooks.yaml")).unwrap(),
            "copy rules/customerio-webhooks.yaml to helm/event-sanitizer/files/"
        );
    }
}
