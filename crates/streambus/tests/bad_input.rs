//! Bad input gets its documented reason, and the server keeps serving.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use streambus_proto::v1::admin_service_client::AdminServiceClient;
use streambus_proto::v1::consume_service_client::ConsumeServiceClient;
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{
    CreateTopicRequest, FetchRequest, ProduceBatch, ProduceRequest, Record, StartPosition,
    SubscribeRequest, start_position,
};
use streambus_proto::{Error, Reason};
use tonic::transport::Channel;

struct Clients {
    admin: AdminServiceClient<Channel>,
    produce: ProduceServiceClient<Channel>,
    consume: ConsumeServiceClient<Channel>,
}

async fn clients(addr: &str) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        admin: AdminServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
        produce: ProduceServiceClient::new(channel.clone())
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20),
        consume: ConsumeServiceClient::new(channel).max_decoding_message_size(64 << 20),
    }
}

fn create(name: &str, partitions: u32) -> CreateTopicRequest {
    CreateTopicRequest {
        name: name.to_string(),
        partitions,
        replication_factor: 1,
        configs: HashMap::new(),
    }
}

fn record(value: &[u8]) -> Record {
    Record {
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: vec![],
        timestamp_ms: 0,
    }
}

fn reason_of(status: tonic::Status) -> Reason {
    assert_eq!(
        status
            .metadata()
            .get("streambus-reason")
            .map(|v| v.to_str().unwrap().to_string()),
        Some(Error::from_status(&status).reason.as_str().to_string()),
        "the reason is also in the metadata"
    );
    Error::from_status(&status).reason
}

async fn produce_one(
    c: &mut Clients,
    batch: ProduceBatch,
) -> Result<streambus_proto::v1::BatchResult, tonic::Status> {
    let resp = c
        .produce
        .produce(ProduceRequest {
            batches: vec![batch],
            acks: 0,
            timeout_ms: 5_000,
        })
        .await?;
    Ok(resp.into_inner().results.remove(0))
}

fn batch_reason(result: &streambus_proto::v1::BatchResult) -> Option<Reason> {
    result.error.as_ref().map(|e| Error::from_detail(e).reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_documented_reasons_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let mut c = clients(&dev.gateway()).await;
    c.admin.create_topic(create("good", 2)).await.unwrap();

    // Topic administration.
    for name in ["", "has space", "slash/y", ".", "..", &"x".repeat(250)] {
        let err = c.admin.create_topic(create(name, 1)).await.unwrap_err();
        assert_eq!(reason_of(err), Reason::InvalidTopicName, "name {name:?}");
    }
    let err = c.admin.create_topic(create("zero", 0)).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::InvalidArgument);
    let err = c.admin.create_topic(create("good", 1)).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::TopicAlreadyExists);
    let mut bad_config = create("badconfig", 1);
    bad_config
        .configs
        .insert("retention.mss".into(), "1".into());
    let err = c.admin.create_topic(bad_config).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::InvalidConfig);
    let err = c
        .admin
        .describe_topic(streambus_proto::v1::DescribeTopicRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason_of(err), Reason::UnknownTopic);

    // Produce.
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "nope".into(),
            partition: None,
            records: vec![record(b"x")],
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::UnknownTopic));
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(9),
            records: vec![record(b"x")],
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::UnknownPartition));
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(0),
            records: vec![record(&vec![7u8; 2 * 1024 * 1024])],
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::RecordTooLarge));
    // A pre-encoded batch with a flipped byte fails its CRC.
    let mut builder = streambus_record::BatchBuilder::new(streambus_record::Compression::None);
    builder.push(&streambus_record::Record {
        key: None,
        value: Some(Bytes::from_static(b"payload")),
        headers: vec![],
        timestamp_ms: 1,
    });
    let mut corrupt = builder.build().to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(0),
            records: vec![],
            encoded_batch: Bytes::from(corrupt),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::CorruptBatch));
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(0),
            records: vec![],
            encoded_batch: Bytes::from_static(b"definitely not a record batch"),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::CorruptBatch));
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(0),
            records: vec![],
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(batch_reason(&r), Some(Reason::InvalidArgument));

    // The partition still takes good writes, at offset 0: nothing bad was stored.
    let r = produce_one(
        &mut c,
        ProduceBatch {
            topic: "good".into(),
            partition: Some(0),
            records: vec![record(b"a"), record(b"b")],
            encoded_batch: Bytes::new(),
            traceparent: String::new(),
        },
    )
    .await
    .unwrap();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.acks[0].base_offset, 0);
    assert_eq!(r.acks[0].last_offset, 1);

    // Consume: offsets out of range, unknown topic and partition.
    let fetch = |offset: i64, partition: u32, topic: &str| FetchRequest {
        topic: topic.to_string(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
        encoded: false,
    };
    let err = c.consume.fetch(fetch(100, 0, "good")).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::OffsetOutOfRange);
    let err = c.consume.fetch(fetch(-1, 0, "good")).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::OffsetOutOfRange);
    let err = c.consume.fetch(fetch(0, 5, "good")).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::UnknownPartition);
    let err = c.consume.fetch(fetch(0, 0, "nope")).await.unwrap_err();
    assert_eq!(reason_of(err), Reason::UnknownTopic);
    let mut stream = c
        .consume
        .subscribe(SubscribeRequest {
            topic: "good".into(),
            partition: Some(0),
            start: Some(StartPosition {
                position: Some(start_position::Position::Offset(50)),
            }),
            max_bytes: 0,
            max_wait_ms: 100,
            encoded: false,
            resume_offsets: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(reason_of(err), Reason::OffsetOutOfRange);

    // And everything acknowledged is still served.
    let got = c
        .consume
        .fetch(fetch(0, 0, "good"))
        .await
        .unwrap()
        .into_inner();
    let values: Vec<_> = got
        .records
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect();
    assert_eq!(
        values,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
    dev.stop().await;
}
