//! The `StreamBusCluster` reconciler: applies the owned objects
//! ([`resources::desired`]) with server-side apply and reports the roles'
//! readiness ([`status`]).

pub mod resources;
pub mod status;

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::{self, Update};
use crate::context::{Context, MANAGER, gateway_endpoint};
use crate::crd::{StreamBusCluster, StreamBusClusterStatus};
use resources::{Input, Role};

const KIND: &str = "StreamBusCluster";

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
    let current_replicas = |s: Option<StatefulSet>| s.and_then(|s| s.spec.replicas);
    let input = Input {
        name: &name,
        namespace: &namespace,
        spec: &cluster.spec,
        owner,
        current_controllers: current_replicas(
            sets.get_opt(&resources::name(&name, Role::Controller))
                .await?,
        ),
        current_storage_nodes: current_replicas(
            sets.get_opt(&resources::name(&name, Role::StorageNode))
                .await?,
        ),
    };
    let mut status = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let now = conditions::now();
    let desired = match resources::desired(&input) {
        Ok(d) => d,
        Err(message) => {
            let was = conditions::get(&status.conditions, "Degraded").map(|c| c.message.clone());
            if was.as_deref() != Some(message.as_str()) {
                ctx.event(&*cluster, true, "InvalidSpec", "Reconcile", message.clone())
                    .await;
            }
            conditions::set(
                &mut status.conditions,
                Update::new("Ready", false, "InvalidSpec", message.clone()),
                generation,
                &now,
            );
            conditions::set(
                &mut status.conditions,
                Update::new("Degraded", true, "InvalidSpec", message),
                generation,
                &now,
            );
            write_status(&api, &cluster, status).await?;
            ctx.backoff.succeeded(&key(&cluster));
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
    let observed = status::Observed {
        controllers: status::of_stateful_set(&applied_sets[0]),
        storage_nodes: status::of_stateful_set(&applied_sets[1]),
        gateways: status::of_deployment(&deployment),
    };
    let summary = status::summarize(&desired, &observed);
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
    status.gateway_endpoint = Some(gateway_endpoint(&name, &namespace));
    status.observed_generation = generation;
    write_status(&api, &cluster, status).await?;
    ctx.backoff.succeeded(&key(&cluster));
    Ok(Requeue::requeue(ctx.settings.resync))
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
