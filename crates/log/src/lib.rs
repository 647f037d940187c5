//! The partition log: a segmented, append-only log of Kafka RecordBatch v2
//! batches on local disk, with sparse offset and time indexes, group-commit
//! fsync, crash recovery, retention, truncation and key compaction.
//!
//! For replication a leader appends producer batches with
//! [`Log::append_with_epoch`] (offsets assigned, leader epoch stamped) and a
//! follower copies them with [`Log::append_replicated`] (offsets and epochs
//! kept). Both maintain the leader-epoch cache (Kafka's
//! `leader-epoch-checkpoint`): the start offset of every leader epoch,
//! queried with [`Log::latest_epoch`], [`Log::epoch_entries`] and
//! [`Log::end_offset_for_epoch`] (OffsetsForLeaderEpoch), trimmed by
//! truncation and retention.
//!
//! Both also keep the idempotent producers' recent sequence numbers: a
//! leader append of a batch already in the log returns the original
//! offsets ([`AppendInfo::duplicate`]) instead of writing it twice, and one
//! that skips a sequence is refused ([`LogError::OutOfOrderSequence`]).
//!
//! The crate knows nothing about gRPC or the cluster. Its API is synchronous
//! (file I/O through [`io::Io`], `std::fs` by default); async callers use
//! `spawn_blocking`. A [`Log`] is `Send +
//! Sync` and serves concurrent appenders and readers through an `Arc<Log>`.
//! See `docs/storage.md` for the on-disk layout and guarantees.

mod checkpoint;
mod compaction;
mod config;
mod epoch;
mod error;
mod fsync_stats;
pub mod handles;
mod index;
pub mod io;
mod log;
mod producer;
mod read;
mod recovery;
mod retention;
mod segment;
#[cfg(feature = "sim")]
pub mod sim;
mod sync;
mod truncate;

pub use compaction::CompactionOutcome;
pub use config::{
    CleanupPolicy, FsyncPolicy, LogConfig, MAX_BATCH_BYTES, MAX_SEGMENT_BYTES, MIN_BATCH_BYTES,
    MIN_SEGMENT_BYTES,
};
pub use error::LogError;
pub use fsync_stats::{FSYNC_BUCKETS_SECONDS, FsyncSnapshot, FsyncStats};
pub use handles::{HandleCache, HandleStats};
pub use log::{AppendInfo, Log, OpenOptions, ReplicatedAppendInfo};
pub use producer::{PRODUCER_EXPIRY_MS, PRODUCER_WINDOW};
pub use read::ReadResult;
pub use retention::RetentionOutcome;
pub use sync::Flusher;
