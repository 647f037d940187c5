//! The StreamBus Kubernetes operator: reconciles `StreamBusCluster`
//! resources into StatefulSets, a Deployment, Services, a ConfigMap and
//! PodDisruptionBudgets, and `StreamBusTopic` resources into topics through
//! StreamBus's public admin API. One replica reconciles at a time (a
//! coordination.k8s.io Lease); the decisions are pure functions
//! (`topic::plan`, `cluster::resources`, `cluster::status`, `lease::decide`).

pub mod backoff;
pub mod cluster;
pub mod conditions;
pub mod context;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod run;
pub mod topic;
