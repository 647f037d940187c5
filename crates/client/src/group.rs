//! Consumer groups: [`Client::group_consumer`] joins a group and yields the
//! records of the partitions the group assigns to this member, with
//! assignment changes in between; and the group admin calls.
//!
//! The consumer runs over one `ConsumeGroup` stream. A record counts as
//! processed once `next` is called again (or `commit`, or `close`), as
//! with Kafka's `poll`; the consumer reports the positions processed (the
//! next offsets) in the background, at least every heartbeat interval, which also keeps the
//! member alive: a process that stops (paused, or cut off) loses its
//! partitions after the group's session timeout. With auto-commit (the
//! default, every 5 seconds) the gateway commits those positions, and
//! always before a partition moves; with [`GroupOptions::manual_commit`],
//! [`GroupConsumer::commit`] commits them.
//!
//! A partition that moves to another member is announced with
//! [`GroupEvent::Revoked`] after its last record; it is released (and,
//! with auto-commit, its position committed) at the next call to
//! [`GroupConsumer::next`], so a manual committer commits in between. The
//! consumer rides through gateway restarts (it resumes its membership,
//! from its positions); a member the group removed ([`GroupEvent::Lost`])
//! joins again by itself.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::Transport;
use streambus_proto::v1;
use streambus_proto::v1::group_service_client::GroupServiceClient;
use streambus_proto::{Error, Reason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::consumer::{decode_response, resubscribe_backoff, resumable};
use crate::{Client, ClientError, ConsumedRecord};

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// Only records produced from now on.
    #[default]
    Latest,
    /// Every record still stored.
    Earliest,
}

/// What [`Client::group_consumer`] joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    pub group: String,
    /// The topics, or ...
    pub topics: Vec<String>,
    /// ... a regular expression over whole topic names.
    pub pattern: Option<String>,
    /// "range", "roundrobin" or "sticky" (`None`: the group's choice,
    /// sticky by default).
    pub assignor: Option<String>,
    /// How often the gateway commits the positions reached; zero with
    /// `manual_commit`.
    pub auto_commit_interval: Duration,
    /// Commit only with [`GroupConsumer::commit`].
    pub manual_commit: bool,
    pub reset: OffsetReset,
    /// How long this member may take to release a partition it is asked
    /// to revoke; zero: the coordinator's default.
    pub rebalance_timeout: Duration,
    /// Shown in `streambus group describe`.
    pub client_id: String,
}

impl GroupOptions {
    /// `group` reading `topics`, auto-commit every 5 seconds, new records
    /// only where nothing was committed.
    pub fn new(group: impl Into<String>, topics: &[&str]) -> GroupOptions {
        GroupOptions {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            pattern: None,
            assignor: None,
            auto_commit_interval: Duration::from_secs(5),
            manual_commit: false,
            reset: OffsetReset::Latest,
            rebalance_timeout: Duration::ZERO,
            client_id: String::new(),
        }
    }
}

/// What [`GroupConsumer::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// A record of an assigned partition.
    Record(TopicPartition, ConsumedRecord),
    /// Partitions now assigned to this member (in addition to those it
    /// had).
    Assigned(Vec<TopicPartition>),
    /// Partitions moving to another member: no more records come from
    /// them. They are released at the next call to `next` (a manual
    /// committer commits first).
    Revoked(Vec<TopicPartition>),
    /// Partitions this member lost without handing them over: the group
    /// removed it (it missed its session, or was fenced), and it joined
    /// again. Their records past the last commit are read again by their
    /// new owner.
    Lost(Vec<TopicPartition>),
}

type Callback = Box<dyn FnMut(&GroupEvent) + Send>;

/// A member of a consumer group. Dropping it ends its stream without
/// leaving (the group notices after its session timeout); call
/// [`GroupConsumer::close`] to leave at once.
pub struct GroupConsumer {
    client: GroupServiceClient<Transport>,
    options: GroupOptions,
    member_id: String,
    epoch: i64,
    interval: Duration,
    requests: mpsc::Sender<v1::ConsumeGroupRequest>,
    responses: Option<Streaming<v1::ConsumeGroupResponse>>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    assigned: BTreeSet<TopicPartition>,
    /// Revoked, the event not yet yielded: still owned.
    revoked: BTreeSet<TopicPartition>,
    /// Revoked and yielded: released at the next `next`.
    to_release: BTreeSet<TopicPartition>,
    /// The position of the record handed out last: it counts as processed
    /// at the next `next` (or `commit`, or `close`).
    pending: Option<(TopicPartition, i64)>,
    /// The next offset of each owned partition, as handed out.
    positions: Arc<Mutex<HashMap<TopicPartition, i64>>>,
    /// The next offset of each owned partition, as received (records
    /// below it that come again, after a resumed stream, are skipped).
    received: HashMap<TopicPartition, i64>,
    buffered: VecDeque<GroupEvent>,
    commits: HashMap<u64, Option<Error>>,
    next_commit: u64,
    failures: u32,
    on_rebalance: Option<Callback>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.options.group)
            .field("member_id", &self.member_id)
            .field("epoch", &self.epoch)
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

fn to_list(set: &BTreeSet<TopicPartition>) -> Vec<v1::TopicPartitions> {
    let mut out: Vec<v1::TopicPartitions> = Vec::new();
    for tp in set {
        match out.last_mut() {
            Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
            _ => out.push(v1::TopicPartitions {
                topic: tp.topic.clone(),
                partitions: vec![tp.partition],
            }),
        }
    }
    out
}

fn from_list(list: &[v1::TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|t| {
            t.partitions.iter().map(|&p| TopicPartition {
                topic: t.topic.clone(),
                partition: p,
            })
        })
        .collect()
}

/// A random member id: 128 bits, hex.
fn new_member_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

fn offset_list(positions: &HashMap<TopicPartition, i64>) -> Vec<v1::OffsetCommit> {
    positions
        .iter()
        .map(|(tp, &offset)| v1::OffsetCommit {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset,
            metadata: String::new(),
        })
        .collect()
}

fn ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

fn fenced(e: &Error) -> bool {
    matches!(e.reason, Reason::UnknownMember | Reason::FencedMemberEpoch)
}

/// How long joining keeps trying while gateways are unreachable.
const JOIN_RETRY: Duration = Duration::from_secs(30);

impl Client {
    /// Joins a consumer group. Returns once the gateway accepted the
    /// member (the first assignment is the first event).
    pub async fn group_consumer(
        &self,
        options: GroupOptions,
    ) -> Result<GroupConsumer, ClientError> {
        let mut consumer = GroupConsumer {
            client: self.group.clone(),
            options,
            // Chosen here, once: a join retried after a lost answer is the
            // same member, not a second one holding partitions.
            member_id: new_member_id(),
            epoch: 0,
            interval: Duration::from_secs(1),
            requests: mpsc::channel(1).0,
            responses: None,
            keepalive: None,
            assigned: BTreeSet::new(),
            revoked: BTreeSet::new(),
            to_release: BTreeSet::new(),
            pending: None,
            positions: Arc::default(),
            received: HashMap::new(),
            buffered: VecDeque::new(),
            commits: HashMap::new(),
            next_commit: 1,
            failures: 0,
            on_rebalance: None,
        };
        let deadline = tokio::time::Instant::now() + JOIN_RETRY;
        loop {
            match consumer.open().await {
                Ok(()) => return Ok(consumer),
                Err(status) if resumable(&status) && tokio::time::Instant::now() < deadline => {
                    consumer.failures += 1;
                    tokio::time::sleep(resubscribe_backoff(consumer.failures, 0.5)).await;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    /// Every group, with its state and member count.
    pub async fn list_groups(&self) -> Result<Vec<v1::GroupListing>, ClientError> {
        Ok(self
            .group
            .clone()
            .list_groups(v1::ListGroupsRequest {})
            .await?
            .into_inner()
            .groups)
    }

    /// A group's state, members, committed offsets and lag.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<v1::DescribeGroupResponse, ClientError> {
        Ok(self
            .group
            .clone()
            .describe_group(v1::DescribeGroupRequest {
                group: group.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Deletes a group without live members, and its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.group
            .clone()
            .delete_group(v1::DeleteGroupRequest {
                group: group.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Plans (and with `execute` applies) new committed offsets of a group
    /// without live members.
    pub async fn reset_offsets(
        &self,
        request: v1::ResetOffsetsRequest,
    ) -> Result<v1::ResetOffsetsResponse, ClientError> {
        Ok(self
            .group
            .clone()
            .reset_offsets(request)
            .await?
            .into_inner())
    }

    /// The committed offsets of a group (every partition when `partitions`
    /// is empty).
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<v1::CommittedOffset>, ClientError> {
        let set: BTreeSet<TopicPartition> = partitions.iter().cloned().collect();
        Ok(self
            .group
            .clone()
            .fetch_offsets(v1::FetchOffsetsRequest {
                group: group.to_string(),
                partitions: to_list(&set),
            })
            .await?
            .into_inner()
            .offsets)
    }
}

impl GroupConsumer {
    /// Calls `f` with every assignment change, as it is yielded.
    pub fn on_rebalance(&mut self, f: impl FnMut(&GroupEvent) + Send + 'static) {
        self.on_rebalance = Some(Box::new(f));
    }

    /// The member id the group knows this consumer by.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The member's epoch.
    pub fn member_epoch(&self) -> i64 {
        self.epoch
    }

    /// The partitions assigned now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.assigned.iter().cloned().collect()
    }

    /// The next offset of `tp` after the records handed out so far.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock_positions().get(tp).copied()
    }

    fn lock_positions(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, i64>> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The positions of the partitions still owned.
    fn position_list(&self) -> Vec<v1::OffsetCommit> {
        let positions = self.lock_positions();
        let owned: HashMap<TopicPartition, i64> = positions
            .iter()
            .filter(|(tp, _)| self.owns(tp))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect();
        offset_list(&owned)
    }

    /// Assigned, or revoked and not released yet.
    fn owns(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.revoked.contains(tp) || self.to_release.contains(tp)
    }

    /// The record handed out last was processed.
    fn settle_pending(&mut self) {
        if let Some((tp, offset)) = self.pending.take() {
            self.lock_positions().insert(tp, offset);
        }
    }

    /// Opens a stream: joins, or resumes the membership it has.
    async fn open(&mut self) -> Result<(), tonic::Status> {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        let owned: BTreeSet<TopicPartition> = self.assigned.union(&self.revoked).cloned().collect();
        let join = v1::JoinGroup {
            group: self.options.group.clone(),
            topics: self.options.topics.clone(),
            topic_pattern: self.options.pattern.clone().unwrap_or_default(),
            assignor: self.options.assignor.clone().unwrap_or_default(),
            rebalance_timeout_ms: ms(self.options.rebalance_timeout),
            auto_commit_interval_ms: if self.options.manual_commit {
                0
            } else {
                ms(self.options.auto_commit_interval).max(1)
            },
            auto_offset_reset: match self.options.reset {
                OffsetReset::Latest => "latest",
                OffsetReset::Earliest => "earliest",
            }
            .into(),
            client_id: self.options.client_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            positions: self.position_list(),
            max_bytes: 0,
            max_wait_ms: 0,
            encoded: true,
            owned: to_list(&owned),
        };
        let (tx, rx) = mpsc::channel(64);
        tx.try_send(v1::ConsumeGroupRequest {
            request: Some(v1::consume_group_request::Request::Join(join)),
        })
        .expect("a new channel has room");
        let responses = self
            .client
            .consume_group(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.requests = tx;
        self.responses = Some(responses);
        self.start_keepalive();
        Ok(())
    }

    /// Reports the positions at least every heartbeat interval (and half
    /// the auto-commit interval): that keeps the member alive and gives
    /// the gateway what to commit.
    fn start_keepalive(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        let mut every = self.interval / 2;
        if !self.options.manual_commit {
            every = every.min(self.options.auto_commit_interval / 2);
        }
        let every = every.max(Duration::from_millis(50));
        let tx = self.requests.clone();
        let positions = self.positions.clone();
        self.keepalive = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let offsets = offset_list(&positions.lock().unwrap_or_else(|p| p.into_inner()));
                let positions = v1::ConsumeGroupRequest {
                    request: Some(v1::consume_group_request::Request::Positions(
                        v1::GroupOffsets { offsets },
                    )),
                };
                if tx.send(positions).await.is_err() {
                    return;
                }
            }
        }));
    }

    async fn send(
        &mut self,
        request: v1::consume_group_request::Request,
    ) -> Result<(), ClientError> {
        self.requests
            .send(v1::ConsumeGroupRequest {
                request: Some(request),
            })
            .await
            .map_err(|_| {
                ClientError::Server(Error::new(
                    Reason::Unavailable,
                    "the group stream is closed; it is being opened again",
                ))
            })
    }

    fn emit(&mut self, event: GroupEvent) {
        if let Some(f) = self.on_rebalance.as_mut() {
            f(&event);
        }
        self.buffered.push_back(event);
    }

    /// Takes one message of the stream in.
    fn absorb(&mut self, response: v1::ConsumeGroupResponse) -> Result<(), ClientError> {
        match response.response {
            Some(v1::consume_group_response::Response::Assignment(a)) => {
                self.failures = 0;
                self.member_id = a.member_id;
                self.epoch = a.member_epoch;
                let interval = Duration::from_millis(u64::from(a.heartbeat_interval_ms.max(10)));
                if interval != self.interval {
                    self.interval = interval;
                    self.start_keepalive();
                }
                let assigned = from_list(&a.assigned);
                let revoking = from_list(&a.revoking);
                let gone: Vec<TopicPartition> = self
                    .assigned
                    .iter()
                    .filter(|tp| !assigned.contains(*tp))
                    .cloned()
                    .collect();
                let added: Vec<TopicPartition> = assigned
                    .iter()
                    .filter(|tp| !self.assigned.contains(*tp))
                    .cloned()
                    .collect();
                // Partitions gone without being asked to revoke them
                // (the coordinator lists revocations until released).
                let lost: Vec<TopicPartition> = gone
                    .iter()
                    .filter(|tp| !revoking.contains(*tp))
                    .cloned()
                    .collect();
                let revoked: Vec<TopicPartition> = gone
                    .into_iter()
                    .filter(|tp| revoking.contains(tp))
                    .collect();
                self.assigned = assigned;
                {
                    let mut positions = self.lock_positions();
                    for tp in &lost {
                        positions.remove(tp);
                    }
                }
                for tp in &lost {
                    self.received.remove(tp);
                }
                if !revoked.is_empty() {
                    self.revoked.extend(revoked.iter().cloned());
                    self.emit(GroupEvent::Revoked(revoked));
                }
                if !lost.is_empty() {
                    self.emit(GroupEvent::Lost(lost));
                }
                if !added.is_empty() {
                    self.emit(GroupEvent::Assigned(added));
                }
                // Revocations the client cannot have seen (a resumed
                // stream, before any records): released at the next call.
                for tp in revoking {
                    if !self.owns(&tp) {
                        self.to_release.insert(tp);
                    }
                }
            }
            Some(v1::consume_group_response::Response::Records(r)) => {
                self.failures = 0;
                let tp = TopicPartition {
                    topic: r.topic,
                    partition: r.partition,
                };
                if !self.assigned.contains(&tp) {
                    return Ok(());
                }
                let handed = self.lock_positions().get(&tp).copied();
                // Batches come whole: records below where the gateway read
                // from are not this member's to process.
                let floor = handed
                    .into_iter()
                    .chain(self.received.get(&tp).copied())
                    .chain((r.fetch_offset >= 0).then_some(r.fetch_offset))
                    .max()
                    .unwrap_or(i64::MIN);
                let mut records = Vec::new();
                decode_response(
                    tp.partition,
                    &r.encoded_batches,
                    r.records,
                    floor,
                    &mut |rec| records.push(rec),
                )?;
                let mut next = floor.max(r.next_offset);
                for rec in records {
                    next = next.max(rec.offset + 1);
                    self.buffered.push_back(GroupEvent::Record(tp.clone(), rec));
                }
                self.received.insert(tp, next);
            }
            Some(v1::consume_group_response::Response::Committed(c)) => {
                self.commits
                    .insert(c.id, c.error.as_ref().map(Error::from_detail));
            }
            None => {}
        }
        Ok(())
    }

    /// Handles a broken stream: resumes after a retriable failure, joins
    /// again after losing the membership; anything else is the caller's.
    async fn recover(&mut self, status: tonic::Status) -> Result<(), ClientError> {
        let e = Error::from_status(&status);
        if fenced(&e) {
            let lost: Vec<TopicPartition> = self
                .assigned
                .iter()
                .chain(&self.revoked)
                .chain(&self.to_release)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            tracing::info!(group = %self.options.group, error = %e, "removed from the group; joining again");
            self.assigned.clear();
            self.revoked.clear();
            self.to_release.clear();
            self.pending = None;
            self.lock_positions().clear();
            self.received.clear();
            // Records of the lost partitions not yet handed out are not
            // this member's to hand out any more.
            self.buffered
                .retain(|e| !matches!(e, GroupEvent::Record(..)));
            self.epoch = 0;
            if !lost.is_empty() {
                self.emit(GroupEvent::Lost(lost));
            }
        } else if !resumable(&status) {
            self.responses = None;
            return Err(status.into());
        }
        self.responses = None;
        loop {
            self.failures += 1;
            tokio::time::sleep(resubscribe_backoff(self.failures, 0.5)).await;
            match self.open().await {
                Ok(()) => return Ok(()),
                Err(s) if resumable(&s) => {
                    tracing::debug!(error = %s, "group stream not open yet; trying again");
                }
                Err(s) if fenced(&Error::from_status(&s)) => {
                    self.epoch = 0;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// Reads the stream until something can be yielded.
    async fn pump(&mut self) -> Result<(), ClientError> {
        let Some(responses) = self.responses.as_mut() else {
            return self
                .recover(tonic::Status::unavailable("reconnecting"))
                .await;
        };
        match responses.message().await {
            Ok(Some(r)) => self.absorb(r),
            Ok(None) => {
                self.recover(tonic::Status::unavailable("the gateway ended the stream"))
                    .await
            }
            Err(status) => self.recover(status).await,
        }
    }

    /// The next record or assignment change. Ends only with an error that
    /// retrying cannot fix.
    pub async fn next(&mut self) -> Option<Result<GroupEvent, ClientError>> {
        self.settle_pending();
        if !self.to_release.is_empty() {
            let offsets = self.position_list();
            let released: BTreeSet<TopicPartition> = std::mem::take(&mut self.to_release);
            let sent = async {
                // With auto-commit the gateway commits these first.
                self.send(v1::consume_group_request::Request::Positions(
                    v1::GroupOffsets { offsets },
                ))
                .await?;
                self.send(v1::consume_group_request::Request::Release(
                    v1::GroupRelease {
                        partitions: to_list(&released),
                    },
                ))
                .await
            }
            .await;
            {
                let mut positions = self.lock_positions();
                for tp in &released {
                    positions.remove(tp);
                }
            }
            for tp in &released {
                self.received.remove(tp);
            }
            if let Err(e) = sent {
                tracing::debug!(error = %e, "release not sent; the resumed stream reports ownership");
            }
        }
        loop {
            if let Some(event) = self.buffered.pop_front() {
                match &event {
                    // Of a partition lost meanwhile: not this member's.
                    GroupEvent::Record(tp, _) if !self.owns(tp) => continue,
                    GroupEvent::Record(tp, r) => {
                        self.pending = Some((tp.clone(), r.offset + 1));
                    }
                    GroupEvent::Revoked(tps) => {
                        for tp in tps {
                            if self.revoked.remove(tp) {
                                self.to_release.insert(tp.clone());
                            }
                        }
                    }
                    _ => {}
                }
                return Some(Ok(event));
            }
            if let Err(e) = self.pump().await {
                return Some(Err(e));
            }
        }
    }

    /// Commits the positions of the records handed out so far, the last
    /// one included (those of
    /// partitions still owned) and waits for the answer. A member that was
    /// removed from the group gets `UNKNOWN_MEMBER` or
    /// `FENCED_MEMBER_EPOCH`: what it processed since its last commit will
    /// be read again by the partitions' new owners.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.settle_pending();
        let id = self.next_commit;
        self.next_commit += 1;
        let offsets = self.position_list();
        if offsets.is_empty() {
            return Ok(());
        }
        self.send(v1::consume_group_request::Request::Commit(
            v1::GroupCommit { id, offsets },
        ))
        .await?;
        loop {
            if let Some(result) = self.commits.remove(&id) {
                return match result {
                    None => Ok(()),
                    Some(e) => Err(e.into()),
                };
            }
            let Some(responses) = self.responses.as_mut() else {
                return Err(Error::new(Reason::Unavailable, "the group stream broke").into());
            };
            match responses.message().await {
                Ok(Some(r)) => self.absorb(r)?,
                Ok(None) => {
                    self.responses = None;
                    return Err(Error::new(Reason::Unavailable, "the group stream ended").into());
                }
                Err(status) => {
                    let e = Error::from_status(&status);
                    // `next` recovers from it.
                    self.responses = None;
                    if fenced(&e) {
                        self.recover(status).await?;
                        return Err(e.into());
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Leaves the group: with auto-commit, the positions reached are
    /// committed first; the partitions go to the other members at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        self.settle_pending();
        let offsets = self.position_list();
        self.send(v1::consume_group_request::Request::Positions(
            v1::GroupOffsets { offsets },
        ))
        .await?;
        self.send(v1::consume_group_request::Request::Leave(v1::GroupLeave {}))
            .await?;
        let Some(mut responses) = self.responses.take() else {
            return Ok(());
        };
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(ClientError::from(status)),
                }
            }
        })
        .await;
        match drained {
            Ok(r) => r,
            Err(_) => Err(Error::new(Reason::Timeout, "leaving the group took over 10 s").into()),
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }
}
