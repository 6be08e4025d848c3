//! The canary injector (`canary.interval`): one synthetic event per
//! interval to an input topic, through the same consumer, rules and
//! producer as every event (see [`crate::audit::canary`]). A canary that
//! cannot be produced is logged and counted as a Kafka error; the next
//! interval tries again.

use super::lane::Common;
use crate::audit::canary;
use crate::config::ClientRole;
use crate::kafka::CANARY_HEADER;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

/// Who sends: the pod's name in Kubernetes (`HOSTNAME`), so each replica's
/// canaries are told apart.
fn instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "event-sanitizer".into())
        .replace('.', "-")
}

/// Produces a canary every `canary.interval` until `stop` changes.
pub(super) async fn inject(common: Arc<Common>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = &common.cfg;
    let every = cfg.canary.interval;
    let topic = cfg.canary.topic(&cfg.kafka).to_string();
    let producer: FutureProducer = match crate::kafka::client_config(
        cfg,
        ClientRole::Producer,
        &[("enable.idempotence", "true"), ("acks", "all")],
        common.password.as_ref(),
    )
    .map_err(|e| e.to_string())
    .and_then(|c| c.create().map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "canaries: cannot create their producer; no canary will be sent");
            return;
        }
    };
    let me = instance();
    tracing::info!(
        topic,
        every_s = every.as_secs_f64(),
        instance = me,
        "producing canary events"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let id = canary::id(&me, now_ms);
        let payload = canary::event(&id, &crate::audit::time::iso8601(now_ms));
        let headers = OwnedHeaders::new().insert(Header {
            key: CANARY_HEADER,
            value: Some(id.as_str()),
        });
        let record = FutureRecord::to(&topic)
            .payload(&payload)
            .key(canary::USER_ID)
            .headers(headers);
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => common.telemetry.audit.canary_sent(&id, now_ms / 1000),
            Err((e, _)) => crate::kafka::report(&common.telemetry, "canary", &e),
        }
    }
}
