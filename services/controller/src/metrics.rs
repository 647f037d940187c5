//! Prometheus metrics of the controller.
//!
//! The caller owns the registry: create [`Metrics::new`] on it and pass the
//! `Arc<Metrics>` to `serve_with_options`. Without one the controller keeps
//! unregistered metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Controller metrics (prefix `streambus_controller_`).
#[derive(Debug, Default)]
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
}

impl Metrics {
    /// Creates the metrics and registers them under `streambus_controller_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
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
        metrics
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
