//! The gateway's view of the cluster: the controller's metadata, kept
//! current by a watch stream and refreshed on demand when a request finds
//! it stale.

use std::sync::Arc;

use futures::StreamExt;
use streambus_controller::client::ControllerClient;
use streambus_proto::internal::{ClusterMetadata, TopicMetadata};
use streambus_proto::{Error, Reason};
use tokio::sync::watch;

/// A cheap-to-clone handle on the latest metadata.
#[derive(Clone)]
pub struct MetadataCache {
    controller: ControllerClient,
    tx: Arc<watch::Sender<Arc<ClusterMetadata>>>,
}

impl MetadataCache {
    /// An empty cache; call [`MetadataCache::run`] to keep it current.
    pub fn new(controller: ControllerClient) -> MetadataCache {
        MetadataCache {
            controller,
            tx: Arc::new(watch::channel(Arc::new(ClusterMetadata::default())).0),
        }
    }

    /// The controller client.
    pub fn controller(&self) -> &ControllerClient {
        &self.controller
    }

    /// Follows the controller's metadata stream forever; `ready` turns true
    /// with the first snapshot.
    pub async fn run(self, ready: watch::Sender<bool>) {
        let mut stream = std::pin::pin!(self.controller.watch_metadata());
        while let Some(md) = stream.next().await {
            self.install(md);
            if !*ready.borrow() {
                let _ = ready.send(true);
            }
        }
    }

    fn install(&self, md: ClusterMetadata) {
        self.tx.send_if_modified(|cur| {
            if md.version > cur.version || cur.version == 0 {
                *cur = Arc::new(md);
                true
            } else {
                false
            }
        });
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<ClusterMetadata> {
        self.tx.borrow().clone()
    }

    /// Asks the controller for a fresh snapshot and installs it.
    pub async fn refresh(&self) -> Result<Arc<ClusterMetadata>, Error> {
        let md = self.controller.get_metadata().await?;
        self.install(md);
        Ok(self.current())
    }

    /// A topic's metadata; asks the controller once when the cache does not
    /// know the topic (it may have just been created).
    pub async fn topic(&self, name: &str) -> Result<TopicMetadata, Error> {
        if let Some(t) = find_topic(&self.current(), name) {
            return Ok(t);
        }
        let md = self.refresh().await?;
        find_topic(&md, name).ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            )
        })
    }

    /// The address of the storage node leading a partition.
    pub fn leader_address(&self, topic: &str, partition: u32) -> Result<String, Error> {
        let md = self.current();
        let t = find_topic(&md, topic).ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {topic:?} does not exist"),
            )
        })?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| unknown_partition(topic, partition, t.partitions.len()))?;
        let node = md.nodes.iter().find(|n| n.node_id == p.leader);
        match node {
            Some(n) if n.alive && !n.address.is_empty() => Ok(n.address.clone()),
            _ => Err(Error::new(
                Reason::Unavailable,
                format!(
                    "partition {topic}/{partition} has no live leader (leader node {})",
                    p.leader
                ),
            )),
        }
    }
}

/// The error for a partition number the topic does not have.
pub fn unknown_partition(topic: &str, partition: u32, count: usize) -> Error {
    Error::new(
        Reason::UnknownPartition,
        format!("topic {topic:?} has {count} partitions; there is no partition {partition}"),
    )
}

fn find_topic(md: &ClusterMetadata, name: &str) -> Option<TopicMetadata> {
    md.topics.iter().find(|t| t.name == name).cloned()
}
