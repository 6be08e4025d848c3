//! Arbitrary records (any key, value and headers, absent or empty) through
//! librdkafka's mock cluster and back through the lanes' partition feed
//! (`kafka::native`, the service's own FFI to librdkafka): every field read
//! through the feed equals what was produced, offsets rise one by one, and
//! each batch's messages are freed before the next refill.
#![no_main]
use event_sanitizer::kafka::native::{Batch, PartitionFeed};
use libfuzzer_sys::fuzz_target;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::cell::RefCell;
use std::time::{Duration, Instant};

struct Rig {
    // Fields drop in this order: the feed before its consumer.
    feed: PartitionFeed,
    consumer: BaseConsumer,
    producer: BaseProducer,
    next_offset: i64,
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

fn rig() -> Rig {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("fuzz", 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "fuzz")
        .set("enable.auto.commit", "false")
        // Fetch again at once: one record per run.
        .set("fetch.wait.max.ms", "1")
        .set("fetch.error.backoff.ms", "1")
        .set("fetch.queue.backoff.ms", "0")
        .create()
        .expect("consumer");
    // SAFETY: `feed` is the first field of `Rig`, dropped before
    // `consumer`, and never moved out of it.
    let feed = unsafe { PartitionFeed::new(consumer.client()) };
    assert!(feed.take(consumer.client(), "fuzz", 0));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("fuzz", 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    Rig {
        feed,
        consumer,
        producer,
        next_offset: 0,
        _mock: mock,
    }
}

thread_local! {
    static RIG: RefCell<Rig> = RefCell::new(rig());
}

/// A record from the fuzzer's bytes: flags, key length, header count and
/// lengths, then the bytes they take in turn.
struct Record<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Vec<(String, Option<&'a [u8]>)>,
}

fn record(data: &[u8]) -> Option<Record<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (&key_len, mut rest) = rest.split_first()?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = rest.split_at_checked(n)?;
        rest = b;
        Some(a)
    };
    let key = take(key_len as usize)?;
    let count = take(1)?[0] % 4;
    let mut headers = Vec::new();
    for i in 0..count {
        let lens = take(2)?;
        // rust-rdkafka passes a header name as a C string: no NUL in it.
        let name = String::from_utf8_lossy(take(lens[0] as usize % 16)?).replace('\0', "");
        let value = (lens[1] != 255).then(|| take(lens[1] as usize)).flatten();
        headers.push((format!("h{i}-{name}"), value));
    }
    Some(Record {
        key: (flags & 1 == 1).then_some(key),
        payload: (flags & 2 == 2).then_some(rest),
        headers,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(r) = record(data) else { return };
    RIG.with_borrow_mut(|rig| {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to("fuzz");
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        if let Some(p) = r.payload {
            rec = rec.payload(p);
        }
        if !r.headers.is_empty() {
            let mut h = OwnedHeaders::new();
            for (name, value) in &r.headers {
                h = h.insert(Header {
                    key: name.as_str(),
                    value: *value,
                });
            }
            rec = rec.headers(h);
        }
        rig.producer.send(rec).map_err(|(e, _)| e).expect("send");
        rig.producer.flush(Duration::from_secs(10)).expect("flush");
        let client = rig.consumer.client();
        let mut batch = Batch::new(client, 8);
        let deadline = Instant::now() + Duration::from_secs(10);
        while batch.is_empty() {
            assert!(Instant::now() < deadline, "the record never arrived");
            rig.feed.consume(client, Duration::from_millis(5), &mut batch);
        }
        assert_eq!(batch.len(), 1, "one record produced, one read");
        let m = batch.iter().next().expect("one message");
        assert!(m.error().is_none(), "{:?}", m.error());
        assert_eq!(m.topic(), "fuzz");
        assert_eq!(m.partition(), 0);
        assert_eq!(m.offset(), rig.next_offset);
        // An empty value, key or header value may come back as absent.
        fn norm(b: Option<&[u8]>) -> Option<&[u8]> {
            b.filter(|b| !b.is_empty())
        }
        assert_eq!(norm(m.key()), norm(r.key));
        assert_eq!(norm(m.payload()), norm(r.payload));
        let got: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), norm(h.value).map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let want: Vec<(String, Option<Vec<u8>>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), norm(*v).map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(got, want);
        rig.next_offset += 1;
    });
});
