//! `replay`: dead letters opened and sent through again, once what refused
//! them is fixed (a rule, a limit, a contract). Reads the dead-letter topic
//! outside any consumer group, from the start (or `--from`) to the end it
//! sees when it starts; opens each sealed record with the dead-letter key
//! ring; then either produces the original back to the topic it came from
//! (`--to source`, the default: the service judges it again, suppression
//! and all) or judges it here with the current rules and produces the
//! clean records (`--to clean`, the suppression set read first when
//! `privacy` is configured). Nothing is written with `--dry-run`. Every
//! run is audited (`dead_letters_replayed`), never with data.

use super::Failure;
use crate::config::{ClientRole, Config};
use crate::deadletter::{Part, Sealer, KEY_ID_HEADER, SCHEME, SCHEME_HEADER};
use crate::engine::Id;
use crate::kafka::is_own_header;
use crate::kafka::scan::{End, Scan, Start};
use crate::metrics::Telemetry;
use crate::pipeline::route::{Input, Outcome, Router};
use crate::reload::RuleSource;
use clap::{Args, ValueEnum};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where replayed dead letters go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Destination {
    /// Back to the topic each came from (`sanitizer-source-topic`).
    Source,
    /// Judged here with the current rules; clean records to the clean topic.
    Clean,
}

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// The service configuration (the same file `run` uses).
    #[arg(long, short = 'c', value_name = "FILE", env = "EVENT_SANITIZER_CONFIG")]
    config: Option<PathBuf>,
    /// Where to send them.
    #[arg(long, value_enum, default_value_t = Destination::Source)]
    to: Destination,
    /// Only dead letters with this reason (`sanitizer-error`), e.g. too_large.
    #[arg(long, value_name = "CODE")]
    reason: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long, value_name = "N")]
    partition: Option<i32>,
    /// Start at this offset (with --partition; default: the beginning).
    #[arg(long, value_name = "OFFSET", requires = "partition")]
    from: Option<i64>,
    /// Open and judge, count, write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What became of the dead letters read.
#[derive(Default, Debug)]
struct Tally {
    read: u64,
    filtered: u64,
    replayed: u64,
    records: u64,
    still_refused: BTreeMap<String, u64>,
    suppressed: u64,
    unopened: BTreeMap<String, u64>,
}

/// Counts deliveries the broker did not acknowledge.
#[derive(Default)]
struct Acks {
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "a replayed record was not acknowledged");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type ReplayProducer = ThreadedProducer<Acks>;

/// One dead letter, opened.
struct Opened {
    payload: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    headers: OwnedHeaders,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
}

fn header<'m>(m: &'m rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    // The last one: ours come after the input's own.
    m.headers()
        .and_then(|h| h.iter().filter(|h| h.key == name).last())
        .and_then(|h| h.value)
}

fn text(b: Option<&[u8]>) -> String {
    b.map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn open(
    m: &rdkafka::message::BorrowedMessage<'_>,
    sealer: Option<&Sealer>,
) -> Result<Opened, String> {
    let sealed = header(m, SCHEME_HEADER).is_some();
    let key_id = text(header(m, KEY_ID_HEADER));
    let mut headers = OwnedHeaders::new();
    let (payload, key) = if sealed {
        if header(m, SCHEME_HEADER) != Some(SCHEME.as_bytes()) {
            return Err("unknown_scheme".into());
        }
        let s = sealer.ok_or("no_key_ring")?;
        let payload = m
            .payload()
            .map(|p| s.open(&key_id, Part::Payload, p))
            .transpose()
            .map_err(|e| e.to_string())?;
        let key = m
            .key()
            .map(|k| s.open(&key_id, Part::Key, k))
            .transpose()
            .map_err(|e| e.to_string())?;
        // The input's own headers are the values that open.
        for h in m.headers().into_iter().flat_map(|h| h.iter()) {
            if is_own_header(h.key) {
                continue;
            }
            let value = match h.value {
                None => None,
                Some(v) => Some(
                    s.open(&key_id, Part::Header(h.key), v)
                        .map_err(|e| e.to_string())?,
                ),
            };
            headers = headers.insert(Header {
                key: h.key,
                value: value.as_deref(),
            });
        }
        (payload, key)
    } else {
        for h in m.headers().into_iter().flat_map(|h| h.iter()) {
            if !is_own_header(h.key) {
                headers = headers.insert(h);
            }
        }
        (m.payload().map(<[u8]>::to_vec), m.key().map(<[u8]>::to_vec))
    };
    Ok(Opened {
        payload,
        key,
        headers,
        source_topic: text(header(m, "sanitizer-source-topic")),
        source_partition: text(header(m, "sanitizer-source-partition"))
            .parse()
            .unwrap_or(-1),
        source_offset: text(header(m, "sanitizer-source-offset"))
            .parse()
            .unwrap_or(-1),
    })
}

pub(crate) fn run(args: ReplayArgs) -> Result<ExitCode, Failure> {
    let cfg = Config::load(args.config.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
    super::run::init_logging(&cfg.log).map_err(Failure::usage)?;
    let fail = |e: String| Failure {
        message: e,
        code: 1,
    };
    let telemetry = Arc::new(Telemetry::new());
    let sealer = Sealer::from_config(&cfg.dead_letters).map_err(Failure::usage)?;
    let password = cfg
        .sasl_password()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let limits = crate::engine::Limits {
        max_bytes: cfg.limits.max_message_bytes,
        max_depth: cfg.limits.max_depth,
    };
    let dlq = cfg.kafka.dead_letter_topic.clone();
    let group = format!("{}-replay", cfg.kafka.group_id);
    let consumer_cfg = crate::kafka::scan::client_config(&cfg, &group, password.as_ref())
        .map_err(|e| Failure::usage(e.to_string()))?;
    let consumer: BaseConsumer = consumer_cfg.create().map_err(|e| fail(e.to_string()))?;
    let start = args.from.map_or(Start::Beginning, Start::Offset);
    // Read up to the end marks seen now: a replay that fails again does
    // not come back to itself.
    let mut scan = Scan::open(consumer, &dlq, args.partition, start, End::Now).map_err(fail)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let (router, privacy) = if args.to == Destination::Clean {
        let rules = RuleSource::load(&cfg.rules.file, cfg.rules.key_file(), limits, &telemetry)
            .map_err(|e| Failure::usage(e.to_string()))?;
        let privacy = crate::privacy::reader::Privacy::from_config(
            &cfg,
            &rules,
            password.as_ref(),
            telemetry.clone(),
            Arc::default(),
        )
        .map_err(|e| match e {
            crate::privacy::reader::ReaderError::Kafka { .. } => fail(e.to_string()),
            _ => Failure::usage(format!("privacy: {e}")),
        })?;
        if let Some(p) = &privacy {
            rt.block_on(p.wait_ready()).map_err(fail)?;
        }
        (Some(Router::new(rules.current(), None)), privacy)
    } else {
        (None, None)
    };
    let producer: Option<ReplayProducer> = if args.dry_run {
        None
    } else {
        let pc = crate::kafka::client_config(
            &cfg,
            ClientRole::Producer,
            &[("enable.idempotence", "true"), ("acks", "all")],
            password.as_ref(),
        )
        .map_err(|e| Failure::usage(e.to_string()))?;
        Some(
            pc.create_with_context(Acks::default())
                .map_err(|e| fail(e.to_string()))?,
        )
    };

    let mut tally = Tally::default();
    let (mut scratch, mut out) = (crate::engine::Scratch::default(), Vec::new());
    while let Some(m) = scan.next().map_err(fail)? {
        let (p, offset) = (m.partition(), m.offset());
        tally.read += 1;
        if args
            .reason
            .as_deref()
            .is_some_and(|r| header(&m, "sanitizer-error") != Some(r.as_bytes()))
        {
            tally.filtered += 1;
            continue;
        }
        let is_request = cfg.privacy.as_ref().is_some_and(|pc| {
            header(&m, "sanitizer-source-topic") == Some(pc.requests_topic.as_bytes())
        });
        if is_request && args.to == Destination::Clean {
            // A refused privacy request goes back to its topic, not to
            // Customer.io.
            tally.filtered += 1;
            continue;
        }
        let opened = match open(&m, sealer.as_ref()) {
            Ok(o) => o,
            Err(why) => {
                tracing::error!(partition = p, offset, problem = %why, "a dead letter does not open; left on the topic");
                *tally.unopened.entry(why).or_default() += 1;
                continue;
            }
        };
        let lineage = format!("{dlq}/{p}/{offset}");
        let replayed_from = |h: OwnedHeaders| {
            h.insert(Header {
                key: "sanitizer-replayed-from",
                value: Some(lineage.as_str()),
            })
        };
        match &router {
            None => {
                if let Some(prod) = &producer {
                    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&opened.source_topic)
                        .headers(replayed_from(opened.headers.clone()));
                    if let Some(v) = &opened.payload {
                        rec = rec.payload(&v[..]);
                    }
                    if let Some(k) = &opened.key {
                        rec = rec.key(&k[..]);
                    }
                    send(prod, rec).map_err(fail)?;
                }
                tally.replayed += 1;
                tally.records += 1;
            }
            Some(router) => {
                let input = Input {
                    topic: &opened.source_topic,
                    partition: opened.source_partition,
                    offset: opened.source_offset,
                    key: opened.key.as_deref(),
                    payload: opened.payload.as_deref(),
                    headers: Some(opened.headers.as_borrowed()),
                };
                let set = privacy.as_ref().map(|p| &p.suppressions);
                let suppressed = |id: Id<'_>| set.is_some_and(|s| s.holds(id));
                let is: Option<&dyn Fn(Id<'_>) -> bool> = set.map(|_| &suppressed as _);
                let routed = router.event(&input, is, &mut scratch, &mut out);
                match routed.outcome {
                    Outcome::Clean => {
                        if let Some(prod) = &producer {
                            for payload in &routed.payloads {
                                let mut rec = BaseRecord::to(&cfg.kafka.clean_topic)
                                    .payload(&payload[..])
                                    .headers(replayed_from(
                                        routed.headers.clone().unwrap_or_default(),
                                    ));
                                if let Some(k) = &routed.key {
                                    rec = rec.key(&k[..]);
                                }
                                send(prod, rec).map_err(fail)?;
                            }
                        }
                        tally.replayed += 1;
                        tally.records += routed.payloads.len() as u64;
                        for d in &routed.dead_calls {
                            *tally
                                .still_refused
                                .entry(d.dead_letter.code.to_string())
                                .or_default() += 1;
                        }
                    }
                    Outcome::Suppressed => tally.suppressed += 1,
                    _ => {
                        let code = routed.dead_letter.as_ref().map_or("unknown", |d| d.code);
                        *tally.still_refused.entry(code.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    if let Some(prod) = &producer {
        prod.flush(Duration::from_secs(60))
            .map_err(|e| fail(format!("the records were not all acknowledged: {e}")))?;
        let failed = prod.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(fail(format!(
                "{failed} replayed records were not acknowledged; run replay again (the forwarder may see the others twice)"
            )));
        }
    }
    let target = match args.to {
        Destination::Source => "their source topics".to_string(),
        Destination::Clean => format!("`{}`", cfg.kafka.clean_topic),
    };
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} of {} dead letters read from `{dlq}` to {target} ({} records)",
        tally.replayed, tally.read, tally.records
    );
    if tally.filtered > 0 {
        println!(
            "  {} skipped: another reason than --reason, or a privacy request (--to source)",
            tally.filtered
        );
    }
    if tally.suppressed > 0 {
        println!(
            "  {} not produced: about a suppressed person",
            tally.suppressed
        );
    }
    for (code, n) in &tally.still_refused {
        println!("  {n} still refused: {code}");
    }
    for (why, n) in &tally.unopened {
        println!("  {n} did not open: {why}");
    }
    tracing::info!(target: "event_sanitizer::audit", event = "dead_letters_replayed", to = ?args.to, dry_run = args.dry_run, read = tally.read, replayed = tally.replayed, records = tally.records, suppressed = tally.suppressed, still_refused = tally.still_refused.values().sum::<u64>(), unopened = tally.unopened.values().sum::<u64>(), "dead letters replayed");
    if let Some(p) = &privacy {
        p.stop();
    }
    let clean = tally.still_refused.is_empty() && tally.unopened.is_empty();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn send(producer: &ReplayProducer, mut rec: BaseRecord<'_, [u8], [u8]>) -> Result<(), String> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(format!("cannot produce: {e}")),
        }
    }
}
