//! The StreamBus storage node: hosts partition replicas on local disk
//! (one [`streambus_log::Log`] each) and serves the internal
//! `StorageService` to gateways.
//!
//! It registers with the controller, keeps its lease alive with
//! heartbeats, and follows the controller's metadata stream to learn which
//! replicas it hosts and leads. See `ARCHITECTURE.md`.

pub mod config;
pub mod error;
pub mod metrics;
pub mod partitions;
pub mod replica;
mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::registry::Registry;
use streambus_controller::client::ControllerClient;
use streambus_proto::internal::storage_service_server::StorageServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::StorageNodeConfig;
pub use error::StorageNodeError;
pub use metrics::Metrics;

use partitions::Partitions;

/// Largest gRPC message accepted or sent.
pub use streambus_service::grpc::MAX_MESSAGE_BYTES;

/// Binds `config.listen_addr` and serves until `shutdown` completes.
pub async fn serve(
    config: StorageNodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StorageNodeError> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| StorageNodeError::Bind {
            addr: config.listen_addr,
            source,
        })?;
    let metrics = Metrics::new(&mut Registry::default());
    serve_with_listener(config, listener, metrics, None, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes, then
/// drains: stops accepting, finishes in-flight requests, flushes and
/// fsyncs every log. `ready` turns true once the node is registered and has
/// applied the controller's metadata.
pub async fn serve_with_listener(
    config: StorageNodeConfig,
    listener: TcpListener,
    metrics: Metrics,
    ready: Option<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StorageNodeError> {
    let bound = listener
        .local_addr()
        .map_err(|source| StorageNodeError::Bind {
            addr: config.listen_addr,
            source,
        })?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StorageNodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let advertised = config.advertised(bound);
    let partitions = Arc::new(Partitions::new(config.node_id, config.data_dir.clone()));
    let controller = ControllerClient::new(config.controllers.clone())
        .map_err(|e| StorageNodeError::Config(format!("storage_node.controllers: {e}")))?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let ready = ready.unwrap_or_else(|| watch::channel(false).0);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(membership_loop(
        controller.clone(),
        config.node_id,
        advertised.clone(),
        Duration::from_millis(config.heartbeat_interval_ms.max(10)),
    ));
    tasks.spawn(metadata_loop(
        controller,
        partitions.clone(),
        config.node_id,
        metrics.clone(),
        ready,
    ));
    {
        let partitions = partitions.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                partitions.flush_due().await;
            }
        });
    }
    {
        let partitions = partitions.clone();
        let every = Duration::from_millis(config.maintenance_interval_ms.max(100));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                partitions.maintain().await;
            }
        });
    }

    let api = service::StorageApi {
        partitions: partitions.clone(),
        metrics,
        max_fetch_wait: Duration::from_millis(config.max_fetch_wait_ms),
        max_fetch_bytes: config.max_fetch_bytes,
        draining: drain_rx,
    };
    let (health, health_service) = streambus_service::grpc::health_service();
    streambus_service::grpc::set_serving(&health, &["streambus.internal.v1.StorageService"]).await;
    tracing::info!(node_id = config.node_id, addr = %bound, %advertised, "storage node serving");

    let shutdown = async move {
        shutdown.await;
        tracing::info!("storage node draining");
        streambus_service::grpc::set_not_serving(
            &health,
            &["streambus.internal.v1.StorageService"],
        )
        .await;
        let _ = drain_tx.send(true);
    };
    let result = streambus_service::grpc::server()
        .add_service(health_service)
        .add_service(streambus_service::grpc::reflection_service())
        .add_service(
            StorageServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(streambus_service::grpc::incoming(listener), shutdown)
        .await;
    tasks.shutdown().await;
    partitions.close_all().await;
    tracing::info!(node_id = config.node_id, "storage node stopped");
    result.map_err(StorageNodeError::from)
}

/// Registers with the controller, then heartbeats; registers again when a
/// heartbeat is refused (for example after the controller lost the lease).
async fn membership_loop(
    controller: ControllerClient,
    node_id: u64,
    advertised: String,
    interval: Duration,
) {
    let mut registered = false;
    loop {
        if !registered {
            match controller.register_node(node_id, &advertised).await {
                Ok(_) => {
                    tracing::info!(node_id, %advertised, "registered with the controller");
                    registered = true;
                }
                Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
            }
        } else if let Err(e) = controller.heartbeat(node_id).await {
            tracing::warn!(error = %e, "heartbeat failed");
            registered = false;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Applies every metadata snapshot the controller sends.
async fn metadata_loop(
    controller: ControllerClient,
    partitions: Arc<Partitions>,
    node_id: u64,
    metrics: Metrics,
    ready: watch::Sender<bool>,
) {
    let mut stream = std::pin::pin!(controller.watch_metadata());
    while let Some(md) = stream.next().await {
        if let Err(e) = partitions.apply(&md).await {
            tracing::error!(error = %e, version = md.version, "applying metadata failed");
            continue;
        }
        metrics.replicas.set(partitions.all().len() as i64);
        let known = md.nodes.iter().any(|n| n.node_id == node_id && n.alive);
        if known && !*ready.borrow() {
            tracing::info!(node_id, version = md.version, "storage node ready");
            let _ = ready.send(true);
        }
    }
}
