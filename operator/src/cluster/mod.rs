//! The `StreamBusCluster` reconciler: applies the owned objects
//! ([`resources::desired`]) with server-side apply, restarts and scales the
//! stateful roles only as StreamBus allows ([`roll`]), and reports the
//! roles' readiness ([`status`]).

pub mod resources;
pub mod roll;
pub mod status;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::{self, Update};
use crate::context::{Context, GatewayTarget, MANAGER};
use crate::crd::{StreamBusCluster, StreamBusClusterStatus};
use resources::{Input, Role};

const KIND: &str = "StreamBusCluster";
/// How often a cluster is looked at again while a restart or a scale-in
/// waits.
const PENDING_RECHECK: Duration = Duration::from_secs(3);
/// How long the operator waits for StreamBus to describe itself.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it waits for a decommission or recommission (the gateway
/// retries `INSUFFICIENT_NODES` for 10 s before answering with it).
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a cluster whose TLS Secret is missing or unusable is looked
/// at again (cert-manager may be about to write it).
const TLS_RECHECK: Duration = Duration::from_secs(10);

/// Why a reconciliation failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("the cluster has no owner reference data (uid): {0}")]
    NoOwnerRef(String),
}

/// Runs the reconciler until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters: Api<StreamBusCluster> = Api::all(client.clone());
    Controller::new(clusters, watcher::Config::default())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => {
                    tracing::debug!(cluster = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(e) => tracing::debug!(error = %e, "cluster reconciliation did not finish"),
            }
        })
        .await;
}

fn key(cluster: &StreamBusCluster) -> String {
    crate::context::object_key(KIND, cluster)
}

fn error_policy(cluster: Arc<StreamBusCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.retry_later(KIND, &*cluster, error)
}

async fn apply<K>(client: &kube::Client, namespace: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

async fn reconcile(cluster: Arc<StreamBusCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    ctx.metrics.reconciled(KIND);
    if cluster.metadata.deletion_timestamp.is_some() {
        // Owned objects go with the cluster (garbage collection).
        return Ok(Requeue::await_change());
    }
    let client = &ctx.client;
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let api: Api<StreamBusCluster> = Api::namespaced(client.clone(), &namespace);
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or_else(|| Error::NoOwnerRef(name.clone()))?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let current_replicas = |s: &Option<StatefulSet>| s.as_ref().and_then(|s| s.spec.replicas);
    let controller_set = sets
        .get_opt(&resources::name(&name, Role::Controller))
        .await?;
    let current_controllers = current_replicas(&controller_set);
    let mounted_secret = controller_set.as_ref().map(resources::mounted_tls_secret);
    let current_tls = mounted_secret.as_ref().map(Option::is_some);
    let current_storage_nodes = current_replicas(
        &sets
            .get_opt(&resources::name(&name, Role::StorageNode))
            .await?,
    );
    let mut status = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    if let Some(message) = resources::tls_switch_problem(&cluster.spec, current_tls) {
        refuse_spec(&api, &cluster, &ctx, status, "InvalidSpec", message).await?;
        return Ok(Requeue::requeue(ctx.settings.resync));
    }
    let tls = match &cluster.spec.tls {
        None => None,
        Some(spec_tls) => {
            let pods = tls::Pods {
                controllers: cluster
                    .spec
                    .controllers
                    .replicas
                    .max(current_controllers.unwrap_or(0)),
                storage_nodes: cluster
                    .spec
                    .storage_nodes
                    .replicas
                    .max(current_storage_nodes.unwrap_or(0)),
            };
            let checked = match ctx
                .cluster_tls(&namespace, &name, &spec_tls.secret_name, pods)
                .await?
            {
                Ok(tls) => {
                    let client_ca = match &spec_tls.client_ca_secret_name {
                        None => None,
                        Some(name) => Some(match ctx.secret_data(&namespace, name).await? {
                            Some(data) => tls::check_client_ca(name, &data),
                            None => Err(format!(
                                "no Secret {name:?} in namespace {namespace:?} (spec.tls.clientCaSecretName)"
                            )),
                        }),
                    };
                    match client_ca {
                        Some(Err(e)) => Err(e),
                        _ => ca_change_problem(
                            &ctx,
                            &namespace,
                            mounted_secret.flatten(),
                            spec_tls,
                            &tls,
                        )
                        .await?
                        .map_or(Ok(tls), Err),
                    }
                }
                Err(e) => Err(e),
            };
            match checked {
                Ok(tls) => Some(tls),
                Err(message) => {
                    refuse_spec(&api, &cluster, &ctx, status, "TlsSecretUnusable", message).await?;
                    return Ok(Requeue::requeue(TLS_RECHECK));
                }
            }
        }
    };
    let spec_storage = cluster.spec.storage_nodes.replicas;
    let gateway = GatewayTarget {
        addr: ctx.cluster_gateway(&name, &namespace),
        tls: tls.clone(),
    };
    let mut health = HealthProbe::new(&ctx, &gateway);

    // Scaling storage nodes: in only after decommissioning; a returning id
    // is recommissioned.
    let scale_needs_health = current_storage_nodes.is_some_and(|c| c > spec_storage)
        || status
            .decommissioned_storage_nodes
            .iter()
            .any(|&id| id <= u64::try_from(spec_storage).unwrap_or(0));
    let scale = if scale_needs_health {
        roll::plan_scale(spec_storage, current_storage_nodes, health.get().await)
    } else {
        roll::plan_scale(spec_storage, current_storage_nodes, Err("not needed"))
    };
    let mut refused = None;
    if let Some(call) = scale.call {
        match node_call(&ctx, &gateway, call).await {
            Ok(()) => {
                let (reason, note) = match call {
                    roll::NodeCall::Decommission(id) => {
                        if !status.decommissioned_storage_nodes.contains(&id) {
                            status.decommissioned_storage_nodes.push(id);
                        }
                        (
                            "Decommissioning",
                            format!(
                                "decommissioning storage node {id} to scale in to {spec_storage}"
                            ),
                        )
                    }
                    roll::NodeCall::Recommission(id) => {
                        status.decommissioned_storage_nodes.retain(|&n| n != id);
                        (
                            "Recommissioned",
                            format!(
                                "recommissioned storage node {id}: the cluster grew back over it"
                            ),
                        )
                    }
                };
                ctx.event(&*cluster, false, reason, "Scale", note).await;
            }
            Err(e) => refused = Some(e),
        }
    }
    if scale_needs_health && let Ok(h) = health.get().await {
        // Forget ids below the spec that StreamBus no longer has
        // decommissioning (recommissioned by hand, say).
        let spec_ids = u64::try_from(spec_storage).unwrap_or(0);
        status.decommissioned_storage_nodes.retain(|&id| {
            id > spec_ids
                || h.storage_nodes
                    .iter()
                    .any(|n| n.node_id == id && n.decommissioning)
        });
    }

    let input = Input {
        name: &name,
        namespace: &namespace,
        spec: &cluster.spec,
        owner,
        current_controllers,
        storage_nodes: scale.replicas,
        tls_identity: tls.as_ref().map(|t| t.identity.as_str()),
        current_tls,
    };
    let now = conditions::now();
    let desired = match resources::desired(&input) {
        Ok(d) => d,
        Err(message) => {
            refuse_spec(&api, &cluster, &ctx, status, "InvalidSpec", message).await?;
            return Ok(Requeue::requeue(ctx.settings.resync));
        }
    };
    apply(client, &namespace, &desired.config_map).await?;
    for svc in &desired.services {
        apply(client, &namespace, svc).await?;
    }
    let mut applied_sets = Vec::new();
    for sts in &desired.stateful_sets {
        applied_sets.push(apply(client, &namespace, sts).await?);
    }
    let deployment = apply(client, &namespace, &desired.deployment).await?;
    for pdb in &desired.pdbs {
        apply::<PodDisruptionBudget>(client, &namespace, pdb).await?;
    }

    // Rolling restarts of the stateful roles, one pod at a time.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut roll_sets = Vec::new();
    for (sts, role) in applied_sets
        .iter()
        .zip([Role::Controller, Role::StorageNode])
    {
        let selector = format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/component={}",
            role.component()
        );
        let listed = pods.list(&ListParams::default().labels(&selector)).await?;
        roll_sets.push(roll_set(sts, &listed.items));
    }
    let step = if applied_sets.iter().all(status::seen) {
        let outdated = roll_sets.iter().any(roll::Set::has_outdated);
        let answer = if outdated {
            health.get().await
        } else {
            Err("not needed")
        };
        roll::next_step(
            &roll_sets[0],
            &roll_sets[1],
            answer,
            ctx.settings.restart_settle,
        )
    } else {
        roll::Step::Wait {
            reason: "WaitingForPods",
            message: "the StatefulSets have not seen the spec yet".into(),
        }
    };
    if let roll::Step::Delete { pod, message } = &step {
        pods.delete(pod, &DeleteParams::default()).await?;
        tracing::info!(cluster = %name, namespace, pod, "rolling restart: pod deleted");
        let related = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        };
        ctx.event_related(
            &*cluster,
            Some(related),
            false,
            "RollingRestart",
            "Restart",
            message.clone(),
        )
        .await;
    }

    let observed = status::Observed {
        controllers: status::of_stateful_set(&applied_sets[0]),
        storage_nodes: status::of_stateful_set(&applied_sets[1]),
        gateways: status::of_deployment(&deployment),
    };
    let mut summary = status::summarize(&desired, &observed);
    let pending = match (&step, &scale.waiting) {
        (roll::Step::Delete { message, .. }, _) => Some(("RollingRestart", message.clone())),
        (roll::Step::Wait { reason, message }, _) if summary.progressing.status => {
            Some((*reason, message.clone()))
        }
        (_, Some(waiting)) => Some(("ScalingIn", waiting.clone())),
        _ => None,
    };
    if let Some((reason, message)) = &pending {
        summary.progressing = Update::new("Progressing", true, reason, message.clone());
    }
    if let Some(e) = refused {
        summary.degraded = Update::new("Degraded", true, "ScaleInRefused", e);
    }
    let was_ready =
        conditions::get(&status.conditions, "Ready").is_some_and(|c| c.status == "True");
    let was_degraded = conditions::get(&status.conditions, "Degraded").map(|c| c.message.clone());
    if summary.ready.status && !was_ready {
        ctx.event(
            &*cluster,
            false,
            "Ready",
            "Reconcile",
            summary.ready.message.clone(),
        )
        .await;
    }
    if summary.degraded.status && was_degraded.as_deref() != Some(summary.degraded.message.as_str())
    {
        ctx.event(
            &*cluster,
            true,
            &summary.degraded.reason,
            "Reconcile",
            summary.degraded.message.clone(),
        )
        .await;
    }
    for update in [summary.ready, summary.progressing, summary.degraded] {
        conditions::set(&mut status.conditions, update, generation, &now);
    }
    status.controllers = summary.controllers;
    status.storage_nodes = summary.storage_nodes;
    status.gateways = summary.gateways;
    status.gateway_endpoint = Some(crate::context::gateway_endpoint(&name, &namespace));
    status.observed_generation = generation;
    write_status(&api, &cluster, status).await?;
    ctx.backoff.succeeded(&key(&cluster));
    Ok(Requeue::requeue(if pending.is_some() {
        PENDING_RECHECK
    } else {
        ctx.settings.resync
    }))
}

/// Why moving the pods from Secret `mounted` to the one `spec_tls` names
/// would break the cluster, if it would: a certificate of another CA.
/// Pods restart one at a time, and old and new would not trust each
/// other; a CA is rotated by putting both in `ca.crt` first.
async fn ca_change_problem(
    ctx: &Context,
    namespace: &str,
    mounted: Option<String>,
    spec_tls: &crate::crd::TlsSpec,
    new: &tls::ClusterTls,
) -> Result<Option<String>, Error> {
    let Some(mounted) = mounted.filter(|m| *m != spec_tls.secret_name) else {
        return Ok(None);
    };
    let Some(old) = ctx.secret_data(namespace, &mounted).await? else {
        // Nothing to compare with: the running pods cannot restart anyway.
        return Ok(None);
    };
    Ok(tls::roll_trust_problem(
        &mounted,
        &old,
        &spec_tls.secret_name,
        new,
    ))
}

/// Reports a spec the operator cannot apply (nothing is changed): `Ready`
/// false and `Degraded` with `reason`, and an event when the message is
/// new.
async fn refuse_spec(
    api: &Api<StreamBusCluster>,
    cluster: &StreamBusCluster,
    ctx: &Context,
    mut status: StreamBusClusterStatus,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let generation = cluster.metadata.generation;
    let now = conditions::now();
    let was = conditions::get(&status.conditions, "Degraded").map(|c| c.message.clone());
    if was.as_deref() != Some(message.as_str()) {
        ctx.event(cluster, true, reason, "Reconcile", message.clone())
            .await;
    }
    conditions::set(
        &mut status.conditions,
        Update::new("Ready", false, reason, message.clone()),
        generation,
        &now,
    );
    conditions::set(
        &mut status.conditions,
        Update::new("Degraded", true, reason, message),
        generation,
        &now,
    );
    write_status(api, cluster, status).await?;
    ctx.backoff.succeeded(&key(cluster));
    Ok(())
}

/// StreamBus's own view of the cluster, asked at most once per
/// reconciliation and only when a decision needs it.
struct HealthProbe<'a> {
    ctx: &'a Context,
    gateway: &'a GatewayTarget,
    answer: Option<Result<roll::Health, String>>,
}

impl<'a> HealthProbe<'a> {
    fn new(ctx: &'a Context, gateway: &'a GatewayTarget) -> Self {
        HealthProbe {
            ctx,
            gateway,
            answer: None,
        }
    }

    async fn get(&mut self) -> Result<&roll::Health, &str> {
        if self.answer.is_none() {
            let ask = async {
                let client = self
                    .ctx
                    .gateway(self.gateway)
                    .await
                    .map_err(|e| e.to_string())?;
                client.describe_cluster().await.map_err(|e| e.to_string())
            };
            let answer = match tokio::time::timeout(HEALTH_TIMEOUT, ask).await {
                Ok(r) => r.map_err(|e| format!("gateway {}: {e}", self.gateway)),
                Err(_) => Err(format!(
                    "gateway {} did not answer within {}s",
                    self.gateway,
                    HEALTH_TIMEOUT.as_secs()
                )),
            };
            self.answer = Some(answer);
        }
        match self.answer.as_ref().expect("just set") {
            Ok(h) => Ok(h),
            Err(e) => Err(e),
        }
    }
}

/// Asks StreamBus to decommission or recommission a storage node.
async fn node_call(
    ctx: &Context,
    gateway: &GatewayTarget,
    call: roll::NodeCall,
) -> Result<(), String> {
    let ask = async {
        let client = ctx.gateway(gateway).await.map_err(|e| e.to_string())?;
        match call {
            roll::NodeCall::Decommission(id) => client.decommission_storage_node(id).await,
            roll::NodeCall::Recommission(id) => client.recommission_storage_node(id).await,
        }
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(NODE_CALL_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "gateway {gateway} did not answer within {}s",
            NODE_CALL_TIMEOUT.as_secs()
        )),
    }
}

/// A StatefulSet and its pods as the rolling restart sees them.
fn roll_set(sts: &StatefulSet, pods: &[Pod]) -> roll::Set {
    let now = k8s_openapi::jiff::Timestamp::now();
    let status = sts.status.clone().unwrap_or_default();
    roll::Set {
        replicas: sts.spec.replicas.unwrap_or(1),
        update_revision: status.update_revision,
        pods: pods
            .iter()
            .filter_map(|p| {
                let name = p.metadata.name.clone()?;
                let labels = p.metadata.labels.clone().unwrap_or_default();
                let ordinal = labels
                    .get("apps.kubernetes.io/pod-index")
                    .map(String::as_str)
                    .or_else(|| name.rsplit('-').next())
                    .and_then(|i| i.parse().ok())?;
                let ready_for = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                    .map(|c| {
                        c.last_transition_time.as_ref().map_or(Duration::ZERO, |t| {
                            Duration::try_from(now - t.0).unwrap_or(Duration::ZERO)
                        })
                    });
                Some(roll::Pod {
                    name,
                    ordinal,
                    revision: labels.get("controller-revision-hash").cloned(),
                    ready_for,
                    terminating: p.metadata.deletion_timestamp.is_some(),
                })
            })
            .collect(),
    }
}

async fn write_status(
    api: &Api<StreamBusCluster>,
    cluster: &StreamBusCluster,
    status: StreamBusClusterStatus,
) -> Result<(), Error> {
    if cluster.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}
