//! Sparse offset and time indexes of one segment, held in memory and
//! stored as `.index` / `.timeindex` files (Kafka's entry layouts).
//!
//! * offset index entry (8 bytes): relative offset `u32`, file position
//!   `u32`, big-endian; the batch whose base offset is `segment base +
//!   relative offset` starts at that position.
//! * time index entry (12 bytes): timestamp `i64`, relative offset `u32`;
//!   the timestamp is the largest batch `maxTimestamp` seen so far in the
//!   segment and the offset is the base offset of the batch that has it.

/// Bytes per offset index entry.
pub(crate) const OFFSET_ENTRY: usize = 8;
/// Bytes per time index entry.
pub(crate) const TIME_ENTRY: usize = 12;

/// Sparse offset index: `(relative offset, position)` in increasing order.
#[derive(Debug, Clone, Default)]
pub(crate) struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn push(&mut self, rel: u32, pos: u32) {
        debug_assert!(self.entries.last().is_none_or(|&(r, p)| r < rel && p < pos));
        self.entries.push((rel, pos));
    }

    pub fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    /// The entry `(relative offset, position)` of the last indexed batch
    /// whose relative base offset is `<= rel`, if any (else a walk starts
    /// at position 0).
    pub fn lookup_entry(&self, rel: u64) -> Option<(u32, u32)> {
        let i = self.entries.partition_point(|&(r, _)| u64::from(r) <= rel);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY);
        for &(r, p) in &self.entries {
            out.extend_from_slice(&r.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Parses an index file, checking its shape: whole entries, strictly
    /// increasing offsets and positions, positions inside the log file.
    pub fn from_bytes(buf: &[u8], log_size: u64) -> Result<OffsetIndex, String> {
        if !buf.len().is_multiple_of(OFFSET_ENTRY) {
            return Err(format!(
                "size {} is not a multiple of {OFFSET_ENTRY}",
                buf.len()
            ));
        }
        let mut entries = Vec::with_capacity(buf.len() / OFFSET_ENTRY);
        for c in buf.chunks_exact(OFFSET_ENTRY) {
            let r = u32::from_be_bytes(c[0..4].try_into().expect("4"));
            let p = u32::from_be_bytes(c[4..8].try_into().expect("4"));
            if let Some(&(lr, lp)) = entries.last()
                && (r <= lr || p <= lp)
            {
                return Err(format!(
                    "entry ({r}, {p}) does not increase after ({lr}, {lp})"
                ));
            }
            if u64::from(p) >= log_size {
                return Err(format!("position {p} is beyond the log size {log_size}"));
            }
            entries.push((r, p));
        }
        Ok(OffsetIndex { entries })
    }
}

/// Sparse time index: `(max timestamp so far, relative offset)`, both
/// non-decreasing, timestamps strictly increasing.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Adds an entry if `ts` is larger than the last one.
    pub fn maybe_push(&mut self, ts: i64, rel: u32) {
        if self.entries.last().is_none_or(|&(t, _)| ts > t) {
            self.entries.push((ts, rel));
        }
    }

    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    /// Relative offset of the batch of the last entry whose timestamp is
    /// `< ts`: every batch up to and including it has `maxTimestamp < ts`.
    pub fn lookup_before(&self, ts: i64) -> Option<u32> {
        let i = self.entries.partition_point(|&(t, _)| t < ts);
        if i == 0 {
            None
        } else {
            Some(self.entries[i - 1].1)
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY);
        for &(t, r) in &self.entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// Parses a time index file, checking its shape.
    pub fn from_bytes(buf: &[u8], next_rel: u64) -> Result<TimeIndex, String> {
        if !buf.len().is_multiple_of(TIME_ENTRY) {
            return Err(format!(
                "size {} is not a multiple of {TIME_ENTRY}",
                buf.len()
            ));
        }
        let mut entries: Vec<(i64, u32)> = Vec::with_capacity(buf.len() / TIME_ENTRY);
        for c in buf.chunks_exact(TIME_ENTRY) {
            let t = i64::from_be_bytes(c[0..8].try_into().expect("8"));
            let r = u32::from_be_bytes(c[8..12].try_into().expect("4"));
            if let Some(&(lt, lr)) = entries.last()
                && (t <= lt || r < lr)
            {
                return Err(format!(
                    "entry ({t}, {r}) does not increase after ({lt}, {lr})"
                ));
            }
            if u64::from(r) >= next_rel {
                return Err(format!("relative offset {r} is beyond the segment end"));
            }
            entries.push((t, r));
        }
        Ok(TimeIndex { entries })
    }
}

/// Decides when to add index entries while batches are appended or scanned,
/// Kafka style: an entry for a batch once `interval` bytes were written
/// since the previous entry.
#[derive(Debug, Clone)]
pub(crate) struct IndexWriter {
    pub index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_entry: u64,
    /// Largest batch `maxTimestamp` in the segment (`NO_TIMESTAMP` if none).
    pub max_timestamp: i64,
    /// Relative base offset of the batch holding `max_timestamp`.
    pub max_timestamp_rel: u32,
}

impl IndexWriter {
    pub fn new() -> IndexWriter {
        IndexWriter {
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_entry: 0,
            max_timestamp: streambus_record::NO_TIMESTAMP,
            max_timestamp_rel: 0,
        }
    }

    /// Records a batch of `size` bytes at `pos`.
    pub fn on_batch(&mut self, interval: u32, rel: u32, pos: u64, size: u64, max_ts: i64) {
        if max_ts > self.max_timestamp {
            self.max_timestamp = max_ts;
            self.max_timestamp_rel = rel;
        }
        let newer = self.index.last().is_none_or(|(r, _)| rel > r);
        if self.bytes_since_entry >= u64::from(interval) && pos > 0 && newer {
            self.index.push(rel, pos as u32);
            self.time_index
                .maybe_push(self.max_timestamp, self.max_timestamp_rel);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += size;
    }

    /// Adds the segment's final max timestamp to the time index (on seal).
    pub fn finish_time_index(&mut self) {
        if self.max_timestamp != streambus_record::NO_TIMESTAMP {
            self.time_index
                .maybe_push(self.max_timestamp, self.max_timestamp_rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_last_entry_at_or_below() {
        let mut i = OffsetIndex::default();
        i.push(10, 100);
        i.push(20, 200);
        assert_eq!(i.lookup_entry(5), None);
        assert_eq!(i.lookup_entry(10), Some((10, 100)));
        assert_eq!(i.lookup_entry(19), Some((10, 100)));
        assert_eq!(i.lookup_entry(25), Some((20, 200)));
        let back = OffsetIndex::from_bytes(&i.to_bytes(), 300).unwrap();
        assert_eq!(back.last(), Some((20, 200)));
        assert!(OffsetIndex::from_bytes(&i.to_bytes(), 150).is_err());
        assert!(OffsetIndex::from_bytes(&i.to_bytes()[..7], 300).is_err());
    }

    #[test]
    fn time_index_stays_monotonic() {
        let mut t = TimeIndex::default();
        t.maybe_push(100, 0);
        t.maybe_push(50, 3);
        t.maybe_push(200, 5);
        assert_eq!(t.to_bytes().len(), 2 * TIME_ENTRY);
        assert_eq!(t.lookup_before(100), None);
        assert_eq!(t.lookup_before(101), Some(0));
        assert_eq!(t.lookup_before(1000), Some(5));
        assert!(TimeIndex::from_bytes(&t.to_bytes(), 6).is_ok());
        assert!(TimeIndex::from_bytes(&t.to_bytes(), 5).is_err());
    }
}
