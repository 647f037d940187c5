//! A produce stream whose client never reads acknowledgements stops being
//! read by the gateway: the server holds a bounded amount, not the stream.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use bytes::Bytes;
use streambus_proto::v1::admin_service_client::AdminServiceClient;
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use streambus_proto::v1::{CreateTopicRequest, ProduceBatch, ProduceStreamRequest, Record};

/// Far more than the fixed amount an unread stream can pull: the HTTP/2
/// windows (megabytes of 1 KiB requests into the gateway, unread acks back
/// to the client) plus the per-stream in-flight limit, about 10 000 to
/// 13 000 requests on this machine whatever `SENT` is.
const SENT: usize = 40_000;
const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_produce_stream_is_not_read_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", dev.gateway()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(channel.clone())
        .create_topic(CreateTopicRequest {
            name: "pressure".into(),
            partitions: PARTITIONS,
            replication_factor: 1,
            // Appends need not wait for the disk here: this is about flow.
            configs: HashMap::from([("fsync.policy".to_string(), "never".to_string())]),
        })
        .await
        .unwrap();

    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let value = Bytes::from(vec![b'v'; 1024]);
    let requests = futures::stream::iter(0..SENT).map(move |i| {
        counter.fetch_add(1, Ordering::SeqCst);
        ProduceStreamRequest {
            sequence: i as u64,
            batch: Some(ProduceBatch {
                topic: "pressure".into(),
                partition: Some(i as u32 % PARTITIONS),
                records: vec![Record {
                    key: None,
                    value: Some(value.clone()),
                    headers: vec![],
                    timestamp_ms: 0,
                }],
                encoded_batch: Bytes::new(),
                traceparent: String::new(),
            }),
            acks: 0,
        }
    });
    // Open the stream and never read a response.
    let mut client = ProduceServiceClient::new(channel);
    let responses = client.produce_stream(requests).await.unwrap();
    let mut last = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = pulled.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let stalled_at = pulled.load(Ordering::SeqCst);
    eprintln!("gateway stopped reading after {stalled_at} of {SENT} requests");
    assert!(
        stalled_at < SENT / 2,
        "the gateway kept reading an unread stream: {stalled_at} of {SENT} requests pulled"
    );

    // Reading the acknowledgements lets the rest through, all acked in order
    // of offsets.
    let mut responses = responses.into_inner();
    let mut acked = 0;
    while acked < SENT {
        let r = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .expect("acks keep coming")
            .unwrap()
            .expect("stream open");
        let result = r.result.unwrap();
        assert!(result.error.is_none(), "{result:?}");
        assert_eq!(
            result.acks[0].base_offset,
            r.sequence as i64 / i64::from(PARTITIONS),
            "appended in stream order"
        );
        acked += 1;
    }
    drop(responses);
    dev.stop().await;
}
