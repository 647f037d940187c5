//! A subscription to every partition of a topic with thousands of them:
//! while idle it waits on record watches (one stream per storage node),
//! not a long-poll request per partition, and records produced to any
//! partition still reach it at once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};

const TOPIC: &str = "wide";
const PARTITIONS: u32 = 2_000;

async fn wait_for_metric(http: std::net::SocketAddr, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = common::metric(http, name);
        if v == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {v}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_to_thousands_of_partitions_sends_no_requests() {
    let dir = tempfile::tempdir().unwrap();
    let dev = common::Dev::start(dir.path()).await;
    let http = dev.endpoints.http;
    let client = Client::connect(dev.gateway()).await.unwrap();
    client
        .create_topic(TOPIC, PARTITIONS, 1, HashMap::new())
        .await
        .unwrap();
    let mut sub = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(TOPIC)
        })
        .await
        .unwrap();
    // Polled all along: the client resubscribes (from the offsets it has)
    // when the first attempt meets partitions whose logs still open.
    let (records, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(r) = sub.next().await {
            if records.send(r).is_err() {
                return;
            }
        }
    });

    // Every partition is caught up (empty) and waits on a watch.
    wait_for_metric(
        http,
        "streambus_storage_record_watches",
        f64::from(PARTITIONS),
    )
    .await;
    let before = common::metric(http, "streambus_storage_fetch_requests_total");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = common::metric(http, "streambus_storage_fetch_requests_total");
    // Polling instead would be a request per partition per 500 ms wait:
    // about 8,000 in those 2 s.
    assert!(
        after - before < 50.0,
        "{} fetch requests in 2 s by an idle subscription",
        after - before
    );

    // Records on a sample of partitions arrive, each once, in order.
    let producer = client.producer(ProducerConfig::default());
    let sample: Vec<u32> = (0..PARTITIONS).step_by(97).collect();
    let mut deliveries = Vec::new();
    for round in 0..2 {
        for &p in &sample {
            let record = Record {
                key: None,
                value: Some(Bytes::from(format!("{p}-{round}"))),
                headers: vec![],
                timestamp_ms: 0,
            };
            deliveries.push(producer.send(TOPIC, record, Some(p)).await.unwrap());
        }
    }
    producer.flush().await;
    for d in deliveries {
        d.await.unwrap();
    }
    let mut seen = HashSet::new();
    for _ in 0..sample.len() * 2 {
        let r = tokio::time::timeout(Duration::from_secs(20), received.recv())
            .await
            .expect("produced records reach the idle subscription")
            .expect("stream open")
            .unwrap();
        let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        assert_eq!(value, format!("{}-{}", r.partition, r.offset));
        assert!(seen.insert((r.partition, r.offset)), "{value} twice");
    }
    assert_eq!(seen.len(), sample.len() * 2);

    // Caught up again: back to watches, one per partition.
    wait_for_metric(
        http,
        "streambus_storage_record_watches",
        f64::from(PARTITIONS),
    )
    .await;
    reader.abort();
    let _ = reader.await;
    // The subscription ended: its watches were cancelled.
    wait_for_metric(http, "streambus_storage_record_watches", 0.0).await;
    producer.close().await;
    drop(client);
    dev.stop().await;
}
