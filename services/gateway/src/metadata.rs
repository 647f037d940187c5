//! The gateway's view of the cluster: the controller's metadata, kept
//! current by a watch stream and refreshed on demand when a request finds
//! it stale.
//!
//! The cache also knows when it last heard from a controller, so that the
//! gateway is ready only while its metadata is live: not before the first
//! snapshot, and not after losing the controllers for longer than the
//! staleness bound (`gateway.metadata_staleness_ms`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use streambus_cluster::{ClusterView, ControllerClient, TopicView};
use streambus_proto::internal::ClusterMetadata;
use streambus_proto::{Error, Reason};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long [`MetadataCache::settle`] waits for the watch before it asks
/// the controller.
pub const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// A cheap-to-clone handle on the latest metadata.
#[derive(Clone)]
pub struct MetadataCache {
    controller: ControllerClient,
    tx: Arc<watch::Sender<Arc<ClusterView>>>,
    /// When a controller last answered (a watch update or a snapshot);
    /// `None` until the first snapshot was installed.
    contact: Arc<Mutex<Option<Instant>>>,
    /// One refresh at a time: requests that find metadata stale together
    /// (thousands of partitions of one subscription) share one. Holds how
    /// the last refresh that finished ended.
    refreshing: Arc<tokio::sync::Mutex<LastRefresh>>,
    /// Refresh requests so far (each caller takes a ticket).
    tickets: Arc<AtomicU64>,
}

/// How the last refresh that finished (not abandoned) ended.
#[derive(Default)]
struct LastRefresh {
    /// The ticket count when it started: callers with a smaller ticket
    /// asked before it started and take its outcome.
    started: u64,
    error: Option<Error>,
}

impl MetadataCache {
    /// An empty cache; call [`MetadataCache::run`] to keep it current.
    pub fn new(controller: ControllerClient) -> MetadataCache {
        MetadataCache {
            controller,
            tx: Arc::new(watch::channel(Arc::new(ClusterView::default())).0),
            contact: Arc::default(),
            refreshing: Arc::default(),
            tickets: Arc::default(),
        }
    }

    /// Whether a snapshot has been installed and a controller answered
    /// within `staleness`.
    pub fn is_fresh(&self, staleness: Duration) -> bool {
        self.contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() <= staleness)
    }

    /// The controller client.
    pub fn controller(&self) -> &ControllerClient {
        &self.controller
    }

    /// Follows the controller's metadata stream forever and keeps `ready`
    /// equal to [`MetadataCache::is_fresh`]`(staleness)`: true once the
    /// first snapshot is installed, false after `staleness` without hearing
    /// from a controller, true again when one answers.
    ///
    /// The watch stream only speaks when metadata changes, so the cache
    /// also asks for a snapshot every `staleness / 4`; that proves contact
    /// and repairs a watch stream that silently stalled.
    pub async fn run(self, ready: watch::Sender<bool>, staleness: Duration) {
        let ready = &ready;
        let probe_every = (staleness / 4).max(Duration::from_millis(10));
        let judge_every = (staleness / 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let watch = async {
            let mut stream = std::pin::pin!(self.controller.watch_metadata());
            while let Some(view) = stream.next().await {
                self.install(view);
                self.contacted();
                self.judge(ready, staleness);
            }
        };
        let probe = async {
            loop {
                tokio::time::sleep(probe_every).await;
                // Bounded: a hung controller must not stall the probe.
                // Only the version when it is the one held: a snapshot of
                // 100,000 partitions is megabytes.
                let known = self.current().version;
                let probe = self.controller.get_metadata_if_changed(known);
                match tokio::time::timeout(probe_every * 2, probe).await {
                    Ok(Ok(Some(md))) => {
                        self.received(md);
                        self.judge(ready, staleness);
                    }
                    Ok(Ok(None)) => {
                        self.contacted();
                        self.judge(ready, staleness);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "controller metadata probe failed"),
                    Err(_) => tracing::debug!("controller metadata probe timed out"),
                }
            }
        };
        let judge = async {
            loop {
                self.judge(ready, staleness);
                tokio::time::sleep(judge_every).await;
            }
        };
        tokio::join!(watch, probe, judge);
    }

    fn judge(&self, ready: &watch::Sender<bool>, staleness: Duration) {
        let fresh = self.is_fresh(staleness);
        ready.send_if_modified(|r| {
            if *r == fresh {
                return false;
            }
            if fresh {
                tracing::info!("gateway metadata is live: ready");
            } else {
                tracing::warn!(
                    staleness_ms = staleness.as_millis() as u64,
                    "no answer from any controller within the staleness bound: not ready"
                );
            }
            *r = fresh;
            true
        });
    }

    /// Installs a whole snapshot a controller just sent (sharing what is
    /// unchanged with the view held) and records the contact.
    fn received(&self, md: ClusterMetadata) {
        match self.current().apply(md) {
            Ok(view) => {
                self.install(view);
                self.contacted();
            }
            // Not counted as contact: metadata that cannot be used is no
            // proof of being current.
            Err(e) => tracing::warn!(error = %e, "a controller sent metadata that cannot be used"),
        }
    }

    /// Records that a controller answered.
    fn contacted(&self) {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub(crate) fn install(&self, view: ClusterView) {
        self.tx.send_if_modified(|cur| {
            if view.version > cur.version || cur.version == 0 {
                *cur = Arc::new(view);
                true
            } else {
                false
            }
        });
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<ClusterView> {
        self.tx.borrow().clone()
    }

    /// Every newer snapshot installed from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.tx.subscribe()
    }

    /// Asks the controller for a fresh snapshot and installs it.
    /// Callers that ask while a refresh runs wait for it, then take the
    /// outcome (the metadata, or the error) of a refresh that started
    /// after they asked, or run one themselves (one abandoned midway does
    /// not count). Only a version newer than the one held is sent in full.
    pub async fn refresh(&self) -> Result<Arc<ClusterView>, Error> {
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel);
        let mut last = self.refreshing.lock().await;
        if last.started > ticket {
            return match &last.error {
                None => Ok(self.current()),
                Some(e) => Err(e.clone()),
            };
        }
        // Every ticket below this was taken before this refresh started.
        let started = self.tickets.load(Ordering::Acquire);
        let known = self.current().version;
        let result = self.controller.get_metadata_if_changed(known).await;
        *last = LastRefresh {
            started,
            error: result.as_ref().err().cloned(),
        };
        match result? {
            Some(md) => self.received(md),
            None => self.contacted(),
        }
        Ok(self.current())
    }

    /// Waits until the metadata held satisfies `holds` (after an admin
    /// change this gateway made: the watch brings it within milliseconds),
    /// and asks the controller for it (a refresh) only when it did not
    /// within [`SETTLE_WAIT`]: a whole snapshot of 100,000 partitions is
    /// megabytes, and every admin change would fetch one.
    pub async fn settle(&self, holds: impl Fn(&ClusterView) -> bool) {
        let mut rx = self.subscribe();
        let settled = tokio::time::timeout(SETTLE_WAIT, async {
            rx.wait_for(|v| holds(v)).await.is_ok()
        })
        .await;
        if settled != Ok(true) {
            let _ = self.refresh().await;
        }
    }

    /// A topic's metadata; asks the controller once when the cache does not
    /// know the topic (it may have just been created).
    pub async fn topic(&self, name: &str) -> Result<TopicRef, Error> {
        if let Some(t) = self.current().topic(name) {
            return Ok(t.clone());
        }
        let md = self.refresh().await?;
        md.topic(name).cloned().ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            )
        })
    }

    /// The address of the storage node leading a partition, and the
    /// leader epoch this metadata knows it by.
    pub fn leader(&self, topic: &str, partition: u32) -> Result<(String, u64), Error> {
        let md = self.current();
        let t = md.topic(topic).ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {topic:?} does not exist"),
            )
        })?;
        let p = t
            .partition(partition)
            .ok_or_else(|| unknown_partition(topic, partition, t.partitions.len()))?;
        let node = md.node(p.leader);
        match node {
            Some(n) if n.alive && !n.address.is_empty() => Ok((n.address.clone(), p.leader_epoch)),
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

/// One topic of a metadata snapshot, shared, not copied: a topic may have
/// 10,000 partitions, and requests look their topic up every time.
pub type TopicRef = Arc<TopicView>;
