//! The public ConsumeService: server-streaming subscribe and unary fetch.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
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
use streambus_service::budget::MemoryBudget;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::decode::decode_within;
use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::router::{self, CallPolicy, Router};

const DEFAULT_MAX_BYTES: u32 = 1024 * 1024;
const DEFAULT_SUBSCRIBE_WAIT_MS: u32 = 500;
/// How long partition lookups may retry through leader moves.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a decode may wait for room in the decompression budget.
const BUDGET_WAIT: Duration = Duration::from_millis(500);
/// How long a subscription pauses before fetching again after the
/// decompression budget was spent.
const BUDGET_RETRY: Duration = Duration::from_millis(100);

/// Implements `streambus.v1.ConsumeService`.
#[derive(Clone)]
pub struct ConsumeApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
    pub(crate) max_wait: Duration,
    pub(crate) buffer: usize,
    /// Shared by every decode of the gateway.
    pub(crate) budget: MemoryBudget,
    /// Turns true when the gateway drains: subscriptions end.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

pub use crate::decode::decode;

fn pref(topic: &str, partition: u32) -> Option<PartitionRef> {
    Some(PartitionRef {
        topic: topic.to_string(),
        partition,
    })
}

impl ConsumeApi {
    async fn fetch_once(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        max_wait: Duration,
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
        };
        let wait = Duration::from_millis(u64::from(request.max_wait_ms));
        let deadline = tokio::time::Instant::now() + wait + LOOKUP_TIMEOUT;
        let policy = CallPolicy::read(deadline).with_server_wait(wait);
        self.router
            .call(topic, partition, policy, |mut c, t, _| {
                let request = request.clone();
                async move { c.fetch(router::request(request, t)).await }
            })
            .await
    }

    async fn resolve_start(
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
                CallPolicy::read(deadline),
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
    async fn follow_partition(
        self,
        req: SubscribeRequest,
        partition: u32,
        added: bool,
        tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    ) {
        let resolved = match req.resume_offsets.get(&partition) {
            Some(&offset) => Ok(offset),
            None => self.resolve_start(&req.topic, partition, &req.start).await,
        };
        let mut offset = match resolved {
            Ok(o) => o,
            Err(e) => {
                let _ = tx.send(Err(e.to_status())).await;
                return;
            }
        };
        let wait = Duration::from_millis(u64::from(if req.max_wait_ms == 0 {
            DEFAULT_SUBSCRIBE_WAIT_MS
        } else {
            req.max_wait_ms
        }));
        loop {
            if tx.is_closed() {
                return;
            }
            let mut draining = self.draining.clone();
            let fetched = tokio::select! {
                r = self.fetch_once(&req.topic, partition, offset, req.max_bytes, wait) => Some(r),
                _ = draining.wait_for(|d| *d) => None,
            };
            let Some(fetched) = fetched else {
                // Not a clean end ("done"): the client resubscribes, here
                // or elsewhere, from the next offsets it has.
                let _ = tx.send(Err(draining_error())).await;
                return;
            };
            let resp = match fetched {
                Ok(r) => r,
                Err(e) if e.retriable() => {
                    tracing::debug!(topic = %req.topic, partition, error = %e, "subscribe fetch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_status())).await;
                    return;
                }
            };
            if resp.batches.is_empty() {
                continue;
            }
            let message = match self
                .to_subscribe_response(&req, partition, offset, &resp)
                .await
            {
                Ok(m) => SubscribeResponse {
                    new_partition: added,
                    ..m
                },
                Err(e) if e.reason == Reason::Overloaded => {
                    // The decompression budget is spent: fetch again later.
                    tracing::debug!(topic = %req.topic, partition, error = %e, "subscribe decode deferred");
                    tokio::time::sleep(BUDGET_RETRY).await;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_status())).await;
                    return;
                }
            };
            offset = message.next_offset.max(offset);
            if tx.send(Ok(message)).await.is_err() {
                return;
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
        self.metrics
            .consumed_bytes
            .inc_by(resp.batches.len() as u64);
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
        })
    }

    /// For a subscription to every partition of a topic: starts reading
    /// each partition the topic gains (CreatePartitions) from its log
    /// start, until the client goes away, the gateway drains, or the topic
    /// is deleted or recreated (the partition tasks report that).
    async fn follow_new_partitions(
        self,
        req: SubscribeRequest,
        topic_id: String,
        mut known: u32,
        tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    ) {
        let mut metadata = self.router.metadata().subscribe();
        let mut draining = self.draining.clone();
        loop {
            let count = match metadata
                .borrow_and_update()
                .topics
                .iter()
                .find(|t| t.name == req.topic)
            {
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
                    partition,
                    true,
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
        let req = request.into_inner();
        let result = async {
            if req.topic.is_empty() {
                return Err(Error::new(Reason::InvalidArgument, "topic is required"));
            }
            let topic = self.router.metadata().topic(&req.topic).await?;
            let count = topic.partitions.len() as u32;
            let partitions: Vec<u32> = match req.partition {
                Some(p) if p >= count => {
                    return Err(unknown_partition(&req.topic, p, count as usize));
                }
                Some(p) => vec![p],
                None => (0..count).collect(),
            };
            Ok((topic.topic_id, partitions))
        }
        .await;
        self.metrics.observe("Subscribe", started, result.is_ok());
        let (topic_id, partitions) = result?;
        // Partitions added later share this bound.
        let (tx, rx) = mpsc::channel(self.buffer.max(1) * partitions.len());
        if req.partition.is_none() {
            let known = partitions.len() as u32;
            tokio::spawn(self.clone().follow_new_partitions(
                req.clone(),
                topic_id,
                known,
                tx.clone(),
            ));
        }
        for p in partitions {
            tokio::spawn(
                self.clone()
                    .follow_partition(req.clone(), p, false, tx.clone()),
            );
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let result = async {
            if req.topic.is_empty() {
                return Err(Error::new(Reason::InvalidArgument, "topic is required"));
            }
            if req.offset < 0 {
                return Err(Error::new(
                    Reason::OffsetOutOfRange,
                    format!("offset {} is negative", req.offset),
                ));
            }
            let topic = self.router.metadata().topic(&req.topic).await?;
            if req.partition as usize >= topic.partitions.len() {
                return Err(unknown_partition(
                    &req.topic,
                    req.partition,
                    topic.partitions.len(),
                ));
            }
            let wait = Duration::from_millis(u64::from(req.max_wait_ms));
            let resp = self
                .fetch_once(&req.topic, req.partition, req.offset, req.max_bytes, wait)
                .await?;
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
            self.metrics
                .consumed_bytes
                .inc_by(resp.batches.len() as u64);
            if !req.encoded {
                self.metrics.consumed_records.inc_by(records.len() as u64);
            }
            Ok(FetchResponse {
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
