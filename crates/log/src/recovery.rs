//! Opening a log directory: finding segments, finishing an interrupted
//! truncation or roll, checking or rebuilding indexes, and cutting a torn or
//! corrupt tail off the active segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{self, TRUNCATION_FILE};
use crate::epoch::{self, EpochCache};
use crate::error::IoContext;
use crate::index::IndexWriter;
use crate::io::{Disk, IoFile, OpenMode};
use crate::segment::{
    ROLLING_EXT, ScanRules, Segment, load_indexes, parse_segment_name, scan, segment_file,
};
use crate::{LogConfig, LogError};

/// Marker written by a clean `close` after everything was fsynced: damage
/// found in the active segment on the next open is then corruption (an
/// error), not a torn tail to truncate.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = ".clean-shutdown";

/// Segments, log start offset and leader-epoch cache found on disk.
pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub log_start: i64,
    pub epochs: EpochCache,
}

/// Opens (creating if needed) a log directory and recovers it.
pub(crate) fn recover(
    disk: &Disk,
    dir: &Path,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Recovered, LogError> {
    disk.create_dir_all(dir)?;
    let marker = dir.join(CLEAN_SHUTDOWN_FILE);
    // The marker is removed only once the segments are loaded (and the
    // removal made durable before anything can be appended), so an open that
    // fails on corruption fails the same way next time instead of treating
    // the damage as a torn tail.
    let clean = disk.exists(&marker)?;

    let mut bases = Vec::new();
    let mut rolling = Vec::new();
    let mut others = Vec::new();
    for name in disk.read_dir(dir)? {
        if let Some(base) = parse_segment_name(&name, "log") {
            bases.push(base);
        } else if let Some(base) = parse_segment_name(&name, ROLLING_EXT) {
            rolling.push(base);
        } else if name.ends_with(".cleaned") || name.ends_with(".tmp") {
            // Leftovers of an interrupted compaction or checkpoint write.
            disk.remove_if_exists(&dir.join(&name))?;
        } else {
            others.push(name);
        }
    }
    bases.sort_unstable();
    rolling.sort_unstable();

    if let Some(t) = checkpoint::read_truncation(disk, dir)? {
        finish_truncation(disk, dir, &mut bases, &rolling, t)?;
        rolling.clear();
    }
    // Index files whose segment is gone (deleted by retention or truncation).
    for name in others {
        let base =
            parse_segment_name(&name, "index").or_else(|| parse_segment_name(&name, "timeindex"));
        if let Some(base) = base
            && bases.binary_search(&base).is_err()
        {
            disk.remove_if_exists(&dir.join(&name))?;
        }
    }

    let checkpoint = checkpoint::read(disk, dir)?;
    // Segments wholly below the checkpointed start: retention was
    // interrupted after writing the checkpoint.
    if let Some(start) = checkpoint {
        while bases.len() > 1 && bases[1] <= start {
            delete_segment_files(disk, dir, bases.remove(0))?;
        }
    }
    // A roll in progress: `{base}.log.rolling` is the new active segment,
    // renamed to `.log` only once the segment before it was fsynced. It is
    // kept if that segment is intact and ends exactly at its base (then the
    // roll's fsync happened, or nothing was lost); otherwise nothing in it
    // was ever acknowledged as durable and it is deleted.
    let last_base = bases.last().copied();
    let mut candidate = None;
    for r in rolling {
        if candidate.is_none() && last_base.is_some_and(|b| r > b) {
            candidate = Some(r);
        } else {
            disk.remove_if_exists(&segment_file(dir, r, ROLLING_EXT))?;
        }
    }
    if bases.is_empty() {
        let base = checkpoint.unwrap_or(0).max(0);
        disk.remove_if_exists(&marker)?;
        let segment = Segment::create(disk, dir, base)?;
        let segments = vec![segment];
        let epochs = epoch::load(disk, dir, &segments, base, base)?;
        return Ok(Recovered {
            segments,
            log_start: base,
            epochs,
        });
    }

    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len() + 1);
    let last = bases.len() - 1;
    for (i, &base) in bases.iter().enumerate() {
        let segment = if i == last {
            let (segment, cut) =
                load_active(disk, dir, base, config, clean && candidate.is_none())?;
            match candidate {
                Some(r) if !cut && segment.next_offset == r => {
                    let mut segment = segment;
                    segment.idx.finish_time_index();
                    segment.write_indexes(disk, dir)?;
                    let to = segment_file(dir, r, "log");
                    disk.rename(&segment_file(dir, r, ROLLING_EXT), &to)?;
                    disk.sync_dir(dir)?;
                    tracing::info!(segment = %to.display(), "finished an interrupted segment roll");
                    check_order(&segments, &segment)?;
                    segments.push(segment);
                    load_active(disk, dir, r, config, false)?.0
                }
                Some(r) => {
                    tracing::info!(base = r, "deleting the segment of an unfinished roll");
                    disk.remove_if_exists(&segment_file(dir, r, ROLLING_EXT))?;
                    segment
                }
                None => segment,
            }
        } else {
            load_sealed(disk, dir, base, config)?
        };
        check_order(&segments, &segment)?;
        segments.push(segment);
    }
    disk.remove_if_exists(&marker)?;
    disk.sync_dir(dir)?;
    let active = segments.last_mut().expect("non-empty");
    if active.size > 0 {
        active.first_append_ms = Some(now_ms);
    }
    let first = segments[0].base;
    let end = segments.last().expect("non-empty").next_offset;
    let log_start = checkpoint.unwrap_or(first).clamp(first, end);
    if let Some(c) = checkpoint
        && c > end
    {
        // The checkpoint is above everything on disk (the tail it pointed
        // into was cut, or the file was damaged). Clamping only in memory
        // would let the next open apply the stale value again, past records
        // appended in between, so the clamped start is made durable now.
        tracing::warn!(
            dir = %dir.display(),
            checkpoint = c,
            end,
            "log start checkpoint is above the end offset; lowering it to the end"
        );
        checkpoint::write(disk, dir, log_start)?;
    }
    // Last, once the end offset is final (after any torn tail was cut).
    let epochs = epoch::load(disk, dir, &segments, log_start, end)?;
    Ok(Recovered {
        segments,
        log_start,
        epochs,
    })
}

fn check_order(segments: &[Segment], next: &Segment) -> Result<(), LogError> {
    if let Some(prev) = segments.last()
        && prev.next_offset > next.base
    {
        return Err(LogError::Corrupt {
            file: prev.path.clone(),
            position: prev.size,
            reason: format!(
                "segment ends at offset {} but the next segment starts at {}",
                prev.next_offset, next.base
            ),
        });
    }
    Ok(())
}

pub(crate) fn delete_segment_files(disk: &Disk, dir: &Path, base: i64) -> Result<(), LogError> {
    for ext in ["log", "index", "timeindex"] {
        disk.remove_if_exists(&segment_file(dir, base, ext))?;
    }
    Ok(())
}

/// Redoes an interrupted `truncate_to` whose intent was found: deletes
/// every segment above the new end, cuts the segment holding it at the
/// recorded position (everything before that position was fsynced before
/// the intent was written), drops that segment's now stale index files (they
/// are rebuilt and checked when it is loaded), starts an empty active
/// segment at the new end if needed, then removes the intent.
fn finish_truncation(
    disk: &Disk,
    dir: &Path,
    bases: &mut Vec<i64>,
    rolling: &[i64],
    t: checkpoint::TruncationIntent,
) -> Result<(), LogError> {
    tracing::info!(dir = %dir.display(), end = t.end, "finishing an interrupted truncation");
    for &r in rolling {
        disk.remove_if_exists(&segment_file(dir, r, ROLLING_EXT))?;
    }
    while bases.last().is_some_and(|&b| b > t.end) {
        let b = bases.pop().expect("non-empty");
        delete_segment_files(disk, dir, b)?;
    }
    disk.sync_dir(dir)?;
    if bases.binary_search(&t.segment_base).is_err() {
        return Err(LogError::Corrupt {
            file: dir.join(TRUNCATION_FILE),
            position: 0,
            reason: format!("the segment {} being truncated is missing", t.segment_base),
        });
    }
    let (file, path, size) = open_segment_file(disk, dir, t.segment_base)?;
    if size < t.position {
        return Err(LogError::Corrupt {
            file: path,
            position: size,
            reason: format!(
                "segment is shorter than the truncation point {} (fsynced data lost)",
                t.position
            ),
        });
    }
    if size > t.position {
        file.set_len(t.position)
            .ctx(|| format!("truncate {}", path.display()))?;
    }
    disk.sync_file(&*file, &path)?;
    disk.remove_if_exists(&segment_file(dir, t.segment_base, "index"))?;
    disk.remove_if_exists(&segment_file(dir, t.segment_base, "timeindex"))?;
    let empty_at_end = t.segment_base == t.end && t.position == 0;
    if !empty_at_end && bases.last() != Some(&t.end) {
        Segment::create(disk, dir, t.end)?;
        bases.push(t.end);
    }
    disk.remove_if_exists(&dir.join(TRUNCATION_FILE))?;
    disk.sync_dir(dir)
}

fn open_segment_file(
    disk: &Disk,
    dir: &Path,
    base: i64,
) -> Result<(Arc<dyn IoFile>, PathBuf, u64), LogError> {
    let path = segment_file(dir, base, "log");
    let file = disk.open(&path, OpenMode::ReadWrite)?;
    let size = file.len().ctx(|| format!("stat {}", path.display()))?;
    Ok((file, path, size))
}

/// Trusts a sealed segment's index files only if they match the log and the
/// tail after the last entry scans cleanly to the end of the file.
fn try_indexes(
    disk: &Disk,
    dir: &Path,
    base: i64,
    file: &dyn IoFile,
    path: &Path,
    size: u64,
    config: &LogConfig,
) -> Option<(IndexWriter, i64)> {
    let (mut idx, resume) = match load_indexes(disk, dir, base, file, path, size) {
        Ok(v) => v,
        Err(reason) => {
            tracing::debug!(segment = %path.display(), %reason, "rebuilding segment index");
            return None;
        }
    };
    let resume_offset = base + i64::from(idx.index.last().map_or(0, |(r, _)| r));
    idx.bytes_since_entry = 0;
    let rules = ScanRules {
        verify_crc: true,
        contiguous: false,
        interval: config.index_interval_bytes,
    };
    let scan = scan(file, base, resume, resume_offset, size, rules, &mut idx).ok()?;
    let time_index_beyond_end = idx
        .time_index
        .last()
        .is_some_and(|(_, rel)| base + i64::from(rel) >= scan.next_offset);
    if scan.error.is_some() || scan.valid_size != size || time_index_beyond_end {
        tracing::debug!(segment = %path.display(), "index does not match the log, rebuilding");
        return None;
    }
    Some((idx, scan.next_offset))
}

/// Loads a sealed segment. Sealed segments were fsynced before the next
/// segment got its final name, so any damage is corruption and an error.
fn load_sealed(
    disk: &Disk,
    dir: &Path,
    base: i64,
    config: &LogConfig,
) -> Result<Segment, LogError> {
    let (file, path, size) = open_segment_file(disk, dir, base)?;
    if let Some((idx, next)) = try_indexes(disk, dir, base, &*file, &path, size, config) {
        return Ok(Segment::from_parts(base, file, path, size, next, idx));
    }
    let mut idx = IndexWriter::new();
    let rules = ScanRules {
        verify_crc: true,
        contiguous: false,
        interval: config.index_interval_bytes,
    };
    let scan = scan(&*file, base, 0, base, size, rules, &mut idx)
        .ctx(|| format!("read {}", path.display()))?;
    if let Some((position, reason)) = scan.error {
        return Err(LogError::Corrupt {
            file: path,
            position,
            reason,
        });
    }
    idx.finish_time_index();
    let segment = Segment::from_parts(base, file, path, size, scan.next_offset, idx);
    segment.write_indexes(disk, dir)?;
    Ok(segment)
}

/// Loads the active (newest) segment, scanning it from the start: each batch
/// must be whole, have a valid CRC and the expected offset.
///
/// After a crash (`clean == false`) whatever follows the last such batch is
/// a torn or corrupt tail and is truncated; fsynced data is never cut, since
/// fsynced batches are whole. After a clean shutdown (`clean == true`) the
/// whole segment was fsynced by `close`, so a bad batch anywhere is
/// corruption of durable data: a [`LogError::Corrupt`] error naming file and
/// position, never a truncation. (Index files are not trusted here: damage
/// before their last entry would go unnoticed until a later open, which
/// would then cut the segment there and drop what followed.)
///
/// Returns the segment and whether a tail was cut.
fn load_active(
    disk: &Disk,
    dir: &Path,
    base: i64,
    config: &LogConfig,
    clean: bool,
) -> Result<(Segment, bool), LogError> {
    let (file, path, size) = open_segment_file(disk, dir, base)?;
    let mut idx = IndexWriter::new();
    let rules = ScanRules {
        verify_crc: true,
        contiguous: true,
        interval: config.index_interval_bytes,
    };
    let scan = scan(&*file, base, 0, base, size, rules, &mut idx)
        .ctx(|| format!("read {}", path.display()))?;
    if let Some((position, reason)) = scan.error {
        if clean {
            return Err(LogError::Corrupt {
                file: path,
                position,
                reason: format!(
                    "{reason} (in the active segment after a clean shutdown, which fsynced it)"
                ),
            });
        }
        tracing::warn!(
            segment = %path.display(),
            position,
            dropped_bytes = size - position,
            %reason,
            "truncating torn or corrupt tail of the active segment"
        );
        file.set_len(scan.valid_size)
            .ctx(|| format!("truncate {}", path.display()))?;
    }
    disk.sync_file(&*file, &path)?;
    let valid = scan.valid_size;
    let segment = Segment::from_parts(base, file, path, valid, scan.next_offset, idx);
    Ok((segment, valid != size))
}
