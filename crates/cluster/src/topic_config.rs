//! Per-topic configuration: parsing and validating the Kafka-style
//! `key = value` map a client sends with `CreateTopic`, defaults, and the
//! effective map stored in the metadata.
//!
//! The partition log is the single source of truth for what a log can be
//! opened with: the ranges here are the log's own constants, and
//! [`TopicConfig::from_map`] finishes by running the log's own validation
//! on [`TopicConfig::log_config`], so the controller refuses at
//! `CreateTopic` time exactly what a storage node could not open.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use std::time::Duration;

use streambus_log::{FsyncPolicy, LogConfig};
use streambus_proto::{Error, Reason};
use streambus_record::Compression;

/// `retention.ms`.
pub const RETENTION_MS: &str = "retention.ms";
/// `retention.bytes`.
pub const RETENTION_BYTES: &str = "retention.bytes";
/// `segment.bytes`.
pub const SEGMENT_BYTES: &str = "segment.bytes";
/// `segment.ms`.
pub const SEGMENT_MS: &str = "segment.ms";
/// `cleanup.policy`.
pub const CLEANUP_POLICY: &str = "cleanup.policy";
/// `compression.type`.
pub const COMPRESSION_TYPE: &str = "compression.type";
/// `max.message.bytes`.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
/// `delete.retention.ms`.
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
/// `fsync.policy`.
pub const FSYNC_POLICY: &str = "fsync.policy";
/// `fsync.interval.ms`.
pub const FSYNC_INTERVAL_MS: &str = "fsync.interval.ms";
/// `min.insync.replicas`.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// `unclean.leader.election.enable`.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";
/// Largest accepted `min.insync.replicas` (a replication factor is never
/// larger than the number of storage nodes; this bounds the parse).
pub const MAX_MIN_INSYNC_REPLICAS: u32 = 1_000;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Default `retention.ms`: 7 days (Kafka's default).
pub const DEFAULT_RETENTION_MS: i64 = 7 * DAY_MS as i64;
/// Default `segment.bytes`: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Default `segment.ms`: 7 days.
pub const DEFAULT_SEGMENT_MS: u64 = 7 * DAY_MS;
/// Default `max.message.bytes`: 1 MiB plus the 12-byte batch log overhead
/// (Kafka's default). It bounds a whole RecordBatch.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = (1 << 20) + 12;
/// Default `delete.retention.ms`: 1 day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = DAY_MS as i64;
/// Default `fsync.interval.ms`.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;
/// Smallest accepted `segment.bytes`: the log's own minimum (one batch header).
pub const MIN_SEGMENT_BYTES: u64 = streambus_log::MIN_SEGMENT_BYTES;
/// Largest accepted `segment.bytes`: segment positions fit in 31 bits.
pub const MAX_SEGMENT_BYTES: u64 = streambus_log::MAX_SEGMENT_BYTES;
/// Smallest accepted `max.message.bytes`: one batch header.
pub const MIN_MESSAGE_BYTES: u32 = streambus_log::MIN_BATCH_BYTES;
/// Largest accepted `max.message.bytes`: the log's limit on one batch.
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = streambus_log::MAX_BATCH_BYTES;

/// Largest accepted `fsync.interval.ms`: one hour (a longer interval is
/// `fsync.policy=never` in all but name).
pub const MAX_FSYNC_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// One documented configuration key.
#[derive(Debug, Clone, Copy)]
pub struct ConfigKey {
    /// The Kafka-style key.
    pub name: &'static str,
    /// The default, as it appears in the effective map.
    pub default: &'static str,
    /// Accepted values and meaning.
    pub description: &'static str,
}

/// Every accepted key, alphabetically.
pub const KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: CLEANUP_POLICY,
        default: "delete",
        description: "`delete` (drop whole segments past retention) or `compact` (keep the latest record per key)",
    },
    ConfigKey {
        name: COMPRESSION_TYPE,
        default: "producer",
        description: "The codec batches are stored with: `producer` (keep each batch's own codec), or `uncompressed`, `gzip`, `snappy`, `lz4`, `zstd` (the partition leader recompresses a batch that arrives with another codec before appending it)",
    },
    ConfigKey {
        name: DELETE_RETENTION_MS,
        default: "86400000",
        description: "How long tombstones stay readable on compacted topics, in ms (>= 0)",
    },
    ConfigKey {
        name: FSYNC_INTERVAL_MS,
        default: "1000",
        description: "With `fsync.policy=interval`: the longest time between fsyncs, in ms (1 to 3600000)",
    },
    ConfigKey {
        name: FSYNC_POLICY,
        default: "always",
        description: "`always` (fsync before acknowledging), `interval` (every `fsync.interval.ms`) or `never` (leave it to the OS)",
    },
    ConfigKey {
        name: MAX_MESSAGE_BYTES,
        default: "1048588",
        description: "Largest record batch accepted, in bytes (61 to 1073741824)",
    },
    ConfigKey {
        name: MIN_INSYNC_REPLICAS,
        default: "1",
        description: "With `acks=all`: the fewest in-sync replicas (leader included) that must have a batch before it is acknowledged; fewer gives `NOT_ENOUGH_REPLICAS` (1 to the replication factor)",
    },
    ConfigKey {
        name: RETENTION_BYTES,
        default: "-1",
        description: "Size limit per partition before old segments are deleted, in bytes; -1 = no limit",
    },
    ConfigKey {
        name: RETENTION_MS,
        default: "604800000",
        description: "How long records are kept, in ms; -1 = forever",
    },
    ConfigKey {
        name: SEGMENT_BYTES,
        default: "1073741824",
        description: "Segment file size that triggers a roll, in bytes (61 to 2147483647)",
    },
    ConfigKey {
        name: SEGMENT_MS,
        default: "604800000",
        description: "Segment age that triggers a roll, in ms (>= 1); -1 = never roll by age",
    },
    ConfigKey {
        name: UNCLEAN_LEADER_ELECTION,
        default: "false",
        description: "`true` lets a replica outside the in-sync set become leader when no in-sync replica is alive: the partition comes back sooner, but records acknowledged since that replica fell behind are lost",
    },
];

/// What happens to old records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Delete whole segments past retention.
    #[default]
    Delete,
    /// Keep the latest record per key.
    Compact,
}

impl CleanupPolicy {
    /// The config string.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `compression.type`: which codec batches are stored with (Kafka's
/// meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// Each batch keeps the codec its producer chose.
    #[default]
    Producer,
    /// Every batch is stored with this codec (`uncompressed` is
    /// [`Compression::None`]); the partition leader recompresses a batch
    /// that arrives with another one.
    Codec(Compression),
}

impl CompressionType {
    /// Every value, in the order the docs list them.
    pub const ALL: [CompressionType; 6] = [
        CompressionType::Producer,
        CompressionType::Codec(Compression::None),
        CompressionType::Codec(Compression::Gzip),
        CompressionType::Codec(Compression::Snappy),
        CompressionType::Codec(Compression::Lz4),
        CompressionType::Codec(Compression::Zstd),
    ];

    /// The config string.
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionType::Producer => "producer",
            CompressionType::Codec(Compression::None) => "uncompressed",
            CompressionType::Codec(c) => c.name(),
        }
    }

    /// The codec every batch must be stored with; `None` for `producer`.
    pub fn codec(self) -> Option<Compression> {
        match self {
            CompressionType::Producer => None,
            CompressionType::Codec(c) => Some(c),
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When the partition log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncSetting {
    /// Before every acknowledgement.
    #[default]
    Always,
    /// At most `fsync.interval.ms` apart.
    Interval,
    /// Never explicitly; the OS decides.
    Never,
}

impl FsyncSetting {
    /// The config string.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncSetting::Always => "always",
            FsyncSetting::Interval => "interval",
            FsyncSetting::Never => "never",
        }
    }
}

impl fmt::Display for FsyncSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// How long records are kept, in ms. `None` = forever (`-1`).
    pub retention_ms: Option<i64>,
    /// Size limit per partition, in bytes. `None` = no limit (`-1`).
    pub retention_bytes: Option<u64>,
    /// Segment size that triggers a roll.
    pub segment_bytes: u64,
    /// Segment age that triggers a roll, in ms. `None` = never by age.
    pub segment_ms: Option<u64>,
    /// Delete or compact.
    pub cleanup_policy: CleanupPolicy,
    /// The codec batches are stored with.
    pub compression_type: CompressionType,
    /// Largest whole record batch accepted, in bytes.
    pub max_message_bytes: u32,
    /// Tombstone grace period on compacted topics, in ms.
    pub delete_retention_ms: i64,
    /// When the log is fsynced.
    pub fsync_policy: FsyncSetting,
    /// With [`FsyncSetting::Interval`]: the longest time between fsyncs.
    pub fsync_interval_ms: u64,
    /// Fewest in-sync replicas for an `acks=all` append.
    pub min_insync_replicas: u32,
    /// Whether an out-of-sync replica may be elected leader.
    pub unclean_leader_election: bool,
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            retention_ms: Some(DEFAULT_RETENTION_MS),
            retention_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: Some(DEFAULT_SEGMENT_MS),
            cleanup_policy: CleanupPolicy::Delete,
            compression_type: CompressionType::Producer,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            fsync_policy: FsyncSetting::Always,
            fsync_interval_ms: DEFAULT_FSYNC_INTERVAL_MS,
            min_insync_replicas: 1,
            unclean_leader_election: false,
        }
    }
}

fn allowed_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn invalid(key: &str, value: &str, expected: &str) -> Error {
    Error::new(
        Reason::InvalidConfig,
        format!("invalid value {value:?} for topic config {key:?}: expected {expected}"),
    )
}

fn parse_i64(key: &str, value: &str, expected: &str) -> Result<i64, Error> {
    value
        .trim()
        .parse::<i64>()
        .map_err(|_| invalid(key, value, expected))
}

/// `-1` = `None`; otherwise an integer within `min..=max`.
fn parse_optional(
    key: &str,
    value: &str,
    min: i64,
    max: i64,
    expected: &str,
) -> Result<Option<i64>, Error> {
    match parse_i64(key, value, expected)? {
        -1 => Ok(None),
        v if (min..=max).contains(&v) => Ok(Some(v)),
        _ => Err(invalid(key, value, expected)),
    }
}

fn parse_range(key: &str, value: &str, min: i64, max: i64, expected: &str) -> Result<i64, Error> {
    let v = parse_i64(key, value, expected)?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, value, expected))
    }
}

impl TopicConfig {
    /// Parses a client's config map: absent keys take their defaults; an
    /// unknown key or a bad value is [`Reason::InvalidConfig`].
    pub fn from_map(map: &HashMap<String, String>) -> Result<TopicConfig, Error> {
        let mut config = TopicConfig::default();
        // Sorted, so the error for several bad keys is deterministic.
        let sorted: BTreeMap<&String, &String> = map.iter().collect();
        for (key, value) in sorted {
            config.set(key, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration after an incremental change of `current` (a
    /// topic's effective map): keys in `set` take their new values, keys in
    /// `delete` go back to their defaults, the rest keep theirs. An unknown
    /// key in either list, a key in both, or a bad value is
    /// [`Reason::InvalidConfig`].
    pub fn altered(
        current: &BTreeMap<String, String>,
        set: &HashMap<String, String>,
        delete: &[String],
    ) -> Result<TopicConfig, Error> {
        let mut map: HashMap<String, String> = current
            .iter()
            .filter(|(k, _)| KEYS.iter().any(|key| key.name == k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut deleted: Vec<&String> = delete.iter().collect();
        deleted.sort();
        for key in deleted {
            if !KEYS.iter().any(|k| k.name == key.as_str()) {
                return Err(Error::new(
                    Reason::InvalidConfig,
                    format!("unknown topic config {key:?} cannot be reset"),
                ));
            }
            if set.contains_key(key) {
                return Err(Error::new(
                    Reason::InvalidConfig,
                    format!("topic config {key:?} is both set and reset to its default"),
                ));
            }
            map.remove(key);
        }
        map.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        TopicConfig::from_map(&map)
    }

    /// Checks the whole configuration against the partition log's own
    /// validation, so nothing the controller accepts can fail to open on a
    /// storage node. [`TopicConfig::from_map`] calls it.
    pub fn validate(&self) -> Result<(), Error> {
        self.log_config()
            .validate()
            .map_err(|e| Error::new(Reason::InvalidConfig, format!("invalid topic config: {e}")))
    }

    /// The partition log settings for a replica of a topic with this
    /// configuration.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            max_batch_bytes: self.max_message_bytes,
            fsync: match self.fsync_policy {
                FsyncSetting::Always => FsyncPolicy::Always,
                FsyncSetting::Interval => {
                    FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms))
                }
                FsyncSetting::Never => FsyncPolicy::Never,
            },
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            cleanup_policy: match self.cleanup_policy {
                CleanupPolicy::Delete => streambus_log::CleanupPolicy::Delete,
                CleanupPolicy::Compact => streambus_log::CleanupPolicy::Compact,
            },
            tombstone_retention_ms: self.delete_retention_ms,
            ..LogConfig::default()
        }
    }

    /// Sets one key from its string form.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        match key {
            RETENTION_MS => {
                self.retention_ms = parse_optional(
                    key,
                    value,
                    0,
                    i64::MAX,
                    "-1 (forever) or a non-negative number of milliseconds",
                )?;
            }
            RETENTION_BYTES => {
                self.retention_bytes = parse_optional(
                    key,
                    value,
                    0,
                    i64::MAX,
                    "-1 (no limit) or a non-negative number of bytes",
                )?
                .map(|v| v as u64);
            }
            SEGMENT_BYTES => {
                self.segment_bytes = parse_range(
                    key,
                    value,
                    MIN_SEGMENT_BYTES as i64,
                    MAX_SEGMENT_BYTES as i64,
                    &format!("a number of bytes from {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}"),
                )? as u64;
            }
            SEGMENT_MS => {
                self.segment_ms = parse_optional(
                    key,
                    value,
                    1,
                    i64::MAX,
                    "-1 (never) or a positive number of milliseconds",
                )?
                .map(|v| v as u64);
            }
            CLEANUP_POLICY => {
                self.cleanup_policy = match value.trim() {
                    "delete" => CleanupPolicy::Delete,
                    "compact" => CleanupPolicy::Compact,
                    _ => return Err(invalid(key, value, "\"delete\" or \"compact\"")),
                };
            }
            COMPRESSION_TYPE => {
                self.compression_type = CompressionType::ALL
                    .into_iter()
                    .find(|c| c.as_str() == value.trim())
                    .ok_or_else(|| {
                        invalid(
                            key,
                            value,
                            "\"producer\", \"uncompressed\", \"gzip\", \"snappy\", \"lz4\" or \"zstd\"",
                        )
                    })?;
            }
            MAX_MESSAGE_BYTES => {
                self.max_message_bytes = parse_range(
                    key,
                    value,
                    i64::from(MIN_MESSAGE_BYTES),
                    i64::from(MAX_MESSAGE_BYTES_LIMIT),
                    &format!(
                        "a number of bytes from {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES_LIMIT}"
                    ),
                )? as u32;
            }
            DELETE_RETENTION_MS => {
                self.delete_retention_ms = parse_range(
                    key,
                    value,
                    0,
                    i64::MAX,
                    "a non-negative number of milliseconds",
                )?;
            }
            FSYNC_POLICY => {
                self.fsync_policy = match value.trim() {
                    "always" => FsyncSetting::Always,
                    "interval" => FsyncSetting::Interval,
                    "never" => FsyncSetting::Never,
                    _ => {
                        return Err(invalid(key, value, "\"always\", \"interval\" or \"never\""));
                    }
                };
            }
            FSYNC_INTERVAL_MS => {
                self.fsync_interval_ms = parse_range(
                    key,
                    value,
                    1,
                    MAX_FSYNC_INTERVAL_MS as i64,
                    &format!("a number of milliseconds from 1 to {MAX_FSYNC_INTERVAL_MS}"),
                )? as u64;
            }
            MIN_INSYNC_REPLICAS => {
                self.min_insync_replicas = parse_range(
                    key,
                    value,
                    1,
                    i64::from(MAX_MIN_INSYNC_REPLICAS),
                    "a number of replicas of at least 1, at most the replication factor",
                )? as u32;
            }
            UNCLEAN_LEADER_ELECTION => {
                self.unclean_leader_election = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(key, value, "\"true\" or \"false\"")),
                };
            }
            _ => {
                return Err(Error::new(
                    Reason::InvalidConfig,
                    format!(
                        "unknown topic config key {key:?}; allowed keys: {}",
                        allowed_keys()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every effective key as a string, defaults included.
    pub fn to_map(&self) -> HashMap<String, String> {
        self.to_btree_map().into_iter().collect()
    }

    /// [`TopicConfig::to_map`], ordered by key.
    pub fn to_btree_map(&self) -> BTreeMap<String, String> {
        let opt_i64 = |v: Option<i64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
        let opt_u64 = |v: Option<u64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
        [
            (RETENTION_MS, opt_i64(self.retention_ms)),
            (RETENTION_BYTES, opt_u64(self.retention_bytes)),
            (SEGMENT_BYTES, self.segment_bytes.to_string()),
            (SEGMENT_MS, opt_u64(self.segment_ms)),
            (CLEANUP_POLICY, self.cleanup_policy.to_string()),
            (COMPRESSION_TYPE, self.compression_type.to_string()),
            (MAX_MESSAGE_BYTES, self.max_message_bytes.to_string()),
            (DELETE_RETENTION_MS, self.delete_retention_ms.to_string()),
            (FSYNC_POLICY, self.fsync_policy.to_string()),
            (FSYNC_INTERVAL_MS, self.fsync_interval_ms.to_string()),
            (MIN_INSYNC_REPLICAS, self.min_insync_replicas.to_string()),
            (
                UNCLEAN_LEADER_ELECTION,
                self.unclean_leader_election.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The Markdown table of [`KEYS`] that `docs/controller.md` embeds.
    pub fn markdown_table() -> String {
        let mut out = String::from("| Key | Default | Meaning |\n|---|---|---|\n");
        for k in KEYS {
            out.push_str(&format!(
                "| `{}` | `{}` | {} |\n",
                k.name, k.default, k.description
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_map_gives_documented_defaults() {
        let config = TopicConfig::from_map(&HashMap::new()).unwrap();
        assert_eq!(config, TopicConfig::default());
        let effective = config.to_map();
        assert_eq!(effective.len(), KEYS.len());
        for key in KEYS {
            assert_eq!(effective[key.name], key.default, "{}", key.name);
        }
    }

    #[test]
    fn every_key_parses_and_round_trips() {
        let input = map(&[
            ("retention.ms", "-1"),
            ("retention.bytes", "1000000"),
            ("segment.bytes", "1048576"),
            ("segment.ms", "-1"),
            ("cleanup.policy", "compact"),
            ("compression.type", "zstd"),
            ("max.message.bytes", "2000000"),
            ("delete.retention.ms", "0"),
            ("fsync.policy", "interval"),
            ("fsync.interval.ms", "250"),
            ("min.insync.replicas", "2"),
            ("unclean.leader.election.enable", "true"),
        ]);
        let config = TopicConfig::from_map(&input).unwrap();
        assert_eq!(config.min_insync_replicas, 2);
        assert!(config.unclean_leader_election);
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.retention_bytes, Some(1_000_000));
        assert_eq!(config.segment_bytes, 1 << 20);
        assert_eq!(config.segment_ms, None);
        assert_eq!(config.cleanup_policy, CleanupPolicy::Compact);
        assert_eq!(
            config.compression_type,
            CompressionType::Codec(Compression::Zstd)
        );
        assert_eq!(config.max_message_bytes, 2_000_000);
        assert_eq!(config.delete_retention_ms, 0);
        assert_eq!(config.fsync_policy, FsyncSetting::Interval);
        assert_eq!(config.fsync_interval_ms, 250);
        assert_eq!(config.to_map(), input);
        assert_eq!(TopicConfig::from_map(&config.to_map()).unwrap(), config);
    }

    #[test]
    fn unknown_key_is_rejected_naming_key_and_allowed_keys() {
        let err = TopicConfig::from_map(&map(&[("retention.hours", "1")])).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
        assert!(err.message.contains("retention.hours"), "{}", err.message);
        for key in KEYS {
            assert!(err.message.contains(key.name), "{}", err.message);
        }
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        for (key, value) in [
            ("min.insync.replicas", "0"),
            ("unclean.leader.election.enable", "yes"),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("retention.bytes", "-5"),
            ("segment.bytes", "10"),
            ("segment.bytes", "20"),
            ("segment.bytes", "60"),
            ("segment.bytes", "4294967296"),
            ("segment.ms", "0"),
            ("cleanup.policy", "compact,delete"),
            ("compression.type", "none"),
            ("compression.type", "brotli"),
            ("compression.type", "ZSTD"),
            ("max.message.bytes", "0"),
            ("max.message.bytes", "60"),
            ("max.message.bytes", "2147483647"),
            ("fsync.interval.ms", "3600001"),
            ("delete.retention.ms", "-1"),
            ("fsync.policy", "sometimes"),
            ("fsync.interval.ms", "0"),
        ] {
            let err = TopicConfig::from_map(&map(&[(key, value)])).unwrap_err();
            assert_eq!(err.reason, Reason::InvalidConfig, "{key}={value}");
            assert!(err.message.contains(key), "{}", err.message);
        }
    }

    /// The bug this guards against: `segment.bytes=20` was accepted here and
    /// then refused by every storage node's log, stalling metadata.
    #[test]
    fn invalid_segment_bytes_is_refused_at_create() {
        let err = TopicConfig::from_map(&map(&[("segment.bytes", "20")])).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidConfig);
        assert!(err.message.contains("segment.bytes"), "{}", err.message);
        assert!(
            err.message
                .contains(&format!("{MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}")),
            "{}",
            err.message
        );
    }

    /// Every boundary value the parser accepts opens as a log, and one past
    /// each boundary is refused: the two validations agree.
    #[test]
    fn accepted_boundaries_are_valid_log_configs() {
        for (key, lo, hi) in [
            (
                SEGMENT_BYTES,
                MIN_SEGMENT_BYTES as i64,
                MAX_SEGMENT_BYTES as i64,
            ),
            (
                MAX_MESSAGE_BYTES,
                i64::from(MIN_MESSAGE_BYTES),
                i64::from(MAX_MESSAGE_BYTES_LIMIT),
            ),
            (FSYNC_INTERVAL_MS, 1, MAX_FSYNC_INTERVAL_MS as i64),
        ] {
            for v in [lo, hi] {
                let mut m = map(&[(key, &v.to_string())]);
                if key == FSYNC_INTERVAL_MS {
                    m.insert(FSYNC_POLICY.into(), "interval".into());
                }
                let config = TopicConfig::from_map(&m).unwrap_or_else(|e| panic!("{key}={v}: {e}"));
                config.log_config().validate().unwrap();
            }
            for v in [lo - 1, hi + 1] {
                let err = TopicConfig::from_map(&map(&[(key, &v.to_string())])).unwrap_err();
                assert_eq!(err.reason, Reason::InvalidConfig, "{key}={v}");
                assert!(err.message.contains(key), "{}", err.message);
            }
        }
        // The documented ranges are the enforced ones.
        for k in KEYS {
            match k.name {
                SEGMENT_BYTES => assert!(
                    k.description
                        .contains(&format!("{MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES}"))
                ),
                MAX_MESSAGE_BYTES => assert!(
                    k.description
                        .contains(&format!("{MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES_LIMIT}"))
                ),
                FSYNC_INTERVAL_MS => {
                    assert!(
                        k.description
                            .contains(&format!("1 to {MAX_FSYNC_INTERVAL_MS}"))
                    )
                }
                _ => {}
            }
        }
    }

    #[test]
    fn docs_topic_config_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/controller.md");
        let doc = std::fs::read_to_string(path).expect("docs/controller.md");
        assert!(
            doc.contains(&TopicConfig::markdown_table()),
            "the topic config table in docs/controller.md is stale; replace it with:\n{}",
            TopicConfig::markdown_table()
        );
    }

    #[test]
    fn altered_sets_resets_and_keeps_the_rest() {
        let current = TopicConfig::from_map(&map(&[
            ("retention.ms", "1000"),
            ("segment.bytes", "1048576"),
        ]))
        .unwrap()
        .to_btree_map();
        let next = TopicConfig::altered(
            &current,
            &map(&[("retention.bytes", "5000")]),
            &["retention.ms".to_string()],
        )
        .unwrap();
        assert_eq!(next.retention_bytes, Some(5000));
        assert_eq!(next.retention_ms, TopicConfig::default().retention_ms);
        assert_eq!(
            next.segment_bytes, 1_048_576,
            "untouched keys keep their value"
        );
    }

    #[test]
    fn compression_type_takes_kafkas_values_and_is_alterable() {
        for c in CompressionType::ALL {
            let config = TopicConfig::from_map(&map(&[(COMPRESSION_TYPE, c.as_str())])).unwrap();
            assert_eq!(config.compression_type, c);
            assert_eq!(config.to_map()[COMPRESSION_TYPE], c.as_str());
        }
        assert_eq!(
            TopicConfig::from_map(&map(&[(COMPRESSION_TYPE, "uncompressed")]))
                .unwrap()
                .compression_type
                .codec(),
            Some(Compression::None)
        );
        assert_eq!(CompressionType::Producer.codec(), None);
        let current = TopicConfig::default().to_btree_map();
        let zstd =
            TopicConfig::altered(&current, &map(&[(COMPRESSION_TYPE, "zstd")]), &[]).unwrap();
        assert_eq!(zstd.compression_type.codec(), Some(Compression::Zstd));
        let back = TopicConfig::altered(
            &zstd.to_btree_map(),
            &HashMap::new(),
            &[COMPRESSION_TYPE.into()],
        )
        .unwrap();
        assert_eq!(back.compression_type, CompressionType::Producer);
    }

    #[test]
    fn altered_refuses_unknown_conflicting_and_bad_keys() {
        let current = TopicConfig::default().to_btree_map();
        let unknown = TopicConfig::altered(&current, &HashMap::new(), &["nope".into()]);
        assert!(unknown.unwrap_err().message.contains("nope"));
        let both = TopicConfig::altered(
            &current,
            &map(&[("retention.ms", "5")]),
            &["retention.ms".into()],
        );
        assert!(both.unwrap_err().message.contains("both"));
        let bad =
            TopicConfig::altered(&current, &map(&[("segment.bytes", "20")]), &[]).unwrap_err();
        assert_eq!(bad.reason, Reason::InvalidConfig);
        assert!(bad.message.contains("segment.bytes"), "{}", bad.message);
    }
}
