//! Prometheus metrics of the controller.
//!
//! The caller owns the registry: create [`Metrics::new`] on it and pass the
//! `Arc<Metrics>` to `serve_with_options`. Without one the controller keeps
//! unregistered metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Controller metrics (prefix `streambus_controller_`).
#[derive(Debug)]
pub struct Metrics {
    /// Commands proposed to Raft by this controller.
    pub raft_proposals: Counter,
    /// Proposals that Raft did not commit (lost leadership, timeout,
    /// shutdown); commands the state machine rejected are not counted.
    pub raft_proposal_failures: Counter,
    /// Current Raft term.
    pub raft_term: Gauge,
    /// 1 while this controller is the Raft leader.
    pub is_leader: Gauge,
    /// Last applied Raft log index (the metadata version).
    pub metadata_version: Gauge,
    /// Topics in the applied metadata.
    pub topics: Gauge,
    /// Storage nodes marked alive in the applied metadata.
    pub storage_nodes_alive: Gauge,
    /// Times the Raft store failed a write and the controller started over
    /// from its store on disk.
    pub store_failures: Counter,
    /// Times this controller saw the Raft leader change (a new leader, or
    /// none).
    pub leader_changes: Counter,
    /// Time from proposing a metadata change to its being committed and
    /// applied here, for the changes this controller proposed.
    pub raft_commit_seconds: Histogram,
    /// Partitions without a serving leader in the applied metadata: the
    /// leader's node is not alive, or reports the partition offline.
    pub offline_partitions: Gauge,
    /// Partitions whose in-sync replicas are fewer than their replicas.
    pub under_replicated_partitions: Gauge,
    /// Connections to the controller's gRPC listener (clients, storage
    /// nodes, gateways and other controllers).
    pub connections: streambus_service::grpc::Connections,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            raft_proposals: Counter::default(),
            raft_proposal_failures: Counter::default(),
            raft_term: Gauge::default(),
            is_leader: Gauge::default(),
            metadata_version: Gauge::default(),
            topics: Gauge::default(),
            storage_nodes_alive: Gauge::default(),
            store_failures: Counter::default(),
            leader_changes: Counter::default(),
            raft_commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            offline_partitions: Gauge::default(),
            under_replicated_partitions: Gauge::default(),
            connections: Default::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `streambus_controller_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        metrics
            .connections
            .register(registry, "streambus_controller");
        let r = registry.sub_registry_with_prefix("streambus_controller");
        r.register(
            "raft_proposals",
            "Commands proposed to Raft by this controller",
            metrics.raft_proposals.clone(),
        );
        r.register(
            "raft_proposal_failures",
            "Raft proposals that failed",
            metrics.raft_proposal_failures.clone(),
        );
        r.register("raft_term", "Current Raft term", metrics.raft_term.clone());
        r.register(
            "is_leader",
            "1 while this controller is the Raft leader",
            metrics.is_leader.clone(),
        );
        r.register(
            "metadata_version",
            "Last applied Raft log index",
            metrics.metadata_version.clone(),
        );
        r.register(
            "topics",
            "Topics in the applied metadata",
            metrics.topics.clone(),
        );
        r.register(
            "storage_nodes_alive",
            "Storage nodes marked alive",
            metrics.storage_nodes_alive.clone(),
        );
        r.register(
            "store_failures",
            "Times the Raft store failed a write and the controller started over from disk",
            metrics.store_failures.clone(),
        );
        r.register(
            "leader_changes",
            "Times this controller saw the Raft leader change",
            metrics.leader_changes.clone(),
        );
        r.register(
            "raft_commit_seconds",
            "Time from proposing a metadata change to its being committed and applied",
            metrics.raft_commit_seconds.clone(),
        );
        r.register(
            "offline_partitions",
            "Partitions without a serving leader (leader node not alive, or reporting the partition offline)",
            metrics.offline_partitions.clone(),
        );
        r.register(
            "under_replicated_partitions",
            "Partitions with fewer in-sync replicas than replicas",
            metrics.under_replicated_partitions.clone(),
        );
        metrics
    }

    /// Sets the partition health gauges from the applied metadata.
    pub fn observe_partitions(&self, md: &crate::metadata::Metadata) {
        let alive: std::collections::HashSet<u64> = md.alive_nodes().into_iter().collect();
        let (mut offline, mut under) = (0i64, 0i64);
        for topic in md.topics.values() {
            for p in topic.partitions.iter() {
                if !alive.contains(&p.leader) || p.offline_replicas.contains(&p.leader) {
                    offline += 1;
                }
                if p.isr.len() < p.replicas.len() {
                    under += 1;
                }
            }
        }
        self.offline_partitions.set(offline);
        self.under_replicated_partitions.set(under);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_controller_prefix() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.raft_proposals.inc();
        metrics.is_leader.set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("streambus_controller_raft_proposals_total 1"),
            "{text}"
        );
        assert!(text.contains("streambus_controller_is_leader 1"), "{text}");
        assert!(text.contains("streambus_controller_raft_term"), "{text}");
        assert!(text.contains("streambus_controller_topics"), "{text}");
    }
}
