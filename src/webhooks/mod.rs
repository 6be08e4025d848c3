//! Customer.io's reporting webhooks into the stream: an optional HTTP
//! listener in `run` (its own port) that verifies each request's
//! signature, sanitizes the body with its own rule set, and produces it to
//! a topic, answering only once the broker has acknowledged it.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"status":"accepted"}` | verified, sanitized, acknowledged by the broker |
//! | 200 `{"status":"dead_letter"}` | verified but not sanitizable (malformed JSON...): the original is on the dead-letter topic, acknowledged; a retry would not help |
//! | 401 | signature or timestamp header missing, signature wrong, or (with `max_age`) timestamp stale; nothing produced |
//! | 413 | body over `max_body_bytes`; nothing produced |
//! | 503 | the broker did not acknowledge within `ack_timeout`: Customer.io retries (at least once, nothing lost) |

pub mod signature;

use crate::config::{ClientRole, KeyFile};
use crate::config::{Config, WebhooksConfig};
use crate::engine::{Limits, Scratch};
use crate::kafka::Lineage;
use crate::metrics::Telemetry;
use crate::reload::{self, RuleSource, Watched};
use crate::secret::Secret;
use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a request was refused before anything was produced: a bounded
/// label for metrics and the audit stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `X-CIO-Signature` header.
    MissingSignature,
    /// No `X-CIO-Timestamp` header.
    MissingTimestamp,
    /// The signature matches no configured key.
    InvalidSignature,
    /// With `max_age`: the timestamp is not a number of seconds.
    BadTimestamp,
    /// With `max_age`: the timestamp is too far from now.
    StaleTimestamp,
    /// The body is over `max_body_bytes`.
    TooLarge,
}

impl Rejection {
    /// Every rejection, for pre-registering metrics.
    pub const ALL: [Rejection; 6] = [
        Rejection::MissingSignature,
        Rejection::MissingTimestamp,
        Rejection::InvalidSignature,
        Rejection::BadTimestamp,
        Rejection::StaleTimestamp,
        Rejection::TooLarge,
    ];

    /// The label.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::MissingSignature => "missing_signature",
            Rejection::MissingTimestamp => "missing_timestamp",
            Rejection::InvalidSignature => "invalid_signature",
            Rejection::BadTimestamp => "bad_timestamp",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::TooLarge => "too_large",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why the webhook listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Its rules do not load.
    #[error("cannot load the webhook rules: {0}")]
    Rules(#[from] reload::LoadError),
    /// Its signing keys cannot be read.
    #[error("{0}")]
    Keys(String),
    /// Its producer cannot be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Its producer would not be created as configured.
    #[error("kafka: {0}")]
    Client(#[from] crate::kafka::ClientError),
    /// The port cannot be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        error: std::io::Error,
    },
}

/// The signing keys in use; their files are re-read when they change.
struct KeyRing {
    cfg: WebhooksConfig,
    current: ArcSwap<Vec<Secret>>,
    watched: Watched,
}

impl KeyRing {
    fn load(cfg: &WebhooksConfig, telemetry: &Telemetry) -> Result<KeyRing, String> {
        let watched = Watched::new(cfg.signing_key_files.clone());
        let keys = Config::webhook_signing_keys(cfg)?;
        telemetry.webhook_keys_loaded(keys.len(), false);
        Ok(KeyRing {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(keys),
            watched,
        })
    }

    /// Re-reads the key files if they changed; a failed read keeps the
    /// keys in use.
    fn check(&self, telemetry: &Telemetry) {
        if !self.watched.changed() {
            return;
        }
        match Config::webhook_signing_keys(&self.cfg) {
            Ok(keys) => {
                telemetry.webhook_keys_loaded(keys.len(), true);
                self.current.store(Arc::new(keys));
            }
            Err(e) => telemetry.webhook_keys_failed(&e),
        }
    }
}

struct Shared {
    cfg: WebhooksConfig,
    dead_letter_topic: String,
    rules: RuleSource,
    keys: KeyRing,
    producer: FutureProducer,
    telemetry: Arc<Telemetry>,
}

/// The webhook listener: bound, rules and keys loaded, producer created.
pub struct Listener {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl Listener {
    /// Loads the webhook rules and signing keys, creates the producer and
    /// binds the port. Any problem stops startup.
    pub async fn bind(
        cfg: &Config,
        w: &WebhooksConfig,
        password: Option<&Secret>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Listener, ListenerError> {
        let limits = Limits {
            max_bytes: w.max_body_bytes,
            max_depth: cfg.limits.max_depth,
        };
        // Without a key file of their own, webhook digests use the events'
        // key source (the key ring's active key), so they keep joining with
        // event digests after a rotation.
        let key_file = match &w.hash_key_file {
            Some(f) => KeyFile::Single(f.clone()),
            None => cfg.rules.key_file(),
        };
        let rules = RuleSource::load(&w.rules, key_file, limits, &telemetry)?;
        let keys = KeyRing::load(w, &telemetry).map_err(ListenerError::Keys)?;
        telemetry.webhook_rejections(&Rejection::ALL.map(Rejection::code));
        // Give up on a record when the request gives up on it, so a 503 is
        // not followed by a late delivery of the same record.
        let timeout = w.ack_timeout.as_millis().max(1).to_string();
        let base = [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "1"),
            ("message.timeout.ms", timeout.as_str()),
        ];
        let pc = crate::kafka::client_config(cfg, ClientRole::WebhookProducer, &base, password)?;
        let producer: FutureProducer = pc.create()?;
        let listener = tokio::net::TcpListener::bind(&w.listen)
            .await
            .map_err(|error| ListenerError::Listen {
                addr: w.listen.clone(),
                error,
            })?;
        tracing::info!(listen = %w.listen, path = %w.path, topic = %w.topic, max_age = ?w.max_age, "webhook listener ready");
        Ok(Listener {
            listener,
            shared: Arc::new(Shared {
                cfg: w.clone(),
                dead_letter_topic: cfg.kafka.dead_letter_topic.clone(),
                rules,
                keys,
                producer,
                telemetry,
            }),
        })
    }

    /// Gives the webhook producer new SASL credentials.
    pub(crate) fn credentials_target(&self) -> crate::kafka::sasl::Target {
        let s = self.shared.clone();
        Box::new(move |u, p| {
            use rdkafka::producer::Producer;
            crate::kafka::sasl::set_credentials(s.producer.client(), u, p)
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `stop` changes; requests in progress finish first.
    /// Rules and key files are checked for changes every `reload`.
    pub async fn serve(self, reload: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let shared = self.shared;
        let watcher = {
            let s = shared.clone();
            reload::every(reload, stop.clone(), move || {
                s.rules.check(&s.telemetry);
                s.keys.check(&s.telemetry);
            })
        };
        let app = Router::new()
            .route(&shared.cfg.path, post(receive))
            .with_state(shared.clone());
        let _ = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
        let _ = watcher.await;
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let _ = shared.producer.flush(Duration::from_secs(5));
        })
        .await;
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn receive(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    s.telemetry.webhook_received();
    let response = match handle(&s, &headers, body).await {
        Ok(r) => r,
        Err(rejection) => {
            s.telemetry
                .webhook_rejected(rejection.code(), &s.cfg.path, peer);
            json(
                rejection.status(),
                serde_json::json!({"error": rejection.code()}),
            )
        }
    };
    s.telemetry
        .webhook_answered(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn handle(s: &Shared, headers: &HeaderMap, body: Body) -> Result<Response, Rejection> {
    let max = s.cfg.max_body_bytes;
    let declared = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Rejection::TooLarge);
    }
    let body: Bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|_| Rejection::TooLarge)?;
    let signature = header(headers, "x-cio-signature").ok_or(Rejection::MissingSignature)?;
    let timestamp = header(headers, "x-cio-timestamp").ok_or(Rejection::MissingTimestamp)?;
    if let Some(max_age) = s.cfg.max_age {
        let ts: i64 = timestamp.parse().map_err(|_| Rejection::BadTimestamp)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now.abs_diff(ts) > max_age.as_secs() {
            return Err(Rejection::StaleTimestamp);
        }
    }
    if !signature::verify(&s.keys.current.load(), timestamp, &body, signature) {
        return Err(Rejection::InvalidSignature);
    }
    s.telemetry.webhook_verified();
    Ok(produce(s, &body, timestamp).await)
}

/// The person's identifier in a reporting webhook, for the record key.
fn person(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?;
    let candidates = [
        data.pointer("/identifiers/id"),
        data.get("customer_id"),
        data.pointer("/identifiers/cio_id"),
        data.pointer("/identifiers/email"),
        data.get("recipient"),
        data.get("email_address"),
    ];
    let id = candidates.into_iter().flatten().find_map(|c| match c {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    id
}

async fn produce(s: &Shared, body: &[u8], timestamp: &str) -> Response {
    let rules = s.rules.current();
    let mut out = Vec::new();
    let result = rules.sanitize(body, &mut Scratch::default(), &mut out);
    let lineage = Lineage {
        rules: rules.name(),
        hash: rules.content_hash(),
        key_id: rules.key_id(),
    };
    let headers = |extra: &[(&str, &str)]| -> OwnedHeaders {
        let mut all = vec![
            ("sanitizer-source", "customerio-webhook"),
            ("sanitizer-webhook-timestamp", timestamp),
        ];
        all.extend_from_slice(extra);
        lineage.headers(&all)
    };
    let timeout = s.cfg.ack_timeout;
    let (records, topic, key, hdrs, reason) = match result {
        Ok(records) => {
            let key = person(body).map(|p| rules.digest(&p));
            let payloads: Vec<Vec<u8>> = records.iter(&out).map(<[u8]>::to_vec).collect();
            (payloads, &s.cfg.topic, key, headers(&[]), None)
        }
        Err(reason) => {
            let detail = reason.to_string();
            let h = headers(&[
                ("sanitizer-error", reason.code()),
                ("sanitizer-error-detail", &detail),
            ]);
            (
                vec![body.to_vec()],
                &s.dead_letter_topic,
                None,
                h,
                Some(reason),
            )
        }
    };
    for payload in &records {
        let mut rec = FutureRecord::to(topic)
            .payload(payload)
            .headers(hdrs.clone());
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        let sent = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            s.producer.send(rec, Timeout::After(timeout)),
        )
        .await;
        let error = match sent {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "no acknowledgement in time".to_string(),
        };
        s.telemetry.webhook_unavailable(topic, &error);
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "broker_unavailable"}),
        );
    }
    match reason {
        None => {
            s.telemetry.webhook_produced(true);
            json(StatusCode::OK, serde_json::json!({"status": "accepted"}))
        }
        Some(r) => {
            s.telemetry.webhook_produced(false);
            s.telemetry.webhook_dead_letter(&s.cfg.path, &r);
            json(
                StatusCode::OK,
                serde_json::json!({"status": "dead_letter", "reason": r.code()}),
            )
        }
    }
}
