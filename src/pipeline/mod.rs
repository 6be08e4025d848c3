//! The Kafka service: consume raw events, sanitize, produce to the clean
//! topic (or the dead-letter topic with a reason), at least once or
//! exactly once (`kafka.delivery`).
//!
//! | module | its one job |
//! |---|---|
//! | [`route`] | pure: one message + rules + suppression set -> records or nothing |
//! | [`lane`] | a consumer, a producer and the thread that moves messages between them |
//! | [`deliver`] | at-least-once and exactly-once behind one interface: when an input is done |
//! | [`tracker`] | per-partition completion and the bound on work in flight |
//! | `http` | `/metrics`, `/healthz`, `/readyz` |
//!
//! This file only starts and stops: it loads the rules, starts the privacy
//! reader and the webhook listener, creates the lanes, runs the side tasks
//! (HTTP, reload, broker health), and on shutdown (passed in) stops the
//! lanes, which finish what is in flight and commit within
//! `shutdown.timeout`.

mod canary;
pub mod deliver;
pub(crate) mod http;
pub mod inventory;
pub mod lane;
pub mod route;
pub mod shadow;
pub mod tracker;

use crate::config::Config;
use crate::metrics::Telemetry;
use crate::privacy::reader::Privacy;
use crate::reload::RuleSource;
use lane::{Common, Lane};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the service stopped with an error (the binary exits non-zero, and
/// Kubernetes restarts the pod).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Rules could not be loaded at startup.
    #[error("cannot load the rules: {0}")]
    Rules(#[from] crate::reload::LoadError),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A Kafka client would not be created as configured.
    #[error("kafka: {0}")]
    Client(#[from] crate::kafka::ClientError),
    /// librdkafka reported a fatal error, or delivery cannot go on.
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
    /// The webhook listener cannot start.
    #[error("webhooks: {0}")]
    Webhooks(#[from] crate::webhooks::ListenerError),
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
    /// A consumer received an assignment (possibly empty).
    pub joined: AtomicBool,
    /// The producer fetched metadata recently.
    pub producer: AtomicBool,
    /// Brokers and partitions the producers use and cannot reach (their
    /// statistics).
    pub producer_unreachable: std::sync::atomic::AtomicUsize,
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

/// A running service: clients created, rules loaded, endpoints bound.
pub struct Pipeline {
    common: Arc<Common>,
    lanes: Vec<Arc<Lane>>,
    http: tokio::net::TcpListener,
    webhooks: Option<crate::webhooks::Listener>,
}

impl Pipeline {
    /// Loads rules, creates the Kafka clients and binds the HTTP endpoint.
    pub async fn new(cfg: Config, telemetry: Arc<Telemetry>) -> Result<Pipeline, PipelineError> {
        let limits = crate::engine::Limits {
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
        let password = cfg
            .sasl_password()
            .map_err(|e| PipelineError::Fatal(e.to_string()))?;
        // Where a lane, the privacy reader or the webhook listener records
        // the error that stops the service.
        let fatal = Arc::new(crate::kafka::Fatal::default());
        let privacy = Privacy::from_config(
            &cfg,
            &rules,
            password.as_ref(),
            telemetry.clone(),
            fatal.clone(),
        )
        .map_err(|e| PipelineError::Privacy(e.to_string()))?
        .map(Arc::new);
        let http = tokio::net::TcpListener::bind(&cfg.http.listen)
            .await
            .map_err(|error| PipelineError::Listen {
                addr: cfg.http.listen.clone(),
                error,
            })?;
        let sealer = crate::deadletter::Sealer::from_config(&cfg.dead_letters)
            .map_err(PipelineError::Fatal)?
            .map(Arc::new);
        let webhooks = match &cfg.webhooks {
            Some(w) => Some(
                crate::webhooks::Listener::bind(
                    &cfg,
                    w,
                    password.as_ref(),
                    sealer.clone(),
                    telemetry.clone(),
                    fatal.clone(),
                )
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
            delivery = ?cfg.kafka.delivery,
            "starting"
        );
        let lanes = match cfg.limits.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shadow = match &cfg.rules.shadow_file {
            Some(f) => Some(Arc::new(crate::reload::ShadowSource::load(
                f,
                cfg.rules.key_file(),
                limits,
                &telemetry,
            )?)),
            None => None,
        };
        let started = lane::Started {
            shadow,
            rules,
            privacy,
            sealer,
            health,
            password,
            fatal,
        };
        let common = Arc::new(Common::new(cfg, telemetry, started));
        let plan = deliver::Plan::new(&common)?;
        let lanes = (0..lanes)
            .map(|i| Lane::new(&common, &plan, i).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline {
            common,
            lanes,
            http,
            webhooks,
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
            common,
            lanes,
            http,
            webhooks,
        } = self;
        let cfg = &common.cfg;
        let (stop_side, stop_side_rx) = tokio::sync::watch::channel(false);
        let (stop_webhooks, stop_webhooks_rx) = tokio::sync::watch::channel(false);
        // Every client whose SASL credentials follow the password file.
        let mut targets: Vec<crate::kafka::sasl::Target> = Vec::new();
        for lane in &lanes {
            targets.extend(lane.credential_targets());
        }
        if let Some(pr) = common.privacy.clone() {
            targets.push(Box::new(move |u, p| {
                crate::kafka::sasl::set_credentials(pr.client().client(), u, p)
            }));
        }
        if let Some(w) = &webhooks {
            targets.push(w.credentials_target());
        }
        let sasl = crate::kafka::sasl::Watch::new(cfg, targets);
        // At shutdown, requests in progress get a slice of the bound (one
        // acknowledgement wait, at most a quarter); the lanes drain meanwhile.
        let grace = cfg
            .webhooks
            .as_ref()
            .map_or(Duration::ZERO, |w| w.ack_timeout)
            .min(cfg.shutdown.timeout / 4);
        let webhook_task = webhooks
            .map(|w| tokio::spawn(w.serve(cfg.rules.reload_interval, grace, stop_webhooks_rx)));
        let http_task = tokio::spawn(http::serve(http, common.clone(), stop_side_rx.clone()));
        let reload_task = {
            let c = common.clone();
            crate::reload::every(cfg.rules.reload_interval, stop_side_rx.clone(), move || {
                if let Some(s) = &c.sealer {
                    s.check(&c.telemetry);
                }
                if c.rules.check(&c.telemetry) {
                    // A new active key: the suppression set is rebuilt with
                    // it; the old set (and its key) serves until then.
                    if let (Some(p), Some(k)) = (&c.privacy, c.rules.active_key()) {
                        if k.id != p.suppressions.key_id() {
                            p.rebuild_with(k);
                        }
                    }
                }
                if let Some(s) = &sasl {
                    s.check(&c.telemetry);
                }
                if let Some(s) = &c.shadow {
                    s.source.check(&c.telemetry);
                }
            })
        };
        let canary_task = (!cfg.canary.interval.is_zero())
            .then(|| tokio::spawn(canary::inject(common.clone(), stop_side_rx.clone())));
        let health_task = {
            let (lane, c, mut stop) = (lanes[0].clone(), common.clone(), stop_side_rx.clone());
            tokio::spawn(async move {
                loop {
                    let (l, topic) = (lane.clone(), c.cfg.kafka.clean_topic.clone());
                    let check = tokio::task::spawn_blocking(move || l.reaches_broker(&topic));
                    // Shutdown does not wait for a check on a slow broker.
                    let ok = tokio::select! { ok = check => ok.unwrap_or(false), _ = stop.changed() => break };
                    c.health.producer.store(ok, Ordering::Relaxed);
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}, _ = stop.changed() => break }
                }
            })
        };
        tokio::pin!(shutdown);
        let mut failure = None;
        // No event is consumed before the suppression set is complete.
        let mut stopped_early = false;
        if let Some(p) = &common.privacy {
            tracing::info!(topic = %p.topic, "reading the privacy requests topic to its end before consuming events");
            // The webhook listener, already serving, can fail meanwhile.
            let failed = async {
                while !common.fatal.is_set() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                _ = &mut shutdown => stopped_early = true,
                _ = failed => stopped_early = true,
                ready = p.wait_ready() => match ready {
                    Ok(()) => common.health.privacy.store(true, Ordering::Relaxed),
                    // Recorded in `common.fatal`: reported below.
                    Err(_) => stopped_early = true,
                },
            }
        }
        let mut topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
        if let Some(p) = &cfg.privacy {
            topics.push(&p.requests_topic);
        }
        let mut running = Vec::new();
        if !stopped_early {
            for lane in &lanes {
                if let Err(e) = lane.subscribe(&topics) {
                    failure = Some(format!("cannot subscribe to {topics:?}: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() && !stopped_early {
            for lane in &lanes {
                let lane = lane.clone();
                running.push(tokio::task::spawn_blocking(move || lane.run()));
            }
            // Until shutdown, or until a lane stops by itself (a fatal error).
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if common.failure().is_some() || running.iter().any(|h| h.is_finished()) {
                            break;
                        }
                    }
                }
            }
        }
        let consumed = common.counts.consumed.load(Ordering::Relaxed);
        tracing::info!(consumed, "stopping: finishing in-flight messages");
        // A canary on its way is not waited for: the next replica sends one.
        if let Some(t) = &canary_task {
            t.abort();
        }
        let started = Instant::now();
        let deadline = started + cfg.shutdown.timeout;
        // The lanes drain until `drained`; the rest of the bound is for
        // their last commit and for closing the clients, so the process
        // ends within `shutdown.timeout` whatever the broker does.
        let reserve = (cfg.shutdown.timeout / 5).min(Duration::from_secs(2));
        let drained = deadline - reserve;
        // The webhook listener stops accepting and answers what it holds
        // within its slice (`grace`) while the lanes drain.
        let _ = stop_webhooks.send(true);
        common.shut_down(drained);
        if let Some(t) = webhook_task {
            let _ = tokio::time::timeout(grace + Duration::from_secs(1), t).await;
        }
        let mut unfinished = 0;
        for h in running {
            // Lanes respect `drained` themselves; the reserve covers their
            // last commit.
            match tokio::time::timeout_at(deadline.into(), h).await {
                Ok(Ok(n)) => unfinished += n,
                _ => unfinished += 1,
            }
        }
        let _ = stop_side.send(true);
        let _ = tokio::join!(reload_task, health_task);
        if let Some(p) = common.privacy.clone() {
            let stopping = tokio::task::spawn_blocking(move || p.stop());
            let _ = tokio::time::timeout_at(deadline.into(), stopping).await;
        }
        http_task.abort();
        // The lanes' consumers leave the group and close here, on a thread
        // of their own: a close that outlasts the deadline (librdkafka
        // waiting on a group that is gone) is left behind, and neither the
        // stop nor the runtime's own shutdown waits for it (the runtime
        // waits for its blocking pool without a bound).
        let (closed, closing) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("closing".into())
            .spawn(move || {
                drop(lanes);
                let _ = closed.send(());
            });
        if spawned.is_ok() {
            let _ = tokio::time::timeout_at(deadline.into(), closing).await;
        }
        let counts = &common.counts;
        let summary = Summary {
            consumed: counts.consumed.load(Ordering::Relaxed),
            clean: counts.clean.load(Ordering::Relaxed),
            dead_letters: counts.dead.load(Ordering::Relaxed),
            suppressed: counts.suppressed.load(Ordering::Relaxed),
        };
        tracing::info!(
            consumed = summary.consumed,
            clean = summary.clean,
            dead_letters = summary.dead_letters,
            suppressed = summary.suppressed,
            "stopped"
        );
        if let Some(f) = failure.or_else(|| common.failure()) {
            return Err(PipelineError::Fatal(f));
        }
        if unfinished > 0 {
            common.telemetry.unfinished_at_shutdown(unfinished);
            return Err(PipelineError::ShutdownTimeout(unfinished));
        }
        Ok(summary)
    }
}
