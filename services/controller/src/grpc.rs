//! The client-facing `ControllerService` and the [`Proposer`] that turns
//! validated requests into Raft proposals.
//!
//! Writes (`CreateTopic`, `DeleteTopic`, `CreatePartitions`,
//! `DecommissionNode`, `RegisterNode`, `Heartbeat`, membership changes, ...)
//! are served by the Raft leader only; other controllers answer
//! `NOT_CONTROLLER_LEADER` with the leader's address as hint. Reads
//! (`GetMetadata`, `WatchMetadata`) are served by any member of the group
//! from its applied state, which on a follower may lag the leader by a few
//! heartbeats; the `version` field tells how fresh a snapshot is. A
//! controller outside its own membership (waiting to join, or removed)
//! answers reads with `UNAVAILABLE` and ends its watches.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, Membership, RaftMetrics, ServerState, StoredMembership};
use streambus_proto::internal::controller_service_server::ControllerService;
use streambus_proto::internal::{
    AllocateProducerIdsRequest, AllocateProducerIdsResponse, AlterPartitionRequest,
    AlterPartitionResponse, ClusterMetadata, DescribeControllerRequest, GetMetadataRequest,
    HeartbeatRequest, HeartbeatResponse, RegisterNodeRequest, RegisterNodeResponse,
    WatchMetadataRequest,
};
use streambus_proto::v1::{
    AddControllerRequest, AddControllerResponse, AlterClientQuotasRequest,
    AlterClientQuotasResponse, AlterTopicConfigsRequest, AlterTopicConfigsResponse,
    ControllerMember, ControllerStatus, CreateAclsRequest, CreateAclsResponse,
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse,
    DecommissionStorageNodeRequest, DecommissionStorageNodeResponse, DeleteAclsRequest,
    DeleteAclsResponse, DeleteTopicRequest, DeleteTopicResponse, RecommissionStorageNodeRequest,
    RecommissionStorageNodeResponse, RemoveControllerRequest, RemoveControllerResponse,
};
use streambus_proto::{Error, Reason};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::leadership::Leadership;
use crate::leases::Leases;
use crate::membership::MembershipChanges;
use crate::metadata::{Command, CommandResponse, Metadata, QuotaRates, ReplicaRefs};
use crate::metrics::Metrics;
use crate::network::PeerDial;
use crate::store::{Raft, StateMachineStore};

/// How long a proposal may take before the caller gets `TIMEOUT`.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most ACLs (or ACL filters) one request carries.
pub const MAX_ACLS_PER_REQUEST: usize = 1000;

/// Proposes commands to Raft and answers leadership questions.
#[derive(Clone)]
pub(crate) struct Proposer {
    node_id: u64,
    raft: Raft,
    raft_metrics: watch::Receiver<RaftMetrics<u64, BasicNode>>,
    /// [`Proposer::is_member`], kept current by [`Proposer::track_membership`].
    member: watch::Sender<bool>,
    sm: StateMachineStore,
    metrics: Arc<Metrics>,
    /// How this controller reaches the others.
    dial: PeerDial,
    /// When this controller may act as the leader.
    leadership: Leadership,
    /// Whether this controller is in contact with its group (see
    /// [`Leadership::in_contact`]), kept current by
    /// [`Proposer::track_contact`].
    contact: watch::Sender<bool>,
}

impl Proposer {
    pub(crate) fn new(
        node_id: u64,
        raft: Raft,
        sm: StateMachineStore,
        metrics: Arc<Metrics>,
        dial: PeerDial,
        leadership: Leadership,
    ) -> Proposer {
        let raft_metrics = raft.metrics();
        let member = watch::Sender::new(is_member(&raft_metrics.borrow(), &sm.current(), node_id));
        Proposer {
            node_id,
            raft_metrics,
            member,
            raft,
            sm,
            metrics,
            dial,
            leadership,
            // Given the grace of a controller that just started.
            contact: watch::Sender::new(true),
        }
    }

    /// How this controller reaches the other controllers.
    pub(crate) fn dial(&self) -> &PeerDial {
        &self.dial
    }

    /// Publishes whether this controller is a member until `cancel`.
    pub(crate) async fn track_membership(self, cancel: CancellationToken) {
        let mut raft_rx = self.raft.metrics();
        let mut sm_rx = self.sm.subscribe();
        loop {
            let now = is_member(
                &raft_rx.borrow_and_update(),
                &sm_rx.borrow_and_update(),
                self.node_id,
            );
            self.member
                .send_if_modified(|m| std::mem::replace(m, now) != now);
            tokio::select! {
                () = cancel.cancelled() => return,
                r = raft_rx.changed() => if r.is_err() { return },
                r = sm_rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// Publishes whether this controller is in contact with its group
    /// until `cancel`: false once it has been out of contact for the grace
    /// ([`Leadership`]), true again as soon as it is back.
    pub(crate) async fn track_contact(self, cancel: CancellationToken) {
        let mut raft_rx = self.raft.metrics();
        let mut out_since: Option<Instant> = None;
        // openraft publishes its metrics at least every 1.5 heartbeats;
        // the timer only makes sure the grace is judged on time.
        let every = (self.leadership.grace / 4).max(Duration::from_millis(10));
        loop {
            let now = self
                .leadership
                .in_contact(&raft_rx.borrow_and_update(), self.node_id);
            let in_contact = if now {
                out_since = None;
                true
            } else {
                out_since.get_or_insert_with(Instant::now).elapsed() < self.leadership.grace
            };
            self.contact.send_if_modified(|c| {
                if *c == in_contact {
                    return false;
                }
                if in_contact {
                    tracing::info!("in contact with the controller group again");
                } else {
                    tracing::warn!(
                        grace_ms = self.leadership.grace.as_millis() as u64,
                        "out of contact with the controller group: ending metadata watches"
                    );
                }
                *c = in_contact;
                true
            });
            tokio::select! {
                () = cancel.cancelled() => return,
                r = raft_rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Whether this controller is in contact with its group (see
    /// [`Proposer::track_contact`]).
    pub(crate) fn in_contact(&self) -> bool {
        *self.contact.borrow()
    }

    /// Fails with `UNAVAILABLE` when this controller is out of contact
    /// with its group: its metadata may be stale.
    fn ensure_in_contact(&self) -> Result<(), Error> {
        if self.in_contact() {
            Ok(())
        } else {
            Err(out_of_contact(self.node_id))
        }
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The latest applied metadata.
    pub(crate) fn metadata(&self) -> Arc<Metadata> {
        self.sm.current()
    }

    /// Changes of the applied metadata.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Metadata>> {
        self.sm.subscribe()
    }

    /// The Raft leader's id and advertised address, when known.
    pub(crate) fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft_metrics.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    /// This controller's id.
    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The latest membership this controller knows (the effective one:
    /// possibly not committed yet).
    pub(crate) fn membership(&self) -> Arc<StoredMembership<u64, BasicNode>> {
        self.raft_metrics.borrow().membership_config.clone()
    }

    /// Whether this controller is a member of the group: in its own latest
    /// membership (as a voter or a learner), and not removed by an applied
    /// `RemoveController`. Not yet when it waits to join (or to be contacted
    /// by the first leader), no longer once it is being removed.
    pub(crate) fn is_member(&self) -> bool {
        is_member(
            &self.raft_metrics.borrow(),
            &self.sm.current(),
            self.node_id,
        )
    }

    /// Fails with `UNAVAILABLE` when this controller is not a member: its
    /// metadata does not advance, so it serves none.
    fn ensure_member(&self) -> Result<(), Error> {
        if self.is_member() {
            Ok(())
        } else {
            Err(not_member(self.node_id))
        }
    }

    /// This controller's own Raft view.
    pub(crate) fn status(&self) -> ControllerStatus {
        let m = self.raft_metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = members(membership);
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        ControllerStatus {
            node_id: self.node_id,
            address: members
                .iter()
                .find(|n| n.node_id == self.node_id)
                .map(|n| n.address.clone())
                .unwrap_or_default(),
            reachable: true,
            state: state.to_string(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            voter: voters.contains(&self.node_id),
            error: String::new(),
            members,
        }
    }

    fn not_leader(&self) -> Error {
        match self.leader() {
            Some((id, addr)) => Error::new(
                Reason::NotControllerLeader,
                format!(
                    "controller {} is not the leader; controller {id} at {addr} is",
                    self.node_id
                ),
            )
            .with_leader_hint(addr),
            None => Error::new(
                Reason::NotControllerLeader,
                format!(
                    "controller {} is not the leader and no leader is known",
                    self.node_id
                ),
            ),
        }
    }

    /// Fails with `NOT_CONTROLLER_LEADER` unless this controller leads
    /// and has heard from a quorum recently ([`Leadership::is_current`]):
    /// with a hint when another controller is known to lead, without one
    /// when this leader may have been cut off from the others (it cannot
    /// commit anything, and another controller may have been elected).
    pub(crate) fn ensure_leader(&self) -> Result<(), Error> {
        let m = self.raft_metrics.borrow();
        let leads = Leadership::is_leader(&m, self.node_id);
        let current = self.leadership.is_current(&m);
        let age = m.millis_since_quorum_ack;
        drop(m);
        match (leads, current) {
            (true, true) => Ok(()),
            (true, false) => Err(self.lost_quorum(age)),
            (false, _) => Err(self.not_leader()),
        }
    }

    /// Waits until this controller, as the leader, shows a quorum
    /// acknowledgment recent enough to renew a storage-node lease
    /// ([`Leadership::renews`]), as of a moment after the call: only Raft
    /// metrics published after it count. Fails with `NOT_CONTROLLER_LEADER`
    /// when it stops leading, or does not show one within
    /// [`Leadership::confirm_wait`].
    pub(crate) async fn confirm_leadership(&self) -> Result<(), Error> {
        self.ensure_leader()?;
        let mut rx = self.raft.metrics();
        // What is published from now on.
        rx.borrow_and_update();
        let deadline = Instant::now() + self.leadership.confirm_wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::new(
                        Reason::ShuttingDown,
                        "the controller is shutting down",
                    ));
                }
                Err(_) => {
                    let age = rx.borrow().millis_since_quorum_ack;
                    return Err(self.lost_quorum(age));
                }
            }
            let m = rx.borrow_and_update();
            if !Leadership::is_leader(&m, self.node_id) {
                drop(m);
                return Err(self.not_leader());
            }
            if self.leadership.renews(&m) {
                return Ok(());
            }
        }
    }

    /// The refusal of a leader that has not heard from a quorum lately: no
    /// hint, so clients try the other controllers.
    fn lost_quorum(&self, age_ms: Option<u64>) -> Error {
        Error::new(
            Reason::NotControllerLeader,
            format!(
                "controller {} leads but no quorum of controllers has acknowledged it for {}; another controller may lead",
                self.node_id,
                age_ms.map_or_else(|| "a while".to_string(), |ms| format!("{ms} ms")),
            ),
        )
    }

    /// Proposes `command` and waits until it is applied here.
    pub(crate) async fn propose(&self, command: Command) -> Result<CommandResponse, Error> {
        self.metrics.raft_proposals.inc();
        let started = std::time::Instant::now();
        let write = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(command));
        let outcome = if streambus_service::trace::in_trace() {
            // Committed by a quorum and applied here.
            write
                .instrument(tracing::info_span!(
                    "metadata commit",
                    streambus.node_id = self.node_id
                ))
                .await
        } else {
            write.await
        };
        let raft_error = match outcome {
            // Committed and applied; the state machine may still have rejected it.
            Ok(Ok(response)) => {
                self.metrics
                    .raft_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                return response.data.into_result();
            }
            Err(_) => Error::new(
                Reason::Timeout,
                "the metadata change was not committed in time; it may still be applied",
            ),
            Ok(Err(e)) => self.write_error(e),
        };
        self.metrics.raft_proposal_failures.inc();
        Err(raft_error)
    }

    /// The error for a failed Raft write (a proposal or a membership
    /// change).
    pub(crate) fn write_error(&self, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Error {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                let hint = f.leader_node.map(|n| n.addr).unwrap_or_default();
                Error::new(
                    Reason::NotControllerLeader,
                    format!("controller {} lost the leadership", self.node_id),
                )
                .with_leader_hint(hint)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(e),
            )) => Error::new(
                Reason::Unavailable,
                format!(
                    "another controller membership change is in progress ({e}); retry once it is committed"
                ),
            ),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Error::new(
                Reason::InvalidArgument,
                format!("membership change refused: {e}"),
            ),
            RaftError::Fatal(Fatal::Stopped) => {
                Error::new(Reason::ShuttingDown, "the controller is shutting down")
            }
            RaftError::Fatal(e) => {
                Error::new(Reason::Internal, format!("controller raft failed: {e}"))
            }
        }
    }

    fn cluster_metadata(&self, metadata: &Metadata) -> ClusterMetadata {
        let (id, addr) = self.leader().unwrap_or_default();
        metadata.to_cluster_metadata(id, &addr)
    }
}

/// The members of `membership`, in id order, voters marked.
pub(crate) fn members(membership: &Membership<u64, BasicNode>) -> Vec<ControllerMember> {
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| ControllerMember {
            node_id: *id,
            address: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

fn is_member(m: &RaftMetrics<u64, BasicNode>, metadata: &Metadata, node_id: u64) -> bool {
    m.membership_config
        .membership()
        .get_node(&node_id)
        .is_some()
        && !metadata.removed_controllers.contains(&node_id)
}

fn out_of_contact(node_id: u64) -> Error {
    Error::new(
        Reason::Unavailable,
        format!(
            "controller {node_id} is out of contact with the other controllers (its metadata may be stale); ask another controller"
        ),
    )
}

fn not_member(node_id: u64) -> Error {
    Error::new(
        Reason::Unavailable,
        format!(
            "controller {node_id} is not a member of the controller group (it waits to be added, or was removed); ask another controller"
        ),
    )
}

/// The `ControllerService` implementation.
pub(crate) struct ControllerGrpc {
    proposer: Proposer,
    leases: Arc<Leases>,
    membership: MembershipChanges,
    cancel: CancellationToken,
}

impl ControllerGrpc {
    pub(crate) fn new(
        proposer: Proposer,
        leases: Arc<Leases>,
        cancel: CancellationToken,
    ) -> ControllerGrpc {
        ControllerGrpc {
            membership: MembershipChanges::new(proposer.clone()),
            proposer,
            leases,
            cancel,
        }
    }

    fn lease_ms(&self) -> u64 {
        self.leases.lease().as_millis() as u64
    }
}

type MetadataStream = Pin<Box<dyn Stream<Item = Result<ClusterMetadata, Status>> + Send>>;

struct WatchState {
    rx: watch::Receiver<Arc<Metadata>>,
    /// Whether this controller is a member; the stream ends when it is not.
    member: watch::Receiver<bool>,
    /// Whether this controller is in contact with its group; the stream
    /// ends when it is not.
    contact: watch::Receiver<bool>,
    last_sent: u64,
    /// The caller merges deltas (`WatchMetadataRequest.accept_deltas`).
    accept_deltas: bool,
    /// A changed topic in a delta may list only its changed partitions
    /// (`WatchMetadataRequest.accept_partition_deltas`).
    accept_partition_deltas: bool,
    /// What this stream sent last: a delta is computed against it.
    previous: Option<Arc<Metadata>>,
    first: bool,
    done: bool,
    cancel: CancellationToken,
    proposer: Proposer,
}

fn watch_stream(state: WatchState) -> MetadataStream {
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !*st.member.borrow_and_update() {
                st.done = true;
                let err = not_member(st.proposer.node_id);
                return Some((Err(err.to_status()), st));
            }
            if !*st.contact.borrow_and_update() {
                st.done = true;
                let err = out_of_contact(st.proposer.node_id);
                return Some((Err(err.to_status()), st));
            }
            let metadata = st.rx.borrow_and_update().clone();
            // The first snapshot goes out at once unless the caller already
            // has this version or a newer one.
            if metadata.version > st.last_sent || (st.first && st.last_sent == 0) {
                st.first = false;
                st.last_sent = metadata.version;
                let message = match (&st.previous, st.accept_deltas) {
                    (Some(before), true) => {
                        let (id, address) = st.proposer.leader().unwrap_or_default();
                        metadata.to_cluster_metadata_delta(
                            before,
                            id,
                            &address,
                            st.accept_partition_deltas,
                        )
                    }
                    _ => st.proposer.cluster_metadata(&metadata),
                };
                if st.accept_deltas {
                    st.previous = Some(metadata);
                }
                return Some((Ok(message), st));
            }
            st.first = false;
            tokio::select! {
                () = st.cancel.cancelled() => {
                    st.done = true;
                    let err = Error::new(Reason::ShuttingDown, "the controller is shutting down");
                    return Some((Err(err.to_status()), st));
                }
                changed = st.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                changed = st.member.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                changed = st.contact.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            }
        }
    }))
}

fn status(e: Error) -> Status {
    e.to_status()
}

#[tonic::async_trait]
impl ControllerService for ControllerGrpc {
    async fn create_topic(
        &self,
        req: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let req = req.into_inner();
        self.proposer.ensure_leader().map_err(status)?;
        let command = self
            .proposer
            .metadata()
            .validate_create_topic(&req)
            .map_err(status)?;
        match self.proposer.propose(command).await.map_err(status)? {
            CommandResponse::Topic(topic) => {
                tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "topic created");
                Ok(Response::new(CreateTopicResponse {
                    topic: Some(Metadata::describe(&topic)),
                }))
            }
            other => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected create response {other:?}"),
            ))),
        }
    }

    async fn delete_topic(
        &self,
        req: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let name = req.into_inner().name;
        self.proposer.ensure_leader().map_err(status)?;
        let command = self
            .proposer
            .metadata()
            .validate_delete_topic(&name)
            .map_err(status)?;
        self.proposer.propose(command).await.map_err(status)?;
        tracing::info!(topic = %name, "topic deleted");
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn create_partitions(
        &self,
        req: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let CreatePartitionsRequest { topic, partitions } = req.into_inner();
        self.proposer.ensure_leader().map_err(status)?;
        let metadata = self.proposer.metadata();
        let Some(command) = metadata
            .validate_create_partitions(&topic, partitions)
            .map_err(status)?
        else {
            // Already that many: a retry whose first attempt applied, or
            // nothing to do.
            return Ok(Response::new(CreatePartitionsResponse {
                topic: metadata.topics.get(&topic).map(|t| Metadata::describe(t)),
            }));
        };
        match self.proposer.propose(command).await.map_err(status)? {
            CommandResponse::Topic(t) => {
                tracing::info!(topic = %t.name, partitions = t.partitions.len(), "partitions added");
                Ok(Response::new(CreatePartitionsResponse {
                    topic: Some(Metadata::describe(&t)),
                }))
            }
            other => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected create partitions response {other:?}"),
            ))),
        }
    }

    async fn alter_topic_configs(
        &self,
        req: Request<AlterTopicConfigsRequest>,
    ) -> Result<Response<AlterTopicConfigsResponse>, Status> {
        let AlterTopicConfigsRequest {
            topic,
            set,
            delete,
            validate_only,
        } = req.into_inner();
        self.proposer.ensure_leader().map_err(status)?;
        // Optimistic: a change computed from a configuration that another
        // change replaced meanwhile is refused by the state machine and
        // computed again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (after, command) = self
                .proposer
                .metadata()
                .validate_alter_topic_configs(&topic, &set, &delete)
                .map_err(status)?;
            let Some(command) = command.filter(|_| !validate_only) else {
                return Ok(Response::new(AlterTopicConfigsResponse {
                    topic: Some(Metadata::describe(&after)),
                }));
            };
            match self.proposer.propose(command).await {
                Ok(CommandResponse::Topic(t)) => {
                    tracing::info!(topic = %t.name, "topic configuration changed");
                    return Ok(Response::new(AlterTopicConfigsResponse {
                        topic: Some(Metadata::describe(&t)),
                    }));
                }
                Ok(other) => {
                    return Err(status(Error::new(
                        Reason::Internal,
                        format!("unexpected alter configs response {other:?}"),
                    )));
                }
                Err(e)
                    if e.reason == Reason::Unavailable
                        && e.message.starts_with(crate::metadata::CONFIG_CONFLICT)
                        && attempts < 5 =>
                {
                    continue;
                }
                Err(e) => return Err(status(e)),
            }
        }
    }

    async fn decommission_node(
        &self,
        req: Request<DecommissionStorageNodeRequest>,
    ) -> Result<Response<DecommissionStorageNodeResponse>, Status> {
        let node_id = req.into_inner().node_id;
        self.proposer.ensure_leader().map_err(status)?;
        self.proposer
            .metadata()
            .check_decommission(node_id)
            .map_err(status)?;
        self.proposer
            .propose(Command::DecommissionNode { node_id })
            .await
            .map_err(status)?;
        let node = self.proposer.metadata().node_status(node_id);
        if let Some(n) = &node {
            tracing::info!(
                node_id,
                replicas = n.replicas,
                "storage node decommissioning"
            );
        }
        Ok(Response::new(DecommissionStorageNodeResponse { node }))
    }

    async fn recommission_node(
        &self,
        req: Request<RecommissionStorageNodeRequest>,
    ) -> Result<Response<RecommissionStorageNodeResponse>, Status> {
        let node_id = req.into_inner().node_id;
        self.proposer.ensure_leader().map_err(status)?;
        self.proposer
            .propose(Command::RecommissionNode { node_id })
            .await
            .map_err(status)?;
        let node = self.proposer.metadata().node_status(node_id);
        tracing::info!(node_id, "storage node recommissioned");
        Ok(Response::new(RecommissionStorageNodeResponse { node }))
    }

    async fn create_acls(
        &self,
        req: Request<CreateAclsRequest>,
    ) -> Result<Response<CreateAclsResponse>, Status> {
        let req = req.into_inner();
        if req.acls.len() > MAX_ACLS_PER_REQUEST {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                format!(
                    "{} ACLs in one request; at most {MAX_ACLS_PER_REQUEST}",
                    req.acls.len()
                ),
            )));
        }
        let acls = req
            .acls
            .iter()
            .map(streambus_cluster::acl_wire::from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        self.proposer.ensure_leader().map_err(status)?;
        match self.proposer.propose(Command::CreateAcls { acls }).await {
            Ok(CommandResponse::Changed { applied }) => {
                tracing::info!(created = applied, "ACLs created");
                Ok(Response::new(CreateAclsResponse { created: applied }))
            }
            Ok(other) => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected create ACLs response {other:?}"),
            ))),
            Err(e) => Err(status(e)),
        }
    }

    async fn delete_acls(
        &self,
        req: Request<DeleteAclsRequest>,
    ) -> Result<Response<DeleteAclsResponse>, Status> {
        let req = req.into_inner();
        if req.filters.is_empty() || req.filters.len() > MAX_ACLS_PER_REQUEST {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                format!(
                    "{} ACL filters; 1 to {MAX_ACLS_PER_REQUEST} (an empty filter selects every ACL)",
                    req.filters.len()
                ),
            )));
        }
        let filters = req
            .filters
            .iter()
            .map(streambus_cluster::acl_wire::filter_from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(status)?;
        self.proposer.ensure_leader().map_err(status)?;
        match self.proposer.propose(Command::DeleteAcls { filters }).await {
            Ok(CommandResponse::AclsRemoved { acls }) => {
                tracing::info!(deleted = acls.len(), "ACLs deleted");
                Ok(Response::new(DeleteAclsResponse {
                    acls: acls
                        .iter()
                        .map(streambus_cluster::acl_wire::to_wire)
                        .collect(),
                }))
            }
            Ok(other) => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected delete ACLs response {other:?}"),
            ))),
            Err(e) => Err(status(e)),
        }
    }

    async fn alter_client_quotas(
        &self,
        req: Request<AlterClientQuotasRequest>,
    ) -> Result<Response<AlterClientQuotasResponse>, Status> {
        let req = req.into_inner();
        if req.set.len() + req.remove.len() > MAX_ACLS_PER_REQUEST {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                format!("more than {MAX_ACLS_PER_REQUEST} quota changes in one request"),
            )));
        }
        let set: Vec<(String, QuotaRates)> = req
            .set
            .into_iter()
            .map(|q| {
                (
                    q.principal,
                    QuotaRates {
                        produce_bytes_per_second: q.produce_bytes_per_second,
                        consume_bytes_per_second: q.consume_bytes_per_second,
                        requests_per_second: q.requests_per_second,
                    },
                )
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for p in set.iter().map(|(p, _)| p).chain(&req.remove) {
            crate::metadata::validate_quota_principal(p).map_err(status)?;
            if !seen.insert(p) {
                return Err(status(Error::new(
                    Reason::InvalidArgument,
                    format!("quota principal {p:?} is named twice in one request"),
                )));
            }
        }
        self.proposer.ensure_leader().map_err(status)?;
        self.proposer
            .propose(Command::AlterQuotas {
                set,
                remove: req.remove,
            })
            .await
            .map_err(status)?;
        tracing::info!("client quotas changed");
        Ok(Response::new(AlterClientQuotasResponse {}))
    }

    async fn get_metadata(
        &self,
        req: Request<GetMetadataRequest>,
    ) -> Result<Response<ClusterMetadata>, Status> {
        self.proposer.ensure_member().map_err(status)?;
        let metadata = self.proposer.metadata();
        let known = req.into_inner().known_version;
        if known != 0 && known == metadata.version {
            let (id, address) = self.proposer.leader().unwrap_or_default();
            return Ok(Response::new(ClusterMetadata {
                version: metadata.version,
                controller_leader_id: id,
                controller_leader_address: address,
                cluster_id: metadata.cluster_id.clone(),
                unchanged: true,
                ..ClusterMetadata::default()
            }));
        }
        Ok(Response::new(self.proposer.cluster_metadata(&metadata)))
    }

    type WatchMetadataStream = MetadataStream;

    async fn watch_metadata(
        &self,
        req: Request<WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        self.proposer.ensure_member().map_err(status)?;
        self.proposer.ensure_in_contact().map_err(status)?;
        let req = req.into_inner();
        let state = WatchState {
            rx: self.proposer.sm.subscribe(),
            member: self.proposer.member.subscribe(),
            contact: self.proposer.contact.subscribe(),
            last_sent: req.min_version,
            accept_deltas: req.accept_deltas,
            accept_partition_deltas: req.accept_partition_deltas,
            previous: None,
            first: true,
            done: false,
            cancel: self.cancel.clone(),
            proposer: self.proposer.clone(),
        };
        Ok(Response::new(watch_stream(state)))
    }

    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let RegisterNodeRequest {
            node_id,
            address,
            incarnation,
            directory_id,
            cluster_id,
            rack,
            max_partitions,
        } = req.into_inner();
        if node_id == 0 {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                "node_id must not be 0",
            )));
        }
        if address.is_empty() {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                "address must not be empty",
            )));
        }
        self.proposer.ensure_leader().map_err(status)?;
        let metadata = self.proposer.metadata();
        check_registration(
            &metadata,
            node_id,
            incarnation,
            &directory_id,
            &cluster_id,
            self.leases.is_fresh(node_id),
        )
        .map_err(status)?;
        self.leases.heartbeat(node_id);
        self.proposer
            .propose(Command::RegisterNode {
                node_id,
                address: address.clone(),
                incarnation,
                directory_id,
                rack,
                max_partitions,
            })
            .await
            .map_err(status)?;
        tracing::info!(node_id, %address, incarnation, max_partitions, "storage node registered");
        Ok(Response::new(RegisterNodeResponse {
            lease_ms: self.lease_ms(),
            cluster_id: metadata.cluster_id.clone(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let HeartbeatRequest {
            node_id,
            incarnation,
            offline_replicas,
        } = req.into_inner();
        self.proposer.ensure_leader().map_err(status)?;
        let metadata = self.proposer.metadata();
        let Some(node) = metadata.nodes.get(&node_id) else {
            return Err(status(Error::new(
                Reason::InvalidArgument,
                format!("storage node {node_id} is not registered; call RegisterNode first"),
            )));
        };
        if node.incarnation != 0 && incarnation != node.incarnation {
            // Not fatal here: this leader's view may lag a registration
            // made through its predecessor. The node registers again, and
            // `check_registration` (which knows the data directory)
            // decides whether it is a conflict.
            return Err(status(Error::new(
                Reason::InvalidArgument,
                format!(
                    "storage node {node_id} is registered with incarnation {:x}, not {incarnation:x}; register again",
                    node.incarnation
                ),
            )));
        }
        // The node counts its lease from when it sent this heartbeat: renew
        // it only on a quorum acknowledgment that fences any later leader
        // (see `leadership.rs`). A leader cut off from the other
        // controllers refuses, and the node moves to the one they elect.
        self.proposer.confirm_leadership().await.map_err(status)?;
        self.leases.heartbeat(node_id);
        // Only replicas of the current incarnation of a topic that are
        // assigned to this node count: a report built from older metadata
        // must not flip state on every beat.
        let reported: ReplicaRefs = offline_replicas
            .iter()
            .filter(|r| {
                metadata.topics.get(&r.topic).is_some_and(|t| {
                    t.topic_id == r.topic_id
                        && t.partitions
                            .get(r.partition as usize)
                            .is_some_and(|p| p.replicas.contains(&node_id))
                })
            })
            .map(|r| (r.topic.clone(), r.partition))
            .collect();
        let recorded: ReplicaRefs = metadata
            .topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.offline_replicas.contains(&node_id))
                    .map(|p| (t.name.clone(), p.partition))
            })
            .collect();
        if reported != recorded {
            for r in &offline_replicas {
                tracing::warn!(node_id, topic = %r.topic, partition = r.partition, reason = %r.reason, "replica reported offline");
            }
            // The lease is renewed either way; a failed proposal is retried
            // by the next heartbeat's report.
            if let Err(e) = self
                .proposer
                .propose(Command::SetOfflineReplicas {
                    node_id,
                    replicas: reported.into_iter().collect(),
                })
                .await
            {
                tracing::warn!(node_id, error = %e, "cannot record offline replicas");
            }
        }
        Ok(Response::new(HeartbeatResponse {
            lease_ms: self.lease_ms(),
        }))
    }

    async fn alter_partition(
        &self,
        req: Request<AlterPartitionRequest>,
    ) -> Result<Response<AlterPartitionResponse>, Status> {
        let AlterPartitionRequest {
            node_id,
            incarnation,
            topic,
            topic_id,
            partition,
            leader_epoch,
            partition_epoch,
            isr,
        } = req.into_inner();
        self.proposer.ensure_leader().map_err(status)?;
        let metadata = self.proposer.metadata();
        match metadata.nodes.get(&node_id) {
            Some(n) if n.incarnation == incarnation || n.incarnation == 0 => {}
            _ => {
                return Err(status(Error::new(
                    Reason::NotLeader,
                    format!(
                        "storage node {node_id} incarnation {incarnation:x} is not the registered one"
                    ),
                )));
            }
        }
        metadata
            .check_alter_isr(
                &topic,
                &topic_id,
                partition,
                node_id,
                leader_epoch,
                partition_epoch,
                &isr,
            )
            .map_err(status)?;
        let command = Command::AlterIsr {
            topic: topic.clone(),
            topic_id,
            partition,
            leader: node_id,
            leader_epoch,
            partition_epoch,
            isr: isr.clone(),
        };
        match self.proposer.propose(command).await.map_err(status)? {
            CommandResponse::Partition(p) => {
                tracing::info!(%topic, partition, isr = ?p.isr, partition_epoch = p.partition_epoch, "in-sync replicas changed");
                Ok(Response::new(AlterPartitionResponse {
                    partition: Some(Metadata::describe_partition(&p)),
                }))
            }
            other => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected alter partition response {other:?}"),
            ))),
        }
    }

    async fn describe_controller(
        &self,
        _: Request<DescribeControllerRequest>,
    ) -> Result<Response<ControllerStatus>, Status> {
        Ok(Response::new(self.proposer.status()))
    }

    async fn add_controller(
        &self,
        req: Request<AddControllerRequest>,
    ) -> Result<Response<AddControllerResponse>, Status> {
        let AddControllerRequest { node_id, address } = req.into_inner();
        let members = self
            .membership
            .add(node_id, &address)
            .await
            .map_err(status)?;
        Ok(Response::new(AddControllerResponse { members }))
    }

    async fn remove_controller(
        &self,
        req: Request<RemoveControllerRequest>,
    ) -> Result<Response<RemoveControllerResponse>, Status> {
        let node_id = req.into_inner().node_id;
        let members = self.membership.remove(node_id).await.map_err(status)?;
        Ok(Response::new(RemoveControllerResponse { members }))
    }

    async fn allocate_producer_ids(
        &self,
        req: Request<AllocateProducerIdsRequest>,
    ) -> Result<Response<AllocateProducerIdsResponse>, Status> {
        self.proposer.ensure_leader().map_err(status)?;
        let count = req.into_inner().count;
        match self
            .proposer
            .propose(Command::AllocateProducerIds { count })
            .await
            .map_err(status)?
        {
            CommandResponse::ProducerIds { first, count } => {
                tracing::debug!(first, count, "allocated producer ids");
                Ok(Response::new(AllocateProducerIdsResponse {
                    first_id: first,
                    count,
                }))
            }
            other => Err(status(Error::new(
                Reason::Internal,
                format!("unexpected producer id response {other:?}"),
            ))),
        }
    }
}

/// Decides whether a storage node may register:
/// - not before the cluster has an id (retriable);
/// - a data directory stamped by another cluster is refused;
/// - the same node id from a different data directory while the current
///   registration's lease is still valid is a second node configured with
///   the same id, and is refused. The same directory with a new
///   incarnation is a restart (the directory lock rules out two processes
///   on one directory); a different directory after the lease lapsed is a
///   replaced node.
fn check_registration(
    metadata: &Metadata,
    node_id: u64,
    incarnation: u64,
    directory_id: &str,
    cluster_id: &str,
    lease_fresh: bool,
) -> Result<(), Error> {
    if metadata.cluster_id.is_empty() {
        return Err(Error::new(
            Reason::Unavailable,
            "the cluster id is not initialized yet",
        ));
    }
    if !cluster_id.is_empty() && cluster_id != metadata.cluster_id {
        return Err(Error::new(
            Reason::ClusterIdMismatch,
            format!(
                "storage node {node_id}'s data directory belongs to cluster {cluster_id}, not to this cluster ({})",
                metadata.cluster_id
            ),
        ));
    }
    if let Some(node) = metadata.nodes.get(&node_id)
        && node.alive
        && lease_fresh
        && node.incarnation != incarnation
        && !node.directory_id.is_empty()
        && node.directory_id != directory_id
    {
        return Err(Error::new(
            Reason::NodeIdConflict,
            format!(
                "storage node id {node_id} is already registered by a live node at {} with another data directory; give each storage node its own node_id",
                node.address
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Dirty, StorageNode};

    fn cluster() -> Metadata {
        let mut m = Metadata {
            cluster_id: "c1".into(),
            ..Metadata::default()
        };
        m.nodes.insert(
            7,
            StorageNode {
                node_id: 7,
                address: "127.0.0.1:1".into(),
                alive: true,
                incarnation: 11,
                directory_id: "dir-a".into(),
                rack: String::new(),
                decommissioning: false,
                max_partitions: 0,
            },
        );
        m
    }

    #[test]
    fn registration_waits_for_the_cluster_id() {
        let err = check_registration(&Metadata::default(), 1, 1, "d", "", false).unwrap_err();
        assert_eq!(err.reason, Reason::Unavailable);
        assert!(err.retriable());
    }

    #[test]
    fn a_directory_from_another_cluster_is_refused() {
        let err = check_registration(&cluster(), 8, 1, "d", "other", false).unwrap_err();
        assert_eq!(err.reason, Reason::ClusterIdMismatch);
        assert!(err.message.contains("other") && err.message.contains("c1"));
        check_registration(&cluster(), 8, 1, "d", "c1", false).unwrap();
        check_registration(&cluster(), 8, 1, "d", "", false).unwrap();
    }

    #[test]
    fn two_live_nodes_with_one_id_are_refused() {
        let m = cluster();
        let err = check_registration(&m, 7, 12, "dir-b", "c1", true).unwrap_err();
        assert_eq!(err.reason, Reason::NodeIdConflict);
        // The same directory again: a restart.
        check_registration(&m, 7, 12, "dir-a", "c1", true).unwrap();
        // The same process re-registering.
        check_registration(&m, 7, 11, "dir-b", "c1", true).unwrap();
        // The old registration's lease lapsed: a replaced node.
        check_registration(&m, 7, 12, "dir-b", "c1", false).unwrap();
        let mut dead = m.clone();
        dead.apply(
            1,
            &Command::SetNodeAlive {
                node_id: 7,
                alive: false,
            },
            &mut Dirty::default(),
        );
        check_registration(&dead, 7, 12, "dir-b", "c1", true).unwrap();
    }
}
