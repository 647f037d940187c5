//! Key-based compaction of sealed segments.
//!
//! Pass 1 maps each key (as a 128-bit fingerprint) to the offset of its
//! latest record in the sealed segments. Pass 2 rewrites each sealed
//! segment keeping, per batch, the records that are the latest for their
//! key, minus tombstones older than `tombstone_retention_ms`. Offsets are
//! preserved: a batch rewritten with fewer records keeps its base offset and
//! `lastOffsetDelta`, kept records keep their offset deltas. A segment is
//! written to `*.cleaned` files and swapped in by rename.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use streambus_record::{BatchHeader, HEADER_SIZE, decode_records, retain_records};

use crate::error::IoContext;
use crate::index::IndexWriter;
use crate::io::{IoFile, OpenMode};
use crate::log::lock;
use crate::segment::{OffsetCheck, ScanReader, segment_file};
use crate::{Log, LogError};

/// What [`Log::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionOutcome {
    /// Sealed segments rewritten.
    pub segments_cleaned: usize,
    /// Records removed.
    pub records_removed: u64,
    /// Size of the rewritten segments before.
    pub bytes_before: u64,
    /// Size of the rewritten segments after.
    pub bytes_after: u64,
}

/// A sealed segment as seen when compaction started.
struct Snapshot {
    base: i64,
    file: Arc<dyn IoFile>,
    path: PathBuf,
    size: u64,
    /// Offset after the segment's last batch.
    end: i64,
}

/// Buffered sequential writer over an [`IoFile`].
struct BufferedOut<'a> {
    file: &'a dyn IoFile,
    buf: Vec<u8>,
    written: u64,
}

impl BufferedOut<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.written)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// 128-bit fingerprint of a key (two SipHash-1-3 with different seeds):
/// 16 bytes per distinct key in memory, with negligible collision odds.
fn fingerprint(key: &[u8]) -> u128 {
    let mut a = DefaultHasher::new();
    key.hash(&mut a);
    let mut b = DefaultHasher::new();
    0x5eed_u64.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Calls `f` with every batch of a sealed segment.
fn for_each_batch(
    seg: &Snapshot,
    mut f: impl FnMut(u64, &BatchHeader, &[u8]) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut reader = ScanReader::new(&*seg.file, seg.size);
    let mut check = OffsetCheck::new(seg.base, seg.end, None);
    let mut pos = 0;
    while pos < seg.size {
        let corrupt = |reason: String| LogError::Corrupt {
            file: seg.path.clone(),
            position: pos,
            reason,
        };
        let io = |e| LogError::Io {
            context: format!("read {}", seg.path.display()),
            source: e,
        };
        let head = reader.bytes_at(pos, HEADER_SIZE).map_err(io)?;
        let h = BatchHeader::parse(head).map_err(|e| corrupt(e.to_string()))?;
        check.check(&seg.path, pos, &h)?;
        let batch = reader.bytes_at(pos, h.total_size()).map_err(io)?;
        if batch.len() < h.total_size() {
            return Err(corrupt("batch runs past the end of the segment".into()));
        }
        f(pos, &h, batch)?;
        pos += h.total_size() as u64;
    }
    Ok(())
}

fn decode(
    seg: &Snapshot,
    pos: u64,
    batch: &[u8],
) -> Result<Vec<streambus_record::DecodedRecord>, LogError> {
    decode_records(batch).map_err(|e| LogError::Corrupt {
        file: seg.path.clone(),
        position: pos,
        reason: e.to_string(),
    })
}

impl Log {
    /// Compacts the sealed segments: keeps the latest record per key,
    /// removes tombstones whose timestamp is older than `now_ms -
    /// tombstone_retention_ms`, keeps records with a null key and control
    /// batches. The active segment is not touched. Does nothing unless the
    /// cleanup policy compacts.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionOutcome, LogError> {
        let shared = &*self.shared;
        let mut outcome = CompactionOutcome::default();
        if !shared.config().cleanup_policy.compacts() {
            return Ok(outcome);
        }
        shared.check_failed()?;
        let _maintenance = lock(&shared.maintenance);
        let sealed: Vec<Snapshot> = {
            let st = shared.read_state();
            // Not the active segment, nor one a roll is still syncing.
            st.segments[..st.sealed_count(shared.is_rolling())]
                .iter()
                .map(|s| Snapshot {
                    base: s.base,
                    file: s.file.clone(),
                    path: s.path.clone(),
                    size: s.size,
                    end: s.next_offset,
                })
                .collect()
        };
        let mut latest: HashMap<u128, i64> = HashMap::new();
        for seg in &sealed {
            for_each_batch(seg, |pos, h, batch| {
                if !h.is_control() {
                    for r in decode(seg, pos, batch)? {
                        if let Some(key) = &r.key {
                            latest.insert(fingerprint(key), r.offset);
                        }
                    }
                }
                Ok(())
            })?;
        }
        let grace = shared.config().tombstone_retention_ms;
        let keep = |r: &streambus_record::DecodedRecord| match &r.key {
            None => true,
            Some(key) => {
                latest.get(&fingerprint(key)) == Some(&r.offset)
                    && !(r.value.is_none() && now_ms.saturating_sub(r.timestamp_ms) >= grace)
            }
        };
        for seg in &sealed {
            if let Some((removed, new_size)) = self.clean_segment(seg, &keep)? {
                outcome.segments_cleaned += 1;
                outcome.records_removed += removed;
                outcome.bytes_before += seg.size;
                outcome.bytes_after += new_size;
            }
        }
        Ok(outcome)
    }

    /// Rewrites one segment; returns `(records removed, new size)` or
    /// `None` if nothing would be removed.
    fn clean_segment(
        &self,
        seg: &Snapshot,
        keep: &impl Fn(&streambus_record::DecodedRecord) -> bool,
    ) -> Result<Option<(u64, u64)>, LogError> {
        let shared = &*self.shared;
        let disk = &shared.disk;
        let dir = &shared.dir;
        let interval = shared.config().index_interval_bytes;
        let cleaned = |ext: &str| dir.join(format!("{:020}.{ext}.cleaned", seg.base));
        let log_tmp = cleaned("log");
        let out = disk.open(&log_tmp, OpenMode::CreateTruncate)?;
        let mut writer = BufferedOut {
            file: &*out,
            buf: Vec::with_capacity(1 << 20),
            written: 0,
        };
        let mut idx = IndexWriter::new();
        let mut size = 0u64;
        let mut removed = 0u64;
        for_each_batch(seg, |pos, h, batch| {
            let kept = if h.is_control() {
                Some(bytes::Bytes::copy_from_slice(batch))
            } else {
                retain_records(batch, |r| keep(r)).map_err(|e| LogError::Corrupt {
                    file: seg.path.clone(),
                    position: pos,
                    reason: e.to_string(),
                })?
            };
            let Some(kept) = kept else {
                removed += h.record_count as u64;
                return Ok(());
            };
            let kh = BatchHeader::parse(&kept).map_err(|e| LogError::Corrupt {
                file: log_tmp.clone(),
                position: size,
                reason: e.to_string(),
            })?;
            removed += (h.record_count - kh.record_count) as u64;
            writer
                .write(&kept)
                .ctx(|| format!("write {}", log_tmp.display()))?;
            idx.on_batch(
                interval,
                (kh.base_offset - seg.base) as u32,
                size,
                kept.len() as u64,
                kh.max_timestamp,
            );
            size += kept.len() as u64;
            Ok(())
        })?;
        if removed == 0 {
            drop(out);
            disk.remove_if_exists(&log_tmp)?;
            return Ok(None);
        }
        writer
            .flush()
            .ctx(|| format!("write {}", log_tmp.display()))?;
        disk.sync_file(&*out, &log_tmp)?;
        idx.finish_time_index();
        disk.write_synced(&cleaned("index"), &idx.index.to_bytes())?;
        disk.write_synced(&cleaned("timeindex"), &idx.time_index.to_bytes())?;
        self.swap_in(seg, &cleaned, out, size, idx)?;
        tracing::debug!(segment = %seg.path.display(), removed, size, "compacted segment");
        Ok(Some((removed, size)))
    }

    /// Replaces a segment's files with the cleaned ones, crash-safely and
    /// without holding the state lock across an fsync: the old index files
    /// are removed and the directory fsynced first (a crash then leaves the
    /// old log with missing indexes, which recovery rebuilds); then, under
    /// the lock, the log and the indexes are renamed into place and the
    /// segment switched to the new file; the directory is fsynced after the
    /// lock is released. A crash between the renames leaves the new or the
    /// old log, with leftover `*.cleaned` files recovery deletes.
    fn swap_in(
        &self,
        seg: &Snapshot,
        cleaned: &impl Fn(&str) -> PathBuf,
        file: Arc<dyn IoFile>,
        size: u64,
        idx: IndexWriter,
    ) -> Result<(), LogError> {
        let shared = &*self.shared;
        let disk = &shared.disk;
        let dir: &Path = &shared.dir;
        disk.remove_if_exists(&segment_file(dir, seg.base, "index"))?;
        disk.remove_if_exists(&segment_file(dir, seg.base, "timeindex"))?;
        disk.sync_dir(dir)?;
        {
            let mut st = shared.write_state();
            let renamed = disk
                .rename(&cleaned("log"), &seg.path)
                .and_then(|()| {
                    disk.rename(&cleaned("index"), &segment_file(dir, seg.base, "index"))
                })
                .and_then(|()| {
                    disk.rename(
                        &cleaned("timeindex"),
                        &segment_file(dir, seg.base, "timeindex"),
                    )
                });
            if let Err(e) = renamed {
                // The files may now disagree with the in-memory segment.
                shared.fail(format!("compaction swap failed: {e}"));
                return Err(e);
            }
            if let Some(s) = st.segments.iter_mut().find(|s| s.base == seg.base) {
                s.file = file;
                s.size = size;
                s.idx = idx;
            }
        }
        disk.sync_dir(dir)
    }
}
