//! Storage node metrics.

use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Storage node metrics, registered under the `streambus_storage` prefix.
#[derive(Clone)]
pub struct Metrics {
    /// The memory budgets, reported at every scrape
    /// (`streambus_storage_memory_{budget,used}_bytes`, `_memory_waiters`).
    pub budgets: streambus_service::budget::Budgets,
    /// Records appended.
    pub appended_records: Counter,
    /// Bytes appended (batch bytes as stored).
    pub appended_bytes: Counter,
    /// Bytes returned by fetches.
    pub fetched_bytes: Counter,
    /// Append latency, including fsync under the `always` policy.
    pub append_seconds: Histogram,
    /// Failed appends.
    pub append_errors: Counter,
    /// Partition replicas hosted.
    pub replicas: Gauge,
    /// The node's partition budget (`storage_node.max_partitions`).
    pub max_partitions: Gauge,
    /// fsync and fdatasync calls by every log (data and directories);
    /// exported every 500 ms.
    pub fsyncs: Counter,
    /// Assigned partition replicas that cannot be served (failed to open,
    /// failed fsync); retried every `reopen_interval_ms`.
    pub offline_replicas: Gauge,
    /// Bytes sent to followers by replica fetches.
    pub replicated_bytes: Counter,
    /// Partitions this node leads.
    pub leader_replicas: Gauge,
    /// Partitions this node leads whose ISR is smaller than their replica set.
    pub under_replicated: Gauge,
    /// Partitions this node leads whose ISR is below `min.insync.replicas`
    /// (`acks=all` appends fail).
    pub below_min_isr: Gauge,
    /// Idempotent producers' batches that were already in the log
    /// (retries answered with the original offsets, written once).
    pub duplicate_batches: Counter,
    /// Size of the data directory's file system, in bytes.
    pub disk_total_bytes: Gauge,
    /// Bytes still available there.
    pub disk_available_bytes: Gauge,
    /// 1 while the disk is past its watermark (produce refused with
    /// `DISK_FULL`).
    pub disk_full: Gauge,
    /// Partition-log files open now (the file-handle cache's descriptors);
    /// exported every 500 ms.
    pub open_files: Gauge,
    /// The bound on them (`storage_node.max_open_files`, or derived).
    pub open_files_limit: Gauge,
    /// Files opened again after their descriptor was closed to stay within
    /// the bound (or to keep a removed file readable).
    pub file_reopens: Counter,
    /// Descriptors closed to stay within the bound.
    pub file_evictions: Counter,
    /// Files opened while the bound was reached and every open descriptor
    /// was in use or pinned (the cache went over its bound).
    pub open_files_over_limit: Counter,
    /// Consumer fetch requests served (`Fetch`, including long polls).
    pub fetch_requests: Counter,
    /// Record watches (`WatchRecords`) waiting now.
    pub record_watches: Gauge,
    /// The hosted replicas whose offsets each scrape reports
    /// (`streambus_storage_partition_log_end_offset`, `_high_watermark`).
    pub partitions: PartitionOffsets,
    /// Connections to the node's gRPC listener
    /// (`streambus_storage_connections`, `_connections_accepted_total`).
    pub connections: streambus_service::grpc::Connections,
    /// The logs' fsync latency, read at each scrape
    /// (`streambus_storage_fsync_seconds`).
    pub fsync_latency: FsyncLatency,
    /// Time to read and answer fetches that return records, from when
    /// their records were visible (a long poll's wait before that is not
    /// counted), by kind (`consumer`, `follower`).
    pub fetch_seconds: Family<FetchLabels, Histogram>,
}

/// The labels of fetch latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `consumer` (`Fetch`) or `follower` (`ReplicaFetch`).
    pub kind: &'static str,
}

/// Reports the node's fsync latency histogram at each scrape, from the
/// statistics every log records into ([`FsyncLatency::set`]).
#[derive(Clone, Default)]
pub struct FsyncLatency {
    source: Arc<OnceLock<Arc<streambus_log::FsyncStats>>>,
}

impl FsyncLatency {
    /// The statistics to report.
    pub fn set(&self, stats: Arc<streambus_log::FsyncStats>) {
        let _ = self.source.set(stats);
    }
}

impl std::fmt::Debug for FsyncLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsyncLatency").finish_non_exhaustive()
    }
}

impl Collector for FsyncLatency {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = self.source.get() else {
            return Ok(());
        };
        let s = stats.snapshot();
        let metric = encoder.encode_descriptor(
            "streambus_storage_fsync_seconds",
            "Latency of the partition logs' fsyncs (data and directories, failed ones included)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        let mut metric = metric;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            s.sum_seconds,
            s.count,
            &s.buckets,
            None,
        )
    }
}

/// Reports every hosted replica's log end offset and high watermark at
/// each scrape, labelled by topic, partition and role; set once the
/// node's replicas exist ([`PartitionOffsets::set`]).
#[derive(Clone, Default)]
pub struct PartitionOffsets {
    source: Arc<OnceLock<Weak<crate::partitions::Partitions>>>,
}

impl PartitionOffsets {
    /// The replicas to report.
    pub fn set(&self, partitions: &Arc<crate::partitions::Partitions>) {
        let _ = self.source.set(Arc::downgrade(partitions));
    }
}

impl std::fmt::Debug for PartitionOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionOffsets").finish_non_exhaustive()
    }
}

impl Collector for PartitionOffsets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(partitions) = self.source.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let mut replicas = partitions.all();
        replicas.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        type Read = fn(&crate::replica::Replica) -> i64;
        let series: [(&str, &str, Read); 2] = [
            (
                "streambus_storage_partition_log_end_offset",
                "The offset the next record appended to this replica gets",
                |r| r.log.end_offset(),
            ),
            (
                "streambus_storage_partition_high_watermark",
                "The offset below which this replica's records are committed (visible to consumers)",
                crate::replica::Replica::high_watermark,
            ),
        ];
        for (name, help, read) in series {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in &replicas {
                let partition = r.partition.to_string();
                let role = if r.is_leader() { "leader" } else { "follower" };
                let labels = [
                    ("topic", r.topic.as_str()),
                    ("partition", partition.as_str()),
                    ("role", role),
                ];
                let gauge = prometheus_client::metrics::gauge::ConstGauge::new(read(r));
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Records a fetch of `kind` answered with records, read since
    /// `started`.
    pub fn observe_fetch(&self, kind: &'static str, started: std::time::Instant) {
        self.fetch_seconds
            .get_or_create(&FetchLabels { kind })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sets the replica gauges from what `partitions` hosts now: replicas
    /// served, and assigned replicas reported offline.
    pub fn observe_partitions(&self, partitions: &crate::partitions::Partitions) {
        self.replicas.set(partitions.all().len() as i64);
        self.offline_replicas
            .set(partitions.offline_replicas().len() as i64);
    }

    /// Sets the disk gauges from a usage sample.
    pub fn observe_disk(&self, usage: &crate::disk::Usage, full: bool) {
        self.disk_total_bytes
            .set(i64::try_from(usage.total).unwrap_or(i64::MAX));
        self.disk_available_bytes
            .set(i64::try_from(usage.available).unwrap_or(i64::MAX));
        self.disk_full.set(i64::from(full));
    }

    /// Sets the open-file metrics from the file-handle cache's `now`;
    /// `before` is what the previous call returned. Returns `now`.
    pub fn observe_open_files(
        &self,
        now: &streambus_log::HandleStats,
        before: &streambus_log::HandleStats,
    ) -> streambus_log::HandleStats {
        self.open_files
            .set(i64::try_from(now.open).unwrap_or(i64::MAX));
        self.open_files_limit
            .set(i64::try_from(now.capacity).unwrap_or(i64::MAX));
        self.file_reopens
            .inc_by(now.reopens.saturating_sub(before.reopens));
        self.file_evictions
            .inc_by(now.evictions.saturating_sub(before.evictions));
        self.open_files_over_limit
            .inc_by(now.over_capacity.saturating_sub(before.over_capacity));
        *now
    }

    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            budgets: Default::default(),
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            fetched_bytes: Counter::default(),
            append_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            append_errors: Counter::default(),
            replicas: Gauge::default(),
            max_partitions: Gauge::default(),
            fsyncs: Counter::default(),
            offline_replicas: Gauge::default(),
            replicated_bytes: Counter::default(),
            leader_replicas: Gauge::default(),
            under_replicated: Gauge::default(),
            below_min_isr: Gauge::default(),
            duplicate_batches: Counter::default(),
            disk_total_bytes: Gauge::default(),
            disk_available_bytes: Gauge::default(),
            disk_full: Gauge::default(),
            open_files: Gauge::default(),
            open_files_limit: Gauge::default(),
            file_reopens: Counter::default(),
            file_evictions: Counter::default(),
            open_files_over_limit: Counter::default(),
            fetch_requests: Counter::default(),
            record_watches: Gauge::default(),
            partitions: PartitionOffsets::default(),
            fsync_latency: FsyncLatency::default(),
            connections: Default::default(),
            fetch_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
        };
        registry.register_collector(Box::new(m.partitions.clone()));
        registry.register_collector(Box::new(m.fsync_latency.clone()));
        registry.register_collector(Box::new(streambus_service::budget::BudgetCollector::new(
            "streambus_storage",
            m.budgets.clone(),
        )));
        m.connections.register(registry, "streambus_storage");
        let r = registry.sub_registry_with_prefix("streambus_storage");
        r.register(
            "appended_records",
            "Records appended",
            m.appended_records.clone(),
        );
        r.register("appended_bytes", "Bytes appended", m.appended_bytes.clone());
        r.register(
            "fetched_bytes",
            "Bytes returned by fetches",
            m.fetched_bytes.clone(),
        );
        r.register(
            "append_seconds",
            "Append latency including fsync",
            m.append_seconds.clone(),
        );
        r.register("append_errors", "Failed appends", m.append_errors.clone());
        r.register("replicas", "Partition replicas hosted", m.replicas.clone());
        r.register(
            "max_partitions",
            "The most partition replicas this node may host (storage_node.max_partitions)",
            m.max_partitions.clone(),
        );
        r.register(
            "fsyncs",
            "fsync calls by the partition logs (data and directories)",
            m.fsyncs.clone(),
        );
        r.register(
            "offline_replicas",
            "Assigned partition replicas that cannot be served",
            m.offline_replicas.clone(),
        );
        r.register(
            "duplicate_batches",
            "Idempotent producer batches already in the log, answered with their original offsets",
            m.duplicate_batches.clone(),
        );
        r.register(
            "disk_total_bytes",
            "Size of the file system holding the data directory",
            m.disk_total_bytes.clone(),
        );
        r.register(
            "disk_available_bytes",
            "Bytes available on the file system holding the data directory",
            m.disk_available_bytes.clone(),
        );
        r.register(
            "disk_full",
            "1 while the data directory's disk is past its watermark and produce is refused with DISK_FULL",
            m.disk_full.clone(),
        );
        r.register(
            "open_files",
            "Partition-log files open now (descriptors of the file-handle cache)",
            m.open_files.clone(),
        );
        r.register(
            "open_files_limit",
            "The most partition-log files kept open at once (storage_node.max_open_files or derived)",
            m.open_files_limit.clone(),
        );
        r.register(
            "file_reopens",
            "Partition-log files opened again after their descriptor was closed to stay within the limit",
            m.file_reopens.clone(),
        );
        r.register(
            "file_evictions",
            "Partition-log file descriptors closed to stay within the open-file limit",
            m.file_evictions.clone(),
        );
        r.register(
            "open_files_over_limit",
            "Partition-log files opened past the limit because every open one was in use or pinned",
            m.open_files_over_limit.clone(),
        );
        r.register(
            "fetch_seconds",
            "Time to read and answer fetches that return records, from when they were visible (long-poll waits excluded), by kind (consumer, follower)",
            m.fetch_seconds.clone(),
        );
        r.register(
            "fetch_requests",
            "Consumer fetch requests served, long polls included",
            m.fetch_requests.clone(),
        );
        r.register(
            "record_watches",
            "Record watches of subscriptions waiting for records (WatchRecords)",
            m.record_watches.clone(),
        );
        r.register(
            "replicated_bytes",
            "Bytes sent to followers by replica fetches",
            m.replicated_bytes.clone(),
        );
        r.register(
            "leader_replicas",
            "Partitions this node leads",
            m.leader_replicas.clone(),
        );
        r.register(
            "under_replicated_partitions",
            "Led partitions whose in-sync replica set is smaller than their replica set",
            m.under_replicated.clone(),
        );
        r.register(
            "below_min_isr_partitions",
            "Led partitions with fewer in-sync replicas than min.insync.replicas",
            m.below_min_isr.clone(),
        );
        m
    }
}
