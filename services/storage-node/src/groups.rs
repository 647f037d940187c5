//! Group coordination: the I/O around `streambus_group`.
//!
//! Each partition of the internal `__groups` topic (compacted, replicated
//! like any partition) holds the groups that map to it
//! (`streambus_group::store::partition_for`). The node leading such a
//! partition coordinates its groups: it loads them from the partition's log
//! when it starts leading it (a *shard*), feeds them heartbeats, commits and
//! the passing of time, and writes every change to the partition as
//! records (`streambus_group::store`) before it answers. So group state
//! lives in the cluster, not in any gateway, and moves with the
//! partition's leadership: a new leader loads what the old one wrote.
//!
//! Invariants:
//! - one shard per `__groups` partition and leader epoch; a shard's groups
//!   change only under its lock, and each change's records are appended
//!   under that lock, so the log holds changes in the order they were made;
//! - no answer (not even a read) goes out before everything written to
//!   the shard so far is replicated to the in-sync replicas (`written`), so
//!   nothing a member or tool was told can be lost by a leader change;
//! - a failed append drops the shard's groups: the next call loads them
//!   again from the log, which holds exactly what was appended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use streambus_cluster::view::ClusterView;
use streambus_group::store::{Loader, Record, partition_for};
use streambus_group::wire::{from_wire, to_wire};
use streambus_group::{Committed, Group, GroupError, Heartbeat, Limits, Subscription, Tp};
use streambus_proto::internal::PartitionRef;
use streambus_proto::v1::{
    CommitOffsetsRequest, CommittedOffset, DeleteGroupRequest, DescribeGroupRequest,
    FetchOffsetsRequest, GroupDescription, GroupHeartbeatRequest, GroupHeartbeatResponse,
    GroupListing, GroupMember,
};
use streambus_proto::{Error, Reason};
use streambus_record::{BatchBuilder, BatchIter, Compression, decode_records};

use crate::error::log_error;
use crate::replica::Replica;
use crate::service::{AckWait, append_in_order, join_error};

/// The internal topic holding groups and their offsets.
pub use streambus_group::TOPIC;

/// How often shards are checked: members' sessions, empty groups' expiry,
/// topic changes, leadership.
const TICK: Duration = Duration::from_millis(200);

/// The heartbeat interval members of a group that is not stable are told.
const RECONCILE_HEARTBEAT_MS: u64 = 250;

/// Records per append are cut into batches of about this size.
const BATCH_BYTES: usize = 256 * 1024;

/// Group ids: what Kafka allows, bounded.
const MAX_GROUP_LEN: usize = 255;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The topics as groups see them.
struct ViewTopics<'a>(&'a ClusterView);

impl streambus_group::Topics for ViewTopics<'_> {
    fn partitions(&self, topic: &str) -> Option<u32> {
        self.0.topic(topic).map(|t| t.partitions.len() as u32)
    }

    fn names(&self) -> Vec<&str> {
        self.0.topics.keys().map(String::as_str).collect()
    }
}

fn group_error(e: GroupError) -> Error {
    let reason = match &e {
        GroupError::UnknownMember(_) => Reason::UnknownMember,
        GroupError::FencedEpoch { .. } => Reason::FencedMemberEpoch,
        GroupError::Full { .. } => Reason::GroupFull,
        GroupError::NotAssigned { .. } => Reason::PartitionNotAssigned,
        GroupError::NotEmpty { .. } => Reason::GroupNotEmpty,
        GroupError::Invalid(_) => Reason::InvalidArgument,
    };
    Error::new(reason, e.to_string())
}

fn check_group_id(group: &str) -> Result<(), Error> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN || group.chars().any(char::is_control) {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!("group id {group:?}: 1 to {MAX_GROUP_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

fn committed_to_wire(tp: &Tp, c: &Committed) -> CommittedOffset {
    CommittedOffset {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset: c.offset,
        metadata: c.metadata.clone(),
        commit_time_ms: c.commit_ms as i64,
    }
}

/// One `__groups` partition led here at one leader epoch.
struct Shard {
    partition: u32,
    leader_epoch: u64,
    replica: Arc<Replica>,
    /// `None` until loaded, and after a failed append.
    groups: tokio::sync::Mutex<Option<HashMap<String, Group>>>,
    /// The offset after the last record written: answers wait until the
    /// high watermark passes it.
    written: AtomicI64,
    /// The metadata version the groups last saw.
    seen_version: AtomicI64,
    /// The shard this one replaced (the same partition at an earlier
    /// leader epoch): its appends in progress finish before this one loads.
    previous: Mutex<Option<Arc<Shard>>>,
}

impl Shard {
    fn pref(&self) -> PartitionRef {
        PartitionRef {
            topic: TOPIC.into(),
            partition: self.partition,
        }
    }
}

/// The node's group coordinator: one shard per `__groups` partition it
/// leads.
pub struct Coordinator {
    acks: AckWait,
    limits: Limits,
    retention: Duration,
    shards: Mutex<HashMap<u32, Arc<Shard>>>,
}

impl Coordinator {
    pub fn new(acks: AckWait, limits: Limits, retention: Duration) -> Coordinator {
        Coordinator {
            acks,
            limits,
            retention,
            shards: Mutex::new(HashMap::new()),
        }
    }

    fn partitions(&self) -> &crate::partitions::Partitions {
        &self.acks.partitions
    }

    /// The shard coordinating `group`, with its groups loaded; NOT_LEADER
    /// when another node leads its partition.
    async fn shard_for(&self, group: &str) -> Result<Arc<Shard>, Error> {
        check_group_id(group)?;
        let view = self.partitions().view();
        let count = view.topic(TOPIC).map_or(0, |t| t.partitions.len() as u32);
        if count == 0 {
            return Err(Error::new(
                Reason::Unavailable,
                format!("the {TOPIC} topic does not exist yet"),
            ));
        }
        self.shard(partition_for(group, count)).await
    }

    async fn shard(&self, partition: u32) -> Result<Arc<Shard>, Error> {
        let replica = self.partitions().leader_replica(TOPIC, partition)?;
        let (leader_epoch, _) = replica.epoch_and_replicas();
        let shard = {
            let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            match shards.get(&partition) {
                Some(s) if s.leader_epoch == leader_epoch && Arc::ptr_eq(&s.replica, &replica) => {
                    s.clone()
                }
                old => {
                    let s = Arc::new(Shard {
                        partition,
                        leader_epoch,
                        replica,
                        groups: tokio::sync::Mutex::new(None),
                        written: AtomicI64::new(0),
                        seen_version: AtomicI64::new(-1),
                        previous: Mutex::new(old.cloned()),
                    });
                    shards.insert(partition, s.clone());
                    s
                }
            }
        };
        Ok(shard)
    }

    /// Loads the shard's groups from its log if they are not loaded.
    async fn loaded<'a>(
        &self,
        shard: &Shard,
        slot: &'a mut Option<HashMap<String, Group>>,
    ) -> Result<&'a mut HashMap<String, Group>, Error> {
        if slot.is_none() {
            let previous = shard
                .previous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(previous) = previous {
                // An append it started (it checked the leader epoch just
                // before the epoch moved) lands before this reads the log;
                // any later one of it sees the new epoch and is refused.
                drop(previous.groups.lock().await);
            }
            let replica = shard.replica.clone();
            let limits = self.limits.clone();
            let partition = shard.partition;
            let (groups, end) = tokio::task::spawn_blocking(move || load(&replica, &limits))
                .await
                .map_err(join_error)?
                .map_err(|e| log_error(TOPIC, partition, e))?;
            tracing::info!(
                partition,
                leader_epoch = shard.leader_epoch,
                groups = groups.len(),
                "groups loaded"
            );
            // Whatever the log holds may not be replicated yet (the last
            // leader's tail): answers wait for it.
            shard.written.fetch_max(end, Ordering::AcqRel);
            *slot = Some(groups);
        }
        Ok(slot.as_mut().expect("loaded above"))
    }

    /// Appends `records` to the shard's partition (under the shard's
    /// lock). On failure the groups are dropped, to be loaded again.
    async fn write(
        &self,
        shard: &Shard,
        slot: &mut Option<HashMap<String, Group>>,
        records: &[Record],
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let result = self.append(shard, records).await;
        match result {
            Ok(next) => {
                shard.written.fetch_max(next, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(partition = shard.partition, error = %e, "groups write failed; reloading");
                *slot = None;
                Err(e)
            }
        }
    }

    /// Whether this node may still change and answer for the shard: it
    /// leads the partition at the shard's epoch, its lease holds, and the
    /// ISR has `min.insync.replicas`. Checked before any change (so a
    /// refused change leaves nothing to undo) and before any answer (a
    /// coordinator cut off from the cluster must not answer from what it
    /// holds: a new one may already have moved the group on).
    fn writable(&self, shard: &Shard) -> Result<(), Error> {
        let replica = &shard.replica;
        let (epoch, _) = replica.epoch_and_replicas();
        if epoch != shard.leader_epoch || !replica.is_leader() {
            return Err(self.partitions().not_leader_because(
                TOPIC,
                shard.partition,
                replica.view().leader,
                "the groups partition's leadership moved",
            ));
        }
        self.acks.check_replicas(replica, &shard.pref(), false)
    }

    async fn append(&self, shard: &Shard, records: &[Record]) -> Result<i64, Error> {
        let ts = now_ms() as i64;
        let mut next = 0;
        let mut rest = records;
        while !rest.is_empty() {
            // Batches of at most about BATCH_BYTES, so a tick writing many
            // groups stays within the topic's batch limit.
            let mut batch = BatchBuilder::new(Compression::None);
            let mut taken = 0;
            for r in rest {
                if taken > 0 && batch.estimated_size() >= BATCH_BYTES {
                    break;
                }
                let (key, value) = r.encode();
                batch.push(&streambus_record::Record {
                    key: Some(Bytes::from(key)),
                    value: value.map(Bytes::from),
                    headers: Vec::new(),
                    timestamp_ms: ts,
                });
                taken += 1;
            }
            rest = &rest[taken..];
            let batch = batch.try_build().map_err(|e| {
                Error::new(Reason::Internal, format!("encoding group records: {e}"))
            })?;
            self.writable(shard)?;
            let epoch = i32::try_from(shard.leader_epoch).unwrap_or(i32::MAX);
            let info = append_in_order(&shard.replica, &batch, epoch)
                .await?
                .map_err(|e| log_error(TOPIC, shard.partition, e))?;
            next = info.last_offset + 1;
        }
        Ok(next)
    }

    /// Waits until everything written to the shard is replicated, and
    /// checks that this node may still answer for it.
    async fn settled(&self, shard: &Shard) -> Result<(), Error> {
        let target = shard.written.load(Ordering::Acquire);
        if shard.replica.high_watermark() < target {
            self.acks
                .wait_replicated(&shard.replica, &shard.pref(), shard.leader_epoch, target)
                .await?;
        }
        self.writable(shard)
    }

    /// A member's heartbeat. Changes run to completion on a task of their
    /// own: a caller that goes away mid-change cannot leave the groups in
    /// memory ahead of the log.
    pub async fn heartbeat(
        self: &Arc<Self>,
        req: GroupHeartbeatRequest,
    ) -> Result<GroupHeartbeatResponse, Error> {
        let this = self.clone();
        tokio::spawn(async move { this.heartbeat_inner(req).await })
            .await
            .map_err(join_error)?
    }

    pub async fn commit(self: &Arc<Self>, req: CommitOffsetsRequest) -> Result<(), Error> {
        let this = self.clone();
        tokio::spawn(async move { this.commit_inner(req).await })
            .await
            .map_err(join_error)?
    }

    pub async fn delete(self: &Arc<Self>, req: DeleteGroupRequest) -> Result<(), Error> {
        let this = self.clone();
        tokio::spawn(async move { this.delete_inner(req).await })
            .await
            .map_err(join_error)?
    }

    async fn heartbeat_inner(
        &self,
        req: GroupHeartbeatRequest,
    ) -> Result<GroupHeartbeatResponse, Error> {
        let subscription = match (req.topics.is_empty(), req.topic_pattern.is_empty()) {
            // Resolved by the gateway: possibly no topic yet.
            (_, false) if req.pattern_resolved => Some(Subscription::Resolved {
                pattern: req.topic_pattern.clone(),
                topics: req.topics.iter().cloned().collect(),
            }),
            (true, true) => None,
            (false, true) => Some(Subscription::Topics(req.topics.iter().cloned().collect())),
            (true, false) => Some(Subscription::Pattern(req.topic_pattern.clone())),
            (false, false) => {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    "a subscription is topics or a pattern, not both",
                ));
            }
        };
        let assignor = match req.assignor.as_str() {
            "" => None,
            a => Some(streambus_group::Assignor::parse(a).ok_or_else(|| {
                Error::new(
                    Reason::InvalidArgument,
                    format!("unknown assignor {a:?}: range, roundrobin or sticky"),
                )
            })?),
        };
        let hb = Heartbeat {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            subscription,
            assignor,
            rebalance_timeout_ms: (req.rebalance_timeout_ms > 0)
                .then_some(u64::from(req.rebalance_timeout_ms)),
            owned: req.report_owned.then(|| from_wire(&req.owned)),
            client_id: req.client_id,
            client_host: String::new(),
        };
        let shard = self.shard_for(&req.group).await?;
        let response = {
            let mut slot = shard.groups.lock().await;
            self.writable(&shard)?;
            let groups = self.loaded(&shard, &mut slot).await?;
            let view = self.partitions().view();
            let now = now_ms();
            let group = groups
                .entry(req.group.clone())
                .or_insert_with(|| Group::new(req.group.clone(), now));
            let result = group.heartbeat(hb, now, &ViewTopics(&view), &self.limits);
            let reconciling = group.state() != streambus_group::GroupState::Stable;
            let records = if group.take_dirty() {
                vec![Record::group(group)]
            } else {
                Vec::new()
            };
            if group.epoch == 0 && group.offsets.is_empty() {
                // Never joined and holds nothing: not a group.
                groups.remove(&req.group);
            }
            self.write(&shard, &mut slot, &records).await?;
            let mut response = result.map_err(group_error)?;
            if reconciling {
                // Partitions are moving: every member beats often until
                // they have, so a handover takes a few of these, not a few
                // heartbeat intervals.
                response.heartbeat_interval_ms =
                    response.heartbeat_interval_ms.min(RECONCILE_HEARTBEAT_MS);
            }
            response
        };
        self.settled(&shard).await?;
        Ok(GroupHeartbeatResponse {
            member_id: response.member_id,
            member_epoch: response.member_epoch as i64,
            heartbeat_interval_ms: u32::try_from(response.heartbeat_interval_ms)
                .unwrap_or(u32::MAX),
            assigned: to_wire(&response.assigned),
            revoking: to_wire(&response.revoking),
            session_timeout_ms: u32::try_from(self.limits.session_timeout_ms).unwrap_or(u32::MAX),
        })
    }

    async fn commit_inner(&self, req: CommitOffsetsRequest) -> Result<(), Error> {
        let shard = self.shard_for(&req.group).await?;
        let view = self.partitions().view();
        let mut offsets = Vec::with_capacity(req.offsets.len());
        let now = now_ms();
        for o in &req.offsets {
            if o.offset < 0 {
                return Err(Error::new(
                    Reason::InvalidArgument,
                    format!(
                        "offset {} for {}/{}: offsets are >= 0",
                        o.offset, o.topic, o.partition
                    ),
                ));
            }
            let topic = view.topic(&o.topic).ok_or_else(|| {
                Error::new(
                    Reason::UnknownTopic,
                    format!("topic {} does not exist", o.topic),
                )
            })?;
            if o.partition as usize >= topic.partitions.len() {
                return Err(Error::new(
                    Reason::UnknownPartition,
                    format!("{}/{} does not exist", o.topic, o.partition),
                ));
            }
            offsets.push((
                Tp::new(o.topic.clone(), o.partition),
                Committed {
                    offset: o.offset,
                    metadata: o.metadata.clone(),
                    commit_ms: now,
                },
            ));
        }
        {
            let mut slot = shard.groups.lock().await;
            self.writable(&shard)?;
            let groups = self.loaded(&shard, &mut slot).await?;
            let fresh = !groups.contains_key(&req.group);
            let group = match groups.get_mut(&req.group) {
                Some(g) => g,
                None if req.member_id.is_empty() => groups
                    .entry(req.group.clone())
                    .or_insert_with(|| Group::new(req.group.clone(), now)),
                None => {
                    return Err(group_error(GroupError::UnknownMember(req.member_id)));
                }
            };
            if let Err(e) = group.check_commit(
                &req.member_id,
                req.member_epoch,
                offsets.iter().map(|(tp, _)| tp),
            ) {
                if fresh {
                    groups.remove(&req.group);
                }
                return Err(group_error(e));
            }
            let records: Vec<Record> = offsets
                .iter()
                .map(|(tp, c)| Record::Offset {
                    group: req.group.clone(),
                    tp: tp.clone(),
                    value: Some(c.clone()),
                })
                .collect();
            group.commit(offsets);
            self.write(&shard, &mut slot, &records).await?;
        }
        self.settled(&shard).await
    }

    pub async fn fetch_offsets(
        &self,
        req: FetchOffsetsRequest,
    ) -> Result<Vec<CommittedOffset>, Error> {
        let shard = self.shard_for(&req.group).await?;
        let out = {
            let mut slot = shard.groups.lock().await;
            let groups = self.loaded(&shard, &mut slot).await?;
            let wanted = from_wire(&req.partitions);
            groups.get(&req.group).map_or_else(Vec::new, |g| {
                g.offsets
                    .iter()
                    .filter(|(tp, _)| wanted.is_empty() || wanted.contains(*tp))
                    .map(|(tp, c)| committed_to_wire(tp, c))
                    .collect()
            })
        };
        self.settled(&shard).await?;
        Ok(out)
    }

    pub async fn describe(&self, req: DescribeGroupRequest) -> Result<GroupDescription, Error> {
        let shard = self.shard_for(&req.group).await?;
        let out = {
            let mut slot = shard.groups.lock().await;
            let groups = self.loaded(&shard, &mut slot).await?;
            match groups.get(&req.group) {
                Some(g) => describe(g),
                None => GroupDescription {
                    group: req.group.clone(),
                    state: "dead".into(),
                    ..GroupDescription::default()
                },
            }
        };
        self.settled(&shard).await?;
        Ok(out)
    }

    async fn delete_inner(&self, req: DeleteGroupRequest) -> Result<(), Error> {
        let shard = self.shard_for(&req.group).await?;
        {
            let mut slot = shard.groups.lock().await;
            self.writable(&shard)?;
            let groups = self.loaded(&shard, &mut slot).await?;
            let group = groups.get(&req.group).ok_or_else(|| {
                Error::new(
                    Reason::UnknownGroup,
                    format!("group {} does not exist", req.group),
                )
            })?;
            if !group.members.is_empty() {
                return Err(group_error(GroupError::NotEmpty {
                    group: req.group.clone(),
                    members: group.members.len(),
                }));
            }
            let records = tombstones(group);
            groups.remove(&req.group);
            self.write(&shard, &mut slot, &records).await?;
        }
        self.settled(&shard).await
    }

    /// The groups of every `__groups` partition this node leads.
    pub async fn list(&self) -> Result<Vec<GroupListing>, Error> {
        let mut out = Vec::new();
        for partition in self.led_partitions() {
            let shard = match self.shard(partition).await {
                Ok(s) => s,
                // Moved meanwhile: its new leader lists it.
                Err(e) if e.reason == Reason::NotLeader => continue,
                Err(e) => return Err(e),
            };
            {
                let mut slot = shard.groups.lock().await;
                let groups = self.loaded(&shard, &mut slot).await?;
                out.extend(groups.values().map(|g| GroupListing {
                    group: g.id.clone(),
                    state: g.state().name().into(),
                    members: g.members.len() as u32,
                }));
            }
            self.settled(&shard).await?;
        }
        out.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(out)
    }

    /// The `__groups` partitions the metadata says this node leads.
    fn led_partitions(&self) -> Vec<u32> {
        let view = self.partitions().view();
        let me = self.partitions().node_id();
        view.topic(TOPIC).map_or_else(Vec::new, |t| {
            t.partitions
                .iter()
                .filter(|p| p.leader == me)
                .map(|p| p.partition)
                .collect()
        })
    }

    /// Runs until the node stops: every [`TICK`], each shard led here is
    /// loaded (so members' sessions run and empty groups expire even when
    /// no one calls), members whose session or rebalance timeout ran out
    /// are removed, groups follow topic changes, empty groups past the
    /// retention are deleted, and shards no longer led are dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let led = self.led_partitions();
            self.shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p, s| led.contains(p) && s.replica.is_leader());
            for partition in led {
                let Ok(shard) = self.shard(partition).await else {
                    continue;
                };
                if let Err(e) = self.tick_shard(&shard).await {
                    tracing::debug!(partition, error = %e, "groups tick");
                }
            }
        }
    }

    async fn tick_shard(&self, shard: &Shard) -> Result<(), Error> {
        let mut slot = shard.groups.lock().await;
        self.writable(shard)?;
        let groups = self.loaded(shard, &mut slot).await?;
        let now = now_ms();
        let view = self.partitions().view();
        let topics_changed = shard
            .seen_version
            .swap(view.version as i64, Ordering::AcqRel)
            != view.version as i64;
        let retention = self.retention.as_millis() as u64;
        let mut records = Vec::new();
        let mut expired = Vec::new();
        for g in groups.values_mut() {
            for member in g.tick(now) {
                tracing::info!(group = %g.id, member = %member, "group member removed: session or rebalance timeout");
            }
            if topics_changed {
                g.on_metadata(&ViewTopics(&view));
                for tp in g.forget_missing(&ViewTopics(&view)) {
                    records.push(Record::Offset {
                        group: g.id.clone(),
                        tp,
                        value: None,
                    });
                }
            }
            if g.members.is_empty()
                && g.empty_since_ms
                    .is_some_and(|t| now.saturating_sub(t) >= retention)
            {
                expired.push(g.id.clone());
                continue;
            }
            if g.take_dirty() {
                records.push(Record::group(g));
            }
        }
        for id in expired {
            if let Some(g) = groups.remove(&id) {
                tracing::info!(group = %id, "empty group expired");
                records.extend(tombstones(&g));
            }
        }
        let written = self.write(shard, &mut slot, &records).await;
        if written.is_err() {
            // The groups are loaded again: they follow the topics again too.
            shard.seen_version.store(-1, Ordering::Release);
        }
        written
    }
}

/// Records deleting a group and its offsets.
fn tombstones(g: &Group) -> Vec<Record> {
    g.offsets
        .keys()
        .map(|tp| Record::Offset {
            group: g.id.clone(),
            tp: tp.clone(),
            value: None,
        })
        .chain(std::iter::once(Record::Group {
            group: g.id.clone(),
            value: None,
        }))
        .collect()
}

fn describe(g: &Group) -> GroupDescription {
    GroupDescription {
        group: g.id.clone(),
        state: g.state().name().into(),
        group_epoch: g.epoch as i64,
        target_epoch: g.target_epoch as i64,
        assignor: g.assignor().name().into(),
        members: g
            .members
            .values()
            .map(|m| GroupMember {
                member_id: m.id.clone(),
                member_epoch: m.epoch as i64,
                state: g.member_state(&m.id).map_or("", |s| s.name()).to_string(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                topics: m.topics.iter().cloned().collect(),
                topic_pattern: m.subscription.pattern().unwrap_or_default().to_string(),
                assigned: to_wire(&m.assigned),
                revoking: to_wire(&m.revoking),
            })
            .collect(),
        offsets: g
            .offsets
            .iter()
            .map(|(tp, c)| committed_to_wire(tp, c))
            .collect(),
    }
}

/// Reads a `__groups` partition's whole log into its groups. Returns them
/// and the log end offset read to. A record that cannot be decoded is
/// logged and skipped: one bad record must not make every group of the
/// partition unusable.
fn load(
    replica: &Replica,
    limits: &Limits,
) -> Result<(HashMap<String, Group>, i64), streambus_log::LogError> {
    let mut loader = Loader::default();
    let end = replica.log.end_offset();
    let mut offset = replica.log.log_start_offset();
    while offset < end {
        let read = replica.log.read(offset, 1 << 20, Some(end))?;
        if read.data.is_empty() {
            break;
        }
        for batch in BatchIter::new(&read.data) {
            let Ok((_, bytes)) = batch else { break };
            let records = match decode_records(bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable batch in the groups topic; skipped");
                    continue;
                }
            };
            for r in records.into_iter().filter(|r| r.offset >= offset) {
                let Some(key) = r.key else { continue };
                match Record::decode(&key, r.value.as_deref()) {
                    Ok(record) => {
                        if let Err(e) = loader.apply(record) {
                            tracing::error!(offset = r.offset, error = %e, "bad groups record; skipped");
                        }
                    }
                    Err(e) => {
                        tracing::error!(offset = r.offset, error = %e, "bad groups record; skipped")
                    }
                }
            }
        }
        offset = read.next_offset;
    }
    let groups = loader.finish(now_ms(), limits);
    Ok((groups, end))
}
