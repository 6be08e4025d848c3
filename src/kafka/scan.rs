//! One topic read from a start to the end it has now (or to a time),
//! outside any consumer group: `replay` reads the dead-letter topic this
//! way, `incident` and `audit --once` the clean topic. Nothing is
//! committed; what is read is decided by the watermarks and timestamps
//! asked for when the scan opens, so a scan that writes back to the topic
//! it reads never comes back to its own records.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Where a scan starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The oldest record the broker still has.
    Beginning,
    /// This offset (the oldest kept, if it is older than that).
    Offset(i64),
    /// The first record with a timestamp at or after this (ms since epoch).
    Time(i64),
}

/// Where a scan ends in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The end the partition has when the scan opens.
    Now,
    /// Before the first record with a timestamp after this (ms since epoch).
    Time(i64),
}

/// The properties of a scan's consumer: `group` only names it (a scan
/// assigns partitions itself and never commits), and only committed
/// records are read (exactly-once output leaves aborted ones).
pub(crate) fn client_config(
    cfg: &crate::config::Config,
    group: &str,
    password: Option<&crate::secret::Secret>,
) -> Result<rdkafka::ClientConfig, super::ClientError> {
    super::client_config(
        cfg,
        crate::config::ClientRole::Consumer,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
        ],
        password,
    )
}

/// A bounded read of one topic.
pub(crate) struct Scan {
    consumer: BaseConsumer,
    ends: BTreeMap<i32, i64>,
    done: BTreeSet<i32>,
    idle: u32,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds without a record or an end-of-partition before a scan gives up.
const STALL_S: u32 = 60;

impl Scan {
    /// Assigns `topic`'s partitions (or only `partition`) from `start` to
    /// `end`. `consumer` must have `enable.partition.eof` on.
    pub(crate) fn open(
        consumer: BaseConsumer,
        topic: &str,
        partition: Option<i32>,
        start: Start,
        end: End,
    ) -> Result<Scan, String> {
        let md = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("cannot describe the topic `{topic}`: {e}"))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .filter(|p| partition.is_none_or(|q| q == *p))
            .collect();
        if partitions.is_empty() {
            return Err(format!("the topic `{topic}` has no such partition"));
        }
        let at_time = |ms: i64| -> Result<BTreeMap<i32, i64>, String> {
            let mut q = TopicPartitionList::new();
            for &p in &partitions {
                q.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(|e| e.to_string())?;
            }
            let found = consumer
                .offsets_for_times(q, TIMEOUT)
                .map_err(|e| format!("cannot look up offsets by time in `{topic}`: {e}"))?;
            Ok(found
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect())
        };
        let starts = match start {
            Start::Time(ms) => Some(at_time(ms)?),
            _ => None,
        };
        let stops = match end {
            End::Time(ms) => Some(at_time(ms.saturating_add(1))?),
            End::Now => None,
        };
        let mut ends = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(|e| format!("cannot read the offsets of `{topic}` [{p}]: {e}"))?;
            // No record at or after the time: the partition's end.
            let first = match start {
                Start::Beginning => low,
                Start::Offset(o) => o,
                Start::Time(_) => starts
                    .as_ref()
                    .and_then(|s| s.get(&p).copied())
                    .unwrap_or(high),
            }
            .max(low);
            let last = stops
                .as_ref()
                .and_then(|s| s.get(&p).copied())
                .unwrap_or(high)
                .min(high);
            if first < last {
                ends.insert(p, last);
                tpl.add_partition_offset(topic, p, Offset::Offset(first))
                    .map_err(|e| e.to_string())?;
            }
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        Ok(Scan {
            consumer,
            ends,
            done: BTreeSet::new(),
            idle: 0,
        })
    }

    /// The next record of the range, or `None` when every partition is read.
    pub(crate) fn next(&mut self) -> Result<Option<BorrowedMessage<'_>>, String> {
        while self.done.len() < self.ends.len() {
            let m = match self.consumer.poll(Duration::from_secs(1)) {
                None => {
                    self.idle += 1;
                    if self.idle > STALL_S {
                        return Err(format!("no progress reading the topic for {STALL_S} s"));
                    }
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.done.insert(p);
                    continue;
                }
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(m)) => m,
            };
            self.idle = 0;
            let end = self.ends.get(&m.partition()).copied().unwrap_or(0);
            if m.offset() + 1 >= end {
                self.done.insert(m.partition());
            }
            if m.offset() < end {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}
