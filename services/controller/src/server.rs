//! Starting, bootstrapping, serving and draining one controller.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState};
use streambus_proto::internal::GetMetadataRequest;
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::internal::controller_service_server::ControllerServiceServer;
use streambus_proto::internal::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::config::{ControllerConfig, Peer};
use crate::error::ControllerError;
use crate::grpc::{ControllerGrpc, Proposer};
use crate::leadership::Leadership;
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::network::{MAX_RAFT_MESSAGE_BYTES, Network, PeerDial};
use crate::raft_service::RaftServiceImpl;
use crate::store::{self, Raft, StateMachineStore, StoreFaults};

/// Largest controller message (a full metadata snapshot of a big cluster).
pub(crate) use streambus_cluster::MAX_METADATA_MESSAGE_BYTES;

/// Optional extras for [`serve_with_options`].
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Set to `true` once this controller is serving and caught up (it is a
    /// member of the group, a Raft leader is known and this node has applied
    /// up to the leader's applied index), back to `false` while no leader is
    /// known or once it is no longer a member.
    pub ready: Option<watch::Sender<bool>>,
    /// Metrics registered by the caller ([`Metrics::new`]).
    pub metrics: Option<Arc<Metrics>>,
    /// How this controller dials the other controllers: every connection
    /// it makes to another controller (Raft RPCs, and a leader's calls to
    /// the others: membership probes, readiness checks) goes to
    /// `dial(address)` instead of the address that controller has in the
    /// Raft membership. `None` dials membership addresses as they are.
    /// Fault tests use it to put each controller-to-controller link behind
    /// a proxy of its own; it is not a configuration key.
    pub peer_dial: Option<PeerDial>,
    /// Failures injected into the Raft store's writes. Fault tests use it
    /// to make the store fail as with `EMFILE` or `EIO`; it is not a
    /// configuration key.
    pub store_faults: Option<Arc<StoreFaults>>,
}

/// Binds `config.listen_addr` and serves until `shutdown` completes.
pub async fn serve(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let listener = TcpListener::bind(config.listen_addr).await?;
    serve_with_listener(config, listener, shutdown, None).await
}

/// Serves on a pre-bound listener (tests, `dev`) until `shutdown` completes.
/// `ready` becomes `true` once serving and caught up.
pub async fn serve_with_listener(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<watch::Sender<bool>>,
) -> Result<(), ControllerError> {
    serve_with_options(
        config,
        listener,
        shutdown,
        ServeOptions {
            ready,
            ..ServeOptions::default()
        },
    )
    .await
}

/// [`serve_with_listener`] with metrics.
///
/// Shutdown drains in order: stop accepting and end metadata watches, finish
/// in-flight requests, stop Raft, flush the store.
///
/// A failed write to the Raft store (a full file-descriptor table, a disk
/// error) stops openraft for good. The controller then reports it (an
/// error log line, `streambus_controller_store_failures_total`, not
/// ready), drains as for a shutdown, and starts over from what its store
/// holds on disk, on the same listener, retrying with a growing backoff
/// until the store takes writes again; while it waits, connections are
/// closed as they come (clients move on to another controller). Only a
/// failure of the first start is returned.
pub async fn serve_with_options(
    config: ControllerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<(), ControllerError> {
    config.validate()?;
    let local = listener.local_addr()?;
    let advertised = if config.advertised_addr.is_empty() {
        local.to_string()
    } else {
        config.advertised_addr.clone()
    };
    let peers = config.bootstrap_peers(&advertised)?;
    if let Some(me) = peers.iter().flatten().find(|p| p.id == config.node_id)
        && !config.advertised_addr.is_empty()
        && me.address != config.advertised_addr
    {
        tracing::warn!(
            peer_address = %me.address,
            advertised = %config.advertised_addr,
            "advertised_addr differs from this node's peers entry; peers and clients use the peers entry"
        );
    }
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let shared = Shared {
        metrics: options.metrics.unwrap_or_default(),
        dial: options.peer_dial.unwrap_or_else(PeerDial::direct),
        faults: options.store_faults.unwrap_or_default(),
        ready: options.ready,
        local,
        advertised,
        peers,
    };
    // Each run serves on its own descriptor of the one socket: connections
    // wait in its backlog while the controller starts over.
    let listener = listener.into_std()?;
    let mut backoff = RESTART_BACKOFF_MIN;
    let mut first = true;
    loop {
        let run = match listener.try_clone() {
            Ok(socket) => match TcpListener::from_std(socket) {
                Ok(socket) => run(&config, &shared, socket, &stop, first).await,
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        };
        match run {
            Ok(Ended::Shutdown) => return Ok(()),
            // Reported (logged and counted) when it was seen.
            Ok(Ended::StoreFailed { was_ready }) => {
                if was_ready {
                    backoff = RESTART_BACKOFF_MIN;
                }
                tracing::warn!(
                    node_id = config.node_id,
                    retry_in_ms = backoff.as_millis() as u64,
                    "controller drained after a store failure; starting over"
                );
            }
            Err(e) if first => return Err(e),
            Err(e) => {
                shared.metrics.store_failures.inc();
                tracing::error!(
                    node_id = config.node_id,
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "controller cannot start over yet; the store still fails"
                );
            }
        }
        first = false;
        shared.metrics.is_leader.set(0);
        // Until the next run, connections are closed as they come, so
        // clients move on to another controller at once instead of
        // waiting in the backlog until their deadline.
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
            () = refuse_connections(&listener) => {}
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
    }
}

/// Accepts connections on `listener` and closes them at once, forever
/// (or until the socket fails).
async fn refuse_connections(listener: &std::net::TcpListener) {
    let socket = match listener.try_clone().and_then(TcpListener::from_std) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "cannot refuse connections while the controller starts over");
            return std::future::pending().await;
        }
    };
    loop {
        match socket.accept().await {
            Ok((connection, _)) => drop(connection),
            // Out of descriptors, most likely: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// First wait before a controller whose store failed starts over.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two attempts to start over.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every run of one controller shares.
struct Shared {
    metrics: Arc<Metrics>,
    dial: PeerDial,
    faults: Arc<StoreFaults>,
    ready: Option<watch::Sender<bool>>,
    local: std::net::SocketAddr,
    advertised: String,
    peers: Option<Vec<Peer>>,
}

/// How one run of the controller ended.
enum Ended {
    /// `shutdown` completed.
    Shutdown,
    /// openraft stopped on a store error (already reported).
    StoreFailed {
        /// Whether the run had become ready before it failed.
        was_ready: bool,
    },
}

/// Opens the store, starts Raft and serves on `listener` until `stop` or
/// until openraft stops on a store error.
async fn run(
    config: &ControllerConfig,
    shared: &Shared,
    listener: TcpListener,
    stop: &CancellationToken,
    first: bool,
) -> Result<Ended, ControllerError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(streambus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ControllerError::Config(format!("reflection: {e}")))?;

    let (db, log_store, sm, reserve) = store::open(
        &config.data_dir,
        config.disk_reserve_bytes,
        shared.faults.clone(),
    )?;
    // The space reserve comes back once the disk has room again.
    let reserve_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let r = reserve.clone();
            let _ = tokio::task::spawn_blocking(move || r.restore()).await;
        }
    });
    let raft_config = openraft::Config {
        cluster_name: "streambus-controller".to_string(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        install_snapshot_timeout: 2000,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| ControllerError::Config(e.to_string()))?;
    let network = Network::new(
        Duration::from_millis(config.heartbeat_interval_ms.max(50)),
        shared.dial.clone(),
    );
    let raft = match Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network,
        log_store,
        sm.clone(),
    )
    .await
    {
        Ok(raft) => raft,
        Err(e) => {
            reserve_task.abort();
            return Err(ControllerError::Raft(e.to_string()));
        }
    };
    tracing::info!(
        node_id = config.node_id,
        local = %shared.local,
        advertised = %shared.advertised,
        peers = shared.peers.as_ref().map_or(0, Vec::len),
        join = config.join,
        restart = !first,
        "controller starting"
    );
    if let Err(e) = bootstrap(&raft, config.node_id, shared.peers.as_deref()).await {
        let _ = raft.shutdown().await;
        reserve_task.abort();
        return Err(e);
    }

    // Ends this run: on shutdown, or when openraft stops on a store error.
    let cancel = stop.child_token();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let became_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leadership = Leadership::new(
        Duration::from_millis(config.node_lease_ms),
        Duration::from_millis(config.election_timeout_min_ms),
        Duration::from_millis(config.election_timeout_max_ms),
    );
    let proposer = Proposer::new(
        config.node_id,
        raft.clone(),
        sm.clone(),
        shared.metrics.clone(),
        shared.dial.clone(),
        leadership,
    );
    let leases = Arc::new(Leases::new(Duration::from_millis(config.node_lease_ms)));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<ControllerServiceServer<ControllerGrpc>>()
        .await;

    let tasks: Vec<JoinHandle<()>> = vec![
        tokio::spawn(leases.clone().run(proposer.clone(), cancel.clone())),
        tokio::spawn(proposer.clone().track_membership(cancel.clone())),
        tokio::spawn(proposer.clone().track_contact(cancel.clone())),
        tokio::spawn(crate::balancer::run(
            proposer.clone(),
            (config.leader_rebalance_interval_ms > 0)
                .then(|| Duration::from_millis(config.leader_rebalance_interval_ms)),
            cancel.clone(),
        )),
        tokio::spawn(update_metrics(
            raft.clone(),
            sm.clone(),
            shared.metrics.clone(),
            cancel.clone(),
        )),
        tokio::spawn(track_readiness(
            proposer.clone(),
            config.node_id,
            sm.clone(),
            shared.ready.clone(),
            became_ready.clone(),
            health_reporter,
            cancel.clone(),
        )),
        tokio::spawn(watch_store(
            raft.clone(),
            failed.clone(),
            shared.metrics.clone(),
            config.node_id,
            cancel.clone(),
        )),
    ];

    let controller =
        ControllerServiceServer::new(ControllerGrpc::new(proposer, leases, cancel.clone()))
            .max_decoding_message_size(MAX_METADATA_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_METADATA_MESSAGE_BYTES);
    let raft_service = RaftServiceServer::new(RaftServiceImpl::new(raft.clone()))
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    let ended = cancel.clone();
    let (signal, drain) = streambus_service::grpc::drain_signal(async move {
        ended.cancelled().await;
        tracing::info!("controller shutting down");
    });
    let drain = drain.count_connections(shared.metrics.connections.clone());
    let serve = streambus_service::grpc::server()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(controller)
        .add_service(raft_service)
        .serve_with_incoming_shutdown(
            drain.incoming(listener, streambus_service::tls::Exposure::Internal),
            signal,
        );
    let served = drain
        .bound(serve, streambus_service::grpc::DRAIN_LIMIT, "controller")
        .await;

    cancel.cancel();
    reserve_task.abort();
    for task in tasks {
        let _ = task.await;
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    drop(raft);
    drop(sm);
    let flushed = db.flush_async().await;
    drop(db);
    if failed.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(Ended::StoreFailed {
            was_ready: became_ready.load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    flushed?;
    tracing::info!(node_id = config.node_id, "controller stopped");
    served?;
    Ok(Ended::Shutdown)
}

/// Ends the run (`cancel`) once openraft reports that it stopped on an
/// error, or its core ended without saying why (a panic): sets `failed`,
/// logs and counts it at once, before the drain, which waits for
/// connections.
async fn watch_store(
    raft: Raft,
    failed_flag: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
    node_id: u64,
    cancel: CancellationToken,
) {
    let mut rx = raft.metrics();
    let failed = loop {
        if let Err(fatal) = &rx.borrow_and_update().running_state {
            break fatal.to_string();
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() {
                if cancel.is_cancelled() {
                    return;
                }
                break "the Raft core ended".to_string();
            },
        }
    };
    metrics.store_failures.inc();
    metrics.is_leader.set(0);
    tracing::error!(
        node_id,
        error = %failed,
        "controller Raft stopped on a store error; draining, then starting over from the store on disk"
    );
    failed_flag.store(true, std::sync::atomic::Ordering::Release);
    cancel.cancel();
}

/// On an empty store, the lowest-id peer initializes the group with every
/// peer as a voter; the others wait to be contacted. Without peers
/// (`controller.join`) nothing is initialized: the controller waits to be
/// added to a running group. An initialized store just starts.
async fn bootstrap(
    raft: &Raft,
    node_id: u64,
    peers: Option<&[Peer]>,
) -> Result<(), ControllerError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
    if initialized {
        tracing::info!("raft store already initialized");
        return Ok(());
    }
    let Some(peers) = peers else {
        tracing::info!(
            "empty raft store and controller.join = true; waiting to be added to a running controller group (streambus cluster add-controller)"
        );
        return Ok(());
    };
    let lowest = peers.iter().map(|p| p.id).min();
    if lowest != Some(node_id) {
        tracing::info!(
            ?lowest,
            "empty raft store; waiting for the lowest-id controller to initialize the group"
        );
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|p| (p.id, BasicNode::new(&p.address)))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(voters = peers.len(), "raft group initialized");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(ControllerError::Raft(format!("initialize: {e}"))),
    }
}

/// Mirrors Raft and metadata state into the metrics.
async fn update_metrics(
    raft: Raft,
    sm: StateMachineStore,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut raft_rx = raft.metrics();
    let mut sm_rx = sm.subscribe();
    let mut leader = None;
    // Partition health walks every partition: at most once a second, not
    // on every applied entry.
    let mut health = tokio::time::interval(Duration::from_secs(1));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        {
            let m = raft_rx.borrow_and_update();
            metrics.raft_term.set(m.current_term as i64);
            metrics
                .is_leader
                .set(i64::from(m.state == ServerState::Leader));
            if m.current_leader != leader {
                if leader.is_some() || m.current_leader.is_some() {
                    metrics.leader_changes.inc();
                }
                leader = m.current_leader;
            }
        }
        {
            let md = sm_rx.borrow_and_update();
            metrics.metadata_version.set(md.version as i64);
            metrics.topics.set(md.topics.len() as i64);
            metrics
                .storage_nodes_alive
                .set(md.alive_nodes().len() as i64);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = raft_rx.changed() => if r.is_err() { return },
            r = sm_rx.changed() => if r.is_err() { return },
            _ = health.tick() => metrics.observe_partitions(&sm_rx.borrow()),
        }
    }
}

/// Whether this controller has applied everything the current leader had
/// applied when asked. `None` when there is no leader or it cannot tell yet.
async fn caught_up(proposer: &Proposer, node_id: u64, sm: &StateMachineStore) -> bool {
    let Some((leader, address)) = proposer.leader() else {
        return false;
    };
    if leader == node_id {
        // Waits until everything committed before now is applied here.
        let check = tokio::time::timeout(
            Duration::from_secs(5),
            proposer.raft().ensure_linearizable(),
        );
        return matches!(check.await, Ok(Ok(_)));
    }
    let Ok(channel) = proposer.dial().channel(&address) else {
        return false;
    };
    let mut client =
        ControllerServiceClient::new(channel).max_decoding_message_size(MAX_METADATA_MESSAGE_BYTES);
    let mut request = tonic::Request::new(GetMetadataRequest::default());
    request.set_timeout(Duration::from_secs(2));
    let Ok(reply) = client.get_metadata(request).await else {
        return false;
    };
    let target = reply.into_inner().version;
    let mut rx = sm.subscribe();
    let wait = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|m| m.version >= target));
    matches!(wait.await, Ok(Ok(_)))
}

/// Publishes readiness ("serving and caught up") on `ready` and gRPC health;
/// both turn false when shutdown starts.
async fn track_readiness(
    proposer: Proposer,
    node_id: u64,
    sm: StateMachineStore,
    ready: Option<watch::Sender<bool>>,
    became_ready: Arc<std::sync::atomic::AtomicBool>,
    health: HealthReporter,
    cancel: CancellationToken,
) {
    let mut raft_rx = proposer.raft().metrics();
    let mut is_ready = false;
    loop {
        // A controller outside its own membership (waiting to join, or
        // removed) serves no metadata; one out of contact with its group
        // (a leader cut off from a quorum included) may serve stale
        // metadata.
        let has_leader = raft_rx.borrow_and_update().current_leader.is_some()
            && proposer.is_member()
            && proposer.in_contact();
        let now_ready = if !has_leader {
            false
        } else if is_ready {
            true
        } else {
            tokio::select! {
                () = cancel.cancelled() => break,
                ok = caught_up(&proposer, node_id, &sm) => ok,
            }
        };
        if now_ready != is_ready {
            is_ready = now_ready;
            tracing::info!(ready = is_ready, "controller readiness changed");
            if let Some(tx) = &ready {
                tx.send_replace(is_ready);
            }
            if is_ready {
                became_ready.store(true, std::sync::atomic::Ordering::Relaxed);
                health
                    .set_serving::<ControllerServiceServer<ControllerGrpc>>()
                    .await;
            } else {
                health
                    .set_not_serving::<ControllerServiceServer<ControllerGrpc>>()
                    .await;
            }
        }
        let retry = if has_leader && !is_ready {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            r = raft_rx.changed() => if r.is_err() { break },
            () = tokio::time::sleep(retry) => {}
        }
    }
    // Draining: no longer ready.
    if let Some(tx) = &ready {
        tx.send_replace(false);
    }
    health
        .set_not_serving::<ControllerServiceServer<ControllerGrpc>>()
        .await;
}
