//! The batching producer.
//!
//! [`Producer::send`] partitions a record on the client (Kafka's murmur2 for
//! keyed records, a sticky partition per batch for keyless ones) and appends
//! it to that partition's open batch, a pre-encoded RecordBatch v2. A
//! background task sends batches over one long-lived `ProduceStream` with at
//! most `max_in_flight` unacknowledged batches. Records of one partition are
//! written in `send` order, even across retries: an idempotent producer
//! keeps up to `max_in_flight_per_partition` batches of a partition in
//! flight (their sequence numbers order them on the server, which waits
//! briefly for a batch that overtook its predecessor); without idempotence a
//! partition has one batch in flight at a time. A retried batch goes alone,
//! after the batches before it. A partition at its limit keeps filling its
//! next batch, so batches grow with load.

pub(crate) mod accumulator;
mod outcome;
mod sender;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streambus_proto::{Error, Reason, v1};
use streambus_record::{Compression, Record};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::accumulator::{Accumulator, Limits, record_size};
use crate::{Client, ClientError};

/// Producer settings. Start from [`ProducerConfig::default`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent. Default 5 ms.
    pub linger: Duration,
    /// A batch is sent once it reaches this many bytes (a single larger
    /// record is sent alone). Default 256 KiB.
    pub max_batch_bytes: usize,
    /// Unacknowledged batches per producer, across partitions. Default 64.
    pub max_in_flight: usize,
    /// Unacknowledged batches per partition with idempotence (Kafka's
    /// `max.in.flight.requests.per.connection`); at most 5, the batches a
    /// partition leader remembers per producer. Without idempotence a
    /// partition always has one batch in flight at most, so that a retry
    /// cannot reorder records. Default 5.
    pub max_in_flight_per_partition: usize,
    /// What the gateway waits for before acknowledging. Default
    /// [`v1::Acks::All`].
    pub acks: v1::Acks,
    /// Compression of the records in each batch. Default none.
    pub compression: Compression,
    /// Retries of a batch after retriable errors, within
    /// `delivery_timeout`. Default unlimited.
    pub retries: u32,
    /// Pause before a retry. Default 100 ms.
    pub retry_backoff: Duration,
    /// A record fails if it is not acknowledged this long after it was
    /// sent. Default 30 s.
    pub delivery_timeout: Duration,
    /// Bytes of records buffered and in flight; [`Producer::send`] waits
    /// while it is reached. Default 32 MiB.
    pub max_buffered_bytes: usize,
    /// Idempotent producer: batches carry a producer id (from the
    /// gateway's `InitProducer`) and per-partition sequence numbers, so a
    /// batch retried through a lost answer, a gateway restart or a leader
    /// change is written exactly once. Default on.
    pub idempotence: bool,
    /// How long a topic's partition count is used before it is looked up
    /// again (in the background; sends go on with the known count), so
    /// partitions added to a topic get records. A write that finds a
    /// partition unknown looks it up at once. Default 5 s.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_millis(5),
            max_batch_bytes: 256 * 1024,
            max_in_flight: 64,
            max_in_flight_per_partition: 5,
            acks: v1::Acks::All,
            compression: Compression::None,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(30),
            max_buffered_bytes: 32 * 1024 * 1024,
            idempotence: true,
            metadata_max_age: Duration::from_secs(5),
        }
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The partition.
    pub partition: u32,
    /// The record's offset; `-1` with [`v1::Acks::None`].
    pub offset: i64,
}

/// Resolves when the record is acknowledged or has failed.
///
/// Dropping it does not cancel the record.
#[derive(Debug)]
#[must_use = "a delivery future tells whether the record was written"]
pub struct DeliveryFuture {
    pub(crate) rx: outcome::Delivery,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx)
    }
}

/// A batching producer; see the module docs. Cheap to clone (clones share
/// the buffer and the stream).
///
/// Dropping the last clone without [`Producer::close`] still delivers what
/// was sent, in the background, as long as the runtime runs.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// State shared by the producer handles and the sender task.
#[derive(Debug)]
pub(crate) struct Shared {
    config: ProducerConfig,
    /// Locks per partition inside, none for the whole producer.
    acc: Accumulator,
    /// Wakes the sender: a batch was opened or sealed, or the producer closed.
    wake: Notify,
    /// Bumped whenever batches complete, for `flush`.
    progress: watch::Sender<()>,
    buffer: Arc<Semaphore>,
    /// Read on every record, written when a topic is first described or
    /// forgotten.
    partition_counts: RwLock<HashMap<String, PartitionCount>>,
    /// What `PartitionCount::described_ms` counts from.
    started: Instant,
    client: Client,
}

/// A topic's partition count as last described.
#[derive(Debug)]
struct PartitionCount {
    count: AtomicU32,
    /// When, in milliseconds since [`Shared::started`].
    described_ms: AtomicU64,
    /// A background lookup is under way.
    refreshing: AtomicBool,
}

impl Shared {
    fn close(&self) {
        self.acc.close();
        self.buffer.close();
        self.wake.notify_one();
    }

    /// Forgets a topic's partition count so the next record refreshes it.
    fn forget_topic(&self, topic: &str) {
        write(&self.partition_counts).remove(topic);
    }

    fn set_partition_count(&self, topic: &str, count: u32) {
        let now = self.now_ms();
        if let Some(c) = read(&self.partition_counts).get(topic) {
            c.count.store(count, Ordering::Relaxed);
            c.described_ms.store(now, Ordering::Relaxed);
            c.refreshing.store(false, Ordering::Relaxed);
            return;
        }
        write(&self.partition_counts).insert(
            topic.to_string(),
            PartitionCount {
                count: AtomicU32::new(count),
                described_ms: AtomicU64::new(now),
                refreshing: AtomicBool::new(false),
            },
        );
    }

    /// Milliseconds since the producer started.
    fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// Looks a topic's partition count up again, in the background; until
    /// it answers, sends use the count they have. A topic that no longer
    /// exists is forgotten (the next send describes it and fails).
    fn refresh_partition_count(self: &Arc<Self>, topic: &str) {
        let shared = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            match shared.client.describe_topic(&topic).await {
                Ok(desc) if !desc.partitions.is_empty() => {
                    let n = desc.partitions.len() as u32;
                    tracing::debug!(%topic, partitions = n, "partition count refreshed");
                    shared.set_partition_count(&topic, n);
                }
                Err(ClientError::Server(e)) if e.reason == Reason::UnknownTopic => {
                    shared.forget_topic(&topic);
                }
                other => {
                    tracing::debug!(%topic, result = ?other.err(), "partition count refresh failed");
                    // Keep the count; look again after another max age.
                    if let Some(c) = read(&shared.partition_counts).get(&topic) {
                        c.described_ms.store(shared.now_ms(), Ordering::Relaxed);
                        c.refreshing.store(false, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

/// Locks a mutex; a panic while holding one of the producer's locks leaves
/// consistent state (every update is a single step), so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Starts a producer. Must be called within a tokio runtime (it spawns
    /// the sender task).
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        let limits = Limits {
            linger: config.linger,
            max_batch_bytes: config.max_batch_bytes.max(1),
            compression: config.compression,
            delivery_timeout: config.delivery_timeout,
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            idempotence: config.idempotence,
            max_in_flight_per_partition: config
                .max_in_flight_per_partition
                .clamp(1, streambus_record::PRODUCER_WINDOW),
        };
        let buffer = config
            .max_buffered_bytes
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let shared = Arc::new(Shared {
            acc: Accumulator::new(limits),
            wake: Notify::new(),
            progress: watch::Sender::new(()),
            buffer: Arc::new(Semaphore::new(buffer)),
            partition_counts: RwLock::new(HashMap::new()),
            started: Instant::now(),
            client: self.clone(),
            config: ProducerConfig {
                max_in_flight: config.max_in_flight.max(1),
                max_buffered_bytes: buffer,
                ..config
            },
        });
        let task = tokio::spawn(sender::run(shared.clone(), self.produce.clone()));
        Producer {
            inner: Arc::new(Inner {
                shared,
                task: Mutex::new(Some(task)),
            }),
        }
    }
}

impl Producer {
    /// Queues `record` for `topic` and returns its delivery future.
    ///
    /// Waits while the producer's buffer is full (backpressure). The
    /// partition is `partition` if given, else chosen from the key (or
    /// sticky per batch for keyless records) among the topic's partitions,
    /// whose count is cached and looked up again every
    /// [`ProducerConfig::metadata_max_age`]: once a topic has more
    /// partitions, keys map over all of them (so a key may move to another
    /// partition, as in Kafka). A `timestamp_ms` of 0 is replaced by the
    /// current time.
    ///
    /// Fails at once if the producer is closed or the topic cannot be
    /// described (e.g. `UNKNOWN_TOPIC`); write errors arrive through the
    /// delivery future.
    pub async fn send(
        &self,
        topic: &str,
        mut record: Record,
        partition: Option<u32>,
    ) -> Result<DeliveryFuture, ClientError> {
        let shared = &self.inner.shared;
        if record.timestamp_ms == 0 {
            record.timestamp_ms = now_ms();
        }
        let partitions = match partition {
            Some(_) => 0,
            None => self.partition_count(topic).await?,
        };
        let size = record_size(&record).min(shared.config.max_buffered_bytes) as u32;
        let permit = shared
            .buffer
            .clone()
            .acquire_many_owned(size)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (rx, wake) = shared.acc.append(
            topic,
            partition,
            partitions,
            &record,
            Some(permit),
            Instant::now(),
        )?;
        if wake {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture { rx })
    }

    /// Sends and waits for the acknowledgement.
    pub async fn send_and_wait(
        &self,
        topic: &str,
        record: Record,
        partition: Option<u32>,
    ) -> Result<RecordMetadata, ClientError> {
        self.send(topic, record, partition).await?.await
    }

    /// Sends what is buffered without waiting for `linger`, and waits until
    /// every record sent before this call is acknowledged or failed.
    pub async fn flush(&self) {
        let shared = &self.inner.shared;
        let mut progress = shared.progress.subscribe();
        let target = shared.acc.seal_all();
        shared.wake.notify_one();
        while !shared.acc.completed_below(target) {
            if progress.changed().await.is_err() {
                return;
            }
        }
    }

    /// Flushes, then stops the producer: later `send`s fail with
    /// [`ClientError::Closed`].
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.close();
        self.flush().await;
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The topic's partition count: described on first use and cached,
    /// looked up again in the background once older than
    /// `metadata_max_age`.
    async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let shared = &self.inner.shared;
        let cached = read(&shared.partition_counts).get(topic).map(|c| {
            let age = shared
                .now_ms()
                .saturating_sub(c.described_ms.load(Ordering::Relaxed));
            let stale = u128::from(age) >= shared.config.metadata_max_age.as_millis()
                && c.refreshing
                    .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            (c.count.load(Ordering::Relaxed), stale)
        });
        if let Some((n, stale)) = cached {
            if stale {
                shared.refresh_partition_count(topic);
            }
            return Ok(n);
        }
        let deadline = Instant::now() + shared.config.delivery_timeout;
        loop {
            let error = match shared.client.describe_topic(topic).await {
                Ok(desc) if !desc.partitions.is_empty() => {
                    let n = desc.partitions.len() as u32;
                    shared.set_partition_count(topic, n);
                    return Ok(n);
                }
                Ok(_) => ClientError::Server(Error::new(
                    Reason::Unavailable,
                    format!("topic {topic:?} has no partitions yet"),
                )),
                Err(e) => e,
            };
            let retry_at = Instant::now() + shared.config.retry_backoff;
            if !error.retriable() || retry_at >= deadline {
                return Err(error);
            }
            tokio::time::sleep_until(retry_at).await;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
