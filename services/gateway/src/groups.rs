//! The public GroupService: group calls are routed to the group's
//! coordinator (the storage node leading the group's partition of the
//! `__groups` topic, which this gateway creates on first use), and
//! `ConsumeGroup` runs a member for a client over one stream.
//!
//! A `ConsumeGroup` stream is one member. The gateway heartbeats for it
//! every heartbeat interval while the client shows it is alive (it sends
//! a request at least that often; a client that stops, paused or cut off,
//! is left to its session timeout), starts a partition reader
//! (`ConsumeApi::follow_partition`, the same as `Subscribe`) for each
//! partition assigned, from its committed offset, and stops it as soon as
//! the partition is to be revoked. Revoked partitions stay owned until the
//! client releases them (having committed), so another member only reads
//! them from the committed offset. The stream ends, without leaving the
//! group, when the client goes away or the gateway drains: the client
//! resumes (here or at another gateway) with its member id and epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use streambus_group::store::partition_for;
use streambus_group::wire::{from_wire as tp_set, to_wire as tp_list};
use streambus_group::{TopicPattern, Tp};
use streambus_proto::internal::storage_service_client::StorageServiceClient;
use streambus_proto::internal::{ListOffsetsRequest, PartitionRef, list_offsets_request};
use streambus_proto::v1::group_service_server::GroupService;
use streambus_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, ConsumeGroupRequest, ConsumeGroupResponse,
    CreateTopicRequest, DeleteGroupRequest, DeleteGroupResponse, DescribeGroupRequest,
    DescribeGroupResponse, Empty, FetchOffsetsRequest, FetchOffsetsResponse, GroupAssignment,
    GroupCommitResult, GroupDescription, GroupHeartbeatRequest, GroupHeartbeatResponse,
    GroupRecords, JoinGroup, ListGroupsRequest, ListGroupsResponse, OffsetCommit, OffsetReset,
    PartitionLag, ResetOffsetsRequest, ResetOffsetsResponse, StartPosition, SubscribeRequest,
    consume_group_request, consume_group_response, reset_offsets_request, start_position,
};
use streambus_proto::{Error, Reason};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Principal, principal_of};
use crate::consume::{Accounted, ConsumeApi, Delivery, Demand, Sent, draining_error};
use crate::metrics::{GroupPartitionLabels, Metrics};
use crate::router::{self, CallPolicy};
use streambus_acl::{Operation, ResourceType};

pub use streambus_group::TOPIC;

/// How long a group call may retry through coordinator moves.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one heartbeat of a stream may retry: it must not hold the
/// stream's records back for long.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `ConsumeGroup` waits for its `join`.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// Messages waiting for a client before its requests are no longer read
/// (a client that sends but does not read cannot grow them without bound).
const OUTBOX_LIMIT: usize = 64;
/// Batch timestamps kept per partition for the lag in time.
const MAX_STAMPS: usize = 4096;
/// Partition lookups a `DescribeGroup` or `ResetOffsets` keeps in flight.
const LOOKUPS: usize = 32;

/// Implements `streambus.v1.GroupService`.
#[derive(Clone)]
pub struct GroupApi {
    pub(crate) consume: ConsumeApi,
    pub(crate) metrics: Metrics,
    /// Partitions of the `__groups` topic when this gateway creates it.
    pub(crate) topic_partitions: u32,
    /// Its replication factor (at most the live storage nodes).
    pub(crate) topic_replication: u32,
    /// One creation of the topic at a time.
    pub(crate) creating: Arc<tokio::sync::Mutex<()>>,
}

impl GroupApi {
    /// Whether `principal` may describe `topic`.
    /// A subscription pattern this gateway resolves itself, because it
    /// enforces ACLs (otherwise the coordinator resolves patterns):
    /// `None` without a pattern or without ACLs.
    fn own_pattern(&self, pattern: &str, topics: &[String]) -> Result<Option<TopicPattern>, Error> {
        if pattern.is_empty() || !self.consume.authz.enabled() {
            return Ok(None);
        }
        if !topics.is_empty() {
            return Err(invalid("a subscription is topics or a pattern, not both"));
        }
        TopicPattern::parse(pattern).map(Some).map_err(invalid)
    }

    /// The topics matching `pattern` that `principal` may read, by name,
    /// and the metadata version they were taken from (ACLs are part of
    /// the metadata): a member is assigned only topics it may read, and
    /// learns no other topic's name.
    fn resolve_pattern(&self, principal: &Principal, pattern: &TopicPattern) -> (Vec<String>, u64) {
        let view = self.consume.router.metadata().current();
        let topics = view
            .topics
            .keys()
            .filter(|t| {
                pattern.matches(t)
                    && self.consume.authz.allowed(
                        principal,
                        Operation::Read,
                        ResourceType::Topic,
                        t,
                    )
            })
            .cloned()
            .collect();
        (topics, view.version)
    }

    fn may_describe(&self, principal: &Principal, topic: &str) -> bool {
        self.consume
            .authz
            .allowed(principal, Operation::Describe, ResourceType::Topic, topic)
    }

    /// Whether `principal` may do `operation` to `group`, and the same to
    /// each of `topics` (read and describe are what groups do to topics).
    fn may<'a>(
        &self,
        principal: &Principal,
        operation: Operation,
        group: &str,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let authz = &self.consume.authz;
        if !authz.enabled() {
            return Ok(());
        }
        authz.check(principal, operation, ResourceType::Group, group)?;
        for topic in topics {
            if !topic.is_empty() {
                authz.check(principal, operation, ResourceType::Topic, topic)?;
            }
        }
        Ok(())
    }
}

fn pref(tp: &Tp) -> Option<PartitionRef> {
    Some(PartitionRef {
        topic: tp.topic.clone(),
        partition: tp.partition,
    })
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Reason::InvalidArgument, message)
}

/// A random member id: 128 bits, hex.
fn new_member_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl GroupApi {
    fn router(&self) -> &crate::router::Router {
        &self.consume.router
    }

    /// The `__groups` topic's partition count, creating the topic when it
    /// does not exist yet (with `create`).
    async fn groups_partitions(&self, create: bool) -> Result<Option<u32>, Error> {
        let metadata = self.router().metadata();
        if let Some(t) = metadata.current().topic(TOPIC) {
            return Ok(Some(t.partitions.len() as u32));
        }
        let _one = self.creating.lock().await;
        let md = metadata.refresh().await?;
        if let Some(t) = md.topic(TOPIC) {
            return Ok(Some(t.partitions.len() as u32));
        }
        if !create {
            return Ok(None);
        }
        let live = md
            .nodes
            .iter()
            .filter(|n| n.alive && !n.decommissioning)
            .count() as u32;
        let replication_factor = self.topic_replication.min(live).max(1);
        let min_insync = if replication_factor >= 3 { "2" } else { "1" };
        let created = metadata
            .controller()
            .create_topic(CreateTopicRequest {
                name: TOPIC.into(),
                partitions: self.topic_partitions,
                replication_factor,
                configs: [
                    ("cleanup.policy", "compact"),
                    ("segment.bytes", "104857600"),
                    ("min.insync.replicas", min_insync),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            })
            .await;
        match created {
            Ok(_) => tracing::info!(
                partitions = self.topic_partitions,
                replication_factor,
                "created the {TOPIC} topic"
            ),
            Err(e) if e.reason == Reason::TopicAlreadyExists => {}
            Err(e) => return Err(e),
        }
        metadata.settle(|md| md.topic(TOPIC).is_some()).await;
        let md = metadata.current();
        Ok(md.topic(TOPIC).map(|t| t.partitions.len() as u32))
    }

    /// Runs `call` on the coordinator of `group`, through its moves.
    async fn on_coordinator<T, F, Fut>(
        &self,
        method: &'static str,
        group: &str,
        timeout: Duration,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(StorageServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        if group.is_empty() {
            return Err(invalid("group is required"));
        }
        let count = self.groups_partitions(true).await?.ok_or_else(|| {
            Error::new(
                Reason::Unavailable,
                format!("the {TOPIC} topic could not be created"),
            )
        })?;
        let deadline = Instant::now() + timeout;
        // Group calls are safe to repeat: a commit writes the same
        // offsets, a heartbeat states where the member is.
        self.router()
            .call(
                TOPIC,
                partition_for(group, count),
                CallPolicy::read(method, deadline),
                |c, t, _| call(c, t),
            )
            .await
    }

    async fn heartbeat(
        &self,
        req: GroupHeartbeatRequest,
        timeout: Duration,
    ) -> Result<GroupHeartbeatResponse, Error> {
        let group = req.group.clone();
        self.on_coordinator("GroupHeartbeat", &group, timeout, |mut c, t| {
            let req = req.clone();
            async move { c.group_heartbeat(router::request(req, t)).await }
        })
        .await
    }

    /// Checks that a commit's partitions exist in this gateway's view, so
    /// a commit naming a missing one is refused at once.
    async fn check_partitions(&self, offsets: &[OffsetCommit]) -> Result<(), Error> {
        for o in offsets {
            let t = self.router().metadata().topic(&o.topic).await?;
            if o.partition as usize >= t.partitions.len() {
                return Err(crate::metadata::unknown_partition(
                    &o.topic,
                    o.partition,
                    t.partitions.len(),
                ));
            }
            if o.offset < 0 {
                return Err(invalid(format!(
                    "offset {} for {}/{}: offsets are >= 0",
                    o.offset, o.topic, o.partition
                )));
            }
        }
        Ok(())
    }

    async fn commit(&self, req: CommitOffsetsRequest) -> Result<(), Error> {
        self.check_partitions(&req.offsets).await?;
        let group = req.group.clone();
        self.on_coordinator("CommitOffsets", &group, CALL_TIMEOUT, |mut c, t| {
            let req = req.clone();
            async move { c.commit_offsets(router::request(req, t)).await }
        })
        .await?;
        self.metrics.group_commits.inc();
        Ok(())
    }

    async fn fetch_offsets(&self, req: FetchOffsetsRequest) -> Result<FetchOffsetsResponse, Error> {
        let group = req.group.clone();
        self.on_coordinator("FetchOffsets", &group, CALL_TIMEOUT, |mut c, t| {
            let req = req.clone();
            async move { c.fetch_offsets(router::request(req, t)).await }
        })
        .await
    }

    async fn describe_raw(&self, group: &str) -> Result<GroupDescription, Error> {
        let req = DescribeGroupRequest {
            group: group.to_string(),
        };
        self.on_coordinator("DescribeGroup", group, CALL_TIMEOUT, |mut c, t| {
            let req = req.clone();
            async move { c.describe_group(router::request(req, t)).await }
        })
        .await
    }

    /// A partition's log start and high watermark, or the offset for a
    /// query.
    async fn list_offsets(
        &self,
        tp: &Tp,
        query: list_offsets_request::Query,
    ) -> Result<streambus_proto::internal::ListOffsetsResponse, Error> {
        let request = ListOffsetsRequest {
            partition: pref(tp),
            query: Some(query),
        };
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.router()
            .call(
                &tp.topic,
                tp.partition,
                CallPolicy::read("ListOffsets", deadline),
                |mut c, t, _| {
                    let request = request.clone();
                    async move { c.list_offsets(router::request(request, t)).await }
                },
            )
            .await
    }

    /// How long ago the record at `offset` was produced, by its timestamp.
    async fn age_of(&self, tp: &Tp, offset: i64) -> Option<i64> {
        let resp = self
            .consume
            .fetch_once(&tp.topic, tp.partition, offset, 1, Duration::ZERO, false)
            .await
            .ok()?;
        let (_, batch) = streambus_record::BatchIter::new(&resp.batches)
            .next()?
            .ok()?;
        let records = streambus_record::decode_records(batch).ok()?;
        let r = records.into_iter().find(|r| r.offset >= offset)?;
        (r.timestamp_ms >= 0).then(|| (now_ms() - r.timestamp_ms).max(0))
    }

    async fn describe(&self, group: &str) -> Result<DescribeGroupResponse, Error> {
        let g = self.describe_raw(group).await?;
        let md = self.router().metadata().current();
        // Every partition of the subscribed topics, and every partition
        // with a committed offset: (owner, committed).
        let mut parts: BTreeMap<Tp, (String, i64)> = BTreeMap::new();
        for m in &g.members {
            for t in &m.topics {
                if let Some(topic) = md.topic(t) {
                    for p in 0..topic.partitions.len() as u32 {
                        parts
                            .entry(Tp::new(t.clone(), p))
                            .or_insert((String::new(), -1));
                    }
                }
            }
        }
        for m in &g.members {
            for tp in tp_set(&m.assigned).into_iter().chain(tp_set(&m.revoking)) {
                parts.entry(tp).or_insert((String::new(), -1)).0 = m.member_id.clone();
            }
        }
        for o in &g.offsets {
            parts
                .entry(Tp::new(o.topic.clone(), o.partition))
                .or_insert((String::new(), -1))
                .1 = o.offset;
        }
        let lookups = parts
            .into_iter()
            .map(|(tp, (member_id, committed))| async move {
                let offsets = self
                    .list_offsets(&tp, list_offsets_request::Query::Latest(true))
                    .await;
                let (end, lag, lag_ms) = match offsets {
                    Ok(o) => {
                        let from = if committed < 0 {
                            o.log_start_offset
                        } else {
                            committed
                        };
                        let lag = (o.high_watermark - from).max(0);
                        let lag_ms = if lag == 0 {
                            0
                        } else {
                            self.age_of(&tp, from.max(o.log_start_offset))
                                .await
                                .unwrap_or(-1)
                        };
                        (o.high_watermark, lag, lag_ms)
                    }
                    // A deleted topic's offsets, until the coordinator drops
                    // them: nothing to measure against.
                    Err(_) => (-1, -1, -1),
                };
                PartitionLag {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    member_id,
                    committed_offset: committed,
                    end_offset: end,
                    lag,
                    lag_ms,
                }
            });
        let partitions: Vec<PartitionLag> = futures::stream::iter(lookups)
            .buffered(LOOKUPS)
            .collect()
            .await;
        let total_lag = partitions.iter().map(|p| p.lag.max(0)).sum();
        Ok(DescribeGroupResponse {
            group: Some(g),
            partitions,
            total_lag,
        })
    }

    async fn list(&self) -> Result<ListGroupsResponse, Error> {
        if self.groups_partitions(false).await?.is_none() {
            return Ok(ListGroupsResponse::default());
        }
        let md = self.router().metadata().current();
        let Some(topic) = md.topic(TOPIC) else {
            return Ok(ListGroupsResponse::default());
        };
        let leaders: BTreeSet<u64> = topic.partitions.iter().map(|p| p.leader).collect();
        let mut groups: BTreeMap<String, streambus_proto::v1::GroupListing> = BTreeMap::new();
        for id in leaders {
            let node = md.node(id).ok_or_else(|| {
                Error::new(
                    Reason::Unavailable,
                    format!("a {TOPIC} partition has no live leader"),
                )
            })?;
            let mut client = self.router().client(&node.address)?;
            let listed = tokio::time::timeout(
                CALL_TIMEOUT,
                client.list_groups(router::request(ListGroupsRequest {}, CALL_TIMEOUT)),
            )
            .await
            .map_err(|_| {
                Error::new(
                    Reason::Timeout,
                    format!("storage node {} did not list its groups", node.address),
                )
            })?
            .map_err(|s| Error::from_status(&s))?;
            for g in listed.into_inner().groups {
                groups.insert(g.group.clone(), g);
            }
        }
        Ok(ListGroupsResponse {
            groups: groups.into_values().collect(),
        })
    }

    async fn reset(&self, req: ResetOffsetsRequest) -> Result<ResetOffsetsResponse, Error> {
        let to = req
            .to
            .ok_or_else(|| invalid("say where to: earliest, latest, timestamp, offset or shift"))?;
        let topic = self.router().metadata().topic(&req.topic).await?;
        let count = topic.partitions.len() as u32;
        let partitions: Vec<u32> = if req.partitions.is_empty() {
            (0..count).collect()
        } else {
            req.partitions.clone()
        };
        if let Some(&p) = partitions.iter().find(|&&p| p >= count) {
            return Err(crate::metadata::unknown_partition(
                &req.topic,
                p,
                count as usize,
            ));
        }
        let g = self.describe_raw(&req.group).await?;
        if !g.members.is_empty() {
            return Err(Error::new(
                Reason::GroupNotEmpty,
                format!(
                    "group {} has {} live member(s): offsets are reset only while it has none (stop its consumers first)",
                    req.group,
                    g.members.len()
                ),
            ));
        }
        let current: HashMap<u32, i64> = g
            .offsets
            .iter()
            .filter(|o| o.topic == req.topic)
            .map(|o| (o.partition, o.offset))
            .collect();
        let plans = partitions.into_iter().map(|p| {
            let tp = Tp::new(req.topic.clone(), p);
            let current = current.get(&p).copied().unwrap_or(-1);
            async move {
                let o = self
                    .list_offsets(&tp, list_offsets_request::Query::Latest(true))
                    .await?;
                let (start, end) = (o.log_start_offset, o.high_watermark);
                let wanted = match to {
                    reset_offsets_request::To::Earliest(_) => start,
                    reset_offsets_request::To::Latest(_) => end,
                    reset_offsets_request::To::Offset(n) => n,
                    reset_offsets_request::To::ShiftBy(n) => {
                        (if current < 0 { start } else { current }).saturating_add(n)
                    }
                    reset_offsets_request::To::TimestampMs(ts) => {
                        let found = self
                            .list_offsets(&tp, list_offsets_request::Query::TimestampMs(ts))
                            .await?;
                        if found.offset < 0 { end } else { found.offset }
                    }
                };
                Ok::<_, Error>(OffsetReset {
                    topic: tp.topic.clone(),
                    partition: p,
                    current_offset: current,
                    new_offset: wanted.clamp(start, end.max(start)),
                })
            }
        });
        let plan: Vec<OffsetReset> = futures::stream::iter(plans)
            .buffered(LOOKUPS)
            .try_collect()
            .await?;
        if req.execute {
            self.commit(CommitOffsetsRequest {
                group: req.group.clone(),
                member_id: String::new(),
                member_epoch: -1,
                offsets: plan
                    .iter()
                    .map(|r| OffsetCommit {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        offset: r.new_offset,
                        metadata: String::new(),
                    })
                    .collect(),
            })
            .await?;
            tracing::info!(group = %req.group, topic = %req.topic, partitions = plan.len(), "group offsets reset");
        }
        Ok(ResetOffsetsResponse {
            plan,
            executed: req.execute,
        })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The response stream of `ConsumeGroup`.
pub type ConsumeGroupResponses =
    Pin<Box<dyn Stream<Item = Result<ConsumeGroupResponse, Status>> + Send + 'static>>;

/// What ends a member's stream.
enum End {
    /// The client went away or the gateway drains: the member stays in
    /// the group until its session ends (it may resume).
    Quiet,
    /// The member left.
    Left,
    /// An error for the client.
    Error(Error),
}

/// One `ConsumeGroup` stream: a member of its group.
/// A member's pattern resolved at this gateway: the topics last sent for
/// it, and the metadata version they were resolved at.
struct OwnPattern {
    pattern: TopicPattern,
    sent: Vec<String>,
    version: u64,
}

struct Member {
    api: GroupApi,
    /// Who joined: every partition reader checks its reads as them.
    principal: Principal,
    join: JoinGroup,
    /// Its subscription pattern when this gateway resolves it (under
    /// ACLs).
    pattern: Option<OwnPattern>,
    member_id: String,
    epoch: i64,
    interval: Duration,
    session_timeout: Duration,
    /// What the coordinator assigned.
    assigned: BTreeSet<Tp>,
    /// What it asked to be released and the client has not released.
    revoking: BTreeSet<Tp>,
    /// Released by the client, until the coordinator no longer lists them.
    released: BTreeSet<Tp>,
    /// Partition readers, by partition.
    readers: HashMap<Tp, tokio::task::JoinHandle<()>>,
    /// What each reader sends; removing a partition drops what it sent
    /// and the client has not been given.
    inbound: tokio_stream::StreamMap<Tp, tokio_stream::wrappers::ReceiverStream<Delivery>>,
    demand: Arc<Demand>,
    /// Each owned partition's high watermark, as last fetched.
    high_watermarks: HashMap<Tp, i64>,
    /// Where each reader's next response starts (its start, then the last
    /// response's next offset); -1 when the reader resolved its start.
    fetch_offsets: HashMap<Tp, i64>,
    /// Each owned partition's delivered batches: first offset -> first
    /// timestamp (for the lag in time).
    stamps: HashMap<Tp, BTreeMap<i64, i64>>,
    /// The next offsets the client reported processed.
    positions: HashMap<Tp, i64>,
    /// The offsets known committed.
    committed: HashMap<Tp, i64>,
    last_heard: Instant,
    /// Messages for the client, sent as its stream has room.
    outbox: VecDeque<Sent<ConsumeGroupResponse>>,
    /// Silent for a session: nothing is read for it (see `suspend`).
    suspended: bool,
    /// When a heartbeat last succeeded.
    last_beat: Instant,
}

impl Member {
    fn owned(&self) -> BTreeSet<Tp> {
        self.assigned
            .iter()
            .chain(self.revoking.difference(&self.released))
            .cloned()
            .collect()
    }

    fn heartbeat_request(&self) -> GroupHeartbeatRequest {
        GroupHeartbeatRequest {
            group: self.join.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            owned: tp_list(&self.owned()),
            report_owned: true,
            ..GroupHeartbeatRequest::default()
        }
    }

    /// The topics its pattern names now, when this gateway resolves it and
    /// they changed (topics created or deleted, ACLs changed).
    fn pattern_changed(&mut self) -> Option<Vec<String>> {
        let own = self.pattern.as_mut()?;
        if self.api.consume.router.metadata().current().version == own.version {
            return None;
        }
        let (now, version) = self.api.resolve_pattern(&self.principal, &own.pattern);
        if now == own.sent {
            own.version = version;
            return None;
        }
        Some(now)
    }

    /// Applies a heartbeat's answer: readers start and stop, and the client
    /// hears of any change.
    async fn apply(&mut self, resp: GroupHeartbeatResponse) -> Result<(), Error> {
        let assigned = tp_set(&resp.assigned);
        let revoking = tp_set(&resp.revoking);
        self.interval = Duration::from_millis(u64::from(resp.heartbeat_interval_ms.max(10)));
        if resp.session_timeout_ms > 0 {
            self.session_timeout = Duration::from_millis(u64::from(resp.session_timeout_ms));
        }
        self.released.retain(|tp| revoking.contains(tp));
        let changed = resp.member_epoch != self.epoch
            || assigned != self.assigned
            || revoking != self.revoking;
        self.epoch = resp.member_epoch;
        // Stop reading what is no longer assigned, at once.
        let gone: Vec<Tp> = self
            .readers
            .keys()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        for tp in gone {
            self.stop(&tp);
        }
        let owned: BTreeSet<Tp> = assigned.union(&revoking).cloned().collect();
        self.positions.retain(|tp, _| owned.contains(tp));
        let lost: Vec<Tp> = self
            .high_watermarks
            .keys()
            .filter(|tp| !owned.contains(*tp))
            .cloned()
            .collect();
        for tp in lost {
            self.high_watermarks.remove(&tp);
            self.stamps.remove(&tp);
            self.api.metrics.forget_lag(&self.lag_labels(&tp));
        }
        let new: Vec<Tp> = assigned
            .iter()
            .filter(|tp| !self.readers.contains_key(*tp))
            .cloned()
            .collect();
        self.assigned = assigned;
        self.revoking = revoking;
        if !new.is_empty() {
            self.start(new).await?;
        }
        if changed {
            self.outbox.push_back((
                Ok(ConsumeGroupResponse {
                    response: Some(consume_group_response::Response::Assignment(
                        GroupAssignment {
                            member_id: self.member_id.clone(),
                            member_epoch: self.epoch,
                            heartbeat_interval_ms: self.interval.as_millis() as u32,
                            assigned: tp_list(&self.assigned),
                            revoking: tp_list(
                                &self.revoking.difference(&self.released).cloned().collect(),
                            ),
                        },
                    )),
                }),
                None,
            ));
        }
        Ok(())
    }

    /// Starts readers for newly assigned partitions: from the client's
    /// position (a resumed member), else the committed offset, else where
    /// `auto_offset_reset` says.
    async fn start(&mut self, partitions: Vec<Tp>) -> Result<(), Error> {
        let unknown: Vec<Tp> = partitions
            .iter()
            .filter(|tp| !self.positions.contains_key(*tp))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let fetched = self
                .api
                .fetch_offsets(FetchOffsetsRequest {
                    group: self.join.group.clone(),
                    partitions: tp_list(&unknown.iter().cloned().collect()),
                })
                .await?;
            for o in fetched.offsets {
                self.committed
                    .insert(Tp::new(o.topic, o.partition), o.offset);
            }
        }
        for tp in partitions {
            let mut from = self
                .positions
                .get(&tp)
                .or_else(|| self.committed.get(&tp))
                .copied();
            if from.is_none() {
                // Where `auto_offset_reset` says, resolved now and kept as
                // the position: committed like one, so the partition's next
                // owner starts here too, not at a later "latest".
                let start = Some(self.start_position());
                match self
                    .api
                    .consume
                    .resolve_start(&tp.topic, tp.partition, &start)
                    .await
                {
                    Ok(offset) => {
                        self.positions.insert(tp.clone(), offset);
                        from = Some(offset);
                    }
                    Err(e) => {
                        tracing::debug!(partition = %tp, error = %e, "start offset not resolved; the reader resolves it");
                    }
                }
            }
            self.spawn_reader(tp, from);
        }
        Ok(())
    }

    /// Where a partition without a committed offset starts.
    fn start_position(&self) -> StartPosition {
        StartPosition {
            position: Some(match self.join.auto_offset_reset.as_str() {
                "earliest" => start_position::Position::Earliest(Empty {}),
                _ => start_position::Position::Latest(Empty {}),
            }),
        }
    }

    fn spawn_reader(&mut self, tp: Tp, from: Option<i64>) {
        self.fetch_offsets.insert(tp.clone(), from.unwrap_or(-1));
        let req = SubscribeRequest {
            topic: tp.topic.clone(),
            partition: Some(tp.partition),
            start: Some(self.start_position()),
            max_bytes: self.join.max_bytes,
            max_wait_ms: self.join.max_wait_ms,
            encoded: self.join.encoded,
            resume_offsets: from.map(|o| (tp.partition, o)).into_iter().collect(),
        };
        let (tx, rx) = mpsc::channel(self.api.consume.buffer.max(1));
        self.inbound
            .insert(tp.clone(), tokio_stream::wrappers::ReceiverStream::new(rx));
        let reader = self.api.consume.clone().follow_partition(
            req,
            self.principal.clone(),
            tp.partition,
            false,
            self.demand.clone(),
            tx,
        );
        self.readers.insert(tp, tokio::spawn(reader));
    }

    /// Stops reading a partition; what its reader sent and the client was
    /// not given is dropped.
    fn stop(&mut self, tp: &Tp) {
        if let Some(h) = self.readers.remove(tp) {
            h.abort();
        }
        self.inbound.remove(tp);
        self.fetch_offsets.remove(tp);
    }

    fn lag_labels(&self, tp: &Tp) -> GroupPartitionLabels {
        GroupPartitionLabels {
            group: self.join.group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
    }

    /// Sets the lag gauge of a partition: records between its committed
    /// offset and its high watermark.
    fn observe_lag(&mut self, tp: &Tp) {
        let Some(&hw) = self.high_watermarks.get(tp) else {
            return;
        };
        let committed = self.committed.get(tp).copied().unwrap_or(0);
        let lag = (hw - committed).max(0);
        let labels = self.lag_labels(tp);
        self.api.metrics.group_lag.get_or_create(&labels).set(lag);
        let stamps = self.stamps.entry(tp.clone()).or_default();
        // The batch holding the first uncommitted record: the last one
        // starting at or before it (else the first after it).
        let stamp = stamps
            .range(..=committed)
            .next_back()
            .or_else(|| stamps.range(committed..).next())
            .map(|(&offset, &ts)| (offset, ts));
        if let Some((offset, _)) = stamp {
            // Older batches are behind the commit for good.
            *stamps = stamps.split_off(&offset);
        }
        let seconds = match stamp {
            _ if lag == 0 => Some(0.0),
            Some((_, ts)) if ts >= 0 => Some(((now_ms() - ts).max(0)) as f64 / 1000.0),
            _ => None,
        };
        if let Some(seconds) = seconds {
            self.api
                .metrics
                .group_lag_seconds
                .get_or_create(&labels)
                .set(seconds);
        }
    }

    /// Notes the first offset and timestamp of each batch delivered, for
    /// the lag in time.
    fn stamp(&mut self, tp: &Tp, r: &streambus_proto::v1::SubscribeResponse) {
        let stamps = self.stamps.entry(tp.clone()).or_default();
        for (header, _) in streambus_record::BatchIter::new(&r.encoded_batches).flatten() {
            if !header.is_control() {
                stamps.insert(header.base_offset, header.first_timestamp);
            }
        }
        if let Some(first) = r.records.first() {
            stamps.insert(first.offset, first.timestamp_ms);
        }
        // Bounded: a member far behind keeps the oldest (the ones its lag
        // is measured from) and drops the newest.
        while stamps.len() > MAX_STAMPS {
            stamps.pop_last();
        }
    }

    /// What a partition's reader sent: records for the client.
    fn deliver(&mut self, tp: Tp, (item, held): Delivery) -> Result<(), End> {
        match item {
            Ok(r) => {
                let fetch_offset = self
                    .fetch_offsets
                    .insert(tp.clone(), r.next_offset)
                    .unwrap_or(-1);
                self.high_watermarks.insert(tp.clone(), r.high_watermark);
                self.stamp(&tp, &r);
                self.observe_lag(&tp);
                self.outbox.push_back((
                    Ok(ConsumeGroupResponse {
                        response: Some(consume_group_response::Response::Records(GroupRecords {
                            topic: tp.topic,
                            partition: r.partition,
                            records: r.records,
                            encoded_batches: r.encoded_batches,
                            high_watermark: r.high_watermark,
                            next_offset: r.next_offset,
                            fetch_offset,
                        })),
                    }),
                    held,
                ));
                Ok(())
            }
            Err(status) => {
                let e = Error::from_status(&status);
                match e.reason {
                    // A deleted topic: its partitions leave the assignment
                    // with the next metadata the coordinator sees.
                    Reason::UnknownTopic | Reason::UnknownPartition => {
                        self.stop(&tp);
                        Ok(())
                    }
                    // The committed offset (or position) is gone from the
                    // log (retention): start where `auto_offset_reset`
                    // says, as Kafka's consumers do.
                    Reason::OffsetOutOfRange => {
                        tracing::info!(group = %self.join.group, partition = %tp, error = %e, "offset out of range; resetting");
                        self.stop(&tp);
                        self.positions.remove(&tp);
                        self.committed.remove(&tp);
                        self.spawn_reader(tp, None);
                        Ok(())
                    }
                    Reason::ShuttingDown => Err(End::Quiet),
                    _ => Err(End::Error(e)),
                }
            }
        }
    }

    /// Commits `offsets` (or the positions of owned partitions not yet
    /// committed, when `None`). Returns what was committed.
    async fn commit(
        &mut self,
        offsets: Option<Vec<OffsetCommit>>,
    ) -> Result<Vec<OffsetCommit>, Error> {
        let owned = self.owned();
        let offsets = offsets.unwrap_or_else(|| {
            self.positions
                .iter()
                .filter(|(tp, o)| owned.contains(*tp) && self.committed.get(*tp) != Some(*o))
                .map(|(tp, &offset)| OffsetCommit {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset,
                    metadata: String::new(),
                })
                .collect()
        });
        if offsets.is_empty() {
            return Ok(offsets);
        }
        // Partitions can come to a member by its topic pattern, or by
        // taking over another member's id: each topic is checked.
        let topics: BTreeSet<&str> = offsets.iter().map(|o| o.topic.as_str()).collect();
        self.api
            .may(&self.principal, Operation::Read, &self.join.group, topics)?;
        self.api
            .commit(CommitOffsetsRequest {
                group: self.join.group.clone(),
                member_id: self.member_id.clone(),
                member_epoch: self.epoch,
                offsets: offsets.clone(),
            })
            .await?;
        for o in &offsets {
            let tp = Tp::new(o.topic.clone(), o.partition);
            self.committed.insert(tp.clone(), o.offset);
            self.observe_lag(&tp);
        }
        Ok(offsets)
    }

    /// A request from the client.
    async fn handle(&mut self, req: ConsumeGroupRequest) -> Result<bool, End> {
        self.last_heard = Instant::now();
        let beat_now = self.handle_request(req).await?;
        // Heard from again while suspended: ask the coordinator at once.
        Ok(beat_now || self.suspended)
    }

    /// How long after the client's last request the gateway still
    /// heartbeats for it: two heartbeat intervals (the client sends at
    /// least one per interval), at most the session.
    fn heard_window(&self) -> Duration {
        (self.interval * 2 + Duration::from_millis(500)).min(self.session_timeout)
    }

    /// The membership may be gone: the client has been silent, or the
    /// coordinator unreachable, for a whole session (the coordinator
    /// removes the member about now), so its partitions may already be
    /// someone else's. Nothing more is read or sent for it until a
    /// heartbeat confirms it is still a member.
    fn suspend(&mut self) {
        tracing::info!(group = %self.join.group, member = %self.member_id, "group member silent or coordinator unreachable for a session; its partitions are no longer read");
        self.suspended = true;
        let running: Vec<Tp> = self.readers.keys().cloned().collect();
        for tp in running {
            self.stop(&tp);
        }
        self.outbox.retain(|(m, _)| {
            !matches!(
                m,
                Ok(ConsumeGroupResponse {
                    response: Some(consume_group_response::Response::Records(_))
                })
            )
        });
    }

    async fn handle_request(&mut self, req: ConsumeGroupRequest) -> Result<bool, End> {
        match req.request {
            None => {}
            Some(consume_group_request::Request::Join(_)) => {
                return Err(End::Error(invalid("join is only the first request")));
            }
            Some(consume_group_request::Request::Positions(p)) => {
                let owned = self.owned();
                for o in p.offsets {
                    let tp = Tp::new(o.topic, o.partition);
                    if owned.contains(&tp) {
                        self.positions.insert(tp, o.offset);
                    }
                }
            }
            Some(consume_group_request::Request::Commit(c)) => {
                let offsets = (!c.offsets.is_empty()).then_some(c.offsets);
                let result = self.commit(offsets).await;
                let terminal = result.as_ref().err().filter(|e| fenced(e)).cloned();
                let (offsets, error) = match result {
                    Ok(o) => (o, None),
                    Err(e) => (Vec::new(), Some(e.to_detail())),
                };
                self.outbox.push_back((
                    Ok(ConsumeGroupResponse {
                        response: Some(consume_group_response::Response::Committed(
                            GroupCommitResult {
                                id: c.id,
                                offsets,
                                error,
                            },
                        )),
                    }),
                    None,
                ));
                if let Some(e) = terminal {
                    return Err(End::Error(e));
                }
            }
            Some(consume_group_request::Request::Release(r)) => {
                let released: BTreeSet<Tp> = tp_set(&r.partitions)
                    .intersection(&self.revoking)
                    .cloned()
                    .collect();
                {
                    // Their progress goes with them: with auto-commit, the
                    // positions reported; else only where nothing was ever
                    // committed, the start position resolved here.
                    let auto = self.join.auto_commit_interval_ms > 0;
                    let pending: Vec<OffsetCommit> = self
                        .positions
                        .iter()
                        .filter(|(tp, o)| {
                            released.contains(*tp)
                                && match self.committed.get(*tp) {
                                    None => true,
                                    Some(c) => auto && c != *o,
                                }
                        })
                        .map(|(tp, &offset)| OffsetCommit {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset,
                            metadata: String::new(),
                        })
                        .collect();
                    if !pending.is_empty() {
                        self.commit(Some(pending)).await.map_err(End::Error)?;
                    }
                }
                self.released.extend(released);
                return Ok(true);
            }
            Some(consume_group_request::Request::Leave(_)) => {
                if self.join.auto_commit_interval_ms > 0
                    && let Err(e) = self.commit(None).await
                {
                    // Leaving anyway: the partitions go to the others now,
                    // from the last commit.
                    tracing::info!(group = %self.join.group, error = %e, "commit before leaving failed");
                }
                let mut leave = self.heartbeat_request();
                leave.member_epoch = -1;
                self.api
                    .heartbeat(leave, HEARTBEAT_TIMEOUT)
                    .await
                    .map_err(End::Error)?;
                return Err(End::Left);
            }
        }
        Ok(false)
    }

    async fn beat(&mut self) -> Result<(), End> {
        let mut request = self.heartbeat_request();
        let resubscribe = self.pattern_changed();
        if let Some(topics) = &resubscribe {
            request.topics = topics.clone();
            request.topic_pattern = self.join.topic_pattern.clone();
            request.pattern_resolved = true;
        }
        match self.api.heartbeat(request, HEARTBEAT_TIMEOUT).await {
            Ok(resp) => {
                self.last_beat = Instant::now();
                self.suspended = false;
                if let (Some(topics), Some(own)) = (resubscribe, &mut self.pattern) {
                    own.sent = topics;
                    // Resolved again at the next beat: the version it was
                    // taken at is not known here, and a change since is
                    // caught then.
                    own.version = 0;
                }
                self.apply(resp).await.map_err(End::Error)
            }
            Err(e) if fenced(&e) || !e.retriable() => Err(End::Error(e)),
            // The coordinator moves or is loading: the next beat tries
            // again, well within the session.
            Err(e) => {
                tracing::debug!(group = %self.join.group, error = %e, "group heartbeat failed; retrying");
                Ok(())
            }
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<ConsumeGroupRequest>,
        tx: mpsc::Sender<Sent<ConsumeGroupResponse>>,
    ) {
        let mut draining = self.api.consume.draining.clone();
        let mut beat_at = Instant::now() + self.interval;
        let auto_commit = Duration::from_millis(u64::from(self.join.auto_commit_interval_ms));
        let mut commit_at = Instant::now() + auto_commit;
        let end = loop {
            let want_beat = self.last_heard.elapsed() < self.heard_window();
            let silent_until = self.last_heard.min(self.last_beat) + self.session_timeout;
            tokio::select! {
                biased;
                _ = async { draining.wait_for(|d| *d).await.is_ok() } => break End::Quiet,
                () = tx.closed() => break End::Quiet,
                permit = tx.reserve(), if !self.outbox.is_empty() => {
                    let Ok(permit) = permit else { break End::Quiet };
                    permit.send(self.outbox.pop_front().expect("not empty"));
                }
                msg = requests.message(), if self.outbox.len() < OUTBOX_LIMIT => match msg {
                    Ok(Some(req)) => match self.handle(req).await {
                        Ok(true) => beat_at = Instant::now(),
                        Ok(false) => {}
                        Err(end) => break end,
                    },
                    // The client closed its side or went away: it may
                    // resume; its session decides.
                    Ok(None) | Err(_) => break End::Quiet,
                },
                () = tokio::time::sleep_until(beat_at), if want_beat => {
                    beat_at = Instant::now() + self.interval;
                    if let Err(end) = self.beat().await {
                        break end;
                    }
                }
                () = tokio::time::sleep_until(silent_until), if !self.suspended => self.suspend(),
                () = tokio::time::sleep_until(commit_at), if !auto_commit.is_zero() && !self.suspended => {
                    commit_at = Instant::now() + auto_commit;
                    if let Err(e) = self.commit(None).await {
                        if fenced(&e) {
                            break End::Error(e);
                        }
                        tracing::debug!(group = %self.join.group, error = %e, "auto-commit failed; retrying");
                    }
                }
                Some((tp, delivery)) = self.inbound.next(), if self.outbox.is_empty() => {
                    if let Err(end) = self.deliver(tp, delivery) {
                        break end;
                    }
                }
            }
        };
        for (tp, reader) in self.readers.drain() {
            reader.abort();
            self.api.metrics.forget_lag(&GroupPartitionLabels {
                group: self.join.group.clone(),
                topic: tp.topic,
                partition: tp.partition,
            });
        }
        let drained = *draining.borrow();
        let last = match end {
            End::Quiet if drained => Some(draining_error()),
            End::Quiet | End::Left => None,
            End::Error(e) => Some(e.to_status()),
        };
        // What is still queued goes first (a commit result, an assignment).
        for m in self.outbox.drain(..) {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        if let Some(status) = last {
            let _ = tx.send((Err(status), None)).await;
        }
    }
}

/// Errors that end a membership: the member must rejoin.
fn fenced(e: &Error) -> bool {
    matches!(e.reason, Reason::UnknownMember | Reason::FencedMemberEpoch)
}

impl GroupApi {
    async fn consume_group(
        &self,
        principal: Principal,
        mut requests: Streaming<ConsumeGroupRequest>,
    ) -> Result<ConsumeGroupResponses, Error> {
        let first = tokio::time::timeout(JOIN_WAIT, requests.message())
            .await
            .map_err(|_| invalid(format!("no join within {} ms", JOIN_WAIT.as_millis())))?
            .map_err(|s| Error::from_status(&s))?;
        let join = match first.and_then(|r| r.request) {
            Some(consume_group_request::Request::Join(j)) => j,
            _ => return Err(invalid("the first request of ConsumeGroup is join")),
        };
        if join.group.is_empty() {
            return Err(invalid("group is required"));
        }
        self.may(
            &principal,
            Operation::Read,
            &join.group,
            join.topics.iter().map(String::as_str),
        )?;
        if !matches!(join.auto_offset_reset.as_str(), "" | "latest" | "earliest") {
            return Err(invalid(format!(
                "auto_offset_reset {:?}: latest or earliest",
                join.auto_offset_reset
            )));
        }
        let resuming = !join.member_id.is_empty() && join.member_epoch > 0;
        let member_id = if join.member_id.is_empty() {
            new_member_id()
        } else {
            join.member_id.clone()
        };
        let pattern = self
            .own_pattern(&join.topic_pattern, &join.topics)?
            .map(|pattern| {
                let (sent, version) = self.resolve_pattern(&principal, &pattern);
                OwnPattern {
                    pattern,
                    sent,
                    version,
                }
            });
        let first = GroupHeartbeatRequest {
            group: join.group.clone(),
            member_id: member_id.clone(),
            member_epoch: if resuming { join.member_epoch } else { 0 },
            topics: match &pattern {
                Some(own) => own.sent.clone(),
                None => join.topics.clone(),
            },
            topic_pattern: join.topic_pattern.clone(),
            pattern_resolved: pattern.is_some(),
            assignor: join.assignor.clone(),
            rebalance_timeout_ms: join.rebalance_timeout_ms,
            owned: if resuming {
                join.owned.clone()
            } else {
                Vec::new()
            },
            report_owned: resuming,
            client_id: join.client_id.clone(),
        };
        let resp = self.heartbeat(first, CALL_TIMEOUT).await?;
        let positions: HashMap<Tp, i64> = if resuming {
            join.positions
                .iter()
                .map(|o| (Tp::new(o.topic.clone(), o.partition), o.offset))
                .collect()
        } else {
            HashMap::new()
        };
        let buffer = self.consume.buffer.max(1);
        let (tx, rx) = mpsc::channel(buffer);
        let mut member = Member {
            api: self.clone(),
            principal,
            member_id,
            epoch: if resuming { join.member_epoch } else { 0 },
            interval: Duration::from_secs(1),
            session_timeout: Duration::from_secs(45),
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            released: BTreeSet::new(),
            readers: HashMap::new(),
            inbound: tokio_stream::StreamMap::new(),
            demand: Demand::new(buffer * 16),
            high_watermarks: HashMap::new(),
            fetch_offsets: HashMap::new(),
            stamps: HashMap::new(),
            positions,
            committed: HashMap::new(),
            last_heard: Instant::now(),
            outbox: VecDeque::new(),
            suspended: false,
            last_beat: Instant::now(),
            join,
            pattern,
        };
        // The first answer always goes to the client.
        member.epoch = -2;
        member.apply(resp).await?;
        self.metrics.group_members.inc();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            member.run(requests, tx).await;
            metrics.group_members.dec();
        });
        Ok(Box::pin(Accounted::new(rx)))
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    type ConsumeGroupStream = ConsumeGroupResponses;

    async fn consume_group(
        &self,
        request: Request<Streaming<ConsumeGroupRequest>>,
    ) -> Result<Response<Self::ConsumeGroupStream>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let r = GroupApi::consume_group(self, principal, request.into_inner()).await;
        self.metrics.observe("ConsumeGroup", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let mut req = request.into_inner();
        // Under ACLs a pattern is resolved here, against what the caller
        // may read (whatever the caller set `pattern_resolved` to).
        let resolved = self.own_pattern(&req.topic_pattern, &req.topics).map(|p| {
            if let Some(p) = p {
                req.topics = self.resolve_pattern(&principal, &p).0;
                req.pattern_resolved = true;
            }
        });
        let r = match resolved.and_then(|()| {
            self.may(
                &principal,
                Operation::Read,
                &req.group,
                req.topics.iter().map(String::as_str),
            )
        }) {
            Ok(()) => GroupApi::heartbeat(self, req, CALL_TIMEOUT).await,
            Err(e) => Err(e),
        };
        self.metrics.observe("GroupHeartbeat", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let topics: BTreeSet<&str> = req.offsets.iter().map(|o| o.topic.as_str()).collect();
        let r = match self.may(&principal, Operation::Read, &req.group, topics) {
            Ok(()) => self.commit(req).await,
            Err(e) => Err(e),
        };
        self.metrics.observe("CommitOffsets", started, r.is_ok());
        r?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let topics: BTreeSet<&str> = req.partitions.iter().map(|t| t.topic.as_str()).collect();
        let r = match self.may(&principal, Operation::Describe, &req.group, topics) {
            // Asked for every topic: only those the caller may describe.
            Ok(()) => GroupApi::fetch_offsets(self, req).await.map(|mut r| {
                r.offsets
                    .retain(|o| self.may_describe(&principal, &o.topic));
                r
            }),
            Err(e) => Err(e),
        };
        self.metrics.observe("FetchOffsets", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let authz = &self.consume.authz;
        // Only the groups the caller may describe.
        let r = self.list().await.map(|mut l| {
            l.groups.retain(|g| {
                authz.allowed(
                    &principal,
                    Operation::Describe,
                    ResourceType::Group,
                    &g.group,
                )
            });
            l
        });
        self.metrics.observe("ListGroups", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = principal_of(&request);
        let group = request.into_inner().group;
        let r = match self.may(&principal, Operation::Describe, &group, []) {
            // Offsets, lag and assignments only of topics the caller may
            // describe.
            Ok(()) => self.describe(&group).await.map(|mut r| {
                if let Some(g) = &mut r.group {
                    g.offsets
                        .retain(|o| self.may_describe(&principal, &o.topic));
                    for m in &mut g.members {
                        m.topics.retain(|t| self.may_describe(&principal, t));
                        m.assigned
                            .retain(|t| self.may_describe(&principal, &t.topic));
                        m.revoking
                            .retain(|t| self.may_describe(&principal, &t.topic));
                    }
                }
                r.partitions
                    .retain(|p| self.may_describe(&principal, &p.topic));
                r.total_lag = r.partitions.iter().map(|p| p.lag.max(0)).sum();
                r
            }),
            Err(e) => Err(e),
        };
        self.metrics.observe("DescribeGroup", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = crate::auth::principal_of(&request);
        let req = request.into_inner();
        let group = req.group.clone();
        let r = match self.may(&principal, Operation::Delete, &group, []) {
            Ok(()) => {
                self.on_coordinator("DeleteGroup", &group, CALL_TIMEOUT, |mut c, t| {
                    let req = req.clone();
                    async move { c.delete_group(router::request(req, t)).await }
                })
                .await
            }
            Err(e) => Err(e),
        };
        crate::auth::audit(&principal, "DeleteGroup", &format!("group:{group}"), "", &r);
        self.metrics.observe("DeleteGroup", started, r.is_ok());
        Ok(Response::new(r?))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        let started = std::time::Instant::now();
        let principal = crate::auth::principal_of(&request);
        let req = request.into_inner();
        let (resource, detail) = (format!("group:{}", req.group), format!("{req:?}"));
        let r = match self.may(
            &principal,
            Operation::Read,
            &req.group,
            [req.topic.as_str()],
        ) {
            Ok(()) => self.reset(req).await,
            Err(e) => Err(e),
        };
        crate::auth::audit(&principal, "ResetOffsets", &resource, &detail, &r);
        self.metrics.observe("ResetOffsets", started, r.is_ok());
        Ok(Response::new(r?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_distinct() {
        assert_ne!(new_member_id(), new_member_id());
        assert_eq!(new_member_id().len(), 32);
    }
}
