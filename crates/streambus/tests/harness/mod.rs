//! A whole cluster in one process for fault tests: controllers (one Raft
//! group), storage nodes and a gateway, all real servers on 127.0.0.1
//! talking gRPC. Each controller, each storage node and the gateway runs on
//! a runtime of its own (killing it shuts that runtime down: every task and
//! connection stops mid-flight, nothing drains). A storage node is reached only
//! through proxies that can cut its links: one in front of it (what
//! followers and the gateway connect to, its advertised address) and one
//! between it and each controller. Each controller dials each other
//! controller through a proxy of its own (one per direction), so a
//! controller can be cut off from its Raft peers alone.

#![allow(dead_code)]

pub mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_client::{Client, v1};
use streambus_controller::{ControllerConfig, Peer, PeerDial, ServeOptions};
use streambus_gateway::GatewayConfig;
use streambus_storage_node::StorageNodeConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use proxy::Proxy;

const WAIT: Duration = Duration::from_secs(60);

/// What a test may change about the servers a [`Cluster`] starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// How storage nodes open their partition logs (e.g. a slow disk).
    pub log_options: Option<streambus_log::OpenOptions>,
    /// `storage_node.memory_budget_bytes` (0: derived).
    pub node_memory_budget: u64,
    /// `gateway.memory_budget_bytes` (0: derived).
    pub gateway_memory_budget: usize,
}

/// One storage node and its links.
pub struct Node {
    pub id: u64,
    dir: PathBuf,
    /// Its real listener address (reused across restarts).
    addr: SocketAddr,
    /// In front of it: followers and the gateway connect here.
    pub inbound: Proxy,
    /// Between it and each controller.
    pub to_controllers: Vec<Proxy>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Node {
    /// Whether it runs.
    pub fn is_up(&self) -> bool {
        self.runtime.is_some()
    }

    /// Its address without the proxy (to reach it from "its side" of a
    /// partition).
    pub fn direct_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One controller.
pub struct Controller {
    pub id: u64,
    pub addr: SocketAddr,
    dir: PathBuf,
    /// What it dials to reach each other controller, by that controller's
    /// id: a proxy in front of it, for this direction only.
    pub to_peers: BTreeMap<u64, Proxy>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Controller {
    /// Whether it runs.
    pub fn is_up(&self) -> bool {
        self.runtime.is_some()
    }
}

/// The cluster.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub controllers: BTreeMap<u64, Controller>,
    pub nodes: BTreeMap<u64, Node>,
    pub gateway: String,
    /// The gateway's listener address (reused across restarts).
    gateway_addr: Option<SocketAddr>,
    gateway_runtime: Option<tokio::runtime::Runtime>,
    options: Options,
    /// The running gateway's metrics.
    pub gateway_metrics: Option<streambus_gateway::Metrics>,
    /// Each running storage node's metrics.
    pub node_metrics: BTreeMap<u64, streambus_storage_node::Metrics>,
}

impl Cluster {
    /// A controller, `nodes` storage nodes and a gateway, all ready.
    pub async fn start(nodes: u64) -> Cluster {
        Cluster::start_with(1, nodes).await
    }

    /// `controllers` controllers (one Raft group), `nodes` storage nodes
    /// and a gateway, all ready.
    pub async fn start_with(controllers: u64, nodes: u64) -> Cluster {
        Cluster::start_with_options(controllers, nodes, Options::default()).await
    }

    /// [`Cluster::start_with`], the servers changed as `options` say.
    pub async fn start_with_options(controllers: u64, nodes: u64, options: Options) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            controllers: BTreeMap::new(),
            dir,
            nodes: BTreeMap::new(),
            gateway: String::new(),
            gateway_addr: None,
            gateway_runtime: None,
            options,
            gateway_metrics: None,
            node_metrics: BTreeMap::new(),
        };
        for id in 1..=controllers {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            cluster.controllers.insert(
                id,
                Controller {
                    id,
                    addr,
                    dir: cluster.dir.path().join(format!("controller-{id}")),
                    to_peers: BTreeMap::new(),
                    runtime: None,
                },
            );
        }
        let ids: Vec<u64> = cluster.controllers.keys().copied().collect();
        for &from in &ids {
            for &to in &ids {
                if from != to {
                    let proxy = Proxy::start(cluster.controllers[&to].addr).await;
                    cluster
                        .controllers
                        .get_mut(&from)
                        .unwrap()
                        .to_peers
                        .insert(to, proxy);
                }
            }
        }
        let mut ready = Vec::new();
        for id in ids {
            ready.push(cluster.spawn_controller(id));
        }
        for mut r in ready {
            tokio::time::timeout(WAIT, r.wait_for(|r| *r))
                .await
                .expect("controller ready")
                .unwrap();
        }
        for id in 1..=nodes {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let mut to_controllers = Vec::new();
            for c in cluster.controllers.values() {
                to_controllers.push(Proxy::start(c.addr).await);
            }
            let node = Node {
                id,
                dir: cluster.dir.path().join(format!("storage-{id}")),
                addr,
                inbound: Proxy::start(addr).await,
                to_controllers,
                runtime: None,
            };
            cluster.nodes.insert(id, node);
            cluster.start_node(id).await;
        }
        cluster.start_gateway().await;
        cluster
    }

    /// Starts controller `id` on its runtime; returns its readiness.
    fn spawn_controller(&mut self, id: u64) -> watch::Receiver<bool> {
        let peers: Vec<Peer> = if self.controllers.len() > 1 {
            self.controllers
                .values()
                .map(|c| Peer {
                    id: c.id,
                    address: c.addr.to_string(),
                })
                .collect()
        } else {
            Vec::new()
        };
        // Another controller's address, as the Raft membership has it, to
        // this controller's proxy in front of it.
        let links: BTreeMap<String, String> = self.controllers[&id]
            .to_peers
            .iter()
            .map(|(to, proxy)| {
                (
                    self.controllers[to].addr.to_string(),
                    proxy.addr.to_string(),
                )
            })
            .collect();
        let dial = PeerDial::new(move |address| {
            links
                .get(address)
                .cloned()
                .unwrap_or_else(|| address.to_string())
        });
        let c = self.controllers.get_mut(&id).unwrap();
        assert!(c.runtime.is_none(), "controller {id} runs already");
        let config = ControllerConfig {
            node_id: id,
            listen_addr: c.addr,
            advertised_addr: c.addr.to_string(),
            data_dir: c.dir.clone(),
            peers,
            node_lease_ms: 1_500,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            ..ControllerConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ready_tx, ready) = watch::channel(false);
        let addr = c.addr;
        runtime.spawn(async move {
            let listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let _ = streambus_controller::serve_with_options(
                config,
                listener,
                std::future::pending(),
                ServeOptions {
                    ready: Some(ready_tx),
                    peer_dial: Some(dial),
                    ..ServeOptions::default()
                },
            )
            .await;
        });
        c.runtime = Some(runtime);
        ready
    }

    /// Kills controller `id` (no drain).
    pub async fn kill_controller(&mut self, id: u64) {
        if let Some(rt) = self.controllers.get_mut(&id).unwrap().runtime.take() {
            rt.shutdown_background();
        }
        // sled may hold its directory lock for a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Restarts controller `id` on its data directory and waits until it
    /// is ready.
    pub async fn start_controller(&mut self, id: u64) {
        let mut ready = self.spawn_controller(id);
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap_or_else(|_| panic!("controller {id} ready again"))
            .unwrap();
    }

    /// Starts (or restarts, on the same address) the gateway and waits
    /// until it is ready.
    pub async fn start_gateway(&mut self) {
        assert!(self.gateway_runtime.is_none(), "the gateway runs already");
        let addr = match self.gateway_addr {
            Some(addr) => addr,
            None => {
                let addr = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                self.gateway_addr = Some(addr);
                addr
            }
        };
        self.gateway = addr.to_string();
        let config = GatewayConfig {
            controllers: self
                .controllers
                .values()
                .map(|c| c.addr.to_string())
                .collect(),
            storage_call_timeout_ms: 2_000,
            memory_budget_bytes: self.options.gateway_memory_budget,
            ..GatewayConfig::default()
        };
        let metrics = streambus_gateway::Metrics::new(&mut Registry::default());
        self.gateway_metrics = Some(metrics.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ready_tx, mut ready) = watch::channel(false);
        runtime.spawn(async move {
            // The address was just given up by the killed gateway.
            let listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let _ = streambus_gateway::serve_with_listener(
                config,
                listener,
                metrics,
                Some(ready_tx),
                std::future::pending(),
            )
            .await;
        });
        self.gateway_runtime = Some(runtime);
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .expect("gateway ready")
            .unwrap();
    }

    /// Kills the gateway (no drain: its streams and connections break).
    pub async fn kill_gateway(&mut self) {
        if let Some(rt) = self.gateway_runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Starts (or restarts) node `id` on its data directory and address,
    /// and waits until it is ready.
    pub async fn start_node(&mut self, id: u64) {
        let log_options = self.options.log_options.clone().unwrap_or_default();
        let metrics = streambus_storage_node::Metrics::new(&mut Registry::default());
        self.node_metrics.insert(id, metrics.clone());
        let node_memory_budget = self.options.node_memory_budget;
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.runtime.is_none(), "node {id} runs already");
        let config = StorageNodeConfig {
            node_id: id,
            data_dir: node.dir.clone(),
            advertised_addr: node.inbound.addr.to_string(),
            controllers: node
                .to_controllers
                .iter()
                .map(|p| p.addr.to_string())
                .collect(),
            heartbeat_interval_ms: 100,
            replica_lag_time_max_ms: 2_000,
            ack_timeout_ms: 4_000,
            replica_fetch_wait_ms: 200,
            reopen_interval_ms: 200,
            memory_budget_bytes: node_memory_budget,
            ..StorageNodeConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = node.addr;
        let (ready_tx, mut ready) = watch::channel(false);
        runtime.spawn(async move {
            // The address was just given up by the killed node.
            let listener = loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            if let Err(e) = streambus_storage_node::serve_with_log_options(
                config,
                listener,
                metrics,
                Some(ready_tx),
                std::future::pending(),
                log_options,
            )
            .await
            {
                panic!("storage node {id} stopped: {e}");
            }
        });
        node.runtime = Some(runtime);
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap_or_else(|_| panic!("storage node {id} ready"))
            .unwrap();
    }

    /// Kills node `id` (no drain, no flush).
    pub async fn kill_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(rt) = node.runtime.take() {
            rt.shutdown_background();
        }
        // Blocking log work of the killed node may still hold the data
        // directory for a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Cuts node `id` off from the controller and from every other node
    /// and the gateway (it keeps running).
    pub fn isolate(&self, id: u64) {
        let n = &self.nodes[&id];
        n.inbound.set_cut(true);
        for p in &n.to_controllers {
            p.set_cut(true);
        }
    }

    /// Cuts (true) or heals (false) every storage node's link to controller
    /// `id`; its Raft peers and the gateway still reach it.
    pub fn cut_controller(&self, id: u64, cut: bool) {
        let at = self
            .controllers
            .keys()
            .position(|c| *c == id)
            .expect("a controller of the cluster");
        for n in self.nodes.values() {
            n.to_controllers[at].set_cut(cut);
        }
    }

    /// Cuts (true) or heals (false) every Raft link of controller `id`,
    /// both ways: it and its peers no longer reach each other. Storage
    /// nodes and the gateway still reach it (see [`Cluster::cut_controller`]
    /// for those).
    pub fn isolate_controller(&self, id: u64, cut: bool) {
        for (from, c) in &self.controllers {
            for (to, proxy) in &c.to_peers {
                if *from == id || *to == id {
                    proxy.set_cut(cut);
                }
            }
        }
    }

    /// Controller `id`'s own Raft view (`DescribeController`, asked
    /// directly, not through a proxy); `None` if it does not answer soon.
    pub async fn describe_controller(&self, id: u64) -> Option<v1::ControllerStatus> {
        use streambus_proto::internal::DescribeControllerRequest;
        use streambus_proto::internal::controller_service_client::ControllerServiceClient;
        let addr = self.controllers[&id].addr;
        let ask = async {
            let mut c = ControllerServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            c.describe_controller(DescribeControllerRequest {})
                .await
                .ok()
                .map(tonic::Response::into_inner)
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
    }

    /// Controller `id`'s applied metadata (`GetMetadata`, asked directly);
    /// `None` if it does not answer soon.
    pub async fn controller_metadata(
        &self,
        id: u64,
    ) -> Option<streambus_proto::internal::ClusterMetadata> {
        use streambus_proto::internal::GetMetadataRequest;
        use streambus_proto::internal::controller_service_client::ControllerServiceClient;
        let addr = self.controllers[&id].addr;
        let ask = async {
            let mut c = ControllerServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            c.get_metadata(GetMetadataRequest::default())
                .await
                .ok()
                .map(tonic::Response::into_inner)
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
    }

    /// The controller that says it leads, among those that run, with its
    /// term; the one with the highest term if several say so (an isolated
    /// old leader may still believe it leads).
    pub async fn controller_leader(&self) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (id, c) in &self.controllers {
            if !c.is_up() {
                continue;
            }
            if let Some(s) = self.describe_controller(*id).await
                && s.state == "leader"
                && best.is_none_or(|(_, term)| s.term > term)
            {
                best = Some((*id, s.term));
            }
        }
        best
    }

    /// Waits until every running controller follows one leader in one
    /// term, and that leader says it leads.
    pub async fn wait_controllers_whole(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut views = Vec::new();
            for (id, c) in &self.controllers {
                if c.is_up() {
                    views.push((*id, self.describe_controller(*id).await));
                }
            }
            let first = views.first().and_then(|(_, v)| v.as_ref());
            let whole = first.is_some_and(|f| {
                f.leader_id != 0
                    && views.iter().all(|(id, v)| {
                        v.as_ref().is_some_and(|v| {
                            v.leader_id == f.leader_id
                                && v.term == f.term
                                && (v.state == "leader") == (*id == f.leader_id)
                        })
                    })
            });
            if whole {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the controllers never agreed on a leader: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Heals what [`Cluster::isolate`] cut.
    pub fn heal(&self, id: u64) {
        let n = &self.nodes[&id];
        n.inbound.set_cut(false);
        for p in &n.to_controllers {
            p.set_cut(false);
        }
    }

    /// An SDK client of the gateway.
    pub async fn client(&self) -> Client {
        Client::connect(self.gateway.clone()).await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
        if let Some(rt) = self.gateway_runtime.take() {
            rt.shutdown_background();
        }
        for c in self.controllers.values_mut() {
            if let Some(rt) = c.runtime.take() {
                rt.shutdown_background();
            }
        }
    }
}

/// Partition `p` of `topic` as the gateway describes it.
pub async fn partition(client: &Client, topic: &str, p: u32) -> v1::PartitionDescription {
    client.describe_topic(topic).await.unwrap().partitions[p as usize].clone()
}

/// Waits until partition `p` of `topic` satisfies `f`.
pub async fn wait_partition(
    client: &Client,
    topic: &str,
    p: u32,
    what: &str,
    f: impl Fn(&v1::PartitionDescription) -> bool,
) -> v1::PartitionDescription {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = partition(client, topic, p).await;
        if f(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}/{p} never became {what}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
