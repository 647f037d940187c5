//! The internal StorageService: append, fetch (long poll), list offsets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use streambus_proto::internal::storage_service_server::StorageService;
use streambus_proto::internal::{
    AppendRequest, AppendResponse, BatchTrace, DescribeNodeRequest, DescribeNodeResponse,
    DivergingEpoch, ListOffsetsRequest, ListOffsetsResponse, PartitionRef, ReplicaFetchRequest,
    ReplicaFetchResponse, StorageFetchRequest, StorageFetchResponse, WatchRecordsRequest,
    list_offsets_request,
};
use streambus_proto::v1::{
    Acks, CommitOffsetsRequest, CommitOffsetsResponse, DeleteGroupRequest, DeleteGroupResponse,
    DescribeGroupRequest, FetchOffsetsRequest, FetchOffsetsResponse, GroupDescription,
    GroupHeartbeatRequest, GroupHeartbeatResponse, ListGroupsRequest, ListGroupsResponse,
};
use streambus_proto::{Error, Reason};
use tonic::{Request, Response, Status};

use streambus_record::decompressed_bound;
use streambus_service::budget::{MemoryBudget, Permit};
use streambus_service::trace;
use tracing::Instrument;

use crate::error::log_error;
use crate::metrics::Metrics;
use crate::partitions::Partitions;

/// Implements `streambus.internal.v1.StorageService`.
pub struct StorageApi {
    /// The data directory's disk: appends are refused past its watermark.
    pub(crate) disk: Arc<crate::disk::Disk>,
    pub(crate) partitions: Arc<Partitions>,
    pub(crate) metrics: Metrics,
    pub(crate) max_fetch_wait: Duration,
    pub(crate) max_fetch_bytes: u32,
    /// Shared by every append: what validating compressed batches may
    /// decompress at once.
    pub(crate) decompression: MemoryBudget,
    /// The node's memory budget: follower fetches read within it.
    pub(crate) memory: MemoryBudget,
    /// The part of it consumer fetches read within.
    pub(crate) consumer_fetches: MemoryBudget,
    /// The part of it the batches of appends in progress (received, not
    /// yet acknowledged) are held in.
    pub(crate) appends: MemoryBudget,
    /// Flips to true when the node starts draining: long polls end early.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
    pub(crate) acks: AckWait,
    /// Group coordination for the `__groups` partitions this node leads.
    pub(crate) groups: Arc<crate::groups::Coordinator>,
}

/// What `acks=all` needs: the lease and ISR checks, and waiting for the
/// in-sync replicas.
#[derive(Clone)]
pub(crate) struct AckWait {
    pub(crate) partitions: Arc<Partitions>,
    /// Until when this node's lease with the controller is certainly
    /// valid; `acks=all` appends are refused past it.
    pub(crate) lease: Arc<crate::LeaseClock>,
    /// How long an `acks=all` append waits for the in-sync replicas.
    pub(crate) timeout: Duration,
}

/// How long a fetch waits for room in the memory budget before it is
/// refused with `OVERLOADED` (retriable).
const FETCH_MEMORY_WAIT: Duration = Duration::from_secs(1);

fn partition_ref(p: Option<PartitionRef>) -> Result<PartitionRef, Error> {
    let p = p.ok_or_else(|| Error::new(Reason::InvalidArgument, "partition is required"))?;
    if p.topic.is_empty() {
        return Err(Error::new(Reason::InvalidArgument, "topic is required"));
    }
    Ok(p)
}

/// How long an append waits for decompression budget before `OVERLOADED`.
const DECOMPRESSION_WAIT: Duration = Duration::from_millis(200);

/// Reserves from `budget` what validating `batches` (whole batches,
/// validated one after the other) may decompress at once: the largest
/// bound of its compressed batches, waiting up to [`DECOMPRESSION_WAIT`]
/// before `OVERLOADED`. Nothing for uncompressed batches, nor for
/// malformed bytes (validation refuses them without expanding anything).
pub(crate) async fn reserve_decompression(
    budget: &MemoryBudget,
    batches: &[u8],
) -> Result<Option<Permit>, Error> {
    let mut largest = None;
    for item in streambus_record::BatchIter::new(batches) {
        let Ok((header, bytes)) = item else {
            break;
        };
        let Ok(codec) = header.compression() else {
            break;
        };
        if codec != streambus_record::Compression::None {
            let bound = decompressed_bound(
                codec,
                bytes
                    .get(streambus_record::HEADER_SIZE..)
                    .unwrap_or_default(),
            );
            largest = largest.max(Some(bound));
        }
    }
    match largest {
        Some(bytes) => Ok(Some(budget.acquire(bytes, DECOMPRESSION_WAIT).await?)),
        None => Ok(None),
    }
}

/// Applies a topic's `compression.type` (other than `producer`): a batch
/// that arrives with another codec is rewritten with `codec` (the records,
/// offsets, timestamps and producer fields unchanged, a new CRC), on a
/// blocking thread. The log validates the result as it would the
/// original; a batch larger than `max.message.bytes` is left for the log
/// to refuse. Only the leader does this: followers copy its bytes.
async fn apply_compression_type(
    replica: &crate::replica::Replica,
    batch: bytes::Bytes,
    codec: streambus_record::Compression,
) -> Result<Result<bytes::Bytes, streambus_log::LogError>, Error> {
    if batch.len() > replica.config().max_message_bytes as usize {
        return Ok(Ok(batch));
    }
    tokio::task::spawn_blocking(move || match streambus_record::recompress(&batch, codec) {
        Ok(Some(recompressed)) => Ok(recompressed),
        Ok(None) => Ok(batch),
        Err(e) => Err(streambus_log::LogError::InvalidBatch(e)),
    })
    .await
    .map_err(join_error)
}

/// A storage task that did not finish: cancelled because the node is
/// shutting down (retriable, elsewhere or later), or a bug.
pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    if e.is_cancelled() {
        Error::new(
            Reason::ShuttingDown,
            "the storage node is shutting down; the request may or may not have been applied",
        )
    } else {
        Error::new(Reason::Internal, format!("storage task failed: {e}"))
    }
}

/// How long an idempotent producer's batch that arrived before the batch
/// preceding it in the producer's sequence waits for it. A gateway keeps
/// several batches of a partition in flight and sends them in order, but
/// two requests can still overtake each other on the way.
const ORDERING_WAIT: Duration = Duration::from_millis(100);

/// Whether sequence `got` is ahead of `expected` (a batch before it is
/// missing), in the wrapping sequence space `0..=i32::MAX`.
fn sequence_ahead(expected: i32, got: i32) -> bool {
    let space = i64::from(i32::MAX) + 1;
    let distance = (i64::from(got) - i64::from(expected)).rem_euclid(space);
    distance > 0 && distance < space / 2
}

/// Appends `bytes` as the leader at `epoch`. An idempotent producer's batch
/// whose predecessor has not arrived yet (its sequence is ahead of what the
/// log expects, which for an unknown producer is 0) waits up to
/// [`ORDERING_WAIT`] for appends to the log before it is appended, or
/// refused with the log's `OutOfOrderSequence`.
pub(crate) async fn append_in_order(
    replica: &Arc<crate::replica::Replica>,
    bytes: &bytes::Bytes,
    epoch: i32,
) -> Result<Result<streambus_log::AppendInfo, streambus_log::LogError>, Error> {
    let deadline = tokio::time::Instant::now() + ORDERING_WAIT;
    loop {
        // Subscribed before the attempt, so an append landing meanwhile
        // is not missed.
        let mut end = replica.watch_end();
        // Shared with the request, not copied: the log stamps offsets and
        // epoch in a header of its own.
        let batch = bytes.clone();
        let log_replica = replica.clone();
        // The replica learns of the append on the blocking thread: a caller
        // that gives up (its deadline passed) drops this future, and the
        // append must still move the log end the followers wait for and
        // the leader's own offset in the high watermark.
        let parent = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            // The write and, under `fsync.policy=always`, its fsync.
            let _span = (!parent.is_none() && trace::enabled()).then(|| {
                tracing::info_span!(
                    parent: &parent,
                    "log append",
                    streambus.fsync = matches!(
                        log_replica.config().fsync_policy,
                        streambus_cluster::topic_config::FsyncSetting::Always
                    ),
                )
                .entered()
            });
            let result = log_replica.log.append_with_epoch(&batch, epoch);
            log_replica.advance_high_watermark();
            result
        })
        .await
        .map_err(join_error)?;
        let ahead = matches!(
            &result,
            Err(streambus_log::LogError::OutOfOrderSequence { expected, got, .. })
                if sequence_ahead(*expected, *got)
        );
        if !ahead
            || !matches!(
                tokio::time::timeout_at(deadline, end.changed()).await,
                Ok(Ok(()))
            )
        {
            return Ok(result);
        }
    }
}

impl AckWait {
    /// For `acks=all`: this node's lease is valid when another replica
    /// could have been elected (a leader cut off from the controller may
    /// already have been replaced; a sole replica cannot be), and the
    /// committed ISR has at least `min.insync.replicas` members.
    pub(crate) fn check_replicas(
        &self,
        replica: &crate::replica::Replica,
        p: &PartitionRef,
        after_append: bool,
    ) -> Result<(), Error> {
        let when = if after_append {
            "after the append (the batch may still be committed)"
        } else {
            "nothing was appended"
        };
        let (_, replicas) = replica.epoch_and_replicas();
        if replicas > 1 && !self.lease.valid() {
            return Err(self.partitions.not_leader_because(
                &p.topic,
                p.partition,
                0,
                &format!("this node's controller lease may have lapsed; {when}"),
            ));
        }
        let isr = replica.isr_len();
        let min = replica.config().min_insync_replicas as usize;
        if isr < min {
            return Err(Error::new(
                Reason::NotEnoughReplicas,
                format!(
                    "{}/{} has {isr} in-sync replicas, min.insync.replicas is {min}; {when}",
                    p.topic, p.partition
                ),
            ));
        }
        Ok(())
    }

    /// Waits until the high watermark covers `target` (every in-sync
    /// replica has the batch), failing when the leadership moves, the ISR
    /// falls below `min.insync.replicas`, or the ack timeout passes.
    pub(crate) async fn wait_replicated(
        &self,
        replica: &crate::replica::Replica,
        p: &PartitionRef,
        leader_epoch: u64,
        target: i64,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut hw = replica.watch_high_watermark();
        loop {
            if *hw.borrow_and_update() >= target {
                return Ok(());
            }
            if !replica.is_leader() || replica.epoch_and_replicas().0 != leader_epoch {
                return Err(self.partitions.not_leader_because(
                    &p.topic,
                    p.partition,
                    replica.view().leader,
                    "the leadership moved before the batch was replicated; it may or may not be committed",
                ));
            }
            self.check_replicas(replica, p, true)?;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    Reason::Timeout,
                    format!(
                        "{}/{}: the in-sync replicas did not confirm the batch within {} ms; it may still be committed",
                        p.topic,
                        p.partition,
                        self.timeout.as_millis()
                    ),
                ));
            }
            // Also wake now and then: ISR and leadership changes do not
            // move the high watermark.
            let _ = tokio::time::timeout(Duration::from_millis(50), hw.changed()).await;
        }
    }
}

impl StorageApi {
    async fn append(&self, req: AppendRequest) -> Result<AppendResponse, Error> {
        let p = partition_ref(req.partition)?;
        let replica = self.partitions.leader_replica(&p.topic, p.partition)?;
        let (leader_epoch, _) = replica.epoch_and_replicas();
        if req.leader_epoch != 0 && req.leader_epoch != leader_epoch {
            return Err(self.partitions.not_leader_because(
                &p.topic,
                p.partition,
                replica.view().leader,
                &format!(
                    "leader epoch {} asked, {} current",
                    req.leader_epoch, leader_epoch
                ),
            ));
        }
        // After the leadership checks: a client with stale metadata learns
        // of the move first.
        self.disk.check_produce()?;
        // The batch is held until it is written (and fsynced, under
        // `fsync.policy=always`), not while followers copy it: replication
        // must find room meanwhile. Past the budget, appends wait (the
        // gateway's writes stay in flight, so producers are slowed by flow
        // control), then `OVERLOADED` with nothing written.
        let held = self
            .appends
            .acquire(req.batch.len(), self.acks.timeout)
            .await?;
        let epoch = i32::try_from(leader_epoch).unwrap_or(i32::MAX);
        let acks_all = matches!(
            Acks::try_from(req.acks).unwrap_or(Acks::All),
            Acks::All | Acks::Unspecified
        );
        if acks_all {
            self.acks.check_replicas(&replica, &p, false)?;
        }
        // Validation decompresses a compressed batch: reserve its bound
        // first, so concurrent appends cannot expand without limit.
        let expansion = reserve_decompression(&self.decompression, &req.batch).await?;
        let started = Instant::now();
        let batch = match replica.config().compression_type.codec() {
            Some(codec) => apply_compression_type(&replica, req.batch, codec)
                .await?
                .map_err(|e| {
                    self.metrics.append_errors.inc();
                    log_error(&p.topic, p.partition, e)
                })?,
            None => req.batch,
        };
        let result = append_in_order(&replica, &batch, epoch).await?;
        drop((batch, expansion, held));
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                self.metrics.append_errors.inc();
                return Err(log_error(&p.topic, p.partition, e));
            }
        };
        if info.duplicate {
            self.metrics.duplicate_batches.inc();
        }
        let traced = trace::in_trace();
        if traced
            && !info.duplicate
            && let Some(traceparent) = trace::current_traceparent()
        {
            replica.note_trace(info.base_offset, traceparent);
        }
        if acks_all {
            // A duplicate is acknowledged once its original is replicated.
            let wait = self
                .acks
                .wait_replicated(&replica, &p, leader_epoch, info.last_offset + 1);
            if traced {
                wait.instrument(tracing::info_span!("await replication"))
                    .await?;
            } else {
                wait.await?;
            }
        }
        self.metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        if !info.duplicate {
            self.metrics
                .appended_records
                .inc_by(info.record_count as u64);
            self.metrics.appended_bytes.inc_by(info.size as u64);
        }
        Ok(AppendResponse {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            record_count: info.record_count as u32,
            high_watermark: replica.high_watermark(),
        })
    }

    /// Serves a follower: divergence check, then whole batches from its
    /// fetch offset up to the log end (long poll).
    async fn replica_fetch(&self, req: ReplicaFetchRequest) -> Result<ReplicaFetchResponse, Error> {
        let p = partition_ref(req.partition)?;
        let replica = self.partitions.leader_replica(&p.topic, p.partition)?;
        let view = replica.view();
        if req.topic_id != replica.topic_id {
            return Err(self.partitions.not_leader_because(
                &p.topic,
                p.partition,
                view.leader,
                &format!(
                    "topic id {} asked, {} hosted",
                    req.topic_id, replica.topic_id
                ),
            ));
        }
        if req.leader_epoch != view.leader_epoch {
            return Err(self.partitions.not_leader_because(
                &p.topic,
                p.partition,
                view.leader,
                &format!(
                    "leader epoch {} asked, {} current",
                    req.leader_epoch, view.leader_epoch
                ),
            ));
        }
        if !view.replicas.contains(&req.replica_id) || req.replica_id == view.leader {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "node {} is not a follower of {}/{}",
                    req.replica_id, p.topic, p.partition
                ),
            ));
        }
        let log = &replica.log;
        let response =
            |batches: bytes::Bytes, diverging: Option<DivergingEpoch>| ReplicaFetchResponse {
                batches,
                high_watermark: replica.high_watermark(),
                log_start_offset: log.log_start_offset(),
                log_end_offset: log.end_offset(),
                diverging,
                traces: Vec::new(),
            };
        let offset = req.fetch_offset;
        if req.last_fetched_epoch >= 0 {
            let diverging = match log.end_offset_for_epoch(req.last_fetched_epoch) {
                Some((e, end)) if e == req.last_fetched_epoch && end >= offset => None,
                Some((e, end)) => Some(DivergingEpoch {
                    epoch: e,
                    end_offset: end,
                }),
                None => Some(DivergingEpoch {
                    epoch: -1,
                    end_offset: log.log_start_offset(),
                }),
            };
            if diverging.is_some() {
                return Ok(response(Default::default(), diverging));
            }
        }
        if offset > log.end_offset() {
            // Only an empty-epoch follower can get here: cut it back.
            return Ok(response(
                Default::default(),
                Some(DivergingEpoch {
                    epoch: log.latest_epoch().unwrap_or(-1),
                    end_offset: log.end_offset(),
                }),
            ));
        }
        if offset < log.log_start_offset() {
            // The follower starts over at the log start it is told.
            return Ok(response(Default::default(), None));
        }
        replica.follower_fetched(req.replica_id, offset, crate::partitions::now_ms() as u64);
        let wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(self.max_fetch_wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut end_rx = replica.watch_end();
        loop {
            let end = *end_rx.borrow_and_update();
            if offset < end {
                let max_bytes = req.max_bytes.clamp(1, self.max_fetch_bytes) as usize;
                let started = std::time::Instant::now();
                let _permit = self.memory.acquire(max_bytes, FETCH_MEMORY_WAIT).await?;
                let r = replica.clone();
                let read = tokio::task::spawn_blocking(move || r.log.read(offset, max_bytes, None))
                    .await
                    .map_err(join_error)?
                    .map_err(|e| log_error(&p.topic, p.partition, e))?;
                self.metrics.replicated_bytes.inc_by(read.data.len() as u64);
                self.metrics.observe_fetch("follower", started);
                let mut fetched = response(read.data, None);
                if streambus_service::trace::enabled() {
                    fetched.traces = replica
                        .traces_in(offset, read.next_offset)
                        .into_iter()
                        .map(|(base_offset, traceparent)| BatchTrace {
                            base_offset,
                            traceparent,
                        })
                        .collect();
                }
                return Ok(fetched);
            }
            let mut draining = self.draining.clone();
            let changed = tokio::select! {
                c = tokio::time::timeout_at(deadline, end_rx.changed()) => matches!(c, Ok(Ok(()))),
                _ = draining.wait_for(|d| *d) => false,
            };
            if !changed || !replica.is_leader() {
                return Ok(response(Default::default(), None));
            }
        }
    }

    async fn fetch(&self, req: StorageFetchRequest) -> Result<StorageFetchResponse, Error> {
        self.metrics.fetch_requests.inc();
        let p = partition_ref(req.partition)?;
        let replica = self.partitions.leader_replica(&p.topic, p.partition)?;
        let wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(self.max_fetch_wait);
        let max_bytes = if req.max_bytes == 0 {
            1024 * 1024
        } else {
            req.max_bytes.min(self.max_fetch_bytes)
        } as usize;
        let offset = req.offset;
        let deadline = tokio::time::Instant::now() + wait;
        let mut hw_rx = replica.watch_high_watermark();
        loop {
            let hw = *hw_rx.borrow_and_update();
            let log_start = replica.log.log_start_offset();
            let end = replica.log.end_offset();
            if offset < log_start {
                return Err(log_error(
                    &p.topic,
                    p.partition,
                    streambus_log::LogError::OffsetBelowStart { offset, log_start },
                ));
            }
            if offset > end {
                return Err(log_error(
                    &p.topic,
                    p.partition,
                    streambus_log::LogError::OffsetAboveEnd { offset, end },
                ));
            }
            if offset < hw && req.wait_only {
                return Ok(StorageFetchResponse {
                    batches: Default::default(),
                    high_watermark: hw,
                    log_start_offset: log_start,
                    next_offset: offset,
                    log_end_offset: end,
                });
            }
            if offset < hw {
                // Held while the response is read and returned; the
                // gateway retries an OVERLOADED subscription fetch.
                let started = std::time::Instant::now();
                let _permit = self
                    .consumer_fetches
                    .acquire(max_bytes, FETCH_MEMORY_WAIT)
                    .await?;
                let r = replica.clone();
                let read =
                    tokio::task::spawn_blocking(move || r.log.read(offset, max_bytes, Some(hw)))
                        .await
                        .map_err(join_error)?
                        .map_err(|e| log_error(&p.topic, p.partition, e))?;
                if !read.data.is_empty() {
                    self.metrics.fetched_bytes.inc_by(read.data.len() as u64);
                    self.metrics.observe_fetch("consumer", started);
                    return Ok(StorageFetchResponse {
                        batches: read.data,
                        high_watermark: hw,
                        log_start_offset: read.log_start_offset,
                        next_offset: read.next_offset,
                        log_end_offset: read.end_offset,
                    });
                }
            }
            // Nothing visible yet: wait for the high watermark to move.
            let mut draining = self.draining.clone();
            let changed = tokio::select! {
                c = tokio::time::timeout_at(deadline, hw_rx.changed()) => matches!(c, Ok(Ok(()))),
                _ = draining.wait_for(|d| *d) => false,
            };
            if !changed {
                return Ok(StorageFetchResponse {
                    batches: Default::default(),
                    high_watermark: replica.high_watermark(),
                    log_start_offset: replica.log.log_start_offset(),
                    next_offset: offset,
                    log_end_offset: replica.log.end_offset(),
                });
            }
        }
    }

    async fn list_offsets(&self, req: ListOffsetsRequest) -> Result<ListOffsetsResponse, Error> {
        let p = partition_ref(req.partition)?;
        let replica = self.partitions.leader_replica(&p.topic, p.partition)?;
        let hw = replica.high_watermark();
        let log_start = replica.log.log_start_offset();
        let offset = match req.query {
            None | Some(list_offsets_request::Query::Latest(_)) => hw,
            Some(list_offsets_request::Query::Earliest(_)) => log_start,
            Some(list_offsets_request::Query::TimestampMs(ts)) => {
                let r = replica.clone();
                let found = tokio::task::spawn_blocking(move || r.log.offset_for_timestamp(ts))
                    .await
                    .map_err(join_error)?
                    .map_err(|e| log_error(&p.topic, p.partition, e))?;
                match found {
                    Some(o) if o < hw => o,
                    _ => -1,
                }
            }
        };
        Ok(ListOffsetsResponse {
            offset,
            log_start_offset: log_start,
            high_watermark: hw,
            log_end_offset: replica.log.end_offset(),
        })
    }
}

#[tonic::async_trait]
impl StorageService for StorageApi {
    type WatchRecordsStream = crate::record_watch::WatchRecordsStream;

    async fn watch_records(
        &self,
        request: Request<tonic::Streaming<WatchRecordsRequest>>,
    ) -> Result<Response<Self::WatchRecordsStream>, Status> {
        let watches = crate::record_watch::Watches {
            partitions: self.partitions.clone(),
            metrics: self.metrics.clone(),
            max_wait: self.max_fetch_wait,
            draining: self.draining.clone(),
        };
        Ok(Response::new(watches.serve(request.into_inner())))
    }

    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let req = request.into_inner();
        // Spans only inside a sampled trace the call carried.
        if !trace::in_trace() {
            return Ok(Response::new(self.append(req).await?));
        }
        let (topic, partition) = req
            .partition
            .as_ref()
            .map_or(("", 0), |p| (p.topic.as_str(), p.partition));
        let span = trace::with_parent(
            tracing::info_span!(
                "append",
                otel.name = %format_args!("append {topic}"),
                messaging.system = "streambus",
                messaging.destination.name = %topic,
                messaging.destination.partition.id = partition,
                messaging.message.body.size = req.batch.len(),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            ),
            None,
        );
        Ok(Response::new(self.append(req).instrument(span).await?))
    }

    async fn fetch(
        &self,
        request: Request<StorageFetchRequest>,
    ) -> Result<Response<StorageFetchResponse>, Status> {
        Ok(Response::new(self.fetch(request.into_inner()).await?))
    }

    async fn replica_fetch(
        &self,
        request: Request<ReplicaFetchRequest>,
    ) -> Result<Response<ReplicaFetchResponse>, Status> {
        Ok(Response::new(
            self.replica_fetch(request.into_inner()).await?,
        ))
    }

    async fn describe_node(
        &self,
        _request: Request<DescribeNodeRequest>,
    ) -> Result<Response<DescribeNodeResponse>, Status> {
        let disk = self.disk.clone();
        let usage = tokio::task::spawn_blocking(move || disk.usage())
            .await
            .map_err(|e| Error::new(Reason::Internal, e.to_string()))?
            .map_err(|e| {
                Error::new(
                    Reason::StorageError,
                    format!("cannot sample the data directory's disk: {e}"),
                )
            })?;
        Ok(Response::new(DescribeNodeResponse {
            disk_total_bytes: usage.total,
            disk_available_bytes: usage.available,
            disk_full: self.disk.is_full(),
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        Ok(Response::new(
            self.groups.heartbeat(request.into_inner()).await?,
        ))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        self.groups.commit(request.into_inner()).await?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let offsets = self.groups.fetch_offsets(request.into_inner()).await?;
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<GroupDescription>, Status> {
        Ok(Response::new(
            self.groups.describe(request.into_inner()).await?,
        ))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        self.groups.delete(request.into_inner()).await?;
        Ok(Response::new(DeleteGroupResponse {}))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let groups = self.groups.list().await?;
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Ok(Response::new(
            self.list_offsets(request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
    use streambus_proto::v1::PartitionDescription;
    use streambus_record::{BatchBuilder, Compression, Record};

    use super::*;

    async fn api(dir: &std::path::Path, budget: usize) -> StorageApi {
        api_with(dir, budget, HashMap::new()).await
    }

    async fn api_with(
        dir: &std::path::Path,
        budget: usize,
        configs: HashMap<String, String>,
    ) -> StorageApi {
        let partitions = Arc::new(Partitions::new(1, dir.to_path_buf()));
        partitions
            .apply_wire(&ClusterMetadata {
                version: 1,
                nodes: vec![StorageNodeInfo {
                    node_id: 1,
                    address: "127.0.0.1:1".into(),
                    alive: true,
                    rack: String::new(),
                    decommissioning: false,
                    max_partitions: 0,
                }],
                topics: vec![TopicMetadata {
                    partial: false,
                    name: "t".into(),
                    topic_id: "id".into(),
                    replication_factor: 1,
                    configs,
                    partitions: vec![PartitionDescription {
                        partition: 0,
                        leader: 1,
                        replicas: vec![1],
                        isr: vec![1],
                        ..PartitionDescription::default()
                    }],
                }],
                ..ClusterMetadata::default()
            })
            .await;
        let mut registry = prometheus_client::registry::Registry::default();
        let acks = AckWait {
            partitions: partitions.clone(),
            lease: {
                let lease = Arc::new(crate::LeaseClock::default());
                lease.renewed(std::time::Instant::now(), Duration::from_secs(3600));
                lease
            },
            timeout: Duration::from_secs(1),
        };
        StorageApi {
            disk: Arc::new(crate::disk::Disk::new(
                dir,
                1,
                crate::disk::Watermark {
                    min_free_bytes: 0,
                    max_used_percent: 100,
                },
            )),
            partitions,
            metrics: Metrics::new(&mut registry),
            max_fetch_wait: Duration::from_millis(10),
            max_fetch_bytes: 1 << 20,
            decompression: MemoryBudget::new("storage_node.decompression_budget_bytes", budget),
            memory: MemoryBudget::new("storage_node.memory_budget_bytes", 64 << 20),
            consumer_fetches: MemoryBudget::new("storage_node.memory_budget_bytes", 48 << 20),
            appends: MemoryBudget::new("storage_node.memory_budget_bytes", 32 << 20),
            draining: tokio::sync::watch::channel(false).1,
            acks: acks.clone(),
            groups: Arc::new(crate::groups::Coordinator::new(
                acks,
                streambus_group::Limits::default(),
                Duration::from_secs(7 * 24 * 3600),
            )),
        }
    }

    fn append(compression: Compression) -> AppendRequest {
        let mut b = BatchBuilder::new(compression);
        for i in 0..100 {
            b.push(&Record {
                value: Some(vec![b'x'; 1000].into()),
                timestamp_ms: i,
                ..Record::default()
            });
        }
        AppendRequest {
            partition: Some(PartitionRef {
                topic: "t".into(),
                partition: 0,
            }),
            batch: b.build(),
            acks: 0,
            leader_epoch: 0,
        }
    }

    #[tokio::test]
    async fn a_disk_past_its_watermark_refuses_appends_and_still_serves_fetches() {
        let tmp = tempfile::tempdir().unwrap();
        let mut api = api(tmp.path(), 1 << 20).await;
        api.append(append(Compression::None)).await.unwrap();
        api.disk = Arc::new(crate::disk::Disk::new(
            tmp.path(),
            1,
            crate::disk::Watermark {
                min_free_bytes: u64::MAX,
                max_used_percent: 100,
            },
        ));
        let err = api.append(append(Compression::None)).await.unwrap_err();
        assert_eq!(err.reason, Reason::DiskFull, "{err}");
        assert!(err.reason.retriable());
        assert!(err.message.contains("storage node 1"), "{err}");
        let replica = api.partitions.leader_replica("t", 0).unwrap();
        assert_eq!(replica.log.end_offset(), 100, "nothing appended");
        let fetched = api
            .fetch(StorageFetchRequest {
                partition: Some(PartitionRef {
                    topic: "t".into(),
                    partition: 0,
                }),
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                wait_only: false,
            })
            .await
            .unwrap();
        assert!(!fetched.batches.is_empty());
        assert_eq!(fetched.next_offset, 100);
    }

    #[tokio::test]
    async fn appends_past_their_share_of_the_budget_wait_then_are_refused_unwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let mut api = api(tmp.path(), 1 << 20).await;
        let req = append(Compression::None);
        let size = req.batch.len();
        // Room for exactly one batch: a second one waits for it.
        api.appends = MemoryBudget::new("storage_node.memory_budget_bytes", size);
        api.acks.timeout = Duration::from_millis(300);
        let held = api.appends.try_acquire(size).unwrap();
        let waiting = {
            let api = &api;
            let req = req.clone();
            async move { api.append(req).await }
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(held);
        };
        let (ack, ()) = tokio::join!(waiting, release);
        assert_eq!(
            ack.unwrap().record_count,
            100,
            "appended once room was made"
        );
        assert_eq!(api.appends.in_use(), 0, "returned after the append");

        let _held = api.appends.try_acquire(size).unwrap();
        let err = api.append(req).await.unwrap_err();
        assert_eq!(err.reason, Reason::Overloaded, "{err}");
        assert!(
            err.message.contains("storage_node.memory_budget_bytes"),
            "{err}"
        );
        let replica = api.partitions.leader_replica("t", 0).unwrap();
        assert_eq!(
            replica.log.end_offset(),
            100,
            "the refused batch was not written"
        );
    }

    #[tokio::test]
    async fn the_leader_stores_batches_with_the_topics_compression_type() {
        let tmp = tempfile::tempdir().unwrap();
        let configs = HashMap::from([("compression.type".to_string(), "zstd".to_string())]);
        let api = api_with(tmp.path(), 256 << 20, configs).await;
        let mut sent = Vec::new();
        for codec in Compression::ALL {
            let req = append(codec);
            sent.extend(streambus_record::decode_records(&req.batch).unwrap());
            let ack = api.append(req).await.unwrap();
            assert_eq!(ack.record_count, 100);
        }
        let fetched = api
            .fetch(StorageFetchRequest {
                partition: Some(PartitionRef {
                    topic: "t".into(),
                    partition: 0,
                }),
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                wait_only: false,
            })
            .await
            .unwrap();
        let mut stored = Vec::new();
        for item in streambus_record::BatchIter::new(&fetched.batches) {
            let (header, batch) = item.unwrap();
            assert_eq!(header.compression(), Ok(Compression::Zstd));
            streambus_record::validate_batch(batch).unwrap();
            stored.extend(streambus_record::decode_records(batch).unwrap());
        }
        assert_eq!(stored.len(), sent.len());
        for (i, (s, r)) in stored.iter().zip(&sent).enumerate() {
            assert_eq!(s.offset, i as i64);
            assert_eq!((&s.value, s.timestamp_ms), (&r.value, r.timestamp_ms));
        }
        // A batch that does not decompress is refused, nothing appended.
        let mut bad = append(Compression::Lz4);
        let mut bytes = bad.batch.to_vec();
        bytes.truncate(bytes.len() - 10);
        let len = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = streambus_record::compute_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bad.batch = bytes.into();
        let err = api.append(bad).await.unwrap_err();
        assert_eq!(err.reason, Reason::CorruptBatch, "{err}");
        assert!(err.message.contains("lz4"), "{err}");
        let replica = api.partitions.leader_replica("t", 0).unwrap();
        assert_eq!(replica.log.end_offset(), 500);
    }

    #[tokio::test]
    async fn compressed_appends_wait_for_decompression_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let api = api(tmp.path(), 1 << 20).await;
        // Everything spent by other requests: a compressed batch is
        // refused, retriably, and nothing is appended.
        let held = api.decompression.try_acquire(1 << 20).unwrap();
        let err = api.append(append(Compression::Lz4)).await.unwrap_err();
        assert_eq!(err.reason, Reason::Overloaded, "{err}");
        assert!(
            err.message
                .contains("storage_node.decompression_budget_bytes")
        );
        // An uncompressed batch needs no expansion.
        assert_eq!(
            api.append(append(Compression::None))
                .await
                .unwrap()
                .base_offset,
            0
        );
        drop(held);
        let ok = api.append(append(Compression::Lz4)).await.unwrap();
        assert_eq!(ok.base_offset, 100);
        // The reservation was returned after the append.
        assert_eq!(api.decompression.in_use(), 0);
    }

    /// An idempotent batch of `records` records for producer 7.
    fn producer_append(sequence: i32, records: i64) -> AppendRequest {
        let mut b = BatchBuilder::new(Compression::None).with_producer(7, 0, sequence);
        for i in 0..records {
            b.push(&Record {
                value: Some(
                    format!("seq {}", i64::from(sequence) + i)
                        .into_bytes()
                        .into(),
                ),
                timestamp_ms: 1,
                ..Record::default()
            });
        }
        AppendRequest {
            partition: Some(PartitionRef {
                topic: "t".into(),
                partition: 0,
            }),
            batch: b.build(),
            acks: v1_acks_leader(),
            leader_epoch: 0,
        }
    }

    fn v1_acks_leader() -> i32 {
        Acks::Leader as i32
    }

    #[tokio::test]
    async fn a_batch_overtaking_its_predecessor_waits_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let api = Arc::new(api(tmp.path(), 1 << 20).await);
        api.append(producer_append(0, 5)).await.unwrap();
        // Sequence 10 arrives before 5: it waits, 5 is appended, then 10.
        let ahead = tokio::spawn({
            let api = api.clone();
            async move { api.append(producer_append(10, 5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!ahead.is_finished(), "the later batch must wait");
        let middle = api.append(producer_append(5, 5)).await.unwrap();
        assert_eq!(middle.base_offset, 5);
        assert_eq!(ahead.await.unwrap().unwrap().base_offset, 10);
    }

    #[tokio::test]
    async fn a_gap_that_is_never_filled_is_refused_after_the_ordering_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let api = api(tmp.path(), 1 << 20).await;
        api.append(producer_append(0, 5)).await.unwrap();
        let started = Instant::now();
        let err = api.append(producer_append(10, 5)).await.unwrap_err();
        assert_eq!(err.reason, Reason::OutOfOrderSequence, "{err}");
        assert!(
            started.elapsed() >= ORDERING_WAIT,
            "{:?}",
            started.elapsed()
        );
        // A batch behind what the log expects is refused at once.
        let started = Instant::now();
        let err = api.append(producer_append(3, 1)).await.unwrap_err();
        assert_eq!(err.reason, Reason::OutOfOrderSequence, "{err}");
        assert!(started.elapsed() < ORDERING_WAIT, "{:?}", started.elapsed());
        assert_eq!(
            api.append(producer_append(5, 5)).await.unwrap().base_offset,
            5
        );
    }

    #[tokio::test]
    async fn a_new_producers_second_batch_arriving_first_waits_for_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let api = Arc::new(api(tmp.path(), 1 << 20).await);
        let second = tokio::spawn({
            let api = api.clone();
            async move { api.append(producer_append(5, 5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "an unknown producer's batch 5 waits");
        assert_eq!(
            api.append(producer_append(0, 5)).await.unwrap().base_offset,
            0
        );
        assert_eq!(second.await.unwrap().unwrap().base_offset, 5);
    }

    #[test]
    fn an_append_whose_caller_gave_up_still_moves_the_high_watermark() {
        // One blocking thread, kept busy: the append's log work is queued
        // behind it, so the caller surely gives up before it runs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        rt.block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let api = api(tmp.path(), 1 << 20).await;
            let (release, held) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || held.recv());
            // Dropped while its log append waits, as when the gateway's
            // attempt deadline passes.
            let gave_up =
                tokio::time::timeout(Duration::from_millis(50), api.append(producer_append(0, 5)));
            assert!(gave_up.await.is_err());
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
            let replica = api.partitions.leader_replica("t", 0).unwrap();
            let mut end = replica.watch_end();
            tokio::time::timeout(Duration::from_secs(5), end.wait_for(|e| *e == 5))
                .await
                .expect("followers see the new log end")
                .unwrap();
            let mut hw = replica.watch_high_watermark();
            tokio::time::timeout(Duration::from_secs(5), hw.wait_for(|h| *h == 5))
                .await
                .expect("the sole replica commits it")
                .unwrap();
            // The retry finds the batch written: a duplicate, acknowledged
            // at the original offsets.
            let again = api.append(producer_append(0, 5)).await.unwrap();
            assert_eq!((again.base_offset, again.high_watermark), (0, 5));
        });
    }

    #[test]
    fn sequences_ahead_wrap_around() {
        assert!(sequence_ahead(0, 5));
        assert!(!sequence_ahead(5, 0));
        assert!(!sequence_ahead(5, 5));
        assert!(sequence_ahead(i32::MAX - 1, 3));
        assert!(!sequence_ahead(3, i32::MAX - 1));
    }
}
