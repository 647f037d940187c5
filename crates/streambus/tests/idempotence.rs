//! Idempotent producers end to end through the gateway: the same batch
//! sent twice is written once and acknowledged with the same offsets, a
//! skipped sequence is refused, and the SDK's producer (idempotent by
//! default) writes every record exactly once.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use streambus_client::v1::produce_service_client::ProduceServiceClient;
use streambus_client::{Client, ProducerConfig, Reason, Record, v1};
use streambus_record::{BatchBuilder, Compression};

fn batch(pid: i64, seq: i32, values: &[&str]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).with_producer(pid, 0, seq);
    for v in values {
        b.push(&Record {
            value: Some(Bytes::from(v.to_string())),
            timestamp_ms: 1,
            ..Record::default()
        });
    }
    b.build()
}

async fn produce(
    client: &mut ProduceServiceClient<tonic::transport::Channel>,
    encoded: Bytes,
) -> v1::BatchResult {
    client
        .produce(v1::ProduceRequest {
            batches: vec![v1::ProduceBatch {
                topic: "idem".into(),
                partition: Some(0),
                records: vec![],
                encoded_batch: encoded,
                traceparent: String::new(),
            }],
            acks: v1::Acks::All as i32,
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_twice_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("idem", 1, 1, HashMap::new())
        .await
        .unwrap();
    let mut raw = ProduceServiceClient::connect(format!("http://{}", dev.gateway()))
        .await
        .unwrap();
    let a = raw
        .init_producer(v1::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner();
    let b = raw
        .init_producer(v1::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.producer_id, b.producer_id, "producer ids are unique");

    let first = produce(&mut raw, batch(a.producer_id, 0, &["a0", "a1"])).await;
    assert!(first.error.is_none(), "{first:?}");
    let again = produce(&mut raw, batch(a.producer_id, 0, &["a0", "a1"])).await;
    assert_eq!(again.acks, first.acks, "a retry gets the original offsets");
    let next = produce(&mut raw, batch(a.producer_id, 2, &["a2"])).await;
    assert_eq!(next.acks[0].base_offset, 2);
    // A gap in the sequence is refused, and says why.
    let gap = produce(&mut raw, batch(a.producer_id, 9, &["lost"])).await;
    let error = gap.error.expect("refused");
    assert_eq!(
        error.reason,
        Reason::OutOfOrderSequence.as_str(),
        "{error:?}"
    );
    assert!(!error.retriable);
    // Another producer is independent.
    let other = produce(&mut raw, batch(b.producer_id, 0, &["b0"])).await;
    assert_eq!(other.acks[0].base_offset, 3);

    let offsets = client.partition_offsets("idem").await.unwrap();
    assert_eq!(offsets[0].high_watermark, 4, "{offsets:?}");

    // The SDK's producer is idempotent by default.
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..500 {
        let record = Record {
            value: Some(Bytes::from(format!("sdk-{i}"))),
            ..Record::default()
        };
        deliveries.push(producer.send("idem", record, Some(0)).await.unwrap());
    }
    producer.flush().await;
    for (i, d) in deliveries.into_iter().enumerate() {
        assert_eq!(d.await.unwrap().offset, 4 + i as i64);
    }
    producer.close().await;
    dev.stop().await;
}
