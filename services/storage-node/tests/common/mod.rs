//! A real controller and real storage nodes in one process, over loopback
//! gRPC. Each node runs on a runtime of its own, and is killed by shutting
//! that runtime down (every task and connection of the node stops
//! mid-flight, nothing drains) and restarted on the same data directory.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::registry::Registry;
use streambus_cluster::ControllerClient;
use streambus_controller::{ControllerConfig, serve_with_listener};
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{AppendRequest, ClusterMetadata, ListOffsetsRequest, PartitionRef};
use streambus_proto::v1::{Acks, CreateTopicRequest, PartitionDescription};
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, BatchIter, Compression, Record, decode_records};
use streambus_storage_node::{Metrics, StorageNodeConfig};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Node {
    pub dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

pub struct Cluster {
    _cdir: tempfile::TempDir,
    controller_stop: Option<oneshot::Sender<()>>,
    controller_task: Option<JoinHandle<()>>,
    controller_addr: String,
    /// How often the controller moves leaderships back to preferred
    /// replicas (0 = never).
    leader_rebalance_interval_ms: u64,
    pub client: ControllerClient,
    pub nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    /// A controller (no preferred-leader rebalance) and `nodes` storage
    /// nodes, ids 1 to `nodes`.
    pub async fn start(nodes: u64) -> Cluster {
        Cluster::start_with(nodes, 0).await
    }

    /// Like [`Cluster::start`], the controller moving leaderships back to
    /// preferred replicas every `leader_rebalance_interval_ms`.
    pub async fn start_with(nodes: u64, leader_rebalance_interval_ms: u64) -> Cluster {
        let cdir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller_addr = listener.local_addr().unwrap().to_string();
        let mut c = Cluster {
            _cdir: cdir,
            controller_stop: None,
            controller_task: None,
            controller_addr: controller_addr.clone(),
            leader_rebalance_interval_ms,
            client: ControllerClient::new(vec![controller_addr]).unwrap(),
            nodes: BTreeMap::new(),
        };
        c.start_controller(listener).await;
        for id in 1..=nodes {
            c.nodes.insert(
                id,
                Node {
                    dir: tempfile::tempdir().unwrap(),
                    runtime: None,
                },
            );
            c.start_node(id).await;
        }
        c
    }

    async fn start_controller(&mut self, listener: TcpListener) {
        let config = ControllerConfig {
            data_dir: self._cdir.path().to_path_buf(),
            node_lease_ms: 1_000,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            leader_rebalance_interval_ms: self.leader_rebalance_interval_ms,
            ..ControllerConfig::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, mut ready) = watch::channel(false);
        let task = tokio::spawn(async move {
            serve_with_listener(
                config,
                listener,
                async move {
                    let _ = stopped.await;
                },
                Some(ready_tx),
            )
            .await
            .unwrap();
        });
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .expect("controller ready")
            .unwrap();
        self.controller_stop = Some(stop);
        self.controller_task = Some(task);
    }

    pub async fn stop_controller(&mut self) {
        let _ = self.controller_stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.controller_task.take().unwrap())
            .await
            .expect("controller stops")
            .unwrap();
    }

    pub async fn restart_controller(&mut self) {
        let listener = TcpListener::bind(&self.controller_addr).await.unwrap();
        self.start_controller(listener).await;
    }

    /// Starts (or restarts) node `id` on its data directory and waits until
    /// it is ready.
    pub async fn start_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.runtime.is_none(), "node {id} runs already");
        let config = StorageNodeConfig {
            node_id: id,
            data_dir: node.dir.path().to_path_buf(),
            controllers: vec![self.controller_addr.clone()],
            heartbeat_interval_ms: 100,
            replica_lag_time_max_ms: 1_500,
            ack_timeout_ms: 4_000,
            replica_fetch_wait_ms: 200,
            reopen_interval_ms: 200,
            maintenance_interval_ms: 100,
            group_session_timeout_ms: 2_000,
            group_heartbeat_interval_ms: 200,
            group_rebalance_timeout_ms: 3_000,
            group_retention_ms: 3_000,
            ..StorageNodeConfig::default()
        };
        let (ready_tx, mut ready) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let result = streambus_storage_node::serve_with_listener(
                config,
                listener,
                Metrics::new(&mut Registry::default()),
                Some(ready_tx),
                std::future::pending(),
            )
            .await;
            if let Err(e) = result {
                panic!("storage node {id} stopped: {e}");
            }
        });
        node.runtime = Some(runtime);
        tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
            .await
            .unwrap_or_else(|_| panic!("node {id} ready"))
            .unwrap();
    }

    /// Blocks node `id`'s only runtime worker for `how_long`, as a node
    /// saturated with work would, and returns at once.
    pub fn stall_node(&self, id: u64, how_long: Duration) {
        let runtime = self.nodes[&id].runtime.as_ref().expect("node runs");
        runtime.spawn(async move { std::thread::sleep(how_long) });
    }

    /// Kills node `id`: its tasks and connections are dropped mid-flight,
    /// nothing drains.
    pub async fn kill_node(&mut self, id: u64) {
        let runtime = self.nodes.get_mut(&id).unwrap().runtime.take().unwrap();
        runtime.shutdown_background();
        // Blocking log work of the aborted node may still be finishing and
        // holds the data directory until then.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Kills every running node.
    pub async fn kill_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].runtime.is_some() {
                self.kill_node(id).await;
            }
        }
    }

    pub async fn metadata(&self) -> ClusterMetadata {
        self.client.get_metadata().await.unwrap()
    }

    pub async fn partition(&self, topic: &str, partition: u32) -> PartitionDescription {
        let md = self.metadata().await;
        md.topics
            .iter()
            .find(|t| t.name == topic)
            .expect("topic exists")
            .partitions[partition as usize]
            .clone()
    }

    /// Waits until the partition satisfies `f`.
    pub async fn wait_partition(
        &self,
        topic: &str,
        partition: u32,
        what: &str,
        f: impl Fn(&PartitionDescription) -> bool,
    ) -> PartitionDescription {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = self.partition(topic, partition).await;
            if f(&p) {
                return p;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{topic}/{partition} never became {what}: {p:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates `topic` and waits until every partition is fully in sync.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &[(&str, &str)],
    ) {
        self.client
            .create_topic(CreateTopicRequest {
                name: topic.into(),
                partitions,
                replication_factor,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .unwrap();
        for p in 0..partitions {
            self.wait_partition(topic, p, "fully in sync", |p| {
                p.isr.len() == replication_factor as usize && p.leader != 0
            })
            .await;
            self.wait_served(topic, p).await;
        }
    }

    /// Waits until the node that metadata names leader serves the
    /// partition: the controller's metadata says who leads before that
    /// node has applied it and opened the log.
    pub async fn wait_served(&self, topic: &str, partition: u32) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let served = match self.leader(topic, partition).await {
                Ok((mut client, _)) => client
                    .list_offsets(ListOffsetsRequest {
                        partition: Some(PartitionRef {
                            topic: topic.into(),
                            partition,
                        }),
                        query: None,
                    })
                    .await
                    .map_err(|s| s.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match served {
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("{topic}/{partition} is never served by its leader: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One append of one record to whichever node metadata names leader.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        value: &str,
        acks: Acks,
    ) -> Result<i64, Error> {
        let (mut client, leader_epoch) = self.leader(topic, partition).await?;
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            value: Some(value.as_bytes().to_vec().into()),
            timestamp_ms: 1,
            ..Record::default()
        });
        let r = client
            .append(AppendRequest {
                partition: Some(PartitionRef {
                    topic: topic.into(),
                    partition,
                }),
                batch: b.build(),
                acks: acks as i32,
                leader_epoch,
            })
            .await
            .map_err(|s| Error::from_status(&s))?;
        Ok(r.into_inner().base_offset)
    }

    /// Appends `value` with acks=all, retrying retriable refusals until it
    /// is acknowledged; returns its offset. A retry after an ambiguous
    /// failure may write the value twice: only the acknowledged offset
    /// counts.
    pub async fn append_acked(&self, topic: &str, partition: u32, value: &str) -> i64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.append(topic, partition, value, Acks::All).await {
                Ok(offset) => return offset,
                Err(e) if tokio::time::Instant::now() < deadline && retriable(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("append {value} to {topic}/{partition} failed: {e}"),
            }
        }
    }

    /// A client of the node metadata names leader, and its leader epoch.
    pub async fn leader(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<(StorageServiceClient<Channel>, u64), Error> {
        let md = self.metadata().await;
        let p = &md
            .topics
            .iter()
            .find(|t| t.name == topic)
            .unwrap()
            .partitions[partition as usize];
        let addr = md
            .nodes
            .iter()
            .find(|n| n.node_id == p.leader)
            .map(|n| n.address.clone())
            .ok_or_else(|| Error::new(Reason::NotLeader, format!("no leader: {p:?}")))?;
        let client = StorageServiceClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| Error::new(Reason::Unavailable, e.to_string()))?;
        Ok((client, p.leader_epoch))
    }

    /// The leader's log start offset.
    pub async fn log_start(&self, topic: &str, partition: u32) -> i64 {
        let (mut client, _) = self.leader(topic, partition).await.unwrap();
        client
            .list_offsets(ListOffsetsRequest {
                partition: Some(PartitionRef {
                    topic: topic.into(),
                    partition,
                }),
                query: None,
            })
            .await
            .unwrap()
            .into_inner()
            .log_start_offset
    }

    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].dir.path().to_path_buf()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A runtime may not be dropped inside the test's runtime.
        for node in self.nodes.values_mut() {
            if let Some(rt) = node.runtime.take() {
                rt.shutdown_background();
            }
        }
    }
}

pub fn retriable(e: &Error) -> bool {
    matches!(
        e.reason,
        Reason::NotLeader
            | Reason::NotEnoughReplicas
            | Reason::Unavailable
            | Reason::Timeout
            | Reason::PartitionOffline
            // The controller answered before the leader applied the topic.
            | Reason::UnknownTopic
    )
}

/// The directories of `topic`'s partition replicas in `data_dir`.
pub fn partition_dirs(data_dir: &Path, topic: &str, partition: Option<u32>) -> Vec<PathBuf> {
    let prefix = match partition {
        Some(p) => format!("{topic}-{p}-"),
        None => format!("{topic}-"),
    };
    std::fs::read_dir(data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&prefix)
        })
        .collect()
}

/// Every record of a partition's log in `data_dir` (the node must be
/// stopped), as (offset, value).
pub fn read_replica(data_dir: &Path, topic: &str, partition: u32) -> Vec<(i64, String)> {
    let dirs = partition_dirs(data_dir, topic, Some(partition));
    assert_eq!(
        dirs.len(),
        1,
        "one directory of {topic}/{partition}: {dirs:?}"
    );
    let log = streambus_log::Log::open(&dirs[0], streambus_log::LogConfig::default()).unwrap();
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.end_offset() {
        let read = log.read(offset, 1 << 20, None).unwrap();
        for batch in BatchIter::new(&read.data) {
            let (_, bytes) = batch.unwrap();
            for r in decode_records(bytes).unwrap() {
                out.push((
                    r.offset,
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                ));
            }
        }
        assert!(read.next_offset > offset);
        offset = read.next_offset;
    }
    out
}

/// Checks that the replicas of `topic`/`partition` on `replicas` (nodes
/// stopped) hold the same records and that every acknowledged value is at
/// its acknowledged offset.
pub fn check_partition(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    replicas: &[u64],
    acked: &HashMap<String, i64>,
) {
    let logs: Vec<Vec<(i64, String)>> = replicas
        .iter()
        .map(|&id| read_replica(&cluster.node_dir(id), topic, partition))
        .collect();
    for (id, log) in replicas.iter().zip(&logs) {
        assert_eq!(
            log, &logs[0],
            "{topic}/{partition}: replica on node {id} differs from node {}",
            replicas[0]
        );
    }
    let by_offset: HashMap<i64, &str> = logs[0].iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (value, offset) in acked {
        assert_eq!(
            by_offset.get(offset).copied(),
            Some(value.as_str()),
            "{topic}/{partition}: acknowledged {value} is not at offset {offset}"
        );
    }
}
