//! The public ConsumeService: server-streaming subscribe and unary fetch.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use prost::Message;
use streambus_proto::internal::{
    ListOffsetsRequest, PartitionRef, StorageFetchRequest, StorageFetchResponse,
    list_offsets_request,
};
use streambus_proto::v1::consume_service_server::ConsumeService;
use streambus_proto::v1::{
    Empty, FetchRequest, FetchResponse, StartPosition, SubscribeRequest, SubscribeResponse,
    start_position,
};
use streambus_proto::{Error, Reason};
use streambus_service::budget::{MemoryBudget, Permit};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, principal_of};
use crate::authz::Authz;
use crate::decode::decode_within;
use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::quota::{self, Quotas};
use crate::record_watch::{RecordWatches, WATCH_WAIT, Woken};
use crate::router::{self, CallPolicy, Router};
use streambus_acl::{Operation, ResourceType};

const DEFAULT_MAX_BYTES: u32 = 1024 * 1024;
const DEFAULT_SUBSCRIBE_WAIT_MS: u32 = 500;
/// How long partition lookups may retry through leader moves.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a decode may wait for room in the decompression budget.
const BUDGET_WAIT: Duration = Duration::from_millis(500);
/// How long a subscription pauses before fetching again after the
/// decompression budget was spent.
const BUDGET_RETRY: Duration = Duration::from_millis(100);
/// Read-ahead (responses beyond the one a client waits for) only while
/// less than this fraction (1/N) of the budget is in use: the rest stays
/// for the responses clients wait for, however many subscribers stall.
const READ_AHEAD_SHARE: usize = 4;
/// The shortest wait of a subscription partition for new records, however
/// short the client's `max_wait_ms` (records arriving end it at once).
const MIN_WAIT: Duration = Duration::from_millis(100);
/// The smallest response a subscription asks for when memory is short.
const MIN_CHUNK: usize = 64 * 1024;
/// How long a subscription's first response waits in line for memory
/// before it queues again (it stops waiting when its client goes away).
const FIRST_RESPONSE_WAIT: Duration = Duration::from_secs(3600);

/// Implements `streambus.v1.ConsumeService`.
#[derive(Clone)]
pub struct ConsumeApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
    pub(crate) max_wait: Duration,
    pub(crate) buffer: usize,
    /// Shared by every decode of the gateway.
    pub(crate) budget: MemoryBudget,
    /// The gateway's memory budget: every response fetched for a client
    /// holds its bytes until the client's stream takes it.
    pub(crate) memory: MemoryBudget,
    /// Turns true when the gateway drains: subscriptions end.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
    /// Where caught-up subscription partitions wait for records.
    pub(crate) watches: RecordWatches,
    pub(crate) authz: Authz,
    pub(crate) quotas: Quotas,
}

pub use crate::decode::decode;

/// One subscription's responses fetched but not yet taken by its client's
/// stream (reads are driven by what the client takes: HTTP/2 flow control
/// stops the stream from being polled while the client does not read).
pub(crate) struct Demand {
    outstanding: watch::Sender<usize>,
    /// Responses it may have outstanding, while less than a quarter of the
    /// memory budget is used; past that, one at a time.
    limit: usize,
}

impl Demand {
    /// A subscription's demand: at most `limit` responses outstanding.
    pub(crate) fn new(limit: usize) -> Arc<Demand> {
        Arc::new(Demand {
            outstanding: watch::channel(0).0,
            limit: limit.max(1),
        })
    }
}

/// Memory held by a response on its way to the client; released, and the
/// subscription's demand counted down, when the stream takes it.
pub(crate) struct Held {
    _permits: Vec<Permit>,
    demand: Arc<Demand>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.demand
            .outstanding
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What a subscription's partition tasks send to its stream.
pub(crate) type Delivery = Sent<SubscribeResponse>;

/// A message for a client's stream, with the memory it holds.
pub(crate) type Sent<T> = (Result<T, Status>, Option<Held>);

/// A subscription's response stream. The memory of a response stays
/// reserved until the stream is polled again: the HTTP/2 connection polls
/// it for the next response only once it can send (the previous one has
/// left its buffers), so a client that stops reading keeps exactly what is
/// buffered for it accounted.
pub(crate) struct Accounted<T> {
    rx: ReceiverStream<Sent<T>>,
    last: Option<Held>,
}

impl<T> Accounted<T> {
    pub(crate) fn new(rx: mpsc::Receiver<Sent<T>>) -> Accounted<T> {
        Accounted {
            rx: ReceiverStream::new(rx),
            last: None,
        }
    }
}

impl<T> Stream for Accounted<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.last = None;
        match Pin::new(&mut self.rx).poll_next(cx) {
            std::task::Poll::Ready(Some((item, held))) => {
                self.last = held;
                std::task::Poll::Ready(Some(item))
            }
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// The response size to ask for: at most 1/1024 of the budget (so a
/// thousand stalled subscribers, each holding one response, fit in it),
/// a quarter of what is free, and what the client asked for; at least
/// [`MIN_CHUNK`] (or the request, when smaller).
fn chunk_size(memory: &MemoryBudget, requested: u32) -> usize {
    let requested = if requested == 0 {
        DEFAULT_MAX_BYTES
    } else {
        requested
    } as usize;
    (memory.available() / 4)
        .min(memory.capacity() / 1024)
        .clamp(MIN_CHUNK.min(requested), requested)
}

use std::sync::Arc;

fn pref(topic: &str, partition: u32) -> Option<PartitionRef> {
    Some(PartitionRef {
        topic: topic.to_string(),
        partition,
    })
}

impl ConsumeApi {
    pub(crate) async fn fetch_once(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
        wait_only: bool,
    ) -> Result<StorageFetchResponse, Error> {
        let request = StorageFetchRequest {
            partition: pref(topic, partition),
            offset,
            max_bytes: if max_bytes == 0 {
                DEFAULT_MAX_BYTES
            } else {
                max_bytes
            },
            max_wait_ms: max_wait.min(self.max_wait).as_millis() as u32,
            wait_only,
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms));
        let deadline = tokio::time::Instant::now() + wait + LOOKUP_TIMEOUT;
        let policy = CallPolicy::read("Fetch", deadline).with_server_wait(wait);
        self.router
            .call(topic, partition, policy, |mut c, t, _| {
                let request = request.clone();
                async move { c.fetch(router::request(request, t)).await }
            })
            .await
    }

    /// Reserves memory for the next response of a subscription: the first
    /// response its client waits for queues for memory (first come, first
    /// served); more read-ahead only while less than a quarter of the
    /// budget is used, and never past the subscription's limit. `None` when the
    /// client went away or the gateway drains.
    async fn reserve(
        &self,
        demand: &Arc<Demand>,
        requested: u32,
        tx: &mpsc::Sender<Delivery>,
    ) -> Option<(Permit, Held)> {
        let mut outstanding = demand.outstanding.subscribe();
        let mut draining = self.draining.clone();
        loop {
            if tx.is_closed() || *draining.borrow() {
                return None;
            }
            let out = *outstanding.borrow_and_update();
            let size = chunk_size(&self.memory, requested);
            let held = || Held {
                _permits: Vec::new(),
                demand: demand.clone(),
            };
            if out == 0 {
                // One partition task claims the response the client waits
                // for; the others wait for read-ahead room.
                let claimed = demand.outstanding.send_if_modified(|n| {
                    let free = *n == 0;
                    if free {
                        *n = 1;
                    }
                    free
                });
                if !claimed {
                    continue;
                }
                // Counted down when dropped, on every way out.
                let held = held();
                tokio::select! {
                    r = self.memory.acquire(size, FIRST_RESPONSE_WAIT) => match r {
                        Ok(permit) => return Some((permit, held)),
                        Err(_) => continue,
                    },
                    () = tx.closed() => return None,
                    _ = draining.wait_for(|d| *d) => return None,
                }
            }
            if out < demand.limit
                && self.memory.in_use() + size <= self.memory.capacity() / READ_AHEAD_SHARE
                && let Ok(permit) = self.memory.try_acquire(size)
            {
                demand.outstanding.send_modify(|n| *n += 1);
                return Some((permit, held()));
            }
            // Wait for the client to take a response.
            tokio::select! {
                r = outstanding.changed() => if r.is_err() { return None },
                () = tx.closed() => return None,
                _ = draining.wait_for(|d| *d) => return None,
            }
        }
    }

    pub(crate) async fn resolve_start(
        &self,
        topic: &str,
        partition: u32,
        start: &Option<StartPosition>,
    ) -> Result<i64, Error> {
        let query = match start.as_ref().and_then(|s| s.position) {
            Some(start_position::Position::Offset(o)) => {
                if o < 0 {
                    return Err(Error::new(
                        Reason::OffsetOutOfRange,
                        format!("offset {o} is negative"),
                    ));
                }
                return Ok(o);
            }
            Some(start_position::Position::Earliest(_)) => {
                list_offsets_request::Query::Earliest(true)
            }
            None | Some(start_position::Position::Latest(_)) => {
                list_offsets_request::Query::Latest(true)
            }
            Some(start_position::Position::TimestampMs(ts)) => {
                list_offsets_request::Query::TimestampMs(ts)
            }
        };
        let request = ListOffsetsRequest {
            partition: pref(topic, partition),
            query: Some(query),
        };
        let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
        let resp = self
            .router
            .call(
                topic,
                partition,
                CallPolicy::read("ListOffsets", deadline),
                |mut c, t, _| {
                    let request = request.clone();
                    async move { c.list_offsets(router::request(request, t)).await }
                },
            )
            .await?;
        // No record at or after the timestamp: start at the end.
        Ok(if resp.offset < 0 {
            resp.high_watermark
        } else {
            resp.offset
        })
    }

    /// Feeds one partition of a subscription until the client goes away or
    /// an error that retrying cannot fix. `added`: a partition the topic
    /// gained after the subscription started (its responses say so).
    pub(crate) async fn follow_partition(
        self,
        req: SubscribeRequest,
        principal: Principal,
        partition: u32,
        added: bool,
        demand: Arc<Demand>,
        tx: mpsc::Sender<Delivery>,
    ) {
        let mut backoff = Backoff::default();
        let mut offset = loop {
            let resolved = match req.resume_offsets.get(&partition) {
                Some(&offset) => Ok(offset),
                None => {
                    let mut draining = self.draining.clone();
                    let resolved = tokio::select! {
                        r = self.resolve_start(&req.topic, partition, &req.start) => Some(r),
                        _ = draining.wait_for(|d| *d) => None,
                        () = tx.closed() => return,
                    };
                    let Some(resolved) = resolved else {
                        let _ = tx.send((Err(draining_error()), None)).await;
                        return;
                    };
                    resolved
                }
            };
            match resolved {
                Ok(o) => break o,
                Err(e) if waits_out(&e) => {
                    tracing::debug!(topic = %req.topic, partition, error = %e, "subscription start not resolved; retrying");
                    if !backoff.pause(&tx).await {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send((Err(e.to_status()), None)).await;
                    return;
                }
            }
        };
        let wait = Duration::from_millis(u64::from(if req.max_wait_ms == 0 {
            DEFAULT_SUBSCRIBE_WAIT_MS
        } else {
            req.max_wait_ms
        }));
        // The high watermark last seen: below it records are known to be
        // there, so a fetch answers at once.
        let mut visible = i64::MIN;
        loop {
            if tx.is_closed() {
                return;
            }
            let mut draining = self.draining.clone();
            // Caught up: wait for new records without holding memory or
            // the subscription's turn (other partitions go on meanwhile).
            let waiting = offset >= visible;
            if waiting {
                // On the node's watch stream; a long poll of its own only
                // when the watch cannot answer.
                let woken = tokio::select! {
                    w = self.watches.wait(&req.topic, partition, offset, WATCH_WAIT) => Some(w),
                    _ = draining.wait_for(|d| *d) => None,
                    () = tx.closed() => return,
                };
                match woken {
                    None => {
                        let _ = tx.send((Err(draining_error()), None)).await;
                        return;
                    }
                    Some(Woken::HighWatermark(hw)) => {
                        visible = hw;
                        continue;
                    }
                    Some(Woken::Route) => {}
                }
            }
            let reserved = if waiting {
                None
            } else {
                match self.reserve(&demand, req.max_bytes, &tx).await {
                    Some(r) => Some(r),
                    None => {
                        if *draining.borrow() {
                            let _ = tx.send((Err(draining_error()), None)).await;
                        }
                        return;
                    }
                }
            };
            let (max_bytes, max_wait) = match &reserved {
                Some((permit, _)) => (
                    u32::try_from(permit.bytes()).unwrap_or(u32::MAX),
                    Duration::ZERO,
                ),
                // One byte: a storage node that predates `wait_only`
                // answers with at most one batch, not a megabyte.
                None => (1, wait.max(MIN_WAIT)),
            };
            // Every read is checked: an ACL removed while the
            // subscription runs stops it.
            if let Err(e) =
                self.authz
                    .check(&principal, Operation::Read, ResourceType::Topic, &req.topic)
            {
                let _ = tx.send((Err(e.to_status()), None)).await;
                return;
            }
            let fetched = tokio::select! {
                r = self.fetch_once(&req.topic, partition, offset, max_bytes, max_wait, waiting) => Some(r),
                _ = draining.wait_for(|d| *d) => None,
                () = tx.closed() => return,
            };
            let Some(fetched) = fetched else {
                // Not a clean end ("done"): the client resubscribes, here
                // or elsewhere, from the next offsets it has.
                let _ = tx.send((Err(draining_error()), None)).await;
                return;
            };
            let resp = match fetched {
                Ok(r) => {
                    backoff = Backoff::default();
                    r
                }
                Err(e) if waits_out(&e) => {
                    tracing::debug!(topic = %req.topic, partition, error = %e, "subscribe fetch failed; retrying");
                    // Neither memory nor the turn is held while pausing.
                    drop(reserved);
                    if !backoff.pause(&tx).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    let _ = tx.send((Err(e.to_status()), None)).await;
                    return;
                }
            };
            visible = resp.high_watermark;
            let Some((mut permit, mut held)) = reserved else {
                continue;
            };
            if resp.batches.is_empty() {
                // Nothing readable after all (truncated, a stale high
                // watermark, or a gap compaction left below it): give the
                // turn and the memory back, and look again after a long
                // poll's time.
                visible = visible.min(offset);
                drop((permit, held));
                tokio::time::sleep(wait.max(MIN_WAIT)).await;
                continue;
            }
            let message = match self
                .to_subscribe_response(&req, partition, offset, &resp)
                .await
            {
                Ok(m) => SubscribeResponse {
                    new_partition: added,
                    // The next read of this partition waits this long.
                    throttle_time_ms: 0,
                    ..m
                },
                Err(e) if e.reason == Reason::Overloaded => {
                    // The decompression budget is spent: fetch again later.
                    tracing::debug!(topic = %req.topic, partition, error = %e, "subscribe decode deferred");
                    drop((permit, held));
                    tokio::time::sleep(BUDGET_RETRY).await;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send((Err(e.to_status()), None)).await;
                    return;
                }
            };
            offset = message.next_offset.max(offset);
            // Hold what the response really takes: less than reserved, or
            // more (a first batch larger than the chunk, decoded records)
            // when the budget has it.
            let size = message.encoded_len();
            if size <= permit.bytes() {
                permit.shrink_to(size);
            } else if let Ok(extra) = self.memory.try_acquire(size - permit.bytes()) {
                held._permits.push(extra);
            }
            held._permits.push(permit);
            let throttle =
                self.quotas
                    .charge(&principal, quota::Kind::Consume, resp.batches.len() as u64);
            let message = SubscribeResponse {
                throttle_time_ms: quota::millis(throttle),
                ..message
            };
            if tx.send((Ok(message), Some(held))).await.is_err() {
                return;
            }
            if !throttle.is_zero() {
                // Over the principal's consume quota: the next read waits.
                tokio::select! {
                    () = tokio::time::sleep(throttle) => {}
                    _ = draining.wait_for(|d| *d) => {}
                    () = tx.closed() => return,
                }
            }
        }
    }

    async fn to_subscribe_response(
        &self,
        req: &SubscribeRequest,
        partition: u32,
        offset: i64,
        resp: &StorageFetchResponse,
    ) -> Result<SubscribeResponse, Error> {
        self.metrics.consumed(&req.topic, resp.batches.len() as u64);
        let (records, encoded, next_offset) = if req.encoded {
            let count: i64 = streambus_record::BatchIter::new(&resp.batches)
                .filter_map(Result::ok)
                .map(|(h, _)| i64::from(h.record_count))
                .sum();
            self.metrics.consumed_records.inc_by(count.max(0) as u64);
            (Vec::new(), resp.batches.clone(), resp.next_offset)
        } else {
            let d = decode_within(&self.budget, resp.batches.clone(), offset, BUDGET_WAIT).await?;
            self.metrics.consumed_records.inc_by(d.records.len() as u64);
            (
                d.records,
                Bytes::new(),
                d.truncated_at.unwrap_or(resp.next_offset),
            )
        };
        Ok(SubscribeResponse {
            partition,
            records,
            encoded_batches: encoded,
            high_watermark: resp.high_watermark,
            next_offset,
            new_partition: false,
            throttle_time_ms: 0,
        })
    }

    /// For a subscription to every partition of a topic: starts reading
    /// each partition the topic gains (CreatePartitions) from its log
    /// start, until the client goes away, the gateway drains, or the topic
    /// is deleted or recreated (the partition tasks report that).
    async fn follow_new_partitions(
        self,
        req: SubscribeRequest,
        principal: Principal,
        topic_id: String,
        mut known: u32,
        demand: Arc<Demand>,
        tx: mpsc::Sender<Delivery>,
    ) {
        let mut metadata = self.router.metadata().subscribe();
        let mut draining = self.draining.clone();
        loop {
            let count = match metadata.borrow_and_update().topic(&req.topic) {
                Some(t) if t.topic_id == topic_id => t.partitions.len() as u32,
                _ => return,
            };
            for partition in known..count {
                tracing::debug!(topic = %req.topic, partition, "subscription follows a new partition");
                let from_start = SubscribeRequest {
                    start: Some(StartPosition {
                        position: Some(start_position::Position::Earliest(Empty {})),
                    }),
                    ..req.clone()
                };
                tokio::spawn(self.clone().follow_partition(
                    from_start,
                    principal.clone(),
                    partition,
                    true,
                    demand.clone(),
                    tx.clone(),
                ));
            }
            known = known.max(count);
            tokio::select! {
                () = tx.closed() => return,
                _ = draining.wait_for(|d| *d) => return,
                changed = metadata.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Whether a subscription partition waits an error out rather than ending
/// the subscription: retriable errors, and a partition offline on its
/// leader (its log is still opening, or the node keeps trying to open it).
/// One partition of thousands must not end the others' stream; a consumer
/// of Kafka likewise goes on retrying a partition without a leader.
fn waits_out(e: &Error) -> bool {
    e.retriable() || e.reason == Reason::PartitionOffline
}

/// Pauses between a subscription partition's failed attempts: 100 ms,
/// doubling to 2 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    /// Sleeps the next pause; false when the client went away meanwhile.
    async fn pause(&mut self, tx: &mpsc::Sender<Delivery>) -> bool {
        let wait = Duration::from_millis(100 << self.0.min(5)).min(Duration::from_secs(2));
        self.0 += 1;
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = tx.closed() => false,
        }
    }
}

/// How a draining gateway ends a stream: retriable, so clients reconnect.
pub(crate) fn draining_error() -> Status {
    Error::new(
        Reason::ShuttingDown,
        "the gateway is draining: reconnect (to it or another gateway) and resume",
    )
    .to_status()
}

/// The response stream of `Subscribe`.
pub type SubscribeResponses =
    Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ConsumeService for ConsumeApi {
    type SubscribeStream = SubscribeResponses;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let result = async {
            if req.topic.is_empty() {
                return Err(Error::new(Reason::InvalidArgument, "topic is required"));
            }
            self.authz
                .check(&principal, Operation::Read, ResourceType::Topic, &req.topic)?;
            let topic = self.router.metadata().topic(&req.topic).await?;
            let count = topic.partitions.len() as u32;
            let partitions: Vec<u32> = match req.partition {
                Some(p) if p >= count => {
                    return Err(unknown_partition(&req.topic, p, count as usize));
                }
                Some(p) => vec![p],
                None => (0..count).collect(),
            };
            Ok((topic.topic_id.clone(), partitions))
        }
        .await;
        self.metrics.observe("Subscribe", started, result.is_ok());
        let (topic_id, partitions) = result?;
        // Partitions added later share these bounds.
        let limit = self.buffer.max(1) * partitions.len();
        let (tx, rx) = mpsc::channel(limit);
        let demand = Arc::new(Demand {
            outstanding: watch::channel(0).0,
            limit,
        });
        if req.partition.is_none() {
            let known = partitions.len() as u32;
            tokio::spawn(self.clone().follow_new_partitions(
                req.clone(),
                principal.clone(),
                topic_id,
                known,
                demand.clone(),
                tx.clone(),
            ));
        }
        for p in partitions {
            tokio::spawn(self.clone().follow_partition(
                req.clone(),
                principal.clone(),
                p,
                false,
                demand.clone(),
                tx.clone(),
            ));
        }
        Ok(Response::new(Box::pin(Accounted::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let result = async {
            if req.topic.is_empty() {
                return Err(Error::new(Reason::InvalidArgument, "topic is required"));
            }
            self.authz
                .check(&principal, Operation::Read, ResourceType::Topic, &req.topic)?;
            if req.offset < 0 {
                return Err(Error::new(
                    Reason::OffsetOutOfRange,
                    format!("offset {} is negative", req.offset),
                ));
            }
            // What the principal owes for its consume quota is waited out
            // before any memory is taken for this call.
            let throttle_time_ms = self
                .quotas
                .wait_pending(&principal, quota::Kind::Consume)
                .await;
            let topic = self.router.metadata().topic(&req.topic).await?;
            if req.partition as usize >= topic.partitions.len() {
                return Err(unknown_partition(
                    &req.topic,
                    req.partition,
                    topic.partitions.len(),
                ));
            }
            let wait = Duration::from_millis(u64::from(req.max_wait_ms));
            // Room for the response, or RESOURCE_EXHAUSTED once waiting
            // for it would outlast the request.
            let mut permit = self
                .memory
                .acquire(chunk_size(&self.memory, req.max_bytes), LOOKUP_TIMEOUT)
                .await?;
            let max_bytes = u32::try_from(permit.bytes()).unwrap_or(u32::MAX);
            let resp = self
                .fetch_once(
                    &req.topic,
                    req.partition,
                    req.offset,
                    max_bytes,
                    wait,
                    false,
                )
                .await?;
            permit.shrink_to(resp.batches.len());
            let (records, encoded, next_offset) = if req.encoded {
                (Vec::new(), resp.batches.clone(), resp.next_offset)
            } else {
                let d = decode_within(&self.budget, resp.batches.clone(), req.offset, BUDGET_WAIT)
                    .await?;
                (
                    d.records,
                    Bytes::new(),
                    d.truncated_at.unwrap_or(resp.next_offset),
                )
            };
            self.metrics.consumed(&req.topic, resp.batches.len() as u64);
            if !req.encoded {
                self.metrics.consumed_records.inc_by(records.len() as u64);
            }
            // Charged now; the principal's next call waits for it.
            self.quotas
                .charge(&principal, quota::Kind::Consume, resp.batches.len() as u64);
            Ok(FetchResponse {
                throttle_time_ms,
                partition: req.partition,
                records,
                encoded_batches: encoded,
                high_watermark: resp.high_watermark,
                log_start_offset: resp.log_start_offset,
                next_offset,
            })
        }
        .await;
        self.metrics.observe("Fetch", started, result.is_ok());
        Ok(Response::new(result?))
    }
}
