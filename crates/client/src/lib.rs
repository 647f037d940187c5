//! The StreamBus Rust SDK.
//!
//! ```no_run
//! use std::collections::HashMap;
//! use bytes::Bytes;
//! use futures::StreamExt;
//! use streambus_client::{Client, ProducerConfig, Record, StartFrom, SubscribeOptions};
//!
//! # async fn demo() -> Result<(), streambus_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7400").await?;
//! client.create_topic("orders", 3, 1, HashMap::new()).await?;
//!
//! let producer = client.producer(ProducerConfig::default());
//! let record = Record {
//!     key: Some(Bytes::from("order-1")),
//!     value: Some(Bytes::from("{\"total\": 12}")),
//!     ..Record::default()
//! };
//! let delivery = producer.send("orders", record, None).await?;
//! let written = delivery.await?;
//! println!("partition {} offset {}", written.partition, written.offset);
//! producer.close().await;
//!
//! let mut records = client
//!     .subscribe(SubscribeOptions { start: StartFrom::Earliest, ..SubscribeOptions::new("orders") })
//!     .await?;
//! while let Some(record) = records.next().await {
//!     let record = record?;
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/sdk.md` for the producer's batching, ordering and retry rules.

mod batch;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_internals;
mod client;
mod consumer;
mod error;
mod group;
mod producer;

pub use batch::{ConsumedBatch, HeaderRefs, IntoRecords, RecordRef, RecordRefs};
pub use client::{Client, ConnectOptions, TlsOptions};
pub use consumer::{ConsumedRecord, FetchResult, StartFrom, SubscribeOptions, Subscription};
pub use error::ClientError;
pub use group::{GroupConsumer, GroupEvent, GroupOptions, OffsetReset, TopicPartition};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, RecordMetadata};
pub use streambus_proto::{Error, Reason, v1};
pub use streambus_record::{Compression, Header, HeaderView, Record};
