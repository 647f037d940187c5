//! What the reconcilers share: the Kubernetes client, the event recorder,
//! metrics, backoff, and connections to StreamBus gateways.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Mutex;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;

use crate::backoff::Backoff;
use crate::cluster::resources::{self, Role};
use crate::cluster::tls::{ClusterTls, Pods};
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

/// A cluster's gateways, as the operator calls them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTarget {
    /// `host:port` (or several, comma-separated).
    pub addr: String,
    /// TLS with the cluster's CA, presenting the cluster's certificate;
    /// `None`: plaintext (or an `https://` address with the system's
    /// roots).
    pub tls: Option<ClusterTls>,
}

impl GatewayTarget {
    /// A gateway reached without TLS settings of its own.
    pub fn plain(addr: impl Into<String>) -> GatewayTarget {
        GatewayTarget {
            addr: addr.into(),
            tls: None,
        }
    }
}

impl std::fmt::Display for GatewayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Where a topic's cluster is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// Its gateways.
    Gateway(GatewayTarget),
    /// No such cluster (neither a StreamBusCluster in the namespace nor an
    /// external one).
    NotFound,
    /// A StreamBusCluster whose TLS Secret is missing or unusable: why.
    TlsUnusable(String),
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
            return Ok(ClusterTarget::Gateway(GatewayTarget::plain(addr)));
        }
        let clusters: Api<StreamBusCluster> = Api::namespaced(self.client.clone(), namespace);
        let Some(cluster) = clusters.get_opt(name).await? else {
            return Ok(ClusterTarget::NotFound);
        };
        // The pods as they run decide the transport: a spec.tls change the
        // cluster reconciler refuses does not cut the topics off.
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        let controllers = sets
            .get_opt(&resources::name(name, Role::Controller))
            .await?;
        let secret = match &controllers {
            Some(set) => resources::mounted_tls_secret(set),
            None => cluster.spec.tls.as_ref().map(|t| t.secret_name.clone()),
        };
        let addr = self.cluster_gateway(name, namespace);
        let Some(secret) = secret else {
            return Ok(ClusterTarget::Gateway(GatewayTarget { addr, tls: None }));
        };
        let running = controllers
            .as_ref()
            .and_then(|s| s.spec.replicas)
            .unwrap_or(0);
        let pods = Pods {
            controllers: cluster.spec.controllers.replicas.max(running),
            storage_nodes: cluster.spec.storage_nodes.replicas,
        };
        Ok(
            match self.cluster_tls(namespace, name, &secret, pods).await? {
                Ok(tls) => ClusterTarget::Gateway(GatewayTarget {
                    addr,
                    tls: Some(tls),
                }),
                Err(why) => ClusterTarget::TlsUnusable(why),
            },
        )
    }

    /// Secret `secret` of cluster `cluster`, read and checked
    /// ([`crate::cluster::tls::check`]); the inner `Err` says what is wrong
    /// with it.
    pub async fn cluster_tls(
        &self,
        namespace: &str,
        cluster: &str,
        secret: &str,
        pods: Pods,
    ) -> Result<Result<ClusterTls, String>, kube::Error> {
        Ok(match self.secret_data(namespace, secret).await? {
            Some(data) => crate::cluster::tls::check(secret, &data, cluster, namespace, pods),
            None => Err(format!(
                "no Secret {secret:?} in namespace {namespace:?} (spec.tls.secretName; cert-manager writes it once its Certificate is issued)"
            )),
        })
    }

    /// The data of Secret `name`, `None` if there is no such Secret.
    pub async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        Ok(secrets.get_opt(name).await?.map(|secret| {
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
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

    /// A (cached) connection to `target`'s gateways. A renewed
    /// certificate is a new connection.
    pub async fn gateway(
        &self,
        target: &GatewayTarget,
    ) -> Result<streambus_client::Client, streambus_client::ClientError> {
        let key = match &target.tls {
            None => target.addr.clone(),
            Some(tls) => format!(
                "{} tls {:016x}",
                target.addr,
                fnv([
                    &tls.ca_pem,
                    &tls.cert_pem,
                    &tls.key_pem,
                    tls.server_name.as_bytes()
                ])
            ),
        };
        let mut gateways = self.gateways.lock().await;
        if let Some(client) = gateways.get(&key) {
            return Ok(client.clone());
        }
        let options = streambus_client::ConnectOptions {
            tls: target.tls.as_ref().map(|tls| streambus_client::TlsOptions {
                ca_pem: Some(tls.ca_pem.clone()),
                identity: Some((tls.cert_pem.clone(), tls.key_pem.clone())),
                server_name: Some(tls.server_name.clone()),
            }),
            token: None,
        };
        let client = streambus_client::Client::connect_with(&target.addr, options).await?;
        // Connections made with a certificate since renewed are dropped.
        gateways.retain(|k, _| !k.starts_with(&format!("{} tls ", target.addr)));
        gateways.insert(key, client.clone());
        Ok(client)
    }
}

/// FNV-1a over `parts` (a cache key, not a security measure).
fn fnv<const N: usize>(parts: [&[u8]; N]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain([&0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
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
