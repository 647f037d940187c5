//! Per-log configuration.

use std::time::Duration;

use crate::LogError;

/// Smallest accepted `segment_bytes`: one RecordBatch v2 header.
pub const MIN_SEGMENT_BYTES: u64 = streambus_record::HEADER_SIZE as u64;
/// Largest accepted `segment_bytes` (2 GiB - 1): index positions are `u32`
/// and file positions must fit an `i32` like Kafka's.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;
/// Smallest accepted `max_batch_bytes`: one RecordBatch v2 header.
pub const MIN_BATCH_BYTES: u32 = streambus_record::HEADER_SIZE as u32;
/// Largest accepted `max_batch_bytes` (1 GiB).
pub const MAX_BATCH_BYTES: u32 = 1 << 30;

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `append` returns only after an `fdatasync` covering the batch.
    /// Concurrent appenders share one `fdatasync` (group commit).
    Always,
    /// A background thread calls `fdatasync` at this interval when there is
    /// unsynced data; a crash may lose up to one interval of appends.
    Interval(Duration),
    /// Data is synced only when a segment rolls, on `flush`, and on `close`;
    /// durability comes from replication.
    Never,
}

/// What background cleanup does with old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// `apply_retention` deletes whole old segments; `compact` does nothing.
    #[default]
    Delete,
    /// `compact` keeps the latest record per key; `apply_retention` does nothing.
    Compact,
    /// Both compaction and retention apply.
    CompactAndDelete,
}

impl CleanupPolicy {
    /// Whether retention deletes segments under this policy.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            CleanupPolicy::Delete | CleanupPolicy::CompactAndDelete
        )
    }

    /// Whether compaction runs under this policy.
    pub fn compacts(self) -> bool {
        matches!(
            self,
            CleanupPolicy::Compact | CleanupPolicy::CompactAndDelete
        )
    }
}

/// Configuration of one partition log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment when an append would make it larger than this
    /// (default 1 GiB, at most 2 GiB - 1). A single batch larger than this
    /// still gets a segment of its own.
    pub segment_bytes: u64,
    /// Roll the active segment when its first append is this old (checked on
    /// append and by [`crate::Log::roll_if_due`]); `None` disables.
    pub segment_ms: Option<u64>,
    /// Add a sparse index entry every this many bytes of log (default 4096).
    pub index_interval_bytes: u32,
    /// Largest batch `append` accepts, in bytes (default 1 MiB + 64 KiB).
    pub max_batch_bytes: u32,
    /// When data is fsynced.
    pub fsync: FsyncPolicy,
    /// Delete sealed segments whose newest timestamp is older than this.
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete and/or compact.
    pub cleanup_policy: CleanupPolicy,
    /// How long compaction keeps tombstones (records with a null value),
    /// measured from the tombstone's timestamp (default 1 day).
    pub tombstone_retention_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: None,
            index_interval_bytes: 4096,
            max_batch_bytes: (1 << 20) + (64 << 10),
            fsync: FsyncPolicy::Always,
            retention_ms: None,
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            tombstone_retention_ms: 24 * 60 * 60 * 1000,
        }
    }
}

impl LogConfig {
    /// Checks the configuration: `segment_bytes` within
    /// [`MIN_SEGMENT_BYTES`]..=[`MAX_SEGMENT_BYTES`], `max_batch_bytes`
    /// within [`MIN_BATCH_BYTES`]..=[`MAX_BATCH_BYTES`], a positive fsync
    /// interval and a non-negative `tombstone_retention_ms`.
    /// [`crate::Log::open`] calls it; callers can use it to reject a
    /// configuration before creating anything.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |m: String| Err(LogError::InvalidConfig(m));
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes {} must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        if !(MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&self.max_batch_bytes) {
            return bad(format!(
                "max_batch_bytes {} must be between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES}",
                self.max_batch_bytes
            ));
        }
        if let FsyncPolicy::Interval(d) = self.fsync
            && d.is_zero()
        {
            return bad("fsync interval must be positive".into());
        }
        if self.tombstone_retention_ms < 0 {
            return bad("tombstone_retention_ms must not be negative".into());
        }
        Ok(())
    }
}
