//! Dropping a divergent tail (`truncate_to`).

use std::sync::RwLockWriteGuard;
use std::sync::atomic::Ordering;

use crate::checkpoint::{self, TRUNCATION_FILE, TruncationIntent};
use crate::epoch::{self, EpochCache};
use crate::error::IoContext;
use crate::index::IndexWriter;
use crate::log::{Shared, State, lock};
use crate::producer::ProducerState;
use crate::recovery::delete_segment_files;
use crate::segment::{OffsetCheck, ScanRules, Segment, scan, segment_file};
use crate::{Log, LogError};

impl Log {
    /// Removes every batch containing an offset `>= offset`. Batches are
    /// removed whole: if `offset` falls inside a batch, that whole batch is
    /// dropped and the end offset becomes its base offset (`< offset`).
    /// `offset == end_offset()` is a no-op; below the log start or above
    /// the end is an error.
    ///
    /// Crash-safe at every step: the log is first fsynced, then the cut (new
    /// end, segment, byte position) is written durably to
    /// `truncation.checkpoint`, then segments above the cut are deleted and
    /// the segment holding it is shortened and fsynced; a formerly sealed
    /// segment is resealed and a fresh active segment started at the new
    /// end. The intent is removed last. A crash before the intent is durable
    /// leaves the old log; after, recovery finishes the truncation. A
    /// failure midway fails the log; reopening finishes it.
    ///
    /// Leader-epoch cache entries starting at or after the new end offset
    /// are dropped, and the checkpoint rewritten, before it returns.
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let shared = &*self.shared;
        let _maintenance = lock(&shared.maintenance);
        let mut st = exclusive_state(shared)?;
        let end = st.end();
        if offset > end {
            return Err(LogError::OffsetAboveEnd { offset, end });
        }
        if offset < st.log_start {
            return Err(LogError::OffsetBelowStart {
                offset,
                log_start: st.log_start,
            });
        }
        if offset == end {
            return Ok(());
        }
        let i = st.segment_for(offset);
        let (position, new_end) = find_cut(&st.segments[i], offset)?;
        let intent = TruncationIntent {
            end: new_end,
            segment_base: st.segments[i].base,
            position,
        };
        // The leader-epoch entries of the removed batches go too; in memory
        // at once (or a later batch at their offsets would seem to be of
        // their epoch), on disk after the segments (a crash in between
        // leaves entries beyond the end, which open drops).
        let mut epochs = st.epochs.clone();
        let trimmed = epochs.truncate_from_end(new_end);
        let result = truncate_files(shared, &mut st, i, intent).and_then(|()| {
            if trimmed {
                st.epochs = epochs;
                epoch::write(&shared.disk, &shared.dir, &st.epochs)?;
            }
            // The removed batches' sequences are no longer in the log.
            st.producers = ProducerState::rebuild(&st.segments)?;
            Ok(())
        });
        if let Err(e) = result {
            shared.fail(format!("truncation failed: {e}"));
            return Err(e);
        }
        shared.end.store(new_end, Ordering::Release);
        shared.reset_durable(new_end);
        tracing::info!(dir = %shared.dir.display(), offset, new_end, "truncated log");
        Ok(())
    }
}

impl Log {
    /// Empties the log and starts it again at `offset`, which must be above
    /// the end offset: every segment is deleted, the log start and end
    /// become `offset`, and the leader-epoch cache is emptied (Kafka's
    /// `truncateFullyAndStartAt`). A follower does this when its leader no
    /// longer has the offsets between this log's end and the leader's log
    /// start.
    ///
    /// Crash-safe: the new log start is checkpointed first, then the new
    /// empty segment at `offset` is created, then the old segments are
    /// deleted. A crash before the segment exists leaves the old segments
    /// with the start lowered back to their end (nothing readable; the
    /// reset is simply done again); after, recovery deletes the segments
    /// below the checkpointed start, as for interrupted retention.
    pub fn reset_to(&self, offset: i64) -> Result<(), LogError> {
        let shared = &*self.shared;
        let _maintenance = lock(&shared.maintenance);
        let mut st = exclusive_state(shared)?;
        let end = st.end();
        if offset <= end {
            return Err(LogError::ResetNotAboveEnd { offset, end });
        }
        let result = (|| {
            checkpoint::write(&shared.disk, &shared.dir, offset)?;
            let fresh = Segment::create(&shared.disk, &shared.dir, offset)?;
            let old = std::mem::replace(&mut st.segments, vec![fresh]);
            st.log_start = offset;
            for s in &old {
                delete_segment_files(&shared.disk, &shared.dir, s.base)?;
            }
            shared.disk.sync_dir(&shared.dir)?;
            st.epochs = EpochCache::default();
            st.producers = ProducerState::default();
            epoch::write(&shared.disk, &shared.dir, &st.epochs)
        })();
        if let Err(e) = result {
            shared.fail(format!("reset failed: {e}"));
            return Err(e);
        }
        shared.start.store(offset, Ordering::Release);
        shared.end.store(offset, Ordering::Release);
        shared.reset_durable(offset);
        tracing::info!(dir = %shared.dir.display(), old_end = end, offset, "reset log to a new start offset");
        Ok(())
    }
}

/// The state write lock once no roll and no append reservation is in
/// progress (the caller holds `maintenance`).
fn exclusive_state(shared: &Shared) -> Result<RwLockWriteGuard<'_, State>, LogError> {
    loop {
        shared.check_failed()?;
        shared.wait_for_roll();
        shared.wait_for_reservation();
        let st = shared.write_state();
        if !shared.is_rolling() && !shared.is_reserved() {
            return Ok(st);
        }
    }
}

/// Position in `seg` of the first batch containing an offset `>= offset`
/// (or the segment size), and the new end offset: that batch's base if
/// `offset` falls inside it, else `offset`.
fn find_cut(seg: &Segment, offset: i64) -> Result<(u64, i64), LogError> {
    let entry = seg
        .idx
        .index
        .lookup_entry((offset - seg.base).max(0) as u64);
    let mut check = OffsetCheck::new(seg.base, seg.next_offset, entry);
    let mut pos = entry.map_or(0, |(_, p)| u64::from(p));
    while let Some(h) = Segment::header_at(&*seg.file, &seg.path, pos, seg.size)? {
        check.check(&seg.path, pos, &h)?;
        if h.last_offset() >= offset {
            return Ok((pos, h.base_offset.min(offset)));
        }
        pos += h.total_size() as u64;
    }
    Ok((pos, offset))
}

fn truncate_files(
    shared: &Shared,
    st: &mut State,
    i: usize,
    intent: TruncationIntent,
) -> Result<(), LogError> {
    let disk = &shared.disk;
    let dir = &shared.dir;
    let was_active = i + 1 == st.segments.len();
    // Everything below the cut must be durable before the intent is: then
    // recovery can cut at the recorded position without checking it.
    if shared.durable.load(Ordering::Acquire) < st.end() {
        let active = st.active();
        disk.sync_file(&*active.file, &active.path)?;
    }
    checkpoint::write_truncation(disk, dir, intent)?;
    // Delete whole segments above the cut, newest first.
    while st.segments.len() > i + 1 {
        let s = st.segments.pop().expect("non-empty");
        delete_segment_files(disk, dir, s.base)?;
    }
    disk.sync_dir(dir)?;
    let seg = st.segments.last_mut().expect("segment i");
    seg.file
        .set_len(intent.position)
        .ctx(|| format!("truncate {}", seg.path.display()))?;
    disk.sync_file(&*seg.file, &seg.path)?;
    let mut idx = IndexWriter::new();
    let rules = ScanRules {
        verify_crc: false,
        contiguous: false,
        interval: shared.config().index_interval_bytes,
    };
    let scan = scan(
        &*seg.file,
        seg.base,
        0,
        seg.base,
        intent.position,
        rules,
        &mut idx,
    )
    .ctx(|| format!("read {}", seg.path.display()))?;
    if let Some((position, reason)) = scan.error {
        return Err(LogError::Corrupt {
            file: seg.path.clone(),
            position,
            reason,
        });
    }
    seg.size = intent.position;
    seg.idx = idx;
    seg.next_offset = intent.end;
    // The active segment must be gap-free for recovery. A formerly sealed
    // segment may have gaps left by compaction (inside it, or between its
    // last batch and the new end), so unless it is now empty at the new end,
    // seal it again and start a fresh active segment.
    let empty_at_end = seg.size == 0 && seg.base == intent.end;
    if was_active || empty_at_end {
        // Index files left by a seal (or an earlier clean close) describe
        // the old contents.
        disk.remove_if_exists(&segment_file(dir, seg.base, "index"))?;
        disk.remove_if_exists(&segment_file(dir, seg.base, "timeindex"))?;
        seg.first_append_ms = None;
    } else {
        seg.next_offset = scan.next_offset;
        seg.idx.finish_time_index();
        seg.write_indexes(disk, dir)?;
        st.segments.push(Segment::create(disk, dir, intent.end)?);
    }
    disk.remove_if_exists(&dir.join(TRUNCATION_FILE))?;
    disk.sync_dir(dir)
}
