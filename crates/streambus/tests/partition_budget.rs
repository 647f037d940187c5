//! A storage node's partition budget: topics and partitions past it are
//! refused with `PARTITION_LIMIT_REACHED` (`RESOURCE_EXHAUSTED`) before
//! anything is created, the cluster keeps serving what exists, and the
//! count and budget show in `DescribeCluster`.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use streambus_client::{ProducerConfig, Record};
use streambus_proto::Reason;
use streambus_proto::v1::CreateTopicRequest;
use streambus_proto::v1::admin_service_client::AdminServiceClient;

const BUDGET: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_past_the_partition_budget_are_refused_and_the_rest_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start_with(dir.path(), |s| {
        s.storage_node.max_partitions = BUDGET;
    })
    .await;
    let client = streambus_client::Client::connect(dev.gateway().to_string())
        .await
        .unwrap();
    client
        .create_topic("a", 30, 1, HashMap::new())
        .await
        .unwrap();

    // 30 more do not fit in the 20 left: refused whole, with the figures.
    let e = client
        .create_topic("b", 30, 1, HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::PartitionLimitReached), "{e}");
    let message = e.to_string();
    assert!(message.contains("only 20 would"), "{message}");
    assert!(message.contains("node 1: 30 of 50"), "{message}");
    let status = AdminServiceClient::connect(format!("http://{}", dev.gateway()))
        .await
        .unwrap()
        .create_topic(CreateTopicRequest {
            name: "b".into(),
            partitions: 30,
            replication_factor: 1,
            configs: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let topics: Vec<String> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(topics, vec!["a".to_string()], "nothing of b was created");

    // Adding partitions obeys the same budget.
    let e = client.create_partitions("a", 51).await.unwrap_err();
    assert_eq!(e.reason(), Some(Reason::PartitionLimitReached), "{e}");
    client.create_partitions("a", 50).await.unwrap();
    let e = client
        .create_topic("c", 1, 1, HashMap::new())
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::PartitionLimitReached), "{e}");

    // What exists keeps working, and the status shows count and budget.
    let producer = client.producer(ProducerConfig::default());
    for p in [0u32, 29, 49] {
        let record = Record {
            value: Some(Bytes::from(format!("to {p}"))),
            ..Record::default()
        };
        let meta = producer.send_and_wait("a", record, Some(p)).await.unwrap();
        assert_eq!(meta.partition, p);
    }
    let cluster = client.describe_cluster().await.unwrap();
    let node = &cluster.storage_nodes[0];
    assert_eq!((node.replicas, node.max_partitions), (50, BUDGET));

    // Deleting a topic gives its room back.
    client.delete_topic("a").await.unwrap();
    client
        .create_topic("b", 30, 1, HashMap::new())
        .await
        .unwrap();
    dev.stop().await;
}
