//! One segment: a `.log` file of concatenated batches plus its indexes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use streambus_record::{BatchHeader, HEADER_SIZE};

use crate::LogError;
use crate::error::IoContext;
use crate::index::{IndexWriter, OffsetIndex, TimeIndex};
use crate::io::{Disk, IoFile, OpenMode};
use crate::log::Placed;

/// `{base:020}.{ext}` in `dir`.
pub(crate) fn segment_file(dir: &Path, base: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// Suffix of a segment being rolled to: the new active segment's log file
/// is named `{base:020}.log.rolling` until the segment before it is
/// fsynced, then renamed to `{base:020}.log`.
pub(crate) const ROLLING_EXT: &str = "log.rolling";

/// Base offset of a `NNNNNNNNNNNNNNNNNNNN.log` file name.
pub(crate) fn parse_segment_name(name: &str, ext: &str) -> Option<i64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A segment: log file handle, committed size and in-memory sparse indexes.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Base offset (also the file name).
    pub base: i64,
    /// The `.log` file, shared with in-flight reads.
    pub file: Arc<dyn IoFile>,
    /// Path of the `.log` file.
    pub path: PathBuf,
    /// Bytes of complete batches in the file.
    pub size: u64,
    /// Offset after the last batch (`base` if empty).
    pub next_offset: i64,
    /// Sparse indexes and max timestamp.
    pub idx: IndexWriter,
    /// Wall-clock time of the first append into this segment since it was
    /// created or opened (for age-based rolling).
    pub first_append_ms: Option<i64>,
}

impl Segment {
    /// Creates a new empty segment file (and fsyncs the directory).
    pub fn create(disk: &Disk, dir: &Path, base: i64) -> Result<Segment, LogError> {
        let path = segment_file(dir, base, "log");
        let file = disk.open(&path, OpenMode::CreateNew)?;
        disk.sync_dir(dir)?;
        Ok(Segment::empty(base, file, path))
    }

    /// An empty segment in an already created file.
    pub fn empty(base: i64, file: Arc<dyn IoFile>, path: PathBuf) -> Segment {
        Segment {
            base,
            file,
            path,
            size: 0,
            next_offset: base,
            idx: IndexWriter::new(),
            first_append_ms: None,
        }
    }

    /// Relative offset of `offset` in this segment (caller guarantees range).
    pub fn rel(&self, offset: i64) -> u32 {
        debug_assert!(offset >= self.base && offset - self.base <= i64::from(u32::MAX));
        (offset - self.base) as u32
    }

    /// Writes one batch (already given its offsets) at the end with a single
    /// positional write, and indexes it. If the write fails, whatever part
    /// of the batch reached the file is cut off again; if even that fails
    /// the error is [`LogError::Failed`] (the file may now hold a partial
    /// batch, so the caller must fail the log).
    pub fn append(
        &mut self,
        batch: Placed<'_>,
        header: &BatchHeader,
        interval: u32,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let written = if batch.tail.is_empty() {
            self.file.write_all_at(batch.head, self.size)
        } else {
            self.file
                .write_all_parts_at(batch.head, batch.tail, self.size)
        };
        if let Err(e) = written {
            // Drop whatever part of the batch reached the file.
            if let Err(cut) = self.file.set_len(self.size) {
                return Err(LogError::Failed(format!(
                    "write to {} failed ({e}) and cutting the partial batch at {} failed ({cut})",
                    self.path.display(),
                    self.size
                )));
            }
            return Err(e).ctx(|| format!("write to {}", self.path.display()));
        }
        let rel = self.rel(header.base_offset);
        self.idx.on_batch(
            interval,
            rel,
            self.size,
            batch.len() as u64,
            header.max_timestamp,
        );
        self.size += batch.len() as u64;
        self.next_offset = header.next_offset();
        self.first_append_ms.get_or_insert(now_ms);
        Ok(())
    }

    /// Reads and parses the batch header at `pos`; `None` at the end.
    pub fn header_at(
        file: &dyn IoFile,
        path: &Path,
        pos: u64,
        size: u64,
    ) -> Result<Option<BatchHeader>, LogError> {
        if pos >= size {
            return Ok(None);
        }
        let corrupt = |reason: String| LogError::Corrupt {
            file: path.to_path_buf(),
            position: pos,
            reason,
        };
        if size - pos < HEADER_SIZE as u64 {
            return Err(corrupt(format!(
                "partial batch header ({} bytes)",
                size - pos
            )));
        }
        let mut buf = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut buf, pos)
            .ctx(|| format!("read {} at {pos}", path.display()))?;
        let h = BatchHeader::parse(&buf).map_err(|e| corrupt(e.to_string()))?;
        if h.total_size() as u64 > size - pos {
            return Err(corrupt(format!(
                "batch of {} bytes runs past the end of the segment ({size} bytes)",
                h.total_size()
            )));
        }
        Ok(Some(h))
    }

    /// Writes `.index` and `.timeindex` for the current in-memory indexes
    /// (including the final max timestamp) and fsyncs them.
    pub fn write_indexes(&self, disk: &Disk, dir: &Path) -> Result<(), LogError> {
        write_index_files(disk, dir, self.base, &self.idx)
    }

    /// Builds a segment from a file whose index files were loaded.
    pub fn from_parts(
        base: i64,
        file: Arc<dyn IoFile>,
        path: PathBuf,
        size: u64,
        next_offset: i64,
        idx: IndexWriter,
    ) -> Segment {
        Segment {
            base,
            file,
            path,
            size,
            next_offset,
            idx,
            first_append_ms: None,
        }
    }
}

/// Checks the headers of the batches a walk over one segment touches
/// (reads, timestamp lookups, compaction, truncation), so that a damaged
/// `baseOffset` (which the CRC does not cover) in a sealed segment, whose
/// batches open does not scan when its index files check out, is a
/// [`LogError::Corrupt`] error naming file and position instead of wrong
/// offsets or data. Header fields only: cheap enough for every read.
///
/// Each batch must lie in the segment's offset range `[base, end)` (`end`
/// is the segment's next offset, which open checked against the next
/// segment's base), must not start below the previous batch's next offset,
/// and the first batch of a walk that starts at an index entry must have
/// the base offset that entry promised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OffsetCheck {
    base: i64,
    end: i64,
    /// Lowest base offset allowed for the next batch.
    next: i64,
    /// Base offset the index promised for the first batch of the walk.
    promised: Option<i64>,
}

impl OffsetCheck {
    /// A walk over the segment `[base, end)` starting at index entry
    /// `entry` (`None`: at position 0).
    pub fn new(base: i64, end: i64, entry: Option<(u32, u32)>) -> OffsetCheck {
        OffsetCheck {
            base,
            end,
            next: base,
            promised: entry.map(|(rel, _)| base + i64::from(rel)),
        }
    }

    /// Checks the next batch of the walk, `h` at `pos` in `path`.
    pub fn check(&mut self, path: &Path, pos: u64, h: &BatchHeader) -> Result<(), LogError> {
        let corrupt = |reason: String| {
            Err(LogError::Corrupt {
                file: path.to_path_buf(),
                position: pos,
                reason,
            })
        };
        if let Some(promised) = self.promised.take()
            && h.base_offset != promised
        {
            return corrupt(format!(
                "the offset index says offset {promised} starts here, the batch has base offset {}",
                h.base_offset
            ));
        }
        if h.base_offset < self.next {
            return corrupt(format!(
                "batch base offset {} goes backwards (expected >= {})",
                h.base_offset, self.next
            ));
        }
        if h.last_offset() >= self.end {
            return corrupt(format!(
                "batch offsets {}..={} are outside the segment's offsets {}..{}",
                h.base_offset,
                h.last_offset(),
                self.base,
                self.end
            ));
        }
        self.next = h.next_offset();
        Ok(())
    }
}

/// Writes `.index` and `.timeindex` for `idx` (with its final max timestamp)
/// and fsyncs them; the caller syncs the directory.
pub(crate) fn write_index_files(
    disk: &Disk,
    dir: &Path,
    base: i64,
    idx: &IndexWriter,
) -> Result<(), LogError> {
    let mut idx = idx.clone();
    idx.finish_time_index();
    disk.write_synced(&segment_file(dir, base, "index"), &idx.index.to_bytes())?;
    disk.write_synced(
        &segment_file(dir, base, "timeindex"),
        &idx.time_index.to_bytes(),
    )
}

/// Reads a log file through a large buffer, batch by batch.
pub(crate) struct ScanReader<'a> {
    file: &'a dyn IoFile,
    file_len: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> ScanReader<'a> {
    pub fn new(file: &'a dyn IoFile, file_len: u64) -> ScanReader<'a> {
        ScanReader {
            file,
            file_len,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// The `n` bytes at `pos`, or fewer if the file ends first.
    pub fn bytes_at(&mut self, pos: u64, n: usize) -> std::io::Result<&[u8]> {
        let avail = (self.file_len.saturating_sub(pos)).min(n as u64) as usize;
        let in_buf =
            pos >= self.buf_pos && pos + avail as u64 <= self.buf_pos + self.buf.len() as u64;
        if !in_buf {
            let want = avail
                .max(1 << 20)
                .min((self.file_len - pos.min(self.file_len)) as usize);
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.buf_pos = pos;
        }
        let start = (pos - self.buf_pos) as usize;
        Ok(&self.buf[start..start + avail])
    }
}

/// Outcome of scanning a segment's batches.
#[derive(Debug)]
pub(crate) struct Scan {
    /// End of the last valid batch.
    pub valid_size: u64,
    /// Offset after the last valid batch.
    pub next_offset: i64,
    /// Position and description of the first invalid batch, if any.
    pub error: Option<(u64, String)>,
}

/// How strictly [`scan`] checks batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanRules {
    /// Verify each batch's CRC32C.
    pub verify_crc: bool,
    /// Require each batch to start exactly at the previous batch's next
    /// offset (true for the active segment, which never has gaps).
    pub contiguous: bool,
    /// Index interval for rebuilt indexes.
    pub interval: u32,
}

/// Scans batches from `pos` (where the next batch should have base offset
/// `>= next`, or `== next` when contiguous) to the end of the file, feeding
/// valid batches to `idx`, stopping at the first invalid one.
pub(crate) fn scan(
    file: &dyn IoFile,
    base: i64,
    mut pos: u64,
    mut next: i64,
    file_len: u64,
    rules: ScanRules,
    idx: &mut IndexWriter,
) -> std::io::Result<Scan> {
    let mut reader = ScanReader::new(file, file_len);
    let error = loop {
        if pos == file_len {
            break None;
        }
        let head = reader.bytes_at(pos, HEADER_SIZE)?;
        if head.len() < HEADER_SIZE {
            break Some(format!("partial batch header ({} bytes)", head.len()));
        }
        let h = match BatchHeader::parse(head) {
            Ok(h) => h,
            Err(e) => break Some(e.to_string()),
        };
        let size = h.total_size() as u64;
        if size > file_len - pos {
            break Some(format!(
                "batch of {size} bytes runs past the end of the file ({} bytes left)",
                file_len - pos
            ));
        }
        if rules.contiguous && h.base_offset != next {
            break Some(format!(
                "batch base offset {} where {next} was expected",
                h.base_offset
            ));
        }
        if h.base_offset < next {
            break Some(format!(
                "batch base offset {} goes backwards (expected >= {next})",
                h.base_offset
            ));
        }
        if h.last_offset() - base > i64::from(i32::MAX) {
            break Some(format!(
                "batch offset {} is out of range for segment {base}",
                h.last_offset()
            ));
        }
        if rules.verify_crc {
            let batch = reader.bytes_at(pos, size as usize)?;
            let actual = streambus_record::compute_crc(batch);
            if actual != h.crc {
                break Some(format!(
                    "CRC mismatch: stored {:#010x}, computed {actual:#010x}",
                    h.crc
                ));
            }
        }
        idx.on_batch(
            rules.interval,
            (h.base_offset - base) as u32,
            pos,
            size,
            h.max_timestamp,
        );
        pos += size;
        next = h.next_offset();
    };
    Ok(Scan {
        valid_size: pos,
        next_offset: next,
        error: error.map(|e| (pos, e)),
    })
}

/// Loads `.index` / `.timeindex` of a segment and checks them against the
/// log: shape, and the last offset entry pointing at a batch with the
/// matching base offset. Returns the index and the position to resume a
/// tail scan from (the last entry's position).
pub(crate) fn load_indexes(
    disk: &Disk,
    dir: &Path,
    base: i64,
    file: &dyn IoFile,
    log_path: &Path,
    size: u64,
) -> Result<(IndexWriter, u64), String> {
    let read = |ext: &str| match disk.read_file(&segment_file(dir, base, ext)) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(format!("{ext}: missing")),
        Err(e) => Err(format!("{ext}: {e}")),
    };
    let index = OffsetIndex::from_bytes(&read("index")?, size)?;
    let time_raw = read("timeindex")?;
    let mut idx = IndexWriter::new();
    let mut resume = 0;
    if let Some((rel, p)) = index.last() {
        let h = Segment::header_at(file, log_path, u64::from(p), size)
            .map_err(|e| e.to_string())?
            .ok_or("index points at the end of the log")?;
        if h.base_offset != base + i64::from(rel) {
            return Err(format!(
                "last index entry says offset {} at {p}, log has {}",
                base + i64::from(rel),
                h.base_offset
            ));
        }
        resume = u64::from(p);
    }
    // Relative offsets in the time index must be below the end, which is at
    // most what fits a segment; the tail scan checks the rest.
    let time_index = TimeIndex::from_bytes(&time_raw, u64::from(u32::MAX))?;
    if let Some((ts, rel)) = time_index.last() {
        idx.max_timestamp = ts;
        idx.max_timestamp_rel = rel;
    }
    idx.index = index;
    idx.time_index = time_index;
    Ok((idx, resume))
}
