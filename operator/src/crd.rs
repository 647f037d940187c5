//! The custom resources in `streambus.io/v1alpha1`: their Rust types are
//! the source of the CRD schemas (`streambus-operator crds` prints them;
//! `helm/streambus/crds/` holds the same YAML, checked by a test).

// The derive's `printcolumn(type_ = ..)` attributes repeat keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every StreamBus resource.
pub const GROUP: &str = "streambus.io";
/// The label naming the `StreamBusCluster` a topic belongs to.
pub const CLUSTER_LABEL: &str = "streambus.io/cluster";

/// A topic of a StreamBus cluster, managed from Kubernetes.
///
/// The cluster is named by the `streambus.io/cluster` label (as Strimzi's
/// `KafkaTopic` does): the name of a `StreamBusCluster` in the same
/// namespace, or of an external cluster the operator was told about.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streambus.io",
    version = "v1alpha1",
    kind = "StreamBusTopic",
    namespaced,
    status = "StreamBusTopicStatus",
    shortname = "sbt",
    category = "streambus",
    doc = "A StreamBus topic: created, grown and deleted in the cluster named by the streambus.io/cluster label",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".metadata.labels.streambus\\.io/cluster"
    ),
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topicName"),
    printcolumn(name = "Partitions", type_ = "integer", json_path = ".spec.partitions"),
    printcolumn(
        name = "Replication",
        type_ = "integer",
        json_path = ".status.replicationFactor"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StreamBusTopicSpec {
    /// The topic's name in StreamBus (1-249 characters of `[a-zA-Z0-9._-]`);
    /// defaults to `metadata.name`. Cannot be changed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub topic_name: Option<String>,
    /// Number of partitions. It can grow; StreamBus never removes partitions.
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: u32,
    /// Replicas per partition; omitted = the cluster's default. Cannot be
    /// changed once the topic exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<u32>,
    /// Topic configuration (`retention.ms`, `cleanup.policy`, ...; see
    /// docs/controller.md). Applied when the topic is created; StreamBus
    /// cannot change the configuration of an existing topic yet, so a
    /// difference is reported in the Ready condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// What deleting this resource does to the topic: `Delete` (default)
    /// deletes the topic and its data, `Retain` leaves it in StreamBus.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What happens to a topic when its resource is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the topic and its data.
    #[default]
    Delete,
    /// Keep the topic in StreamBus.
    Retain,
}

/// What the operator last saw and did for a topic.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamBusTopicStatus {
    /// `Ready`: the topic exists as the spec says.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The topic's name in StreamBus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// StreamBus's id of the topic (a new id means it was deleted and
    /// created again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions the topic has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Replicas per partition the topic has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    /// The `spec.config` keys the operator applied: a key later removed
    /// from `spec.config` goes back to its default. Keys never in
    /// `spec.config` are left as the topic has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_keys: Vec<String>,
}

/// A StreamBus cluster: controllers, storage nodes and gateways.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "streambus.io",
    version = "v1alpha1",
    kind = "StreamBusCluster",
    namespaced,
    status = "StreamBusClusterStatus",
    shortname = "sbc",
    category = "streambus",
    doc = "A StreamBus cluster: a StatefulSet of controllers, a StatefulSet of storage nodes and a Deployment of gateways",
    printcolumn(
        name = "Controllers",
        type_ = "string",
        json_path = ".status.controllers.summary"
    ),
    printcolumn(
        name = "Storage",
        type_ = "string",
        json_path = ".status.storageNodes.summary"
    ),
    printcolumn(
        name = "Gateways",
        type_ = "string",
        json_path = ".status.gateways.summary"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.gatewayEndpoint",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StreamBusClusterSpec {
    /// The `streambus` container image (one image serves every role).
    #[schemars(length(min = 1))]
    pub image: String,
    /// The image pull policy; omitted = Kubernetes' default for the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,
    /// The Raft voters holding the cluster's metadata.
    #[serde(default)]
    pub controllers: ControllersSpec,
    /// The nodes holding partition replicas.
    #[serde(default)]
    pub storage_nodes: StorageNodesSpec,
    /// The stateless client-facing gRPC servers.
    #[serde(default)]
    pub gateways: GatewaysSpec,
    /// StreamBus settings as `section.key: value` (the keys of
    /// deploy/streambus.example.toml, e.g. `storage_node.max_fetch_bytes`),
    /// passed to every process as `STREAMBUS_<SECTION>__<KEY>` environment
    /// variables. Keys the operator sets itself (identities, addresses,
    /// data directories, peers) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// TLS on every listener and between the cluster's processes, with the
    /// certificate of a Secret (docs/kubernetes.md#tls-and-authentication).
    /// Omitted: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// TLS for a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret in the cluster's namespace with `tls.crt`, `tls.key` and
    /// `ca.crt` (what cert-manager writes): every process's certificate
    /// and key, and the cluster CA. The certificate must be valid for
    /// `*.<cluster>-controller.<namespace>.svc`,
    /// `*.<cluster>-storage.<namespace>.svc` and
    /// `<cluster>-gateway.<namespace>.svc`, for both server and client
    /// authentication. A renewed certificate is used without a restart.
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// Client certificates at the gateways: `none`, `optional` or
    /// `required`. Other than `none` needs `clientCaSecretName`.
    #[serde(default)]
    pub client_auth: ClientAuthMode,
    /// A Secret with `ca.crt`: the CA of client certificates at the
    /// gateways, which must not be the cluster CA (a certificate of the
    /// cluster CA also opens the controllers and storage nodes). The
    /// gateways also take the cluster's own certificate, which the
    /// operator calls them with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_name: Option<String>,
}

/// Which client certificates gateways ask for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// None.
    #[default]
    None,
    /// A client may present one; if it does, it must verify.
    Optional,
    /// Every client must present one.
    Required,
}

impl ClientAuthMode {
    /// The `tls.client_auth` setting.
    pub fn setting(self) -> &'static str {
        match self {
            ClientAuthMode::None => "none",
            ClientAuthMode::Optional => "optional",
            ClientAuthMode::Required => "required",
        }
    }
}

/// Controllers: 3 or 5 voters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllersSpec {
    /// Number of Raft voters: 3 or 5.
    #[serde(default = "default_controllers")]
    #[schemars(extend("enum" = [3, 5]))]
    pub replicas: i32,
    /// The persistent volume of each controller (the Raft log).
    #[serde(default = "default_controller_storage")]
    pub storage: StorageSpec,
    /// CPU and memory of each controller container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Storage nodes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageNodesSpec {
    /// Number of storage nodes.
    #[serde(default = "default_storage_nodes")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// The persistent volume of each storage node (partition logs).
    #[serde(default = "default_storage_node_storage")]
    pub storage: StorageSpec,
    /// CPU and memory of each storage node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Rack awareness: each storage node's `storage_node.rack` is its
    /// Kubernetes node's topology label, so a partition's replicas are
    /// placed in different zones (or regions), and the pods are spread
    /// across them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackSpec>,
}

/// Where a storage node's rack comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackSpec {
    /// The node label: `topology.kubernetes.io/zone` or
    /// `topology.kubernetes.io/region`, the labels Kubernetes copies onto
    /// pods when it schedules them (node topology labels via the downward
    /// API, on by default since Kubernetes 1.35).
    #[schemars(extend("enum" = ["topology.kubernetes.io/zone", "topology.kubernetes.io/region"]))]
    pub topology_key: String,
}

/// Gateways.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaysSpec {
    /// Number of gateways.
    #[serde(default = "default_gateways")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// CPU and memory of each gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The ServiceAccount gateway pods run as; omitted = the namespace's
    /// `default`. Gateways verifying Kubernetes tokens
    /// (`gateway.auth.kubernetes.enabled`) need one bound to the
    /// `system:auth-delegator` ClusterRole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

/// A PersistentVolumeClaim template.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, a Kubernetes quantity (`10Gi`).
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// The StorageClass; omitted = the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Container resource requests and limits, as Kubernetes quantities.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Resources {
    /// e.g. `{cpu: 500m, memory: 512Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// e.g. `{memory: 1Gi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

fn default_controllers() -> i32 {
    3
}
fn default_storage_nodes() -> i32 {
    3
}
fn default_gateways() -> i32 {
    2
}
fn default_controller_storage() -> StorageSpec {
    StorageSpec {
        size: "1Gi".into(),
        storage_class_name: None,
    }
}
fn default_storage_node_storage() -> StorageSpec {
    StorageSpec {
        size: "10Gi".into(),
        storage_class_name: None,
    }
}

impl Default for ControllersSpec {
    fn default() -> Self {
        ControllersSpec {
            replicas: default_controllers(),
            storage: default_controller_storage(),
            resources: None,
        }
    }
}

impl Default for StorageNodesSpec {
    fn default() -> Self {
        StorageNodesSpec {
            replicas: default_storage_nodes(),
            storage: default_storage_node_storage(),
            resources: None,
            rack: None,
        }
    }
}

impl Default for GatewaysSpec {
    fn default() -> Self {
        GatewaysSpec {
            replicas: default_gateways(),
            resources: None,
            service_account_name: None,
        }
    }
}

/// What the operator last saw of a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamBusClusterStatus {
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and desired controllers.
    #[serde(default)]
    pub controllers: RoleStatus,
    /// Ready and desired storage nodes.
    #[serde(default)]
    pub storage_nodes: RoleStatus,
    /// Ready and desired gateways.
    #[serde(default)]
    pub gateways: RoleStatus,
    /// Where clients reach the gateways inside Kubernetes (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// Storage node ids the operator decommissioned to scale in; each is
    /// recommissioned when the cluster grows back over it. (Always written:
    /// the status is a merge patch, so an omitted list would stay.)
    #[serde(default)]
    pub decommissioned_storage_nodes: Vec<u64>,
}

/// Pods of one role.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Pods ready and of the current revision.
    pub ready: i32,
    /// Pods the spec asks for.
    pub desired: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

impl RoleStatus {
    /// The status of `ready` out of `desired` pods.
    pub fn new(ready: i32, desired: i32) -> RoleStatus {
        RoleStatus {
            ready,
            desired,
            summary: format!("{ready}/{desired}"),
        }
    }
}

/// A status condition, as in `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase word saying why.
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Every CRD as one multi-document YAML stream (what `crds` prints and
/// the chart ships).
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in [StreamBusCluster::crd(), StreamBusTopic::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRDs serialize"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> serde_json::Value {
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn topic_schema_validates_partitions_and_names() {
        let crd = StreamBusTopic::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["sbt".to_string()]));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let schema = schema_of(&crd);
        let spec = &schema["properties"]["spec"];
        assert_eq!(
            spec["properties"]["partitions"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert_eq!(spec["required"], serde_json::json!(["partitions"]));
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            serde_json::json!(["Delete", "Retain"])
        );
        assert!(
            spec["properties"]["topicName"]["pattern"]
                .as_str()
                .unwrap()
                .contains("a-zA-Z0-9._-")
        );
        let columns: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Cluster",
                "Topic",
                "Partitions",
                "Replication",
                "Ready",
                "Reason",
                "Age"
            ]
        );
    }

    #[test]
    fn cluster_schema_allows_only_three_or_five_controllers() {
        let crd = StreamBusCluster::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["sbc".to_string()]));
        let schema = schema_of(&crd);
        let controllers = &schema["properties"]["spec"]["properties"]["controllers"];
        assert_eq!(
            controllers["properties"]["replicas"]["enum"],
            serde_json::json!([3, 5])
        );
    }

    /// The chart ships the CRDs generated from these types; a change to
    /// the types rewrites the file and fails, so it is committed with them.
    #[test]
    fn chart_crds_are_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../helm/streambus/crds/streambus.io.yaml");
        let want = crds_yaml();
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            std::fs::write(&path, &want).unwrap();
            panic!(
                "{} was out of date and has been regenerated: review and commit it",
                path.display()
            );
        }
    }

    #[test]
    fn spec_defaults_fill_omitted_roles() {
        let spec: StreamBusClusterSpec =
            serde_json::from_value(serde_json::json!({"image": "streambus:1"})).unwrap();
        assert_eq!(spec.controllers.replicas, 3);
        assert_eq!(spec.storage_nodes.replicas, 3);
        assert_eq!(spec.gateways.replicas, 2);
        assert_eq!(spec.storage_nodes.storage.size, "10Gi");
    }
}
