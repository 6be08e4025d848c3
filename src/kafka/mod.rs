//! What every Kafka client of the service shares: the properties it is
//! built from (with the transport check that no section escapes), the
//! logging and error callbacks, the lineage and dead-letter headers, and
//! SASL credentials replaced in place. Used by the pipeline, the privacy
//! reader and the webhook listener; imports nothing above `config` and
//! `metrics`.

pub mod native;
pub(crate) mod sasl;
pub(crate) mod scan;

use crate::config::{is_plaintext, ClientRole, Config};
use crate::metrics::Telemetry;
use crate::secret::Secret;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The first fatal error of the service, shared by every part that can
/// meet one (the lanes, the privacy reader, the webhook listener): the
/// first is kept, and the service stops with it (exit code 1).
#[derive(Default)]
pub struct Fatal {
    first: Mutex<Option<String>>,
    set: AtomicBool,
}

impl Fatal {
    /// Records `error` (the first one is kept) and logs it once.
    pub fn fail(&self, error: String) {
        let mut f = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::error!(error = %error, "stopping: fatal error");

            *f = Some(error);
        }
        self.set.store(true, Ordering::Release);
    }

    /// Whether a fatal error was met.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// The first fatal error, if any.
    pub fn error(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the broker refusing `client` a topic for lack of the ACL
    /// `needs` on it, when `e` is that refusal (a permanent
    /// misconfiguration: nothing gets through until an operator grants
    /// it). Whether it was.
    pub(crate) fn refused_for(&self, client: &str, e: &KafkaError, needs: &str) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        if e.rdkafka_error_code() != Some(Code::TopicAuthorizationFailed) {
            return false;
        }
        self.fail(refusal(client, e, needs));
        true
    }
}

/// Why a client was not created.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Its effective `security.protocol` is unencrypted and
    /// `kafka.allow_plaintext` is off.
    #[error("the {client} would connect unencrypted (security.protocol {protocol}); set `kafka.allow_plaintext: true` to accept it knowingly")]
    Plaintext {
        /// Which client.
        client: &'static str,
        /// The protocol it would use.
        protocol: String,
    },
}

/// The properties of a client in `role`: brokers, the service's own base
/// settings for that role, then `kafka.common` and the role's section, and
/// the SASL password. Refuses an unencrypted transport unless allowed, on
/// the properties the client would really get.
pub(crate) fn client_config(
    cfg: &Config,
    role: ClientRole,
    base: &[(&str, &str)],
    password: Option<&Secret>,
) -> Result<ClientConfig, ClientError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap_servers);
    for (k, v) in base {
        c.set(*k, *v);
    }
    for (k, v) in cfg.kafka.properties(role) {
        c.set(k, v);
    }
    let protocol = c.get("security.protocol").map(str::to_string);
    if !cfg.kafka.allow_plaintext && is_plaintext(protocol.as_deref()) {
        return Err(ClientError::Plaintext {
            client: role.name(),
            protocol: protocol.unwrap_or_else(|| "plaintext, the default".into()),
        });
    }
    if let Some(p) = password {
        c.set("sasl.password", String::from_utf8_lossy(p.expose()));
    }
    Ok(c)
}

/// librdkafka's own log lines, at the matching level; warnings and errors
/// of one client and facility at most once per
/// [`crate::metrics::THROTTLE_WINDOW`] (a broker down repeats them on every
/// reconnect), with how many were held back.
pub(crate) fn log(client: &str, level: RDKafkaLogLevel, fac: &str, msg: &str) {
    static LINES: std::sync::OnceLock<crate::metrics::Throttle> = std::sync::OnceLock::new();
    let loud = matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
    );
    let not_logged = if loud {
        match LINES
            .get_or_init(Default::default)
            .admit(&format!("{client}/{fac}"))
        {
            Some(n) => n,
            None => return,
        }
    } else {
        0
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, fac, not_logged, "{msg}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", client, fac, not_logged, "{msg}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, fac, "{msg}"),
    }
}

/// From a client's statistics: the brokers it is connected to, those it
/// needs and cannot reach (down, or connecting again; a broker it never
/// needed, `INIT`, is neither), and the partitions it uses whose leader it
/// cannot reach (none, one gone from the metadata, or one failing: a broker
/// that is down drops out of the cluster's metadata, so its partitions are
/// what still show it).
pub(crate) fn broker_view(stats: &rdkafka::statistics::Statistics) -> crate::metrics::BrokerView {
    let mut v = crate::metrics::BrokerView::default();
    // Brokers that are connected, or not needed yet: no sign of trouble.
    let mut fine = Vec::new();
    for b in stats.brokers.values().filter(|b| b.nodeid >= 0) {
        match b.state.as_str() {
            "UP" | "UPDATE" => {
                v.up += 1;
                fine.push(b.nodeid);
            }
            "INIT" => fine.push(b.nodeid),
            _ => v.down += 1,
        }
    }
    // No leader, a leader gone from the metadata, or one that is failing.
    v.partitions_unreachable = stats
        .topics
        .values()
        .flat_map(|t| t.partitions.values())
        .filter(|p| p.partition >= 0 && !fine.contains(&p.leader))
        .count();
    v
}

/// A bounded label for an error: librdkafka's code, lowercased.
pub(crate) fn error_kind(e: &KafkaError) -> String {
    e.rdkafka_error_code()
        .map_or_else(|| "client".to_string(), |c| format!("{c:?}").to_lowercase())
}

/// When the broker refused `client` for lack of an ACL: the permission
/// this service's principal needs, named as `kafka-acls` names it (the
/// operator's fix), with the broker's own words. `topic` is the topic of a
/// refused record, when known. Other errors: `None`.
pub(crate) fn missing_permission(
    cfg: &crate::config::KafkaConfig,
    client: &str,
    e: &KafkaError,
    topic: Option<&str>,
) -> Option<String> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let needs = match e.rdkafka_error_code()? {
        Code::TopicAuthorizationFailed => match (client, topic) {
            ("consumer", Some(t)) => format!("Read on Topic:{t}"),
            (_, Some(t)) => format!("Write on Topic:{t}"),
            ("consumer", None) => {
                format!("Read on Topic:{}", cfg.input_topics.join(", Topic:"))
            }
            _ => format!(
                "Write on Topic:{} and Topic:{}",
                cfg.clean_topic, cfg.dead_letter_topic
            ),
        },
        Code::GroupAuthorizationFailed => format!("Read on Group:{}", cfg.group_id),
        Code::TransactionalIdAuthorizationFailed => {
            "Write on the TransactionalId (prefixed: see kafka.transactional_id)".to_string()
        }
        Code::ClusterAuthorizationFailed => "IdempotentWrite on Cluster:kafka-cluster".to_string(),
        _ => return None,
    };
    Some(refusal(client, e, &needs))
}

/// The first of `topics` the broker refuses to describe to `client`'s
/// principal (a consumer error names no topic). Asked one topic at a time:
/// a request for every topic would leave the refused ones out silently.
pub(crate) fn refused_topic<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topics: &[String],
) -> Option<String> {
    let refused = rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    topics.iter().find_map(|t| {
        let md = client
            .fetch_metadata(Some(t), std::time::Duration::from_secs(5))
            .ok()?;
        md.topics()
            .iter()
            .any(|x| x.error() == Some(refused))
            .then(|| t.clone())
    })
}

/// What the service says when the broker refuses `client` (`why`, the
/// broker's words) for lack of the ACL `needs`.
pub(crate) fn refusal(client: &str, why: impl std::fmt::Display, needs: &str) -> String {
    format!(
        "the broker refused the {client} ({why}): this service's principal needs {needs} \
         (docs/operations.md, Broker permissions)"
    )
}

/// Counts and logs an error a Kafka call returned.
pub(crate) fn report(telemetry: &Telemetry, client: &str, e: &KafkaError) {
    telemetry.kafka_error(client, &error_kind(e), &e.to_string());
}

/// Lineage and dead-letter headers this service writes; incoming headers
/// with these names are dropped so they cannot be spoofed.
const OWN_PREFIX: &[u8] = b"sanitizer-";

/// Whether `name` is one of this service's own header names, in any case.
pub(crate) fn is_own_header(name: &str) -> bool {
    name.len() >= OWN_PREFIX.len()
        && name.as_bytes()[..OWN_PREFIX.len()].eq_ignore_ascii_case(OWN_PREFIX)
}

/// Marks a canary event (`canary.interval`): set by the service on the
/// canaries it injects and carried from input to clean record whatever
/// `message.headers` says, so the forwarder can skip them and the audit
/// can check them. Its value is the canary's id.
pub const CANARY_HEADER: &str = "sanitizer-canary";

/// Marks a repair record `incident --apply` produced (its value is the
/// incident's id): the audit and later incident scans skip them.
pub const REPAIR_HEADER: &str = "sanitizer-repair";

/// Whether an input header goes onto the clean record.
fn passes(name: &str, keep: &impl Fn(&str) -> bool) -> bool {
    if is_own_header(name) {
        name.eq_ignore_ascii_case(CANARY_HEADER)
    } else {
        keep(name)
    }
}

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

/// The headers of a clean record: those of the input that `keep` lets
/// through (never one of ours but [`CANARY_HEADER`]), then `lineage`. Without input headers to
/// keep, a copy of the prepared `lineage` list.
pub(crate) fn clean_headers(
    input: Option<&BorrowedHeaders>,
    keep: impl Fn(&str) -> bool,
    lineage: &OwnedHeaders,
) -> OwnedHeaders {
    let kept = input
        .map(|hs| hs.iter().filter(|h| passes(h.key, &keep)).count())
        .unwrap_or(0);
    if kept == 0 {
        return lineage.clone();
    }
    let mut out = OwnedHeaders::new_with_capacity(kept + lineage.count());
    for h in input.into_iter().flat_map(|hs| hs.iter()) {
        if passes(h.key, &keep) {
            out = out.insert(h);
        }
    }
    for h in lineage.iter() {
        out = out.insert(h);
    }
    out
}

/// Where a record came from and which rules made it: the lineage headers
/// of every clean record and webhook record.
pub(crate) struct Lineage<'a> {
    /// The rule set's name.
    pub rules: &'a str,
    /// Its content hash.
    pub hash: &'a str,
    /// The id of the hash key its digests were made with.
    pub key_id: &'a str,
}

impl Lineage<'_> {
    /// The headers, as a list to copy onto each record.
    pub(crate) fn headers(&self, extra: &[(&str, &str)]) -> OwnedHeaders {
        let mut h = with_headers(
            OwnedHeaders::new_with_capacity(4 + extra.len()),
            &[
                ("sanitizer-rules", self.rules),
                ("sanitizer-rules-hash", self.hash),
                ("sanitizer-version", env!("CARGO_PKG_VERSION")),
                ("sanitizer-key-id", self.key_id),
            ],
        );
        h = with_headers(h, extra);
        h
    }
}

/// Where a dead letter came from and why.
pub(crate) struct DeadLetterOrigin<'a> {
    /// The reason code (`invalid_json`, `contract.event_too_large`...).
    pub code: &'a str,
    /// A sentence about it, never data.
    pub detail: &'a str,
    /// Input topic, partition and offset.
    pub topic: &'a str,
    /// .
    pub partition: i32,
    /// .
    pub offset: i64,
}

/// The headers of a dead letter: the input's own, then the reason, the
/// origin and the rules that refused it.
pub(crate) fn dead_letter_headers(
    input: Option<&BorrowedHeaders>,
    origin: &DeadLetterOrigin<'_>,
    lineage: &Lineage<'_>,
) -> OwnedHeaders {
    let n = input.map_or(0, |h| h.count());
    let mut headers = OwnedHeaders::new_with_capacity(n + 7);
    for h in input.into_iter().flat_map(|hs| hs.iter()) {
        headers = headers.insert(h);
    }
    let (p, o) = (origin.partition.to_string(), origin.offset.to_string());
    with_headers(
        headers,
        &[
            ("sanitizer-error", origin.code),
            ("sanitizer-error-detail", origin.detail),
            ("sanitizer-source-topic", origin.topic),
            ("sanitizer-source-partition", &p),
            ("sanitizer-source-offset", &o),
            ("sanitizer-rules", lineage.rules),
            ("sanitizer-rules-hash", lineage.hash),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn cfg(
        common: &[(&str, &str)],
        consumer: &[(&str, &str)],
        producer: &[(&str, &str)],
        allow: bool,
    ) -> Config {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let dir = std::env::temp_dir();
        let yaml = format!(
            "kafka: {{ bootstrap_servers: 'a:1', input_topics: [r], clean_topic: c, dead_letter_topic: d, allow_plaintext: true }}\nrules: {{ file: {} }}\ndead_letters: {{ encrypt: false }}\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules/customerio.yaml")
        );
        let p = dir.join(format!("es-kafka-test-{}.yaml", std::process::id()));
        std::fs::write(&p, yaml).unwrap();
        let mut c = Config::load_with_env(Some(&p), vec![]).unwrap();
        c.kafka.allow_plaintext = allow;
        c.kafka.common = map(common);
        c.kafka.consumer = map(consumer);
        c.kafka.producer = map(producer);
        c
    }

    #[test]
    fn every_client_checks_its_own_effective_protocol() {
        let ssl = [("security.protocol", "ssl")];
        let plain = [("security.protocol", "PLAINTEXT")];
        // The consumer's section turns it back to plaintext.
        let c = cfg(&ssl, &plain, &[], false);
        for (role, refused) in [
            (ClientRole::Consumer, true),
            (ClientRole::PrivacyReader, true),
            (ClientRole::Producer, false),
            (ClientRole::WebhookProducer, false),
        ] {
            let r = client_config(&c, role, &[], None);
            assert_eq!(r.is_err(), refused, "{role:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains(role.name()), "{e}");
            }
        }
        // The producer's section.
        let c = cfg(&ssl, &[], &[("security.protocol", "sasl_plaintext")], false);
        assert!(client_config(&c, ClientRole::Producer, &[], None).is_err());
        assert!(client_config(&c, ClientRole::WebhookProducer, &[], None).is_err());
        assert!(client_config(&c, ClientRole::Consumer, &[], None).is_ok());
        // Nothing set is plaintext; allowed only knowingly.
        let c = cfg(&[], &[], &[], false);
        assert!(client_config(&c, ClientRole::Consumer, &[], None).is_err());
        let c = cfg(&[], &[], &[], true);
        assert!(client_config(&c, ClientRole::Consumer, &[], None).is_ok());
    }

    #[test]
    fn own_header_names_are_recognized_in_any_case() {
        assert!(is_own_header("sanitizer-rules"));
        assert!(is_own_header("Sanitizer-Key-Id"));
        assert!(!is_own_header("sanitize"));
        assert!(!is_own_header("trace-id"));
    }

    #[test]
    fn an_authorization_refusal_names_the_acl_to_grant() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let c = cfg(&[], &[], &[], true);
        let e = |code| KafkaError::MessageProduction(code);
        let why = |client, code, topic| missing_permission(&c.kafka, client, &e(code), topic);
        let has = |s: Option<String>, want: &str| {
            let s = s.expect("a refusal");
            assert!(s.contains(want), "{s}");
            assert!(s.contains("Broker permissions"), "{s}");
        };
        has(
            why("producer", Code::TopicAuthorizationFailed, Some("c")),
            "needs Write on Topic:c",
        );
        has(
            why("consumer", Code::TopicAuthorizationFailed, None),
            "needs Read on Topic:r",
        );
        // A topic the broker named as refused to the consumer: Read on it.
        has(
            why("consumer", Code::TopicAuthorizationFailed, Some("req")),
            "needs Read on Topic:req",
        );
        has(
            why("consumer", Code::GroupAuthorizationFailed, None),
            "needs Read on Group:",
        );
        has(
            why("producer", Code::TransactionalIdAuthorizationFailed, None),
            "Write on the TransactionalId",
        );
        has(
            why("producer", Code::ClusterAuthorizationFailed, None),
            "IdempotentWrite",
        );
        // Anything else is not a missing permission (retried, or fatal).
        assert!(why("producer", Code::QueueFull, None).is_none());
        assert!(why("consumer", Code::Authentication, None).is_none());
    }
}
