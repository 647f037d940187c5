//! Fakes for gateway tests: a ControllerService serving metadata the test
//! controls, and StorageService nodes whose behaviour the test chooses. The
//! gateway under test is the real one (`serve_with_listener`), reached over
//! loopback gRPC.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::Stream;
use prometheus_client::registry::Registry;
use streambus_gateway::{GatewayConfig, Metrics};
use streambus_proto::internal::controller_service_server::{
    ControllerService, ControllerServiceServer,
};
use streambus_proto::internal::storage_service_server::{StorageService, StorageServiceServer};
use streambus_proto::internal::{
    AlterPartitionRequest, AlterPartitionResponse, AppendRequest, AppendResponse, ClusterMetadata,
    DescribeControllerRequest, GetMetadataRequest, HeartbeatRequest, HeartbeatResponse,
    ListOffsetsRequest, ListOffsetsResponse, RegisterNodeRequest, RegisterNodeResponse,
    ReplicaFetchRequest, ReplicaFetchResponse, StorageFetchRequest, StorageFetchResponse,
    StorageNodeInfo, TopicMetadata, WatchMetadataRequest,
};
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    PartitionDescription,
};
use streambus_proto::{Error, Reason};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Metadata with one topic `t` whose partition `p` is led by
/// `leaders[p]`, and the given nodes (id, address).
pub fn metadata(version: u64, nodes: &[(u64, String)], leaders: &[u64]) -> ClusterMetadata {
    ClusterMetadata {
        version,
        nodes: nodes
            .iter()
            .map(|(id, addr)| StorageNodeInfo {
                node_id: *id,
                address: addr.clone(),
                alive: true,
                rack: String::new(),
                decommissioning: false,
                max_partitions: 0,
            })
            .collect(),
        topics: vec![TopicMetadata {
            partial: false,
            name: "t".to_string(),
            topic_id: "t-id".to_string(),
            replication_factor: 1,
            configs: Default::default(),
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(p, leader)| PartitionDescription {
                    partition: p as u32,
                    leader: *leader,
                    leader_epoch: version,
                    replicas: vec![*leader],
                    isr: vec![*leader],
                    offline_replicas: vec![],
                    partition_epoch: 0,
                })
                .collect(),
        }],
        ..Default::default()
    }
}

/// A controller whose metadata the test sets, and which can be made to
/// stop answering.
#[derive(Clone)]
pub struct FakeController {
    pub addr: SocketAddr,
    md: Arc<watch::Sender<ClusterMetadata>>,
    up: Arc<watch::Sender<bool>>,
    /// `GetMetadata` calls answered.
    pub get_metadata_calls: Arc<AtomicUsize>,
    /// Of those, the ones answered with the whole snapshot (the caller
    /// did not already hold its version).
    pub whole_snapshots: Arc<AtomicUsize>,
}

impl FakeController {
    pub async fn start(md: ClusterMetadata) -> FakeController {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = FakeController {
            addr,
            md: Arc::new(watch::channel(md).0),
            up: Arc::new(watch::channel(true).0),
            get_metadata_calls: Arc::default(),
            whole_snapshots: Arc::default(),
        };
        let svc = ControllerServiceServer::new(c.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        c
    }

    /// Publishes new metadata (watchers and later GetMetadata see it).
    pub fn set(&self, md: ClusterMetadata) {
        self.md.send_replace(md);
    }

    /// Makes the controller answer (true) or fail every call and end every
    /// watch stream with UNAVAILABLE (false).
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    fn check_up(&self) -> Result<(), Status> {
        if *self.up.borrow() {
            Ok(())
        } else {
            Err(Error::new(Reason::Unavailable, "controller down (test)").to_status())
        }
    }
}

type MdStream = Pin<Box<dyn Stream<Item = Result<ClusterMetadata, Status>> + Send>>;

#[tonic::async_trait]
impl ControllerService for FakeController {
    async fn alter_partition(
        &self,
        _: Request<AlterPartitionRequest>,
    ) -> Result<Response<AlterPartitionResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn describe_controller(
        &self,
        _: Request<DescribeControllerRequest>,
    ) -> Result<Response<streambus_proto::v1::ControllerStatus>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn allocate_producer_ids(
        &self,
        _: Request<streambus_proto::internal::AllocateProducerIdsRequest>,
    ) -> Result<Response<streambus_proto::internal::AllocateProducerIdsResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn add_controller(
        &self,
        _: Request<streambus_proto::v1::AddControllerRequest>,
    ) -> Result<Response<streambus_proto::v1::AddControllerResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn remove_controller(
        &self,
        _: Request<streambus_proto::v1::RemoveControllerRequest>,
    ) -> Result<Response<streambus_proto::v1::RemoveControllerResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn create_topic(
        &self,
        _: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn create_partitions(
        &self,
        _: Request<streambus_proto::v1::CreatePartitionsRequest>,
    ) -> Result<Response<streambus_proto::v1::CreatePartitionsResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn alter_topic_configs(
        &self,
        _: Request<streambus_proto::v1::AlterTopicConfigsRequest>,
    ) -> Result<Response<streambus_proto::v1::AlterTopicConfigsResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn create_acls(
        &self,
        _: Request<streambus_proto::v1::CreateAclsRequest>,
    ) -> Result<Response<streambus_proto::v1::CreateAclsResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn delete_acls(
        &self,
        _: Request<streambus_proto::v1::DeleteAclsRequest>,
    ) -> Result<Response<streambus_proto::v1::DeleteAclsResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn alter_client_quotas(
        &self,
        _: Request<streambus_proto::v1::AlterClientQuotasRequest>,
    ) -> Result<Response<streambus_proto::v1::AlterClientQuotasResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn decommission_node(
        &self,
        _: Request<streambus_proto::v1::DecommissionStorageNodeRequest>,
    ) -> Result<Response<streambus_proto::v1::DecommissionStorageNodeResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn recommission_node(
        &self,
        _: Request<streambus_proto::v1::RecommissionStorageNodeRequest>,
    ) -> Result<Response<streambus_proto::v1::RecommissionStorageNodeResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<ClusterMetadata>, Status> {
        self.check_up()?;
        self.get_metadata_calls.fetch_add(1, Ordering::SeqCst);
        let md = self.md.borrow().clone();
        let known = request.into_inner().known_version;
        if known != 0 && known == md.version {
            return Ok(Response::new(ClusterMetadata {
                version: md.version,
                unchanged: true,
                ..Default::default()
            }));
        }
        self.whole_snapshots.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(md))
    }

    type WatchMetadataStream = MdStream;

    async fn watch_metadata(
        &self,
        request: Request<WatchMetadataRequest>,
    ) -> Result<Response<MdStream>, Status> {
        self.check_up()?;
        let mut min = request.into_inner().min_version;
        let mut md = self.md.subscribe();
        let mut up = self.up.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let cur = md.borrow_and_update().clone();
                if cur.version > min {
                    min = cur.version;
                    if tx.send(Ok(cur)).await.is_err() {
                        return;
                    }
                }
                let down = tokio::select! {
                    r = md.changed() => {
                        if r.is_err() {
                            return;
                        }
                        false
                    }
                    _ = up.wait_for(|u| !*u) => true,
                };
                if down {
                    let _ = tx
                        .send(Err(Status::unavailable("controller down (test)")))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_node(
        &self,
        _: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }
}

/// What a fake storage node does with an Append.
#[derive(Clone)]
pub enum Behaviour {
    /// Appends (offsets count up from 0).
    Accept,
    /// Answers NOT_LEADER with this leader hint, after running the hook.
    NotLeader(String),
    /// Never answers.
    Stall,
    /// Appends after this long.
    Slow(Duration),
}

/// A StorageService that counts its appends.
#[derive(Clone)]
pub struct FakeStorage {
    pub addr: SocketAddr,
    behaviour: Arc<std::sync::Mutex<Behaviour>>,
    /// Appends received.
    pub appends: Arc<AtomicUsize>,
    /// Appends being handled right now.
    pub outstanding: Arc<AtomicUsize>,
    /// The most appends ever handled at once.
    pub peak: Arc<AtomicUsize>,
    next_offset: Arc<AtomicUsize>,
    /// Runs (once) when the first NOT_LEADER is about to be answered.
    on_not_leader: Arc<std::sync::Mutex<Option<Hook>>>,
    /// Set once any request carried a grpc-timeout header.
    pub saw_timeout_header: Arc<AtomicBool>,
    /// The leader epoch the last append carried.
    pub last_leader_epoch: Arc<std::sync::atomic::AtomicU64>,
}

type Hook = Box<dyn FnOnce() + Send>;

struct Outstanding(Arc<AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeStorage {
    pub async fn start(behaviour: Behaviour) -> FakeStorage {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = FakeStorage {
            addr,
            behaviour: Arc::new(std::sync::Mutex::new(behaviour)),
            appends: Arc::default(),
            outstanding: Arc::default(),
            peak: Arc::default(),
            next_offset: Arc::default(),
            on_not_leader: Arc::default(),
            saw_timeout_header: Arc::default(),
            last_leader_epoch: Arc::default(),
        };
        let svc = StorageServiceServer::new(s.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        s
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn on_not_leader(&self, f: impl FnOnce() + Send + 'static) {
        *self.on_not_leader.lock().unwrap() = Some(Box::new(f));
    }
}

#[tonic::async_trait]
impl StorageService for FakeStorage {
    type WatchRecordsStream = std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<streambus_proto::internal::WatchRecordsResponse, Status>,
                > + Send,
        >,
    >;

    /// A storage node that predates record watches.
    async fn watch_records(
        &self,
        _: Request<tonic::Streaming<streambus_proto::internal::WatchRecordsRequest>>,
    ) -> Result<Response<Self::WatchRecordsStream>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn describe_node(
        &self,
        _: Request<streambus_proto::internal::DescribeNodeRequest>,
    ) -> Result<Response<streambus_proto::internal::DescribeNodeResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    // A storage node that coordinates no groups.
    async fn group_heartbeat(
        &self,
        _: Request<streambus_proto::v1::GroupHeartbeatRequest>,
    ) -> Result<Response<streambus_proto::v1::GroupHeartbeatResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn commit_offsets(
        &self,
        _: Request<streambus_proto::v1::CommitOffsetsRequest>,
    ) -> Result<Response<streambus_proto::v1::CommitOffsetsResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn fetch_offsets(
        &self,
        _: Request<streambus_proto::v1::FetchOffsetsRequest>,
    ) -> Result<Response<streambus_proto::v1::FetchOffsetsResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn describe_group(
        &self,
        _: Request<streambus_proto::v1::DescribeGroupRequest>,
    ) -> Result<Response<streambus_proto::v1::GroupDescription>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn delete_group(
        &self,
        _: Request<streambus_proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<streambus_proto::v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn list_groups(
        &self,
        _: Request<streambus_proto::v1::ListGroupsRequest>,
    ) -> Result<Response<streambus_proto::v1::ListGroupsResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn replica_fetch(
        &self,
        _: Request<ReplicaFetchRequest>,
    ) -> Result<Response<ReplicaFetchResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }

    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        if request.metadata().get("grpc-timeout").is_some() {
            self.saw_timeout_header.store(true, Ordering::SeqCst);
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.last_leader_epoch
            .store(request.get_ref().leader_epoch, Ordering::SeqCst);
        let now = self.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let _guard = Outstanding(self.outstanding.clone());
        let behaviour = self.behaviour.lock().unwrap().clone();
        if let Behaviour::Slow(delay) = behaviour {
            tokio::time::sleep(delay).await;
        }
        match behaviour {
            Behaviour::Accept | Behaviour::Slow(_) => {
                let req = request.into_inner();
                let header = streambus_record::BatchHeader::parse(&req.batch)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let n = header.record_count as usize;
                let base = self.next_offset.fetch_add(n, Ordering::SeqCst) as i64;
                Ok(Response::new(AppendResponse {
                    base_offset: base,
                    last_offset: base + n as i64 - 1,
                    record_count: n as u32,
                    high_watermark: base + n as i64,
                }))
            }
            Behaviour::NotLeader(hint) => {
                let hook = self.on_not_leader.lock().unwrap().take();
                if let Some(f) = hook {
                    f();
                }
                Err(Error::new(Reason::NotLeader, "not the leader (test)")
                    .with_leader_hint(hint)
                    .to_status())
            }
            Behaviour::Stall => {
                futures::future::pending::<()>().await;
                unreachable!()
            }
        }
    }

    /// An empty log: waits (a bounded long poll) and answers nothing.
    async fn fetch(
        &self,
        request: Request<StorageFetchRequest>,
    ) -> Result<Response<StorageFetchResponse>, Status> {
        let r = request.into_inner();
        tokio::time::sleep(Duration::from_millis(u64::from(r.max_wait_ms.min(200)))).await;
        Ok(Response::new(StorageFetchResponse {
            batches: Default::default(),
            high_watermark: 0,
            log_start_offset: 0,
            next_offset: r.offset,
            log_end_offset: 0,
        }))
    }

    async fn list_offsets(
        &self,
        _: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Err(Status::unimplemented("fake storage"))
    }
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub ready: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gateway {
    pub async fn start(controller: &FakeController, config: GatewayConfig) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new(&mut Registry::default());
        let (ready_tx, ready) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = GatewayConfig {
            listen_addr: addr,
            controllers: vec![controller.addr.to_string()],
            ..config
        };
        tokio::spawn(streambus_gateway::serve_with_listener(
            config,
            listener,
            metrics.clone(),
            Some(ready_tx),
            async move {
                let _ = stopped.await;
            },
        ));
        Gateway {
            addr,
            metrics,
            ready,
            stop: Some(stop),
        }
    }

    pub async fn wait_ready(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.ready.wait_for(|r| *r))
            .await
            .expect("gateway ready in time")
            .unwrap();
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn produce_client(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel().await)
    }

    /// Starts draining (as on SIGTERM).
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
