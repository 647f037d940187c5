//! The operator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which reconciler.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `StreamBusTopic` or `StreamBusCluster`.
    pub kind: &'static str,
}

/// Every metric of the operator.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Reconciliations run.
    pub reconciliations: Family<KindLabels, Counter>,
    /// Reconciliations that failed (and were retried with backoff).
    pub reconcile_errors: Family<KindLabels, Counter>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
}

impl Metrics {
    /// Registers every metric under `streambus_operator_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("streambus_operator");
        r.register(
            "reconciliations",
            "Reconciliations run",
            self.reconciliations.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciliations that failed and were retried with backoff",
            self.reconcile_errors.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
    }

    /// Counts one reconciliation of `kind`.
    pub fn reconciled(&self, kind: &'static str) {
        self.reconciliations
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts one failed reconciliation of `kind`.
    pub fn failed(&self, kind: &'static str) {
        self.reconcile_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}
