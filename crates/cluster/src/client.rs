//! The client other services (storage nodes, gateways, the operator, the
//! CLI) use to talk to the controllers.
//!
//! Writes go to the Raft leader: the client remembers the last leader,
//! follows `NOT_CONTROLLER_LEADER` hints and retries retriable errors with
//! backoff across every configured address for a bounded time (10 s by
//! default) before returning the last error. Reads go to any controller.
//! Every attempt has a deadline of its own (5 s by default), enforced by
//! the client as well as sent as `grpc-timeout`: a controller that accepts
//! the request but never answers costs one attempt (`TIMEOUT`), never a
//! hung caller; opening the metadata watch has the same deadline, up to the
//! first snapshot when the watch has none yet.
//! [`ControllerClient::watch_metadata`] never ends: it reconnects forever
//! and never yields a version older than one it already yielded.
//!
//! A retried `CreateTopic` whose first attempt was applied but not answered
//! (leader crash, timeout) returns `TOPIC_ALREADY_EXISTS`.
//!
//! Membership changes (`add_controller`, `remove_controller`) follow leader
//! hints and skip controllers that cannot be reached, but return every other
//! error at once: their refusals (`UNAVAILABLE` for a new controller that
//! does not answer or a quorum that would be lost) are answers, not
//! transient failures.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use streambus_proto::error::REASON_METADATA_KEY;
use streambus_proto::internal::controller_service_client::ControllerServiceClient;
use streambus_proto::internal::{
    AllocateProducerIdsRequest, AlterPartitionRequest, ClusterMetadata, DescribeControllerRequest,
    GetMetadataRequest, HeartbeatRequest, RegisterNodeRequest, RegisterNodeResponse,
    WatchMetadataRequest,
};
use streambus_proto::v1::{
    AclBinding, AclBindingFilter, AddControllerRequest, AlterClientQuotasRequest,
    AlterTopicConfigsRequest, ClientQuota, ControllerMember, ControllerStatus, CreateAclsRequest,
    CreatePartitionsRequest, CreateTopicRequest, DecommissionStorageNodeRequest, DeleteAclsRequest,
    DeleteTopicRequest, PartitionDescription, RecommissionStorageNodeRequest,
    RemoveControllerRequest, StorageNodeStatus, TopicDescription,
};
use streambus_proto::{Error, Reason};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::MAX_METADATA_MESSAGE_BYTES;
use crate::view::ClusterView;

/// How long one request attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one membership change attempt may take: the controller bounds
/// a new controller's catch-up (30 s) and each voter change (10 s).
const MEMBERSHIP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const MIN_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

type Client = ControllerServiceClient<Channel>;

/// A handle on the controller group. Cheap to clone; clones share
/// connections and the known leader.
#[derive(Clone)]
pub struct ControllerClient {
    inner: Arc<Inner>,
}

struct Inner {
    addresses: Vec<String>,
    retry_for: Duration,
    attempt_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
}

fn request_for<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    // A metadata change made for a traced request joins its trace.
    streambus_service::trace::inject(&mut req);
    req
}

/// Which failed attempts [`ControllerClient`] tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every retriable error.
    Retriable,
    /// Only a redirect to the leader and a controller that could not be
    /// reached at all: for changes whose refusals (a controller the leader
    /// cannot reach, a quorum that would be lost) must reach the caller as
    /// they are.
    ToLeader,
}

impl ControllerClient {
    /// A client for the controllers at `addresses` (`host:port`, or
    /// `http://host:port`). Connections are made lazily.
    pub fn new(addresses: Vec<String>) -> Result<ControllerClient, Error> {
        let addresses: Vec<String> = addresses.into_iter().filter(|a| !a.is_empty()).collect();
        if addresses.is_empty() {
            return Err(Error::new(
                Reason::InvalidArgument,
                "no controller address given",
            ));
        }
        let client = ControllerClient {
            inner: Arc::new(Inner {
                addresses,
                retry_for: Duration::from_secs(10),
                attempt_timeout: ATTEMPT_TIMEOUT,
                channels: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
            }),
        };
        for address in &client.inner.addresses {
            client.channel(address)?;
        }
        Ok(client)
    }

    /// Changes how long writes and reads keep retrying (default 10 s).
    pub fn with_retry_for(self, retry_for: Duration) -> ControllerClient {
        let attempt_timeout = self.inner.attempt_timeout;
        self.rebuilt(retry_for, attempt_timeout)
    }

    /// Changes how long one attempt (and opening the metadata watch) may
    /// take before it counts as `TIMEOUT` (default 5 s; membership changes
    /// keep their own, longer deadline).
    pub fn with_attempt_timeout(self, attempt_timeout: Duration) -> ControllerClient {
        let retry_for = self.inner.retry_for;
        self.rebuilt(retry_for, attempt_timeout)
    }

    fn rebuilt(self, retry_for: Duration, attempt_timeout: Duration) -> ControllerClient {
        ControllerClient {
            inner: Arc::new(Inner {
                addresses: self.inner.addresses.clone(),
                retry_for,
                attempt_timeout,
                channels: Mutex::new(
                    self.inner
                        .channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                ),
                leader: Mutex::new(self.known_leader()),
            }),
        }
    }

    /// The configured controller addresses.
    pub fn addresses(&self) -> &[String] {
        &self.inner.addresses
    }

    fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = streambus_service::grpc::channel(address).map_err(|e| {
            Error::new(
                Reason::InvalidArgument,
                format!("bad controller address {address:?}: {e}"),
            )
        })?;
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn client(&self, address: &str) -> Result<Client, Error> {
        Ok(ControllerServiceClient::new(self.channel(address)?)
            .max_decoding_message_size(MAX_METADATA_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_METADATA_MESSAGE_BYTES))
    }

    /// A request carrying this client's attempt deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        request_for(message, self.inner.attempt_timeout)
    }

    fn known_leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_leader(&self, address: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = address;
    }

    /// Runs `call` against the leader (or, for reads, any controller),
    /// following leader hints and retrying retriable errors until
    /// `retry_for` has passed.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(Retry::Retriable, self.inner.attempt_timeout, call)
            .await
    }

    /// Like [`Self::call`]; each attempt is abandoned with `TIMEOUT` after
    /// `attempt_timeout` (pass the same to [`request_for`]).
    async fn call_with<T, F, Fut>(
        &self,
        retry: Retry,
        attempt_timeout: Duration,
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.retry_for;
        let addresses = &self.inner.addresses;
        let mut next = 0usize;
        let mut target = self.known_leader().unwrap_or_else(|| addresses[0].clone());
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt = tokio::time::timeout(attempt_timeout, call(self.client(&target)?));
            let (err, answered) = match attempt.await {
                Ok(Ok(response)) => {
                    self.set_leader(Some(target));
                    return Ok(response.into_inner());
                }
                // A controller's own errors carry their reason; transport
                // failures do not.
                Ok(Err(status)) => (
                    Error::from_status(&status),
                    status.metadata().contains_key(REASON_METADATA_KEY),
                ),
                Err(_) => (
                    Error::new(
                        Reason::Timeout,
                        format!(
                            "controller {target} did not answer within {} ms",
                            attempt_timeout.as_millis()
                        ),
                    ),
                    false,
                ),
            };
            let again = match retry {
                Retry::Retriable => err.retriable(),
                Retry::ToLeader => {
                    err.reason == Reason::NotControllerLeader
                        || (!answered && err.reason == Reason::Unavailable)
                }
            };
            // NOT_LEADER from a controller means the caller's view of a
            // partition is stale: the same request cannot succeed.
            if !again || err.reason == Reason::NotLeader || Instant::now() >= deadline {
                return Err(err);
            }
            let pause = match &err.leader_hint {
                Some(hint) if err.reason == Reason::NotControllerLeader && *hint != target => {
                    tracing::debug!(from = %target, to = %hint, "following controller leader hint");
                    target = hint.clone();
                    MIN_BACKOFF
                }
                // The leader itself answered with a retriable condition
                // (e.g. INSUFFICIENT_NODES while nodes start): ask it again,
                // so the final error is its answer, not another
                // controller's redirect.
                _ if answered
                    && !matches!(
                        err.reason,
                        Reason::NotControllerLeader | Reason::Unavailable
                    ) =>
                {
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
                _ => {
                    tracing::debug!(controller = %target, error = %err, "controller request failed; trying another");
                    self.set_leader(None);
                    // Rotate through the configured addresses.
                    if addresses[next % addresses.len()] == target {
                        next += 1;
                    }
                    target = addresses[next % addresses.len()].clone();
                    next += 1;
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
        }
    }

    /// Creates a topic; returns it as created (effective configs, placement).
    pub async fn create_topic(&self, req: CreateTopicRequest) -> Result<TopicDescription, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(req.clone());
                async move { c.create_topic(req).await }
            })
            .await?;
        response
            .topic
            .ok_or_else(|| Error::new(Reason::Internal, "controller returned no topic"))
    }

    /// Grows a topic to `partitions` partitions; returns it as changed.
    pub async fn create_partitions(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<TopicDescription, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(CreatePartitionsRequest {
                    topic: topic.to_string(),
                    partitions,
                });
                async move { c.create_partitions(req).await }
            })
            .await?;
        response
            .topic
            .ok_or_else(|| Error::new(Reason::Internal, "controller returned no topic"))
    }

    /// Changes a topic's configuration incrementally (`set` keys take the
    /// given values, `delete` keys go back to their defaults); returns the
    /// topic as changed (or as it would be, with `validate_only`).
    pub async fn alter_topic_configs(
        &self,
        request: AlterTopicConfigsRequest,
    ) -> Result<TopicDescription, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(request.clone());
                async move { c.alter_topic_configs(req).await }
            })
            .await?;
        response
            .topic
            .ok_or_else(|| Error::new(Reason::Internal, "controller returned no topic"))
    }

    /// Starts decommissioning a storage node; returns the node as the
    /// change left it.
    pub async fn decommission_node(&self, node_id: u64) -> Result<StorageNodeStatus, Error> {
        let response = self
            .call(|mut c| async move {
                c.decommission_node(self.request(DecommissionStorageNodeRequest { node_id }))
                    .await
            })
            .await?;
        response
            .node
            .ok_or_else(|| Error::new(Reason::Internal, "controller returned no node"))
    }

    /// Ends storage node `node_id`'s decommissioning.
    pub async fn recommission_node(&self, node_id: u64) -> Result<StorageNodeStatus, Error> {
        let response = self
            .call(|mut c| async move {
                c.recommission_node(self.request(RecommissionStorageNodeRequest { node_id }))
                    .await
            })
            .await?;
        response
            .node
            .ok_or_else(|| Error::new(Reason::Internal, "controller returned no node"))
    }

    /// Adds ACLs; how many were new.
    pub async fn create_acls(&self, acls: Vec<AclBinding>) -> Result<u32, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(CreateAclsRequest { acls: acls.clone() });
                async move { c.create_acls(req).await }
            })
            .await?;
        Ok(response.created)
    }

    /// Removes the ACLs the filters select; those removed. A retry after
    /// a lost answer may find them gone already and return fewer.
    pub async fn delete_acls(
        &self,
        filters: Vec<AclBindingFilter>,
    ) -> Result<Vec<AclBinding>, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(DeleteAclsRequest {
                    filters: filters.clone(),
                });
                async move { c.delete_acls(req).await }
            })
            .await?;
        Ok(response.acls)
    }

    /// Sets principals' quotas and removes others'.
    pub async fn alter_client_quotas(
        &self,
        set: Vec<ClientQuota>,
        remove: Vec<String>,
    ) -> Result<(), Error> {
        self.call(|mut c| {
            let req = self.request(AlterClientQuotasRequest {
                set: set.clone(),
                remove: remove.clone(),
            });
            async move { c.alter_client_quotas(req).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        self.call(|mut c| {
            let req = self.request(DeleteTopicRequest {
                name: name.to_string(),
            });
            async move { c.delete_topic(req).await }
        })
        .await?;
        Ok(())
    }

    /// The current metadata of some controller (possibly a lagging follower;
    /// compare `version`s).
    pub async fn get_metadata(&self) -> Result<ClusterMetadata, Error> {
        self.call(|mut c| async move {
            c.get_metadata(self.request(GetMetadataRequest::default()))
                .await
        })
        .await
    }

    /// The metadata, or `None` when the answering controller is at version
    /// `known` (its reply then carries no nodes or topics). A controller
    /// that does not know the probe answers with the whole snapshot.
    pub async fn get_metadata_if_changed(
        &self,
        known: u64,
    ) -> Result<Option<ClusterMetadata>, Error> {
        let md = self
            .call(|mut c| async move {
                c.get_metadata(self.request(GetMetadataRequest {
                    known_version: known,
                }))
                .await
            })
            .await?;
        Ok((!md.unchanged).then_some(md))
    }

    /// The Raft view of whichever controller answers (the known leader
    /// first). To ask one controller, make a client of its address alone.
    pub async fn describe_controller(&self) -> Result<ControllerStatus, Error> {
        self.call(|mut c| async move {
            c.describe_controller(self.request(DescribeControllerRequest {}))
                .await
        })
        .await
    }

    /// Adds controller `node_id`, reachable at `address`, to the Raft
    /// group: as a learner, then as a voter once it has caught up. It must
    /// be running with an empty store (`controller.join = true`). Returns
    /// the members after the change. Only leader redirects and unreachable
    /// controllers are retried: refusals come back as they are.
    pub async fn add_controller(
        &self,
        node_id: u64,
        address: &str,
    ) -> Result<Vec<ControllerMember>, Error> {
        let req = AddControllerRequest {
            node_id,
            address: address.to_string(),
        };
        let r = self
            .call_with(Retry::ToLeader, MEMBERSHIP_ATTEMPT_TIMEOUT, |mut c| {
                let req = request_for(req.clone(), MEMBERSHIP_ATTEMPT_TIMEOUT);
                async move { c.add_controller(req).await }
            })
            .await?;
        Ok(r.members)
    }

    /// Removes controller `node_id` (a voter or a learner) from the Raft
    /// group. Refused for the last voter and when the voters left could not
    /// reach a quorum among the controllers that answer now. Returns the
    /// members after the change; retried like [`Self::add_controller`].
    pub async fn remove_controller(&self, node_id: u64) -> Result<Vec<ControllerMember>, Error> {
        let r = self
            .call_with(
                Retry::ToLeader,
                MEMBERSHIP_ATTEMPT_TIMEOUT,
                |mut c| async move {
                    c.remove_controller(request_for(
                        RemoveControllerRequest { node_id },
                        MEMBERSHIP_ATTEMPT_TIMEOUT,
                    ))
                    .await
                },
            )
            .await?;
        Ok(r.members)
    }

    /// A block of `count` idempotent producer ids: `(first, count)`.
    pub async fn allocate_producer_ids(&self, count: u32) -> Result<(i64, u32), Error> {
        let r = self
            .call(|mut c| async move {
                c.allocate_producer_ids(self.request(AllocateProducerIdsRequest { count }))
                    .await
            })
            .await?;
        Ok((r.first_id, r.count))
    }

    /// Registers (or re-registers) a storage node; returns the lease and
    /// the cluster id.
    pub async fn register_node(
        &self,
        req: RegisterNodeRequest,
    ) -> Result<RegisterNodeResponse, Error> {
        self.call(|mut c| {
            let req = self.request(req.clone());
            async move { c.register_node(req).await }
        })
        .await
    }

    /// Asks for an ISR change of a partition this node leads; returns the
    /// partition as changed. A stale view gets `NOT_LEADER`, which is not
    /// retried here (the caller must refresh first).
    pub async fn alter_partition(
        &self,
        req: AlterPartitionRequest,
    ) -> Result<PartitionDescription, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(req.clone());
                async move { c.alter_partition(req).await }
            })
            .await?;
        response.partition.ok_or_else(|| {
            Error::new(
                Reason::Internal,
                "the controller answered without the partition",
            )
        })
    }

    /// Renews a storage node's lease and reports its offline replicas;
    /// returns the lease in ms.
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<u64, Error> {
        let response = self
            .call(|mut c| {
                let req = self.request(req.clone());
                async move { c.heartbeat(req).await }
            })
            .await?;
        Ok(response.lease_ms)
    }

    /// Every new metadata snapshot, forever: the current one first, then one
    /// per change. Reconnects (with backoff, trying each controller in turn)
    /// whenever a stream fails, and skips snapshots not newer than the last
    /// one yielded.
    pub fn watch_metadata(&self) -> impl Stream<Item = ClusterView> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            next: 0,
            last_version: None,
            stream: None,
            base: None,
            last: ClusterView::default(),
            first_pending: false,
            backoff: MIN_BACKOFF,
        };
        futures::stream::unfold(state, |mut st| async move {
            let md = st.next_metadata().await;
            Some((md, st))
        })
    }
}

struct WatchState {
    client: ControllerClient,
    next: usize,
    last_version: Option<u64>,
    stream: Option<tonic::Streaming<ClusterMetadata>>,
    /// The metadata as of the open stream's last message, deltas merged:
    /// the next delta applies to it.
    base: Option<ClusterView>,
    /// The last view yielded: a new stream's first (whole) snapshot shares
    /// what it has equal with it.
    last: ClusterView,
    /// The stream opened without a version and its first message (the
    /// controller's current metadata, sent at once) has not come yet.
    first_pending: bool,
    backoff: Duration,
}

impl WatchState {
    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_WATCH_BACKOFF);
    }

    async fn next_metadata(&mut self) -> ClusterView {
        loop {
            let Some(stream) = &mut self.stream else {
                let addresses = &self.client.inner.addresses;
                let address = match (self.next, self.client.known_leader()) {
                    (0, Some(leader)) => leader,
                    (n, _) => addresses[n % addresses.len()].clone(),
                };
                self.next += 1;
                let timeout = self.client.inner.attempt_timeout;
                let opened = match self.client.client(&address) {
                    Ok(mut c) => {
                        let open = c.watch_metadata(WatchMetadataRequest {
                            min_version: self.last_version.unwrap_or(0),
                            accept_deltas: true,
                            accept_partition_deltas: true,
                        });
                        match tokio::time::timeout(timeout, open).await {
                            Ok(opened) => opened.map(tonic::Response::into_inner),
                            Err(_) => Err(Error::new(
                                Reason::Timeout,
                                format!(
                                    "controller {address} did not open the metadata watch within {} ms",
                                    timeout.as_millis()
                                ),
                            )
                            .to_status()),
                        }
                    }
                    Err(e) => Err(e.to_status()),
                };
                match opened {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        // A stream's first message is whole.
                        self.base = None;
                        // Without a version yet, the controller sends its
                        // current metadata at once.
                        self.first_pending = self.last_version.is_none();
                    }
                    Err(status) => {
                        tracing::debug!(controller = %address, error = %status, "cannot watch metadata; retrying");
                        self.pause().await;
                    }
                }
                continue;
            };
            // A controller sends its current metadata at once to a watch
            // that has none: one whose first message does not come within
            // the attempt deadline is as good as one that did not open.
            // Otherwise messages come only with changes (a dead
            // connection is found by keepalive).
            let message = if self.first_pending {
                let timeout = self.client.inner.attempt_timeout;
                match tokio::time::timeout(timeout, stream.message()).await {
                    Ok(message) => message,
                    Err(_) => {
                        tracing::debug!(
                            "the metadata watch sent nothing within {} ms; retrying",
                            timeout.as_millis()
                        );
                        Err(tonic::Status::deadline_exceeded("no metadata"))
                    }
                }
            } else {
                stream.message().await
            };
            self.first_pending = false;
            match message {
                Ok(Some(md)) => {
                    self.backoff = MIN_BACKOFF;
                    let from = match (&self.base, md.delta) {
                        (Some(base), _) => base,
                        (None, false) => &self.last,
                        (None, true) => {
                            tracing::debug!(
                                "a metadata delta came first on its stream; reconnecting"
                            );
                            self.stream = None;
                            self.pause().await;
                            continue;
                        }
                    };
                    let view = match from.apply(md) {
                        Ok(view) => view,
                        Err(e) => {
                            tracing::warn!(error = %e, "the metadata watch sent an update that does not follow the one before; reconnecting");
                            self.stream = None;
                            self.base = None;
                            self.pause().await;
                            continue;
                        }
                    };
                    let newer = self.last_version.is_none_or(|v| view.version > v);
                    self.base = Some(view.clone());
                    if newer {
                        self.last_version = Some(view.version);
                        self.last = view.clone();
                        return view;
                    }
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.base = None;
                    self.pause().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tonic::codegen::http;

    use super::*;

    /// A response body that never yields anything.
    struct Never;

    impl http_body::Body for Never {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    /// A controller whose handlers take every call and never answer: the
    /// response starts, the message never comes. (The server's own
    /// `grpc-timeout` handling bounds only the start of a response, so
    /// nothing on that side ends the call.)
    #[derive(Clone)]
    struct Silent;

    impl tonic::server::NamedService for Silent {
        const NAME: &'static str = "streambus.internal.v1.ControllerService";
    }

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Silent {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            let response = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::new(Never))
                .unwrap();
            std::future::ready(Ok(response))
        }
    }

    async fn silent_controller() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Silent)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        address
    }

    #[tokio::test]
    async fn a_controller_that_never_answers_times_out() {
        let address = silent_controller().await;
        let bounded = Duration::from_secs(5);
        // One attempt: TIMEOUT after the attempt deadline.
        let once = ControllerClient::new(vec![address.clone()])
            .unwrap()
            .with_retry_for(Duration::ZERO)
            .with_attempt_timeout(Duration::from_millis(300));
        let err = tokio::time::timeout(bounded, once.heartbeat(HeartbeatRequest::default()))
            .await
            .expect("a heartbeat to a silent controller returns")
            .unwrap_err();
        assert_eq!(err.reason, Reason::Timeout, "{err}");
        assert!(err.message.contains(&address), "{}", err.message);

        // Retried until the retry window closes, then TIMEOUT.
        let retried = ControllerClient::new(vec![address])
            .unwrap()
            .with_retry_for(Duration::from_millis(800))
            .with_attempt_timeout(Duration::from_millis(300));
        let err = tokio::time::timeout(bounded, retried.get_metadata())
            .await
            .expect("a read from a silent controller returns")
            .unwrap_err();
        assert_eq!(err.reason, Reason::Timeout, "{err}");
    }

    /// A controller that answers every call with one error.
    #[derive(Clone)]
    struct Answers(Error);

    impl tonic::server::NamedService for Answers {
        const NAME: &'static str = "streambus.internal.v1.ControllerService";
    }

    impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Answers {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            std::future::ready(Ok(self.0.to_status().into_http()))
        }
    }

    async fn answering(err: Error) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Answers(err))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        address
    }

    /// The leader's own retriable answer (INSUFFICIENT_NODES) is retried at
    /// the leader and is what the caller finally gets, not a follower's
    /// redirect picked up while rotating.
    #[tokio::test]
    async fn a_retriable_answer_of_the_leader_is_the_final_error() {
        let leader = answering(Error::new(
            Reason::InsufficientNodes,
            "cannot decommission storage node 3",
        ))
        .await;
        let follower = answering(
            Error::new(Reason::NotControllerLeader, "not the leader")
                .with_leader_hint(leader.clone()),
        )
        .await;
        let client = ControllerClient::new(vec![leader, follower])
            .unwrap()
            .with_retry_for(Duration::from_millis(1500));
        let err = client.decommission_node(3).await.unwrap_err();
        assert_eq!(err.reason, Reason::InsufficientNodes, "{err}");
    }

    /// A metadata watch on a controller that never sends its first
    /// snapshot times out, and the watch moves on to the next controller.
    #[tokio::test]
    async fn a_watch_open_that_never_answers_moves_to_the_next_controller() {
        let silent = silent_controller().await;
        let client = ControllerClient::new(vec![silent.clone(), silent])
            .unwrap()
            .with_attempt_timeout(Duration::from_millis(200));
        let mut state = WatchState {
            client,
            next: 0,
            last_version: None,
            stream: None,
            base: None,
            last: ClusterView::default(),
            first_pending: false,
            backoff: MIN_BACKOFF,
        };
        // Without a deadline up to the first snapshot, the first watch never
        // ends and `next` stays at 1.
        let _ = tokio::time::timeout(Duration::from_secs(2), state.next_metadata()).await;
        assert!(state.next >= 3, "watch opens attempted: {}", state.next);
    }
}
