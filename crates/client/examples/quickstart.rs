//! The Rust SDK in one program (docs/clients.md): creates a topic, produces
//! three records with one key, reads them back with a subscription, and
//! shows an error's stable reason. `cargo xtask clients-test rust` runs it
//! against a `streambus dev`; it fails when a record does not come back as
//! sent.
//!
//! ```sh
//! cargo run -p streambus-client --example quickstart -- 127.0.0.1:7400
//! ```

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use streambus_client::{
    Client, ClientError, Header, ProducerConfig, Reason, Record, StartFrom, SubscribeOptions,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7400".into());
    let client = Client::connect(&address).await?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let topic = format!("rust-example-{nanos}");
    client.create_topic(&topic, 3, 0, HashMap::new()).await?;

    // A batching, idempotent producer: `send_and_wait` queues a record and
    // waits for its acknowledgement.
    let producer = client.producer(ProducerConfig::default());
    for value in ["first", "second", "third"] {
        let record = Record {
            key: Some(Bytes::from("customer-1")),
            value: Some(Bytes::from(value)),
            headers: vec![Header {
                key: "source".into(),
                value: Some(Bytes::from("example")),
            }],
            timestamp_ms: 0, // 0 = now
        };
        let written = producer.send_and_wait(&topic, record, None).await?;
        println!(
            "produced to partition {} at offset {}",
            written.partition, written.offset
        );
    }
    producer.close().await;

    // A subscription to every partition, from the earliest offset.
    let mut records = client
        .subscribe(SubscribeOptions {
            start: StartFrom::Earliest,
            ..SubscribeOptions::new(&topic)
        })
        .await?;
    for (offset, value) in ["first", "second", "third"].into_iter().enumerate() {
        let record = records.next().await.ok_or("the subscription ended")??;
        println!(
            "partition {} offset {} key customer-1 value {}",
            record.partition,
            record.offset,
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
        );
        let header = record.headers.first().and_then(|h| h.value.as_deref());
        if record.offset != offset as i64
            || record.value.as_deref() != Some(value.as_bytes())
            || record.key.as_deref() != Some(b"customer-1".as_slice())
            || header != Some(b"example".as_slice())
        {
            return Err(format!("unexpected record {record:?}").into());
        }
    }
    drop(records); // cancels the subscription

    // Every error carries a stable reason.
    match client.describe_topic(&format!("{topic}-missing")).await {
        Err(e @ ClientError::Server(_)) if e.reason() == Some(Reason::UnknownTopic) => {
            println!(
                "error: {} (reason), retriable {}",
                Reason::UnknownTopic,
                e.retriable()
            );
        }
        other => return Err(format!("expected UNKNOWN_TOPIC, got {other:?}").into()),
    }
    client.delete_topic(&topic).await?;
    Ok(())
}
