//! The service against a real Kafka-protocol broker (librdkafka's mock
//! cluster, in process): sanitized output in per-key order, dead letters
//! with their reasons, offsets committed, hot reload, metrics.

mod common;
use common::kafka::*;
use common::metric;
use event_sanitizer::metrics::Telemetry;
use event_sanitizer::pipeline::Pipeline;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sanitizes_in_order_dead_letters_with_reasons_and_commits() {
    let mock = cluster(4);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let mut input = sequenced(40, 50, "a");
    let bad: Vec<(Option<String>, Vec<u8>)> = vec![
        (Some("user-1".into()), b"{not json".to_vec()),
        (None, b"[1,2,3]".to_vec()),
        (Some("user-2".into()), b"{\"batch\":7}".to_vec()),
        (
            Some("user-3".into()),
            br#"{"type":"track","userId":"user-3"}"#.to_vec(),
        ),
    ];
    input.extend(bad.iter().cloned());
    // A 900 KB batch: over Customer.io's 500 KB, so it goes out as two
    // records, in order, with the batch's key.
    let calls: Vec<serde_json::Value> = (0..1000)
        .map(|n| serde_json::json!({"type": "track", "userId": "user-batch", "event": "Viewed", "properties": {"n": n, "pad": "x".repeat(820)}}))
        .collect();
    let batch = serde_json::to_vec(&serde_json::json!({ "batch": calls })).unwrap();
    assert!(batch.len() > 850_000);
    input.push((Some("user-batch".into()), batch));

    let telemetry = Arc::new(Telemetry::new());
    let group = "g-order";
    // Two lanes (two group members) sharing one producer: order per key
    // holds across them.
    let mut cfg = config(&bs, &rules, &key, group);
    cfg.limits.workers = 2;
    let p = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    // The input is produced once both lanes hold their partitions: a lane
    // joining later rebalances the group, and offsets whose commit the
    // rebalance refuses are consumed again (at least once allows it; the
    // rebalance tests count what it costs), which would blur the exact
    // counts below.
    common::until("both lanes to hold the four partitions", || {
        metric(&telemetry, "event_sanitizer_assigned_partitions", &[]) == 4.0
            && metric(
                &telemetry,
                "event_sanitizer_rebalances_total",
                &[("kind", "assign")],
            ) >= 2.0
    })
    .await;
    produce(&bs, &input).await;
    let out = read_outputs(&bs, input.len() + 1, Duration::from_secs(60)).await;
    assert_eq!(
        out.len(),
        input.len() + 1,
        "every input comes out once (the batch twice)"
    );
    tx.send(()).unwrap();
    let summary = service.await.unwrap().unwrap();
    assert_eq!(summary.consumed as usize, input.len());
    assert_eq!(summary.dead_letters, 4);
    // A clean stop reports no failed commit: the lanes commit at close,
    // and the second lane's repeated commit as it leaves a group the
    // first one's leaving rebalances is no failure.
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_offset_commits_total",
            &[("result", "failure")]
        ),
        0.0
    );

    // Clean: sanitized, lineage headers, key kept, per-key order.
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut batch_calls = Vec::new();
    for o in out.iter().filter(|o| o.topic == CLEAN) {
        let v = o.json();
        if let Some(calls) = v["batch"].as_array() {
            assert_eq!(o.key.as_deref(), Some(&b"user-batch"[..]));
            assert!(o.payload.len() <= 500_000, "{}", o.payload.len());
            batch_calls.extend(calls.iter().map(|c| c["properties"]["n"].as_i64().unwrap()));
            continue;
        }
        let user = v["userId"].as_str().unwrap().to_string();
        assert_eq!(o.key.as_deref(), Some(user.as_bytes()));
        assert!(v["traits"].get("ssn").is_none() && v["traits"].get("phone").is_none());
        assert!(v["traits"]["phone_hash"].as_str().unwrap().len() == 64);
        assert_eq!(o.header("sanitizer-rules"), Some("customerio-default"));
        assert_eq!(o.header("sanitizer-rules-hash").map(str::len), Some(12));
        assert_eq!(
            o.header("sanitizer-version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(o.header("trace-id"), Some("t-1"));
        assert_eq!(o.header("x-user-email"), None, "dropped by message.headers");
        let seq = v["traits"]["seq"].as_i64().unwrap();
        let prev = last_seq.insert(user.clone(), seq);
        assert!(
            prev.is_none_or(|p| p < seq),
            "order broken for {user}: {prev:?} then {seq}"
        );
        assert!(ids.insert(v["messageId"].as_str().unwrap().to_string()));
    }
    assert_eq!(ids.len(), 2000);
    assert_eq!(
        batch_calls,
        (0..1000).collect::<Vec<i64>>(),
        "split in order"
    );
    // Dead letters: original payload and key, reason and source headers.
    let mut reasons: Vec<&str> = out
        .iter()
        .filter(|o| o.topic == DLQ)
        .map(|o| o.header("sanitizer-error").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "batch_not_array",
            "contract.missing_event_name",
            "invalid_json",
            "not_an_object"
        ]
    );
    let dl = out
        .iter()
        .find(|o| o.header("sanitizer-error") == Some("invalid_json"))
        .unwrap();
    assert_eq!(dl.payload, b"{not json");
    assert_eq!(dl.key.as_deref(), Some(&b"user-1"[..]));
    assert_eq!(dl.header("sanitizer-source-topic"), Some(RAW));
    assert!(dl
        .header("sanitizer-source-offset")
        .unwrap()
        .parse::<i64>()
        .is_ok());
    // Everything consumed was committed, dead letters included.
    assert_eq!(committed(&bs, group, 4), high_watermarks(&bs, RAW, 4));
    // Metrics agree.
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_messages_in_total",
            &[("topic", RAW)]
        ),
        input.len() as f64
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_messages_out_total",
            &[("outcome", "clean")]
        ),
        2001.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_dead_letters_total",
            &[("reason", "contract.missing_event_name")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_dead_letters_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_rule_actions_total",
            &[("rule", "never-send")]
        ),
        2000.0
    );
    assert_eq!(
        metric(&telemetry, "event_sanitizer_in_flight_messages", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_takes_effect_and_a_bad_reload_keeps_the_rules() {
    let mock = cluster(2);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let telemetry = Arc::new(Telemetry::new());
    let p = Pipeline::new(config(&bs, &rules, &key, "g-reload"), telemetry.clone())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    let wait_for = |name: &'static str, result: &'static str, n: f64| {
        let t = telemetry.clone();
        async move {
            for _ in 0..100 {
                if metric(&t, name, &[("result", result)]) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{name}{{result={result}}} never reached {n}");
        }
    };

    produce(&bs, &sequenced(2, 5, "before")).await;
    assert_eq!(
        read_outputs(&bs, 10, Duration::from_secs(60)).await.len(),
        10
    );
    // Also drop `plan`: a valid change, swapped in without a restart.
    let text = std::fs::read_to_string(&rules).unwrap().replace(
        "fields: [ssn, social_security,",
        "fields: [plan, ssn, social_security,",
    );
    std::fs::write(&rules, &text).unwrap();
    wait_for("event_sanitizer_rule_reloads_total", "success", 1.0).await;
    produce(&bs, &sequenced(2, 5, "after")).await;
    // A broken change: rejected, counted, old (new) rules kept.
    std::fs::write(
        &rules,
        "version: 1\nname: broken\nrules:\n  - id: x\n    action: explode\n",
    )
    .unwrap();
    wait_for("event_sanitizer_rule_reloads_total", "failure", 1.0).await;
    // A state, for alerts: rejected while the broken file is on disk.
    let rejected = |t: &Telemetry| metric(t, "event_sanitizer_rule_file_rejected", &[]);
    assert_eq!(rejected(&telemetry), 1.0);
    produce(&bs, &sequenced(2, 5, "broken")).await;

    let out = read_outputs(&bs, 30, Duration::from_secs(60)).await;
    // Fixed on disk: loaded again, and no longer rejected.
    std::fs::write(&rules, text).unwrap();
    wait_for("event_sanitizer_rule_reloads_total", "success", 2.0).await;
    assert_eq!(rejected(&telemetry), 0.0);
    tx.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert_eq!(out.len(), 30);
    for o in &out {
        let v = o.json();
        let id = v["messageId"].as_str().unwrap();
        let has_plan = v["traits"].get("plan").is_some();
        if id.starts_with("before") {
            assert!(has_plan, "{id}");
        } else {
            assert!(!has_plan, "{id}: the reloaded rules drop plan");
        }
        assert_eq!(o.header("sanitizer-rules"), Some("customerio-default"));
    }
    let hashes: std::collections::HashSet<_> = out
        .iter()
        .map(|o| o.header("sanitizer-rules-hash").unwrap().to_string())
        .collect();
    assert_eq!(hashes.len(), 2, "lineage names both rule versions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_and_readiness_over_http() {
    let mock = cluster(1);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let telemetry = Arc::new(Telemetry::new());
    let p = Pipeline::new(config(&bs, &rules, &key, "g-http"), telemetry)
        .await
        .unwrap();
    let addr = p.http_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    produce(&bs, &sequenced(1, 3, "h")).await;
    read_outputs(&bs, 3, Duration::from_secs(30)).await;
    let get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let (head, body) = buf.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    };
    assert!(get("/healthz").await.0.contains("200"));
    let mut ready = String::new();
    for _ in 0..50 {
        ready = get("/readyz").await.0;
        if ready.contains("200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready.contains("200"), "{ready}");
    let (status, body) = get("/metrics").await;
    assert!(status.contains("200"));
    // Chunked transfer encoding may wrap the body; parse the metric lines.
    let scrape = prometheus_parse::Scrape::parse(
        body.lines()
            .filter(|l| l.starts_with('#') || l.starts_with("event_sanitizer"))
            .map(|l| Ok(l.to_string())),
    )
    .unwrap();
    let names: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for n in [
        "event_sanitizer_messages_in_total",
        "event_sanitizer_messages_out_total",
        "event_sanitizer_dead_letters_total",
        "event_sanitizer_rule_actions_total",
        "event_sanitizer_processing_seconds",
        "event_sanitizer_end_to_end_delay_seconds",
        "event_sanitizer_in_flight_messages",
        "event_sanitizer_rule_set_info",
        "event_sanitizer_rule_set_loaded_timestamp_seconds",
        "event_sanitizer_rule_reloads_total",
        "event_sanitizer_build_info",
    ] {
        assert!(names.contains(n), "missing {n}");
    }
    // Never a user id or payload value as a label.
    assert!(
        !body.contains("user-0") && !body.contains("+1-555"),
        "{body}"
    );
    tx.send(()).unwrap();
    service.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_errors_and_an_outage_lose_nothing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = cluster(3);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let input = sequenced(20, 50, "f");
    produce(&bs, &input).await;
    // Retriable produce errors for the service's first requests.
    let errs = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 30];
    mock.request_errors(RDKafkaApiKey::Produce, &errs);
    let telemetry = Arc::new(Telemetry::new());
    let p = Pipeline::new(config(&bs, &rules, &key, "g-fault"), telemetry.clone())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    // The broker goes down and comes back while work is in flight.
    tokio::time::sleep(Duration::from_secs(4)).await;
    mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_up(1).unwrap();
    let out = read_unique(&bs, input.len(), Duration::from_secs(90)).await;
    tx.send(()).unwrap();
    service.await.unwrap().unwrap();
    let ids = message_ids(&out);
    assert_eq!(
        ids.len(),
        input.len(),
        "every event out at least once; missing {:?}; committed {:?} of {:?}",
        missing(&input, &ids),
        committed(&bs, "g-fault", 3),
        high_watermarks(&bs, RAW, 3)
    );
    assert_eq!(committed(&bs, "g-fault", 3), high_watermarks(&bs, RAW, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_split_partitions_and_a_rebalance_loses_nothing() {
    let mock = cluster(4);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let (ta, tb) = (Arc::new(Telemetry::new()), Arc::new(Telemetry::new()));
    // Instance a runs two lanes: three group members on four partitions,
    // then a's two leave together.
    let mut cfg_a = config(&bs, &rules, &key, "g-two");
    cfg_a.limits.workers = 2;
    let a = Pipeline::new(cfg_a, ta.clone()).await.unwrap();
    let b = Pipeline::new(config(&bs, &rules, &key, "g-two"), tb.clone())
        .await
        .unwrap();
    let (stop_a, rx_a) = tokio::sync::oneshot::channel::<()>();
    let (stop_b, rx_b) = tokio::sync::oneshot::channel::<()>();
    let sa = tokio::spawn(a.run(async move {
        let _ = rx_a.await;
    }));
    let sb = tokio::spawn(b.run(async move {
        let _ = rx_b.await;
    }));
    // Traffic starts once b holds partitions too: a member that joins
    // after a's lanes drained everything would get nothing to consume.
    let assigned = |t: &Telemetry| metric(t, "event_sanitizer_assigned_partitions", &[]);
    common::until("both instances to hold partitions", || {
        assigned(&tb) >= 1.0 && assigned(&ta) + assigned(&tb) == 4.0
    })
    .await;
    let first = sequenced(40, 25, "t1");
    produce(&bs, &first).await;
    read_unique(&bs, first.len(), Duration::from_secs(60)).await;
    let (a_in, b_in) = (
        metric(&ta, "event_sanitizer_messages_in_total", &[]),
        metric(&tb, "event_sanitizer_messages_in_total", &[]),
    );
    assert!(
        a_in > 0.0 && b_in > 0.0,
        "both instances got partitions: {a_in} {b_in}"
    );
    // One instance leaves; the other takes over its partitions.
    stop_a.send(()).unwrap();
    sa.await.unwrap().unwrap();
    let second = sequenced(40, 25, "t2");
    produce(&bs, &second).await;
    let out = read_unique(&bs, first.len() + second.len(), Duration::from_secs(60)).await;
    stop_b.send(()).unwrap();
    sb.await.unwrap().unwrap();
    let ids = message_ids(&out);
    assert_eq!(ids.len(), first.len() + second.len());
    assert_eq!(committed(&bs, "g-two", 4), high_watermarks(&bs, RAW, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_under_the_byte_bound_while_the_output_is_unreachable() {
    // Outputs on broker 2, which goes down.
    let mock = outputs_on_broker_2(4, "g-bytes");
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    // 4,000 events of about 2.6 KB: 10 MB, ten times the bound.
    let pad = "x".repeat(600);
    let input: Vec<(Option<String>, Vec<u8>)> = (0..4000)
        .map(|i| {
            let user = format!("user-{}", i % 40);
            let ev = serde_json::json!({
                "type": "track", "event": "Viewed", "messageId": format!("m-{i}"), "userId": user,
                "properties": {"a": pad, "b": pad, "c": pad, "d": pad}
            });
            (Some(user), serde_json::to_vec(&ev).unwrap())
        })
        .collect();
    produce(&bs, &input).await;
    mock.broker_down(2).unwrap();
    let mut cfg = config(&bs, &rules, &key, "g-bytes");
    cfg.limits.max_in_flight = 100_000;
    cfg.limits.max_in_flight_bytes = 1 << 20;
    let telemetry = Arc::new(Telemetry::new());
    let p = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    let (mut peak, mut consumed) = (0.0f64, 0.0);
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        peak = peak.max(metric(&telemetry, "event_sanitizer_in_flight_bytes", &[]));
        consumed = metric(&telemetry, "event_sanitizer_messages_in_total", &[]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak > 0.0, "work was in flight");
    // The bound, plus at most the one message polled when it was reached.
    assert!(
        peak <= (1 << 20) as f64 + 4096.0,
        "in-flight bytes {peak} over the bound"
    );
    assert!(
        consumed < input.len() as f64 / 2.0,
        "consumption paused at the bound: {consumed} consumed"
    );
    mock.broker_up(2).unwrap();
    let out = read_unique(&bs, input.len(), Duration::from_secs(90)).await;
    tx.send(()).unwrap();
    service.await.unwrap().unwrap();
    let ids = message_ids(&out);
    assert_eq!(
        ids.len(),
        input.len(),
        "every event out once the output is back; missing {:?}",
        missing(&input, &ids)
    );
    assert_eq!(committed(&bs, "g-bytes", 4), high_watermarks(&bs, RAW, 4));
}

/// Exactly-once delivery commits when the input pauses, not only at the
/// interval, and reports each transaction it ends: how long the commit
/// took and how many input messages it carried (the mock cluster's
/// transactions commit without markers; what they guarantee is proven in
/// tests/real_kafka.rs). Every consumed message is in exactly one
/// committed transaction, so the carried messages add up to the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_commits_when_the_input_pauses_and_reports_each_transaction() {
    use event_sanitizer::config::DeliveryMode;
    let mock = cluster(4);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let input = sequenced(10, 30, "txn");
    let telemetry = Arc::new(Telemetry::new());
    let mut cfg = config(&bs, &rules, &key, "g-txn-metrics");
    cfg.kafka.delivery = DeliveryMode::ExactlyOnce;
    cfg.kafka.transactional_id = Some("txn-metrics".into());
    // Ten minutes: each part's last transaction (under 40 messages) can
    // only commit because the input paused (once it is a second old).
    cfg.kafka.transaction.interval = Duration::from_secs(600);
    cfg.kafka.transaction.timeout = Duration::from_secs(660);
    cfg.kafka.transaction.max_messages = 40;
    let p = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    common::until("the lane to hold the four partitions", || {
        metric(&telemetry, "event_sanitizer_assigned_partitions", &[]) == 4.0
    })
    .await;
    // The input arrives in three parts, so that several transactions end.
    for part in input.chunks(100) {
        produce(&bs, part).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let carried = || metric(&telemetry, "event_sanitizer_transaction_messages_sum", &[]);
    common::until(
        "every input message committed, long before the interval",
        || carried() >= input.len() as f64,
    )
    .await;
    tx.send(()).unwrap();
    let summary = service.await.unwrap().unwrap();
    assert_eq!(summary.consumed as usize, input.len());
    assert_eq!(
        carried(),
        input.len() as f64,
        "each message in one transaction"
    );
    let committed = metric(
        &telemetry,
        "event_sanitizer_transactions_total",
        &[("result", "committed")],
    );
    assert!(committed >= 3.0, "{committed} transactions for three parts");
    let timed = |result: &str| {
        metric(
            &telemetry,
            "event_sanitizer_transaction_seconds_count",
            &[("result", result)],
        )
    };
    assert_eq!(timed("committed"), committed, "each commit timed once");
    assert_eq!(timed("aborted"), 0.0);
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_transaction_messages_count",
            &[]
        ),
        committed,
        "each transaction's messages counted once"
    );
    let spent = metric(
        &telemetry,
        "event_sanitizer_transaction_seconds_sum",
        &[("result", "committed")],
    );
    assert!(spent > 0.0 && spent < 60.0, "{spent} s committing");
}
