//! A cluster's status from what its StatefulSets and Deployment report: a
//! pure function, unit-tested without a cluster.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

use super::resources::Desired;
use crate::conditions::Update;
use crate::crd::RoleStatus;

/// One role's workload as Kubernetes reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Workload {
    /// Pods ready.
    pub ready: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// Whether the workload controller has seen the latest spec.
    pub observed: bool,
}

/// The three roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub controllers: Workload,
    pub storage_nodes: Workload,
    pub gateways: Workload,
}

/// What a StatefulSet reports.
pub fn of_stateful_set(s: &StatefulSet) -> Workload {
    let status = s.status.clone().unwrap_or_default();
    Workload {
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        observed: seen(s),
    }
}

/// Whether the StatefulSet controller has seen the latest spec (its
/// `updateRevision` is the current template's).
pub fn seen(s: &StatefulSet) -> bool {
    let observed = s.status.as_ref().and_then(|st| st.observed_generation);
    observed.is_some() && observed >= s.metadata.generation
}

/// What a Deployment reports.
pub fn of_deployment(d: &Deployment) -> Workload {
    let status = d.status.clone().unwrap_or_default();
    Workload {
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        observed: status.observed_generation.is_some()
            && status.observed_generation >= d.metadata.generation,
    }
}

/// The status to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub controllers: RoleStatus,
    pub storage_nodes: RoleStatus,
    pub gateways: RoleStatus,
    pub ready: Update,
    pub progressing: Update,
    pub degraded: Update,
}

fn done(w: Workload, desired: i32) -> bool {
    w.observed && w.ready == desired && w.updated == desired
}

/// Conditions and counts for `desired` given `observed`.
pub fn summarize(desired: &Desired, observed: &Observed) -> Summary {
    let roles = [
        ("controllers", observed.controllers, desired.controllers),
        (
            "storage nodes",
            observed.storage_nodes,
            desired.storage_nodes,
        ),
        ("gateways", observed.gateways, desired.gateways),
    ];
    let counts = roles
        .iter()
        .map(|(name, w, d)| format!("{name} {}/{d}", w.ready.min(*d)))
        .collect::<Vec<_>>()
        .join(", ");
    let all_done = roles.iter().all(|(_, w, d)| done(*w, *d));
    let ready = if all_done {
        Update::new(
            "Ready",
            true,
            "AllReplicasReady",
            format!("ready: {counts}"),
        )
    } else {
        Update::new(
            "Ready",
            false,
            "ReplicasNotReady",
            format!("waiting: {counts}"),
        )
    };
    let progressing = if all_done {
        Update::new(
            "Progressing",
            false,
            "Stable",
            "every pod runs the current spec",
        )
    } else {
        let rolling: Vec<&str> = roles
            .iter()
            .filter(|(_, w, d)| !done(*w, *d))
            .map(|(name, _, _)| *name)
            .collect();
        Update::new(
            "Progressing",
            true,
            "RollingOut",
            format!("not yet ready or updated: {}", rolling.join(", ")),
        )
    };
    let degraded = match desired.problems.first() {
        None => Update::new("Degraded", false, "AsSpecified", "the spec is applied"),
        Some(first) => Update::new(
            "Degraded",
            true,
            first.reason,
            desired
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let role = |w: Workload, d: i32| RoleStatus::new(w.ready.min(d), d);
    Summary {
        controllers: role(observed.controllers, desired.controllers),
        storage_nodes: role(observed.storage_nodes, desired.storage_nodes),
        gateways: role(observed.gateways, desired.gateways),
        ready,
        progressing,
        degraded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::resources::{Input, Problem, desired};
    use crate::crd::StreamBusClusterSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn desired_for(storage_nodes: i32) -> Desired {
        let mut spec: StreamBusClusterSpec =
            serde_json::from_value(serde_json::json!({"image": "streambus:1"})).unwrap();
        spec.storage_nodes.replicas = storage_nodes;
        desired(&Input {
            name: "c",
            namespace: "n",
            spec: &spec,
            owner: OwnerReference::default(),
            current_controllers: None,
            storage_nodes,
            tls_identity: None,
            current_tls: None,
        })
        .unwrap()
    }

    fn w(ready: i32, updated: i32) -> Workload {
        Workload {
            ready,
            updated,
            observed: true,
        }
    }

    #[test]
    fn all_roles_ready_make_the_cluster_ready() {
        let d = desired_for(3);
        let s = summarize(
            &d,
            &Observed {
                controllers: w(3, 3),
                storage_nodes: w(3, 3),
                gateways: w(2, 2),
            },
        );
        assert!(s.ready.status);
        assert!(!s.progressing.status);
        assert!(!s.degraded.status);
        assert_eq!(s.controllers.summary, "3/3");
        assert_eq!(s.gateways, RoleStatus::new(2, 2));
    }

    #[test]
    fn a_role_short_of_ready_or_updated_pods_is_progressing() {
        let d = desired_for(3);
        let s = summarize(
            &d,
            &Observed {
                controllers: w(3, 3),
                storage_nodes: w(3, 2),
                gateways: w(1, 2),
            },
        );
        assert!(!s.ready.status);
        assert!(s.progressing.status);
        assert_eq!(
            s.progressing.message,
            "not yet ready or updated: storage nodes, gateways"
        );
        assert_eq!(s.gateways.summary, "1/2");
    }

    #[test]
    fn a_workload_that_has_not_seen_the_spec_is_not_done() {
        let d = desired_for(3);
        let mut gateways = w(2, 2);
        gateways.observed = false;
        let s = summarize(
            &d,
            &Observed {
                controllers: w(3, 3),
                storage_nodes: w(3, 3),
                gateways,
            },
        );
        assert!(!s.ready.status);
    }

    #[test]
    fn held_back_changes_degrade_the_cluster() {
        let mut d = desired_for(3);
        d.problems.push(Problem {
            reason: "ScaleInUnsupported",
            message: "no".into(),
        });
        let s = summarize(&d, &Observed::default());
        assert!(s.degraded.status);
        assert_eq!(s.degraded.reason, "ScaleInUnsupported");
    }
}
