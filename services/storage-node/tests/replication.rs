//! Replication factor 3 in one process: a real controller and three real
//! storage nodes over loopback gRPC. Each node runs on a runtime of its
//! own, and is killed by shutting that runtime down (every task and
//! connection of the node stops mid-flight, nothing drains) and restarted
//! on the same data directory; every record acknowledged with `acks=all` must be in every
//! replica's log at the offset it was acknowledged at.

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

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "r";

struct Node {
    dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Cluster {
    _cdir: tempfile::TempDir,
    controller_stop: Option<oneshot::Sender<()>>,
    controller_task: Option<JoinHandle<()>>,
    controller_addr: String,
    client: ControllerClient,
    nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    async fn start(nodes: u64) -> Cluster {
        let cdir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller_addr = listener.local_addr().unwrap().to_string();
        let mut c = Cluster {
            _cdir: cdir,
            controller_stop: None,
            controller_task: None,
            controller_addr: controller_addr.clone(),
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

    async fn stop_controller(&mut self) {
        let _ = self.controller_stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.controller_task.take().unwrap())
            .await
            .expect("controller stops")
            .unwrap();
    }

    async fn restart_controller(&mut self) {
        let listener = TcpListener::bind(&self.controller_addr).await.unwrap();
        self.start_controller(listener).await;
    }

    /// Starts (or restarts) node `id` on its data directory and waits until
    /// it is ready.
    async fn start_node(&mut self, id: u64) {
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

    /// Kills node `id`: its tasks and connections are dropped mid-flight,
    /// nothing drains.
    async fn kill_node(&mut self, id: u64) {
        let runtime = self.nodes.get_mut(&id).unwrap().runtime.take().unwrap();
        runtime.shutdown_background();
        // Blocking log work of the aborted node may still be finishing and
        // holds the data directory until then.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn metadata(&self) -> ClusterMetadata {
        self.client.get_metadata().await.unwrap()
    }

    async fn partition(&self) -> PartitionDescription {
        let md = self.metadata().await;
        md.topics
            .iter()
            .find(|t| t.name == TOPIC)
            .expect("topic exists")
            .partitions[0]
            .clone()
    }

    /// Waits until the partition satisfies `f`.
    async fn wait_partition(
        &self,
        what: &str,
        f: impl Fn(&PartitionDescription) -> bool,
    ) -> PartitionDescription {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = self.partition().await;
            if f(&p) {
                return p;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("partition never became {what}: {p:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_topic(&self, configs: &[(&str, &str)]) {
        self.client
            .create_topic(CreateTopicRequest {
                name: TOPIC.into(),
                partitions: 1,
                replication_factor: 3,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .await
            .unwrap();
        self.wait_partition("fully in sync", |p| p.isr.len() == 3 && p.leader != 0)
            .await;
    }

    /// One append of one record to whichever node metadata names leader.
    async fn append(&self, value: &str, acks: Acks) -> Result<i64, Error> {
        let (mut client, leader_epoch) = self.leader().await?;
        let mut b = BatchBuilder::new(Compression::None);
        b.push(&Record {
            value: Some(value.as_bytes().to_vec().into()),
            timestamp_ms: 1,
            ..Record::default()
        });
        let r = client
            .append(AppendRequest {
                partition: Some(PartitionRef {
                    topic: TOPIC.into(),
                    partition: 0,
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
    async fn append_acked(&self, value: &str) -> i64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.append(value, Acks::All).await {
                Ok(offset) => return offset,
                Err(e) if tokio::time::Instant::now() < deadline && retriable(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("append {value} failed: {e}"),
            }
        }
    }

    /// A client of the node metadata names leader, and its leader epoch.
    async fn leader(&self) -> Result<(StorageServiceClient<Channel>, u64), Error> {
        let md = self.metadata().await;
        let p = &md
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .unwrap()
            .partitions[0];
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
    async fn log_start(&self) -> i64 {
        let (mut client, _) = self.leader().await.unwrap();
        client
            .list_offsets(ListOffsetsRequest {
                partition: Some(PartitionRef {
                    topic: TOPIC.into(),
                    partition: 0,
                }),
                query: None,
            })
            .await
            .unwrap()
            .into_inner()
            .log_start_offset
    }

    fn node_dir(&self, id: u64) -> PathBuf {
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

fn retriable(e: &Error) -> bool {
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

/// Every record of the partition's log in `data_dir` (the node must be
/// stopped), as (offset, value).
fn read_replica(data_dir: &Path) -> Vec<(i64, String)> {
    let dir = std::fs::read_dir(data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{TOPIC}-0-"))
        })
        .expect("partition directory");
    let log = streambus_log::Log::open(&dir, streambus_log::LogConfig::default()).unwrap();
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

/// Stops every node and checks that all replicas hold the same records and
/// that every acknowledged value is at its acknowledged offset.
async fn check_replicas(cluster: &mut Cluster, acked: &HashMap<String, i64>) {
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for &id in &ids {
        if cluster.nodes[&id].runtime.is_some() {
            cluster.kill_node(id).await;
        }
    }
    let logs: Vec<Vec<(i64, String)>> = ids
        .iter()
        .map(|&id| read_replica(&cluster.node_dir(id)))
        .collect();
    for (id, log) in ids.iter().zip(&logs) {
        assert_eq!(
            log, &logs[0],
            "replica on node {id} differs from node {}",
            ids[0]
        );
    }
    let by_offset: HashMap<i64, &str> = logs[0].iter().map(|(o, v)| (*o, v.as_str())).collect();
    for (value, offset) in acked {
        assert_eq!(
            by_offset.get(offset).copied(),
            Some(value.as_str()),
            "acknowledged {value} is not at offset {offset}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_all_survives_losing_a_follower_then_the_leader() {
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(&[("min.insync.replicas", "2")]).await;
    let mut acked = HashMap::new();
    let mut n = 0;
    let mut produce = async |cluster: &Cluster, count: usize| {
        for _ in 0..count {
            let v = format!("v{n}");
            n += 1;
            let offset = cluster.append_acked(&v).await;
            acked.insert(v, offset);
        }
    };
    produce(&cluster, 50).await;

    // A follower dies: after the ISR shrinks, acks=all goes on with two.
    let first = cluster.partition().await;
    let follower = *first.replicas.iter().find(|&&r| r != first.leader).unwrap();
    cluster.kill_node(follower).await;
    produce(&cluster, 50).await;
    let p = cluster
        .wait_partition("without the dead follower", |p| {
            !p.isr.contains(&follower) && p.isr.len() == 2
        })
        .await;
    assert_eq!(p.leader, first.leader);

    // Then the leader dies: the last in-sync replica takes over with a new
    // epoch, but one replica is below min.insync.replicas=2.
    cluster.kill_node(first.leader).await;
    let p = cluster
        .wait_partition("led by the survivor", |p| {
            p.leader != first.leader && p.leader != 0
        })
        .await;
    assert!(p.leader_epoch > first.leader_epoch, "{p:?}");
    assert_eq!(p.isr, vec![p.leader]);
    let err = loop {
        match cluster.append("refused", Acks::All).await {
            Err(e) if e.reason == Reason::NotEnoughReplicas => break e,
            Err(e) if retriable(&e) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("expected NOT_ENOUGH_REPLICAS, got {other:?}"),
        }
    };
    assert!(err.message.contains("min.insync.replicas is 2"), "{err}");
    // acks=leader still works (and promises less).
    cluster.append("leader-only", Acks::Leader).await.unwrap();

    // The first follower comes back, catches up and rejoins the ISR:
    // acks=all works again.
    cluster.start_node(follower).await;
    cluster
        .wait_partition("with the follower back", |p| p.isr.contains(&follower))
        .await;
    produce(&cluster, 50).await;

    // The old leader comes back as a follower, truncates what it may hold
    // beyond the new leader's log and rejoins.
    cluster.start_node(first.leader).await;
    let p = cluster
        .wait_partition("fully in sync again", |p| p.isr.len() == 3)
        .await;
    assert_ne!(p.leader, first.leader);
    produce(&cluster, 20).await;

    check_replicas(&mut cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_leader_truncates_what_only_it_had() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .create_topic(&[("unclean.leader.election.enable", "true")])
        .await;
    let mut acked = HashMap::new();
    for i in 0..20 {
        let v = format!("a{i}");
        acked.insert(v.clone(), cluster.append_acked(&v).await);
    }
    let first = cluster.partition().await;
    let followers: Vec<u64> = first
        .replicas
        .iter()
        .copied()
        .filter(|&r| r != first.leader)
        .collect();
    for &f in &followers {
        cluster.kill_node(f).await;
    }
    cluster
        .wait_partition("led alone", |p| p.isr == vec![first.leader])
        .await;
    // Records only the leader has (acks=leader promises no more).
    for i in 0..5 {
        cluster
            .append(&format!("lost{i}"), Acks::Leader)
            .await
            .unwrap();
    }
    cluster.kill_node(first.leader).await;
    // An out-of-sync follower returns: unclean election (opted in) lets it
    // lead, and it writes its own records at the offsets the old leader
    // used.
    cluster.start_node(followers[0]).await;
    let p = cluster
        .wait_partition("led by the returning follower", |p| {
            p.leader == followers[0]
        })
        .await;
    assert!(p.leader_epoch > first.leader_epoch);
    for i in 0..3 {
        let v = format!("b{i}");
        acked.insert(v.clone(), cluster.append_acked(&v).await);
    }
    // The old leader returns as follower: its five records diverge and go.
    cluster.start_node(first.leader).await;
    cluster.start_node(followers[1]).await;
    cluster
        .wait_partition("fully in sync again", |p| p.isr.len() == 3)
        .await;
    for i in 0..5 {
        let v = format!("c{i}");
        acked.insert(v.clone(), cluster.append_acked(&v).await);
    }
    let leader_dir = cluster.node_dir(first.leader);
    check_replicas(&mut cluster, &acked).await;
    let log = read_replica(&leader_dir);
    assert!(
        log.iter().all(|(_, v)| !v.starts_with("lost")),
        "the divergent tail survived: {log:?}"
    );
    assert_eq!(log.len(), 20 + 3 + 5, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_controller_stops_acknowledging() {
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(&[]).await;
    cluster.append_acked("before").await;
    let p = cluster.partition().await;
    let addr = cluster
        .metadata()
        .await
        .nodes
        .iter()
        .find(|n| n.node_id == p.leader)
        .unwrap()
        .address
        .clone();
    cluster.stop_controller().await;
    // Past the lease another leader could have been elected: acks=all is
    // refused rather than acknowledged by a possibly deposed leader.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut client = StorageServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&Record {
        value: Some(b"isolated".to_vec().into()),
        ..Record::default()
    });
    let status = client
        .append(AppendRequest {
            partition: Some(PartitionRef {
                topic: TOPIC.into(),
                partition: 0,
            }),
            batch: b.build(),
            acks: Acks::All as i32,
            leader_epoch: p.leader_epoch,
        })
        .await
        .unwrap_err();
    let err = Error::from_status(&status);
    assert_eq!(err.reason, Reason::NotLeader, "{err}");
    assert!(err.message.contains("lease"), "{err}");

    // The controller returns: the lease renews and writes go on.
    cluster.restart_controller().await;
    cluster.append_acked("after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_leaders_log_start_starts_over_there() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .create_topic(&[
            ("segment.bytes", "600"),
            ("retention.bytes", "1200"),
            ("min.insync.replicas", "2"),
        ])
        .await;
    let mut acked = HashMap::new();
    for i in 0..5 {
        let v = format!("early{i:03}-{}", "x".repeat(80));
        acked.insert(v.clone(), cluster.append_acked(&v).await);
    }
    let first = cluster.partition().await;
    let follower = *first.replicas.iter().find(|&&r| r != first.leader).unwrap();
    cluster.kill_node(follower).await;
    // Enough records that retention deletes everything the dead follower
    // has on the leader.
    let mut i = 0;
    loop {
        let v = format!("late{i:03}-{}", "x".repeat(80));
        acked.insert(v.clone(), cluster.append_acked(&v).await);
        i += 1;
        let start = cluster.log_start().await;
        if i >= 40 && start > 5 {
            break;
        }
        assert!(i < 500, "retention never moved the log start");
    }
    cluster.start_node(follower).await;
    cluster
        .wait_partition("with the follower back", |p| p.isr.contains(&follower))
        .await;
    let last = cluster.append_acked("last").await;
    acked.insert("last".into(), last);

    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for &id in &ids {
        cluster.kill_node(id).await;
    }
    let leader_log = read_replica(&cluster.node_dir(first.leader));
    let follower_log = read_replica(&cluster.node_dir(follower));
    assert_eq!(follower_log.last().unwrap(), &(last, "last".to_string()));
    assert!(
        follower_log[0].0 > 5,
        "the follower kept its old records: {:?}",
        follower_log[0]
    );
    // Where both have an offset, they hold the same record.
    let leader: HashMap<i64, &String> = leader_log.iter().map(|(o, v)| (*o, v)).collect();
    for (o, v) in &follower_log {
        if let Some(lv) = leader.get(o) {
            assert_eq!(lv, &v, "offset {o}");
        }
    }
    let follower: HashMap<i64, &String> = follower_log.iter().map(|(o, v)| (*o, v)).collect();
    for (v, o) in &acked {
        if *o >= follower_log[0].0 {
            assert_eq!(follower.get(o), Some(&v), "acknowledged {v} at {o}");
        }
    }
}
