//! NATS JetStream through `async-nats`.
//!
//! JetStream has no partitions; the closest match is one stream per
//! partition, so a topic of N partitions is N file-backed streams
//! `<topic>-<p>`, each bound to the subject `<topic>.<p>`. Each stream has
//! its own store, as each Kafka or StreamBus partition has its own log.
//! Producers publish each message and await JetStream's publish
//! acknowledgement (there is no client-side batching or linger); consumers
//! are ordered pull consumers, one per partition, with no acks.
//!
//! The fsync behaviour of JetStream is a server setting (`sync_interval`),
//! not a stream setting, so the driver reads it from the server's `/varz`
//! and refuses to run when it does not match the workload's durability.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::stream::{self as fstream, BoxStream};
use futures::{FutureExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{AckFuture, BoxFuture, Driver, Producer, Received, TIMESTAMP_HEADER, parse_timestamp};
use crate::workload::{Acks, Codec, Durability, Workload};

/// The NATS JetStream driver.
#[derive(Debug, Clone)]
pub struct NatsDriver {
    server: String,
    monitor: String,
}

impl NatsDriver {
    /// Talks to the server at `server`; reads its settings from the HTTP
    /// monitoring endpoint at `monitor`.
    pub fn new(server: &str, monitor: &str) -> NatsDriver {
        NatsDriver {
            server: server.to_string(),
            monitor: monitor.to_string(),
        }
    }

    async fn connect(&self, workload: &Workload) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.server.as_str())
            .await
            .with_context(|| format!("no NATS server at {}", self.server))?;
        Ok(jetstream::ContextBuilder::new()
            // The runner bounds outstanding messages; this stays above it.
            .max_ack_inflight(workload.max_outstanding_messages() * 2)
            .timeout(workload.delivery_timeout)
            .ack_timeout(workload.delivery_timeout)
            .build(client))
    }

    /// The server's JetStream config from `/varz`.
    async fn jetstream_config(&self) -> anyhow::Result<serde_json::Value> {
        let varz = http_get_json(&self.monitor, "/varz")
            .await
            .with_context(|| format!("reading NATS monitoring at {}", self.monitor))?;
        Ok(varz["jetstream"]["config"].clone())
    }

    async fn check_durability(&self, workload: &Workload) -> anyhow::Result<()> {
        let config = self.jetstream_config().await?;
        if config.is_null() {
            anyhow::bail!(
                "the NATS server at {} has JetStream disabled; start it with `cargo xtask peer nats start`",
                self.server
            );
        }
        let always = config["sync_always"].as_bool().unwrap_or(false);
        match (workload.durability, always) {
            (Durability::Fsync, false) => anyhow::bail!(
                "durability = fsync needs a NATS server with `jetstream {{ sync_interval: always }}`; \
                 this one syncs every {} ns: restart it with `cargo xtask peer nats start --durability fsync`",
                config["sync_interval"]
            ),
            (Durability::PageCache, true) => anyhow::bail!(
                "durability = page-cache, but this NATS server fsyncs every write \
                 (sync_interval: always): restart it with `cargo xtask peer nats start --durability page-cache`"
            ),
            _ => Ok(()),
        }
    }
}

fn stream_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// FNV-1a, to map a key to a partition (JetStream has no partitioner).
fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions
}

impl Driver for NatsDriver {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn settings(&self, workload: &Workload) -> serde_json::Value {
        json!({
            "client": "async-nats (JetStream), one connection per producer and consumer",
            "server": self.server,
            "mapping": "one file-backed stream per partition, subject <topic>.<partition>",
            "producer": {
                "publish": "JetStream publish, await PubAck per message",
                "batching": "none: JetStream publishes message by message (batch_max_bytes and linger do not apply)",
                "max_ack_inflight": workload.max_outstanding_messages() * 2,
                "ack_timeout_ms": workload.delivery_timeout.as_millis() as u64,
                "keyless_partitioning": "round robin per message",
            },
            "consumer": "ordered pull consumer per partition, DeliverPolicy::All, no acks",
            "server_sync": "read from /varz at run time, see durability_check",
        })
    }

    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if workload.acks != Acks::All {
                anyhow::bail!(
                    "NATS JetStream always acknowledges after storing: only acks = all is comparable"
                );
            }
            self.check_durability(workload).await?;
            let js = self.connect(workload).await?;
            for p in 0..workload.partitions_per_topic {
                js.create_stream(stream::Config {
                    name: stream_name(topic, p),
                    subjects: vec![subject(topic, p)],
                    storage: stream::StorageType::File,
                    num_replicas: workload.replication_factor as usize,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating JetStream stream for {topic}/{p}: {e}"))?;
            }
            Ok(())
        })
    }

    fn delete_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let js = self.connect(workload).await?;
            for p in 0..workload.partitions_per_topic {
                js.delete_stream(stream_name(topic, p))
                    .await
                    .map_err(|e| anyhow::anyhow!("deleting JetStream stream {topic}/{p}: {e}"))?;
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
            if workload.compression != Codec::None {
                anyhow::bail!(
                    "NATS JetStream publishes messages one by one, without producer compression: run it with --compression none"
                );
            }
            let js = self.connect(workload).await?;
            let subjects = (0..workload.partitions_per_topic)
                .map(|p| Subject::from(subject(topic, p)))
                .collect();
            Ok(Box::new(NatsProducer {
                js,
                subjects,
                next: 0,
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
            let js = self.connect(workload).await?;
            let mut streams = Vec::new();
            for p in partitions {
                let s = js
                    .get_stream(stream_name(topic, p))
                    .await
                    .map_err(|e| anyhow::anyhow!("JetStream stream {topic}/{p}: {e}"))?;
                let messages = s
                    .create_consumer(consumer::pull::OrderedConfig {
                        deliver_policy: consumer::DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("JetStream consumer on {topic}/{p}: {e}"))?
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("JetStream consumer on {topic}/{p}: {e}"))?;
                streams.push(messages.map(|m| {
                    let m = m.map_err(|e| anyhow::anyhow!("JetStream consumer: {e}"))?;
                    let sent_us = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(TIMESTAMP_HEADER))
                        .and_then(|v| parse_timestamp(v.as_str().as_bytes()));
                    Ok(Received {
                        sent_us,
                        bytes: m.payload.len(),
                    })
                }));
            }
            Ok(fstream::select_all(streams).boxed())
        })
    }
}

struct NatsProducer {
    js: jetstream::Context,
    subjects: Vec<Subject>,
    next: usize,
}

impl Producer for NatsProducer {
    fn send<'a>(
        &'a mut self,
        key: Option<Bytes>,
        payload: Bytes,
        sent_us: u64,
    ) -> BoxFuture<'a, anyhow::Result<AckFuture>> {
        Box::pin(async move {
            let n = self.subjects.len();
            let index = match &key {
                Some(k) => partition_for_key(k, n as u32) as usize,
                None => {
                    self.next = (self.next + 1) % n;
                    self.next
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(TIMESTAMP_HEADER, sent_us.to_string().as_str());
            let ack = self
                .js
                .publish_with_headers(self.subjects[index].clone(), headers, payload)
                .await
                .map_err(|e| anyhow::anyhow!("JetStream publish: {e}"))?;
            Ok(ack
                .into_future()
                .map(|r| {
                    r.map(|_| ())
                        .map_err(|e| anyhow::anyhow!("JetStream ack: {e}"))
                })
                .boxed())
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move { Ok(()) })
    }
}

/// A minimal HTTP/1.0 GET returning the JSON body (the monitoring endpoint
/// is plain HTTP on loopback; no HTTP client crate needed).
async fn http_get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut conn =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .context("timed out")??;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut response))
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    serde_json::from_str(body).context("the body is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_stable_partitions_in_range() {
        let p = partition_for_key(b"customer-1", 16);
        assert!(p < 16);
        assert_eq!(p, partition_for_key(b"customer-1", 16));
        let spread: std::collections::HashSet<u32> = (0..1000)
            .map(|i| partition_for_key(format!("k{i}").as_bytes(), 16))
            .collect();
        assert_eq!(spread.len(), 16);
    }

    #[test]
    fn partitions_are_streams_with_their_own_subject() {
        assert_eq!(stream_name("bench-x-0", 3), "bench-x-0-3");
        assert_eq!(subject("bench-x-0", 3), "bench-x-0.3");
    }
}
