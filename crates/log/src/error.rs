//! Errors returned by the log.

use std::path::PathBuf;

use streambus_record::RecordError;
use thiserror::Error;

/// Why a log operation failed.
#[derive(Debug, Error)]
pub enum LogError {
    /// The offset is below the log start offset (deleted by retention).
    #[error("offset {offset} is below the log start offset {log_start}")]
    OffsetBelowStart {
        /// Requested offset.
        offset: i64,
        /// First offset still in the log.
        log_start: i64,
    },
    /// The offset is beyond the end of the log (reading at exactly the end
    /// offset is not an error).
    #[error("offset {offset} is above the log end offset {end}")]
    OffsetAboveEnd {
        /// Requested offset.
        offset: i64,
        /// Next offset the log will assign.
        end: i64,
    },
    /// The batch exceeds `max_batch_bytes`.
    #[error("record batch of {size} bytes exceeds the maximum of {max} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The batch given to `append` is not a valid RecordBatch v2.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] RecordError),
    /// Data on disk is damaged where it must not be (inside a sealed segment,
    /// or an unreadable header).
    #[error("corrupt log file {}: at byte {position}: {reason}", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte position of the damage in the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the log was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// A previous write or fsync failed; the log refuses further writes
    /// until it is reopened (which recovers from disk).
    #[error("log is failed after an earlier I/O error and must be reopened: {0}")]
    Failed(String),
    /// A replicated batch does not start where it must: the first batch of
    /// [`Log::append_replicated`](crate::Log::append_replicated) at the log
    /// end offset, each next one right after the previous batch's last
    /// offset.
    #[error("replicated batch has base offset {got} where {expected} was expected")]
    NonContiguous {
        /// The offset the batch had to start at.
        expected: i64,
        /// The batch's base offset.
        got: i64,
    },
    /// A batch carries a leader epoch older than the latest epoch in the
    /// log's leader-epoch cache (a leader never appends with an older epoch,
    /// and a leader's log never has epochs going backwards).
    #[error("leader epoch {epoch} is older than the log's latest leader epoch {latest}")]
    StaleLeaderEpoch {
        /// The batch's (or the append's) leader epoch.
        epoch: i32,
        /// The latest epoch in the leader-epoch cache.
        latest: i32,
    },
    /// An idempotent producer's batch does not continue its sequence (a
    /// batch before it is missing, or it overlaps one differently).
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrderSequence {
        /// The producer id.
        producer_id: i64,
        /// The sequence that would continue the producer's last batch.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// An idempotent producer's batch carries an epoch older than the
    /// producer's latest: a newer instance of the producer took over.
    #[error("producer {producer_id}: epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// The producer id.
        producer_id: i64,
        /// The batch's producer epoch.
        epoch: i16,
        /// The latest epoch in the log.
        current: i16,
    },
    /// [`Log::reset_to`](crate::Log::reset_to) was asked for an offset not
    /// above the log end (truncate instead).
    #[error("cannot reset the log to offset {offset}: it is not above the end offset {end}")]
    ResetNotAboveEnd {
        /// The offset asked for.
        offset: i64,
        /// The log end offset.
        end: i64,
    },
    /// The batch's offsets would not fit after the log end offset: its last
    /// offset would be `i64::MAX` or beyond (offsets end below `i64::MAX`,
    /// so that the end offset after them fits). Only a damaged log start
    /// checkpoint or truncation intent, or a
    /// [`Log::reset_to`](crate::Log::reset_to) that high, puts the end there.
    #[error("a batch of {count} offsets does not fit after the log end offset {end}")]
    OffsetOverflow {
        /// The log end offset.
        end: i64,
        /// Offsets the batch spans (`lastOffsetDelta + 1`).
        count: i64,
    },
    /// The appended batch was removed by a concurrent `truncate_to` before it
    /// became durable.
    #[error("appended batch at offset {offset} was truncated before it was synced")]
    TruncatedDuringAppend {
        /// Base offset the batch had been given.
        offset: i64,
    },
}

/// Shorthand for building [`LogError::Io`] from an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, LogError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, LogError> {
        self.map_err(|source| LogError::Io {
            context: context(),
            source,
        })
    }
}
