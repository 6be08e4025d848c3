//! The real-broker tier: what librdkafka's mock cluster cannot show
//! (its transactions store no offsets and write no markers; it has no
//! TLS), against Apache Kafka started by `scripts/kafka`.

mod common;
use common::kafka::{produce_to, sequenced};
use common::real::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;

struct Topics {
    raw: String,
    clean: String,
    dlq: String,
    group: String,
}

impl Topics {
    async fn new(prefix: &str) -> Topics {
        let t = Topics {
            raw: unique(&format!("{prefix}-raw")),
            clean: unique(&format!("{prefix}-clean")),
            dlq: unique(&format!("{prefix}-dlq")),
            group: unique(&format!("{prefix}-group")),
        };
        create_topics(&[
            (&t.raw, PARTITIONS, false),
            (&t.clean, PARTITIONS, false),
            (&t.dlq, 1, false),
        ])
        .await;
        t
    }
}

/// A service config for the real binary; `extra` is appended to `kafka:`.
fn write_config(dir: &Path, name: &str, t: &Topics, bootstrap: &str, kafka_extra: &str) -> PathBuf {
    let (rules, key) = common::rules_and_key(dir);
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bootstrap}\"\n  group_id: {}\n  input_topics: [{}]\n  clean_topic: {}\n  dead_letter_topic: {}\n  consumer: {{ session.timeout.ms: '6000' }}\n{kafka_extra}rules: {{ file: {}, hash_key_file: {} }}\nlimits: {{ max_in_flight: 2000 }}\nhttp: {{ listen: '127.0.0.1:0' }}\nlog: {{ format: json, level: warn }}\nshutdown: {{ timeout: 20s }}\ndead_letters: {{ encrypt: false }}\n",
            t.group,
            t.raw,
            t.clean,
            t.dlq,
            rules.display(),
            key.display()
        ),
    )
    .unwrap();
    cfg
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits until the clean topic's end moved `by` past `from`.
fn wait_progress(t: &Topics, from: i64, by: i64, log: &Path) -> i64 {
    let c = probe();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = progress(&c, &t.clean, PARTITIONS);
        if now >= from + by {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no progress past {from}; log:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_all_committed(t: &Topics, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (c, e) = (
            committed(&t.group, &t.raw, PARTITIONS),
            ends(&t.raw, PARTITIONS),
        );
        // A partition that never had a record has nothing to commit.
        let c: Vec<i64> = c.into_iter().map(|o| o.max(0)).collect();
        if c == e {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all committed: {c:?} vs {e:?}; log:\n{}",
            log_text(log)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Input: sequenced identify events, with every 97th replaced by bytes that
/// are not JSON (a dead letter), each carrying its id.
fn inputs(tag: &str, keys: usize, per_key: usize) -> Vec<(Option<String>, Vec<u8>)> {
    let mut v = sequenced(keys, per_key, tag);
    for (i, (_, payload)) in v.iter_mut().enumerate() {
        if i % 97 == 0 {
            *payload = format!("not json bad-{tag}-{i}").into_bytes();
        }
    }
    v
}

fn id_of(payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => v["messageId"].as_str().unwrap_or("?").to_string(),
        Err(_) => String::from_utf8_lossy(payload)
            .trim_start_matches("not json ")
            .to_string(),
    }
}

/// Asserts that every input of `inputs` is among the ids `seen`.
fn assert_none_lost(
    inputs: &[(Option<String>, Vec<u8>)],
    seen: &std::collections::HashSet<String>,
) {
    let lost: Vec<String> = inputs
        .iter()
        .map(|(_, p)| id_of(p))
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Waits up to `within` for `child` to exit; fails with `what` and `log`.
fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
    log: &Path,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}; log:\n{}", log_text(log));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `child` to stop by itself (`what` if it does not): exit code
/// 1, and its log naming the missing permission `needs`.
fn assert_stops_naming(child: &mut std::process::Child, log: &Path, what: &str, needs: &str) {
    let status = wait_exit(child, Duration::from_secs(90), what, log);
    let text = log_text(log);
    assert_eq!(status.code(), Some(1), "log:\n{text}");
    assert!(
        text.contains(&format!("needs {needs}")),
        "the missing permission is named; log:\n{text}"
    );
}

/// Runs the service on `cfg`: it does not start, and names `needs`.
fn assert_refuses_to_start(cfg: &Path, needs: &str) {
    let out = Command::new(common::bin())
        .args(["run", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("needs {needs}")),
        "the missing permission is named: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_sigkills_a_zombie_and_a_rebalance() {
    let b = broker();
    let t = Topics::new("eos").await;
    let dir = tempfile::tempdir().unwrap();
    let eos = |id: &str| {
        format!("  allow_plaintext: true\n  delivery: exactly_once\n  transactional_id: {id}\n  transaction: {{ interval: 100ms, timeout: 10s }}\n")
    };
    let main = write_config(dir.path(), "main", &t, &b.plaintext, &eos("es-eos-main"));
    let other = write_config(dir.path(), "other", &t, &b.plaintext, &eos("es-eos-other"));
    let log = dir.path().join("service.log");
    // Every instance started below gets a fresh batch of input, so it
    // has work whatever the one before it finished: an instance can drain
    // a whole batch before the test sees its progress and kills it.
    let mut fed = Vec::new();
    let mut feed = async |tag: &str, keys: usize| {
        let batch = inputs(tag, keys, 120);
        produce_to(&b.plaintext, &t.raw, &batch).await;
        fed.extend(batch);
    };

    // Kill 1 and 2: SIGKILL while transactions are open (they commit
    // every 100 ms and the stream is busy).
    let mut at = 0;
    for tag in ["a", "b"] {
        feed(tag, 60).await;
        let mut child = common::start_service(&main, &log);
        at = wait_progress(&t, at, 1_500, &log);
        common::signal(&child, "-KILL");
        child.wait().unwrap();
    }

    // A zombie: stopped mid-stream, replaced by a new instance with the
    // same transactional id (which fences it and aborts its open
    // transaction), then woken: it must write nothing and stop. (Its own
    // log, to tell what it did from what the others did.)
    feed("c", 60).await;
    let zombie_log = dir.path().join("zombie.log");
    let zombie = common::start_service(&main, &zombie_log);
    at = wait_progress(&t, at, 1_500, &log);
    common::signal(&zombie, "-STOP");
    feed("d", 60).await;
    let mut successor = common::start_service(&main, &log);
    at = wait_progress(&t, at, 1_000, &log);
    common::signal(&zombie, "-CONT");
    let mut zombie = zombie;
    // Woken, it rejoins the group; it learns that it was fenced when it
    // next writes, which it does as soon as it has input again: the
    // successor may have drained all there was before the zombie got
    // partitions back, so more input arrives every few seconds until the
    // zombie has stopped.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    while zombie.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(3));
        feed(&format!("z{round}"), 6).await;
        round += 1;
    }
    let status = wait_exit(
        &mut zombie,
        Duration::from_secs(5),
        "the fenced zombie did not stop",
        &zombie_log,
    );
    assert!(!status.success(), "a fenced instance exits with an error");

    // Kill 3, then a second instance joins and leaves while the last one runs.
    feed("e", 60).await;
    at = wait_progress(&t, at, 500, &log);
    common::signal(&successor, "-KILL");
    successor.wait().unwrap();
    feed("f", 60).await;
    let mut last = common::start_service(&main, &log);
    let mut joiner = common::start_service(&other, &log);
    // Joined (and its signal handler installed) before it is asked to leave.
    std::thread::sleep(Duration::from_secs(8));
    let _ = wait_progress(&t, at, 500, &log);
    common::signal(&joiner, "-TERM");
    assert!(joiner.wait().unwrap().success(), "log:\n{}", log_text(&log));
    wait_all_committed(&t, &log);
    common::signal(&last, "-TERM");
    assert!(last.wait().unwrap().success(), "log:\n{}", log_text(&log));

    // A read_committed reader sees every input exactly once, clean or dead letter.
    let committed = read_all(&[&t.clean, &t.dlq], "read_committed");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &committed {
        *seen.entry(id_of(&r.payload)).or_default() += 1;
    }
    let want: Vec<String> = fed.iter().map(|(_, p)| id_of(p)).collect();
    let lost: Vec<&String> = want.iter().filter(|id| !seen.contains_key(*id)).collect();
    let dups: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        dups.is_empty(),
        "{} duplicated, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    assert_eq!(committed.len(), want.len(), "nothing else on the outputs");
    let dead = committed.iter().filter(|r| r.topic == t.dlq).count();
    assert_eq!(
        dead,
        want.iter().filter(|id| id.starts_with("bad-")).count()
    );
    // Aborted records existed (the kills and the zombie left open
    // transactions) and a read_committed reader saw none of them.
    let everything = read_all(&[&t.clean, &t.dlq], "read_uncommitted");
    assert!(
        everything.len() > committed.len(),
        "the kills left aborted records behind ({} vs {})",
        everything.len(),
        committed.len()
    );
    eprintln!(
        "exactly once: {} inputs, {} records committed, {} aborted records invisible",
        want.len(),
        committed.len(),
        everything.len() - committed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_and_no_plaintext_by_accident() {
    let b = broker();
    let t = Topics::new("tls").await;
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "  common: {{ security.protocol: ssl, ssl.ca.location: '{}', ssl.certificate.location: '{}', ssl.key.location: '{}' }}\n",
        b.ca, b.client_cert, b.client_key
    );
    let cfg = write_config(dir.path(), "tls", &t, &b.ssl, &tls);
    let log = dir.path().join("service.log");
    let events = sequenced(10, 30, "tls");
    produce_to(&b.plaintext, &t.raw, &events).await;
    let mut child = common::start_service(&cfg, &log);
    wait_all_committed(&t, &log);
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
    let out = read_all(&[&t.clean], "read_committed");
    assert_eq!(
        out.len(),
        events.len(),
        "every event through the TLS listener"
    );

    // Without a client certificate the broker refuses the handshake: the
    // service never joins and consumes nothing.
    let t2 = Topics::new("tls-nocert").await;
    produce_to(&b.plaintext, &t2.raw, &events).await;
    let nocert = format!(
        "  common: {{ security.protocol: ssl, ssl.ca.location: '{}' }}\n",
        b.ca
    );
    let cfg = write_config(dir.path(), "nocert", &t2, &b.ssl, &nocert);
    let log2 = dir.path().join("nocert.log");
    let mut child = common::start_service(&cfg, &log2);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        committed(&t2.group, &t2.raw, PARTITIONS),
        vec![-1001; PARTITIONS as usize]
    );
    assert_eq!(progress(&probe(), &t2.clean, PARTITIONS), 0);
    common::signal(&child, "-KILL");
    child.wait().unwrap();

    // A plaintext listener is refused at startup unless allowed, also when
    // only one client's section turns TLS off.
    for (name, extra) in [
        ("plain", String::new()),
        ("override", format!("  common: {{ security.protocol: ssl, ssl.ca.location: '{}' }}\n  producer: {{ security.protocol: plaintext }}\n", b.ca)),
    ] {
        let cfg = write_config(dir.path(), name, &t2, &b.plaintext, &extra);
        let out = Command::new(common::bin()).args(["run", "-c"]).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: a configuration error");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unencrypted"), "{name}: {err}");
    }
}

/// The ACLs docs/operations.md lists for at-least-once delivery ("Broker
/// permissions"), for `user` on `t`.
fn grant_documented(user: &str, t: &Topics) {
    acl(
        true,
        user,
        &["Read"],
        &["--topic", &t.raw, "--group", &t.group],
    );
    acl(
        true,
        user,
        &["Write"],
        &["--topic", &t.clean, "--topic", &t.dlq],
    );
}

/// The input ids found in `records`, each once.
fn ids_seen(records: &[Record]) -> std::collections::HashSet<String> {
    records.iter().map(|r| id_of(&r.payload)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_only_the_documented_acls_a_password_rotated_while_running_and_one_acl_missing()
{
    let b = broker();
    let t = Topics::new("acl").await;
    let user = unique("es-user");
    scram_password(&user, "first-secret");
    grant_documented(&user, &t);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, "first-secret").unwrap();
    let sasl = format!(
        "  common: {{ security.protocol: sasl_ssl, sasl.mechanism: SCRAM-SHA-512, sasl.username: {user}, ssl.ca.location: '{}' }}\n  sasl_password_file: {}\n",
        b.ca,
        password.display()
    );
    // With privacy operations on: Read on the requests topic is its row.
    let req = unique("acl-requests");
    create_topics(&[(&req, 1, true)]).await;
    acl(true, &user, &["Read"], &["--topic", &req]);
    produce_to(
        &b.plaintext,
        &req,
        &[privacy_request("someone-else", "suppress", 1)],
    )
    .await;
    let with_privacy = |cfg: PathBuf| {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "http: { listen: '127.0.0.1:0' }",
            &format!("http: {{ listen: '127.0.0.1:0' }}\nprivacy: {{ requests_topic: {req} }}"),
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let cfg = with_privacy(write_config(dir.path(), "acl", &t, &b.sasl_ssl, &sasl));
    let log = dir.path().join("service.log");
    let first = inputs("acl-1", 10, 20);
    produce_to(&b.plaintext, &t.raw, &first).await;
    let mut child = common::start_service(&cfg, &log);
    wait_all_committed(&t, &log);

    // The password is rotated at the broker, then in the file. The broker
    // makes every connection authenticate again within 5 s
    // (connections.max.reauth.ms): from then on only the new one works.
    scram_password(&user, "second-secret");
    assert!(
        !scram_accepts(&user, "first-secret"),
        "the old password is refused"
    );
    std::fs::write(&password, "second-secret").unwrap();
    std::thread::sleep(Duration::from_secs(12));
    let second = inputs("acl-2", 10, 20);
    produce_to(&b.plaintext, &t.raw, &second).await;
    wait_all_committed(&t, &log);
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
    let out = read_all(&[&t.clean, &t.dlq], "read_committed");
    let want: std::collections::HashSet<String> =
        first.iter().chain(&second).map(|(_, p)| id_of(p)).collect();
    assert_eq!(ids_seen(&out), want, "every input, clean or dead letter");

    // Exactly-once adds what the docs add for it: Write on the
    // transactional id (prefixed), nothing on the cluster.
    let txn = format!("{user}-txn");
    acl(
        true,
        &user,
        &["Write"],
        &[
            "--transactional-id",
            &txn,
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    let eos = format!("{sasl}  delivery: exactly_once\n  transactional_id: {txn}\n");
    let eos_cfg = with_privacy(write_config(dir.path(), "acl-eos", &t, &b.sasl_ssl, &eos));
    let eos_log = dir.path().join("eos.log");
    let third = inputs("acl-eos", 10, 10);
    produce_to(&b.plaintext, &t.raw, &third).await;
    let mut child = common::start_service(&eos_cfg, &eos_log);
    wait_all_committed(&t, &eos_log);
    common::signal(&child, "-TERM");
    assert!(
        child.wait().unwrap().success(),
        "log:\n{}",
        log_text(&eos_log)
    );
    let out = read_all(&[&t.clean, &t.dlq], "read_committed");
    let want: std::collections::HashSet<String> = want
        .into_iter()
        .chain(third.iter().map(|(_, p)| id_of(p)))
        .collect();
    assert_eq!(ids_seen(&out), want, "exactly-once as the same user");

    // One documented ACL missing (Write on the clean topic): the service
    // stops with exit code 1 and names it; nothing more is committed.
    acl(false, &user, &["Write"], &["--topic", &t.clean]);
    let committed_before = committed(&t.group, &t.raw, PARTITIONS);
    // Clean events only: a dead letter still reaches its (writable) topic,
    // and its offset may rightly be committed before the refusal stops the
    // service; no clean one may.
    let fourth = sequenced(10, 5, "acl-3");
    produce_to(&b.plaintext, &t.raw, &fourth).await;
    let log3 = dir.path().join("missing-acl.log");
    let mut child = common::start_service(&cfg, &log3);
    assert_stops_naming(
        &mut child,
        &log3,
        "still running without Write on the clean topic",
        &format!("Write on Topic:{}", t.clean),
    );
    assert_eq!(committed(&t.group, &t.raw, PARTITIONS), committed_before);

    // Without Read on the privacy-requests topic it does not start, and
    // says why.
    acl(true, &user, &["Write"], &["--topic", &t.clean]);
    acl(false, &user, &["Read"], &["--topic", &req]);
    assert_refuses_to_start(&cfg, &format!("Read on Topic:{req}"));
}

/// An identify event of `user`, id `ev-<user>-<n>`.
fn person_event(user: &str, n: usize) -> (Option<String>, Vec<u8>) {
    let v = serde_json::json!({
        "type": "identify", "messageId": format!("ev-{user}-{n}"), "userId": user,
        "traits": {"plan": "pro"}
    });
    (Some(user.to_string()), serde_json::to_vec(&v).unwrap())
}

fn privacy_request(user: &str, action: &str, n: usize) -> (Option<String>, Vec<u8>) {
    let v = serde_json::json!({"requestId": format!("r-{action}-{user}-{n}"), "userId": user, "action": action});
    (Some(user.to_string()), serde_json::to_vec(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_compaction_rebuilds_the_same_suppression_set() {
    use common::http::{free_port, get};
    use common::scraped;
    let b = broker();
    let t = Topics::new("compact").await;
    let req = unique("compact-requests");
    create_topics(&[(&req, 1, true)]).await;
    let users: Vec<String> = (0..10).map(|i| format!("person-{i}")).collect();
    // Everyone suppressed, then half of them unsuppressed (same keys: the
    // older records are what compaction removes), each batch in its own
    // segment (segment.ms 100); a last request rolls the segment before it.
    let suppress: Vec<_> = users
        .iter()
        .map(|u| privacy_request(u, "suppress", 1))
        .collect();
    produce_to(&b.plaintext, &req, &suppress).await;
    std::thread::sleep(Duration::from_millis(1500));
    let unsuppress: Vec<_> = users[..5]
        .iter()
        .map(|u| privacy_request(u, "unsuppress", 2))
        .collect();
    produce_to(&b.plaintext, &req, &unsuppress).await;
    std::thread::sleep(Duration::from_millis(1500));
    produce_to(
        &b.plaintext,
        &req,
        &[privacy_request("person-last", "suppress", 3)],
    )
    .await;
    let produced = (suppress.len() + unsuppress.len() + 1) as i64;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        "privacy",
        &t,
        &b.plaintext,
        "  allow_plaintext: true\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "http: { listen: '127.0.0.1:0' }",
        &format!("http: {{ listen: '127.0.0.1:{port}' }}\nprivacy: {{ requests_topic: {req} }}"),
    );
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("service.log");
    // One replica's run: events of everyone; the set size it built.
    let run = |round: usize| {
        let events: Vec<_> = users.iter().map(|u| person_event(u, round)).collect();
        let log = log.clone();
        let cfg = cfg.clone();
        let t = &t;
        async move {
            produce_to(&b.plaintext, &t.raw, &events).await;
            let mut child = common::start_service(&cfg, &log);
            let deadline = Instant::now() + Duration::from_secs(90);
            while get(port, "/readyz").is_none_or(|(s, _)| s != 200) {
                assert!(
                    Instant::now() < deadline,
                    "not ready; log:\n{}",
                    log_text(&log)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            wait_all_committed(t, &log);
            let size = scraped(port, "event_sanitizer_suppression_set_size");
            common::signal(&child, "-TERM");
            assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
            size
        }
    };
    let before = run(1).await;

    // Compaction: only the latest request per person remains (the last
    // segment, still active, is never cleaned).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut left = produced;
    while left > 11 {
        assert!(
            Instant::now() < deadline,
            "the requests topic was not compacted: {left} of {produced} records"
        );
        std::thread::sleep(Duration::from_secs(1));
        left = read_all(&[&req], "read_committed").len() as i64;
    }
    assert_eq!(ends(&req, 1), vec![produced], "compaction keeps offsets");

    let after = run(2).await;
    assert_eq!(before, Some(6.0), "five people and the last one suppressed");
    assert_eq!(after, before, "the same set from the compacted topic");
    let out = read_all(&[&t.clean], "read_committed");
    let events: std::collections::HashSet<String> = out
        .iter()
        .map(|r| id_of(&r.payload))
        .filter(|id| id.starts_with("ev-"))
        .collect();
    let want: std::collections::HashSet<String> = users[..5]
        .iter()
        .flat_map(|u| [format!("ev-{u}-1"), format!("ev-{u}-2")])
        .collect();
    assert_eq!(
        events, want,
        "only the unsuppressed people's events, both runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_across_sigkills_loses_nothing_and_a_graceful_restart_duplicates_nothing() {
    let b = broker();
    let t = Topics::new("alo").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "alo",
        &t,
        &b.plaintext,
        "  allow_plaintext: true\n",
    );
    let log = dir.path().join("service.log");
    let first = inputs("k", 60, 150);
    // SIGKILL twice, as soon as output has moved on each time, while the
    // rest of the stream is not produced yet.
    let thirds: Vec<_> = first.chunks(first.len() / 3).collect();
    let mut at = 0;
    for part in &thirds[..2] {
        produce_to(&b.plaintext, &t.raw, part).await;
        let mut child = common::start_service(&cfg, &log);
        at = wait_progress(&t, at, 500, &log);
        common::signal(&child, "-KILL");
        child.wait().unwrap();
        eprintln!("killed with the clean topic's end at {at}");
    }
    for part in &thirds[2..] {
        produce_to(&b.plaintext, &t.raw, part).await;
    }
    let mut child = common::start_service(&cfg, &log);
    wait_all_committed(&t, &log);
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
    assert_none_lost(
        &first,
        &ids_seen(&read_all(&[&t.clean, &t.dlq], "read_committed")),
    );

    // Then SIGTERM between batches: each of these exactly once.
    let before = read_all(&[&t.clean, &t.dlq], "read_committed").len();
    let second = inputs("g", 20, 50);
    produce_to(&b.plaintext, &t.raw, &second).await;
    let mut child = common::start_service(&cfg, &log);
    wait_all_committed(&t, &log);
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
    let out = read_all(&[&t.clean, &t.dlq], "read_committed");
    assert_eq!(
        out.len() - before,
        second.len(),
        "no duplicates after SIGTERM"
    );
    let seen = ids_seen(&out);
    assert!(second.iter().all(|(_, p)| seen.contains(&id_of(p))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() {
    use common::kafka::{committed_on, high_watermarks, read_topics};
    // A broker of this test's own: the shared one serves the other tests.
    let pb = PrivateBroker::start(19192);
    let bs = pb.plaintext.clone();
    let t = Topics {
        raw: "outage-raw".into(),
        clean: "outage-clean".into(),
        dlq: "outage-dlq".into(),
        group: "outage-group".into(),
    };
    create_topics_on(
        &bs,
        &[
            (&t.raw, PARTITIONS, false),
            (&t.clean, PARTITIONS, false),
            (&t.dlq, 1, false),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "outage", &t, &bs, "  allow_plaintext: true\n");
    let log = dir.path().join("service.log");
    let events = inputs("o", 30, 100);
    let (early, late) = events.split_at(events.len() / 2);
    produce_to(&bs, &t.raw, early).await;
    let mut child = common::start_service(&cfg, &log);
    let out_now = || -> i64 { high_watermarks(&bs, &t.clean, PARTITIONS).iter().sum() };
    let deadline = Instant::now() + Duration::from_secs(90);
    while out_now() < 300 {
        assert!(
            Instant::now() < deadline,
            "no progress; log:\n{}",
            log_text(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The outage: the broker goes away for a while, then comes back with
    // its data; the service keeps running throughout.
    pb.stop();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service rides out the outage"
    );
    pb.resume();
    produce_to(&bs, &t.raw, late).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let c: Vec<i64> = committed_on(&bs, &t.group, &t.raw, PARTITIONS)
            .into_iter()
            .map(|o| o.max(0))
            .collect();
        if c == high_watermarks(&bs, &t.raw, PARTITIONS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all committed: {c:?}; log:\n{}",
            log_text(&log)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    common::signal(&child, "-TERM");
    assert!(child.wait().unwrap().success(), "log:\n{}", log_text(&log));
    let total = (high_watermarks(&bs, &t.clean, PARTITIONS)
        .iter()
        .sum::<i64>()
        + high_watermarks(&bs, &t.dlq, 1)[0]) as usize;
    let out = read_topics(&bs, &[&t.clean, &t.dlq], total, Duration::from_secs(60)).await;
    assert_eq!(out.len(), total, "read every output record");
    assert_none_lost(&events, &out.iter().map(|o| id_of(&o.payload)).collect());
}

/// Posts a signed reporting webhook for person `n` to `port`; its status
/// (`None`: the port does not answer).
async fn post_webhook(port: u16, signing_key: &str, n: usize) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = common::http::Client::connect(addr).await.ok()?;
    let (ts, body) = (common::http::now(), common::http::reporting_webhook(n));
    let sig = event_sanitizer::webhooks::signature::sign(signing_key.as_bytes(), &ts, &body);
    let headers = [("X-CIO-Signature", sig.as_str()), ("X-CIO-Timestamp", &ts)];
    let r = c.post("/webhooks/customerio", &headers, &body).await.ok()?;
    Some(r.status)
}

/// Posts webhooks (person `n` upwards) until one is answered `want`.
async fn post_until(port: u16, key: &str, n: &mut usize, want: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        *n += 1;
        if post_webhook(port, key, *n).await == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook answered {want}; log:\n{}",
            log_text(log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The two rows of docs/operations.md the ACL test above leaves out at run
/// time: `Write` on `webhooks.topic` and `Read` on `privacy.requests_topic`.
/// With only the documented ACLs a signed webhook is produced and events
/// flow; each ACL removed while the service runs stops it (exit code 1),
/// naming the permission, with nothing more committed; and without the
/// webhook topic's row the service does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_and_requests_topic_rows_each_removed_while_running_stop_the_service() {
    let b = broker();
    let t = Topics::new("acl-wh").await;
    let (wh, req) = (unique("acl-wh-reporting"), unique("acl-wh-requests"));
    create_topics(&[(&wh, 1, false), (&req, 1, true)]).await;
    let user = unique("es-wh-user");
    scram_password(&user, "wh-secret");
    grant_documented(&user, &t);
    acl(true, &user, &["Read"], &["--topic", &req]);
    acl(true, &user, &["Write"], &["--topic", &wh]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("sasl-password");
    std::fs::write(&password, "wh-secret").unwrap();
    let signing = dir.path().join("signing-keys");
    std::fs::write(&signing, "wh-signing-key\n").unwrap();
    let sasl = format!(
        "  common: {{ security.protocol: sasl_ssl, sasl.mechanism: SCRAM-SHA-512, sasl.username: {user}, ssl.ca.location: '{}' }}\n  sasl_password_file: {}\n",
        b.ca,
        password.display()
    );
    let port = common::http::free_port();
    let cfg = write_config(dir.path(), "wh", &t, &b.sasl_ssl, &sasl);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "http: { listen: '127.0.0.1:0' }",
        &format!(
            "http: {{ listen: '127.0.0.1:0' }}\nprivacy: {{ requests_topic: {req} }}\nwebhooks:\n  listen: '127.0.0.1:{port}'\n  topic: {wh}\n  rules: {}\n  signing_key_files: [{}]\n",
            common::root().join("rules/customerio-webhooks.yaml").display(),
            signing.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut n = 0;

    // Everything documented granted: webhooks are produced, events flow.
    let log = dir.path().join("service.log");
    let mut child = common::start_service(&cfg, &log);
    post_until(port, "wh-signing-key", &mut n, 200, &log).await;
    produce_to(&b.plaintext, &t.raw, &inputs("wh-1", 4, 5)).await;
    wait_all_committed(&t, &log);
    let produced = read_all(&[&wh], "read_committed");
    assert_eq!(produced.len(), 1, "the accepted webhook is on its topic");

    // Write on the webhook topic removed: the next webhooks are answered
    // 503 (Customer.io retries them), and the service stops, naming it.
    acl(false, &user, &["Write"], &["--topic", &wh]);
    post_until(port, "wh-signing-key", &mut n, 503, &log).await;
    assert_stops_naming(
        &mut child,
        &log,
        "still running without Write on the webhook topic",
        &format!("Write on Topic:{wh}"),
    );
    assert_eq!(read_all(&[&wh], "read_committed").len(), 1);

    // Restored; then Read on the requests topic removed while running:
    // events wait (they are judged only once the requests before them are
    // read), nothing more is committed, and the service stops, naming it.
    acl(true, &user, &["Write"], &["--topic", &wh]);
    let log2 = dir.path().join("requests.log");
    let mut child = common::start_service(&cfg, &log2);
    post_until(port, "wh-signing-key", &mut n, 200, &log2).await;
    produce_to(&b.plaintext, &t.raw, &inputs("wh-2", 4, 5)).await;
    wait_all_committed(&t, &log2);
    let committed_before = committed(&t.group, &t.raw, PARTITIONS);
    acl(false, &user, &["Read"], &["--topic", &req]);
    produce_to(&b.plaintext, &t.raw, &inputs("wh-3", 4, 5)).await;
    assert_stops_naming(
        &mut child,
        &log2,
        "still running without Read on the requests topic",
        &format!("Read on Topic:{req}"),
    );
    assert_eq!(committed(&t.group, &t.raw, PARTITIONS), committed_before);

    // No row at all for the webhook topic: it does not start, and says why.
    acl(true, &user, &["Read"], &["--topic", &req]);
    acl(false, &user, &["Write"], &["--topic", &wh]);
    assert_refuses_to_start(&cfg, &format!("Write on Topic:{wh}"));
}
