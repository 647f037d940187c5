//! The metadata state machine persisted in sled, with snapshots.
//!
//! Tree `sm`: `meta` (last applied log id, last membership, version,
//! placement cursor, cluster id, next producer id, removed controllers),
//! `t/<topic name>` (each topic's JSON without its partitions: name, id,
//! replication factor, configuration),
//! `p/<topic name>/<chunk number, 4 bytes big endian>` (a JSON array of
//! [`CHUNK`] partitions, chunk `c` holding partitions `c * CHUNK..`; topic
//! names hold no `/`, so a topic's prefix matches only its own chunks, in
//! order) and
//! `n/<node id, big endian>` (one JSON storage node each) and `acls` (the
//! JSON array of every ACL, written whole when they change: they change
//! rarely and are read together), and `quotas` (the JSON map of every
//! principal's quotas, the same way). Each apply call
//! writes what it touched in one atomic batch: a change to one partition
//! writes its chunk and `meta`; a reconfigured topic writes its header; a
//! created or deleted topic writes (or removes) its header and every chunk.
//! Chunks rather than a record per partition: sled holds a few KiB of
//! memory per record, which at 100,000 partitions was 300 MiB. Versions before this layout kept a topic's partitions in its `t/`
//! record; such records are loaded and rewritten in this layout when the
//! store opens. Tree `sm_snapshot` holds the latest snapshot (`meta` and
//! `data`, the JSON of the whole state), flushed before openraft may purge
//! the log it covers.
//!
//! After every apply the new [`Metadata`] is published on a
//! `tokio::sync::watch` channel; readers (`GetMetadata`, `WatchMetadata`,
//! the lease task) never take the state machine's lock.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use streambus_acl::Acls;

use super::TypeConfig;
use crate::error::ControllerError;
use crate::metadata::{
    CommandResponse, Dirty, Metadata, Partition, QuotaRates, StorageNode, Topic,
};

type StorageResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;

const META: &[u8] = b"meta";
const TOPIC_PREFIX: &[u8] = b"t/";
const PARTITION_PREFIX: &[u8] = b"p/";
const NODE_PREFIX: &[u8] = b"n/";
const ACLS: &[u8] = b"acls";
const QUOTAS: &[u8] = b"quotas";
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// Everything the state machine holds; also the snapshot format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmState {
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
    metadata: Metadata,
}

/// The `meta` record of tree `sm`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SmMeta {
    last_applied: Option<LogId<u64>>,
    last_membership: Membership,
    version: u64,
    placement_cursor: u64,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    next_producer_id: i64,
    #[serde(default)]
    removed_controllers: BTreeSet<u64>,
}

struct Inner {
    db: sled::Db,
    gate: Arc<super::WriteGate>,
    tree: sled::Tree,
    snapshots: sled::Tree,
    state: Mutex<SmState>,
    published: watch::Sender<Arc<Metadata>>,
    snapshot_seq: AtomicU64,
}

/// The state machine. Cheap to clone; clones share state, so the server
/// keeps one to read the published metadata while openraft owns another.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn topic_key(name: &str) -> Vec<u8> {
    [TOPIC_PREFIX, name.as_bytes()].concat()
}

/// The prefix of every partition key of topic `name`.
fn partition_prefix(name: &str) -> Vec<u8> {
    [PARTITION_PREFIX, name.as_bytes(), b"/"].concat()
}

/// Partitions per `p/` record.
const CHUNK: usize = 256;

/// The key of chunk `chunk` of topic `name`.
fn chunk_key(name: &str, chunk: u32) -> Vec<u8> {
    [
        PARTITION_PREFIX,
        name.as_bytes(),
        b"/",
        &chunk.to_be_bytes()[..],
    ]
    .concat()
}

/// Chunk `chunk` of `topic` as stored.
fn chunk_value(topic: &Topic, chunk: usize) -> Result<Vec<u8>, serde_json::Error> {
    let end = ((chunk + 1) * CHUNK).min(topic.partitions.len());
    serde_json::to_vec(&topic.partitions[chunk * CHUNK..end])
}

/// The `t/` record: a topic without its partitions.
#[derive(Serialize)]
struct TopicHeader<'a> {
    name: &'a str,
    topic_id: &'a str,
    replication_factor: u32,
    configs: &'a BTreeMap<String, String>,
}

impl<'a> TopicHeader<'a> {
    fn of(topic: &'a Topic) -> TopicHeader<'a> {
        // Every field but the partitions (a new one fails to compile here).
        let Topic {
            name,
            topic_id,
            replication_factor,
            configs,
            partitions: _,
        } = topic;
        TopicHeader {
            name,
            topic_id,
            replication_factor: *replication_factor,
            configs,
        }
    }
}

/// A `t/` record as read: a header, or a whole topic as older versions
/// wrote it.
#[derive(Deserialize)]
struct StoredTopic {
    name: String,
    topic_id: String,
    replication_factor: u32,
    configs: BTreeMap<String, String>,
    /// Only in records of the older layout.
    #[serde(default)]
    partitions: Option<Vec<Arc<Partition>>>,
}

fn node_key(id: u64) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()[..]].concat()
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Corrupt(format!("{what}: {e}"))
}

impl StateMachineStore {
    pub(crate) fn open(
        db: &sled::Db,
        gate: Arc<super::WriteGate>,
    ) -> Result<StateMachineStore, ControllerError> {
        let tree = db.open_tree("sm")?;
        let snapshots = db.open_tree("sm_snapshot")?;
        let (mut state, old_layout) = load_state(&tree)?;
        let mut rewrite_all = false;
        // A crash while installing a snapshot can leave `sm` behind the
        // snapshot that was saved first: the snapshot wins then.
        if let (Some(meta), Some(data)) =
            (snapshots.get(SNAPSHOT_META)?, snapshots.get(SNAPSHOT_DATA)?)
        {
            let meta: SnapshotMeta<u64, BasicNode> =
                serde_json::from_slice(&meta).map_err(|e| corrupt("snapshot meta", e))?;
            if meta.last_log_id > state.last_applied {
                state = serde_json::from_slice(&data).map_err(|e| corrupt("snapshot data", e))?;
                rewrite_all = true;
            }
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (published, _) = watch::channel(Arc::new(state.metadata.clone()));
        let store = StateMachineStore {
            inner: Arc::new(Inner {
                db: db.clone(),
                gate,
                tree,
                snapshots,
                state: Mutex::new(state),
                published,
                snapshot_seq: AtomicU64::new(seed),
            }),
        };
        // `sm` must hold the state loaded, all in the current layout:
        // later applies write only what they change.
        if rewrite_all || !old_layout.is_empty() {
            store.inner.gate.begin()?;
            let state = store.lock();
            if rewrite_all {
                store.rewrite_all(&state)?;
            } else {
                let dirty = Dirty {
                    topics: old_layout,
                    ..Dirty::default()
                };
                store.persist(&state, &dirty)?;
            }
        }
        Ok(store)
    }

    /// The latest applied metadata.
    pub fn current(&self) -> Arc<Metadata> {
        self.inner.published.borrow().clone()
    }

    /// A receiver that sees every newly applied metadata.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Metadata>> {
        self.inner.published.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, SmState> {
        // A panic while holding the lock cannot leave a half-applied entry
        // visible to Raft (it would have failed the apply), so keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn persist(&self, state: &SmState, dirty: &Dirty) -> Result<(), std::io::Error> {
        let mut batch = sled::Batch::default();
        for name in &dirty.topics {
            self.write_topic(&mut batch, name, state.metadata.topics.get(name))?;
        }
        let chunks: BTreeSet<(&String, usize)> = dirty
            .partitions
            .iter()
            // Written whole above (created or deleted in these entries).
            .filter(|(name, _)| !dirty.topics.contains(name))
            .map(|(name, partition)| (name, *partition as usize / CHUNK))
            .collect();
        for (name, chunk) in chunks {
            if let Some(t) = state.metadata.topics.get(name)
                && chunk * CHUNK < t.partitions.len()
            {
                batch.insert(chunk_key(name, chunk as u32), chunk_value(t, chunk)?);
            }
        }
        for name in &dirty.headers {
            // Written whole above, or gone.
            if dirty.topics.contains(name) {
                continue;
            }
            if let Some(t) = state.metadata.topics.get(name) {
                batch.insert(topic_key(name), serde_json::to_vec(&TopicHeader::of(t))?);
            }
        }
        for id in &dirty.nodes {
            if let Some(node) = state.metadata.nodes.get(id) {
                batch.insert(node_key(*id), serde_json::to_vec(node)?);
            }
        }
        if dirty.acls {
            write_acls(&mut batch, &state.metadata.acls)?;
        }
        if dirty.quotas {
            write_quotas(&mut batch, &state.metadata.quotas)?;
        }
        batch.insert(META, serde_json::to_vec(&meta_of(state))?);
        self.inner.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Adds to `batch` the writes that leave topic `name` as `topic` in the
    /// tree: its header and every partition, or nothing of it when `None`.
    /// Partition keys the tree holds beyond the topic's partitions (of a
    /// deleted topic, or one created again with fewer) are removed.
    fn write_topic(
        &self,
        batch: &mut sled::Batch,
        name: &str,
        topic: Option<&Arc<Topic>>,
    ) -> Result<(), std::io::Error> {
        let count = topic.map_or(0, |t| t.partitions.len().div_ceil(CHUNK));
        let prefix = partition_prefix(name);
        let first_stale = chunk_key(name, u32::try_from(count).unwrap_or(u32::MAX));
        let stale = if count == 0 {
            self.inner.tree.scan_prefix(&prefix)
        } else {
            self.inner.tree.range(first_stale..)
        };
        for item in stale {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            batch.remove(k);
        }
        match topic {
            Some(t) => {
                batch.insert(topic_key(name), serde_json::to_vec(&TopicHeader::of(t))?);
                for chunk in 0..count {
                    batch.insert(chunk_key(name, chunk as u32), chunk_value(t, chunk)?);
                }
            }
            None => batch.remove(topic_key(name)),
        }
        Ok(())
    }

    fn rewrite_all(&self, state: &SmState) -> Result<(), std::io::Error> {
        let mut batch = sled::Batch::default();
        for item in self.inner.tree.iter() {
            let (k, _) = item?;
            batch.remove(k);
        }
        // Removals and inserts of one key in a batch: the last one wins.
        for (name, topic) in &state.metadata.topics {
            self.write_topic(&mut batch, name, Some(topic))?;
        }
        for (id, node) in &state.metadata.nodes {
            batch.insert(node_key(*id), serde_json::to_vec(node)?);
        }
        write_acls(&mut batch, &state.metadata.acls)?;
        write_quotas(&mut batch, &state.metadata.quotas)?;
        batch.insert(META, serde_json::to_vec(&meta_of(state))?);
        self.inner.tree.apply_batch(batch)?;
        Ok(())
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<u64, BasicNode>,
        data: &[u8],
    ) -> Result<(), std::io::Error> {
        self.inner.gate.begin()?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, serde_json::to_vec(meta)?);
        batch.insert(SNAPSHOT_DATA, data);
        self.inner.snapshots.apply_batch(batch)?;
        self.inner.db.flush_async().await?;
        Ok(())
    }
}

fn write_acls(batch: &mut sled::Batch, acls: &Acls) -> Result<(), std::io::Error> {
    if acls.is_empty() {
        batch.remove(ACLS);
    } else {
        batch.insert(ACLS, serde_json::to_vec(acls)?);
    }
    Ok(())
}

fn write_quotas(
    batch: &mut sled::Batch,
    quotas: &BTreeMap<String, QuotaRates>,
) -> Result<(), std::io::Error> {
    if quotas.is_empty() {
        batch.remove(QUOTAS);
    } else {
        batch.insert(QUOTAS, serde_json::to_vec(quotas)?);
    }
    Ok(())
}

fn meta_of(state: &SmState) -> SmMeta {
    SmMeta {
        last_applied: state.last_applied,
        last_membership: state.last_membership.clone(),
        version: state.metadata.version,
        placement_cursor: state.metadata.placement_cursor,
        cluster_id: state.metadata.cluster_id.clone(),
        next_producer_id: state.metadata.next_producer_id,
        removed_controllers: state.metadata.removed_controllers.clone(),
    }
}

/// The partitions of topic `name` (in the current layout), checked to be
/// numbered `0..n` in order.
fn load_partitions(tree: &sled::Tree, name: &str) -> Result<Vec<Arc<Partition>>, ControllerError> {
    let prefix = partition_prefix(name);
    let mut partitions = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (k, v) = item?;
        let chunk = <[u8; 4]>::try_from(&k[prefix.len()..])
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt("partition key", format!("{k:?}")))?;
        let stored: Vec<Partition> =
            serde_json::from_slice(&v).map_err(|e| corrupt("partitions", e))?;
        let whole = chunk as usize * CHUNK == partitions.len()
            && !stored.is_empty()
            && stored.len() <= CHUNK;
        if !whole {
            return Err(corrupt(
                "partitions",
                format!(
                    "topic {name:?}: chunk {chunk} of {} partitions after {} partitions",
                    stored.len(),
                    partitions.len()
                ),
            ));
        }
        for p in stored {
            if p.partition as usize != partitions.len() {
                return Err(corrupt(
                    "partition",
                    format!(
                        "topic {name:?}: found partition {} after {} partitions",
                        p.partition,
                        partitions.len()
                    ),
                ));
            }
            partitions.push(Arc::new(p));
        }
    }
    if partitions.is_empty() {
        return Err(corrupt("topic", format!("{name:?} has no partitions")));
    }
    Ok(partitions)
}

/// The state in tree `sm`, and the topics found in the older layout (their
/// partitions in the `t/` record).
fn load_state(tree: &sled::Tree) -> Result<(SmState, BTreeSet<String>), ControllerError> {
    let meta: SmMeta = match tree.get(META)? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| corrupt("state machine meta", e))?
        }
        None => SmMeta::default(),
    };
    let mut metadata = Metadata {
        version: meta.version,
        placement_cursor: meta.placement_cursor,
        cluster_id: meta.cluster_id,
        next_producer_id: meta.next_producer_id,
        removed_controllers: meta.removed_controllers,
        ..Metadata::default()
    };
    let mut old_layout = BTreeSet::new();
    for item in tree.scan_prefix(TOPIC_PREFIX) {
        let (_, v) = item?;
        let stored: StoredTopic = serde_json::from_slice(&v).map_err(|e| corrupt("topic", e))?;
        let partitions = match stored.partitions {
            Some(partitions) => {
                old_layout.insert(stored.name.clone());
                partitions
            }
            None => load_partitions(tree, &stored.name)?,
        };
        let topic = Topic {
            name: stored.name,
            topic_id: stored.topic_id,
            replication_factor: stored.replication_factor,
            configs: stored.configs,
            partitions,
        };
        metadata.topics.insert(topic.name.clone(), Arc::new(topic));
    }
    for item in tree.scan_prefix(NODE_PREFIX) {
        let (_, v) = item?;
        let node: StorageNode =
            serde_json::from_slice(&v).map_err(|e| corrupt("storage node", e))?;
        metadata.nodes.insert(node.node_id, node);
    }
    if let Some(v) = tree.get(ACLS)? {
        let acls: Acls = serde_json::from_slice(&v).map_err(|e| corrupt("ACLs", e))?;
        metadata.acls = Arc::new(acls);
    }
    if let Some(v) = tree.get(QUOTAS)? {
        let quotas: BTreeMap<String, QuotaRates> =
            serde_json::from_slice(&v).map_err(|e| corrupt("quotas", e))?;
        metadata.quotas = Arc::new(quotas);
    }
    let state = SmState {
        last_applied: meta.last_applied,
        last_membership: meta.last_membership,
        metadata,
    };
    Ok((state, old_layout))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_log_id, last_membership) = {
            let state = self.lock();
            let data = serde_json::to_vec(&*state)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            (data, state.last_applied, state.last_membership.clone())
        };
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, Membership)> {
        let state = self.lock();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner
            .gate
            .begin()
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let mut responses = Vec::new();
        let published = {
            let mut state = self.lock();
            let mut dirty = Dirty::default();
            for entry in entries {
                let index = entry.log_id.index;
                state.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => {
                        state.metadata.apply_noop(index);
                        CommandResponse::Ok
                    }
                    EntryPayload::Normal(command) => {
                        state.metadata.apply(index, &command, &mut dirty)
                    }
                    EntryPayload::Membership(membership) => {
                        state.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        state.metadata.apply_noop(index);
                        CommandResponse::Ok
                    }
                };
                responses.push(response);
            }
            if responses.is_empty() {
                return Ok(responses);
            }
            self.persist(&state, &dirty)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            Arc::new(state.metadata.clone())
        };
        self.inner.published.send_replace(published);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        self.inner
            .gate
            .begin()
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let data = snapshot.into_inner();
        let read_err = |e: &dyn std::error::Error| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
        };
        let mut new_state: SmState = serde_json::from_slice(&data).map_err(|e| read_err(&e))?;
        // The meta is authoritative for what the snapshot covers.
        new_state.last_applied = meta.last_log_id;
        new_state.last_membership = meta.last_membership.clone();
        // Save the snapshot first: if we crash while rewriting `sm`, opening
        // the store loads the snapshot instead.
        self.save_snapshot(meta, &data)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let published = {
            let mut state = self.lock();
            self.rewrite_all(&new_state)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            *state = new_state;
            Arc::new(state.metadata.clone())
        };
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        self.inner.published.send_replace(published);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let read = |e: &dyn std::fmt::Display| {
            StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string()))
        };
        let meta = self
            .inner
            .snapshots
            .get(SNAPSHOT_META)
            .map_err(|e| read(&e))?;
        let data = self
            .inner
            .snapshots
            .get(SNAPSHOT_DATA)
            .map_err(|e| read(&e))?;
        match (meta, data) {
            (Some(meta), Some(data)) => {
                let meta: SnapshotMeta<u64, BasicNode> =
                    serde_json::from_slice(&meta).map_err(|e| read(&e))?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data.to_vec())),
                }))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use openraft::RaftSnapshotBuilder;
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::metadata::Command;
    use crate::store::open;

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn register(node_id: u64) -> Command {
        Command::RegisterNode {
            node_id,
            address: format!("n{node_id}:7402"),
            incarnation: 1,
            directory_id: format!("dir-{node_id}"),
            rack: String::new(),
            max_partitions: 0,
        }
    }

    fn create(name: &str, partitions: u32, replication_factor: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor,
            configs: Default::default(),
            topic_id: Some(format!("id-{name}")),
        }
    }

    /// Everything in tree `sm`.
    fn contents(tree: &sled::Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    /// The keys `tree` was written (inserted or removed) since `events`
    /// subscribed.
    fn written(events: &mut sled::Subscriber) -> BTreeSet<Vec<u8>> {
        let mut keys = BTreeSet::new();
        while let Ok(event) = events.next_timeout(Duration::from_millis(200)) {
            keys.insert(event.key().to_vec());
        }
        keys
    }

    fn partition_keys(tree: &sled::Tree, name: &str) -> Vec<Vec<u8>> {
        tree.scan_prefix(partition_prefix(name))
            .map(|kv| kv.unwrap().0.to_vec())
            .collect()
    }

    #[tokio::test]
    async fn a_partition_change_writes_only_that_partition() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let (db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            sm.apply([
                entry(1, register(1)),
                entry(2, register(2)),
                entry(3, register(3)),
                entry(4, create("t", 600, 3)),
                entry(5, create("u", 2, 3)),
            ])
            .await
            .unwrap();
            let tree = db.open_tree("sm").unwrap();
            // The header holds no partitions; each partition has its key.
            let header: serde_json::Value =
                serde_json::from_slice(&tree.get(topic_key("t")).unwrap().unwrap()).unwrap();
            assert!(header.get("partitions").is_none(), "{header}");
            assert_eq!(header["topic_id"], "id-t");
            // 600 partitions in chunks of 256.
            assert_eq!(partition_keys(&tree, "t").len(), 3);
            assert_eq!(partition_keys(&tree, "u").len(), 1);

            let stored = contents(&tree);
            let mut events = tree.watch_prefix(b"");
            let p = sm.current().topics["t"].partitions[300].clone();
            let replies = sm
                .apply([entry(
                    6,
                    Command::AlterIsr {
                        topic: "t".into(),
                        topic_id: "id-t".into(),
                        partition: 300,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        isr: vec![p.leader],
                    },
                )])
                .await
                .unwrap();
            assert!(matches!(replies[0], CommandResponse::Partition(_)));
            // Partition 300 is in chunk 1 (256..512).
            let key = chunk_key("t", 1);
            assert_eq!(
                written(&mut events),
                BTreeSet::from([META.to_vec(), key.clone()])
            );
            let now = contents(&tree);
            let changed = sm.current().topics["t"].partitions[300].clone();
            assert_eq!(changed.isr, vec![p.leader]);
            let chunk: Vec<Partition> = serde_json::from_slice(&now[&key]).unwrap();
            assert_eq!(chunk.len(), 256);
            assert_eq!(chunk[300 - 256], *changed);
            for (k, v) in &stored {
                if *k != key && k != META {
                    assert_eq!(now.get(k), Some(v), "{:?}", String::from_utf8_lossy(k));
                }
            }
            assert_eq!(now.len(), stored.len());

            // A configuration change writes the topic's header alone.
            let base = sm.current().topics["t"].configs.clone();
            let mut configs = base.clone();
            configs.insert("retention.ms".into(), "1000".into());
            let replies = sm
                .apply([entry(
                    7,
                    Command::AlterTopicConfigs {
                        name: "t".into(),
                        topic_id: "id-t".into(),
                        base,
                        configs,
                    },
                )])
                .await
                .unwrap();
            assert!(matches!(replies[0], CommandResponse::Topic(_)));
            assert_eq!(
                written(&mut events),
                BTreeSet::from([META.to_vec(), topic_key("t")])
            );
            let header: serde_json::Value =
                serde_json::from_slice(&tree.get(topic_key("t")).unwrap().unwrap()).unwrap();
            assert_eq!(header["configs"]["retention.ms"], "1000");
            sm.current()
        };
        let (_db, _log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(*sm.current(), *before);
    }

    #[tokio::test]
    async fn a_deleted_topic_leaves_no_partition_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (db, log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        let tree = db.open_tree("sm").unwrap();
        sm.apply([
            entry(1, register(1)),
            entry(2, create("t", 5, 1)),
            entry(3, create("t.x", 2, 1)),
        ])
        .await
        .unwrap();
        assert_eq!(partition_keys(&tree, "t").len(), 1);
        sm.apply([entry(4, Command::DeleteTopic { name: "t".into() })])
            .await
            .unwrap();
        assert!(tree.get(topic_key("t")).unwrap().is_none());
        assert!(partition_keys(&tree, "t").is_empty());
        assert_eq!(
            partition_keys(&tree, "t.x").len(),
            1,
            "another topic's keys"
        );
        // Deleted and created again with fewer partitions (and chunks) in
        // one batch.
        sm.apply([entry(5, create("t", 600, 1))]).await.unwrap();
        assert_eq!(partition_keys(&tree, "t").len(), 3);
        sm.apply([
            entry(6, Command::DeleteTopic { name: "t".into() }),
            entry(7, create("t", 1, 1)),
        ])
        .await
        .unwrap();
        assert_eq!(partition_keys(&tree, "t"), [chunk_key("t", 0)]);
        let current = sm.current();
        drop((db, tree, sm, log));
        let (_db, _log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(*sm.current(), *current);
        assert_eq!(sm.current().topics["t"].partitions.len(), 1);
    }

    /// A data directory written before partitions had keys of their own:
    /// the topic loads, and is rewritten in the current layout at open.
    #[tokio::test]
    async fn a_topic_in_the_older_layout_is_loaded_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let current = {
            let (db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            sm.apply([entry(1, register(1)), entry(2, create("new", 2, 1))])
                .await
                .unwrap();
            let tree = db.open_tree("sm").unwrap();
            let old = r#"{"name":"old","topic_id":"id-old","replication_factor":1,"configs":{"retention.ms":"1000"},"partitions":[{"partition":0,"leader":1,"leader_epoch":2,"replicas":[1],"isr":[1],"partition_epoch":3},{"partition":1,"leader":1,"leader_epoch":0,"replicas":[1],"isr":[1],"offline_replicas":[1],"partition_epoch":1}]}"#;
            tree.insert(topic_key("old"), old.as_bytes()).unwrap();
            // Never written by either layout next to an old record; the
            // record wins.
            tree.insert(chunk_key("old", 7), &b"{}"[..]).unwrap();
            tree.flush().unwrap();
            sm.current()
        };
        let (db, log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        let m = sm.current();
        let old = &m.topics["old"];
        assert_eq!(old.topic_id, "id-old");
        assert_eq!(old.configs["retention.ms"], "1000");
        assert_eq!(old.partitions.len(), 2);
        assert_eq!(
            (
                old.partitions[0].leader_epoch,
                old.partitions[0].partition_epoch
            ),
            (2, 3)
        );
        assert_eq!(old.partitions[1].offline_replicas, vec![1]);
        assert_eq!(m.topics["new"], current.topics["new"]);

        let tree = db.open_tree("sm").unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&tree.get(topic_key("old")).unwrap().unwrap()).unwrap();
        assert!(header.get("partitions").is_none(), "{header}");
        assert_eq!(partition_keys(&tree, "old"), [chunk_key("old", 0)]);
        assert_eq!(
            tree.get(chunk_key("old", 0)).unwrap().unwrap(),
            serde_json::to_vec(&old.partitions).unwrap()
        );
        drop((db, tree, sm, log));
        let (_db, _log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(*sm.current(), *m);
    }

    /// A crash after a snapshot was saved and before tree `sm` was
    /// rewritten: the snapshot is loaded and written to `sm`, so entries
    /// applied after it never mix with what `sm` held before.
    #[tokio::test]
    async fn a_saved_snapshot_newer_than_the_tree_replaces_it_at_open() {
        let source_dir = tempfile::tempdir().unwrap();
        let (_db, _log, mut source, _) = open(source_dir.path(), 0, Arc::default()).unwrap();
        source
            .apply([
                entry(1, register(1)),
                entry(2, create("kept", 2, 1)),
                entry(3, create("also-kept", 1, 1)),
            ])
            .await
            .unwrap();
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        {
            let (db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            sm.apply([entry(1, register(9)), entry(2, create("dropped", 1, 1))])
                .await
                .unwrap();
            let snapshots = db.open_tree("sm_snapshot").unwrap();
            snapshots
                .insert(SNAPSHOT_META, serde_json::to_vec(&snapshot.meta).unwrap())
                .unwrap();
            snapshots
                .insert(SNAPSHOT_DATA, snapshot.snapshot.into_inner())
                .unwrap();
            db.flush().unwrap();
        }
        {
            let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            assert_eq!(*sm.current(), *source.current());
            sm.apply([entry(4, create("later", 1, 1))]).await.unwrap();
        }
        let (_db, _log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        let m = sm.current();
        assert!(!m.topics.contains_key("dropped"));
        assert!(!m.nodes.contains_key(&9));
        assert!(m.topics.contains_key("kept") && m.topics.contains_key("later"));
    }

    fn acl(
        principal: &str,
        topic: &str,
        operation: streambus_acl::Operation,
    ) -> streambus_acl::Acl {
        streambus_acl::Acl {
            principal: principal.into(),
            pattern: streambus_acl::ResourcePattern {
                resource_type: streambus_acl::ResourceType::Topic,
                pattern_type: streambus_acl::PatternType::Literal,
                name: topic.into(),
            },
            operation,
            permission: streambus_acl::Permission::Allow,
        }
    }

    #[tokio::test]
    async fn acls_and_quotas_survive_a_restart_and_a_snapshot_and_only_their_change_writes_them() {
        use streambus_acl::Operation::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let a = acl("User:alice", "orders", Read);
        let b = acl("User:bob", "orders", Write);
        let snapshot = {
            let (db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            let tree = db.open_tree("sm").unwrap();
            let mut events = tree.watch_prefix(b"");
            let responses = sm
                .apply([
                    entry(1, register(1)),
                    entry(
                        2,
                        Command::CreateAcls {
                            acls: vec![a.clone(), b.clone(), a.clone()],
                        },
                    ),
                ])
                .await
                .unwrap();
            assert_eq!(responses[1], CommandResponse::Changed { applied: 2 });
            assert!(written(&mut events).contains(ACLS));
            // A change that is not about ACLs leaves their record alone.
            sm.apply([entry(3, create("t", 1, 1))]).await.unwrap();
            assert!(!written(&mut events).contains(ACLS));
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap()
        };
        {
            let (_db, _log, mut sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
            assert_eq!(
                sm.current().acls.iter().cloned().collect::<Vec<_>>(),
                vec![a.clone(), b.clone()]
            );
            let removed = sm
                .apply([entry(
                    4,
                    Command::DeleteAcls {
                        filters: vec![streambus_acl::AclFilter {
                            principal: Some("User:alice".into()),
                            ..Default::default()
                        }],
                    },
                )])
                .await
                .unwrap();
            assert_eq!(
                removed[0],
                CommandResponse::AclsRemoved {
                    acls: vec![a.clone()]
                }
            );
            let rates = QuotaRates {
                produce_bytes_per_second: 1024,
                ..QuotaRates::default()
            };
            sm.apply([entry(
                5,
                Command::AlterQuotas {
                    set: vec![("User:alice".into(), rates)],
                    remove: vec![],
                },
            )])
            .await
            .unwrap();
        }
        let (_db, _log, sm, _) = open(dir.path(), 0, Arc::default()).unwrap();
        assert_eq!(sm.current().acls.iter().collect::<Vec<_>>(), vec![&b]);
        assert_eq!(
            sm.current().quotas["User:alice"].produce_bytes_per_second,
            1024
        );

        // A controller rebuilt from the snapshot has both.
        let other = tempfile::tempdir().unwrap();
        let (_db, _log, mut rebuilt, _) = open(other.path(), 0, Arc::default()).unwrap();
        rebuilt
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(rebuilt.current().acls.len(), 2);
    }
}
