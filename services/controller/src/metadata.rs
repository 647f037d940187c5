//! The replicated metadata as a plain state machine: [`Metadata`] is fed
//! [`Command`]s in log order and answers with a [`CommandResponse`]. No I/O
//! here; `store::state_machine` persists it and openraft drives it.
//!
//! Applying is deterministic: every controller applies the same commands in
//! the same order and reaches the same state. Requests are validated against
//! the leader's applied state before they are proposed ([`Metadata::validate_create_topic`]);
//! the checks that depend on the state are repeated at apply time because
//! the state may change between validation and commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
use streambus_proto::v1::{
    ClientQuota, CreateTopicRequest, PartitionDescription, StorageNodeStatus, TopicDescription,
};
use streambus_proto::{Error, Reason};

use streambus_acl::{Acl, AclFilter, Acls};
use streambus_cluster::topic_config::{FSYNC_INTERVAL_MS, FSYNC_POLICY, TopicConfig};

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;
/// Longest topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Offline replicas a storage node reports: `(topic, partition)` pairs.
pub type ReplicaRefs = BTreeSet<(String, u32)>;

/// A change to the metadata, proposed through Raft (serialized as JSON in
/// the log, so field names are part of the on-disk format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Create a topic. `configs` is the effective map (defaults filled in)
    /// and `replication_factor` is at least 1: both are normalized before
    /// proposing so applying never depends on the software's defaults.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Number of partitions.
        partitions: u32,
        /// Replicas per partition.
        replication_factor: u32,
        /// Effective configuration.
        configs: BTreeMap<String, String>,
        /// Random id chosen before proposing, so every controller applies
        /// the same one and a rebuilt controller never reuses an old id.
        /// Absent in entries written by older versions (then derived from
        /// the log index).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic_id: Option<String>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Add a storage node or update its address; marks it alive.
    RegisterNode {
        /// Storage node id.
        node_id: u64,
        /// host:port of its StorageService.
        address: String,
        /// The registering process's incarnation (0 in older entries).
        #[serde(default)]
        incarnation: u64,
        /// The node's data directory id (empty in older entries).
        #[serde(default)]
        directory_id: String,
        /// The rack (failure domain) the node declares; empty = none.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        rack: String,
        /// The node's partition budget; 0 = none declared (and in older
        /// entries).
        #[serde(default, skip_serializing_if = "is_zero")]
        max_partitions: u64,
    },
    /// The cluster's id, proposed once by the first leader.
    InitCluster {
        /// Random hex id.
        cluster_id: String,
    },
    /// The full set of replicas a storage node reports it cannot serve;
    /// replaces the node's previous report.
    SetOfflineReplicas {
        /// Reporting storage node.
        node_id: u64,
        /// `(topic, partition)` pairs.
        replicas: Vec<(String, u32)>,
    },
    /// A partition leader changes the in-sync replica set. Applied only
    /// if the leadership it was based on is still current.
    AlterIsr {
        /// Topic name.
        topic: String,
        /// Topic incarnation.
        topic_id: String,
        /// Partition number.
        partition: u32,
        /// The leader asking.
        leader: u64,
        /// Its leader epoch.
        leader_epoch: u64,
        /// The partition epoch the change is based on.
        partition_epoch: u64,
        /// The new in-sync replicas.
        isr: Vec<u64>,
    },
    /// The leader saw a node's lease lapse (`alive = false`) or its
    /// heartbeats resume (`alive = true`).
    SetNodeAlive {
        /// Storage node id.
        node_id: u64,
        /// New liveness.
        alive: bool,
    },
    /// Hands out the next `count` idempotent producer ids (a gateway takes
    /// them as a block and gives them to producers one by one).
    AllocateProducerIds {
        /// How many (1 to [`MAX_PRODUCER_ID_BLOCK`]).
        count: u32,
    },
    /// Proposed before controller `node_id` leaves the Raft group, so that
    /// it learns it was removed (openraft stops replicating to a controller
    /// as soon as the membership without it is appended) and stops serving
    /// metadata. The membership itself changes through openraft's own
    /// membership entries.
    RemoveController {
        /// The controller's Raft node id.
        node_id: u64,
    },
    /// Proposed before a controller removed earlier joins again with the
    /// same id: clears what [`Command::RemoveController`] recorded.
    AddController {
        /// The controller's Raft node id.
        node_id: u64,
    },
    /// Grows a topic to `partitions` partitions; the new ones are placed
    /// like a new topic's. A topic that already has as many changes
    /// nothing.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// Topic incarnation the request was validated against.
        topic_id: String,
        /// The new total.
        partitions: u32,
    },
    /// Replaces a topic's effective configuration (validated before
    /// proposing, from an incremental change of the map it had then).
    AlterTopicConfigs {
        /// Topic name.
        name: String,
        /// Topic incarnation the request was validated against.
        topic_id: String,
        /// The configuration the change was computed from: applied only
        /// if it is still the topic's (a concurrent change is not lost).
        base: BTreeMap<String, String>,
        /// The new effective configuration.
        configs: BTreeMap<String, String>,
    },
    /// Marks a storage node decommissioning: no new replica is placed on
    /// it, and the leader moves its replicas elsewhere
    /// ([`Metadata::reassignment_steps`]).
    DecommissionNode {
        /// Storage node id.
        node_id: u64,
    },
    /// Ends a storage node's decommissioning: replicas may be placed on it
    /// again. Replicas already added elsewhere stay.
    RecommissionNode {
        /// Storage node id.
        node_id: u64,
    },
    /// Leader and replica-set changes decided by the controller leader
    /// (preferred-leader moves, reassignment steps). Each applies only at
    /// the partition epoch it was based on and only if it passes
    /// [`Metadata::check_partition_change`]; the others are skipped.
    ChangePartitions {
        /// The changes, at most one per partition.
        changes: Vec<PartitionChange>,
    },
    /// Adds ACLs (checked before proposing and again when applied).
    CreateAcls {
        /// The ACLs; one that is there already is kept once.
        acls: Vec<Acl>,
    },
    /// Removes every ACL one of the filters selects.
    DeleteAcls {
        /// The filters.
        filters: Vec<AclFilter>,
    },
    /// Sets principals' quotas (replacing theirs) and removes others'.
    AlterQuotas {
        /// Principal and its new rates.
        set: Vec<(String, QuotaRates)>,
        /// Principals whose quotas go.
        remove: Vec<String>,
    },
}

/// The rates a principal is held to at each gateway; 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRates {
    /// Record batch bytes produced per second.
    #[serde(default)]
    pub produce_bytes_per_second: u64,
    /// Record batch bytes consumed per second.
    #[serde(default)]
    pub consume_bytes_per_second: u64,
    /// Calls per second.
    #[serde(default)]
    pub requests_per_second: u64,
}

/// Checks a quota's principal: `User:<name>` or `User:*` (the default).
pub fn validate_quota_principal(principal: &str) -> Result<(), Error> {
    match principal.strip_prefix("User:") {
        Some(name) if !name.is_empty() && !name.chars().any(char::is_whitespace) => Ok(()),
        _ => Err(Error::new(
            Reason::InvalidArgument,
            format!("quota principal {principal:?}: expected User:<name> or User:* (the default)"),
        )),
    }
}

/// One partition's new leader, replicas and ISR, based on a partition
/// epoch (see [`Command::ChangePartitions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChange {
    /// Topic name.
    pub topic: String,
    /// Topic incarnation.
    pub topic_id: String,
    /// Partition number.
    pub partition: u32,
    /// The partition epoch the change is based on.
    pub partition_epoch: u64,
    /// The new leader (a new leader epoch when it differs).
    pub leader: u64,
    /// The new replica set; the first is the preferred leader.
    pub replicas: Vec<u64>,
    /// The new in-sync replicas (a subset of the current ones).
    pub isr: Vec<u64>,
}

/// Most partition changes one `ChangePartitions` entry carries.
pub const MAX_CHANGES_PER_COMMAND: usize = 1000;

/// Most producer ids one allocation hands out.
pub const MAX_PRODUCER_ID_BLOCK: u32 = 100_000;

/// What applying a [`Command`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandResponse {
    /// Applied; nothing to return (also the response to blank and
    /// membership entries).
    Ok,
    /// The topic as created.
    Topic(Arc<Topic>),
    /// A partition as changed.
    Partition(Partition),
    /// Producer ids `first..first + count`.
    ProducerIds {
        /// The first id of the block.
        first: i64,
        /// How many.
        count: u32,
    },
    /// How many changes of a `ChangePartitions` entry applied.
    Changed {
        /// Applied changes (the others were stale or no longer valid).
        applied: u32,
    },
    /// The ACLs a `DeleteAcls` entry removed.
    AclsRemoved {
        /// The removed ACLs.
        acls: Vec<Acl>,
    },
    /// Not applied: the state did not allow it.
    Rejected {
        /// A [`Reason`] string.
        reason: String,
        /// Human readable.
        message: String,
    },
}

impl CommandResponse {
    fn rejected(reason: Reason, message: impl Into<String>) -> CommandResponse {
        CommandResponse::Rejected {
            reason: reason.as_str().to_string(),
            message: message.into(),
        }
    }

    /// The rejection as an error, if this is one.
    pub fn into_result(self) -> Result<CommandResponse, Error> {
        match self {
            CommandResponse::Rejected { reason, message } => Err(Error::new(
                Reason::parse(&reason).unwrap_or(Reason::Internal),
                message,
            )),
            other => Ok(other),
        }
    }
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Name.
    pub name: String,
    /// Unique id; a re-created topic gets a new one.
    pub topic_id: String,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Effective configuration.
    pub configs: BTreeMap<String, String>,
    /// Partitions, indexed by partition number. Each is an `Arc` shared
    /// with the snapshots published before: a change replaces only the
    /// partitions it changes ([`Topic::set_partition`]), so copying a topic
    /// copies pointers, and a watch delta finds the changed partitions by
    /// pointer.
    pub partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// Replaces partition `p.partition` with `p` if it differs, recording it
    /// in `dirty`; an equal value leaves the shared one in place.
    fn set_partition(&mut self, p: Partition, dirty: &mut Dirty) {
        let slot = &mut self.partitions[p.partition as usize];
        if **slot != p {
            dirty.partitions.insert((self.name.clone(), p.partition));
            *slot = Arc::new(p);
        }
    }
}

/// One partition's replica assignment and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Partition number.
    pub partition: u32,
    /// Storage node id of the leader.
    pub leader: u64,
    /// Bumped on every leader change.
    pub leader_epoch: u64,
    /// Assigned storage nodes; the first is the preferred leader.
    pub replicas: Vec<u64>,
    /// In-sync replicas.
    pub isr: Vec<u64>,
    /// Replicas whose node reports it cannot serve them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline_replicas: Vec<u64>,
    /// Bumped on every change of leader or ISR, so an ISR change based on
    /// an older view is refused.
    #[serde(default)]
    pub partition_epoch: u64,
}

/// A registered storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNode {
    /// Node id.
    pub node_id: u64,
    /// host:port of its StorageService.
    pub address: String,
    /// Lease not expired (as last decided by the controller leader).
    pub alive: bool,
    /// Incarnation of the process that registered last.
    #[serde(default)]
    pub incarnation: u64,
    /// Data directory id of the registration.
    #[serde(default)]
    pub directory_id: String,
    /// Declared rack; empty = none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rack: String,
    /// Being decommissioned: no new replicas, its replicas move away.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decommissioning: bool,
    /// The most partition replicas it may host; 0 = no limit declared.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_partitions: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What one apply touched, so the persistence layer rewrites only that.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Topics created, deleted, or changed as a whole (their configuration):
    /// written again with every partition.
    pub topics: BTreeSet<String>,
    /// Partitions changed or added, `(topic, partition)`: written one by one
    /// (a topic also in `topics` is written whole anyway).
    pub partitions: BTreeSet<(String, u32)>,
    /// Topics whose header alone changed (their configuration): the header
    /// is written, not its partitions.
    pub headers: BTreeSet<String>,
    /// Storage nodes added or changed.
    pub nodes: BTreeSet<u64>,
    /// The ACLs changed.
    pub acls: bool,
    /// The quotas changed.
    pub quotas: bool,
}

/// `p` after `f`, if that changed it (`f` works on a copy).
fn edited(p: &Partition, f: impl FnOnce(&mut Partition)) -> Option<Partition> {
    let mut next = p.clone();
    f(&mut next);
    (next != *p).then_some(next)
}

/// Replaces the partitions of `topic` for which `change` returns a new
/// value (it returns `None` for those it leaves alone). The topic is copied
/// (a vector of partition pointers) only when one changes; the others stay
/// shared with the snapshots published before.
fn update_partitions(
    topic: &mut Arc<Topic>,
    dirty: &mut Dirty,
    mut change: impl FnMut(&Topic, &Partition) -> Option<Partition>,
) {
    let changed: Vec<Partition> = topic
        .partitions
        .iter()
        .filter_map(|p| change(topic, p))
        .collect();
    if changed.is_empty() {
        return;
    }
    let topic = Arc::make_mut(topic);
    for p in changed {
        topic.set_partition(p, dirty);
    }
}

/// The replicated metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The last applied log index.
    pub version: u64,
    /// Topics by name. Shared with the snapshots published before: a
    /// change copies only the topics it touches (`Arc::make_mut`), so
    /// publishing metadata with 100,000 partitions after every applied
    /// entry does not copy them all.
    pub topics: BTreeMap<String, Arc<Topic>>,
    /// Storage nodes by id.
    pub nodes: BTreeMap<u64, StorageNode>,
    /// Where the next partition's round-robin placement starts.
    pub placement_cursor: u64,
    /// Set once, by the first leader (empty before).
    #[serde(default)]
    pub cluster_id: String,
    /// The first idempotent producer id not yet handed out.
    #[serde(default)]
    pub next_producer_id: i64,
    /// Controllers removed from the Raft group (and not added again): a
    /// controller that finds itself here serves no metadata.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed_controllers: BTreeSet<u64>,
    /// The ACLs. Shared with the snapshots published before until they
    /// change, so a watch delta tells by pointer whether to send them.
    #[serde(default, skip_serializing_if = "acls_empty")]
    pub acls: Arc<Acls>,
    /// Quotas by principal; shared like the ACLs.
    #[serde(default, skip_serializing_if = "quotas_empty")]
    pub quotas: Arc<BTreeMap<String, QuotaRates>>,
}

fn quotas_empty(q: &Arc<BTreeMap<String, QuotaRates>>) -> bool {
    q.is_empty()
}

fn acls_empty(acls: &Arc<Acls>) -> bool {
    acls.is_empty()
}

pub use streambus_cluster::random_id;

/// Checks the topic naming rules.
pub fn validate_topic_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::new(
            Reason::InvalidTopicName,
            format!("invalid topic name {name:?}: {why}"),
        )
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(bad("longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(bad("\".\" and \"..\" are reserved"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// How an `AlterTopicConfigs` entry computed from a configuration that
/// another change replaced meanwhile is refused (the leader computes it
/// again).
pub const CONFIG_CONFLICT: &str = "the topic configuration changed concurrently";

/// `min.insync.replicas` above the replication factor would make every
/// `acks=all` write fail.
fn check_min_insync(config: &TopicConfig, replication_factor: u32) -> Result<(), Error> {
    if config.min_insync_replicas > replication_factor {
        return Err(Error::new(
            Reason::InvalidConfig,
            format!(
                "min.insync.replicas {} is larger than the replication factor {replication_factor}: acks=all could never succeed",
                config.min_insync_replicas
            ),
        ));
    }
    Ok(())
}

/// The topic id of a `CreateTopic` entry written by a version that did not
/// choose ids before proposing: derived from the log index and the name.
fn legacy_topic_id(index: u64, name: &str) -> String {
    // splitmix64's finalizer is a bijection, so distinct indexes stay distinct.
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // FNV-1a of the name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{z:016x}{h:016x}")
}

impl Metadata {
    /// Storage nodes currently alive, by id.
    pub fn alive_nodes(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.alive)
            .map(|n| n.node_id)
            .collect()
    }

    /// Live nodes in the order placement walks them: racks interleaved
    /// (the first node of each rack, then the second of each, ...), so
    /// consecutive nodes, and with them the replicas of one partition, sit
    /// in different racks whenever there are enough racks. Without racks
    /// it is the id order.
    /// Decommissioning nodes are left out: they get no new replicas.
    pub fn placement_order(&self) -> Vec<u64> {
        let mut racks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for n in self
            .nodes
            .values()
            .filter(|n| n.alive && !n.decommissioning)
        {
            racks.entry(n.rack.as_str()).or_default().push(n.node_id);
        }
        let mut out = Vec::new();
        let deepest = racks.values().map(Vec::len).max().unwrap_or(0);
        for i in 0..deepest {
            for ids in racks.values() {
                if let Some(&id) = ids.get(i) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Whether a registered node is alive.
    pub fn is_alive(&self, node_id: u64) -> bool {
        self.nodes.get(&node_id).is_some_and(|n| n.alive)
    }

    /// Whether a registered node is being decommissioned.
    pub fn is_decommissioning(&self, node_id: u64) -> bool {
        self.nodes.get(&node_id).is_some_and(|n| n.decommissioning)
    }

    /// Validates a `CreatePartitions` request: the topic exists, the count
    /// does not shrink and stays within [`MAX_PARTITIONS`], and there are
    /// enough nodes to place the new partitions. `None` when the topic
    /// already has that many partitions (nothing to propose).
    pub fn validate_create_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<Option<Command>, Error> {
        let topic = self.topics.get(name).ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            )
        })?;
        let current = topic.partitions.len() as u32;
        if partitions < current {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "topic {name:?} has {current} partitions; partitions can be added, not removed (asked for {partitions})"
                ),
            ));
        }
        if partitions > MAX_PARTITIONS {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!("partitions must be at most {MAX_PARTITIONS}, got {partitions}"),
            ));
        }
        if partitions == current {
            return Ok(None);
        }
        self.check_enough_nodes(topic.replication_factor)?;
        self.plan_placement(partitions - current, topic.replication_factor)?;
        Ok(Some(Command::CreatePartitions {
            name: name.to_string(),
            topic_id: topic.topic_id.clone(),
            partitions,
        }))
    }

    /// Validates an `AlterTopicConfigs` request: the topic exists and the
    /// changed configuration passes the same checks as at `CreateTopic`
    /// (including `min.insync.replicas` at most the replication factor).
    /// Returns the topic as the change leaves it, and the command, `None`
    /// when the configuration would not change.
    pub fn validate_alter_topic_configs(
        &self,
        name: &str,
        set: &HashMap<String, String>,
        delete: &[String],
    ) -> Result<(Topic, Option<Command>), Error> {
        let topic = self.topics.get(name).ok_or_else(|| {
            Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            )
        })?;
        let config = TopicConfig::altered(&topic.configs, set, delete)?;
        check_min_insync(&config, topic.replication_factor)?;
        let configs = config.to_btree_map();
        // The fsync policy is fixed for the life of a replica's open log;
        // storage nodes could only apply a change by reopening every
        // replica of the topic.
        for key in [FSYNC_POLICY, FSYNC_INTERVAL_MS] {
            if configs.get(key) != topic.configs.get(key) {
                return Err(Error::new(
                    Reason::InvalidConfig,
                    format!(
                        "{key} cannot change on an existing topic (it is {}); create a new topic with the policy you need",
                        topic.configs.get(key).map_or("unset", String::as_str)
                    ),
                ));
            }
        }
        let mut after = Topic::clone(topic);
        if configs == topic.configs {
            return Ok((after, None));
        }
        after.configs.clone_from(&configs);
        Ok((
            after,
            Some(Command::AlterTopicConfigs {
                name: name.to_string(),
                topic_id: topic.topic_id.clone(),
                base: topic.configs.clone(),
                configs,
            }),
        ))
    }

    /// Checks that `node_id` may be decommissioned: it is registered, and
    /// every topic with a replica on it finds as many other live nodes that
    /// are not decommissioning as its replication factor. A node already
    /// decommissioning passes (the request is idempotent).
    pub fn check_decommission(&self, node_id: u64) -> Result<(), Error> {
        let Some(node) = self.nodes.get(&node_id) else {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!("storage node {node_id} is not registered"),
            ));
        };
        if node.decommissioning {
            return Ok(());
        }
        let mut others: Vec<u64> = self
            .placement_order()
            .into_iter()
            .filter(|&n| n != node_id)
            .collect();
        others.sort_unstable();
        for t in self.topics.values() {
            if !t.partitions.iter().any(|p| p.replicas.contains(&node_id)) {
                continue;
            }
            if (t.replication_factor as usize) > others.len() {
                return Err(Error::new(
                    Reason::InsufficientNodes,
                    format!(
                        "cannot decommission storage node {node_id}: topic {:?} has replication factor {} and {} other live storage node{} can take its replicas ({})",
                        t.name,
                        t.replication_factor,
                        others.len(),
                        if others.len() == 1 { "" } else { "s" },
                        if others.is_empty() {
                            "none".to_string()
                        } else {
                            others
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
        }
        // Every replica it hosts must find a node with room under its
        // partition budget, or the decommission could never finish.
        let mut counts = self.replica_counts();
        for t in self.topics.values() {
            for p in t
                .partitions
                .iter()
                .filter(|p| p.replicas.contains(&node_id))
            {
                let target = others
                    .iter()
                    .copied()
                    .filter(|o| !p.replicas.contains(o))
                    .filter(|o| self.has_room(*o, counts.get(o).copied().unwrap_or(0)))
                    .min_by_key(|o| counts.get(o).copied().unwrap_or(0));
                let Some(target) = target else {
                    return Err(Error::new(
                        Reason::PartitionLimitReached,
                        format!(
                            "cannot decommission storage node {node_id}: no other live storage node has room under its partition budget (storage_node.max_partitions) for the replica of {}/{}",
                            t.name, p.partition
                        ),
                    ));
                };
                *counts.entry(target).or_default() += 1;
            }
        }
        Ok(())
    }

    /// A storage node as `DescribeCluster` reports it: partitions it leads
    /// (alive and online) and replicas it hosts.
    pub fn node_status(&self, node_id: u64) -> Option<StorageNodeStatus> {
        let n = self.nodes.get(&node_id)?;
        let mut status = StorageNodeStatus {
            node_id,
            address: n.address.clone(),
            alive: n.alive,
            rack: n.rack.clone(),
            decommissioning: n.decommissioning,
            max_partitions: n.max_partitions,
            ..StorageNodeStatus::default()
        };
        for p in self.topics.values().flat_map(|t| &t.partitions) {
            if p.replicas.contains(&node_id) {
                status.replicas += 1;
            }
            if n.alive && p.leader == node_id && !p.offline_replicas.contains(&node_id) {
                status.leader_partitions += 1;
            }
        }
        Some(status)
    }

    /// Validates a `CreateTopic` request against this state and turns it
    /// into the command to propose.
    pub fn validate_create_topic(&self, req: &CreateTopicRequest) -> Result<Command, Error> {
        validate_topic_name(&req.name)?;
        if req.partitions < 1 || req.partitions > MAX_PARTITIONS {
            return Err(Error::new(
                Reason::InvalidArgument,
                format!(
                    "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                    req.partitions
                ),
            ));
        }
        let config = TopicConfig::from_map(&req.configs)?;
        if self.topics.contains_key(&req.name) {
            return Err(Error::new(
                Reason::TopicAlreadyExists,
                format!("topic {:?} already exists", req.name),
            ));
        }
        let replication_factor = req.replication_factor.max(1);
        check_min_insync(&config, replication_factor)?;
        self.check_enough_nodes(replication_factor)?;
        self.plan_placement(req.partitions, replication_factor)?;
        Ok(Command::CreateTopic {
            name: req.name.clone(),
            partitions: req.partitions,
            replication_factor,
            configs: config.to_btree_map(),
            topic_id: Some(random_id()),
        })
    }

    /// Validates a `DeleteTopic` request.
    pub fn validate_delete_topic(&self, name: &str) -> Result<Command, Error> {
        if !self.topics.contains_key(name) {
            return Err(Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            ));
        }
        Ok(Command::DeleteTopic {
            name: name.to_string(),
        })
    }

    fn check_enough_nodes(&self, replication_factor: u32) -> Result<(), Error> {
        if self.nodes.is_empty() {
            return Err(Error::new(
                Reason::InsufficientNodes,
                "no storage node is registered",
            ));
        }
        let placeable = self.placement_order().len();
        if replication_factor as usize > placeable {
            let leaving = self
                .nodes
                .values()
                .filter(|n| n.alive && n.decommissioning)
                .count();
            let leaving = if leaving == 0 {
                String::new()
            } else {
                format!(" and not decommissioning ({leaving} more decommissioning)")
            };
            return Err(Error::new(
                Reason::InsufficientNodes,
                format!(
                    "replication factor {replication_factor} needs {replication_factor} live storage nodes, {placeable} alive{leaving}"
                ),
            ));
        }
        Ok(())
    }

    /// Applies one command at log `index`, recording what changed in `dirty`.
    pub fn apply(&mut self, index: u64, command: &Command, dirty: &mut Dirty) -> CommandResponse {
        self.version = index;
        match command {
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                topic_id,
            } => {
                let topic_id = topic_id
                    .clone()
                    .unwrap_or_else(|| legacy_topic_id(index, name));
                self.create_topic(
                    topic_id,
                    name,
                    *partitions,
                    *replication_factor,
                    configs,
                    dirty,
                )
            }
            Command::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return CommandResponse::rejected(
                        Reason::UnknownTopic,
                        format!("topic {name:?} does not exist"),
                    );
                }
                dirty.topics.insert(name.clone());
                CommandResponse::Ok
            }
            Command::RegisterNode {
                node_id,
                address,
                incarnation,
                directory_id,
                rack,
                max_partitions,
            } => {
                let node = self.nodes.entry(*node_id).or_insert_with(|| StorageNode {
                    node_id: *node_id,
                    address: address.clone(),
                    alive: false,
                    incarnation: 0,
                    directory_id: String::new(),
                    rack: String::new(),
                    decommissioning: false,
                    max_partitions: 0,
                });
                // A new process on a known node: whatever it leads or
                // replicates must be re-established from the others first.
                let restarted = node.incarnation != 0 && node.incarnation != *incarnation;
                node.address.clone_from(address);
                node.incarnation = *incarnation;
                node.directory_id.clone_from(directory_id);
                node.rack.clone_from(rack);
                node.max_partitions = *max_partitions;
                dirty.nodes.insert(*node_id);
                if restarted {
                    self.node_restarted(*node_id, dirty);
                }
                self.set_alive(*node_id, true, dirty);
                CommandResponse::Ok
            }
            Command::RemoveController { node_id } => {
                self.removed_controllers.insert(*node_id);
                CommandResponse::Ok
            }
            Command::AddController { node_id } => {
                self.removed_controllers.remove(node_id);
                CommandResponse::Ok
            }
            Command::AllocateProducerIds { count } => {
                if *count == 0 || *count > MAX_PRODUCER_ID_BLOCK {
                    return CommandResponse::rejected(
                        Reason::InvalidArgument,
                        format!(
                            "producer id blocks are 1 to {MAX_PRODUCER_ID_BLOCK} ids, not {count}"
                        ),
                    );
                }
                let first = self.next_producer_id;
                self.next_producer_id += i64::from(*count);
                CommandResponse::ProducerIds {
                    first,
                    count: *count,
                }
            }
            Command::AlterIsr {
                topic,
                topic_id,
                partition,
                leader,
                leader_epoch,
                partition_epoch,
                isr,
            } => match self.check_alter_isr(
                topic,
                topic_id,
                *partition,
                *leader,
                *leader_epoch,
                *partition_epoch,
                isr,
            ) {
                Err(e) => CommandResponse::rejected(e.reason, e.message),
                Ok(()) => {
                    let t = self.topics.get_mut(topic).expect("checked");
                    let mut p = Partition::clone(&t.partitions[*partition as usize]);
                    p.isr = p
                        .replicas
                        .iter()
                        .copied()
                        .filter(|r| isr.contains(r))
                        .collect();
                    p.partition_epoch += 1;
                    Arc::make_mut(t).set_partition(p.clone(), dirty);
                    CommandResponse::Partition(p)
                }
            },
            Command::InitCluster { cluster_id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id.clone_from(cluster_id);
                }
                CommandResponse::Ok
            }
            Command::SetOfflineReplicas { node_id, replicas } => {
                if !self.nodes.contains_key(node_id) {
                    return CommandResponse::rejected(
                        Reason::InvalidArgument,
                        format!("storage node {node_id} is not registered"),
                    );
                }
                let offline: ReplicaRefs = replicas.iter().cloned().collect();
                self.set_offline_replicas(*node_id, &offline, dirty);
                CommandResponse::Ok
            }
            Command::SetNodeAlive { node_id, alive } => {
                if !self.nodes.contains_key(node_id) {
                    return CommandResponse::rejected(
                        Reason::InvalidArgument,
                        format!("storage node {node_id} is not registered"),
                    );
                }
                self.set_alive(*node_id, *alive, dirty);
                CommandResponse::Ok
            }
            Command::CreatePartitions {
                name,
                topic_id,
                partitions,
            } => self.create_partitions(name, topic_id, *partitions, dirty),
            Command::AlterTopicConfigs {
                name,
                topic_id,
                base,
                configs,
            } => {
                let Some(topic) = self
                    .topics
                    .get_mut(name)
                    .filter(|t| t.topic_id == *topic_id)
                else {
                    return CommandResponse::rejected(
                        Reason::UnknownTopic,
                        format!("topic {name:?} ({topic_id}) does not exist"),
                    );
                };
                if topic.configs != *base {
                    return CommandResponse::rejected(
                        Reason::Unavailable,
                        format!("{CONFIG_CONFLICT}: topic {name:?}; retry"),
                    );
                }
                if topic.configs != *configs {
                    Arc::make_mut(topic).configs.clone_from(configs);
                    dirty.headers.insert(name.clone());
                }
                CommandResponse::Topic(topic.clone())
            }
            Command::CreateAcls { acls } => {
                if let Some((acl, e)) = acls.iter().find_map(|a| a.validate().err().map(|e| (a, e)))
                {
                    return CommandResponse::rejected(
                        Reason::InvalidArgument,
                        format!("ACL {acl}: {e}"),
                    );
                }
                let mut next = Acls::clone(&self.acls);
                let mut applied = 0;
                for acl in acls {
                    if next.add(acl.clone()).unwrap_or(false) {
                        applied += 1;
                    }
                }
                if applied > 0 {
                    self.acls = Arc::new(next);
                    dirty.acls = true;
                }
                CommandResponse::Changed { applied }
            }
            Command::AlterQuotas { set, remove } => {
                if let Some(e) = set
                    .iter()
                    .map(|(p, _)| p)
                    .chain(remove)
                    .find_map(|p| validate_quota_principal(p).err())
                {
                    return CommandResponse::rejected(e.reason, e.message);
                }
                let mut next = (*self.quotas).clone();
                for p in remove {
                    next.remove(p);
                }
                for (p, rates) in set {
                    next.insert(p.clone(), *rates);
                }
                if next != *self.quotas {
                    self.quotas = Arc::new(next);
                    dirty.quotas = true;
                }
                CommandResponse::Ok
            }
            Command::DeleteAcls { filters } => {
                let mut next = Acls::clone(&self.acls);
                let mut removed = Vec::new();
                for f in filters {
                    removed.extend(next.remove(f));
                }
                if !removed.is_empty() {
                    self.acls = Arc::new(next);
                    dirty.acls = true;
                }
                CommandResponse::AclsRemoved { acls: removed }
            }
            Command::DecommissionNode { node_id } => {
                if let Err(e) = self.check_decommission(*node_id) {
                    return CommandResponse::rejected(e.reason, e.message);
                }
                let node = self.nodes.get_mut(node_id).expect("checked");
                if !node.decommissioning {
                    node.decommissioning = true;
                    dirty.nodes.insert(*node_id);
                }
                CommandResponse::Ok
            }
            Command::RecommissionNode { node_id } => {
                let Some(node) = self.nodes.get_mut(node_id) else {
                    return CommandResponse::rejected(
                        Reason::InvalidArgument,
                        format!("storage node {node_id} is not registered"),
                    );
                };
                if node.decommissioning {
                    node.decommissioning = false;
                    dirty.nodes.insert(*node_id);
                }
                CommandResponse::Ok
            }
            Command::ChangePartitions { changes } => {
                let mut applied = 0;
                for c in changes {
                    match self.check_partition_change(c) {
                        Ok(()) => {
                            self.change_partition(c, dirty);
                            applied += 1;
                        }
                        Err(e) => {
                            tracing::debug!(topic = %c.topic, partition = c.partition, error = %e, "partition change skipped");
                        }
                    }
                }
                CommandResponse::Changed { applied }
            }
        }
    }

    /// Checks a controller-decided partition change against the current
    /// state. It must be based on the current partition epoch, and keep the
    /// partition safe:
    /// - replicas: distinct nodes, at least the replication factor of
    ///   them; added ones alive and not decommissioning;
    /// - ISR: the current ISR without the removed replicas (so added
    ///   replicas start out of sync and join through the leader's
    ///   `AlterIsr` once caught up), holding the leader; a change that
    ///   removes a replica keeps at least the replication factor of
    ///   in-sync replicas;
    /// - a new leader is a current in-sync replica that is alive and
    ///   online.
    pub fn check_partition_change(&self, c: &PartitionChange) -> Result<(), Error> {
        let invalid = |why: String| {
            Error::new(
                Reason::InvalidArgument,
                format!("invalid change of {}/{}: {why}", c.topic, c.partition),
            )
        };
        let t = self
            .topics
            .get(&c.topic)
            .filter(|t| t.topic_id == c.topic_id)
            .ok_or_else(|| {
                Error::new(
                    Reason::UnknownTopic,
                    format!("topic {:?} ({}) does not exist", c.topic, c.topic_id),
                )
            })?;
        let p = t.partitions.get(c.partition as usize).ok_or_else(|| {
            Error::new(
                Reason::UnknownPartition,
                format!("topic {:?} has no partition {}", c.topic, c.partition),
            )
        })?;
        if p.partition_epoch != c.partition_epoch {
            return Err(invalid(format!(
                "based on partition epoch {}, now {}",
                c.partition_epoch, p.partition_epoch
            )));
        }
        let unique: BTreeSet<u64> = c.replicas.iter().copied().collect();
        if unique.len() != c.replicas.len() {
            return Err(invalid("a replica is listed twice".into()));
        }
        if c.replicas.len() < t.replication_factor as usize {
            return Err(invalid(format!(
                "{} replicas, fewer than the replication factor {}",
                c.replicas.len(),
                t.replication_factor
            )));
        }
        for r in &c.replicas {
            if p.replicas.contains(r) {
                continue;
            }
            match self.nodes.get(r) {
                Some(n) if n.alive && !n.decommissioning => {
                    if !self.has_room(*r, self.hosted(*r)) {
                        return Err(invalid(format!(
                            "node {r} is at its partition budget ({})",
                            n.max_partitions
                        )));
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "node {r} is not a live storage node that takes replicas"
                    )));
                }
            }
        }
        if !c.isr.contains(&c.leader) {
            return Err(invalid("the ISR must contain the leader".into()));
        }
        for r in &c.isr {
            if !p.isr.contains(r) || !c.replicas.contains(r) {
                return Err(invalid(format!(
                    "node {r} is not an in-sync replica it may keep"
                )));
            }
        }
        // Only the leader shrinks the ISR of the replicas it keeps
        // (`AlterIsr`): a change drops in-sync replicas only by removing
        // them from the partition.
        if let Some(r) = p
            .isr
            .iter()
            .find(|r| c.replicas.contains(r) && !c.isr.contains(r))
        {
            return Err(invalid(format!(
                "it drops in-sync replica {r}, which stays a replica"
            )));
        }
        let removes = p.replicas.iter().any(|r| !c.replicas.contains(r));
        if removes && c.isr.len() < t.replication_factor as usize {
            return Err(invalid(format!(
                "removing a replica would leave {} in-sync replicas, fewer than the replication factor {}",
                c.isr.len(),
                t.replication_factor
            )));
        }
        if c.leader != p.leader
            && (!self.is_alive(c.leader) || p.offline_replicas.contains(&c.leader))
        {
            return Err(invalid(format!(
                "new leader {} is not alive and online",
                c.leader
            )));
        }
        Ok(())
    }

    /// Applies a checked [`PartitionChange`].
    fn change_partition(&mut self, c: &PartitionChange, dirty: &mut Dirty) {
        let t = self.topics.get_mut(&c.topic).expect("checked");
        let mut p = Partition::clone(&t.partitions[c.partition as usize]);
        if p.leader != c.leader {
            p.leader = c.leader;
            p.leader_epoch += 1;
        }
        p.replicas.clone_from(&c.replicas);
        p.isr = c
            .replicas
            .iter()
            .copied()
            .filter(|r| c.isr.contains(r))
            .collect();
        p.offline_replicas.retain(|r| c.replicas.contains(r));
        p.partition_epoch += 1;
        Arc::make_mut(t).set_partition(p, dirty);
    }

    /// A change of `p` (of topic `t`) to `leader`, `replicas` and `isr`.
    fn change_of(
        t: &Topic,
        p: &Partition,
        leader: u64,
        replicas: Vec<u64>,
        isr: Vec<u64>,
    ) -> PartitionChange {
        PartitionChange {
            topic: t.name.clone(),
            topic_id: t.topic_id.clone(),
            partition: p.partition,
            partition_epoch: p.partition_epoch,
            leader,
            replicas,
            isr,
        }
    }

    /// Leaderships to hand back to preferred replicas (`replicas[0]`): a
    /// partition moves when its preferred replica is alive, online, in
    /// sync, not decommissioning, and not the leader. Kafka's automatic
    /// leader rebalance; the leader proposes these every
    /// `leader_rebalance_interval_ms`.
    pub fn preferred_leader_moves(&self) -> Vec<PartitionChange> {
        let mut out = Vec::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                if preferred != p.leader
                    && self.is_alive(preferred)
                    && !self.is_decommissioning(preferred)
                    && !p.offline_replicas.contains(&preferred)
                    && p.isr.contains(&preferred)
                {
                    out.push(Self::change_of(
                        t,
                        p,
                        preferred,
                        p.replicas.clone(),
                        p.isr.clone(),
                    ));
                }
            }
        }
        out
    }

    /// The next step of moving every replica off decommissioning nodes,
    /// per partition that has one:
    /// 1. fewer replicas on other nodes than the replication factor: add
    ///    replicas on live nodes that are not decommissioning (racks the
    ///    partition does not use yet first, then the nodes hosting fewest
    ///    replicas), outside the ISR; they catch up as followers and the
    ///    leader adds them to the ISR;
    /// 2. once every replica on the other nodes is in sync: a leader on a
    ///    decommissioning node hands over to one of them (new epoch);
    /// 3. then the decommissioning replicas leave the replica set and the
    ///    ISR, the added ones taking their places in the replica order.
    ///
    /// So a partition never has fewer in-sync replicas outside the
    /// decommissioning nodes than it had, and never fewer than its
    /// replication factor when one is removed. A partition whose new
    /// replicas cannot catch up (its leader is dead, say) waits.
    pub fn reassignment_steps(&self) -> Vec<PartitionChange> {
        // Decided after every change and every few seconds: with no node
        // leaving there is nothing to move, and no partition to visit.
        if !self.nodes.values().any(|n| n.decommissioning) {
            return Vec::new();
        }
        let leaving = |r: &u64| self.is_decommissioning(*r);
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        for p in self.topics.values().flat_map(|t| &t.partitions) {
            for r in &p.replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
        let rack = |id: u64| self.nodes.get(&id).map_or("", |n| n.rack.as_str());
        let candidates = self.placement_order();
        let mut out = Vec::new();
        for t in self.topics.values() {
            let rf = t.replication_factor as usize;
            for p in &t.partitions {
                if !p.replicas.iter().any(leaving) {
                    continue;
                }
                let staying: Vec<u64> =
                    p.replicas.iter().copied().filter(|r| !leaving(r)).collect();
                if staying.len() < rf {
                    let mut replicas = p.replicas.clone();
                    let mut racks: BTreeSet<&str> = staying.iter().map(|&r| rack(r)).collect();
                    for _ in staying.len()..rf {
                        let pick = candidates
                            .iter()
                            .copied()
                            .filter(|c| !replicas.contains(c))
                            .filter(|&c| {
                                self.has_room(c, load.get(&c).copied().unwrap_or(0) as u64)
                            })
                            .min_by_key(|&c| {
                                (
                                    racks.contains(rack(c)),
                                    load.get(&c).copied().unwrap_or(0),
                                    c,
                                )
                            });
                        let Some(pick) = pick else { break };
                        replicas.push(pick);
                        racks.insert(rack(pick));
                        *load.entry(pick).or_default() += 1;
                    }
                    if replicas.len() > p.replicas.len() {
                        out.push(Self::change_of(t, p, p.leader, replicas, p.isr.clone()));
                    }
                    continue;
                }
                if !staying.iter().all(|r| p.isr.contains(r)) {
                    // The new replicas are still catching up.
                    continue;
                }
                let target = Self::without_leaving(&p.replicas, rf, leaving);
                if leaving(&p.leader) {
                    let next = target.iter().copied().find(|&r| {
                        p.isr.contains(&r) && self.is_alive(r) && !p.offline_replicas.contains(&r)
                    });
                    if let Some(next) = next {
                        out.push(Self::change_of(
                            t,
                            p,
                            next,
                            p.replicas.clone(),
                            p.isr.clone(),
                        ));
                    }
                    continue;
                }
                let isr = p
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| target.contains(r))
                    .collect();
                out.push(Self::change_of(t, p, p.leader, target, isr));
            }
        }
        out
    }

    /// `replicas` without the decommissioning ones: each leaves its place
    /// to a replica added past the first `rf` (the ones a reassignment
    /// appended), so the preferred leader's slot stays filled.
    fn without_leaving(replicas: &[u64], rf: usize, leaving: impl Fn(&u64) -> bool) -> Vec<u64> {
        let head = rf.min(replicas.len());
        let mut added: std::collections::VecDeque<u64> = replicas[head..]
            .iter()
            .copied()
            .filter(|r| !leaving(r))
            .collect();
        let mut out: Vec<u64> = replicas[..head]
            .iter()
            .filter_map(|r| {
                if leaving(r) {
                    added.pop_front()
                } else {
                    Some(*r)
                }
            })
            .collect();
        out.extend(added);
        out
    }

    fn create_partitions(
        &mut self,
        name: &str,
        topic_id: &str,
        partitions: u32,
        dirty: &mut Dirty,
    ) -> CommandResponse {
        let Some(topic) = self.topics.get(name).filter(|t| t.topic_id == topic_id) else {
            return CommandResponse::rejected(
                Reason::UnknownTopic,
                format!("topic {name:?} ({topic_id}) does not exist"),
            );
        };
        let current = topic.partitions.len() as u32;
        let replication_factor = topic.replication_factor;
        if partitions <= current {
            return CommandResponse::Topic(topic.clone());
        }
        if partitions > MAX_PARTITIONS {
            return CommandResponse::rejected(
                Reason::InvalidArgument,
                format!("partitions must be at most {MAX_PARTITIONS}, got {partitions}"),
            );
        }
        if let Err(e) = self.check_enough_nodes(replication_factor) {
            return CommandResponse::rejected(e.reason, e.message);
        }
        let added = match self.place(current, partitions - current, replication_factor) {
            Ok(p) => p,
            Err(e) => return CommandResponse::rejected(e.reason, e.message),
        };
        let topic = self.topics.get_mut(name).expect("checked");
        dirty
            .partitions
            .extend((current..partitions).map(|p| (name.to_string(), p)));
        Arc::make_mut(topic).partitions.extend(added);
        CommandResponse::Topic(topic.clone())
    }

    /// Checks an ISR change against the current state: the caller still
    /// leads at the epochs it names, and the new set holds the leader,
    /// only assigned replicas, and only replicas that are alive and
    /// online among those it adds.
    #[allow(clippy::too_many_arguments)]
    pub fn check_alter_isr(
        &self,
        topic: &str,
        topic_id: &str,
        partition: u32,
        leader: u64,
        leader_epoch: u64,
        partition_epoch: u64,
        isr: &[u64],
    ) -> Result<(), Error> {
        let t = self
            .topics
            .get(topic)
            .filter(|t| t.topic_id == topic_id)
            .ok_or_else(|| {
                Error::new(
                    Reason::UnknownTopic,
                    format!("topic {topic:?} ({topic_id}) does not exist"),
                )
            })?;
        let p = t.partitions.get(partition as usize).ok_or_else(|| {
            Error::new(
                Reason::UnknownPartition,
                format!("topic {topic:?} has no partition {partition}"),
            )
        })?;
        if p.leader != leader
            || p.leader_epoch != leader_epoch
            || p.partition_epoch != partition_epoch
        {
            return Err(Error::new(
                Reason::NotLeader,
                format!(
                    "{topic}/{partition} changed: leader {} epoch {} partition epoch {}, not leader {leader} epoch {leader_epoch} partition epoch {partition_epoch}",
                    p.leader, p.leader_epoch, p.partition_epoch
                ),
            ));
        }
        let invalid = |why: String| {
            Error::new(
                Reason::InvalidArgument,
                format!("invalid ISR {isr:?} for {topic}/{partition}: {why}"),
            )
        };
        if !isr.contains(&leader) {
            return Err(invalid("it must contain the leader".into()));
        }
        let unique: BTreeSet<u64> = isr.iter().copied().collect();
        if unique.len() != isr.len() {
            return Err(invalid("a replica is listed twice".into()));
        }
        for r in isr {
            if !p.replicas.contains(r) {
                return Err(invalid(format!("node {r} is not a replica")));
            }
            if !p.isr.contains(r) && (!self.is_alive(*r) || p.offline_replicas.contains(r)) {
                return Err(invalid(format!("node {r} is not alive and online")));
            }
        }
        Ok(())
    }

    /// A node came back as a new process: partitions it led move to
    /// another live, online ISR member (a new epoch), and it leaves every
    /// ISR it is not the last member of, so it rejoins as a follower that
    /// truncates and catches up. Where it is the only in-sync replica it
    /// keeps the leadership, with a new epoch.
    fn node_restarted(&mut self, node_id: u64, dirty: &mut Dirty) {
        let live: BTreeSet<u64> = self.alive_nodes().into_iter().collect();
        for topic in self.topics.values_mut() {
            update_partitions(topic, dirty, |_, p| {
                // Only what it leads or is in sync for changes.
                if !p.replicas.contains(&node_id)
                    || (p.leader != node_id && !p.isr.contains(&node_id))
                {
                    return None;
                }
                edited(p, |p| {
                    let before = (p.leader, p.leader_epoch, p.isr.clone());
                    if p.leader == node_id {
                        if let Some(&next) = p.isr.iter().find(|&&r| {
                            r != node_id && live.contains(&r) && !p.offline_replicas.contains(&r)
                        }) {
                            p.leader = next;
                        }
                        p.leader_epoch += 1;
                    }
                    if p.leader != node_id && p.isr.len() > 1 {
                        p.isr.retain(|&r| r != node_id);
                    }
                    if before != (p.leader, p.leader_epoch, p.isr.clone()) {
                        p.partition_epoch += 1;
                    }
                })
            });
        }
    }

    /// Records a log entry that carries no command (blank or membership).
    pub fn apply_noop(&mut self, index: u64) {
        self.version = index;
    }

    fn create_topic(
        &mut self,
        topic_id: String,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &BTreeMap<String, String>,
        dirty: &mut Dirty,
    ) -> CommandResponse {
        if self.topics.contains_key(name) {
            return CommandResponse::rejected(
                Reason::TopicAlreadyExists,
                format!("topic {name:?} already exists"),
            );
        }
        if let Err(e) = self.check_enough_nodes(replication_factor) {
            return CommandResponse::rejected(e.reason, e.message);
        }
        let partitions = match self.place(0, partitions, replication_factor) {
            Ok(p) => p,
            Err(e) => return CommandResponse::rejected(e.reason, e.message),
        };
        let topic = Topic {
            name: name.to_string(),
            topic_id,
            replication_factor,
            configs: configs.clone(),
            partitions,
        };
        let topic = Arc::new(topic);
        self.topics.insert(name.to_string(), topic.clone());
        dirty.topics.insert(name.to_string());
        CommandResponse::Topic(topic)
    }

    /// Partition replicas each registered storage node hosts.
    pub fn replica_counts(&self) -> BTreeMap<u64, u64> {
        let mut counts: BTreeMap<u64, u64> = self.nodes.keys().map(|&id| (id, 0)).collect();
        for p in self.topics.values().flat_map(|t| &t.partitions) {
            for r in &p.replicas {
                *counts.entry(*r).or_default() += 1;
            }
        }
        counts
    }

    /// Partition replicas node `id` hosts.
    pub fn hosted(&self, id: u64) -> u64 {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.replicas.contains(&id))
            .count() as u64
    }

    /// Whether node `id`, hosting `hosted` replicas, may take one more
    /// under its partition budget.
    pub fn has_room(&self, id: u64, hosted: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.max_partitions == 0 || hosted < n.max_partitions)
    }

    /// The replicas of `count` new partitions: each starts at the next
    /// node of [`Metadata::placement_order`] from the placement cursor and
    /// takes the first `replication_factor` nodes, in that order, that
    /// have room under their partition budget (without budgets: round
    /// robin). `PARTITION_LIMIT_REACHED` when a partition finds too few
    /// nodes with room. The caller checked there are enough nodes.
    pub fn plan_placement(
        &self,
        count: u32,
        replication_factor: u32,
    ) -> Result<Vec<Vec<u64>>, Error> {
        let nodes = self.placement_order();
        let n = nodes.len() as u64;
        let rf = replication_factor as usize;
        let mut counts = self.replica_counts();
        let mut out = Vec::with_capacity(count as usize);
        let rack = |id: u64| self.nodes.get(&id).map_or("", |n| n.rack.as_str());
        for i in 0..count {
            let start = self.placement_cursor.wrapping_add(u64::from(i));
            let walk = (0..n).map(|k| nodes[(start.wrapping_add(k) % n) as usize]);
            let room = |id: &u64| self.has_room(*id, counts.get(id).copied().unwrap_or(0));
            // Plain round robin when its nodes have room (always, without
            // budgets), so placement is what it always was.
            let mut replicas: Vec<u64> = walk.clone().take(rf).collect();
            if !replicas.iter().all(room) {
                // Skip full nodes, still preferring racks the partition
                // does not use yet, then any node with room.
                replicas.clear();
                for id in walk.clone().filter(room) {
                    if replicas.len() < rf && !replicas.iter().any(|&r| rack(r) == rack(id)) {
                        replicas.push(id);
                    }
                }
                for id in walk.filter(room) {
                    if replicas.len() < rf && !replicas.contains(&id) {
                        replicas.push(id);
                    }
                }
            }
            if replicas.len() < rf {
                return Err(self.partition_limit_error(count, replication_factor, i));
            }
            for id in &replicas {
                *counts.entry(*id).or_default() += 1;
            }
            out.push(replicas);
        }
        Ok(out)
    }

    fn partition_limit_error(&self, count: u32, replication_factor: u32, fit: u32) -> Error {
        let counts = self.replica_counts();
        let nodes = self
            .placement_order()
            .into_iter()
            .map(|id| {
                let hosted = counts.get(&id).copied().unwrap_or(0);
                match self.nodes.get(&id).map_or(0, |n| n.max_partitions) {
                    0 => format!("node {id}: {hosted} (no limit)"),
                    max => format!("node {id}: {hosted} of {max}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        Error::new(
            Reason::PartitionLimitReached,
            format!(
                "{count} partitions with replication factor {replication_factor} do not fit the storage nodes' partition budgets (storage_node.max_partitions): only {fit} would; replicas hosted per node: {nodes}"
            ),
        )
    }

    /// Places partitions `first..first + count` as
    /// [`Metadata::plan_placement`] plans them, continuing at the
    /// placement cursor (which moves on).
    fn place(
        &mut self,
        first: u32,
        count: u32,
        replication_factor: u32,
    ) -> Result<Vec<Arc<Partition>>, Error> {
        let planned = self.plan_placement(count, replication_factor)?;
        let partitions = planned
            .into_iter()
            .zip(0..)
            .map(|(replicas, i)| {
                Arc::new(Partition {
                    partition: first + i,
                    leader: replicas[0],
                    leader_epoch: 0,
                    isr: replicas.clone(),
                    replicas,
                    offline_replicas: Vec::new(),
                    partition_epoch: 0,
                })
            })
            .collect::<Vec<_>>();
        self.placement_cursor = self.placement_cursor.wrapping_add(u64::from(count));
        Ok(partitions)
    }

    /// Marks a node dead or alive and moves partition leadership:
    /// - dead: it leaves every ISR it is not the last member of; partitions
    ///   it leads move to another live, online ISR member (epoch bumped);
    ///   with none, the topic's `unclean.leader.election.enable` decides:
    ///   off (the default) keeps it as the (not alive) leader until an ISR
    ///   member returns, on elects any live, online replica (its ISR is then
    ///   that replica alone);
    /// - alive: partitions whose leader is dead and whose ISR holds this node
    ///   move to it (epoch bumped); with unclean election on, so do those
    ///   where it is any replica and no ISR member is alive.
    fn set_alive(&mut self, node_id: u64, alive: bool, dirty: &mut Dirty) {
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if node.alive != alive {
            node.alive = alive;
            dirty.nodes.insert(node_id);
        }
        let live: BTreeSet<u64> = self.alive_nodes().into_iter().collect();
        let usable = |r: u64, p: &Partition| live.contains(&r) && !p.offline_replicas.contains(&r);
        for topic in self.topics.values_mut() {
            let unclean = topic
                .configs
                .get(streambus_cluster::topic_config::UNCLEAN_LEADER_ELECTION)
                .is_some_and(|v| v == "true");
            update_partitions(topic, dirty, |topic, p| {
                if !p.replicas.contains(&node_id) {
                    return None;
                }
                // Nothing changes where the node coming back finds a live
                // leader, or the node going away neither leads nor is in
                // sync.
                let relevant = if alive {
                    p.leader != node_id && !live.contains(&p.leader)
                } else {
                    p.leader == node_id || p.isr.contains(&node_id)
                };
                if !relevant {
                    return None;
                }
                edited(p, |p| {
                    let before = (p.leader, p.isr.clone());
                    if alive {
                        let leader_down = p.leader != node_id && !live.contains(&p.leader);
                        if leader_down && p.isr.contains(&node_id) {
                            p.leader = node_id;
                            p.leader_epoch += 1;
                        } else if leader_down
                            && unclean
                            && !p.isr.iter().any(|&r| usable(r, p))
                            && usable(node_id, p)
                        {
                            tracing::warn!(topic = %topic.name, partition = p.partition, node_id,
                                "unclean leader election: records acknowledged since this replica fell behind are lost");
                            p.leader = node_id;
                            p.leader_epoch += 1;
                            p.isr = vec![node_id];
                        }
                    } else {
                        if p.leader == node_id {
                            if let Some(&next) =
                                p.isr.iter().find(|&&r| r != node_id && usable(r, p))
                            {
                                p.leader = next;
                                p.leader_epoch += 1;
                            } else if unclean
                                && let Some(&next) =
                                    p.replicas.iter().find(|&&r| r != node_id && usable(r, p))
                            {
                                tracing::warn!(topic = %topic.name, partition = p.partition, node_id = next,
                                    "unclean leader election: records acknowledged since this replica fell behind are lost");
                                p.leader = next;
                                p.leader_epoch += 1;
                                p.isr = vec![next];
                            }
                        }
                        if p.isr.len() > 1 && p.isr.contains(&node_id) && p.leader != node_id {
                            p.isr.retain(|&r| r != node_id);
                        }
                    }
                    if before != (p.leader, p.isr.clone()) {
                        p.partition_epoch += 1;
                    }
                })
            });
        }
    }

    /// Records the replicas `node_id` cannot serve (replacing its previous
    /// report). A partition whose leader went offline moves to another
    /// live, online ISR member with a new epoch, when there is one.
    fn set_offline_replicas(&mut self, node_id: u64, offline: &ReplicaRefs, dirty: &mut Dirty) {
        let live: BTreeSet<u64> = self.alive_nodes().into_iter().collect();
        let mut by_topic: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for (topic, partition) in offline {
            by_topic.entry(topic).or_default().insert(*partition);
        }
        let none = BTreeSet::new();
        for topic in self.topics.values_mut() {
            let reported = by_topic.get(topic.name.as_str()).unwrap_or(&none);
            update_partitions(topic, dirty, |_, p| {
                if !p.replicas.contains(&node_id) {
                    return None;
                }
                let is_offline = reported.contains(&p.partition);
                if is_offline == p.offline_replicas.contains(&node_id) {
                    return None;
                }
                edited(p, |p| {
                    if is_offline {
                        p.offline_replicas.push(node_id);
                        p.offline_replicas.sort_unstable();
                    } else {
                        p.offline_replicas.retain(|&r| r != node_id);
                    }
                    if is_offline
                        && p.leader == node_id
                        && let Some(&next) = p.isr.iter().find(|&&r| {
                            r != node_id && live.contains(&r) && !p.offline_replicas.contains(&r)
                        })
                    {
                        p.leader = next;
                        p.leader_epoch += 1;
                    }
                    // An offline replica cannot be in sync (its log is not
                    // served); the leader adds it back once it caught up.
                    if is_offline
                        && p.leader != node_id
                        && p.isr.contains(&node_id)
                        && p.isr.len() > 1
                    {
                        p.isr.retain(|&r| r != node_id);
                    }
                    p.partition_epoch += 1;
                })
            });
        }
    }

    /// The public description of a topic.
    pub fn describe(topic: &Topic) -> TopicDescription {
        TopicDescription {
            name: topic.name.clone(),
            topic_id: topic.topic_id.clone(),
            replication_factor: topic.replication_factor,
            configs: topic.configs.clone().into_iter().collect(),
            partitions: topic
                .partitions
                .iter()
                .map(|p| describe_partition(p))
                .collect(),
        }
    }

    /// The wire form, with the controller leader filled in by the caller.
    pub fn to_cluster_metadata(&self, leader_id: u64, leader_address: &str) -> ClusterMetadata {
        ClusterMetadata {
            topics: self.topics.values().map(|t| topic_metadata(t)).collect(),
            ..self.wire_without_topics(leader_id, leader_address, None)
        }
    }

    /// The wire form of what changed since `before`: every field but the
    /// topics whole, the topics added or changed since `before` and the
    /// names of those deleted (`delta` set). Topics shared with `before`
    /// (the same `Arc`) are skipped without comparing them.
    ///
    /// With `partition_deltas`, a changed topic that is the same
    /// incarnation as in `before` (same id) with the same replication
    /// factor and configuration and no fewer partitions goes out `partial`:
    /// only its partitions added or changed since `before` (again skipped
    /// by pointer first), in partition order. Otherwise a changed topic
    /// goes out whole.
    pub fn to_cluster_metadata_delta(
        &self,
        before: &Metadata,
        leader_id: u64,
        leader_address: &str,
        partition_deltas: bool,
    ) -> ClusterMetadata {
        let mut topics = Vec::new();
        for (name, t) in &self.topics {
            let Some(b) = before.topics.get(name) else {
                topics.push(topic_metadata(t));
                continue;
            };
            if Arc::ptr_eq(b, t) {
                continue;
            }
            let partial = partition_deltas
                && b.topic_id == t.topic_id
                && b.replication_factor == t.replication_factor
                && b.configs == t.configs
                && b.partitions.len() <= t.partitions.len();
            if !partial {
                if b != t {
                    topics.push(topic_metadata(t));
                }
                continue;
            }
            let changed: Vec<PartitionDescription> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    b.partitions
                        .get(*i)
                        .is_none_or(|bp| !Arc::ptr_eq(bp, p) && bp != *p)
                })
                .map(|(_, p)| describe_partition(p))
                .collect();
            if !changed.is_empty() {
                topics.push(TopicMetadata {
                    partial: true,
                    partitions: changed,
                    ..topic_header(t)
                });
            }
        }
        ClusterMetadata {
            topics,
            removed_topics: before
                .topics
                .keys()
                .filter(|name| !self.topics.contains_key(*name))
                .cloned()
                .collect(),
            delta: true,
            ..self.wire_without_topics(leader_id, leader_address, Some(before))
        }
    }

    /// Every field but the topics; the ACLs left out (`acls_unchanged`)
    /// when `before` has the same ones.
    fn wire_without_topics(
        &self,
        leader_id: u64,
        leader_address: &str,
        before: Option<&Metadata>,
    ) -> ClusterMetadata {
        let acls_unchanged = before.is_some_and(|b| Arc::ptr_eq(&b.acls, &self.acls));
        let quotas_unchanged = before.is_some_and(|b| Arc::ptr_eq(&b.quotas, &self.quotas));
        ClusterMetadata {
            quotas: if quotas_unchanged {
                Vec::new()
            } else {
                self.quotas
                    .iter()
                    .map(|(principal, r)| ClientQuota {
                        principal: principal.clone(),
                        produce_bytes_per_second: r.produce_bytes_per_second,
                        consume_bytes_per_second: r.consume_bytes_per_second,
                        requests_per_second: r.requests_per_second,
                    })
                    .collect()
            },
            quotas_unchanged,
            acls: if acls_unchanged {
                Vec::new()
            } else {
                self.acls
                    .iter()
                    .map(streambus_cluster::acl_wire::to_wire)
                    .collect()
            },
            acls_unchanged,
            version: self.version,
            nodes: self
                .nodes
                .values()
                .map(|n| StorageNodeInfo {
                    node_id: n.node_id,
                    address: n.address.clone(),
                    alive: n.alive,
                    rack: n.rack.clone(),
                    decommissioning: n.decommissioning,
                    max_partitions: n.max_partitions,
                })
                .collect(),
            topics: Vec::new(),
            controller_leader_id: leader_id,
            controller_leader_address: leader_address.to_string(),
            cluster_id: self.cluster_id.clone(),
            unchanged: false,
            delta: false,
            removed_topics: Vec::new(),
        }
    }
}

/// A topic's wire form.
fn topic_metadata(t: &Topic) -> TopicMetadata {
    TopicMetadata {
        partitions: t.partitions.iter().map(|p| describe_partition(p)).collect(),
        ..topic_header(t)
    }
}

/// A topic's wire form without its partitions.
fn topic_header(t: &Topic) -> TopicMetadata {
    TopicMetadata {
        partial: false,
        name: t.name.clone(),
        topic_id: t.topic_id.clone(),
        replication_factor: t.replication_factor,
        configs: t.configs.clone().into_iter().collect(),
        partitions: Vec::new(),
    }
}

impl Metadata {
    /// The public description of a partition.
    pub fn describe_partition(p: &Partition) -> PartitionDescription {
        describe_partition(p)
    }
}

fn describe_partition(p: &Partition) -> PartitionDescription {
    PartitionDescription {
        partition: p.partition,
        leader: p.leader,
        leader_epoch: p.leader_epoch,
        replicas: p.replicas.clone(),
        isr: p.isr.clone(),
        offline_replicas: p.offline_replicas.clone(),
        partition_epoch: p.partition_epoch,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn create_req(name: &str, partitions: u32, rf: u32) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.to_string(),
            partitions,
            replication_factor: rf,
            configs: HashMap::new(),
        }
    }

    fn register(m: &mut Metadata, index: u64, node_id: u64) {
        let r = m.apply(
            index,
            &Command::RegisterNode {
                node_id,
                address: format!("10.0.0.{node_id}:7500"),
                incarnation: node_id,
                directory_id: format!("dir-{node_id}"),
                rack: String::new(),
                max_partitions: 0,
            },
            &mut Dirty::default(),
        );
        assert_eq!(r, CommandResponse::Ok);
    }

    /// Registers node `id` in `rack`, at log index `id`.
    fn register_in_rack(m: &mut Metadata, id: u64, rack: &str) {
        m.apply(
            id,
            &Command::RegisterNode {
                node_id: id,
                address: format!("n{id}:1"),
                incarnation: id,
                directory_id: format!("dir-{id}"),
                rack: rack.into(),
                max_partitions: 0,
            },
            &mut Dirty::default(),
        );
    }

    fn set_alive(m: &mut Metadata, index: u64, node_id: u64, alive: bool) -> Dirty {
        let mut dirty = Dirty::default();
        let r = m.apply(index, &Command::SetNodeAlive { node_id, alive }, &mut dirty);
        assert_eq!(r, CommandResponse::Ok);
        dirty
    }

    /// Applies a create without the proposal-time replication gate, as a
    /// future leader with replication would.
    fn create_raw(m: &mut Metadata, index: u64, name: &str, partitions: u32, rf: u32) -> Topic {
        let cmd = Command::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor: rf,
            configs: TopicConfig::default().to_btree_map(),
            topic_id: Some(random_id()),
        };
        match m.apply(index, &cmd, &mut Dirty::default()) {
            CommandResponse::Topic(t) => Topic::clone(&t),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn quotas_are_set_replaced_removed_and_sent_only_when_changed() {
        let rates = |p| QuotaRates {
            produce_bytes_per_second: p,
            ..QuotaRates::default()
        };
        let mut m = Metadata::default();
        let mut dirty = Dirty::default();
        let set = Command::AlterQuotas {
            set: vec![("User:a".into(), rates(10)), ("User:*".into(), rates(5))],
            remove: vec![],
        };
        assert_eq!(m.apply(1, &set, &mut dirty), CommandResponse::Ok);
        assert!(dirty.quotas);
        let before = m.clone();
        assert_eq!(m.to_cluster_metadata(1, "c1:1").quotas.len(), 2);
        // The same again changes nothing: a delta leaves them out.
        let mut dirty = Dirty::default();
        m.apply(2, &set, &mut dirty);
        assert!(!dirty.quotas);
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert!(d.quotas_unchanged && d.quotas.is_empty());
        // Replaced and removed.
        let mut dirty = Dirty::default();
        m.apply(
            3,
            &Command::AlterQuotas {
                set: vec![("User:a".into(), rates(20))],
                remove: vec!["User:*".into()],
            },
            &mut dirty,
        );
        assert!(dirty.quotas);
        assert_eq!(
            *m.quotas,
            BTreeMap::from([("User:a".to_string(), rates(20))])
        );
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert!(!d.quotas_unchanged);
        assert_eq!(d.quotas[0].produce_bytes_per_second, 20);
        // A principal that is not one is refused and changes nothing.
        let refused = m.apply(
            4,
            &Command::AlterQuotas {
                set: vec![("alice".into(), rates(1))],
                remove: vec![],
            },
            &mut Dirty::default(),
        );
        assert!(matches!(refused, CommandResponse::Rejected { .. }));
        assert_eq!(m.quotas.len(), 1);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
    }

    #[test]
    fn acls_are_added_once_removed_by_filter_and_sent_only_when_changed() {
        use streambus_acl::{
            Acl, AclFilter, Operation, PatternType, Permission, ResourcePattern, ResourceType,
        };
        let acl = |principal: &str, permission| Acl {
            principal: principal.into(),
            pattern: ResourcePattern {
                resource_type: ResourceType::Topic,
                pattern_type: PatternType::Prefixed,
                name: "orders.".into(),
            },
            operation: Operation::Read,
            permission,
        };
        let mut m = Metadata::default();
        let mut dirty = Dirty::default();
        let created = m.apply(
            1,
            &Command::CreateAcls {
                acls: vec![
                    acl("User:a", Permission::Allow),
                    acl("User:b", Permission::Deny),
                ],
            },
            &mut dirty,
        );
        assert_eq!(created, CommandResponse::Changed { applied: 2 });
        assert!(dirty.acls);
        let before = m.clone();
        let wire = m.to_cluster_metadata(1, "c1:1");
        assert_eq!(wire.acls.len(), 2);
        assert!(!wire.acls_unchanged);

        // Adding one that is there changes nothing, and a delta leaves
        // the ACLs out.
        let mut dirty = Dirty::default();
        let again = m.apply(
            2,
            &Command::CreateAcls {
                acls: vec![acl("User:a", Permission::Allow)],
            },
            &mut dirty,
        );
        assert_eq!(again, CommandResponse::Changed { applied: 0 });
        assert!(!dirty.acls);
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert!(d.acls_unchanged && d.acls.is_empty());

        // An invalid ACL is refused at apply too, and adds nothing.
        let mut bad = acl("alice", Permission::Allow);
        bad.principal = "alice".into();
        let refused = m.apply(
            3,
            &Command::CreateAcls {
                acls: vec![acl("User:c", Permission::Allow), bad],
            },
            &mut Dirty::default(),
        );
        assert!(
            matches!(refused, CommandResponse::Rejected { ref reason, .. } if reason == "INVALID_ARGUMENT")
        );
        assert_eq!(m.acls.len(), 2);

        let mut dirty = Dirty::default();
        let removed = m.apply(
            4,
            &Command::DeleteAcls {
                filters: vec![AclFilter {
                    permission: Some(Permission::Deny),
                    ..AclFilter::default()
                }],
            },
            &mut dirty,
        );
        assert_eq!(
            removed,
            CommandResponse::AclsRemoved {
                acls: vec![acl("User:b", Permission::Deny)]
            }
        );
        assert!(dirty.acls);
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert!(!d.acls_unchanged);
        assert_eq!(
            d.acls,
            vec![streambus_cluster::acl_wire::to_wire(&acl(
                "User:a",
                Permission::Allow
            ))]
        );
        // Through the JSON of the Raft log and snapshots.
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metadata>(&json).unwrap(), m);
    }

    #[test]
    fn a_watch_delta_carries_only_changed_and_removed_topics() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 0);
        let a = create_raw(&mut m, 2, "a", 2, 1);
        create_raw(&mut m, 3, "b", 2, 1);
        create_raw(&mut m, 4, "c", 1, 1);
        let before = m.clone();
        let grown = m.apply(
            5,
            &Command::CreatePartitions {
                name: "a".into(),
                topic_id: a.topic_id.clone(),
                partitions: 3,
            },
            &mut Dirty::default(),
        );
        assert!(matches!(grown, CommandResponse::Topic(_)));
        let deleted = m.apply(
            6,
            &Command::DeleteTopic { name: "c".into() },
            &mut Dirty::default(),
        );
        assert_eq!(deleted, CommandResponse::Ok);
        create_raw(&mut m, 7, "d", 1, 1);
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", false);
        assert!(d.delta);
        let names: Vec<&str> = d.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(d.topics[0].partitions.len(), 3);
        assert_eq!(d.removed_topics, ["c"]);
        assert_eq!((d.version, d.nodes.len()), (7, 1));
        // Nothing changed: nothing but the whole fields.
        let same = m.to_cluster_metadata_delta(&m, 1, "c1:1", false);
        assert!(same.topics.is_empty() && same.removed_topics.is_empty());
        assert!(d.topics.iter().all(|t| !t.partial));
    }

    /// The ISR of `topic`/`partition` without its last member, as its
    /// leader asks.
    fn shrink_isr(m: &Metadata, topic: &str, partition: u32) -> Command {
        let t = &m.topics[topic];
        let p = &t.partitions[partition as usize];
        Command::AlterIsr {
            topic: topic.into(),
            topic_id: t.topic_id.clone(),
            partition,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: p.isr[..p.isr.len() - 1].to_vec(),
        }
    }

    /// Leadership of `topic`/`partition` moves to its second replica.
    fn move_leader(m: &Metadata, topic: &str, partition: u32) -> Command {
        let t = &m.topics[topic];
        let p = &t.partitions[partition as usize];
        Command::ChangePartitions {
            changes: vec![PartitionChange {
                topic: topic.into(),
                topic_id: t.topic_id.clone(),
                partition,
                partition_epoch: p.partition_epoch,
                leader: p.replicas[1],
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
            }],
        }
    }

    /// The partitions of `topic` not shared with `before`.
    fn copied(before: &Metadata, after: &Metadata, topic: &str) -> Vec<u32> {
        let (b, a) = (&before.topics[topic], &after.topics[topic]);
        a.partitions
            .iter()
            .filter(|p| {
                b.partitions
                    .get(p.partition as usize)
                    .is_none_or(|bp| !Arc::ptr_eq(bp, p))
            })
            .map(|p| p.partition)
            .collect()
    }

    #[test]
    fn a_partition_change_copies_only_that_partition() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "big", 2000, 3);
        create_raw(&mut m, 5, "other", 10, 3);

        let published = m.clone();
        let mut dirty = Dirty::default();
        let r = m.apply(6, &shrink_isr(&m, "big", 1234), &mut dirty);
        let CommandResponse::Partition(p) = r else {
            panic!("not applied: {r:?}");
        };
        assert_eq!((p.isr.len(), p.partition_epoch), (2, 1));
        assert_eq!(*m.topics["big"].partitions[1234], p);
        assert_eq!(copied(&published, &m, "big"), [1234]);
        assert!(Arc::ptr_eq(&published.topics["other"], &m.topics["other"]));
        assert_eq!(published.topics["big"].partitions[1234].isr.len(), 3);
        assert!(dirty.topics.is_empty());
        assert_eq!(
            dirty.partitions,
            BTreeSet::from([("big".to_string(), 1234)])
        );

        // A leader change: the same.
        let published = m.clone();
        let mut dirty = Dirty::default();
        let r = m.apply(7, &move_leader(&m, "big", 77), &mut dirty);
        assert_eq!(r, CommandResponse::Changed { applied: 1 });
        assert_eq!(m.topics["big"].partitions[77].leader_epoch, 1);
        assert_eq!(copied(&published, &m, "big"), [77]);
        assert!(Arc::ptr_eq(&published.topics["other"], &m.topics["other"]));
        assert_eq!(dirty.partitions, BTreeSet::from([("big".to_string(), 77)]));
    }

    #[test]
    fn a_node_changing_liveness_copies_only_the_partitions_that_change() {
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 5, "t", 40, 2);
        create_raw(&mut m, 6, "u", 1, 1); // [1]
        let on_2: Vec<u32> = m.topics["t"]
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&2))
            .map(|p| p.partition)
            .collect();
        assert_eq!(on_2.len(), 20);

        // Node 2 dies: the partitions it leads get a new leader, those it
        // follows lose it from the ISR; nothing else is copied.
        let published = m.clone();
        let dirty = set_alive(&mut m, 7, 2, false);
        assert_eq!(copied(&published, &m, "t"), on_2);
        assert!(Arc::ptr_eq(&published.topics["u"], &m.topics["u"]));
        assert!(dirty.topics.is_empty());
        assert_eq!(dirty.partitions.len(), 20);
        for p in on_2.iter().map(|&i| &m.topics["t"].partitions[i as usize]) {
            assert_eq!(p.isr.len(), 1, "{p:?}");
            assert_ne!(p.leader, 2, "{p:?}");
        }

        // It comes back out of sync: no leadership moves, nothing is
        // copied, not even the topic.
        let published = m.clone();
        let dirty = set_alive(&mut m, 8, 2, true);
        assert!(Arc::ptr_eq(&published.topics["t"], &m.topics["t"]));
        assert!(dirty.partitions.is_empty() && dirty.topics.is_empty());

        // A new incarnation of node 1 gets a new leader epoch where it
        // leads and leaves the ISRs it follows in: only those partitions
        // change.
        let in_sync_1: Vec<u32> = m.topics["t"]
            .partitions
            .iter()
            .filter(|p| p.leader == 1 || (p.isr.contains(&1) && p.isr.len() > 1))
            .map(|p| p.partition)
            .collect();
        assert!(!in_sync_1.is_empty());
        let published = m.clone();
        let mut dirty = Dirty::default();
        m.apply(
            9,
            &Command::RegisterNode {
                node_id: 1,
                address: "10.0.0.1:7500".into(),
                incarnation: 100,
                directory_id: "dir-1".into(),
                rack: String::new(),
                max_partitions: 0,
            },
            &mut dirty,
        );
        assert_eq!(copied(&published, &m, "t"), in_sync_1);
        // And its only replica of `u` gets a new leader epoch.
        assert_eq!(copied(&published, &m, "u"), [0]);
        let expected: BTreeSet<(String, u32)> = in_sync_1
            .iter()
            .map(|&p| ("t".to_string(), p))
            .chain([("u".to_string(), 0)])
            .collect();
        assert_eq!(dirty.partitions, expected);

        // An offline report copies only the partition reported.
        let published = m.clone();
        let mut dirty = Dirty::default();
        m.apply(
            10,
            &Command::SetOfflineReplicas {
                node_id: 3,
                replicas: vec![("t".into(), 2)],
            },
            &mut dirty,
        );
        assert_eq!(copied(&published, &m, "t"), [2]);
        assert!(Arc::ptr_eq(&published.topics["u"], &m.topics["u"]));
        assert_eq!(dirty.partitions, BTreeSet::from([("t".to_string(), 2)]));
    }

    #[test]
    fn a_watch_delta_carries_only_the_changed_partitions_of_a_topic() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        let big = create_raw(&mut m, 4, "big", 100, 3);
        create_raw(&mut m, 5, "other", 4, 3);

        // One partition changes: a partial topic with that partition only.
        let before = m.clone();
        m.apply(6, &shrink_isr(&m, "big", 42), &mut Dirty::default());
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert_eq!(d.topics.len(), 1);
        let t = &d.topics[0];
        assert!(t.partial);
        assert_eq!(
            (t.name.as_str(), t.topic_id.as_str()),
            ("big", big.topic_id.as_str())
        );
        assert_eq!(
            (t.replication_factor, t.configs.len()),
            (3, big.configs.len())
        );
        assert_eq!(t.partitions.len(), 1);
        assert_eq!(
            t.partitions[0],
            Metadata::describe_partition(&m.topics["big"].partitions[42])
        );
        // Without partition deltas (older watchers): the whole topic.
        let whole = m.to_cluster_metadata_delta(&before, 1, "c1:1", false);
        assert_eq!(whole.topics.len(), 1);
        assert!(!whole.topics[0].partial);
        assert_eq!(whole.topics[0], m.to_cluster_metadata(1, "c1:1").topics[0]);
        // A value equal to the one before, in a new `Arc`, is not sent.
        let mut same = before.clone();
        Arc::make_mut(same.topics.get_mut("big").unwrap()).partitions[3] =
            Arc::new(Partition::clone(&before.topics["big"].partitions[3]));
        let d = same.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert!(d.topics.is_empty(), "{:?}", d.topics);

        // Two changes and two added partitions, in partition order.
        let before = m.clone();
        m.apply(7, &move_leader(&m, "big", 60), &mut Dirty::default());
        m.apply(8, &shrink_isr(&m, "big", 7), &mut Dirty::default());
        m.apply(
            9,
            &Command::CreatePartitions {
                name: "big".into(),
                topic_id: big.topic_id.clone(),
                partitions: 102,
            },
            &mut Dirty::default(),
        );
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert_eq!(d.topics.len(), 1);
        assert!(d.topics[0].partial);
        let numbers: Vec<u32> = d.topics[0].partitions.iter().map(|p| p.partition).collect();
        assert_eq!(numbers, [7, 60, 100, 101]);

        // A configuration change sends the topic whole.
        let before = m.clone();
        let (_, cmd) = m
            .validate_alter_topic_configs("big", &kv(&[("retention.ms", "1000")]), &[])
            .unwrap();
        m.apply(10, &cmd.unwrap(), &mut Dirty::default());
        m.apply(11, &shrink_isr(&m, "big", 8), &mut Dirty::default());
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert_eq!(d.topics.len(), 1);
        assert!(!d.topics[0].partial);
        assert_eq!(d.topics[0].partitions.len(), 102);
        assert_eq!(d.topics[0].configs["retention.ms"], "1000");

        // So does a topic created again under the same name (a new id),
        // even with more partitions than before.
        let before = m.clone();
        m.apply(
            12,
            &Command::DeleteTopic {
                name: "other".into(),
            },
            &mut Dirty::default(),
        );
        let again = create_raw(&mut m, 13, "other", 5, 3);
        let d = m.to_cluster_metadata_delta(&before, 1, "c1:1", true);
        assert_eq!(d.topics.len(), 1);
        let t = &d.topics[0];
        assert!(!t.partial);
        assert_eq!(
            (t.topic_id.as_str(), t.partitions.len()),
            (again.topic_id.as_str(), 5)
        );
        assert!(d.removed_topics.is_empty());
    }

    /// The snapshot and the store hold topics as JSON: partitions held in
    /// `Arc`s serialize as before.
    #[test]
    fn topics_have_a_stable_json_form() {
        let json = r#"{"name":"t","topic_id":"0123","replication_factor":2,"configs":{"retention.ms":"1"},"partitions":[{"partition":0,"leader":1,"leader_epoch":3,"replicas":[1,2],"isr":[1],"offline_replicas":[2],"partition_epoch":7},{"partition":1,"leader":2,"leader_epoch":0,"replicas":[2,1],"isr":[2,1],"partition_epoch":0}]}"#;
        let topic: Topic = serde_json::from_str(json).unwrap();
        assert_eq!(topic.partitions[0].offline_replicas, vec![2]);
        assert_eq!(topic.partitions[1].isr, vec![2, 1]);
        assert_eq!(serde_json::to_string(&topic).unwrap(), json);
    }

    #[test]
    fn a_change_copies_only_the_topics_it_touches() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 0);
        register_with_budget(&mut m, 2, 2, 0);
        let a = create_raw(&mut m, 3, "a", 4, 1);
        create_raw(&mut m, 4, "b", 4, 1);
        let published = m.clone();
        let r = m.apply(
            5,
            &Command::CreatePartitions {
                name: "a".into(),
                topic_id: a.topic_id.clone(),
                partitions: 6,
            },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Topic(ref t) if t.partitions.len() == 6));
        assert!(Arc::ptr_eq(&published.topics["b"], &m.topics["b"]));
        assert!(!Arc::ptr_eq(&published.topics["a"], &m.topics["a"]));
        assert_eq!(
            published.topics["a"].partitions.len(),
            4,
            "published copy kept"
        );
        // A node's liveness copies only the topics where a partition
        // changes: with one replica per partition, none of node 2's
        // partitions can elect another leader, so none is copied.
        let before = m.clone();
        set_alive(&mut m, 6, 2, false);
        for t in ["a", "b"] {
            assert!(m.topics[t].partitions.iter().any(|p| p.replicas == [2]));
            assert!(Arc::ptr_eq(&before.topics[t], &m.topics[t]), "{t}");
        }
    }

    /// Registers node `id` with a partition budget, at log index `index`.
    fn register_with_budget(m: &mut Metadata, index: u64, id: u64, max_partitions: u64) {
        let r = m.apply(
            index,
            &Command::RegisterNode {
                node_id: id,
                address: format!("n{id}:1"),
                incarnation: id,
                directory_id: format!("dir-{id}"),
                rack: String::new(),
                max_partitions,
            },
            &mut Dirty::default(),
        );
        assert_eq!(r, CommandResponse::Ok);
    }

    #[test]
    fn placement_skips_nodes_at_their_partition_budget_and_refuses_what_does_not_fit() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 4);
        register_with_budget(&mut m, 2, 2, 10);
        register_with_budget(&mut m, 3, 3, 10);
        // Within every budget: plain round robin, as without budgets.
        let cmd = m.validate_create_topic(&create_req("a", 3, 2)).unwrap();
        let CommandResponse::Topic(a) = m.apply(4, &cmd, &mut Dirty::default()) else {
            panic!("not created");
        };
        let replicas: Vec<Vec<u64>> = a.partitions.iter().map(|p| p.replicas.clone()).collect();
        assert_eq!(replicas, vec![vec![1, 2], vec![2, 3], vec![3, 1]]);
        assert_eq!(m.replica_counts(), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));

        // Node 1 fills up at 4; later partitions go around it.
        let cmd = m.validate_create_topic(&create_req("b", 6, 2)).unwrap();
        let CommandResponse::Topic(b) = m.apply(5, &cmd, &mut Dirty::default()) else {
            panic!("not created");
        };
        let counts = m.replica_counts();
        assert_eq!(counts[&1], 4, "node 1 exactly at its budget");
        assert_eq!(counts.values().sum::<u64>(), 18);
        assert!(counts[&2] <= 10 && counts[&3] <= 10);
        for p in &b.partitions {
            assert_eq!(p.replicas.len(), 2);
            assert_ne!(p.replicas[0], p.replicas[1]);
        }

        // 18 of 24 slots used; node 1 is full, so each new partition needs
        // nodes 2 and 3: 3 more fit (2 x 10 - 14), 4 do not.
        let e = m.validate_create_topic(&create_req("c", 4, 2)).unwrap_err();
        assert_eq!(e.reason, Reason::PartitionLimitReached, "{e}");
        assert!(e.message.contains("only 3 would"), "{e}");
        assert!(e.message.contains("node 1: 4 of 4"), "{e}");
        let e = m.validate_create_partitions("b", 10).unwrap_err();
        assert_eq!(e.reason, Reason::PartitionLimitReached, "{e}");
        assert!(m.validate_create_partitions("b", 9).unwrap().is_some());

        // A command validated earlier and applied after the budgets
        // filled is rejected the same way on every replica, changing
        // nothing.
        let late = m.validate_create_topic(&create_req("d", 3, 2)).unwrap();
        let cmd = m.validate_create_topic(&create_req("e", 3, 2)).unwrap();
        assert!(matches!(
            m.apply(6, &cmd, &mut Dirty::default()),
            CommandResponse::Topic(_)
        ));
        let before = m.replica_counts();
        let r = m.apply(7, &late, &mut Dirty::default());
        assert!(
            matches!(&r, CommandResponse::Rejected { reason, .. } if reason == "PARTITION_LIMIT_REACHED"),
            "{r:?}"
        );
        assert!(!m.topics.contains_key("d"));
        assert_eq!(m.replica_counts(), before);
    }

    #[test]
    fn skipping_a_full_node_keeps_replicas_in_different_racks() {
        let mut m = Metadata::default();
        for (id, rack, max) in [(1, "a", 0), (2, "b", 1), (3, "a", 0), (4, "b", 0)] {
            m.apply(
                id,
                &Command::RegisterNode {
                    node_id: id,
                    address: format!("n{id}:1"),
                    incarnation: id,
                    directory_id: format!("dir-{id}"),
                    rack: rack.into(),
                    max_partitions: max,
                },
                &mut Dirty::default(),
            );
        }
        assert_eq!(m.placement_order(), vec![1, 2, 3, 4]);
        // Node 2 (rack b) takes one replica and is full.
        let cmd = m.validate_create_topic(&create_req("x", 1, 2)).unwrap();
        m.apply(5, &cmd, &mut Dirty::default());
        // Every later partition spans both racks, through node 4.
        let cmd = m.validate_create_topic(&create_req("y", 4, 2)).unwrap();
        let CommandResponse::Topic(y) = m.apply(6, &cmd, &mut Dirty::default()) else {
            panic!("not created");
        };
        for p in &y.partitions {
            let racks: BTreeSet<&str> = p
                .replicas
                .iter()
                .map(|r| m.nodes[r].rack.as_str())
                .collect();
            assert_eq!(
                racks.len(),
                2,
                "partition {} on {:?}",
                p.partition,
                p.replicas
            );
            assert!(!p.replicas.contains(&2));
        }
    }

    #[test]
    fn budgets_declared_by_nodes_survive_a_reregistration_and_show_in_status() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 100);
        assert_eq!(m.node_status(1).unwrap().max_partitions, 100);
        register_with_budget(&mut m, 2, 1, 250);
        assert_eq!(m.node_status(1).unwrap().max_partitions, 250);
        // An entry written before budgets existed reads as "no limit".
        let old: Command = serde_json::from_str(
            r#"{"type":"register_node","node_id":2,"address":"n2:1","incarnation":2,"directory_id":"dir-2"}"#,
        )
        .unwrap();
        m.apply(3, &old, &mut Dirty::default());
        assert_eq!(m.node_status(2).unwrap().max_partitions, 0);
        assert!(m.has_room(2, u64::MAX - 1));
    }

    #[test]
    fn a_decommission_whose_replicas_find_no_room_is_refused() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 0);
        register_with_budget(&mut m, 2, 2, 3);
        // 4 partitions, RF 1: nodes 1 and 2 host 2 each.
        let cmd = m.validate_create_topic(&create_req("t", 4, 1)).unwrap();
        m.apply(3, &cmd, &mut Dirty::default());
        assert_eq!(m.replica_counts(), BTreeMap::from([(1, 2), (2, 2)]));
        // Node 2 has room for one of node 1's two replicas.
        let e = m.check_decommission(1).unwrap_err();
        assert_eq!(e.reason, Reason::PartitionLimitReached, "{e}");
        assert!(
            e.message.contains("cannot decommission storage node 1"),
            "{e}"
        );
        // Node 1 has no budget: node 2's replicas fit there.
        m.check_decommission(2).unwrap();
    }

    #[test]
    fn decommissioning_moves_replicas_only_to_nodes_with_room() {
        let mut m = Metadata::default();
        register_with_budget(&mut m, 1, 1, 0);
        register_with_budget(&mut m, 2, 2, 2);
        register_with_budget(&mut m, 3, 3, 0);
        // Node 2 hosts 2 replicas, at its budget.
        let cmd = m.validate_create_topic(&create_req("t", 4, 1)).unwrap();
        m.apply(4, &cmd, &mut Dirty::default());
        assert_eq!(m.replica_counts()[&2], 1);
        let cmd = m.validate_create_topic(&create_req("u", 1, 1)).unwrap();
        m.apply(5, &cmd, &mut Dirty::default());
        assert_eq!(m.replica_counts()[&2], 2);
        decommission(&mut m, 6, 1);
        let steps = m.reassignment_steps();
        assert!(!steps.is_empty());
        for step in &steps {
            assert!(
                !step.replicas.contains(&2),
                "a replica was moved to the full node 2: {step:?}"
            );
        }
        // A change decided before node 2 filled up is refused when applied.
        let mut onto_full = steps[0].clone();
        let extra = onto_full.replicas.iter().position(|&r| r != 1).unwrap();
        onto_full.replicas[extra] = 2;
        let e = m.check_partition_change(&onto_full).unwrap_err();
        assert!(
            e.message.contains("node 2 is at its partition budget (2)"),
            "{e}"
        );
    }

    #[test]
    fn create_topic_places_partitions_round_robin_with_defaults_filled_in() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        register(&mut m, 2, 2);
        register(&mut m, 3, 3);
        let cmd = m
            .validate_create_topic(&create_req("orders", 4, 0))
            .unwrap();
        let mut dirty = Dirty::default();
        let CommandResponse::Topic(topic) = m.apply(4, &cmd, &mut dirty) else {
            panic!("not created");
        };
        assert_eq!(m.version, 4);
        assert_eq!(topic.replication_factor, 1);
        assert_eq!(topic.configs, TopicConfig::default().to_btree_map());
        let leaders: Vec<u64> = topic.partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1]);
        for p in &topic.partitions {
            assert_eq!(p.leader_epoch, 0);
            assert_eq!(p.replicas, vec![p.leader]);
            assert_eq!(p.isr, p.replicas);
        }
        assert_eq!(topic.topic_id.len(), 32);
        assert_eq!(m.topics["orders"], topic);
        assert!(dirty.topics.contains("orders"));

        // The cursor continues, so the next topic starts on node 2.
        let t2 = create_raw(&mut m, 5, "payments", 2, 1);
        assert_eq!(
            t2.partitions.iter().map(|p| p.leader).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_ne!(t2.topic_id, topic.topic_id);
    }

    #[test]
    fn replicas_are_distinct_nodes_round_robin() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        let t = create_raw(&mut m, 4, "r3", 3, 3);
        assert_eq!(t.partitions[0].replicas, vec![1, 2, 3]);
        assert_eq!(t.partitions[1].replicas, vec![2, 3, 1]);
        assert_eq!(t.partitions[2].replicas, vec![3, 1, 2]);
    }

    #[test]
    fn topic_names_are_validated() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let long = "a".repeat(250);
        for name in ["", ".", "..", "a b", "ü", "a/b", long.as_str()] {
            let err = m
                .validate_create_topic(&create_req(name, 1, 1))
                .unwrap_err();
            assert_eq!(err.reason, Reason::InvalidTopicName, "{name:?}");
        }
        for name in ["a", "a.b-c_D9", "...", &"a".repeat(249)] {
            m.validate_create_topic(&create_req(name, 1, 1)).unwrap();
        }
    }

    #[test]
    fn partition_count_must_be_between_1_and_10000() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        for n in [0, 10_001] {
            let err = m.validate_create_topic(&create_req("t", n, 1)).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidArgument);
        }
        m.validate_create_topic(&create_req("t", 10_000, 1))
            .unwrap();
    }

    #[test]
    fn bad_topic_config_is_rejected_before_proposing() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let mut req = create_req("t", 1, 1);
        req.configs.insert("nope".into(), "1".into());
        let err = m.validate_create_topic(&req).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
    }

    #[test]
    fn create_without_registered_nodes_is_insufficient_nodes() {
        let m = Metadata::default();
        let err = m.validate_create_topic(&create_req("t", 1, 1)).unwrap_err();
        assert_eq!(err.reason, Reason::InsufficientNodes);
    }

    #[test]
    fn create_with_all_nodes_dead_is_insufficient_nodes() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        set_alive(&mut m, 2, 1, false);
        let err = m.validate_create_topic(&create_req("t", 1, 1)).unwrap_err();
        assert_eq!(err.reason, Reason::InsufficientNodes);
        // Also at apply time, in case the node died after validation.
        let r = m.apply(
            3,
            &Command::CreateTopic {
                name: "t".into(),
                partitions: 1,
                replication_factor: 1,
                configs: BTreeMap::new(),
                topic_id: Some(random_id()),
            },
            &mut Dirty::default(),
        );
        assert!(
            matches!(r, CommandResponse::Rejected { ref reason, .. } if reason == "INSUFFICIENT_NODES")
        );
    }

    #[test]
    fn producer_id_blocks_never_overlap() {
        let mut m = Metadata::default();
        let mut dirty = Dirty::default();
        let a = m.apply(1, &Command::AllocateProducerIds { count: 1000 }, &mut dirty);
        let b = m.apply(2, &Command::AllocateProducerIds { count: 10 }, &mut dirty);
        assert_eq!(
            (a, b),
            (
                CommandResponse::ProducerIds {
                    first: 0,
                    count: 1000
                },
                CommandResponse::ProducerIds {
                    first: 1000,
                    count: 10
                }
            )
        );
        for bad in [0, MAX_PRODUCER_ID_BLOCK + 1] {
            let r = m.apply(3, &Command::AllocateProducerIds { count: bad }, &mut dirty);
            assert!(matches!(r, CommandResponse::Rejected { .. }), "{r:?}");
        }
        assert_eq!(m.next_producer_id, 1010);
    }

    #[test]
    fn removed_controllers_are_recorded_until_added_again() {
        let mut m = Metadata::default();
        let mut dirty = Dirty::default();
        m.apply(1, &Command::RemoveController { node_id: 2 }, &mut dirty);
        m.apply(2, &Command::RemoveController { node_id: 3 }, &mut dirty);
        m.apply(3, &Command::AddController { node_id: 2 }, &mut dirty);
        assert_eq!(m.removed_controllers, BTreeSet::from([3]));
        assert_eq!(m.version, 3);
        // Older snapshots, without the field, load with nobody removed.
        let mut json = serde_json::to_value(&m).unwrap();
        json.as_object_mut().unwrap().remove("removed_controllers");
        let old: Metadata = serde_json::from_value(json).unwrap();
        assert!(old.removed_controllers.is_empty());
    }

    #[test]
    fn replication_factor_three_places_three_distinct_replicas() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        assert!(m.validate_create_topic(&create_req("t", 1, 3)).is_ok());
        let err = m.validate_create_topic(&create_req("t", 1, 4)).unwrap_err();
        assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
    }

    #[test]
    fn duplicate_topic_is_rejected_at_validation_and_at_apply() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let cmd = m.validate_create_topic(&create_req("t", 1, 1)).unwrap();
        // Two proposals of the same create race: the second one loses.
        assert!(matches!(
            m.apply(2, &cmd, &mut Dirty::default()),
            CommandResponse::Topic(_)
        ));
        let err = m
            .apply(3, &cmd, &mut Dirty::default())
            .into_result()
            .unwrap_err();
        assert_eq!(err.reason, Reason::TopicAlreadyExists);
        let err = m.validate_create_topic(&create_req("t", 1, 1)).unwrap_err();
        assert_eq!(err.reason, Reason::TopicAlreadyExists);
    }

    #[test]
    fn delete_removes_topic_and_unknown_topic_is_rejected() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let first = create_raw(&mut m, 2, "t", 1, 1);
        let cmd = m.validate_delete_topic("t").unwrap();
        let mut dirty = Dirty::default();
        assert_eq!(m.apply(3, &cmd, &mut dirty), CommandResponse::Ok);
        assert!(m.topics.is_empty());
        assert!(dirty.topics.contains("t"));
        assert_eq!(
            m.validate_delete_topic("t").unwrap_err().reason,
            Reason::UnknownTopic
        );
        let err = m
            .apply(4, &cmd, &mut Dirty::default())
            .into_result()
            .unwrap_err();
        assert_eq!(err.reason, Reason::UnknownTopic);
        // Re-created: a new id.
        let second = create_raw(&mut m, 5, "t", 1, 1);
        assert_ne!(first.topic_id, second.topic_id);
    }

    #[test]
    fn register_is_idempotent_and_updates_the_address() {
        let mut m = Metadata::default();
        register(&mut m, 1, 7);
        register(&mut m, 2, 7);
        assert_eq!(m.nodes.len(), 1);
        m.apply(
            3,
            &Command::RegisterNode {
                node_id: 7,
                address: "moved:1".into(),
                incarnation: 7,
                directory_id: "dir-7".into(),
                rack: String::new(),
                max_partitions: 0,
            },
            &mut Dirty::default(),
        );
        assert_eq!(m.nodes[&7].address, "moved:1");
        assert!(m.nodes[&7].alive);
        assert_eq!(m.version, 3);
    }

    #[test]
    fn expired_leader_hands_partitions_to_another_isr_member() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        let t = create_raw(&mut m, 4, "t", 3, 2);
        assert_eq!(t.partitions[0].replicas, vec![1, 2]);
        assert_eq!(t.partitions[2].replicas, vec![3, 1]);

        let dirty = set_alive(&mut m, 5, 1, false);
        assert!(dirty.nodes.contains(&1));
        assert!(dirty.topics.is_empty());
        assert_eq!(
            dirty.partitions,
            BTreeSet::from([("t".to_string(), 0), ("t".to_string(), 2)])
        );
        let ps = &m.topics["t"].partitions;
        // Partition 0 was led by 1: node 2 takes over, epoch bumped, 1 leaves the ISR.
        assert_eq!((ps[0].leader, ps[0].leader_epoch), (2, 1));
        assert_eq!(ps[0].isr, vec![2]);
        assert_eq!(ps[0].replicas, vec![1, 2]);
        // Partition 1 (2, 3) is untouched.
        assert_eq!((ps[1].leader, ps[1].leader_epoch), (2, 0));
        assert_eq!(ps[1].isr, vec![2, 3]);
        // Partition 2 is led by 3; 1 leaves its ISR.
        assert_eq!((ps[2].leader, ps[2].leader_epoch), (3, 0));
        assert_eq!(ps[2].isr, vec![3]);
        assert!(!m.nodes[&1].alive);
    }

    #[test]
    fn sole_replica_keeps_leadership_when_it_expires_and_is_reported_dead() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        create_raw(&mut m, 2, "t", 1, 1);
        set_alive(&mut m, 3, 1, false);
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 0));
        assert_eq!(p.isr, vec![1]);
        let md = m.to_cluster_metadata(1, "c1:7401");
        assert!(!md.nodes[0].alive);
        assert_eq!(md.version, 3);

        // Heartbeats resume: alive again, same leader and epoch.
        set_alive(&mut m, 4, 1, true);
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 0));
        assert!(m.nodes[&1].alive);
    }

    #[test]
    fn last_isr_member_dying_keeps_leader_until_isr_member_returns() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        register(&mut m, 2, 2);
        create_raw(&mut m, 3, "t", 1, 2); // replicas [1, 2]
        set_alive(&mut m, 4, 2, false); // ISR -> [1]
        set_alive(&mut m, 5, 1, false); // no other ISR member: stays
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 0));
        assert_eq!(p.isr, vec![1]);
        // Node 2 is back but not in sync: no unclean election.
        set_alive(&mut m, 6, 2, true);
        assert_eq!(m.topics["t"].partitions[0].leader, 1);
        set_alive(&mut m, 7, 1, true);
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (1, 0));
    }

    #[test]
    fn returning_isr_member_takes_over_a_dead_leaderless_partition() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        register(&mut m, 2, 2);
        create_raw(&mut m, 3, "t", 1, 2); // leader 1, ISR [1, 2]
        // Both die in one step from the leader's point of view: 2 first while
        // 1 leads, then 1 with 2 already dead.
        m.nodes.get_mut(&2).unwrap().alive = false; // 2 dead without ISR shrink
        set_alive(&mut m, 4, 1, false);
        assert_eq!(m.topics["t"].partitions[0].leader, 1);
        set_alive(&mut m, 5, 2, true);
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
    }

    #[test]
    fn set_alive_for_unknown_node_is_rejected() {
        let mut m = Metadata::default();
        let r = m.apply(
            1,
            &Command::SetNodeAlive {
                node_id: 9,
                alive: false,
            },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Rejected { .. }));
    }

    #[test]
    fn commands_have_a_stable_json_form() {
        let cmd = Command::SetNodeAlive {
            node_id: 3,
            alive: false,
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(
            json,
            r#"{"type":"set_node_alive","node_id":3,"alive":false}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
    }

    /// Topic ids are chosen randomly before proposing, so a controller
    /// rebuilt from scratch that recreates topics in the same order never
    /// reuses an old id (and with it an old data directory).
    #[test]
    fn topic_ids_are_random_and_survive_a_controller_rebuild() {
        let build = || {
            let mut m = Metadata::default();
            register(&mut m, 1, 1);
            let cmd = m.validate_create_topic(&create_req("t", 1, 1)).unwrap();
            match m.apply(2, &cmd, &mut Dirty::default()) {
                CommandResponse::Topic(t) => (cmd, t.topic_id.clone()),
                other => panic!("unexpected {other:?}"),
            }
        };
        let (cmd, first) = build();
        let (_, rebuilt) = build();
        assert_ne!(first, rebuilt);
        assert_eq!(first.len(), 32);
        // Every replica of the state machine applies the proposed id.
        let mut other = Metadata::default();
        register(&mut other, 1, 1);
        match other.apply(2, &cmd, &mut Dirty::default()) {
            CommandResponse::Topic(t) => assert_eq!(t.topic_id, first),
            r => panic!("unexpected {r:?}"),
        }
    }

    /// A `CreateTopic` entry written before ids were chosen at proposal
    /// time still applies, with the id derived as it was then.
    #[test]
    fn create_topic_entries_without_an_id_still_apply() {
        let json = r#"{"type":"create_topic","name":"old","partitions":1,"replication_factor":1,"configs":{}}"#;
        let cmd: Command = serde_json::from_str(json).unwrap();
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let CommandResponse::Topic(t) = m.apply(5, &cmd, &mut Dirty::default()) else {
            panic!("not created");
        };
        assert_eq!(t.topic_id, legacy_topic_id(5, "old"));
        let json = r#"{"type":"register_node","node_id":4,"address":"a:1"}"#;
        let cmd: Command = serde_json::from_str(json).unwrap();
        assert_eq!(m.apply(6, &cmd, &mut Dirty::default()), CommandResponse::Ok);
        assert_eq!(m.nodes[&4].incarnation, 0);
    }

    #[test]
    fn the_first_cluster_id_wins() {
        let mut m = Metadata::default();
        for (i, id) in ["aa", "bb"].into_iter().enumerate() {
            let cmd = Command::InitCluster {
                cluster_id: id.into(),
            };
            assert_eq!(
                m.apply(i as u64 + 1, &cmd, &mut Dirty::default()),
                CommandResponse::Ok
            );
        }
        assert_eq!(m.cluster_id, "aa");
        assert_eq!(m.to_cluster_metadata(1, "x").cluster_id, "aa");
    }

    #[test]
    fn offline_replicas_are_recorded_replaced_and_cleared() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        create_raw(&mut m, 2, "a", 2, 1);
        create_raw(&mut m, 3, "b", 1, 1);
        let report = |m: &mut Metadata, index, replicas: &[(&str, u32)]| {
            let mut dirty = Dirty::default();
            let cmd = Command::SetOfflineReplicas {
                node_id: 1,
                replicas: replicas.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            };
            assert_eq!(m.apply(index, &cmd, &mut dirty), CommandResponse::Ok);
            dirty
        };
        let dirty = report(&mut m, 4, &[("a", 1)]);
        assert!(dirty.topics.is_empty());
        assert_eq!(dirty.partitions, BTreeSet::from([("a".to_string(), 1)]));
        assert_eq!(m.topics["a"].partitions[1].offline_replicas, vec![1]);
        assert!(m.topics["a"].partitions[0].offline_replicas.is_empty());
        let d = Metadata::describe(&m.topics["a"]);
        assert_eq!(d.partitions[1].offline_replicas, vec![1]);
        // The next report replaces the previous one.
        report(&mut m, 5, &[("b", 0)]);
        assert!(m.topics["a"].partitions[1].offline_replicas.is_empty());
        assert_eq!(m.topics["b"].partitions[0].offline_replicas, vec![1]);
        report(&mut m, 6, &[]);
        assert!(m.topics["b"].partitions[0].offline_replicas.is_empty());
        // An unregistered node's report is refused.
        let r = m.apply(
            7,
            &Command::SetOfflineReplicas {
                node_id: 9,
                replicas: vec![],
            },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Rejected { .. }));
    }

    #[test]
    fn an_offline_leader_hands_over_to_an_online_isr_member() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        register(&mut m, 2, 2);
        create_raw(&mut m, 3, "t", 1, 2); // leader 1, ISR [1, 2]
        let cmd = Command::SetOfflineReplicas {
            node_id: 1,
            replicas: vec![("t".into(), 0)],
        };
        m.apply(4, &cmd, &mut Dirty::default());
        let p = &m.topics["t"].partitions[0];
        assert_eq!((p.leader, p.leader_epoch), (2, 1));
        assert_eq!(p.offline_replicas, vec![1]);
    }

    fn alter(m: &mut Metadata, index: u64, leader: u64, isr: &[u64]) -> CommandResponse {
        let p = &m.topics["t"].partitions[0];
        let cmd = Command::AlterIsr {
            topic: "t".into(),
            topic_id: m.topics["t"].topic_id.clone(),
            partition: 0,
            leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: isr.to_vec(),
        };
        m.apply(index, &cmd, &mut Dirty::default())
    }

    #[test]
    fn isr_changes_apply_only_at_the_epochs_they_were_based_on() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "t", 1, 3); // leader 1, ISR [1, 2, 3]
        let CommandResponse::Partition(p) = alter(&mut m, 5, 1, &[1, 3]) else {
            panic!("not applied");
        };
        assert_eq!((p.isr.clone(), p.partition_epoch), (vec![1, 3], 1));
        assert_eq!(*m.topics["t"].partitions[0], p);
        // A change based on the old partition epoch is refused.
        let stale = Command::AlterIsr {
            topic: "t".into(),
            topic_id: m.topics["t"].topic_id.clone(),
            partition: 0,
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![1, 2, 3],
        };
        let err = m
            .apply(6, &stale, &mut Dirty::default())
            .into_result()
            .unwrap_err();
        assert_eq!(err.reason, Reason::NotLeader, "{err}");
        // Only the leader may change it, and the leader must stay in it.
        let err = alter(&mut m, 7, 2, &[2, 3]).into_result().unwrap_err();
        assert_eq!(err.reason, Reason::NotLeader);
        let err = alter(&mut m, 8, 1, &[3]).into_result().unwrap_err();
        assert_eq!(err.reason, Reason::InvalidArgument);
        let err = alter(&mut m, 9, 1, &[1, 4]).into_result().unwrap_err();
        assert_eq!(err.reason, Reason::InvalidArgument, "not a replica");
        // A dead node cannot be added back.
        set_alive(&mut m, 10, 2, false);
        let err = alter(&mut m, 11, 1, &[1, 2, 3]).into_result().unwrap_err();
        assert_eq!(err.reason, Reason::InvalidArgument, "{err}");
        set_alive(&mut m, 12, 2, true);
        assert!(matches!(
            alter(&mut m, 13, 1, &[1, 2, 3]),
            CommandResponse::Partition(_)
        ));
        assert_eq!(m.topics["t"].partitions[0].isr, vec![1, 2, 3]);
    }

    #[test]
    fn min_insync_above_the_replication_factor_is_refused() {
        let mut m = Metadata::default();
        register(&mut m, 1, 1);
        let mut req = create_req("t", 1, 1);
        req.configs.insert("min.insync.replicas".into(), "2".into());
        let err = m.validate_create_topic(&req).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
        assert!(
            err.message.contains("min.insync.replicas"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_restarted_node_hands_its_leaderships_to_in_sync_peers() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "t", 3, 3);
        create_raw(&mut m, 5, "solo", 1, 1);
        let solo_leader = m.topics["solo"].partitions[0].leader;
        // The same incarnation registering again is not a restart.
        register(&mut m, 6, 1);
        assert_eq!(m.topics["t"].partitions[0].leader, 1);
        assert_eq!(m.topics["t"].partitions[0].leader_epoch, 0);
        // A new process on node 1 and on the solo leader.
        for (i, node) in [1, solo_leader].into_iter().enumerate() {
            m.apply(
                7 + i as u64,
                &Command::RegisterNode {
                    node_id: node,
                    address: format!("10.0.0.{node}:7500"),
                    incarnation: 100 + node,
                    directory_id: format!("dir-{node}"),
                    rack: String::new(),
                    max_partitions: 0,
                },
                &mut Dirty::default(),
            );
        }
        let ps = &m.topics["t"].partitions;
        assert_eq!((ps[0].leader, ps[0].leader_epoch), (2, 1));
        for p in ps {
            assert!(!p.isr.contains(&1), "{p:?}");
            assert_ne!(p.leader, 1);
            assert!(p.partition_epoch >= 1);
        }
        // Where it was the only replica it keeps leading, in a new epoch.
        let solo = &m.topics["solo"].partitions[0];
        assert_eq!((solo.leader, solo.leader_epoch), (solo_leader, 1));
        assert_eq!(solo.isr, vec![solo_leader]);
    }

    #[test]
    fn unclean_election_happens_only_when_the_topic_opts_in() {
        let build = |unclean: bool| {
            let mut m = Metadata::default();
            register(&mut m, 1, 1);
            register(&mut m, 2, 2);
            let mut configs = TopicConfig::default().to_btree_map();
            configs.insert("unclean.leader.election.enable".into(), unclean.to_string());
            m.apply(
                3,
                &Command::CreateTopic {
                    name: "t".into(),
                    partitions: 1,
                    replication_factor: 2,
                    configs,
                    topic_id: Some(random_id()),
                },
                &mut Dirty::default(),
            );
            set_alive(&mut m, 4, 2, false); // ISR -> [1]
            set_alive(&mut m, 5, 1, false); // leader dead, no ISR peer
            set_alive(&mut m, 6, 2, true); // the out-of-sync replica returns
            Partition::clone(&m.topics["t"].partitions[0])
        };
        let clean = build(false);
        assert_eq!((clean.leader, clean.isr), (1, vec![1]));
        let unclean = build(true);
        assert_eq!((unclean.leader, unclean.leader_epoch), (2, 1));
        assert_eq!(unclean.isr, vec![2]);
    }

    #[test]
    fn replicas_of_a_partition_are_spread_over_racks() {
        let mut m = Metadata::default();
        for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")] {
            register_in_rack(&mut m, id, rack);
        }
        assert_eq!(m.placement_order(), vec![1, 3, 5, 2, 4, 6]);
        let t = create_raw(&mut m, 7, "t", 6, 3);
        let rack = |id: u64| m.nodes[&id].rack.clone();
        for p in &t.partitions {
            let racks: BTreeSet<String> = p.replicas.iter().map(|&r| rack(r)).collect();
            assert_eq!(racks.len(), 3, "{:?}", p.replicas);
        }
        // Leaders are spread evenly: each node leads one partition.
        let leaders: BTreeSet<u64> = t.partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders.len(), 6);
    }

    /// The leader of `topic`/`partition` adds or removes in-sync replicas.
    fn set_isr(m: &mut Metadata, index: u64, topic: &str, partition: u32, isr: &[u64]) {
        let t = &m.topics[topic];
        let p = &t.partitions[partition as usize];
        let cmd = Command::AlterIsr {
            topic: topic.into(),
            topic_id: t.topic_id.clone(),
            partition,
            leader: p.leader,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: isr.to_vec(),
        };
        let r = m.apply(index, &cmd, &mut Dirty::default());
        assert!(matches!(r, CommandResponse::Partition(_)), "{r:?}");
    }

    /// Proposes `changes` as the balancer would; returns how many applied.
    fn change(m: &mut Metadata, index: u64, changes: Vec<PartitionChange>) -> u32 {
        for c in &changes {
            m.check_partition_change(c).unwrap();
        }
        match m.apply(
            index,
            &Command::ChangePartitions { changes },
            &mut Dirty::default(),
        ) {
            CommandResponse::Changed { applied } => applied,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn decommission(m: &mut Metadata, index: u64, node_id: u64) {
        m.check_decommission(node_id).unwrap();
        let r = m.apply(
            index,
            &Command::DecommissionNode { node_id },
            &mut Dirty::default(),
        );
        assert_eq!(r, CommandResponse::Ok);
    }

    #[test]
    fn leadership_returns_to_the_preferred_replica_once_it_is_back_in_sync() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "t", 3, 3); // leaders 1, 2, 3
        assert!(m.preferred_leader_moves().is_empty());
        set_alive(&mut m, 5, 1, false); // p0 -> 2, 1 leaves every ISR
        assert_eq!(m.topics["t"].partitions[0].leader, 2);
        assert!(m.preferred_leader_moves().is_empty(), "node 1 is dead");
        set_alive(&mut m, 6, 1, true);
        assert!(m.preferred_leader_moves().is_empty(), "not in sync yet");
        set_isr(&mut m, 7, "t", 0, &[1, 2, 3]);

        // Offline on node 1: not yet.
        let offline = Command::SetOfflineReplicas {
            node_id: 1,
            replicas: vec![("t".into(), 0)],
        };
        m.apply(8, &offline, &mut Dirty::default());
        assert!(m.preferred_leader_moves().is_empty(), "offline");
        let online = Command::SetOfflineReplicas {
            node_id: 1,
            replicas: vec![],
        };
        m.apply(9, &online, &mut Dirty::default());
        set_isr(&mut m, 10, "t", 0, &[1, 2, 3]);

        let before = m.topics["t"].partitions[0].clone();
        let moves = m.preferred_leader_moves();
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!((moves[0].partition, moves[0].leader), (0, 1));
        assert_eq!(change(&mut m, 11, moves), 1);
        let p = &m.topics["t"].partitions[0];
        assert_eq!(p.leader, 1);
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        assert_eq!(p.partition_epoch, before.partition_epoch + 1);
        assert_eq!((&p.replicas, &p.isr), (&before.replicas, &before.isr));
        assert!(m.preferred_leader_moves().is_empty());
        // The other partitions never moved.
        assert_eq!(m.topics["t"].partitions[1].leader_epoch, 0);
    }

    #[test]
    fn a_decommissioning_preferred_replica_gets_no_leadership_back() {
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 5, "t", 1, 3); // [1, 2, 3]
        let p = m.topics["t"].partitions[0].clone();
        let to_2 = Metadata::change_of(&m.topics["t"], &p, 2, p.replicas.clone(), p.isr.clone());
        change(&mut m, 6, vec![to_2]);
        assert_eq!(m.preferred_leader_moves().len(), 1);
        decommission(&mut m, 7, 1);
        assert!(m.preferred_leader_moves().is_empty());
    }

    #[test]
    fn stale_or_unsafe_partition_changes_are_skipped() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "t", 1, 2); // [1, 2]
        let t = m.topics["t"].clone();
        let p = t.partitions[0].clone();
        let stale = Metadata::change_of(&t, &p, 2, p.replicas.clone(), p.isr.clone());
        let shrink = Metadata::change_of(&t, &p, 1, vec![1, 2], vec![1]);
        let err = m.check_partition_change(&shrink).unwrap_err();
        assert!(err.message.contains("in-sync replica 2"), "{err}");
        set_isr(&mut m, 5, "t", 0, &[1]);
        let r = m.apply(
            6,
            &Command::ChangePartitions {
                changes: vec![stale],
            },
            &mut Dirty::default(),
        );
        assert_eq!(r, CommandResponse::Changed { applied: 0 });
        assert_eq!(m.topics["t"].partitions[0].leader, 1);

        let p = m.topics["t"].partitions[0].clone();
        let check = |leader: u64, replicas: &[u64], isr: &[u64]| {
            m.check_partition_change(&Metadata::change_of(
                &t,
                &p,
                leader,
                replicas.to_vec(),
                isr.to_vec(),
            ))
            .unwrap_err()
            .message
        };
        // An out-of-sync leader, an added in-sync replica, a lost in-sync
        // copy, too few replicas, a duplicate, an unknown node.
        assert!(
            check(2, &[1, 2], &[2]).contains("in-sync"),
            "{}",
            check(2, &[1, 2], &[2])
        );
        assert!(check(1, &[1, 2, 3], &[1, 3]).contains("node 3"));
        assert!(check(1, &[1, 3], &[1]).contains("fewer than the replication factor"));
        assert!(check(1, &[1], &[1]).contains("replication factor"));
        assert!(check(1, &[1, 1], &[1]).contains("twice"));
        assert!(check(1, &[1, 2, 9], &[1]).contains("node 9"));
        set_alive(&mut m, 7, 3, false);
        let p = m.topics["t"].partitions[0].clone();
        let dead = Metadata::change_of(&t, &p, 1, vec![1, 2, 3], vec![1]);
        assert!(
            m.check_partition_change(&dead).is_err(),
            "a dead node gets no replica"
        );
    }

    /// Decommissioning node 1 of four, event by event: new replicas are
    /// added out of sync, join the ISR through the leader, leadership
    /// moves off node 1, and only then node 1 leaves; no step ever has
    /// fewer in-sync replicas off node 1 than before.
    #[test]
    fn decommissioning_moves_every_replica_off_the_node_without_losing_copies() {
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 5, "t", 4, 3);
        create_raw(&mut m, 6, "solo", 2, 1);
        let on_1 = |m: &Metadata| m.node_status(1).unwrap().replicas;
        let before = on_1(&m);
        assert!(before > 0);
        assert!(m.reassignment_steps().is_empty());
        decommission(&mut m, 7, 1);
        assert!(m.nodes[&1].decommissioning);
        assert!(m.to_cluster_metadata(1, "c").nodes[0].decommissioning);
        // New topics avoid the node at once.
        let fresh = create_raw(&mut m, 8, "fresh", 6, 3);
        assert!(fresh.partitions.iter().all(|p| !p.replicas.contains(&1)));

        let in_sync_off_1 = |m: &Metadata| -> BTreeMap<(String, u32), usize> {
            m.topics
                .iter()
                .flat_map(|(name, t)| {
                    t.partitions.iter().map(move |p| {
                        (
                            (name.clone(), p.partition),
                            p.isr.iter().filter(|&&r| r != 1).count(),
                        )
                    })
                })
                .collect()
        };
        let mut index = 9;
        let mut rounds = 0;
        loop {
            let steps = m.reassignment_steps();
            if steps.is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 10, "never finished: {steps:?}");
            let floor = in_sync_off_1(&m);
            assert_eq!(change(&mut m, index, steps.clone()) as usize, steps.len());
            index += 1;
            for (key, n) in in_sync_off_1(&m) {
                assert!(n >= floor[&key], "{key:?} lost an in-sync copy");
            }
            let mut catching_up = Vec::new();
            for t in m.topics.values() {
                for p in &t.partitions {
                    assert!(p.isr.contains(&p.leader), "{p:?}");
                    assert!(p.replicas.len() >= t.replication_factor as usize, "{p:?}");
                    if p.isr.len() < p.replicas.len() {
                        catching_up.push((t.name.clone(), p.partition, p.replicas.clone()));
                    }
                }
            }
            // Followers that were added catch up: the leader adds them to
            // the ISR.
            for (name, partition, replicas) in catching_up {
                set_isr(&mut m, index, &name, partition, &replicas);
                index += 1;
            }
        }
        // Add, move leaderships, remove.
        assert_eq!(rounds, 3);
        assert_eq!(on_1(&m), 0);
        assert_eq!(m.node_status(1).unwrap().leader_partitions, 0);
        for t in m.topics.values() {
            for p in &t.partitions {
                assert_eq!(p.replicas.len(), t.replication_factor as usize, "{p:?}");
                assert_eq!(p.isr.len(), p.replicas.len(), "{p:?}");
                let unique: BTreeSet<u64> = p.replicas.iter().copied().collect();
                assert_eq!(unique.len(), p.replicas.len(), "{p:?}");
                assert!(!p.replicas.contains(&1), "{p:?}");
            }
        }
        // Where node 1 was the preferred leader, the replica that took its
        // place is.
        let p0 = &m.topics["t"].partitions[0];
        assert_ne!(p0.replicas[0], 1);
        assert_eq!(p0.replicas[1..], [2, 3]);
    }

    #[test]
    fn a_replica_moves_to_a_rack_the_partition_does_not_use_then_to_the_least_loaded_node() {
        let mut m = Metadata::default();
        for (id, rack) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
            register_in_rack(&mut m, id, rack);
        }
        create_raw(&mut m, 5, "t", 1, 2);
        assert_eq!(m.topics["t"].partitions[0].replicas, vec![1, 2]);
        decommission(&mut m, 6, 2);
        let steps = m.reassignment_steps();
        assert_eq!(steps[0].replicas, vec![1, 2, 4], "rack c, not a again");

        // Without racks: the node hosting the fewest replicas.
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 5, "t", 1, 2); // [1, 2]
        create_raw(&mut m, 6, "u", 1, 1); // [2]
        create_raw(&mut m, 7, "v", 1, 1); // [3]
        decommission(&mut m, 8, 1);
        let steps = m.reassignment_steps();
        assert_eq!(steps[0].replicas, vec![1, 2, 4]);
    }

    #[test]
    fn decommissioning_needs_enough_other_live_nodes() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 4, "t", 1, 3);
        let err = m.check_decommission(3).unwrap_err();
        assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
        assert!(
            err.message.contains("replication factor 3") && err.message.contains("(1, 2)"),
            "{err}"
        );
        // Refused at apply time too (the state may change after validation).
        let r = m.apply(
            5,
            &Command::DecommissionNode { node_id: 3 },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Rejected { .. }), "{r:?}");
        assert!(!m.nodes[&3].decommissioning);
        let err = m.check_decommission(9).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidArgument);
        // A fourth node: allowed, and asking twice is fine.
        register(&mut m, 6, 4);
        decommission(&mut m, 7, 3);
        decommission(&mut m, 8, 3);
        // The remaining three cannot lose another.
        assert_eq!(
            m.check_decommission(2).unwrap_err().reason,
            Reason::InsufficientNodes
        );
        let err = m.validate_create_topic(&create_req("x", 1, 4)).unwrap_err();
        assert!(err.message.contains("1 more decommissioning"), "{err}");
    }

    /// Recommissioning ends the moves: replicas already added elsewhere
    /// stay, the node's own replicas stay, and it takes new replicas again.
    #[test]
    fn a_recommissioned_node_keeps_its_replicas_and_takes_new_ones() {
        let mut m = Metadata::default();
        for id in 1..=4 {
            register(&mut m, id, id);
        }
        create_raw(&mut m, 5, "t", 4, 2);
        decommission(&mut m, 6, 4);
        let steps = m.reassignment_steps();
        assert!(!steps.is_empty());
        assert!(change(&mut m, 7, steps) > 0);
        let before: Vec<Vec<u64>> = m.topics["t"]
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        let r = m.apply(
            8,
            &Command::RecommissionNode { node_id: 4 },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Ok), "{r:?}");
        assert!(!m.nodes[&4].decommissioning);
        assert!(!m.node_status(4).unwrap().decommissioning);
        assert!(m.reassignment_steps().is_empty(), "nothing moves any more");
        let after: Vec<Vec<u64>> = m.topics["t"]
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(before, after);
        // Placement uses node 4 again: four nodes for a factor of four.
        m.validate_create_topic(&create_req("x", 1, 4)).unwrap();
        // Twice is fine; an unknown node is refused.
        let r = m.apply(
            9,
            &Command::RecommissionNode { node_id: 4 },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Ok), "{r:?}");
        let r = m.apply(
            10,
            &Command::RecommissionNode { node_id: 9 },
            &mut Dirty::default(),
        );
        assert!(matches!(r, CommandResponse::Rejected { .. }), "{r:?}");
    }

    #[test]
    fn partitions_are_added_placed_like_a_new_topic_and_never_removed() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        let t = create_raw(&mut m, 4, "t", 2, 2);
        let err = m.validate_create_partitions("t", 1).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidArgument);
        assert!(err.message.contains("has 2 partitions"), "{err}");
        assert_eq!(
            m.validate_create_partitions("t", MAX_PARTITIONS + 1)
                .unwrap_err()
                .reason,
            Reason::InvalidArgument
        );
        assert_eq!(
            m.validate_create_partitions("nope", 3).unwrap_err().reason,
            Reason::UnknownTopic
        );
        assert_eq!(m.validate_create_partitions("t", 2).unwrap(), None);
        let cmd = m.validate_create_partitions("t", 5).unwrap().unwrap();
        let CommandResponse::Topic(grown) = m.apply(5, &cmd, &mut Dirty::default()) else {
            panic!("not grown");
        };
        assert_eq!(grown.partitions.len(), 5);
        assert_eq!(grown.partitions[..2], t.partitions[..]);
        // The placement cursor goes on where the create stopped.
        let leaders: Vec<u64> = grown.partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2]);
        for (i, p) in grown.partitions.iter().enumerate() {
            assert_eq!(p.partition, i as u32);
            assert_eq!(p.replicas.len(), 2);
            assert_eq!(p.isr, p.replicas);
        }
        // The same command again (a retry) changes nothing.
        let again = m.apply(6, &cmd, &mut Dirty::default());
        assert_eq!(again, CommandResponse::Topic(m.topics["t"].clone()));
        // A recreated topic is not grown by a command for its predecessor.
        m.apply(
            7,
            &Command::DeleteTopic { name: "t".into() },
            &mut Dirty::default(),
        );
        create_raw(&mut m, 8, "t", 1, 1);
        let err = m
            .apply(9, &cmd, &mut Dirty::default())
            .into_result()
            .unwrap_err();
        assert_eq!(err.reason, Reason::UnknownTopic);
        // Not enough nodes for the replication factor.
        create_raw(&mut m, 10, "r3", 1, 3);
        set_alive(&mut m, 11, 3, false);
        assert_eq!(
            m.validate_create_partitions("r3", 2).unwrap_err().reason,
            Reason::InsufficientNodes
        );
    }

    #[test]
    fn replicas_leaving_give_their_places_to_the_added_ones() {
        let leaving = |r: &u64| *r >= 10;
        assert_eq!(
            Metadata::without_leaving(&[10, 2, 3, 4], 3, leaving),
            vec![4, 2, 3]
        );
        assert_eq!(
            Metadata::without_leaving(&[1, 10, 11, 4, 5], 3, leaving),
            vec![1, 4, 5]
        );
        assert_eq!(
            Metadata::without_leaving(&[1, 2, 10, 12, 4], 3, leaving),
            vec![1, 2, 4]
        );
        assert_eq!(Metadata::without_leaving(&[1, 2], 3, leaving), vec![1, 2]);
    }

    fn kv(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn topic_configs_change_incrementally_and_are_validated_like_create() {
        let mut m = Metadata::default();
        for id in 1..=3 {
            register(&mut m, id, id);
        }
        let t = create_raw(&mut m, 4, "t", 2, 2);
        assert_eq!(
            m.validate_alter_topic_configs("nope", &kv(&[]), &[])
                .unwrap_err()
                .reason,
            Reason::UnknownTopic
        );
        let err = m
            .validate_alter_topic_configs("t", &kv(&[("segment.bytes", "20")]), &[])
            .unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
        assert!(err.message.contains("segment.bytes"), "{err}");
        let err = m
            .validate_alter_topic_configs("t", &kv(&[("min.insync.replicas", "3")]), &[])
            .unwrap_err();
        assert!(err.message.contains("replication factor 2"), "{err}");

        // Unchanged: nothing to propose.
        let (same, none) = m
            .validate_alter_topic_configs("t", &kv(&[("retention.ms", "604800000")]), &[])
            .unwrap();
        assert!(none.is_none());
        assert_eq!(same, t);

        let (preview, cmd) = m
            .validate_alter_topic_configs(
                "t",
                &kv(&[("retention.bytes", "1000"), ("min.insync.replicas", "2")]),
                &[],
            )
            .unwrap();
        let cmd = cmd.unwrap();
        let mut dirty = Dirty::default();
        let CommandResponse::Topic(after) = m.apply(5, &cmd, &mut dirty) else {
            panic!("not applied");
        };
        assert_eq!(*after, preview);
        assert!(dirty.headers.contains("t") && dirty.topics.is_empty());
        assert_eq!(after.configs["retention.bytes"], "1000");
        assert_eq!(after.configs["min.insync.replicas"], "2");
        assert_eq!(after.configs["retention.ms"], "604800000");
        assert_eq!(after.partitions, t.partitions, "partitions untouched");

        // A reset goes back to the default and keeps the other change.
        let (_, reset) = m
            .validate_alter_topic_configs("t", &kv(&[]), &["retention.bytes".into()])
            .unwrap();
        // Computed from the map above, but another change lands first: the
        // reset is refused, not applied over it.
        let (_, other) = m
            .validate_alter_topic_configs("t", &kv(&[("segment.ms", "1000")]), &[])
            .unwrap();
        m.apply(6, &other.unwrap(), &mut Dirty::default());
        let r = m.apply(7, &reset.unwrap(), &mut Dirty::default());
        assert!(
            matches!(&r, CommandResponse::Rejected { reason, .. } if reason == Reason::Unavailable.as_str()),
            "{r:?}"
        );
        assert_eq!(m.topics["t"].configs["retention.bytes"], "1000");
        assert_eq!(m.topics["t"].configs["segment.ms"], "1000");

        // The fsync policy is fixed at creation.
        let err = m
            .validate_alter_topic_configs("t", &kv(&[("fsync.policy", "never")]), &[])
            .unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
        assert!(err.message.contains("fsync.policy cannot change"), "{err}");

        // A command for an older incarnation of the topic is refused.
        let (_, stale) = m
            .validate_alter_topic_configs("t", &kv(&[("retention.ms", "1")]), &[])
            .unwrap();
        m.apply(
            8,
            &Command::DeleteTopic { name: "t".into() },
            &mut Dirty::default(),
        );
        create_raw(&mut m, 9, "t", 1, 1);
        let r = m.apply(10, &stale.unwrap(), &mut Dirty::default());
        assert!(matches!(r, CommandResponse::Rejected { .. }), "{r:?}");
    }
}
