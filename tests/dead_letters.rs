//! Dead letters protected at rest, against librdkafka's mock cluster and
//! the real binary: what lands on the dead-letter topic is sealed (payload,
//! key and header values), a key rotation while running changes the key
//! id without a restart, and `replay` opens both generations: judged again
//! to the clean topic, or back to their source byte for byte.

mod common;
use common::kafka::*;
use std::process::{Command, Output};
use std::time::Duration;

const KEY_A: &str = "dead-letter-key-a-0123456789abcdef0123";
const KEY_B: &str = "dead-letter-key-b-0123456789abcdef0123";

fn config(
    dir: &std::path::Path,
    bs: &str,
    max_bytes: usize,
    ring: &std::path::Path,
) -> std::path::PathBuf {
    let (rules, key) = common::rules_and_key(dir);
    let cfg = dir.join(format!("config-{max_bytes}.yaml"));
    std::fs::write(&cfg, format!(
        "kafka:\n  bootstrap_servers: \"{bs}\"\n  group_id: g-dlq\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000', auto.commit.interval.ms: '300' }}\nrules: {{ file: {}, hash_key_file: {}, reload_interval: 200ms }}\nlimits: {{ max_message_bytes: {max_bytes} }}\nhttp: {{ listen: '127.0.0.1:0' }}\nlog: {{ format: json, audit_file: {} }}\ndead_letters: {{ keys_file: {} }}\n",
        rules.display(), key.display(), dir.join("audit.jsonl").display(), ring.display()
    )).unwrap();
    cfg
}

fn replay(cfg: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(["replay", "-c"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

use common::output_text as stdout;
use common::until;

/// An identify too large for a 400-byte limit, with a phone number and
/// an email header (the test producer adds `x-user-email`).
fn big_event(user: &str, seq: u32) -> (Option<String>, Vec<u8>) {
    let v = serde_json::json!({
        "type": "identify", "userId": user, "messageId": format!("{user}-{seq}"),
        "traits": {"phone": format!("+1-555-01{seq:02}"), "plan": "pro", "bio": "x".repeat(500)}
    });
    (Some(user.into()), serde_json::to_vec(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_sealed_rotated_without_restart_and_replayed() {
    let mock = cluster(1);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("dead-letter-keys.yaml");
    std::fs::write(&ring, format!("active: a\nkeys:\n  a: {KEY_A}\n")).unwrap();
    let strict = config(dir.path(), &bs, 400, &ring);
    let audit = dir.path().join("audit.jsonl");

    let first = big_event("person-1", 1);
    produce(&bs, std::slice::from_ref(&first)).await;
    let mut child = common::start_service(&strict, &dir.path().join("stderr.log"));
    until("the first dead letter", || {
        high_watermarks(&bs, DLQ, 1)[0] >= 1
    })
    .await;
    // Rotate while running: a new active key; the old one stays for reading.
    std::fs::write(
        &ring,
        format!("active: b\nkeys:\n  a: {KEY_A}\n  b: {KEY_B}\n"),
    )
    .unwrap();
    until("the rotation applied", || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .contains("dead_letter_key_rotated")
    })
    .await;
    let second = big_event("person-2", 2);
    produce(&bs, std::slice::from_ref(&second)).await;
    until("the second dead letter", || {
        high_watermarks(&bs, DLQ, 1)[0] >= 2
    })
    .await;
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());

    // On the topic: nothing readable.
    let dead = read_topics(&bs, &[DLQ], 2, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 2);
    for (d, (_, original)) in dead.iter().zip([&first, &second]) {
        assert_ne!(&d.payload, original);
        let all = format!(
            "{}{}{:?}",
            String::from_utf8_lossy(&d.payload),
            String::from_utf8_lossy(d.key.as_deref().unwrap_or_default()),
            d.headers
        );
        for secret in [
            "+1-555-01",
            "person-",
            "leak@example.com",
            "identify",
            "t-1",
        ] {
            assert!(!all.contains(secret), "{secret} readable in a dead letter");
        }
        assert_eq!(d.header("sanitizer-error"), Some("too_large"));
        assert_eq!(
            d.header("sanitizer-encryption"),
            Some("xchacha20poly1305-v1")
        );
        assert!(
            d.headers.iter().any(|(k, _)| k == "x-user-email"),
            "names kept, values sealed"
        );
    }
    let ids: Vec<&str> = dead
        .iter()
        .map(|d| d.header("sanitizer-encryption-key-id").unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"], "the key id follows the rotation");

    // A dry run writes nothing.
    let lenient = config(dir.path(), &bs, 1 << 20, &ring);
    let o = replay(&lenient, &["--to", "clean", "--dry-run"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("would replay 2 of 2 dead letters"),
        "{}",
        stdout(&o)
    );
    assert_eq!(high_watermarks(&bs, CLEAN, 1)[0], 0);
    // Judged again with a larger limit: clean, sanitized, with lineage.
    let o = replay(&lenient, &["--to", "clean"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("replayed 2 of 2 dead letters"),
        "{}",
        stdout(&o)
    );
    let clean = read_topics(&bs, &[CLEAN], 2, Duration::from_secs(20)).await;
    assert_eq!(clean.len(), 2);
    for (c, user) in clean.iter().zip(["person-1", "person-2"]) {
        let v = c.json();
        assert_eq!(v["userId"], user);
        assert!(v["traits"].get("phone").is_none() && v["traits"]["phone_hash"].is_string());
        assert!(c
            .header("sanitizer-replayed-from")
            .unwrap()
            .starts_with(DLQ));
        assert!(
            c.header("x-user-email").is_none(),
            "the rules' header policy applies"
        );
    }
    // Back to the source: the originals, byte for byte.
    let o = replay(&strict, &["--to", "source"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let raw = read_topics(&bs, &[RAW], 4, Duration::from_secs(20)).await;
    assert_eq!(raw.len(), 4);
    for (r, (key, original)) in raw[2..].iter().zip([&first, &second]) {
        assert_eq!(&r.payload, original);
        assert_eq!(r.key.as_deref(), key.as_deref().map(str::as_bytes));
        assert_eq!(r.header("x-user-email"), Some("leak@example.com"));
        assert!(r.header("sanitizer-replayed-from").is_some());
    }
    // A record that does not authenticate is reported and left alone.
    {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let p: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bs)
            .create()
            .unwrap();
        let h = [
            ("sanitizer-error", "too_large"),
            ("sanitizer-source-topic", RAW),
            ("sanitizer-encryption", "xchacha20poly1305-v1"),
            ("sanitizer-encryption-key-id", "a"),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |hs, (k, v)| {
            hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        p.send(
            FutureRecord::<[u8], [u8]>::to(DLQ)
                .payload(&[7u8; 64][..])
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
    let o = replay(&strict, &["--to", "source", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 did not open"), "{}", stdout(&o));
    assert!(stdout(&o).contains("would replay 2 of 3"), "{}", stdout(&o));
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    for secret in ["+1-555-01", "person-1", KEY_A, KEY_B] {
        assert!(!audit_text.contains(secret), "{secret} in the audit stream");
    }
    assert!(audit_text.contains("dead_letters_replayed"));
}
