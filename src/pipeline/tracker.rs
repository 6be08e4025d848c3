//! Per-partition completion tracking for at-least-once delivery, and the
//! bound on work in flight.
//!
//! Messages of a partition are registered in consumption order; they
//! finish in any order (deliveries are acknowledged concurrently). The
//! offset that may be committed is the one after the highest offset below
//! which *every* message has finished: storing "the highest acknowledged"
//! instead could skip a lower offset whose delivery failed.
//!
//! An assignment gets a fresh [`Track`]; a revoked one is dropped from
//! [`Tracks`], so a late completion from before a rebalance updates only
//! the old track, which nobody stores from any more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One assigned input partition's messages between consume and finish.
pub struct Track {
    /// The input topic.
    pub topic: String,
    /// The input partition.
    pub partition: i32,
    /// (offset, finished), in consumption order.
    pending: Mutex<VecDeque<(i64, bool)>>,
    /// The next offset to commit: one past the contiguous finished prefix
    /// (-1 until a message finished).
    committable: AtomicI64,
}

impl Track {
    fn new(topic: &str, partition: i32) -> Track {
        Track {
            topic: topic.to_string(),
            partition,
            pending: Mutex::new(VecDeque::new()),
            committable: AtomicI64::new(-1),
        }
    }

    /// Registers a consumed message (offsets rise within a partition).
    pub fn begin(&self, offset: i64) {
        self.lock().push_back((offset, false));
    }

    /// Marks a message finished (its output acknowledged, or none needed).
    pub fn finish(&self, offset: i64) {
        let mut pending = self.lock();
        // Acknowledgements mostly come in order: the oldest first.
        let i = match pending.front() {
            Some(&(o, _)) if o == offset => 0,
            _ => match pending.binary_search_by_key(&offset, |(o, _)| *o) {
                Ok(i) => i,
                Err(_) => return,
            },
        };
        pending[i].1 = true;
        let mut last = None;
        while let Some(&(o, true)) = pending.front() {
            last = Some(o);
            pending.pop_front();
        }
        if let Some(o) = last {
            self.committable.store(o + 1, Ordering::Release);
        }
    }

    /// Forgets every registered message (a transaction holding them was
    /// aborted: they are consumed again).
    pub fn reset(&self) {
        self.lock().clear();
    }

    /// The next offset to commit, once any message finished.
    pub fn committable(&self) -> Option<i64> {
        let c = self.committable.load(Ordering::Acquire);
        (c >= 0).then_some(c)
    }

    /// Messages registered and not finished.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(i64, bool)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tracks of one lane's assigned partitions, found by topic and
/// partition without allocating.
#[derive(Default)]
pub struct Tracks {
    by_topic: Vec<(String, Vec<Option<Arc<Track>>>)>,
}

impl Tracks {
    /// The track of `topic`/`partition`, created on first use.
    pub fn get(&mut self, topic: &str, partition: i32) -> Arc<Track> {
        let t = match self.by_topic.iter().position(|(t, _)| t == topic) {
            Some(i) => i,
            None => {
                self.by_topic.push((topic.to_string(), Vec::new()));
                self.by_topic.len() - 1
            }
        };
        let parts = &mut self.by_topic[t].1;
        let p = partition.max(0) as usize;
        if parts.len() <= p {
            parts.resize(p + 1, None);
        }
        parts[p]
            .get_or_insert_with(|| Arc::new(Track::new(topic, partition)))
            .clone()
    }

    /// Forgets `topic`/`partition` (revoked: its next owner replays what
    /// was not committed); returns its track.
    pub fn remove(&mut self, topic: &str, partition: i32) -> Option<Arc<Track>> {
        let (_, parts) = self.by_topic.iter_mut().find(|(t, _)| t == topic)?;
        parts.get_mut(partition.max(0) as usize)?.take()
    }

    /// Every current track.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Track>> {
        self.by_topic.iter().flat_map(|(_, p)| p.iter().flatten())
    }

    /// Messages registered and not finished, over every track.
    pub fn pending(&self) -> usize {
        self.all().map(|t| t.pending()).sum()
    }
}

/// Messages and output bytes between consume and acknowledgement, shared
/// by every lane: at either bound, consumption pauses.
pub struct Budget {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
}

impl Budget {
    /// A budget of `max_messages` and `max_bytes`.
    pub fn new(max_messages: usize, max_bytes: usize) -> Budget {
        Budget {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
        }
    }

    /// Takes one message of `bytes`.
    pub fn take(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `messages` messages of `bytes` in all.
    pub fn give(&self, messages: usize, bytes: usize) {
        self.messages.fetch_sub(messages, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Whether either bound is reached.
    pub fn full(&self) -> bool {
        self.messages.load(Ordering::Relaxed) >= self.max_messages
            || self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    /// Messages in flight.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Output bytes in flight.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut tracks = Tracks::default();
        let t = tracks.get("a", 0);
        t.begin(10);
        t.begin(11);
        t.begin(13);
        t.finish(11);
        assert_eq!(t.committable(), None, "10 is not done yet");
        t.finish(13);
        assert_eq!(t.committable(), None);
        t.finish(10);
        assert_eq!(t.committable(), Some(14), "10, 11, 13 all done");
        assert_eq!(tracks.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_a_new_assignment_starts_fresh() {
        let mut tracks = Tracks::default();
        let a0 = tracks.get("a", 0);
        let a1 = tracks.get("a", 1);
        a0.begin(5);
        a1.begin(7);
        a1.finish(7);
        assert_eq!(a1.committable(), Some(8));
        assert!(Arc::ptr_eq(&a0, &tracks.get("a", 0)));
        let old = tracks.remove("a", 0).unwrap();
        let fresh = tracks.get("a", 0);
        assert!(!Arc::ptr_eq(&old, &fresh));
        fresh.begin(5);
        old.finish(5);
        assert_eq!(
            fresh.committable(),
            None,
            "completion from before the revoke"
        );
        assert_eq!(tracks.pending(), 1);
        assert_eq!(tracks.all().count(), 2);
    }

    #[test]
    fn the_budget_is_full_at_either_bound() {
        let b = Budget::new(2, 100);
        b.take(10);
        assert!(!b.full());
        b.take(10);
        assert!(b.full(), "two messages");
        b.give(2, 20);
        b.take(100);
        assert!(b.full(), "100 bytes");
        b.give(1, 100);
        assert_eq!((b.messages(), b.bytes()), (0, 0));
    }
}
