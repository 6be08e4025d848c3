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
pub(crate) fn flush<C: ClientContext>(
    client: &Client<C>,
    within: Duration,
) -> Result<(), KafkaError> {
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
