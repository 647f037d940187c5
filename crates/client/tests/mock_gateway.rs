//! The SDK against an in-process mock gateway: an in-memory log behind the
//! public gRPC services, with injectable failures. It checks the producer's
//! stream handling (acks, retries, broken streams, ordering, backpressure)
//! and the consumer's decoding without the real services.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use streambus_client::{
    Client, ClientError, ProducerConfig, Reason, Record, StartFrom, SubscribeOptions, v1,
};
use streambus_proto::Error;
use streambus_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use streambus_proto::v1::consume_service_server::{ConsumeService, ConsumeServiceServer};
use streambus_proto::v1::produce_service_server::{ProduceService, ProduceServiceServer};
use streambus_record::{BatchIter, decode_records, set_base_offset};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the mock does with the next batches it receives.
#[derive(Debug, Clone)]
enum Fault {
    /// Answer with this per-batch error.
    BatchError(Error, bool),
    /// End the stream with this status instead of answering.
    BreakStream(Status),
}

#[derive(Default)]
struct State {
    partitions: HashMap<String, u32>,
    /// Stored batches (base offset set) per (topic, partition).
    logs: HashMap<(String, u32), Vec<Bytes>>,
    faults: VecDeque<Fault>,
    /// Batches appended, in arrival order.
    appended: usize,
    /// While set, acknowledgements wait for it to be notified.
    hold_acks: Option<Arc<Notify>>,
    /// The next subscription ends with SHUTTING_DOWN after this many
    /// responses (as a draining gateway ends it).
    drain_subscription_after: Option<usize>,
    /// The `resume_offsets` of every subscribe request, in order.
    subscribe_resumes: Vec<HashMap<u32, i64>>,
}

impl State {
    fn end_offset(&self, topic: &str, partition: u32) -> i64 {
        self.logs
            .get(&(topic.to_string(), partition))
            .and_then(|l| l.last())
            .map_or(0, |b| {
                BatchIter::new(b).next().unwrap().unwrap().0.next_offset()
            })
    }

    fn append(&mut self, topic: &str, partition: u32, batch: &Bytes) -> Result<i64, Error> {
        match self.partitions.get(topic) {
            None => return Err(Error::new(Reason::UnknownTopic, "no such topic")),
            Some(n) if partition >= *n => {
                return Err(Error::new(Reason::UnknownPartition, "no such partition"));
            }
            _ => {}
        }
        decode_records(batch).map_err(|e| Error::new(Reason::CorruptBatch, e.to_string()))?;
        let base = self.end_offset(topic, partition);
        let mut stored = batch.to_vec();
        set_base_offset(&mut stored, base);
        self.logs
            .entry((topic.to_string(), partition))
            .or_default()
            .push(Bytes::from(stored));
        self.appended += 1;
        Ok(base)
    }

    /// Concatenated batches holding offsets at or after `offset`.
    fn read(&self, topic: &str, partition: u32, offset: i64) -> Bytes {
        let mut out = Vec::new();
        for b in self
            .logs
            .get(&(topic.to_string(), partition))
            .into_iter()
            .flatten()
        {
            let header = BatchIter::new(b).next().unwrap().unwrap().0;
            if header.next_offset() > offset {
                out.extend_from_slice(b);
            }
        }
        Bytes::from(out)
    }
}

#[derive(Clone, Default)]
struct Mock {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl AdminService for Mock {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let r = request.into_inner();
        self.state
            .lock()
            .unwrap()
            .partitions
            .insert(r.name.clone(), r.partitions);
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(describe(&r.name, r.partitions)),
        }))
    }

    async fn alter_client_quotas(
        &self,
        _: Request<v1::AlterClientQuotasRequest>,
    ) -> Result<Response<v1::AlterClientQuotasResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn describe_client_quotas(
        &self,
        _: Request<v1::DescribeClientQuotasRequest>,
    ) -> Result<Response<v1::DescribeClientQuotasResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn create_acls(
        &self,
        _: Request<v1::CreateAclsRequest>,
    ) -> Result<Response<v1::CreateAclsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn describe_acls(
        &self,
        _: Request<v1::DescribeAclsRequest>,
    ) -> Result<Response<v1::DescribeAclsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_acls(
        &self,
        _: Request<v1::DeleteAclsRequest>,
    ) -> Result<Response<v1::DeleteAclsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn delete_topic(
        &self,
        _: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn list_topics(
        &self,
        _: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let state = self.state.lock().unwrap();
        let topics = state
            .partitions
            .iter()
            .map(|(name, n)| describe(name, *n))
            .collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        match self.state.lock().unwrap().partitions.get(&name) {
            Some(n) => Ok(Response::new(v1::DescribeTopicResponse {
                topic: Some(describe(&name, *n)),
            })),
            None => Err(Error::new(
                Reason::UnknownTopic,
                format!("topic {name:?} does not exist"),
            )
            .to_status()),
        }
    }

    async fn describe_partition_offsets(
        &self,
        request: Request<v1::DescribePartitionOffsetsRequest>,
    ) -> Result<Response<v1::DescribePartitionOffsetsResponse>, Status> {
        let r = request.into_inner();
        let state = self.state.lock().unwrap();
        let Some(n) = state.partitions.get(&r.topic) else {
            return Err(Error::new(Reason::UnknownTopic, "no such topic").to_status());
        };
        let partitions = (0..*n)
            .map(|p| {
                let end = state.end_offset(&r.topic, p);
                v1::PartitionOffsets {
                    partition: p,
                    log_start_offset: 0,
                    high_watermark: end,
                    log_end_offset: end,
                }
            })
            .collect();
        Ok(Response::new(v1::DescribePartitionOffsetsResponse {
            partitions,
        }))
    }

    async fn describe_cluster(
        &self,
        _: Request<v1::DescribeClusterRequest>,
    ) -> Result<Response<v1::DescribeClusterResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn add_controller(
        &self,
        _: Request<v1::AddControllerRequest>,
    ) -> Result<Response<v1::AddControllerResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn remove_controller(
        &self,
        _: Request<v1::RemoveControllerRequest>,
    ) -> Result<Response<v1::RemoveControllerResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn create_partitions(
        &self,
        request: Request<v1::CreatePartitionsRequest>,
    ) -> Result<Response<v1::CreatePartitionsResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.state.lock().unwrap();
        let n = state.partitions.get_mut(&r.topic).unwrap();
        *n = (*n).max(r.partitions);
        Ok(Response::new(v1::CreatePartitionsResponse {
            topic: Some(describe(&r.topic, *n)),
        }))
    }

    async fn decommission_storage_node(
        &self,
        _: Request<v1::DecommissionStorageNodeRequest>,
    ) -> Result<Response<v1::DecommissionStorageNodeResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn recommission_storage_node(
        &self,
        _: Request<v1::RecommissionStorageNodeRequest>,
    ) -> Result<Response<v1::RecommissionStorageNodeResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn alter_topic_configs(
        &self,
        _: Request<v1::AlterTopicConfigsRequest>,
    ) -> Result<Response<v1::AlterTopicConfigsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

fn describe(name: &str, partitions: u32) -> v1::TopicDescription {
    v1::TopicDescription {
        name: name.to_string(),
        topic_id: format!("id-{name}"),
        replication_factor: 1,
        configs: HashMap::new(),
        partitions: (0..partitions)
            .map(|p| v1::PartitionDescription {
                partition: p,
                leader: 1,
                leader_epoch: 1,
                replicas: vec![1],
                isr: vec![1],
                offline_replicas: vec![],
                partition_epoch: 0,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl ProduceService for Mock {
    async fn produce(
        &self,
        _: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn init_producer(
        &self,
        _: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        Ok(Response::new(v1::InitProducerResponse {
            producer_id: 1,
            producer_epoch: 0,
        }))
    }

    type ProduceStreamStream = BoxStream<v1::ProduceStreamResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<v1::ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let batch = request.batch.unwrap();
                let partition = batch.partition.unwrap();
                let (fault, hold) = {
                    let mut s = state.lock().unwrap();
                    (s.faults.pop_front(), s.hold_acks.clone())
                };
                if let Some(hold) = hold {
                    hold.notified().await;
                }
                let result = match fault {
                    Some(Fault::BreakStream(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Some(Fault::BatchError(e, retriable)) => Err((e, retriable)),
                    None => state
                        .lock()
                        .unwrap()
                        .append(&batch.topic, partition, &batch.encoded_batch)
                        .map_err(|e| {
                            let r = e.retriable();
                            (e, r)
                        }),
                };
                let result = match result {
                    Ok(base) => {
                        let count = decode_records(&batch.encoded_batch).unwrap().len() as i64;
                        v1::BatchResult {
                            acks: vec![v1::PartitionAck {
                                partition,
                                base_offset: base,
                                last_offset: base + count - 1,
                                record_count: count as u32,
                            }],
                            error: None,
                        }
                    }
                    Err((e, retriable)) => v1::BatchResult {
                        acks: Vec::new(),
                        error: Some(v1::ErrorDetail {
                            retriable,
                            ..e.to_detail()
                        }),
                    },
                };
                let response = v1::ProduceStreamResponse {
                    sequence: request.sequence,
                    result: Some(result),
                    throttle_time_ms: 0,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl ConsumeService for Mock {
    type SubscribeStream = BoxStream<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let (partitions, mut drain_after) = {
            let mut state = self.state.lock().unwrap();
            let Some(n) = state.partitions.get(&r.topic) else {
                return Err(Error::new(Reason::UnknownTopic, "no such topic").to_status());
            };
            let partitions: Vec<u32> = r.partition.map_or_else(|| (0..*n).collect(), |p| vec![p]);
            state.subscribe_resumes.push(r.resume_offsets.clone());
            (partitions, state.drain_subscription_after.take())
        };
        let state = self.state.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut positions: HashMap<u32, i64> = HashMap::new();
            for &p in &partitions {
                if let Some(&o) = r.resume_offsets.get(&p) {
                    positions.insert(p, o);
                    continue;
                }
                let start = match r.start.as_ref().and_then(|s| s.position.as_ref()) {
                    Some(v1::start_position::Position::Earliest(_)) => 0,
                    Some(v1::start_position::Position::Offset(o)) => *o,
                    _ => state.lock().unwrap().end_offset(&r.topic, p),
                };
                positions.insert(p, start);
            }
            loop {
                for &p in &partitions {
                    let (bytes, end) = {
                        let s = state.lock().unwrap();
                        (
                            s.read(&r.topic, p, positions[&p]),
                            s.end_offset(&r.topic, p),
                        )
                    };
                    if bytes.is_empty() {
                        continue;
                    }
                    positions.insert(p, end);
                    let response = v1::SubscribeResponse {
                        partition: p,
                        records: Vec::new(),
                        encoded_batches: bytes,
                        high_watermark: end,
                        next_offset: end,
                        new_partition: false,
                        throttle_time_ms: 0,
                    };
                    if drain_after == Some(0) {
                        let _ = tx
                            .send(Err(Error::new(Reason::ShuttingDown, "draining").to_status()))
                            .await;
                        return;
                    }
                    drain_after = drain_after.map(|n| n - 1);
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let r = request.into_inner();
        let state = self.state.lock().unwrap();
        let end = state.end_offset(&r.topic, r.partition);
        Ok(Response::new(v1::FetchResponse {
            partition: r.partition,
            records: Vec::new(),
            encoded_batches: state.read(&r.topic, r.partition, r.offset),
            high_watermark: end,
            log_start_offset: 0,
            next_offset: end,
            throttle_time_ms: 0,
        }))
    }
}

async fn start() -> (Mock, SocketAddr) {
    let mock = Mock::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(mock.clone()))
        .add_service(ProduceServiceServer::new(mock.clone()))
        .add_service(ConsumeServiceServer::new(mock.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (mock, addr)
}

fn record(key: Option<String>, value: String) -> Record {
    Record {
        key: key.map(Bytes::from),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

/// Every stored value of a partition, in offset order, with offsets checked
/// to be contiguous from 0.
fn stored_values(mock: &Mock, topic: &str, partition: u32) -> Vec<String> {
    let state = mock.state.lock().unwrap();
    let mut values = Vec::new();
    let bytes = state.read(topic, partition, 0);
    for batch in BatchIter::new(&bytes) {
        for r in decode_records(batch.unwrap().1).unwrap() {
            assert_eq!(r.offset, values.len() as i64);
            values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
        }
    }
    values
}

/// A mock gateway with topic `t` of `partitions` partitions, and a client.
async fn with_topic(partitions: u32) -> (Mock, Client) {
    let (mock, addr) = start().await;
    let client = Client::connect(addr.to_string()).await.unwrap();
    client
        .create_topic("t", partitions, 1, HashMap::new())
        .await
        .unwrap();
    (mock, client)
}

fn fast_retries() -> ProducerConfig {
    ProducerConfig {
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    }
}

#[tokio::test]
async fn produced_records_are_acknowledged_in_order_per_partition() {
    let (mock, client) = with_topic(3).await;
    let producer = client.producer(ProducerConfig {
        max_batch_bytes: 4096,
        ..ProducerConfig::default()
    });
    let mut deliveries = Vec::new();
    for i in 0..3000 {
        let key = (i % 2 == 0).then(|| format!("key-{}", i % 10));
        let value = format!("{}:{i}", key.as_deref().unwrap_or("-"));
        deliveries.push(producer.send("t", record(key, value), None).await.unwrap());
    }
    let mut acked: HashMap<u32, Vec<i64>> = HashMap::new();
    for d in deliveries {
        let md = d.await.unwrap();
        acked.entry(md.partition).or_default().push(md.offset);
    }
    producer.close().await;
    let mut total = 0;
    for p in 0..3 {
        let offsets = acked.remove(&p).unwrap_or_default();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "offsets in send order"
        );
        let values = stored_values(&mock, "t", p);
        assert_eq!(values.len(), offsets.len());
        total += values.len();
        // Records of one key keep their send order.
        let mut last: HashMap<String, u64> = HashMap::new();
        for v in values {
            let (key, i) = v.split_once(':').unwrap();
            let i: u64 = i.parse().unwrap();
            if key != "-" {
                assert!(last.insert(key.to_string(), i).is_none_or(|prev| prev < i));
                let expected = streambus_proto::partitioner::partition_for_key(key.as_bytes(), 3);
                assert_eq!(expected, p);
            }
        }
    }
    assert_eq!(total, 3000);
    // Batching happened: far fewer batches than records.
    assert!(mock.state.lock().unwrap().appended < 300);
}

/// Keyless records go to partitions added after the producer started,
/// once it has looked the count up again.
#[tokio::test]
async fn the_producer_picks_up_partitions_added_to_a_topic() {
    let (mock, client) = with_topic(1).await;
    let producer = client.producer(ProducerConfig {
        metadata_max_age: Duration::from_millis(50),
        ..ProducerConfig::default()
    });
    let send = async |i: usize| {
        producer
            .send_and_wait("t", record(None, format!("v{i}")), None)
            .await
            .unwrap()
    };
    for i in 0..5 {
        assert_eq!(send(i).await.partition, 0);
    }
    let grown = client.create_partitions("t", 3).await.unwrap();
    assert_eq!(grown.partitions.len(), 3);
    let mut seen = std::collections::BTreeSet::new();
    for i in 5..500 {
        seen.insert(send(i).await.partition);
        if seen.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(seen.len(), 3, "partitions written: {seen:?}");
    producer.close().await;
    assert!(!stored_values(&mock, "t", 2).is_empty());
}

#[tokio::test]
async fn retriable_batch_errors_are_retried_without_reordering() {
    let (mock, client) = with_topic(1).await;
    {
        let mut s = mock.state.lock().unwrap();
        for _ in 0..3 {
            s.faults.push_back(Fault::BatchError(
                Error::new(Reason::NotLeader, "leader moved"),
                true,
            ));
        }
    }
    let producer = client.producer(ProducerConfig {
        linger: Duration::ZERO,
        ..fast_retries()
    });
    let mut deliveries = Vec::new();
    for i in 0..200 {
        deliveries.push(
            producer
                .send("t", record(None, i.to_string()), None)
                .await
                .unwrap(),
        );
    }
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap().offset, i as i64);
    }
    let values = stored_values(&mock, "t", 0);
    let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(values, expected);
}

#[tokio::test]
async fn a_broken_stream_is_reopened_and_batches_resent() {
    let (mock, client) = with_topic(4).await;
    mock.state
        .lock()
        .unwrap()
        .faults
        .push_back(Fault::BreakStream(Status::unavailable(
            "gateway restarting",
        )));
    let producer = client.producer(fast_retries());
    let mut deliveries = Vec::new();
    for i in 0..100 {
        deliveries.push(
            producer
                .send("t", record(Some(format!("k{i}")), i.to_string()), None)
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    for d in deliveries {
        d.await.unwrap();
    }
    let total: usize = (0..4).map(|p| stored_values(&mock, "t", p).len()).sum();
    assert_eq!(total, 100);
}

#[tokio::test]
async fn non_retriable_batch_error_fails_only_that_batch() {
    let (mock, client) = with_topic(1).await;
    mock.state
        .lock()
        .unwrap()
        .faults
        .push_back(Fault::BatchError(
            Error::new(Reason::RecordTooLarge, "too big"),
            false,
        ));
    let producer = client.producer(ProducerConfig::default());
    let first = producer
        .send_and_wait("t", record(None, "a".into()), None)
        .await
        .unwrap_err();
    assert_eq!(first.reason(), Some(Reason::RecordTooLarge));
    let second = producer
        .send_and_wait("t", record(None, "b".into()), None)
        .await
        .unwrap();
    assert_eq!(second.offset, 0);
}

#[tokio::test]
async fn unknown_topic_fails_the_send() {
    let (_mock, addr) = start().await;
    let client = Client::connect(addr.to_string()).await.unwrap();
    let producer = client.producer(ProducerConfig::default());
    let err = producer
        .send("missing", record(None, "v".into()), None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::UnknownTopic));
    assert_eq!(
        err.to_string(),
        "UNKNOWN_TOPIC: topic \"missing\" does not exist"
    );
    // With an explicit partition the error comes from the write.
    let err = producer
        .send_and_wait("missing", record(None, "v".into()), Some(0))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::UnknownTopic));
}

#[tokio::test]
async fn send_waits_while_the_buffer_is_full() {
    let (mock, client) = with_topic(1).await;
    let release = Arc::new(Notify::new());
    mock.state.lock().unwrap().hold_acks = Some(release.clone());
    let producer = client.producer(ProducerConfig {
        max_buffered_bytes: 10 * 1024,
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    });
    let value = "x".repeat(1000);
    let mut deliveries = Vec::new();
    let mut blocked = false;
    for _ in 0..30 {
        let send = producer.send("t", record(None, value.clone()), None);
        match tokio::time::timeout(Duration::from_millis(200), send).await {
            Ok(d) => deliveries.push(d.unwrap()),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "send must wait once 10 KiB are buffered");
    assert!(
        deliveries.len() < 11,
        "{} records buffered",
        deliveries.len()
    );
    mock.state.lock().unwrap().hold_acks = None;
    release.notify_one();
    for d in deliveries {
        d.await.unwrap();
    }
    producer
        .send_and_wait("t", record(None, value), None)
        .await
        .unwrap();
}

#[tokio::test]
async fn subscribe_and_fetch_return_what_was_produced() {
    let (_mock, addr) = start().await;
    let client = Client::connect(addr.to_string()).await.unwrap();
    client
        .create_topic("t", 2, 1, HashMap::new())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..50 {
        let mut r = record(None, format!("v{i}"));
        r.headers.push(streambus_client::Header {
            key: "n".into(),
            value: Some(Bytes::from(i.to_string())),
        });
        // Dropping a delivery future does not cancel the record.
        drop(producer.send("t", r, Some(i % 2)).await.unwrap());
    }
    producer.close().await;

    let fetched = client.fetch("t", 1, 10, 0, Duration::ZERO).await.unwrap();
    let offsets: Vec<i64> = fetched.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (10..25).collect::<Vec<_>>());
    assert_eq!(fetched.next_offset, 25);

    let mut sub = client
        .subscribe(SubscribeOptions {
            partition: Some(0),
            start: StartFrom::Offset(20),
            ..SubscribeOptions::new("t")
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let r = sub.next().await.unwrap().unwrap();
        seen.push((
            r.offset,
            r.value.unwrap(),
            r.headers[0].value.clone().unwrap(),
        ));
    }
    assert_eq!(seen[0].0, 20);
    assert_eq!(seen[0].1, "v40");
    assert_eq!(seen[0].2, "40");
    assert_eq!(seen[4].0, 24);

    let mut all = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new("t")
        })
        .await
        .unwrap();
    let mut count = 0;
    while count < 50 {
        all.next().await.unwrap().unwrap();
        count += 1;
    }

    let err = client
        .subscribe(SubscribeOptions::new("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Server(ref e) if e.reason == Reason::UnknownTopic));
}

#[tokio::test]
async fn a_drained_subscription_resumes_where_it_was_without_gap_or_duplicate() {
    let (mock, addr) = start().await;
    let client = Client::connect(addr.to_string()).await.unwrap();
    client
        .create_topic("t", 2, 1, HashMap::new())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let send = async |range: std::ops::Range<u32>| {
        for i in range {
            drop(
                producer
                    .send("t", record(None, format!("a{i}")), Some(i % 2))
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await;
    };
    send(0..20).await;
    // The first subscription stream ends with SHUTTING_DOWN after one
    // response, as a draining gateway ends it.
    mock.state.lock().unwrap().drain_subscription_after = Some(1);
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new("t")
        })
        .await
        .unwrap();
    let reconnects = sub.reconnects();
    send(20..40).await;
    let mut seen: Vec<(u32, i64)> = Vec::new();
    while seen.len() < 40 {
        let r = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the subscription goes on")
            .unwrap()
            .unwrap();
        seen.push((r.partition, r.offset));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 40, "no duplicate: {seen:?}");
    for p in 0..2 {
        let offsets: Vec<i64> = seen.iter().filter(|s| s.0 == p).map(|s| s.1).collect();
        assert_eq!(
            offsets,
            (0..20).collect::<Vec<_>>(),
            "partition {p} has no gap"
        );
    }
    assert_eq!(reconnects.borrow().count, 1);
    assert!(
        reconnects
            .borrow()
            .last_error
            .as_deref()
            .unwrap()
            .contains("SHUTTING_DOWN"),
        "{:?}",
        reconnects.borrow()
    );
    // The resubscription named where each partition it had seen goes on.
    let resumes = mock.state.lock().unwrap().subscribe_resumes.clone();
    assert_eq!(resumes.len(), 2, "{resumes:?}");
    assert!(resumes[0].is_empty());
    assert!(!resumes[1].is_empty(), "{resumes:?}");
    producer.close().await;
}

/// `next_batch` lends a partition's records in place, takes up where
/// records taken one at a time stopped, and resumes through a draining
/// gateway like the record stream.
#[tokio::test]
async fn batches_are_lent_in_place_and_share_the_position_with_the_stream() {
    let (mock, addr) = start().await;
    let client = Client::connect(addr.to_string()).await.unwrap();
    client
        .create_topic("t", 2, 1, HashMap::new())
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig::default());
    let send = async |round: u32| {
        for i in round * 20..(round + 1) * 20 {
            let mut r = record(Some(format!("k{i}")), format!("v{i}"));
            r.headers.push(streambus_client::Header {
                key: "n".into(),
                value: Some(Bytes::from(i.to_string())),
            });
            drop(producer.send("t", r, Some(i % 2)).await.unwrap());
        }
        // Each round is its own stored batch per partition.
        producer.flush().await;
    };
    send(0).await;
    send(1).await;
    // The first stream ends with SHUTTING_DOWN before its second response.
    mock.state.lock().unwrap().drain_subscription_after = Some(1);
    let mut sub = client
        .subscribe(SubscribeOptions {
            partition: Some(0),
            start: StartFrom::Offset(3),
            ..SubscribeOptions::new("t")
        })
        .await
        .unwrap();
    let first = sub.next().await.unwrap().unwrap();
    assert_eq!(
        (first.offset, first.value.as_deref()),
        (3, Some(&b"v6"[..]))
    );
    let mut offsets = vec![first.offset];
    while offsets.len() < 27 {
        if offsets.len() == 17 {
            // Rounds 0 and 1 are read: round 2 comes after the drain.
            send(2).await;
        }
        let batch = tokio::time::timeout(Duration::from_secs(10), sub.next_batch())
            .await
            .expect("the subscription goes on")
            .unwrap()
            .unwrap();
        assert_eq!(batch.partition(), 0);
        assert!(!batch.is_empty());
        assert_eq!(batch.records().len(), batch.len());
        for r in batch.records() {
            // Partition 0 holds the even records: offset o is record 2o.
            let i = r.offset * 2;
            assert_eq!(r.partition, 0);
            assert_eq!(r.key, Some(format!("k{i}").as_bytes()));
            assert_eq!(r.value, Some(format!("v{i}").as_bytes()));
            let headers: Vec<_> = r.headers().collect();
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].key_str(), "n");
            assert_eq!(headers[0].value, Some(i.to_string().as_bytes()));
            let owned = r.to_owned();
            assert_eq!(owned.offset, r.offset);
            assert_eq!(owned.value.as_deref(), r.value);
            assert_eq!(owned.headers[0].key, "n");
            offsets.push(r.offset);
        }
        assert_eq!(batch.last_offset(), offsets.last().copied());
        let lent = batch.len();
        let owned: Vec<_> = batch.into_iter().collect();
        assert_eq!(owned.len(), lent);
        assert_eq!(owned.last().map(|r| r.offset), offsets.last().copied());
    }
    assert_eq!(offsets, (3..30).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(sub.reconnects().borrow().count, 1, "resumed once");
    assert_eq!(sub.buffered_len(), 0);
    producer.close().await;
}
