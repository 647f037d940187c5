//! Gateway metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of per-method metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method name.
    pub method: &'static str,
}

/// The labels of per-topic metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

/// The labels of a consumer group's partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupPartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

/// Gateway metrics, registered under the `streambus_gateway` prefix.
#[derive(Clone)]
pub struct Metrics {
    /// Records acknowledged to producers.
    pub produced_records: Counter,
    /// Batch bytes acknowledged to producers.
    pub produced_bytes: Counter,
    /// Records sent to consumers.
    pub consumed_records: Counter,
    /// Batch bytes sent to consumers.
    pub consumed_bytes: Counter,
    /// Batch bytes acknowledged to producers, per topic.
    pub topic_produced_bytes: Family<TopicLabels, Counter>,
    /// Batch bytes sent to consumers, per topic.
    pub topic_consumed_bytes: Family<TopicLabels, Counter>,
    /// Request latency by method (produce batches count one each on
    /// streams).
    pub request_seconds: Family<MethodLabels, Histogram>,
    /// Failed requests by method.
    pub request_errors: Family<MethodLabels, Counter>,
    /// Every attempt of a request to a storage node, by its method and
    /// the node's address (long-poll fetches include their wait).
    pub storage_request_seconds: Family<crate::router::HopLabels, Histogram>,
    /// How long calls waited for their principal's quota, by kind.
    pub throttle_seconds: Family<crate::quota::ThrottleLabels, Histogram>,
    /// Appends to storage nodes in flight now (every acks mode).
    pub in_flight_writes: Gauge,
    /// Batch bytes of the appends in flight now.
    pub in_flight_bytes: Gauge,
    /// The memory budgets, reported at every scrape
    /// (`streambus_gateway_memory_{budget,used}_bytes`, `_memory_waiters`).
    pub budgets: streambus_service::budget::Budgets,
    /// Client connections (`streambus_gateway_connections`,
    /// `_connections_accepted_total`).
    pub connections: streambus_service::grpc::Connections,
    /// Group members whose `ConsumeGroup` stream this gateway serves.
    pub group_members: Gauge,
    /// Offset commits for groups (streams and `CommitOffsets`).
    pub group_commits: Counter,
    /// Per partition a member here owns: records between the group's
    /// committed offset and the partition's high watermark.
    pub group_lag: Family<GroupPartitionLabels, Gauge>,
    /// The same partitions: how long ago the first record not yet
    /// committed was produced (by its batch's first timestamp); 0 without
    /// lag.
    pub group_lag_seconds: Family<GroupPartitionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    /// Drops a partition's lag series (it left the member's assignment).
    pub fn forget_lag(&self, labels: &GroupPartitionLabels) {
        self.group_lag.remove(labels);
        self.group_lag_seconds.remove(labels);
    }
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            produced_records: Counter::default(),
            produced_bytes: Counter::default(),
            consumed_records: Counter::default(),
            consumed_bytes: Counter::default(),
            topic_produced_bytes: Family::default(),
            topic_consumed_bytes: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            request_errors: Family::default(),
            storage_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            throttle_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            in_flight_writes: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            budgets: Default::default(),
            connections: Default::default(),
            group_members: Gauge::default(),
            group_commits: Counter::default(),
            group_lag: Family::default(),
            group_lag_seconds: Family::default(),
        };
        registry.register_collector(Box::new(streambus_service::budget::BudgetCollector::new(
            "streambus_gateway",
            m.budgets.clone(),
        )));
        m.connections.register(registry, "streambus_gateway");
        let r = registry.sub_registry_with_prefix("streambus_gateway");
        r.register(
            "produced_records",
            "Records acknowledged to producers",
            m.produced_records.clone(),
        );
        r.register(
            "produced_bytes",
            "Batch bytes acknowledged to producers",
            m.produced_bytes.clone(),
        );
        r.register(
            "consumed_records",
            "Records sent to consumers",
            m.consumed_records.clone(),
        );
        r.register(
            "consumed_bytes",
            "Batch bytes sent to consumers",
            m.consumed_bytes.clone(),
        );
        r.register(
            "topic_produced_bytes",
            "Batch bytes acknowledged to producers, per topic",
            m.topic_produced_bytes.clone(),
        );
        r.register(
            "topic_consumed_bytes",
            "Batch bytes sent to consumers, per topic",
            m.topic_consumed_bytes.clone(),
        );
        r.register(
            "request_seconds",
            "Request latency by method",
            m.request_seconds.clone(),
        );
        r.register(
            "request_errors",
            "Failed requests by method",
            m.request_errors.clone(),
        );
        r.register(
            "storage_request_seconds",
            "Latency of each attempt of a request to a storage node, by method and node (long-poll fetches include their wait)",
            m.storage_request_seconds.clone(),
        );
        r.register(
            "throttle_seconds",
            "How long calls waited for their principal's quota (produce or consume bytes, or calls per second); only calls that waited",
            m.throttle_seconds.clone(),
        );
        r.register(
            "in_flight_writes",
            "Appends to storage nodes in flight (every acks mode)",
            m.in_flight_writes.clone(),
        );
        r.register(
            "in_flight_bytes",
            "Batch bytes of the appends to storage nodes in flight",
            m.in_flight_bytes.clone(),
        );
        r.register(
            "group_members",
            "Consumer group members whose ConsumeGroup stream this gateway serves",
            m.group_members.clone(),
        );
        r.register(
            "group_commits",
            "Consumer group offset commits",
            m.group_commits.clone(),
        );
        r.register(
            "group_lag_records",
            "Records between a consumer group's committed offset and the high watermark, per partition owned by a member served here",
            m.group_lag.clone(),
        );
        r.register(
            "group_lag_seconds",
            "How long ago the first record a consumer group has not committed was produced, per partition owned by a member served here",
            m.group_lag_seconds.clone(),
        );
        m
    }

    /// Counts `bytes` produced to `topic`.
    pub fn produced(&self, topic: &str, bytes: u64) {
        self.produced_bytes.inc_by(bytes);
        self.topic_produced_bytes
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc_by(bytes);
    }

    /// Counts `bytes` sent to consumers of `topic`.
    pub fn consumed(&self, topic: &str, bytes: u64) {
        self.consumed_bytes.inc_by(bytes);
        self.topic_consumed_bytes
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc_by(bytes);
    }

    /// Records one request's outcome.
    pub fn observe(&self, method: &'static str, started: std::time::Instant, ok: bool) {
        let labels = MethodLabels { method };
        self.request_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if !ok {
            self.request_errors.get_or_create(&labels).inc();
        }
    }
}
