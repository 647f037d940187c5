//! What a benchmark run does: topics, partitions, message size, producers,
//! consumers, rate, duration and client settings. Loaded from a TOML file
//! (`bench/workloads/*.toml`), then overridden by flags.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One benchmark workload. Every field has a default, so a file only needs
/// the fields it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// A short name, used in reports.
    pub name: String,
    /// Number of topics.
    pub topics: u32,
    /// Partitions of each topic.
    pub partitions_per_topic: u32,
    /// Payload bytes of each message (the timestamp header comes on top).
    pub message_size: usize,
    /// Producers writing to each topic.
    pub producers_per_topic: u32,
    /// Consumers reading each topic; the topic's partitions are split
    /// between them (one subscription per topic, like OMB's
    /// `subscriptionsPerTopic = 1`).
    pub consumers_per_topic: u32,
    /// Messages per second across all producers; 0 = as fast as the
    /// clients accept them (the maximum sustainable rate).
    pub producer_rate: u64,
    /// How long the measured phase lasts.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Load applied before measuring (not counted in the results).
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// What the server waits for before acknowledging.
    pub acks: Acks,
    /// Replicas of each partition (1 on a single machine).
    pub replication_factor: u32,
    /// Whether an acknowledged write has been fsynced.
    pub durability: Durability,
    /// Producer batch size in bytes (StreamBus `max_batch_bytes`, Kafka
    /// `batch.size`; NATS JetStream publishes messages one by one).
    pub batch_max_bytes: usize,
    /// How long a producer batch waits for more messages (StreamBus
    /// `linger`, Kafka `linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Batches of one partition a producer may have in flight (StreamBus
    /// `max_in_flight_per_partition`, 1 to 5; Kafka
    /// `max.in.flight.requests.per.connection`).
    pub max_in_flight_per_partition: usize,
    /// Message bytes a producer may have sent but not yet acknowledged;
    /// sending waits at this limit. The same bound for every system.
    pub max_outstanding_bytes: usize,
    /// How long a client may take to get a message acknowledged before it
    /// counts as failed (StreamBus `delivery_timeout`, Kafka
    /// `message.timeout.ms`, NATS `ack_timeout`). Long, so that a slow
    /// system shows high latency rather than failures.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Message keys.
    pub key_distribution: KeyDistribution,
    /// Producer batch compression (StreamBus `compression`, Kafka
    /// `compression.type`; NATS JetStream has none).
    pub compression: Codec,
    /// What message payloads are made of.
    pub payload: Payload,
    /// How often a line of figures is printed.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            name: "custom".to_string(),
            topics: 1,
            partitions_per_topic: 16,
            message_size: 1024,
            producers_per_topic: 1,
            consumers_per_topic: 1,
            producer_rate: 0,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            acks: Acks::All,
            replication_factor: 1,
            durability: Durability::Fsync,
            batch_max_bytes: 256 * 1024,
            linger: Duration::from_millis(1),
            max_in_flight_per_partition: 5,
            max_outstanding_bytes: 32 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(120),
            key_distribution: KeyDistribution::None,
            compression: Codec::None,
            payload: Payload::Random,
            report_interval: Duration::from_secs(5),
        }
    }
}

/// Acknowledgement level, the same meaning for every system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acks {
    /// Every in-sync replica (Kafka `acks=all`, StreamBus `All`).
    All,
    /// The partition leader only (Kafka `acks=1`).
    Leader,
    /// No acknowledgement (Kafka `acks=0`).
    None,
}

/// Durability of an acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Acknowledged only after an fsync: StreamBus `fsync.policy=always`,
    /// Kafka `flush.messages=1`, NATS JetStream `sync_interval: always`.
    Fsync,
    /// Acknowledged once written to the page cache; the OS writes back:
    /// StreamBus `fsync.policy=never`, Kafka and NATS defaults.
    PageCache,
}

impl Durability {
    /// The name used in files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::PageCache => "page-cache",
        }
    }
}

/// A producer compression codec: Kafka's four, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    /// Uncompressed batches.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Codec {
    /// Every codec.
    pub const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// The name used in flags, files and Kafka's `compression.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// What message payloads are made of (each producer sends the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// Random bytes: incompressible.
    #[default]
    Random,
    /// JSON-like event records (repeated field names, varying ids, numbers
    /// and words), generated from a fixed seed: what compression is for.
    Json,
}

impl Payload {
    /// The name used in flags and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Payload::Random => "random",
            Payload::Json => "json",
        }
    }

    /// A payload of `size` bytes of this kind.
    pub fn generate(self, size: usize) -> Vec<u8> {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
        match self {
            Payload::Random => {
                let mut buf = vec![0u8; size];
                rand::rng().fill_bytes(&mut buf);
                buf
            }
            Payload::Json => {
                const WORDS: [&str; 8] = [
                    "checkout", "search", "login", "cart", "payment", "view", "click", "share",
                ];
                let mut s = String::with_capacity(size + 128);
                while s.len() < size {
                    s.push_str(&format!(
                        r#"{{"event":"{}","user":"user-{:06}","session":"{:016x}","amount":{}.{:02},"ok":{}}}"#,
                        WORDS[rng.random_range(0..WORDS.len())],
                        rng.random_range(0..100_000),
                        rng.random::<u64>(),
                        rng.random_range(0..10_000),
                        rng.random_range(0..100),
                        rng.random::<bool>(),
                    ));
                }
                s.truncate(size);
                s.into_bytes()
            }
        }
    }
}

/// How message keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// No key: each client spreads messages over partitions its own way
    /// (sticky batches for StreamBus and Kafka, round robin for NATS).
    None,
    /// A random 16-hex-digit key per message (hashed to a partition).
    Random,
}

/// A workload that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid workload.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML error.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid workload: {0}")]
    Invalid(String),
}

impl Workload {
    /// Loads a workload from a TOML file.
    pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Workload::parse(&text).map_err(|e| match e {
            WorkloadError::Parse { message, .. } => WorkloadError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Workload, WorkloadError> {
        let workload: Workload = toml::from_str(text).map_err(|e| WorkloadError::Parse {
            path: "<text>".to_string(),
            message: e.to_string(),
        })?;
        workload.validate()?;
        Ok(workload)
    }

    /// Checks ranges; every constructor path ends here.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        let fail = |m: &str| Err(WorkloadError::Invalid(m.to_string()));
        if self.topics == 0 || self.partitions_per_topic == 0 {
            return fail("topics and partitions_per_topic must be at least 1");
        }
        if self.producers_per_topic == 0 {
            return fail("producers_per_topic must be at least 1");
        }
        if self.message_size == 0 || self.message_size > 8 * 1024 * 1024 {
            return fail("message_size must be between 1 byte and 8 MiB");
        }
        if self.duration.is_zero() {
            return fail("duration must be more than zero");
        }
        if self.report_interval < Duration::from_millis(100) {
            return fail("report_interval must be at least 100ms");
        }
        if self.replication_factor == 0 {
            return fail("replication_factor must be at least 1");
        }
        if !(1..=5).contains(&self.max_in_flight_per_partition) {
            return fail("max_in_flight_per_partition must be between 1 and 5");
        }
        if self.max_outstanding_bytes < self.message_size {
            return fail("max_outstanding_bytes must hold at least one message");
        }
        if self.delivery_timeout < Duration::from_secs(1) {
            return fail("delivery_timeout must be at least 1s");
        }
        if self.consumers_per_topic > self.partitions_per_topic {
            return fail("consumers_per_topic cannot exceed partitions_per_topic");
        }
        Ok(())
    }

    /// Producers across all topics.
    pub fn total_producers(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    /// The rate each producer keeps (msg/s), or `None` for the maximum.
    pub fn rate_per_producer(&self) -> Option<f64> {
        (self.producer_rate > 0)
            .then(|| self.producer_rate as f64 / f64::from(self.total_producers()))
    }

    /// Unacknowledged messages one producer may have.
    pub fn max_outstanding_messages(&self) -> usize {
        (self.max_outstanding_bytes / self.message_size).max(1)
    }

    /// The partitions consumer `index` of a topic reads: round robin.
    pub fn partitions_of_consumer(&self, index: u32) -> Vec<u32> {
        (0..self.partitions_per_topic)
            .filter(|p| p % self.consumers_per_topic.max(1) == index)
            .collect()
    }

    /// The workload as TOML (what `streambus-bench workload` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a workload always serialises")
    }
}

/// `Duration` as a humantime string ("30s", "1ms") in TOML and JSON.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_only_needs_the_fields_it_changes() {
        let w =
            Workload::parse("name = \"x\"\nproducer_rate = 5000\nduration = \"20s\"\n").unwrap();
        assert_eq!(w.producer_rate, 5000);
        assert_eq!(w.duration, Duration::from_secs(20));
        assert_eq!(w.partitions_per_topic, 16);
        assert_eq!(w.message_size, 1024);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = Workload::parse("partitons = 3").unwrap_err();
        assert!(err.to_string().contains("partitons"), "{err}");
        let err = Workload::parse("partitions_per_topic = 0").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = Workload::parse("durability = \"sometimes\"").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn toml_round_trips() {
        let w = Workload {
            linger: Duration::from_micros(500),
            durability: Durability::PageCache,
            ..Workload::default()
        };
        assert_eq!(Workload::parse(&w.to_toml()).unwrap(), w);
    }

    #[test]
    fn partitions_are_split_round_robin_between_consumers() {
        let w = Workload {
            partitions_per_topic: 5,
            consumers_per_topic: 2,
            ..Workload::default()
        };
        assert_eq!(w.partitions_of_consumer(0), vec![0, 2, 4]);
        assert_eq!(w.partitions_of_consumer(1), vec![1, 3]);
    }

    #[test]
    fn the_rate_is_shared_between_producers() {
        let w = Workload {
            topics: 2,
            producers_per_topic: 2,
            producer_rate: 1000,
            ..Workload::default()
        };
        assert_eq!(w.rate_per_producer(), Some(250.0));
        assert_eq!(Workload::default().rate_per_producer(), None);
    }

    #[test]
    fn shipped_presets_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/workloads");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let w = Workload::load(&path).unwrap();
                assert_eq!(w.message_size, 1024, "{}", path.display());
                assert_eq!(w.partitions_per_topic, 16, "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 2, "the max-rate and latency presets exist");
    }
}
