//! `demo`: the real service against librdkafka's in-process mock cluster,
//! with the default rules and the sample events. No broker to install.

use super::Failure;
use crate::config::{
    Config, HttpConfig, KafkaConfig, LimitsConfig, LogConfig, RulesConfig, ShutdownConfig,
};
use crate::metrics::Telemetry;
use crate::pipeline::Pipeline;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rules::DEFAULT_RULES as RULES;
const EVENTS: &str = include_str!("../../rules/examples/events.jsonl");

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// How many sample events to show before and after.
    #[arg(long, default_value_t = 2)]
    show: usize,
}

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode, Failure> {
    let fail = |e: String| Failure {
        message: e,
        code: 1,
    };
    super::run::init_logging(&LogConfig {
        format: "text".into(),
        level: "warn".into(),
        audit_file: None,
    })
    .map_err(fail)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    rt.block_on(async move {
        let mock = MockCluster::new(1).map_err(|e| fail(format!("mock cluster: {e}")))?;
        for t in ["events.raw", "events.clean", "events.dead-letter"] {
            mock.create_topic(t, 3, 1).map_err(|e| fail(format!("create topic {t}: {e}")))?;
        }
        let bootstrap = mock.bootstrap_servers();
        let dir = tempfile_dir().map_err(fail)?;
        let rules = dir.join("customerio.yaml");
        let key = dir.join("hash-key");
        std::fs::write(&rules, RULES).map_err(|e| fail(e.to_string()))?;
        std::fs::write(&key, "demo-hash-key\n").map_err(|e| fail(e.to_string()))?;
        // Dead letters are sealed at rest with a key ring of their own.
        let dead_letter_keys = dir.join("dead-letter-keys.yaml");
        std::fs::write(&dead_letter_keys, "active: demo\nkeys:\n  demo: demo-dead-letter-key-not-for-production\n").map_err(|e| fail(e.to_string()))?;
        let sealer = crate::deadletter::Sealer::load(&dead_letter_keys).map_err(fail)?;

        // The raw events: the samples, plus three that cannot be sanitized.
        let mut raw: Vec<(Option<String>, Vec<u8>)> = EVENTS
            .lines()
            .map(|l| {
                let user = serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["userId"].as_str().map(str::to_string));
                (user, l.as_bytes().to_vec())
            })
            .collect();
        raw.push((None, b"{\"type\":\"track\",\"event\":".to_vec()));
        raw.push((None, b"[\"not\",\"an\",\"event\"]".to_vec()));
        raw.push((Some("user-1".into()), b"{\"type\":\"identify\",\"userId\":\"a\",\"userId\":\"b\"}".to_vec()));
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().map_err(|e| fail(e.to_string()))?;
        for (k, v) in &raw {
            let mut r = FutureRecord::to("events.raw").payload(v);
            if let Some(k) = k {
                r = r.key(k);
            }
            producer.send(r, Duration::from_secs(10)).await.map_err(|(e, _)| fail(e.to_string()))?;
        }
        let _ = producer.flush(Duration::from_secs(10));

        let cfg = Config {
            kafka: KafkaConfig {
                bootstrap_servers: bootstrap.clone(),
                group_id: "event-sanitizer-demo".into(),
                input_topics: vec!["events.raw".into()],
                clean_topic: "events.clean".into(),
                dead_letter_topic: "events.dead-letter".into(),
                allow_plaintext: true,
                sasl_password_file: None,
                common: Default::default(),
                consumer: Default::default(),
                producer: Default::default(),
                delivery: Default::default(),
                transactional_id: None,
                transaction: Default::default(),
            },
            rules: RulesConfig { file: rules.clone(), hash_key_file: Some(key.clone()), hash_keys_file: None, reload_interval: Duration::from_secs(5), shadow_file: None },
            limits: LimitsConfig::default(),
            http: HttpConfig { listen: "127.0.0.1:0".into() },
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            webhooks: None,
            privacy: None,
            dead_letters: crate::config::DeadLettersConfig { encrypt: true, keys_file: Some(dead_letter_keys.clone()) },
            audit: Default::default(),
            canary: Default::default(),
        inventory: Default::default(),
        };
        let telemetry = Arc::new(Telemetry::new());
        // The same rules, for the decisions printed beside each sample.
        let limits = crate::engine::Limits { max_bytes: cfg.limits.max_message_bytes, max_depth: cfg.limits.max_depth };
        let explainer = crate::reload::RuleSource::load(&cfg.rules.file, cfg.rules.key_file(), limits, &Telemetry::new())
            .map_err(|e| fail(e.to_string()))?
            .current();
        let started = Instant::now();
        let pipeline = Pipeline::new(cfg, telemetry.clone()).await.map_err(|e| fail(e.to_string()))?;
        println!("mock Kafka cluster at {bootstrap}; metrics at http://{}/metrics while the pipeline runs", pipeline.http_addr());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(pipeline.run(async move {
            let _ = stop_rx.await;
        }));

        // Read both outputs until every input is accounted for.
        let reader: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "demo-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| fail(e.to_string()))?;
        reader.subscribe(&["events.clean", "events.dead-letter"]).map_err(|e| fail(e.to_string()))?;
        let mut clean: HashMap<String, Vec<u8>> = HashMap::new();
        let mut dead = Vec::new();
        while clean.len() + dead.len() < raw.len() {
            let m = match tokio::time::timeout(Duration::from_secs(60), reader.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(fail(e.to_string())),
                Err(_) => return Err(fail(format!("timed out with {} of {} messages out", clean.len() + dead.len(), raw.len()))),
            };
            if m.topic() == "events.clean" {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                let id = v["messageId"].as_str().map_or_else(|| format!("batch-{}", clean.len()), str::to_string);
                clean.insert(id, m.payload().unwrap_or_default().to_vec());
            } else {
                use rdkafka::message::Headers;
                let header = |name: &str| m.headers().and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))).unwrap_or_default();
                let sealed = m.payload().unwrap_or_default();
                let opened = sealer
                    .open(&header(crate::deadletter::KEY_ID_HEADER), crate::deadletter::Part::Payload, sealed)
                    .map_err(|e| fail(e.to_string()))?;
                dead.push((header("sanitizer-error"), sealed.len(), String::from_utf8_lossy(&opened).into_owned()));
            }
        }
        let elapsed = started.elapsed();
        let _ = stop_tx.send(());
        let summary = service.await.map_err(|e| fail(e.to_string()))?.map_err(|e| fail(e.to_string()))?;
        // Every client is closed before anything is printed, so no
        // librdkafka line comes after the summary.
        drop(reader);
        drop(producer);
        drop(mock);
        let scrape = telemetry.render();

        let mut shown = 0;
        for (_, line) in &raw {
            if shown >= args.show {
                break;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            let Some(out) = v["messageId"].as_str().and_then(|id| clean.get(id)) else { continue };
            if v["type"] != "identify" && shown == 0 {
                continue;
            }
            println!("\nraw event:\n{}", super::explain::pretty(line));
            println!("clean event:\n{}", super::explain::pretty(out));
            println!("decisions (field: action, rule; `explain` prints these for any event):");
            let exp = explainer.explain(line);
            for d in &exp.decisions {
                println!("  {d}");
            }
            if exp.decisions.is_empty() {
                println!("  (none: every field passes unchanged)");
            }
            shown += 1;
        }
        println!("\ndead letters (sealed on the topic; opened here with the demo's key, as `replay` does):");
        for (reason, sealed, payload) in &dead {
            println!("  {reason}: {payload}  [{sealed} sealed bytes on the topic]");
        }
        println!(
            "\n{} events in: {} clean, {} dead letters, in {:.2}s through the real pipeline (consumer group, at-least-once commits)",
            summary.consumed,
            summary.clean,
            summary.dead_letters,
            elapsed.as_secs_f64()
        );
        println!("\nfrom /metrics (the endpoint closed with the pipeline):");
        for line in scrape.lines().filter(|l| {
            ["event_sanitizer_messages_in_total", "event_sanitizer_messages_out_total", "event_sanitizer_dead_letters_total{reason=\"invalid_json\"}"]
                .iter()
                .any(|m| l.starts_with(m))
        }) {
            println!("  {line}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(ExitCode::SUCCESS)
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("event-sanitizer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}
