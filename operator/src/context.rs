//! What the reconcilers share: the Kubernetes client, the event recorder,
//! metrics, backoff, and connections to StreamBus gateways.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Mutex;

use crate::backoff::Backoff;
use crate::crd::StreamBusCluster;
use crate::metrics::Metrics;

/// The field manager and event reporter name.
pub const MANAGER: &str = "streambus-operator";

/// The gRPC port of gateways inside Kubernetes.
pub const GATEWAY_PORT: i32 = 7400;

/// How the operator was configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often every resource is reconciled even without a change (drift
    /// made outside Kubernetes is corrected then).
    pub resync: Duration,
    /// Clusters not managed by this operator, by name: the gateway address
    /// topics labelled with that name are created through.
    pub external_clusters: BTreeMap<String, String>,
    /// Gateway addresses of managed clusters by `namespace/name`, used
    /// instead of their client Service.
    pub cluster_gateways: BTreeMap<String, String>,
    /// How long a restarted pod must be ready before the next one of a
    /// rolling restart is deleted.
    pub restart_settle: Duration,
    /// This replica's name (events' reporting instance, lease holder).
    pub instance: String,
}

/// Shared by every reconciliation.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub backoff: Backoff,
    recorder: Recorder,
    gateways: Mutex<HashMap<String, streambus_client::Client>>,
}

/// Where a topic's cluster is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// The gateway address.
    Gateway(String),
    /// No such cluster (neither a StreamBusCluster in the namespace nor an
    /// external one).
    NotFound,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: kube::Client, settings: Settings, metrics: Metrics) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_string(),
                instance: Some(settings.instance.clone()),
            },
        );
        Context {
            client,
            settings,
            metrics,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            recorder,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an event about `obj`; a failure to publish is logged, never
    /// fails the reconciliation.
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event_related(obj, None, warning, reason, action, note)
            .await;
    }

    /// [`Context::event`] with a related object (e.g. the pod a cluster
    /// restarted); events differing in it are recorded separately.
    pub async fn event_related<K>(
        &self,
        obj: &K,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }

    /// A failed reconciliation of `obj`: counted, logged, and retried after
    /// its backoff delay.
    pub fn retry_later<K>(
        &self,
        kind: &'static str,
        obj: &K,
        error: &dyn std::fmt::Display,
    ) -> Action
    where
        K: Resource<DynamicType = ()>,
    {
        self.metrics.failed(kind);
        let delay = self.backoff.failed(&object_key(kind, obj));
        tracing::warn!(
            kind,
            name = %obj.name_any(),
            namespace = ?obj.namespace(),
            error = %error,
            retry_in = ?delay,
            "reconciliation failed"
        );
        Action::requeue(delay)
    }

    /// Resolves the cluster a topic in `namespace` names.
    pub async fn resolve_cluster(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ClusterTarget, kube::Error> {
        if let Some(addr) = self.settings.external_clusters.get(name) {
            return Ok(ClusterTarget::Gateway(addr.clone()));
        }
        let clusters: Api<StreamBusCluster> = Api::namespaced(self.client.clone(), namespace);
        Ok(match clusters.get_opt(name).await? {
            Some(cluster) => {
                ClusterTarget::Gateway(self.cluster_gateway(&cluster.name_any(), namespace))
            }
            None => ClusterTarget::NotFound,
        })
    }

    /// Where the operator reaches the gateways of managed cluster `name`:
    /// its client Service unless `--cluster-gateway` says otherwise.
    pub fn cluster_gateway(&self, name: &str, namespace: &str) -> String {
        self.settings
            .cluster_gateways
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .unwrap_or_else(|| gateway_endpoint(name, namespace))
    }

    /// A (cached) connection to the gateway at `addr`.
    pub async fn gateway(
        &self,
        addr: &str,
    ) -> Result<streambus_client::Client, streambus_client::ClientError> {
        let mut gateways = self.gateways.lock().await;
        if let Some(client) = gateways.get(addr) {
            return Ok(client.clone());
        }
        let client = streambus_client::Client::connect(addr).await?;
        gateways.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// The backoff key of `obj`.
pub fn object_key<K: Resource<DynamicType = ()>>(kind: &str, obj: &K) -> String {
    format!(
        "{kind}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The client Service address of the gateways of cluster `name`.
pub fn gateway_endpoint(name: &str, namespace: &str) -> String {
    format!("{name}-gateway.{namespace}.svc:{GATEWAY_PORT}")
}
