//! The StreamBus gateway: stateless, client-facing gRPC (admin, produce,
//! consume). It keeps a metadata cache fed by the controller's watch stream
//! and routes every partition request to the partition's leader, retrying
//! through leader moves. Run as many as you like.

pub mod admin;
pub mod auth;
pub mod authz;
pub mod config;
pub mod consume;
pub mod decode;
pub mod groups;
pub mod k8s_auth;
pub mod metadata;
pub mod metrics;
pub mod produce;
pub mod quota;
mod record_watch;
pub mod router;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_cluster::ControllerClient;
use streambus_proto::v1::admin_service_server::AdminServiceServer;
use streambus_proto::v1::consume_service_server::ConsumeServiceServer;
use streambus_proto::v1::group_service_server::GroupServiceServer;
use streambus_proto::v1::produce_service_server::ProduceServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::GatewayConfig;
pub use metrics::Metrics;
use streambus_service::budget::MemoryBudget;

/// Largest gRPC message accepted or sent.
pub use streambus_service::grpc::MAX_MESSAGE_BYTES;

const SERVICES: &[&str] = &[
    "streambus.v1.AdminService",
    "streambus.v1.ProduceService",
    "streambus.v1.ConsumeService",
    "streambus.v1.GroupService",
];

/// Errors that stop a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `config.listen_addr` and serves until `shutdown` completes.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.listen_addr,
            source,
        })?;
    let metrics = Metrics::new(&mut Registry::default());
    serve_with_listener(config, listener, metrics, None, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes, then
/// stops accepting and finishes in-flight requests.
///
/// `ready` (and the gRPC health status, SERVING or NOT_SERVING) follow the
/// metadata: true once the first snapshot is installed, false while no
/// controller has answered for `gateway.metadata_staleness_ms`, true again
/// when one does; NOT_SERVING for good once draining.
pub async fn serve_with_listener(
    config: GatewayConfig,
    listener: TcpListener,
    metrics: Metrics,
    ready: Option<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.listen_addr,
        source,
    })?;
    config.validate().map_err(GatewayError::Config)?;
    let reviewer = if config.auth.kubernetes.enabled {
        let reviewer = k8s_auth::TokenReviewer::new(&config.auth.kubernetes)
            .await
            .map_err(GatewayError::Config)?;
        tracing::info!("bearer tokens verified with the Kubernetes API server's TokenReview");
        Some(reviewer)
    } else {
        None
    };
    let auth = auth::Authenticator::new(&config.auth, reviewer).map_err(GatewayError::Config)?;
    if config.auth.mtls {
        let asks = streambus_service::tls::installed()
            .is_some_and(|t| t.files().client_auth != streambus_service::tls::ClientAuth::None);
        if !asks {
            return Err(GatewayError::Config(
                "gateway.auth.mtls needs TLS with client certificates: tls.cert_file and tls.client_auth optional or required".into(),
            ));
        }
    }
    if let Some(auth) = &auth {
        auth.watch();
    }
    let controller = ControllerClient::new(config.controllers.clone())
        .map_err(|e| GatewayError::Config(format!("gateway.controllers: {e}")))?;
    let cache = metadata::MetadataCache::new(controller);
    let authz = if config.auth.acls {
        tracing::info!(superusers = config.auth.superusers.len(), "enforcing ACLs");
        authz::Authz::enforce(
            cache.clone(),
            config.auth.superusers.iter().cloned().collect(),
        )
    } else {
        authz::Authz::off()
    };
    let quotas = quota::Quotas::new(cache.clone(), metrics.throttle_seconds.clone());
    let ready = ready.unwrap_or_else(|| watch::channel(false).0);
    let ready_rx = ready.subscribe();
    let metadata_task = tokio::spawn(
        cache
            .clone()
            .run(ready, Duration::from_millis(config.metadata_staleness_ms)),
    );
    let connections = metrics.connections.clone();
    let router = router::Router::new(
        cache,
        Duration::from_millis(config.storage_call_timeout_ms),
        metrics.storage_request_seconds.clone(),
    );
    let (drain_tx, drain_rx) = watch::channel(false);

    let memory = MemoryBudget::new("gateway.memory_budget_bytes", config.memory_budget());
    metrics.budgets.add(&memory);
    // Its own bound: a decode happens while the response's bytes are
    // already reserved, so taking it from the same budget could wait for
    // memory that only stalled subscriptions hold.
    let decompression = MemoryBudget::new(
        "gateway.decompression_budget_bytes",
        config.decompression_budget_bytes,
    );
    metrics.budgets.add(&decompression);
    tracing::info!(
        bytes = memory.capacity(),
        "gateway memory budget for buffered record data"
    );
    let admin = admin::AdminApi {
        router: router.clone(),
        metrics: metrics.clone(),
        authz: authz.clone(),
    };
    let produce = produce::ProduceApi {
        router: router.clone(),
        metrics: metrics.clone(),
        default_timeout: Duration::from_millis(config.request_timeout_ms),
        max_in_flight: config.max_in_flight_per_stream,
        in_flight: produce::InFlight::within(
            config.max_in_flight_writes,
            config.max_in_flight_bytes,
            metrics.clone(),
            Some(&memory),
        ),
        max_batches_per_request: config.max_batches_per_request,
        max_records_per_request: config.max_records_per_request,
        keyless: Arc::new(AtomicU32::new(0)),
        draining: drain_rx.clone(),
        producer_ids: produce::ProducerIds::default(),
        authz: authz.clone(),
        quotas: quotas.clone(),
    };
    let consume = consume::ConsumeApi {
        watches: record_watch::RecordWatches::new(router.clone()),
        router,
        metrics,
        max_wait: Duration::from_millis(config.max_fetch_wait_ms),
        buffer: config.subscribe_buffer,
        budget: decompression,
        memory,
        draining: drain_rx.clone(),
        authz,
        quotas: quotas.clone(),
    };
    let groups = groups::GroupApi {
        consume: consume.clone(),
        metrics: consume.metrics.clone(),
        topic_partitions: config.groups_topic_partitions,
        topic_replication: config.groups_topic_replication_factor,
        creating: Arc::default(),
    };
    let (health, health_service) = streambus_service::grpc::health_service();
    let health_task = tokio::spawn(follow_readiness(health, ready_rx, drain_rx));
    tracing::info!(%addr, "gateway listening");
    let shutdown = async move {
        shutdown.await;
        tracing::info!("gateway draining");
        let _ = drain_tx.send(true);
        // It marks everything NOT_SERVING before it ends.
        let _ = health_task.await;
    };
    let (shutdown, drain) = streambus_service::grpc::drain_signal(shutdown);
    let drain = drain.count_connections(connections);
    let serve = streambus_service::grpc::server()
        .layer(auth::AuthLayer::new(auth, quotas))
        .add_service(health_service)
        .add_service(streambus_service::grpc::reflection_service())
        .add_service(
            AdminServiceServer::new(admin)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ProduceServiceServer::new(produce)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ConsumeServiceServer::new(consume)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            GroupServiceServer::new(groups)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            drain.incoming(listener, streambus_service::tls::Exposure::Public),
            shutdown,
        );
    let result = drain
        .bound(serve, streambus_service::grpc::DRAIN_LIMIT, "gateway")
        .await;
    metadata_task.abort();
    tracing::info!("gateway stopped");
    result.map_err(GatewayError::from)
}

/// Keeps the gRPC health status equal to the gateway's readiness until
/// draining starts, then reports NOT_SERVING for good.
async fn follow_readiness(
    health: streambus_service::grpc::HealthReporter,
    mut ready: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
) {
    loop {
        let serving = *ready.borrow_and_update();
        if serving {
            streambus_service::grpc::set_serving(&health, SERVICES).await;
        } else {
            streambus_service::grpc::set_not_serving(&health, SERVICES).await;
        }
        tokio::select! {
            changed = ready.changed() => {
                if changed.is_err() {
                    // The metadata task is gone: nothing keeps us live.
                    break;
                }
            }
            _ = draining.wait_for(|d| *d) => break,
        }
    }
    streambus_service::grpc::set_not_serving(&health, SERVICES).await;
}
