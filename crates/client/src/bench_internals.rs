//! The producer's core, reachable from the criterion benchmarks
//! (`cargo bench -p streambus-client --features bench-internals`). Not part
//! of the SDK's API: nothing outside the benchmarks enables the feature.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use streambus_record::{Compression, Record};
use tokio::time::Instant;

use crate::producer::accumulator::{Accumulator, Limits};
use crate::{DeliveryFuture, RecordMetadata};

/// The work [`crate::Producer::send`] and its sender task do per record,
/// without the network: partition, append to the partition's batch, seal
/// full batches, encode them as they would be sent, acknowledge them, and
/// resolve every record's delivery. Shared by reference between threads,
/// as a producer's clones are.
pub struct ProducerCore {
    acc: Accumulator,
    next_offset: AtomicI64,
}

impl ProducerCore {
    /// A core with the SDK's default batching (`max_batch_bytes` a batch,
    /// idempotence off: no producer id to wait for).
    pub fn new(max_batch_bytes: usize) -> ProducerCore {
        ProducerCore {
            acc: Accumulator::new(Limits {
                linger: Duration::ZERO,
                max_batch_bytes,
                compression: Compression::None,
                delivery_timeout: Duration::from_secs(30),
                retries: 0,
                retry_backoff: Duration::from_millis(100),
                idempotence: false,
                max_in_flight_per_partition: 1,
            }),
            next_offset: AtomicI64::new(0),
        }
    }

    /// Appends `record` to `topic` (keyed records by the key's partition
    /// among `partitions`, keyless ones sticky), as `send` does.
    pub fn send(&self, topic: &str, partitions: u32, record: &Record) -> DeliveryFuture {
        let (rx, _wake) = self
            .acc
            .append(topic, None, partitions, record, None, Instant::now())
            .expect("the core is open");
        DeliveryFuture { rx }
    }

    /// Sends everything buffered as the sender task would (encoding each
    /// batch), acknowledges it, and waits for `pending`. Returns the
    /// records acknowledged.
    pub fn flush(&self, pending: Vec<DeliveryFuture>) -> usize {
        self.acc.seal_all();
        let mut bytes = 0;
        loop {
            let mut batches = Vec::new();
            self.acc.ready(Instant::now(), usize::MAX, &mut batches);
            if batches.is_empty() {
                break;
            }
            for mut batch in batches {
                let encoded = batch.encoded();
                bytes += encoded.len();
                let records = streambus_record::BatchHeader::parse(&encoded)
                    .expect("the accumulator builds valid batches")
                    .record_count;
                let base = self
                    .next_offset
                    .fetch_add(i64::from(records), Ordering::Relaxed);
                self.acc.complete(batch, Ok(base));
            }
        }
        std::hint::black_box(bytes);
        let n = pending.len();
        for delivery in pending {
            let written: RecordMetadata =
                futures::executor::block_on(delivery).expect("acknowledged");
            std::hint::black_box(written);
        }
        n
    }
}

/// Decodes a response's encoded batches of `partition` as a subscription
/// does, into the batches [`crate::Subscription::next_batch`] returns.
pub fn decode_batches(
    partition: u32,
    encoded: &bytes::Bytes,
) -> Result<Vec<crate::ConsumedBatch>, crate::ClientError> {
    let mut out = std::collections::VecDeque::new();
    crate::batch::decode_batches(partition, encoded, Vec::new(), i64::MIN, &mut out)?;
    Ok(out.into())
}
