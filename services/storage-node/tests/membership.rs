//! A storage node against a real controller in this process: readiness
//! follows controller contact both ways, and identity conflicts stop the
//! node with a clear error.

use std::path::Path;
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_controller::{ControllerConfig, serve_with_listener};
use streambus_proto::Reason;
use streambus_storage_node::{Metrics, StorageNodeConfig, StorageNodeError};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

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
    let config = StorageNodeConfig {
        node_id,
        data_dir: dir.to_path_buf(),
        controllers: vec![controller.to_string()],
        heartbeat_interval_ms: 100,
        ..StorageNodeConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = watch::channel(false);
    let task = tokio::spawn(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        streambus_storage_node::serve_with_listener(
            config,
            listener,
            Metrics::new(&mut Registry::default()),
            Some(ready_tx),
            async move {
                let _ = stopped.await;
            },
        )
        .await
    });
    (
        Running {
            stop: Some(stop),
            task,
        },
        ready,
    )
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
    let (n, mut ready) = node(1, ndir.path(), &addr.to_string());
    wait_for(&mut ready, true).await;

    // The controller goes away: beyond the lease the node is not ready.
    c.stop().await.unwrap();
    wait_for(&mut ready, false).await;

    // It comes back on the same address: ready again.
    let listener = TcpListener::bind(addr).await.unwrap();
    let c = controller(cdir.path(), listener).await;
    wait_for(&mut ready, true).await;
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
