//! Reads by offset and lookups by timestamp.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use streambus_record::{BatchHeader, BatchIter, decode_records};

use crate::error::IoContext;
use crate::io::IoFile;
use crate::log::State;
use crate::segment::{OffsetCheck, Segment};
use crate::{Log, LogError};

/// Batches returned by [`Log::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Concatenated whole batches, exactly as stored. The first batch may
    /// start before the requested offset (batches are returned whole).
    pub data: Bytes,
    /// Offset after the last returned batch, or the requested offset if
    /// nothing was returned.
    pub next_offset: i64,
    /// Log start offset at the time of the read.
    pub log_start_offset: i64,
    /// Log end offset at the time of the read.
    pub end_offset: i64,
}

/// What a read needs from one segment, copied out of the lock.
struct SegmentView {
    base: i64,
    file: Arc<dyn IoFile>,
    path: PathBuf,
    size: u64,
    /// Offset after the segment's last batch (its offsets are below it).
    end: i64,
    /// Index entry the walk starts at (`None`: position 0).
    start: Option<(u32, u32)>,
}

impl SegmentView {
    fn new(seg: &Segment, offset: i64) -> SegmentView {
        let rel = (offset - seg.base).max(0) as u64;
        SegmentView {
            base: seg.base,
            file: seg.file.clone(),
            path: seg.path.clone(),
            size: seg.size,
            end: seg.next_offset,
            start: seg.idx.index.lookup_entry(rel),
        }
    }

    /// Start position of the walk and the check of the batches it reads.
    fn walk(&self) -> (u64, OffsetCheck) {
        let pos = self.start.map_or(0, |(_, p)| u64::from(p));
        (pos, OffsetCheck::new(self.base, self.end, self.start))
    }

    /// The checked header of the next batch of a walk at `pos`.
    fn next_header(
        &self,
        pos: u64,
        check: &mut OffsetCheck,
    ) -> Result<Option<BatchHeader>, LogError> {
        let Some(h) = self.header(pos)? else {
            return Ok(None);
        };
        check.check(&self.path, pos, &h)?;
        Ok(Some(h))
    }

    fn header(&self, pos: u64) -> Result<Option<BatchHeader>, LogError> {
        Segment::header_at(&*self.file, &self.path, pos, self.size)
    }

    /// Position and header of the first batch whose last offset is `>=
    /// offset`, with the check to continue the walk after it.
    fn find(&self, offset: i64) -> Result<Option<(u64, BatchHeader, OffsetCheck)>, LogError> {
        let (mut pos, mut check) = self.walk();
        while let Some(h) = self.next_header(pos, &mut check)? {
            if h.last_offset() >= offset {
                return Ok(Some((pos, h, check)));
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    fn read_exact(&self, buf: &mut [u8], pos: u64) -> Result<(), LogError> {
        self.file
            .read_exact_at(buf, pos)
            .ctx(|| format!("read {} at {pos}", self.path.display()))
    }

    fn read_vec(&self, len: usize, pos: u64) -> Result<Vec<u8>, LogError> {
        self.file
            .read_vec_at(len, pos)
            .ctx(|| format!("read {} at {pos}", self.path.display()))
    }
}

/// Next segment after the one with base `base`, positioned at its start.
fn next_view(st: &State, base: i64, offset: i64) -> Option<SegmentView> {
    let i = st.segments.partition_point(|s| s.base <= base);
    st.segments.get(i).map(|s| SegmentView::new(s, offset))
}

impl Log {
    /// Reads whole batches starting with the one containing `offset`, up to
    /// `max_bytes` (but always at least one whole batch, so consumers make
    /// progress), never returning a batch whose last offset is `>=
    /// upper_bound` (exclusive; e.g. the high watermark). Reads stay within
    /// one segment; `next_offset` says where to continue.
    ///
    /// Offsets below the log start and above the end are errors; reading at
    /// exactly the end offset returns no data.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: Option<i64>,
    ) -> Result<ReadResult, LogError> {
        let (log_start, end, mut view) = {
            let st = self.shared.read_state();
            let end = st.end();
            if offset < st.log_start {
                return Err(LogError::OffsetBelowStart {
                    offset,
                    log_start: st.log_start,
                });
            }
            if offset > end {
                return Err(LogError::OffsetAboveEnd { offset, end });
            }
            let i = st.segment_for(offset);
            (st.log_start, end, SegmentView::new(&st.segments[i], offset))
        };
        let bound = upper_bound.map_or(end, |u| u.min(end));
        let empty = ReadResult {
            data: Bytes::new(),
            next_offset: offset,
            log_start_offset: log_start,
            end_offset: end,
        };
        if offset >= bound {
            return Ok(empty);
        }
        // Find the first batch at or after `offset`; it may be in a later
        // segment when compaction removed the tail of this one.
        let (pos, first, mut check) = loop {
            if let Some(found) = view.find(offset)? {
                break found;
            }
            match next_view(&self.shared.read_state(), view.base, offset) {
                Some(v) => view = v,
                None => return Ok(empty),
            }
        };
        if first.last_offset() >= bound {
            return Ok(empty);
        }
        let first_size = first.total_size();
        let len = if first_size >= max_bytes {
            first_size
        } else {
            (max_bytes as u64).min(view.size - pos) as usize
        };
        let mut buf = view.read_vec(len, pos)?;
        let mut keep = 0;
        let mut next_offset = offset;
        for item in BatchIter::new(&buf) {
            let (h, _) = item.map_err(|e| LogError::Corrupt {
                file: view.path.clone(),
                position: pos + keep as u64,
                reason: e.to_string(),
            })?;
            if keep > 0 {
                // The first batch was checked by `find`.
                check.check(&view.path, pos + keep as u64, &h)?;
            }
            if h.last_offset() >= bound {
                break;
            }
            keep += h.total_size();
            next_offset = h.next_offset();
        }
        buf.truncate(keep);
        Ok(ReadResult {
            data: Bytes::from(buf),
            next_offset,
            log_start_offset: log_start,
            end_offset: end,
        })
    }

    /// The first offset whose record timestamp is `>= timestamp_ms`, found
    /// via the first batch whose `maxTimestamp >= timestamp_ms` (Kafka
    /// ListOffsets semantics). `None` if no batch is that recent.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>, LogError> {
        let mut view = {
            let st = self.shared.read_state();
            let Some(seg) = st
                .segments
                .iter()
                .find(|s| s.idx.max_timestamp >= timestamp_ms)
            else {
                return Ok(None);
            };
            let mut view = SegmentView::new(seg, seg.base);
            if let Some(rel) = seg.idx.time_index.lookup_before(timestamp_ms) {
                view.start = seg.idx.index.lookup_entry(u64::from(rel));
            }
            view
        };
        loop {
            let (mut pos, mut check) = view.walk();
            while let Some(h) = view.next_header(pos, &mut check)? {
                if h.max_timestamp >= timestamp_ms {
                    let mut batch = vec![0u8; h.total_size()];
                    view.read_exact(&mut batch, pos)?;
                    let records = decode_records(&batch).map_err(|e| LogError::Corrupt {
                        file: view.path.clone(),
                        position: pos,
                        reason: e.to_string(),
                    })?;
                    let first = records
                        .iter()
                        .find(|r| r.timestamp_ms >= timestamp_ms)
                        .map_or(h.base_offset, |r| r.offset);
                    return Ok(Some(first));
                }
                pos += h.total_size() as u64;
            }
            match next_view(&self.shared.read_state(), view.base, 0) {
                Some(v) => view = v,
                None => return Ok(None),
            }
        }
    }
}
