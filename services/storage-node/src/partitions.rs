//! The replicas this node hosts, kept in line with the controller's
//! metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use streambus_controller::topic_config::TopicConfig;
use streambus_log::Log;
use streambus_proto::internal::ClusterMetadata;
use streambus_proto::{Error, Reason};

use crate::replica::{Leadership, PartitionKey, Replica, log_config};

/// What the node knows of a topic from the last metadata it applied.
#[derive(Debug, Clone)]
struct TopicInfo {
    partitions: u32,
    leaders: Vec<u64>,
}

/// The replicas hosted on this node.
pub struct Partitions {
    node_id: u64,
    data_dir: PathBuf,
    replicas: RwLock<HashMap<PartitionKey, Arc<Replica>>>,
    topics: RwLock<HashMap<String, TopicInfo>>,
    nodes: RwLock<HashMap<u64, String>>,
    version: std::sync::atomic::AtomicU64,
}

/// The directory of a partition replica. The topic id keeps a topic that
/// was deleted and created again apart from its predecessor.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32, topic_id: &str) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}-{topic_id}"))
}

impl Partitions {
    /// An empty set for node `node_id` storing under `data_dir`.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Partitions {
        Partitions {
            node_id,
            data_dir,
            replicas: RwLock::default(),
            topics: RwLock::default(),
            nodes: RwLock::default(),
            version: Default::default(),
        }
    }

    /// The metadata version last applied.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The replica for a partition this node leads.
    pub fn leader_replica(&self, topic: &str, partition: u32) -> Result<Arc<Replica>, Error> {
        let replica = self.replica(topic, partition)?;
        let l = replica.leadership();
        if l.leader != self.node_id {
            return Err(self.not_leader(topic, partition, l.leader));
        }
        Ok(replica)
    }

    /// The replica for a partition hosted here.
    pub fn replica(&self, topic: &str, partition: u32) -> Result<Arc<Replica>, Error> {
        if let Some(r) = read(&self.replicas).get(&(topic.to_string(), partition)) {
            return Ok(r.clone());
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

    /// Every hosted replica.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        read(&self.replicas).values().cloned().collect()
    }

    /// Brings the hosted replicas in line with `md`: opens logs for new
    /// assignments, updates leadership, and closes and deletes the replicas
    /// of topics that were deleted.
    ///
    /// Directories of topics this process never saw are left alone (and
    /// logged), so a lagging or empty metadata view can never delete data.
    pub async fn apply(&self, md: &ClusterMetadata) -> Result<(), Error> {
        if md.version < self.version() {
            return Ok(());
        }
        *write(&self.nodes) = md
            .nodes
            .iter()
            .map(|n| (n.node_id, n.address.clone()))
            .collect();

        let mut wanted: HashMap<PartitionKey, (String, TopicConfig, Leadership)> = HashMap::new();
        let mut topics = HashMap::new();
        for t in &md.topics {
            let config = TopicConfig::from_map(&t.configs)?;
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
                            Leadership {
                                leader: p.leader,
                                leader_epoch: p.leader_epoch,
                            },
                        ),
                    );
                }
            }
        }

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
            let topic_gone = !md
                .topics
                .iter()
                .any(|t| t.name == key.0 && t.topic_id == replica.topic_id);
            close_replica(replica, topic_gone).await;
        }

        // Replicas to open or update.
        for (key, (topic_id, config, leadership)) in wanted {
            let existing = read(&self.replicas).get(&key).cloned();
            if let Some(r) = existing {
                r.set_leadership(leadership);
                continue;
            }
            let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
            let lc = log_config(&config);
            let open_dir = dir.clone();
            let log = tokio::task::spawn_blocking(move || Log::open(&open_dir, lc))
                .await
                .map_err(|e| Error::new(Reason::Internal, format!("open task failed: {e}")))?
                .map_err(|e| crate::error::log_error(&key.0, key.1, e))?;
            tracing::info!(topic = %key.0, partition = key.1, dir = %dir.display(),
                end_offset = log.end_offset(), "opened partition replica");
            let replica = Replica::new(key.clone(), topic_id, dir, log, config, leadership);
            write(&self.replicas).insert(key, Arc::new(replica));
        }
        *write(&self.topics) = topics;
        self.version
            .store(md.version, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Runs retention, compaction and age-based rolls on every replica.
    pub async fn maintain(&self) {
        for r in self.all() {
            let result = tokio::task::spawn_blocking(move || {
                let now = now_ms();
                r.log.roll_if_due(now)?;
                let retention = r.log.apply_retention(now)?;
                if r.config.cleanup_policy
                    == streambus_controller::topic_config::CleanupPolicy::Compact
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

    /// Flushes replicas under the `interval` fsync policy whose interval
    /// has passed.
    pub async fn flush_due(&self) {
        let replicas = self.all();
        let res = tokio::task::spawn_blocking(move || {
            let now = Instant::now();
            for r in replicas {
                match r.flush_if_due(now) {
                    Ok(true) => r.advance_high_watermark(),
                    Ok(false) => {}
                    Err(e) => tracing::error!(topic = %r.topic, partition = r.partition,
                        error = %e, "interval fsync failed"),
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "flush task failed");
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

async fn close_replica(replica: Arc<Replica>, delete: bool) {
    let topic = replica.topic.clone();
    let partition = replica.partition;
    let dir = replica.dir.clone();
    let res = tokio::task::spawn_blocking(move || {
        // Close cleanly (indexes synced, fast reopen) when nothing else
        // holds the log; otherwise at least make its data durable.
        match Arc::try_unwrap(replica).map(|r| Arc::try_unwrap(r.log)) {
            Ok(Ok(log)) => log.close()?,
            Ok(Err(log)) => log.flush()?,
            Err(replica) => replica.log.flush()?,
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
