//! The replicas this node hosts, kept in line with the controller's
//! metadata.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use streambus_cluster::topic_config::TopicConfig;
use streambus_cluster::view::{Changes, ClusterView, TopicView};
use streambus_log::{Flusher, Log, OpenOptions};
use streambus_proto::internal::OfflineReplica;
use streambus_proto::v1::PartitionDescription;
use streambus_proto::{Error, Reason};
use tokio::sync::{Notify, mpsc};

use crate::replica::{PartitionKey, PartitionView, Replica};

/// What the node knows of a topic from the last metadata it applied.
#[derive(Debug, Clone)]
/// Which partitions one `apply` looks at.
enum Scope {
    /// Every partition (the first view applied).
    All,
    /// Those that changed since the view applied before.
    Changed(Changes),
}

/// [`Scope`] ready for lookups.
enum ScopeIndex {
    All,
    Changed {
        whole: HashSet<String>,
        partitions: HashSet<PartitionKey>,
    },
}

impl Scope {
    fn index(self) -> ScopeIndex {
        match self {
            Scope::All => ScopeIndex::All,
            Scope::Changed(c) => ScopeIndex::Changed {
                whole: c.whole_topics.into_iter().collect(),
                partitions: c.partitions.into_iter().collect(),
            },
        }
    }
}

impl ScopeIndex {
    fn contains(&self, key: &PartitionKey) -> bool {
        match self {
            ScopeIndex::All => true,
            ScopeIndex::Changed { whole, partitions } => {
                whole.contains(&key.0) || partitions.contains(key)
            }
        }
    }
}

/// An assigned replica this node cannot serve right now: its log is
/// being opened, waits for its directory to be free, or failed.
struct Offline {
    topic_id: String,
    /// `None` when the topic's configuration itself could not be parsed
    /// (then reopening waits for new metadata).
    config: Option<TopicConfig>,
    view: PartitionView,
    reason: String,
    /// An open of its log is running, or starts as soon as the blocking
    /// work on its directory (closing or deleting a previous replica) is
    /// done. A pending replica is installed when its open finishes.
    pending: bool,
    /// Not reported (heartbeats, metrics) before this instant: a replica
    /// that opens within the wait of the call that started it is never
    /// reported offline.
    report_after: Option<Instant>,
    /// For a new replica whose open job was started: set when the job
    /// begins to run. Until then the open waits its turn (at most
    /// [`OPEN_CONCURRENCY`] run at once) and is not suspected of hanging.
    open_started: Option<Arc<std::sync::OnceLock<Instant>>>,
    /// The replica that failed, while requests still hold it: its log must
    /// be gone before the directory is opened again.
    previous: Option<Weak<Replica>>,
    /// For a log that failed: its durable offset then. After a failed
    /// fsync the page cache cannot be trusted (the kernel may have dropped
    /// the dirty pages), so a reopened log is cut back to it.
    durable_at_failure: Option<i64>,
}

impl Offline {
    /// A new replica on its way: its open waits its turn, or has run for
    /// less than `io_wait` (or, with no open started yet, the wait after
    /// the change that assigned it has not passed). Callers are told to
    /// retry (`UNAVAILABLE`) and it is not reported offline. A replica
    /// that failed and is being reopened stays reported.
    fn on_its_way(&self, now: Instant, io_wait: Duration) -> bool {
        let Some(report_after) = self.report_after.filter(|_| self.pending) else {
            return false;
        };
        match self.open_started.as_ref().map(|s| s.get()) {
            Some(Some(started)) => now < *started + io_wait,
            // Waiting its turn behind other opens, for a while: behind
            // opens that hang it would wait for good.
            Some(None) => now < report_after + io_wait * QUEUED_OPEN_WAITS,
            None => now < report_after,
        }
    }
}

/// Blocking work on one replica directory.
enum Job {
    /// Open the log (cut back to the offset, for a log that failed).
    Open {
        config: TopicConfig,
        truncate_to: Option<i64>,
    },
    /// Close a replica that is no longer served, deleting its directory
    /// after if `delete`.
    Close { replica: Arc<Replica>, delete: bool },
    /// Close a log opened for a replica that is no longer wanted.
    CloseLog { log: Log, delete: bool },
    /// Delete the directory.
    Delete,
}

impl Job {
    fn open(config: TopicConfig, truncate_to: Option<i64>) -> Job {
        Job::Open {
            config,
            truncate_to,
        }
    }
}

/// A directory with blocking work in progress. Nothing else touches the
/// directory until that work reports back, so it is never opened twice or
/// opened while it is being deleted.
struct Busy {
    id: u64,
    key: PartitionKey,
    topic_id: String,
    /// The topic configuration of a running open.
    opening: Option<TopicConfig>,
    /// Newer metadata deleted the replica while the work ran: the
    /// directory is deleted once it is done.
    delete_after: bool,
}

/// What a job reports back.
enum Outcome {
    Opened(Result<Log, String>),
    Closed,
}

struct Done {
    dir: PathBuf,
    id: u64,
    outcome: Outcome,
}

/// The blocking work in progress, owned by whoever holds
/// [`Partitions::changes`].
struct Work {
    busy: HashMap<PathBuf, Busy>,
    done: mpsc::UnboundedReceiver<Done>,
    next_id: u64,
    /// When `apply` last looked at every partition.
    last_full_apply: Option<Instant>,
}

/// The replicas hosted on this node.
///
/// One partition never stalls the others: a replica whose log cannot be
/// opened, or whose log failed (a failed fsync poisons it), is kept aside
/// as *offline* with its reason, requests for it get `PARTITION_OFFLINE`,
/// the node reports it to the controller with every heartbeat, and
/// [`Partitions::reopen_offline`] keeps trying to open it again.
///
/// Metadata is applied under one lock, but the disk work it causes
/// (opening, closing and deleting replica directories) runs as one
/// blocking job per directory, concurrently, and a change waits for its
/// jobs only up to [`Partitions::with_io_wait`]: a replica whose open is
/// still running then is reported offline (opening) and installed when it
/// finishes; a hung close or delete holds up nothing but its own
/// directory.
pub struct Partitions {
    node_id: u64,
    data_dir: PathBuf,
    replicas: RwLock<HashMap<PartitionKey, Arc<Replica>>>,
    offline: RwLock<HashMap<PartitionKey, Offline>>,
    /// The metadata applied last.
    view: RwLock<Arc<ClusterView>>,
    nodes: RwLock<HashMap<u64, String>>,
    version: std::sync::atomic::AtomicU64,
    /// Counts changes to the replicas served or to their leadership: the
    /// replication tick reconciles fetch loops when it moves.
    generation: std::sync::atomic::AtomicU64,
    /// Every log of this node records its fsyncs here and shares one
    /// interval flusher thread.
    open_options: OpenOptions,
    fsyncs: Arc<streambus_log::FsyncStats>,
    /// Serialises `apply`, `reopen_offline`, `finish_jobs` and `close_all`
    /// and owns the jobs in progress: every decision about a directory is
    /// taken under it, so a directory is never opened twice or opened
    /// while it is being deleted.
    changes: tokio::sync::Mutex<Work>,
    /// Where jobs report back, and the signal that one did.
    done_tx: mpsc::UnboundedSender<Done>,
    job_done: Arc<Notify>,
    /// How long a change waits for the blocking jobs it started.
    io_wait: Duration,
    /// Set by `close_all`: replicas that finish opening are closed, not
    /// served.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// At most this many replicas run maintenance at once.
    maintenance: Arc<tokio::sync::Semaphore>,
    /// At most this many replica logs open at once; the others wait
    /// without holding a blocking thread.
    opens: Arc<tokio::sync::Semaphore>,
    /// Signalled when a topic's configuration changed, so retention and
    /// the other maintenance run at once instead of at the next interval,
    /// for the replicas queued in `due_for_maintenance`.
    maintenance_due: Arc<Notify>,
    due_for_maintenance: std::sync::Mutex<Vec<Arc<Replica>>>,
    /// How long an in-sync follower may lag before it leaves the ISR.
    lag_max_ms: u64,
}

/// Default for how long an in-sync follower may lag (ms).
pub const DEFAULT_REPLICA_LAG_MS: u64 = 10_000;

/// Default for how long applying metadata (or reopening offline replicas)
/// waits for the disk work it started before it goes on without it.
pub const DEFAULT_IO_WAIT: Duration = Duration::from_secs(10);

/// Why a replica whose open is running is not served.
const OPENING: &str = "its log is still opening (slow or hung disk?)";

/// How often applying metadata looks at every partition, not only at
/// those that changed: a replica whose state drifted from its metadata
/// (whatever the cause) is brought back in line within this.
const FULL_APPLY_EVERY: Duration = Duration::from_secs(60);

/// How many replicas run retention, compaction and rolls at once.
const MAINTENANCE_CONCURRENCY: usize = 4;

/// How many replica logs open at once. Thousands of new partitions (one
/// topic create) queue for it instead of filling the blocking thread pool
/// that reads and closes also need, and an open that waits its turn is
/// not mistaken for a hung disk.
pub const OPEN_CONCURRENCY: usize = 64;

/// How many io waits (after the change that assigned it) an open may wait
/// for its turn before its replica is reported offline: past that, the
/// opens ahead of it are hanging rather than queued.
const QUEUED_OPEN_WAITS: u32 = 6;

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
    /// example another file system); the node's fsync statistics and flusher
    /// are added to them.
    pub fn with_open_options(node_id: u64, data_dir: PathBuf, options: OpenOptions) -> Partitions {
        let fsyncs = Arc::new(streambus_log::FsyncStats::default());
        let mut open_options = options.fsync_stats(fsyncs.clone());
        match Flusher::new() {
            Ok(flusher) => open_options = open_options.flusher(flusher),
            // Logs fall back to the process-wide flusher.
            Err(e) => tracing::warn!(error = %e, "cannot start this node's log flusher"),
        }
        let (done_tx, done) = mpsc::unbounded_channel();
        Partitions {
            lag_max_ms: DEFAULT_REPLICA_LAG_MS,
            open_options,
            fsyncs,
            changes: tokio::sync::Mutex::new(Work {
                busy: HashMap::new(),
                done,
                next_id: 0,
                last_full_apply: None,
            }),
            done_tx,
            job_done: Arc::new(Notify::new()),
            io_wait: DEFAULT_IO_WAIT,
            closing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            maintenance: Arc::new(tokio::sync::Semaphore::new(MAINTENANCE_CONCURRENCY)),
            opens: Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY)),
            maintenance_due: Arc::new(Notify::new()),
            due_for_maintenance: std::sync::Mutex::default(),
            node_id,
            data_dir,
            replicas: RwLock::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
            offline: RwLock::default(),
            view: RwLock::default(),
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

    /// Sets how long applying metadata, reopening offline replicas and
    /// maintenance wait for one replica's disk work before going on without
    /// it (default [`DEFAULT_IO_WAIT`]).
    pub fn with_open_concurrency(mut self, opens: usize) -> Partitions {
        self.opens = Arc::new(tokio::sync::Semaphore::new(opens.max(1)));
        self
    }

    /// How long a change waits for the disk work it started.
    pub fn with_io_wait(mut self, wait: Duration) -> Partitions {
        self.io_wait = wait;
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
        self.fsyncs.count()
    }

    /// The fsync count and latency histogram every log of this node
    /// records into.
    pub fn fsync_stats(&self) -> Arc<streambus_log::FsyncStats> {
        self.fsyncs.clone()
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
            if o.on_its_way(Instant::now(), self.io_wait) {
                // A new replica still opening, not yet reported offline: a
                // moment, not an outage, so callers retry.
                return Err(Error::new(
                    Reason::Unavailable,
                    format!(
                        "{topic}/{partition} is not served on node {} yet: {}",
                        self.node_id, o.reason
                    ),
                ));
            }
            return Err(Error::new(
                Reason::PartitionOffline,
                format!(
                    "{topic}/{partition} is offline on node {}: {}",
                    self.node_id, o.reason
                ),
            ));
        }
        let view = read(&self.view).clone();
        let Some(info) = view.topic(topic) else {
            return Err(Error::new(
                Reason::UnknownTopic,
                format!("topic {topic:?} does not exist"),
            ));
        };
        let Some(p) = info.partition(partition) else {
            return Err(Error::new(
                Reason::UnknownPartition,
                format!(
                    "topic {topic:?} has {} partitions; there is no partition {partition}",
                    info.partitions.len()
                ),
            ));
        };
        Err(self.not_leader(topic, partition, p.leader))
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
    /// still applied. The opens, closes and deletes run concurrently, one
    /// job per directory; this waits for them at most the io wait (a
    /// replica still opening then is served once its open finishes).
    ///
    /// Only replicas this process hosts (or holds offline) are deleted, and
    /// only on a positive statement of newer metadata (the topic is gone,
    /// or the partition is listed without this node): directories this
    /// process never opened are left alone, so a lagging or empty metadata
    /// view can never delete data.
    ///
    /// Only the partitions that changed since the view applied before are
    /// looked at (topics and partitions shared with it are skipped); the
    /// first view, and one a minute, is looked at whole. Returns how many
    /// partitions were.
    pub async fn apply(&self, md: &ClusterView) -> usize {
        let mut work = self.changes.lock().await;
        self.finish_done(&mut work);
        // The watch never goes back in version; an equal version from
        // another controller is the same state and is not re-applied.
        if md.version <= self.version() && self.version() != 0 {
            return 0;
        }
        *write(&self.nodes) = md
            .nodes
            .iter()
            .map(|n| (n.node_id, n.address.clone()))
            .collect();
        // Only what changed since the view applied last is looked at:
        // with 100,000 partitions, one leader change must not revisit
        // them all. The first view is looked at whole.
        let before = std::mem::replace(&mut *write(&self.view), Arc::new(md.clone()));
        let full = before.version == 0
            || work
                .last_full_apply
                .is_none_or(|at| at.elapsed() >= FULL_APPLY_EVERY);
        let scope = if full {
            work.last_full_apply = Some(Instant::now());
            Scope::All
        } else {
            Scope::Changed(md.changes_since(&before))
        };
        let scope = scope.index();

        let mut wanted: HashMap<
            PartitionKey,
            (String, Result<TopicConfig, String>, PartitionView),
        > = HashMap::new();
        let mut looked_at = 0;
        let mut want =
            |t: &TopicView, config: &Result<TopicConfig, String>, p: &PartitionDescription| {
                looked_at += 1;
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
            };
        let config_of = |t: &TopicView| TopicConfig::from_map(&t.configs).map_err(|e| e.message);
        match &scope {
            ScopeIndex::All => {
                for t in md.topics.values() {
                    let config = config_of(t);
                    for p in &t.partitions {
                        want(t, &config, p);
                    }
                }
            }
            ScopeIndex::Changed { whole, partitions } => {
                for name in whole {
                    if let Some(t) = md.topic(name) {
                        let config = config_of(t);
                        for p in &t.partitions {
                            want(t, &config, p);
                        }
                    }
                }
                let mut configs: HashMap<&str, Result<TopicConfig, String>> = HashMap::new();
                for (name, partition) in partitions {
                    let Some(t) = md.topic(name) else { continue };
                    let Some(p) = t.partition(*partition) else {
                        continue;
                    };
                    let config = configs.entry(name.as_str()).or_insert_with(|| config_of(t));
                    want(t, config, p);
                }
            }
        }
        let topic_gone = |key: &PartitionKey, topic_id: &str| {
            md.topic(&key.0).is_none_or(|t| t.topic_id != topic_id)
        };
        // Taken out of the partition's replica set (a reassignment moved
        // the replica elsewhere): the metadata names the partition and its
        // replicas, and this node is not among them.
        let unassigned = |key: &PartitionKey, topic_id: &str| {
            md.topic(&key.0)
                .filter(|t| t.topic_id == topic_id)
                .and_then(|t| t.partition(key.1))
                .is_some_and(|p| !p.replicas.contains(&self.node_id))
        };
        let delete = |key: &PartitionKey, topic_id: &str| {
            topic_gone(key, topic_id) || unassigned(key, topic_id)
        };
        let mut started = HashSet::new();

        // Replicas to drop: topic gone or recreated, or no longer assigned.
        let current: Vec<(PartitionKey, Arc<Replica>)> = read(&self.replicas)
            .iter()
            .filter(|(k, _)| scope.contains(k))
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
            let (dir, topic_id) = (replica.dir.clone(), replica.topic_id.clone());
            started.extend(self.start(
                &mut work,
                dir,
                key,
                topic_id,
                Job::Close { replica, delete },
            ));
        }
        let stale: Vec<(PartitionKey, String)> = read(&self.offline)
            .iter()
            .filter(|(k, o)| {
                scope.contains(k)
                    && !matches!(wanted.get(*k), Some((id, _, _)) if *id == o.topic_id)
            })
            .map(|(k, o)| (k.clone(), o.topic_id.clone()))
            .collect();
        for (key, topic_id) in stale {
            write(&self.offline).remove(&key);
            if delete(&key, &topic_id) {
                let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
                match work.busy.get_mut(&dir) {
                    // Its open (or a close) is running: the directory goes
                    // once that is done.
                    Some(busy) => busy.delete_after = true,
                    None => started.extend(self.start(&mut work, dir, key, topic_id, Job::Delete)),
                }
            }
        }

        // Replicas to open or update.
        for (key, (topic_id, config, view)) in wanted {
            let existing = read(&self.replicas).get(&key).cloned();
            if let Some(r) = existing {
                let changed = config.as_ref().ok().filter(|c| **c != r.config());
                let Some(changed) = changed else {
                    // Unchanged, or a configuration that cannot be parsed:
                    // the replica keeps the one it has.
                    r.set_view(view, now_ms() as u64);
                    continue;
                };
                match r.update_config(changed) {
                    Ok(()) => {
                        tracing::info!(topic = %key.0, partition = key.1, "topic configuration applied");
                        self.maintenance_due_for(&r);
                    }
                    Err(why) => {
                        // The controller refuses such changes; metadata
                        // from a version that did not is kept out.
                        tracing::warn!(topic = %key.0, partition = key.1, reason = %why,
                            "topic configuration change not applied: the replica keeps its configuration");
                    }
                }
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
                // Already offline or opening: keep it there (the reopen
                // loop retries, a running open installs it), with the
                // newest leadership and config.
                o.view = view;
                o.config = Some(config);
                continue;
            }
            let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
            let free = !work.busy.contains_key(&dir);
            write(&self.offline).insert(
                key.clone(),
                Offline {
                    topic_id: topic_id.clone(),
                    config: Some(config.clone()),
                    view,
                    reason: if free {
                        OPENING.into()
                    } else {
                        "waiting for the directory of its previous replica to be closed".into()
                    },
                    pending: true,
                    report_after: Some(Instant::now() + self.io_wait),
                    open_started: None,
                    previous: None,
                    durable_at_failure: None,
                },
            );
            if free {
                started.extend(self.start(&mut work, dir, key, topic_id, Job::open(config, None)));
            }
        }
        self.changed();
        self.wait(&mut work, started).await;
        self.changed();
        self.version
            .store(md.version, std::sync::atomic::Ordering::Release);
        looked_at
    }

    /// The metadata applied last.
    pub fn view(&self) -> Arc<ClusterView> {
        read(&self.view).clone()
    }

    /// Applies `md` as the watch would: on top of the view applied last,
    /// sharing what did not change.
    #[cfg(test)]
    pub(crate) async fn apply_wire(
        &self,
        md: &streambus_proto::internal::ClusterMetadata,
    ) -> usize {
        let view = self.view().apply(md.clone()).expect("consistent metadata");
        self.apply(&view).await
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Moves whenever the replicas served or their leadership change.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts blocking `job` on `dir`, which must not be busy. Returns the
    /// job's id.
    fn start(
        &self,
        work: &mut Work,
        dir: PathBuf,
        key: PartitionKey,
        topic_id: String,
        job: Job,
    ) -> Option<u64> {
        if work.busy.contains_key(&dir) {
            debug_assert!(false, "{} is busy", dir.display());
            tracing::error!(dir = %dir.display(), "a second job for a busy directory was not started");
            return None;
        }
        let id = work.next_id;
        work.next_id += 1;
        work.busy.insert(
            dir.clone(),
            Busy {
                id,
                key,
                topic_id,
                opening: match &job {
                    Job::Open { config, .. } => Some(config.clone()),
                    _ => None,
                },
                delete_after: false,
            },
        );
        let options = self.open_options.clone();
        let tx = self.done_tx.clone();
        let job_done = self.job_done.clone();
        let is_open = matches!(job, Job::Open { .. });
        let started = is_open.then(|| {
            let cell = Arc::new(std::sync::OnceLock::new());
            if let Some(o) = write(&self.offline).get_mut(&work.busy[&dir].key) {
                o.open_started = Some(cell.clone());
            }
            cell
        });
        let closing = self.closing.clone();
        let blocking = move || {
            if let Some(started) = started {
                if closing.load(std::sync::atomic::Ordering::Acquire) {
                    // Its turn came after the node closed every log: the
                    // directory may already belong to the next process.
                    let outcome = Outcome::Opened(Err("the node is shutting down".into()));
                    let _ = tx.send(Done { dir, id, outcome });
                    job_done.notify_one();
                    return;
                }
                let _ = started.set(Instant::now());
            }
            let run = std::panic::AssertUnwindSafe(|| match job {
                Job::Open {
                    config,
                    truncate_to,
                } => Outcome::Opened(open_log(&dir, &config, options, truncate_to)),
                Job::Close { replica, delete } => {
                    close_replica(replica, delete);
                    Outcome::Closed
                }
                Job::CloseLog { log, delete } => {
                    close_log(log, &dir, delete);
                    Outcome::Closed
                }
                Job::Delete => {
                    delete_dir(&dir);
                    Outcome::Closed
                }
            });
            let outcome = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                tracing::error!(dir = %dir.display(), "replica directory job panicked");
                if is_open {
                    Outcome::Opened(Err("opening the log panicked".into()))
                } else {
                    Outcome::Closed
                }
            });
            // Nobody listens any more once the node is gone.
            let _ = tx.send(Done { dir, id, outcome });
            job_done.notify_one();
        };
        if is_open {
            let opens = self.opens.clone();
            tokio::spawn(async move {
                // Its turn first; the semaphore is never closed.
                let _turn = opens.acquire_owned().await;
                let _ = tokio::task::spawn_blocking(blocking).await;
            });
        } else {
            tokio::task::spawn_blocking(blocking);
        }
        Some(id)
    }

    /// Handles every job that reported back.
    fn finish_done(&self, work: &mut Work) -> usize {
        let mut installed = 0;
        while let Ok(done) = work.done.try_recv() {
            installed += usize::from(self.finish(work, done).0);
        }
        installed
    }

    /// Handles a job that reported back: serves a replica that opened and
    /// is still wanted, closes one that is not, deletes the directory if
    /// newer metadata asked for it meanwhile, and starts the open of a
    /// replica that waited for the directory. Returns whether a replica
    /// was installed, and the id of a next job it started on the directory.
    fn finish(&self, work: &mut Work, done: Done) -> (bool, Option<u64>) {
        let Some(busy) = work.busy.remove(&done.dir) else {
            return (false, None);
        };
        debug_assert_eq!(busy.id, done.id);
        let Busy {
            key,
            topic_id,
            opening,
            delete_after,
            ..
        } = busy;
        let dir = done.dir;
        let closing = self.closing.load(std::sync::atomic::Ordering::Acquire);
        let wanted = || {
            !delete_after
                && !closing
                && read(&self.offline)
                    .get(&key)
                    .is_some_and(|o| o.pending && o.topic_id == topic_id && o.config.is_some())
        };
        match (done.outcome, opening) {
            (Outcome::Opened(Ok(log)), Some(config)) => {
                if wanted() {
                    let Some(o) = write(&self.offline).remove(&key) else {
                        return (false, None);
                    };
                    tracing::info!(topic = %key.0, partition = key.1, dir = %dir.display(),
                        end_offset = log.end_offset(), "opened partition replica");
                    let replica = Arc::new(Replica::new(
                        self.node_id,
                        key.clone(),
                        topic_id,
                        dir,
                        log,
                        // What the log was opened with.
                        config,
                        o.view,
                        self.lag_max_ms,
                    ));
                    // Metadata that arrived during the open may have
                    // changed the configuration since.
                    if let Some(latest) = o.config.as_ref().filter(|c| **c != replica.config()) {
                        match replica.update_config(latest) {
                            Ok(()) => self.maintenance_due_for(&replica),
                            Err(why) => {
                                tracing::warn!(topic = %key.0, partition = key.1, reason = %why,
                                    "topic configuration change not applied: the replica keeps its configuration");
                            }
                        }
                    }
                    write(&self.replicas).insert(key, replica);
                    self.changed();
                    return (true, None);
                }
                // Deleted, moved away or failed meanwhile: not served.
                let next = self.start(
                    work,
                    dir,
                    key,
                    topic_id,
                    Job::CloseLog {
                        log,
                        delete: delete_after,
                    },
                );
                return (false, next);
            }
            (Outcome::Opened(Err(reason)), _) => {
                if wanted()
                    && let Some(o) = write(&self.offline).get_mut(&key)
                {
                    if o.reason != reason {
                        tracing::error!(topic = %key.0, partition = key.1, %reason, "partition replica offline");
                    }
                    o.reason = reason;
                    o.pending = false;
                    o.report_after = None;
                }
            }
            (Outcome::Closed | Outcome::Opened(Ok(_)), _) => {}
        }
        if delete_after {
            let next = self.start(work, dir, key, topic_id, Job::Delete);
            return (false, next);
        }
        // A replica that waited for this directory (re-assigned while its
        // previous replica was being closed) opens now.
        let waiting = write(&self.offline)
            .get_mut(&key)
            .filter(|o| o.pending && o.topic_id == topic_id && !closing)
            .and_then(|o| {
                o.reason = OPENING.into();
                o.config.clone()
            });
        match waiting {
            Some(config) => {
                let next = self.start(work, dir, key, topic_id, Job::open(config, None));
                (false, next)
            }
            None => (false, None),
        }
    }

    /// Waits, at most the io wait, for the jobs in `started` and the jobs
    /// they led to; handles every job that reports back meanwhile. Returns
    /// how many of them installed a replica.
    async fn wait(&self, work: &mut Work, mut started: HashSet<u64>) -> usize {
        let deadline = tokio::time::Instant::now() + self.io_wait;
        let mut installed = 0;
        while work.busy.values().any(|b| started.contains(&b.id)) {
            let Ok(Some(done)) = tokio::time::timeout_at(deadline, work.done.recv()).await else {
                break;
            };
            let id = done.id;
            let (ok, next) = self.finish(work, done);
            if started.remove(&id) {
                installed += usize::from(ok);
                started.extend(next);
            }
        }
        installed
    }

    /// Handles the jobs that finished since the last change (a replica
    /// whose open outlasted the wait is served from here on). The node
    /// calls it whenever [`Partitions::job_finished`] fires.
    pub async fn finish_jobs(&self) -> usize {
        let mut work = self.changes.lock().await;
        self.finish_done(&mut work)
    }

    /// Completes when a blocking job on a replica directory finished (at
    /// once if one finished since the last call).
    pub async fn job_finished(&self) {
        self.job_done.notified().await;
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
                pending: false,
                report_after: None,
                open_started: None,
                durable_at_failure: previous
                    .as_ref()
                    .and_then(Weak::upgrade)
                    .map(|r| r.log.durable_offset()),
                previous,
            },
        );
    }

    /// Takes replicas whose log failed (a failed fsync poisons it)
    /// offline, then tries to open every offline replica again (waiting
    /// for the opens at most the io wait). Returns how many came back
    /// within it.
    pub async fn reopen_offline(&self) -> usize {
        let mut work = self.changes.lock().await;
        self.finish_done(&mut work);
        let failed: Vec<(PartitionKey, Arc<Replica>, String)> = read(&self.replicas)
            .iter()
            .filter_map(|(k, r)| r.log.failure().map(|f| (k.clone(), r.clone(), f)))
            .collect();
        for (key, replica, failure) in failed {
            write(&self.replicas).remove(&key);
            self.changed();
            self.set_offline(
                key,
                replica.topic_id.clone(),
                Some(replica.config()),
                replica.view(),
                format!("log failed: {failure}"),
                Some(Arc::downgrade(&replica)),
            );
        }
        let candidates: Vec<(PartitionKey, String, TopicConfig, Option<i64>)> = read(&self.offline)
            .iter()
            .filter(|(_, o)| !o.pending)
            .filter(|(_, o)| o.previous.as_ref().is_none_or(|w| w.strong_count() == 0))
            .filter_map(|(k, o)| {
                o.config
                    .clone()
                    .map(|c| (k.clone(), o.topic_id.clone(), c, o.durable_at_failure))
            })
            .collect();
        let mut started = HashSet::new();
        for (key, topic_id, config, truncate_to) in candidates {
            let dir = partition_dir(&self.data_dir, &key.0, key.1, &topic_id);
            if work.busy.contains_key(&dir) {
                continue;
            }
            if let Some(o) = write(&self.offline).get_mut(&key) {
                // Still reported with its reason while the open runs.
                o.pending = true;
            }
            started.extend(self.start(
                &mut work,
                dir,
                key,
                topic_id,
                Job::open(config, truncate_to),
            ));
        }
        let reopened = self.wait(&mut work, started).await;
        if reopened > 0 {
            tracing::info!(reopened, "offline partition replicas are back");
        }
        reopened
    }

    /// The replicas this node is assigned but cannot serve, for the
    /// heartbeat: those that failed, and those still opening after the io
    /// wait.
    pub fn offline_replicas(&self) -> Vec<OfflineReplica> {
        let now = Instant::now();
        let mut out: Vec<OfflineReplica> = read(&self.offline)
            .iter()
            .filter(|(_, o)| !o.on_its_way(now, self.io_wait))
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

    /// Signalled when maintenance should run before its next interval for
    /// some replicas (their topic's configuration changed): see
    /// [`Partitions::maintain_due`].
    pub fn maintenance_due(&self) -> Arc<Notify> {
        self.maintenance_due.clone()
    }

    /// Queues `replica` for maintenance before the next interval.
    fn maintenance_due_for(&self, replica: &Arc<Replica>) {
        self.due_for_maintenance
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(replica.clone());
        self.maintenance_due.notify_one();
    }

    /// Runs maintenance (as [`Partitions::maintain`]) on the replicas
    /// queued since the last call: a configuration change to one topic
    /// does not visit the other 100,000 partitions.
    pub async fn maintain_due(&self) {
        let due = std::mem::take(
            &mut *self
                .due_for_maintenance
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.maintain_replicas(due).await;
    }

    /// Runs retention, compaction and age-based rolls on every replica, a
    /// few at a time, and waits for them at most the io wait. A replica
    /// whose maintenance from an earlier call is still running (a slow or
    /// hung disk) is skipped.
    pub async fn maintain(&self) {
        self.maintain_replicas(self.all()).await;
    }

    async fn maintain_replicas(&self, replicas: Vec<Arc<Replica>>) {
        let mut tasks = tokio::task::JoinSet::new();
        // A log that never held a record has nothing to roll, delete or
        // compact: tens of thousands of idle partitions cost no blocking
        // work each interval.
        for r in replicas.into_iter().filter(|r| r.log.end_offset() > 0) {
            if r.maintenance_running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                continue;
            }
            let slots = self.maintenance.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let job = r.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let now = now_ms();
                    job.log.roll_if_due(now)?;
                    let retention = job.log.apply_retention(now)?;
                    if job.config().cleanup_policy
                        == streambus_cluster::topic_config::CleanupPolicy::Compact
                    {
                        job.log.compact(now)?;
                    }
                    Ok::<_, streambus_log::LogError>(retention)
                })
                .await;
                r.maintenance_running
                    .store(false, std::sync::atomic::Ordering::Release);
                match result {
                    Ok(Ok(retention)) => {
                        tracing::debug!(topic = %r.topic, partition = r.partition, ?retention, "maintenance done");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "partition maintenance failed")
                    }
                    Err(e) => {
                        tracing::error!(topic = %r.topic, partition = r.partition, error = %e, "partition maintenance task failed")
                    }
                }
            });
        }
        let _ = tokio::time::timeout(self.io_wait, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        // Tasks still running go on by themselves.
        tasks.detach_all();
    }

    /// Flushes and closes every replica (shutdown), and closes the logs of
    /// opens still running that finish within the io wait.
    pub async fn close_all(&self) {
        let mut work = self.changes.lock().await;
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.finish_done(&mut work);
        let all: Vec<_> = write(&self.replicas).drain().map(|(_, r)| r).collect();
        let mut closes = HashSet::new();
        for r in all {
            let (dir, key, topic_id) = (
                r.dir.clone(),
                (r.topic.clone(), r.partition),
                r.topic_id.clone(),
            );
            closes.extend(self.start(
                &mut work,
                dir,
                key,
                topic_id,
                Job::Close {
                    replica: r,
                    delete: false,
                },
            ));
        }
        // Every hosted replica is flushed before the node stops, however
        // long it takes.
        while work.busy.values().any(|b| closes.contains(&b.id)) {
            let Some(done) = work.done.recv().await else {
                break;
            };
            closes.remove(&done.id);
            self.finish(&mut work, done);
        }
        let others: HashSet<u64> = work.busy.values().map(|b| b.id).collect();
        self.wait(&mut work, others).await;
    }
}

/// Opens a replica's log (blocking), cut back to `truncate_to` if it is
/// past it.
fn open_log(
    dir: &Path,
    config: &TopicConfig,
    options: OpenOptions,
    truncate_to: Option<i64>,
) -> Result<Log, String> {
    let log = Log::open_with(dir, config.log_config(), options).map_err(|e| e.to_string())?;
    if let Some(durable) = truncate_to
        && log.end_offset() > durable
    {
        tracing::warn!(dir = %dir.display(), from = log.end_offset(), to = durable,
            "cutting a reopened log back to what was durable when it failed");
        log.truncate_to(durable).map_err(|e| e.to_string())?;
    }
    Ok(log)
}

/// Deletes a replica directory (blocking).
fn delete_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "deleted partition replica"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "deleting partition replica failed")
        }
    }
}

/// Closes a replica that is no longer served (blocking): cleanly (indexes
/// synced, fast reopen) when nothing else holds the log, otherwise at
/// least its data made durable; then deletes its directory if `delete`.
fn close_replica(replica: Arc<Replica>, delete: bool) {
    let dir = replica.dir.clone();
    match Arc::try_unwrap(replica).map(|r| Arc::try_unwrap(r.log)) {
        Ok(Ok(log)) => close_log(log, &dir, delete),
        Ok(Err(log)) => finish_close(log.flush(), &dir, delete),
        Err(replica) => finish_close(replica.log.flush(), &dir, delete),
    }
}

/// Closes a log (blocking), then deletes its directory if `delete`.
fn close_log(log: Log, dir: &Path, delete: bool) {
    finish_close(log.close(), dir, delete);
}

fn finish_close(closed: Result<(), streambus_log::LogError>, dir: &Path, delete: bool) {
    match closed {
        Ok(()) => tracing::info!(dir = %dir.display(), "closed partition replica"),
        // The topic is gone: its data goes too, flushed or not (a full disk
        // must not keep a deleted topic's space forever).
        Err(e) if delete => {
            tracing::warn!(dir = %dir.display(), error = %e, "closing a deleted replica failed; deleting it anyway")
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "closing partition replica failed")
        }
    }
    if delete {
        delete_dir(dir);
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

    use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
    use streambus_record::{BatchBuilder, Record};

    use super::*;

    fn topic(name: &str, id: &str, configs: &[(&str, &str)]) -> TopicMetadata {
        TopicMetadata {
            partial: false,
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
                max_partitions: 0,
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

        p.apply_wire(&metadata(
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
        p.apply_wire(&metadata(
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
        p.apply_wire(&metadata(
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
        p.apply_wire(&metadata(4, vec![topic("good", "id2", &[])]))
            .await;
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
        p.apply_wire(&metadata(
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
        let batch = b.build().to_vec();
        replica.log.append(&batch).unwrap();
        let dir = replica.dir.clone();
        drop(replica);
        assert!(dir.exists());

        p.apply_wire(&metadata(3, vec![topic("keep", "id2", &[])]))
            .await;
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(partition_dir(tmp.path(), "keep", 0, "id2").exists());
        // A metadata view that lacks a topic this process never saw deletes
        // nothing.
        let stray = partition_dir(tmp.path(), "other", 0, "id9");
        std::fs::create_dir_all(&stray).unwrap();
        p.apply_wire(&metadata(4, vec![])).await;
        assert!(stray.exists());
    }

    fn append_records(replica: &Replica, n: i64) {
        for i in 0..n {
            let mut b = BatchBuilder::new(streambus_record::Compression::None);
            b.push(&Record {
                value: Some(bytes::Bytes::from(vec![b'v'; 100])),
                timestamp_ms: now_ms() + i,
                ..Record::default()
            });
            let batch = b.build().to_vec();
            replica.log.append(&batch).unwrap();
        }
    }

    #[tokio::test]
    async fn a_changed_topic_config_applies_to_the_open_replica_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        let small = [("segment.bytes", "400"), ("fsync.policy", "never")];
        p.apply_wire(&metadata(2, vec![topic("t", "id1", &small)]))
            .await;
        let replica = p.leader_replica("t", 0).unwrap();
        append_records(&replica, 30);
        let segments = replica.log.segment_count();
        assert!(segments > 3, "{segments}");
        p.maintain().await;
        assert_eq!(replica.log.segment_count(), segments, "no retention yet");

        let due = p.maintenance_due();
        let lowered = [
            ("segment.bytes", "400"),
            ("fsync.policy", "never"),
            ("retention.bytes", "0"),
            ("min.insync.replicas", "1"),
        ];
        p.apply_wire(&metadata(3, vec![topic("t", "id1", &lowered)]))
            .await;
        let same = p.leader_replica("t", 0).unwrap();
        assert!(
            Arc::ptr_eq(&replica, &same),
            "changed in place, not reopened"
        );
        assert_eq!(same.config().retention_bytes, Some(0));
        assert_eq!(same.log.config().retention_bytes, Some(0));
        // Maintenance is asked to run now, not at its next interval.
        tokio::time::timeout(Duration::from_secs(1), due.notified())
            .await
            .expect("maintenance signalled");
        // For that replica: maintenance of the queued replicas applies it.
        p.maintain_due().await;
        assert_eq!(replica.log.segment_count(), 1, "retention applied");
        assert!(replica.log.log_start_offset() > 0);
        assert_eq!(replica.log.end_offset(), 30, "the log end stays");
    }

    #[tokio::test]
    async fn a_new_fsync_policy_in_metadata_is_not_applied_to_an_open_replica() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        p.apply_wire(&metadata(
            2,
            vec![topic("t", "id1", &[("fsync.policy", "never")])],
        ))
        .await;
        let replica = p.leader_replica("t", 0).unwrap();
        append_records(&replica, 5);
        p.apply_wire(&metadata(
            3,
            vec![topic(
                "t",
                "id1",
                &[("fsync.policy", "always"), ("retention.bytes", "0")],
            )],
        ))
        .await;
        let same = p.leader_replica("t", 0).unwrap();
        assert!(Arc::ptr_eq(&replica, &same), "not reopened");
        assert!(!same.fsync_always());
        assert_eq!(same.config().retention_bytes, None, "refused as a whole");
        assert_eq!(same.log.end_offset(), 5);
    }

    /// A configuration that changes while the replica's log is opening is
    /// applied once the open is done, not lost.
    #[tokio::test]
    async fn a_config_change_during_the_open_is_applied_when_it_finishes() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = HungDisk::default();
        let p = Partitions::with_open_options(
            1,
            tmp.path().to_path_buf(),
            OpenOptions::new().io(Arc::new(disk.clone())),
        )
        .with_io_wait(Duration::from_millis(100));
        disk.block("t-0-");
        p.apply_wire(&metadata(2, vec![topic("t", "id1", &[])]))
            .await;
        assert!(p.leader_replica("t", 0).is_err(), "still opening");
        p.apply_wire(&metadata(
            3,
            vec![topic("t", "id1", &[("retention.bytes", "1000")])],
        ))
        .await;
        disk.release("t-0-");
        let deadline = Instant::now() + Duration::from_secs(10);
        let replica = loop {
            p.reopen_offline().await;
            if let Ok(r) = p.leader_replica("t", 0) {
                break r;
            }
            assert!(Instant::now() < deadline, "never opened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(replica.config().retention_bytes, Some(1000));
        assert_eq!(replica.log.config().retention_bytes, Some(1000));
    }

    /// Opens beyond the concurrency limit wait their turn: only the one
    /// running past the io wait is suspected (reported offline, answered
    /// `PARTITION_OFFLINE`); the queued ones are answered `UNAVAILABLE`
    /// (retry) and not reported, for a few io waits. All are served once
    /// the disk answers.
    #[tokio::test]
    async fn queued_opens_are_not_taken_for_a_hung_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = HungDisk::default();
        let p = Partitions::with_open_options(
            1,
            tmp.path().to_path_buf(),
            OpenOptions::new().io(Arc::new(disk.clone())),
        )
        .with_io_wait(Duration::from_millis(100))
        .with_open_concurrency(1);
        disk.block("-0-");
        let names = ["a", "b", "c"];
        p.apply_wire(&metadata(
            2,
            names
                .iter()
                .map(|n| topic(n, &format!("id{n}"), &[]))
                .collect(),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reported = p.offline_replicas();
        assert_eq!(reported.len(), 1, "only the running open: {reported:?}");
        assert_eq!(reported[0].reason, OPENING);
        for n in names {
            let Err(e) = p.leader_replica(n, 0) else {
                panic!("{n} served while its open hangs");
            };
            let want = if n == reported[0].topic {
                Reason::PartitionOffline
            } else {
                Reason::Unavailable
            };
            assert_eq!(e.reason, want, "{n}: {e}");
        }
        // Behind an open that keeps hanging, the queued ones are reported
        // too once they waited several io waits.
        tokio::time::sleep(Duration::from_millis(100) * QUEUED_OPEN_WAITS).await;
        assert_eq!(p.offline_replicas().len(), 3);

        disk.release("-0-");
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in names {
            while p.leader_replica(n, 0).is_err() {
                p.finish_jobs().await;
                assert!(Instant::now() < deadline, "{n} never opened");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(p.offline_replicas().is_empty());
    }

    /// Per marker: whether it is blocked, and how many operations found
    /// it blocked.
    type Markers = HashMap<String, (bool, usize)>;

    /// The real file system, except that every directory-level operation
    /// (open, create, list, rename, remove, sync) on a path containing a
    /// blocked marker waits until the marker is released: a partition
    /// whose disk hangs.
    #[derive(Debug, Clone, Default)]
    struct HungDisk {
        state: Arc<(std::sync::Mutex<Markers>, std::sync::Condvar)>,
    }

    impl HungDisk {
        fn block(&self, marker: &str) {
            let mut st = self.state.0.lock().unwrap();
            st.entry(marker.to_string()).or_default().0 = true;
        }
        fn release(&self, marker: &str) {
            let mut st = self.state.0.lock().unwrap();
            st.entry(marker.to_string()).or_default().0 = false;
            self.state.1.notify_all();
        }
        /// Releases every marker (a failing test must not leave threads
        /// blocked: the runtime waits for them).
        fn release_all(&self) {
            let mut st = self.state.0.lock().unwrap();
            st.values_mut().for_each(|m| m.0 = false);
            self.state.1.notify_all();
        }
        /// How many operations found `marker` blocked.
        fn hung(&self, marker: &str) -> usize {
            self.state.0.lock().unwrap().get(marker).map_or(0, |m| m.1)
        }
        fn pass(&self, path: &Path) {
            let path = path.to_string_lossy();
            let mut st = self.state.0.lock().unwrap();
            let Some(marker) = st
                .iter()
                .find(|(m, (blocked, _))| *blocked && path.contains(m.as_str()))
                .map(|(m, _)| m.clone())
            else {
                return;
            };
            st.get_mut(&marker).unwrap().1 += 1;
            while st[&marker].0 {
                st = self.state.1.wait(st).unwrap();
            }
        }
    }

    impl streambus_log::io::Io for HungDisk {
        fn open(
            &self,
            path: &Path,
            mode: streambus_log::io::OpenMode,
        ) -> std::io::Result<Arc<dyn streambus_log::io::IoFile>> {
            self.pass(path);
            streambus_log::io::StdIo.open(path, mode)
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            self.pass(path);
            streambus_log::io::StdIo.create_dir(path)
        }
        fn exists(&self, path: &Path) -> std::io::Result<bool> {
            self.pass(path);
            streambus_log::io::StdIo.exists(path)
        }
        fn read_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            self.pass(dir);
            streambus_log::io::StdIo.read_dir(dir)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.pass(from);
            streambus_log::io::StdIo.rename(from, to)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            self.pass(path);
            streambus_log::io::StdIo.remove_file(path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            self.pass(dir);
            streambus_log::io::StdIo.sync_dir(dir)
        }
    }

    /// Waits, handling finished jobs, until partition 0 of `topic` is
    /// served here.
    async fn served(p: &Partitions, topic: &str) -> Arc<Replica> {
        let wait = async {
            loop {
                if let Ok(r) = p.replica(topic, 0) {
                    break r;
                }
                p.job_finished().await;
                p.finish_jobs().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| panic!("{topic} is not served"))
    }

    /// One partition's disk hangs while its log opens: metadata for every
    /// other partition, later metadata, reopens and maintenance all go on;
    /// the hung directory is opened once, is not deleted while its open
    /// runs, and is served (or deleted, if metadata deleted it meanwhile)
    /// once the disk answers.
    #[tokio::test]
    async fn a_hung_partition_disk_does_not_stall_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = HungDisk::default();
        struct ReleaseOnDrop(HungDisk);
        impl Drop for ReleaseOnDrop {
            fn drop(&mut self) {
                self.0.release_all();
            }
        }
        let _release = ReleaseOnDrop(disk.clone());
        disk.block("b-0-idb");
        disk.block("d-0-idd");
        let p = Partitions::with_open_options(
            1,
            tmp.path().to_path_buf(),
            OpenOptions::new().io(Arc::new(disk.clone())),
        )
        .with_io_wait(Duration::from_millis(300));
        let bounded = Duration::from_secs(5);
        let rolls = [("segment.ms", "1")];
        let md = |version, names: &[&str]| {
            metadata(
                version,
                names
                    .iter()
                    .map(|n| topic(n, &format!("id{n}"), &rolls))
                    .collect(),
            )
        };

        tokio::time::timeout(bounded, p.apply_wire(&md(5, &["a", "b", "d"])))
            .await
            .expect("metadata applies while b's and d's disks hang");
        assert_eq!(p.version(), 5);
        p.leader_replica("a", 0).unwrap();
        for t in ["b", "d"] {
            let err = p.leader_replica(t, 0).err().unwrap();
            assert_eq!(err.reason, Reason::PartitionOffline, "{err}");
            assert!(err.message.contains("opening"), "{}", err.message);
        }
        let offline: Vec<_> = p.offline_replicas().into_iter().map(|o| o.topic).collect();
        assert_eq!(offline, ["b", "d"]);

        // Later metadata, reopens and maintenance are not held up either.
        tokio::time::timeout(bounded, p.apply_wire(&md(6, &["a", "b", "c", "d"])))
            .await
            .expect("later metadata applies");
        let c = p.leader_replica("c", 0).unwrap();
        assert_eq!(
            tokio::time::timeout(bounded, p.reopen_offline())
                .await
                .unwrap(),
            0
        );
        tokio::time::timeout(bounded, p.maintain()).await.unwrap();
        assert_eq!(disk.hung("b-0-idb"), 1, "b's directory is opened once");

        // b is deleted while its open hangs: its directory stays until the
        // open is done, then goes; it is never served.
        tokio::time::timeout(bounded, p.apply_wire(&md(7, &["a", "c", "d"])))
            .await
            .unwrap();
        assert_eq!(
            p.leader_replica("b", 0).err().unwrap().reason,
            Reason::UnknownTopic
        );
        let b_dir = partition_dir(tmp.path(), "b", 0, "idb");

        // d's disk answers: d is served once its open finished, without new
        // metadata.
        disk.release("d-0-idd");
        let d = served(&p, "d").await;
        assert!(p.offline_replicas().iter().all(|o| o.topic != "d"));

        disk.release("b-0-idb");
        tokio::time::timeout(bounded, async {
            while b_dir.exists() {
                p.job_finished().await;
                p.finish_jobs().await;
            }
        })
        .await
        .expect("b's directory is deleted once its open finished");
        assert_eq!(disk.hung("b-0-idb"), 1);
        assert!(p.offline_replicas().is_empty());

        // Maintenance: d's disk hangs in a roll, c still rolls (records
        // stamped now, so retention keeps the sealed segments).
        let one = || {
            let mut b = BatchBuilder::new(streambus_record::Compression::None);
            b.push(&Record {
                value: Some(bytes::Bytes::from_static(b"v")),
                timestamp_ms: now_ms(),
                ..Record::default()
            });
            b.build().to_vec()
        };
        c.log.append(&one()).unwrap();
        d.log.append(&one()).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let hung_before = disk.hung("d-0-idd");
        disk.block("d-0-idd");
        tokio::time::timeout(bounded, p.maintain())
            .await
            .expect("maintenance returns while d's roll hangs");
        tokio::time::timeout(bounded, async {
            while c.log.segment_count() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("c rolls while d's roll hangs");
        assert_eq!(disk.hung("d-0-idd"), hung_before + 1);
        // A second round skips d, whose maintenance is still running.
        tokio::time::timeout(bounded, p.maintain()).await.unwrap();
        assert_eq!(disk.hung("d-0-idd"), hung_before + 1);
        disk.release("d-0-idd");
        tokio::time::timeout(bounded, async {
            while d.log.segment_count() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("d's roll finishes once its disk answers");

        // e moves off this node while its close hangs, and comes back
        // before the close finished: it opens (empty, to follow) only once
        // the old directory is gone.
        let moved = |version, here: bool| {
            let mut t = topic("e", "ide", &[]);
            if !here {
                t.partitions[0].replicas = vec![2];
                t.partitions[0].leader = 2;
            }
            let mut m = md(version, &["a", "c", "d"]);
            m.topics.push(t);
            m
        };
        p.apply_wire(&moved(8, true)).await;
        p.leader_replica("e", 0)
            .unwrap()
            .log
            .append(&one())
            .unwrap();
        disk.block("e-0-ide");
        tokio::time::timeout(bounded, p.apply_wire(&moved(9, false)))
            .await
            .expect("metadata applies while e's close hangs");
        tokio::time::timeout(bounded, p.apply_wire(&moved(10, true)))
            .await
            .expect("metadata applies while e's close still hangs");
        // Not reported offline within the io wait: callers retry.
        let err = p.replica("e", 0).err().unwrap();
        assert_eq!(err.reason, Reason::Unavailable, "{err}");
        assert!(err.message.contains("waiting"), "{}", err.message);
        assert_eq!(disk.hung("e-0-ide"), 1, "e's close hangs");
        disk.release("e-0-ide");
        // e opens once its old directory is gone.
        let e = served(&p, "e").await;
        assert_eq!(e.log.end_offset(), 0, "a fresh replica");
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
        let metrics = crate::Metrics::new(&mut prometheus_client::registry::Registry::default());
        p.apply_wire(&metadata(
            2,
            vec![topic("t", "id1", &[("fsync.policy", "always")])],
        ))
        .await;
        metrics.observe_partitions(&p);
        assert_eq!(
            (metrics.replicas.get(), metrics.offline_replicas.get()),
            (1, 0)
        );
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
        replica.log.append(&batch()).unwrap();
        assert!(p.fsyncs() > 0);
        sim.fail_next(SimOp::SyncData, "t-0-id1");
        replica.log.append(&batch()).unwrap_err();
        // The second batch was written but its fsync failed: only the
        // first is durable.
        let durable_at_failure = replica.log.durable_offset();
        assert_eq!(durable_at_failure, 1);
        assert_eq!(replica.log.end_offset(), 2);

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
        metrics.observe_partitions(&p);
        assert_eq!(
            (metrics.replicas.get(), metrics.offline_replicas.get()),
            (0, 1)
        );

        // Once released, it is reopened (recovered) without a restart.
        drop(replica);
        assert_eq!(p.reopen_offline().await, 1);
        let replica = p.leader_replica("t", 0).unwrap();
        assert!(p.offline_replicas().is_empty());
        // Cut back to what was durable when the fsync failed: the batch
        // whose fsync failed is not served again.
        assert_eq!(replica.log.end_offset(), durable_at_failure);
        assert_eq!(replica.log.durable_offset(), durable_at_failure);
        assert_eq!(
            replica.log.append(&batch()).unwrap().base_offset,
            durable_at_failure
        );
        metrics.observe_partitions(&p);
        assert_eq!(
            (metrics.replicas.get(), metrics.offline_replicas.get()),
            (1, 0)
        );
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
        p.apply_wire(&with_replicas(2, &[1], 1)).await;
        assert_eq!(
            p.replica("t", 0).err().unwrap().reason,
            Reason::NotLeader,
            "not hosted here"
        );
        p.apply_wire(&with_replicas(3, &[1, 2], 1)).await;
        let replica = p.replica("t", 0).unwrap();
        assert!(!replica.is_leader());
        assert_eq!(replica.log.end_offset(), 0);
        let dir = replica.dir.clone();
        drop(replica);
        assert!(dir.exists());
        p.apply_wire(&with_replicas(4, &[1, 2], 2)).await;
        let second = p.replica("t", 1).unwrap().dir.clone();
        assert!(second.exists());

        // Taken out of both replica sets: both directories go, and a fetch
        // loop still holding the replica cannot write to it any more.
        let held = p.replica("t", 0).unwrap();
        p.apply_wire(&with_replicas(5, &[1], 2)).await;
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
        p.apply_wire(&with_replicas(6, &[1], 2)).await;
        assert!(stray.exists());
    }

    #[tokio::test]
    async fn a_recreated_topic_gets_a_fresh_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        p.apply_wire(&metadata(2, vec![topic("t", "old", &[])]))
            .await;
        let old = p.leader_replica("t", 0).unwrap().dir.clone();
        p.apply_wire(&metadata(3, vec![topic("t", "new", &[])]))
            .await;
        let new = p.leader_replica("t", 0).unwrap().dir.clone();
        assert_ne!(old, new);
        assert!(!old.exists());
        assert_eq!(p.leader_replica("t", 0).unwrap().log.end_offset(), 0);
    }

    #[tokio::test]
    async fn an_apply_looks_only_at_the_partitions_that_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        // Two partitions hosted here, 10,000 on another node.
        let hosted = |version: u64, leader_of_1: u64| {
            let mut t = topic("h", "h1", &[]);
            let mut p1 = t.partitions[0].clone();
            p1.partition = 1;
            p1.replicas = vec![1, 2];
            p1.leader = leader_of_1;
            p1.leader_epoch = leader_of_1;
            p1.partition_epoch = leader_of_1;
            t.partitions.push(p1);
            let mut big = topic("big", "b1", &[]);
            big.partitions = (0..10_000)
                .map(|i| PartitionDescription {
                    partition: i,
                    leader: 2,
                    replicas: vec![2],
                    isr: vec![2],
                    ..PartitionDescription::default()
                })
                .collect();
            let mut md = metadata(version, vec![t, big]);
            md.nodes.push(StorageNodeInfo {
                node_id: 2,
                address: "127.0.0.1:2".into(),
                alive: true,
                ..StorageNodeInfo::default()
            });
            md
        };
        assert_eq!(
            p.apply_wire(&hosted(2, 1)).await,
            10_002,
            "the first view whole"
        );
        assert!(p.leader_replica("h", 1).is_ok());
        let untouched = p.leader_replica("h", 0).unwrap();

        // A leader change of one partition: that one is looked at.
        assert_eq!(p.apply_wire(&hosted(3, 2)).await, 1);
        assert_eq!(p.replica("h", 1).unwrap().view().leader, 2);
        assert!(p.leader_replica("h", 1).is_err());
        assert!(Arc::ptr_eq(&untouched, &p.leader_replica("h", 0).unwrap()));

        // The same metadata at a newer version: nothing to look at.
        assert_eq!(p.apply_wire(&hosted(4, 2)).await, 0);

        // The big topic deleted: only its replicas here (none) are looked
        // at, and ours stay.
        let mut without = hosted(5, 2);
        without.topics.retain(|t| t.name == "h");
        assert_eq!(p.apply_wire(&without).await, 0);
        assert!(Arc::ptr_eq(&untouched, &p.leader_replica("h", 0).unwrap()));
        assert_eq!(
            p.leader_replica("big", 0).err().unwrap().reason,
            Reason::UnknownTopic
        );
    }

    #[tokio::test]
    async fn a_late_answer_from_an_older_leader_epoch_does_not_take_leadership_back() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Partitions::new(1, tmp.path().to_path_buf());
        let led_by = |version: u64, leader: u64, epoch: u64| {
            let mut t = topic("t", "id", &[]);
            t.partitions[0].replicas = vec![1, 2];
            t.partitions[0].isr = vec![1, 2];
            t.partitions[0].leader = leader;
            t.partitions[0].leader_epoch = epoch;
            t.partitions[0].partition_epoch = epoch;
            metadata(version, vec![t])
        };
        p.apply_wire(&led_by(2, 1, 1)).await;
        let replica = p.leader_replica("t", 0).unwrap();
        p.apply_wire(&led_by(3, 2, 2)).await;
        assert!(!replica.is_leader());
        // An ISR change this node proposed as leader at epoch 1, answered
        // after the metadata that moved the leadership on.
        replica.set_view(
            PartitionView {
                leader: 1,
                leader_epoch: 1,
                partition_epoch: 1,
                replicas: vec![1, 2],
                isr: vec![1],
            },
            now_ms() as u64,
        );
        assert!(!replica.is_leader());
        assert_eq!((replica.view().leader, replica.view().leader_epoch), (2, 2));
    }
}
