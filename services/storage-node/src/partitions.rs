//! The replicas this node hosts, kept in line with the controller's
//! metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

use streambus_cluster::topic_config::TopicConfig;
use streambus_log::{Flusher, Log, OpenOptions};
use streambus_proto::internal::{ClusterMetadata, OfflineReplica};
use streambus_proto::{Error, Reason};

use crate::replica::{PartitionKey, PartitionView, Replica};

/// What the node knows of a topic from the last metadata it applied.
#[derive(Debug, Clone)]
struct TopicInfo {
    partitions: u32,
    leaders: Vec<u64>,
}

/// An assigned replica this node cannot serve right now.
struct Offline {
    topic_id: String,
    /// `None` when the topic's configuration itself could not be parsed
    /// (then reopening waits for new metadata).
    config: Option<TopicConfig>,
    view: PartitionView,
    reason: String,
    /// The replica that failed, while requests still hold it: its log must
    /// be gone before the directory is opened again.
    previous: Option<Weak<Replica>>,
    /// For a log that failed: its durable offset then. After a failed
    /// fsync the page cache cannot be trusted (the kernel may have dropped
    /// the dirty pages), so a reopened log is cut back to it.
    durable_at_failure: Option<i64>,
}

/// The replicas hosted on this node.
///
/// One partition never stalls the others: a replica whose log cannot be
/// opened, or whose log failed (a failed fsync poisons it), is kept aside
/// as *offline* with its reason, requests for it get `PARTITION_OFFLINE`,
/// the node reports it to the controller with every heartbeat, and
/// [`Partitions::reopen_offline`] keeps trying to open it again.
pub struct Partitions {
    node_id: u64,
    data_dir: PathBuf,
    replicas: RwLock<HashMap<PartitionKey, Arc<Replica>>>,
    offline: RwLock<HashMap<PartitionKey, Offline>>,
    topics: RwLock<HashMap<String, TopicInfo>>,
    nodes: RwLock<HashMap<u64, String>>,
    version: std::sync::atomic::AtomicU64,
    /// Every log of this node counts its fsyncs here and shares one
    /// interval flusher thread.
    open_options: OpenOptions,
    fsyncs: Arc<std::sync::atomic::AtomicU64>,
    /// Serialises `apply` and `reopen_offline`, so a directory is never
    /// opened twice or opened while it is being deleted.
    changes: tokio::sync::Mutex<()>,
    /// How long an in-sync follower may lag before it leaves the ISR.
    lag_max_ms: u64,
}

/// Default for how long an in-sync follower may lag (ms).
pub const DEFAULT_REPLICA_LAG_MS: u64 = 10_000;

/// The directory of a partition replica. The topic id keeps a topic that
/// was deleted and created again apart from its predecessor.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32, topic_id: &str) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}-{topic_id}"))
}

impl Partitions {
    /// An empty set for node `node_id` storing under `data_dir`.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Partitions {
        Partitions::with_open_options(node_id, data_dir, OpenOptions::new())
    }

    /// Like [`Partitions::new`], opening every log with `options` (for
    /// example another file system); the node's fsync counter and flusher
    /// are added to them.
    pub fn with_open_options(node_id: u64, data_dir: PathBuf, options: OpenOptions) -> Partitions {
        let fsyncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut open_options = options.fsync_counter(fsyncs.clone());
        match Flusher::new() {
            Ok(flusher) => open_options = open_options.flusher(flusher),
            // Logs fall back to the process-wide flusher.
            Err(e) => tracing::warn!(error = %e, "cannot start this node's log flusher"),
        }
        Partitions {
            lag_max_ms: DEFAULT_REPLICA_LAG_MS,
            open_options,
            fsyncs,
            changes: tokio::sync::Mutex::new(()),
            node_id,
            data_dir,
            replicas: RwLock::default(),
            offline: RwLock::default(),
            topics: RwLock::default(),
            nodes: RwLock::default(),
            version: Default::default(),
        }
    }

    /// Sets how long an in-sync follower may lag before it leaves the ISR
    /// (for replicas opened from now on).
    pub fn with_replica_lag(mut self, lag_max_ms: u64) -> Partitions {
        self.lag_max_ms = lag_max_ms;
        self
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The advertised address of a storage node, from the last metadata.
    pub fn node_address(&self, node_id: u64) -> Option<String> {
        read(&self.nodes).get(&node_id).cloned()
    }

    /// Fsyncs (data and directory) by every log of this node so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The metadata version last applied.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The replica for a partition this node leads.
    pub fn leader_replica(&self, topic: &str, partition: u32) -> Result<Arc<Replica>, Error> {
        let replica = self.replica(topic, partition)?;
        if !replica.is_leader() {
            return Err(self.not_leader(topic, partition, replica.view().leader));
        }
        Ok(replica)
    }

    /// The replica for a partition hosted here.
    pub fn replica(&self, topic: &str, partition: u32) -> Result<Arc<Replica>, Error> {
        let key = (topic.to_string(), partition);
        if let Some(r) = read(&self.replicas).get(&key) {
            return Ok(r.clone());
        }
        if let Some(o) = read(&self.offline).get(&key) {
            return Err(Error::new(
                Reason::PartitionOffline,
                format!(
                    "{topic}/{partition} is offline on node {}: {}",
                    self.node_id, o.reason
                ),
            ));
        }
        let topics = read(&self.topics);
        let Some(info) = topics.get(topic) else {
            return Err(Error::new(
                Reason::UnknownTopic,
                format!("topic {topic:?} does not exist"),
            ));
        };
        if partition >= info.partitions {
            return Err(Error::new(
                Reason::UnknownPartition,
                format!(
                    "topic {topic:?} has {} partitions; there is no partition {partition}",
                    info.partitions
                ),
            ));
        }
        let leader = info.leaders.get(partition as usize).copied().unwrap_or(0);
        drop(topics);
        Err(self.not_leader(topic, partition, leader))
    }

    fn not_leader(&self, topic: &str, partition: u32, leader: u64) -> Error {
        let hint = read(&self.nodes).get(&leader).cloned().unwrap_or_default();
        Error::new(
            Reason::NotLeader,
            format!(
                "node {} is not the leader of {topic}/{partition} (leader: {leader})",
                self.node_id
            ),
        )
        .with_leader_hint(hint)
    }

    /// `NOT_LEADER` with a reason why this node will not act as leader.
    pub fn not_leader_because(&self, topic: &str, partition: u32, leader: u64, why: &str) -> Error {
        let hint = if leader == self.node_id {
            String::new()
        } else {
            read(&self.nodes).get(&leader).cloned().unwrap_or_default()
        };
        let e = Error::new(
            Reason::NotLeader,
            format!(
                "node {} will not lead {topic}/{partition}: {why}",
                self.node_id
            ),
        );
        if hint.is_empty() {
            e
        } else {
            e.with_leader_hint(hint)
        }
    }

    /// Every hosted replica.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        read(&self.replicas).values().cloned().collect()
    }

    /// Brings the hosted replicas in line with `md`: opens logs for new
    /// assignments (a new topic or partition, or this node added to a
    /// partition's replica set: the replica starts empty and follows),
    /// updates leadership, and closes and deletes the replicas of topics
    /// that were deleted and of partitions whose replica set no longer
    /// lists this node. A replica that cannot be opened (or a topic whose
    /// configuration cannot be parsed) goes offline; everything else is
    /// still applied.
    ///
    /// Only replicas this process hosts (or holds offline) are deleted, and
    /// only on a positive statement of newer metadata (the topic is gone,
    /// or the partition is listed without this node): directories this
    /// process never opened are left alone, so a lagging or empty metadata
    /// view can never delete data.
    pub async fn apply(&self, md: &ClusterMetadata) {
        let _changes = self.changes.lock().await;
        // The watch never goes back in version; an equal version from
        // another controller is the same state and is not re-applied.
        if md.version <= self.version() && self.version() != 0 {
            return;
        }
        *write(&self.nodes) = md
            .nodes
            .iter()
            .map(|n| (n.node_id, n.address.clone()))
            .collect();

        let mut wanted: HashMap<
            PartitionKey,
            (String, Result<TopicConfig, String>, PartitionView),
        > = HashMap::new();
        let mut topics = HashMap::new();
        for t in &md.topics {
            let config = TopicConfig::from_map(&t.configs).map_err(|e| e.message);
            topics.insert(
                t.name.clone(),
                TopicInfo {
                    partitions: t.partitions.len() as u32,
                    leaders: t.partitions.iter().map(|p| p.leader).collect(),
                },
            );
            for p in &t.partitions {
                if p.replicas.contains(&self.node_id) {
                    wanted.insert(
                        (t.name.clone(), p.partition),
                        (
                            t.topic_id.clone(),
                            config.clone(),
                            PartitionView {
                                leader: p.leader,
                                leader_epoch: p.leader_epoch,
                                partition_epoch: p.partition_epoch,
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                            },
                        ),
                    );
                }
            }
        }
        let topic_gone = |key: &PartitionKey, topic_id: &str| {
            !md.topics
                .iter()
                .any(|t| t.name == key.0 && t.topic_id == topic_id)
        };
        // Taken out of the partition's replica set (a reassignment moved
        // the replica elsewhere): the metadata names the partition and its
        // replicas, and this node is not among them.
        let unassigned = |key: &PartitionKey, topic_id: &str| {
            md.topics.iter().any(|t| {
                t.name == key.0
                    && t.topic_id == topic_id
                    && t.partitions
                        .iter()
                        .any(|p| p.partition == key.1 && !p.replicas.contains(&self.node_id))
            })
        };
        let delete = |key: &PartitionKey, topic_id: &str| {
            topic_gone(key, topic_id) || unassigned(key, topic_id)
        };

        // Replicas to drop: topic gone or recreated, or no longer assigned.
        let current: Vec<(PartitionKey, Arc<Replica>)> = read(&self.replicas)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, replica) in current {
            let keep = matches!(wanted.get(&key), Some((id, _, _)) if *id == replica.topic_id);
            if keep {
                continue;
            }
            write(&self.replicas).remove(&key);
            let delete = delete(&key, &replica.topic_id);
            replica.retire();
            close_replica(replica, delete).await;
        }
        let stale: Vec<(PartitionKey, String)> = read(&self.offline)
            .iter()
            .filter(|(k, o)| !matches!(wanted.get(*k), Some((id, _, _)) if *id == o.topic_id))
            .map(|(k, o)| (k.clone(), o.topic_id.clone()))
            .collect();
        for (key, topic_id) in stale {
            write(&self.offline).remove(&key);
            if delete(&key, &topic_id) {
                let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
                delete_dir(dir).await;
            }
        }

        // Replicas to open or update.
        for (key, (topic_id, config, view)) in wanted {
            let existing = read(&self.replicas).get(&key).cloned();
            if let Some(r) = existing {
                r.set_view(view, now_ms() as u64);
                continue;
            }
            let config = match config {
                Ok(c) => c,
                Err(reason) => {
                    self.set_offline(
                        key,
                        topic_id,
                        None,
                        view,
                        format!("invalid topic config: {reason}"),
                        None,
                    );
                    continue;
                }
            };
            if let Some(o) = write(&self.offline).get_mut(&key) {
                // Already offline: keep it there (the reopen loop retries),
                // with the newest leadership and config.
                o.view = view;
                o.config = Some(config);
                continue;
            }
            self.open(key, topic_id, config, view, None).await;
        }
        *write(&self.topics) = topics;
        self.version
            .store(md.version, std::sync::atomic::Ordering::Release);
    }

    /// Opens a replica's log; on failure the replica goes offline.
    async fn open(
        &self,
        key: PartitionKey,
        topic_id: String,
        config: TopicConfig,
        view: PartitionView,
        truncate_to: Option<i64>,
    ) -> bool {
        let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
        let lc = config.log_config();
        let open_dir = dir.clone();
        let options = self.open_options.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let log = Log::open_with(&open_dir, lc, options)?;
            if let Some(durable) = truncate_to
                && log.end_offset() > durable
            {
                tracing::warn!(dir = %open_dir.display(), from = log.end_offset(), to = durable,
                    "cutting a reopened log back to what was durable when it failed");
                log.truncate_to(durable)?;
            }
            Ok::<_, streambus_log::LogError>(log)
        })
        .await
        .map_err(|e| format!("open task failed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
        match opened {
            Ok(log) => {
                tracing::info!(topic = %key.0, partition = key.1, dir = %dir.display(),
                    end_offset = log.end_offset(), "opened partition replica");
                let replica = Replica::new(
                    self.node_id,
                    key.clone(),
                    topic_id,
                    dir,
                    log,
                    config,
                    view,
                    self.lag_max_ms,
                );
                write(&self.offline).remove(&key);
                write(&self.replicas).insert(key, Arc::new(replica));
                true
            }
            Err(reason) => {
                self.set_offline(key, topic_id, Some(config), view, reason, None);
                false
            }
        }
    }

    fn set_offline(
        &self,
        key: PartitionKey,
        topic_id: String,
        config: Option<TopicConfig>,
        view: PartitionView,
        reason: String,
        previous: Option<Weak<Replica>>,
    ) {
        let mut offline = write(&self.offline);
        if offline.get(&key).is_none_or(|o| o.reason != reason) {
            tracing::error!(topic = %key.0, partition = key.1, %reason, "partition replica offline");
        }
        offline.insert(
            key,
            Offline {
                topic_id,
                config,
                view,
                reason,
                durable_at_failure: previous
                    .as_ref()
                    .and_then(Weak::upgrade)
                    .map(|r| r.log.durable_offset()),
                previous,
            },
        );
    }

    /// Takes replicas whose log failed (a failed fsync poisons a log)
    /// offline, then tries to open every offline replica again. Returns how
    /// many came back.
    pub async fn reopen_offline(&self) -> usize {
        let _changes = self.changes.lock().await;
        let failed: Vec<(PartitionKey, Arc<Replica>, String)> = read(&self.replicas)
            .iter()
            .filter_map(|(k, r)| r.log.failure().map(|f| (k.clone(), r.clone(), f)))
            .collect();
        for (key, replica, failure) in failed {
            write(&self.replicas).remove(&key);
            self.set_offline(
                key,
                replica.topic_id.clone(),
                Some(replica.config.clone()),
                replica.view(),
                format!("log failed: {failure}"),
                Some(Arc::downgrade(&replica)),
            );
        }
        type Candidate = (
            PartitionKey,
            String,
            TopicConfig,
            PartitionView,
            Option<i64>,
        );
        let candidates: Vec<Candidate> = read(&self.offline)
            .iter()
            .filter(|(_, o)| o.previous.as_ref().is_none_or(|w| w.strong_count() == 0))
            .filter_map(|(k, o)| {
                o.config.clone().map(|c| {
                    (
                        k.clone(),
                        o.topic_id.clone(),
                        c,
                        o.view.clone(),
                        o.durable_at_failure,
                    )
                })
            })
            .collect();
        let mut reopened = 0;
        for (key, topic_id, config, view, durable) in candidates {
            if self
                .open(key.clone(), topic_id, config, view, durable)
                .await
            {
                tracing::info!(topic = %key.0, partition = key.1, "offline partition replica is back");
                reopened += 1;
            }
        }
        reopened
    }

    /// The replicas this node is assigned but cannot serve, for the
    /// heartbeat.
    pub fn offline_replicas(&self) -> Vec<OfflineReplica> {
        let mut out: Vec<OfflineReplica> = read(&self.offline)
            .iter()
            .map(|(k, o)| OfflineReplica {
                topic: k.0.clone(),
                topic_id: o.topic_id.clone(),
                partition: k.1,
                reason: o.reason.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// Runs retention, compaction and age-based rolls on every replica.
    pub async fn maintain(&self) {
        for r in self.all() {
            let result = tokio::task::spawn_blocking(move || {
                let now = now_ms();
                r.log.roll_if_due(now)?;
                let retention = r.log.apply_retention(now)?;
                if r.config.cleanup_policy
                    == streambus_cluster::topic_config::CleanupPolicy::Compact
                {
                    r.log.compact(now)?;
                }
                Ok::<_, streambus_log::LogError>((r, retention))
            })
            .await;
            match result {
                Ok(Ok((r, retention))) => {
                    tracing::debug!(topic = %r.topic, partition = r.partition, ?retention, "maintenance done");
                }
                Ok(Err(e)) => tracing::error!(error = %e, "partition maintenance failed"),
                Err(e) => tracing::error!(error = %e, "partition maintenance task failed"),
            }
        }
    }

    /// Flushes and closes every replica (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<_> = write(&self.replicas).drain().map(|(_, r)| r).collect();
        for r in all {
            close_replica(r, false).await;
        }
    }
}

async fn delete_dir(dir: PathBuf) {
    let shown = dir.display().to_string();
    match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await {
        Ok(Ok(())) => tracing::info!(dir = %shown, "deleted offline partition replica"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(e)) => {
            tracing::error!(dir = %shown, error = %e, "deleting partition replica failed")
        }
        Err(e) => tracing::error!(dir = %shown, error = %e, "delete task failed"),
    }
}

async fn close_replica(replica: Arc<Replica>, delete: bool) {
    let topic = replica.topic.clone();
    let partition = replica.partition;
    let dir = replica.dir.clone();
    let res = tokio::task::spawn_blocking(move || {
        // Close cleanly (indexes synced, fast reopen) when nothing else
        // holds the log; otherwise at least make its data durable.
        let closed = match Arc::try_unwrap(replica).map(|r| Arc::try_unwrap(r.log)) {
            Ok(Ok(log)) => log.close(),
            Ok(Err(log)) => log.flush(),
            Err(replica) => replica.log.flush(),
        };
        if !delete {
            closed?;
        } else if let Err(e) = closed {
            // The topic is gone: its data goes too, flushed or not (a full
            // disk must not keep a deleted topic's space forever).
            tracing::warn!(dir = %dir.display(), error = %e, "closing a deleted topic's replica failed; deleting it anyway");
        }
        if delete {
            std::fs::remove_dir_all(&dir).map_err(|e| streambus_log::LogError::Io {
                context: format!("deleting {}", dir.display()),
                source: e,
            })?;
        }
        Ok::<_, streambus_log::LogError>(())
    })
    .await;
    match res {
        Ok(Ok(())) => {
            tracing::info!(%topic, partition, deleted = delete, "closed partition replica")
        }
        Ok(Err(e)) => {
            tracing::error!(%topic, partition, error = %e, "closing partition replica failed")
        }
        Err(e) => tracing::error!(%topic, partition, error = %e, "close task failed"),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streambus_proto::internal::{StorageNodeInfo, TopicMetadata};
    use streambus_proto::v1::PartitionDescription;
    use streambus_record::{BatchBuilder, Record};

    use super::*;

    fn topic(name: &str, id: &str, configs: &[(&str, &str)]) -> TopicMetadata {
        TopicMetadata {
            name: name.into(),
            topic_id: id.into(),
            replication_factor: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            partitions: vec![PartitionDescription {
                partition: 0,
                leader: 1,
                leader_epoch: 0,
                replicas: vec![1],
                isr: vec![1],
                offline_replicas: vec![],
                partition_epoch: 0,
            }],
        }
    }

    fn metadata(version: u64, topics: Vec<TopicMetadata>) -> ClusterMetadata {
        ClusterMetadata {
            version,
            nodes: vec![StorageNodeInfo {
                node_id: 1,
                address: "127.0.0.1:1".into(),
                alive: true,
                rack: String::new(),
                decommissioning: false,
            }],
            topics,
            ..ClusterMetadata::default()
        }
    }

    #[tokio::test]
    async fn one_unopenable_partition_does_not_stall_the_node() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        // A file where b's partition directory belongs: its log cannot open.
        let blocked = partition_dir(tmp.path(), "b", 0, "idb");
        std::fs::write(&blocked, b"in the way").unwrap();

        p.apply(&metadata(
            5,
            vec![topic("a", "ida", &[]), topic("b", "idb", &[])],
        ))
        .await;
        assert_eq!(p.version(), 5);
        p.leader_replica("a", 0).unwrap();
        let err = p.leader_replica("b", 0).err().unwrap();
        assert_eq!(err.reason, Reason::PartitionOffline, "{err}");
        let offline = p.offline_replicas();
        assert_eq!(offline.len(), 1);
        assert_eq!((offline[0].topic.as_str(), offline[0].partition), ("b", 0));
        assert!(!offline[0].reason.is_empty());

        // Later metadata still applies.
        p.apply(&metadata(
            6,
            vec![
                topic("a", "ida", &[]),
                topic("b", "idb", &[]),
                topic("c", "idc", &[]),
            ],
        ))
        .await;
        assert_eq!(p.version(), 6);
        p.leader_replica("c", 0).unwrap();
        assert_eq!(p.reopen_offline().await, 0);

        // The obstacle goes away: the replica comes back without a restart.
        std::fs::remove_file(&blocked).unwrap();
        assert_eq!(p.reopen_offline().await, 1);
        p.leader_replica("b", 0).unwrap();
        assert!(p.offline_replicas().is_empty());
    }

    /// Metadata from a controller that accepted a config the log refuses
    /// (older versions did) takes only that topic offline.
    #[tokio::test]
    async fn a_topic_config_the_log_refuses_takes_only_that_topic_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        p.apply(&metadata(
            3,
            vec![
                topic("bad", "id1", &[("segment.bytes", "20")]),
                topic("good", "id2", &[]),
            ],
        ))
        .await;
        assert_eq!(p.version(), 3);
        p.leader_replica("good", 0).unwrap();
        let err = p.leader_replica("bad", 0).err().unwrap();
        assert_eq!(err.reason, Reason::PartitionOffline);
        assert!(err.message.contains("segment.bytes"), "{}", err.message);
        // Deleting the bad topic clears it.
        p.apply(&metadata(4, vec![topic("good", "id2", &[])])).await;
        assert!(p.offline_replicas().is_empty());
        assert_eq!(
            p.leader_replica("bad", 0).err().unwrap().reason,
            Reason::UnknownTopic
        );
    }

    #[tokio::test]
    async fn deleting_a_topic_removes_its_data_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        p.apply(&metadata(
            2,
            vec![topic("t", "id1", &[]), topic("keep", "id2", &[])],
        ))
        .await;
        let replica = p.leader_replica("t", 0).unwrap();
        let mut b = BatchBuilder::new(streambus_record::Compression::None);
        b.push(&Record {
            value: Some(bytes::Bytes::from_static(b"v")),
            timestamp_ms: 1,
            ..Record::default()
        });
        let mut batch = b.build().to_vec();
        replica.log.append(&mut batch).unwrap();
        let dir = replica.dir.clone();
        drop(replica);
        assert!(dir.exists());

        p.apply(&metadata(3, vec![topic("keep", "id2", &[])])).await;
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(partition_dir(tmp.path(), "keep", 0, "id2").exists());
        // A metadata view that lacks a topic this process never saw deletes
        // nothing.
        let stray = partition_dir(tmp.path(), "other", 0, "id9");
        std::fs::create_dir_all(&stray).unwrap();
        p.apply(&metadata(4, vec![])).await;
        assert!(stray.exists());
    }

    /// A failed fsync poisons the log; the node takes the replica offline
    /// (reported, refused with PARTITION_OFFLINE), reopens it once no
    /// request holds it, and nothing acknowledged is lost.
    #[tokio::test]
    async fn a_failed_fsync_takes_the_replica_offline_until_it_is_reopened() {
        use streambus_log::sim::{SimIo, SimOp};

        let sim = SimIo::new(7);
        let p = Partitions::with_open_options(
            1,
            PathBuf::from("/sim/data"),
            OpenOptions::new().io(Arc::new(sim.clone())),
        );
        p.apply(&metadata(2, vec![topic("t", "id1", &[])])).await;
        let batch = || {
            let mut b = BatchBuilder::new(streambus_record::Compression::None);
            b.push(&Record {
                value: Some(bytes::Bytes::from_static(b"v")),
                timestamp_ms: 1,
                ..Record::default()
            });
            b.build().to_vec()
        };
        let replica = p.leader_replica("t", 0).unwrap();
        replica.log.append(&mut batch()).unwrap();
        assert!(p.fsyncs() > 0);
        sim.fail_next(SimOp::SyncData, "t-0-id1");
        replica.log.append(&mut batch()).unwrap_err();

        // A request still holds the failed log: offline, not yet reopened.
        assert_eq!(p.reopen_offline().await, 0);
        assert_eq!(
            p.leader_replica("t", 0).err().unwrap().reason,
            Reason::PartitionOffline
        );
        let offline = p.offline_replicas();
        assert_eq!(offline.len(), 1);
        assert!(
            offline[0].reason.contains("log failed"),
            "{}",
            offline[0].reason
        );

        // Once released, it is reopened (recovered) without a restart.
        drop(replica);
        assert_eq!(p.reopen_offline().await, 1);
        let replica = p.leader_replica("t", 0).unwrap();
        assert!(p.offline_replicas().is_empty());
        let end = replica.log.end_offset();
        assert!(
            end == 1 || end == 2,
            "acknowledged offset 0 kept, end {end}"
        );
        assert!(replica.log.append(&mut batch()).unwrap().base_offset == end);
    }

    /// Node 2 of a partition led by node 1: added to the replica set, it
    /// opens an empty follower replica; taken out again, it deletes it. A
    /// partition the topic gains is opened too.
    #[tokio::test]
    async fn a_replica_added_to_this_node_is_opened_and_deleted_once_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(2, tmp.path().to_path_buf());
        let with_replicas = |version, replicas: &[u64], partitions: u32| {
            let mut t = topic("t", "id1", &[]);
            t.partitions = (0..partitions)
                .map(|i| PartitionDescription {
                    partition: i,
                    leader: 1,
                    replicas: replicas.to_vec(),
                    isr: vec![1],
                    partition_epoch: version,
                    ..PartitionDescription::default()
                })
                .collect();
            metadata(version, vec![t])
        };
        p.apply(&with_replicas(2, &[1], 1)).await;
        assert_eq!(
            p.replica("t", 0).err().unwrap().reason,
            Reason::NotLeader,
            "not hosted here"
        );
        p.apply(&with_replicas(3, &[1, 2], 1)).await;
        let replica = p.replica("t", 0).unwrap();
        assert!(!replica.is_leader());
        assert_eq!(replica.log.end_offset(), 0);
        let dir = replica.dir.clone();
        drop(replica);
        assert!(dir.exists());
        p.apply(&with_replicas(4, &[1, 2], 2)).await;
        let second = p.replica("t", 1).unwrap().dir.clone();
        assert!(second.exists());

        // Taken out of both replica sets: both directories go, and a fetch
        // loop still holding the replica cannot write to it any more.
        let held = p.replica("t", 0).unwrap();
        p.apply(&with_replicas(5, &[1], 2)).await;
        let mut b = BatchBuilder::new(streambus_record::Compression::None);
        b.push(&Record::default());
        let batch = b.build().to_vec();
        assert!(
            !held
                .append_as_follower(held.view().leader_epoch, &batch)
                .unwrap()
        );
        drop(held);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(!second.exists(), "{} still exists", second.display());
        assert_eq!(p.replica("t", 0).err().unwrap().reason, Reason::NotLeader);

        // After a restart, a directory this process never opened stays,
        // whatever the metadata says.
        let stray = partition_dir(tmp.path(), "t", 0, "id1");
        std::fs::create_dir_all(&stray).unwrap();
        let p = Partitions::new(2, tmp.path().to_path_buf());
        p.apply(&with_replicas(6, &[1], 2)).await;
        assert!(stray.exists());
    }

    #[tokio::test]
    async fn a_recreated_topic_gets_a_fresh_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        p.apply(&metadata(2, vec![topic("t", "old", &[])])).await;
        let old = p.leader_replica("t", 0).unwrap().dir.clone();
        p.apply(&metadata(3, vec![topic("t", "new", &[])])).await;
        let new = p.leader_replica("t", 0).unwrap().dir.clone();
        assert_ne!(old, new);
        assert!(!old.exists());
        assert_eq!(p.leader_replica("t", 0).unwrap().log.end_offset(), 0);
    }
}
