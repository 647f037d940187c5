//! The public AdminService: topics are created, grown and deleted,
//! controllers added and removed, and storage nodes decommissioned, through
//! the controller; reads come from a
//! fresh metadata snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use streambus_cluster::{ClusterView, ControllerClient, TopicView};
use streambus_proto::internal::{
    DescribeNodeRequest, ListOffsetsRequest, PartitionRef, list_offsets_request,
};
use streambus_proto::v1::admin_service_server::AdminService;
use streambus_proto::v1::{
    AddControllerRequest, AddControllerResponse, AlterClientQuotasRequest,
    AlterClientQuotasResponse, AlterTopicConfigsRequest, AlterTopicConfigsResponse, ClientQuota,
    ControllerStatus, CreateAclsRequest, CreateAclsResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse,
    DecommissionStorageNodeRequest, DecommissionStorageNodeResponse, DeleteAclsRequest,
    DeleteAclsResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeAclsRequest,
    DescribeAclsResponse, DescribeClientQuotasRequest, DescribeClientQuotasResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribePartitionOffsetsRequest,
    DescribePartitionOffsetsResponse, DescribeTopicRequest, DescribeTopicResponse,
    ListTopicsRequest, ListTopicsResponse, PartitionOffsets, PartitionStatus,
    RecommissionStorageNodeRequest, RecommissionStorageNodeResponse, RemoveControllerRequest,
    RemoveControllerResponse, StorageNodeStatus, TopicDescription,
};
use streambus_proto::{Error, Reason};
use tonic::{Request, Response, Status};

use crate::auth::{Principal, audit, principal_of};
use crate::authz::Authz;
use crate::metadata::unknown_partition;
use futures::{StreamExt, TryStreamExt};
use streambus_acl::{AclFilter, Operation, ResourceType};
use streambus_cluster::acl_wire;

use crate::metrics::Metrics;
use crate::router::{self, CallPolicy, Router};

/// How long offset lookups may retry through leader moves.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);
/// Partition offset lookups one `DescribePartitionOffsets` keeps in flight.
const OFFSETS_CONCURRENCY: usize = 64;

/// Refuses admin changes to the internal `__groups` topic: the gateway
/// creates it with the settings groups need, and its partition count maps
/// groups to partitions, so it must never change.
fn not_internal(topic: &str) -> Result<(), Error> {
    if topic == crate::groups::TOPIC {
        return Err(Error::new(
            Reason::InvalidArgument,
            format!(
                "topic {topic} is internal (consumer groups and their committed offsets): it is not created, deleted, grown or reconfigured through the admin API"
            ),
        ));
    }
    Ok(())
}

/// Implements `streambus.v1.AdminService`.
#[derive(Clone)]
pub struct AdminApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
    pub(crate) authz: Authz,
}

/// The public description of a topic.
pub fn describe(t: &TopicView) -> TopicDescription {
    TopicDescription {
        name: t.name.clone(),
        topic_id: t.topic_id.clone(),
        replication_factor: t.replication_factor,
        configs: t.configs.clone(),
        partitions: t.partitions.iter().map(|p| (**p).clone()).collect(),
    }
}

impl AdminApi {
    /// Creating a topic needs create on the cluster or on the topic.
    fn may_create(&self, principal: &Principal, topic: &str) -> Result<(), Error> {
        if self.authz.allowed(
            principal,
            Operation::Create,
            ResourceType::Cluster,
            streambus_acl::CLUSTER_NAME,
        ) {
            return Ok(());
        }
        self.authz
            .check(principal, Operation::Create, ResourceType::Topic, topic)
    }

    async fn offsets(
        &self,
        req: DescribePartitionOffsetsRequest,
    ) -> Result<DescribePartitionOffsetsResponse, Error> {
        let topic = self.router.metadata().topic(&req.topic).await?;
        let count = topic.partitions.len();
        let wanted: Vec<u32> = if req.partitions.is_empty() {
            (0..count as u32).collect()
        } else {
            req.partitions.clone()
        };
        if let Some(&p) = wanted.iter().find(|&&p| p as usize >= count) {
            return Err(unknown_partition(&req.topic, p, count));
        }
        let lookups = wanted.into_iter().map(|partition| {
            let router = self.router.clone();
            let topic = req.topic.clone();
            async move {
                let request = ListOffsetsRequest {
                    partition: Some(PartitionRef {
                        topic: topic.clone(),
                        partition,
                    }),
                    query: Some(list_offsets_request::Query::Latest(true)),
                };
                let deadline = tokio::time::Instant::now() + OFFSETS_TIMEOUT;
                let r = router
                    .call(
                        &topic,
                        partition,
                        CallPolicy::read("ListOffsets", deadline),
                        |mut c, t, _| {
                            let request = request.clone();
                            async move { c.list_offsets(router::request(request, t)).await }
                        },
                    )
                    .await?;
                Ok::<_, Error>(PartitionOffsets {
                    partition,
                    log_start_offset: r.log_start_offset,
                    high_watermark: r.high_watermark,
                    log_end_offset: r.log_end_offset,
                })
            }
        });
        // A topic may have 10,000 partitions: a bounded number of lookups
        // in flight, each with its own deadline from when it starts.
        let partitions = futures::stream::iter(lookups)
            .buffered(OFFSETS_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(DescribePartitionOffsetsResponse { partitions })
    }
}

/// How long one controller may take to describe itself.
const CONTROLLER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl AdminApi {
    /// Every Raft member's own view: the members come from whichever
    /// controller answers first, then each member is asked directly.
    async fn controllers(&self) -> Result<Vec<ControllerStatus>, Error> {
        let first = self
            .router
            .metadata()
            .controller()
            .describe_controller()
            .await?;
        let asks = first.members.iter().map(|m| {
            let m = m.clone();
            let first = first.clone();
            async move {
                if m.node_id == first.node_id {
                    return first;
                }
                let asked = async {
                    let one = ControllerClient::new(vec![m.address.clone()])?
                        .with_retry_for(Duration::ZERO);
                    tokio::time::timeout(CONTROLLER_STATUS_TIMEOUT, one.describe_controller())
                        .await
                        .map_err(|_| {
                            Error::new(
                                Reason::Timeout,
                                format!(
                                    "no answer within {} ms",
                                    CONTROLLER_STATUS_TIMEOUT.as_millis()
                                ),
                            )
                        })?
                };
                asked.await.unwrap_or_else(|e| ControllerStatus {
                    node_id: m.node_id,
                    address: m.address.clone(),
                    reachable: false,
                    voter: m.voter,
                    error: e.to_string(),
                    ..ControllerStatus::default()
                })
            }
        });
        Ok(futures::future::join_all(asks).await)
    }

    async fn describe_cluster(&self) -> Result<DescribeClusterResponse, Error> {
        let (controllers, md) = tokio::join!(self.controllers(), self.router.metadata().refresh());
        let md = md?;
        let mut status = cluster_status(&md);
        status.controllers = controllers?;
        // Each live node's disk, as it reports it (a node that does not
        // answer within a second keeps zeros).
        let disks = futures::future::join_all(status.storage_nodes.iter().map(|n| {
            let client = n
                .alive
                .then(|| self.router.client(&n.address).ok())
                .flatten();
            async move {
                let mut client = client?;
                let call = client.describe_node(DescribeNodeRequest {});
                match tokio::time::timeout(DESCRIBE_NODE_TIMEOUT, call).await {
                    Ok(Ok(r)) => Some(r.into_inner()),
                    _ => None,
                }
            }
        }))
        .await;
        for (n, disk) in status.storage_nodes.iter_mut().zip(disks) {
            if let Some(d) = disk {
                n.disk_total_bytes = d.disk_total_bytes;
                n.disk_available_bytes = d.disk_available_bytes;
                n.disk_full = d.disk_full;
            }
        }
        Ok(status)
    }
}

/// How long `DescribeCluster` waits for a storage node's own report.
const DESCRIBE_NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// Storage nodes and the partitions that need attention, from metadata.
pub fn cluster_status(md: &ClusterView) -> DescribeClusterResponse {
    let alive: HashMap<u64, bool> = md.nodes.iter().map(|n| (n.node_id, n.alive)).collect();
    let mut led: HashMap<u64, u32> = HashMap::new();
    let mut hosted: HashMap<u64, u32> = HashMap::new();
    let mut out = DescribeClusterResponse {
        cluster_id: md.cluster_id.clone(),
        metadata_version: md.version,
        ..DescribeClusterResponse::default()
    };
    // By name: the map's order.
    for t in md.topics.values() {
        let min_insync = t
            .configs
            .get("min.insync.replicas")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        for p in &t.partitions {
            for r in &p.replicas {
                *hosted.entry(*r).or_default() += 1;
            }
            let leader_ok = p.leader != 0
                && alive.get(&p.leader).copied().unwrap_or(false)
                && !p.offline_replicas.contains(&p.leader);
            if leader_ok {
                *led.entry(p.leader).or_default() += 1;
            }
            let status = || PartitionStatus {
                topic: t.name.clone(),
                partition: Some((**p).clone()),
                min_insync_replicas: min_insync,
            };
            if !leader_ok {
                out.offline.push(status());
            }
            if p.isr.len() < p.replicas.len() {
                out.under_replicated.push(status());
            }
            if (p.isr.len() as u32) < min_insync {
                out.below_min_isr.push(status());
            }
        }
    }
    let mut nodes: Vec<_> = md.nodes.iter().collect();
    nodes.sort_by_key(|n| n.node_id);
    out.storage_nodes = nodes
        .into_iter()
        .map(|n| StorageNodeStatus {
            node_id: n.node_id,
            address: n.address.clone(),
            alive: n.alive,
            rack: n.rack.clone(),
            leader_partitions: led.get(&n.node_id).copied().unwrap_or(0),
            replicas: hosted.get(&n.node_id).copied().unwrap_or(0),
            decommissioning: n.decommissioning,
            max_partitions: n.max_partitions,
            ..StorageNodeStatus::default()
        })
        .collect();
    out
}

fn observe<T>(
    metrics: &Metrics,
    method: &'static str,
    started: Instant,
    r: Result<T, Error>,
) -> Result<Response<T>, Status> {
    metrics.observe(method, started, r.is_ok());
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => Err(e.to_status()),
    }
}

/// A configuration map in key order, for the audit line.
fn sorted(configs: &HashMap<String, String>) -> std::collections::BTreeMap<&str, &str> {
    configs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let (resource, detail) = (
            format!("topic:{}", req.name),
            format!(
                "partitions={} replication_factor={} configs={:?}",
                req.partitions,
                req.replication_factor,
                sorted(&req.configs)
            ),
        );
        let r = match not_internal(&req.name).and_then(|()| self.may_create(&principal, &req.name))
        {
            Ok(()) => self
                .router
                .metadata()
                .controller()
                .create_topic(req)
                .await
                .map(|topic| CreateTopicResponse { topic: Some(topic) }),
            Err(e) => Err(e),
        };
        if let Ok(CreateTopicResponse { topic: Some(t) }) = &r {
            // Make the new topic visible to this gateway's produce path.
            self.router
                .metadata()
                .settle(|md| md.topic(&t.name).is_some_and(|v| v.topic_id == t.topic_id))
                .await;
        }
        audit(&principal, "CreateTopic", &resource, &detail, &r);
        observe(&self.metrics, "CreateTopic", started, r)
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let name = request.into_inner().name;
        let r = match not_internal(&name).and_then(|()| {
            self.authz
                .check(&principal, Operation::Delete, ResourceType::Topic, &name)
        }) {
            Ok(()) => self
                .router
                .metadata()
                .controller()
                .delete_topic(&name)
                .await
                .map(|()| DeleteTopicResponse {}),
            Err(e) => Err(e),
        };
        if r.is_ok() {
            self.router
                .metadata()
                .settle(|md| md.topic(&name).is_none())
                .await;
        }
        audit(&principal, "DeleteTopic", &format!("topic:{name}"), "", &r);
        observe(&self.metrics, "DeleteTopic", started, r)
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let r = match not_internal(&req.topic).and_then(|()| {
            self.authz.check(
                &principal,
                Operation::Alter,
                ResourceType::Topic,
                &req.topic,
            )
        }) {
            Ok(()) => self
                .router
                .metadata()
                .controller()
                .create_partitions(&req.topic, req.partitions)
                .await
                .map(|topic| CreatePartitionsResponse { topic: Some(topic) }),
            Err(e) => Err(e),
        };
        if r.is_ok() {
            // Route to the new partitions at once.
            self.router
                .metadata()
                .settle(|md| {
                    md.topic(&req.topic)
                        .is_some_and(|t| t.partitions.len() >= req.partitions as usize)
                })
                .await;
        }
        audit(
            &principal,
            "CreatePartitions",
            &format!("topic:{}", req.topic),
            &format!("partitions={}", req.partitions),
            &r,
        );
        observe(&self.metrics, "CreatePartitions", started, r)
    }

    async fn alter_topic_configs(
        &self,
        request: Request<AlterTopicConfigsRequest>,
    ) -> Result<Response<AlterTopicConfigsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let validate_only = req.validate_only;
        let (resource, detail) = (format!("topic:{}", req.topic), format!("{req:?}"));
        let r = match not_internal(&req.topic).and_then(|()| {
            self.authz.check(
                &principal,
                Operation::Alter,
                ResourceType::Topic,
                &req.topic,
            )
        }) {
            Ok(()) => self
                .router
                .metadata()
                .controller()
                .alter_topic_configs(req)
                .await
                .map(|topic| AlterTopicConfigsResponse { topic: Some(topic) }),
            Err(e) => Err(e),
        };
        if let Ok(AlterTopicConfigsResponse { topic: Some(t) }) = &r
            && !validate_only
        {
            // Checks against the new configuration (max.message.bytes) at once.
            self.router
                .metadata()
                .settle(|md| {
                    md.topic(&t.name)
                        .is_some_and(|v| v.topic_id == t.topic_id && v.configs == t.configs)
                })
                .await;
        }
        if !validate_only {
            audit(&principal, "AlterTopicConfigs", &resource, &detail, &r);
        }
        observe(&self.metrics, "AlterTopicConfigs", started, r)
    }

    async fn decommission_storage_node(
        &self,
        request: Request<DecommissionStorageNodeRequest>,
    ) -> Result<Response<DecommissionStorageNodeResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let node_id = request.into_inner().node_id;
        let r = match self.authz.check_cluster(&principal, Operation::Alter) {
            Ok(()) => {
                self.router
                    .metadata()
                    .controller()
                    .decommission_node(node_id)
                    .await
            }
            Err(e) => Err(e),
        }
        .map(|node| DecommissionStorageNodeResponse { node: Some(node) });
        audit(
            &principal,
            "DecommissionStorageNode",
            &format!("storage-node:{node_id}"),
            "",
            &r,
        );
        observe(&self.metrics, "DecommissionStorageNode", started, r)
    }

    async fn recommission_storage_node(
        &self,
        request: Request<RecommissionStorageNodeRequest>,
    ) -> Result<Response<RecommissionStorageNodeResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let node_id = request.into_inner().node_id;
        let r = match self.authz.check_cluster(&principal, Operation::Alter) {
            Ok(()) => {
                self.router
                    .metadata()
                    .controller()
                    .recommission_node(node_id)
                    .await
            }
            Err(e) => Err(e),
        }
        .map(|node| RecommissionStorageNodeResponse { node: Some(node) });
        audit(
            &principal,
            "RecommissionStorageNode",
            &format!("storage-node:{node_id}"),
            "",
            &r,
        );
        observe(&self.metrics, "RecommissionStorageNode", started, r)
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let r = self.router.metadata().refresh().await.map(|md| {
            // By name: the map's order. Only what the caller may describe.
            let topics = md
                .topics
                .values()
                .filter(|t| {
                    self.authz.allowed(
                        &principal,
                        Operation::Describe,
                        ResourceType::Topic,
                        &t.name,
                    )
                })
                .map(|t| describe(t))
                .collect();
            ListTopicsResponse { topics }
        });
        observe(&self.metrics, "ListTopics", started, r)
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let name = request.into_inner().name;
        let r = async {
            self.authz
                .check(&principal, Operation::Describe, ResourceType::Topic, &name)?;
            let md = self.router.metadata().refresh().await?;
            let t = md.topic(&name).ok_or_else(|| {
                Error::new(
                    Reason::UnknownTopic,
                    format!("topic {name:?} does not exist"),
                )
            })?;
            Ok(DescribeTopicResponse {
                topic: Some(describe(t)),
            })
        }
        .await;
        observe(&self.metrics, "DescribeTopic", started, r)
    }

    async fn describe_partition_offsets(
        &self,
        request: Request<DescribePartitionOffsetsRequest>,
    ) -> Result<Response<DescribePartitionOffsetsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let r = match self.authz.check(
            &principal,
            Operation::Describe,
            ResourceType::Topic,
            &req.topic,
        ) {
            Ok(()) => self.offsets(req).await,
            Err(e) => Err(e),
        };
        observe(&self.metrics, "DescribePartitionOffsets", started, r)
    }

    async fn describe_cluster(
        &self,
        request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let started = Instant::now();
        let r = match self
            .authz
            .check_cluster(&principal_of(&request), Operation::Describe)
        {
            Ok(()) => self.describe_cluster().await,
            Err(e) => Err(e),
        };
        observe(&self.metrics, "DescribeCluster", started, r)
    }

    async fn add_controller(
        &self,
        request: Request<AddControllerRequest>,
    ) -> Result<Response<AddControllerResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let AddControllerRequest { node_id, address } = request.into_inner();
        let r = match self.authz.check_cluster(&principal, Operation::Alter) {
            Ok(()) => {
                self.router
                    .metadata()
                    .controller()
                    .add_controller(node_id, &address)
                    .await
            }
            Err(e) => Err(e),
        }
        .map(|members| AddControllerResponse { members });
        audit(
            &principal,
            "AddController",
            &format!("controller:{node_id}"),
            &format!("address={address}"),
            &r,
        );
        observe(&self.metrics, "AddController", started, r)
    }

    async fn create_acls(
        &self,
        request: Request<CreateAclsRequest>,
    ) -> Result<Response<CreateAclsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let detail = req
            .acls
            .iter()
            .map(|b| match acl_wire::from_wire(b) {
                Ok(acl) => acl.to_string(),
                Err(_) => format!("{b:?}"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let r = async {
            self.authz.check_cluster(&principal, Operation::Alter)?;
            let acls = req
                .acls
                .iter()
                .map(acl_wire::from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            let created = self
                .router
                .metadata()
                .controller()
                .create_acls(req.acls)
                .await?;
            // This gateway enforces them from the next call on.
            self.router
                .metadata()
                .settle(|md| {
                    let held = md.acls.list(&AclFilter::default());
                    acls.iter().all(|a| held.contains(&a))
                })
                .await;
            Ok(CreateAclsResponse { created })
        }
        .await;
        audit(&principal, "CreateAcls", "cluster", &detail, &r);
        observe(&self.metrics, "CreateAcls", started, r)
    }

    async fn describe_acls(
        &self,
        request: Request<DescribeAclsRequest>,
    ) -> Result<Response<DescribeAclsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let r = async {
            self.authz.check_cluster(&principal, Operation::Describe)?;
            let filter = acl_wire::filter_from_wire(&req.filter.unwrap_or_default())?;
            let md = self.router.metadata().refresh().await?;
            Ok(DescribeAclsResponse {
                acls: md
                    .acls
                    .list(&filter)
                    .into_iter()
                    .map(acl_wire::to_wire)
                    .collect(),
            })
        }
        .await;
        observe(&self.metrics, "DescribeAcls", started, r)
    }

    async fn delete_acls(
        &self,
        request: Request<DeleteAclsRequest>,
    ) -> Result<Response<DeleteAclsResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let detail = format!("filters={:?}", req.filters);
        let r = async {
            self.authz.check_cluster(&principal, Operation::Alter)?;
            for f in &req.filters {
                acl_wire::filter_from_wire(f)?;
            }
            let removed = self
                .router
                .metadata()
                .controller()
                .delete_acls(req.filters)
                .await?;
            let gone = removed
                .iter()
                .map(acl_wire::from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            self.router
                .metadata()
                .settle(|md| {
                    let held = md.acls.list(&AclFilter::default());
                    gone.iter().all(|a| !held.contains(&a))
                })
                .await;
            Ok(DeleteAclsResponse { acls: removed })
        }
        .await;
        let detail = match &r {
            Ok(d) => format!("{detail} removed={}", d.acls.len()),
            Err(_) => detail,
        };
        audit(&principal, "DeleteAcls", "cluster", &detail, &r);
        observe(&self.metrics, "DeleteAcls", started, r)
    }

    async fn alter_client_quotas(
        &self,
        request: Request<AlterClientQuotasRequest>,
    ) -> Result<Response<AlterClientQuotasResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let detail = format!(
            "set={:?} remove={:?}",
            req.set
                .iter()
                .map(|q| format!(
                    "{} produce={} consume={} requests={}",
                    q.principal,
                    q.produce_bytes_per_second,
                    q.consume_bytes_per_second,
                    q.requests_per_second
                ))
                .collect::<Vec<_>>(),
            req.remove
        );
        let r = async {
            self.authz.check_cluster(&principal, Operation::Alter)?;
            let expected: Vec<ClientQuota> = req.set.clone();
            let removed = req.remove.clone();
            self.router
                .metadata()
                .controller()
                .alter_client_quotas(req.set, req.remove)
                .await?;
            // This gateway holds callers to them from the next call on.
            self.router
                .metadata()
                .settle(|md| {
                    expected
                        .iter()
                        .all(|q| md.quotas.get(&q.principal) == Some(q))
                        && removed.iter().all(|p| !md.quotas.contains_key(p))
                })
                .await;
            Ok(AlterClientQuotasResponse {})
        }
        .await;
        audit(&principal, "AlterClientQuotas", "cluster", &detail, &r);
        observe(&self.metrics, "AlterClientQuotas", started, r)
    }

    async fn describe_client_quotas(
        &self,
        request: Request<DescribeClientQuotasRequest>,
    ) -> Result<Response<DescribeClientQuotasResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let req = request.into_inner();
        let r = async {
            self.authz.check_cluster(&principal, Operation::Describe)?;
            let md = self.router.metadata().refresh().await?;
            Ok(DescribeClientQuotasResponse {
                quotas: md
                    .quotas
                    .values()
                    .filter(|q| req.principal.is_empty() || q.principal == req.principal)
                    .cloned()
                    .collect(),
            })
        }
        .await;
        observe(&self.metrics, "DescribeClientQuotas", started, r)
    }

    async fn remove_controller(
        &self,
        request: Request<RemoveControllerRequest>,
    ) -> Result<Response<RemoveControllerResponse>, Status> {
        let started = Instant::now();
        let principal = principal_of(&request);
        let node_id = request.into_inner().node_id;
        let r = match self.authz.check_cluster(&principal, Operation::Alter) {
            Ok(()) => {
                self.router
                    .metadata()
                    .controller()
                    .remove_controller(node_id)
                    .await
            }
            Err(e) => Err(e),
        }
        .map(|members| RemoveControllerResponse { members });
        audit(
            &principal,
            "RemoveController",
            &format!("controller:{node_id}"),
            "",
            &r,
        );
        observe(&self.metrics, "RemoveController", started, r)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use streambus_proto::internal::{ClusterMetadata, StorageNodeInfo, TopicMetadata};
    use streambus_proto::v1::PartitionDescription;

    use super::*;

    fn partition(partition: u32, leader: u64, isr: &[u64]) -> PartitionDescription {
        PartitionDescription {
            partition,
            leader,
            leader_epoch: 1,
            replicas: vec![1, 2, 3],
            isr: isr.to_vec(),
            ..PartitionDescription::default()
        }
    }

    #[test]
    fn cluster_status_finds_under_replicated_offline_and_below_min_isr_partitions() {
        let node = |id, alive| StorageNodeInfo {
            node_id: id,
            address: format!("127.0.0.1:{id}"),
            alive,
            rack: String::new(),
            decommissioning: id == 2,
            max_partitions: 0,
        };
        let mut offline_leader = partition(3, 1, &[1, 2, 3]);
        offline_leader.offline_replicas = vec![1];
        let md = ClusterMetadata {
            version: 9,
            cluster_id: "c".into(),
            nodes: vec![node(3, false), node(1, true), node(2, true)],
            topics: vec![TopicMetadata {
                partial: false,
                name: "t".into(),
                topic_id: "id".into(),
                replication_factor: 3,
                configs: HashMap::from([("min.insync.replicas".to_string(), "2".to_string())]),
                partitions: vec![
                    partition(0, 1, &[1, 2, 3]),
                    partition(1, 2, &[2, 1]),
                    // Its only in-sync replica is on the dead node.
                    partition(2, 3, &[3]),
                    offline_leader,
                ],
            }],
            ..ClusterMetadata::default()
        };
        let s = cluster_status(&ClusterView::from_wire(md).unwrap());
        let ids = |l: &[PartitionStatus]| -> Vec<u32> {
            l.iter()
                .map(|p| p.partition.as_ref().unwrap().partition)
                .collect()
        };
        assert_eq!(ids(&s.under_replicated), vec![1, 2]);
        assert_eq!(ids(&s.offline), vec![2, 3]);
        assert_eq!(ids(&s.below_min_isr), vec![2]);
        assert_eq!(s.below_min_isr[0].min_insync_replicas, 2);
        let nodes: Vec<(u64, bool, u32, u32, bool)> = s
            .storage_nodes
            .iter()
            .map(|n| {
                (
                    n.node_id,
                    n.alive,
                    n.leader_partitions,
                    n.replicas,
                    n.decommissioning,
                )
            })
            .collect();
        assert_eq!(
            nodes,
            vec![
                (1, true, 1, 4, false),
                (2, true, 1, 4, true),
                (3, false, 0, 4, false)
            ]
        );
        assert_eq!((s.cluster_id.as_str(), s.metadata_version), ("c", 9));
    }
}
