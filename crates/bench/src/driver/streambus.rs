//! StreamBus through the Rust SDK (`streambus-client`): the batching
//! producer over one `ProduceStream` per producer, and `Subscribe`
//! streams for consumers.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use serde_json::json;
use streambus_client::{
    Client, Compression, ConnectOptions, Header, ProducerConfig, Record, StartFrom,
    SubscribeOptions, TlsOptions, v1,
};

use super::{AckFuture, BoxFuture, Driver, Producer, Received, TIMESTAMP_HEADER, parse_timestamp};
use crate::workload::{Acks, Codec, Durability, Workload};

/// How long a new topic may take until every partition serves.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The StreamBus driver.
#[derive(Debug, Clone)]
pub struct StreamBusDriver {
    gateway: String,
    tls: Option<TlsOptions>,
}

impl StreamBusDriver {
    /// Talks to the gateway at `gateway` (`host:port`), over TLS with
    /// `tls`.
    pub fn new(gateway: &str, tls: Option<TlsOptions>) -> StreamBusDriver {
        StreamBusDriver {
            gateway: gateway.to_string(),
            tls,
        }
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let options = ConnectOptions {
            tls: self.tls.clone(),
            ..ConnectOptions::default()
        };
        Client::connect_with(self.gateway.clone(), options)
            .await
            .with_context(|| format!("no StreamBus gateway at {}", self.gateway))
    }

    fn producer_config(workload: &Workload) -> ProducerConfig {
        ProducerConfig {
            linger: workload.linger,
            max_batch_bytes: workload.batch_max_bytes,
            acks: match workload.acks {
                Acks::All => v1::Acks::All,
                Acks::Leader => v1::Acks::Leader,
                Acks::None => v1::Acks::None,
            },
            // The runner bounds outstanding messages; the SDK's buffer also
            // counts record overhead, so give it room above that bound.
            max_buffered_bytes: workload.max_outstanding_bytes * 2,
            max_in_flight_per_partition: workload.max_in_flight_per_partition,
            delivery_timeout: workload.delivery_timeout,
            compression: match workload.compression {
                Codec::None => Compression::None,
                Codec::Gzip => Compression::Gzip,
                Codec::Snappy => Compression::Snappy,
                Codec::Lz4 => Compression::Lz4,
                Codec::Zstd => Compression::Zstd,
            },
            ..ProducerConfig::default()
        }
    }

    fn topic_configs(workload: &Workload) -> HashMap<String, String> {
        let policy = match workload.durability {
            Durability::Fsync => "always",
            Durability::PageCache => "never",
        };
        HashMap::from([("fsync.policy".to_string(), policy.to_string())])
    }
}

impl Driver for StreamBusDriver {
    fn name(&self) -> &'static str {
        "streambus"
    }

    fn settings(&self, workload: &Workload) -> serde_json::Value {
        let c = StreamBusDriver::producer_config(workload);
        json!({
            "client": "streambus-client (Rust SDK), one connection per producer and consumer",
            "gateway": self.gateway,
            "topic_configs": StreamBusDriver::topic_configs(workload),
            "producer": {
                "linger_ms": c.linger.as_secs_f64() * 1000.0,
                "max_batch_bytes": c.max_batch_bytes,
                "max_in_flight": c.max_in_flight,
                "max_in_flight_per_partition": c.max_in_flight_per_partition,
                "acks": format!("{:?}", c.acks),
                "compression": c.compression.name(),
                "max_buffered_bytes": c.max_buffered_bytes,
                "delivery_timeout_ms": c.delivery_timeout.as_millis() as u64,
            },
            "consumer": "Subscribe with encoded batches, from the earliest offset",
            "payload": workload.payload.as_str(),
            "payload_compression_ratio": payload_ratio(workload, c.compression),
        })
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.connect()
                .await?
                .create_topic(
                    topic,
                    workload.partitions_per_topic,
                    workload.replication_factor,
                    StreamBusDriver::topic_configs(workload),
                )
                .await
                .with_context(|| format!("creating StreamBus topic {topic}"))?;
            // The create is answered once the controller committed it; the
            // storage nodes open the logs after. As OMB waits for leaders,
            // measure from when every partition serves: the first to
            // describe all of them.
            let client = self.connect().await?;
            let deadline = tokio::time::Instant::now() + TOPIC_READY_TIMEOUT;
            loop {
                match client.partition_offsets(topic).await {
                    Ok(p) if p.len() == workload.partitions_per_topic as usize => return Ok(()),
                    Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(p) => anyhow::bail!(
                        "topic {topic}: {} of {} partitions served after {TOPIC_READY_TIMEOUT:?}",
                        p.len(),
                        workload.partitions_per_topic
                    ),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("topic {topic} not served after {TOPIC_READY_TIMEOUT:?}")
                        });
                    }
                }
            }
        })
    }

    fn delete_topic<'a>(
        &'a self,
        topic: &'a str,
        _workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.connect().await?.delete_topic(topic).await?;
            Ok(())
        })
    }

    fn producer<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Producer>>> {
        Box::pin(async move {
            let client = self.connect().await?;
            let producer = client.producer(StreamBusDriver::producer_config(workload));
            Ok(Box::new(SbProducer {
                producer,
                topic: topic.to_string(),
            }) as Box<dyn Producer>)
        })
    }

    fn consumer<'a>(
        &'a self,
        topic: &'a str,
        partitions: Vec<u32>,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<BoxStream<'static, anyhow::Result<Received>>>> {
        Box::pin(async move {
            let client = self.connect().await?;
            let every = partitions.len() as u32 == workload.partitions_per_topic;
            // One subscription for the whole topic, or one per partition.
            let wanted: Vec<Option<u32>> = if every {
                vec![None]
            } else {
                partitions.into_iter().map(Some).collect()
            };
            let mut streams = Vec::new();
            for partition in wanted {
                let sub = client
                    .subscribe(SubscribeOptions {
                        partition,
                        start: StartFrom::Earliest,
                        ..SubscribeOptions::new(topic)
                    })
                    .await
                    .with_context(|| format!("subscribing to {topic}"))?;
                // Records are read in place, a batch at a time.
                let batches = stream::unfold(sub, |mut sub| async move {
                    let batch = sub.next_batch().await?;
                    Some((batch, sub))
                });
                streams.push(batches.boxed().flat_map(|batch| {
                    let received: Vec<anyhow::Result<Received>> = match batch {
                        Ok(batch) => batch
                            .records()
                            .map(|r| {
                                let sent_us = r
                                    .headers()
                                    .find(|h| h.key == TIMESTAMP_HEADER.as_bytes())
                                    .and_then(|h| h.value)
                                    .and_then(parse_timestamp);
                                Ok(Received {
                                    sent_us,
                                    bytes: r.value.map_or(0, <[u8]>::len),
                                })
                            })
                            .collect(),
                        Err(e) => vec![Err(e.into())],
                    };
                    stream::iter(received)
                }));
            }
            Ok(stream::select_all(streams).boxed())
        })
    }
}

struct SbProducer {
    producer: streambus_client::Producer,
    topic: String,
}

impl Producer for SbProducer {
    fn send<'a>(
        &'a mut self,
        key: Option<Bytes>,
        payload: Bytes,
        sent_us: u64,
    ) -> BoxFuture<'a, anyhow::Result<AckFuture>> {
        Box::pin(async move {
            let record = Record {
                key,
                value: Some(payload),
                headers: vec![Header {
                    key: TIMESTAMP_HEADER.to_string(),
                    value: Some(Bytes::from(sent_us.to_string())),
                }],
                timestamp_ms: 0,
            };
            let delivery = self.producer.send(&self.topic, record, None).await?;
            Ok(delivery
                .map(|r| r.map(|_| ()).map_err(anyhow::Error::from))
                .boxed())
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            self.producer.close().await;
            Ok(())
        })
    }
}

/// Size of a batch of the workload's payload compressed with `codec`, over
/// its uncompressed size (one producer batch's worth of messages).
fn payload_ratio(workload: &Workload, codec: Compression) -> f64 {
    let payload = Bytes::from(workload.payload.generate(workload.message_size));
    let batch = |codec| {
        let mut b = streambus_record::BatchBuilder::new(codec);
        let n = (workload.batch_max_bytes / workload.message_size.max(1)).clamp(1, 10_000);
        for i in 0..n {
            b.push(&Record {
                value: Some(payload.clone()),
                timestamp_ms: i as i64,
                ..Record::default()
            });
        }
        b.build().len() as f64
    };
    batch(codec) / batch(Compression::None)
}
