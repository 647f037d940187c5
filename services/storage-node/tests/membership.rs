//! A storage node against a real controller in this process: readiness
//! and gRPC health follow controller contact both ways, identity conflicts
//! stop the node with a clear error, and fsyncs are exported.

use std::path::Path;
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_controller::{ControllerConfig, serve_with_listener};
use streambus_proto::Reason;
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{AppendRequest, PartitionRef};
use streambus_proto::v1::{Acks, CreateTopicRequest};
use streambus_record::{BatchBuilder, Compression, Record};
use streambus_storage_node::{Metrics, StorageNodeConfig, StorageNodeError};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const WAIT: Duration = Duration::from_secs(20);

struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<T>,
}

impl<T> Running<T> {
    async fn stop(mut self) -> T {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("task")
    }
}

async fn controller(
    dir: &Path,
    listener: TcpListener,
) -> Running<Result<(), streambus_controller::ControllerError>> {
    let config = ControllerConfig {
        data_dir: dir.to_path_buf(),
        node_lease_ms: 1_000,
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..ControllerConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, mut ready) = watch::channel(false);
    let task = tokio::spawn(serve_with_listener(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        Some(ready_tx),
    ));
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .expect("controller ready")
        .unwrap();
    Running {
        stop: Some(stop),
        task,
    }
}

fn node(
    node_id: u64,
    dir: &Path,
    controller: &str,
) -> (Running<Result<(), StorageNodeError>>, watch::Receiver<bool>) {
    let started = start_node(node_id, dir, controller);
    (started.running, started.ready)
}

/// A storage node being served, with what tests look at.
struct StartedNode {
    running: Running<Result<(), StorageNodeError>>,
    ready: watch::Receiver<bool>,
    address: String,
    metrics: Metrics,
}

fn start_node(node_id: u64, dir: &Path, controller: &str) -> StartedNode {
    let config = StorageNodeConfig {
        node_id,
        data_dir: dir.to_path_buf(),
        controllers: vec![controller.to_string()],
        heartbeat_interval_ms: 100,
        ..StorageNodeConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = watch::channel(false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let metrics = Metrics::new(&mut Registry::default());
    let served = metrics.clone();
    let task = tokio::spawn(async move {
        streambus_storage_node::serve_with_listener(
            config,
            TcpListener::from_std(listener).unwrap(),
            served,
            Some(ready_tx),
            async move {
                let _ = stopped.await;
            },
        )
        .await
    });
    StartedNode {
        running: Running {
            stop: Some(stop),
            task,
        },
        ready,
        address,
        metrics,
    }
}

/// The node's gRPC health for the StorageService.
async fn health(address: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "streambus.internal.v1.StorageService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn wait_for(ready: &mut watch::Receiver<bool>, want: bool) {
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r == want))
        .await
        .unwrap_or_else(|_| panic!("readiness did not become {want}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_controller_contact_both_ways() {
    let cdir = tempfile::tempdir().unwrap();
    let ndir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = controller(cdir.path(), listener).await;
    let StartedNode {
        running: n,
        mut ready,
        address,
        ..
    } = start_node(1, ndir.path(), &addr.to_string());
    wait_for(&mut ready, true).await;
    assert_eq!(health(&address).await, ServingStatus::Serving);

    // The controller goes away: beyond the lease the node is not ready,
    // nor SERVING.
    c.stop().await.unwrap();
    wait_for(&mut ready, false).await;
    assert_eq!(health(&address).await, ServingStatus::NotServing);

    // It comes back on the same address: ready again.
    let listener = TcpListener::bind(addr).await.unwrap();
    let c = controller(cdir.path(), listener).await;
    wait_for(&mut ready, true).await;
    assert_eq!(health(&address).await, ServingStatus::Serving);
    n.stop().await.unwrap();
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_the_same_id_is_refused_and_stops() {
    let cdir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let c = controller(cdir.path(), listener).await;
    let first_dir = tempfile::tempdir().unwrap();
    let (first, mut ready) = node(3, first_dir.path(), &addr);
    wait_for(&mut ready, true).await;

    let twin_dir = tempfile::tempdir().unwrap();
    let (twin, _) = node(3, twin_dir.path(), &addr);
    let result = tokio::time::timeout(WAIT, twin.task)
        .await
        .expect("the twin stops by itself")
        .unwrap();
    match result {
        Err(StorageNodeError::Refused(e)) => assert_eq!(e.reason, Reason::NodeIdConflict, "{e}"),
        other => panic!("expected NODE_ID_CONFLICT, got {other:?}"),
    }
    // The first node keeps serving.
    assert!(*ready.borrow());

    // Its data directory cannot be served by a second process either.
    let (again, _) = node(3, first_dir.path(), &addr);
    let result = tokio::time::timeout(WAIT, again.task)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err().to_string();
    assert!(err.contains("in use by another storage node"), "{err}");

    first.stop().await.unwrap();
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_another_cluster_is_refused() {
    let ndir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        // A fresh controller store each round: a new cluster.
        let cdir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let c = controller(cdir.path(), listener).await;
        let (n, mut ready) = node(1, ndir.path(), &addr);
        if round == 0 {
            wait_for(&mut ready, true).await;
            n.stop().await.unwrap();
        } else {
            let result = tokio::time::timeout(WAIT, n.task).await.unwrap().unwrap();
            match result {
                Err(StorageNodeError::Refused(e)) => {
                    assert_eq!(e.reason, Reason::ClusterIdMismatch, "{e}")
                }
                other => panic!("expected CLUSTER_ID_MISMATCH, got {other:?}"),
            }
            assert!(!*ready.borrow());
        }
        c.stop().await.unwrap();
    }
}

/// An append under `fsync.policy=always` fsyncs, and the node's
/// `streambus_storage_fsyncs` counter (exported every 500 ms) shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_always_append_increases_the_fsync_metric() {
    let cdir = tempfile::tempdir().unwrap();
    let ndir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let c = controller(cdir.path(), listener).await;
    let StartedNode {
        running: n,
        mut ready,
        address,
        metrics,
    } = start_node(1, ndir.path(), &addr);
    wait_for(&mut ready, true).await;
    let client = streambus_cluster::ControllerClient::new(vec![addr]).unwrap();
    client
        .create_topic(CreateTopicRequest {
            name: "durable".into(),
            partitions: 1,
            replication_factor: 1,
            configs: [("fsync.policy".to_string(), "always".to_string())].into(),
        })
        .await
        .unwrap();
    let mut storage = StorageServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let request = || {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            value: Some(bytes::Bytes::from_static(b"v")),
            timestamp_ms: 1,
            ..Record::default()
        });
        AppendRequest {
            partition: Some(PartitionRef {
                topic: "durable".into(),
                partition: 0,
            }),
            batch: b.build(),
            acks: Acks::Leader as i32,
            leader_epoch: 0,
        }
    };
    // The node opens the partition once it applied the new metadata.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let append = storage.append(request()).await;
        match append {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("append failed: {s}"),
        }
    }
    // What opening the log and the append fsynced, exported.
    let exported = || metrics.fsyncs.get();
    let deadline = tokio::time::Instant::now() + WAIT;
    while exported() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no fsync exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the export settled, one more append adds at least its fsync.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = exported();
    storage.append(request()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while exported() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the append's fsync was not exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.stop().await.unwrap();
    c.stop().await.unwrap();
}
