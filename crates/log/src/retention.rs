//! Deleting whole old segments by time and by total size.

use std::sync::atomic::Ordering;

use crate::checkpoint;
use crate::epoch;
use crate::log::{Shared, lock};
use crate::recovery::delete_segment_files;
use crate::{Log, LogError};

/// What [`Log::apply_retention`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes of segment files deleted.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub log_start_offset: i64,
}

impl Log {
    /// Deletes the oldest sealed segments that are past retention: by time,
    /// those whose largest timestamp is older than `now_ms - retention_ms`;
    /// by size, as many as keep the log at or above `retention_bytes`
    /// without going under it. The active segment is never deleted. Only
    /// a prefix of segments is deleted, so the log stays contiguous. The new
    /// log start offset is checkpointed before any file is deleted.
    /// Afterwards the leader-epoch cache drops the entries wholly below the
    /// new log start (the latest entry starting at or below it is kept, with
    /// its start raised to the log start) and is checkpointed.
    ///
    /// Does nothing unless the cleanup policy deletes.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionOutcome, LogError> {
        let shared = &*self.shared;
        let config = shared.config();
        let unchanged = RetentionOutcome {
            log_start_offset: self.log_start_offset(),
            ..RetentionOutcome::default()
        };
        if !config.cleanup_policy.deletes()
            || (config.retention_ms.is_none() && config.retention_bytes.is_none())
        {
            return Ok(unchanged);
        }
        let _maintenance = lock(&shared.maintenance);
        let (count, new_start) = {
            let st = shared.read_state();
            // Only sealed and durable segments (not one a roll is syncing).
            let sealed = &st.segments[..st.sealed_count(shared.is_rolling())];
            let mut by_time = 0;
            if let Some(ms) = config.retention_ms {
                let cutoff = now_ms.saturating_sub(ms);
                by_time = sealed
                    .iter()
                    .take_while(|s| s.idx.max_timestamp < cutoff)
                    .count();
            }
            let mut by_size = 0;
            if let Some(limit) = config.retention_bytes {
                let total: u64 = st.segments.iter().map(|s| s.size).sum();
                let mut excess = total.saturating_sub(limit);
                for s in sealed {
                    if s.size > excess {
                        break;
                    }
                    excess -= s.size;
                    by_size += 1;
                }
            }
            let count = by_time.max(by_size);
            (count, st.segments[count].base.max(st.log_start))
        };
        if count == 0 {
            return Ok(unchanged);
        }
        checkpoint::write(&shared.disk, &shared.dir, new_start)?;
        let removed: Vec<_> = {
            let mut st = shared.write_state();
            st.log_start = new_start;
            shared.start.store(new_start, Ordering::Release);
            st.segments.drain(..count).collect()
        };
        let bytes_deleted = removed.iter().map(|s| s.size).sum();
        for s in &removed {
            delete_segment_files(&shared.disk, &shared.dir, s.base)?;
        }
        shared.disk.sync_dir(&shared.dir)?;
        trim_epochs_to_start(shared, new_start)?;
        tracing::debug!(dir = %shared.dir.display(), segments = count, new_start, "retention deleted segments");
        Ok(RetentionOutcome {
            segments_deleted: count,
            bytes_deleted,
            log_start_offset: new_start,
        })
    }
}

/// Drops the leader-epoch entries wholly below the log start `start` and
/// checkpoints the cache (a crash before that leaves entries below the
/// start, which open trims). The caller holds `maintenance`.
fn trim_epochs_to_start(shared: &Shared, start: i64) -> Result<(), LogError> {
    let _file = lock(&shared.epoch_file);
    let mut epochs = shared.read_state().epochs.clone();
    if epochs.truncate_from_start(start) {
        epoch::write(&shared.disk, &shared.dir, &epochs)?;
        shared.write_state().epochs = epochs;
    }
    Ok(())
}
