//! Kafka's four compression codecs end to end through `streambus dev`:
//! each producer's codec is stored as sent and read back both decoded and
//! as the stored batches; a topic's `compression.type` makes the partition
//! leader recompress, and can be changed on an existing topic.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use streambus_client::v1::consume_service_client::ConsumeServiceClient;
use streambus_client::v1::produce_service_client::ProduceServiceClient;
use streambus_client::{Client, Compression, Header, ProducerConfig, Record, v1};
use streambus_record::{BatchBuilder, BatchIter, DecodedRecord, decode_records, validate_batch};

fn record(i: usize) -> Record {
    Record {
        key: (!i.is_multiple_of(4)).then(|| Bytes::from(format!("key-{i}"))),
        value: (i % 9 != 8).then(|| Bytes::from(format!("value {i} ").repeat(20))),
        headers: vec![Header {
            key: "n".into(),
            value: Some(Bytes::from(i.to_string())),
        }],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

fn same_record(got: &DecodedRecord, want: &Record, offset: i64) {
    assert_eq!(got.offset, offset);
    assert_eq!(got.key, want.key, "key at {offset}");
    assert_eq!(got.value, want.value, "value at {offset}");
    assert_eq!(got.headers, want.headers, "headers at {offset}");
    assert_eq!(got.timestamp_ms, want.timestamp_ms);
}

async fn fetch(
    consume: &mut ConsumeServiceClient<tonic::transport::Channel>,
    topic: &str,
    offset: i64,
    encoded: bool,
) -> v1::FetchResponse {
    consume
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 8 << 20,
            max_wait_ms: 0,
            encoded,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every record of partition 0, decoded by the gateway.
async fn read_decoded(
    consume: &mut ConsumeServiceClient<tonic::transport::Channel>,
    topic: &str,
    count: usize,
) -> Vec<DecodedRecord> {
    let mut out = Vec::new();
    while out.len() < count {
        let r = fetch(consume, topic, out.len() as i64, false).await;
        assert!(r.encoded_batches.is_empty());
        assert!(!r.records.is_empty(), "no records at {}", out.len());
        out.extend(r.records.into_iter().map(|r| {
            DecodedRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| streambus_record::Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
            }
        }));
    }
    out
}

/// Every stored batch of partition 0, as the gateway passes them through.
async fn read_encoded(
    consume: &mut ConsumeServiceClient<tonic::transport::Channel>,
    topic: &str,
    count: i64,
) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = 0;
    while next < count {
        let r = fetch(consume, topic, next, true).await;
        assert!(r.records.is_empty());
        for item in BatchIter::new(&r.encoded_batches) {
            let (header, batch) = item.unwrap();
            next = header.next_offset();
            out.push(Bytes::copy_from_slice(batch));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_is_stored_as_sent_and_read_back_decoded_and_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("codecs", 1, 1, HashMap::new())
        .await
        .unwrap();
    let per_codec = 300;
    let mut sent = Vec::new();
    for codec in Compression::ALL {
        let producer = client.producer(ProducerConfig {
            compression: codec,
            ..ProducerConfig::default()
        });
        let mut deliveries = Vec::new();
        for _ in 0..per_codec {
            let r = record(sent.len());
            sent.push(r.clone());
            deliveries.push(producer.send("codecs", r, Some(0)).await.unwrap());
        }
        producer.flush().await;
        for d in deliveries {
            d.await.unwrap();
        }
    }
    let mut consume = ConsumeServiceClient::connect(format!("http://{}", dev.gateway()))
        .await
        .unwrap();
    let decoded = read_decoded(&mut consume, "codecs", sent.len()).await;
    for (i, (got, want)) in decoded.iter().zip(&sent).enumerate() {
        same_record(got, want, i as i64);
    }
    // Stored as each producer compressed them, CRCs intact.
    let mut codecs = Vec::new();
    let mut from_batches = Vec::new();
    for batch in read_encoded(&mut consume, "codecs", sent.len() as i64).await {
        let header = validate_batch(&batch).unwrap();
        let codec = header.compression().unwrap();
        assert_eq!(
            codec,
            Compression::ALL[header.base_offset as usize / per_codec]
        );
        if codecs.last() != Some(&codec) {
            codecs.push(codec);
        }
        from_batches.extend(decode_records(&batch).unwrap());
    }
    assert_eq!(codecs, Compression::ALL);
    assert_eq!(from_batches, decoded);
    dev.stop().await;
}

fn encoded(codec: Compression, first: usize, n: usize) -> Bytes {
    let mut b = BatchBuilder::new(codec);
    for i in first..first + n {
        b.push(&record(i));
    }
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_compression_type_recompresses_and_can_be_altered() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    let configs = HashMap::from([("compression.type".to_string(), "zstd".to_string())]);
    let created = client.create_topic("zstd", 1, 1, configs).await.unwrap();
    assert_eq!(created.configs["compression.type"], "zstd");
    let mut produce = ProduceServiceClient::connect(format!("http://{}", dev.gateway()))
        .await
        .unwrap();
    let mut send = async |batch: Bytes, records: Vec<v1::Record>| {
        let result = produce
            .produce(v1::ProduceRequest {
                batches: vec![v1::ProduceBatch {
                    topic: "zstd".into(),
                    partition: Some(0),
                    records,
                    encoded_batch: batch,
                    traceparent: String::new(),
                }],
                acks: v1::Acks::All as i32,
                timeout_ms: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0);
        assert!(result.error.is_none(), "{result:?}");
    };
    // An lz4 batch, an uncompressed one, and records the gateway encodes.
    send(encoded(Compression::Lz4, 0, 50), vec![]).await;
    send(encoded(Compression::None, 50, 50), vec![]).await;
    let structured = (100..150)
        .map(|i| {
            let r = record(i);
            v1::Record {
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|h| v1::Header {
                        key: h.key,
                        value: h.value,
                    })
                    .collect(),
                timestamp_ms: r.timestamp_ms,
            }
        })
        .collect();
    send(Bytes::new(), structured).await;
    // Changed on the existing topic: gzip from now on.
    let altered = client
        .alter_topic_configs(
            "zstd",
            HashMap::from([("compression.type".to_string(), "gzip".to_string())]),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(altered.configs["compression.type"], "gzip");
    // The storage node applies the change from its metadata watch.
    let mut consume = ConsumeServiceClient::connect(format!("http://{}", dev.gateway()))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut next = 150;
    let last = loop {
        send(encoded(Compression::Snappy, next, 10), vec![]).await;
        next += 10;
        let batches = read_encoded(&mut consume, "zstd", next as i64).await;
        let last = batches.last().unwrap().clone();
        if validate_batch(&last).unwrap().compression() == Ok(Compression::Gzip) {
            break batches;
        }
        assert!(std::time::Instant::now() < deadline, "not applied");
    };
    for (i, batch) in last.iter().enumerate() {
        let header = validate_batch(batch).unwrap();
        let codec = header.compression().unwrap();
        if i < 3 {
            assert_eq!(codec, Compression::Zstd, "batch {i}");
        } else {
            assert!([Compression::Zstd, Compression::Gzip].contains(&codec));
        }
    }
    // Offsets and records are unchanged by recompression.
    let decoded = read_decoded(&mut consume, "zstd", next).await;
    for (i, got) in decoded.iter().enumerate() {
        same_record(got, &record(i), i as i64);
    }
    // An unknown value is refused with the stable reason.
    let err = client
        .alter_topic_configs(
            "zstd",
            HashMap::from([("compression.type".to_string(), "brotli".to_string())]),
            vec![],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("INVALID_CONFIG"), "{err}");
    assert!(err.to_string().contains("compression.type"), "{err}");
    dev.stop().await;
}
