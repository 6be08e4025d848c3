//! The real binary as a child process against a mock cluster hosted by
//! this test: SIGKILL mid-stream and a restart lose nothing; SIGTERM and a
//! restart duplicate nothing.

mod common;
use common::kafka::*;
use rdkafka::consumer::Consumer;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 6;
const GROUP: &str = "g-crash";

fn write_config(dir: &Path, bootstrap: &str) -> std::path::PathBuf {
    let (rules, key) = common::rules_and_key(dir);
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "kafka:\n  bootstrap_servers: \"{bootstrap}\"\n  group_id: {GROUP}\n  input_topics: [{RAW}]\n  clean_topic: {CLEAN}\n  dead_letter_topic: {DLQ}\n  allow_plaintext: true\n  consumer: {{ session.timeout.ms: '6000', auto.commit.interval.ms: '300' }}\nrules: {{ file: {}, hash_key_file: {} }}\nlimits: {{ max_in_flight: 2000 }}\nhttp: {{ listen: '127.0.0.1:0' }}\nlog: {{ format: json, level: warn }}\nshutdown: {{ timeout: 20s }}\ndead_letters: {{ encrypt: false }}\n",
            rules.display(),
            key.display()
        ),
    )
    .unwrap();
    cfg
}

fn sum(v: &[i64]) -> i64 {
    v.iter().map(|x| (*x).max(0)).sum()
}

/// Waits until the group has committed everything produced so far.
fn wait_all_committed(bs: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let hw = high_watermarks(bs, RAW, PARTITIONS);
        let c = committed(bs, GROUP, PARTITIONS);
        if c == hw {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not all committed: {c:?} vs {hw:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

async fn ids_on_clean(bs: &str) -> HashMap<String, usize> {
    let total = sum(&high_watermarks(bs, CLEAN, PARTITIONS)) as usize;
    let out = read_outputs(bs, total, Duration::from_secs(60)).await;
    assert_eq!(out.len(), total, "read every clean record");
    let mut ids = HashMap::new();
    for o in out.iter().filter(|o| o.topic == CLEAN) {
        *ids.entry(o.json()["messageId"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_and_sigterm_duplicates_nothing() {
    let mock = cluster(PARTITIONS);
    let bs = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &bs);
    let log = dir.path().join("service.log");

    // Phase 1: 20,000 events; kill -9 the service mid-stream; restart.
    // Mid-stream by construction: the kill lands as soon as output starts
    // flowing, while the second half of the stream is not produced yet.
    let first = sequenced(100, 200, "c");
    let (early, late) = first.split_at(first.len() / 2);
    produce(&bs, early).await;
    let mut child = common::start_service(&cfg, &log);
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    let clean_out = || -> i64 {
        (0..PARTITIONS)
            .map(|p| {
                probe
                    .fetch_watermarks(CLEAN, p, Duration::from_secs(5))
                    .map_or(0, |w| w.1)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while clean_out() < 500 {
        assert!(
            Instant::now() < deadline,
            "no progress; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    common::signal(&child, "-KILL");
    child.wait().unwrap();
    let at_kill = sum(&high_watermarks(&bs, CLEAN, PARTITIONS));
    eprintln!("killed with {at_kill} of {} clean records out", first.len());
    produce(&bs, late).await;
    let mut child = common::start_service(&cfg, &log);
    wait_all_committed(&bs, Duration::from_secs(120));
    common::signal(&child, "-TERM");
    assert!(
        child.wait().unwrap().success(),
        "graceful exit; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ids = ids_on_clean(&bs).await;
    let lost: Vec<_> = first
        .iter()
        .map(|(_, v)| {
            serde_json::from_slice::<serde_json::Value>(v).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|id| !ids.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} lost after SIGKILL, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // Phase 2: SIGTERM between batches: every event exactly once.
    for tag in ["d", "e"] {
        produce(&bs, &sequenced(50, 40, tag)).await;
        let mut child = common::start_service(&cfg, &log);
        wait_all_committed(&bs, Duration::from_secs(120));
        common::signal(&child, "-TERM");
        assert!(child.wait().unwrap().success());
    }
    let ids = ids_on_clean(&bs).await;
    for tag in ["d-", "e-"] {
        let mine: Vec<usize> = ids
            .iter()
            .filter(|(k, _)| k.starts_with(tag))
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(mine.len(), 2000, "{tag}: all out");
        assert!(
            mine.iter().all(|n| *n == 1),
            "{tag}: duplicates after a graceful restart"
        );
    }
}

/// SIGTERM with the output broker slow (3 s per request) or down ends
/// within `shutdown.timeout`, says in its exit code that not everything was
/// committed, logs what is left for replay once with its count (not a line
/// per record), and a restart once the broker is back loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_within_the_shutdown_bound_with_the_output_broker_slow_or_down() {
    for case in ["slow", "down"] {
        let mock = outputs_on_broker_2(PARTITIONS, GROUP);
        let bs = mock.bootstrap_servers();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &bs);
        let port = common::http::free_port();
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace("timeout: 20s", "timeout: 5s").replace(
            "listen: '127.0.0.1:0'",
            &format!("listen: '127.0.0.1:{port}'"),
        );
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("service.log");
        let first = sequenced(20, 25, &format!("{case}-a"));
        produce(&bs, &first).await;
        let mut child = common::start_service(&cfg, &log);
        wait_all_committed(&bs, Duration::from_secs(60));

        // The output broker goes bad; events keep arriving and wait in
        // flight for it.
        match case {
            "slow" => mock
                .broker_round_trip_time(2, Duration::from_secs(3))
                .unwrap(),
            _ => mock.broker_down(2).unwrap(),
        }
        let second = sequenced(20, 50, &format!("{case}-b"));
        produce(&bs, &second).await;
        std::thread::sleep(Duration::from_secs(2));
        if case == "down" {
            // People can read it: the gauge says so, /readyz names it, and
            // the log says it once (not on every reconnect).
            let deadline = Instant::now() + Duration::from_secs(20);
            // What the producer cannot reach: broker 2 itself, or (once
            // it has dropped out of the metadata) the partitions it leads.
            let unreachable = |port| {
                let text = common::http::get(port, "/metrics").map(|r| r.1)?;
                let of = |name| common::metric_in(&text, name, &[("client", "producer")]);
                Some(
                    of("event_sanitizer_brokers_down")?
                        + of("event_sanitizer_partitions_unreachable")?,
                )
            };
            while unreachable(port).unwrap_or(0.0) < 1.0 {
                assert!(
                    Instant::now() < deadline,
                    "the metrics never showed the broker down; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let ready = common::http::get(port, "/readyz").unwrap();
            assert_eq!(ready.0, 503, "{}", ready.1);
            assert!(ready.1.contains("producer cannot reach"), "{}", ready.1);
            std::thread::sleep(Duration::from_secs(3));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let said = |what: &str| text.lines().filter(|l| l.contains(what)).count();
            assert_eq!(said("Kafka unreachable"), 1, "log:\n{text}");
            let errors = said("kafka client error") + said("librdkafka");
            assert!(
                errors < 30,
                "{errors} lines for one broker down; log:\n{text}"
            );
        }
        let bound = Duration::from_secs(5);
        let asked = Instant::now();
        common::signal(&child, "-TERM");
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            // The bound (and a second for the signal and this poll): the
            // chart's grace period is the bound plus 5 s, beyond which
            // Kubernetes kills the pod mid-commit.
            assert!(
                asked.elapsed() < bound + Duration::from_secs(1),
                "{case}: still running {:?} after SIGTERM; log:\n{}",
                asked.elapsed(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("{case}: exited {status} after {:?}", asked.elapsed());
        assert_eq!(
            status.code(),
            Some(1),
            "{case}: not all committed; log:\n{text}"
        );
        let left = text
            .lines()
            .filter(|l| l.contains("left for replay"))
            .count();
        assert_eq!(left, 1, "{case}: said once, with a count; log:\n{text}");
        let retries = text
            .lines()
            .filter(|l| l.contains("producing the record again"))
            .count();
        assert!(
            retries < 20,
            "{case}: {retries} retry lines for records that shutdown gave up on"
        );

        // Back: a restart delivers everything (consumed again), none lost.
        match case {
            "slow" => mock.broker_round_trip_time(2, Duration::ZERO).unwrap(),
            _ => mock.broker_up(2).unwrap(),
        }
        std::fs::write(&cfg, text_of(&cfg).replace("timeout: 5s", "timeout: 20s")).unwrap();
        let mut child = common::start_service(&cfg, &log);
        wait_all_committed(&bs, Duration::from_secs(90));
        common::signal(&child, "-TERM");
        assert!(child.wait().unwrap().success());
        let ids = ids_on_clean(&bs).await;
        let lost: Vec<String> = first
            .iter()
            .chain(&second)
            .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap())
            .map(|v| v["messageId"].as_str().unwrap().to_string())
            .filter(|id| !ids.contains_key(id))
            .collect();
        assert!(lost.is_empty(), "{case}: {} lost", lost.len());
    }
}

fn text_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}
