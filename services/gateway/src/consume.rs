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
    ConsumedRecord, FetchRequest, FetchResponse, Header, StartPosition, SubscribeRequest,
    SubscribeResponse, start_position,
};
use streambus_proto::{Error, Reason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::router::Router;

const DEFAULT_MAX_BYTES: u32 = 1024 * 1024;
const DEFAULT_SUBSCRIBE_WAIT_MS: u32 = 500;
/// How long partition lookups may retry through leader moves.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Implements `streambus.v1.ConsumeService`.
#[derive(Clone)]
pub struct ConsumeApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
    pub(crate) max_wait: Duration,
    pub(crate) buffer: usize,
    /// Turns true when the gateway drains: subscriptions end.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

/// Decodes the records at or after `from` in concatenated batches.
pub fn decode(batches: &[u8], from: i64) -> Result<Vec<ConsumedRecord>, Error> {
    let mut out = Vec::new();
    for item in streambus_record::BatchIter::new(batches) {
        let (_, batch) = item.map_err(|e| {
            Error::new(
                Reason::CorruptLog,
                format!("stored batch does not decode: {e}"),
            )
        })?;
        let records = streambus_record::decode_records(batch).map_err(|e| {
            Error::new(
                Reason::CorruptLog,
                format!("stored batch does not decode: {e}"),
            )
        })?;
        out.extend(records.into_iter().filter(|r| r.offset >= from).map(|r| {
            ConsumedRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
            }
        }));
    }
    Ok(out)
}

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
        let deadline = tokio::time::Instant::now() + max_wait + LOOKUP_TIMEOUT;
        self.router
            .call(topic, partition, deadline, |mut c| {
                let request = request.clone();
                async move { c.fetch(request).await }
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
            .call(topic, partition, deadline, |mut c| {
                let request = request.clone();
                async move { c.list_offsets(request).await }
            })
            .await?;
        // No record at or after the timestamp: start at the end.
        Ok(if resp.offset < 0 {
            resp.high_watermark
        } else {
            resp.offset
        })
    }

    /// Feeds one partition of a subscription until the client goes away or
    /// an error that retrying cannot fix.
    async fn follow_partition(
        self,
        req: SubscribeRequest,
        partition: u32,
        tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    ) {
        let mut offset = match self.resolve_start(&req.topic, partition, &req.start).await {
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
                r = self.fetch_once(&req.topic, partition, offset, req.max_bytes, wait) => r,
                _ = draining.wait_for(|d| *d) => return,
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
            let message = match self.to_subscribe_response(&req, partition, offset, &resp) {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Err(e.to_status())).await;
                    return;
                }
            };
            offset = resp.next_offset.max(offset);
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
    }

    fn to_subscribe_response(
        &self,
        req: &SubscribeRequest,
        partition: u32,
        offset: i64,
        resp: &StorageFetchResponse,
    ) -> Result<SubscribeResponse, Error> {
        self.metrics
            .consumed_bytes
            .inc_by(resp.batches.len() as u64);
        let (records, encoded) = if req.encoded {
            let count: i64 = streambus_record::BatchIter::new(&resp.batches)
                .filter_map(Result::ok)
                .map(|(h, _)| i64::from(h.record_count))
                .sum();
            self.metrics.consumed_records.inc_by(count.max(0) as u64);
            (Vec::new(), resp.batches.clone())
        } else {
            let records = decode(&resp.batches, offset)?;
            self.metrics.consumed_records.inc_by(records.len() as u64);
            (records, Bytes::new())
        };
        Ok(SubscribeResponse {
            partition,
            records,
            encoded_batches: encoded,
            high_watermark: resp.high_watermark,
            next_offset: resp.next_offset,
        })
    }
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
            Ok(partitions)
        }
        .await;
        self.metrics.observe("Subscribe", started, result.is_ok());
        let partitions = result?;
        let (tx, rx) = mpsc::channel(self.buffer.max(1) * partitions.len());
        for p in partitions {
            tokio::spawn(self.clone().follow_partition(req.clone(), p, tx.clone()));
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
            let (records, encoded) = if req.encoded {
                (Vec::new(), resp.batches.clone())
            } else {
                (decode(&resp.batches, req.offset)?, Bytes::new())
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
                next_offset: resp.next_offset,
            })
        }
        .await;
        self.metrics.observe("Fetch", started, result.is_ok());
        Ok(Response::new(result?))
    }
}
