//! The `StreamBusTopic` reconciler: makes the topic in StreamBus match the
//! resource through the gateway's public `AdminService`, and reports what
//! it found in the status. Decisions are made by [`plan::plan`].

pub mod plan;

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use streambus_client::{ClientError, Reason, v1};

use crate::conditions::{self, Update};
use crate::context::{ClusterTarget, Context};
use crate::crd::{CLUSTER_LABEL, DeletionPolicy, StreamBusTopic, StreamBusTopicStatus};
use plan::{Action, Observed, Plan};

/// The finalizer that deletes the topic in StreamBus.
pub const FINALIZER: &str = "streambus.io/topic";
const KIND: &str = "StreamBusTopic";

/// Why a reconciliation failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("streambus at {addr}: {source}")]
    StreamBus {
        addr: String,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Finalizer(String),
    #[error("cluster {cluster}: {message}")]
    ClusterTls { cluster: String, message: String },
}

/// Runs the reconciler until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let topics: Api<StreamBusTopic> = Api::all(ctx.client.clone());
    Controller::new(topics, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => {
                    tracing::debug!(topic = %obj.name, namespace = ?obj.namespace, "reconciled")
                }
                Err(e) => tracing::debug!(error = %e, "topic reconciliation did not finish"),
            }
        })
        .await;
}

fn key(topic: &StreamBusTopic) -> String {
    crate::context::object_key(KIND, topic)
}

fn error_policy(topic: Arc<StreamBusTopic>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.retry_later(KIND, &*topic, error)
}

async fn reconcile(topic: Arc<StreamBusTopic>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    ctx.metrics.reconciled(KIND);
    let namespace = topic.namespace().unwrap_or_default();
    let api: Api<StreamBusTopic> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = key(&topic);
    let result = finalizer(&api, FINALIZER, topic, |event| async {
        match event {
            Finalizer::Apply(topic) => apply(&api, &topic, &ctx).await,
            Finalizer::Cleanup(topic) => cleanup(&topic, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })?;
    ctx.backoff.succeeded(&key);
    Ok(result)
}

/// The topic's name in StreamBus.
fn topic_name(topic: &StreamBusTopic) -> String {
    topic
        .spec
        .topic_name
        .clone()
        .unwrap_or_else(|| topic.name_any())
}

fn observed(description: &v1::TopicDescription) -> Observed {
    Observed {
        topic_id: description.topic_id.clone(),
        partitions: description.partitions.len() as u32,
        replication_factor: description.replication_factor,
        configs: description
            .configs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The topic as StreamBus has it, `None` when it does not exist.
async fn describe(
    client: &streambus_client::Client,
    addr: &str,
    name: &str,
) -> Result<Option<v1::TopicDescription>, Error> {
    match client.describe_topic(name).await {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.reason() == Some(Reason::UnknownTopic) => Ok(None),
        Err(source) => Err(Error::StreamBus {
            addr: addr.to_string(),
            source,
        }),
    }
}

async fn apply(
    api: &Api<StreamBusTopic>,
    topic: &StreamBusTopic,
    ctx: &Context,
) -> Result<Requeue, Error> {
    let resync = Requeue::requeue(ctx.settings.resync);
    let namespace = topic.namespace().unwrap_or_default();
    let mut status = topic.status.clone().unwrap_or_default();
    let name = topic_name(topic);
    if let Some(previous) = &status.topic_name
        && *previous != name
    {
        let message = format!(
            "the topic is {previous:?} in StreamBus and spec.topicName is now {name:?}: a topic cannot be renamed; restore spec.topicName"
        );
        refuse(
            api,
            topic,
            ctx,
            status,
            "TopicNameChangeUnsupported",
            message,
        )
        .await?;
        return Ok(resync);
    }
    let Some(cluster) = topic.labels().get(CLUSTER_LABEL).cloned() else {
        let message = format!(
            "no {CLUSTER_LABEL} label: set it to the name of the StreamBusCluster (or external cluster) the topic belongs to"
        );
        refuse(api, topic, ctx, status, "NoCluster", message).await?;
        return Ok(resync);
    };
    let target = match ctx.resolve_cluster(&namespace, &cluster).await? {
        ClusterTarget::Gateway(target) => target,
        ClusterTarget::TlsUnusable(why) => {
            let message = format!("cluster {cluster:?} cannot be reached: {why}");
            refuse(api, topic, ctx, status, "ClusterTlsUnusable", message).await?;
            return Ok(resync);
        }
        ClusterTarget::NotFound => {
            let message = format!(
                "no StreamBusCluster {cluster:?} in namespace {namespace:?} and no external cluster of that name"
            );
            refuse(api, topic, ctx, status, "ClusterNotFound", message).await?;
            return Ok(resync);
        }
    };
    let addr = target.addr.clone();
    let client = ctx
        .gateway(&target)
        .await
        .map_err(|source| Error::StreamBus {
            addr: addr.clone(),
            source,
        })?;
    let current = match describe(&client, &addr, &name).await {
        Ok(current) => current,
        Err(e) => {
            unavailable(api, topic, status, &e).await?;
            return Err(e);
        }
    };
    let Plan { actions, problems } = plan::plan(
        &topic.spec,
        current.as_ref().map(observed).as_ref(),
        &status.config_keys,
    );
    let mut result = Ok(current);
    for action in actions {
        result = match result {
            Ok(before) => call(&client, ctx, topic, &name, action, before).await,
            Err(e) => Err(e),
        };
    }
    let description = match result {
        Ok(d) => d,
        Err(e) if e.retriable() => {
            let e = Error::StreamBus {
                addr: addr.clone(),
                source: e,
            };
            unavailable(api, topic, status, &e).await?;
            return Err(e);
        }
        Err(e) => {
            // Refused by StreamBus (a bad name, config or replication
            // factor): retrying cannot help until the spec changes.
            let message = format!("StreamBus refused the change: {e}");
            refuse(api, topic, ctx, status, "Refused", message).await?;
            return Ok(resync);
        }
    };
    if !problems.iter().any(|p| p.reason == "InvalidConfig") {
        // What the spec's config now manages (applied above).
        status.config_keys = topic.spec.config.keys().cloned().collect();
    }
    if let Some(d) = &description {
        status.topic_name = Some(name.clone());
        status.topic_id = Some(d.topic_id.clone());
        status.partitions = Some(d.partitions.len() as u32);
        status.replication_factor = Some(d.replication_factor);
    }
    let update = match problems.first() {
        None => Update::new(
            "Ready",
            true,
            "Ready",
            format!("topic {name} is as specified"),
        ),
        Some(first) => {
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Update::new("Ready", false, first.reason, message)
        }
    };
    let was = conditions::get(&status.conditions, "Ready").cloned();
    if !update.status
        && was
            .as_ref()
            .is_none_or(|c| c.reason != update.reason || c.message != update.message)
    {
        ctx.event(
            topic,
            true,
            &update.reason,
            "Reconcile",
            update.message.clone(),
        )
        .await;
    }
    write_status(api, topic, status, update).await?;
    Ok(resync)
}

/// Makes one call of the plan; returns the topic as it left it.
async fn call(
    client: &streambus_client::Client,
    ctx: &Context,
    topic: &StreamBusTopic,
    name: &str,
    action: Action,
    current: Option<v1::TopicDescription>,
) -> Result<Option<v1::TopicDescription>, ClientError> {
    match action {
        Action::Create {
            partitions,
            replication_factor,
            configs,
        } => {
            let configs = configs.into_iter().collect();
            let created = client
                .create_topic(name, partitions, replication_factor, configs)
                .await?;
            ctx.event(
                topic,
                false,
                "Created",
                "CreateTopic",
                format!(
                    "created topic {name} with {partitions} partitions (replication factor {})",
                    created.replication_factor
                ),
            )
            .await;
            Ok(Some(created))
        }
        Action::AddPartitions { partitions } => {
            let before = current.as_ref().map_or(0, |c| c.partitions.len());
            let grown = client.create_partitions(name, partitions).await?;
            ctx.event(
                topic,
                false,
                "PartitionsAdded",
                "CreatePartitions",
                format!("topic {name} grown from {before} to {partitions} partitions"),
            )
            .await;
            Ok(Some(grown))
        }
        Action::AlterConfigs { set, reset } => {
            let mut changes: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            changes.extend(reset.iter().map(|k| format!("{k} reset to its default")));
            let altered = client
                .alter_topic_configs(name, set.into_iter().collect(), reset)
                .await?;
            ctx.event(
                topic,
                false,
                "ConfigChanged",
                "AlterTopicConfigs",
                format!("topic {name}: {}", changes.join(", ")),
            )
            .await;
            Ok(Some(altered))
        }
    }
}

/// Reports a spec that cannot be applied as it is (no retry until the next
/// change or resync).
async fn refuse(
    api: &Api<StreamBusTopic>,
    topic: &StreamBusTopic,
    ctx: &Context,
    status: StreamBusTopicStatus,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let was = conditions::get(&status.conditions, "Ready");
    if was.is_none_or(|c| c.reason != reason || c.message != message) {
        ctx.event(topic, true, reason, "Reconcile", message.clone())
            .await;
    }
    write_status(
        api,
        topic,
        status,
        Update::new("Ready", false, reason, message),
    )
    .await
}

/// Reports that StreamBus could not be reached or answered with a
/// retriable error (the reconciliation is retried with backoff).
async fn unavailable(
    api: &Api<StreamBusTopic>,
    topic: &StreamBusTopic,
    status: StreamBusTopicStatus,
    error: &Error,
) -> Result<(), Error> {
    let update = Update::new("Ready", false, "StreamBusUnavailable", error.to_string());
    write_status(api, topic, status, update).await
}

async fn write_status(
    api: &Api<StreamBusTopic>,
    topic: &StreamBusTopic,
    mut status: StreamBusTopicStatus,
    update: Update,
) -> Result<(), Error> {
    let generation = topic.metadata.generation;
    conditions::set(
        &mut status.conditions,
        update,
        generation,
        &conditions::now(),
    );
    status.observed_generation = generation;
    if topic.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &topic.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The resource is being deleted: delete the topic unless it is retained.
async fn cleanup(topic: &StreamBusTopic, ctx: &Context) -> Result<Requeue, Error> {
    let name = topic
        .status
        .as_ref()
        .and_then(|s| s.topic_name.clone())
        .unwrap_or_else(|| topic_name(topic));
    if topic.spec.deletion_policy == DeletionPolicy::Retain {
        ctx.event(
            topic,
            false,
            "Retained",
            "DeleteTopic",
            format!("deletionPolicy is Retain: topic {name} stays in StreamBus"),
        )
        .await;
        return Ok(Requeue::await_change());
    }
    let created = topic
        .status
        .as_ref()
        .and_then(|s| s.topic_id.as_ref())
        .is_some();
    let namespace = topic.namespace().unwrap_or_default();
    let cluster_name = topic.labels().get(CLUSTER_LABEL).cloned();
    let target = match &cluster_name {
        Some(cluster) => ctx.resolve_cluster(&namespace, cluster).await?,
        None => ClusterTarget::NotFound,
    };
    let target = match target {
        ClusterTarget::Gateway(target) => target,
        ClusterTarget::TlsUnusable(why) => {
            // The topic may still exist: retried until it can be deleted.
            return Err(Error::ClusterTls {
                cluster: cluster_name.unwrap_or_default(),
                message: why,
            });
        }
        ClusterTarget::NotFound => {
            // Nothing to delete from: the cluster is gone (with its data)
            // or was never named.
            if created {
                ctx.event(
                    topic,
                    true,
                    "ClusterNotFound",
                    "DeleteTopic",
                    format!("the topic's cluster is gone; topic {name} not deleted"),
                )
                .await;
            }
            return Ok(Requeue::await_change());
        }
    };
    let addr = target.addr.clone();
    let client = ctx
        .gateway(&target)
        .await
        .map_err(|source| Error::StreamBus {
            addr: addr.clone(),
            source,
        })?;
    match client.delete_topic(&name).await {
        Ok(()) => {
            ctx.event(
                topic,
                false,
                "Deleted",
                "DeleteTopic",
                format!("deleted topic {name}"),
            )
            .await;
        }
        Err(e) if e.reason() == Some(Reason::UnknownTopic) => {}
        Err(source) => return Err(Error::StreamBus { addr, source }),
    }
    Ok(Requeue::await_change())
}
