//! The StreamBus storage node: hosts partition replicas on local disk
//! (one [`streambus_log::Log`] each) and serves the internal
//! `StorageService` to gateways.
//!
//! It registers with the controller, keeps its lease alive with
//! heartbeats, and follows the controller's metadata stream to learn which
//! replicas it hosts and leads. See `ARCHITECTURE.md`.

pub mod config;
pub mod data_dir;
pub mod disk;
pub mod error;
mod groups;
pub mod isr;
pub mod metrics;
pub mod open_files;
pub mod partitions;
mod record_watch;
pub mod replica;
pub mod replication;
mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::registry::Registry;
use streambus_cluster::ControllerClient;
use streambus_proto::internal::storage_service_server::StorageServiceServer;
use streambus_proto::internal::{HeartbeatRequest, RegisterNodeRequest};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::StorageNodeConfig;
pub use error::StorageNodeError;
pub use metrics::Metrics;

use data_dir::DataDir;
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
    serve_with_log_options(
        config,
        listener,
        metrics,
        ready,
        shutdown,
        streambus_log::OpenOptions::new(),
    )
    .await
}

/// [`serve_with_listener`], opening every partition log with
/// `log_options` (a library option, not a configuration key: fault tests
/// give the logs a file system that is slow or fails).
pub async fn serve_with_log_options(
    config: StorageNodeConfig,
    listener: TcpListener,
    metrics: Metrics,
    ready: Option<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    log_options: streambus_log::OpenOptions,
) -> Result<(), StorageNodeError> {
    let bound = listener
        .local_addr()
        .map_err(|source| StorageNodeError::Bind {
            addr: config.listen_addr,
            source,
        })?;
    config.validate().map_err(StorageNodeError::Config)?;
    // Every log's files go through one bounded file-handle cache over the
    // file system the options carry: idle partitions hold no descriptor.
    let (soft_limit, _) = open_files::limits();
    let max_open_files = open_files::max_open_files(config.max_open_files, soft_limit)
        .map_err(StorageNodeError::Config)?;
    let log_io: Arc<dyn streambus_log::io::Io> = log_options
        .configured_io()
        .cloned()
        .unwrap_or_else(|| Arc::new(streambus_log::io::StdIo));
    let handles = streambus_log::HandleCache::new(log_io, max_open_files);
    let log_options = log_options.io(Arc::new(handles.clone()));
    metrics
        .open_files_limit
        .set(i64::try_from(max_open_files).unwrap_or(i64::MAX));
    tracing::info!(
        max_open_files,
        soft_limit = ?soft_limit,
        "partition logs keep at most this many files open"
    );
    // Held (locked) until every log is closed, including on a fatal stop.
    let data_dir = Arc::new(std::sync::Mutex::new(DataDir::open(
        &config.data_dir,
        config.node_id,
    )?));
    let advertised = config.advertised(bound);
    let disk = Arc::new(disk::Disk::new(
        &config.data_dir,
        config.node_id,
        disk::Watermark {
            min_free_bytes: config.disk_min_free_bytes,
            max_used_percent: config.disk_max_used_percent,
        },
    ));
    let partitions = Arc::new(
        Partitions::with_open_options(config.node_id, config.data_dir.clone(), log_options)
            .with_replica_lag(config.replica_lag_time_max_ms),
    );
    metrics.partitions.set(&partitions);
    metrics.fsync_latency.set(partitions.fsync_stats());
    let max_partitions = config.max_partitions();
    metrics.max_partitions.set(max_partitions as i64);
    tracing::info!(max_partitions, "storage node partition budget");
    let controller = ControllerClient::new(config.controllers.clone())
        .map_err(|e| StorageNodeError::Config(format!("storage_node.controllers: {e}")))?;
    let (drain_tx, drain_rx) = watch::channel(false);
    let ready = ready.unwrap_or_else(|| watch::channel(false).0);
    let (health, health_service) = streambus_service::grpc::health_service();
    let status = Arc::new(NodeStatus::default());
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<StorageNodeError>();
    let incarnation = rand::random::<u64>() | 1;
    let lease = Arc::new(LeaseClock::default());
    // Leader appends and follower appends validate (decompress) batches
    // out of one budget.
    let memory = streambus_service::budget::MemoryBudget::new(
        "storage_node.memory_budget_bytes",
        config.memory_budget(),
    );
    let decompression = memory.child(
        "storage_node.decompression_budget_bytes",
        config.decompression_budget_bytes as usize,
    );
    // Replication before consumers and producers: consumer fetches may
    // use half of the budget and appends a quarter, so at least a quarter
    // is always left to followers.
    let consumer_fetches = memory.child(
        "storage_node.memory_budget_bytes (consumer fetches: one half)",
        memory.capacity() / 2,
    );
    // Appends being written hold their batches: a quarter of the budget
    // (at least one largest message), so a produce flood against a slow
    // disk leaves room for replication and consumers.
    let appends = memory.child(
        "storage_node.memory_budget_bytes (appends being written: one quarter)",
        (memory.capacity() / 4).max(MAX_MESSAGE_BYTES),
    );
    for b in [&memory, &decompression, &consumer_fetches, &appends] {
        metrics.budgets.add(b);
    }
    tracing::info!(
        bytes = memory.capacity(),
        "storage node memory budget for buffered record data"
    );
    let replication = replication::Replication::new(
        partitions.clone(),
        controller.clone(),
        incarnation,
        config.replica_fetch_wait_ms.min(u64::from(u32::MAX)) as u32,
        metrics.clone(),
        decompression.clone(),
    );

    let mut tasks = tokio::task::JoinSet::new();
    let membership = Membership {
        controllers: config.controllers.clone(),
        node_id: config.node_id,
        incarnation,
        rack: config.rack.clone(),
        max_partitions,
        lease: lease.clone(),
        advertised: advertised.clone(),
        interval: Duration::from_millis(config.heartbeat_interval_ms.max(10)),
        data_dir: data_dir.clone(),
        partitions: partitions.clone(),
        status: status.clone(),
    };
    tasks.spawn(
        on_own_thread("heartbeat", move || membership_loop(membership, fatal_tx))
            .map_err(StorageNodeError::HeartbeatThread)?,
    );
    tasks.spawn(replication.clone().run());
    tasks.spawn(metadata_loop(
        controller,
        replication.clone(),
        partitions.clone(),
        config.node_id,
        metrics.clone(),
        status.clone(),
    ));
    tasks.spawn(readiness_loop(
        status,
        ready,
        health.clone(),
        drain_rx.clone(),
    ));
    {
        let partitions = partitions.clone();
        let metrics = metrics.clone();
        let every = Duration::from_millis(config.reopen_interval_ms.max(10));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        partitions.reopen_offline().await;
                    }
                    // A replica whose open outlasted the wait is served as
                    // soon as it finishes.
                    () = partitions.job_finished() => {
                        partitions.finish_jobs().await;
                    }
                }
                metrics.observe_partitions(&partitions);
            }
        });
    }
    {
        // The logs count fsyncs into one node-wide counter, and share one
        // file-handle cache; export both.
        let partitions = partitions.clone();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let mut exported = 0;
            let mut files = streambus_log::HandleStats::default();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = partitions.fsyncs();
                metrics.fsyncs.inc_by(now.saturating_sub(exported));
                exported = now;
                files = metrics.observe_open_files(&handles.stats(), &files);
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
            let due = partitions.maintenance_due();
            loop {
                tokio::select! {
                    _ = tick.tick() => partitions.maintain().await,
                    () = due.notified() => partitions.maintain_due().await,
                }
            }
        });
    }

    {
        // Disk usage for the metrics (appends sample it themselves).
        let (disk, metrics) = (disk.clone(), metrics.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let sampler = disk.clone();
                if let Ok(Ok(usage)) = tokio::task::spawn_blocking(move || sampler.refresh()).await
                {
                    metrics.observe_disk(&usage, disk.is_full());
                }
            }
        });
    }
    let acks = service::AckWait {
        partitions: partitions.clone(),
        lease,
        timeout: Duration::from_millis(config.ack_timeout_ms),
    };
    let groups = Arc::new(groups::Coordinator::new(
        acks.clone(),
        config.group_limits(),
        Duration::from_millis(config.group_retention_ms),
    ));
    tasks.spawn(groups.clone().run());
    let connections = metrics.connections.clone();
    let api = service::StorageApi {
        disk,
        partitions: partitions.clone(),
        metrics,
        max_fetch_wait: Duration::from_millis(config.max_fetch_wait_ms),
        max_fetch_bytes: config.max_fetch_bytes,
        decompression,
        memory,
        consumer_fetches,
        appends,
        draining: drain_rx,
        acks: acks.clone(),
        groups: groups.clone(),
    };
    tracing::info!(node_id = config.node_id, addr = %bound, %advertised, "storage node listening");

    let fatal = Arc::new(std::sync::Mutex::new(None));
    let fatal_slot = fatal.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => tracing::info!("storage node draining"),
            Ok(e) = fatal_rx => {
                tracing::error!(error = %e, "storage node stopping");
                *fatal_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
        streambus_service::grpc::set_not_serving(
            &health,
            &["streambus.internal.v1.StorageService"],
        )
        .await;
        let _ = drain_tx.send(true);
    };
    let (shutdown, drain) = streambus_service::grpc::drain_signal(shutdown);
    let drain = drain.count_connections(connections);
    let serve = streambus_service::grpc::server()
        .add_service(health_service)
        .add_service(streambus_service::grpc::reflection_service())
        .add_service(
            StorageServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            drain.incoming(listener, streambus_service::tls::Exposure::Internal),
            shutdown,
        );
    let result = drain
        .bound(serve, streambus_service::grpc::DRAIN_LIMIT, "storage node")
        .await;
    tasks.shutdown().await;
    replication.stop();
    partitions.close_all().await;
    drop(data_dir);
    tracing::info!(node_id = config.node_id, "storage node stopped");
    if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    result.map_err(StorageNodeError::from)
}

/// Until when this node's lease with the controller is certainly still
/// valid: the send time of the last heartbeat the controller accepted plus
/// the lease, less a tenth for clock-rate drift. The controller measures
/// the lease from when it received that heartbeat, so this node always
/// stops trusting its lease first: a leader cut off from the controller
/// stops acknowledging `acks=all` writes before the controller may elect
/// another leader.
#[derive(Debug, Default)]
pub struct LeaseClock {
    until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl LeaseClock {
    /// A heartbeat sent at `sent` was accepted with a lease of `lease`.
    pub fn renewed(&self, sent: std::time::Instant, lease: Duration) {
        let until = sent + lease - lease / 10;
        let mut cur = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_none_or(|c| c < until) {
            *cur = Some(until);
        }
    }

    /// Whether the lease is certainly valid now.
    pub fn valid(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| std::time::Instant::now() < u)
    }
}

/// What readiness is computed from.
#[derive(Default)]
struct NodeStatus {
    /// When the controller last accepted a registration or heartbeat.
    last_contact: std::sync::Mutex<Option<std::time::Instant>>,
    /// The lease the controller granted, in ms.
    lease_ms: std::sync::atomic::AtomicU64,
    /// Metadata that lists this node as alive has been applied.
    metadata_applied: std::sync::atomic::AtomicBool,
}

impl NodeStatus {
    fn contact(&self, lease_ms: u64) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
        self.lease_ms
            .store(lease_ms, std::sync::atomic::Ordering::Release);
    }

    /// Ready: metadata applied, and the controller heard from this node
    /// within the lease (beyond it the controller may already consider the
    /// node dead and have moved its partitions).
    fn ready(&self) -> bool {
        let lease = Duration::from_millis(self.lease_ms.load(std::sync::atomic::Ordering::Acquire));
        let fresh = self
            .last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() <= lease);
        fresh
            && self
                .metadata_applied
                .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Keeps `/readyz` and gRPC health in line with [`NodeStatus::ready`], both
/// ways.
async fn readiness_loop(
    status: Arc<NodeStatus>,
    ready: watch::Sender<bool>,
    health: streambus_service::grpc::HealthReporter,
    draining: watch::Receiver<bool>,
) {
    const SERVICE: &[&str] = &["streambus.internal.v1.StorageService"];
    let mut was = None;
    loop {
        if *draining.borrow() {
            // Draining owns the health status from here on.
            let _ = ready.send(false);
            return;
        }
        let now = status.ready();
        if was != Some(now) {
            if now {
                tracing::info!("storage node ready");
                streambus_service::grpc::set_serving(&health, SERVICE).await;
                if *draining.borrow() {
                    // Draining began meanwhile: it wins.
                    streambus_service::grpc::set_not_serving(&health, SERVICE).await;
                    let _ = ready.send(false);
                    return;
                }
            } else if was.is_some() {
                tracing::warn!(
                    "storage node not ready: no metadata or lost contact with the controller beyond the lease"
                );
                streambus_service::grpc::set_not_serving(&health, SERVICE).await;
            } else {
                streambus_service::grpc::set_not_serving(&health, SERVICE).await;
            }
            let _ = ready.send(now);
            was = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Membership {
    /// The controllers' addresses: the loop dials them from its own thread.
    controllers: Vec<String>,
    node_id: u64,
    incarnation: u64,
    rack: String,
    max_partitions: u64,
    lease: Arc<LeaseClock>,
    advertised: String,
    interval: Duration,
    data_dir: Arc<std::sync::Mutex<DataDir>>,
    partitions: Arc<Partitions>,
    status: Arc<NodeStatus>,
}

/// How long `NODE_ID_CONFLICT` must persist before the node gives up: a
/// conflict can be the lease of this node's own previous registration
/// (from a replaced data directory) still running, which lapses within
/// the lease (6 s by default).
const CONFLICT_GRACE: Duration = Duration::from_secs(10);

/// Whether a refusal from the controller means this process must not
/// serve: another cluster's directory at once, an id conflict once it
/// outlasted [`CONFLICT_GRACE`].
fn is_fatal(e: &streambus_proto::Error, conflict_since: &mut Option<std::time::Instant>) -> bool {
    match e.reason {
        streambus_proto::Reason::ClusterIdMismatch => true,
        streambus_proto::Reason::NodeIdConflict => {
            conflict_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= CONFLICT_GRACE
        }
        _ => false,
    }
}

/// Runs the future `make` builds on a runtime and thread of its own, named
/// `name`. The returned future ends when that future does, and stops it
/// when dropped. Heartbeats run there: a node whose runtime is saturated
/// with fetches and appends (a subscription to 10,000 partitions keeps as
/// many long polls going) must still renew its lease, or the controller
/// moves its leaderships away and an overload becomes an outage.
fn on_own_thread<F, Fut>(
    name: &str,
    make: F,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = make() => {}
                    _ = stopped => {}
                }
            });
            let _ = done.send(());
        })?;
    Ok(async move {
        let _stop = stop;
        let _ = finished.await;
    })
}

/// Registers with the controller, then heartbeats (reporting offline
/// replicas); registers again when a heartbeat is refused (for example
/// after the controller lost the lease). A refusal that means this process
/// must not serve (another live node has its id, its data directory
/// belongs to another cluster, or it was superseded) stops the node.
async fn membership_loop(m: Membership, fatal: tokio::sync::oneshot::Sender<StorageNodeError>) {
    // A client of its own: a channel's connection is driven by the runtime
    // it was made on, and this loop runs on its own thread.
    let controller = match ControllerClient::new(m.controllers.clone()) {
        Ok(c) => c,
        Err(e) => {
            let _ = fatal.send(StorageNodeError::Config(format!(
                "storage_node.controllers: {e}"
            )));
            return;
        }
    };
    let mut registered = false;
    let mut conflict_since = None;
    loop {
        let sent = std::time::Instant::now();
        let result = if registered {
            controller
                .heartbeat(HeartbeatRequest {
                    node_id: m.node_id,
                    incarnation: m.incarnation,
                    offline_replicas: m.partitions.offline_replicas(),
                })
                .await
        } else {
            let (directory_id, cluster_id) = {
                let d = m.data_dir.lock().unwrap_or_else(|p| p.into_inner());
                (d.directory_id().to_string(), d.cluster_id().to_string())
            };
            let req = RegisterNodeRequest {
                node_id: m.node_id,
                address: m.advertised.clone(),
                incarnation: m.incarnation,
                directory_id,
                cluster_id,
                rack: m.rack.clone(),
                max_partitions: m.max_partitions,
            };
            match controller.register_node(req).await {
                Ok(resp) => match m
                    .data_dir
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stamp_cluster(&resp.cluster_id)
                {
                    Ok(()) => {
                        tracing::info!(node_id = m.node_id, advertised = %m.advertised,
                            cluster_id = %resp.cluster_id, "registered with the controller");
                        registered = true;
                        Ok(resp.lease_ms)
                    }
                    Err(e) => {
                        let _ = fatal.send(e);
                        return;
                    }
                },
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(lease_ms) => {
                conflict_since = None;
                m.lease.renewed(sent, Duration::from_millis(lease_ms));
                m.status.contact(lease_ms)
            }
            Err(e) if is_fatal(&e, &mut conflict_since) => {
                let _ = fatal.send(StorageNodeError::Refused(e));
                return;
            }
            Err(e) if registered => {
                tracing::warn!(error = %e, "heartbeat failed");
                registered = false;
            }
            Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
        }
        tokio::time::sleep(m.interval).await;
    }
}

/// Applies every metadata snapshot the controller sends.
async fn metadata_loop(
    controller: ControllerClient,
    replication: Arc<replication::Replication>,
    partitions: Arc<Partitions>,
    node_id: u64,
    metrics: Metrics,
    status: Arc<NodeStatus>,
) {
    // Nothing is opened before the controller accepted this node: a node
    // pointed at another cluster's controllers must not touch its
    // directory.
    while status
        .last_contact
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = std::pin::pin!(controller.watch_metadata());
    while let Some(md) = stream.next().await {
        let started = std::time::Instant::now();
        let looked_at = partitions.apply(&md).await;
        tracing::debug!(
            version = md.version,
            partitions = looked_at,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "metadata applied"
        );
        replication.reconcile();
        metrics.observe_partitions(&partitions);
        let known = md.nodes.iter().any(|n| n.node_id == node_id && n.alive);
        status
            .metadata_applied
            .store(known, std::sync::atomic::Ordering::Release);
    }
}
