//! The producer's I/O-free core: records are partitioned and appended to
//! per-partition batches here, and the sender task asks which batches to
//! send and reports how each ended.
//!
//! Invariants:
//! - a partition has at most one batch in flight, so batches of one
//!   partition are written in the order they were sealed, retries included;
//! - every batch id stays in `incomplete` from its first record until its
//!   deliveries are resolved, so `flush` can wait for a prefix of ids;
//! - a partition's batches are `open` (taking records), then `queued`
//!   (sealed, waiting for the partition to be free), then in flight.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use streambus_proto::partitioner::partition_for_key;
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, Compression, Record, sequence_add as seq_add};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::RecordMetadata;
use crate::ClientError;

/// Resolves one record's delivery future.
pub(crate) type Delivery = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// The settings the accumulator needs.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub linger: Duration,
    pub max_batch_bytes: usize,
    pub compression: Compression,
    pub delivery_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Stamp every batch with a producer id and sequence numbers.
    pub idempotence: bool,
}

/// Pending records, grouped into batches per (topic, partition).
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: Limits,
    topics: HashMap<String, TopicQueues>,
    next_batch_id: u64,
    incomplete: BTreeSet<u64>,
    closed: bool,
    random: RandomState,
    /// With idempotence: the producer id and epoch new batches are stamped
    /// with; `None` until the sender obtained one, and again after a batch
    /// failed in a way that leaves its partition's sequence uncertain.
    producer: Option<(i64, i16)>,
}

#[derive(Debug)]
struct TopicQueues {
    name: Arc<str>,
    partitions: BTreeMap<u32, PartitionQueue>,
    /// Where keyless records go until that partition's batch is sealed.
    sticky: Option<u32>,
    /// Partition count last used for keyless records.
    partition_count: u32,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<Batch>,
    queued: VecDeque<Batch>,
    in_flight: bool,
    /// The producer id this partition's sequence belongs to, and the next
    /// sequence number under it.
    sequence: Option<(i64, i32)>,
}

/// One batch of records for one partition.
#[derive(Debug)]
pub(crate) struct Batch {
    pub id: u64,
    pub topic: Arc<str>,
    pub partition: u32,
    builder: BatchBuilder,
    encoded: Option<Bytes>,
    deliveries: Vec<Delivery>,
    permit: Option<OwnedSemaphorePermit>,
    created: Instant,
    /// When the batch fails if not acknowledged yet.
    pub deadline: Instant,
    /// How many times it was handed to the sender.
    pub attempts: u32,
    retry_at: Option<Instant>,
}

impl Batch {
    /// Whether it was encoded (handed to the sender at least once).
    fn sent(&self) -> bool {
        self.encoded.is_some()
    }

    /// The encoded RecordBatch v2, built on first use and kept for retries.
    pub fn encoded(&mut self) -> Bytes {
        self.encoded
            .get_or_insert_with(|| self.builder.build())
            .clone()
    }

    /// Number of records.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Resolves every record's delivery: offsets from `base_offset`
    /// (`-1` when the server assigns none, as with `acks=none`), or the error.
    fn resolve(self, result: Result<i64, Error>) {
        let partition = self.partition;
        for (i, delivery) in self.deliveries.into_iter().enumerate() {
            let outcome = match &result {
                Ok(base) if *base >= 0 => Ok(RecordMetadata {
                    partition,
                    offset: base + i as i64,
                }),
                Ok(_) => Ok(RecordMetadata {
                    partition,
                    offset: -1,
                }),
                Err(e) => Err(ClientError::Server(e.clone())),
            };
            // The caller may have dropped its delivery future.
            let _ = delivery.send(outcome);
        }
        drop(self.permit);
    }
}

/// What [`Accumulator::ready`] found.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    /// When an open batch's linger or a retry backoff ends.
    pub next_wake: Option<Instant>,
    /// Batches failed because their delivery timeout passed while queued.
    pub expired: usize,
}

/// Bytes a record adds to a batch, roughly (the buffer accounting unit).
pub(crate) fn record_size(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len) + 10)
        .sum();
    record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + headers
        + 21
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Accumulator {
    pub fn new(limits: Limits) -> Accumulator {
        Accumulator {
            limits,
            topics: HashMap::new(),
            next_batch_id: 0,
            incomplete: BTreeSet::new(),
            closed: false,
            random: RandomState::new(),
            producer: None,
        }
    }

    /// Whether batches wait for a producer id before they can be sent.
    pub fn needs_producer(&self) -> bool {
        self.limits.idempotence && self.producer.is_none()
    }

    /// The producer id and epoch to stamp new batches with.
    pub fn set_producer(&mut self, producer_id: i64, epoch: i16) {
        self.producer = Some((producer_id, epoch));
    }

    /// Appends `record` for `topic`.
    ///
    /// The partition is `partition` if given, else `partition_for_key` of
    /// the key among `partitions`, else the topic's sticky partition, which
    /// moves to the next partition whenever its batch is sealed. Returns
    /// the delivery receiver and whether the sender should look at the
    /// queues again (a batch was opened or sealed).
    pub fn append(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        partitions: u32,
        record: &Record,
        permit: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> Result<(oneshot::Receiver<Result<RecordMetadata, ClientError>>, bool), ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let size = record_size(record);
        let limits = self.limits.clone();
        if !self.topics.contains_key(topic) {
            let seed = self.random.hash_one(topic);
            self.topics.insert(
                topic.to_string(),
                TopicQueues {
                    name: Arc::from(topic),
                    partitions: BTreeMap::new(),
                    sticky: None,
                    partition_count: 0,
                },
            );
            let tq = self.topics.get_mut(topic).expect("just inserted");
            tq.sticky = (partitions > 0).then(|| (seed % u64::from(partitions)) as u32);
        }
        let tq = self.topics.get_mut(topic).expect("inserted above");
        let mut wake = false;
        let partition = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, partitions.max(1)),
            (None, None) => {
                let count = partitions.max(1);
                if tq.partition_count != count {
                    tq.partition_count = count;
                    tq.sticky = tq.sticky.map(|p| p % count);
                }
                let sticky = *tq.sticky.get_or_insert(0);
                // A full sticky batch is sealed now, so this record starts
                // the next partition's batch rather than a nearly empty one.
                let q = tq.partitions.entry(sticky).or_default();
                if q.open.as_ref().is_some_and(|b| {
                    !b.builder.is_empty()
                        && b.builder.estimated_size() + size > limits.max_batch_bytes
                }) {
                    q.seal();
                    wake = true;
                    tq.rotate_sticky(sticky);
                }
                tq.sticky.expect("set above")
            }
        };
        let name = tq.name.clone();
        let q = tq.partitions.entry(partition).or_default();
        if q.open.as_ref().is_some_and(|b| {
            !b.builder.is_empty() && b.builder.estimated_size() + size > limits.max_batch_bytes
        }) {
            q.seal();
            wake = true;
            tq.rotate_sticky(partition);
        }
        let q = tq.partitions.entry(partition).or_default();
        let batch = q.open.get_or_insert_with(|| {
            wake = true;
            let id = self.next_batch_id;
            self.next_batch_id += 1;
            self.incomplete.insert(id);
            Batch {
                id,
                topic: name,
                partition,
                builder: BatchBuilder::new(limits.compression),
                encoded: None,
                deliveries: Vec::new(),
                permit: None,
                created: now,
                deadline: now + limits.delivery_timeout,
                attempts: 0,
                retry_at: None,
            }
        });
        let (tx, rx) = oneshot::channel();
        batch.builder.push(record);
        batch.deliveries.push(tx);
        match (&mut batch.permit, permit) {
            (Some(held), Some(permit)) => held.merge(permit),
            (held @ None, permit) => *held = permit,
            (Some(_), None) => {}
        }
        if batch.builder.estimated_size() >= limits.max_batch_bytes {
            q.seal();
            wake = true;
            tq.rotate_sticky(partition);
        }
        Ok((rx, wake))
    }

    /// Moves batches ready to go into `out`, at most `max` of them: the head
    /// of each free partition's queue once its retry backoff has passed, or
    /// its open batch once `linger` has passed. Batches whose delivery
    /// timeout passed while queued are failed.
    pub fn ready(&mut self, now: Instant, max: usize, out: &mut Vec<Batch>) -> Ready {
        let linger = self.limits.linger;
        let mut ready = Ready::default();
        let mut expired = Vec::new();
        let producer = self.producer;
        // With idempotence nothing goes out before there is a producer id.
        let max = if self.needs_producer() { 0 } else { max };
        for tq in self.topics.values_mut() {
            let mut sealed = Vec::new();
            for (&partition, q) in tq.partitions.iter_mut() {
                if q.in_flight {
                    continue;
                }
                while q.queued.front().is_some_and(|b| b.deadline <= now) {
                    expired.extend(q.queued.pop_front());
                }
                if let Some(head) = q.queued.front() {
                    if let Some(at) = head.retry_at.filter(|at| *at > now) {
                        ready.next_wake = earliest(ready.next_wake, at);
                    } else if out.len() < max {
                        let mut batch = q.queued.pop_front().expect("head exists");
                        batch.attempts += 1;
                        q.in_flight = true;
                        q.stamp(&mut batch, producer);
                        out.push(batch);
                    }
                } else if let Some(open) = &q.open {
                    let due = open.created + linger;
                    if due > now {
                        ready.next_wake = earliest(ready.next_wake, due);
                    } else if out.len() < max {
                        let mut batch = q.open.take().expect("open exists");
                        batch.attempts += 1;
                        q.in_flight = true;
                        q.stamp(&mut batch, producer);
                        out.push(batch);
                        sealed.push(partition);
                    }
                }
            }
            for partition in sealed {
                tq.rotate_sticky(partition);
            }
        }
        ready.expired = expired.len();
        for batch in expired {
            let timeout = self.limits.delivery_timeout;
            self.finish(
                batch,
                Err(Error::new(
                    Reason::Timeout,
                    format!("record not sent within the delivery timeout of {timeout:?}"),
                )),
            );
        }
        ready
    }

    /// Resolves a batch the sender took: `Ok(base_offset)` or an error.
    pub fn complete(&mut self, batch: Batch, result: Result<i64, Error>) {
        self.finish(batch, result);
    }

    /// A batch the sender took failed with `error`: it goes back to the
    /// head of its partition's queue if `retriable` and the retry budget
    /// and delivery timeout allow, else its records fail.
    pub fn fail_or_retry(&mut self, mut batch: Batch, error: Error, retriable: bool, now: Instant) {
        let retry_at = now + self.limits.retry_backoff;
        if !retriable {
            return self.finish(batch, Err(error));
        }
        if batch.attempts > self.limits.retries || retry_at >= batch.deadline {
            let timeout = self.limits.delivery_timeout;
            let error = Error::new(
                Reason::Timeout,
                format!(
                    "record not delivered after {} attempts within {timeout:?}: {error}",
                    batch.attempts
                ),
            );
            return self.finish(batch, Err(error));
        }
        tracing::debug!(
            topic = %batch.topic,
            partition = batch.partition,
            attempts = batch.attempts,
            error = %error,
            "retrying produce batch"
        );
        batch.retry_at = Some(retry_at);
        match self.queue(&batch.topic, batch.partition) {
            Some(q) => {
                q.in_flight = false;
                q.queued.push_front(batch);
            }
            None => self.finish(batch, Err(error)),
        }
    }

    /// Fails every batch not in flight (open or queued) with `error`.
    pub fn fail_unsent(&mut self, error: Error) {
        let mut failed = Vec::new();
        for tq in self.topics.values_mut() {
            for q in tq.partitions.values_mut() {
                failed.extend(q.open.take());
                failed.extend(q.queued.drain(..));
            }
        }
        for batch in failed {
            self.finish(batch, Err(error.clone()));
        }
    }

    /// Seals every open batch so it is sent without waiting for `linger`.
    /// Returns an id: once [`Accumulator::completed_below`] holds for it,
    /// every record appended before this call is resolved.
    pub fn seal_all(&mut self) -> u64 {
        for tq in self.topics.values_mut() {
            let mut sealed = Vec::new();
            for (&partition, q) in tq.partitions.iter_mut() {
                if q.open.is_some() {
                    q.seal();
                    sealed.push(partition);
                }
            }
            for partition in sealed {
                tq.rotate_sticky(partition);
            }
        }
        self.next_batch_id
    }

    /// Whether every batch with an id below `id` is resolved.
    pub fn completed_below(&self, id: u64) -> bool {
        self.incomplete.first().is_none_or(|first| *first >= id)
    }

    /// Stops accepting records and seals what is open.
    pub fn close(&mut self) {
        self.closed = true;
        self.seal_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether no record is pending.
    pub fn is_idle(&self) -> bool {
        self.incomplete.is_empty()
    }

    fn queue(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionQueue> {
        self.topics.get_mut(topic)?.partitions.get_mut(&partition)
    }

    fn finish(&mut self, batch: Batch, result: Result<i64, Error>) {
        if let Some(q) = self.queue(&batch.topic, batch.partition) {
            q.in_flight = false;
        }
        if result.is_err() && batch.sent() && self.limits.idempotence {
            // Whether the partition has the batch is unknown (or it broke
            // the sequence): later batches go under a new producer id, so
            // they neither wait for this one nor are taken for it.
            self.producer = None;
        }
        self.incomplete.remove(&batch.id);
        batch.resolve(result);
    }
}

impl PartitionQueue {
    /// Gives a batch leaving for the first time its producer id, epoch and
    /// first sequence number (a retry keeps the bytes it was sent with).
    fn stamp(&mut self, batch: &mut Batch, producer: Option<(i64, i16)>) {
        let Some((id, epoch)) = producer else {
            return;
        };
        if batch.sent() {
            return;
        }
        let seq = match self.sequence {
            Some((pid, seq)) if pid == id => seq,
            _ => 0,
        };
        let records = batch.deliveries.len() as i32;
        self.sequence = Some((id, seq_add(seq, records)));
        let builder = std::mem::replace(&mut batch.builder, BatchBuilder::new(Compression::None));
        batch.builder = builder.with_producer(id, epoch, seq);
    }

    fn seal(&mut self) {
        if let Some(batch) = self.open.take() {
            self.queued.push_back(batch);
        }
    }
}

impl TopicQueues {
    /// Keyless records move on once the sticky partition's batch is sealed.
    fn rotate_sticky(&mut self, sealed: u32) {
        if self.sticky == Some(sealed) && self.partition_count > 0 {
            self.sticky = Some((sealed + 1) % self.partition_count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            linger: Duration::from_millis(5),
            max_batch_bytes: 1024,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(30),
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            idempotence: false,
        }
    }

    fn record(key: Option<&str>, value: &str) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 1,
        }
    }

    fn drain(acc: &mut Accumulator, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        acc.ready(now, usize::MAX, &mut out);
        out
    }

    #[test]
    fn keyed_records_follow_the_kafka_partitioner() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        for i in 0..50 {
            let key = format!("key-{i}");
            acc.append("t", None, 6, &record(Some(&key), "v"), None, now)
                .unwrap();
        }
        let batches = drain(&mut acc, now + Duration::from_millis(5));
        let total: usize = batches.iter().map(Batch::len).sum();
        assert_eq!(total, 50);
        for mut batch in batches {
            for r in streambus_record::decode_records(&batch.encoded()).unwrap() {
                let key = r.key.unwrap();
                assert_eq!(partition_for_key(&key, 6), batch.partition);
            }
        }
    }

    #[test]
    fn explicit_partition_wins_over_the_key() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        acc.append("t", Some(5), 0, &record(Some("k"), "v"), None, now)
            .unwrap();
        let batches = drain(&mut acc, now + Duration::from_secs(1));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].partition, 5);
    }

    #[test]
    fn keyless_records_stick_to_one_partition_until_its_batch_is_full() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        // ~100 bytes each: about ten per 1 KiB batch.
        let value = "x".repeat(80);
        for _ in 0..100 {
            acc.append("t", None, 4, &record(None, &value), None, now)
                .unwrap();
        }
        let batches = drain(&mut acc, now + Duration::from_secs(1));
        // Sealed batches wait behind each other per partition, so one batch
        // per partition is handed out at a time; all four partitions used.
        let partitions: BTreeSet<u32> = batches.iter().map(|b| b.partition).collect();
        assert_eq!(partitions.len(), 4);
        for batch in &batches {
            assert!(batch.len() >= 8, "batch of {} records", batch.len());
            assert!(batch.builder.estimated_size() <= 1024);
        }
    }

    #[test]
    fn open_batch_waits_for_linger() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let (_, wake) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        assert!(wake, "a new batch wakes the sender");
        let (_, wake) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        assert!(!wake, "appending to an open batch does not");
        let mut out = Vec::new();
        let ready = acc.ready(now + Duration::from_millis(1), 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(ready.next_wake, Some(now + Duration::from_millis(5)));
        let out = drain(&mut acc, now + Duration::from_millis(5));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2);
    }

    #[test]
    fn one_batch_in_flight_per_partition() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let value = "x".repeat(600);
        for _ in 0..3 {
            acc.append("t", Some(0), 0, &record(None, &value), None, now)
                .unwrap();
        }
        acc.append("t", Some(1), 0, &record(None, "v"), None, now)
            .unwrap();
        let later = now + Duration::from_secs(1);
        let first = drain(&mut acc, later);
        assert_eq!(first.len(), 2, "one batch of each partition");
        assert!(drain(&mut acc, later).is_empty());
        for batch in first {
            acc.complete(batch, Ok(0));
        }
        let second = drain(&mut acc, later);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].partition, 0);
    }

    #[test]
    fn max_limits_batches_handed_out() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        for p in 0..5 {
            acc.append("t", Some(p), 0, &record(None, "v"), None, now)
                .unwrap();
        }
        let mut out = Vec::new();
        acc.ready(now + Duration::from_secs(1), 3, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[tokio::test]
    async fn offsets_are_assigned_from_the_base_offset() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let mut receivers = Vec::new();
        for _ in 0..3 {
            let (rx, _) = acc
                .append("t", Some(2), 0, &record(None, "v"), None, now)
                .unwrap();
            receivers.push(rx);
        }
        let id = acc.seal_all();
        assert!(!acc.completed_below(id));
        let batch = drain(&mut acc, now).pop().unwrap();
        acc.complete(batch, Ok(40));
        assert!(acc.completed_below(id));
        assert!(acc.is_idle());
        for (i, rx) in receivers.into_iter().enumerate() {
            let md = rx.await.unwrap().unwrap();
            assert_eq!(md.partition, 2);
            assert_eq!(md.offset, 40 + i as i64);
        }
    }

    #[tokio::test]
    async fn retriable_failure_is_retried_first_after_the_backoff() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx1, _) = acc
            .append("t", Some(0), 0, &record(None, "first"), None, now)
            .unwrap();
        acc.seal_all();
        let (rx2, _) = acc
            .append("t", Some(0), 0, &record(None, "second"), None, now)
            .unwrap();
        acc.seal_all();
        let batch = drain(&mut acc, now).pop().unwrap();
        let unavailable = Error::new(Reason::NotLeader, "moved");
        acc.fail_or_retry(batch, unavailable, true, now);
        // Nothing goes until the backoff passed, and then the failed batch
        // goes before the later one.
        assert!(drain(&mut acc, now + Duration::from_millis(50)).is_empty());
        let mut retry = drain(&mut acc, now + Duration::from_millis(100));
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].attempts, 2);
        let decoded = streambus_record::decode_records(&retry[0].encoded()).unwrap();
        assert_eq!(decoded[0].value.as_deref(), Some(&b"first"[..]));
        acc.complete(retry.pop().unwrap(), Ok(0));
        let next = drain(&mut acc, now + Duration::from_millis(100))
            .pop()
            .unwrap();
        acc.complete(next, Ok(1));
        assert_eq!(rx1.await.unwrap().unwrap().offset, 0);
        assert_eq!(rx2.await.unwrap().unwrap().offset, 1);
    }

    #[tokio::test]
    async fn non_retriable_failure_fails_the_records() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        let batch = drain(&mut acc, now + Duration::from_secs(1)).pop().unwrap();
        acc.fail_or_retry(batch, Error::new(Reason::UnknownTopic, "gone"), false, now);
        let err = rx.await.unwrap().unwrap_err();
        assert_eq!(err.reason(), Some(Reason::UnknownTopic));
        assert!(acc.is_idle());
    }

    #[tokio::test]
    async fn retries_stop_at_the_delivery_timeout() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        let batch = drain(&mut acc, now + Duration::from_secs(1)).pop().unwrap();
        let late = now + Duration::from_secs(30);
        acc.fail_or_retry(batch, Error::new(Reason::Unavailable, "down"), true, late);
        let err = rx.await.unwrap().unwrap_err();
        assert_eq!(err.reason(), Some(Reason::Timeout));
        assert!(err.to_string().contains("down"), "{err}");
    }

    #[tokio::test]
    async fn queued_batches_expire_at_the_delivery_timeout() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        acc.seal_all();
        let mut out = Vec::new();
        let ready = acc.ready(now + Duration::from_secs(31), 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(ready.expired, 1);
        assert_eq!(
            rx.await.unwrap().unwrap_err().reason(),
            Some(Reason::Timeout)
        );
    }

    #[test]
    fn closed_accumulator_rejects_records() {
        let mut acc = Accumulator::new(limits());
        acc.close();
        let err = acc
            .append("t", Some(0), 0, &record(None, "v"), None, Instant::now())
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed));
    }

    #[test]
    fn oversized_record_gets_a_batch_of_its_own() {
        let mut acc = Accumulator::new(limits());
        let now = Instant::now();
        acc.append("t", Some(0), 0, &record(None, "small"), None, now)
            .unwrap();
        acc.append("t", Some(0), 0, &record(None, &"x".repeat(4096)), None, now)
            .unwrap();
        acc.append("t", Some(0), 0, &record(None, "small"), None, now)
            .unwrap();
        acc.seal_all();
        let mut sizes = Vec::new();
        while let Some(batch) = drain(&mut acc, now).pop() {
            sizes.push(batch.len());
            acc.complete(batch, Ok(0));
        }
        assert_eq!(sizes, vec![1, 1, 1]);
    }

    fn header(batch: &mut Batch) -> streambus_record::BatchHeader {
        streambus_record::BatchHeader::parse(&batch.encoded()).unwrap()
    }

    #[test]
    fn idempotent_batches_wait_for_a_producer_id_then_carry_sequences() {
        let mut acc = Accumulator::new(Limits {
            idempotence: true,
            linger: Duration::ZERO,
            ..limits()
        });
        let now = Instant::now();
        for i in 0..3 {
            let _ = acc
                .append("t", Some(0), 2, &record(None, &format!("a{i}")), None, now)
                .unwrap();
        }
        let _ = acc
            .append("t", Some(1), 2, &record(None, "b"), None, now)
            .unwrap();
        assert!(acc.needs_producer());
        assert!(
            drain(&mut acc, now).is_empty(),
            "nothing before a producer id"
        );
        acc.set_producer(42, 0);
        let mut batches = drain(&mut acc, now);
        assert_eq!(batches.len(), 2);
        let h: Vec<_> = batches.iter_mut().map(header).collect();
        assert_eq!(
            h.iter()
                .map(|h| (h.producer_id, h.producer_epoch, h.base_sequence))
                .collect::<Vec<_>>(),
            vec![(42, 0, 0), (42, 0, 0)]
        );
        // Partition 0's next batch continues its sequence; a retry keeps
        // the bytes (and sequence) it was sent with.
        let mut p0 = batches.remove(0);
        let first = p0.encoded();
        acc.fail_or_retry(p0, Error::new(Reason::NotLeader, "moved"), true, now);
        let later = now + Duration::from_secs(1);
        let mut retried = drain(&mut acc, later);
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].encoded(), first);
        acc.complete(retried.remove(0), Ok(0));
        let _ = acc
            .append("t", Some(0), 2, &record(None, "c"), None, later)
            .unwrap();
        let mut next = drain(&mut acc, later);
        assert_eq!(header(&mut next[0]).base_sequence, 3);
        assert!(!acc.needs_producer());

        // A sent batch that fails for good makes the next batches wait for
        // a new producer id, under which sequences start again.
        acc.fail_or_retry(
            next.remove(0),
            Error::new(Reason::RecordTooLarge, "too big"),
            false,
            later,
        );
        assert!(acc.needs_producer());
        let _ = acc
            .append("t", Some(0), 2, &record(None, "d"), None, later)
            .unwrap();
        assert!(drain(&mut acc, later).is_empty());
        acc.set_producer(43, 0);
        let mut next = drain(&mut acc, later);
        let h = header(&mut next[0]);
        assert_eq!((h.producer_id, h.base_sequence), (43, 0));
    }

    #[test]
    fn without_idempotence_batches_carry_no_producer() {
        let mut acc = Accumulator::new(Limits {
            linger: Duration::ZERO,
            ..limits()
        });
        let now = Instant::now();
        let _ = acc
            .append("t", Some(0), 1, &record(None, "x"), None, now)
            .unwrap();
        assert!(!acc.needs_producer());
        let mut batches = drain(&mut acc, now);
        assert_eq!(header(&mut batches[0]).producer_id, -1);
    }
}
