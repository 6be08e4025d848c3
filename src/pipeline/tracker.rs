//! Per-partition completion tracking for at-least-once delivery.
//!
//! Messages of a partition are registered in consumption order; they
//! finish in any order (deliveries are acknowledged concurrently). The
//! offset that may be committed is the highest one below which *every*
//! message has finished: storing "the highest acknowledged" instead could
//! skip a lower offset whose delivery failed. A revoked and re-assigned
//! partition starts a new epoch, so late completions from before the
//! rebalance cannot mark the new epoch's offsets done.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Default)]
struct Part {
    epoch: u64,
    /// (offset, finished), in consumption order.
    pending: VecDeque<(i64, bool)>,
}

/// Shared by the consumer loop, the delivery tasks and the rebalance callback.
#[derive(Default)]
pub struct Tracker {
    parts: Mutex<HashMap<(String, i32), Part>>,
    epochs: std::sync::atomic::AtomicU64,
}

impl Tracker {
    /// Registers a consumed message; returns its epoch.
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) -> u64 {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let part = parts
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Part {
                epoch: self
                    .epochs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1,
                pending: VecDeque::new(),
            });
        part.pending.push_back((offset, false));
        part.epoch
    }

    /// Marks a message finished (its output acknowledged). Returns the
    /// offset to store, when the contiguous finished prefix advanced: the
    /// last finished offset (librdkafka commits it plus one).
    pub fn finish(&self, topic: &str, partition: i32, epoch: u64, offset: i64) -> Option<i64> {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let part = parts.get_mut(&(topic.to_string(), partition))?;
        if part.epoch != epoch {
            return None;
        }
        let i = part
            .pending
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()?;
        part.pending[i].1 = true;
        let mut last = None;
        while let Some(&(o, true)) = part.pending.front() {
            last = Some(o);
            part.pending.pop_front();
        }
        last
    }

    /// Forgets revoked partitions (their in-flight messages will be
    /// consumed again by the next owner).
    pub fn revoke(&self, partitions: &[(String, i32)]) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        for p in partitions {
            parts.remove(p);
        }
    }

    /// Messages of these partitions registered and not finished.
    pub fn pending_in(&self, partitions: &[(String, i32)]) -> usize {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        partitions
            .iter()
            .filter_map(|p| parts.get(p))
            .map(|p| p.pending.len())
            .sum()
    }

    /// Messages registered and not finished.
    pub fn pending(&self) -> usize {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let t = Tracker::default();
        let e = t.begin("a", 0, 10);
        t.begin("a", 0, 11);
        t.begin("a", 0, 13);
        assert_eq!(t.finish("a", 0, e, 11), None, "10 is not done yet");
        assert_eq!(t.finish("a", 0, e, 13), None);
        assert_eq!(t.finish("a", 0, e, 10), Some(13), "10, 11, 13 all done");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_epochs_fence_stale_completions() {
        let t = Tracker::default();
        let e0 = t.begin("a", 0, 5);
        let e1 = t.begin("a", 1, 7);
        assert_eq!(t.finish("a", 1, e1, 7), Some(7));
        t.revoke(&[("a".into(), 0)]);
        let e0b = t.begin("a", 0, 5);
        assert_ne!(e0, e0b);
        assert_eq!(
            t.finish("a", 0, e0, 5),
            None,
            "completion from before the revoke"
        );
        assert_eq!(t.finish("a", 0, e0b, 5), Some(5));
    }
}
