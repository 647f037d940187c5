//! The producer's I/O-free core: records are partitioned and appended to
//! per-partition batches here, and the sender task asks which batches to
//! send and reports how each ended.
//!
//! Invariants:
//! - batches of one partition are written in the order they were sealed,
//!   retries included. Without idempotence a partition has at most one
//!   batch in flight. With it, up to `max_in_flight_per_partition`, all
//!   under one producer id, so their sequence numbers order them on the
//!   server; a batch sent again (a retry) goes alone, once nothing else of
//!   its partition is in flight, and nothing follows it until it is done;
//! - every batch id stays in `incomplete` from its first record until its
//!   deliveries are resolved, so `flush` can wait for a prefix of ids;
//! - a partition's batches are `open` (taking records), then `queued`
//!   (sealed, waiting for the partition to be free), then in flight.
//!
//! Locking: the accumulator is shared by the producer's handles and its
//! sender task, and no lock covers the whole producer. A record takes read
//! locks on the topic map and the topic's partition map (written only when
//! a topic or partition is first seen) and the lock of its own partition,
//! so records for different partitions never wait for each other. Batch
//! ids come from one atomic counter, taken under the partition's lock, so
//! they increase within a partition. The producer id is the sender's: it
//! is read once per [`Accumulator::ready`] and changed only by the sender.
//! Lock order: topics, partitions, one partition, then the producer id.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use streambus_proto::partitioner::partition_for_key;
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, Compression, Record, sequence_add as seq_add};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::lock;
use super::outcome::{BatchOutcome, Delivery};
use crate::ClientError;

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
    /// Batches of one partition in flight at once (1 without idempotence).
    pub max_in_flight_per_partition: usize,
}

/// Pending records, grouped into batches per (topic, partition).
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: Limits,
    topics: RwLock<HashMap<Arc<str>, TopicQueues>>,
    next_batch_id: AtomicU64,
    /// Batches opened and not yet resolved, in every partition.
    incomplete: AtomicUsize,
    closed: AtomicBool,
    random: RandomState,
    /// With idempotence: the producer id and epoch new batches are stamped
    /// with; `None` until the sender obtained one, and again after a batch
    /// failed in a way that leaves its partition's sequence uncertain.
    producer: Mutex<Option<(i64, i16)>>,
    /// Why the last request for a producer id failed, while none is set:
    /// said when batches waiting for one time out.
    producer_error: Mutex<Option<Error>>,
}

/// No sticky partition chosen yet.
const NO_STICKY: u32 = u32::MAX;

#[derive(Debug)]
struct TopicQueues {
    name: Arc<str>,
    partitions: RwLock<BTreeMap<u32, Mutex<PartitionQueue>>>,
    /// Where keyless records go until that partition's batch is sealed
    /// ([`NO_STICKY`] before the first).
    sticky: AtomicU32,
    /// Partition count last used for keyless records.
    partition_count: AtomicU32,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<Batch>,
    queued: VecDeque<Batch>,
    /// Ids of the batches in flight.
    in_flight: BTreeSet<u64>,
    /// Ids of the batches opened and not yet resolved.
    incomplete: BTreeSet<u64>,
    /// Size of the last batch sealed, what the next one's buffer starts at.
    last_batch_bytes: usize,
    /// The producer id the batches in flight carry.
    in_flight_producer: Option<i64>,
    /// Whether the batch in flight is a retry (it is then the only one).
    retry_in_flight: bool,
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
    /// Records appended.
    records: u32,
    /// Shared with the records' delivery futures.
    outcome: Arc<BatchOutcome>,
    permit: Option<OwnedSemaphorePermit>,
    created: Instant,
    /// When the batch fails if not acknowledged yet.
    pub deadline: Instant,
    /// How many times it was handed to the sender.
    pub attempts: u32,
    retry_at: Option<Instant>,
    /// Why its last attempt failed, said if it then times out.
    last_error: Option<Error>,
    /// The producer id it is stamped with.
    producer_id: Option<i64>,
    /// The `traceparent` header of its first record that has one: the
    /// gateway's and storage nodes' spans for the batch continue that
    /// trace.
    pub traceparent: Option<String>,
}

impl Batch {
    /// Whether it was handed to the sender under its producer id and
    /// sequence (which it keeps for retries).
    fn stamped(&self) -> bool {
        self.producer_id.is_some()
    }

    /// The encoded RecordBatch v2, built on first use (from the builder's
    /// buffer, without copying it) and kept for retries.
    pub fn encoded(&mut self) -> Bytes {
        if self.encoded.is_none() {
            let builder =
                std::mem::replace(&mut self.builder, BatchBuilder::new(Compression::None));
            self.encoded = Some(builder.finish());
        }
        self.encoded.clone().expect("set above")
    }

    /// Number of records.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records as usize
    }

    /// Resolves every record's delivery: offsets from `base_offset`
    /// (`-1` when the server assigns none, as with `acks=none`), or the error.
    fn resolve(self, result: Result<i64, Error>) {
        self.outcome.resolve(result);
        // The permit goes with the batch.
    }
}

impl Drop for Batch {
    /// A batch dropped unresolved (the producer's task ended) fails its
    /// records with [`ClientError::Closed`].
    fn drop(&mut self) {
        self.outcome.close();
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

/// The record's W3C `traceparent` header, if it has one.
fn traceparent_of(record: &Record) -> Option<String> {
    let value = record
        .headers
        .iter()
        .find(|h| h.key == "traceparent")?
        .value
        .as_ref()?;
    std::str::from_utf8(value).ok().map(str::to_string)
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Accumulator {
    pub fn new(limits: Limits) -> Accumulator {
        Accumulator {
            limits,
            topics: RwLock::new(HashMap::new()),
            next_batch_id: AtomicU64::new(0),
            incomplete: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            random: RandomState::new(),
            producer: Mutex::new(None),
            producer_error: Mutex::new(None),
        }
    }

    /// Whether batches wait for a producer id before they can be sent.
    pub fn needs_producer(&self) -> bool {
        self.limits.idempotence && lock(&self.producer).is_none()
    }

    /// The producer id and epoch to stamp new batches with.
    pub fn set_producer(&self, producer_id: i64, epoch: i16) {
        *lock(&self.producer) = Some((producer_id, epoch));
        *lock(&self.producer_error) = None;
    }

    /// A request for a producer id failed with `error` and is tried again:
    /// batches that time out waiting for one say why.
    pub fn producer_unavailable(&self, error: Error) {
        *lock(&self.producer_error) = Some(error);
    }

    /// Appends `record` for `topic`.
    ///
    /// The partition is `partition` if given, else `partition_for_key` of
    /// the key among `partitions`, else the topic's sticky partition, which
    /// moves to the next partition whenever its batch is sealed. Returns
    /// the delivery receiver and whether the sender should look at the
    /// queues again (a batch was opened or sealed).
    pub fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        partitions: u32,
        record: &Record,
        permit: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> Result<(Delivery, bool), ClientError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let size = record_size(record);
        let max_batch_bytes = self.limits.max_batch_bytes;
        let full = |q: &PartitionQueue| {
            q.open.as_ref().is_some_and(|b| {
                !b.builder.is_empty() && b.builder.estimated_size() + size > max_batch_bytes
            })
        };
        let topics = self.topic(topic, partitions);
        let tq = topics.get(topic).expect("the topic was added");
        let mut wake = false;
        let partition = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, partitions.max(1)),
            (None, None) => {
                let count = partitions.max(1);
                if tq.partition_count.swap(count, Ordering::Relaxed) != count {
                    let sticky = tq.sticky.load(Ordering::Relaxed);
                    if sticky != NO_STICKY {
                        tq.sticky.store(sticky % count, Ordering::Relaxed);
                    }
                }
                let _ =
                    tq.sticky
                        .compare_exchange(NO_STICKY, 0, Ordering::Relaxed, Ordering::Relaxed);
                let sticky = tq.sticky.load(Ordering::Relaxed);
                // A full sticky batch is sealed now, so this record starts
                // the next partition's batch rather than a nearly empty one.
                let sealed = tq.with_partition(sticky, |q| {
                    let full = full(q);
                    if full {
                        q.seal();
                    }
                    full
                });
                if sealed {
                    wake = true;
                    tq.rotate_sticky(sticky);
                }
                tq.sticky.load(Ordering::Relaxed)
            }
        };
        let (delivery, sealed) = tq.with_partition(partition, |q| {
            // Checked again under the partition's lock: `close` seals every
            // partition after setting the flag, so a record either lands in
            // a batch it seals or is refused.
            if self.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            let mut sealed = false;
            if full(q) {
                q.seal();
                sealed = true;
            }
            // Sized like the partition's last batch (a little more), so a
            // batch's buffer rarely grows, and never past twice the limit.
            let capacity = (q.last_batch_bytes + q.last_batch_bytes / 8).min(2 * max_batch_bytes);
            if q.open.is_none() {
                wake = true;
                let id = self.next_batch_id.fetch_add(1, Ordering::Relaxed);
                self.incomplete.fetch_add(1, Ordering::Relaxed);
                q.incomplete.insert(id);
                q.open = Some(Batch {
                    id,
                    topic: tq.name.clone(),
                    partition,
                    builder: BatchBuilder::with_capacity(self.limits.compression, capacity),
                    encoded: None,
                    records: 0,
                    outcome: BatchOutcome::new(partition),
                    permit: None,
                    created: now,
                    deadline: now + self.limits.delivery_timeout,
                    attempts: 0,
                    retry_at: None,
                    last_error: None,
                    producer_id: None,
                    traceparent: None,
                });
            }
            let batch = q.open.as_mut().expect("opened above");
            let delivery = batch.outcome.delivery(batch.records);
            if batch.traceparent.is_none() && !record.headers.is_empty() {
                batch.traceparent = traceparent_of(record);
            }
            batch.builder.push(record);
            batch.records += 1;
            match (&mut batch.permit, permit) {
                (Some(held), Some(permit)) => held.merge(permit),
                (held @ None, permit) => *held = permit,
                (Some(_), None) => {}
            }
            if batch.builder.estimated_size() >= max_batch_bytes {
                q.seal();
                sealed = true;
            }
            Ok((delivery, sealed))
        })?;
        if sealed {
            wake = true;
            tq.rotate_sticky(partition);
        }
        Ok((delivery, wake))
    }

    /// The topic map, read-locked, with `topic` in it (added on first use,
    /// its sticky partition chosen at random among `partitions`).
    fn topic(
        &self,
        topic: &str,
        partitions: u32,
    ) -> RwLockReadGuard<'_, HashMap<Arc<str>, TopicQueues>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(topic) {
            return topics;
        }
        drop(topics);
        let seed = self.random.hash_one(topic);
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(Arc::from(topic))
            .or_insert_with(|| TopicQueues {
                name: Arc::from(topic),
                partitions: RwLock::new(BTreeMap::new()),
                sticky: AtomicU32::new(if partitions > 0 {
                    (seed % u64::from(partitions)) as u32
                } else {
                    NO_STICKY
                }),
                partition_count: AtomicU32::new(0),
            });
        drop(topics);
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on every partition queue, topic by topic, under each
    /// partition's lock in turn; then rotates the sticky partition away from
    /// those for which `f` returned true (it sealed their open batch).
    fn each_partition(&self, mut f: impl FnMut(u32, &mut PartitionQueue) -> bool) {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        for tq in topics.values() {
            let mut sealed = Vec::new();
            {
                let partitions = tq.partitions.read().unwrap_or_else(|e| e.into_inner());
                for (&partition, q) in partitions.iter() {
                    if f(partition, &mut lock(q)) {
                        sealed.push(partition);
                    }
                }
            }
            for partition in sealed {
                tq.rotate_sticky(partition);
            }
        }
    }

    /// Moves batches ready to go into `out`, at most `max` of them: the head
    /// of each free partition's queue once its retry backoff has passed, or
    /// its open batch once `linger` has passed. Batches whose delivery
    /// timeout passed while queued are failed.
    pub fn ready(&self, now: Instant, max: usize, out: &mut Vec<Batch>) -> Ready {
        let linger = self.limits.linger;
        let mut ready = Ready::default();
        let mut expired = Vec::new();
        let producer = *lock(&self.producer);
        // With idempotence nothing goes out before there is a producer id.
        let max = if self.limits.idempotence && producer.is_none() {
            0
        } else {
            max
        };
        let per_partition = if self.limits.idempotence {
            self.limits.max_in_flight_per_partition.max(1)
        } else {
            1
        };
        self.each_partition(|_, q| {
            let mut sealed = false;
            while q.queued.front().is_some_and(|b| b.deadline <= now) {
                expired.extend(q.queued.pop_front());
            }
            // An open batch can outlive its deadline too: nothing is sealed
            // while batches wait for a producer id.
            if q.queued.is_empty() && q.open.as_ref().is_some_and(|b| b.deadline <= now) {
                expired.extend(q.open.take());
            }
            while out.len() < max && q.may_send(per_partition, producer) {
                if let Some(head) = q.queued.front() {
                    if let Some(at) = head.retry_at.filter(|at| *at > now) {
                        ready.next_wake = earliest(ready.next_wake, at);
                        break;
                    }
                    let retry = head.attempts > 0;
                    if retry && !q.in_flight.is_empty() {
                        // Waits for the batches before it to end.
                        break;
                    }
                    let batch = q.queued.pop_front().expect("head exists");
                    q.retry_in_flight = retry;
                    q.send(batch, producer, out);
                } else if let Some(open) = &q.open {
                    let due = open.created + linger;
                    if due > now {
                        ready.next_wake = earliest(ready.next_wake, due);
                        break;
                    }
                    let batch = q.open.take().expect("open exists");
                    q.last_batch_bytes = batch.builder.estimated_size();
                    q.send(batch, producer, out);
                    sealed = true;
                } else {
                    break;
                }
            }
            sealed
        });
        ready.expired = expired.len();
        for mut batch in expired {
            let timeout = self.limits.delivery_timeout;
            let mut message = format!("record not sent within the delivery timeout of {timeout:?}");
            if let Some(last) = batch.last_error.take() {
                message.push_str(&format!(" (last error: {last})"));
            } else if let Some(last) = lock(&self.producer_error)
                .as_ref()
                .filter(|_| producer.is_none() && self.limits.idempotence)
            {
                message.push_str(&format!(" (waiting for an idempotent producer id: {last})"));
            }
            self.finish(batch, Err(Error::new(Reason::Timeout, message)));
        }
        ready
    }

    /// Resolves a batch the sender took: `Ok(base_offset)` or an error.
    pub fn complete(&self, batch: Batch, result: Result<i64, Error>) {
        self.finish(batch, result);
    }

    /// A batch the sender took failed with `error`: it goes back to the
    /// head of its partition's queue if `retriable` and the retry budget
    /// and delivery timeout allow, else its records fail.
    pub fn fail_or_retry(&self, mut batch: Batch, error: Error, retriable: bool, now: Instant) {
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
        batch.last_error = Some(error.clone());
        let (topic, partition) = (batch.topic.clone(), batch.partition);
        let mut batch = Some(batch);
        let _ = self.with_queue(&topic, partition, |q| {
            let batch = batch.take().expect("not queued yet");
            q.landed(batch.id);
            // Before every later batch of the partition.
            let at = q.queued.partition_point(|b| b.id < batch.id);
            q.queued.insert(at, batch);
        });
        if let Some(batch) = batch {
            self.finish(batch, Err(error));
        }
    }

    /// The server refused a batch the sender took with
    /// `OUT_OF_ORDER_SEQUENCE`: a batch before it in the producer's
    /// sequence had not been written, so it was not written either. If an
    /// earlier batch of the partition is still unresolved (in flight, or
    /// waiting to be retried), it is retried after that one. Otherwise the
    /// partition's sequence under this producer id is broken for good: the
    /// batch is stamped afresh under a new producer id and retried (its
    /// records are not in the log, so this writes them once).
    pub fn out_of_order(&self, mut batch: Batch, error: Error, now: Instant) {
        let (topic, partition, id) = (batch.topic.clone(), batch.partition, batch.id);
        let earlier = self.with_queue(&topic, partition, |q| {
            q.landed(id);
            q.in_flight.first().is_some_and(|first| *first < id)
                || q.queued.front().is_some_and(|b| b.id < id)
        });
        let Ok(earlier) = earlier else {
            return self.finish(batch, Err(error));
        };
        if !earlier {
            let mut producer = lock(&self.producer);
            if batch.producer_id.is_some() && batch.producer_id == producer.map(|(id, _)| id) {
                *producer = None;
            }
            batch.producer_id = None;
        }
        self.fail_or_retry(batch, error, true, now);
    }

    /// Fails every batch not in flight (open or queued) with `error`.
    pub fn fail_unsent(&self, error: Error) {
        let mut failed = Vec::new();
        self.each_partition(|_, q| {
            failed.extend(q.open.take());
            failed.extend(q.queued.drain(..));
            false
        });
        for batch in failed {
            self.finish(batch, Err(error.clone()));
        }
    }

    /// Seals every open batch so it is sent without waiting for `linger`.
    /// Returns an id: once [`Accumulator::completed_below`] holds for it,
    /// every record appended before this call is resolved.
    pub fn seal_all(&self) -> u64 {
        // Read first: a batch opened before this call has a lower id and is
        // sealed below; one opened meanwhile is not waited for.
        let target = self.next_batch_id.load(Ordering::Relaxed);
        self.each_partition(|_, q| {
            let open = q.open.is_some();
            q.seal();
            open
        });
        target
    }

    /// Moves the delivery deadline of every batch waiting here `by` later:
    /// the time a gateway held this producer back for its quota
    /// (`throttle_time_ms`) does not count against the delivery timeout.
    pub fn extend_deadlines(&self, by: Duration) {
        self.each_partition(|_, q| {
            if let Some(b) = &mut q.open {
                b.deadline += by;
            }
            for b in &mut q.queued {
                b.deadline += by;
            }
            false
        });
    }

    /// Whether every batch with an id below `id` is resolved.
    pub fn completed_below(&self, id: u64) -> bool {
        let mut done = true;
        self.each_partition(|_, q| {
            done &= q.incomplete.first().is_none_or(|first| *first >= id);
            false
        });
        done
    }

    /// Stops accepting records and seals what is open.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.seal_all();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether no record is pending.
    pub fn is_idle(&self) -> bool {
        self.incomplete.load(Ordering::Acquire) == 0
    }

    /// Whether the accumulator is closed and no record is pending, for good:
    /// once closed, every partition's lock is taken once, so an append
    /// that read the flag before `close` set it has finished and its batch
    /// is counted (any later one reads the flag and is refused).
    pub fn is_drained(&self) -> bool {
        if !self.is_closed() {
            return false;
        }
        self.each_partition(|_, _| false);
        self.is_idle()
    }

    /// Runs `f` on the queue of (`topic`, `partition`) under its lock;
    /// `Err(f)` if there is no such queue.
    fn with_queue<R, F: FnOnce(&mut PartitionQueue) -> R>(
        &self,
        topic: &str,
        partition: u32,
        f: F,
    ) -> Result<R, F> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let Some(tq) = topics.get(topic) else {
            return Err(f);
        };
        let partitions = tq.partitions.read().unwrap_or_else(|e| e.into_inner());
        match partitions.get(&partition) {
            Some(q) => Ok(f(&mut lock(q))),
            None => Err(f),
        }
    }

    fn finish(&self, batch: Batch, result: Result<i64, Error>) {
        let id = batch.id;
        let _ = self.with_queue(&batch.topic, batch.partition, |q| {
            q.landed(id);
            q.incomplete.remove(&id);
        });
        if result.is_err() && batch.stamped() {
            // Whether the partition has the batch is unknown (or it broke
            // the sequence): later batches go under a new producer id, so
            // they neither wait for this one nor are taken for it.
            *lock(&self.producer) = None;
        }
        self.incomplete.fetch_sub(1, Ordering::AcqRel);
        batch.resolve(result);
    }
}

impl PartitionQueue {
    /// Whether another batch may go now: below the partition's in-flight
    /// limit, no retry in flight, and (with idempotence) the batches in
    /// flight under the producer id the next one gets.
    fn may_send(&self, per_partition: usize, producer: Option<(i64, i16)>) -> bool {
        if self.in_flight.is_empty() {
            return true;
        }
        self.in_flight.len() < per_partition
            && !self.retry_in_flight
            && producer.is_some()
            && self.in_flight_producer == producer.map(|(id, _)| id)
    }

    /// Hands `batch` to the sender.
    fn send(&mut self, mut batch: Batch, producer: Option<(i64, i16)>, out: &mut Vec<Batch>) {
        batch.attempts += 1;
        self.stamp(&mut batch, producer);
        self.in_flight.insert(batch.id);
        self.in_flight_producer = batch.producer_id;
        out.push(batch);
    }

    /// Batch `id` is no longer in flight.
    fn landed(&mut self, id: u64) {
        if self.in_flight.remove(&id) {
            self.retry_in_flight = false;
        }
        if self.in_flight.is_empty() {
            self.in_flight_producer = None;
        }
    }

    /// Gives a batch leaving for the first time its producer id, epoch and
    /// first sequence number (a retry keeps the bytes it was sent with).
    fn stamp(&mut self, batch: &mut Batch, producer: Option<(i64, i16)>) {
        let Some((id, epoch)) = producer else {
            return;
        };
        if batch.stamped() {
            return;
        }
        batch.producer_id = Some(id);
        let seq = match self.sequence {
            Some((pid, seq)) if pid == id => seq,
            _ => 0,
        };
        let records = batch.records as i32;
        self.sequence = Some((id, seq_add(seq, records)));
        match &mut batch.encoded {
            // Encoded before, under another producer id or none: the bytes
            // are stamped again.
            Some(encoded) => {
                let mut bytes = encoded.to_vec();
                streambus_record::set_producer(&mut bytes, id, epoch, seq);
                *encoded = Bytes::from(bytes);
            }
            None => {
                let builder =
                    std::mem::replace(&mut batch.builder, BatchBuilder::new(Compression::None));
                batch.builder = builder.with_producer(id, epoch, seq);
            }
        }
    }

    fn seal(&mut self) {
        if let Some(batch) = self.open.take() {
            self.last_batch_bytes = batch.builder.estimated_size();
            self.queued.push_back(batch);
        }
    }
}

impl TopicQueues {
    /// Runs `f` on `partition`'s queue under its lock, adding the queue on
    /// first use.
    fn with_partition<R>(&self, partition: u32, f: impl FnOnce(&mut PartitionQueue) -> R) -> R {
        {
            let partitions = self.partitions.read().unwrap_or_else(|e| e.into_inner());
            if let Some(q) = partitions.get(&partition) {
                return f(&mut lock(q));
            }
        }
        let mut partitions = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        let q = partitions.entry(partition).or_default();
        f(q.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keyless records move on once the sticky partition's batch is sealed.
    fn rotate_sticky(&self, sealed: u32) {
        let count = self.partition_count.load(Ordering::Relaxed);
        if count > 0 {
            let _ = self.sticky.compare_exchange(
                sealed,
                (sealed + 1) % count,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
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
            max_in_flight_per_partition: 5,
        }
    }

    /// An idempotent accumulator with producer 1 and `per_partition`.
    fn idempotent(per_partition: usize) -> Accumulator {
        let acc = Accumulator::new(Limits {
            idempotence: true,
            max_in_flight_per_partition: per_partition,
            ..limits()
        });
        acc.set_producer(1, 0);
        acc
    }

    /// Appends one sealed batch holding `value` to partition 0.
    fn sealed(acc: &Accumulator, value: &str, now: Instant) {
        acc.append("t", Some(0), 0, &record(None, value), None, now)
            .unwrap();
        acc.seal_all();
    }

    fn value_of(batch: &mut Batch) -> String {
        let decoded = streambus_record::decode_records(&batch.encoded()).unwrap();
        String::from_utf8(decoded[0].value.clone().unwrap().to_vec()).unwrap()
    }

    fn producer_of(batch: &mut Batch) -> (i64, i32) {
        let h = streambus_record::BatchHeader::parse(&batch.encoded()).unwrap();
        (h.producer_id, h.base_sequence)
    }

    #[test]
    fn an_idempotent_partition_pipelines_up_to_its_limit() {
        let acc = idempotent(3);
        let now = Instant::now();
        for i in 0..5 {
            sealed(&acc, &format!("b{i}"), now);
        }
        let mut first = drain(&acc, now);
        assert_eq!(first.len(), 3, "three of partition 0 at once");
        let sequences: Vec<i32> = first.iter_mut().map(|b| producer_of(b).1).collect();
        assert_eq!(sequences, vec![0, 1, 2]);
        assert!(drain(&acc, now).is_empty());
        acc.complete(first.remove(0), Ok(0));
        let mut next = drain(&acc, now);
        assert_eq!(next.len(), 1);
        assert_eq!(value_of(&mut next[0]), "b3");
        assert_eq!(producer_of(&mut next[0]), (1, 3));
    }

    #[test]
    fn without_idempotence_a_partition_keeps_one_batch_in_flight() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        for i in 0..3 {
            sealed(&acc, &format!("b{i}"), now);
        }
        assert_eq!(drain(&acc, now).len(), 1);
        assert!(drain(&acc, now).is_empty());
    }

    #[test]
    fn retries_go_alone_and_in_order_after_the_batches_before_them() {
        let acc = idempotent(5);
        let now = Instant::now();
        for i in 0..3 {
            sealed(&acc, &format!("b{i}"), now);
        }
        let mut batches = drain(&acc, now).into_iter();
        let (a, b, c) = (
            batches.next().unwrap(),
            batches.next().unwrap(),
            batches.next().unwrap(),
        );
        // The leader moved: the first batch fails retriably, the two after
        // it are refused for the gap it left, answered in any order.
        let moved = Error::new(Reason::NotLeader, "moved");
        let gap = Error::new(Reason::OutOfOrderSequence, "gap");
        acc.out_of_order(c, gap.clone(), now);
        acc.fail_or_retry(a, moved, true, now);
        acc.out_of_order(b, gap, now);
        // A fresh batch does not overtake the retries.
        sealed(&acc, "b3", now);
        let later = now + Duration::from_millis(100);
        for expected in ["b0", "b1", "b2"] {
            let mut out = drain(&acc, later);
            assert_eq!(out.len(), 1, "a retry goes alone");
            assert_eq!(value_of(&mut out[0]), expected);
            assert!(out[0].attempts >= 2);
            assert!(drain(&acc, later).is_empty());
            acc.complete(out.pop().unwrap(), Ok(0));
        }
        let mut out = drain(&acc, later);
        assert_eq!(value_of(&mut out[0]), "b3");
        assert_eq!(producer_of(&mut out[0]), (1, 3), "the sequence went on");
    }

    #[test]
    fn out_of_order_with_nothing_before_it_is_stamped_again_under_a_new_producer_id() {
        let acc = idempotent(5);
        let now = Instant::now();
        sealed(&acc, "b0", now);
        sealed(&acc, "b1", now);
        let mut batches = drain(&acc, now).into_iter();
        let (a, b) = (batches.next().unwrap(), batches.next().unwrap());
        // The first batch fails for good; the second was refused for the
        // gap, so its records are not in the log.
        acc.complete(a, Err(Error::new(Reason::InvalidArgument, "bad")));
        acc.out_of_order(b, Error::new(Reason::OutOfOrderSequence, "gap"), now);
        let later = now + Duration::from_millis(100);
        assert!(acc.needs_producer(), "the old sequence is broken");
        assert!(drain(&acc, later).is_empty());
        acc.set_producer(2, 0);
        let mut out = drain(&acc, later);
        assert_eq!(out.len(), 1);
        assert_eq!(value_of(&mut out[0]), "b1");
        assert_eq!(producer_of(&mut out[0]), (2, 0));
    }

    #[test]
    fn batches_under_a_new_producer_id_wait_for_those_under_the_old_one() {
        let acc = idempotent(5);
        let now = Instant::now();
        sealed(&acc, "b0", now);
        let old = drain(&acc, now).pop().unwrap();
        // Another partition's failure replaced the producer id.
        acc.set_producer(2, 0);
        sealed(&acc, "b1", now);
        assert!(drain(&acc, now).is_empty());
        acc.complete(old, Ok(0));
        let mut out = drain(&acc, now);
        assert_eq!(producer_of(&mut out[0]), (2, 0));
    }

    fn record(key: Option<&str>, value: &str) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 1,
        }
    }

    fn drain(acc: &Accumulator, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        acc.ready(now, usize::MAX, &mut out);
        out
    }

    #[test]
    fn records_appended_from_many_threads_keep_each_threads_order_per_partition() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 500;
        let acc = Accumulator::new(Limits {
            max_batch_bytes: 600,
            ..limits()
        });
        let now = Instant::now();
        let deliveries: Vec<Vec<(usize, Delivery)>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let acc = &acc;
                    s.spawn(move || {
                        (0..PER_THREAD)
                            .map(|i| {
                                let partition = (t % 2) as u32;
                                let value = format!("{t}-{i}");
                                let (delivery, _) = acc
                                    .append(
                                        "t",
                                        Some(partition),
                                        0,
                                        &record(None, &value),
                                        None,
                                        now,
                                    )
                                    .unwrap();
                                (i, delivery)
                            })
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        // Sent and acknowledged batch by batch, as the sender does.
        acc.seal_all();
        let mut logs: HashMap<u32, Vec<String>> = HashMap::new();
        while !acc.is_idle() {
            let mut out = Vec::new();
            acc.ready(now, usize::MAX, &mut out);
            assert!(!out.is_empty(), "pending batches are sendable");
            for mut batch in out {
                let log = logs.entry(batch.partition).or_default();
                let base = log.len() as i64;
                for r in streambus_record::decode_records(&batch.encoded()).unwrap() {
                    log.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
                }
                acc.complete(batch, Ok(base));
            }
        }
        assert_eq!(
            logs.values().map(Vec::len).sum::<usize>(),
            THREADS * PER_THREAD
        );
        for (partition, log) in &logs {
            let mut next = [0usize; THREADS];
            for value in log {
                let (t, i) = value.split_once('-').unwrap();
                let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
                assert_eq!(
                    t % 2,
                    *partition as usize,
                    "{value} in partition {partition}"
                );
                assert_eq!(
                    i, next[t],
                    "thread {t}'s records in order in partition {partition}"
                );
                next[t] += 1;
            }
        }
        // Each delivery names the offset its record got.
        for (t, records) in deliveries.into_iter().enumerate() {
            for (i, delivery) in records {
                let written = futures::executor::block_on(delivery).unwrap();
                let log = &logs[&written.partition];
                assert_eq!(log[written.offset as usize], format!("{t}-{i}"));
            }
        }
    }

    #[test]
    fn a_record_racing_close_is_refused_or_delivered() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let stop = AtomicBool::new(false);
        let accepted: Vec<Delivery> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2u32)
                .map(|t| {
                    let (acc, stop) = (&acc, &stop);
                    s.spawn(move || {
                        let mut accepted = Vec::new();
                        let mut i = 0u32;
                        while !stop.load(Ordering::Relaxed) {
                            // New partitions too, so the race covers a
                            // partition added while `close` seals.
                            let partition = Some(t * 1000 + i % 50);
                            match acc.append("t", partition, 0, &record(None, "v"), None, now) {
                                Ok((delivery, _)) => accepted.push(delivery),
                                Err(ClientError::Closed) => break,
                                Err(e) => panic!("{e}"),
                            }
                            i += 1;
                        }
                        accepted
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
            acc.close();
            stop.store(true, Ordering::Relaxed);
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(!accepted.is_empty());
        // Drained is when the sender stops: every accepted record must have
        // been sendable before that.
        let later = now + Duration::from_secs(1);
        while !acc.is_drained() {
            let mut out = Vec::new();
            acc.ready(later, usize::MAX, &mut out);
            assert!(!out.is_empty(), "pending batches are sendable");
            for batch in out {
                acc.complete(batch, Ok(0));
            }
        }
        for delivery in accepted {
            futures::executor::block_on(delivery).expect("an accepted record is delivered");
        }
        assert!(matches!(
            acc.append("t", Some(0), 0, &record(None, "v"), None, now),
            Err(ClientError::Closed)
        ));
    }

    #[test]
    fn a_batch_carries_the_first_traceparent_among_its_records() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let traced = |value: &str| {
            let mut r = record(None, "v");
            r.headers.push(streambus_record::Header {
                key: "traceparent".into(),
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
            });
            r
        };
        acc.append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        for value in ["00-a-b-01", "00-c-d-01"] {
            acc.append("t", Some(0), 0, &traced(value), None, now)
                .unwrap();
        }
        acc.append("t", Some(1), 0, &record(None, "v"), None, now)
            .unwrap();
        acc.seal_all();
        let mut batches = drain(&acc, now);
        batches.sort_by_key(|b| b.partition);
        assert_eq!(batches[0].traceparent.as_deref(), Some("00-a-b-01"));
        assert_eq!(batches[1].traceparent, None);
    }

    #[test]
    fn keyed_records_follow_the_kafka_partitioner() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        for i in 0..50 {
            let key = format!("key-{i}");
            acc.append("t", None, 6, &record(Some(&key), "v"), None, now)
                .unwrap();
        }
        let batches = drain(&acc, now + Duration::from_millis(5));
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
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        acc.append("t", Some(5), 0, &record(Some("k"), "v"), None, now)
            .unwrap();
        let batches = drain(&acc, now + Duration::from_secs(1));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].partition, 5);
    }

    #[test]
    fn keyless_records_stick_to_one_partition_until_its_batch_is_full() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        // ~100 bytes each: about ten per 1 KiB batch.
        let value = "x".repeat(80);
        for _ in 0..100 {
            acc.append("t", None, 4, &record(None, &value), None, now)
                .unwrap();
        }
        let batches = drain(&acc, now + Duration::from_secs(1));
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
        let acc = Accumulator::new(limits());
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
        let out = drain(&acc, now + Duration::from_millis(5));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2);
    }

    #[test]
    fn one_batch_in_flight_per_partition() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let value = "x".repeat(600);
        for _ in 0..3 {
            acc.append("t", Some(0), 0, &record(None, &value), None, now)
                .unwrap();
        }
        acc.append("t", Some(1), 0, &record(None, "v"), None, now)
            .unwrap();
        let later = now + Duration::from_secs(1);
        let first = drain(&acc, later);
        assert_eq!(first.len(), 2, "one batch of each partition");
        assert!(drain(&acc, later).is_empty());
        for batch in first {
            acc.complete(batch, Ok(0));
        }
        let second = drain(&acc, later);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].partition, 0);
    }

    #[test]
    fn max_limits_batches_handed_out() {
        let acc = Accumulator::new(limits());
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
        let acc = Accumulator::new(limits());
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
        let batch = drain(&acc, now).pop().unwrap();
        acc.complete(batch, Ok(40));
        assert!(acc.completed_below(id));
        assert!(acc.is_idle());
        for (i, rx) in receivers.into_iter().enumerate() {
            let md = rx.await.unwrap();
            assert_eq!(md.partition, 2);
            assert_eq!(md.offset, 40 + i as i64);
        }
    }

    #[tokio::test]
    async fn retriable_failure_is_retried_first_after_the_backoff() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx1, _) = acc
            .append("t", Some(0), 0, &record(None, "first"), None, now)
            .unwrap();
        acc.seal_all();
        let (rx2, _) = acc
            .append("t", Some(0), 0, &record(None, "second"), None, now)
            .unwrap();
        acc.seal_all();
        let batch = drain(&acc, now).pop().unwrap();
        let unavailable = Error::new(Reason::NotLeader, "moved");
        acc.fail_or_retry(batch, unavailable, true, now);
        // Nothing goes until the backoff passed, and then the failed batch
        // goes before the later one.
        assert!(drain(&acc, now + Duration::from_millis(50)).is_empty());
        let mut retry = drain(&acc, now + Duration::from_millis(100));
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].attempts, 2);
        let decoded = streambus_record::decode_records(&retry[0].encoded()).unwrap();
        assert_eq!(decoded[0].value.as_deref(), Some(&b"first"[..]));
        acc.complete(retry.pop().unwrap(), Ok(0));
        let next = drain(&acc, now + Duration::from_millis(100)).pop().unwrap();
        acc.complete(next, Ok(1));
        assert_eq!(rx1.await.unwrap().offset, 0);
        assert_eq!(rx2.await.unwrap().offset, 1);
    }

    #[tokio::test]
    async fn non_retriable_failure_fails_the_records() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        let batch = drain(&acc, now + Duration::from_secs(1)).pop().unwrap();
        acc.fail_or_retry(batch, Error::new(Reason::UnknownTopic, "gone"), false, now);
        let err = rx.await.unwrap_err();
        assert_eq!(err.reason(), Some(Reason::UnknownTopic));
        assert!(acc.is_idle());
    }

    #[tokio::test]
    async fn retries_stop_at_the_delivery_timeout() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        let batch = drain(&acc, now + Duration::from_secs(1)).pop().unwrap();
        let late = now + Duration::from_secs(30);
        acc.fail_or_retry(batch, Error::new(Reason::Unavailable, "down"), true, late);
        let err = rx.await.unwrap_err();
        assert_eq!(err.reason(), Some(Reason::Timeout));
        assert!(err.to_string().contains("down"), "{err}");
    }

    #[tokio::test]
    async fn queued_batches_expire_at_the_delivery_timeout() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        acc.seal_all();
        let mut out = Vec::new();
        let ready = acc.ready(now + Duration::from_secs(31), 10, &mut out);
        assert!(out.is_empty());
        assert_eq!(ready.expired, 1);
        assert_eq!(rx.await.unwrap_err().reason(), Some(Reason::Timeout));
    }

    #[tokio::test]
    async fn a_batch_expiring_while_waiting_to_be_retried_says_why_it_failed() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        let batch = drain(&acc, now + Duration::from_secs(1)).pop().unwrap();
        let moved = Error::new(Reason::NotLeader, "partition t/0 moved");
        acc.fail_or_retry(batch, moved, true, now + Duration::from_secs(1));
        let mut out = Vec::new();
        let ready = acc.ready(now + Duration::from_secs(31), 10, &mut out);
        assert_eq!(ready.expired, 1);
        let err = rx.await.unwrap_err();
        assert_eq!(err.reason(), Some(Reason::Timeout));
        assert!(
            err.to_string()
                .contains("(last error: NOT_LEADER: partition t/0 moved)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn batches_expiring_without_a_producer_id_say_why_there_is_none() {
        let acc = Accumulator::new(Limits {
            idempotence: true,
            ..limits()
        });
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        acc.producer_unavailable(Error::new(Reason::Unavailable, "no controller"));
        let mut out = Vec::new();
        acc.ready(now + Duration::from_secs(31), 10, &mut out);
        let err = rx.await.unwrap_err();
        assert!(
            err.to_string()
                .contains("(waiting for an idempotent producer id: UNAVAILABLE: no controller)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn time_held_back_by_a_quota_does_not_count_against_the_delivery_timeout() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        let (rx, _) = acc
            .append("t", Some(0), 0, &record(None, "v"), None, now)
            .unwrap();
        acc.seal_all();
        acc.extend_deadlines(Duration::from_secs(5));
        let mut out = Vec::new();
        let ready = acc.ready(now + Duration::from_secs(31), 0, &mut out);
        assert_eq!(ready.expired, 0, "30 s after, 5 of them held back");
        let ready = acc.ready(now + Duration::from_secs(36), 0, &mut out);
        assert_eq!(ready.expired, 1);
        assert_eq!(rx.await.unwrap_err().reason(), Some(Reason::Timeout));
    }

    #[test]
    fn closed_accumulator_rejects_records() {
        let acc = Accumulator::new(limits());
        acc.close();
        let err = acc
            .append("t", Some(0), 0, &record(None, "v"), None, Instant::now())
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed));
    }

    #[test]
    fn oversized_record_gets_a_batch_of_its_own() {
        let acc = Accumulator::new(limits());
        let now = Instant::now();
        acc.append("t", Some(0), 0, &record(None, "small"), None, now)
            .unwrap();
        acc.append("t", Some(0), 0, &record(None, &"x".repeat(4096)), None, now)
            .unwrap();
        acc.append("t", Some(0), 0, &record(None, "small"), None, now)
            .unwrap();
        acc.seal_all();
        let mut sizes = Vec::new();
        while let Some(batch) = drain(&acc, now).pop() {
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
        let acc = Accumulator::new(Limits {
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
        assert!(drain(&acc, now).is_empty(), "nothing before a producer id");
        acc.set_producer(42, 0);
        let mut batches = drain(&acc, now);
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
        let mut retried = drain(&acc, later);
        assert_eq!(retried.len(), 1);
        assert_eq!(retried[0].encoded(), first);
        acc.complete(retried.remove(0), Ok(0));
        let _ = acc
            .append("t", Some(0), 2, &record(None, "c"), None, later)
            .unwrap();
        let mut next = drain(&acc, later);
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
        assert!(drain(&acc, later).is_empty());
        acc.set_producer(43, 0);
        let mut next = drain(&acc, later);
        let h = header(&mut next[0]);
        assert_eq!((h.producer_id, h.base_sequence), (43, 0));
    }

    #[test]
    fn without_idempotence_batches_carry_no_producer() {
        let acc = Accumulator::new(Limits {
            linger: Duration::ZERO,
            ..limits()
        });
        let now = Instant::now();
        let _ = acc
            .append("t", Some(0), 1, &record(None, "x"), None, now)
            .unwrap();
        assert!(!acc.needs_producer());
        let mut batches = drain(&acc, now);
        assert_eq!(header(&mut batches[0]).producer_id, -1);
    }
}
