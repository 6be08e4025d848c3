//! Customer.io's reporting webhooks into the stream: an optional HTTP
//! listener in `run` (its own port) that verifies each request's
//! signature, sanitizes the body with its own rule set, and produces it to
//! a topic, answering only once the broker has acknowledged it.
//!
//! | answer | when |
//! |---|---|
//! | 200 `{"status":"accepted"}` | verified, sanitized, acknowledged by the broker |
//! | 200 `{"status":"dead_letter"}` | verified but not sanitizable (malformed JSON...): the original is on the dead-letter topic, acknowledged; a retry would not help |
//! | 400 | the body could not be read (cut off, malformed chunking); nothing produced |
//! | 401 | signature or timestamp header missing or malformed (the signature is 64 lowercase hex digits, the timestamp a number of seconds), signature wrong, or (with `max_age`) timestamp stale; nothing produced |
//! | 408 | the body did not arrive within `body_timeout`; nothing produced |
//! | 413 | body over `max_body_bytes`; nothing produced |
//! | 503 `busy` | `max_buffered_bytes` of bodies already held: retry later; nothing produced |
//! | 503 `broker_unavailable` | the broker did not acknowledge within `ack_timeout`: Customer.io retries. The record may still have been written (the broker can append it while its acknowledgement is late or lost), so a retry can be a duplicate: every record carries `sanitizer-webhook-body-sha256` to deduplicate on |
//!
//! What it holds is bounded before a byte of body is read: the headers are
//! checked first (signature and timestamp present and well-formed,
//! `Content-Length` within `max_body_bytes`), the body's bytes are reserved
//! from `max_buffered_bytes`, connections are capped at `max_connections`,
//! and hyper closes a connection whose request headers do not arrive within
//! `header_timeout` (an idle keep-alive connection included).

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
    /// The body could not be read.
    BadBody,
    /// The body did not arrive within `body_timeout`.
    SlowBody,
    /// `max_buffered_bytes` is spent.
    Busy,
}

impl Rejection {
    /// Every rejection, for pre-registering metrics.
    pub const ALL: [Rejection; 9] = [
        Rejection::MissingSignature,
        Rejection::MissingTimestamp,
        Rejection::InvalidSignature,
        Rejection::BadTimestamp,
        Rejection::StaleTimestamp,
        Rejection::TooLarge,
        Rejection::BadBody,
        Rejection::SlowBody,
        Rejection::Busy,
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
            Rejection::BadBody => "bad_body",
            Rejection::SlowBody => "slow_body",
            Rejection::Busy => "busy",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BadBody => StatusCode::BAD_REQUEST,
            Rejection::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Rejection::Busy => StatusCode::SERVICE_UNAVAILABLE,
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
    /// The broker refuses its principal the webhook topic.
    #[error("{0}")]
    Refused(String),
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
    /// Dead letters are sealed with it (`None`: `dead_letters.encrypt: false`).
    sealer: Option<Arc<crate::deadletter::Sealer>>,
    /// Bytes of request bodies that may be held at once.
    buffered: Arc<tokio::sync::Semaphore>,
    rules: RuleSource,
    keys: KeyRing,
    producer: FutureProducer,
    telemetry: Arc<Telemetry>,
    /// Where a refusal for lack of an ACL is recorded: the service stops.
    fatal: Arc<crate::kafka::Fatal>,
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
        sealer: Option<Arc<crate::deadletter::Sealer>>,
        telemetry: Arc<Telemetry>,
        fatal: Arc<crate::kafka::Fatal>,
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
        // Give up on a record when the request gives up on it. (A record
        // already sent can still be appended by the broker after that: the
        // 503 contract in the module docs.)
        let timeout = w.ack_timeout.as_millis().max(1).to_string();
        let base = [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "1"),
            ("message.timeout.ms", timeout.as_str()),
        ];
        let pc = crate::kafka::client_config(cfg, ClientRole::WebhookProducer, &base, password)?;
        let producer: FutureProducer = pc.create()?;
        refused_the_topic(&producer, &w.topic)?;
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
                sealer,
                buffered: Arc::new(tokio::sync::Semaphore::new(w.max_buffered_bytes)),
                rules,
                keys,
                producer,
                telemetry,
                fatal,
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

    /// Serves until `stop` changes; then stops accepting and gives the
    /// requests in progress `grace` to finish (the rest are cut: their
    /// senders retry). Rules and key files are checked every `reload`.
    pub async fn serve(
        self,
        reload: Duration,
        grace: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let shared = self.shared;
        let watcher = {
            let s = shared.clone();
            reload::every(reload, stop.clone(), move || {
                s.rules.check(&s.telemetry);
                s.keys.check(&s.telemetry);
                s.telemetry.webhook_rejections_summary(false);
            })
        };
        let app = Router::new()
            .route(&shared.cfg.path, post(receive))
            .with_state(shared.clone());
        let connections = Arc::new(tokio::sync::Semaphore::new(shared.cfg.max_connections));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.changed() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    // Out of file descriptors and the like: wait, go on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                shared.telemetry.webhook_connection_refused();
                drop(stream);
                continue;
            };
            let app = app.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut app = app.clone();
                    async move {
                        use tower_service::Service;
                        app.call(req.map(Body::new)).await
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.cfg.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(permit);
            });
        }
        drop(self.listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = grace.as_secs_f64(),
                "webhook requests still in progress at shutdown were cut; their senders retry"
            );
        }
        shared.telemetry.webhook_rejections_summary(true);
        let _ = watcher.await;
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let _ = crate::kafka::native::flush(shared.producer.client(), grace);
        })
        .await;
    }
}

/// Stops startup when the broker refuses the principal `topic` (no
/// `Write`, which implies `Describe`). Other answers wait for the first
/// request: a broker unreachable now may be back by then.
fn refused_the_topic(producer: &FutureProducer, topic: &str) -> Result<(), ListenerError> {
    use rdkafka::producer::Producer;
    match crate::kafka::refused_topic(producer.client(), &[topic.to_string()]) {
        Some(t) => Err(ListenerError::Refused(crate::kafka::refusal(
            "webhook producer",
            "Topic authorization failed",
            &format!("Write on Topic:{t}"),
        ))),
        None => Ok(()),
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

/// Whether `s` is a signature in the documented form: 64 lowercase hex
/// digits.
fn well_formed_signature(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

async fn handle(s: &Shared, headers: &HeaderMap, body: Body) -> Result<Response, Rejection> {
    // Everything that can be judged from the headers, before a byte of
    // body is read.
    let signature = header(headers, "x-cio-signature").ok_or(Rejection::MissingSignature)?;
    let timestamp = header(headers, "x-cio-timestamp").ok_or(Rejection::MissingTimestamp)?;
    if !well_formed_signature(signature) {
        // Not even the form of a signature: no key is tried, no body read.
        return Err(Rejection::InvalidSignature);
    }
    let ts: i64 = timestamp.parse().map_err(|_| Rejection::BadTimestamp)?;
    if let Some(max_age) = s.cfg.max_age {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if now.abs_diff(ts) > max_age.as_secs() {
            return Err(Rejection::StaleTimestamp);
        }
    }
    let max = s.cfg.max_body_bytes;
    let declared = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Rejection::TooLarge);
    }
    // The body's bytes, reserved from what all requests may hold together.
    let reserve = declared.unwrap_or(max).max(1);
    let _held = s
        .buffered
        .clone()
        .try_acquire_many_owned(reserve as u32)
        .map_err(|_| Rejection::Busy)?;
    let limited = http_body_util::Limited::new(body, max);
    let read = tokio::time::timeout(
        s.cfg.body_timeout,
        http_body_util::BodyExt::collect(limited),
    )
    .await
    .map_err(|_| Rejection::SlowBody)?;
    let body: Bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Rejection::TooLarge)
        }
        Err(_) => return Err(Rejection::BadBody),
    };
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
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    };
    let headers = |extra: &[(&str, &str)]| -> OwnedHeaders {
        let mut all = vec![
            ("sanitizer-source", "customerio-webhook"),
            ("sanitizer-webhook-timestamp", timestamp),
            ("sanitizer-webhook-body-sha256", digest.as_str()),
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
            let mut extra = vec![
                ("sanitizer-error", reason.code()),
                ("sanitizer-error-detail", detail.as_str()),
            ];
            // Sealed at rest like every dead letter.
            let sealed = s
                .sealer
                .as_ref()
                .map(|k| k.seal(body, None, std::iter::empty()));
            if let Some(sl) = &sealed {
                extra.push((crate::deadletter::SCHEME_HEADER, crate::deadletter::SCHEME));
                extra.push((crate::deadletter::KEY_ID_HEADER, sl.key_id.as_str()));
            }
            let h = headers(&extra);
            let payload = sealed.map_or_else(|| body.to_vec(), |sl| sl.payload);
            (vec![payload], &s.dead_letter_topic, None, h, Some(reason))
        }
    };
    for payload in &records {
        let mut rec = FutureRecord::to(topic)
            .payload(payload)
            .headers(hdrs.clone());
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        let sent =
            tokio::time::timeout(timeout, s.producer.send(rec, Timeout::After(timeout))).await;
        let error = match sent {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => {
                // Not retried: Customer.io's retries would meet it too.
                let needs = format!("Write on Topic:{topic}");
                s.fatal.refused_for("webhook producer", &e, &needs);
                e.to_string()
            }
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
