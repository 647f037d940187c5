//! Apache Kafka through librdkafka (the `rdkafka` crate): a
//! `FutureProducer` per producer, a `StreamConsumer` with explicitly
//! assigned partitions per consumer.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use super::{AckFuture, BoxFuture, Driver, Producer, Received, TIMESTAMP_HEADER, parse_timestamp};
use crate::workload::{Acks, Durability, Workload};

/// The Kafka driver.
#[derive(Debug, Clone)]
pub struct KafkaDriver {
    bootstrap: String,
}

impl KafkaDriver {
    /// Talks to the brokers at `bootstrap` (`host:port[,host:port]`).
    pub fn new(bootstrap: &str) -> KafkaDriver {
        KafkaDriver {
            bootstrap: bootstrap.to_string(),
        }
    }

    /// Producer settings: the workload's batching and compression,
    /// idempotence with acks=all (as the StreamBus SDK's default; Kafka
    /// allows it with acks=all only), the same buffer bound.
    fn producer_config(&self, workload: &Workload) -> Vec<(&'static str, String)> {
        let acks = match workload.acks {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        };
        vec![
            ("bootstrap.servers", self.bootstrap.clone()),
            ("acks", acks.to_string()),
            (
                "linger.ms",
                format!("{}", workload.linger.as_secs_f64() * 1000.0),
            ),
            ("batch.size", workload.batch_max_bytes.to_string()),
            (
                "compression.type",
                workload.compression.as_str().to_string(),
            ),
            (
                "enable.idempotence",
                (workload.acks == Acks::All).to_string(),
            ),
            // 5 by default: the Java client's default (and so OMB's Kafka
            // driver's); librdkafka's own default pipelines up to a million
            // requests, which keeps batches small.
            (
                "max.in.flight.requests.per.connection",
                workload.max_in_flight_per_partition.to_string(),
            ),
            (
                "queue.buffering.max.kbytes",
                (workload.max_outstanding_bytes * 2 / 1024)
                    .max(1)
                    .to_string(),
            ),
            (
                "queue.buffering.max.messages",
                (workload.max_outstanding_messages() * 2)
                    .max(100_000)
                    .to_string(),
            ),
            (
                "message.timeout.ms",
                workload.delivery_timeout.as_millis().to_string(),
            ),
        ]
    }

    fn consumer_config(&self, group: &str) -> Vec<(&'static str, String)> {
        vec![
            ("bootstrap.servers", self.bootstrap.clone()),
            ("group.id", group.to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("auto.offset.reset", "earliest".to_string()),
            ("enable.partition.eof", "false".to_string()),
        ]
    }

    /// Topic configs for the durability mode: `flush.messages=1` makes the
    /// broker fsync every appended batch before it answers.
    fn topic_configs(workload: &Workload) -> Vec<(&'static str, &'static str)> {
        match workload.durability {
            Durability::Fsync => vec![("flush.messages", "1")],
            Durability::PageCache => Vec::new(),
        }
    }

    fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .context("creating a Kafka admin client")
    }
}

fn config(pairs: &[(&'static str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in pairs {
        c.set(*k, v);
    }
    c
}

impl Driver for KafkaDriver {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn settings(&self, workload: &Workload) -> serde_json::Value {
        let pairs = |v: Vec<(&'static str, String)>| -> serde_json::Map<String, serde_json::Value> {
            v.into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect()
        };
        json!({
            "client": format!("librdkafka {} (rdkafka crate), one connection per producer and consumer", rdkafka::util::get_rdkafka_version().1),
            "producer": pairs(self.producer_config(workload)),
            "consumer": pairs(self.consumer_config("<per run>")),
            "topic_configs": KafkaDriver::topic_configs(workload)
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let admin = self.admin()?;
            let mut new = NewTopic::new(
                topic,
                workload.partitions_per_topic as i32,
                TopicReplication::Fixed(workload.replication_factor as i32),
            );
            for (k, v) in KafkaDriver::topic_configs(workload) {
                new = new.set(k, v);
            }
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let results = admin
                .create_topics(&[new], &options)
                .await
                .with_context(|| format!("no Kafka broker at {}", self.bootstrap))?;
            for r in results {
                r.map_err(|(t, e)| anyhow::anyhow!("creating Kafka topic {t}: {e}"))?;
            }
            // Wait until every partition has a leader.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(topic), Duration::from_secs(5))?;
                let ready = md.topics().iter().any(|t| {
                    t.partitions().len() == workload.partitions_per_topic as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                });
                if ready {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("Kafka topic {topic} has no leaders after 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn delete_topic<'a>(
        &'a self,
        topic: &'a str,
        _workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let admin = self.admin()?;
            let results = admin.delete_topics(&[topic], &AdminOptions::new()).await?;
            for r in results {
                r.map_err(|(t, e)| anyhow::anyhow!("deleting Kafka topic {t}: {e}"))?;
            }
            Ok(())
        })
    }

    fn producer<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Producer>>> {
        Box::pin(async move {
            let producer: FutureProducer = config(&self.producer_config(workload))
                .create()
                .context("creating a Kafka producer")?;
            Ok(Box::new(KafkaProducer {
                producer,
                topic: topic.to_string(),
            }) as Box<dyn Producer>)
        })
    }

    fn consumer<'a>(
        &'a self,
        topic: &'a str,
        partitions: Vec<u32>,
        _workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<BoxStream<'static, anyhow::Result<Received>>>> {
        Box::pin(async move {
            let group = format!("{topic}-readers");
            let consumer: StreamConsumer = config(&self.consumer_config(&group))
                .create()
                .context("creating a Kafka consumer")?;
            let mut assignment = TopicPartitionList::new();
            for p in partitions {
                assignment.add_partition_offset(topic, p as i32, Offset::Beginning)?;
            }
            consumer.assign(&assignment)?;
            let consumer = Arc::new(consumer);
            Ok(stream::unfold(consumer, |c| async move {
                let item = match c.recv().await {
                    Ok(m) => {
                        let sent_us = m.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == TIMESTAMP_HEADER)
                                .and_then(|h| h.value)
                                .and_then(parse_timestamp)
                        });
                        Ok(Received {
                            sent_us,
                            bytes: m.payload().map_or(0, <[u8]>::len),
                        })
                    }
                    Err(e) => Err(anyhow::Error::from(e).context("Kafka consumer")),
                };
                Some((item, c))
            })
            .boxed())
        })
    }
}

struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
}

impl Producer for KafkaProducer {
    fn send<'a>(
        &'a mut self,
        key: Option<Bytes>,
        payload: Bytes,
        sent_us: u64,
    ) -> BoxFuture<'a, anyhow::Result<AckFuture>> {
        Box::pin(async move {
            let ts = sent_us.to_string();
            loop {
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: TIMESTAMP_HEADER,
                    value: Some(ts.as_bytes()),
                });
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                    .payload(&payload[..])
                    .headers(headers);
                if let Some(k) = &key {
                    record = record.key(&k[..]);
                }
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        return Ok(delivery
                            .map(|r| match r {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((e, _))) => Err(anyhow::Error::from(e)),
                                Err(_) => Err(anyhow::anyhow!("Kafka producer dropped")),
                            })
                            .boxed());
                    }
                    // librdkafka's queue is full: its own backpressure.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let producer = self.producer;
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(60))).await??;
            Ok(())
        })
    }
}
