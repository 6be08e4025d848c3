//! One port: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (rules loaded, group joined, producer reaches a
//! broker), `/inventory` (the field inventory, JSON; paths, never values),
//! `/shadow` (what the shadow rules would change; sanitized differences).

use super::Health;
use crate::metrics::Telemetry;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `/metrics` and `/healthz`: what every process of this crate that runs
/// as a service answers (the service, the auditor).
pub(crate) fn basic(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = telemetry.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        t.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    common: Arc<super::lane::Common>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let telemetry = common.telemetry.clone();
    let health: Arc<Health> = common.health.clone();
    let inventory = common.inventory.as_ref().map(|f| f.inventory.clone());
    let app = basic(telemetry)
        .route(
            "/shadow",
            get(move || {
                let c = common.clone();
                async move {
                    match &c.shadow {
                        Some(f) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            f.to_json().to_string(),
                        ),
                        None => (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "no shadow rules (rules.shadow_file)\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/inventory",
            get(move || {
                let inv = inventory.clone();
                async move {
                    match inv
                        .as_ref()
                        .and_then(|i| i.lock().ok().map(|i| i.to_json()))
                    {
                        Some(doc) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "application/json")],
                            doc.to_string(),
                        ),
                        None => (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "the inventory is off (inventory.sample_every: 0)\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move { readiness(&h).into_response() }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
}

fn readiness(h: &Health) -> (StatusCode, String) {
    let mut missing = Vec::new();
    if !h.rules.load(Ordering::Relaxed) {
        missing.push("rules not loaded");
    }
    if !h.joined.load(Ordering::Relaxed) {
        missing.push("consumer has not joined its group");
    }
    let down = h.producer_unreachable.load(Ordering::Relaxed);
    let unreachable;
    if !h.producer.load(Ordering::Relaxed) {
        missing.push("producer cannot reach a broker");
    } else if down > 0 {
        unreachable = format!(
            "producer cannot reach {down} of the brokers or partition leaders it produces to \
             (event_sanitizer_brokers_down, event_sanitizer_partitions_unreachable)"
        );
        missing.push(&unreachable);
    }
    if !h.privacy.load(Ordering::Relaxed) {
        missing.push("privacy requests not yet read to the end of their topic");
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join("; ")),
        )
    }
}
