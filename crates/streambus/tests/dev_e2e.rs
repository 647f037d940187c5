//! End to end through the SDK against an in-process dev instance.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{Client, Header, ProducerConfig, Record, StartFrom, SubscribeOptions};

const RECORDS: usize = 100_000;
const KEYS: usize = 1_000;
const PARTITIONS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keyed_records_round_trip_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("e2e.orders", PARTITIONS, 1, HashMap::new())
        .await
        .unwrap();

    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("key-{}", i % KEYS);
        let record = Record {
            key: Some(Bytes::from(key)),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: vec![Header {
                key: "seq".to_string(),
                value: Some(Bytes::from(i.to_string())),
            }],
            timestamp_ms: 0,
        };
        deliveries.push(producer.send("e2e.orders", record, None).await.unwrap());
    }
    producer.flush().await;
    let mut acked: HashMap<(u32, i64), usize> = HashMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let meta = d.await.unwrap();
        assert!(
            acked.insert((meta.partition, meta.offset), i).is_none(),
            "offset assigned twice"
        );
    }
    producer.close().await;

    // Offsets are dense per partition and sum to the records produced.
    let offsets = client.partition_offsets("e2e.orders").await.unwrap();
    let total: i64 = offsets
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    assert_eq!(total, RECORDS as i64);

    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new("e2e.orders")
        })
        .await
        .unwrap();
    let mut last_seq_per_key: HashMap<String, usize> = HashMap::new();
    let mut next_offset: HashMap<u32, i64> = HashMap::new();
    let mut seen = 0;
    while seen < RECORDS {
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), sub.next())
            .await
            .expect("records keep arriving")
            .expect("stream open")
            .unwrap();
        let expected = next_offset.entry(r.partition).or_insert(0);
        assert_eq!(r.offset, *expected, "offsets are consecutive per partition");
        *expected += 1;
        let seq: usize = std::str::from_utf8(r.headers[0].value.as_ref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            acked.get(&(r.partition, r.offset)),
            Some(&seq),
            "record is where its ack said"
        );
        let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
        assert_eq!(key, format!("key-{}", seq % KEYS));
        assert_eq!(r.value.as_deref(), Some(format!("value-{seq}").as_bytes()));
        if let Some(prev) = last_seq_per_key.insert(key, seq) {
            assert!(prev < seq, "per-key order kept");
        }
        seen += 1;
    }
    assert_eq!(last_seq_per_key.len(), KEYS);
    drop(sub);
    dev.stop().await;
}

/// A topic grown while a producer writes and a subscription reads: the
/// producer starts writing to the new partitions, and the subscription,
/// started before they existed, reads everything written to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_grown_while_in_use_is_written_and_read_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic("e2e.grow", 1, 1, HashMap::new())
        .await
        .unwrap();
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new("e2e.grow")
        })
        .await
        .unwrap();
    let producer = client.producer(ProducerConfig {
        metadata_max_age: std::time::Duration::from_millis(100),
        ..ProducerConfig::default()
    });
    let mut acked: HashMap<(u32, i64), String> = HashMap::new();
    let mut send = async |i: usize| {
        let value = format!("g{i}");
        let record = Record {
            value: Some(Bytes::from(value.clone())),
            ..Record::default()
        };
        let m = producer
            .send_and_wait("e2e.grow", record, None)
            .await
            .unwrap();
        acked.insert((m.partition, m.offset), value);
        m.partition
    };
    for i in 0..20 {
        assert_eq!(send(i).await, 0);
    }
    let grown = client.create_partitions("e2e.grow", 3).await.unwrap();
    assert_eq!(grown.partitions.len(), 3);
    let mut written = std::collections::BTreeSet::new();
    let mut i = 20;
    while written.len() < 3 {
        written.insert(send(i).await);
        i += 1;
        assert!(i < 5_000, "the new partitions got nothing: {written:?}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    producer.close().await;

    let mut read: HashMap<(u32, i64), String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while read.len() < acked.len() {
        let r = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("read {} of {}", read.len(), acked.len()))
            .unwrap()
            .unwrap();
        let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        read.insert((r.partition, r.offset), value);
    }
    assert_eq!(read, acked);
    drop(sub);
    dev.stop().await;
}
