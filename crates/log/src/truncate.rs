//! Dropping a divergent tail (`truncate_to`).

use std::sync::atomic::Ordering;

use crate::error::IoContext;
use crate::index::IndexWriter;
use crate::log::{Shared, lock};
use crate::recovery::delete_segment_files;
use crate::segment::{ScanRules, Segment, scan, sync_dir};
use crate::{Log, LogError};

impl Log {
    /// Removes every batch containing an offset `>= offset`. Batches are
    /// removed whole: if `offset` falls inside a batch, that whole batch is
    /// dropped and the end offset becomes its base offset (`< offset`).
    /// `offset == end_offset()` is a no-op; below the log start or above
    /// the end is an error.
    ///
    /// Segments above the cut are deleted newest first, then the segment
    /// holding the cut is shortened and fsynced, so a crash midway leaves a
    /// prefix of the old log that a repeated `truncate_to` finishes.
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let shared = &*self.shared;
        shared.check_failed()?;
        let _maintenance = lock(&shared.maintenance);
        let mut st = shared.write_state();
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
        let was_active = i + 1 == st.segments.len();
        // Delete whole segments above the cut, newest first.
        while st.segments.len() > i + 1 {
            let s = st.segments.pop().expect("non-empty");
            delete_segment_files(&shared.dir, s.base)?;
        }
        sync_dir(&shared.dir)?;
        let seg = st.segments.last_mut().expect("segment i");
        let new_end = match truncate_segment(shared, seg, offset) {
            Ok(new_end) => new_end,
            Err(e) => {
                shared.fail(format!("truncation failed: {e}"));
                return Err(e);
            }
        };
        // The active segment must be gap-free for recovery. A formerly
        // sealed segment may have gaps left by compaction (inside it, or
        // between its last batch and `new_end`), so unless it is now empty
        // at `new_end`, seal it again and start a fresh active segment.
        let empty_at_end = seg.size == 0 && seg.base == new_end;
        if !was_active && !empty_at_end {
            seg.seal(&shared.dir)?;
            st.segments.push(Segment::create(&shared.dir, new_end)?);
        } else {
            seg.next_offset = new_end;
        }
        shared.end.store(new_end, Ordering::Release);
        shared.reset_durable(new_end);
        tracing::info!(dir = %shared.dir.display(), offset, new_end, "truncated log");
        Ok(())
    }
}

/// Shortens `seg` to drop batches with offsets `>= offset`; returns the new
/// end offset. Rebuilds its in-memory index and fsyncs it.
fn truncate_segment(shared: &Shared, seg: &mut Segment, offset: i64) -> Result<i64, LogError> {
    let mut pos = seg.idx.index.lookup((offset - seg.base).max(0) as u64);
    let mut new_end = offset;
    while let Some(h) = Segment::header_at(&seg.file, &seg.path, pos, seg.size)? {
        if h.last_offset() >= offset {
            new_end = h.base_offset.min(offset);
            break;
        }
        pos += h.total_size() as u64;
    }
    seg.file
        .set_len(pos)
        .and_then(|_| seg.file.sync_data())
        .ctx(|| format!("truncate {}", seg.path.display()))?;
    let mut idx = IndexWriter::new();
    let rules = ScanRules {
        verify_crc: false,
        contiguous: false,
        interval: shared.config.index_interval_bytes,
    };
    let scan = scan(&seg.file, seg.base, 0, seg.base, pos, rules, &mut idx)
        .ctx(|| format!("read {}", seg.path.display()))?;
    if let Some((position, reason)) = scan.error {
        return Err(LogError::Corrupt {
            file: seg.path.clone(),
            position,
            reason,
        });
    }
    seg.size = pos;
    seg.idx = idx;
    seg.next_offset = scan.next_offset;
    Ok(new_end.max(scan.next_offset))
}
