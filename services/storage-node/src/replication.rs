//! The I/O shell around replication: one fetch loop per partition this
//! node follows (long-polling `ReplicaFetch` on the leader, truncating a
//! divergent tail, appending whole batches as the leader stored them), and
//! the loop that carries the leaders' ISR decisions ([`crate::isr`]) to the
//! controller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use streambus_cluster::ControllerClient;
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{
    AlterPartitionRequest, PartitionRef, ReplicaFetchRequest, ReplicaFetchResponse,
};
use streambus_proto::{Error, Reason};
use streambus_service::budget::MemoryBudget;
use tokio::task::AbortHandle;
use tonic::transport::Channel;

use crate::partitions::{Partitions, now_ms};
use crate::replica::{PartitionKey, PartitionView, Replica};

/// Largest replica fetch response asked for.
const FETCH_MAX_BYTES: u32 = 4 * 1024 * 1024;
/// How often leaders decide about their ISR and fetchers are reconciled.
const TICK: Duration = Duration::from_millis(100);
/// Every this many ticks (10 s), every replica is visited. Changes visit
/// every replica at once, appends move the high watermark themselves, and
/// leaders with followers are visited every tick; this pass is the
/// backstop.
const FULL_TICKS: u64 = 100;

/// A running fetch loop.
struct Fetcher {
    replica: Weak<Replica>,
    leader: u64,
    leader_epoch: u64,
    task: AbortHandle,
}

/// Replication on this node: followers' fetch loops and leaders' ISR
/// proposals.
pub struct Replication {
    partitions: Arc<Partitions>,
    controller: ControllerClient,
    incarnation: u64,
    fetch_wait_ms: u32,
    fetchers: Mutex<HashMap<PartitionKey, Fetcher>>,
    clients: Mutex<HashMap<String, StorageServiceClient<Channel>>>,
    metrics: crate::Metrics,
    /// The node's decompression budget, shared with leader appends:
    /// validating a fetched compressed batch reserves from it too.
    decompression: MemoryBudget,
}

impl Replication {
    /// Replication for the replicas in `partitions`.
    pub fn new(
        partitions: Arc<Partitions>,
        controller: ControllerClient,
        incarnation: u64,
        fetch_wait_ms: u32,
        metrics: crate::Metrics,
        decompression: MemoryBudget,
    ) -> Arc<Replication> {
        Arc::new(Replication {
            partitions,
            controller,
            incarnation,
            fetch_wait_ms,
            fetchers: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            metrics,
            decompression,
        })
    }

    fn client(&self, addr: &str) -> Result<StorageServiceClient<Channel>, Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = streambus_service::grpc::channel(addr).map_err(|e| {
            Error::new(
                Reason::Unavailable,
                format!("bad leader address {addr:?}: {e}"),
            )
        })?;
        let c = StorageServiceClient::new(channel)
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Starts a fetch loop for every replica this node follows and stops
    /// the loops of replicas it no longer follows (or that were replaced,
    /// or whose leader or epoch changed).
    pub fn reconcile(self: &Arc<Self>) {
        let node = self.partitions.node_id();
        let mut want: HashMap<PartitionKey, (Arc<Replica>, PartitionView)> = HashMap::new();
        for r in self.partitions.all() {
            let (leader, _, leading) = r.leadership();
            if leader != node && leader != 0 && !leading {
                let view = r.view();
                want.insert((r.topic.clone(), r.partition), (r, view));
            }
        }
        let mut fetchers = self.fetchers.lock().unwrap_or_else(|p| p.into_inner());
        fetchers.retain(|key, f| {
            let keep = want.get(key).is_some_and(|(r, v)| {
                f.leader == v.leader
                    && f.leader_epoch == v.leader_epoch
                    && f.replica.upgrade().is_some_and(|cur| Arc::ptr_eq(&cur, r))
                    && !f.task.is_finished()
            });
            if !keep {
                f.task.abort();
            }
            keep
        });
        for (key, (replica, view)) in want {
            if fetchers.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(self.clone().fetch_loop(replica.clone(), view.clone()));
            fetchers.insert(
                key,
                Fetcher {
                    replica: Arc::downgrade(&replica),
                    leader: view.leader,
                    leader_epoch: view.leader_epoch,
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Stops every fetch loop (shutdown).
    pub fn stop(&self) {
        for (_, f) in self
            .fetchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            f.task.abort();
        }
    }

    /// Follows one partition's leader at one epoch until aborted.
    async fn fetch_loop(self: Arc<Self>, replica: Arc<Replica>, view: PartitionView) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.fetch_once(&replica, &view).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    // The leader moved or is not there yet: metadata will
                    // bring the new one (and replace this loop).
                    if e.reason == Reason::NotLeader {
                        tracing::debug!(topic = %replica.topic, partition = replica.partition, error = %e, "replica fetch refused");
                    } else {
                        tracing::warn!(topic = %replica.topic, partition = replica.partition,
                            leader = view.leader, error = %e, "replica fetch failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn fetch_once(&self, replica: &Arc<Replica>, view: &PartitionView) -> Result<(), Error> {
        let addr = self.partitions.node_address(view.leader).ok_or_else(|| {
            Error::new(
                Reason::NotLeader,
                format!("leader {} has no known address", view.leader),
            )
        })?;
        let mut client = self.client(&addr)?;
        let request = ReplicaFetchRequest {
            partition: Some(PartitionRef {
                topic: replica.topic.clone(),
                partition: replica.partition,
            }),
            topic_id: replica.topic_id.clone(),
            replica_id: self.partitions.node_id(),
            leader_epoch: view.leader_epoch,
            fetch_offset: replica.log.end_offset(),
            last_fetched_epoch: replica.log.latest_epoch().unwrap_or(-1),
            max_bytes: FETCH_MAX_BYTES,
            max_wait_ms: self.fetch_wait_ms,
        };
        let deadline =
            Duration::from_millis(u64::from(self.fetch_wait_ms)) + Duration::from_secs(5);
        let response: ReplicaFetchResponse =
            match tokio::time::timeout(deadline, client.replica_fetch(request)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return Err(Error::from_status(&status)),
                Err(_) => {
                    return Err(Error::new(
                        Reason::Timeout,
                        format!("replica fetch from {addr} timed out"),
                    ));
                }
            };
        let epoch = view.leader_epoch;
        if response.batches.is_empty() && response.log_start_offset > replica.log.end_offset() {
            // Everything this replica has is below the leader's log start
            // (retention ran there while this node was away).
            let r = replica.clone();
            let start = response.log_start_offset;
            tokio::task::spawn_blocking(move || {
                let reset = r.reset_as_follower(epoch, start);
                r.advance_high_watermark();
                reset
            })
            .await
            .map_err(|e| Error::new(Reason::Internal, format!("reset task: {e}")))?
            .map_err(|e| crate::error::log_error(&replica.topic, replica.partition, e))?;
            return Ok(());
        }
        if let Some(d) = response.diverging {
            let r = replica.clone();
            let own_end = r.log.end_offset_for_epoch(d.epoch).map(|(_, end)| end);
            let to = own_end.map_or(d.end_offset, |own| own.min(d.end_offset));
            let to = to.min(r.log.end_offset()).max(0);
            tokio::task::spawn_blocking(move || {
                let truncated = r.truncate_as_follower(epoch, to);
                r.advance_high_watermark();
                truncated
            })
            .await
            .map_err(|e| Error::new(Reason::Internal, format!("truncate task: {e}")))?
            .map_err(|e| crate::error::log_error(&replica.topic, replica.partition, e))?;
            return Ok(());
        }
        if !response.batches.is_empty() {
            self.append_fetched(replica, epoch, response.batches, &response.traces)
                .await?;
        }
        replica.follow_high_watermark(response.high_watermark);
        Ok(())
    }

    /// Appends batches fetched from the leader of `epoch`. Their
    /// validation decompresses compressed batches: the bound is reserved
    /// from the node's decompression budget first (`OVERLOADED` when it
    /// stays spent; the fetch loop backs off and fetches again).
    async fn append_fetched(
        &self,
        replica: &Arc<Replica>,
        epoch: u64,
        batches: bytes::Bytes,
        traces: &[streambus_proto::internal::BatchTrace],
    ) -> Result<(), Error> {
        let _expansion =
            crate::service::reserve_decompression(&self.decompression, &batches).await?;
        // A span for each traced batch, a child of the leader's append of
        // it, for as long as the follower's append (and fsync) takes.
        let _spans: Vec<tracing::Span> = traces
            .iter()
            .filter_map(|t| {
                let parent = streambus_service::trace::context_of(&t.traceparent)?;
                let span = tracing::info_span!(
                    parent: None,
                    "replicate",
                    otel.name = %format_args!("replicate {}", replica.topic),
                    messaging.system = "streambus",
                    messaging.destination.name = %replica.topic,
                    messaging.destination.partition.id = replica.partition,
                    streambus.node_id = replica.node_id,
                    streambus.base_offset = t.base_offset,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                Some(streambus_service::trace::with_parent(span, Some(parent)))
            })
            .collect();
        let r = replica.clone();
        // The replica learns of the append on the blocking thread, even if
        // this fetch loop is aborted meanwhile.
        tokio::task::spawn_blocking(move || {
            let appended = r.append_as_follower(epoch, &batches);
            r.advance_high_watermark();
            appended
        })
        .await
        .map_err(|e| Error::new(Reason::Internal, format!("append task: {e}")))?
        .map_err(|e| crate::error::log_error(&replica.topic, replica.partition, e))?;
        Ok(())
    }

    /// Every tick: leaders decide about their ISR (proposals go to the
    /// controller, one per partition at a time), and fetch loops are
    /// reconciled with the replicas (which a reopen may have replaced).
    ///
    /// Only replicas that lead followers are visited every tick; every
    /// replica (and the fetch loops) every [`FULL_TICKS`] ticks, and at
    /// the next tick whenever the replicas or their leadership changed
    /// ([`Partitions::generation`]). A hundred thousand idle
    /// single-replica partitions then cost a scan every 10 s, not ten a
    /// second.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconciled = None;
        let mut with_followers: Vec<Arc<Replica>> = Vec::new();
        for n in 0u64.. {
            tick.tick().await;
            // A change (a new leader, a new replica) is a full visit at
            // once: it may have added a leader with followers.
            let generation = self.partitions.generation();
            let full = n % FULL_TICKS == 0 || reconciled != Some(generation);
            if full {
                reconciled = Some(generation);
                self.reconcile();
            }
            let now = now_ms() as u64;
            if !full {
                // Only a leader with followers can be under-replicated or
                // below its minimum ISR: the gauges stay current each tick.
                let (mut under, mut below) = (0, 0);
                for r in &with_followers {
                    self.tick_replica(r, now);
                    if let Some((isr, replicas, min_isr)) = r.isr_health() {
                        under += i64::from(isr < replicas);
                        below += i64::from(isr < min_isr);
                    }
                }
                self.metrics.under_replicated.set(under);
                self.metrics.below_min_isr.set(below);
                continue;
            }
            with_followers.clear();
            let (mut led, mut under, mut below) = (0, 0, 0);
            for r in self.partitions.all() {
                self.tick_replica(&r, now);
                if let Some((isr, replicas, min_isr)) = r.isr_health() {
                    led += 1;
                    under += i64::from(isr < replicas);
                    below += i64::from(isr < min_isr);
                    if replicas > 1 {
                        with_followers.push(r);
                    }
                }
            }
            self.metrics.leader_replicas.set(led);
            self.metrics.under_replicated.set(under);
            self.metrics.below_min_isr.set(below);
        }
    }

    fn tick_replica(self: &Arc<Self>, r: &Arc<Replica>, now: u64) {
        // Appends update the replica as they finish; this also catches what
        // no append reported, so nothing the log holds waits longer than a
        // scan to count.
        r.advance_high_watermark();
        if let Some(p) = r.tick(now) {
            let this = self.clone();
            let r = r.clone();
            tokio::spawn(async move { this.propose(r, p).await });
        }
    }

    async fn propose(&self, replica: Arc<Replica>, p: crate::isr::ProposeIsr) {
        let view = replica.view();
        tracing::info!(topic = %replica.topic, partition = replica.partition,
            from = ?view.isr, to = ?p.isr, "proposing an ISR change");
        let request = AlterPartitionRequest {
            node_id: self.partitions.node_id(),
            incarnation: self.incarnation,
            topic: replica.topic.clone(),
            topic_id: replica.topic_id.clone(),
            partition: replica.partition,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: p.isr.clone(),
        };
        match self.controller.alter_partition(request).await {
            Ok(d) => {
                // Apply at once rather than waiting for the watch: the
                // high watermark may move on without a removed member.
                // Metadata applied while the request ran may have moved
                // the leadership on: compare with the view as it is now.
                let view = replica.view();
                if d.leader == view.leader && d.leader_epoch == view.leader_epoch {
                    replica.set_view(
                        PartitionView {
                            leader: d.leader,
                            leader_epoch: d.leader_epoch,
                            partition_epoch: d.partition_epoch,
                            replicas: d.replicas,
                            isr: d.isr,
                        },
                        now_ms() as u64,
                    );
                }
            }
            Err(e) => {
                tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "ISR change refused");
                replica.proposal_failed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
    use streambus_proto::v1::PartitionDescription;
    use streambus_record::{BatchBuilder, Compression, Record};

    use super::*;

    /// A fetched compressed batch is validated within the node's
    /// decompression budget, the one leader appends use.
    #[tokio::test]
    async fn follower_appends_reserve_from_the_decompression_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let partitions = Arc::new(Partitions::new(2, tmp.path().to_path_buf()));
        let node = |node_id| StorageNodeInfo {
            node_id,
            address: format!("127.0.0.1:{node_id}"),
            alive: true,
            rack: String::new(),
            decommissioning: false,
            max_partitions: 0,
        };
        partitions
            .apply_wire(&ClusterMetadata {
                version: 1,
                nodes: vec![node(1), node(2)],
                topics: vec![TopicMetadata {
                    partial: false,
                    name: "t".into(),
                    topic_id: "id".into(),
                    replication_factor: 2,
                    configs: HashMap::new(),
                    partitions: vec![PartitionDescription {
                        partition: 0,
                        leader: 1,
                        leader_epoch: 3,
                        replicas: vec![1, 2],
                        isr: vec![1, 2],
                        ..PartitionDescription::default()
                    }],
                }],
                ..ClusterMetadata::default()
            })
            .await;
        let replica = partitions.replica("t", 0).unwrap();
        assert!(!replica.is_leader());
        let budget = MemoryBudget::new("storage_node.decompression_budget_bytes", 1 << 20);
        let replication = Replication::new(
            partitions.clone(),
            ControllerClient::new(vec!["127.0.0.1:1".into()]).unwrap(),
            1,
            10,
            crate::Metrics::new(&mut prometheus_client::registry::Registry::default()),
            budget.clone(),
        );
        let mut b = BatchBuilder::new(Compression::Lz4);
        for i in 0..100 {
            b.push(&Record {
                value: Some(vec![b'x'; 1000].into()),
                timestamp_ms: i,
                ..Record::default()
            });
        }
        let batch = b.build();

        // Spent by leader appends: the follower's append waits, then is
        // refused retriably, and writes nothing.
        let held = budget.try_acquire(1 << 20).unwrap();
        let err = replication
            .append_fetched(&replica, 3, batch.clone(), &[])
            .await
            .unwrap_err();
        assert_eq!(err.reason, Reason::Overloaded, "{err}");
        assert!(
            err.message
                .contains("storage_node.decompression_budget_bytes"),
            "{}",
            err.message
        );
        assert_eq!(replica.log.end_offset(), 0);

        drop(held);
        replication
            .append_fetched(&replica, 3, batch, &[])
            .await
            .unwrap();
        assert_eq!(replica.log.end_offset(), 100);
        assert_eq!(budget.in_use(), 0, "the reservation was returned");
    }
}
