//! Shared by the controller tests: controllers started in-process on
//! pre-bound `127.0.0.1:0` listeners, and a client of them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use streambus_cluster::ControllerClient;
use streambus_controller::{
    ControllerConfig, ControllerError, Peer, ServeOptions, serve_with_options,
};
use streambus_proto::internal::{HeartbeatRequest, RegisterNodeRequest};
use streambus_proto::v1::CreateTopicRequest;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(15);

/// A registration of node `id` from data directory `dir-<id>`, incarnation 1.
pub fn reg(id: u64, address: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        node_id: id,
        address: address.to_string(),
        incarnation: 1,
        directory_id: format!("dir-{id}"),
        cluster_id: String::new(),
        rack: String::new(),
        max_partitions: 0,
    }
}

/// A heartbeat of incarnation 1 with nothing offline.
pub fn hb(id: u64) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: id,
        incarnation: 1,
        offline_replicas: vec![],
    }
}

pub struct Controller {
    pub id: u64,
    pub address: String,
    pub ready: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ControllerError>>,
}

impl Controller {
    pub async fn wait_ready(&mut self) {
        tokio::time::timeout(WAIT, self.ready.wait_for(|r| *r))
            .await
            .expect("controller ready in time")
            .expect("ready channel open");
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("controller stops in time")
            .expect("controller task")
            .expect("controller stops cleanly");
    }
}

pub fn config(node_id: u64, data_dir: &std::path::Path, peers: Vec<Peer>) -> ControllerConfig {
    ControllerConfig {
        node_id,
        data_dir: data_dir.to_path_buf(),
        advertised_addr: peers
            .iter()
            .find(|p| p.id == node_id)
            .map(|p| p.address.clone())
            .unwrap_or_default(),
        peers,
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..ControllerConfig::default()
    }
}

pub fn start(config: ControllerConfig, listener: TcpListener) -> Controller {
    start_with(config, listener, ServeOptions::default())
}

/// [`start`] with serve options (`ready` is set here).
pub fn start_with(
    config: ControllerConfig,
    listener: TcpListener,
    options: ServeOptions,
) -> Controller {
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = watch::channel(false);
    let id = config.node_id;
    let task = tokio::spawn(serve_with_options(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        ServeOptions {
            ready: Some(ready_tx),
            ..options
        },
    ));
    Controller {
        id,
        address,
        ready,
        stop: Some(stop),
        task,
    }
}

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

pub async fn single(dir: &std::path::Path, lease_ms: u64) -> Controller {
    let l = listener().await;
    let mut c = start(
        ControllerConfig {
            node_lease_ms: lease_ms,
            ..config(1, dir, Vec::new())
        },
        l,
    );
    c.wait_ready().await;
    c
}

pub async fn cluster(dirs: &[tempfile::TempDir]) -> Vec<Controller> {
    let mut listeners = Vec::new();
    for _ in dirs {
        listeners.push(listener().await);
    }
    let peers: Vec<Peer> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| Peer {
            id: i as u64 + 1,
            address: l.local_addr().unwrap().to_string(),
        })
        .collect();
    let mut controllers: Vec<Controller> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| start(config(i as u64 + 1, dirs[i].path(), peers.clone()), l))
        .collect();
    for c in &mut controllers {
        c.wait_ready().await;
    }
    controllers
}

pub fn topic(name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor: 1,
        configs: HashMap::new(),
    }
}

pub fn client(controllers: &[&Controller]) -> ControllerClient {
    ControllerClient::new(controllers.iter().map(|c| c.address.clone()).collect()).unwrap()
}

pub async fn leader_of(client: &ControllerClient) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(md) = client.get_metadata().await
            && md.controller_leader_id != 0
        {
            return md.controller_leader_id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A controller with an empty store that waits to be added to a running
/// group (`controller.join = true`, no peers). Not ready until added.
pub async fn joiner(node_id: u64, dir: &std::path::Path) -> Controller {
    let l = listener().await;
    start(
        ControllerConfig {
            join: true,
            ..config(node_id, dir, Vec::new())
        },
        l,
    )
}

/// A client of `c` alone that does not retry.
pub fn only(c: &Controller) -> ControllerClient {
    client(&[c]).with_retry_for(Duration::ZERO)
}

/// Three controllers (their data under `dirs`, which the caller keeps) with
/// storage node 1 registered, and a client of all three.
pub async fn three_with_a_storage_node(
    dirs: &[tempfile::TempDir],
) -> (Vec<Controller>, ControllerClient) {
    assert_eq!(dirs.len(), 3);
    let controllers = cluster(dirs).await;
    let all: Vec<&Controller> = controllers.iter().collect();
    let client = client(&all);
    client
        .register_node(reg(1, "127.0.0.1:9001"))
        .await
        .unwrap();
    (controllers, client)
}

/// `n` temporary data directories.
pub fn dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

/// Shuts every controller down.
pub async fn shutdown_all(controllers: impl IntoIterator<Item = Controller>) {
    for c in controllers {
        c.shutdown().await;
    }
}
