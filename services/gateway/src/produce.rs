//! The public ProduceService: unary and bidirectional-streaming produce.
//!
//! Records are grouped by partition, encoded into RecordBatch v2 batches
//! (pre-encoded batches are forwarded as they are), and appended on the
//! partition leaders. Batches for the same partition are appended in the
//! order they arrived on a request or stream; different partitions proceed
//! in parallel.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use streambus_proto::internal::{AppendRequest, PartitionRef};
use streambus_proto::partitioner::partition_for_key;
use streambus_proto::v1::produce_service_server::ProduceService;
use streambus_proto::v1::{
    Acks, BatchResult, InitProducerRequest, InitProducerResponse, PartitionAck, ProduceBatch,
    ProduceRequest, ProduceResponse, ProduceStreamRequest, ProduceStreamResponse,
};
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, BatchHeader, Compression, HEADER_SIZE};
use streambus_service::budget::{MemoryBudget, Permit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::{Principal, principal_of};
use crate::authz::Authz;
use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::quota::{self, Quotas};
use crate::router::{self, CallPolicy, Router};
use prost::Message as _;
use streambus_acl::{Operation, ResourceType};

/// Default `max.message.bytes` when a topic does not say.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 12;
/// Per-record overhead allowance when sizing batches (varints, attributes).
const RECORD_OVERHEAD: usize = 32;

/// Implements `streambus.v1.ProduceService`.
#[derive(Clone)]
pub struct ProduceApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
    pub(crate) default_timeout: Duration,
    pub(crate) max_in_flight: usize,
    /// Gateway-wide bound on appends in flight to storage nodes.
    pub(crate) in_flight: InFlight,
    pub(crate) max_batches_per_request: usize,
    pub(crate) max_records_per_request: usize,
    pub(crate) keyless: Arc<AtomicU32>,
    /// Turns true when the gateway drains: streams stop reading.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
    /// Producer ids for `InitProducer`.
    pub(crate) producer_ids: ProducerIds,
    pub(crate) authz: Authz,
    pub(crate) quotas: Quotas,
}

/// How many producer ids the gateway takes from the controller at a time.
const PRODUCER_ID_BLOCK: u32 = 1000;

/// Idempotent producer ids: a block taken from the controller, handed out
/// one by one; a new block when it runs out. Ids are never reused, also
/// across gateways and restarts (the rest of a block is simply skipped).
#[derive(Clone, Default)]
pub struct ProducerIds {
    block: Arc<tokio::sync::Mutex<(i64, i64)>>,
}

impl ProducerIds {
    async fn next(&self, controller: &streambus_cluster::ControllerClient) -> Result<i64, Error> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            let (first, count) = controller.allocate_producer_ids(PRODUCER_ID_BLOCK).await?;
            *block = (first, first + i64::from(count));
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}

/// One append to one partition: what planning a produce batch gives.
#[derive(Debug)]
pub struct PartitionWrite {
    /// The partition.
    pub partition: u32,
    /// A RecordBatch v2 for it.
    pub batch: Bytes,
}

/// The gateway-wide limit on appends in flight to storage nodes: a count
/// (`gateway.max_in_flight_writes`) and batch bytes
/// (`gateway.max_in_flight_bytes`). Every append holds a [`WritePermit`]
/// until its storage node answers or the attempt times out, whatever the
/// acks mode, so neither `ACKS_NONE` nor a stalled storage node can pile
/// up work without bound.
#[derive(Clone)]
pub(crate) struct InFlight {
    writes: Arc<Semaphore>,
    max_writes: usize,
    bytes: MemoryBudget,
    metrics: Metrics,
}

/// One append's share of [`InFlight`]; returned on drop.
pub(crate) struct WritePermit {
    _write: OwnedSemaphorePermit,
    _bytes: Permit,
    bytes: i64,
    metrics: Metrics,
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.metrics.in_flight_writes.dec();
        self.metrics.in_flight_bytes.dec_by(self.bytes);
    }
}

impl InFlight {
    #[cfg(test)]
    pub(crate) fn new(max_writes: usize, max_bytes: usize, metrics: Metrics) -> InFlight {
        Self::within(max_writes, max_bytes, metrics, None)
    }

    /// Like [`InFlight::new`], the bytes also taken from `memory` (the
    /// gateway's whole budget).
    pub(crate) fn within(
        max_writes: usize,
        max_bytes: usize,
        metrics: Metrics,
        memory: Option<&MemoryBudget>,
    ) -> InFlight {
        const NAME: &str = "gateway.max_in_flight_bytes";
        let bytes = match memory {
            Some(m) => m.child(NAME, max_bytes),
            None => MemoryBudget::new(NAME, max_bytes),
        };
        metrics.budgets.add(&bytes);
        InFlight {
            writes: Arc::new(Semaphore::new(max_writes.clamp(1, Semaphore::MAX_PERMITS))),
            max_writes,
            bytes,
            metrics,
        }
    }

    /// Waits (until `deadline`) for room for one write of `bytes`.
    async fn acquire(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<WritePermit, Error> {
        let write = tokio::time::timeout_at(deadline, self.writes.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Error::new(
                    Reason::Overloaded,
                    format!(
                        "the gateway has {} writes in flight (gateway.max_in_flight_writes) and none finished before the request's deadline; retry later",
                        self.max_writes
                    ),
                )
            })?;
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let permit = self.bytes.acquire(bytes, wait).await?;
        self.metrics.in_flight_writes.inc();
        self.metrics.in_flight_bytes.inc_by(bytes as i64);
        Ok(WritePermit {
            _write: write,
            _bytes: permit,
            bytes: bytes as i64,
            metrics: self.metrics.clone(),
        })
    }
}

/// The writes of one batch, started in partition order.
struct Started {
    /// Why the batch (or its remaining writes) was not started.
    failure: Option<Error>,
    handles: Vec<tokio::task::JoinHandle<(u32, Result<PartitionAck, Error>)>>,
}

impl Started {
    fn failed(e: Error) -> Started {
        Started {
            failure: Some(e),
            handles: Vec::new(),
        }
    }

    /// Waits for every write and folds them into the batch's result.
    async fn finish(self) -> BatchResult {
        let mut result = BatchResult::default();
        let mut error = self.failure;
        for h in self.handles {
            match h.await {
                Ok((_, Ok(ack))) => result.acks.push(ack),
                Ok((partition, Err(e))) => {
                    tracing::debug!(partition, error = %e, "produce to partition failed");
                    error.get_or_insert(e);
                }
                Err(e) => {
                    error.get_or_insert(Error::new(
                        Reason::Internal,
                        format!("produce task failed: {e}"),
                    ));
                }
            }
        }
        result.error = error.map(|e| e.to_detail());
        result
    }

    /// The answer for `ACKS_NONE`: the batch was routed, offsets unknown.
    /// Only a failure before routing (invalid batch, overload) is
    /// reported; the writes go on, holding their in-flight permits.
    fn routed(&self) -> BatchResult {
        BatchResult {
            acks: Vec::new(),
            error: self.failure.as_ref().map(Error::to_detail),
        }
    }
}

/// Keeps appends to the same partition in arrival order. A write waits for
/// the previous write to that partition to finish, except that an
/// idempotent producer's batch following another one only waits until that
/// one was sent to the leader: their sequence numbers order them there (the
/// storage node waits briefly for a batch that overtook its predecessor),
/// so a producer can keep several batches of a partition in flight.
#[derive(Default)]
struct Sequencer {
    tails: HashMap<(String, u32), Tail>,
}

/// The last write started for a partition.
struct Tail {
    sent: oneshot::Receiver<()>,
    done: oneshot::Receiver<()>,
    idempotent: bool,
}

/// What a write signals to the write after it: dropping `sent` says it
/// was handed to the router, dropping `done` that it finished.
struct Signals {
    sent: oneshot::Sender<()>,
    done: oneshot::Sender<()>,
}

impl Sequencer {
    /// Registers a write to `partition`; returns what it must wait for
    /// before it starts, and its own signals.
    fn enqueue(
        &mut self,
        topic: &str,
        partition: u32,
        idempotent: bool,
    ) -> (Option<oneshot::Receiver<()>>, Signals) {
        let (sent, sent_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let tail = Tail {
            sent: sent_rx,
            done: done_rx,
            idempotent,
        };
        let wait = self
            .tails
            .insert((topic.to_string(), partition), tail)
            .map(|prev| {
                if prev.idempotent && idempotent {
                    prev.sent
                } else {
                    prev.done
                }
            });
        (wait, Signals { sent, done })
    }
}

/// Whether `batch` is an idempotent producer's (a producer id in its
/// header): written once however often it is sent.
fn is_idempotent(batch: &[u8]) -> bool {
    BatchHeader::parse(batch).is_ok_and(|h| h.producer_id >= 0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn record_size(r: &streambus_proto::v1::Record) -> usize {
    r.key.as_ref().map_or(0, Bytes::len)
        + r.value.as_ref().map_or(0, Bytes::len)
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len) + 10)
            .sum::<usize>()
        + RECORD_OVERHEAD
}

fn to_record(r: streambus_proto::v1::Record, now: i64) -> streambus_record::Record {
    streambus_record::Record {
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|h| streambus_record::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        timestamp_ms: if r.timestamp_ms == 0 {
            now
        } else {
            r.timestamp_ms
        },
    }
}

/// Checks a client-encoded batch for `partition` (the SDK's path): its
/// size against `max.message.bytes` and its header. The records are
/// validated by the storage node, which decodes the batch anyway.
pub fn check_encoded(
    partition: u32,
    encoded: Bytes,
    max_bytes: usize,
) -> Result<PartitionWrite, Error> {
    if encoded.len() > max_bytes {
        return Err(Error::new(
            Reason::RecordTooLarge,
            format!(
                "encoded batch of {} bytes exceeds max.message.bytes {max_bytes}",
                encoded.len()
            ),
        ));
    }
    let header = BatchHeader::parse(&encoded)
        .map_err(|e| Error::new(Reason::CorruptBatch, format!("invalid encoded batch: {e}")))?;
    if header.total_size() != encoded.len() {
        return Err(Error::new(
            Reason::CorruptBatch,
            format!(
                "encoded batch declares {} bytes but carries {}",
                header.total_size(),
                encoded.len()
            ),
        ));
    }
    Ok(PartitionWrite {
        partition,
        batch: encoded,
    })
}

/// Splits records sent one by one (the gRPC path of clients without an
/// SDK) into one batch per partition, or several where a partition's
/// records exceed `max_bytes`: to `partition` if given, else by the key's
/// hash among `partitions`, keyless records to `keyless`. A timestamp of 0
/// becomes `now_ms`.
pub fn plan_records(
    topic: &str,
    partition: Option<u32>,
    partitions: u32,
    keyless: u32,
    max_bytes: usize,
    records: Vec<streambus_proto::v1::Record>,
    now_ms: i64,
) -> Result<Vec<PartitionWrite>, Error> {
    if records.is_empty() {
        return Err(Error::new(Reason::InvalidArgument, "batch has no records"));
    }
    for r in &records {
        let size = record_size(r) + HEADER_SIZE;
        if size > max_bytes {
            return Err(Error::new(
                Reason::RecordTooLarge,
                format!("a record of about {size} bytes exceeds max.message.bytes {max_bytes}"),
            ));
        }
    }
    // Group by partition: explicit, by key hash, or one rotating
    // partition for this batch's keyless records.
    let mut groups: Vec<(u32, Vec<streambus_proto::v1::Record>)> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for r in records {
        let p = match (partition, &r.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => keyless,
        };
        let i = *index.entry(p).or_insert_with(|| {
            groups.push((p, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(r);
    }
    let mut writes = Vec::new();
    for (partition, records) in groups {
        let total: usize = records.iter().map(record_size).sum();
        let capacity = (HEADER_SIZE + total).min(max_bytes);
        let mut builder = BatchBuilder::with_capacity(Compression::None, capacity);
        let mut size = HEADER_SIZE;
        for r in records {
            let rs = record_size(&r);
            if !builder.is_empty() && size + rs > max_bytes {
                let full = std::mem::replace(
                    &mut builder,
                    BatchBuilder::with_capacity(Compression::None, capacity),
                );
                writes.push(PartitionWrite {
                    partition,
                    batch: full.finish(),
                });
                size = HEADER_SIZE;
            }
            size += rs;
            // A timestamp out of range (or too far from the batch's first)
            // is the producer's mistake, refused before anything is
            // written.
            builder.try_push(&to_record(r, now_ms)).map_err(|e| {
                Error::new(Reason::InvalidArgument, format!("{topic}/{partition}: {e}"))
            })?;
        }
        writes.push(PartitionWrite {
            partition,
            batch: builder.finish(),
        });
    }
    Ok(writes)
}

impl ProduceApi {
    fn deadline(&self, timeout_ms: u32) -> tokio::time::Instant {
        let timeout = if timeout_ms == 0 {
            self.default_timeout
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        tokio::time::Instant::now() + timeout
    }

    /// Validates a batch and splits it into per-partition appends.
    async fn plan(&self, batch: ProduceBatch) -> Result<(String, Vec<PartitionWrite>), Error> {
        if batch.topic.is_empty() {
            return Err(Error::new(Reason::InvalidArgument, "topic is required"));
        }
        if batch.topic == crate::groups::TOPIC {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "topic {} is internal: group coordinators write it, producers do not",
                    batch.topic
                ),
            ));
        }
        let topic = self.router.metadata().topic(&batch.topic).await?;
        let partitions = topic.partitions.len() as u32;
        let max_bytes = topic
            .configs
            .get("max.message.bytes")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if let Some(p) = batch.partition
            && p >= partitions
        {
            return Err(unknown_partition(&batch.topic, p, partitions as usize));
        }

        let writes = if batch.encoded_batch.is_empty() {
            let keyless = self.keyless.fetch_add(1, Ordering::Relaxed) % partitions;
            plan_records(
                &batch.topic,
                batch.partition,
                partitions,
                keyless,
                max_bytes,
                batch.records,
                now_ms(),
            )?
        } else {
            let Some(partition) = batch.partition else {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    "an encoded batch needs an explicit partition",
                ));
            };
            if !batch.records.is_empty() {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    "a batch carries either records or an encoded batch, not both",
                ));
            }
            vec![check_encoded(partition, batch.encoded_batch, max_bytes)?]
        };
        Ok((batch.topic, writes))
    }

    /// Appends one write on its leader.
    async fn write(
        &self,
        topic: &str,
        write: PartitionWrite,
        acks: Acks,
        deadline: tokio::time::Instant,
    ) -> Result<PartitionAck, Error> {
        let bytes = write.batch.len() as u64;
        let request = AppendRequest {
            partition: Some(PartitionRef {
                topic: topic.to_string(),
                partition: write.partition,
            }),
            batch: write.batch,
            acks: acks as i32,
            // Set per attempt to the epoch of the leader it goes to.
            leader_epoch: 0,
        };
        // An idempotent producer's batch is written once however often it
        // is sent: an attempt that timed out may be repeated.
        let idempotent = is_idempotent(&request.batch);
        let policy = CallPolicy {
            retry_timeouts: idempotent,
            ..CallPolicy::write("Append", deadline)
        };
        let resp = self
            .router
            .call(
                topic,
                write.partition,
                policy,
                |mut client, t, leader_epoch| {
                    let mut request = request.clone();
                    request.leader_epoch = leader_epoch;
                    async move { client.append(router::request(request, t)).await }
                },
            )
            .await?;
        self.metrics
            .produced_records
            .inc_by(u64::from(resp.record_count));
        self.metrics.produced(topic, bytes);
        Ok(PartitionAck {
            partition: write.partition,
            base_offset: resp.base_offset,
            last_offset: resp.last_offset,
            record_count: resp.record_count,
        })
    }

    /// Plans a batch and starts its writes in partition order, each once
    /// it has its in-flight permit (waiting until `deadline`).
    async fn start_batch(
        &self,
        batch: ProduceBatch,
        acks: Acks,
        deadline: tokio::time::Instant,
        sequencer: &mut Sequencer,
        principal: &Principal,
    ) -> Started {
        if !batch.topic.is_empty()
            && let Err(e) = self.authz.check(
                principal,
                Operation::Write,
                ResourceType::Topic,
                &batch.topic,
            )
        {
            return Started::failed(e);
        }
        // The batch's own trace context wins over the call's.
        let parent = streambus_service::trace::context_of(&batch.traceparent);
        let (topic, writes) = match self.plan(batch).await {
            Ok(planned) => planned,
            Err(e) => return Started::failed(e),
        };
        let mut started = Started {
            failure: None,
            handles: Vec::with_capacity(writes.len()),
        };
        for w in writes {
            let permit = match self.in_flight.acquire(w.batch.len(), deadline).await {
                Ok(p) => p,
                Err(e) => {
                    // Later writes of the batch are not started: a partial
                    // batch is reported as failed.
                    started.failure = Some(e);
                    break;
                }
            };
            let (prev, signals) = sequencer.enqueue(&topic, w.partition, is_idempotent(&w.batch));
            let api = self.clone();
            let topic = topic.clone();
            let span = publish_span(&topic, &w, parent.clone());
            started.handles.push(tokio::spawn(
                async move {
                    if let Some(prev) = prev {
                        let _ = prev.await;
                    }
                    let partition = w.partition;
                    let Signals { sent, done } = signals;
                    drop(sent);
                    let r = api.write(&topic, w, acks, deadline).await;
                    drop(done);
                    drop(permit);
                    (partition, r)
                }
                .instrument(span),
            ));
        }
        started
    }

    /// Refuses a request or stream message with more records than
    /// `gateway.max_records_per_request`.
    fn check_records(&self, records: usize) -> Result<(), Error> {
        if records > self.max_records_per_request {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "request carries {records} records; the limit is {} (gateway.max_records_per_request)",
                    self.max_records_per_request
                ),
            ));
        }
        Ok(())
    }
}

/// With tracing on, the span of one partition's write of a produced batch:
/// a child of the batch's trace context if it has one, else of the call's
/// span. A disabled span otherwise.
fn publish_span(
    topic: &str,
    write: &PartitionWrite,
    parent: Option<streambus_service::trace::Parent>,
) -> tracing::Span {
    if !streambus_service::trace::enabled() {
        return tracing::Span::none();
    }
    let records = BatchHeader::parse(&write.batch).map_or(0, |h| h.record_count);
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {topic}"),
        otel.kind = "producer",
        messaging.system = "streambus",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = write.partition,
        messaging.batch.message_count = records,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    streambus_service::trace::with_parent(span, parent)
}

fn acks_of(value: i32) -> Acks {
    match Acks::try_from(value) {
        Ok(Acks::Unspecified) | Err(_) => Acks::All,
        Ok(a) => a,
    }
}

/// The response stream of `ProduceStream`.
pub type ProduceStreamResponses =
    Pin<Box<dyn Stream<Item = Result<ProduceStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ProduceService for ProduceApi {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let records: usize = req.batches.iter().map(|b| b.records.len()).sum();
        let checked = if req.batches.is_empty() {
            Err(Error::new(
                Reason::InvalidArgument,
                "request has no batches",
            ))
        } else if req.batches.len() > self.max_batches_per_request {
            Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "request carries {} batches; the limit is {} (gateway.max_batches_per_request)",
                    req.batches.len(),
                    self.max_batches_per_request
                ),
            ))
        } else {
            self.check_records(records)
        };
        if let Err(e) = checked {
            self.metrics.observe("Produce", started, false);
            return Err(e.into());
        }
        // Over the principal's produce quota, the call waits before any
        // of its batches is written.
        let bytes: usize = req.batches.iter().map(|b| b.encoded_len()).sum();
        let throttle_time_ms = self
            .quotas
            .throttle(&principal, quota::Kind::Produce, bytes as u64)
            .await;
        let acks = acks_of(req.acks);
        let deadline = self.deadline(req.timeout_ms);
        let mut sequencer = Sequencer::default();
        let mut pending = Vec::with_capacity(req.batches.len());
        for batch in req.batches {
            pending.push(
                self.start_batch(batch, acks, deadline, &mut sequencer, &principal)
                    .await,
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            results.push(if acks == Acks::None {
                // The writes run on, each holding its in-flight permit.
                p.routed()
            } else {
                p.finish().await
            });
        }
        let ok = results.iter().all(|r| r.error.is_none());
        self.metrics.observe("Produce", started, ok);
        Ok(Response::new(ProduceResponse {
            results,
            throttle_time_ms,
        }))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let started = Instant::now();
        // Any topic it may write: the id is only useful for writing, and
        // every write is checked on its own topic.
        let r = match self.authz.check_any(
            &principal_of(&request),
            Operation::Write,
            ResourceType::Topic,
        ) {
            Ok(()) => self
                .producer_ids
                .next(self.router.metadata().controller())
                .await
                .map(|producer_id| InitProducerResponse {
                    producer_id,
                    producer_epoch: 0,
                }),
            Err(e) => Err(e),
        };
        self.metrics.observe("InitProducer", started, r.is_ok());
        Ok(Response::new(r?))
    }

    type ProduceStreamStream = ProduceStreamResponses;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let principal = principal_of(&request);
        let mut inbound = request.into_inner();
        let api = self.clone();
        let limit = Arc::new(Semaphore::new(self.max_in_flight.max(1)));
        let (tx, rx) =
            mpsc::channel::<Result<ProduceStreamResponse, Status>>(self.max_in_flight.max(1));
        let max_in_flight = self.max_in_flight.max(1) as u32;
        tokio::spawn(async move {
            let mut sequencer = Sequencer::default();
            let mut drained = false;
            loop {
                // Backpressure: stop reading while at the in-flight limit.
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let mut draining = api.draining.clone();
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = draining.wait_for(|d| *d) => {
                        drained = true;
                        break;
                    }
                };
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "produce stream ended with an error");
                        break;
                    }
                };
                let started = Instant::now();
                let sequence = msg.sequence;
                let acks = acks_of(msg.acks);
                let result = match msg.batch {
                    Some(batch) => match api.check_records(batch.records.len()) {
                        Ok(()) => {
                            // Over the principal's produce quota the
                            // stream is not read until the wait is over.
                            let throttle = api.quotas.charge(
                                &principal,
                                quota::Kind::Produce,
                                batch.encoded_len() as u64,
                            );
                            if !throttle.is_zero() {
                                tokio::select! {
                                    () = tokio::time::sleep(throttle) => {}
                                    _ = draining.wait_for(|d| *d) => {}
                                }
                            }
                            let throttle_time_ms = quota::millis(throttle);
                            let deadline = api.deadline(0);
                            // Waits for gateway-wide in-flight room: the
                            // stream is not read meanwhile.
                            let writes = api
                                .start_batch(batch, acks, deadline, &mut sequencer, &principal)
                                .await;
                            let tx = tx.clone();
                            let metrics = api.metrics.clone();
                            tokio::spawn(async move {
                                if acks == Acks::None {
                                    // Answer once routed; the stream's
                                    // permit is kept until the writes end.
                                    let routed = writes.routed();
                                    metrics.observe(
                                        "ProduceStream",
                                        started,
                                        routed.error.is_none(),
                                    );
                                    let _ = tx
                                        .send(Ok(ProduceStreamResponse {
                                            sequence,
                                            result: Some(routed),
                                            throttle_time_ms,
                                        }))
                                        .await;
                                    let _ = writes.finish().await;
                                    drop(permit);
                                    return;
                                }
                                let result = writes.finish().await;
                                metrics.observe("ProduceStream", started, result.error.is_none());
                                let _ = tx
                                    .send(Ok(ProduceStreamResponse {
                                        sequence,
                                        result: Some(result),
                                        throttle_time_ms,
                                    }))
                                    .await;
                                drop(permit);
                            });
                            continue;
                        }
                        Err(e) => BatchResult {
                            acks: vec![],
                            error: Some(e.to_detail()),
                        },
                    },
                    None => BatchResult {
                        acks: vec![],
                        error: Some(
                            Error::new(Reason::InvalidArgument, "request has no batch").to_detail(),
                        ),
                    },
                };
                api.metrics.observe("ProduceStream", started, false);
                if tx
                    .send(Ok(ProduceStreamResponse {
                        sequence,
                        result: Some(result),
                        throttle_time_ms: 0,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if drained {
                // The writes in flight answer first (each holds a permit
                // until it has); then the stream says why it ends.
                let _ = limit.acquire_many(max_in_flight).await;
                let _ = tx.send(Err(crate::consume::draining_error())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prometheus_client::registry::Registry;
    use streambus_cluster::ControllerClient;
    use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
    use streambus_proto::v1::{PartitionDescription, Record};
    use streambus_record::{BatchIter, decode_records};

    use super::*;
    use crate::metadata::MetadataCache;

    fn api(partitions: u32, configs: &[(&str, &str)]) -> ProduceApi {
        // Nothing listens there; these tests never reach a controller.
        let controller = ControllerClient::new(vec!["127.0.0.1:9".to_string()]).unwrap();
        let cache = MetadataCache::new(controller);
        cache.install(
            streambus_cluster::ClusterView::from_wire(ClusterMetadata {
                version: 1,
                nodes: vec![StorageNodeInfo {
                    node_id: 1,
                    address: "127.0.0.1:9".to_string(),
                    alive: true,
                    rack: String::new(),
                    decommissioning: false,
                    max_partitions: 0,
                }],
                topics: vec![TopicMetadata {
                    partial: false,
                    name: "t".to_string(),
                    topic_id: "id".to_string(),
                    replication_factor: 1,
                    configs: configs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<HashMap<_, _>>(),
                    partitions: (0..partitions)
                        .map(|p| PartitionDescription {
                            partition: p,
                            leader: 1,
                            ..Default::default()
                        })
                        .collect(),
                }],
                ..Default::default()
            })
            .unwrap(),
        );
        let metrics = Metrics::new(&mut Registry::default());
        let quotas = Quotas::new(cache.clone(), metrics.throttle_seconds.clone());
        ProduceApi {
            router: Router::new(
                cache,
                Duration::from_secs(1),
                metrics.storage_request_seconds.clone(),
            ),
            metrics: metrics.clone(),
            default_timeout: Duration::from_secs(1),
            max_in_flight: 4,
            in_flight: InFlight::new(4, 1 << 20, metrics),
            max_batches_per_request: 3,
            max_records_per_request: 10,
            keyless: Arc::new(AtomicU32::new(0)),
            draining: tokio::sync::watch::channel(false).1,
            producer_ids: ProducerIds::default(),
            authz: Authz::off(),
            quotas,
        }
    }

    fn record(key: Option<&'static str>, value: &'static str) -> Record {
        Record {
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: Some(Bytes::from_static(value.as_bytes())),
            headers: vec![],
            timestamp_ms: 0,
        }
    }

    fn batch(records: Vec<Record>) -> ProduceBatch {
        ProduceBatch {
            topic: "t".to_string(),
            partition: None,
            records,
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        }
    }

    async fn plan_err(api: &ProduceApi, b: ProduceBatch) -> Error {
        match api.plan(b).await {
            Ok(_) => panic!("plan accepted a bad batch"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn keyed_records_go_to_the_kafka_partition_in_order() {
        let api = api(8, &[]);
        let keys = ["a", "b", "c", "a", "b", "c"];
        let records: Vec<Record> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| record(Some(k), ["0", "1", "2", "3", "4", "5"][i]))
            .collect();
        let (topic, writes) = api.plan(batch(records)).await.unwrap();
        assert_eq!(topic, "t");
        let mut seen = 0;
        for w in &writes {
            let decoded = decode_records(&w.batch).unwrap();
            for r in &decoded {
                let key = r.key.as_ref().unwrap();
                assert_eq!(w.partition, partition_for_key(key, 8));
                seen += 1;
            }
            // Within a partition, arrival order.
            let values: Vec<u8> = decoded
                .iter()
                .map(|r| r.value.as_ref().unwrap()[0])
                .collect();
            let mut sorted = values.clone();
            sorted.sort();
            assert_eq!(values, sorted);
        }
        assert_eq!(seen, 6);
    }

    #[tokio::test]
    async fn keyless_records_of_one_batch_share_a_partition_that_rotates() {
        let api = api(4, &[]);
        let mut partitions = Vec::new();
        for _ in 0..4 {
            let (_, writes) = api
                .plan(batch(vec![record(None, "x"), record(None, "y")]))
                .await
                .unwrap();
            assert_eq!(writes.len(), 1);
            partitions.push(writes[0].partition);
        }
        partitions.sort();
        assert_eq!(partitions, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn zero_timestamps_become_the_gateway_clock() {
        let api = api(1, &[]);
        let before = now_ms();
        let (_, writes) = api.plan(batch(vec![record(None, "v")])).await.unwrap();
        let r = &decode_records(&writes[0].batch).unwrap()[0];
        assert!(r.timestamp_ms >= before && r.timestamp_ms <= now_ms());
    }

    #[tokio::test]
    async fn records_are_split_into_batches_under_max_message_bytes() {
        let api = api(1, &[("max.message.bytes", "1000")]);
        let value: &'static str = Box::leak("v".repeat(300).into_boxed_str());
        let records = (0..10).map(|_| record(None, value)).collect();
        let (_, writes) = api.plan(batch(records)).await.unwrap();
        assert!(writes.len() > 1, "{} batches", writes.len());
        let mut total = 0;
        for w in &writes {
            assert!(w.batch.len() <= 1000, "batch of {} bytes", w.batch.len());
            total += decode_records(&w.batch).unwrap().len();
        }
        assert_eq!(total, 10);
    }

    #[tokio::test]
    async fn invalid_batches_get_stable_reasons() {
        let api = api(2, &[("max.message.bytes", "200")]);
        let mut b = batch(vec![record(None, "v")]);
        b.topic.clear();
        assert_eq!(plan_err(&api, b).await.reason, Reason::InvalidArgument);

        assert_eq!(
            plan_err(&api, batch(vec![])).await.reason,
            Reason::InvalidArgument
        );

        let mut b = batch(vec![record(None, "v")]);
        b.partition = Some(2);
        assert_eq!(plan_err(&api, b).await.reason, Reason::UnknownPartition);

        let big: &'static str = Box::leak("v".repeat(500).into_boxed_str());
        let e = plan_err(&api, batch(vec![record(None, big)])).await;
        assert_eq!(e.reason, Reason::RecordTooLarge);
        assert!(e.message.contains("max.message.bytes 200"), "{}", e.message);

        // Timestamps: -1 (none) and 0 (the gateway's clock) are fine, other
        // negative values and a distance that overflows the batch's
        // timestamp deltas are refused, naming the timestamp.
        let at = |ts: i64| Record {
            timestamp_ms: ts,
            ..record(None, "v")
        };
        api.plan(batch(vec![at(-1), at(0), at(1)])).await.unwrap();
        let e = plan_err(&api, batch(vec![at(-5)])).await;
        assert_eq!(e.reason, Reason::InvalidArgument);
        assert!(e.message.contains("timestamp -5"), "{}", e.message);
        let e = plan_err(&api, batch(vec![at(-1), at(i64::MAX)])).await;
        assert_eq!(e.reason, Reason::InvalidArgument);
        assert!(
            e.message.contains(&format!("timestamp {}", i64::MAX)),
            "{}",
            e.message
        );
    }

    fn encoded(n: usize) -> Bytes {
        let mut b = BatchBuilder::new(Compression::Lz4);
        for _ in 0..n {
            b.push(&streambus_record::Record {
                key: None,
                value: Some(Bytes::from_static(b"value")),
                headers: vec![],
                timestamp_ms: 1,
            });
        }
        b.build()
    }

    #[tokio::test]
    async fn encoded_batches_are_forwarded_untouched() {
        let api = api(2, &[]);
        let bytes = encoded(3);
        let mut b = batch(vec![]);
        b.partition = Some(1);
        b.encoded_batch = bytes.clone();
        let (_, writes) = api.plan(b).await.unwrap();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].partition, 1);
        assert_eq!(writes[0].batch, bytes);
    }

    #[tokio::test]
    async fn bad_encoded_batches_are_refused_before_routing() {
        let api = api(2, &[("max.message.bytes", "4096")]);
        let with = |partition: Option<u32>, bytes: Bytes, records: Vec<Record>| ProduceBatch {
            topic: "t".to_string(),
            partition,
            records,
            encoded_batch: bytes,
            traceparent: String::new(),
        };
        // No partition.
        let e = plan_err(&api, with(None, encoded(1), vec![])).await;
        assert_eq!(e.reason, Reason::InvalidArgument);
        // Both records and an encoded batch.
        let e = plan_err(&api, with(Some(0), encoded(1), vec![record(None, "v")])).await;
        assert_eq!(e.reason, Reason::InvalidArgument);
        // Not a batch.
        let e = plan_err(&api, with(Some(0), Bytes::from_static(&[7; 80]), vec![])).await;
        assert_eq!(e.reason, Reason::CorruptBatch);
        // Declares more bytes than it carries.
        let full = encoded(3);
        let cut = full.slice(..full.len() - 1);
        let e = plan_err(&api, with(Some(0), cut, vec![])).await;
        assert_eq!(e.reason, Reason::CorruptBatch);
        assert!(e.message.contains("declares"), "{}", e.message);
        // Over max.message.bytes.
        let big = {
            let mut b = BatchBuilder::new(Compression::None);
            for _ in 0..100 {
                b.push(&streambus_record::Record {
                    key: None,
                    value: Some(Bytes::from(vec![1u8; 100])),
                    headers: vec![],
                    timestamp_ms: 1,
                });
            }
            b.build()
        };
        let e = plan_err(&api, with(Some(0), big, vec![])).await;
        assert_eq!(e.reason, Reason::RecordTooLarge);
        assert_eq!(BatchIter::new(&encoded(2)).count(), 1);
    }

    #[tokio::test]
    async fn unary_produce_refuses_more_batches_than_the_limit() {
        let api = api(1, &[]);
        let req = ProduceRequest {
            batches: (0..4).map(|_| batch(vec![record(None, "v")])).collect(),
            acks: Acks::All as i32,
            timeout_ms: 100,
        };
        let status = api.produce(Request::new(req)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("4 batches")
                && status.message().contains("gateway.max_batches_per_request"),
            "{}",
            status.message()
        );
        assert_eq!(Error::from_status(&status).reason, Reason::InvalidArgument);
    }

    #[tokio::test]
    async fn unary_produce_refuses_more_records_than_the_limit() {
        let api = api(1, &[]);
        // 3 batches (within the batch limit) of 4 records: 12 > 10.
        let req = ProduceRequest {
            batches: (0..3)
                .map(|_| batch((0..4).map(|_| record(None, "v")).collect()))
                .collect(),
            acks: Acks::All as i32,
            timeout_ms: 100,
        };
        let status = api.produce(Request::new(req)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("12 records")
                && status.message().contains("gateway.max_records_per_request"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn in_flight_permits_bound_writes_and_bytes() {
        let metrics = Metrics::new(&mut Registry::default());
        let in_flight = InFlight::new(2, 1000, metrics.clone());
        let soon = || tokio::time::Instant::now() + Duration::from_millis(30);
        let a = in_flight.acquire(600, soon()).await.unwrap();
        assert_eq!(metrics.in_flight_writes.get(), 1);
        assert_eq!(metrics.in_flight_bytes.get(), 600);
        // Bytes: 600 + 500 > 1000.
        let e = in_flight.acquire(500, soon()).await.err().unwrap();
        assert_eq!(e.reason, Reason::Overloaded);
        assert!(
            e.message.contains("gateway.max_in_flight_bytes"),
            "{}",
            e.message
        );
        let b = in_flight.acquire(400, soon()).await.unwrap();
        // Count: two in flight.
        let e = in_flight.acquire(1, soon()).await.err().unwrap();
        assert_eq!(e.reason, Reason::Overloaded);
        assert!(
            e.message.contains("gateway.max_in_flight_writes"),
            "{}",
            e.message
        );
        drop(a);
        drop(b);
        assert_eq!(metrics.in_flight_writes.get(), 0);
        assert_eq!(metrics.in_flight_bytes.get(), 0);
        let _c = in_flight.acquire(1000, soon()).await.unwrap();
    }
}
