//! The few librdkafka calls that rust-rdkafka does not wrap the way this
//! service needs them. Each `unsafe` block says why it is sound.

use rdkafka::client::{Client, ClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

/// Waits until every record `client` (a producer) was given is
/// acknowledged or failed, at most `within`.
///
/// rust-rdkafka's `Producer::flush` calls `rd_kafka_flush` with no wait
/// and then polls the producer's queue for up to 100 ms; with a
/// `ThreadedProducer`, whose own thread serves that queue, nothing ever
/// arrives there, so every flush that does not find the queue empty took
/// 100 ms (measured: each exactly-once commit spent 100 ms here). Called
/// with the time to wait, `rd_kafka_flush` sends what lingers at once and
/// sleeps on a condition variable until the count of records reaches
/// zero, while the producer's thread serves the acknowledgements.
pub fn flush<C: ClientContext>(client: &Client<C>, within: Duration) -> Result<(), KafkaError> {
    let ms = within.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `client.native_ptr()` is the live `rd_kafka_t` owned by
    // `client`, which the borrow keeps alive for the whole call.
    // `rd_kafka_flush` is thread-safe (rdkafka.h) and takes no pointer
    // besides the handle; it returns an error code by value.
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(client.native_ptr(), ms) };
    match RDKafkaErrorCode::from(err) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::Flush(code)),
    }
}

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A queue of a consumer's own that the fetch queues of chosen partitions
/// are forwarded to, read many messages per call
/// (`rd_kafka_consume_batch_queue`): the way librdkafka's author
/// describes for reading a group member's partitions in batches (take
/// each assigned partition's queue in the rebalance callback, forward
/// it, keep polling the consumer for group events).
///
/// rust-rdkafka's `BaseConsumer::poll` returns one message per call, and
/// each call reads the clock several times, allocates an `Arc` for the
/// event and takes the queue's lock; a batch takes the lock once per
/// message and the clock once per call.
///
/// It must be dropped before the consumer it was made for is closed
/// (rdkafka.h: `rd_kafka_queue_destroy()` MUST be called before
/// `rd_kafka_consumer_close()`): [`PartitionFeed::new`] is `unsafe` for
/// that promise.
pub struct PartitionFeed {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The consumer it belongs to: every call checks that it is given
    /// this one.
    rk: *mut rd::rd_kafka_t,
}

// SAFETY: a `rd_kafka_queue_t` handle may be used from any thread: every
// librdkafka queue operation takes the queue's own mutex (rdkafka_queue.c).
// `rk` is only compared, never dereferenced, by this type.
unsafe impl Send for PartitionFeed {}
// SAFETY: as for `Send`; `&self` methods only call thread-safe functions.
unsafe impl Sync for PartitionFeed {}

impl PartitionFeed {
    /// A new, empty feed on `client` (a consumer).
    ///
    /// # Safety
    ///
    /// The feed must be dropped before `client` is closed or dropped
    /// (librdkafka requires a consumer's queues destroyed before
    /// `rd_kafka_consumer_close`; destroying one later touches the freed
    /// handle).
    pub unsafe fn new<C: ClientContext>(client: &Client<C>) -> PartitionFeed {
        let rk = client.native_ptr();
        // SAFETY: `rk` is the live handle owned by `client`, borrowed for
        // the call. `rd_kafka_queue_new` allocates a queue owned by the
        // returned handle, which this value destroys exactly once (Drop).
        let queue = unsafe { rd::rd_kafka_queue_new(rk) };
        PartitionFeed {
            queue: NonNull::new(queue).expect("rd_kafka_queue_new never returns NULL"),
            rk,
        }
    }

    /// Sends the messages fetched for `topic`/`partition` to this feed
    /// from now on (and those already fetched: librdkafka moves them
    /// over, in order). Call it before the partition is assigned, so no
    /// message of it reaches the consumer's own queue first. Whether
    /// librdkafka knew the partition.
    pub fn take<C: ClientContext>(&self, client: &Client<C>, topic: &str, partition: i32) -> bool {
        assert_eq!(
            client.native_ptr(),
            self.rk,
            "a feed serves its own consumer"
        );
        let Ok(name) = CString::new(topic) else {
            return false;
        };
        // SAFETY: `self.rk` is `client`'s live handle (asserted above, kept
        // alive by the borrow); `name` is NUL-terminated and outlives the
        // call. The returned handle (NULL for an invalid partition) holds a
        // reference on the partition's fetch queue that we give back with
        // `rd_kafka_queue_destroy` right after setting the forward: the
        // forward is a property of the fetch queue (flagged as set by the
        // application, so librdkafka's own fetch start does not replace
        // it) and holds its own reference on `self.queue`.
        unsafe {
            let part = rd::rd_kafka_queue_get_partition(self.rk, name.as_ptr(), partition);
            if part.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(part, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(part);
        }
        true
    }

    /// Refills `batch` with the messages waiting, up to its capacity;
    /// when none is waiting, waits up to `wait` for the first one.
    pub fn consume<'c, C: ClientContext>(
        &self,
        client: &'c Client<C>,
        wait: Duration,
        batch: &mut Batch<'c>,
    ) {
        assert_eq!(
            client.native_ptr(),
            self.rk,
            "a feed serves its own consumer"
        );
        batch.clear();
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // Without waiting: all that is there (a wait would last until the
        // batch is full or the time is up, whichever comes first).
        let mut n = self.take_into(batch, 0, batch.capacity);
        if n == 0 && ms > 0 {
            n = self.take_into(batch, ms, 1);
            if n == 1 {
                self.take_into(batch, 0, batch.capacity - 1);
            }
        }
    }

    /// Appends at most `max` messages to `batch`, waiting up to `ms` for
    /// the first; returns how many.
    fn take_into(&self, batch: &mut Batch<'_>, ms: i32, max: usize) -> usize {
        batch.messages.reserve(max);
        let len = batch.messages.len();
        let spare = batch.messages.spare_capacity_mut();
        let max = max.min(spare.len());
        // SAFETY: `self.queue` is the live queue this value owns, whose
        // consumer is alive (the feed is dropped before it is closed).
        // librdkafka writes at most `max` message pointers into `spare`,
        // which has room for `max` (`reserve` above), and returns how many
        // it wrote (or -1 on an error, when it wrote none).
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                ms,
                spare.as_mut_ptr().cast::<*mut rd::rd_kafka_message_t>(),
                max,
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: the first `n` spare slots were initialized by librdkafka
        // with pointers to messages this batch now owns (each destroyed
        // exactly once, by `Batch::clear`).
        unsafe { batch.messages.set_len(len + n) };
        n
    }
}

impl Drop for PartitionFeed {
    fn drop(&mut self) {
        // SAFETY: the handle was returned by `rd_kafka_queue_new` and is
        // destroyed only here. Messages still in the queue are discarded
        // with it (never handed out: their offsets were never stored).
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Messages taken from a [`PartitionFeed`], owned until the next refill
/// (or drop); `'c` is the consumer's borrow, so a batch cannot outlive it.
pub struct Batch<'c> {
    messages: Vec<*mut rd::rd_kafka_message_t>,
    capacity: usize,
    _consumer: PhantomData<&'c ()>,
}

impl<'c> Batch<'c> {
    /// Room for `capacity` messages per refill.
    pub fn new<C: ClientContext>(_consumer: &'c Client<C>, capacity: usize) -> Batch<'c> {
        Batch {
            messages: Vec::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            _consumer: PhantomData,
        }
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages, in the order librdkafka handed them out (each
    /// partition's in offset order).
    pub fn iter(&self) -> impl Iterator<Item = Fetched<'_>> {
        // SAFETY: every pointer is a message this batch owns, alive until
        // `clear`, which needs `&mut self` (so no `Fetched` borrowed from
        // `&self` outlives it). librdkafka does not write to a message once
        // it is handed to the application.
        self.messages.iter().map(|&m| Fetched { m: unsafe { &*m } })
    }

    /// Destroys the messages.
    pub fn clear(&mut self) {
        for m in self.messages.drain(..) {
            // SAFETY: `m` came from `rd_kafka_consume_batch_queue`, is owned
            // by this batch and is destroyed once (drained).
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// One message of a [`Batch`].
pub struct Fetched<'b> {
    m: &'b rd::rd_kafka_message_t,
}

// `BorrowedHeaders` is rust-rdkafka's zero-sized stand-in for a native
// `rd_kafka_headers_t`: a reference to it is the native pointer (its own
// methods cast it back). A reference to a zero-sized type is valid at any
// non-null address; this checks it stays zero-sized.
const _: () = assert!(std::mem::size_of::<BorrowedHeaders>() == 0);

impl<'b> Fetched<'b> {
    /// The error librdkafka put in place of a message (a fetch error,
    /// for example), if this is one.
    pub fn error(&self) -> Option<KafkaError> {
        if self.m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        Some(match self.m.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                KafkaError::PartitionEOF(self.m.partition)
            }
            e => KafkaError::MessageConsumption(e.into()),
        })
    }

    fn bytes(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'b [u8]> {
        // SAFETY: a non-null key or payload of a live message points to
        // `len` bytes owned by it (rdkafka.h, `rd_kafka_message_t`).
        (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }
}

/// What the lanes read of a message, as rust-rdkafka's own messages offer
/// it.
impl Message for Fetched<'_> {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        Self::bytes(self.m.key, self.m.key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        Self::bytes(self.m.payload, self.m.len)
    }

    /// Never: a fetched message is read, not changed.
    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        None
    }

    fn topic(&self) -> &str {
        if self.m.rkt.is_null() {
            return "";
        }
        // SAFETY: the message holds a reference on its topic, whose name
        // is a NUL-terminated string alive as long as the topic.
        unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.m.rkt)) }
            .to_str()
            .unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.m.partition
    }

    fn offset(&self) -> i64 {
        self.m.offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message and a local to write the kind into.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.m, &mut kind) };
        match kind {
            _ if ms == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ms)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ms)
            }
            _ => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        let mut h: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: a live message; librdkafka parses its headers once, keeps
        // them in the message (alive until it is destroyed) and writes the
        // list's address into `h`. Only this thread reads the message.
        let err = unsafe { rd::rd_kafka_message_headers(self.m, &mut h) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || h.is_null() {
            return None;
        }
        // SAFETY: `h` is non-null and `BorrowedHeaders` is zero-sized (see
        // the assertion above), so the reference is valid; rust-rdkafka's
        // methods read the list through it, as for its own messages.
        Some(unsafe { &*h.cast::<BorrowedHeaders>() })
    }
}
