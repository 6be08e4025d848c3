//! `incident`: a leak found on the clean topic turned into a report for the
//! DPO and the repair Customer.io needs.
//!
//! Scans the clean topic over a window (`--from`/`--to`, by record time)
//! for events that carry `--path` (with `--detector`: only where that
//! detector matches the value there). The report (JSON on stdout) counts
//! records, events and distinct people (by the rule file's keyed digest of
//! their id, as a `hash` rule writes it), the first and last time, and which rule sets and
//! key ids produced them (lineage headers); it never holds a value or an
//! id. The repair is one record per affected person: an `identify` that
//! empties the leaked attribute (a path under `traits`), or with
//! `--delete` a deletion request for the privacy-requests topic.
//! `--repairs FILE` writes them for review; only `--apply` produces them.
//! `--suggest-rule` prints the rule that would have caught the path, with a
//! rule test case. Every run is in the audit stream.

use super::Failure;
use crate::audit::canary;
use crate::config::{ClientRole, Config};
use crate::engine::detect::{Detector, Stats};
use crate::kafka::scan::{End, Scan, Start};
use crate::kafka::{CANARY_HEADER, REPAIR_HEADER};
use crate::metrics::Telemetry;
use crate::reload::RuleSource;
use crate::rules::{Builtin, DetectorSpec};
use clap::Args;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct IncidentArgs {
    /// The service configuration (the same file `run` uses).
    #[arg(long, short = 'c', value_name = "FILE", env = "EVENT_SANITIZER_CONFIG")]
    config: Option<PathBuf>,
    /// The leaked location, as rules write paths: `traits.passport_no`,
    /// `properties.items[*].note`. Keys compare under any spelling; inside
    /// a batch, `batch[*].` is implied.
    #[arg(long, value_name = "PATH")]
    path: String,
    /// Only where this value detector matches the value (credit_card,
    /// us_ssn, email, phone, ipv4, ipv6, iban, jwt).
    #[arg(long, value_name = "NAME")]
    detector: Option<String>,
    /// Window start: record time, RFC 3339 (`2026-11-30T08:00:00Z`), a date,
    /// or ms since the epoch. Default: the oldest record kept.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Window end (inclusive), as --from. Default: the end now.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Repair by deleting each affected person (deletion requests to the
    /// privacy-requests topic) instead of emptying the attribute.
    #[arg(long)]
    delete: bool,
    /// Write the report (JSON) to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the repair records (JSON lines) to this file for review.
    #[arg(long, value_name = "FILE")]
    repairs: Option<PathBuf>,
    /// Produce the repair records. Without it nothing is written to Kafka.
    #[arg(long)]
    apply: bool,
    /// Print the rule that would have caught the path, with a test case.
    #[arg(long)]
    suggest_rule: bool,
}

/// One path segment: a key (canonical) or any array element.
#[derive(Debug, PartialEq)]
enum Seg {
    Key(String),
    Any,
}

/// `traits.a_b[*].c` -> [Key(ab canonical), Any, Key(c)].
fn parse_path(p: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if key.is_empty() {
            return Err(format!("`{p}` is not a path such as traits.passport_no"));
        }
        out.push(Seg::Key(canon(key)));
        let mut rest = rest;
        while !rest.is_empty() {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{p}`: a `[` is not closed"))?;
            if inner != "*" && inner.parse::<usize>().is_err() {
                return Err(format!("`{p}`: write `[*]` or an index inside brackets"));
            }
            out.push(Seg::Any);
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Ok(out)
}

fn canon(key: &str) -> String {
    crate::rules::keys::KeyMatch::Normalized
        .canonical(key)
        .into_owned()
}

/// The values at `path` in `v`, with the last key as it is spelled there.
fn at<'v>(v: &'v Value, path: &[Seg], out: &mut Vec<(&'v str, &'v Value)>, last: &'v str) {
    let Some((first, rest)) = path.split_first() else {
        out.push((last, v));
        return;
    };
    match (first, v) {
        (Seg::Key(k), Value::Object(m)) => {
            for (name, child) in m {
                if canon(name) == *k {
                    at(child, rest, out, name);
                }
            }
        }
        (Seg::Any, Value::Array(a)) => a.iter().for_each(|c| at(c, rest, out, last)),
        _ => {}
    }
}

/// The text a detector reads of a value.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// One affected person.
struct Person {
    /// The identifier Customer.io knows them by (for the repair only).
    user_id: Option<String>,
    anonymous_id: Option<String>,
    /// The leaked attribute's spellings seen.
    keys: std::collections::BTreeSet<String>,
    events: u64,
}

pub(crate) fn run(args: IncidentArgs) -> Result<ExitCode, Failure> {
    let cfg = Config::load(args.config.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
    super::run::init_logging(&cfg.log).map_err(Failure::usage)?;
    let fail = |e: String| Failure {
        message: e,
        code: 1,
    };
    let path = parse_path(&args.path).map_err(Failure::usage)?;
    let detector = match &args.detector {
        None => None,
        Some(name) => {
            let b = Builtin::ALL
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "--detector `{name}` is not one of {}",
                        Builtin::ALL
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            Some(Detector::compile(&DetectorSpec::Builtin(b)).expect("built-ins compile"))
        }
    };
    let time = |s: &Option<String>, what: &str| -> Result<Option<i64>, Failure> {
        s.as_deref()
            .map(|t| {
                crate::audit::time::parse(t).ok_or_else(|| {
                    Failure::usage(format!(
                        "--{what} `{t}` is not a time such as 2026-11-30T08:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let (from, to) = (time(&args.from, "from")?, time(&args.to, "to")?);
    if args.delete && cfg.privacy.is_none() {
        return Err(Failure::usage(
            "--delete needs a `privacy` section: deletion requests go to its requests topic",
        ));
    }
    let under_traits = matches!(path.first(), Some(Seg::Key(k)) if k == "traits")
        || matches!(path.get(..2), Some([Seg::Key(c), Seg::Key(t)]) if c == "context" && t == "traits");
    if !args.delete && !under_traits {
        return Err(Failure::usage(format!(
            "`{}` is not a profile attribute (under traits): Customer.io keeps it in the events themselves, which only deleting the person removes; run with --delete",
            args.path
        )));
    }
    let telemetry = Arc::new(Telemetry::new());
    let limits = crate::engine::Limits {
        max_bytes: cfg.limits.max_message_bytes,
        max_depth: cfg.limits.max_depth,
    };
    // The production key: people are counted by the digest the privacy
    // requests use, and named by nothing else in the report.
    let rules = RuleSource::load(&cfg.rules.file, cfg.rules.key_file(), limits, &telemetry)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let sanitizer = rules.current();
    let password = cfg
        .sasl_password()
        .map_err(|e| Failure::usage(e.to_string()))?;
    let group = format!("{}-incident", cfg.kafka.group_id);
    let consumer: BaseConsumer = crate::kafka::scan::client_config(&cfg, &group, password.as_ref())
        .map_err(|e| Failure::usage(e.to_string()))?
        .create()
        .map_err(|e| fail(e.to_string()))?;
    let topic = cfg.kafka.clean_topic.clone();
    let start = from.map_or(Start::Beginning, Start::Time);
    let end = to.map_or(End::Now, End::Time);
    let mut scan = Scan::open(consumer, &topic, None, start, end).map_err(fail)?;

    let mut records = 0u64;
    let mut affected_records = 0u64;
    let mut events = 0u64;
    let mut first_last: Option<(i64, i64)> = None;
    let mut lineage: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut people: BTreeMap<String, Person> = BTreeMap::new();
    let mut example: Option<Value> = None;
    while let Some(m) = scan.next().map_err(fail)? {
        records += 1;
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .filter(|h| h.key.eq_ignore_ascii_case(name))
                    .last()
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        // Canaries are synthetic; repairs are this command's own records.
        if header(CANARY_HEADER).is_some() || header(REPAIR_HEADER).is_some() {
            continue;
        }
        let Some(doc) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        let calls: Vec<&Value> = match doc.get("batch").and_then(Value::as_array) {
            Some(b) => b.iter().collect(),
            None => vec![&doc],
        };
        let mut hit = false;
        for call in calls {
            let mut found = Vec::new();
            at(call, &path, &mut found, "");
            let leaked: Vec<&str> = found
                .iter()
                .filter(|(_, v)| match (&detector, text(v)) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(d), Some(t)) => {
                        let mut out = Vec::new();
                        d.find(&t, &mut Stats::default(), 0, &mut out);
                        !out.is_empty()
                    }
                })
                .map(|(k, _)| *k)
                .collect();
            if leaked.is_empty() {
                continue;
            }
            hit = true;
            events += 1;
            let id = |k: &str| call.get(k).and_then(Value::as_str).map(str::to_string);
            let (user_id, anonymous_id) = (id("userId"), id("anonymousId"));
            let who = user_id.as_deref().or(anonymous_id.as_deref()).unwrap_or("");
            let digest = String::from_utf8_lossy(&sanitizer.digest(who)).into_owned();
            let p = people.entry(digest).or_insert_with(|| Person {
                user_id: user_id.clone(),
                anonymous_id: anonymous_id.clone(),
                keys: Default::default(),
                events: 0,
            });
            p.events += 1;
            p.keys.extend(leaked.iter().map(|k| k.to_string()));
            if example.is_none() {
                example = Some(call.clone());
            }
        }
        if hit {
            affected_records += 1;
            let ts = m.timestamp().to_millis().unwrap_or(0);
            first_last = Some(first_last.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts))));
            *lineage
                .entry((
                    header("sanitizer-rules").unwrap_or_default(),
                    header("sanitizer-rules-hash").unwrap_or_default(),
                    header("sanitizer-key-id").unwrap_or_default(),
                ))
                .or_default() += 1;
        }
    }

    let incident_id = format!(
        "incident-{}",
        &crate::rules::content_hash(
            format!("{}|{:?}|{:?}|{:?}", args.path, args.detector, from, to).as_bytes()
        )
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let now = crate::audit::time::iso8601(now_ms);
    // The repairs, one per person.
    let mut repairs: Vec<(String, String, Vec<u8>)> = Vec::new(); // (topic, key, payload)
    for (digest, p) in &people {
        let key = p
            .user_id
            .clone()
            .or(p.anonymous_id.clone())
            .unwrap_or_default();
        let mut call = serde_json::Map::new();
        if args.delete {
            let pc = cfg.privacy.as_ref().expect("checked above");
            if let Some(u) = &p.user_id {
                call.insert("userId".into(), json!(u));
            }
            if let Some(a) = &p.anonymous_id {
                call.insert("anonymousId".into(), json!(a));
            }
            call.insert(
                "requestId".into(),
                json!(format!("{incident_id}-{}", &digest[..12.min(digest.len())])),
            );
            call.insert("action".into(), json!("delete"));
            call.insert("requestedAt".into(), json!(now));
            repairs.push((
                pc.requests_topic.clone(),
                key,
                serde_json::to_vec(&call).unwrap_or_default(),
            ));
        } else {
            call.insert("type".into(), json!("identify"));
            call.insert(
                "messageId".into(),
                json!(format!("{incident_id}-{}", &digest[..12.min(digest.len())])),
            );
            if let Some(u) = &p.user_id {
                call.insert("userId".into(), json!(u));
            }
            if let Some(a) = &p.anonymous_id {
                call.insert("anonymousId".into(), json!(a));
            }
            call.insert("timestamp".into(), json!(now));
            // Customer.io removes an attribute sent with an empty value
            // (docs/privacy.md, "Incident runbook").
            let traits: serde_json::Map<String, Value> =
                p.keys.iter().map(|k| (k.clone(), json!(""))).collect();
            call.insert("traits".into(), Value::Object(traits));
            repairs.push((
                topic.clone(),
                key,
                serde_json::to_vec(&call).unwrap_or_default(),
            ));
        }
    }
    let report = json!({
        "incident": incident_id,
        "topic": topic,
        "path": args.path,
        "detector": args.detector,
        "window": { "from": from.map(crate::audit::time::iso8601), "to": to.map(crate::audit::time::iso8601) },
        "records_scanned": records,
        "records_affected": affected_records,
        "events_affected": events,
        "people_affected": people.len(),
        "people": people.iter().map(|(d, p)| json!({"digest": d, "events": p.events})).collect::<Vec<_>>(),
        "first_seen": first_last.map(|(a, _)| crate::audit::time::iso8601(a)),
        "last_seen": first_last.map(|(_, b)| crate::audit::time::iso8601(b)),
        "produced_by": lineage.iter().map(|((r, h, k), n)| json!({"rule_set": r, "rules_hash": h, "key_id": k, "records": n})).collect::<Vec<_>>(),
        "digest_key_id": sanitizer.key_id(),
        "repair": {
            "kind": if args.delete { "delete_person" } else { "empty_attribute" },
            "records": repairs.len(),
            "applied": args.apply,
        },
    });
    let report = serde_json::to_string_pretty(&report).unwrap_or_default();
    match &args.report {
        None => println!("{report}"),
        Some(f) => std::fs::write(f, report + "\n")
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", f.display())))?,
    }
    if let Some(f) = &args.repairs {
        let mut text = String::new();
        for (t, k, p) in &repairs {
            let line = json!({"topic": t, "key": k, "value": serde_json::from_slice::<Value>(p).unwrap_or(Value::Null)});
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(f, text)
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", f.display())))?;
    }
    if args.apply && !repairs.is_empty() {
        let producer: ThreadedProducer<DefaultProducerContext> = crate::kafka::client_config(
            &cfg,
            ClientRole::Producer,
            &[("enable.idempotence", "true"), ("acks", "all")],
            password.as_ref(),
        )
        .map_err(|e| Failure::usage(e.to_string()))?
        .create()
        .map_err(|e| fail(e.to_string()))?;
        for (t, k, p) in &repairs {
            let headers = OwnedHeaders::new().insert(Header {
                key: REPAIR_HEADER,
                value: Some(incident_id.as_str()),
            });
            producer
                .send(
                    BaseRecord::to(t)
                        .key(k.as_str())
                        .payload(&p[..])
                        .headers(headers),
                )
                .map_err(|(e, _)| fail(format!("cannot produce a repair: {e}")))?;
        }
        producer.flush(Duration::from_secs(60)).map_err(|e| {
            fail(format!(
                "the repairs were not all acknowledged: {e}; run again (a repair is idempotent)"
            ))
        })?;
    }
    tracing::info!(target: "event_sanitizer::audit", event = "incident", incident = incident_id, path = args.path, detector = args.detector.as_deref().unwrap_or(""), dry_run = !args.apply, records_scanned = records, records_affected = affected_records, people = people.len(), repairs = repairs.len(), repair = if args.delete { "delete_person" } else { "empty_attribute" }, "incident scanned");
    if args.suggest_rule {
        print_suggestion(&args, example.as_ref(), &sanitizer);
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule that would have caught the path, and a test case for it built
/// from one affected event with the leaked value replaced by a stand-in.
fn print_suggestion(args: &IncidentArgs, example: Option<&Value>, _s: &crate::engine::Sanitizer) {
    let leaf = args
        .path
        .rsplit('.')
        .next()
        .unwrap_or(&args.path)
        .split('[')
        .next()
        .unwrap_or_default()
        .to_string();
    let id = format!("never-send-{}", leaf.replace('_', "-").to_lowercase());
    println!("# Suggested rule (add it under `rules:`, then `event-sanitizer check` and `test`):");
    match &args.detector {
        None => println!(
            "  - id: {id}\n    description: Leaked to Customer.io (incident on `{}`); never sent again\n    action: drop\n    fields: [{leaf}]",
            args.path
        ),
        Some(d) => println!(
            "  - id: redact-{d}-{}\n    description: {d} found in `{}` by an incident\n    action: redact\n    values: [{d}]\n    replacement: \"[REDACTED:{{detector}}]\"",
            leaf.replace('_', "-").to_lowercase(),
            args.path
        ),
    }
    let Some(ev) = example else {
        return;
    };
    // The stand-in: a canary value of the kind, never the leaked one.
    let planted = canary::planted("suggested-rule-test");
    let stand_in = match args.detector.as_deref() {
        Some("credit_card") => planted[1].1.clone(),
        Some("us_ssn") => planted[0].1.clone(),
        Some("phone") => planted[3].1.clone(),
        Some("ipv4") => planted[4].1.clone(),
        Some("email") => "jane.doe@example.com".into(),
        _ => "REPLACE-ME".into(),
    };
    let path = parse_path(&args.path).unwrap_or_default();
    let mut input = ev.clone();
    replace_at(&mut input, &path, &stand_in);
    let mut expect = ev.clone();
    match args.detector.as_deref() {
        None => remove_at(&mut expect, &path),
        Some(d) => replace_at(&mut expect, &path, &format!("[REDACTED:{d}]")),
    }
    // Ids stay, as everything the rule does not change.
    println!("\n# A rule test case (rules/tests/*.yaml, under `cases:`):");
    println!(
        "  - name: {} is {} (incident)",
        args.path,
        if args.detector.is_some() {
            "redacted"
        } else {
            "dropped"
        }
    );
    println!(
        "    input:  {}",
        serde_json::to_string(&input).unwrap_or_default()
    );
    println!(
        "    expect: {}",
        serde_json::to_string(&expect).unwrap_or_default()
    );
}

fn replace_at(v: &mut Value, path: &[Seg], with: &str) {
    let Some((first, rest)) = path.split_first() else {
        *v = json!(with);
        return;
    };
    match (first, v) {
        (Seg::Key(k), Value::Object(m)) => {
            for (name, child) in m.iter_mut() {
                if canon(name) == *k {
                    replace_at(child, rest, with);
                }
            }
        }
        (Seg::Any, Value::Array(a)) => a.iter_mut().for_each(|c| replace_at(c, rest, with)),
        _ => {}
    }
}

fn remove_at(v: &mut Value, path: &[Seg]) {
    match (path, v) {
        ([Seg::Key(k)], Value::Object(m)) => m.retain(|name, _| canon(name) != *k),
        ([Seg::Key(k), rest @ ..], Value::Object(m)) => {
            for (name, child) in m.iter_mut() {
                if canon(name) == *k {
                    remove_at(child, rest);
                }
            }
        }
        ([Seg::Any, rest @ ..], Value::Array(a)) => a.iter_mut().for_each(|c| remove_at(c, rest)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_match_any_spelling() {
        assert_eq!(
            parse_path("traits.passport_no").unwrap(),
            vec![Seg::Key("traits".into()), Seg::Key(canon("passport_no"))]
        );
        assert!(parse_path("a..b").is_err());
        assert!(parse_path("a[x]").is_err());
        let v: Value =
            serde_json::from_str(r#"{"traits":{"passportNo":"X","items":[{"n":1},{"n":2}]}}"#)
                .unwrap();
        let mut out = Vec::new();
        at(&v, &parse_path("traits.passport_no").unwrap(), &mut out, "");
        assert_eq!(out, vec![("passportNo", &json!("X"))]);
        out.clear();
        at(&v, &parse_path("traits.items[*].n").unwrap(), &mut out, "");
        assert_eq!(out.len(), 2);
        let mut w = v.clone();
        remove_at(&mut w, &parse_path("traits.passport_no").unwrap());
        assert!(w["traits"].get("passportNo").is_none());
    }
}
