//! The public AdminService: topics are created and deleted through the
//! controller; reads come from a fresh metadata snapshot.

use std::time::{Duration, Instant};

use streambus_proto::internal::{
    ListOffsetsRequest, PartitionRef, TopicMetadata, list_offsets_request,
};
use streambus_proto::v1::admin_service_server::AdminService;
use streambus_proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribePartitionOffsetsRequest, DescribePartitionOffsetsResponse, DescribeTopicRequest,
    DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse, PartitionOffsets,
    TopicDescription,
};
use streambus_proto::{Error, Reason};
use tonic::{Request, Response, Status};

use crate::metadata::unknown_partition;
use crate::metrics::Metrics;
use crate::router::{self, CallPolicy, Router};

/// How long offset lookups may retry through leader moves.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

/// Implements `streambus.v1.AdminService`.
#[derive(Clone)]
pub struct AdminApi {
    pub(crate) router: Router,
    pub(crate) metrics: Metrics,
}

/// The public description of a topic.
pub fn describe(t: &TopicMetadata) -> TopicDescription {
    TopicDescription {
        name: t.name.clone(),
        topic_id: t.topic_id.clone(),
        replication_factor: t.replication_factor,
        configs: t.configs.clone(),
        partitions: t.partitions.clone(),
    }
}

impl AdminApi {
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
                    .call(&topic, partition, CallPolicy::read(deadline), |mut c, t| {
                        let request = request.clone();
                        async move { c.list_offsets(router::request(request, t)).await }
                    })
                    .await?;
                Ok::<_, Error>(PartitionOffsets {
                    partition,
                    log_start_offset: r.log_start_offset,
                    high_watermark: r.high_watermark,
                    log_end_offset: r.log_end_offset,
                })
            }
        });
        let partitions = futures::future::try_join_all(lookups).await?;
        Ok(DescribePartitionOffsetsResponse { partitions })
    }
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

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let started = Instant::now();
        let r = self
            .router
            .metadata()
            .controller()
            .create_topic(request.into_inner())
            .await
            .map(|topic| CreateTopicResponse { topic: Some(topic) });
        if r.is_ok() {
            // Make the new topic visible to this gateway's produce path.
            let _ = self.router.metadata().refresh().await;
        }
        observe(&self.metrics, "CreateTopic", started, r)
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let started = Instant::now();
        let r = self
            .router
            .metadata()
            .controller()
            .delete_topic(&request.into_inner().name)
            .await
            .map(|()| DeleteTopicResponse {});
        if r.is_ok() {
            let _ = self.router.metadata().refresh().await;
        }
        observe(&self.metrics, "DeleteTopic", started, r)
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let started = Instant::now();
        let r = self.router.metadata().refresh().await.map(|md| {
            let mut topics: Vec<_> = md.topics.iter().map(describe).collect();
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            ListTopicsResponse { topics }
        });
        observe(&self.metrics, "ListTopics", started, r)
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().name;
        let r = async {
            let md = self.router.metadata().refresh().await?;
            let t = md.topics.iter().find(|t| t.name == name).ok_or_else(|| {
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
        let r = self.offsets(request.into_inner()).await;
        observe(&self.metrics, "DescribePartitionOffsets", started, r)
    }
}
