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
    Acks, BatchResult, PartitionAck, ProduceBatch, ProduceRequest, ProduceResponse,
    ProduceStreamRequest, ProduceStreamResponse,
};
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, BatchHeader, Compression, HEADER_SIZE};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::router::Router;

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
    pub(crate) keyless: Arc<AtomicU32>,
    /// Turns true when the gateway drains: streams stop reading.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

/// One append to one partition.
struct PartitionWrite {
    partition: u32,
    batch: Bytes,
}

/// Keeps appends to the same partition in arrival order: each write waits
/// for the previous write to that partition to finish.
#[derive(Default)]
struct Sequencer {
    tails: HashMap<(String, u32), oneshot::Receiver<()>>,
}

impl Sequencer {
    fn enqueue(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        let prev = self.tails.insert((topic.to_string(), partition), rx);
        (prev, tx)
    }
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

        if !batch.encoded_batch.is_empty() {
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
            if batch.encoded_batch.len() > max_bytes {
                return Err(Error::new(
                    Reason::RecordTooLarge,
                    format!(
                        "encoded batch of {} bytes exceeds max.message.bytes {max_bytes}",
                        batch.encoded_batch.len()
                    ),
                ));
            }
            let header = BatchHeader::parse(&batch.encoded_batch).map_err(|e| {
                Error::new(Reason::CorruptBatch, format!("invalid encoded batch: {e}"))
            })?;
            if header.total_size() != batch.encoded_batch.len() {
                return Err(Error::new(
                    Reason::CorruptBatch,
                    format!(
                        "encoded batch declares {} bytes but carries {}",
                        header.total_size(),
                        batch.encoded_batch.len()
                    ),
                ));
            }
            return Ok((
                batch.topic,
                vec![PartitionWrite {
                    partition,
                    batch: batch.encoded_batch,
                }],
            ));
        }

        if batch.records.is_empty() {
            return Err(Error::new(Reason::InvalidArgument, "batch has no records"));
        }
        for r in &batch.records {
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
        let keyless = self.keyless.fetch_add(1, Ordering::Relaxed) % partitions;
        let mut groups: Vec<(u32, Vec<streambus_proto::v1::Record>)> = Vec::new();
        let mut index: HashMap<u32, usize> = HashMap::new();
        for r in batch.records {
            let p = match (batch.partition, &r.key) {
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
        let now = now_ms();
        let mut writes = Vec::new();
        for (partition, records) in groups {
            let mut builder = BatchBuilder::new(Compression::None);
            let mut size = HEADER_SIZE;
            for r in records {
                let rs = record_size(&r);
                if !builder.is_empty() && size + rs > max_bytes {
                    writes.push(PartitionWrite {
                        partition,
                        batch: builder.build(),
                    });
                    builder = BatchBuilder::new(Compression::None);
                    size = HEADER_SIZE;
                }
                size += rs;
                builder.push(&to_record(r, now));
            }
            writes.push(PartitionWrite {
                partition,
                batch: builder.build(),
            });
        }
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
        };
        let resp = self
            .router
            .call(topic, write.partition, deadline, |mut client| {
                let request = request.clone();
                async move { client.append(request).await }
            })
            .await?;
        self.metrics
            .produced_records
            .inc_by(u64::from(resp.record_count));
        self.metrics.produced_bytes.inc_by(bytes);
        Ok(PartitionAck {
            partition: write.partition,
            base_offset: resp.base_offset,
            last_offset: resp.last_offset,
            record_count: resp.record_count,
        })
    }

    /// Plans a batch and starts its writes in partition order; the returned
    /// future resolves to the batch's result.
    async fn start_batch(
        &self,
        batch: ProduceBatch,
        acks: Acks,
        deadline: tokio::time::Instant,
        sequencer: &mut Sequencer,
    ) -> impl Future<Output = BatchResult> + Send + 'static {
        let planned = self.plan(batch).await;
        let mut handles = Vec::new();
        let mut failure = None;
        match planned {
            Ok((topic, writes)) => {
                for w in writes {
                    let (prev, done) = sequencer.enqueue(&topic, w.partition);
                    let api = self.clone();
                    let topic = topic.clone();
                    handles.push(tokio::spawn(async move {
                        if let Some(prev) = prev {
                            let _ = prev.await;
                        }
                        let partition = w.partition;
                        let r = api.write(&topic, w, acks, deadline).await;
                        drop(done);
                        (partition, r)
                    }));
                }
            }
            Err(e) => failure = Some(e),
        }
        async move {
            let mut result = BatchResult::default();
            let mut error = failure;
            for h in handles {
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
            if acks == Acks::None {
                for a in &mut result.acks {
                    a.base_offset = -1;
                    a.last_offset = -1;
                }
            }
            result.error = error.map(|e| e.to_detail());
            result
        }
    }
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
        let req = request.into_inner();
        if req.batches.is_empty() {
            self.metrics.observe("Produce", started, false);
            return Err(Error::new(Reason::InvalidArgument, "request has no batches").into());
        }
        let acks = acks_of(req.acks);
        let deadline = self.deadline(req.timeout_ms);
        let mut sequencer = Sequencer::default();
        let mut pending = Vec::with_capacity(req.batches.len());
        for batch in req.batches {
            pending.push(
                self.start_batch(batch, acks, deadline, &mut sequencer)
                    .await,
            );
        }
        let mut results = Vec::with_capacity(pending.len());
        if acks == Acks::None {
            for p in pending {
                tokio::spawn(p);
                results.push(BatchResult::default());
            }
        } else {
            for p in pending {
                results.push(p.await);
            }
        }
        let ok = results.iter().all(|r| r.error.is_none());
        self.metrics.observe("Produce", started, ok);
        Ok(Response::new(ProduceResponse { results }))
    }

    type ProduceStreamStream = ProduceStreamResponses;

    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let api = self.clone();
        let limit = Arc::new(Semaphore::new(self.max_in_flight.max(1)));
        let (tx, rx) =
            mpsc::channel::<Result<ProduceStreamResponse, Status>>(self.max_in_flight.max(1));
        tokio::spawn(async move {
            let mut sequencer = Sequencer::default();
            loop {
                // Backpressure: stop reading while at the in-flight limit.
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let mut draining = api.draining.clone();
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = draining.wait_for(|d| *d) => break,
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
                    Some(batch) => {
                        let deadline = api.deadline(0);
                        let fut = api.start_batch(batch, acks, deadline, &mut sequencer).await;
                        let tx = tx.clone();
                        let metrics = api.metrics.clone();
                        tokio::spawn(async move {
                            let result = if acks == Acks::None {
                                // Answer once routed; the write goes on.
                                tokio::spawn(fut);
                                BatchResult::default()
                            } else {
                                fut.await
                            };
                            metrics.observe("ProduceStream", started, result.error.is_none());
                            let _ = tx
                                .send(Ok(ProduceStreamResponse {
                                    sequence,
                                    result: Some(result),
                                }))
                                .await;
                            drop(permit);
                        });
                        continue;
                    }
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
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
