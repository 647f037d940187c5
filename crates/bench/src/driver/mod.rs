//! The systems under test behind one interface. A driver only creates
//! topics, sends and receives; the runner does all pacing, timing and
//! counting, so every system is measured by the same code.

mod kafka;
mod nats;
mod streambus;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::BoxStream;

pub use kafka::KafkaDriver;
pub use nats::NatsDriver;
pub use streambus::StreamBusDriver;

use crate::workload::Workload;

/// A boxed future, as the driver traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves when the server acknowledged one message (or it failed).
pub type AckFuture = BoxFuture<'static, anyhow::Result<()>>;

/// The record header that carries the send time: microseconds since the
/// Unix epoch, as decimal ASCII, for every system.
pub const TIMESTAMP_HEADER: &str = "bench-ts-us";

/// One message as a consumer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The send timestamp from [`TIMESTAMP_HEADER`], if present.
    pub sent_us: Option<u64>,
    /// Payload bytes.
    pub bytes: usize,
}

/// Parses a [`TIMESTAMP_HEADER`] value.
pub fn parse_timestamp(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A connection to one system.
pub trait Driver: Send + Sync {
    /// `streambus`, `kafka` or `nats`.
    fn name(&self) -> &'static str;

    /// The client and server settings this driver applies for `workload`,
    /// for the report.
    fn settings(&self, workload: &Workload) -> serde_json::Value;

    /// Creates a topic with the workload's partitions, replication and
    /// durability.
    fn create_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// Deletes a topic and its data.
    fn delete_topic<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// A new producer (its own connection) for `topic`.
    fn producer<'a>(
        &'a self,
        topic: &'a str,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Producer>>>;

    /// A new consumer (its own connection) reading `partitions` of `topic`
    /// from the beginning.
    fn consumer<'a>(
        &'a self,
        topic: &'a str,
        partitions: Vec<u32>,
        workload: &'a Workload,
    ) -> BoxFuture<'a, anyhow::Result<BoxStream<'static, anyhow::Result<Received>>>>;
}

/// Sends messages of one topic.
pub trait Producer: Send {
    /// Hands one message to the client and returns once the client took it
    /// (this is where a client's own backpressure waits). The returned
    /// future resolves with the server's acknowledgement.
    fn send<'a>(
        &'a mut self,
        key: Option<Bytes>,
        payload: Bytes,
        sent_us: u64,
    ) -> BoxFuture<'a, anyhow::Result<AckFuture>>;

    /// Sends whatever is buffered and waits for it.
    fn close(self: Box<Self>) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// Builds the driver called `name` from the addresses given.
pub fn build(name: &str, endpoints: &Endpoints) -> anyhow::Result<Box<dyn Driver>> {
    match name {
        "streambus" => Ok(Box::new(StreamBusDriver::new(
            &endpoints.streambus,
            endpoints.streambus_tls.clone(),
        ))),
        "kafka" => Ok(Box::new(KafkaDriver::new(&endpoints.kafka))),
        "nats" => Ok(Box::new(NatsDriver::new(
            &endpoints.nats,
            &endpoints.nats_monitor,
        ))),
        other => anyhow::bail!("unknown driver {other:?}: use streambus, kafka or nats"),
    }
}

/// Where each system listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// StreamBus gateway, `host:port`.
    pub streambus: String,
    /// TLS to the StreamBus gateway, if any.
    pub streambus_tls: Option<streambus_client::TlsOptions>,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// NATS server, `host:port`.
    pub nats: String,
    /// NATS HTTP monitoring, `host:port` (read to report its fsync setting).
    pub nats_monitor: String,
}

impl Default for Endpoints {
    fn default() -> Endpoints {
        Endpoints {
            streambus: "127.0.0.1:7400".to_string(),
            streambus_tls: None,
            kafka: "127.0.0.1:9092".to_string(),
            nats: "127.0.0.1:4222".to_string(),
            nats_monitor: "127.0.0.1:8222".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_headers_parse_or_are_ignored() {
        assert_eq!(
            parse_timestamp(b"1700000000123456"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(parse_timestamp(b"soon"), None);
        assert_eq!(parse_timestamp(&[0xff]), None);
    }

    #[test]
    fn unknown_drivers_are_named_in_the_error() {
        let err = build("pulsar", &Endpoints::default()).err().unwrap();
        assert!(err.to_string().contains("pulsar"), "{err}");
    }
}
