//! `audit`: the clean topic read again, in its own consumer group, and
//! every record examined by [`Inspector`](crate::audit::Inspector)
//! independently of the rules that made it; canaries checked as they
//! arrive. Findings are counted (`event_sanitizer_audit_findings_total`)
//! and written to the audit stream with topic, partition, offset, path and
//! detector, never the value. It never produces anything.
//!
//! As a service it serves `/metrics` and `/healthz` on `http.listen` and
//! commits what it has examined. With `--once` it reads the whole topic to
//! the end it has now, outside any group, prints what it found and exits 1
//! when anything was.

use super::Failure;
use crate::audit::{canary, Finding, Inspector, Tally};
use crate::config::{ClientRole, Config};
use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::kafka::scan::{End, Scan, Start};
use crate::kafka::{CANARY_HEADER, REPAIR_HEADER};
use crate::metrics::Telemetry;
use crate::rules::RuleFile;
use clap::{Args, ValueEnum};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How `--once` prints what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// One line per (location shape, detector).
    Text,
    /// One JSON document.
    Json,
}

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// The service configuration (the same file `run` uses).
    #[arg(long, short = 'c', value_name = "FILE", env = "EVENT_SANITIZER_CONFIG")]
    config: Option<PathBuf>,
    /// Read the clean topic from its start to its end now, print what was
    /// found and exit (1 when anything was). Without it the audit runs as a
    /// service in its own consumer group (`audit.group_id`).
    #[arg(long)]
    once: bool,
    /// How `--once` prints.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// The running rules, for their `keep` decisions only: compiled with the
/// placeholder key, so the audit needs no hash key.
fn rules(cfg: &Config) -> Result<(Arc<Sanitizer>, RuleFile, String), String> {
    let text = std::fs::read(&cfg.rules.file)
        .map_err(|e| format!("cannot read {}: {e}", cfg.rules.file.display()))?;
    let (file, _) = RuleFile::load(&cfg.rules.file).map_err(|d| d.to_string())?;
    let limits = Limits {
        max_bytes: cfg.limits.max_message_bytes,
        max_depth: cfg.limits.max_depth,
    };
    let s = Sanitizer::compile(&file, KeySupply::Placeholder, limits).map_err(|e| e.to_string())?;
    Ok((Arc::new(s), file, crate::rules::content_hash(&text)))
}

/// What the audit does with one clean record; returns its findings.
pub(crate) fn examine(
    inspector: &Inspector,
    telemetry: &Telemetry,
    m: &BorrowedMessage<'_>,
) -> Option<Vec<Finding>> {
    let payload = m.payload()?;
    let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
    telemetry.audit.record();
    let canary_id = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key.eq_ignore_ascii_case(CANARY_HEADER))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    });
    let repair = m
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key.eq_ignore_ascii_case(REPAIR_HEADER)));
    if repair {
        return None;
    }
    if let Some(id) = canary_id {
        let leaked = canary::leaks(&id, payload);
        let sent_s = canary::sent_ms(&id).unwrap_or(0) / 1000;
        telemetry
            .audit
            .canary_arrived(&id, sent_s, partition, offset, &leaked);
        return None;
    }
    match inspector.inspect(payload) {
        Ok(found) => {
            for f in &found {
                telemetry
                    .audit
                    .finding(topic, partition, offset, &f.path, f.detector);
            }
            Some(found)
        }
        Err(_) => {
            telemetry.audit.not_json(topic, partition, offset);
            None
        }
    }
}

pub(crate) fn run(args: AuditArgs) -> Result<ExitCode, Failure> {
    let cfg = Config::load(args.config.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
    super::run::init_logging(&cfg.log).map_err(Failure::usage)?;
    let fail = |e: String| Failure {
        message: e,
        code: 1,
    };
    let (sanitizer, file, mut hash) = rules(&cfg).map_err(Failure::usage)?;
    let mut inspector = Inspector::new(Some(sanitizer), Some(&file));
    let telemetry = Arc::new(Telemetry::new());
    telemetry
        .audit
        .declare(&Inspector::detector_names(), canary::KINDS);
    let password = cfg
        .sasl_password()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let topic = cfg.kafka.clean_topic.clone();
    let group = cfg.audit.group(&cfg.kafka);
    let consumer_cfg = crate::kafka::client_config(
        &cfg,
        ClientRole::Consumer,
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            (
                "enable.partition.eof",
                if args.once { "true" } else { "false" },
            ),
            ("auto.offset.reset", "earliest"),
            // Exactly-once output leaves aborted records on the topic.
            ("isolation.level", "read_committed"),
        ],
        password.as_ref(),
    )
    .map_err(|e| Failure::usage(e.to_string()))?;
    let consumer: BaseConsumer = consumer_cfg.create().map_err(|e| fail(e.to_string()))?;
    let started = Instant::now();
    let mut tally = Tally::default();

    if args.once {
        let mut scan =
            Scan::open(consumer, &topic, None, Start::Beginning, End::Now).map_err(fail)?;
        while let Some(m) = scan.next().map_err(fail)? {
            match examine(&inspector, &telemetry, &m) {
                Some(found) => tally.add(&found),
                None => tally.records += 1,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        print_summary(&tally, &topic, args.format, secs, &telemetry);
        tracing::info!(target: "event_sanitizer::audit", event = "audit_scanned", topic, records = tally.records, records_with_findings = tally.records_with_findings, "clean topic audited");
        let (_, leaks, not_json) = telemetry.audit.totals();
        return Ok(
            if tally.by_shape.is_empty() && not_json == 0 && leaks == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            },
        );
    }

    // As a service.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&cfg.http.listen))
        .map_err(|e| Failure::usage(format!("cannot listen on {}: {e}", cfg.http.listen)))?;
    tracing::info!(addr = %cfg.http.listen, topic, group, "auditing the clean topic; serving /metrics and /healthz");
    {
        let (t, s) = (telemetry.clone(), stop.clone());
        rt.spawn(serve(listener, t));
        rt.spawn(async move {
            super::run::signals().await;
            s.store(true, Ordering::Relaxed);
        });
    }
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(|e| fail(format!("cannot subscribe to `{topic}`: {e}")))?;
    let mut last_commit = Instant::now();
    let mut last_reload = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(e)) => crate::kafka::report(&telemetry, "audit", &e),
            Some(Ok(m)) => {
                examine(&inspector, &telemetry, &m);
                let _ = consumer.store_offset_from_message(&m);
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(5) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
        if last_reload.elapsed() >= cfg.rules.reload_interval {
            last_reload = Instant::now();
            // The rules' keep decisions follow the rule file; a file that
            // does not load keeps the rules in use.
            match rules(&cfg) {
                Ok((s, f, h)) if h != hash => {
                    tracing::info!(rule_set = %f.name, hash = %h, "audit: rules reloaded");
                    inspector = Inspector::new(Some(s), Some(&f));
                    hash = h;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "audit: the rule file does not load; the rules in use stay")
                }
            }
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(ExitCode::SUCCESS)
}

async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    let app = crate::pipeline::http::basic(telemetry);
    let _ = axum::serve(listener, app).await;
}

fn print_summary(t: &Tally, topic: &str, format: Format, secs: f64, telemetry: &Telemetry) {
    let (canaries, leaks, not_json) = telemetry.audit.totals();
    match format {
        Format::Json => {
            let findings: Vec<serde_json::Value> = t
                .by_shape
                .iter()
                .map(|((shape, detector), n)| {
                    serde_json::json!({"path": shape, "detector": detector, "records": n})
                })
                .collect();
            let doc = serde_json::json!({
                "topic": topic,
                "records": t.records,
                "records_with_findings": t.records_with_findings,
                "not_json": not_json,
                "findings": findings,
                "canaries": canaries,
                "canary_leaks": leaks,
                "seconds": secs,
            });
            println!("{doc}");
        }
        Format::Text => {
            println!(
                "audited {} records of `{topic}` in {secs:.1} s: {} with findings, {} not JSON, {canaries} canaries ({leaks} leaked values)",
                t.records, t.records_with_findings, not_json
            );
            for ((shape, detector), n) in &t.by_shape {
                println!("  {n:>8}  {shape}  ({detector})");
            }
        }
    }
}
