//! Privacy operations against a real Kafka-protocol broker (librdkafka's
//! mock cluster): deletion and suppression requests, the suppression set
//! read before any event, deletion commands in order, hash key rotation
//! mid-stream, and no raw id in logs, metrics or the audit stream.

mod common;
use common::http::{free_port, get};
use common::kafka::*;
use common::{metric, until};
use event_sanitizer::config::PrivacyConfig;
use event_sanitizer::metrics::Telemetry;
use event_sanitizer::pipeline::Pipeline;
use hmac::{Hmac, Mac};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const REQ: &str = "privacy.requests";

fn event(user: &str, seq: u64) -> (Option<String>, Vec<u8>) {
    let v = serde_json::json!({
        "type": "identify", "messageId": format!("{user}-{seq}"), "userId": user,
        "traits": {"seq": seq, "phone": format!("+1-555-{seq:04}"), "plan": "pro"}
    });
    (Some(user.to_string()), serde_json::to_vec(&v).unwrap())
}

/// A stream in which some events are the suppressed person's: counts
/// those, and records the ids of the others, which must all come out.
#[derive(Default)]
struct Stream {
    blocked: u64,
    expected: HashSet<String>,
}

impl Stream {
    fn event(&mut self, seq: u64, blocked: bool) -> (Option<String>, Vec<u8>) {
        let user = if blocked {
            "blocked".to_string()
        } else {
            format!("user-{}", seq % 10)
        };
        if blocked {
            self.blocked += 1;
        } else {
            self.expected.insert(format!("{user}-{seq}"));
        }
        event(&user, seq)
    }
}

fn request(key: &str, body: serde_json::Value) -> (Option<String>, Vec<u8>) {
    (Some(key.to_string()), serde_json::to_vec(&body).unwrap())
}

fn sum(v: &[i64]) -> i64 {
    v.iter().sum()
}

/// Whether the group committed every partition of `topic` to its end (an
/// empty partition has nothing to commit).
fn all_committed(bs: &str, group: &str, topic: &str, partitions: i32) -> bool {
    let c = committed_on(bs, group, topic, partitions);
    let hw = high_watermarks(bs, topic, partitions);
    c.iter()
        .zip(&hw)
        .all(|(c, h)| c == h || (*h == 0 && *c < 0))
}

fn hmac_with(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_suppress_unsuppress_and_commands_in_order() {
    let mock = cluster(4);
    mock.create_topic(REQ, 2, 1).unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    // Already on the topic at startup: a suppression and a bad request.
    produce_to(
        &bs,
        REQ,
        &[
            request("victim-a", serde_json::json!({"requestId": "r-pre", "userId": "victim-a", "action": "suppress"})),
            request("victim-b", serde_json::json!({"userId": "victim-b", "action": "delete"})),
        ],
    )
    .await;
    let mut first = Vec::new();
    for seq in 0..5 {
        for user in ["user-1", "user-2", "user-3", "victim-a"] {
            first.push(event(user, seq));
        }
    }
    produce(&bs, &first).await;

    let telemetry = Arc::new(Telemetry::new());
    let group = "g-privacy";
    let mut cfg = config(&bs, &rules, &key, group);
    cfg.privacy = Some(PrivacyConfig {
        requests_topic: REQ.into(),
    });
    let p = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    let bs2 = bs.clone();
    let clean_count = move || sum(&high_watermarks(&bs2, CLEAN, 4));
    let t = telemetry.clone();
    until("the first events", || {
        clean_count() >= 15 && metric(&t, "event_sanitizer_messages_suppressed_total", &[]) >= 5.0
    })
    .await;

    // Phase 2: user-1's events, then a delete, then more of user-1's.
    produce(
        &bs,
        &(5..10).map(|s| event("user-1", s)).collect::<Vec<_>>(),
    )
    .await;
    until("user-1 before the delete", || clean_count() >= 20).await;
    produce_to(
        &bs,
        REQ,
        &[request("user-1", serde_json::json!({"requestId": "r-del-1", "userId": "user-1", "anonymousId": "anon-1", "action": "delete", "requestedAt": "2026-11-23T10:00:00Z"}))],
    )
    .await;
    until("the deletion commands", || clean_count() >= 22).await;
    let mut after: Vec<_> = (10..15).map(|s| event("user-1", s)).collect();
    after.push((
        Some("anon-1".into()),
        br#"{"type":"track","event":"Viewed","anonymousId":"anon-1","messageId":"anon-1-15"}"#
            .to_vec(),
    ));
    after.push((
        Some("user-2".into()),
        serde_json::to_vec(&serde_json::json!({"batch": [
            {"type": "track", "event": "Viewed", "userId": "user-2", "messageId": "user-2-100"},
            {"type": "track", "event": "Viewed", "userId": "user-1", "messageId": "user-1-101"},
        ]}))
        .unwrap(),
    ));
    produce(&bs, &after).await;
    until("suppressed after the delete", || {
        metric(&t, "event_sanitizer_messages_suppressed_total", &[]) >= 11.0
            && metric(&t, "event_sanitizer_batch_calls_suppressed_total", &[]) >= 1.0
            && clean_count() >= 23
    })
    .await;

    // Phase 3: lift victim-a's suppression; their new events flow.
    produce_to(
        &bs,
        REQ,
        &[request(
            "victim-a",
            serde_json::json!({"requestId": "r-un", "userId": "victim-a", "action": "unsuppress"}),
        )],
    )
    .await;
    until("the unsuppress", || {
        metric(
            &t,
            "event_sanitizer_privacy_requests_total",
            &[("action", "unsuppress"), ("result", "applied")],
        ) >= 1.0
    })
    .await;
    produce(
        &bs,
        &(20..23).map(|s| event("victim-a", s)).collect::<Vec<_>>(),
    )
    .await;
    until("victim-a after the unsuppress", || clean_count() >= 26).await;
    let bs3 = bs.clone();
    until("everything committed", || {
        all_committed(&bs3, group, RAW, 4) && all_committed(&bs3, group, REQ, 2)
    })
    .await;
    tx.send(()).unwrap();
    let summary = service.await.unwrap().unwrap();
    assert_eq!(summary.suppressed, 11, "5 victim-a + 5 user-1 + 1 anon-1");

    let out = read_outputs(&bs, 26 + 1, Duration::from_secs(30)).await;
    assert_eq!(out.len(), 27, "26 clean + 1 dead letter, nothing else");
    let clean: Vec<&Out> = out.iter().filter(|o| o.topic == CLEAN).collect();
    // victim-a: only the events after the unsuppress.
    let victim: Vec<u64> = clean
        .iter()
        .filter(|o| o.json()["userId"] == "victim-a")
        .map(|o| o.json()["traits"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(victim, vec![20, 21, 22]);
    // user-1's partition: events 0..9, then User Suppressed, User Deleted, and nothing after.
    let user1: Vec<&&Out> = clean
        .iter()
        .filter(|o| o.key.as_deref() == Some(&b"user-1"[..]))
        .collect();
    let names: Vec<String> = user1
        .iter()
        .map(|o| {
            let v = o.json();
            v["event"]
                .as_str()
                .map_or_else(|| format!("seq {}", v["traits"]["seq"]), str::to_string)
        })
        .collect();
    let mut want: Vec<String> = (0..10).map(|s| format!("seq {s}")).collect();
    want.push("User Suppressed".into());
    want.push("User Deleted".into());
    assert_eq!(names, want);
    let deleted = user1.last().unwrap();
    let v = deleted.json();
    assert_eq!(v["userId"], "user-1");
    assert_eq!(v["anonymousId"], "anon-1");
    assert_eq!(v["properties"]["requestId"], "r-del-1");
    assert_eq!(v["timestamp"], "2026-11-23T10:00:00Z");
    assert_eq!(deleted.header("sanitizer-privacy-request"), Some("r-del-1"));
    assert_eq!(deleted.header("sanitizer-key-id"), Some("default"));
    assert!(clean
        .iter()
        .all(|o| o.json()["anonymousId"] != "anon-1"
            || o.header("sanitizer-privacy-request").is_some()));
    // The batch lost user-1's call and kept user-2's.
    let batch = clean
        .iter()
        .find(|o| o.json().get("batch").is_some())
        .unwrap();
    let ids: Vec<&str> = batch.json()["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["messageId"].as_str().unwrap().to_owned().leak() as &str)
        .collect();
    assert_eq!(ids, ["user-2-100"]);
    // The bad request is a dead letter with its reason.
    let dl = out.iter().find(|o| o.topic == DLQ).unwrap();
    assert_eq!(
        dl.header("sanitizer-error"),
        Some("privacy.missing_request_id")
    );
    assert_eq!(dl.header("sanitizer-source-topic"), Some(REQ));
    // Metrics: commands once, the set holds user-1 and anon-1.
    assert_eq!(
        metric(&telemetry, "event_sanitizer_deletion_commands_total", &[]),
        2.0
    );
    assert_eq!(
        metric(&telemetry, "event_sanitizer_suppression_set_size", &[]),
        2.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_privacy_requests_caught_up",
            &[]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "event_sanitizer_dead_letters_total",
            &[("reason", "privacy.missing_request_id")]
        ),
        1.0
    );
    let text = telemetry.render();
    for id in ["victim-a", "user-1", "anon-1"] {
        assert!(!text.contains(id), "{id} in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_rotation_mid_stream_switches_digests_and_header_without_loss() {
    let mock = cluster(3);
    mock.create_topic(REQ, 1, 1).unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, _) = common::rules_and_key(dir.path());
    let ring = dir.path().join("hash-keys.yaml");
    std::fs::write(&ring, "active: k1\nkeys:\n  k1: key-one\n").unwrap();
    produce_to(
        &bs,
        REQ,
        &[request(
            "blocked",
            serde_json::json!({"requestId": "r-b", "userId": "blocked", "action": "suppress"}),
        )],
    )
    .await;

    let telemetry = Arc::new(Telemetry::new());
    let group = "g-rotation";
    let mut cfg = config(&bs, &rules, &ring, group);
    cfg.rules.hash_key_file = None;
    cfg.rules.hash_keys_file = Some(ring.clone());
    cfg.privacy = Some(PrivacyConfig {
        requests_topic: REQ.into(),
    });
    let p = Pipeline::new(cfg, telemetry.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(p.run(async move {
        let _ = rx.await;
    }));
    // A steady stream; the key file changes a third of the way through.
    let (chunks, per_chunk) = (30u64, 100u64);
    let mut stream = Stream::default();
    for c in 0..chunks {
        let mut batch = Vec::new();
        for n in 0..per_chunk {
            let seq = c * per_chunk + n;
            batch.push(stream.event(seq, seq % 50 == 7));
        }
        produce(&bs, &batch).await;
        if c == 0 {
            // The group joined and the first digests are made with k1.
            let bs1 = bs.clone();
            until("the first records", || {
                sum(&high_watermarks(&bs1, CLEAN, 3)) > 0
            })
            .await;
        }
        if c == chunks / 3 {
            // Rotate while the stream runs: records before and after are
            // in flight together.
            std::fs::write(&ring, "active: k2\nkeys:\n  k1: key-one\n  k2: key-two\n").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = telemetry.clone();
    until("the rotation and the rebuilt set", || {
        metric(&t, "event_sanitizer_hash_key_rotations_total", &[]) == 1.0
            && metric(&t, "event_sanitizer_suppression_set_rebuilds_total", &[]) == 1.0
    })
    .await;
    // A changed value under an existing id is refused; k2 stays in use.
    std::fs::write(
        &ring,
        "active: k2\nkeys:\n  k1: key-one-changed\n  k2: key-two\n",
    )
    .unwrap();
    until("the refused key change", || {
        metric(
            &t,
            "event_sanitizer_rule_reloads_total",
            &[("result", "failure")],
        ) == 1.0
    })
    .await;
    let total = chunks * per_chunk;
    let mut tail = Vec::new();
    for seq in total..total + 20 {
        tail.push(stream.event(seq, seq % 2 == 0));
    }
    produce(&bs, &tail).await;
    let bs2 = bs.clone();
    until("everything committed", || {
        all_committed(&bs2, group, RAW, 3)
    })
    .await;
    tx.send(()).unwrap();
    let summary = service.await.unwrap().unwrap();
    assert_eq!(
        summary.suppressed, stream.blocked,
        "blocked before and after the rotation"
    );

    let n = sum(&high_watermarks(&bs, CLEAN, 3)) as usize;
    let out = read_topics(&bs, &[CLEAN], n, Duration::from_secs(30)).await;
    assert_eq!(out.len(), n);
    let mut seen = HashSet::new();
    let keys: HashMap<&str, &[u8]> = [("k1", &b"key-one"[..]), ("k2", &b"key-two"[..])].into();
    let mut switched: HashMap<i32, bool> = HashMap::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for o in &out {
        let v = o.json();
        let id = v["messageId"].as_str().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} twice");
        let kid = o.header("sanitizer-key-id").expect("key id header");
        assert!(
            keys.contains_key(kid),
            "{id}: key id {kid:?} {:?}",
            o.headers
        );
        *by_key.entry(kid.to_string()).or_default() += 1;
        let phone = format!("+1-555-{:04}", v["traits"]["seq"].as_u64().unwrap());
        assert_eq!(
            v["traits"]["phone_hash"].as_str().unwrap(),
            hex::encode(hmac_with(keys[kid], phone.as_bytes())),
            "{id}: digest made with {kid}"
        );
        let was = switched.entry(o.partition).or_default();
        assert!(
            !(*was && kid == "k1"),
            "{id}: k1 after k2 on partition {}",
            o.partition
        );
        *was |= kid == "k2";
    }
    assert_eq!(seen, stream.expected, "nothing lost, nothing extra");
    assert!(by_key["k1"] >= 500 && by_key["k2"] >= 500, "{by_key:?}");
}

/// The real binary, restarted: the second replica reads the requests topic
/// before consuming events that were waiting for it, commands are not
/// produced twice, and no raw id reaches the logs (at debug level), the
/// metrics or the audit stream, which holds what it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_replica_rebuilds_the_set_first_and_ids_never_leak() {
    use std::process::{Command, Stdio};
    let mock = cluster(2);
    mock.create_topic(REQ, 1, 1).unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let (user, anon, late) = ("secret-user-42", "secret-anon-7", "secret-late-9");
    produce_to(
        &bs,
        REQ,
        &[
            request(
                user,
                serde_json::json!({"requestId": "r-b1", "userId": user, "action": "delete"}),
            ),
            request(
                anon,
                serde_json::json!({"requestId": "r-b2", "anonymousId": anon, "action": "suppress"}),
            ),
        ],
    )
    .await;
    let mut events: Vec<_> = (0..5).map(|s| event(user, s)).collect();
    events.extend((0..5).map(|s| event("ok-user", s)));
    events.push((
        Some(anon.into()),
        format!(r#"{{"type":"track","event":"Viewed","anonymousId":"{anon}"}}"#).into_bytes(),
    ));
    // Not JSON and naming no suppressed person: a dead letter. (Keyed
    // by or naming `user`, it would be suppressed.)
    events.push((Some("ok-user".into()), br#"{"userId":"ok-user","#.to_vec()));
    produce(&bs, &events).await;

    let port = free_port();
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, format!(
        "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-restart\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000', auto.commit.interval.ms: '300' }}\nrules: {{ file: {}, hash_key_file: {}, reload_interval: 1s }}\nprivacy: {{ requests_topic: {REQ} }}\nhttp: {{ listen: '127.0.0.1:{port}' }}\nlog: {{ format: json, level: debug, audit_file: {} }}\nshutdown: {{ timeout: 20s }}\ndead_letters: {{ encrypt: false }}\n",
        rules.display(), key.display(), audit.display()
    )).unwrap();
    let log = dir.path().join("stderr.log");
    let start = || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        common::Service::from(
            Command::new(common::bin())
                .args(["run", "-c"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(f)
                .spawn()
                .unwrap(),
        )
    };
    let stop = |mut child: common::Service| {
        assert!(Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
        assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    };
    let clean_count = || sum(&high_watermarks(&bs, CLEAN, 2));
    let mut metrics_text = String::new();

    let first = start();
    until("run 1: ok-user's events and the commands", || {
        clean_count() >= 7 && high_watermarks(&bs, DLQ, 1)[0] >= 1
    })
    .await;
    until("run 1 ready", || {
        get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    // A request while running is audited with its digest.
    produce_to(&bs, REQ, &[request(late, serde_json::json!({"requestId": "r-late", "userId": late, "action": "suppress", "requestedAt": "2026-11-23T11:00:00Z"}))]).await;
    until("the live request applied", || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("r-late")
    })
    .await;
    metrics_text.push_str(&get(port, "/metrics").unwrap().1);
    until("run 1 committed", || {
        all_committed(&bs, "g-restart", RAW, 2) && all_committed(&bs, "g-restart", REQ, 1)
    })
    .await;
    stop(first);

    // Waiting for the next replica: the suppressed people's events first.
    let mut more: Vec<_> = (5..8).map(|s| event(user, s)).collect();
    more.extend((0..2).map(|s| event(late, s)));
    more.extend((5..8).map(|s| event("ok-user", s)));
    produce(&bs, &more).await;
    let second = start();
    until("run 2 ready", || {
        get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    until("run 2: ok-user's new events", || clean_count() >= 10).await;
    until("run 2 committed", || {
        all_committed(&bs, "g-restart", RAW, 2) && all_committed(&bs, "g-restart", REQ, 1)
    })
    .await;
    metrics_text.push_str(&get(port, "/metrics").unwrap().1);
    stop(second);

    // Exactly: 8 ok-user events + 2 commands; nothing of the suppressed.
    let out = read_topics(&bs, &[CLEAN], 10, Duration::from_secs(20)).await;
    assert_eq!(out.len() as i64, clean_count());
    assert_eq!(
        out.len(),
        10,
        "8 events + 2 commands, no duplicates after the restart"
    );
    let mut commands = 0;
    for o in &out {
        let v = o.json();
        if v["event"] == "User Deleted" || v["event"] == "User Suppressed" {
            assert_eq!(v["userId"], user);
            commands += 1;
        } else {
            assert_eq!(v["userId"], "ok-user", "{v}");
        }
    }
    assert_eq!(commands, 2);

    let logs = std::fs::read_to_string(&log).unwrap();
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "the main log ran at debug level"
    );
    for id in [user, anon, late] {
        assert!(!logs.contains(id), "{id} in the logs");
        assert!(!audit_text.contains(id), "{id} in the audit stream");
        assert!(!metrics_text.contains(id), "{id} in the metrics");
    }
    // The audit stream: JSON lines, only audit records, each kind present.
    let records: Vec<serde_json::Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records
        .iter()
        .all(|r| r["target"] == "event_sanitizer::audit"));
    let kinds: HashSet<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    for k in [
        "rule_set_loaded",
        "suppression_set_loaded",
        "privacy_request_applied",
        "deletion_commands_produced",
        "dead_letter",
        "message_suppressed",
    ] {
        assert!(kinds.contains(k), "no {k} record in {kinds:?}");
    }
    let applied = records
        .iter()
        .find(|r| r["event"] == "privacy_request_applied")
        .unwrap();
    assert_eq!(applied["request_id"], "r-late");
    assert_eq!(applied["action"], "suppress");
    assert_eq!(applied["requested_at"], "2026-11-23T11:00:00Z");
    let mut data = b"u:".to_vec();
    data.extend_from_slice(late.as_bytes());
    assert_eq!(
        applied["user_digest"].as_str().unwrap(),
        hex::encode(&hmac_with(b"test-key", &data)[..16])
    );
    let dl = records
        .iter()
        .find(|r| r["event"] == "dead_letter")
        .unwrap();
    assert_eq!(dl["reason"], "invalid_json");
    assert_eq!(dl["topic"], RAW);
    assert!(dl["partition"].is_number() && dl["offset"].is_number());
    // Run 2 loaded all three requests before it consumed an event.
    let loads: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "suppression_set_loaded")
        .collect();
    assert_eq!(loads.len(), 2);
    assert_eq!(loads[1]["requests"], 3);
    assert!(
        !logs.contains("\"target\":\"event_sanitizer::audit\""),
        "audit records went to their own file"
    );
}

/// The side doors: a suppressed person's message that is too deep, too
/// large, has their id as a duplicate, names them on a batch envelope, in a
/// batch with someone else's malformed call, or only in its key. None of
/// their data reaches the clean or the dead-letter topic; each is counted
/// and audited without the id; the other people's events are unaffected
/// and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suppressed_persons_data_leaves_by_no_side_door() {
    let mock = cluster(1);
    mock.create_topic(REQ, 1, 1).unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    let (gone, gone_anon) = ("gone-person-7", "gone-anon-7");
    produce_to(
        &bs,
        REQ,
        &[request(
            gone,
            serde_json::json!({"requestId": "r-1", "userId": gone, "anonymousId": gone_anon, "action": "suppress"}),
        )],
    )
    .await;
    let call = |user: &str, id: &str| serde_json::json!({"type": "track", "event": "Viewed", "userId": user, "messageId": id});
    let side_doors: Vec<(String, Vec<u8>)> = vec![
        (
            "k".into(),
            format!(
                r#"{{"type":"track","event":"E","userId":"{gone}","properties":{{"p":{}1{}}}}}"#,
                "[".repeat(100),
                "]".repeat(100)
            )
            .into_bytes(),
        ),
        (
            "k".into(),
            format!(
                r#"{{"type":"track","event":"E","anonymousId":"{gone_anon}","properties":{{"p":"{}"}}}}"#,
                "x".repeat(5000)
            )
            .into_bytes(),
        ),
        (
            "k".into(),
            format!(r#"{{"type":"track","event":"E","userId":"ok-user","userId":"{gone}"}}"#)
                .into_bytes(),
        ),
        (
            "k".into(),
            serde_json::to_vec(&serde_json::json!({"userId": gone, "batch": [call("ok-user", "env-1")]}))
                .unwrap(),
        ),
        (
            "k".into(),
            serde_json::to_vec(&serde_json::json!({"batch": [
                call(gone, "theirs"),
                {"type": "track", "event": "Viewed", "messageId": "malformed"},
                call("ok-user", "batch-good"),
            ]}))
            .unwrap(),
        ),
        (gone.into(), format!("not json, {gone}").into_bytes()),
    ];
    let mut events = Vec::new();
    let mut seq = 0;
    for (key, payload) in side_doors {
        for _ in 0..3 {
            events.push(event("ok-user", seq));
            seq += 1;
        }
        events.push((Some(key), payload));
    }
    produce(&bs, &events).await;

    let port = free_port();
    let audit = dir.path().join("audit.jsonl");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, format!(
        "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-side\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000', auto.commit.interval.ms: '300' }}\nrules: {{ file: {}, hash_key_file: {} }}\nlimits: {{ max_message_bytes: 4096, max_depth: 32 }}\nprivacy: {{ requests_topic: {REQ} }}\nhttp: {{ listen: '127.0.0.1:{port}' }}\nlog: {{ format: json, audit_file: {} }}\ndead_letters: {{ encrypt: false }}\n",
        rules.display(), key.display(), audit.display()
    )).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = common::start_service(&cfg, &log);
    until("every event handled", || {
        all_committed(&bs, "g-side", RAW, 1) && high_watermarks(&bs, RAW, 1)[0] > 0
    })
    .await;
    let text = get(port, "/metrics").unwrap().1;
    let count = |name: &str| common::metric_in(&text, name, &[]).unwrap_or(-1.0);
    assert_eq!(count("event_sanitizer_messages_suppressed_total"), 5.0);
    assert_eq!(count("event_sanitizer_batch_calls_suppressed_total"), 1.0);
    assert!(!text.contains(gone) && !text.contains(gone_anon));
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());

    let out = read_topics(&bs, &[CLEAN, DLQ], 20, Duration::from_secs(20)).await;
    for o in &out {
        let raw = String::from_utf8_lossy(&o.payload);
        assert!(
            !raw.contains(gone) && !raw.contains(gone_anon) && !raw.contains("theirs"),
            "their data on {}: {raw}",
            o.topic
        );
        assert_ne!(o.key.as_deref(), Some(gone.as_bytes()));
    }
    let clean: Vec<serde_json::Value> = out
        .iter()
        .filter(|o| o.topic == CLEAN)
        .map(|o| o.json())
        .collect();
    let seqs: Vec<u64> = clean
        .iter()
        .filter_map(|v| v["traits"]["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (0..18).collect::<Vec<_>>(),
        "the others' events, in order"
    );
    let batches: Vec<&serde_json::Value> =
        clean.iter().filter(|v| v.get("batch").is_some()).collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["batch"].as_array().unwrap().len(), 1);
    assert_eq!(batches[0]["batch"][0]["messageId"], "batch-good");
    let dead: Vec<&Out> = out.iter().filter(|o| o.topic == DLQ).collect();
    assert_eq!(dead.len(), 1, "only the malformed call is a dead letter");
    assert_eq!(
        dead[0].header("sanitizer-error"),
        Some("contract.missing_identity")
    );
    let v = dead[0].json();
    assert_eq!(v["batch"].as_array().unwrap().len(), 1);
    assert_eq!(v["batch"][0]["messageId"], "malformed");
    assert_eq!(out.len(), 18 + 1 + 1);

    let audit_text = std::fs::read_to_string(&audit).unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    for id in [gone, gone_anon] {
        assert!(!audit_text.contains(id), "{id} in the audit stream");
        assert!(!logs.contains(id), "{id} in the logs");
    }
    let by: Vec<String> = audit_text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "message_suppressed")
        .map(|r| {
            assert!(r["offset"].is_number() && r["topic"] == RAW);
            r["by"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(by, ["call", "call", "call", "envelope", "message_key"]);
}

/// No window after a request: a `suppress` acknowledged by the broker,
/// then at once 100 of that person's events (among others'), five times
/// over while the service runs: none of them reaches the clean topic, and
/// every other event does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suppress_followed_at_once_by_the_persons_events_lets_none_through() {
    // Two brokers: the requests topic's leader answers 300 ms late (set
    // after the warm-up), the events' leader at once. The requests reader
    // then learns of a request long after the events that follow it are
    // consumed: only the gate keeps the person's events in.
    let mock = rdkafka::mocking::MockCluster::new(2).unwrap();
    for (topic, partitions) in [(RAW, 4), (CLEAN, 4), (DLQ, 1), (REQ, 2)] {
        mock.create_topic(topic, partitions, 1).unwrap();
        for p in 0..partitions {
            let leader = if topic == REQ { 2 } else { 1 };
            mock.partition_leader(topic, p, Some(leader)).unwrap();
        }
    }
    mock.coordinator(
        rdkafka::mocking::MockCoordinator::Group("g-window".into()),
        1,
    )
    .unwrap();
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (rules, key) = common::rules_and_key(dir.path());
    // Two replicas in one group: each gates its own events.
    let group = "g-window";
    let mut cfg = config(&bs, &rules, &key, group);
    cfg.privacy = Some(PrivacyConfig {
        requests_topic: REQ.into(),
    });
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let telemetry = Arc::new(Telemetry::new());
        let p = Pipeline::new(cfg.clone(), telemetry.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(p.run(async move {
            let _ = rx.await;
        }));
        replicas.push((telemetry, tx, service));
    }
    let telemetries: Vec<Arc<Telemetry>> = replicas.iter().map(|r| r.0.clone()).collect();
    let suppressed_total = move || {
        telemetries
            .iter()
            .map(|t| metric(t, "event_sanitizer_messages_suppressed_total", &[]))
            .sum::<f64>()
    };
    let bs2 = bs.clone();
    let clean_count = move || sum(&high_watermarks(&bs2, CLEAN, 4));
    // Both replicas are up, each with partitions of its own (the group is
    // stable: no rebalance replays events during the rounds below).
    let consumed: Vec<Arc<Telemetry>> = replicas.iter().map(|r| r.0.clone()).collect();
    let mut warm = 0;
    until("both replicas consuming", || {
        let batch: Vec<_> = (0..8)
            .map(|s| event(&format!("warm-{s}"), warm + s))
            .collect();
        warm += 8;
        let bs = bs.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(produce(&bs, &batch))
        })
        .join()
        .unwrap();
        consumed
            .iter()
            .all(|t| metric(t, "event_sanitizer_messages_in_total", &[]) > 0.0)
    })
    .await;
    let warm = warm as i64;
    until("the warm-up", || clean_count() >= warm).await;
    mock.broker_round_trip_time(2, Duration::from_millis(300))
        .unwrap();
    let mut others = warm as u64;
    for round in 0..5 {
        let person = format!("person-{round}");
        produce_to(
            &bs,
            REQ,
            &[request(
                &person,
                serde_json::json!({"requestId": format!("r-{round}"), "userId": person, "action": "suppress"}),
            )],
        )
        .await;
        let mut events = Vec::new();
        for s in 0..100 {
            events.push(event(&person, s));
            if s % 10 == 0 {
                events.push(event("other", round * 100 + s));
                others += 1;
            }
        }
        produce(&bs, &events).await;
    }
    until("every event judged", || {
        suppressed_total() + clean_count() as f64 >= (others + 500) as f64
            || clean_count() > others as i64
    })
    .await;
    let bs3 = bs.clone();
    until("everything committed", || {
        all_committed(&bs3, group, RAW, 4)
    })
    .await;
    for (_, tx, service) in replicas {
        tx.send(()).unwrap();
        service.await.unwrap().unwrap();
    }
    let out = read_topics(&bs, &[CLEAN], others as usize, Duration::from_secs(20)).await;
    let leaked: Vec<String> = out
        .iter()
        .map(|o| o.json()["userId"].as_str().unwrap_or_default().to_string())
        .filter(|u| u.starts_with("person-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} events of suppressed people went out: {leaked:?}",
        leaked.len()
    );
    assert_eq!(out.len(), others as usize, "every other event went out");
    assert_eq!(suppressed_total(), 500.0);
}
